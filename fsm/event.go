package fsm

import "strconv"

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

// OpWindow is how many recent op IDs each session remembers. A retry comes
// within one request deadline of its original, while writes to the session are
// blocked by the same election that caused the retry, so a small window covers it.
const OpWindow = 64

type opEntry struct {
	op     OpID
	status Status
	index  uint64
}

// opWindow remembers the last OpWindow op IDs applied to a session.
type opWindow struct {
	entries []opEntry
	next    int // where the next entry goes once full
}

func (w *opWindow) find(op OpID) (opEntry, bool) {
	if w == nil {
		return opEntry{}, false
	}
	for _, e := range w.entries {
		if e.op == op {
			return e, true
		}
	}
	return opEntry{}, false
}

func (w *opWindow) add(e opEntry) {
	if len(w.entries) < OpWindow {
		w.entries = append(w.entries, e)
		return
	}
	w.entries[w.next] = e
	w.next = (w.next + 1) % OpWindow
}

func (w *opWindow) clone() *opWindow {
	if w == nil {
		return nil
	}
	return &opWindow{entries: append([]opEntry(nil), w.entries...), next: w.next}
}
