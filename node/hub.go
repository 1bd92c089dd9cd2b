package node

import (
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"

	"chorus/fsm"
)

// Delivery is one applied event of a session, with the log index that made
// it, or an ephemeral frame (a cursor) that never went through the log.
// publish makes one Delivery per event and hands the same pointer to every
// subscriber of the session, so its wire frame is encoded at most once
// however many sockets send it. Subscribers read it and never change it.
type Delivery struct {
	// Index is the entry's log index. It is zero for an ephemeral frame:
	// raft's indexes start at 1.
	Index uint64
	// Event is a copy of the applied event (zero for an ephemeral frame), so
	// queued deliveries hold one event each, not the slice Apply returned.
	Event fsm.Event
	// Exclude, for an ephemeral frame, is the player whose own socket must
	// not receive it.
	Exclude string

	once  sync.Once // encodes frame for whichever subscriber asks first
	frame []byte    // an ephemeral frame from the start; an event's once encoded
}

// Frame returns the delivery's wire message. Every subscriber gets the same
// bytes, so callers must not modify them. Safe for concurrent use.
func (d *Delivery) Frame() []byte {
	d.once.Do(func() {
		if !d.ephemeral() {
			d.frame = d.Event.AppendJSON(nil)
		}
	})
	return d.frame
}

func (d *Delivery) ephemeral() bool { return d.Index == 0 }

// Subscription receives the events of one session, in log order, from the
// index after the snapshot it was created with. It never skips an event: when
// its queue overflows it is ended with ErrSlowSubscriber instead.
//
// Deliveries wait in a slice rather than a channel buffer: a channel would
// allocate its whole bound up front for every socket, while the slice is
// released whenever it drains, so an idle subscription holds no deliveries'
// worth of memory. Its consumer registers a wake-up (SetWake), and when woken
// Pops until Pop returns nothing: an idle consumer needs no goroutine. Pop,
// Err and Close are safe for concurrent use.
type Subscription struct {
	Session string

	hub   *hub
	after uint64                 // events at or below this index are already in the snapshot
	wake  atomic.Pointer[func()] // called after a delivery is queued or the subscription ends (SetWake)

	mu    sync.Mutex  // guards queue, err
	queue []*Delivery // oldest first; nil when empty
	err   error       // why the subscription ended; nil while it is open
}

// Pop takes the oldest queued delivery. When none is queued it returns nil
// and why the subscription ended, or nil, nil while it is open: wait on Ready
// then. Deliveries queued before the end are all handed out before the error,
// as a closed channel yields its buffer before it reports closed.
func (s *Subscription) Pop() (*Delivery, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return nil, s.err
	}
	d := s.queue[0]
	s.queue[0] = nil // the array outlives the pop; it must not keep d
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil // an idle subscriber holds no array; the next burst allocates afresh
	}
	return d, nil
}

// Err returns why the subscription ended, or nil while it is open. Some
// deliveries may still be waiting for Pop after it turns non-nil.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the subscription. It is safe to call more than once and from any
// goroutine. What was queued before it can still be popped.
func (s *Subscription) Close() {
	s.end(ErrUnsubscribed)
	s.hub.remove(s)
}

// end records reason unless the subscription has already ended, and wakes
// the consumer so it learns of the end.
func (s *Subscription) end(reason error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = reason
	}
	s.mu.Unlock()
	s.signal()
}

// SetWake registers fn, called after each delivery is queued and when the
// subscription ends. One call may stand for several deliveries, and may find
// them already taken, so after it Pop until Pop returns nothing. fn runs on
// the goroutine that queued the delivery (raft's apply goroutine, for
// events), without any of the subscription's locks: it must return quickly.
// Register it before the first Pop, or Pop once more after registering.
func (s *Subscription) SetWake(fn func()) { s.wake.Store(&fn) }

// signal wakes the consumer, if it registered a wake-up.
func (s *Subscription) signal() {
	if fn := s.wake.Load(); fn != nil {
		(*fn)()
	}
}

// deliver queues d without blocking. It reports false when the queue was full
// and the subscription has been ended because of it.
func (s *Subscription) deliver(d *Delivery) bool {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return true // ended already; the hub drops it, or has
	}
	ok := len(s.queue) < s.hub.queue
	if ok {
		s.queue = append(s.queue, d)
	} else {
		s.err = ErrSlowSubscriber
	}
	s.mu.Unlock()
	s.signal()
	return ok
}

// hub fans applied events out to this node's subscribers. publish runs on the
// raft apply goroutine and never blocks.
type hub struct {
	log     hclog.Logger
	queue   int      // the most deliveries a subscriber may have waiting
	metrics *Metrics // set before raft starts (Node.instrument); read-only after

	mu    sync.RWMutex // guards subs, final
	subs  map[string]map[*Subscription]struct{}
	final error // set by shutdown: the reason every later add fails
}

func newHub(log hclog.Logger, queue int) *hub {
	return &hub{log: log, queue: queue, metrics: nopMetrics(), subs: map[string]map[*Subscription]struct{}{}}
}

// add registers a subscriber for session whose snapshot reflects index after.
// The caller holds the state read lock, so no event above after is published
// before the subscriber is in place.
func (h *hub) add(session string, after uint64) (*Subscription, error) {
	s := &Subscription{Session: session, hub: h, after: after}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.final != nil {
		return nil, h.final
	}
	set := h.subs[session]
	if set == nil {
		set = map[*Subscription]struct{}{}
		h.subs[session] = set
	}
	set[s] = struct{}{}
	return s, nil
}

func (h *hub) remove(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if set := h.subs[s.Session]; set != nil {
		delete(set, s)
		if len(set) == 0 {
			delete(h.subs, s.Session)
		}
	}
}

// publish delivers the events of one applied entry.
func (h *hub) publish(index uint64, events []fsm.Event) {
	var dropped []*Subscription
	h.mu.RLock()
	for i := range events {
		var d *Delivery // shared by the session's subscribers; made only if one takes it
		for s := range h.subs[events[i].Session] {
			if index <= s.after {
				continue
			}
			if d == nil {
				d = &Delivery{Index: index, Event: events[i]}
			}
			if !s.deliver(d) {
				dropped = append(dropped, s)
			}
		}
	}
	h.mu.RUnlock()
	h.drop(dropped)
}

// drop removes the subscribers whose queue overflowed (deliver already ended them).
func (h *hub) drop(dropped []*Subscription) {
	for _, s := range dropped {
		h.log.Warn("dropping slow subscriber", "session_id", s.Session, "queued", h.queue)
		h.metrics.slowDropped.Inc()
		h.remove(s)
	}
}

// publishFrame delivers an ephemeral frame to the session's subscribers.
// It never blocks; a subscriber whose queue is full is dropped as in publish.
func (h *hub) publishFrame(session, exclude string, frame []byte) {
	var dropped []*Subscription
	d := &Delivery{Exclude: exclude, frame: frame}
	h.mu.RLock()
	for s := range h.subs[session] {
		if !s.deliver(d) {
			dropped = append(dropped, s)
		}
	}
	h.mu.RUnlock()
	h.drop(dropped)
}

// endAll ends every subscription with reason (shutdown, or a snapshot restore).
func (h *hub) endAll(reason error) {
	h.mu.Lock()
	all := h.subs
	h.subs = map[string]map[*Subscription]struct{}{}
	h.mu.Unlock()
	for _, set := range all {
		for s := range set {
			s.end(reason)
		}
	}
}

// shutdown ends every subscription with reason and refuses later ones: a
// Subscribe that raced with Close would otherwise never end.
func (h *hub) shutdown(reason error) {
	h.mu.Lock()
	h.final = reason
	h.mu.Unlock()
	h.endAll(reason)
}

// count returns the number of live subscriptions.
func (h *hub) count() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n := 0
	for _, set := range h.subs {
		n += len(set)
	}
	return n
}
