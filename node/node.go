package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"chorus/fsm"
	"chorus/transport"
)

// Node is one member of a chorus cluster: raft with its stores, the peer port,
// the FSM adapter and the hub. Its methods are safe for concurrent use.
type Node struct {
	cfg   Config
	log   hclog.Logger
	raft  *raft.Raft
	fsm   *adapter
	hub   *hub
	peer  *transport.Peer
	store *raftboltdb.BoltStore
	logs  raft.LogStore // the cached log store raft uses
	epoch atomic.Uint64 // this incarnation; persisted, one more on every start

	notifyCh chan bool
	obsCh    chan raft.Observation
	// leaderMoved is cancelled, and replaced, whenever this node's view of the
	// leader changes, so that a forward to a leader that froze or lost its
	// place gives up at once instead of at its deadline.
	leaderMoved atomic.Pointer[leaderView]
	observer    *raft.Observer

	readyTerm atomic.Uint64 // the term in which this leader committed its barrier
	caughtUp  atomic.Bool   // applied at least the commit index seen after start
	started   time.Time

	reapMu  sync.Mutex           // guards failing
	failing map[string]time.Time // peers the leader cannot reach, since when

	restoreMu sync.Mutex // held by the one Restore that may run at a time
	// applyGate and restoring close the leader to writes while a Restore
	// counts the sessions it would replace and installs the backup: a write
	// acknowledged in between would be replaced unseen. applyLocal checks
	// restoring and hands its entry to raft under the read lock, so once
	// Restore has set restoring under the write lock, every write that got
	// past the check is already in raft's queue, ahead of Restore's barrier.
	applyGate sync.RWMutex
	restoring bool // guarded by applyGate

	epochKick chan struct{} // asks the epoch loop to announce a new epoch

	api *API // the Keyboardia backend over this node

	stop      context.CancelFunc
	halt      <-chan struct{} // closed when Close begins; ends every wait on a raft future
	wg        sync.WaitGroup
	closing   atomic.Bool // Close has begun; raft.State() may still say otherwise
	serving   atomic.Bool // raft is set; the peer port answers RPCs before that
	closeOnce sync.Once
	closeErr  error
}

// epochKey is where the stable store keeps this node's epoch counter.
var epochKey = []byte("chorus_epoch")

// New opens the stores, starts the peer port and raft, and bootstraps a new
// cluster when the data dir is empty and Peers is set. Call Close (or Run) to
// stop it.
func New(cfg Config) (*Node, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("node config: %w", err)
	}
	log := cfg.Logger.With("node_id", cfg.ID)
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	n := &Node{
		cfg:       cfg,
		log:       log,
		hub:       newHub(log.Named("hub"), cfg.SubscriberQueue),
		notifyCh:  make(chan bool, 16),
		obsCh:     make(chan raft.Observation, 256),
		failing:   map[string]time.Time{},
		epochKick: make(chan struct{}, 1),
		started:   time.Now(),
	}
	n.leaderMoved.Store(newLeaderView())
	ctx, cancel := context.WithCancel(context.Background())
	n.stop, n.halt = cancel, ctx.Done()
	n.fsm = newAdapter(log.Named("fsm"), n.hub)
	n.fsm.onApplied = n.checkReaped
	n.fsm.halt = n.halt
	n.instrument()
	n.api = newAPI(n)

	ok := false
	defer func() {
		if !ok {
			cancel()
			n.closeStores()
		}
	}()
	var err error
	n.store, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db"), NoSync: cfg.NoSync})
	if err != nil {
		return nil, fmt.Errorf("open raft log %s: %w", filepath.Join(cfg.DataDir, "raft.db"), err)
	}
	epoch, err := n.nextEpoch(0)
	if err != nil {
		return nil, err
	}
	n.epoch.Store(epoch)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, log.Named("snapshots"))
	if err != nil {
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	n.peer, err = transport.ListenPeer(transport.PeerConfig{
		ID: cfg.ID, Addr: cfg.PeerAddr, Secret: cfg.ClusterSecret, TLS: cfg.PeerTLS,
		Handler: rpcHandler{n}, Faults: cfg.Faults, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("peer port: %w", err)
	}
	advertise := cfg.AdvertiseAddr
	if advertise == "" {
		advertise = n.peer.Addr().String()
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  &streamLayer{peer: n.peer, ln: n.peer.RaftListener(), advertise: advertise},
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  log.Named("raft-net"),
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.MaxAppendEntries = cfg.MaxAppendEntries
	rc.BatchApplyCh = true
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.NotifyCh = n.notifyCh
	rc.Logger = log.Named("raft")

	existing, err := raft.HasExistingState(n.store, n.store, snaps)
	if err != nil {
		return nil, fmt.Errorf("inspect raft state: %w", err)
	}
	logs, err := raft.NewLogCache(512, n.store)
	if err != nil {
		return nil, fmt.Errorf("log cache: %w", err)
	}
	n.logs = logs
	if err := recoverFromPeersFile(cfg, rc, logs, n.store, snaps, trans, log); err != nil {
		_ = trans.Close() // New is failing; its error is the one to report
		return nil, err
	}
	n.raft, err = raft.NewRaft(rc, n.fsm, logs, n.store, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.serving.Store(true)
	if !existing && len(cfg.Peers) > 0 {
		var servers []raft.Server
		for _, p := range cfg.Peers {
			addr := p.Addr
			if p.ID == cfg.ID {
				addr = advertise
			}
			servers = append(servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(addr), Suffrage: raft.Voter})
		}
		if err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		log.Info("bootstrapped cluster", "members", len(servers))
	} else if existing {
		log.Info("restarting on existing raft state", "data_dir", cfg.DataDir)
	}

	n.observer = raft.NewObserver(n.obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation:
			// Here, on raft's own goroutine, rather than in observe: the
			// loop that drains obsCh also reaps and may be busy, and a full
			// obsCh drops observations.
			n.leaderMoved.Swap(newLeaderView()).cancel()
			return true
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(n.observer)

	n.wg.Add(4)
	go func() { defer n.wg.Done(); n.api.run(ctx) }()
	go func() { defer n.wg.Done(); n.watchLeadership(ctx) }()
	go func() { defer n.wg.Done(); n.announceEpochs(ctx) }()
	go func() { defer n.wg.Done(); n.catchUp(ctx) }()
	ok = true
	log.Info("node started", "peer_addr", advertise, "epoch", epoch)
	return n, nil
}

// nextEpoch reads, increments past floor and durably stores this node's
// epoch counter.
func (n *Node) nextEpoch(floor uint64) (uint64, error) {
	prev, err := n.store.GetUint64(epochKey)
	switch {
	case errors.Is(err, raftboltdb.ErrKeyNotFound):
		// A fresh data dir. The cluster may still hold the epoch of an
		// earlier incarnation of this id (a wiped node added back); starting
		// from the clock puts this one past it, so that announcing it retires
		// that incarnation's players instead of adopting them.
		prev = uint64(max(n.cfg.Now().UnixMilli(), 0))
	case err != nil:
		return 0, fmt.Errorf("read epoch: %w", err)
	}
	next := max(prev, floor) + 1
	if err := n.store.SetUint64(epochKey, next); err != nil {
		return 0, fmt.Errorf("store epoch: %w", err)
	}
	return next, nil
}

// ID returns the node id.
func (n *Node) ID() string { return n.cfg.ID }

// Epoch returns this incarnation's epoch; players joined through this node carry it.
func (n *Node) Epoch() uint64 { return n.epoch.Load() }

// PeerAddr returns the bound peer address.
func (n *Node) PeerAddr() string { return n.peer.Addr().String() }

// Run blocks until ctx is done, then shuts the node down gracefully.
func (n *Node) Run(ctx context.Context) error {
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.Shutdown(sctx)
}

// Shutdown hands leadership to another voter when this node leads (bounded by
// ctx), then closes the node.
func (n *Node) Shutdown(ctx context.Context) error {
	if ctx.Err() == nil && n.raft.State() == raft.Leader && n.voters() > 1 {
		if err := n.await(ctx, n.raft.LeadershipTransfer()); err != nil {
			n.log.Warn("leadership transfer before shutdown failed", "error", err)
		} else {
			n.log.Info("leadership transferred before shutdown")
		}
	}
	return n.Close()
}

// await returns the error of a raft future, or ErrShutdown once the node is
// closing, or ctx's error when ctx ends first. Raft never answers a request
// that it still had queued when it shut down (hashicorp/raft#498), so a bare
// f.Error() can block Close forever. The goroutine that waits on such a
// stranded future outlives the node; it holds nothing else.
func (n *Node) await(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-n.halt:
		return ErrShutdown
	case <-ctx.Done():
		return fmt.Errorf("wait for raft: %w", ctx.Err())
	}
}

// Close stops the node at once, without a leadership transfer: subscribers
// end with ErrShutdown, raft and the peer port stop, the stores close. It is
// what a crash looks like to the rest of the cluster, minus the lost process.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.closing.Store(true)
		n.stop()
		var errs []error
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
		n.raft.DeregisterObserver(n.observer)
		n.wg.Wait()
		n.hub.shutdown(ErrShutdown)
		if err := n.peer.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close peer port: %w", err))
		}
		if err := n.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft log: %w", err))
		}
		n.closeErr = errors.Join(errs...)
		n.log.Info("node stopped")
	})
	return n.closeErr
}

// closed reports whether the node is closing. raft.State() is no substitute:
// raft's run loop can move a shut-down node back to follower or candidate.
func (n *Node) closed() bool { return n.closing.Load() || n.raft.State() == raft.Shutdown }

// closeStores releases what New opened when New fails half way.
func (n *Node) closeStores() {
	if n.raft != nil {
		_ = n.raft.Shutdown().Error() // New is already failing; its error is the one to report
	}
	if n.peer != nil {
		_ = n.peer.Close() // as above
	}
	if n.store != nil {
		_ = n.store.Close() // as above
	}
}

func (n *Node) voters() int {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	v := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			v++
		}
	}
	return v
}

// watchLeadership drains raft's notify and observer channels promptly (an
// undrained channel blocks raft), logs every leadership change, commits the
// barrier that makes a new leader's read index safe, and reaps the players of
// nodes the leader has not reached for PresenceTimeout.
func (n *Node) watchLeadership(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var barriers sync.WaitGroup
	defer barriers.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-n.notifyCh:
			// Failures seen in an earlier term are stale: raft reports a
			// peer's recovery only in the term that saw it fail, so a kept
			// entry would reap a healthy peer's players.
			n.reapMu.Lock()
			clear(n.failing)
			n.reapMu.Unlock()
			if isLeader {
				term := n.raft.CurrentTerm()
				n.log.Info("became leader", "term", term)
				barriers.Add(1)
				go func() { defer barriers.Done(); n.leaderBarrier(ctx, term) }()
			} else {
				n.log.Info("lost leadership")
			}
		case o := <-n.obsCh:
			n.observe(o)
		case <-tick.C:
			n.reap(ctx)
		}
	}
}

// leaderBarrier commits an entry of the new term; until it has, the commit
// index may trail writes the previous leader acknowledged.
func (n *Node) leaderBarrier(ctx context.Context, term uint64) {
	if err := n.await(ctx, n.raft.Barrier(n.cfg.ApplyTimeout)); err != nil {
		n.log.Debug("leader barrier failed", "term", term, "error", err)
		return
	}
	if n.raft.CurrentTerm() == term {
		n.readyTerm.Store(term)
	}
}

// leaderView lasts as long as one view of the leader: its ctx is cancelled
// when the view changes.
type leaderView struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func newLeaderView() *leaderView {
	ctx, cancel := context.WithCancel(context.Background())
	return &leaderView{ctx, cancel}
}

func (n *Node) observe(o raft.Observation) {
	switch d := o.Data.(type) {
	case raft.LeaderObservation:
		if d.LeaderID == "" {
			n.log.Info("leader lost")
		} else {
			n.log.Info("leader changed", "leader_id", d.LeaderID, "leader_addr", d.LeaderAddr)
		}
	case raft.FailedHeartbeatObservation:
		n.reapMu.Lock()
		if _, ok := n.failing[string(d.PeerID)]; !ok {
			n.failing[string(d.PeerID)] = d.LastContact
			n.log.Warn("peer unreachable", "peer_id", d.PeerID, "last_contact", d.LastContact)
		}
		n.reapMu.Unlock()
	case raft.ResumedHeartbeatObservation:
		n.reapMu.Lock()
		if _, ok := n.failing[string(d.PeerID)]; ok {
			delete(n.failing, string(d.PeerID))
			n.log.Info("peer reachable again", "peer_id", d.PeerID)
		}
		n.reapMu.Unlock()
	}
}

// reap commits reap_node for every peer that the leader has not reached for
// PresenceTimeout and that still owns players, and for every node that owns
// players but is not a member: a node lost to a peers.json recovery, or one
// of another cluster's nodes in a restored backup. Nothing else would ever
// drop their players, which hold seats in their sessions.
func (n *Node) reap(ctx context.Context) {
	if n.cfg.PresenceTimeout < 0 || n.raft.State() != raft.Leader {
		return
	}
	now := time.Now()
	var due []string
	n.reapMu.Lock()
	for id, since := range n.failing {
		if !since.IsZero() && now.Sub(since) >= n.cfg.PresenceTimeout {
			due = append(due, id)
		}
	}
	n.reapMu.Unlock()
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		// The latest configuration, committed or not: a node being added
		// is a member from the moment its entry is appended, before it
		// can have players.
		members := map[string]bool{}
		for _, s := range f.Configuration().Servers {
			members[string(s.ID)] = true
		}
		n.fsm.view(func(st *fsm.State, _ uint64) {
			for _, id := range st.PlayerNodes() {
				if !members[id] && !slices.Contains(due, id) {
					n.log.Warn("players of a node that is not a member", "peer_id", id)
					due = append(due, id)
				}
			}
		})
	}
	for _, id := range due {
		var epoch uint64
		var owns, reaped bool
		n.fsm.view(func(st *fsm.State, _ uint64) {
			epoch, reaped = st.NodeEpoch(id)
			owns = !reaped && st.HasPlayersOn(id)
		})
		if !owns {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, n.cfg.SubmitTimeout)
		res, err := n.Submit(sctx, fsm.Command{Kind: fsm.KindReapNode, Node: id, Epoch: epoch})
		cancel()
		if err != nil {
			n.log.Warn("reap failed", "peer_id", id, "error", err)
			continue
		}
		n.log.Warn("reaped players of node", "peer_id", id, "epoch", epoch, "status", res.Status)
	}
}

// checkReaped runs after every applied batch: when the leader has reaped this
// incarnation, the node announces a fresh epoch so its new joins are accepted.
func (n *Node) checkReaped(uint64) {
	var reaped bool
	var epoch uint64
	n.fsm.view(func(st *fsm.State, _ uint64) { epoch, reaped = st.NodeEpoch(n.cfg.ID) })
	if reaped && epoch >= n.epoch.Load() {
		select {
		case n.epochKick <- struct{}{}:
		default:
		}
	}
}

// announceEpochs commits node_epoch for this incarnation as soon as there is a
// leader (dropping players an earlier incarnation left behind), and again with
// a higher epoch whenever the leader reaps this node.
func (n *Node) announceEpochs(ctx context.Context) {
	announced := uint64(0)
	for {
		epoch := n.epoch.Load()
		if epoch != announced {
			res, err := n.Submit(ctx, fsm.Command{Kind: fsm.KindNodeEpoch, Node: n.cfg.ID, Epoch: epoch, Addr: n.cfg.HTTPAddr})
			switch {
			case err == nil && res.Status == fsm.StatusStaleEpoch && n.epochBehind(epoch):
				// The cluster knows a later incarnation of this id (its data
				// dir was lost): joins with this epoch would all be refused.
				if err := n.advanceEpoch(); err != nil {
					n.log.Error("cannot advance epoch past the replicated one", "error", err)
					select {
					case <-ctx.Done():
						return
					case <-time.After(200 * time.Millisecond):
					}
				}
				continue
			case err == nil:
				announced = epoch
				n.log.Info("announced epoch", "epoch", epoch, "status", res.Status)
			case ctx.Err() != nil:
				return
			default:
				n.log.Debug("announce epoch: will retry", "error", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(200 * time.Millisecond):
				}
				continue
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-n.epochKick:
			var cur uint64
			var reaped bool
			n.fsm.view(func(st *fsm.State, _ uint64) { cur, reaped = st.NodeEpoch(n.cfg.ID) })
			if reaped && cur >= n.epoch.Load() {
				next, err := n.nextEpoch(cur) // the counter must pass the reaped epoch
				if err != nil {
					n.log.Error("cannot advance epoch after being reaped", "error", err)
					continue
				}
				n.epoch.Store(next)
				n.log.Warn("this node was reaped; advancing epoch", "epoch", next)
			}
		}
	}
}

// epochBehind reports whether the replicated epoch of this node id is past
// epoch, or is epoch and reaped: an announcement of epoch is then stale.
func (n *Node) epochBehind(epoch uint64) bool {
	var cur uint64
	var reaped bool
	n.fsm.view(func(st *fsm.State, _ uint64) { cur, reaped = st.NodeEpoch(n.cfg.ID) })
	return cur > epoch || (cur == epoch && reaped)
}

// advanceEpoch moves this node's epoch past the replicated one.
func (n *Node) advanceEpoch() error {
	var cur uint64
	n.fsm.view(func(st *fsm.State, _ uint64) { cur, _ = st.NodeEpoch(n.cfg.ID) })
	next, err := n.nextEpoch(cur)
	if err != nil {
		return err
	}
	n.epoch.Store(next)
	n.log.Warn("the cluster knows a later epoch of this node; advancing", "epoch", next, "replicated_epoch", cur)
	return nil
}

// catchUp marks the node caught up once it has applied the commit index the
// leader reported after this start, so a restarted node never serves a state
// older than one it served before (its applied index starts at the last snapshot).
func (n *Node) catchUp(ctx context.Context) {
	for ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, n.cfg.SubmitTimeout)
		err := n.Barrier(sctx)
		cancel()
		if err == nil {
			n.caughtUp.Store(true)
			n.log.Info("caught up with the cluster", "applied_index", n.fsm.applied.Load(), "after", time.Since(n.started).Round(time.Millisecond))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Ready reports whether the node knows a leader and has caught up with the
// cluster since it started.
func (n *Node) Ready() bool {
	_, id := n.raft.LeaderWithID()
	return id != "" && n.caughtUp.Load()
}

// newOpID returns 16 random bytes.
func newOpID() fsm.OpID {
	var o fsm.OpID
	_, _ = rand.Read(o[:]) // crypto/rand.Read never fails on Linux
	return o
}

// streamLayer adapts the peer port to raft's StreamLayer.
type streamLayer struct {
	peer      *transport.Peer
	ln        net.Listener
	advertise string
}

func (s *streamLayer) Accept() (net.Conn, error) { return s.ln.Accept() }
func (s *streamLayer) Close() error              { return s.ln.Close() }

// Addr returns the advertised address: raft tells peers to dial it.
func (s *streamLayer) Addr() net.Addr { return advertisedAddr(s.advertise) }

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return s.peer.DialRaft(string(addr), timeout)
}

type advertisedAddr string

func (a advertisedAddr) Network() string { return "tcp" }
func (a advertisedAddr) String() string  { return string(a) }

// Retire drops every player this node owns in one log entry, by announcing
// the next epoch. A graceful shutdown calls it after closing the sockets.
func (n *Node) Retire(ctx context.Context) error {
	next, err := n.nextEpoch(n.epoch.Load())
	if err != nil {
		return err
	}
	n.epoch.Store(next)
	if _, err := n.Submit(ctx, fsm.Command{Kind: fsm.KindNodeEpoch, Node: n.cfg.ID, Epoch: next, Addr: n.cfg.HTTPAddr}); err != nil {
		return fmt.Errorf("retire players: %w", err)
	}
	return nil
}
