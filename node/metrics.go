package node

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"chorus/transport"
)

// Metrics is a node's write-path instrumentation: commit, submit and apply
// latencies, forwarding and its retries, slow subscribers dropped, and
// snapshot durations and sizes. NewMetrics makes one to register with a
// prometheus registry; a Config without one keeps no figures, at the cost of
// a call to an empty method where a figure would be recorded.
//
// Every labelled child is resolved when the Metrics is made, so recording a
// figure never looks up a label or allocates. Safe for concurrent use.
type Metrics struct {
	submit      [2]observer // by submitPath
	commit      observer
	apply       observer
	forwards    [2][numForwardOutcomes]counter // by forwardRPC, forwardOutcome
	retries     [numRetryReasons]counter
	slowDropped counter
	persist     observer
	restore     observer
	snapBytes   observer

	collectors []prometheus.Collector // nil for the no-op Metrics
}

// counter and observer are what the node records through: prometheus's
// children satisfy them, and so does nop.
type (
	counter  interface{ Inc() }
	observer interface{ Observe(float64) }
)

// nop records nothing.
type nop struct{}

func (nop) Inc()            {}
func (nop) Observe(float64) {}

// Buckets of the histograms.
var (
	// latencyBuckets suit a commit through raft with fsync: 0.5 ms to 5 s.
	latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	// applyBuckets suit the state machine's work on one batch: 10 µs to 1 s.
	applyBuckets = []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1}
	// snapshotSecondsBuckets suit writing or reading a whole snapshot: 1 ms to 1 min.
	snapshotSecondsBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	// snapshotBytesBuckets: 1 KiB to 1 GiB, by fours.
	snapshotBytesBuckets = prometheus.ExponentialBuckets(1024, 4, 11)
)

// submitPath is where the successful attempt of a Submit was committed.
type submitPath int

const (
	pathLocal     submitPath = iota // this node led and proposed it
	pathForwarded                   // a follower forwarded it to the leader
)

// forwardRPC is the kind of request a follower forwards to the leader.
type forwardRPC int

const (
	forwardCommand   forwardRPC = iota // a command to commit (rpcForward)
	forwardReadIndex                   // the read barrier's commit index (rpcReadIdx)
)

// forwardOutcome is how one forwarded request ended.
type forwardOutcome int

const (
	outcomeOK            forwardOutcome = iota // the leader answered
	outcomeNotLeader                           // the node called no longer leads, or has not started (retried)
	outcomeRejected                            // the leader refused the request as bad input (final)
	outcomeLeaderChanged                       // this node saw the leader change during the call (retried)
	outcomeTimeout                             // the request's own deadline or cancellation ended it
	outcomeFailed                              // the connection failed or the leader failed internally (retried)
	numForwardOutcomes
)

var forwardOutcomeNames = [numForwardOutcomes]string{"ok", "not_leader", "rejected", "leader_changed", "timeout", "failed"}

// retryReason is why an attempt of a Submit or a read barrier is repeated.
type retryReason int

const (
	retryNoLeader      retryReason = iota // no leader known
	retryNotLeader                        // the node asked (this one or the leader called) did not lead
	retryLeaderChanged                    // this node saw the leader change during a forwarded call
	retryFailed                           // anything else retryable: a lost connection, a full apply queue
	numRetryReasons
)

var retryReasonNames = [numRetryReasons]string{"no_leader", "not_leader", "leader_changed", "failed"}

// NewMetrics makes a node's metrics, ready to register with a prometheus
// registry through Collectors. Give each node its own.
func NewMetrics() *Metrics {
	m := &Metrics{}
	submit := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "chorus_submit_seconds",
		Help:    "Latency of each successful write on the node that took it, from Submit until this node applied it, retries included; by path: local (this node led) or forwarded (a follower forwarded it to the leader).",
		Buckets: latencyBuckets,
	}, []string{"path"})
	m.submit[pathLocal] = submit.WithLabelValues("local")
	m.submit[pathForwarded] = submit.WithLabelValues("forwarded")
	commit := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "chorus_raft_commit_seconds",
		Help:    "On the leader, from raft.Apply of a command (proposed here or forwarded) until its future answered: committed by a quorum and applied by the leader's state machine.",
		Buckets: latencyBuckets,
	})
	m.commit = commit
	apply := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "chorus_fsm_apply_seconds",
		Help:    "Time raft's apply goroutine spent in the state machine per batch of committed entries: decode, apply, and hand the events to the hub.",
		Buckets: applyBuckets,
	})
	m.apply = apply
	forwards := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chorus_forward_requests_total",
		Help: "Requests this node, as a follower, sent to the leader over the peer RPC, by rpc (command: a write; read_index: a read barrier) and outcome (ok, not_leader, rejected, leader_changed, timeout, failed).",
	}, []string{"rpc", "outcome"})
	for rpc, name := range []string{"command", "read_index"} {
		for o := range numForwardOutcomes {
			m.forwards[rpc][o] = forwards.WithLabelValues(name, forwardOutcomeNames[o])
		}
	}
	retries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chorus_request_retries_total",
		Help: "Attempts of a write or a read barrier repeated (a write keeps its op ID), by why the previous attempt failed: no_leader, not_leader, leader_changed, failed.",
	}, []string{"reason"})
	for r := range numRetryReasons {
		m.retries[r] = retries.WithLabelValues(retryReasonNames[r])
	}
	slow := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "chorus_slow_subscribers_dropped_total",
		Help: "Subscriptions (one per socket) ended because their queue of deliveries overflowed: a socket that could not keep up, closed with 1013.",
	})
	m.slowDropped = slow
	persist := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "chorus_snapshot_persist_seconds",
		Help:    "Time to write and sync each raft snapshot of the state machine; it runs beside applies (their pause is chorus_snapshot_pause_seconds).",
		Buckets: snapshotSecondsBuckets,
	})
	m.persist = persist
	restore := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "chorus_snapshot_restore_seconds",
		Help:    "Time to read each snapshot into the state machine: on a restart, or when the leader installs one.",
		Buckets: snapshotSecondsBuckets,
	})
	m.restore = restore
	bytes := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "chorus_snapshot_bytes",
		Help:    "Size of each persisted raft snapshot, in bytes.",
		Buckets: snapshotBytesBuckets,
	})
	m.snapBytes = bytes
	m.collectors = []prometheus.Collector{submit, commit, apply, forwards, retries, slow, persist, restore, bytes}
	return m
}

// nopMetrics records nothing: what a node without Config.Metrics uses.
func nopMetrics() *Metrics {
	m := &Metrics{commit: nop{}, apply: nop{}, slowDropped: nop{}, persist: nop{}, restore: nop{}, snapBytes: nop{}}
	for i := range m.submit {
		m.submit[i] = nop{}
	}
	for i := range m.forwards {
		for j := range m.forwards[i] {
			m.forwards[i][j] = nop{}
		}
	}
	for i := range m.retries {
		m.retries[i] = nop{}
	}
	return m
}

// Collectors returns the metrics, to register with a prometheus registry.
func (m *Metrics) Collectors() []prometheus.Collector { return m.collectors }

// instrument hands the node's metrics to the parts that record on raft's
// goroutines. New calls it before raft starts: raft restores the latest
// snapshot as it starts.
func (n *Node) instrument() {
	n.fsm.metrics = n.cfg.Metrics
	n.hub.metrics = n.cfg.Metrics
}

// forwarded counts one forwarded request by how it ended: err is what
// callLeader returned, ctx the request's context, moved the leader view the
// call was made under.
func (m *Metrics) forwarded(rpc forwardRPC, err error, ctx, moved context.Context) {
	m.forwards[rpc][forwardOutcomeOf(err, ctx, moved)].Inc()
}

func forwardOutcomeOf(err error, ctx, moved context.Context) forwardOutcome {
	var re *transport.RPCError
	switch {
	case err == nil:
		return outcomeOK
	case errors.As(err, &re) && (re.Code == codeNotLeader || re.Code == codeShutdown):
		return outcomeNotLeader
	case errors.As(err, &re) && re.Code == codeBadInput:
		return outcomeRejected
	case ctx.Err() != nil:
		return outcomeTimeout
	case moved.Err() != nil:
		return outcomeLeaderChanged
	}
	return outcomeFailed
}

// retryReasonOf says why err, a retryable failure, is being retried. A retry
// is due only while the request's context is live, so a call that ended
// cancelled was cancelled by a change of leader (callLeader).
func retryReasonOf(err error) retryReason {
	var re *transport.RPCError
	switch {
	case errors.Is(err, errNoLeaderNow):
		return retryNoLeader
	case errors.Is(err, ErrNotLeader), errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.As(err, &re) && (re.Code == codeNotLeader || re.Code == codeShutdown):
		return retryNotLeader
	case errors.Is(err, context.Canceled):
		return retryLeaderChanged
	}
	return retryFailed
}

// since returns the seconds from start until now.
func since(start time.Time) float64 { return time.Since(start).Seconds() }
