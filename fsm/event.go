package fsm

import (
	"encoding/binary"
	"strconv"
)

// EventType is the server message an event becomes (PROTOCOL.md §3.3).
type EventType uint8

// The event types. The first 15 are the mutating broadcasts, which carry seq.
const (
	EventStepToggled EventType = iota + 1
	EventTempoChanged
	EventSwingChanged
	EventTrackMuted
	EventTrackSoloed
	EventParameterLockSet
	EventTrackAdded
	EventTrackDeleted
	EventTrackCleared
	EventTrackSampleSet
	EventTrackVolumeSet
	EventTrackTransposeSet
	EventTrackStepCountSet
	EventEffectsChanged
	EventFMParamsChanged
	EventPlaybackStarted
	EventPlaybackStopped
	EventPlayerJoined
	EventPlayerLeft
	// EventSessionDeleted is not a client message: it tells the node to close
	// the session's sockets.
	EventSessionDeleted
	eventEnd
)

var eventNames = [...]string{
	EventStepToggled:       "step_toggled",
	EventTempoChanged:      "tempo_changed",
	EventSwingChanged:      "swing_changed",
	EventTrackMuted:        "track_muted",
	EventTrackSoloed:       "track_soloed",
	EventParameterLockSet:  "parameter_lock_set",
	EventTrackAdded:        "track_added",
	EventTrackDeleted:      "track_deleted",
	EventTrackCleared:      "track_cleared",
	EventTrackSampleSet:    "track_sample_set",
	EventTrackVolumeSet:    "track_volume_set",
	EventTrackTransposeSet: "track_transpose_set",
	EventTrackStepCountSet: "track_step_count_set",
	EventEffectsChanged:    "effects_changed",
	EventFMParamsChanged:   "fm_params_changed",
	EventPlaybackStarted:   "playback_started",
	EventPlaybackStopped:   "playback_stopped",
	EventPlayerJoined:      "player_joined",
	EventPlayerLeft:        "player_left",
	EventSessionDeleted:    "session_deleted",
}

func (t EventType) String() string {
	if t > 0 && t < eventEnd {
		return eventNames[t]
	}
	return "event(" + strconv.Itoa(int(t)) + ")"
}

// IsMutation reports whether the event is a mutating broadcast (it has a seq).
func (t EventType) IsMutation() bool { return t >= EventStepToggled && t <= EventFMParamsChanged }

// Event is one message that a committed command makes the node send to the
// local sockets of a session. Events are immutable once emitted: the history
// and every subscriber share them.
type Event struct {
	Type    EventType
	Session string
	// Seq is the index of the entry (mutating broadcasts only); PrevSeq is the
	// session's previous mutating index, so a client can tell a real gap from
	// other sessions' entries.
	Seq, PrevSeq uint64
	// ClientSeq echoes the sender's message seq when HasClientSeq.
	ClientSeq    int64
	HasClientSeq bool
	// Player is the playerId of the message: its sender or subject.
	Player string
	// Others means the subject player's own socket does not receive it.
	Others bool

	TrackID string
	Step    int
	Flag    bool    // step_toggled value, muted, soloed
	Number  float64 // tempo, swing, volume, transpose, stepCount
	Text    string  // sampleId
	Text2   string  // track name of track_sample_set
	Lock    *ParameterLock
	Track   []byte // track_added: the track as received, compact JSON
	Effects *EffectsState
	FM      *FMParams
	Joined  *PlayerInfo // player_joined
	At      int64       // playback_started startTime
	Tempo   float64     // playback_started tempo
}

// AppendJSON writes the event as its wire message. lastMessageAt and
// messageCount fill the PlayerInfo of player_joined (the owning node knows them).
func (e *Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"type":`...)
	b = appendString(b, e.Type.String())
	switch e.Type {
	case EventStepToggled:
		b = e.appendTrackID(b)
		b = append(b, `,"step":`...)
		b = strconv.AppendInt(b, int64(e.Step), 10)
		b = append(b, `,"value":`...)
		b = appendBool(b, e.Flag)
	case EventTempoChanged:
		b = append(b, `,"tempo":`...)
		b = appendNumber(b, e.Number)
	case EventSwingChanged:
		b = append(b, `,"swing":`...)
		b = appendNumber(b, e.Number)
	case EventTrackMuted:
		b = e.appendTrackID(b)
		b = append(b, `,"muted":`...)
		b = appendBool(b, e.Flag)
	case EventTrackSoloed:
		b = e.appendTrackID(b)
		b = append(b, `,"soloed":`...)
		b = appendBool(b, e.Flag)
	case EventParameterLockSet:
		b = e.appendTrackID(b)
		b = append(b, `,"step":`...)
		b = strconv.AppendInt(b, int64(e.Step), 10)
		b = append(b, `,"lock":`...)
		if e.Lock == nil {
			b = append(b, "null"...)
		} else {
			b = e.Lock.AppendJSON(b)
		}
	case EventTrackAdded:
		b = append(b, `,"track":`...)
		b = append(b, e.Track...)
	case EventTrackDeleted, EventTrackCleared:
		b = e.appendTrackID(b)
	case EventTrackSampleSet:
		b = e.appendTrackID(b)
		b = append(b, `,"sampleId":`...)
		b = appendString(b, e.Text)
		b = append(b, `,"name":`...)
		b = appendString(b, e.Text2)
	case EventTrackVolumeSet:
		b = e.appendTrackID(b)
		b = append(b, `,"volume":`...)
		b = appendNumber(b, e.Number)
	case EventTrackTransposeSet:
		b = e.appendTrackID(b)
		b = append(b, `,"transpose":`...)
		b = appendNumber(b, e.Number)
	case EventTrackStepCountSet:
		b = e.appendTrackID(b)
		b = append(b, `,"stepCount":`...)
		b = appendNumber(b, e.Number)
	case EventEffectsChanged:
		b = append(b, `,"effects":`...)
		b = e.Effects.AppendJSON(b)
	case EventFMParamsChanged:
		b = e.appendTrackID(b)
		b = append(b, `,"fmParams":`...)
		b = e.FM.AppendJSON(b)
	case EventPlaybackStarted:
		b = append(b, `,"startTime":`...)
		b = strconv.AppendInt(b, e.At, 10)
		b = append(b, `,"tempo":`...)
		b = appendNumber(b, e.Tempo)
	case EventPlayerJoined:
		b = append(b, `,"player":`...)
		b = e.Joined.AppendJSON(b, e.Joined.ConnectedAt, 0)
		return append(b, '}')
	case EventPlayerLeft, EventPlaybackStopped, EventSessionDeleted:
	}
	b = append(b, `,"playerId":`...)
	b = appendString(b, e.Player)
	if e.Type.IsMutation() {
		b = append(b, `,"seq":`...)
		b = strconv.AppendUint(b, e.Seq, 10)
		b = append(b, `,"prevSeq":`...)
		b = strconv.AppendUint(b, e.PrevSeq, 10)
		if e.HasClientSeq {
			b = append(b, `,"clientSeq":`...)
			b = strconv.AppendInt(b, e.ClientSeq, 10)
		}
	}
	return append(b, '}')
}

func (e *Event) appendTrackID(b []byte) []byte {
	b = append(b, `,"trackId":`...)
	return appendString(b, e.TrackID)
}

// HistoryLen is how many mutating broadcasts each session with players keeps
// for resume-from-seq.
const HistoryLen = 256

// eventRing holds the last HistoryLen mutating events, oldest first from start.
type eventRing struct {
	buf   []*Event
	start int
}

func (r *eventRing) push(e *Event) {
	if len(r.buf) < HistoryLen {
		r.buf = append(r.buf, e)
		return
	}
	r.buf[r.start] = e
	r.start = (r.start + 1) % HistoryLen
}

func (r *eventRing) len() int { return len(r.buf) }

func (r *eventRing) at(i int) *Event { return r.buf[(r.start+i)%len(r.buf)] }

// since returns the events after seq when the ring reaches back to it.
func (r *eventRing) since(seq uint64) ([]Event, bool) {
	n := r.len()
	if n == 0 || r.at(0).PrevSeq > seq {
		return nil, false
	}
	i := n
	for i > 0 && r.at(i-1).Seq > seq {
		i--
	}
	out := make([]Event, 0, n-i)
	for ; i < n; i++ {
		out = append(out, *r.at(i))
	}
	return out, true
}

func (r eventRing) clone() eventRing {
	return eventRing{buf: append([]*Event(nil), r.buf...), start: r.start}
}

// Op IDs and I6. Every op is applied once, or answered as a duplicate of its
// recorded result, or refused as too old (StatusTooOld, nothing changes):
// never applied twice.
//
// A session records each op it applies (whatever its status) with the
// command's At. An entry leaves the window oldest first, in apply order, once
// its At is more than OpRetention behind the session's MaxAt, or when the
// window already holds OpWindowMax entries. The window's horizon is the
// largest At of any entry that has left. An op that is not in the window but
// whose At is at or below the horizon may be a retry of one that left, so it is
// refused. This is sound because a retry carries the At of its first attempt
// (node.Submit stamps At once, before the first attempt), and the horizon
// only grows. Entries are in apply order, not strictly in At order (clocks of
// nodes differ, a forward may be slow), so pruning from the oldest end keeps
// some entries longer than it must: that only costs memory.
//
// Commands of version 1 (written by the previous release) keep that
// release's rule instead, so that every replica applies an old entry alike
// whether it replays it or restores a snapshot taken after it: see
// opWindow.addLegacy.
//
// The price: a new op whose At is at or below the horizon, that is one stamped
// by a node whose clock lags the session's other proposers by more than
// OpRetention, or more than the time OpWindowMax ops took, is refused as well.

// OpRetention is how long, in proposer milliseconds, a session remembers an op
// ID: an entry is kept at least while its At is no more than OpRetention behind
// the session's MaxAt (unless OpWindowMax evicts it first). It must exceed the
// longest time a proposer retries one op, node.Config.SubmitTimeout and every
// request deadline that bounds node.Submit (10 s by default), plus the clock
// skew between nodes; a retry that comes later is refused with StatusTooOld
// rather than answered as a duplicate, which is safe but unhelpful.
const OpRetention = 60_000

// OpWindowMax bounds the entries of one session's window whatever their age, so
// that a session flooded with ops keeps bounded memory (40 B an entry). At
// that rate an op is remembered for less than OpRetention; an older retry is
// refused with StatusTooOld.
const OpWindowMax = 4096

// opIndexMin is the smallest ring that keeps a hash index: a scan of a
// smaller one costs less than a lookup.
const opIndexMin = 64

type opEntry struct {
	op     OpID
	status Status
	index  uint64
	at     int64 // the command's At
}

// opWindow remembers the recent op IDs applied to a session (see OpRetention),
// in a ring, oldest first from start. A ring of opIndexMin or more also keeps
// an index, so that a lookup does not scan thousands of entries on every
// apply: open addressing with linear probing over twice as many slots, each
// 0 (empty) or a ring position + 1. Neither the ring's size nor the index
// decides anything visible: only the entries, their order and the horizon do.
type opWindow struct {
	ring     []opEntry // a power of two in 1..OpWindowMax long
	start, n int
	index    []uint16
	// dropped is set once an entry has left; horizon is then the largest At
	// of every entry that has left.
	dropped bool
	horizon int64
}

func (w *opWindow) len() int {
	if w == nil {
		return 0
	}
	return w.n
}

// pos is the ring position of the i-th entry, oldest first.
func (w *opWindow) pos(i int) int { return (w.start + i) & (len(w.ring) - 1) }

// entry returns the i-th entry, oldest first.
func (w *opWindow) entry(i int) opEntry { return w.ring[w.pos(i)] }

func (w *opWindow) find(op OpID) (opEntry, bool) {
	switch {
	case w == nil:
	case w.index != nil:
		mask := len(w.index) - 1
		for i := w.slot(op); w.index[i] != 0; i = (i + 1) & mask {
			if e := &w.ring[w.index[i]-1]; e.op == op {
				return *e, true
			}
		}
	default:
		for i := 0; i < w.n; i++ {
			if e := &w.ring[w.pos(i)]; e.op == op {
				return *e, true
			}
		}
	}
	return opEntry{}, false
}

// tooOld reports whether an op that is not in the window, proposed at at, may
// be a retry of one that has left it.
func (w *opWindow) tooOld(at int64) bool { return w != nil && w.dropped && at <= w.horizon }

// add records e. maxAt is the session's MaxAt, e.at included. First it drops
// the oldest entries while they are more than OpRetention behind maxAt or the
// window is full.
//
// A legacy entry (at 0, see addLegacy) leaves like any other, at the first op
// of the time rule when MaxAt is past OpRetention, but it does not set dropped
// or raise the horizon: the legacy rule never refused a retry it had
// forgotten, and real times are positive, so no horizon from it could refuse
// anything but an op stamped at 0 or before.
func (w *opWindow) add(e opEntry, maxAt int64) {
	for w.n > 0 && (w.n >= OpWindowMax || expired(w.ring[w.start].at, maxAt)) {
		old := w.ring[w.start].at
		if old > 0 && (!w.dropped || old > w.horizon) {
			w.dropped, w.horizon = true, old
		}
		w.dropOldest()
	}
	w.push(e)
}

// addLegacy records e under the op rule of command version 1, which the
// previous release applied: the window is the last opWindowV1 ops by count.
// The entry gets at 0 (the rule had no times), and the oldest entries leave
// without setting dropped or the horizon (it had no horizon). So restoring a
// v1 snapshot taken at index i (which builds the same window, see
// decoder.opWindow) and applying the version-1 entries after i gives what
// applying them all would (I4).
func (w *opWindow) addLegacy(e opEntry) {
	e.at = 0
	for w.n >= opWindowV1 {
		w.dropOldest()
	}
	w.push(e)
}

// dropOldest removes the oldest entry; the caller keeps the horizon.
func (w *opWindow) dropOldest() {
	if w.index != nil {
		w.unindex(w.start)
	}
	w.start = (w.start + 1) & (len(w.ring) - 1)
	w.n--
}

// push appends e as the newest entry, growing or shrinking the ring.
func (w *opWindow) push(e opEntry) {
	switch {
	case w.n == len(w.ring):
		w.resize(max(2*w.n, 1))
	case len(w.ring) > 1 && w.n < len(w.ring)/4:
		w.resize(opWindowCap(2 * (w.n + 1))) // what a burst left behind has gone
	}
	p := w.pos(w.n)
	w.ring[p] = e
	w.n++
	if w.index != nil {
		w.insert(p)
	}
}

// expired reports whether an entry proposed at at is more than OpRetention
// behind maxAt, without overflow whatever the two are.
func expired(at, maxAt int64) bool {
	return at < maxAt && uint64(maxAt)-uint64(at) > OpRetention
}

// resize moves the entries to a ring of size c (a power of two, at least
// w.n), oldest at 0, and rebuilds the index.
func (w *opWindow) resize(c int) {
	ring := make([]opEntry, c)
	for i := 0; i < w.n; i++ {
		ring[i] = w.entry(i)
	}
	w.ring, w.start = ring, 0
	w.reindex()
}

// reindex builds the index of the ring from scratch, or drops it for a small ring.
func (w *opWindow) reindex() {
	w.index = nil
	if len(w.ring) < opIndexMin {
		return
	}
	w.index = make([]uint16, 2*len(w.ring))
	for i := 0; i < w.n; i++ {
		w.insert(w.pos(i))
	}
}

// slot is where the probe for op starts: the op ID's bits mixed (proposers
// draw op IDs at random, but tests count them), masked to the index.
func (w *opWindow) slot(op OpID) int {
	x := binary.LittleEndian.Uint64(op[:8]) ^ binary.LittleEndian.Uint64(op[8:])*0x9e3779b97f4a7c15
	x ^= x >> 32
	x *= 0xd6e8feb86659fd93
	x ^= x >> 32
	return int(x & uint64(len(w.index)-1))
}

// insert indexes the entry at ring position p. The index is at most half full.
func (w *opWindow) insert(p int) {
	mask := len(w.index) - 1
	i := w.slot(w.ring[p].op)
	for w.index[i] != 0 {
		i = (i + 1) & mask
	}
	w.index[i] = uint16(p + 1)
}

// unindex removes the entry at ring position p from the index, then closes
// the gap (Knuth's algorithm R): each later entry of the probe run moves back
// into the gap unless its home slot lies cyclically after the gap.
func (w *opWindow) unindex(p int) {
	mask := len(w.index) - 1
	i := w.slot(w.ring[p].op)
	for int(w.index[i]) != p+1 {
		i = (i + 1) & mask
	}
	for j := i; ; {
		j = (j + 1) & mask
		t := w.index[j]
		if t == 0 {
			w.index[i] = 0
			return
		}
		k := w.slot(w.ring[t-1].op)
		if (i <= j && (k <= i || k > j)) || (i > j && k <= i && k > j) {
			w.index[i] = t
			i = j
		}
	}
}

// opWindowCap is the ring size for n entries.
func opWindowCap(n int) int {
	c := 1
	for c < n {
		c *= 2
	}
	return min(c, OpWindowMax)
}

func (w *opWindow) clone() *opWindow {
	if w == nil {
		return nil
	}
	c := *w
	c.ring = append([]opEntry(nil), w.ring...)
	c.index = append([]uint16(nil), w.index...)
	return &c
}
