package fsm

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// CommandVersion is the version of the command encoding that Encode writes.
// Decode accepts every version up to it, forever: entries stay in logs and
// snapshots of old clusters.
//
// The version also selects how Apply remembers the op (invariant I4: every
// replica must apply an entry by the rule it was written under):
//
//	v1: the previous release's rule, the last 64 op IDs of the session by
//	    count, with no times and no horizon (see opWindow.addLegacy).
//	v2: the time window of OpRetention/OpWindowMax with its horizon.
const CommandVersion = 2

// commandVersionLegacy is the command version applied under the count-based
// op rule of the previous release.
const commandVersionLegacy = 1

// Kind says what a command does. Its string form is what the log stores, so a
// name never changes once released.
type Kind uint8

// The command kinds (DESIGN.md §3).
const (
	KindCreate Kind = iota + 1
	KindReplaceState
	KindRename
	KindRemix
	KindPublish
	KindDelete
	KindTouch
	// The 15 mutations of PROTOCOL.md §3.2.
	KindToggleStep
	KindSetTempo
	KindSetSwing
	KindMuteTrack
	KindSoloTrack
	KindSetParameterLock
	KindAddTrack
	KindDeleteTrack
	KindClearTrack
	KindSetTrackSample
	KindSetTrackVolume
	KindSetTrackTranspose
	KindSetTrackStepCount
	KindSetEffects
	KindSetFMParams
	// Presence.
	KindPlayerJoin
	KindPlayerLeave
	KindPlaybackStart
	KindPlaybackStop
	KindNodeEpoch
	KindReapNode
	kindEnd // one past the last kind
)

var kindNames = [...]string{
	KindCreate:            "create",
	KindReplaceState:      "replace_state",
	KindRename:            "rename",
	KindRemix:             "remix",
	KindPublish:           "publish",
	KindDelete:            "delete",
	KindTouch:             "touch",
	KindToggleStep:        "toggle_step",
	KindSetTempo:          "set_tempo",
	KindSetSwing:          "set_swing",
	KindMuteTrack:         "mute_track",
	KindSoloTrack:         "solo_track",
	KindSetParameterLock:  "set_parameter_lock",
	KindAddTrack:          "add_track",
	KindDeleteTrack:       "delete_track",
	KindClearTrack:        "clear_track",
	KindSetTrackSample:    "set_track_sample",
	KindSetTrackVolume:    "set_track_volume",
	KindSetTrackTranspose: "set_track_transpose",
	KindSetTrackStepCount: "set_track_step_count",
	KindSetEffects:        "set_effects",
	KindSetFMParams:       "set_fm_params",
	KindPlayerJoin:        "player_join",
	KindPlayerLeave:       "player_leave",
	KindPlaybackStart:     "playback_start",
	KindPlaybackStop:      "playback_stop",
	KindNodeEpoch:         "node_epoch",
	KindReapNode:          "reap_node",
}

// Kinds returns every command kind, in order.
func Kinds() []Kind {
	out := make([]Kind, 0, kindEnd-1)
	for k := KindCreate; k < kindEnd; k++ {
		out = append(out, k)
	}
	return out
}

func (k Kind) String() string {
	if k > 0 && k < kindEnd {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// IsMutation reports whether k is one of the 15 state-mutating client messages.
func (k Kind) IsMutation() bool { return k >= KindToggleStep && k <= KindSetFMParams }

// ParseKind looks a kind up by its log name.
func ParseKind(name string) (Kind, bool) {
	for k := KindCreate; k < kindEnd; k++ {
		if kindNames[k] == name {
			return k, true
		}
	}
	return 0, false
}

// MarshalText writes the kind's log name.
func (k Kind) MarshalText() ([]byte, error) {
	if k == 0 || k >= kindEnd {
		return nil, fmt.Errorf("%w: %d", ErrUnknownKind, uint8(k))
	}
	return []byte(kindNames[k]), nil
}

// UnmarshalText reads a log name; an unknown name is ErrUnknownKind.
func (k *Kind) UnmarshalText(b []byte) error {
	v, ok := ParseKind(string(b))
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownKind, b)
	}
	*k = v
	return nil
}

// ErrUnknownKind is returned by Decode for a kind this build does not know: a
// log written by a newer chorus. Applying past it would diverge, so the caller
// must stop.
var ErrUnknownKind = errors.New("unknown command kind")

// OpID identifies one operation across retries. The proposer picks it at random
// (16 bytes) once, and every retry carries the same one, so Apply can tell a
// retry from a new operation (invariant I6).
type OpID [16]byte

func (o OpID) String() string { return hex.EncodeToString(o[:]) }

// IsZero reports whether the op ID is unset.
func (o OpID) IsZero() bool { return o == OpID{} }

// MarshalText writes 32 lowercase hex digits.
func (o OpID) MarshalText() ([]byte, error) {
	b := make([]byte, 32)
	hex.Encode(b, o[:])
	return b, nil
}

// UnmarshalText reads 32 hex digits.
func (o *OpID) UnmarshalText(b []byte) error {
	if len(b) != 32 {
		return fmt.Errorf("op id: want 32 hex digits, got %d bytes", len(b))
	}
	if _, err := hex.Decode(o[:], b); err != nil {
		return fmt.Errorf("op id: %w", err)
	}
	return nil
}

// Command is one entry of the replicated log. The proposing node fills every
// field that is not deterministic (time, new ids, player identity) before
// proposing, so that Apply is a pure function of state and command.
//
// Payloads that come from clients (a state, a track, a lock, effects, FM
// params) are carried as the client's JSON, compacted, and interpreted by Apply:
// the log keeps what was asked for, and the model's parser is the one place
// that reads it.
type Command struct {
	// Version is the encoding version Decode read (1..CommandVersion); 0,
	// as in a command built in memory, means CommandVersion. It is not a
	// JSON field: the envelope carries it, and Encode always writes
	// CommandVersion.
	Version uint8 `json:"-"`

	Kind Kind  `json:"kind"`
	Op   OpID  `json:"op"`
	At   int64 `json:"at"` // proposer's clock, Unix ms

	Session string `json:"session,omitempty"`
	// Target is the id of the session that create makes (same as Session),
	// or that remix and publish make.
	Target string `json:"target,omitempty"`
	// Name is the session name of create and rename; nil is null.
	Name *string `json:"name,omitempty"`
	// State is the state object of create and replace_state.
	State json.RawMessage `json:"state,omitempty"`

	// Player is the player a mutation or presence command is for.
	Player string `json:"player,omitempty"`
	// ClientSeq is the client message's seq, echoed as clientSeq.
	ClientSeq *int64 `json:"clientSeq,omitempty"`
	// Node and Epoch say which node incarnation owns the player (player_join),
	// or which one node_epoch and reap_node are about.
	Node  string `json:"node,omitempty"`
	Epoch uint64 `json:"epoch,omitempty"`
	// Addr is the client (HTTP) address a node announces with node_epoch.
	Addr string `json:"addr,omitempty"`

	TrackID  string  `json:"trackId,omitempty"`
	Step     int     `json:"step,omitempty"`
	Number   float64 `json:"number,omitempty"`   // tempo, swing, volume, transpose, stepCount
	Flag     bool    `json:"flag,omitempty"`     // muted, soloed
	SampleID string  `json:"sampleId,omitempty"` // set_track_sample
	// TrackName is set_track_sample's name.
	TrackName string `json:"trackName,omitempty"`
	// Payload is the lock of set_parameter_lock (JSON null clears), the track
	// of add_track, the effects of set_effects or the fmParams of set_fm_params,
	// as the client sent it.
	Payload json.RawMessage `json:"payload,omitempty"`

	// Touches are the access times of touch, batched.
	Touches []Touch `json:"touches,omitempty"`
}

// Touch records that a session was read at At.
type Touch struct {
	Session string `json:"session"`
	At      int64  `json:"at"`
}

// envelope is the encoded form: a version number beside the command.
type envelope struct {
	V int `json:"v"`
	Command
}

// Encode writes the command in the current encoding, CommandVersion, whatever
// c.Version is.
func Encode(c Command) ([]byte, error) {
	if c.Kind == 0 || c.Kind >= kindEnd {
		return nil, fmt.Errorf("encode command: %w: %d", ErrUnknownKind, uint8(c.Kind))
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(envelope{V: CommandVersion, Command: c}); err != nil {
		return nil, fmt.Errorf("encode command %s: %w", c.Kind, err)
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// Decode reads a command written by Encode of this or any earlier version. It
// returns an error wrapping ErrUnknownKind for a kind this build does not know.
func Decode(b []byte) (Command, error) {
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&env); err != nil {
		return Command{}, fmt.Errorf("decode command: %w", err)
	}
	// dec.More does not see a stray ']' or '}' after the value; check the rest by hand.
	if len(bytes.TrimSpace(b[dec.InputOffset():])) > 0 {
		return Command{}, errors.New("decode command: trailing data")
	}
	switch {
	case env.V < 1 || env.V > CommandVersion:
		return Command{}, fmt.Errorf("decode command: unsupported version %d", env.V)
	case env.Kind == 0:
		return Command{}, fmt.Errorf("decode command: %w: missing", ErrUnknownKind)
	case env.Op.IsZero():
		return Command{}, errors.New("decode command: missing op id")
	}
	for _, raw := range []json.RawMessage{env.State, env.Payload} {
		if raw != nil && !json.Valid(raw) {
			return Command{}, errors.New("decode command: invalid payload")
		}
	}
	c := env.Command
	c.Version = uint8(env.V)
	return c, nil
}

// legacy reports whether c is applied under the op rule of command version 1.
func (c Command) legacy() bool { return c.Version == commandVersionLegacy }

// Status is the outcome of applying a command. Failures that clients cause are
// statuses, not errors: every replica reaches the same one.
type Status uint8

// The statuses.
const (
	StatusOK Status = iota
	// StatusIgnored: accepted, but nothing changed (a mutation whose
	// preconditions failed, or a PUT to a session with players connected).
	StatusIgnored
	StatusNotFound         // the session does not exist
	StatusExists           // the new session's id is taken
	StatusPublished        // the session is immutable
	StatusAlreadyPublished // publish of an already-published session
	StatusFull             // the session already has MaxPlayers players
	StatusNotJoined        // the player is not in the session
	StatusStaleEpoch       // the node incarnation is older than the replicated one, or was reaped
	StatusInvalid          // the payload cannot be read
	// StatusTooOld: not applied. The op is older than what the session
	// remembers of its ops, so it may be a retry of an op applied before
	// (see OpRetention); whether it ever took effect is unknown to the caller.
	StatusTooOld
)

var statusNames = [...]string{"ok", "ignored", "not_found", "exists", "published", "already_published", "full", "not_joined", "stale_epoch", "invalid", "too_old"}

func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Result is what Apply returns to the proposer.
type Result struct {
	Status Status
	// Index is the log index that applied the operation. For a duplicate it is
	// the index of the original.
	Index uint64
	// Duplicate is true when the op ID had already been applied: Result repeats
	// the original outcome and no events are emitted.
	Duplicate bool
}
