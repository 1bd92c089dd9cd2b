package fsm

import "math/bits"

// Limits of the session model (PROTOCOL.md §2.6).
const (
	MaxTracks  = 16  // tracks per session
	MaxSteps   = 128 // length of every track's steps and parameterLocks arrays
	MaxPlayers = 10  // players per session, cluster-wide
	MaxNameLen = 100 // UTF-16 code units in a session name

	DefaultTempo     = 120
	DefaultStepCount = 16
	MinTempo         = 60
	MaxTempo         = 180
	MinSwing         = 0
	MaxSwing         = 100
	MinTranspose     = -24
	MaxTranspose     = 24
)

// ValidStepCounts are the only stepCount values that HTTP and set_track_step_count accept.
var validStepCounts = [...]float64{4, 8, 12, 16, 24, 32, 64, 96, 128}

// IsValidStepCount reports whether n is one of 4, 8, 12, 16, 24, 32, 64, 96, 128.
func IsValidStepCount(n float64) bool {
	for _, v := range validStepCounts {
		if n == v {
			return true
		}
	}
	return false
}

// Session is the stored record of one session (PROTOCOL.md §2.1) plus what chorus
// replicates beside it: presence, the last mutating index, the resume history and
// the op-ID window.
//
// A *Session obtained from State is read-only for callers: State mutates it in
// place while applying, so read it only while no Apply runs (the node adapter's
// read lock), or from a Clone.
type Session struct {
	ID              string
	Name            string // meaningful only when HasName; otherwise the name is null
	RemixedFrom     string // "" is null; session ids are never empty
	RemixedFromName string // meaningful only when HasRemixedFromName
	CreatedAt       int64  // ms
	UpdatedAt       int64  // ms
	LastAccessedAt  int64  // ms
	RemixCount      int64
	State           SessionState
	// LastSeq is the log index of the session's last mutating entry: the seq of
	// its newest mutating broadcast, and the seq a snapshot carries.
	LastSeq uint64
	// MaxAt is the largest proposer timestamp applied to the session. Nodes use it
	// as a floor for snapshotTimestamp, so a client that moves to a node whose
	// clock runs behind still sees timestamps that never go backwards.
	MaxAt int64

	HasName            bool
	HasRemixedFromName bool
	Immutable          bool

	live *room     // presence and resume history; nil while nobody is connected
	ops  *opWindow // recent op IDs and their results
	gen  uint64    // copy-on-write generation (see State.Clone)
}

// room is the replicated presence of a session with at least one player, and its
// resume history. It is dropped when the last player leaves: a client that comes
// back after that gets a snapshot instead of a replay.
type room struct {
	players []PlayerInfo // in join order
	playing []string     // player ids in the order they started playing
	history eventRing
}

// Players returns the connected players in join order. The slice is shared: do not modify it.
func (s *Session) Players() []PlayerInfo {
	if s.live == nil {
		return nil
	}
	return s.live.players
}

// PlayingPlayerIDs returns the ids of the players who are playing, in the order they started.
func (s *Session) PlayingPlayerIDs() []string {
	if s.live == nil {
		return nil
	}
	return s.live.playing
}

// Player returns the connected player with the given id.
func (s *Session) Player(id string) (PlayerInfo, bool) {
	if s.live != nil {
		for _, p := range s.live.players {
			if p.ID == id {
				return p, true
			}
		}
	}
	return PlayerInfo{}, false
}

// Since returns the mutating broadcasts with seq greater than seq, oldest first,
// when the history reaches back that far. ok is false when it does not (or when
// seq is ahead of the session): the caller must then send a full snapshot, never
// a partial replay.
func (s *Session) Since(seq uint64) (events []Event, ok bool) {
	if seq == s.LastSeq {
		return nil, true
	}
	if seq > s.LastSeq || s.live == nil {
		return nil, false
	}
	return s.live.history.since(seq)
}

// SessionState is a session's musical state (PROTOCOL.md §2.2).
type SessionState struct {
	Tracks  []SessionTrack
	Tempo   float64
	Swing   float64
	Version float64
	Effects *EffectsState // nil when absent
	extra   *members      // unknown keys, carried through unchanged
}

// EffectsState is the session's effect chain (PROTOCOL.md §2.4). It is always
// stored in its validated form, with keys written in the fixed order of §3.4.
type EffectsState struct {
	ReverbDecay, ReverbWet                  float64
	DelayTime                               string
	DelayFeedback, DelayWet                 float64
	ChorusFrequency, ChorusDepth, ChorusWet float64
	DistortionAmount, DistortionWet         float64
}

// FMParams are a track's FM synthesis parameters (PROTOCOL.md §2.4).
type FMParams struct {
	Harmonicity     float64
	ModulationIndex float64
}

// ParameterLock is a per-step override (PROTOCOL.md §2.4). Its keys keep the
// order they arrived in, because the state hash depends on it.
type ParameterLock struct {
	Pitch  float64
	Volume float64
	flags  uint8
}

const (
	lockPitch uint8 = 1 << iota
	lockVolume
	lockVolumeFirst // volume was received before pitch
)

// NewLock builds a lock; a nil value leaves that key out. volumeFirst puts
// volume before pitch when both are present.
func NewLock(pitch, volume *float64, volumeFirst bool) ParameterLock {
	var l ParameterLock
	if pitch != nil {
		l.Pitch, l.flags = *pitch, l.flags|lockPitch
	}
	if volume != nil {
		l.Volume, l.flags = *volume, l.flags|lockVolume
	}
	if volumeFirst && l.flags&lockPitch != 0 && l.flags&lockVolume != 0 {
		l.flags |= lockVolumeFirst
	}
	return l
}

// HasPitch reports whether the lock has a pitch key.
func (l ParameterLock) HasPitch() bool { return l.flags&lockPitch != 0 }

// HasVolume reports whether the lock has a volume key.
func (l ParameterLock) HasVolume() bool { return l.flags&lockVolume != 0 }

// AppendJSON writes the lock with its keys in received order.
func (l ParameterLock) AppendJSON(b []byte) []byte {
	b = append(b, '{')
	first := true
	writePitch := func() {
		if l.flags&lockPitch != 0 {
			b = appendKey(b, "pitch", first)
			b = appendNumber(b, l.Pitch)
			first = false
		}
	}
	writeVolume := func() {
		if l.flags&lockVolume != 0 {
			b = appendKey(b, "volume", first)
			b = appendNumber(b, l.Volume)
			first = false
		}
	}
	if l.flags&lockVolumeFirst != 0 {
		writeVolume()
		writePitch()
	} else {
		writePitch()
		writeVolume()
	}
	return append(b, '}')
}

// Field names a SessionTrack field that may be absent or null (PROTOCOL.md §2.3).
// The hash writes an absent field not at all and a null one as null, so the
// model keeps both facts.
type Field uint16

// The optional track fields.
const (
	FieldName Field = 1 << iota
	FieldSampleID
	FieldVolume
	FieldMuted
	FieldSoloed
	FieldPlaybackMode
	FieldTranspose
	FieldStepCount
)

// PlaybackMode values. The zero value means the field holds no mode (absent or null).
const (
	ModeNone uint8 = iota
	ModeOneshot
	ModeGate
)

var modeNames = [...]string{ModeOneshot: "oneshot", ModeGate: "gate"}

// SessionTrack is one track (PROTOCOL.md §2.3). Steps are a 128-bit set and
// parameter locks a sparse list; both read as 128-entry arrays at the edges.
type SessionTrack struct {
	ID        string
	Name      string
	SampleID  string
	Volume    float64
	Transpose float64
	steps     [2]uint64
	locks     []lockAt // sorted by step
	FM        *FMParams
	extra     *members // unknown keys, and known keys of an unexpected type
	StepCount uint8
	Mode      uint8 // ModeNone, ModeOneshot or ModeGate
	Muted     bool
	Soloed    bool
	has       Field // fields present (value or null)
	null      Field // fields present as null
}

type lockAt struct {
	step uint8
	lock ParameterLock
}

// Has reports whether the field is present, as a value or as null.
func (t *SessionTrack) Has(f Field) bool { return t.has&f != 0 }

// IsNull reports whether the field is present and null.
func (t *SessionTrack) IsNull(f Field) bool { return t.null&f != 0 }

// Set marks the field present with a value; the caller sets the value itself.
// A value of the wrong type kept for that key among the unknown keys is
// dropped: AppendJSON would otherwise write the key twice.
func (t *SessionTrack) Set(f Field) {
	t.has |= f
	t.null &^= f
	for i, key := range fieldKeys {
		if t.extra != nil && f&(1<<i) != 0 {
			t.extra = t.extra.without(key)
		}
	}
}

// fieldKeys are the JSON keys of the optional fields, in Field bit order.
var fieldKeys = [...]string{"name", "sampleId", "volume", "muted", "soloed", "playbackMode", "transpose", "stepCount"}

// SetNull marks the field present and null.
func (t *SessionTrack) SetNull(f Field) { t.has |= f; t.null |= f }

// Unset makes the field absent.
func (t *SessionTrack) Unset(f Field) { t.has &^= f; t.null &^= f }

// hasValue reports whether the field holds a non-null value.
func (t *SessionTrack) hasValue(f Field) bool { return t.has&f != 0 && t.null&f == 0 }

// Step reports whether step i (0..127) is on.
func (t *SessionTrack) Step(i int) bool {
	if i < 0 || i >= MaxSteps {
		return false
	}
	return t.steps[i>>6]&(1<<(uint(i)&63)) != 0
}

// SetStep turns step i (0..127) on or off.
func (t *SessionTrack) SetStep(i int, on bool) {
	if i < 0 || i >= MaxSteps {
		return
	}
	if on {
		t.steps[i>>6] |= 1 << (uint(i) & 63)
	} else {
		t.steps[i>>6] &^= 1 << (uint(i) & 63)
	}
}

// ActiveSteps counts the steps that are on.
func (t *SessionTrack) ActiveSteps() int {
	return bits.OnesCount64(t.steps[0]) + bits.OnesCount64(t.steps[1])
}

// Lock returns the parameter lock at step i, if any.
func (t *SessionTrack) Lock(i int) (ParameterLock, bool) {
	for _, la := range t.locks {
		if int(la.step) == i {
			return la.lock, true
		}
	}
	return ParameterLock{}, false
}

// Locks returns the number of steps that hold a lock.
func (t *SessionTrack) Locks() int { return len(t.locks) }

// SetLock sets (or, with nil, clears) the lock at step i (0..127). It never
// writes into a shared backing array, so a Clone keeps its own view.
func (t *SessionTrack) SetLock(i int, l *ParameterLock) {
	if i < 0 || i >= MaxSteps {
		return
	}
	pos := 0
	for pos < len(t.locks) && int(t.locks[pos].step) < i {
		pos++
	}
	exists := pos < len(t.locks) && int(t.locks[pos].step) == i
	var out []lockAt
	switch {
	case l == nil && !exists:
		return
	case l == nil:
		if len(t.locks) == 1 {
			t.locks = nil
			return
		}
		out = make([]lockAt, 0, len(t.locks)-1)
		out = append(out, t.locks[:pos]...)
		out = append(out, t.locks[pos+1:]...)
	case exists:
		out = append([]lockAt(nil), t.locks...)
		out[pos].lock = *l
	default:
		out = make([]lockAt, 0, len(t.locks)+1)
		out = append(out, t.locks[:pos]...)
		out = append(out, lockAt{step: uint8(i), lock: *l})
		out = append(out, t.locks[pos:]...)
	}
	t.locks = out
}

// effectiveStepCount is the stepCount the hash uses: 16 when absent or null.
func (t *SessionTrack) effectiveStepCount() int {
	if t.hasValue(FieldStepCount) {
		return int(t.StepCount)
	}
	return DefaultStepCount
}

// PlayerInfo is a connected player (PROTOCOL.md §2.5). Colour, animal and name
// derive from the id (§4.2). lastMessageAt and messageCount change with every
// message and are not replicated: the node that owns the socket supplies them.
type PlayerInfo struct {
	ID          string
	Node        string // the node that owns the socket
	Epoch       uint64 // that node's epoch when the player joined
	ConnectedAt int64  // ms
	ColorIndex  uint8
	AnimalIndex uint8
}

// Color returns the player's "#RRGGBB" colour.
func (p PlayerInfo) Color() string { return playerColors[p.ColorIndex] }

// Animal returns the player's animal.
func (p PlayerInfo) Animal() string { return playerAnimals[p.AnimalIndex] }

// DisplayName returns "<ColourName> <Animal>".
func (p PlayerInfo) DisplayName() string {
	return playerColorNames[p.ColorIndex] + " " + playerAnimals[p.AnimalIndex]
}

// AppendJSON writes the PlayerInfo object with the owner-supplied activity fields.
func (p PlayerInfo) AppendJSON(b []byte, lastMessageAt int64, messageCount int64) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, p.ID)
	b = append(b, `,"connectedAt":`...)
	b = appendNumber(b, float64(p.ConnectedAt))
	b = append(b, `,"lastMessageAt":`...)
	b = appendNumber(b, float64(lastMessageAt))
	b = append(b, `,"messageCount":`...)
	b = appendNumber(b, float64(messageCount))
	b = append(b, `,"color":`...)
	b = appendString(b, p.Color())
	b = append(b, `,"colorIndex":`...)
	b = appendNumber(b, float64(p.ColorIndex))
	b = append(b, `,"animal":`...)
	b = appendString(b, p.Animal())
	b = append(b, `,"name":`...)
	b = appendString(b, p.DisplayName())
	return append(b, '}')
}

var playerColors = [18]string{"#E53935", "#D81B60", "#8E24AA", "#5E35B1", "#3949AB", "#1E88E5", "#039BE5", "#00ACC1", "#00897B", "#43A047", "#7CB342", "#C0CA33", "#FDD835", "#FFB300", "#FB8C00", "#F4511E", "#6D4C41", "#757575"}

var playerColorNames = [18]string{"Red", "Pink", "Purple", "Violet", "Indigo", "Blue", "Sky", "Cyan", "Teal", "Green", "Lime", "Olive", "Yellow", "Amber", "Orange", "Coral", "Brown", "Grey"}

var playerAnimals = [73]string{"Ant", "Badger", "Bat", "Bear", "Beaver", "Bee", "Bird", "Bison", "Butterfly", "Camel", "Cat", "Cheetah", "Chicken", "Crab", "Crow", "Deer", "Dog", "Dolphin", "Dove", "Dragon", "Duck", "Eagle", "Elephant", "Falcon", "Fish", "Flamingo", "Fox", "Frog", "Giraffe", "Goat", "Gorilla", "Hamster", "Hawk", "Hedgehog", "Hippo", "Horse", "Jaguar", "Kangaroo", "Koala", "Lemur", "Leopard", "Lion", "Llama", "Lobster", "Monkey", "Moose", "Mouse", "Octopus", "Otter", "Owl", "Panda", "Panther", "Parrot", "Peacock", "Penguin", "Pig", "Puma", "Rabbit", "Raccoon", "Raven", "Rhino", "Seal", "Shark", "Sheep", "Snake", "Spider", "Squid", "Swan", "Tiger", "Turtle", "Whale", "Wolf", "Zebra"}

// NewPlayerInfo derives a player's identity from its id (PROTOCOL.md §4.2).
func NewPlayerInfo(id, node string, epoch uint64, connectedAt int64) PlayerInfo {
	h := int64(int32(hashUTF16(id)))
	if h < 0 {
		h = -h
	}
	return PlayerInfo{
		ID: id, Node: node, Epoch: epoch, ConnectedAt: connectedAt,
		ColorIndex:  uint8(h % int64(len(playerColors))),
		AnimalIndex: uint8((h >> 8) % int64(len(playerAnimals))),
	}
}
