package node

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"chorus/transport"
)

// ErrNoLeader matches every NoLeaderError.
var ErrNoLeader = errors.New("no leader")

// NoLeaderError says that the cluster has had no reachable leader for longer
// than Config.NoLeaderTimeout. Clients should retry after RetryAfter; the HTTP
// layer answers 503 with a Retry-After header.
type NoLeaderError struct {
	For        time.Duration // how long this node has seen no leader
	RetryAfter time.Duration
}

func (e *NoLeaderError) Error() string {
	return "no leader for " + e.For.Round(time.Millisecond).String() + " (retry after " + strconv.Itoa(int(e.RetryAfter/time.Second)) + "s)"
}

// Is makes errors.Is(err, ErrNoLeader) and errors.Is(err, transport.ErrUnavailable) match.
func (e *NoLeaderError) Is(target error) bool {
	return target == ErrNoLeader || target == transport.ErrUnavailable
}

// RetryAfterHint is when to try again.
func (e *NoLeaderError) RetryAfterHint() time.Duration { return e.RetryAfter }

// ErrNotLeader is returned by operations that only the leader performs when
// this node is not the leader and the request may not be forwarded further.
var ErrNotLeader = errors.New("not leader")

// ErrShutdown is returned by operations on a node that is shutting down.
var ErrShutdown = fmt.Errorf("node is shutting down: %w", transport.ErrUnavailable)

// ErrSessionNotFound is returned by Subscribe and reads for an unknown session.
var ErrSessionNotFound = errors.New("session not found")

// ErrSlowSubscriber is the reason a subscription is dropped when its queue is full.
var ErrSlowSubscriber = errors.New("subscriber queue overflowed")

// ErrResync is the reason subscriptions are dropped when the node's state was
// replaced by a snapshot from the leader: subscribers must take a new snapshot.
var ErrResync = errors.New("state replaced by a snapshot; resubscribe")

// ErrUnsubscribed is the reason of a subscription closed by its owner.
var ErrUnsubscribed = errors.New("unsubscribed")

// ErrTooLarge is returned by Submit for a command whose encoding exceeds MaxEntryBytes.
var ErrTooLarge = errors.New("command too large")
