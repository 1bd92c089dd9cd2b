package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"chorus/fsm"
	"chorus/transport"
)

// Status is what GET /cluster/status reports (DESIGN.md §7).
type Status struct {
	ID           string   `json:"id"`
	State        string   `json:"state"` // leader, follower, candidate or shutdown
	Leader       Leader   `json:"leader"`
	Term         uint64   `json:"term"`
	AppliedIndex uint64   `json:"appliedIndex"`
	CommitIndex  uint64   `json:"commitIndex"`
	LastLogIndex uint64   `json:"lastLogIndex"`
	Members      []Member `json:"members"`
}

// Leader identifies the current leader; both fields are empty when there is none.
type Leader struct {
	ID       string `json:"id"`
	HTTPAddr string `json:"httpAddr"`
}

// Member is one server of the raft configuration.
type Member struct {
	ID       string `json:"id"`
	PeerAddr string `json:"peerAddr"`
	HTTPAddr string `json:"httpAddr"`
	Voter    bool   `json:"voter"`
}

// Status reports this node's view of the cluster. HTTP addresses are those
// the nodes announced through the log.
func (n *Node) Status() Status {
	st := Status{
		ID:           n.cfg.ID,
		State:        strings.ToLower(n.raft.State().String()),
		Term:         n.raft.CurrentTerm(),
		AppliedIndex: n.fsm.applied.Load(),
		CommitIndex:  n.raft.CommitIndex(),
		LastLogIndex: n.raft.LastIndex(),
		Members:      []Member{},
	}
	if n.closing.Load() {
		st.State = strings.ToLower(raft.Shutdown.String())
	}
	_, leaderID := n.raft.LeaderWithID()
	var servers []raft.Server
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		servers = f.Configuration().Servers
	}
	n.fsm.view(func(s *fsm.State, _ uint64) {
		addr := func(id string) string {
			if id == n.cfg.ID && n.cfg.HTTPAddr != "" {
				return n.cfg.HTTPAddr
			}
			return s.NodeHTTPAddr(id)
		}
		if leaderID != "" {
			st.Leader = Leader{ID: string(leaderID), HTTPAddr: addr(string(leaderID))}
		}
		for _, srv := range servers {
			st.Members = append(st.Members, Member{
				ID: string(srv.ID), PeerAddr: string(srv.Address),
				HTTPAddr: addr(string(srv.ID)), Voter: srv.Suffrage == raft.Voter,
			})
		}
	})
	return st
}

// MemberChange is a request to add or remove a server.
type MemberChange struct {
	Remove   bool   `json:"remove,omitempty"`
	ID       string `json:"id"`
	PeerAddr string `json:"peerAddr,omitempty"`
	HTTPAddr string `json:"httpAddr,omitempty"`
	Voter    bool   `json:"voter"`
}

// ErrBadRequest wraps membership requests that cannot be carried out as asked.
var ErrBadRequest = transport.ErrBadRequest

var _ transport.Cluster = (*Node)(nil)

// ClusterStatus returns Status for the HTTP layer.
func (n *Node) ClusterStatus() any { return n.Status() }

// AddMember adds a voter or non-voter; see ChangeMember.
func (n *Node) AddMember(ctx context.Context, id, peerAddr, httpAddr string, voter bool) error {
	return n.ChangeMember(ctx, MemberChange{ID: id, PeerAddr: peerAddr, HTTPAddr: httpAddr, Voter: voter})
}

// RemoveMember removes a server; see ChangeMember.
func (n *Node) RemoveMember(ctx context.Context, id string) error {
	return n.ChangeMember(ctx, MemberChange{Remove: true, ID: id})
}

// ChangeMember adds (as a voter or non-voter) or removes a server. Any node
// accepts it and forwards it to the leader.
func (n *Node) ChangeMember(ctx context.Context, m MemberChange) error {
	if m.ID == "" || (!m.Remove && m.PeerAddr == "") {
		return fmt.Errorf("%w: id and peerAddr are required", ErrBadRequest)
	}
	req, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode member change: %w", err)
	}
	return n.retry(ctx, func(ctx context.Context) error {
		return n.onLeader(ctx, rpcMember, req, func() error { return n.serveMember(ctx, req) })
	})
}

// TransferLeadership hands leadership to target, or to any up-to-date voter
// when target is empty. Any node accepts it and forwards it to the leader.
func (n *Node) TransferLeadership(ctx context.Context, target string) error {
	return n.retry(ctx, func(ctx context.Context) error {
		return n.onLeader(ctx, rpcTransfer, []byte(target), func() error { return n.serveTransfer(ctx, target) })
	})
}

// onLeader runs local on the leader, or calls the leader's method over RPC.
func (n *Node) onLeader(ctx context.Context, method uint8, req []byte, local func() error) error {
	if n.closed() {
		return ErrShutdown
	}
	addr, id := n.raft.LeaderWithID()
	switch {
	case id == "":
		return errNoLeaderNow
	case string(id) == n.cfg.ID:
		return localErr(local())
	}
	if _, err := n.peer.Call(ctx, string(addr), method, req); err != nil {
		var re *transport.RPCError
		if errors.As(err, &re) && re.Code == codeBadInput {
			return fmt.Errorf("%w: %s", ErrBadRequest, re.Msg)
		}
		return n.rpcErr(err)
	}
	return nil
}

// localErr gives the error of a leader-side handler, which speaks RPC codes
// for the follower that forwarded, the meaning a caller on the leader itself
// needs: bad input is ErrBadRequest, and a lost leadership is retried as it
// is after a forward.
func localErr(err error) error {
	var re *transport.RPCError
	if !errors.As(err, &re) {
		return err
	}
	switch re.Code {
	case codeBadInput:
		return fmt.Errorf("%w: %s", ErrBadRequest, re.Msg)
	case codeShutdown:
		return ErrShutdown
	}
	return &retryError{err}
}

func (n *Node) serveMember(ctx context.Context, req []byte) error {
	if n.raft.State() != raft.Leader {
		return leaderRPCErr(&retryError{ErrNotLeader})
	}
	var m MemberChange
	if err := json.Unmarshal(req, &m); err != nil {
		return &transport.RPCError{Code: codeBadInput, Msg: "malformed member change"}
	}
	if m.Remove && m.ID == n.cfg.ID {
		// A leader that removes itself shuts its raft down as soon as the
		// change commits, so it could neither answer nor drop its own
		// players. Hand leadership over instead; the caller's retry reaches
		// the new leader, which removes this node.
		if err := n.await(ctx, n.raft.LeadershipTransfer()); err != nil {
			return leaderRPCErr(raftErr(err))
		}
		n.log.Info("handed leadership over before being removed")
		return leaderRPCErr(&retryError{ErrNotLeader})
	}
	var f raft.IndexFuture
	switch {
	case m.Remove:
		f = n.raft.RemoveServer(raft.ServerID(m.ID), 0, n.cfg.ApplyTimeout)
	case m.Voter:
		f = n.raft.AddVoter(raft.ServerID(m.ID), raft.ServerAddress(m.PeerAddr), 0, n.cfg.ApplyTimeout)
	default:
		f = n.raft.AddNonvoter(raft.ServerID(m.ID), raft.ServerAddress(m.PeerAddr), 0, n.cfg.ApplyTimeout)
	}
	if err := n.await(ctx, f); err != nil {
		return leaderRPCErr(raftErr(err))
	}
	n.log.Info("membership changed", "member_id", m.ID, "remove", m.Remove, "voter", m.Voter, "peer_addr", m.PeerAddr)
	if m.Remove {
		n.reapRemoved(ctx, m.ID)
	}
	return nil
}

// reapRemoved drops the players of a node that left the cluster: the leader
// no longer watches its heartbeats, so the reaper would never get to them.
func (n *Node) reapRemoved(ctx context.Context, id string) {
	var epoch uint64
	var owns bool
	n.fsm.view(func(st *fsm.State, _ uint64) {
		var reaped bool
		epoch, reaped = st.NodeEpoch(id)
		owns = !reaped && st.HasPlayersOn(id)
	})
	if !owns {
		return
	}
	res, err := n.Submit(ctx, fsm.Command{Kind: fsm.KindReapNode, Node: id, Epoch: epoch})
	if err != nil {
		n.log.Warn("players of the removed node not dropped; they stay until it rejoins with a new epoch", "member_id", id, "error", err)
		return
	}
	n.log.Info("dropped the players of the removed node", "member_id", id, "epoch", epoch, "status", res.Status)
}

func (n *Node) serveTransfer(ctx context.Context, target string) error {
	if n.raft.State() != raft.Leader {
		return leaderRPCErr(&retryError{ErrNotLeader})
	}
	var f raft.Future
	if target == "" {
		f = n.raft.LeadershipTransfer()
	} else {
		addr := ""
		if cf := n.raft.GetConfiguration(); cf.Error() == nil {
			for _, s := range cf.Configuration().Servers {
				if string(s.ID) == target {
					addr = string(s.Address)
				}
			}
		}
		if addr == "" {
			return &transport.RPCError{Code: codeBadInput, Msg: "unknown member " + target}
		}
		if target == n.cfg.ID {
			return nil // already leads
		}
		f = n.raft.LeadershipTransferToServer(raft.ServerID(target), raft.ServerAddress(addr))
	}
	if err := n.await(ctx, f); err != nil {
		return leaderRPCErr(raftErr(err))
	}
	n.log.Info("leadership transferred", "target", target)
	return nil
}

// View runs fn with the local state under the read lock, without a read
// barrier (a stale read). fn must not keep pointers into the state.
func (n *Node) View(fn func(st *fsm.State, index uint64)) { n.fsm.view(fn) }

// Read passes the read barrier, then runs fn like View: a linearizable read.
func (n *Node) Read(ctx context.Context, fn func(st *fsm.State, index uint64)) error {
	if err := n.Barrier(ctx); err != nil {
		return err
	}
	n.fsm.view(fn)
	return nil
}

// Subscribe renders the session's snapshot with fn (under the read lock, at
// the index it passes) and returns a subscription to every later event of
// the session. Callers that need a linearizable snapshot pass Barrier first.
func (n *Node) Subscribe(session string, fn func(s *fsm.Session, index uint64)) (*Subscription, error) {
	if n.closed() {
		return nil, ErrShutdown
	}
	return n.fsm.subscribe(session, fn)
}

// AppliedIndex returns the last log index this node's FSM has applied.
func (n *Node) AppliedIndex() uint64 { return n.fsm.applied.Load() }

// Subscribers returns the number of open subscriptions on this node.
func (n *Node) Subscribers() int { return n.hub.count() }

// Snapshot forces a raft snapshot (and log compaction) now. TakeSnapshot
// does the same and reports what it cost.
func (n *Node) Snapshot() error {
	if err := n.raft.Snapshot().Error(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// SnapshotStats is what POST /cluster/snapshot reports (DESIGN.md §7) about
// one snapshot. It encodes durations as float milliseconds.
type SnapshotStats struct {
	Index uint64 // of the last entry the snapshot covers (raft's snapshot meta)
	Term  uint64 // of that entry
	// Pause is how long Snapshot held raft's FSM goroutine, lock wait
	// included: no entry is applied meanwhile.
	Pause time.Duration
	// Persist is how long writing the state took, the sink's sync and close
	// included; applies go on meanwhile.
	Persist time.Duration
	Bytes   int64 // of state written
	// MaxPause is the longest Pause of any snapshot this node has taken
	// since it started, raft's own included.
	MaxPause time.Duration
}

// MarshalJSON encodes s with the field names of DESIGN.md §7.
func (s SnapshotStats) MarshalJSON() ([]byte, error) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return json.Marshal(struct {
		Index      uint64  `json:"index"`
		Term       uint64  `json:"term"`
		PauseMs    float64 `json:"pauseMs"`
		PersistMs  float64 `json:"persistMs"`
		Bytes      int64   `json:"bytes"`
		MaxPauseMs float64 `json:"maxPauseMs"`
	}{s.Index, s.Term, ms(s.Pause), ms(s.Persist), s.Bytes, ms(s.MaxPause)})
}

// nothingNewError says that the node has applied nothing since its newest
// snapshot. It matches raft.ErrNothingNewToSnapshot and transport.ErrConflict.
type nothingNewError struct{ index uint64 }

func (e *nothingNewError) Error() string {
	if e.index == 0 {
		return "nothing new to snapshot: the node has applied no entry yet"
	}
	return "nothing new to snapshot: the node has applied nothing since its snapshot at index " + strconv.FormatUint(e.index, 10)
}

func (e *nothingNewError) Is(target error) bool {
	return target == raft.ErrNothingNewToSnapshot || target == transport.ErrConflict
}

// TakeSnapshot takes a raft snapshot of this node now (it is not forwarded:
// any node can snapshot), waits until it is persisted and the log compacted,
// and reports its cost. It refuses with an error matching
// raft.ErrNothingNewToSnapshot (and transport.ErrConflict) when the node has
// applied nothing since its newest snapshot: raft itself refuses only before
// the first apply, and would write the same state again. Two concurrent calls
// may both pass that check and write one index twice, which costs only time.
func (n *Node) TakeSnapshot(ctx context.Context) (SnapshotStats, error) {
	if n.closed() {
		return SnapshotStats{}, ErrShutdown
	}
	if index, none := n.fsm.nothingNew(); none {
		return SnapshotStats{}, &nothingNewError{index}
	}
	f := n.raft.Snapshot()
	if err := n.await(ctx, f); err != nil {
		if errors.Is(err, raft.ErrNothingNewToSnapshot) {
			return SnapshotStats{}, &nothingNewError{}
		}
		return SnapshotStats{}, fmt.Errorf("snapshot: %w", raftErr(err))
	}
	// Read at once: a later snapshot replaces these figures when it persists.
	st := n.fsm.persisted.Load()
	// Open reads the whole file once to check its CRC; the figures are taken
	// by then, so that read does not count in them.
	meta, rc, err := f.Open()
	if err != nil {
		return SnapshotStats{}, fmt.Errorf("open the new snapshot: %w", err)
	}
	_ = rc.Close() // only the meta was wanted; the file was only read
	if st == nil || st.id != meta.ID {
		return SnapshotStats{}, fmt.Errorf("snapshot %s: a later snapshot replaced its figures before they were read: %w", meta.ID, transport.ErrUnavailable)
	}
	return SnapshotStats{
		Index: meta.Index, Term: meta.Term,
		Pause: st.pause, Persist: st.persist, Bytes: st.bytes,
		MaxPause: time.Duration(n.fsm.maxPause.Load()),
	}, nil
}

// ClusterSnapshot is TakeSnapshot for the HTTP layer.
func (n *Node) ClusterSnapshot(ctx context.Context) (any, error) { return n.TakeSnapshot(ctx) }

// SnapshotPauses returns how long the latest snapshot held raft's FSM
// goroutine, and the longest hold since the node started (zero before the
// first snapshot). Safe for concurrent use.
func (n *Node) SnapshotPauses() (last, longest time.Duration) {
	return time.Duration(n.fsm.lastPause.Load()), time.Duration(n.fsm.maxPause.Load())
}

// WriteState writes this node's FSM state in the snapshot format and returns
// the index it reflects. Two nodes that applied the same index write the same
// bytes (invariant I4).
func (n *Node) WriteState(w io.Writer) (uint64, error) {
	clone := n.fsm.clone()
	return clone.Index(), clone.WriteSnapshot(w)
}
