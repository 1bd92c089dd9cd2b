package testcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// proxyIP is the loopback address the proxy listens on in TestProxyExample;
// its nodes are 127.0.0.82 to .84.
const proxyIP = "127.0.0.85"

// findHAProxy returns the haproxy binary, or skips: .ci/run installs it.
func findHAProxy(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy"
	}
	t.Skip("haproxy not found: install the Debian package haproxy (.ci/run does)")
	return ""
}

// renderProxyConfig puts the test's addresses into deploy/haproxy.cfg: each
// server line's address and the public bind. Every one of them must be found,
// so the test runs the example itself and not a copy of it.
func renderProxyConfig(t *testing.T, cfg string, nodes []string, bind string) string {
	t.Helper()
	servers := haproxyServers(cfg)
	if len(servers) != len(nodes) {
		t.Fatalf("deploy/haproxy.cfg has %d servers, the cluster %d nodes", len(servers), len(nodes))
	}
	for i, s := range servers {
		old := " " + s + "\n"
		if strings.Count(cfg, old) != 1 {
			t.Fatalf("deploy/haproxy.cfg: server address %q is not on exactly one line", s)
		}
		cfg = strings.Replace(cfg, old, " "+nodes[i]+"\n", 1)
	}
	oldBind := "bind :" + haproxyBindPort(cfg) + "\n"
	if strings.Count(cfg, oldBind) != 1 {
		t.Fatalf("deploy/haproxy.cfg: no single %q line", strings.TrimSpace(oldBind))
	}
	return strings.Replace(cfg, oldBind, "bind "+bind+"\n", 1)
}

// startHAProxy runs haproxy in the foreground on the config and stops it at
// the end of the test, logging its output if the test failed. It returns a
// function that counts the log lines that contain a string: HAProxy logs
// each server it takes out or puts back.
func startHAProxy(t *testing.T, bin, cfg string) (count func(string) int) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-q", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	logPath := filepath.Join(dir, "haproxy.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }() // an early exit shows in the log
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // it may have exited already
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(logPath) // best effort: only adds detail to a failure
			t.Logf("haproxy log:\n%s", tail(b, 4000))
		}
	})
	return func(s string) int {
		b, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), s)
	}
}

// proxyClient talks to the cluster through the proxy, on a new connection
// each time so that every request is balanced on its own.
type proxyClient struct {
	base string // http://ip:port
	hc   *http.Client
}

func (c proxyClient) do(ctx context.Context, method, path, token string, body []byte) ([]byte, int, error) {
	return HTTPDo(ctx, c.hc, method, c.base+path, token, body)
}

// get fetches path through the proxy and fails unless it answers 200.
func (c proxyClient) get(ctx context.Context, path string) error {
	b, code, err := c.do(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("GET %s through the proxy: HTTP %d: %s", path, code, b)
	}
	return nil
}

// createSession makes a session through base (the proxy or a node) and
// returns its id and the HTTP status.
func createSession(ctx context.Context, hc *http.Client, base string) (string, int, error) {
	b, code, err := HTTPDo(ctx, hc, http.MethodPost, base+"/api/sessions", "", []byte(`{"state":{"tracks":[],"tempo":120,"swing":0,"version":1}}`))
	if err != nil || code != http.StatusCreated {
		return "", code, fmt.Errorf("create through %s: HTTP %d: %s: %w", base, code, b, err)
	}
	var s struct{ ID string }
	return s.ID, code, json.Unmarshal(b, &s)
}

// wsJoin opens a WebSocket on session id through the proxy, as a browser on
// the proxy's page would (its Origin is the proxy), and waits for the
// snapshot. It returns the HTTP status of a refused upgrade.
func (c proxyClient) wsJoin(ctx context.Context, id string) (*websocket.Conn, int, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	hdr := http.Header{"Origin": {c.base}}
	ws, resp, err := websocket.Dial(dctx, "ws"+strings.TrimPrefix(c.base, "http")+"/api/sessions/"+id+"/ws",
		&websocket.DialOptions{HTTPClient: c.hc, HTTPHeader: hdr})
	code := 0
	if resp != nil {
		code = resp.StatusCode
		if resp.Body != nil {
			resp.Body.Close()
		}
	}
	if err != nil {
		return nil, code, err
	}
	if _, err := readFrame(dctx, ws, func(f wsFrame) bool { return f.Type == "snapshot" }); err != nil {
		ws.CloseNow()
		return nil, code, fmt.Errorf("join %s: %w", id, err)
	}
	return ws, code, nil
}

type wsFrame struct {
	Type  string  `json:"type"`
	Tempo float64 `json:"tempo"`
	Seq   uint64  `json:"seq"`
}

// readFrame reads until a frame matches.
func readFrame(ctx context.Context, ws *websocket.Conn, match func(wsFrame) bool) (wsFrame, error) {
	for {
		_, data, err := ws.Read(ctx)
		if err != nil {
			return wsFrame{}, err
		}
		var f wsFrame
		if json.Unmarshal(data, &f) == nil && match(f) {
			return f, nil
		}
	}
}

// TestProxyExample runs deploy/haproxy.cfg, with this test's addresses put
// in, in front of three real chorus serve processes started with
// docker-compose.yml's flags, and checks what the example promises: the HTTP
// API and WebSockets work through it; requests are spread over every node;
// the cluster and admin routes are not served; the per-IP WebSocket cap and session
// create rate are applied per client; after the leader is killed, writes and
// new WebSockets succeed again within a bounded time and keep succeeding;
// the node gets traffic again once it is back.
func TestProxyExample(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	haproxy := findHAProxy(t)
	compose := loadCompose(t)
	bin, err := BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := Context(t, 4*time.Minute)
	p, err := StartProcs(ctx, ProcOptions{Binary: bin, Dir: t.TempDir(), FirstIP: 82, ExtraArgs: compose.nodes[0].sharedFlags(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	var nodes []string
	for _, n := range p.Nodes {
		nodes = append(nodes, n.HTTPAddr)
	}
	ln, err := holdPort(proxyIP)
	if err != nil {
		t.Fatal(err)
	}
	bind := ln.Addr().String()
	ln.Close()
	src, err := os.ReadFile(haproxyPath)
	if err != nil {
		t.Fatal(err)
	}
	// Every node ready before the proxy's first checks, so that none starts
	// out taken out: the kill below must be what takes one out.
	Eventually(t, 30*time.Second, func() error {
		for _, n := range p.Nodes {
			_, code, err := HTTPDo(ctx, p.http, http.MethodGet, "http://"+n.HTTPAddr+"/readyz", "", nil)
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("%s: /readyz HTTP %d %v", n.ID, code, err)
			}
		}
		return nil
	})
	logged := startHAProxy(t, haproxy, renderProxyConfig(t, string(src), nodes, bind))
	c := proxyClient{base: "http://" + bind, hc: &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}}

	// Spread: every node answers some of the requests. HAProxy's log names
	// the server of each request ("public nodes/n2 ...").
	served := func(id string) int { return logged(" nodes/" + id + " ") }
	Eventually(t, 30*time.Second, func() error {
		if err := c.get(ctx, "/healthz"); err != nil {
			return err
		}
		for _, n := range p.Nodes {
			if served(n.ID) == 0 {
				return fmt.Errorf("%s has had no request yet", n.ID)
			}
		}
		return nil
	})
	t.Logf("requests spread: n1 %d, n2 %d, n3 %d", served("n1"), served("n2"), served("n3"))

	// The HTTP API and the WebSocket through the proxy: one player's change
	// reaches the other, whichever nodes they landed on.
	id, _, err := createSession(ctx, c.hc, c.base)
	if err != nil {
		t.Fatal(err)
	}
	a, _, err := c.wsJoin(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := c.wsJoin(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Write(ctx, websocket.MessageText, []byte(`{"type":"set_tempo","tempo":97,"seq":1,"ack":0}`)); err != nil {
		t.Fatal(err)
	}
	for _, ws := range []*websocket.Conn{a, b} {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		f, err := readFrame(rctx, ws, func(f wsFrame) bool { return f.Type == "tempo_changed" })
		cancel()
		if err != nil || f.Tempo != 97 || f.Seq == 0 {
			t.Fatalf("tempo_changed through the proxy: %+v, %v", f, err)
		}
	}
	a.CloseNow()
	b.CloseNow()
	body, code, err := c.do(ctx, http.MethodGet, "/api/sessions/"+id, "", nil)
	if err != nil || code != http.StatusOK || !strings.Contains(string(body), `"tempo":97`) {
		t.Fatalf("GET through the proxy: HTTP %d %v: %s", code, err, body)
	}

	// The cluster, admin and monitoring routes stay on the nodes, even with
	// the token.
	// Escaped forms too: the nodes decode them before routing.
	for _, path := range []string{"/cluster/status", "/metrics", "/cluster/state", "/debug/pprof/", "/cluster/members/n1",
		"/%63luster/status", "/%6detrics", "/%64ebug/pprof/", "/cluster%2Fstate"} {
		method := http.MethodGet
		if path == "/cluster/members/n1" {
			method = http.MethodDelete
		}
		_, code, err := c.do(ctx, method, path, p.AdminToken(), nil)
		if err != nil || code != http.StatusForbidden {
			t.Errorf("%s %s through the proxy: HTTP %d %v, want 403", method, path, code, err)
		}
	}

	checkProxyWSCap(t, ctx, c, p)

	// Kill the leader: writes and new WebSockets through the proxy work again
	// within a bounded time, then keep working.
	leader, err := p.WaitLeader(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	dead := p.Nodes[leader].ID
	down, up := "Server nodes/"+dead+" is DOWN", "Server nodes/"+dead+" is UP"
	downs := logged(down)
	if downs != 0 {
		t.Fatalf("the proxy took %s out before the kill", dead)
	}
	if err := p.Kill(leader); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	writeAndJoin := func(n int) error {
		body := []byte(`{"name":"after ` + strconv.Itoa(n) + `"}`)
		b, code, err := c.do(ctx, http.MethodPatch, "/api/sessions/"+id, "", body)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("PATCH through the proxy: HTTP %d %v: %s", code, err, b)
		}
		ws, _, err := c.wsJoin(ctx, id)
		if err != nil {
			return err
		}
		ws.CloseNow()
		return nil
	}
	n := 0
	Eventually(t, 20*time.Second, func() error { n++; return writeAndJoin(n) })
	t.Logf("%s (the leader) killed: writes and new WebSockets through the proxy work again after %v", dead, time.Since(killed).Round(time.Millisecond))
	// Until its health checks fail, the proxy still picks the dead node and
	// retries on another; then it stops picking it. Either way every request
	// succeeds.
	Eventually(t, 30*time.Second, func() error {
		n++
		if err := writeAndJoin(n); err != nil {
			t.Fatalf("after failover, write %d: %v", n, err)
		}
		if logged(down) == downs {
			return fmt.Errorf("the proxy has not taken %s out", dead)
		}
		return nil
	})
	t.Logf("the proxy took %s out %v after the kill, %d writes and joins later, none failed", dead, time.Since(killed).Round(time.Millisecond), n)
	before := served(dead)
	for i := 0; i < 20; i++ {
		if err := c.get(ctx, "/api/sessions/"+id); err != nil {
			t.Fatalf("with %s down, read %d: %v", dead, i, err)
		}
	}
	if after := served(dead); after != before {
		t.Errorf("with %s down, the proxy sent it %d requests", dead, after-before)
	}

	// Once back and caught up, the node gets traffic again.
	ups := logged(up)
	if err := p.Start(leader); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	Eventually(t, 60*time.Second, func() error {
		if logged(up) == ups {
			return fmt.Errorf("the proxy has not put %s back", dead)
		}
		if err := c.get(ctx, "/api/sessions/"+id); err != nil {
			return err
		}
		if served(dead) == before {
			return fmt.Errorf("%s has had no request since it came back", dead)
		}
		return nil
	})
	t.Logf("%s serves through the proxy again %v after its restart", dead, time.Since(restarted).Round(time.Millisecond))

	checkProxyCreateRate(t, ctx, c)
}

// checkProxyWSCap opens as many WebSockets from one client IP through the
// proxy as the proxy allows (sessions of 10 players, created on the nodes
// directly), and checks that one more is refused with 429 before it reaches
// a node, and that closing one makes room.
func checkProxyWSCap(t *testing.T, ctx context.Context, c proxyClient, p *Procs) {
	t.Helper()
	const perIP, perSession = 100, 10
	var open []*websocket.Conn
	defer func() {
		for _, ws := range open {
			ws.CloseNow()
		}
	}()
	direct := &http.Client{Timeout: 5 * time.Second}
	var sessions []string
	for i := 0; i < perIP/perSession; i++ {
		id, _, err := createSession(ctx, direct, "http://"+p.Nodes[i%len(p.Nodes)].HTTPAddr)
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, id)
	}
	for i := 0; i < perIP; i++ {
		ws, _, err := c.wsJoin(ctx, sessions[i/perSession])
		if err != nil {
			t.Fatalf("WebSocket %d of the %d one IP may hold: %v", i+1, perIP, err)
		}
		open = append(open, ws)
	}
	extra, _, err := createSession(ctx, direct, "http://"+p.Nodes[0].HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	if ws, code, err := c.wsJoin(ctx, extra); err == nil || code != http.StatusTooManyRequests {
		if ws != nil {
			ws.CloseNow()
		}
		t.Fatalf("WebSocket %d from one IP: HTTP %d, %v; want 429", perIP+1, code, err)
	}
	open[0].CloseNow()
	open = open[1:]
	Eventually(t, 10*time.Second, func() error {
		ws, _, err := c.wsJoin(ctx, extra)
		if err != nil {
			return err
		}
		open = append(open, ws)
		return nil
	})
}

// checkProxyCreateRate creates sessions through the proxy until it refuses
// one: it allows at most 10 a minute from one IP, and refuses with 429, a
// Retry-After and CORS headers, as chorus's own limit does.
func checkProxyCreateRate(t *testing.T, ctx context.Context, c proxyClient) {
	t.Helper()
	const perMinute = 10
	created := 0
	for i := 0; i <= perMinute; i++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/sessions", strings.NewReader(`{"state":{"tracks":[],"tempo":120,"swing":0,"version":1}}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusCreated:
			created++
			continue
		case http.StatusTooManyRequests:
			if resp.Header.Get("Retry-After") == "" || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Errorf("429 without Retry-After or CORS: %v", resp.Header)
			}
			if created == 0 {
				t.Error("the first create was refused")
			}
			t.Logf("the proxy refused create %d after %d (and the test's earlier ones)", i+1, created)
			return
		default:
			t.Fatalf("create %d through the proxy: HTTP %d", i+1, resp.StatusCode)
		}
	}
	t.Fatalf("%d creates through the proxy in a row, none refused", perMinute+1)
}
