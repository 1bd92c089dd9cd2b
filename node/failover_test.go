package node_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
	"chorus/transport"
)

// failoverBound is how soon after the leader dies a new one must lead, with
// the default 500 ms heartbeat and election timeouts.
const failoverBound = 2 * time.Second

// TestLeaderFailover kills the leader three times. Each time the survivors
// elect a new leader within failoverBound of the kill, writes resume through
// both survivors, and the old leader catches up when it comes back.
func TestLeaderFailover(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, 2*time.Minute)
	s := sessionID(1)
	createSession(t, ctx, running(c)[0], s)
	for round := 0; round < 3; round++ {
		old := settle(t, c, waitLong)
		var survivors []int
		for i := range c.Members {
			if i != old {
				survivors = append(survivors, i)
			}
		}
		killed := time.Now()
		c.Kill(old)
		var took time.Duration
		testcluster.Eventually(t, waitMid, func() error {
			if _, err := c.LeaderIndex(survivors...); err != nil {
				return err
			}
			took = time.Since(killed)
			return nil
		})
		t.Logf("round %d: killed leader %s, new leader after %v", round, c.Members[old].ID, took.Round(time.Millisecond))
		if took >= failoverBound {
			t.Errorf("round %d: new leader %v after the kill, want < %v", round, took.Round(time.Millisecond), failoverBound)
		}

		p := playerID(round)
		var last uint64
		joinPlayer(t, ctx, c.Members[survivors[0]].Node(), s, p)
		for k, i := range survivors {
			last = submit(t, ctx, c.Members[i].Node(), setTempo(s, p, float64(100+10*round+k)), fsm.StatusOK).Index
		}
		c.Start(old)
		c.WaitApplied(waitLong, last)
		readSession(t, ctx, c.Members[old].Node(), s, func(s *fsm.Session) {
			if want := float64(100 + 10*round + 1); s.State.Tempo != want {
				t.Errorf("round %d: restarted %s reads tempo %v, want %v", round, c.Members[old].ID, s.State.Tempo, want)
			}
		})
		waitSameState(t, c, waitMid)
	}
}

// snapshotConfig makes snapshots and log compaction frequent.
func snapshotConfig(_ int, cfg *node.Config) {
	cfg.SnapshotThreshold = 64
	cfg.TrailingLogs = 32
	cfg.SnapshotInterval = 100 * time.Millisecond
	cfg.PresenceTimeout = -1 // the follower is down for a while; keep its players
}

// submitMany submits n set_tempo mutations through via from a few goroutines
// and returns the highest index.
func submitMany(tb testing.TB, ctx context.Context, via *node.Node, session, player string, n int) uint64 {
	tb.Helper()
	const workers = 6
	var (
		mu   sync.Mutex // guards last, errs
		last uint64
		errs []error
		wg   sync.WaitGroup
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				r, err := via.Submit(ctx, setTempo(session, player, float64(60+i%120)))
				mu.Lock()
				switch {
				case err != nil:
					errs = append(errs, err)
				case r.Status != fsm.StatusOK:
					errs = append(errs, fmt.Errorf("status %s", r.Status))
				default:
					last = max(last, r.Index)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatalf("submit %d writes: %v", n, err)
	}
	return last
}

// TestFollowerCatchesUpBySnapshot writes a few hundred entries while a
// follower is down and compacts the leader's log, so the follower can only
// catch up by installing the leader's snapshot. It comes back isolated first,
// subscribes on its own stale state, and is then let in: the install replaces
// its state (the subscription ends with ErrResync) and it ends byte-identical
// to the others.
func TestFollowerCatchesUpBySnapshot(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Configure: snapshotConfig})
	ctx := testcluster.Context(t, 2*time.Minute)
	leader, followers := waitFollowers(t, c)
	f := followers[0]
	ln := c.Members[leader].Node()
	s, p := sessionID(1), playerID(1)
	createSession(t, ctx, ln, s)
	joinPlayer(t, ctx, ln, s, p)
	last := submitMany(t, ctx, ln, s, p, 80)
	c.WaitApplied(waitMid, last)
	// The follower restarts on a snapshot of its own that has the session.
	if err := c.Members[f].Node().Snapshot(); err != nil {
		t.Fatalf("snapshot on %s: %v", c.Members[f].ID, err)
	}
	before := c.Members[f].Node().Status()
	c.Kill(f)

	last = submitMany(t, ctx, ln, s, p, 300)
	if err := ln.Snapshot(); err != nil {
		t.Fatalf("snapshot on the leader: %v", err)
	}

	c.Isolate(f)
	c.Start(f)
	fn := c.Members[f].Node()
	var snapIndex uint64
	sub, err := fn.Subscribe(s, func(_ *fsm.Session, index uint64) { snapIndex = index })
	if err != nil {
		t.Fatalf("subscribe on the restarted follower: %v", err)
	}
	defer sub.Close()
	if snapIndex > before.LastLogIndex || snapIndex >= last {
		t.Fatalf("restarted follower starts at index %d: before the kill its log ended at %d, the leader is at %d", snapIndex, before.LastLogIndex, last)
	}
	c.Heal()
	c.WaitApplied(waitLong, last)
	wctx, cancel := context.WithTimeout(ctx, waitLong)
	defer cancel()
	for {
		d, err := nextDelivery(wctx, sub)
		if d == nil {
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatal("subscription still open after the follower caught up")
			}
			break
		}
		// Events would be a replay from the log, which the leader no longer has.
		t.Errorf("delivery at index %d: the follower replayed the log instead of installing a snapshot", d.Index)
	}
	if !errors.Is(sub.Err(), node.ErrResync) {
		t.Fatalf("subscription ended with %v, want ErrResync (a snapshot install)", sub.Err())
	}
	if got := fn.AppliedIndex(); got < last {
		t.Fatalf("follower applied %d < %d", got, last)
	}
	waitSameState(t, c, waitMid)
}

// TestPartitionedLeader cuts the leader off. Its Submit fails with a
// NoLeaderError once it has known no leader for NoLeaderTimeout; the
// majority elects a leader and keeps writing; after the partition heals the
// old leader catches up and all states match.
func TestPartitionedLeader(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Configure: func(_ int, cfg *node.Config) {
		cfg.NoLeaderTimeout = time.Second
	}})
	ctx := testcluster.Context(t, 2*time.Minute)
	old, majority := waitFollowers(t, c)
	s, p := sessionID(1), playerID(1)
	mn := c.Members[majority[0]].Node()
	createSession(t, ctx, mn, s)
	joinPlayer(t, ctx, mn, s, p)
	submit(t, ctx, c.Members[old].Node(), setTempo(s, p, 100), fsm.StatusOK)

	c.Isolate(old)
	on := c.Members[old].Node()
	sctx, cancel := context.WithTimeout(ctx, 6*time.Second)
	start := time.Now()
	_, err := on.Submit(sctx, setTempo(s, p, 61))
	cancel()
	wantNoLeader(t, err)
	t.Logf("minority submit failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	rctx, cancel := context.WithTimeout(ctx, 6*time.Second)
	err = on.Read(rctx, func(*fsm.State, uint64) {})
	cancel()
	wantNoLeader(t, err)

	c.WaitLeader(waitMid, majority...)
	var last uint64
	for i, m := range majority {
		last = submit(t, ctx, c.Members[m].Node(), setTempo(s, p, float64(120+i)), fsm.StatusOK).Index
	}
	if on.Ready() {
		t.Error("the isolated node reports ready")
	}

	c.Heal()
	c.WaitLeader(waitMid)
	c.WaitApplied(waitMid, last)
	readSession(t, ctx, on, s, func(s *fsm.Session) {
		if s.State.Tempo != 121 {
			t.Errorf("healed node reads tempo %v, want 121 (the majority's last write)", s.State.Tempo)
		}
	})
	waitSameState(t, c, waitMid)
}

// TestForwardToFrozenLeader freezes the leader (every byte to and from it
// vanishes, its connections stay open, as with SIGSTOP) while a follower
// forwards a write and a read barrier to it. Once the follower sees the
// leader change, it gives up on the frozen one and the write and the read
// go through the new leader, long before their deadline.
func TestForwardToFrozenLeader(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{FirstIP: 251})
	ctx := testcluster.Context(t, 2*time.Minute)
	old, followers := waitFollowers(t, c)
	s, p := sessionID(1), playerID(1)
	fn := c.Members[followers[0]].Node()
	createSession(t, ctx, fn, s)
	joinPlayer(t, ctx, fn, s, p)

	for _, f := range followers {
		c.Faults.Set(c.Members[old].ID, c.Members[f].ID, transport.LinkFault{Drop: true})
		c.Faults.Set(c.Members[f].ID, c.Members[old].ID, transport.LinkFault{Drop: true})
	}
	// Without the early give-up both calls would wait out this deadline and fail.
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	res := submit(t, sctx, fn, setTempo(s, p, 77), fsm.StatusOK)
	t.Logf("the forwarded write committed at index %d after %v", res.Index, time.Since(start).Round(time.Millisecond))
	if err := fn.Barrier(sctx); err != nil {
		t.Fatalf("read barrier through a follower after the leader froze: %v", err)
	}
	if got := c.WaitLeader(waitMid, followers...); got == old {
		t.Fatalf("the frozen node %s still leads", c.Members[old].ID)
	}
	c.Heal()
	c.WaitApplied(waitMid, res.Index)
	waitSameState(t, c, waitMid)
}

// TestGracefulShutdownHandsOverLeadership stops the leader with Shutdown: it
// transfers leadership before it closes, so the survivors have a leader at
// once, one term later, without waiting out an election timeout.
func TestGracefulShutdownHandsOverLeadership(t *testing.T) {
	rec := newLogRecorder(t)
	c := testcluster.New(t, testcluster.Options{Configure: recordLogs(rec)})
	ctx := testcluster.Context(t, time.Minute)
	old := settle(t, c, waitLong)
	term := c.Members[old].Node().Status().Term
	var survivors []int
	for i := range c.Members {
		if i != old {
			survivors = append(survivors, i)
		}
	}
	start := time.Now()
	c.Stop(old)
	next := c.WaitLeader(waitMid, survivors...)
	t.Logf("leader %s stopped; %s leads %v after the stop began", c.Members[old].ID, c.Members[next].ID, time.Since(start).Round(time.Millisecond))
	if got := rec.match(c.Members[old].ID + ": leadership transferred before shutdown"); len(got) != 1 {
		t.Fatalf("the stopped leader did not report a handover: %q", got)
	}
	if st := c.Members[next].Node().Status(); st.Term != term+1 {
		t.Fatalf("new leader's term %d, want %d: the handover should need exactly one election", st.Term, term+1)
	}
	s := sessionID(1)
	createSession(t, ctx, c.Members[survivors[0]].Node(), s)
	c.Start(old)
	c.WaitLeader(waitMid)
	readSession(t, ctx, c.Members[old].Node(), s, func(*fsm.Session) {})

	// A follower's Shutdown just closes it.
	f := survivors[0]
	if f == next {
		f = survivors[1]
	}
	c.Stop(f)
	if got := c.WaitLeader(waitMid); got != next {
		t.Fatalf("stopping follower %s moved leadership to %s", c.Members[f].ID, c.Members[got].ID)
	}
	c.Start(f)

	// A leader whose handover has no time left still shuts down.
	l := c.WaitLeader(waitMid)
	expired, cancel := context.WithCancel(ctx)
	cancel()
	done := make(chan error, 1)
	go func() { done <- c.Members[l].Node().Shutdown(expired) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown with an expired context: %v", err)
		}
	case <-time.After(waitMid):
		t.Fatal("leader's Shutdown with an expired context did not return")
	}
	c.Kill(l) // already closed; this only tells the cluster
}

// TestRestartUnderForwardedLoad restarts the leader again and again while
// writers keep submitting through every node. Followers forward to the
// address they believe leads, so RPCs reach each new incarnation while it is
// still starting; every write must eventually be acknowledged, exactly once.
func TestRestartUnderForwardedLoad(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, 2*time.Minute)
	settle(t, c, waitLong)
	s := sessionID(1)
	createSession(t, ctx, running(c)[0], s)
	const writers = 4
	stop := make(chan struct{})
	var (
		mu    sync.Mutex // guards acked, errs
		acked int
		errs  []error
		wg    sync.WaitGroup
	)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := c.Members[(w+i)%len(c.Members)].Node()
				if n == nil {
					continue // being restarted; the next member is up
				}
				// A node's own touch needs no player and always applies.
				r, err := n.Submit(ctx, fsm.Command{Kind: fsm.KindTouch, Touches: []fsm.Touch{{Session: s, At: int64(w*100000 + i + 1)}}})
				mu.Lock()
				switch {
				case errors.Is(err, node.ErrShutdown):
					// n was killed under the call: not acknowledged, not an error
				case err != nil:
					errs = append(errs, fmt.Errorf("writer %d via %s: %w", w, n.ID(), err))
				case r.Status != fsm.StatusOK:
					errs = append(errs, fmt.Errorf("writer %d via %s: %s", w, n.ID(), r.Status))
				default:
					acked++
				}
				mu.Unlock()
			}
		}()
	}
	progress := func(want int) func() error {
		return func() error {
			mu.Lock()
			defer mu.Unlock()
			if acked < want {
				return fmt.Errorf("%d writes acknowledged, waiting for %d", acked, want)
			}
			return nil
		}
	}
	for round := 0; round < 4; round++ {
		l := c.WaitLeader(waitMid)
		c.Kill(l)
		c.Start(l)
		testcluster.Eventually(t, waitLong, progress(20*(round+1)))
	}
	c.WaitLeader(waitMid)
	close(stop)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d writes acknowledged across 4 leader restarts", acked)
	waitSameState(t, c, waitMid)
}
