package node

import (
	"sync"

	"github.com/hashicorp/go-hclog"

	"chorus/fsm"
)

// Delivery is one event for a subscriber, with the log index that made it.
type Delivery struct {
	Index uint64
	Event fsm.Event
	// Frame, when set, is an ephemeral message (a cursor) that never went
	// through the log; Index and Event are then zero. Exclude is the player
	// whose own socket must not receive it.
	Frame   []byte
	Exclude string
}

// Subscription receives the events of one session, in log order, from the
// index after the snapshot it was created with. It never skips an event: when
// its queue overflows it is closed, C is closed, and Err says why.
type Subscription struct {
	Session string
	// C delivers events. It is closed when the subscription ends.
	C <-chan Delivery

	hub   *hub
	ch    chan Delivery
	after uint64 // events at or below this index are already in the snapshot

	mu     sync.Mutex // guards closed, err, and sends on ch
	closed bool
	err    error
}

// Err returns why the subscription ended, or nil while it is open.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the subscription. It is safe to call more than once and from any goroutine.
func (s *Subscription) Close() {
	s.end(ErrUnsubscribed)
	s.hub.remove(s)
}

// end closes the channel with a reason unless it is already closed.
func (s *Subscription) end(reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed, s.err = true, reason
	close(s.ch)
}

// deliver queues d without blocking. It reports false when the queue was full
// and the subscription has been ended because of it.
func (s *Subscription) deliver(d Delivery) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return true
	}
	select {
	case s.ch <- d:
		return true
	default:
		s.closed, s.err = true, ErrSlowSubscriber
		close(s.ch)
		return false
	}
}

// hub fans applied events out to this node's subscribers. publish runs on the
// raft apply goroutine and never blocks.
type hub struct {
	log   hclog.Logger
	queue int

	mu    sync.RWMutex // guards subs, final
	subs  map[string]map[*Subscription]struct{}
	final error // set by shutdown: the reason every later add fails
}

func newHub(log hclog.Logger, queue int) *hub {
	return &hub{log: log, queue: queue, subs: map[string]map[*Subscription]struct{}{}}
}

// add registers a subscriber for session whose snapshot reflects index after.
// The caller holds the state read lock, so no event above after is published
// before the subscriber is in place.
func (h *hub) add(session string, after uint64) (*Subscription, error) {
	ch := make(chan Delivery, h.queue)
	s := &Subscription{Session: session, C: ch, hub: h, ch: ch, after: after}
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
		for s := range h.subs[events[i].Session] {
			if index <= s.after {
				continue
			}
			if !s.deliver(Delivery{Index: index, Event: events[i]}) {
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
		h.remove(s)
	}
}

// publishFrame delivers an ephemeral frame to the session's subscribers.
// It never blocks; a subscriber whose queue is full is dropped as in publish.
func (h *hub) publishFrame(session, exclude string, frame []byte) {
	var dropped []*Subscription
	h.mu.RLock()
	for s := range h.subs[session] {
		if !s.deliver(Delivery{Frame: frame, Exclude: exclude}) {
			dropped = append(dropped, s)
		}
	}
	h.mu.RUnlock()
	h.drop(dropped)
}

// endAll closes every subscription with reason (shutdown, or a snapshot restore).
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
