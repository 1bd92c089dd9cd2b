package transport

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
)

// Errors a Backend wraps so that the API can pick a status or close code
// without knowing the node's types (besides ErrBadRequest and ErrUnavailable).
var (
	ErrNotFound         = errors.New("session not found")
	ErrPublished        = errors.New("session is published")
	ErrAlreadyPublished = errors.New("session is already published")
	ErrFull             = errors.New("session full")
	// ErrOverloaded: a socket could not keep up (close 1013, try again later).
	ErrOverloaded = errors.New("overloaded")
	// ErrRestarting: the node is restarting or its state was replaced (close 1012).
	ErrRestarting = errors.New("service restart")
	// ErrGone: the session was deleted while the socket was open.
	ErrGone = errors.New("session deleted")
	// ErrOutcomeUnknown: the write was not applied this time, but an earlier
	// attempt of it may have been (503). The client may try again; a new
	// request is a new operation.
	ErrOutcomeUnknown = errors.New("outcome unknown")
)

// ValidationError carries the messages of failed validation rules (400).
type ValidationError struct{ Details []string }

func (e *ValidationError) Error() string {
	return "validation failed: " + strings.Join(e.Details, "; ")
}

// Backend is what the Keyboardia API needs from a node. The node translates
// between these wire-level calls and its replicated log.
type Backend interface {
	// CreateSession validates and creates a session. name is the raw JSON
	// name (nil when the body had none); state is the raw initial state.
	CreateSession(ctx context.Context, name, state json.RawMessage) (id string, err error)
	// GetSession returns the Session JSON. stale skips the read barrier.
	GetSession(ctx context.Context, id string, stale bool) ([]byte, error)
	// Immutable reports whether the session is published, from local state
	// (the flag never changes). ok is false for an unknown session.
	Immutable(id string) (immutable, ok bool)
	ReplaceState(ctx context.Context, id string, state json.RawMessage) (updatedAt int64, err error)
	// Rename returns the response body {"id","name","updatedAt"}.
	Rename(ctx context.Context, id string, name json.RawMessage) ([]byte, error)
	Remix(ctx context.Context, id string) (newID string, err error)
	Publish(ctx context.Context, id string) (newID string, err error)

	// SessionDebug is /api/debug/session/{id}; RoomDebug is live-debug. Both
	// return JSON; SessionDebug fails with ErrNotFound for unknown sessions.
	SessionDebug(ctx context.Context, id string) ([]byte, error)
	RoomDebug(ctx context.Context, id string) (body []byte, exists bool, err error)
	// StateHash is the §4.9 hash of the live state.
	StateHash(ctx context.Context, id string) (string, error)
	// Connections lists this node's players of the session as JSON objects.
	Connections(id string) []json.RawMessage
	// SessionCount is the number of sessions.
	SessionCount() int

	// Join adds a player to the session (through the log, so the cap of 10 is
	// cluster-wide) and subscribes it. It fails with ErrNotFound or ErrFull
	// before any socket is upgraded.
	Join(ctx context.Context, req JoinRequest) (Player, error)
	// Members returns the HTTP addresses of every cluster member; the Origin
	// allow-list accepts them by default.
	Members() []string
}

// JoinRequest asks for a player in a session.
type JoinRequest struct {
	Session string
	// Since, when set, asks for a replay of the broadcasts after this seq
	// instead of a snapshot (DESIGN.md §4).
	Since *uint64
}

// Player is one socket's membership of a session.
type Player interface {
	// ID is the player id the snapshot tells the client.
	ID() string
	// Immutable reports whether the session is published.
	Immutable() bool
	// First returns the frames to send before anything else: a snapshot, or a
	// resume message and the replayed broadcasts. It hands them over once:
	// later calls return nil, so that a socket does not keep its first
	// snapshot (kilobytes) for its whole life.
	First() [][]byte
	// Next returns the next frame for this socket without waiting; ok is
	// false when none is queued. It returns an error when the subscription
	// ends (ErrOverloaded, ErrRestarting, ErrGone, ErrUnavailable). One
	// goroutine at a time calls it.
	Next() (frame []byte, ok bool, err error)
	// SetWake registers fn, called whenever Next may have something new (a
	// frame, or the end). fn may run on any goroutine and must not block: an
	// idle socket then needs no goroutine of its own to wait for frames.
	SetWake(fn func())
	// Handle runs one client message of a known type and returns the frames
	// for the sender only. An error closes the socket.
	Handle(ctx context.Context, typ string, seq *int64, raw []byte) ([][]byte, error)
	// Touch records activity (lastMessageAt, messageCount) for every frame.
	Touch()
	// Leave removes the player from the session.
	Leave()
}
