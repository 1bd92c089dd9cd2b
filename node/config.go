package node

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"

	"chorus/fsm"
	"chorus/transport"
)

// Peer is one member of the initial cluster.
type Peer struct {
	ID   string
	Addr string // peer port, host:port
}

// Config configures a node. Zero values take the defaults listed beside each field.
type Config struct {
	ID       string // required; the stable raft server id
	DataDir  string // required; raft.db (log + stable store) and snapshots/
	PeerAddr string // required; the peer port to listen on (host:port; port 0 picks one)
	// AdvertiseAddr is the peer address other nodes dial; default: the bound PeerAddr.
	AdvertiseAddr string
	HTTPAddr      string // the client address announced to the cluster; informational
	// Peers is the initial cluster. A node whose data dir holds no raft state
	// bootstraps with it; all nodes of a new cluster get the same list, so the
	// bootstrap is idempotent. Empty: wait to be added by an existing cluster.
	Peers []Peer
	// ClusterSecret authenticates every peer connection; required.
	ClusterSecret []byte
	// PeerTLS, when set, makes every peer connection mutual TLS against its
	// CA, with the cluster secret checked inside (transport.PeerTLS).
	PeerTLS *transport.PeerTLS

	Logger hclog.Logger     // default hclog.NewNullLogger()
	Now    func() time.Time // default time.Now; stamps commands

	HeartbeatTimeout   time.Duration // default 500ms
	ElectionTimeout    time.Duration // default 500ms
	LeaderLeaseTimeout time.Duration // default 250ms
	// CommitTimeout is how long the leader waits without new entries before it
	// tells followers the commit index; followers deliver to their sockets only
	// then. Default 5ms.
	CommitTimeout time.Duration
	// MaxAppendEntries bounds the entries per AppendEntries and per batch
	// applied to the FSM. Default 128.
	MaxAppendEntries int

	SnapshotThreshold uint64        // log entries between snapshots; default 8192
	SnapshotInterval  time.Duration // how often to check the threshold; default 30s
	TrailingLogs      uint64        // entries kept after a snapshot; default 10240
	// NoSync turns fsync off in the log store. Tests of performance only; it
	// forfeits durability.
	NoSync bool

	// ApplyTimeout bounds how long a proposal waits to enter the leader's queue. Default 5s.
	ApplyTimeout time.Duration
	// SubmitTimeout bounds Submit and Barrier when the caller's context has no
	// deadline. Default 10s. It, and every request deadline a caller gives
	// Submit (transport's JoinTimeout, 10s), must stay well below
	// fsm.OpRetention (60s): a retry after that is refused as too old.
	SubmitTimeout time.Duration
	// NoLeaderTimeout is how long Submit and Barrier wait for a leader before
	// failing with a NoLeaderError. Default 3s.
	NoLeaderTimeout time.Duration
	// RetryAfter is the hint a NoLeaderError carries. Default 2s.
	RetryAfter time.Duration

	// SubscriberQueue is the bound of each subscriber's event queue. Default 1024.
	SubscriberQueue int

	// PresenceTimeout is how long a node may be unreachable from the leader
	// before the leader reaps its players. Default 15s; 0 keeps the default,
	// negative disables reaping.
	PresenceTimeout time.Duration

	// Metrics records the write path's figures (NewMetrics; the caller
	// registers it). Default: none are kept.
	Metrics *Metrics

	// Faults, when set, injects link faults between nodes (tests only).
	Faults *transport.Faults
}

// opRetention is how long the FSM remembers an op ID (fsm.OpRetention): Submit
// must stop retrying an op well before, or its retries are refused as too old.
const opRetention = fsm.OpRetention * time.Millisecond

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HeartbeatTimeout, 500*time.Millisecond)
	def(&c.ElectionTimeout, 500*time.Millisecond)
	def(&c.LeaderLeaseTimeout, 250*time.Millisecond)
	def(&c.CommitTimeout, 5*time.Millisecond)
	def(&c.SnapshotInterval, 30*time.Second)
	def(&c.ApplyTimeout, 5*time.Second)
	def(&c.SubmitTimeout, 10*time.Second)
	def(&c.NoLeaderTimeout, 3*time.Second)
	def(&c.RetryAfter, 2*time.Second)
	def(&c.PresenceTimeout, 15*time.Second)
	if c.MaxAppendEntries == 0 {
		c.MaxAppendEntries = 128
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 10240
	}
	if c.SubscriberQueue == 0 {
		c.SubscriberQueue = 1024
	}
	return c
}

// Validate reports what is wrong with a configuration, after defaults.
func (c Config) Validate() error {
	var errs []error
	if c.ID == "" {
		errs = append(errs, errors.New("node id is required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data dir is required"))
	}
	if _, _, err := net.SplitHostPort(c.PeerAddr); err != nil {
		errs = append(errs, fmt.Errorf("peer address %q: %w", c.PeerAddr, err))
	}
	if len(c.ClusterSecret) == 0 {
		errs = append(errs, errors.New("cluster secret is required"))
	}
	seen := map[string]bool{}
	for _, p := range c.Peers {
		if p.ID == "" || p.Addr == "" {
			errs = append(errs, fmt.Errorf("peer %q=%q: id and address are required", p.ID, p.Addr))
		}
		if seen[p.ID] {
			errs = append(errs, fmt.Errorf("peer %q listed twice", p.ID))
		}
		seen[p.ID] = true
	}
	if len(c.Peers) > 0 && !seen[c.ID] {
		errs = append(errs, fmt.Errorf("peers list does not include this node (%s)", c.ID))
	}
	if c.ElectionTimeout < c.HeartbeatTimeout {
		errs = append(errs, errors.New("election timeout must be at least the heartbeat timeout"))
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		errs = append(errs, errors.New("leader lease timeout must not exceed the heartbeat timeout"))
	}
	if c.SubmitTimeout <= 0 || c.SubmitTimeout >= opRetention {
		errs = append(errs, fmt.Errorf("submit timeout %v must be positive and below the op retention of %v", c.SubmitTimeout, opRetention))
	}
	if c.MaxAppendEntries < 1 || c.MaxAppendEntries > 1024 {
		errs = append(errs, errors.New("max append entries must be in 1..1024"))
	}
	return errors.Join(errs...)
}
