package node

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"chorus/transport"
)

// TestForwardOutcomeAndRetryReason: the peer RPC's answers and failures,
// as callLeader and raft return them, land under the right labels.
func TestForwardOutcomeAndRetryReason(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	notLeader := &transport.RPCError{Code: codeNotLeader, Msg: "not leader"}
	lost := fmt.Errorf("call 127.0.0.1:1: %w: %w", transport.ErrConnLost, errors.New("EOF"))
	cancelled := fmt.Errorf("call 127.0.0.1:1: %w", context.Canceled)
	tests := []struct {
		name        string
		err         error
		ctx, moved  context.Context
		wantOutcome forwardOutcome
		retried     bool        // Submit retries after it (rpcErr)
		wantReason  retryReason // and why
	}{
		{"answered", nil, live, live, outcomeOK, false, 0},
		{"not leader", notLeader, live, live, outcomeNotLeader, true, retryNotLeader},
		{"leader shutting down", &transport.RPCError{Code: codeShutdown}, live, live, outcomeNotLeader, true, retryNotLeader},
		{"bad input", &transport.RPCError{Code: codeBadInput}, live, live, outcomeRejected, false, 0},
		{"leader moved", cancelled, live, done, outcomeLeaderChanged, true, retryLeaderChanged},
		{"deadline", fmt.Errorf("call: %w", context.DeadlineExceeded), done, live, outcomeTimeout, false, 0},
		{"connection lost", lost, live, live, outcomeFailed, true, retryFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := forwardOutcomeOf(tt.err, tt.ctx, tt.moved); got != tt.wantOutcome {
				t.Errorf("outcome %s, want %s", forwardOutcomeNames[got], forwardOutcomeNames[tt.wantOutcome])
			}
			if !tt.retried {
				return
			}
			// rpcErr wraps every failure but bad input so, on a live node.
			if got := retryReasonOf(&retryError{tt.err}); got != tt.wantReason {
				t.Errorf("retry reason %s, want %s", retryReasonNames[got], retryReasonNames[tt.wantReason])
			}
		})
	}
	for _, tt := range []struct {
		err  error
		want retryReason
	}{
		{errNoLeaderNow, retryNoLeader},
		{raftErr(raft.ErrNotLeader), retryNotLeader},
		{raftErr(raft.ErrLeadershipLost), retryNotLeader},
		{raftErr(raft.ErrLeadershipTransferInProgress), retryNotLeader},
		{&retryError{ErrNotLeader}, retryNotLeader},
		{raftErr(raft.ErrEnqueueTimeout), retryFailed},
	} {
		if got := retryReasonOf(tt.err); got != tt.want {
			t.Errorf("retryReasonOf(%v) = %s, want %s", tt.err, retryReasonNames[got], retryReasonNames[tt.want])
		}
	}
}

// TestMetricsOffAndTwoNodes: a config without metrics records into no-ops,
// and two nodes' metrics go into two registries without colliding.
func TestMetricsOffAndTwoNodes(t *testing.T) {
	m := Config{}.withDefaults().Metrics
	if m == nil || m.collectors != nil {
		t.Fatalf("default metrics %+v: want the no-op ones", m)
	}
	if n := testing.AllocsPerRun(100, func() {
		m.submit[pathForwarded].Observe(0.001)
		m.forwards[forwardCommand][outcomeOK].Inc()
		m.retries[retryNoLeader].Inc()
	}); n != 0 {
		t.Errorf("no-op metrics: %v allocations", n)
	}
	for range 2 {
		reg := prometheus.NewRegistry()
		m := NewMetrics()
		reg.MustRegister(m.Collectors()...)
		if n := testing.AllocsPerRun(100, func() {
			m.submit[pathForwarded].Observe(0.001)
			m.forwards[forwardCommand][outcomeOK].Inc()
		}); n != 0 {
			t.Errorf("metrics: %v allocations", n)
		}
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		if len(fams) != len(m.collectors) {
			t.Errorf("%d families gathered, want %d", len(fams), len(m.collectors))
		}
	}
}

// BenchmarkRecordWrite is what the metrics add to one write forwarded by a
// follower, over all the nodes: its submit latency, the leader's commit
// latency, an apply batch on each of three nodes and the forward's count,
// clock reads included. The write itself costs milliseconds
// (BenchmarkCommit).
//
//	go test ./node -run '^$' -bench RecordWrite -benchmem
func BenchmarkRecordWrite(b *testing.B) {
	for name, m := range map[string]*Metrics{"on": NewMetrics(), "off": nopMetrics()} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				m.commit.Observe(since(start))
				for range 3 {
					apply := time.Now()
					m.apply.Observe(since(apply))
				}
				m.forwards[forwardCommand][outcomeOK].Inc()
				m.submit[pathForwarded].Observe(since(start))
			}
		})
	}
}
