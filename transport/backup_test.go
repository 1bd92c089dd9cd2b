package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// restoreCluster is a Cluster whose backup and restore routes record what
// they get; the other methods are not called by these tests.
type restoreCluster struct {
	Cluster
	leaderAddr string // set: this node does not lead; the leader is there
	backup     []byte

	mu       sync.Mutex // guards restored, forced, calls
	restored []byte
	forced   bool
	calls    int
}

type elsewhere struct{ addr string }

func (e *elsewhere) Error() string          { return "not the leader" }
func (e *elsewhere) Is(target error) bool   { return target == ErrLeaderElsewhere }
func (e *elsewhere) LeaderHTTPAddr() string { return e.addr }

func (c *restoreCluster) ClusterBackup(context.Context) (Backup, error) {
	if c.leaderAddr != "" {
		return Backup{}, &elsewhere{c.leaderAddr}
	}
	return Backup{Name: "b.backup", Size: int64(len(c.backup)), Body: io.NopCloser(bytes.NewReader(c.backup))}, nil
}

func (c *restoreCluster) ClusterRestore(_ context.Context, body io.Reader, force bool) (any, error) {
	c.mu.Lock()
	c.calls++
	c.mu.Unlock()
	if c.leaderAddr != "" {
		return nil, &elsewhere{c.leaderAddr}
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return nil, err
	}
	if bytes.HasPrefix(b, []byte("bad")) {
		return nil, errors.Join(ErrBadRequest, errors.New("checksum mismatch"))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.restored, c.forced = b, force
	return map[string]int{"bytes": len(b)}, nil
}

func (c *restoreCluster) restores() ([]byte, bool, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restored, c.forced, c.calls
}

// adminServer serves the admin routes of cfg on 127.0.0.62.
func adminServer(tb testing.TB, cfg AdminConfig) *httptest.Server {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.62:0")
	if err != nil {
		tb.Fatal(err)
	}
	mux := http.NewServeMux()
	AdminHandler(mux, cfg)
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = ln
	srv.Start()
	tb.Cleanup(srv.Close)
	return srv
}

func adminDo(tb testing.TB, method, url, token string, body io.Reader) (*http.Response, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		tb.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp, b
}

// TestBackupRoutes: the backup and restore routes take the admin token,
// stream the file both ways, redirect to the leader, and turn a bad force
// value and a bad backup into 400.
func TestBackupRoutes(t *testing.T) {
	const token = "t0ken"
	backup := bytes.Repeat([]byte("backup bytes "), 10000)
	c := &restoreCluster{backup: backup}
	srv := adminServer(t, AdminConfig{Cluster: c, AdminToken: token})

	for _, route := range []struct{ method, path string }{{"GET", "/cluster/backup"}, {"POST", "/cluster/restore"}} {
		if resp, _ := adminDo(t, route.method, srv.URL+route.path, "", strings.NewReader("x")); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s %s without a token: HTTP %d, want 401", route.method, route.path, resp.StatusCode)
		}
		if resp, _ := adminDo(t, route.method, srv.URL+route.path, "wrong", strings.NewReader("x")); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s %s with a wrong token: HTTP %d, want 403", route.method, route.path, resp.StatusCode)
		}
	}
	if _, _, calls := c.restores(); calls != 0 {
		t.Fatalf("the cluster got %d restores without a valid token", calls)
	}

	resp, b := adminDo(t, "GET", srv.URL+"/cluster/backup", token, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, backup) || resp.Header.Get("Content-Length") != strconv.Itoa(len(backup)) ||
		!strings.Contains(resp.Header.Get("Content-Disposition"), "b.backup") {
		t.Fatalf("backup: HTTP %d, %d bytes, headers %v", resp.StatusCode, len(b), resp.Header)
	}

	resp, b = adminDo(t, "POST", srv.URL+"/cluster/restore?force=true", token, bytes.NewReader(backup))
	got, forced, _ := c.restores()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, backup) || !forced {
		t.Fatalf("restore: HTTP %d %s; the cluster got %d bytes, force %v", resp.StatusCode, b, len(got), forced)
	}
	resp, b = adminDo(t, "POST", srv.URL+"/cluster/restore", token, strings.NewReader("bad backup"))
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "checksum mismatch") {
		t.Errorf("a bad backup: HTTP %d %s, want 400 with the reason", resp.StatusCode, b)
	}
	resp, b = adminDo(t, "POST", srv.URL+"/cluster/restore?force=maybe", token, strings.NewReader("x"))
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "force") {
		t.Errorf("force=maybe: HTTP %d %s, want 400", resp.StatusCode, b)
	}

	// Another node redirects both routes to the leader, path and query kept;
	// without a known leader address it answers 503.
	follower := &restoreCluster{leaderAddr: "127.0.0.63:8081"}
	fsrv := adminServer(t, AdminConfig{Cluster: follower, AdminToken: token})
	for _, route := range []struct{ method, path string }{{"GET", "/cluster/backup"}, {"POST", "/cluster/restore?force=1"}} {
		resp, b := adminDo(t, route.method, fsrv.URL+route.path, token, strings.NewReader("x"))
		if want := "http://127.0.0.63:8081" + route.path; resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("Location") != want {
			t.Errorf("%s %s on a follower: HTTP %d Location %q (%s), want 307 to %s", route.method, route.path, resp.StatusCode, resp.Header.Get("Location"), b, want)
		}
	}
	lsrv := adminServer(t, AdminConfig{Cluster: &noLeaderCluster{}, AdminToken: token})
	if resp, b := adminDo(t, "GET", lsrv.URL+"/cluster/backup", token, nil); resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("backup without a leader: HTTP %d %s, want 503 with Retry-After", resp.StatusCode, b)
	}
}

// refusingCluster refuses every restore without reading the body, as a
// node that holds sessions does.
type refusingCluster struct{ Cluster }

func (refusingCluster) ClusterRestore(context.Context, io.Reader, bool) (any, error) {
	return nil, errors.Join(ErrConflict, errors.New("the cluster holds 3 sessions"))
}

// noLeaderCluster knows no leader.
type noLeaderCluster struct{ Cluster }

func (noLeaderCluster) ClusterBackup(context.Context) (Backup, error) {
	return Backup{}, &elsewhere{}
}

// TestRestoreLimits: a restore body is not held to the API's 64 KiB but to
// MaxRestoreBytes, announced (Content-Length) or not (chunked): 413; and it
// must arrive within TransferTimeout: 408, whether it stalls or trickles.
func TestRestoreLimits(t *testing.T) {
	const token = "t0ken"
	const limit = 256 << 10
	c := &restoreCluster{}
	srv := adminServer(t, AdminConfig{Cluster: c, AdminToken: token, MaxRestoreBytes: limit, TransferTimeout: 500 * time.Millisecond})

	// Well above 64 KiB and within the limit: accepted.
	body := bytes.Repeat([]byte{7}, limit)
	if resp, b := adminDo(t, "POST", srv.URL+"/cluster/restore", token, bytes.NewReader(body)); resp.StatusCode != http.StatusOK {
		t.Fatalf("a %d-byte restore: HTTP %d %s", len(body), resp.StatusCode, b)
	}
	_, _, calls := c.restores()

	// Announced too large: refused before the cluster sees it.
	big := bytes.Repeat([]byte{7}, limit+1)
	if resp, b := adminDo(t, "POST", srv.URL+"/cluster/restore", token, bytes.NewReader(big)); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("a %d-byte restore: HTTP %d %s, want 413", len(big), resp.StatusCode, b)
	}
	if _, _, n := c.restores(); n != calls {
		t.Errorf("an announced oversized body reached the cluster")
	}
	// A refusal before the body is read reaches a client still sending one.
	rsrv := adminServer(t, AdminConfig{Cluster: refusingCluster{}, AdminToken: token})
	if resp, b := adminDo(t, "POST", rsrv.URL+"/cluster/restore", token, bytes.NewReader(bytes.Repeat(big, 40))); resp.StatusCode != http.StatusConflict || !strings.Contains(string(b), "holds 3 sessions") {
		t.Errorf("a refused 10 MiB restore: HTTP %d %s, want 409", resp.StatusCode, b)
	}
	// Not announced (chunked): cut off at the limit.
	if resp, b := adminDo(t, "POST", srv.URL+"/cluster/restore", token, io.MultiReader(bytes.NewReader(big))); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("a chunked %d-byte restore: HTTP %d %s, want 413", len(big), resp.StatusCode, b)
	}

	for _, trickle := range []bool{false, true} {
		code, body, took := slowRequest(t, srv.Listener.Addr().String(),
			"POST /cluster/restore HTTP/1.1\r\nHost: chorus.test\r\nAuthorization: Bearer "+token+"\r\nContent-Length: 100000\r\n\r\nCHORUS", trickle, 10*time.Second)
		var e struct{ Error string }
		_ = json.Unmarshal(body, &e) // the status is checked too
		if code != http.StatusRequestTimeout || took < 500*time.Millisecond || !strings.Contains(e.Error, "not received within") {
			t.Errorf("trickle %v: HTTP %d %q after %v, want 408 after about 500ms", trickle, code, e.Error, took)
		}
	}
}
