package node_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
	"chorus/transport"
)

const adminToken = "admin-secret"

// adminClient talks to the admin routes of one node.
type adminClient struct {
	tb     testing.TB
	url    string
	client *http.Client
}

func newAdminServer(tb testing.TB, n *node.Node) *adminClient {
	tb.Helper()
	mux := http.NewServeMux()
	transport.AdminHandler(mux, transport.AdminConfig{Cluster: n, AdminToken: adminToken, Timeout: 10 * time.Second})
	srv := httptest.NewServer(mux)
	client := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	tb.Cleanup(func() {
		srv.Close()
		client.CloseIdleConnections()
	})
	return &adminClient{tb: tb, url: srv.URL, client: client}
}

// do sends a request; token "" sends no Authorization header. It returns the
// status and the body.
func (a *adminClient) do(method, path, token, body string) (int, []byte) {
	a.tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, a.url+path, rd)
	if err != nil {
		a.tb.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		a.tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		a.tb.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, b
}

func (a *adminClient) want(method, path, token, body string, status int) []byte {
	a.tb.Helper()
	got, b := a.do(method, path, token, body)
	if got != status {
		a.tb.Fatalf("%s %s: HTTP %d (%s), want %d", method, path, got, strings.TrimSpace(string(b)), status)
	}
	return b
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// checkStatusShape checks that a /cluster/status body has exactly the keys of
// DESIGN.md §7, and returns it decoded.
func checkStatusShape(tb testing.TB, body []byte) node.Status {
	tb.Helper()
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		tb.Fatalf("status is not a JSON object: %v: %s", err, body)
	}
	want := []string{"appliedIndex", "commitIndex", "id", "lastLogIndex", "leader", "members", "state", "term"}
	if got := keys(raw); !slices.Equal(got, want) {
		tb.Fatalf("status keys %v, want %v", got, want)
	}
	leader, ok := raw["leader"].(map[string]any)
	if !ok || !slices.Equal(keys(leader), []string{"httpAddr", "id"}) {
		tb.Fatalf("status leader %v, want an object with id and httpAddr", raw["leader"])
	}
	members, ok := raw["members"].([]any)
	if !ok || len(members) == 0 {
		tb.Fatalf("status members %v, want a non-empty list", raw["members"])
	}
	for _, m := range members {
		mm, ok := m.(map[string]any)
		if !ok || !slices.Equal(keys(mm), []string{"httpAddr", "id", "peerAddr", "voter"}) {
			tb.Fatalf("status member %v, want an object with id, peerAddr, httpAddr, voter", m)
		}
	}
	var st node.Status
	if err := json.Unmarshal(body, &st); err != nil {
		tb.Fatal(err)
	}
	return st
}

// TestAdminHTTP serves the admin routes of a follower over real HTTP.
func TestAdminHTTP(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	leader, followers := waitFollowers(t, c)
	settle(t, c, waitLong)
	f := c.Members[followers[0]]
	a := newAdminServer(t, f.Node())

	st := checkStatusShape(t, a.want("GET", "/cluster/status", "", "", http.StatusOK))
	if st.ID != f.ID || st.State != "follower" || st.Leader.ID != c.Members[leader].ID || st.Leader.HTTPAddr != "http-"+st.Leader.ID ||
		st.Term == 0 || st.AppliedIndex == 0 || st.CommitIndex < st.AppliedIndex || st.LastLogIndex < st.CommitIndex {
		t.Fatalf("status of %s: %+v", f.ID, st)
	}
	if err := checkMembers(c, f.Node()); err != nil {
		t.Fatal(err)
	}
	a.want("GET", "/healthz", "", "", http.StatusOK)
	a.want("GET", "/readyz", "", "", http.StatusOK)

	// Membership routes need the token: 401 without, 403 wrong, 200 right.
	add := `{"id":"n4","peerAddr":"127.0.0.1:1","httpAddr":"http-n4","voter":false}`
	a.want("POST", "/cluster/members", "", add, http.StatusUnauthorized)
	a.want("POST", "/cluster/members", "wrong-token", add, http.StatusForbidden)
	a.want("DELETE", "/cluster/members/n4", "", "", http.StatusUnauthorized)
	a.want("POST", "/cluster/leadership-transfer", "wrong-token", `{}`, http.StatusForbidden)
	if got := len(f.Node().Status().Members); got != 3 {
		t.Fatalf("unauthorised requests changed the membership: %d members", got)
	}
	a.want("POST", "/cluster/members", adminToken, `{"id":"n4"}`, http.StatusBadRequest)

	// Go's profiles, behind the token.
	a.want("GET", "/debug/pprof/heap", "", "", http.StatusUnauthorized)
	a.want("GET", "/debug/pprof/goroutine", "wrong-token", "", http.StatusForbidden)
	if b := a.want("GET", "/debug/pprof/goroutine?debug=1", adminToken, "", http.StatusOK); !bytes.Contains(b, []byte("goroutine profile:")) {
		t.Fatalf("GET /debug/pprof/goroutine?debug=1: %.200s", b)
	}

	// The node's state in the snapshot format, behind the token; the two
	// followers' bytes agree once both have applied the same index (I4).
	a.want("GET", "/cluster/state", "", "", http.StatusUnauthorized)
	a.want("GET", "/cluster/state", "wrong-token", "", http.StatusForbidden)
	other := newAdminServer(t, c.Members[followers[1]].Node())
	testcluster.Eventually(t, waitMid, func() error {
		x, y := a.want("GET", "/cluster/state", adminToken, "", http.StatusOK), other.want("GET", "/cluster/state", adminToken, "", http.StatusOK)
		sx, err := fsm.ReadSnapshot(bytes.NewReader(x))
		if err != nil {
			t.Fatalf("GET /cluster/state: %v", err)
		}
		if sx.Index() < st.AppliedIndex {
			t.Fatalf("GET /cluster/state is at index %d, before the applied index %d the status reported", sx.Index(), st.AppliedIndex)
		}
		if !bytes.Equal(x, y) {
			return fmt.Errorf("the followers' states differ (%d and %d bytes)", len(x), len(y))
		}
		return nil
	})
	// The follower forwards to the leader; n4 joins as a non-voter (its
	// address is dead, which costs the quorum nothing).
	st = checkStatusShape(t, a.want("POST", "/cluster/members", adminToken, add, http.StatusOK))
	testcluster.Eventually(t, waitMid, func() error {
		for _, n := range running(c) {
			ms := n.Status().Members
			i := slices.IndexFunc(ms, func(m node.Member) bool { return m.ID == "n4" })
			if len(ms) != 4 || i < 0 || ms[i].Voter || ms[i].PeerAddr != "127.0.0.1:1" {
				return fmt.Errorf("%s lists %+v, want n4 as a non-voter", n.ID(), ms)
			}
		}
		return nil
	})
	checkStatusShape(t, a.want("DELETE", "/cluster/members/n4", adminToken, "", http.StatusOK))
	testcluster.Eventually(t, waitMid, func() error {
		for _, n := range running(c) {
			if err := checkMembers(c, n); err != nil {
				return err
			}
		}
		return nil
	})
	a.want("POST", "/cluster/leadership-transfer", adminToken, `{"id":"n9"}`, http.StatusBadRequest)
	a.want("POST", "/cluster/leadership-transfer", adminToken, `{"id":"`+f.ID+`"}`, http.StatusOK)
	if got := c.WaitLeader(waitMid); got != f.Index {
		t.Fatalf("leader %s after transfer to %s", c.Members[got].ID, f.ID)
	}

	// Cut another follower off: once it has lost the leader it is not ready.
	cut := c.Members[followers[1]]
	b := newAdminServer(t, cut.Node())
	b.want("GET", "/readyz", "", "", http.StatusOK)
	c.Isolate(cut.Index)
	testcluster.Eventually(t, waitMid, func() error {
		if code, body := b.do("GET", "/readyz", "", ""); code != http.StatusServiceUnavailable {
			return fmt.Errorf("isolated node's /readyz: HTTP %d %s", code, body)
		}
		return nil
	})
	b.want("GET", "/healthz", "", "", http.StatusOK)
	if st := checkStatusShape(t, b.want("GET", "/cluster/status", "", "", http.StatusOK)); st.Leader.ID != "" || st.Leader.HTTPAddr != "" {
		t.Fatalf("isolated node reports leader %+v", st.Leader)
	}
	c.Heal()
	testcluster.Eventually(t, waitMid, func() error {
		if code, body := b.do("GET", "/readyz", "", ""); code != http.StatusOK {
			return fmt.Errorf("healed node's /readyz: HTTP %d %s", code, body)
		}
		return nil
	})
}

// snapshotReport is the body of a successful POST /cluster/snapshot.
type snapshotReport struct {
	Index      uint64  `json:"index"`
	Term       uint64  `json:"term"`
	PauseMs    float64 `json:"pauseMs"`
	PersistMs  float64 `json:"persistMs"`
	Bytes      int64   `json:"bytes"`
	MaxPauseMs float64 `json:"maxPauseMs"`
}

// snapshot takes a snapshot through the route, checks the body has exactly
// the keys of DESIGN.md §7 and plausible figures, and returns it decoded.
func (a *adminClient) snapshot() snapshotReport {
	a.tb.Helper()
	body := a.want("POST", "/cluster/snapshot", adminToken, "", http.StatusOK)
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		a.tb.Fatalf("snapshot answer is not a JSON object: %v: %s", err, body)
	}
	if got, want := keys(raw), []string{"bytes", "index", "maxPauseMs", "pauseMs", "persistMs", "term"}; !slices.Equal(got, want) {
		a.tb.Fatalf("snapshot answer keys %v, want %v", got, want)
	}
	var rep snapshotReport
	if err := json.Unmarshal(body, &rep); err != nil {
		a.tb.Fatalf("snapshot answer %s: %v", body, err)
	}
	if rep.Index == 0 || rep.Term == 0 || rep.Bytes <= 0 || rep.PauseMs < 0 || rep.PersistMs <= 0 || rep.MaxPauseMs < rep.PauseMs {
		a.tb.Fatalf("snapshot answer %+v: want index, term and bytes > 0, pauseMs ≥ 0, persistMs > 0, maxPauseMs ≥ pauseMs", rep)
	}
	return rep
}

// wantConflict expects 409 from POST /cluster/snapshot with a JSON error.
func (a *adminClient) wantConflict() {
	a.tb.Helper()
	body := a.want("POST", "/cluster/snapshot", adminToken, "", http.StatusConflict)
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || !strings.Contains(e.Error, "nothing new to snapshot") {
		a.tb.Fatalf("409 body %s (%v), want a JSON error saying there is nothing new to snapshot", body, err)
	}
}

// TestAdminSnapshot snapshots a follower through POST /cluster/snapshot. The
// route needs the token, snapshots the node it is sent to (not the leader),
// reports that snapshot's index, size and cost, and answers 409 while the
// node has applied nothing since its last snapshot.
func TestAdminSnapshot(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{})
	ctx := testcluster.Context(t, 2*time.Minute)
	leader, followers := waitFollowers(t, c)
	settle(t, c, waitLong)
	ln, f := c.Members[leader].Node(), c.Members[followers[0]].Node()
	a := newAdminServer(t, f)

	a.want("POST", "/cluster/snapshot", "", "", http.StatusUnauthorized)
	a.want("POST", "/cluster/snapshot", "wrong-token", "", http.StatusForbidden)
	a.want("GET", "/cluster/snapshot", adminToken, "", http.StatusMethodNotAllowed)
	if last, longest := f.SnapshotPauses(); last != 0 || longest != 0 {
		t.Fatalf("refused requests took a snapshot: pauses %v, %v", last, longest)
	}

	var last uint64
	for i := range 20 {
		last = createSession(t, ctx, ln, sessionID(i)).Index
	}
	c.WaitApplied(waitMid, last)
	idx0, st0 := writeState(t, f)
	rep := a.snapshot()
	t.Logf("snapshot of %s: %+v", f.ID(), rep)
	fs := f.Status()
	if rep.Index < last || rep.Index > fs.CommitIndex || rep.Term > fs.Term {
		t.Fatalf("snapshot of %s at index %d term %d: want index in [%d, %d] (last write, commit index) and term ≤ %d", f.ID(), rep.Index, rep.Term, last, fs.CommitIndex, fs.Term)
	}
	// The cluster is idle, so the snapshot holds exactly the state as it
	// stands, which WriteState writes in the same format.
	if idx1, st1 := writeState(t, f); idx1 == idx0 && bytes.Equal(st1, st0) && rep.Bytes != int64(len(st1)) {
		t.Fatalf("snapshot wrote %d bytes; the state at index %d is %d bytes", rep.Bytes, idx1, len(st1))
	}
	lastPause, longest := f.SnapshotPauses()
	if ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }; ms(lastPause) != rep.PauseMs || ms(longest) != rep.MaxPauseMs {
		t.Fatalf("SnapshotPauses %v, %v; the answer said %vms, %vms", lastPause, longest, rep.PauseMs, rep.MaxPauseMs)
	}

	// Nothing applied since: 409, however often.
	a.wantConflict()
	a.wantConflict()

	// Not forwarded: the leader has taken no snapshot yet, so it can.
	la := newAdminServer(t, ln)
	if lr := la.snapshot(); lr.Index < last {
		t.Fatalf("leader snapshot at index %d, before the last write %d", lr.Index, last)
	}
	la.wantConflict()

	// A write gives the follower something new to snapshot.
	next := createSession(t, ctx, ln, sessionID(100)).Index
	c.WaitApplied(waitMid, next)
	rep2 := a.snapshot()
	if rep2.Index < next || rep2.Index <= rep.Index {
		t.Fatalf("second snapshot at index %d, want ≥ %d (the new write) and > %d (the first)", rep2.Index, next, rep.Index)
	}
	if rep2.MaxPauseMs < max(rep.PauseMs, rep2.PauseMs) || rep2.MaxPauseMs < rep.MaxPauseMs {
		t.Fatalf("maxPauseMs %v after pauses of %vms and %vms (and a max of %vms)", rep2.MaxPauseMs, rep.PauseMs, rep2.PauseMs, rep.MaxPauseMs)
	}
}
