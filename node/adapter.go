package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"chorus/fsm"
)

// adapter is the raft.FSM over fsm.State. Raft calls Apply, ApplyBatch,
// Snapshot and Restore on its one FSM goroutine; Persist of a snapshot runs
// concurrently with later applies, on a copy-on-write clone.
type adapter struct {
	log     hclog.Logger
	hub     *hub
	metrics *Metrics // set before raft starts (Node.instrument); read-only after

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

	// Snapshot figures. Only the FSM goroutine stores the pauses; Persist
	// stores the rest. Anyone may read them.
	lastPause atomic.Int64                  // ns that the latest Snapshot call held the FSM goroutine
	maxPause  atomic.Int64                  // ns, the longest such hold since the node started
	persisted atomic.Pointer[snapshotStats] // the latest snapshot persisted
	// snapIndex is the index of the newest snapshot persisted or restored:
	// one taken while index still equals it would add nothing.
	snapIndex atomic.Uint64
}

// snapshotStats describes one persisted snapshot.
type snapshotStats struct {
	id      string // the sink's, which is the snapshot store's id
	index   uint64 // the adapter's index when it was taken
	pause   time.Duration
	persist time.Duration
	bytes   int64
}

var (
	_ raft.FSM         = (*adapter)(nil)
	_ raft.BatchingFSM = (*adapter)(nil)
)

func newAdapter(log hclog.Logger, h *hub) *adapter {
	return &adapter{log: log, hub: h, metrics: nopMetrics(), state: fsm.NewState(), advance: make(chan struct{})}
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
// means this build cannot follow the log: it panics rather than diverge. It
// records its own duration, per batch.
func (a *adapter) ApplyBatch(logs []*raft.Log) []interface{} {
	start := time.Now()
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
	a.metrics.apply.Observe(since(start))
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

// Snapshot takes a copy-on-write clone: O(shards), so Apply is not stalled
// for long. Raft calls it on the FSM goroutine, so every apply waits for it;
// it records how long (lock wait included) as the pause.
func (a *adapter) Snapshot() (raft.FSMSnapshot, error) {
	start := time.Now()
	a.mu.Lock()
	st, index := a.state.Clone(), a.index
	a.mu.Unlock()
	s := &snapshot{a: a, state: st, index: index, pause: time.Since(start)}
	a.lastPause.Store(int64(s.pause))
	if int64(s.pause) > a.maxPause.Load() { // the FSM goroutine is the only writer
		a.maxPause.Store(int64(s.pause))
	}
	return s, nil
}

// nothingNew reports the applied index, and whether a snapshot taken now
// would add nothing to the newest one persisted or restored.
func (a *adapter) nothingNew() (uint64, bool) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.index, a.index <= a.snapIndex.Load()
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
	start := time.Now()
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
	storeMax(&a.snapIndex, index) // raft restores only from a snapshot in its store
	a.hub.endAll(ErrResync)
	a.setApplied(index)
	a.metrics.restore.Observe(since(start))
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
	a     *adapter
	state *fsm.State
	index uint64
	pause time.Duration
}

// Persist writes the clone; it runs on raft's snapshot goroutine,
// concurrently with Apply on the original. It records its duration (the
// sink's close, which syncs, included) and the bytes written.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	start := time.Now()
	w := &countingWriter{w: sink}
	if err := s.state.WriteSnapshot(w); err != nil {
		return errors.Join(fmt.Errorf("persist snapshot: %w", err), sink.Cancel())
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot: %w", err)
	}
	st := &snapshotStats{id: sink.ID(), index: s.index, pause: s.pause, persist: time.Since(start), bytes: w.n}
	s.a.persisted.Store(st)
	s.a.metrics.persist.Observe(st.persist.Seconds())
	s.a.metrics.snapBytes.Observe(float64(st.bytes))
	storeMax(&s.a.snapIndex, s.index) // Restore may have moved it meanwhile (an install from the leader)
	s.a.log.Debug("snapshot persisted", "snapshot_id", st.id, "index", st.index, "pause", st.pause, "persist", st.persist, "bytes", st.bytes)
	return nil
}

func (s *snapshot) Release() {}

// storeMax raises v to x unless it is already higher.
func storeMax(v *atomic.Uint64, x uint64) {
	for old := v.Load(); x > old && !v.CompareAndSwap(old, x); old = v.Load() {
	}
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
