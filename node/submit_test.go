package node_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
	"chorus/transport"
)

// opID returns a fixed op ID, as a client retry carries.
func opID(b byte) fsm.OpID {
	var o fsm.OpID
	for i := range o {
		o[i] = b
	}
	return o
}

// TestRetriedSubmitAppliedOnce submits the same command (same op ID) more
// than once: through a follower and the leader, concurrently through two
// nodes, and again after the leader died right after the first ack. Every
// repeat answers Duplicate with the original index, and the step flips once
// (I6).
func TestRetriedSubmitAppliedOnce(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, 2*time.Minute)
	leader, followers := waitFollowers(t, c)
	ln, fn := c.Members[leader].Node(), c.Members[followers[0]].Node()
	s, p := sessionID(1), playerID(1)
	createSession(t, ctx, fn, s)
	joinPlayer(t, ctx, fn, s, p)
	at := time.Now().UnixMilli()

	wantDup := func(r, orig fsm.Result) {
		t.Helper()
		if !r.Duplicate || r.Index != orig.Index || r.Status != orig.Status {
			t.Fatalf("retry got %+v, want a duplicate of %+v", r, orig)
		}
	}
	cmd := toggleStep(s, p, 3)
	cmd.Op, cmd.At = opID(1), at
	first := submit(t, ctx, fn, cmd, fsm.StatusOK)
	if first.Duplicate {
		t.Fatalf("first submit reported as duplicate: %+v", first)
	}
	wantDup(submit(t, ctx, ln, cmd, fsm.StatusOK), first)
	wantDup(submit(t, ctx, fn, cmd, fsm.StatusOK), first)
	for _, n := range running(c) {
		readSession(t, ctx, n, s, func(s *fsm.Session) {
			if !stepOn(s, 3) {
				t.Errorf("%s: step 3 is off after one toggle and two retries", n.ID())
			}
		})
	}

	// The same op through every node at once: one applies it.
	cmd = toggleStep(s, p, 5)
	cmd.Op, cmd.At = opID(2), at
	results := make([]fsm.Result, len(c.Members))
	errs := make([]error, len(c.Members))
	var wg sync.WaitGroup
	for i, n := range running(c) {
		wg.Add(1)
		go func() { defer wg.Done(); results[i], errs[i] = n.Submit(ctx, cmd) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	fresh := 0
	for _, r := range results {
		if !r.Duplicate {
			fresh++
		}
		if r.Index != results[0].Index || r.Status != fsm.StatusOK {
			t.Fatalf("concurrent submits of one op: %+v", results)
		}
	}
	if fresh != 1 {
		t.Fatalf("concurrent submits of one op: %d applied it, want 1: %+v", fresh, results)
	}

	// A retry across a leader change: the follower's first attempt was
	// acknowledged, then the leader died; the retry reaches the new leader.
	cmd = toggleStep(s, p, 7)
	cmd.Op, cmd.At = opID(3), at
	first = submit(t, ctx, fn, cmd, fsm.StatusOK)
	c.Kill(leader)
	wantDup(submit(t, ctx, fn, cmd, fsm.StatusOK), first)
	if l := c.WaitLeader(waitMid); l == leader {
		t.Fatalf("killed leader %d still leads", leader)
	}
	for _, n := range running(c) {
		readSession(t, ctx, n, s, func(s *fsm.Session) {
			if !stepOn(s, 3) || !stepOn(s, 5) || !stepOn(s, 7) {
				t.Errorf("%s: steps 3, 5, 7 on: %v %v %v; each op must apply exactly once", n.ID(), stepOn(s, 3), stepOn(s, 5), stepOn(s, 7))
			}
		})
	}
}

// TestReadBarrier writes through one node and reads through another at once,
// many times: Read always sees the acknowledged write (linearizable), also
// when the reader's link from the leader is slow. View may lag, but catches up.
func TestReadBarrier(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, 2*time.Minute)
	leader, followers := waitFollowers(t, c)
	nodes := running(c)
	s := sessionID(1)
	createSession(t, ctx, nodes[0], s)
	for i, n := range nodes {
		joinPlayer(t, ctx, n, s, playerID(i))
	}
	check := func(i int, reader *node.Node, want float64) {
		t.Helper()
		readSession(t, ctx, reader, s, func(s *fsm.Session) {
			if s.State.Tempo != want {
				t.Fatalf("iteration %d: %s reads tempo %v right after the write of %v was acknowledged", i, reader.ID(), s.State.Tempo, want)
			}
		})
	}
	for i := 0; i < 100; i++ {
		w, r := i%len(nodes), (i+1+i/len(nodes))%len(nodes)
		if r == w {
			r = (r + 1) % len(nodes)
		}
		want := float64(60 + i)
		submit(t, ctx, nodes[w], setTempo(s, playerID(w), want), fsm.StatusOK)
		check(i, nodes[r], want)
	}

	// A lagging reader: every write from the leader to it waits first.
	slow := c.Members[followers[0]]
	c.Faults.Set(c.Members[leader].ID, slow.ID, transport.LinkFault{Delay: 20 * time.Millisecond})
	lagged := 0
	for i := 0; i < 20; i++ {
		w := []int{leader, followers[1]}[i%2]
		want := float64(170 - i)
		submit(t, ctx, c.Members[w].Node(), setTempo(s, playerID(w), want), fsm.StatusOK)
		var stale float64
		slow.Node().View(func(st *fsm.State, _ uint64) { stale = st.Session(s).State.Tempo })
		if stale != want {
			lagged++
		}
		check(100+i, slow.Node(), want)
	}
	t.Logf("a stale View lagged behind the write in %d of 20 iterations", lagged)
	c.Heal()

	want := 111.0
	submit(t, ctx, nodes[0], setTempo(s, playerID(0), want), fsm.StatusOK)
	for _, n := range nodes {
		testcluster.Eventually(t, waitMid, func() error {
			var got float64
			n.View(func(st *fsm.State, _ uint64) { got = st.Session(s).State.Tempo })
			if got != want {
				return fmt.Errorf("%s views tempo %v, want %v", n.ID(), got, want)
			}
			return nil
		})
	}
}

// TestSubmitErrors checks the errors Submit and friends return for requests
// that can never succeed, and on a closed node.
func TestSubmitErrors(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, time.Minute)
	leader, followers := waitFollowers(t, c)
	fn, ln := c.Members[followers[0]].Node(), c.Members[leader].Node()
	big := strings.Repeat("x", node.MaxEntryBytes)
	if _, err := fn.Submit(ctx, fsm.Command{Kind: fsm.KindCreate, Session: sessionID(1), Name: &big}); !errors.Is(err, node.ErrTooLarge) {
		t.Fatalf("oversized command: %v, want ErrTooLarge", err)
	}
	if _, err := fn.Submit(ctx, fsm.Command{}); err == nil {
		t.Fatal("command without a kind was accepted")
	}
	if _, err := fn.Subscribe(sessionID(2), nil); !errors.Is(err, node.ErrSessionNotFound) {
		t.Fatalf("subscribe to a missing session: %v, want ErrSessionNotFound", err)
	}
	if err := fn.ChangeMember(ctx, node.MemberChange{ID: "n9"}); !errors.Is(err, node.ErrBadRequest) {
		t.Fatalf("add without a peer address: %v, want ErrBadRequest", err)
	}
	for _, n := range []*node.Node{fn, ln} {
		if err := n.TransferLeadership(ctx, "n9"); !errors.Is(err, node.ErrBadRequest) {
			t.Fatalf("transfer through %s to an unknown member: %v, want ErrBadRequest", n.ID(), err)
		}
	}

	c.Kill(followers[0])
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := fn.Submit(sctx, setTempo(sessionID(1), playerID(1), 90)); !errors.Is(err, node.ErrShutdown) {
		t.Fatalf("submit on a closed node: %v, want ErrShutdown", err)
	}
	if err := fn.Barrier(sctx); !errors.Is(err, node.ErrShutdown) {
		t.Fatalf("barrier on a closed node: %v, want ErrShutdown", err)
	}
	if _, err := fn.Subscribe(sessionID(1), nil); !errors.Is(err, node.ErrShutdown) {
		t.Fatalf("subscribe on a closed node: %v, want ErrShutdown", err)
	}
	if err := fn.ChangeMember(sctx, node.MemberChange{Remove: true, ID: "n9"}); !errors.Is(err, node.ErrShutdown) {
		t.Fatalf("member change on a closed node: %v, want ErrShutdown", err)
	}
	if st := fn.Status(); st.State != "shutdown" {
		t.Fatalf("closed node reports state %q", st.State)
	}
	if err := fn.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// TestClockAheadRefused: the leader refuses a forwarded command stamped more
// than MaxClockAhead ahead of its own clock, so that one node with a clock
// far ahead cannot make sessions forget op IDs early (fsm.OpRetention) and
// refuse everyone else's writes; once the clock is right, writes go through.
func TestClockAheadRefused(t *testing.T) {
	var offsets [3]atomic.Int64 // per member, added to its clock
	c := testcluster.New(t, testcluster.Options{FirstIP: 236, Configure: func(i int, cfg *node.Config) {
		cfg.Now = func() time.Time { return time.Now().Add(time.Duration(offsets[i].Load())) }
	}})
	ctx := testcluster.Context(t, time.Minute)
	leader, followers := waitFollowers(t, c)
	settle(t, c, waitLong)
	s, p := sessionID(1), playerID(1)
	f := c.Members[followers[0]]
	createSession(t, ctx, c.Members[leader].Node(), s)
	joinPlayer(t, ctx, c.Members[leader].Node(), s, p)

	offsets[f.Index].Store(int64(2 * time.Minute))
	_, err := f.Node().Submit(ctx, setTempo(s, p, 70))
	if err == nil || !strings.Contains(err.Error(), "ahead of the leader's") {
		t.Fatalf("a command stamped 2 min ahead through %s: %v, want a refusal naming the clock", f.ID, err)
	}
	offsets[f.Index].Store(0)
	submit(t, ctx, f.Node(), setTempo(s, p, 71), fsm.StatusOK)
	readSession(t, ctx, c.Members[leader].Node(), s, func(s *fsm.Session) {
		if s.State.Tempo != 71 {
			t.Errorf("tempo %v, want 71 (the refused 70 must not apply)", s.State.Tempo)
		}
	})
}
