package node_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
)

// checkMembers checks that n lists exactly the members of c, all voters,
// with the peer addresses the cluster gave them and the HTTP addresses they
// announced.
func checkMembers(c *testcluster.Cluster, n *node.Node) error {
	st := n.Status()
	if len(st.Members) != len(c.Members) {
		return fmt.Errorf("%s lists %d members, want %d: %+v", n.ID(), len(st.Members), len(c.Members), st.Members)
	}
	want := map[string]string{}
	for _, m := range c.Members {
		want[m.ID] = m.PeerAddr
	}
	for _, m := range st.Members {
		switch {
		case want[m.ID] == "":
			return fmt.Errorf("%s lists unknown member %+v", n.ID(), m)
		case m.PeerAddr != want[m.ID]:
			return fmt.Errorf("%s lists %s at %s, want %s", n.ID(), m.ID, m.PeerAddr, want[m.ID])
		case !m.Voter:
			return fmt.Errorf("%s lists %s as a non-voter", n.ID(), m.ID)
		case m.HTTPAddr != "http-"+m.ID:
			return fmt.Errorf("%s lists %s with HTTP address %q", n.ID(), m.ID, m.HTTPAddr)
		}
		delete(want, m.ID)
	}
	return nil
}

// TestBootstrap starts three nodes with the same Peers: they elect a leader
// and every node lists the three voters. Restarting all of them with the
// same Peers bootstraps nothing new: the same cluster comes back and its log
// continues.
func TestBootstrap(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, 2*time.Minute)
	leader := settle(t, c, waitLong)
	testcluster.Eventually(t, waitMid, func() error {
		for _, n := range running(c) {
			if err := checkMembers(c, n); err != nil {
				return err
			}
			if st := n.Status(); st.Leader.ID != c.Members[leader].ID || st.Leader.HTTPAddr != "http-"+c.Members[leader].ID {
				return fmt.Errorf("%s reports leader %+v, want %s", n.ID(), st.Leader, c.Members[leader].ID)
			}
		}
		return nil
	})
	first := createSession(t, ctx, c.Members[leader].Node(), sessionID(1))
	before := c.Members[leader].Node().Status()

	for i := range c.Members {
		c.Kill(i)
	}
	for i := range c.Members {
		c.Start(i)
	}
	settle(t, c, waitLong)
	testcluster.Eventually(t, waitMid, func() error {
		for _, n := range running(c) {
			if err := checkMembers(c, n); err != nil {
				return err
			}
		}
		return nil
	})
	for _, n := range running(c) {
		st := n.Status()
		if st.Term < before.Term || st.LastLogIndex <= before.LastLogIndex {
			t.Errorf("%s after restart: term %d, last log %d; before: term %d, last log %d (a second bootstrap would restart the log)",
				n.ID(), st.Term, st.LastLogIndex, before.Term, before.LastLogIndex)
		}
		readSession(t, ctx, n, sessionID(1), func(*fsm.Session) {})
	}
	next := createSession(t, ctx, running(c)[0], sessionID(2))
	if next.Index <= first.Index || next.Index <= before.LastLogIndex {
		t.Fatalf("write after restart at index %d; before restart: write at %d, last log %d", next.Index, first.Index, before.LastLogIndex)
	}
}

// TestWritesThroughEveryNode creates sessions and applies mutations through
// every member; each node ends with byte-identical state (I4).
func TestWritesThroughEveryNode(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, 2*time.Minute)
	nodes := running(c)
	var last uint64
	track := func(r fsm.Result) {
		if r.Duplicate {
			t.Fatalf("fresh op reported as duplicate: %+v", r)
		}
		last = max(last, r.Index)
	}
	for i, n := range nodes {
		track(createSession(t, ctx, n, sessionID(i)))
		track(joinPlayer(t, ctx, n, sessionID(i), playerID(i)))
	}
	for round := 0; round < 4; round++ {
		for i := range nodes {
			via := nodes[(i+round)%len(nodes)]
			s, p := sessionID(i), playerID(i)
			track(submit(t, ctx, via, setTempo(s, p, float64(100+10*i+round)), fsm.StatusOK))
			track(submit(t, ctx, via, toggleStep(s, p, round), fsm.StatusOK))
			track(submit(t, ctx, via, fsm.Command{Kind: fsm.KindSetSwing, Session: s, Player: p, Number: float64(round * 10)}, fsm.StatusOK))
			track(submit(t, ctx, via, fsm.Command{Kind: fsm.KindMuteTrack, Session: s, Player: p, TrackID: trackID, Flag: round%2 == 0}, fsm.StatusOK))
		}
	}
	// A mutation from a player who never joined is a status, not an error.
	submit(t, ctx, nodes[0], setTempo(sessionID(0), playerID(99), 90), fsm.StatusNotJoined)

	c.WaitApplied(waitMid, last)
	waitSameState(t, c, waitMid)
	for _, n := range nodes {
		for i := range nodes {
			readSession(t, ctx, n, sessionID(i), func(s *fsm.Session) {
				if s.State.Tempo != float64(100+10*i+3) || s.State.Swing != 30 || !stepOn(s, 0) || !stepOn(s, 3) {
					t.Errorf("%s reads %s: tempo %v swing %v steps 0,3 %v,%v", n.ID(), s.ID, s.State.Tempo, s.State.Swing, stepOn(s, 0), stepOn(s, 3))
				}
			})
		}
	}
}

// TestFullRestartKeepsAcknowledgedWrites kills all three nodes after N
// acknowledged writes and starts them again: every write is still there (I5),
// and the players the old incarnations owned are gone.
func TestFullRestartKeepsAcknowledgedWrites(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, 2*time.Minute)
	nodes := running(c)
	const sessions = 12
	type want struct {
		tempo   float64
		step    int
		lastSeq uint64
	}
	wants := map[string]want{}
	for i := 0; i < sessions; i++ {
		n := nodes[i%len(nodes)]
		s, p := sessionID(i), playerID(i)
		createSession(t, ctx, n, s)
		joinPlayer(t, ctx, n, s, p)
		submit(t, ctx, nodes[(i+1)%len(nodes)], setTempo(s, p, float64(61+i)), fsm.StatusOK)
		r := submit(t, ctx, nodes[(i+2)%len(nodes)], toggleStep(s, p, i), fsm.StatusOK)
		wants[s] = want{tempo: float64(61 + i), step: i, lastSeq: r.Index}
	}

	for i := range c.Members {
		c.Kill(i)
	}
	for i := range c.Members {
		c.Start(i)
	}
	c.WaitLeader(waitLong)
	for _, n := range running(c) {
		for id, w := range wants {
			readSession(t, ctx, n, id, func(s *fsm.Session) {
				if s.State.Tempo != w.tempo || !stepOn(s, w.step) || s.LastSeq != w.lastSeq {
					t.Errorf("%s lost a write to %s after the restart: tempo %v (want %v), step %d on %v, lastSeq %d (want %d)",
						n.ID(), id, s.State.Tempo, w.tempo, w.step, stepOn(s, w.step), s.LastSeq, w.lastSeq)
				}
			})
		}
	}
	// Each node's new epoch drops the players its earlier incarnation owned.
	testcluster.Eventually(t, waitMid, func() error {
		for _, n := range running(c) {
			var err error
			n.View(func(st *fsm.State, _ uint64) {
				for id := range wants {
					if ps := st.Session(id).Players(); len(ps) > 0 {
						err = fmt.Errorf("%s still lists %d players in %s", n.ID(), len(ps), id)
					}
				}
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	waitSameState(t, c, waitMid)
}

// TestSeqNeverRegresses checks I1: a subscriber sees strictly increasing
// indexes, each mutation's seq is its index and its prevSeq the one before,
// across a leadership transfer; and after a full restart no node, once
// ready, has applied less than before, and new writes get higher indexes.
func TestSeqNeverRegresses(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, 2*time.Minute)
	leader, followers := waitFollowers(t, c)
	s, p := sessionID(1), playerID(1)
	via := c.Members[followers[0]].Node()
	createSession(t, ctx, via, s)
	joinPlayer(t, ctx, via, s, p)

	sub, err := via.Subscribe(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for i := 0; i < 30; i++ {
		if i == 15 {
			if err := via.TransferLeadership(ctx, c.Members[followers[1]].ID); err != nil {
				t.Fatalf("transfer leadership: %v", err)
			}
		}
		r := submit(t, ctx, c.Members[[]int{leader, followers[0], followers[1]}[i%3]].Node(), toggleStep(s, p, i), fsm.StatusOK)
		last = r.Index
	}
	c.WaitApplied(waitMid, last)
	sub.Close()
	var prev uint64
	var got int
	for d := range deliveries(sub) {
		if d.Index <= prev {
			t.Fatalf("delivery index %d after %d", d.Index, prev)
		}
		if d.Event.Type.IsMutation() {
			if d.Event.Seq != d.Index || (got > 0 && d.Event.PrevSeq != prev) {
				t.Fatalf("mutation at index %d has seq %d, prevSeq %d (previous delivery %d)", d.Index, d.Event.Seq, d.Event.PrevSeq, prev)
			}
			got++
		}
		prev = d.Index
	}
	if got != 30 || prev != last {
		t.Fatalf("subscriber got %d mutations up to index %d, want 30 up to %d", got, prev, last)
	}

	applied := map[string]uint64{}
	for _, n := range running(c) {
		applied[n.ID()] = n.AppliedIndex()
	}
	for i := range c.Members {
		c.Kill(i)
	}
	for i := range c.Members {
		c.Start(i)
	}
	testcluster.Eventually(t, waitLong, func() error {
		for _, n := range running(c) {
			if !n.Ready() {
				return fmt.Errorf("%s not ready", n.ID())
			}
		}
		return nil
	})
	for _, n := range running(c) {
		if got := n.AppliedIndex(); got < applied[n.ID()] {
			t.Errorf("%s is ready at applied index %d, below %d before the restart", n.ID(), got, applied[n.ID()])
		}
		var seq uint64
		n.View(func(st *fsm.State, _ uint64) { seq = st.Session(s).LastSeq })
		if seq != last {
			t.Errorf("%s: session seq %d after restart, want %d", n.ID(), seq, last)
		}
	}
	n := running(c)[0]
	joinPlayer(t, ctx, n, s, playerID(2))
	if r := submit(t, ctx, n, toggleStep(s, playerID(2), 0), fsm.StatusOK); r.Index <= last {
		t.Fatalf("write after restart got index %d <= %d", r.Index, last)
	}
}

// TestMembership removes a follower, keeps writing with two voters, adds the
// member back on an empty data dir through a follower (forwarded to the
// leader), and moves leadership to a named member.
func TestMembership(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, 2*time.Minute)
	leader, followers := waitFollowers(t, c)
	// Every node announces its epoch (and HTTP address) before it hosts a
	// player; see TestJoinBeforeEpochAnnouncementKeepsHTTPAddr.
	settle(t, c, waitLong)
	victim, other := followers[0], followers[1]
	victimID := c.Members[victim].ID
	s := sessionID(1)
	createSession(t, ctx, c.Members[leader].Node(), s)
	joinPlayer(t, ctx, c.Members[leader].Node(), s, playerID(1))
	// A player of the victim's incarnation: the empty incarnation that
	// replaces it must drop it (DESIGN.md §3).
	joinPlayer(t, ctx, c.Members[victim].Node(), s, playerID(2))

	if err := c.Members[leader].Node().ChangeMember(ctx, node.MemberChange{Remove: true, ID: victimID}); err != nil {
		t.Fatalf("remove %s: %v", victimID, err)
	}
	testcluster.Eventually(t, waitMid, func() error {
		for _, i := range []int{leader, other} {
			if st := c.Members[i].Node().Status(); len(st.Members) != 2 {
				return fmt.Errorf("%s lists %d members: %+v", st.ID, len(st.Members), st.Members)
			}
		}
		return nil
	})
	c.Kill(victim)
	var last uint64
	for i, via := range []int{leader, other, leader, other} {
		last = submit(t, ctx, c.Members[via].Node(), setTempo(s, playerID(1), float64(70+i)), fsm.StatusOK).Index
	}

	c.StartEmpty(victim)
	if st := c.Members[victim].Node().Status(); len(st.Members) != 0 || st.LastLogIndex != 0 {
		t.Fatalf("empty node bootstrapped: %+v", st)
	}
	err := c.Members[other].Node().ChangeMember(ctx, node.MemberChange{
		ID: victimID, PeerAddr: c.Members[victim].PeerAddr, HTTPAddr: "http-" + victimID, Voter: true,
	})
	if err != nil {
		t.Fatalf("add %s through follower %s: %v", victimID, c.Members[other].ID, err)
	}
	testcluster.Eventually(t, waitLong, func() error {
		for _, n := range running(c) {
			if err := checkMembers(c, n); err != nil {
				return err
			}
		}
		return nil
	})
	c.WaitApplied(waitLong, last)
	readSession(t, ctx, c.Members[victim].Node(), s, func(s *fsm.Session) {
		if s.State.Tempo != 73 {
			t.Errorf("rejoined member reads tempo %v, want 73", s.State.Tempo)
		}
	})
	// The new incarnation can host players, and the old one's are gone.
	joinPlayer(t, ctx, c.Members[victim].Node(), s, playerID(3))
	testcluster.Eventually(t, waitMid, func() error {
		var err error
		c.Members[leader].Node().View(func(st *fsm.State, _ uint64) {
			if _, ok := st.Session(s).Player(playerID(2)); ok {
				err = errors.New("the removed incarnation's player is still in the session")
			}
		})
		return err
	})

	// Leadership to a named member, asked through a node that does not lead.
	if err := c.Members[other].Node().TransferLeadership(ctx, victimID); err != nil {
		t.Fatalf("transfer leadership to %s: %v", victimID, err)
	}
	if got := c.WaitLeader(waitMid); got != victim {
		t.Fatalf("leader is %s after transfer to %s", c.Members[got].ID, victimID)
	}
	submit(t, ctx, c.Members[other].Node(), setTempo(s, playerID(1), 99), fsm.StatusOK)
	if err := c.Members[leader].Node().TransferLeadership(ctx, "n9"); !errors.Is(err, node.ErrBadRequest) {
		t.Fatalf("transfer to an unknown member: %v, want ErrBadRequest", err)
	}
	waitSameState(t, c, waitMid)
}

// TestJoinBeforeEpochAnnouncementKeepsHTTPAddr: a node restarts with a new
// HTTP address, and a player joins for its new incarnation before the
// node's own node_epoch announcement commits (the join implies the epoch).
// The announcement then still has to publish the new address.
func TestJoinBeforeEpochAnnouncementKeepsHTTPAddr(t *testing.T) {
	var mu sync.Mutex // guards starts
	starts := map[int]int{}
	c := testcluster.New(t, testcluster.Options{Configure: func(i int, cfg *node.Config) {
		mu.Lock()
		defer mu.Unlock()
		starts[i]++
		if starts[i] > 1 {
			cfg.HTTPAddr = fmt.Sprintf("http-%s-%d", cfg.ID, starts[i])
		}
	}})
	ctx := testcluster.Context(t, time.Minute)
	leader, followers := waitFollowers(t, c)
	settle(t, c, waitLong)
	x := c.Members[followers[0]]
	s := sessionID(1)
	createSession(t, ctx, c.Members[leader].Node(), s)

	c.Kill(x.Index)
	c.Isolate(x.Index) // its announcement cannot commit yet
	c.Start(x.Index)
	submit(t, ctx, c.Members[leader].Node(), fsm.Command{Kind: fsm.KindPlayerJoin, Session: s, Player: playerID(1), Node: x.ID, Epoch: x.Node().Epoch()}, fsm.StatusOK)
	c.Heal()
	settle(t, c, waitLong)
	testcluster.Eventually(t, waitMid, func() error {
		for _, n := range running(c) {
			for _, m := range n.Status().Members {
				if m.ID == x.ID && m.HTTPAddr != "http-"+x.ID+"-2" {
					return fmt.Errorf("%s lists %s at HTTP address %q, want %q", n.ID(), x.ID, m.HTTPAddr, "http-"+x.ID+"-2")
				}
			}
		}
		return nil
	})
}
