package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
)

// Generous bounds: the machine is small and shared, and -race slows
// everything down. Tests that check a bound (failover) say so themselves.
const (
	waitLong = 30 * time.Second
	waitMid  = 15 * time.Second
)

// trackID is the one track every test session starts with.
const trackID = "track-1"

// sessionState is the state a test session is created with: one 16-step track.
const sessionState = `{"tracks":[{"id":"track-1","name":"Kick","sampleId":"kick","steps":[false,false,false,false,false,false,false,false,false,false,false,false,false,false,false,false],"parameterLocks":[],"volume":1,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":16}],"tempo":120,"swing":0,"version":1}`

// sessionID returns a session id that is unique within a test.
func sessionID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

// playerID returns a player id that is unique within a test.
func playerID(i int) string { return fmt.Sprintf("10000000-0000-4000-8000-%012d", i) }

// submit submits c through n and fails the test unless it commits with status want.
func submit(tb testing.TB, ctx context.Context, n *node.Node, c fsm.Command, want fsm.Status) fsm.Result {
	tb.Helper()
	res, err := n.Submit(ctx, c)
	if err != nil {
		tb.Fatalf("submit %s (session %s) via %s: %v", c.Kind, c.Session, n.ID(), err)
	}
	if res.Status != want {
		tb.Fatalf("submit %s (session %s) via %s: status %s, want %s", c.Kind, c.Session, n.ID(), res.Status, want)
	}
	return res
}

// createSession creates session id (one track) through n.
func createSession(tb testing.TB, ctx context.Context, n *node.Node, id string) fsm.Result {
	tb.Helper()
	return submit(tb, ctx, n, fsm.Command{Kind: fsm.KindCreate, Session: id, Target: id, State: []byte(sessionState)}, fsm.StatusOK)
}

// joinPlayer joins player to session as a player of n's current incarnation.
func joinPlayer(tb testing.TB, ctx context.Context, n *node.Node, session, player string) fsm.Result {
	tb.Helper()
	return submit(tb, ctx, n, fsm.Command{Kind: fsm.KindPlayerJoin, Session: session, Player: player, Node: n.ID(), Epoch: n.Epoch()}, fsm.StatusOK)
}

func setTempo(session, player string, tempo float64) fsm.Command {
	return fsm.Command{Kind: fsm.KindSetTempo, Session: session, Player: player, Number: tempo}
}

func toggleStep(session, player string, step int) fsm.Command {
	return fsm.Command{Kind: fsm.KindToggleStep, Session: session, Player: player, TrackID: trackID, Step: step}
}

// readSession runs fn on session id after n's read barrier.
func readSession(tb testing.TB, ctx context.Context, n *node.Node, id string, fn func(s *fsm.Session)) {
	tb.Helper()
	var found bool
	err := n.Read(ctx, func(st *fsm.State, _ uint64) {
		if s := st.Session(id); s != nil {
			found = true
			fn(s)
		}
	})
	if err != nil {
		tb.Fatalf("read %s on %s: %v", id, n.ID(), err)
	}
	if !found {
		tb.Fatalf("read %s on %s: session not found", id, n.ID())
	}
}

// stepOn reports whether step i of the test track is on.
func stepOn(s *fsm.Session, i int) bool {
	t := s.State.TrackIndex(trackID)
	return t >= 0 && s.State.Tracks[t].Step(i)
}

// writeState returns n's FSM state in snapshot form and the index it reflects.
func writeState(tb testing.TB, n *node.Node) (uint64, []byte) {
	tb.Helper()
	var b bytes.Buffer
	idx, err := n.WriteState(&b)
	if err != nil {
		tb.Fatalf("write state of %s: %v", n.ID(), err)
	}
	return idx, b.Bytes()
}

// running returns the running nodes of c.
func running(c *testcluster.Cluster) []*node.Node {
	var out []*node.Node
	for _, i := range c.Running() {
		if n := c.Members[i].Node(); n != nil {
			out = append(out, n)
		}
	}
	return out
}

// waitSameState waits until every running node reflects the same index, then
// checks that they hold byte-identical state there (invariant I4). It
// returns that index. Nodes at different indexes are not compared: they are
// still applying.
func waitSameState(tb testing.TB, c *testcluster.Cluster, within time.Duration) uint64 {
	tb.Helper()
	var at uint64
	testcluster.Eventually(tb, within, func() error {
		nodes := running(c)
		idx0, b0 := writeState(tb, nodes[0])
		for _, n := range nodes[1:] {
			idx, b := writeState(tb, n)
			if idx != idx0 {
				return fmt.Errorf("%s reflects index %d, %s index %d", nodes[0].ID(), idx0, n.ID(), idx)
			}
			if !bytes.Equal(b, b0) {
				tb.Fatalf("I4: %s and %s both reflect index %d but their states differ (%d and %d bytes)", nodes[0].ID(), n.ID(), idx, len(b0), len(b))
			}
		}
		at = idx0
		return nil
	})
	return at
}

// settle waits until the running members agree on a leader, every running
// node has announced its epoch, and all of them hold the same log up to the
// same commit index: the cluster is idle.
func settle(tb testing.TB, c *testcluster.Cluster, within time.Duration) int {
	tb.Helper()
	leader := c.WaitLeader(within)
	testcluster.Eventually(tb, within, func() error {
		nodes := running(c)
		for _, n := range nodes {
			var epoch uint64
			n.View(func(st *fsm.State, _ uint64) { epoch, _ = st.NodeEpoch(n.ID()) })
			if epoch != n.Epoch() {
				return fmt.Errorf("%s: replicated epoch %d, own %d", n.ID(), epoch, n.Epoch())
			}
		}
		want := nodes[0].Status()
		for _, n := range nodes {
			st := n.Status()
			if st.LastLogIndex != want.LastLogIndex || st.CommitIndex != want.CommitIndex || st.CommitIndex != st.LastLogIndex {
				return fmt.Errorf("%s: last log %d commit %d; %s: last log %d commit %d",
					n.ID(), st.LastLogIndex, st.CommitIndex, want.ID, want.LastLogIndex, want.CommitIndex)
			}
		}
		return nil
	})
	return leader
}

// waitFollowers waits until a leader is agreed and returns it and the followers.
func waitFollowers(tb testing.TB, c *testcluster.Cluster) (leader int, followers []int) {
	tb.Helper()
	leader = c.WaitLeader(waitMid)
	for _, i := range c.Running() {
		if i != leader {
			followers = append(followers, i)
		}
	}
	return leader, followers
}

// logRecorder keeps every log line of the nodes that write to it, so tests
// can assert on what a node logged. It prints them if the test fails.
type logRecorder struct {
	mu    sync.Mutex // guards lines
	lines []string
}

func newLogRecorder(tb testing.TB) *logRecorder {
	r := &logRecorder{}
	tb.Cleanup(func() {
		if tb.Failed() {
			r.mu.Lock()
			defer r.mu.Unlock()
			tb.Logf("recorded node logs:\n%s", strings.Join(r.lines, "\n"))
		}
	})
	return r
}

func (r *logRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, strings.Split(strings.TrimRight(string(p), "\n"), "\n")...)
	return len(p), nil
}

// logger returns a logger for node id that writes to r at level.
func (r *logRecorder) logger(id string, level hclog.Level) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: id, Level: level, Output: r, TimeFormat: "15:04:05.000"})
}

// match returns the recorded lines that contain every one of subs.
func (r *logRecorder) match(subs ...string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
next:
	for _, l := range r.lines {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// mark returns the number of lines recorded so far; since returns the lines after a mark.
func (r *logRecorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.lines)
}

func (r *logRecorder) since(mark int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines[mark:]...)
}

// wantNoLeader checks that err is a *node.NoLeaderError that also matches node.ErrNoLeader.
func wantNoLeader(tb testing.TB, err error) {
	tb.Helper()
	var nle *node.NoLeaderError
	if !errors.Is(err, node.ErrNoLeader) || !errors.As(err, &nle) {
		tb.Fatalf("got %v (%T), want a *node.NoLeaderError", err, err)
	}
	if nle.RetryAfter <= 0 {
		tb.Fatalf("NoLeaderError without a retry hint: %+v", nle)
	}
}
