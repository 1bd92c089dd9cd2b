package node_test

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
)

// sessionBytes returns every session's snapshot encoding on n.
func sessionBytes(n *node.Node) map[string]string {
	out := map[string]string{}
	n.View(func(st *fsm.State, _ uint64) {
		for _, id := range st.SessionIDs() {
			out[id] = string(st.Session(id).AppendSnapshot(nil))
		}
	})
	return out
}

// sessionHashes returns every session's state hash on n.
func sessionHashes(n *node.Node) map[string]string {
	out := map[string]string{}
	n.View(func(st *fsm.State, _ uint64) {
		for _, id := range st.SessionIDs() {
			out[id] = st.Session(id).Hash()
		}
	})
	return out
}

func writePeersFile(tb testing.TB, dir, content string) {
	tb.Helper()
	if err := os.WriteFile(filepath.Join(dir, node.PeersFile), []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// TestPeersFileRecovery: a three-node cluster loses two nodes for good. The
// survivor, restarted with a peers.json that names only itself, leads alone
// with every acknowledged write, and renames the file so that it is used
// once. Two fresh nodes added to it make three voters again, with the data
// on every one.
func TestPeersFileRecovery(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{FirstIP: 68})
	settle(t, c, waitLong)
	ctx := testcluster.Context(t, waitLong)
	leader := c.Members[c.WaitLeader(waitMid)].Node()
	for i := range 5 {
		createSession(t, ctx, leader, sessionID(i))
		joinPlayer(t, ctx, leader, sessionID(i), playerID(i))
		submit(t, ctx, leader, toggleStep(sessionID(i), playerID(i), i), fsm.StatusOK)
	}
	// A player whose socket was on n3.
	n3 := c.Members[2].Node()
	joinPlayer(t, ctx, n3, sessionID(0), playerID(30))
	waitSameState(t, c, waitLong)
	want := sessionHashes(c.Members[0].Node())

	// n2 and n3 are gone; n1 alone has no quorum.
	c.Kill(1)
	c.Kill(2)
	c.Kill(0)
	survivor := c.Members[0]
	writePeersFile(t, survivor.DataDir, `[{"id": "n1", "peerAddr": "`+survivor.PeerAddr+`"}]`)
	c.Start(0)
	if got := c.WaitLeader(waitLong, 0); got != 0 {
		t.Fatalf("leader %d, want n1", got)
	}
	n1 := survivor.Node()
	if _, err := os.Stat(filepath.Join(survivor.DataDir, node.PeersFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("peers.json is still there after it was applied: %v", err)
	}
	if _, err := os.Stat(filepath.Join(survivor.DataDir, node.PeersFileApplied)); err != nil {
		t.Fatalf("peers.json.applied: %v", err)
	}
	if ms := n1.Status().Members; len(ms) != 1 || ms[0].ID != "n1" || !ms[0].Voter {
		t.Fatalf("members after the recovery %+v, want n1 alone", ms)
	}
	readSession(t, ctx, n1, sessionID(0), func(*fsm.Session) {}) // a linearizable read: n1 leads and is caught up
	if got := sessionHashes(n1); !maps.Equal(got, want) {
		t.Fatalf("after the recovery n1 holds %v, want %v", got, want)
	}
	res := createSession(t, ctx, n1, sessionID(10))

	// n3's player outlived n3, but n3 is no member any more: the leader
	// drops it by itself.
	testcluster.Eventually(t, waitLong, func() error {
		var found bool
		n1.View(func(st *fsm.State, _ uint64) {
			_, found = st.Session(sessionID(0)).Player(playerID(30))
		})
		if found {
			return errors.New("n3's player is still listed after the recovery")
		}
		return nil
	})

	// Two fresh machines take the lost nodes' places.
	for _, i := range []int{1, 2} {
		c.StartEmpty(i)
		m := c.Members[i]
		if err := n1.AddMember(ctx, m.ID, m.PeerAddr, "", true); err != nil {
			t.Fatalf("add %s: %v", m.ID, err)
		}
	}
	testcluster.Eventually(t, waitLong, func() error {
		for _, n := range running(c) {
			ms := n.Status().Members
			if len(ms) != 3 || slices.ContainsFunc(ms, func(m node.Member) bool { return !m.Voter }) {
				return fmt.Errorf("%s lists %+v, want three voters", n.ID(), ms)
			}
		}
		return nil
	})
	waitSameState(t, c, waitLong)
	want[sessionID(10)] = sessionHashes(n1)[sessionID(10)]
	for _, n := range running(c) {
		if got := sessionHashes(n); !maps.Equal(got, want) {
			t.Errorf("%s holds %v, want %v", n.ID(), got, want)
		}
		if n.AppliedIndex() < res.Index {
			t.Errorf("%s applied %d, before the write at %d", n.ID(), n.AppliedIndex(), res.Index)
		}
	}
	// A restart does not apply the file again: the cluster keeps its voters.
	c.Restart(0)
	c.WaitLeader(waitLong)
	if ms := c.Members[0].Node().Status().Members; len(ms) != 3 {
		t.Fatalf("after a restart n1 lists %+v", ms)
	}
}

// TestPeersFileMalformed: a node whose peers.json does not check out refuses
// to start, says why, and leaves the file and its data as they were.
func TestPeersFileMalformed(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Nodes: 1, FirstIP: 68})
	settle(t, c, waitLong)
	ctx := testcluster.Context(t, waitLong)
	n := c.Members[0].Node()
	for i := range 3 {
		createSession(t, ctx, n, sessionID(i))
	}
	want := sessionBytes(n)
	wantIndex := n.AppliedIndex()
	c.Kill(0)
	m := c.Members[0]
	snaps, _ := filepath.Glob(filepath.Join(m.DataDir, "snapshots", "*"))
	self := `"peerAddr": "` + m.PeerAddr + `"`
	tests := []struct {
		name, content, want string
	}{
		{"not JSON", `n1=127.0.0.1:9081`, "not a JSON list"},
		{"an object", `{"id": "n1", ` + self + `}`, "not a JSON list"},
		{"empty", `[]`, "the list is empty"},
		{"unknown field", `[{"id": "n1", ` + self + `, "voter": true}]`, "unknown field"},
		{"no id", `[{` + self + `}]`, "entry 1: no id"},
		{"no address", `[{"id": "n1", ` + self + `}, {"id": "n2"}]`, "entry 2 (n2): no peerAddr"},
		{"bad address", `[{"id": "n1", ` + self + `}, {"id": "n2", "peerAddr": "10.0.0.2"}]`, `peerAddr "10.0.0.2"`},
		{"bad port", `[{"id": "n1", ` + self + `}, {"id": "n2", "peerAddr": "10.0.0.2:x"}]`, "is not host:port"},
		{"twice", `[{"id": "n1", ` + self + `}, {"id": "n1", "peerAddr": "10.0.0.2:9081"}]`, "id n1 twice"},
		{"same address", `[{"id": "n1", ` + self + `}, {"id": "n2", ` + self + `}]`, "twice"},
		{"without this node", `[{"id": "n2", "peerAddr": "10.0.0.2:9081"}]`, "this node, n1, is not in the list"},
		{"trailing data", `[{"id": "n1", ` + self + `}] x`, "data after the list"},
	}
	for _, tt := range tests {
		writePeersFile(t, m.DataDir, tt.content)
		nd, err := node.New(c.Config(0))
		if err == nil {
			nd.Close()
			t.Fatalf("%s: the node started", tt.name)
		}
		if !errors.Is(err, node.ErrBadPeersFile) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), node.PeersFile) {
			t.Errorf("%s: %v, want a bad peers.json error with %q", tt.name, err, tt.want)
		}
		if b, err := os.ReadFile(filepath.Join(m.DataDir, node.PeersFile)); err != nil || string(b) != tt.content {
			t.Fatalf("%s: peers.json changed: %v", tt.name, err)
		}
		if _, err := os.Stat(filepath.Join(m.DataDir, node.PeersFileApplied)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: a peers.json.applied exists: %v", tt.name, err)
		}
		if got, _ := filepath.Glob(filepath.Join(m.DataDir, "snapshots", "*")); !slices.Equal(got, snaps) {
			t.Fatalf("%s: the snapshots changed: %v, were %v", tt.name, got, snaps)
		}
	}
	// Without the file the node starts on the same data.
	if err := os.Remove(filepath.Join(m.DataDir, node.PeersFile)); err != nil {
		t.Fatal(err)
	}
	c.Start(0)
	c.WaitLeader(waitLong)
	n = c.Members[0].Node()
	readSession(t, ctx, n, sessionID(0), func(*fsm.Session) {})
	if n.AppliedIndex() < wantIndex {
		t.Fatalf("applied index %d after the restart, was %d", n.AppliedIndex(), wantIndex)
	}
	if got := sessionBytes(n); !maps.Equal(got, want) {
		t.Fatal("the sessions changed across the refused starts")
	}
}
