package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"chorus/fsm"
	"chorus/transport"
)

// MaxEntryBytes bounds one encoded command. Raft entries must stay far below
// 512 KiB; a client message or HTTP body is at most 64 KiB.
const MaxEntryBytes = 256 << 10

// MaxClockAhead is how far ahead of the leader's clock a forwarded command
// may be stamped. A session forgets op IDs by proposer time (fsm.OpRetention),
// so one proposer whose clock ran far ahead would make the session refuse the
// others' writes for as long; the leader refuses its commands instead.
const MaxClockAhead = 5 * time.Second

// Peer RPC methods.
const (
	rpcForward  uint8 = 1 // an encoded command → encoded Result
	rpcReadIdx  uint8 = 2 // nothing → the leader's commit index
	rpcMember   uint8 = 3 // membership change, JSON
	rpcTransfer uint8 = 4 // leadership transfer, the target id
	rpcCursor   uint8 = 5 // an ephemeral cursor frame for local sockets
)

// RPC error codes.
const (
	codeNotLeader uint8 = 1 // retry: this node does not lead (forwarding goes one hop)
	codeShutdown  uint8 = 2
	codeBadInput  uint8 = 3
)

// errRetry marks failures after which Submit tries again with the same op ID.
var errRetry = errors.New("retry")

type retryError struct{ err error }

func (e *retryError) Error() string        { return e.err.Error() }
func (e *retryError) Unwrap() error        { return e.err }
func (e *retryError) Is(target error) bool { return target == errRetry }

// errRestoring is a retryable failure: the leader takes no writes while it
// installs a backup.
var errRestoring = &retryError{errors.New("a restore is in progress")}

// errNoLeaderNow is a retryable failure that also counts toward NoLeaderTimeout.
var errNoLeaderNow = &retryError{errors.New("no leader known")}

// Submit commits a command through the leader and returns its result once
// this node's FSM has applied it. It stamps an op ID and the time when the
// command has none. On a follower it forwards to the leader (one hop). When
// leadership moves, it retries with the same op ID until ctx ends; the FSM
// applies the op at most once. With no leader for NoLeaderTimeout it fails
// with a *NoLeaderError.
func (n *Node) Submit(ctx context.Context, c fsm.Command) (fsm.Result, error) {
	if c.Op.IsZero() {
		c.Op = newOpID()
	}
	if c.At == 0 {
		c.At = n.cfg.Now().UnixMilli()
	}
	data, err := fsm.Encode(c)
	if err != nil {
		return fsm.Result{}, err
	}
	if len(data) > MaxEntryBytes {
		return fsm.Result{}, fmt.Errorf("%w: %d bytes (max %d)", ErrTooLarge, len(data), MaxEntryBytes)
	}
	var res fsm.Result
	var path submitPath
	start := time.Now()
	err = n.retry(ctx, func(ctx context.Context) error {
		var err error
		res, path, err = n.submitOnce(ctx, data)
		return err
	})
	if err == nil {
		n.cfg.Metrics.submit[path].Observe(since(start))
	}
	return res, err
}

// retry runs op until it succeeds, fails for good, or ctx ends, backing off
// between attempts. Failures without a known leader for NoLeaderTimeout end
// with a *NoLeaderError.
func (n *Node) retry(ctx context.Context, op func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, n.cfg.SubmitTimeout)
		defer cancel()
	}
	var noLeaderSince time.Time
	backoff := 5 * time.Millisecond
	for {
		err := op(ctx)
		switch {
		case err == nil:
			return nil
		case !errors.Is(err, errRetry):
			return err
		}
		if errors.Is(err, errNoLeaderNow) {
			if noLeaderSince.IsZero() {
				noLeaderSince = time.Now()
			}
			if d := time.Since(noLeaderSince); d >= n.cfg.NoLeaderTimeout {
				return &NoLeaderError{For: d, RetryAfter: n.cfg.RetryAfter}
			}
		} else {
			noLeaderSince = time.Time{}
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			if !noLeaderSince.IsZero() {
				return &NoLeaderError{For: time.Since(noLeaderSince), RetryAfter: n.cfg.RetryAfter}
			}
			return fmt.Errorf("%w (last attempt: %v)", ctx.Err(), err)
		case <-t.C:
		}
		n.cfg.Metrics.retries[retryReasonOf(err)].Inc()
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

// submitOnce makes one attempt, and reports where: on this node, which
// leads, or forwarded to the leader.
func (n *Node) submitOnce(ctx context.Context, data []byte) (fsm.Result, submitPath, error) {
	if n.closed() {
		return fsm.Result{}, pathLocal, ErrShutdown
	}
	moved := n.leaderMoved.Load().ctx // before the leader is read, so no change slips between
	addr, id := n.raft.LeaderWithID()
	switch {
	case id == "":
		return fsm.Result{}, pathLocal, errNoLeaderNow
	case string(id) == n.cfg.ID:
		res, err := n.applyLocal(ctx, data)
		return res, pathLocal, err
	}
	resp, err := n.callLeader(ctx, string(addr), rpcForward, data, moved)
	n.cfg.Metrics.forwarded(forwardCommand, err, ctx, moved)
	if err != nil {
		return fsm.Result{}, pathForwarded, n.rpcErr(err)
	}
	res, err := decodeResult(resp)
	if err != nil {
		return fsm.Result{}, pathForwarded, err
	}
	if err := n.fsm.waitApplied(ctx, res.Index); err != nil {
		return fsm.Result{}, pathForwarded, err
	}
	return res, pathForwarded, nil
}

// callLeader calls method on the leader at addr. The attempt ends early when
// moved ends, that is when this node sees the leader change: a leader that
// froze (SIGSTOP, a partition) would otherwise hold the request until its
// deadline although a new leader took over. A forwarded command's retry
// keeps its op ID.
func (n *Node) callLeader(ctx context.Context, addr string, method uint8, data []byte, moved context.Context) ([]byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(moved, cancel) // no goroutine until the view changes
	defer stop()
	return n.peer.Call(ctx, addr, method, data)
}

// applyLocal proposes on this node, which must lead. The future resolves
// after the local FSM applied the entry; the time until then is the commit
// latency.
func (n *Node) applyLocal(ctx context.Context, data []byte) (fsm.Result, error) {
	start := time.Now()
	n.applyGate.RLock()
	if n.restoring {
		n.applyGate.RUnlock()
		return fsm.Result{}, errRestoring
	}
	// Under the read lock only to hand the entry to raft (a channel send
	// bounded by ApplyTimeout), not while it commits.
	f := n.raft.Apply(data, n.cfg.ApplyTimeout)
	n.applyGate.RUnlock()
	if err := n.await(ctx, f); err != nil {
		return fsm.Result{}, raftErr(err)
	}
	n.cfg.Metrics.commit.Observe(since(start))
	res, ok := f.Response().(fsm.Result)
	if !ok {
		return fsm.Result{}, fmt.Errorf("apply: unexpected response %T", f.Response())
	}
	return res, nil
}

// raftErr sorts raft's errors into retryable ones and final ones.
func raftErr(err error) error {
	switch {
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShutdown
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrEnqueueTimeout),
		errors.Is(err, raft.ErrAbortedByRestore):
		return &retryError{err}
	}
	return err
}

// rpcErr maps a failed peer call: a lost connection or a not-leader answer is
// retryable (the op ID makes the retry safe), bad input is not.
func (n *Node) rpcErr(err error) error {
	var re *transport.RPCError
	if errors.As(err, &re) {
		switch re.Code {
		case codeBadInput:
			return fmt.Errorf("leader rejected request: %s", re.Msg)
		case codeNotLeader, codeShutdown:
			return &retryError{err}
		}
		return &retryError{err}
	}
	if n.closed() {
		return ErrShutdown
	}
	return &retryError{err}
}

func encodeResult(r fsm.Result) []byte {
	b := make([]byte, 0, 11)
	b = append(b, byte(r.Status))
	b = binary.AppendUvarint(b, r.Index)
	if r.Duplicate {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return b
}

func decodeResult(b []byte) (fsm.Result, error) {
	if len(b) < 3 {
		return fsm.Result{}, errors.New("short forward reply")
	}
	idx, n := binary.Uvarint(b[1:])
	if n <= 0 || len(b) != 1+n+1 {
		return fsm.Result{}, errors.New("malformed forward reply")
	}
	return fsm.Result{Status: fsm.Status(b[0]), Index: idx, Duplicate: b[1+n] == 1}, nil
}

// Barrier is the linearizable read barrier: it returns once this node has
// applied everything the leader had committed when Barrier was called.
func (n *Node) Barrier(ctx context.Context) error {
	var idx uint64
	err := n.retry(ctx, func(ctx context.Context) error {
		var err error
		idx, err = n.readIndex(ctx)
		return err
	})
	if err != nil {
		return err
	}
	return n.fsm.waitApplied(ctx, idx)
}

func (n *Node) readIndex(ctx context.Context) (uint64, error) {
	if n.closed() {
		return 0, ErrShutdown
	}
	moved := n.leaderMoved.Load().ctx
	addr, id := n.raft.LeaderWithID()
	switch {
	case id == "":
		return 0, errNoLeaderNow
	case string(id) == n.cfg.ID:
		return n.leaderReadIndex(ctx)
	}
	resp, err := n.callLeader(ctx, string(addr), rpcReadIdx, nil, moved)
	n.cfg.Metrics.forwarded(forwardReadIndex, err, ctx, moved)
	if err != nil {
		return 0, n.rpcErr(err)
	}
	idx, k := binary.Uvarint(resp)
	if k <= 0 {
		return 0, errors.New("malformed read index reply")
	}
	return idx, nil
}

// leaderReadIndex confirms leadership with a quorum and returns the commit
// index, after this term's barrier has committed (so the index covers every
// write an earlier leader acknowledged).
func (n *Node) leaderReadIndex(ctx context.Context) (uint64, error) {
	if n.raft.State() != raft.Leader {
		return 0, &retryError{ErrNotLeader}
	}
	term := n.raft.CurrentTerm()
	if n.readyTerm.Load() != term {
		if err := n.await(ctx, n.raft.Barrier(n.cfg.ApplyTimeout)); err != nil {
			return 0, raftErr(err)
		}
		if n.raft.CurrentTerm() == term {
			n.readyTerm.Store(term)
		}
	}
	if err := n.await(ctx, n.raft.VerifyLeader()); err != nil {
		return 0, raftErr(err)
	}
	return n.commandIndexAt(n.raft.CommitIndex()), nil
}

// commandIndexAt returns the index of the last command entry at or below
// commit: what a reader must have applied to see everything committed up to
// commit. Raft's own entries (a new term's no-op, barriers) never reach the
// FSM, so the applied index stops short of a commit index that ends with
// them; a reader waiting for such an index would wait for the next write.
func (n *Node) commandIndexAt(commit uint64) uint64 {
	var l raft.Log
	for i := commit; i > 0; i-- {
		if err := n.logs.GetLog(i, &l); err != nil {
			break // compacted: the rest is in a snapshot this leader's FSM has applied
		}
		if l.Type == raft.LogCommand {
			return i
		}
	}
	var idx uint64
	n.fsm.view(func(st *fsm.State, _ uint64) { idx = st.Index() })
	return idx
}

// rpcHandler serves the peer RPCs.
type rpcHandler struct{ n *Node }

func (h rpcHandler) ServeRPC(ctx context.Context, from string, method uint8, req []byte) ([]byte, error) {
	n := h.n
	if !n.serving.Load() {
		// The peer port opens before raft starts; the caller retries.
		return nil, &transport.RPCError{Code: codeNotLeader, Msg: "node starting"}
	}
	switch method {
	case rpcForward:
		if n.raft.State() != raft.Leader {
			return nil, &transport.RPCError{Code: codeNotLeader, Msg: "not leader"}
		}
		c, err := fsm.Decode(req)
		if err != nil {
			return nil, &transport.RPCError{Code: codeBadInput, Msg: err.Error()}
		}
		if ahead := time.Duration(c.At-n.cfg.Now().UnixMilli()) * time.Millisecond; ahead > MaxClockAhead {
			n.log.Warn("refused a command stamped ahead of this leader's clock", "ahead", ahead, "kind", c.Kind.String())
			return nil, &transport.RPCError{Code: codeBadInput,
				Msg: fmt.Sprintf("the proposer's clock is %v ahead of the leader's (at most %v allowed)", ahead.Round(time.Millisecond), MaxClockAhead)}
		}
		res, err := n.applyLocal(ctx, req)
		if err != nil {
			return nil, leaderRPCErr(err)
		}
		return encodeResult(res), nil
	case rpcReadIdx:
		idx, err := n.leaderReadIndex(ctx)
		if err != nil {
			return nil, leaderRPCErr(err)
		}
		return binary.AppendUvarint(nil, idx), nil
	case rpcMember:
		return nil, n.serveMember(ctx, req)
	case rpcCursor:
		return nil, n.api.serveCursor(req)
	case rpcTransfer:
		return nil, n.serveTransfer(ctx, string(req))
	}
	return nil, &transport.RPCError{Code: codeBadInput, Msg: fmt.Sprintf("unknown method %d", method)}
}

func leaderRPCErr(err error) error {
	switch {
	case errors.Is(err, ErrShutdown):
		return &transport.RPCError{Code: codeShutdown, Msg: err.Error()}
	case errors.Is(err, errRetry):
		return &transport.RPCError{Code: codeNotLeader, Msg: err.Error()}
	}
	return err
}
