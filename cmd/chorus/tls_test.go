package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"chorus/testcluster"
	"chorus/transport"
)

// This file's loopback addresses: 127.0.0.54 for the HTTPS node,
// 127.0.0.55-57 for the mutual-TLS cluster, 127.0.0.58 for the node of
// another CA, 127.0.0.59 in the flag checks (nothing listens there).

// tlsInitDir runs chorus tls init in a new temp dir with the given --node
// flags and returns the dir.
func tlsInitDir(t *testing.T, nodes ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	args := []string{"tls", "init", "--dir", dir}
	for _, n := range nodes {
		args = append(args, "--node", n)
	}
	if out, code, err := runOps(t, args...); code != 0 {
		t.Fatalf("tls init: exit %d, %v\n%s", code, err, out)
	}
	return dir
}

// readCert parses the first certificate of a PEM file.
func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dirContents maps each file of dir to its bytes.
func dirContents(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

func TestTLSInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	out, code, err := runOps(t, "tls", "init", "--dir", dir, "--node", "n1=127.0.0.54,Node1.Example", "--node", "n2=127.0.0.55,::1", "--days", "30")
	if code != 0 {
		t.Fatalf("tls init: exit %d, %v\n%s", code, err, out)
	}
	for _, want := range []string{"ca.pem", "ca-key.pem", "n1.pem", "n2-key.pem", "--peer-tls-ca", "--peer-tls-cert", "--tls-key", "--ca-cert"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// Files and modes: keys 0600, certificates 0644, the dir 0700.
	wantModes := map[string]os.FileMode{"ca.pem": 0o644, "ca-key.pem": 0o600, "n1.pem": 0o644, "n1-key.pem": 0o600, "n2.pem": 0o644, "n2-key.pem": 0o600}
	files := dirContents(t, dir)
	if len(files) != len(wantModes) {
		t.Fatalf("dir holds %v, want %d files", slices.Sorted(maps.Keys(files)), len(wantModes))
	}
	for name, mode := range wantModes {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, st.Mode().Perm(), mode)
		}
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode: %v, %v", st.Mode().Perm(), err)
	}

	// The CA, and n1's certificate: its name, SANs, usages, key, validity
	// and chain, for both the IP and the DNS name.
	ca := readCert(t, filepath.Join(dir, "ca.pem"))
	if !ca.IsCA || ca.Subject.CommonName == "" {
		t.Fatalf("ca.pem: IsCA %t, name %q", ca.IsCA, ca.Subject.CommonName)
	}
	n1 := readCert(t, filepath.Join(dir, "n1.pem"))
	if n1.Subject.CommonName != "n1" || len(n1.IPAddresses) != 1 || !n1.IPAddresses[0].Equal(net.ParseIP("127.0.0.54")) ||
		!slices.Equal(n1.DNSNames, []string{"node1.example"}) {
		t.Fatalf("n1.pem: name %q, IPs %v, DNS %v", n1.Subject.CommonName, n1.IPAddresses, n1.DNSNames)
	}
	if !slices.Contains(n1.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(n1.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Fatalf("n1.pem: extended key usages %v, want server and client auth", n1.ExtKeyUsage)
	}
	if k, ok := n1.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("n1.pem: key %T, want ECDSA P-256", n1.PublicKey)
	}
	if d := time.Until(n1.NotAfter); d < 29*24*time.Hour || d > 31*24*time.Hour {
		t.Fatalf("n1.pem: expires in %v, want 30 days", d)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, host := range []string{"127.0.0.54", "node1.example"} {
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := n1.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Fatalf("n1.pem for %s, usage %v: %v", host, usage, err)
			}
		}
	}
	if n2 := readCert(t, filepath.Join(dir, "n2.pem")); len(n2.IPAddresses) != 2 || !n2.IPAddresses[1].Equal(net.IPv6loopback) {
		t.Fatalf("n2.pem: IPs %v", n2.IPAddresses)
	}
	// What a node loads at startup accepts the files as they are.
	if _, err := transport.LoadPeerTLS(filepath.Join(dir, "n1.pem"), filepath.Join(dir, "n1-key.pem"), filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatalf("LoadPeerTLS: %v", err)
	}

	// It never overwrites: a node whose files exist stops the whole run,
	// before n3 is written, and nothing changes.
	_, code, err = runOps(t, "tls", "init", "--dir", dir, "--node", "n3=127.0.0.56", "--node", "n1=127.0.0.54")
	if code != exitCode || err == nil || !strings.Contains(err.Error(), "n1.pem already exists") {
		t.Fatalf("tls init over n1: exit %d, %v", code, err)
	}
	if got := dirContents(t, dir); !maps.Equal(got, files) {
		t.Fatal("a refused tls init changed the dir")
	}
	// An existing CA and no node: nothing to do.
	if _, code, err := runOps(t, "tls", "init", "--dir", dir); code != usageExitCode || !strings.Contains(err.Error(), "already holds a CA") {
		t.Fatalf("tls init with a CA and no node: exit %d, %v", code, err)
	}

	// A node added later gets a certificate of the same CA, which stays as it was.
	out, code, err = runOps(t, "tls", "init", "--dir", dir, "--node", "n4=127.0.0.58")
	if code != 0 || !strings.Contains(out, "used the CA in") {
		t.Fatalf("tls init n4: exit %d, %v\n%s", code, err, out)
	}
	after := dirContents(t, dir)
	for name, b := range files {
		if after[name] != b {
			t.Fatalf("adding n4 changed %s", name)
		}
	}
	if _, err := readCert(t, filepath.Join(dir, "n4.pem")).Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.58"}); err != nil {
		t.Fatalf("n4.pem does not verify against the existing CA: %v", err)
	}

	// Half a CA is refused; so is a certificate that would outlive a new CA,
	// and then not even the CA is written.
	half := t.TempDir()
	if err := os.WriteFile(filepath.Join(half, "ca.pem"), []byte(files["ca.pem"]), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, code, err := runOps(t, "tls", "init", "--dir", half, "--node", "n1=127.0.0.54"); code != exitCode || !strings.Contains(err.Error(), "ca-key.pem does not") {
		t.Fatalf("tls init with half a CA: exit %d, %v", code, err)
	}
	short := filepath.Join(t.TempDir(), "short")
	if _, code, err := runOps(t, "tls", "init", "--dir", short, "--ca-days", "10", "--days", "20", "--node", "n1=127.0.0.54"); code != exitCode || !strings.Contains(err.Error(), "outlive the CA") {
		t.Fatalf("tls init with a node outliving the CA: exit %d, %v", code, err)
	}
	if _, err := os.Stat(short); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed tls init created %s: %v", short, err)
	}
}

// TestTLSInitCommandLines: bad command lines exit 2 with a message that
// says what is wrong, and write nothing.
func TestTLSInitCommandLines(t *testing.T) {
	tests := []struct {
		args   []string
		wantIn string
	}{
		{[]string{"tls"}, "want init"},
		{[]string{"tls", "create"}, "want init"},
		{[]string{"tls", "init", "--node", "n1"}, "want NAME=HOST"},
		{[]string{"tls", "init", "--node", "n1="}, "want NAME=HOST"},
		{[]string{"tls", "init", "--node", "=10.0.0.1"}, "must be 1 to 64"},
		{[]string{"tls", "init", "--node", "../n1=10.0.0.1"}, "must be 1 to 64"},
		{[]string{"tls", "init", "--node", "ca=10.0.0.1"}, "taken by the CA"},
		{[]string{"tls", "init", "--node", "n1=10.0.0.1:9081"}, "has a port"},
		{[]string{"tls", "init", "--node", "n1=node_1!"}, "neither an IP address nor a DNS name"},
		{[]string{"tls", "init", "--node", "n1=10.0.0.1", "--node", "n1=10.0.0.2"}, "n1 given twice"},
		{[]string{"tls", "init", "--node", "n1=10.0.0.1", "--days", "0"}, "--days 0"},
		{[]string{"tls", "init", "--node", "n1=10.0.0.1", "--ca-days", "-1"}, "--ca-days -1"},
		{[]string{"tls", "init", "--node", "n1=10.0.0.1", "now"}, `unexpected argument "now"`},
		{[]string{"tls", "init", "--bogus"}, "bogus"},
	}
	for _, tt := range tests {
		dir := filepath.Join(t.TempDir(), "tls")
		args := append(slices.Clone(tt.args), "--dir", dir)
		if len(tt.args) < 2 || tt.args[1] != "init" {
			args = tt.args
		}
		_, code, err := runOps(t, args...)
		// The message is what the user reads: its wording is under test.
		if code != usageExitCode || err == nil || !strings.Contains(err.Error(), tt.wantIn) {
			t.Errorf("%q: exit %d, %v; want %d with %q", tt.args, code, err, usageExitCode, tt.wantIn)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%q created %s", tt.args, dir)
		}
	}
	if out, code, err := runOps(t, "tls", "-h"); code != 0 || !strings.Contains(out, "chorus tls init") {
		t.Errorf("tls -h: exit %d, %v\n%s", code, err, out)
	}
}

// TestServeTLSFlags: the TLS flags of serve go in pairs or threes, and what
// they name is checked before the node starts, with a message naming the
// file at fault. Nothing listens: every case fails first.
func TestServeTLSFlags(t *testing.T) {
	dir := tlsInitDir(t, "n1=127.0.0.59", "n2=127.0.0.59")
	other := tlsInitDir(t, "n1=127.0.0.59")
	f := func(d, name string) string { return filepath.Join(d, name) }
	base := []string{"serve", "--id", "n1", "--data-dir", filepath.Join(t.TempDir(), "n1"), "--cluster-secret", "s",
		"--http-addr", "127.0.0.59:0", "--peer-addr", "127.0.0.59:0"}
	peer := func(cert, key, ca string) []string {
		return []string{"--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", ca}
	}
	missing := f(dir, "missing.pem")
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantIn   []string
	}{
		{"peer cert alone", []string{"--peer-tls-cert", f(dir, "n1.pem")}, usageExitCode, []string{"go together", "missing --peer-tls-key, --peer-tls-ca"}},
		{"peer key and CA", []string{"--peer-tls-key", f(dir, "n1-key.pem"), "--peer-tls-ca", f(dir, "ca.pem")}, usageExitCode, []string{"missing --peer-tls-cert"}},
		{"https cert alone", []string{"--tls-cert", f(dir, "n1.pem")}, usageExitCode, []string{"--tls-cert and --tls-key go together"}},
		{"https key alone", []string{"--tls-key", f(dir, "n1-key.pem")}, usageExitCode, []string{"--tls-cert and --tls-key go together"}},
		{"unreadable peer cert", peer(missing, f(dir, "n1-key.pem"), f(dir, "ca.pem")), exitCode, []string{missing, "no such file"}},
		{"unreadable CA", peer(f(dir, "n1.pem"), f(dir, "n1-key.pem"), missing), exitCode, []string{missing}},
		{"key of another node", peer(f(dir, "n1.pem"), f(dir, "n2-key.pem"), f(dir, "ca.pem")), exitCode, []string{"does not match"}},
		{"certificate of another CA", peer(f(other, "n1.pem"), f(other, "n1-key.pem"), f(dir, "ca.pem")), exitCode, []string{"does not verify against the CA", "unknown authority"}},
		{"certificate for another host", append(peer(f(dir, "n1.pem"), f(dir, "n1-key.pem"), f(dir, "ca.pem")), "--advertise-addr", "10.9.9.9:9081"), exitCode, []string{"not valid for 10.9.9.9"}},
		{"https key of another node", []string{"--tls-cert", f(dir, "n1.pem"), "--tls-key", f(dir, "n2-key.pem")}, exitCode, []string{"--tls-cert", "does not match"}},
		{"unreadable https key", []string{"--tls-cert", f(dir, "n1.pem"), "--tls-key", missing}, exitCode, []string{missing}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, code, err := runOps(t, append(slices.Clone(base), tt.args...)...)
			if code != tt.wantCode || err == nil {
				t.Fatalf("exit %d, %v; want %d", code, err, tt.wantCode)
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}

	// The environment twins set the same.
	env := map[string]string{
		"CHORUS_PEER_TLS_CERT": f(dir, "n1.pem"), "CHORUS_PEER_TLS_KEY": f(dir, "n1-key.pem"), "CHORUS_PEER_TLS_CA": f(dir, "ca.pem"),
		"CHORUS_TLS_CERT": f(dir, "n1.pem"), "CHORUS_TLS_KEY": f(dir, "n1-key.pem"),
	}
	o, _, err := serveOptions(base[1:], io.Discard, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.PeerTLS == nil || o.cfg.PeerTLS.Cert.Leaf.Subject.CommonName != "n1" || o.httpTLS == nil {
		t.Fatalf("from the environment: peer TLS %v, HTTPS %v", o.cfg.PeerTLS != nil, o.httpTLS != nil)
	}
	if !slices.Equal(o.httpTLS.NextProtos, []string{"http/1.1"}) {
		t.Fatalf("HTTPS offers %q in ALPN, want http/1.1 only", o.httpTLS.NextProtos)
	}
}

// logSink is a node's stderr in a test: it writes to t.Log and keeps the lines.
type logSink struct {
	tb  testing.TB
	mu  sync.Mutex // guards buf
	buf strings.Builder
}

func (l *logSink) Write(b []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(b)
	l.mu.Unlock()
	l.tb.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// has reports whether a line contains every one of subs.
func (l *logSink) has(subs ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range strings.Lines(l.buf.String()) {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			return true
		}
	}
	return false
}

// freeAddr returns ip:port with a port that is free on ip now.
func freeAddr(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startServe starts a node as chorus serve would with args, logging to a
// sink it returns, and stops it in Cleanup (with stopAll, which stops
// several nodes in phases: register them in one call for that).
func startServe(t *testing.T, args ...string) (*running, *logSink) {
	t.Helper()
	sink := &logSink{tb: t}
	o, log, err := serveOptions(append([]string{"--log-level", "warn"}, args...), sink, func(string) string { return "" })
	if err != nil {
		t.Fatalf("serve %q: %v", args, err)
	}
	var r *running
	// The peer port was free when chosen: retry briefly should something
	// else have taken it since.
	if err := testcluster.Poll(5*time.Second, func() error {
		var err error
		r, err = startNode(log, *o)
		return err
	}); err != nil {
		t.Fatalf("start %q: %v", args, err)
	}
	return r, sink
}

// httpsClient trusts the CA in caFile.
func httpsClient(t *testing.T, caFile string, forceH2 bool) *http.Client {
	t.Helper()
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("no CA certificate")
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: forceH2}}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// postSession creates a session with body through base (a URL) and returns its id.
func postSession(hc *http.Client, base, body string) (string, error) {
	resp, err := hc.Post(base+"/api/sessions", "application/json", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var r struct{ ID string }
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &r) != nil || r.ID == "" {
		return "", fmt.Errorf("create a session: HTTP %d %s", resp.StatusCode, b)
	}
	return r.ID, nil
}

// TestServeHTTPS: a node served with --tls-cert and --tls-key answers HTTPS
// to a client that trusts the CA and nothing to one that does not, refuses
// plain HTTP with a 400, negotiates HTTP/1.1 even when h2 is offered, and
// carries WebSockets over wss://: two players join a session and one's edit
// reaches the other. The operator commands reach it with --ca-cert.
func TestServeHTTPS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	dir := tlsInitDir(t, "n1=127.0.0.54")
	peerAddr := freeAddr(t, "127.0.0.54")
	r, _ := startServe(t, "--id", "n1", "--data-dir", filepath.Join(t.TempDir(), "n1"), "--cluster-secret", "s", "--admin-token", "tok",
		"--http-addr", "127.0.0.54:0", "--peer-addr", peerAddr, "--peers", "n1="+peerAddr,
		"--tls-cert", filepath.Join(dir, "n1.pem"), "--tls-key", filepath.Join(dir, "n1-key.pem"))
	t.Cleanup(func() {
		if err := stopAll([]*running{r}); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	base := "https://" + r.addr
	hc := httpsClient(t, filepath.Join(dir, "ca.pem"), true)

	var id string
	testcluster.Eventually(t, 15*time.Second, func() error { // once the node leads
		var err error
		id, err = postSession(hc, base, `{}`)
		return err
	})
	resp, err := hc.Get(base + "/cluster/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.TLS == nil || resp.TLS.NegotiatedProtocol != "http/1.1" || resp.ProtoMajor != 1 {
		t.Fatalf("offered h2, got %s over ALPN %q", resp.Proto, resp.TLS.NegotiatedProtocol)
	}

	// A client that does not trust the CA, and one that speaks plain HTTP.
	untrusting := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	defer untrusting.CloseIdleConnections()
	var uae x509.UnknownAuthorityError
	if _, err := untrusting.Get(base + "/healthz"); !errors.As(err, &uae) {
		t.Fatalf("GET without the CA: %v, want an unknown authority", err)
	}
	resp, err = untrusting.Get("http://" + r.addr + "/healthz")
	if err != nil {
		t.Fatalf("plain HTTP: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTPS") {
		t.Fatalf("plain HTTP to the HTTPS port: %d %q, want 400 naming HTTPS", resp.StatusCode, body)
	}

	// Two players over wss://; one changes the tempo, the other hears it.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func() *websocket.Conn {
		c, resp, err := websocket.Dial(ctx, "wss://"+r.addr+"/api/sessions/"+id+"/ws", &websocket.DialOptions{HTTPClient: hc})
		if err != nil {
			t.Fatalf("wss dial: %v", err)
		}
		if resp.TLS == nil {
			t.Fatal("the WebSocket is not over TLS")
		}
		t.Cleanup(func() { _ = c.CloseNow() })
		readUntil(ctx, t, c, func(m map[string]any) bool { return m["type"] == "snapshot" })
		return c
	}
	a, b := dial(), dial()
	if err := a.Write(ctx, websocket.MessageText, []byte(`{"type":"set_tempo","tempo":140,"seq":1,"ack":0}`)); err != nil {
		t.Fatal(err)
	}
	m := readUntil(ctx, t, b, func(m map[string]any) bool { return m["type"] == "tempo_changed" })
	if m["tempo"] != 140.0 {
		t.Fatalf("tempo_changed %v", m)
	}
	_ = a.Close(websocket.StatusNormalClosure, "")
	_ = b.Close(websocket.StatusNormalClosure, "")

	// The operator commands: https:// with --ca-cert, a bare address with
	// --ca-cert (https implied), and the admin routes; without the CA, a
	// clear certificate error.
	ca := filepath.Join(dir, "ca.pem")
	for _, addr := range []string{base, r.addr} {
		if out, code, err := runOps(t, "status", "--addr", addr, "--ca-cert", ca); code != 0 || !strings.Contains(out, "leader") {
			t.Fatalf("status --addr %s: exit %d, %v\n%s", addr, code, err, out)
		}
	}
	if out, code, err := runOps(t, "members", "add", "--addr", base, "--ca-cert", ca, "--admin-token", "tok",
		"--id", "n9", "--peer-addr", "127.0.0.1:1", "--http-addr", "127.0.0.1:1", "--nonvoter"); code != 0 || !strings.Contains(out, "added n9") {
		t.Fatalf("members add over HTTPS: exit %d, %v\n%s", code, err, out)
	}
	if out, code, err := runOps(t, "members", "remove", "--addr", base, "--ca-cert", ca, "--admin-token", "tok", "n9"); code != 0 {
		t.Fatalf("members remove over HTTPS: exit %d, %v\n%s", code, err, out)
	}
	backup := filepath.Join(t.TempDir(), "backup.chorus")
	if out, code, err := runOps(t, "snapshot", "save", "--addr", base, "--ca-cert", ca, "--admin-token", "tok", backup); code != 0 {
		t.Fatalf("snapshot save over HTTPS: exit %d, %v\n%s", code, err, out)
	}
	if out, code, err := runOps(t, "snapshot", "inspect", backup); code != 0 {
		t.Fatalf("snapshot inspect of the HTTPS backup: exit %d, %v\n%s", code, err, out)
	}
	if _, code, err := runOps(t, "status", "--addr", base); code != exitCode || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("status without --ca-cert: exit %d, %v", code, err)
	}
	for _, args := range [][]string{
		{"status", "--addr", base, "--ca-cert", filepath.Join(dir, "missing.pem")},
		{"status", "--addr", base, "--ca-cert", filepath.Join(dir, "n1-key.pem")},
		{"status", "--addr", "ftp://" + r.addr},
		{"status", "--addr", base + "/cluster"},
	} {
		if _, code, err := runOps(t, args...); code != usageExitCode {
			t.Errorf("%q: exit %d, %v; want %d", args, code, err, usageExitCode)
		}
	}
}

// readUntil reads JSON frames from c until one satisfies match.
func readUntil(ctx context.Context, t *testing.T, c *websocket.Conn, match func(map[string]any) bool) map[string]any {
	t.Helper()
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		var m map[string]any
		if json.Unmarshal(b, &m) == nil && match(m) {
			return m
		}
	}
}

// TestPeerMutualTLSCluster: three nodes started with serve's --peer-tls-*
// flags (and HTTPS) elect a leader and replicate a write. A fourth node
// whose certificate comes from another CA, added through the admin API,
// never gets a byte of the log: the leader refuses its certificate, and it
// refuses the leader's. Removing it leaves the cluster as it was.
func TestPeerMutualTLSCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	ips := []string{"127.0.0.55", "127.0.0.56", "127.0.0.57"}
	var nodeFlags, peers []string
	peerAddrs := make([]string, 3)
	for i, ip := range ips {
		nodeFlags = append(nodeFlags, "n"+strconv.Itoa(i+1)+"="+ip)
		peerAddrs[i] = freeAddr(t, ip)
		peers = append(peers, "n"+strconv.Itoa(i+1)+"="+peerAddrs[i])
	}
	dir := tlsInitDir(t, nodeFlags...)
	ca := filepath.Join(dir, "ca.pem")
	const token = "mtls-token"
	data := t.TempDir()

	nodes := make([]*running, 3)
	logs := make([]*logSink, 3)
	t.Cleanup(func() {
		if err := stopAll(nodes); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	for i, ip := range ips {
		id := "n" + strconv.Itoa(i+1)
		cert, key := filepath.Join(dir, id+".pem"), filepath.Join(dir, id+"-key.pem")
		nodes[i], logs[i] = startServe(t, "--id", id, "--data-dir", filepath.Join(data, id), "--cluster-secret", "mtls-secret",
			"--admin-token", token, "--http-addr", ip+":0", "--peer-addr", peerAddrs[i], "--peers", strings.Join(peers, ","),
			"--peer-tls-cert", cert, "--peer-tls-key", key, "--peer-tls-ca", ca, "--tls-cert", cert, "--tls-key", key)
	}
	hc := httpsClient(t, ca, false)
	status := func(base string) (map[string]any, error) {
		resp, err := hc.Get(base + "/cluster/status")
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var st map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return nil, err
		}
		return st, nil
	}
	leader := -1
	testcluster.Eventually(t, 20*time.Second, func() error {
		var ids []string
		for _, r := range nodes {
			st, err := status("https://" + r.addr)
			if err != nil {
				return err
			}
			l, _ := st["leader"].(map[string]any)
			ids = append(ids, fmt.Sprint(l["id"]))
			if st["state"] == "leader" {
				leader, _ = strconv.Atoi(strings.TrimPrefix(fmt.Sprint(st["id"]), "n"))
				leader--
			}
		}
		if leader < 0 || ids[0] == "" || ids[0] != ids[1] || ids[1] != ids[2] {
			return fmt.Errorf("leaders seen: %q", ids)
		}
		return nil
	})

	// A write through a follower reaches every node.
	follower := nodes[(leader+1)%3]
	var id string
	testcluster.Eventually(t, 15*time.Second, func() error {
		var err error
		id, err = postSession(hc, "https://"+follower.addr, `{}`)
		return err
	})
	testcluster.Eventually(t, 15*time.Second, func() error {
		for _, r := range nodes {
			resp, err := hc.Get("https://" + r.addr + "/api/sessions/" + id + "?stale=1")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: session %s: HTTP %d", r.addr, id, resp.StatusCode)
			}
		}
		return nil
	})
	// chorus status asks every member over HTTPS.
	testcluster.Eventually(t, 10*time.Second, func() error {
		if out, code, err := runOps(t, "status", "--addr", "https://"+follower.addr, "--ca-cert", ca); code != 0 {
			return fmt.Errorf("status: exit %d, %v\n%s", code, err, out)
		}
		return nil
	})

	// n4 holds a certificate of another CA, and trusts only that CA.
	otherDir := tlsInitDir(t, "n4=127.0.0.58")
	n4Peer := freeAddr(t, "127.0.0.58")
	n4, n4Log := startServe(t, "--id", "n4", "--data-dir", filepath.Join(data, "n4"), "--cluster-secret", "mtls-secret",
		"--http-addr", "127.0.0.58:0", "--peer-addr", n4Peer, "--peer-tls-cert", filepath.Join(otherDir, "n4.pem"),
		"--peer-tls-key", filepath.Join(otherDir, "n4-key.pem"), "--peer-tls-ca", filepath.Join(otherDir, "ca.pem"))
	nodes = append(nodes, n4) // stopped with the others
	base := "https://" + follower.addr
	if out, code, err := runOps(t, "members", "add", "--addr", base, "--ca-cert", ca, "--admin-token", token,
		"--id", "n4", "--peer-addr", n4Peer, "--http-addr", n4.addr, "--nonvoter"); code != 0 {
		t.Fatalf("members add n4: exit %d, %v\n%s", code, err, out)
	}
	// The leader tries to replicate to n4 and refuses its certificate; n4
	// logs that the leader refused the handshake (it refused n4's).
	testcluster.Eventually(t, 15*time.Second, func() error {
		if !slices.ContainsFunc(logs, func(l *logSink) bool {
			return l.has("[WARN]", "peer TLS handshake failed", "remote_addr="+n4Peer, `reason="untrusted certificate"`)
		}) {
			return errors.New("no member has logged refusing n4's certificate")
		}
		if !n4Log.has("[WARN]", "peer handshake failed", `reason="refused by remote"`) {
			return errors.New("n4 has not logged a refused handshake")
		}
		return nil
	})
	// Meanwhile the cluster commits, and n4 gets nothing: no leader, an empty log.
	if _, err := postSession(hc, base, `{}`); err != nil {
		t.Fatal(err)
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	defer plain.CloseIdleConnections()
	testcluster.Consistently(t, 3*time.Second, func() error {
		resp, err := plain.Get("http://" + n4.addr + "/cluster/status")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var st struct {
			Leader                     struct{ ID string }
			AppliedIndex, LastLogIndex uint64
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return err
		}
		if st.Leader.ID != "" || st.AppliedIndex != 0 || st.LastLogIndex != 0 {
			return fmt.Errorf("n4 joined: leader %q, applied %d, last log %d", st.Leader.ID, st.AppliedIndex, st.LastLogIndex)
		}
		return nil
	})

	// Removing n4 leaves a healthy three-node cluster.
	if out, code, err := runOps(t, "members", "remove", "--addr", base, "--ca-cert", ca, "--admin-token", token, "n4"); code != 0 {
		t.Fatalf("members remove n4: exit %d, %v\n%s", code, err, out)
	}
	testcluster.Eventually(t, 10*time.Second, func() error {
		out, code, err := runOps(t, "status", "--addr", base, "--ca-cert", ca)
		if code != 0 || strings.Contains(out, "n4") {
			return fmt.Errorf("status after removing n4: exit %d, %v\n%s", code, err, out)
		}
		return nil
	})
	if _, err := postSession(hc, base, `{}`); err != nil {
		t.Fatal(err)
	}
}
