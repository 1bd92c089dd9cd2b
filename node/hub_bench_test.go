package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"

	"chorus/fsm"
)

// Benchmarks of the per-message paths between a socket and the log, and of
// the hub's memory per subscriber:
//
//	go test ./node -run '^$' -bench 'WireDecode|BroadcastEncode|HubPublish|HubSubscriberMemory' -benchmem

// benchEvents are broadcasts as Apply makes them.
var benchEvents = map[string]fsm.Event{
	"step_toggled": {
		Type: fsm.EventStepToggled, Session: "00000000-0000-4000-8000-00000000b001",
		Seq: 1041, PrevSeq: 1038, ClientSeq: 12, HasClientSeq: true,
		Player: "10000000-0000-4000-8000-000000000001", TrackID: "t1", Step: 3, Flag: true,
	},
	"parameter_lock_set": {
		Type: fsm.EventParameterLockSet, Session: "00000000-0000-4000-8000-00000000b001",
		Seq: 1042, PrevSeq: 1041, ClientSeq: 13, HasClientSeq: true,
		Player: "10000000-0000-4000-8000-000000000001", TrackID: "track-1", Step: 5,
		Lock: func() *fsm.ParameterLock {
			pitch, vol := 7.0, 0.8
			l := fsm.NewLock(&pitch, &vol, false)
			return &l
		}(),
	},
}

// BenchmarkBroadcastEncode is what Delivery.Frame does the first time one of
// a session's sockets asks for an event's wire frame.
func BenchmarkBroadcastEncode(b *testing.B) {
	for _, name := range []string{"step_toggled", "parameter_lock_set"} {
		b.Run(name, func(b *testing.B) {
			ev := benchEvents[name]
			b.ReportAllocs()
			for b.Loop() {
				if f := ev.AppendJSON(nil); len(f) == 0 {
					b.Fatal("empty frame")
				}
			}
		})
	}
}

// BenchmarkWireDecode is the node's half of decoding a client message
// (player.Handle up to Submit): the fields of the type, then the command.
func BenchmarkWireDecode(b *testing.B) {
	for _, bm := range []struct{ typ, frame string }{
		{"toggle_step", `{"type":"toggle_step","trackId":"t1","step":3,"seq":12,"ack":40}`},
		{"set_parameter_lock", `{"type":"set_parameter_lock","trackId":"track-1","step":5,"lock":{"pitch":7,"volume":0.8},"seq":13,"ack":41}`},
	} {
		b.Run(bm.typ, func(b *testing.B) {
			raw := []byte(bm.frame)
			b.ReportAllocs()
			for b.Loop() {
				var m wire
				if err := json.Unmarshal(raw, &m); err != nil {
					b.Fatal(err)
				}
				if _, ok := mutation(bm.typ, &m); !ok {
					b.Fatalf("%s: not a mutation", raw)
				}
			}
		})
	}
}

// benchHub returns a hub with subs subscribers in each of sessions sessions,
// and the subscriptions of the first session.
func benchHub(tb testing.TB, sessions, subs, queue int) (*hub, []*Subscription) {
	tb.Helper()
	h := newHub(hclog.NewNullLogger(), queue)
	tb.Cleanup(func() { h.shutdown(ErrShutdown) })
	var first []*Subscription
	for i := range sessions {
		for range subs {
			s, err := h.add(fmt.Sprintf("00000000-0000-4000-8000-%012d", i), 0)
			if err != nil {
				tb.Fatal(err)
			}
			if i == 0 {
				first = append(first, s)
			}
		}
	}
	return h, first
}

// popWait waits for s's next delivery, as player.Next does: nil and why s
// ended once it has ended and handed out what was queued before, or nil and
// ctx's error.
func popWait(ctx context.Context, s *Subscription) (*Delivery, error) {
	woken := make(chan struct{}, 1)
	s.SetWake(func() {
		select {
		case woken <- struct{}{}:
		default: // a wake-up already pending covers this one
		}
	})
	for {
		if d, err := s.Pop(); d != nil || err != nil {
			return d, err
		}
		select {
		case <-woken:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// BenchmarkHubPublish publishes one event to a session with 10 subscribers,
// alone on the node or among 1,000 such sessions. Each op includes what the
// 10 sockets' writers do with it: pop it and take its frame.
func BenchmarkHubPublish(b *testing.B) {
	for _, sessions := range []int{1, 1000} {
		b.Run(fmt.Sprintf("sessions=%d/subs=10", sessions), func(b *testing.B) {
			h, subs := benchHub(b, sessions, 10, 1024)
			ev := benchEvents["step_toggled"]
			ev.Session = subs[0].Session
			events := []fsm.Event{ev}
			b.ReportAllocs()
			index := uint64(0)
			for b.Loop() {
				index++
				h.publish(index, events)
				for _, s := range subs {
					if d, _ := s.Pop(); d == nil || d.Index != index || len(d.Frame()) == 0 {
						b.Fatalf("got %+v, want index %d and its frame", d, index)
					}
				}
			}
		})
	}
}

// BenchmarkHubPublishBurst publishes 64 events at once to a session with 10
// subscribers, each read by a goroutine of its own as sockets' writers do.
// An op ends when every reader has every event's frame.
func BenchmarkHubPublishBurst(b *testing.B) {
	const burst = 64
	h, subs := benchHub(b, 1, 10, 1024)
	ev := benchEvents["step_toggled"]
	ev.Session = subs[0].Session
	events := []fsm.Event{ev}
	done := make(chan error, len(subs))
	var readers sync.WaitGroup
	for _, s := range subs {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for want := uint64(1); ; want++ {
				d, err := popWait(context.Background(), s)
				if err != nil {
					return // Close below
				}
				if d.Index != want || len(d.Frame()) == 0 {
					done <- fmt.Errorf("got index %d, want %d and its frame", d.Index, want)
					return
				}
				if want%burst == 0 {
					done <- nil
				}
			}
		}()
	}
	b.Cleanup(func() {
		for _, s := range subs {
			s.Close() // its reader sees the end, and returns
		}
		readers.Wait()
	})
	b.ReportAllocs()
	index := uint64(0)
	for b.Loop() {
		for range burst {
			index++
			h.publish(index, events)
		}
		for range subs {
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*burst), "ns/event")
}

// TestHubQueue checks a subscription's queue: order, the bound, what is
// handed out after the end, Close from another goroutine, shutdown, what an
// idle subscription keeps, and one frame for every subscriber.
func TestHubQueue(t *testing.T) {
	const queue = 40
	publish := func(h *hub, s *Subscription, from, to uint64) {
		for i := from; i <= to; i++ {
			h.publish(i, []fsm.Event{{Type: fsm.EventTempoChanged, Session: s.Session, Seq: i, Number: float64(i)}})
		}
	}
	// popAll pops what is queued, and why s ended (nil if it is open).
	popAll := func(s *Subscription) (got []uint64, err error) {
		for {
			d, err := s.Pop()
			if d == nil {
				return got, err
			}
			got = append(got, d.Index)
		}
	}
	want := func(from, to uint64) (w []uint64) {
		for i := from; i <= to; i++ {
			w = append(w, i)
		}
		return w
	}
	t.Run("order", func(t *testing.T) {
		h, subs := benchHub(t, 1, 1, queue)
		s := subs[0]
		publish(h, s, 1, 30)
		if got, err := popAll(s); !slices.Equal(got, want(1, 30)) || err != nil {
			t.Fatalf("popped %v (%v), want 1..30 (open)", got, err)
		}
		publish(h, s, 31, 35)
		s.Close()
		publish(h, s, 36, 36) // after the end: not queued
		if got, err := popAll(s); !slices.Equal(got, want(31, 35)) || !errors.Is(err, ErrUnsubscribed) {
			t.Fatalf("after Close: %v (%v), want 31..35 (unsubscribed)", got, err)
		}
	})
	t.Run("overflow", func(t *testing.T) {
		h, subs := benchHub(t, 1, 2, queue)
		slow, fast := subs[0], subs[1]
		for i := uint64(1); i <= queue+5; i++ {
			publish(h, slow, i, i)
			if d, err := fast.Pop(); d == nil || d.Index != i {
				t.Fatalf("fast subscriber popped %v (%v), want index %d", d, err, i)
			}
		}
		if got, err := popAll(slow); !slices.Equal(got, want(1, queue)) || !errors.Is(err, ErrSlowSubscriber) {
			t.Fatalf("overflowed: %v (%v), want 1..%d (slow)", got, err, queue)
		}
		if h.count() != 1 || fast.Err() != nil {
			t.Fatalf("%d subscribers (fast one: %v), want the slow one dropped and the fast one open", h.count(), fast.Err())
		}
	})
	t.Run("close from another goroutine", func(t *testing.T) {
		h, subs := benchHub(t, 1, 1, queue)
		s := subs[0]
		ctx := testContext(t)
		got, end := make(chan uint64, queue), make(chan error, 1)
		go func() {
			for {
				d, err := popWait(ctx, s)
				if d == nil {
					end <- err
					return
				}
				got <- d.Index
			}
		}()
		publish(h, s, 1, 5)
		for i := uint64(1); i <= 5; i++ {
			select {
			case g := <-got:
				if g != i {
					t.Fatalf("consumer got %d, want %d", g, i)
				}
			case <-ctx.Done():
				t.Fatalf("consumer did not get %d", i)
			}
		}
		s.Close() // the consumer has everything, so it waits or is about to
		select {
		case err := <-end:
			if !errors.Is(err, ErrUnsubscribed) {
				t.Fatalf("consumer saw %v, want ErrUnsubscribed", err)
			}
		case <-ctx.Done():
			t.Fatal("the consumer was not woken by Close")
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		h, subs := benchHub(t, 1, 1, queue)
		s := subs[0]
		publish(h, s, 1, 30)
		h.shutdown(ErrShutdown)
		if got, err := popAll(s); !slices.Equal(got, want(1, 30)) || !errors.Is(err, ErrShutdown) {
			t.Fatalf("shut down: %v (%v), want 1..30 (shutdown)", got, err)
		}
		if _, err := h.add(s.Session, 0); !errors.Is(err, ErrShutdown) {
			t.Fatalf("add after shutdown: %v, want ErrShutdown", err)
		}
	})
	t.Run("idle", func(t *testing.T) {
		h, subs := benchHub(t, 1, 1, queue)
		s := subs[0]
		publish(h, s, 1, 30)
		if _, err := popAll(s); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		q := s.queue
		s.mu.Unlock()
		if q != nil {
			t.Fatalf("drained queue keeps an array of %d", cap(q))
		}
	})
	t.Run("one frame", func(t *testing.T) {
		const n = 10
		h, subs := benchHub(t, 1, n, queue)
		ev := benchEvents["parameter_lock_set"]
		ev.Session = subs[0].Session
		h.publish(1, []fsm.Event{ev})
		h.publishFrame(ev.Session, "", []byte(`{"type":"cursor_moved"}`))
		wantFrames := [][]byte{ev.AppendJSON(nil), []byte(`{"type":"cursor_moved"}`)}
		// Every subscriber takes its frames at once, so the first encode races with the rest.
		frames := make([][][]byte, n)
		var wg sync.WaitGroup
		for i, s := range subs {
			wg.Go(func() {
				for {
					d, _ := s.Pop()
					if d == nil {
						return
					}
					frames[i] = append(frames[i], d.Frame())
				}
			})
		}
		wg.Wait()
		for i := range subs {
			if len(frames[i]) != len(wantFrames) {
				t.Fatalf("subscriber %d got %d frames, want %d", i, len(frames[i]), len(wantFrames))
			}
			for k, f := range frames[i] {
				if !bytes.Equal(f, wantFrames[k]) {
					t.Fatalf("subscriber %d frame %d: %s, want %s", i, k, f, wantFrames[k])
				}
				if unsafe.SliceData(f) != unsafe.SliceData(frames[0][k]) {
					t.Fatalf("subscriber %d frame %d is a copy of its own: the event was encoded more than once", i, k)
				}
			}
		}
	})
}

func testContext(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// BenchmarkHubSubscriberMemory reports the live heap of one idle
// subscription (B/sub), at the default queue bound.
func BenchmarkHubSubscriberMemory(b *testing.B) {
	const sessions, subs = 1000, 10
	var per float64
	for b.Loop() {
		before := benchLiveHeap()
		h, _ := benchHub(b, sessions, subs, Config{}.withDefaults().SubscriberQueue)
		per = float64(benchLiveHeap()-before) / (sessions * subs)
		runtime.KeepAlive(h)
		h.shutdown(ErrShutdown)
	}
	b.ReportMetric(per, "B/sub")
}

func benchLiveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
