package node_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
)

// hasPlayer reports whether n's local state lists player in session.
func hasPlayer(n *node.Node, session, player string) bool {
	var ok bool
	n.View(func(st *fsm.State, _ uint64) {
		if s := st.Session(session); s != nil {
			_, ok = s.Player(player)
		}
	})
	return ok
}

// TestReapUnreachableNode cuts a follower off for longer than the presence
// timeout: the leader reaps its players. When the partition heals, the node
// moves to a new epoch by itself and can host players again.
func TestReapUnreachableNode(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Configure: func(_ int, cfg *node.Config) {
		cfg.PresenceTimeout = time.Second
	}})
	ctx := testcluster.Context(t, 2*time.Minute)
	leader, followers := waitFollowers(t, c)
	settle(t, c, waitLong)
	ln, x := c.Members[leader].Node(), c.Members[followers[0]].Node()
	s := sessionID(1)
	createSession(t, ctx, ln, s)
	joinPlayer(t, ctx, ln, s, playerID(1))
	joinPlayer(t, ctx, x, s, playerID(2))
	epoch := x.Epoch()

	c.Isolate(followers[0])
	testcluster.Eventually(t, waitMid, func() error {
		if hasPlayer(ln, s, playerID(2)) {
			return fmt.Errorf("the unreachable node's player is still in the session")
		}
		return nil
	})
	if !hasPlayer(ln, s, playerID(1)) {
		t.Fatal("the leader's own player was reaped")
	}
	c.Heal()
	testcluster.Eventually(t, waitMid, func() error {
		var cur uint64
		var reaped bool
		ln.View(func(st *fsm.State, _ uint64) { cur, reaped = st.NodeEpoch(x.ID()) })
		if x.Epoch() <= epoch || cur != x.Epoch() || reaped {
			return fmt.Errorf("%s: epoch %d (was %d), replicated %d reaped %v", x.ID(), x.Epoch(), epoch, cur, reaped)
		}
		return nil
	})
	joinPlayer(t, ctx, x, s, playerID(3))
	waitSameState(t, c, waitMid)
}

// TestNoReapAfterLeadershipReturns: a leader that saw a follower fail, lost
// leadership, and leads again later while that follower is healthy must not
// reap the follower's players on the strength of the old failure.
func TestNoReapAfterLeadershipReturns(t *testing.T) {
	const presence = 3 * time.Second
	rec := newLogRecorder(t)
	c := testcluster.New(t, testcluster.Options{Configure: func(_ int, cfg *node.Config) {
		cfg.PresenceTimeout = presence
		cfg.Logger = rec.logger(cfg.ID, hclog.Info)
	}})
	ctx := testcluster.Context(t, 2*time.Minute)
	l, followers := waitFollowers(t, c)
	settle(t, c, waitLong)
	b, x := followers[0], followers[1]
	ln := c.Members[l].Node()
	s := sessionID(1)
	createSession(t, ctx, ln, s)
	joinPlayer(t, ctx, c.Members[x].Node(), s, playerID(1))

	mark := rec.mark()
	c.Partition([]int{l}, []int{x})
	testcluster.Eventually(t, waitMid, func() error {
		for _, line := range rec.since(mark) {
			if strings.Contains(line, c.Members[l].ID+": peer unreachable") && strings.Contains(line, "peer_id="+c.Members[x].ID) {
				return nil
			}
		}
		return fmt.Errorf("%s has not seen %s fail yet", c.Members[l].ID, c.Members[x].ID)
	})
	if err := ln.TransferLeadership(ctx, c.Members[b].ID); err != nil {
		t.Fatalf("transfer to %s: %v", c.Members[b].ID, err)
	}
	c.WaitLeader(waitMid, l, b)
	c.Heal()
	if got := c.WaitLeader(waitMid); got != b {
		t.Fatalf("leader %s, want %s", c.Members[got].ID, c.Members[b].ID)
	}
	if !hasPlayer(ln, s, playerID(1)) {
		t.Fatal("player reaped before the presence timeout")
	}
	if err := c.Members[b].Node().TransferLeadership(ctx, c.Members[l].ID); err != nil {
		t.Fatalf("transfer back to %s: %v", c.Members[l].ID, err)
	}
	if got := c.WaitLeader(waitMid); got != l {
		t.Fatalf("leader %s, want %s", c.Members[got].ID, c.Members[l].ID)
	}
	// Watch past the presence timeout and a reap tick: x is reachable all along.
	testcluster.Consistently(t, presence+1500*time.Millisecond, func() error {
		if !hasPlayer(ln, s, playerID(1)) {
			return fmt.Errorf("%s reaped the players of %s, which it reaches fine, after it led again", c.Members[l].ID, c.Members[x].ID)
		}
		return nil
	})
}

// TestRemovedMemberPlayersDropped removes a follower that hosts a player:
// the leader drops that player, since it will never hear from the node again.
func TestRemovedMemberPlayersDropped(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{FirstIP: 231})
	ctx := testcluster.Context(t, time.Minute)
	leader, followers := waitFollowers(t, c)
	settle(t, c, waitLong)
	ln, x := c.Members[leader].Node(), c.Members[followers[0]].Node()
	s := sessionID(1)
	createSession(t, ctx, ln, s)
	joinPlayer(t, ctx, ln, s, playerID(1))
	joinPlayer(t, ctx, x, s, playerID(2))
	if err := ln.RemoveMember(ctx, x.ID()); err != nil {
		t.Fatal(err)
	}
	testcluster.Eventually(t, waitMid, func() error {
		if hasPlayer(ln, s, playerID(2)) {
			return fmt.Errorf("the removed node's player is still in the session")
		}
		return nil
	})
	if !hasPlayer(ln, s, playerID(1)) {
		t.Fatal("the leader's own player was dropped")
	}
}

// TestRemoveLeaderItself removes the leader through the leader: it hands
// leadership over first, so the removal completes promptly, the others go
// on as two, and the removed node's player is dropped.
func TestRemoveLeaderItself(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{FirstIP: 246})
	ctx := testcluster.Context(t, time.Minute)
	leader, followers := waitFollowers(t, c)
	settle(t, c, waitLong)
	ln := c.Members[leader].Node()
	s := sessionID(1)
	createSession(t, ctx, ln, s)
	joinPlayer(t, ctx, ln, s, playerID(1))
	joinPlayer(t, ctx, c.Members[followers[0]].Node(), s, playerID(2))
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := ln.RemoveMember(rctx, ln.ID()); err != nil {
		t.Fatalf("remove the leader %s through itself: %v", ln.ID(), err)
	}
	next := c.WaitLeader(waitMid, followers...)
	nn := c.Members[next].Node()
	testcluster.Eventually(t, waitMid, func() error {
		for _, f := range followers {
			if ms := c.Members[f].Node().Status().Members; len(ms) != 2 {
				return fmt.Errorf("%s lists %d members", c.Members[f].ID, len(ms))
			}
		}
		if hasPlayer(nn, s, playerID(1)) {
			return fmt.Errorf("the removed leader's player is still in the session")
		}
		return nil
	})
	if !hasPlayer(nn, s, playerID(2)) {
		t.Fatal("a remaining node's player was dropped")
	}
	submit(t, ctx, nn, setTempo(s, playerID(2), 99), fsm.StatusOK)
}
