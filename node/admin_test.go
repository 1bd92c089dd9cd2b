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
