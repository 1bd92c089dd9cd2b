package node_test

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sync"
	"testing"
	"time"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
)

// hubQueueNode is the member whose subscribers get a tiny queue.
const hubQueueNode = 2

// observed is what one subscription saw: the snapshot it started from and
// every delivery after it.
type observed struct {
	sub        *node.Subscription
	index      uint64 // the index the snapshot reflects
	lastSeq    uint64 // the session's last mutating index in the snapshot
	tempo      float64
	steps      [fsm.MaxSteps]bool
	done       chan struct{} // closed when the reader has seen the subscription end
	deliveries []*node.Delivery
}

// nextDelivery waits for sub's next delivery. It returns nil and why the
// subscription ended once it has ended and handed out what was queued
// before, or nil and ctx's error.
func nextDelivery(ctx context.Context, sub *node.Subscription) (*node.Delivery, error) {
	woken := make(chan struct{}, 1)
	sub.SetWake(func() {
		select {
		case woken <- struct{}{}:
		default: // a wake-up already pending covers this one
		}
	})
	for {
		if d, err := sub.Pop(); d != nil || err != nil {
			return d, err
		}
		select {
		case <-woken:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// deliveries yields sub's deliveries until it ends, as ranging over a
// channel closed at the end would.
func deliveries(sub *node.Subscription) iter.Seq[*node.Delivery] {
	return func(yield func(*node.Delivery) bool) {
		for {
			d, err := nextDelivery(context.Background(), sub)
			if err != nil || !yield(d) {
				return
			}
		}
	}
}

func subscribe(tb testing.TB, n *node.Node, session string) *observed {
	tb.Helper()
	o := &observed{done: make(chan struct{})}
	sub, err := n.Subscribe(session, func(s *fsm.Session, index uint64) {
		o.index, o.lastSeq, o.tempo = index, s.LastSeq, s.State.Tempo
		for i := range o.steps {
			o.steps[i] = stepOn(s, i)
		}
	})
	if err != nil {
		tb.Fatalf("subscribe to %s on %s: %v", session, n.ID(), err)
	}
	o.sub = sub
	go func() {
		defer close(o.done)
		for d := range deliveries(sub) {
			o.deliveries = append(o.deliveries, d)
		}
	}()
	return o
}

// TestHubSubscriptionsUnderLoad subscribes on a follower again and again
// while writers mutate the session through every node. For every
// subscription, the snapshot plus the deliveries after it reconstruct the
// final state, with nothing missing, duplicated or out of order (I3).
func TestHubSubscriptionsUnderLoad(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Configure: func(i int, cfg *node.Config) {
		if i == hubQueueNode {
			cfg.SubscriberQueue = 4
		}
	}})
	ctx := testcluster.Context(t, 2*time.Minute)
	leader, followers := waitFollowers(t, c)
	f := followers[0]
	if f == hubQueueNode {
		f = followers[1]
	}
	fn := c.Members[f].Node()
	nodes := running(c)
	s := sessionID(1)
	createSession(t, ctx, c.Members[leader].Node(), s)
	const writers, perWriter = 3, 40
	for w := 0; w < writers; w++ {
		joinPlayer(t, ctx, nodes[w%len(nodes)], s, playerID(w))
	}

	var (
		mu      sync.Mutex // guards applied, errs
		applied []uint64   // indexes of the mutations that changed the session
		errs    []error
	)
	progress := make(chan struct{}, writers*perWriter)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				c := toggleStep(s, playerID(w), (w*perWriter+i)%fsm.MaxSteps)
				if i%3 == 0 {
					c = setTempo(s, playerID(w), float64(60+w*perWriter+i))
				}
				r, err := nodes[(w+i)%len(nodes)].Submit(ctx, c)
				mu.Lock()
				if err == nil && r.Status == fsm.StatusOK {
					applied = append(applied, r.Index)
				} else {
					errs = append(errs, fmt.Errorf("writer %d: %v %v", w, r, err))
				}
				mu.Unlock()
				progress <- struct{}{}
				if err != nil {
					return
				}
			}
		}()
	}
	writing := make(chan struct{})
	go func() { wg.Wait(); close(writing) }()
	var subs []*observed
subscribing:
	for k := 0; k < 12; k++ {
		for j := 0; j < 8; j++ {
			select {
			case <-progress:
			case <-writing:
				break subscribing
			}
		}
		subs = append(subs, subscribe(t, fn, s))
	}
	<-writing
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	slices.Sort(applied)
	last := applied[len(applied)-1]
	c.WaitApplied(waitMid, last)

	var tempo float64
	var steps [fsm.MaxSteps]bool
	readSession(t, ctx, fn, s, func(s *fsm.Session) {
		tempo = s.State.Tempo
		for i := range steps {
			steps[i] = stepOn(s, i)
		}
		if s.LastSeq != last {
			t.Errorf("session lastSeq %d, last applied mutation %d", s.LastSeq, last)
		}
	})

	for k, o := range subs {
		o.sub.Close()
		<-o.done
		if !errors.Is(o.sub.Err(), node.ErrUnsubscribed) {
			t.Errorf("subscription %d ended with %v, want ErrUnsubscribed", k, o.sub.Err())
		}
		var want []uint64
		for _, i := range applied {
			if i > o.index {
				want = append(want, i)
			}
		}
		var got []uint64
		prev, prevSeq := o.index, o.lastSeq
		tempo0, steps0 := o.tempo, o.steps
		for _, d := range o.deliveries {
			if d.Index <= prev {
				t.Fatalf("subscription %d (snapshot at %d): delivery %d after %d", k, o.index, d.Index, prev)
			}
			prev = d.Index
			e := d.Event
			if !e.Type.IsMutation() {
				continue
			}
			if e.Seq != d.Index || e.PrevSeq != prevSeq {
				t.Fatalf("subscription %d: mutation at %d has seq %d prevSeq %d, want prevSeq %d", k, d.Index, e.Seq, e.PrevSeq, prevSeq)
			}
			prevSeq = e.Seq
			got = append(got, d.Index)
			switch e.Type {
			case fsm.EventTempoChanged:
				tempo0 = e.Number
			case fsm.EventStepToggled:
				steps0[e.Step] = e.Flag
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("subscription %d (snapshot at %d): delivered mutations %v, want %v", k, o.index, got, want)
		}
		if tempo0 != tempo || steps0 != steps {
			t.Fatalf("subscription %d: snapshot + deliveries give tempo %v and steps %v, the final state has %v and %v", k, tempo0, steps0, tempo, steps)
		}
	}
	t.Logf("%d subscriptions, %d mutations; snapshots at %d..%d", len(subs), len(applied), subs[0].index, subs[len(subs)-1].index)
	if fn.Subscribers() != 0 {
		t.Fatalf("%d subscribers left after closing all", fn.Subscribers())
	}
}

// TestHubSlowSubscriberAndShutdown: a subscriber that never reads is closed
// with ErrSlowSubscriber once its queue (4) overflows, while one that keeps
// up on the same node gets every event; closing the node ends the remaining
// subscriptions with ErrShutdown.
func TestHubSlowSubscriberAndShutdown(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Configure: func(i int, cfg *node.Config) {
		if i == hubQueueNode {
			cfg.SubscriberQueue = 4
		}
	}})
	ctx := testcluster.Context(t, 2*time.Minute)
	n := c.Members[hubQueueNode].Node()
	s, p := sessionID(1), playerID(1)
	createSession(t, ctx, n, s)
	joinPlayer(t, ctx, n, s, p)

	slow, err := n.Subscribe(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := n.Subscribe(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan uint64, 64)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for d := range deliveries(fast) {
			got <- d.Index
		}
	}()
	var want []uint64
	for i := 0; i < 10; i++ {
		// Submit returns once n has applied the entry, so its event is queued;
		// the fast reader takes it before the next write.
		r := submit(t, ctx, n, toggleStep(s, p, i), fsm.StatusOK)
		want = append(want, r.Index)
		select {
		case idx := <-got:
			if idx != r.Index {
				t.Fatalf("fast subscriber got index %d, want %d", idx, r.Index)
			}
		case <-ctx.Done():
			t.Fatalf("fast subscriber did not get index %d", r.Index)
		}
	}
	if !errors.Is(slow.Err(), node.ErrSlowSubscriber) {
		t.Fatalf("slow subscriber: Err() = %v, want ErrSlowSubscriber", slow.Err())
	}
	var queued []uint64
	for d := range deliveries(slow) {
		queued = append(queued, d.Index)
	}
	if !slices.Equal(queued, want[:4]) {
		t.Fatalf("slow subscriber's queue held %v, want the first four %v and nothing after", queued, want[:4])
	}
	if fast.Err() != nil {
		t.Fatalf("fast subscriber ended: %v", fast.Err())
	}
	if got := n.Subscribers(); got != 1 {
		t.Fatalf("%d subscribers, want 1 (the slow one is dropped)", got)
	}

	// Another subscriber on a follower, then shut both nodes down.
	other := c.Members[(hubQueueNode+1)%len(c.Members)]
	testcluster.Eventually(t, waitMid, func() error {
		var ok bool
		other.Node().View(func(st *fsm.State, _ uint64) { ok = st.Session(s) != nil })
		if !ok {
			return errors.New("session not there yet")
		}
		return nil
	})
	o := subscribe(t, other.Node(), s)
	c.Kill(hubQueueNode)
	c.Kill(other.Index)
	<-readerDone
	<-o.done
	for name, sub := range map[string]*node.Subscription{"fast": fast, "follower's": o.sub} {
		if !errors.Is(sub.Err(), node.ErrShutdown) {
			t.Errorf("%s subscription ended with %v, want ErrShutdown", name, sub.Err())
		}
	}
}
