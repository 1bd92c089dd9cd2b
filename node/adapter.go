package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"chorus/fsm"
)

// adapter is the raft.FSM over fsm.State. Raft calls Apply, ApplyBatch,
// Snapshot and Restore on its one FSM goroutine; Persist of a snapshot runs
// concurrently with later applies, on a copy-on-write clone.
type adapter struct {
	log hclog.Logger
	hub *hub

	mu    sync.RWMutex // guards state and index
	state *fsm.State
	index uint64 // last applied raft index, commands or not

	applied atomic.Uint64 // index, readable without the lock

	waitMu  sync.Mutex    // guards advance
	advance chan struct{} // closed and replaced whenever applied moves

	// onApplied runs on the FSM goroutine after each batch, outside the lock.
	onApplied func(index uint64)
	// halt, when set, is closed when the node begins to close: raft applies
	// nothing after that, so waitApplied stops waiting.
	halt <-chan struct{}
}

var (
	_ raft.FSM         = (*adapter)(nil)
	_ raft.BatchingFSM = (*adapter)(nil)
)

func newAdapter(log hclog.Logger, h *hub) *adapter {
	return &adapter{log: log, hub: h, state: fsm.NewState(), advance: make(chan struct{})}
}

// Apply applies one entry. Raft uses ApplyBatch instead; Apply serves single entries.
func (a *adapter) Apply(l *raft.Log) interface{} {
	return a.ApplyBatch([]*raft.Log{l})[0]
}

type applied struct {
	index  uint64
	events []fsm.Event
}

// ApplyBatch applies committed entries in order. An entry that does not decode
// means this build cannot follow the log: it panics rather than diverge.
func (a *adapter) ApplyBatch(logs []*raft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	cmds := make([]fsm.Command, len(logs))
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		c, err := fsm.Decode(l.Data)
		if err != nil {
			panic(fmt.Sprintf("node: entry %d: %v", l.Index, err))
		}
		cmds[i] = c
	}
	var pub []applied
	a.mu.Lock()
	for i, l := range logs {
		if l.Type == raft.LogCommand {
			res, events := a.state.Apply(l.Index, cmds[i])
			out[i] = res
			if len(events) > 0 {
				pub = append(pub, applied{index: l.Index, events: events})
			}
		}
		a.index = l.Index
	}
	last := a.index
	a.mu.Unlock()

	for _, p := range pub {
		a.hub.publish(p.index, p.events)
	}
	a.setApplied(last)
	if a.onApplied != nil {
		a.onApplied(last)
	}
	return out
}

func (a *adapter) setApplied(index uint64) {
	a.applied.Store(index)
	a.waitMu.Lock()
	close(a.advance)
	a.advance = make(chan struct{})
	a.waitMu.Unlock()
}

// waitApplied blocks until the local FSM has applied index, or ctx ends.
func (a *adapter) waitApplied(ctx context.Context, index uint64) error {
	for {
		a.waitMu.Lock()
		ch := a.advance
		a.waitMu.Unlock()
		if a.applied.Load() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-a.halt:
			return ErrShutdown
		case <-ctx.Done():
			return fmt.Errorf("wait for index %d (applied %d): %w", index, a.applied.Load(), ctx.Err())
		}
	}
}

// Snapshot takes a copy-on-write clone: O(shards), so Apply is not stalled.
func (a *adapter) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{state: a.clone(), log: a.log}, nil
}

// clone returns a copy-on-write clone of the state. Clone moves the state to
// a new generation, so it takes the write lock.
func (a *adapter) clone() *fsm.State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state.Clone()
}

// Restore replaces the whole state with a snapshot's. Every subscriber is
// dropped: what it had seen may no longer be a prefix of the new state.
func (a *adapter) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := fsm.ReadSnapshot(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	a.mu.Lock()
	a.state = st
	if st.Index() > a.index {
		a.index = st.Index()
	}
	index := a.index
	a.mu.Unlock()
	a.hub.endAll(ErrResync)
	a.setApplied(index)
	a.log.Info("restored state from snapshot", "index", st.Index(), "sessions", st.Len())
	return nil
}

// view runs fn with the state under the read lock. fn must not keep pointers
// into the state after it returns.
func (a *adapter) view(fn func(st *fsm.State, index uint64)) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	fn(a.state, a.index)
}

// subscribe renders the session's snapshot with fn and registers a
// subscription for every later event, atomically with respect to Apply.
func (a *adapter) subscribe(session string, fn func(s *fsm.Session, index uint64)) (*Subscription, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	s := a.state.Session(session)
	if s == nil {
		return nil, ErrSessionNotFound
	}
	if fn != nil {
		fn(s, a.index)
	}
	return a.hub.add(session, a.index)
}

type snapshot struct {
	state *fsm.State
	log   hclog.Logger
}

// Persist writes the clone; it runs concurrently with Apply on the original.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.state.WriteSnapshot(sink); err != nil {
		return errors.Join(fmt.Errorf("persist snapshot: %w", err), sink.Cancel())
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return nil
}

func (s *snapshot) Release() {}
