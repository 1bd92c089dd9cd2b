package node_test

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
)

// recordLogs makes every node of the cluster log to rec at info level.
func recordLogs(rec *logRecorder) func(int, *node.Config) {
	return func(_ int, cfg *node.Config) { cfg.Logger = rec.logger(cfg.ID, hclog.Info) }
}

// snapshotOf records what must not change: a node's raft position and state.
type snapshotOf struct {
	st    node.Status
	index uint64
	state []byte
}

func takeSnapshot(tb testing.TB, n *node.Node) snapshotOf {
	tb.Helper()
	idx, b := writeState(tb, n)
	return snapshotOf{st: n.Status(), index: idx, state: b}
}

func (s snapshotOf) unchanged(tb testing.TB, n *node.Node) {
	tb.Helper()
	now := takeSnapshot(tb, n)
	if now.st.Term != s.st.Term || now.st.LastLogIndex != s.st.LastLogIndex || now.st.CommitIndex != s.st.CommitIndex ||
		now.st.Leader != s.st.Leader || now.st.State != s.st.State {
		tb.Fatalf("%s changed: before %+v, after %+v", n.ID(), s.st, now.st)
	}
	if now.index != s.index || !bytes.Equal(now.state, s.state) {
		tb.Fatalf("%s state changed: index %d → %d", n.ID(), s.index, now.index)
	}
}

// TestPeerPortRejectsUnauthenticatedRaft dials each node's peer port with
// hashicorp/raft's own TCP transport, which speaks raft without chorus's
// handshake, and sends AppendEntries and RequestVote from a higher term. The
// connection is closed before raft sees a byte: no node's log, term, leader
// or state changes, and each logs the failed handshake.
func TestPeerPortRejectsUnauthenticatedRaft(t *testing.T) {
	rec := newLogRecorder(t)
	c := testcluster.New(t, testcluster.Options{Configure: recordLogs(rec)})
	leader := settle(t, c, waitLong)
	ln := c.Members[leader].Node()
	before := map[string]snapshotOf{}
	for _, n := range running(c) {
		before[n.ID()] = takeSnapshot(t, n)
	}

	trans, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := trans.Close(); err != nil {
			t.Error(err)
		}
	})
	st := ln.Status()
	cmd, err := fsm.Encode(fsm.Command{Kind: fsm.KindCreate, Op: opID(9), Session: sessionID(9), Target: sessionID(9)})
	if err != nil {
		t.Fatal(err)
	}
	header := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("intruder"), Addr: []byte(trans.LocalAddr())}
	for _, m := range c.Members {
		mark := rec.mark()
		var ae raft.AppendEntriesResponse
		err := trans.AppendEntries(raft.ServerID(m.ID), raft.ServerAddress(m.PeerAddr), &raft.AppendEntriesRequest{
			RPCHeader: header, Term: st.Term + 100,
			PrevLogEntry: st.LastLogIndex, PrevLogTerm: st.Term,
			Entries:           []*raft.Log{{Index: st.LastLogIndex + 1, Term: st.Term + 100, Type: raft.LogCommand, Data: cmd}},
			LeaderCommitIndex: st.LastLogIndex + 1,
		}, &ae)
		if err == nil {
			t.Fatalf("AppendEntries without the handshake to %s succeeded: %+v", m.ID, ae)
		}
		var rv raft.RequestVoteResponse
		err = trans.RequestVote(raft.ServerID(m.ID), raft.ServerAddress(m.PeerAddr), &raft.RequestVoteRequest{
			RPCHeader: header, Term: st.Term + 200, LastLogIndex: st.LastLogIndex + 100, LastLogTerm: st.Term + 100,
		}, &rv)
		if err == nil {
			t.Fatalf("RequestVote without the handshake to %s succeeded: %+v", m.ID, rv)
		}
		testcluster.Eventually(t, waitMid, func() error {
			for _, l := range rec.since(mark) {
				if strings.Contains(l, m.ID+".peer: peer handshake failed") && strings.Contains(l, "reason=\"bad magic\"") {
					return nil
				}
			}
			return fmt.Errorf("%s logged no rejected handshake", m.ID)
		})
	}
	for _, n := range running(c) {
		before[n.ID()].unchanged(t, n)
	}
	if got, err := c.LeaderIndex(); err != nil || got != leader {
		t.Fatalf("leader %d (%v), want %d", got, err, leader)
	}
}

// TestWrongSecretCannotDisturb replaces a follower with a node that has the
// right id and address but the wrong cluster secret and an empty data dir:
// it bootstraps, campaigns and answers the leader's replication, yet no
// connection either way passes the handshake, so for several election
// timeouts the leader and the term stay put and the good nodes' raft never
// hears of it.
func TestWrongSecretCannotDisturb(t *testing.T) {
	rec := newLogRecorder(t)
	c := testcluster.New(t, testcluster.Options{Configure: recordLogs(rec)})
	leader, followers := waitFollowers(t, c)
	settle(t, c, waitLong)
	victim := c.Members[followers[0]]
	good := []int{leader, followers[1]}
	c.Kill(victim.Index)
	before := c.Members[leader].Node().Status()

	cfg := c.Config(victim.Index)
	cfg.ClusterSecret = []byte("not-the-cluster-secret")
	cfg.DataDir = t.TempDir()
	cfg.Logger = rec.logger("intruder", hclog.Info)
	mark := rec.mark()
	var intruder *node.Node
	testcluster.Eventually(t, waitMid, func() error { // the victim's port may take a moment to free up
		var err error
		intruder, err = node.New(cfg)
		return err
	})
	t.Cleanup(func() {
		if err := intruder.Close(); err != nil {
			t.Error(err)
		}
	})

	// Watch for four election timeouts, well past the intruder's first campaign.
	testcluster.Consistently(t, 4*500*time.Millisecond, func() error {
		l, err := c.LeaderIndex(good...)
		if err != nil || l != leader {
			return fmt.Errorf("leader moved to %d (%v) while the intruder ran", l, err)
		}
		for _, i := range good {
			if st := c.Members[i].Node().Status(); st.Term != before.Term {
				return fmt.Errorf("%s term %d → %d while the intruder ran", st.ID, before.Term, st.Term)
			}
		}
		if st := intruder.Status(); st.State == "leader" || st.Leader.ID != "" {
			return fmt.Errorf("intruder: %+v", st)
		}
		return nil
	})
	if st := intruder.Status(); st.State != "candidate" {
		t.Fatalf("intruder is %s, want candidate (it can reach no one)", st.State)
	}

	var refused bool
	for _, l := range rec.since(mark) {
		good := strings.Contains(l, " "+c.Members[good[0]].ID+".") || strings.Contains(l, " "+c.Members[good[1]].ID+".")
		if !good {
			continue
		}
		if strings.Contains(l, "handshake") {
			refused = true
		}
		for _, bad := range []string{"vote", "newer term", "entering follower state", "entering candidate state", "leader changed", "leader lost", "lost leadership", "became leader"} {
			if strings.Contains(l, bad) {
				t.Errorf("a good node heard from the intruder: %s", l)
			}
		}
	}
	if !refused {
		t.Fatal("no good node logged a failed handshake: did the intruder try at all?")
	}
	if got := c.Members[leader].Node().Status(); got.Term != before.Term || len(got.Members) != 3 {
		t.Fatalf("leader after the intruder: %+v", got)
	}
}
