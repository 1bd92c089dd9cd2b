package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"chorus/node"
	"chorus/testcluster"
	"chorus/transport"
)

// The metrics tests' loopback block is 127.0.0.92-100: an in-process
// cluster on .92-.94, single nodes on .95, and clients on .96-.100, so that
// per-IP limits see them apart.
const (
	metricsClusterIP = 92
	metricsNodeIP    = "127.0.0.95"
)

// metricsWait bounds every wait in these tests: generous, for -race on a
// small shared machine.
const metricsWait = 30 * time.Second

// metricsSession is a session state with one track, for the messages that need one.
const metricsSession = `{"tracks":[{"id":"track-1","name":"Kick","sampleId":"kick","steps":[false,false,false,false,false,false,false,false,false,false,false,false,false,false,false,false],"parameterLocks":[],"volume":1,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":16}],"tempo":120,"swing":0,"version":1}`

// seriesPerFamily is how many series each labelled chorus_ family has, from
// the first scrape on: every child exists from the start, and no input adds one.
var seriesPerFamily = map[string]int{
	"chorus_raft_state":                 4,
	"chorus_raft_members":               2,
	"chorus_snapshot_pause_seconds":     2,
	"chorus_submit_seconds":             2,
	"chorus_forward_requests_total":     12, // 2 rpcs × 6 outcomes
	"chorus_request_retries_total":      4,
	"chorus_ws_messages_received_total": 25, // 21 types, ping, unknown, invalid, too_large
	"chorus_ws_messages_sent_total":     28, // 25 types, resume, pong, other
}

// families is a parsed exposition (or a gathered registry), by name.
type families map[string]*dto.MetricFamily

// value returns the value of family name's series with these label pairs
// (name, value, ...): a counter's or gauge's value, a histogram's count.
// It is NaN when there is no such series, so no comparison holds.
func (fs families) value(name string, labels ...string) float64 {
	m := fs.series(name, labels...)
	switch {
	case m == nil:
		return math.NaN()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return math.NaN()
}

// sum returns a histogram series' sum, or NaN.
func (fs families) sum(name string, labels ...string) float64 {
	if m := fs.series(name, labels...); m != nil && m.Histogram != nil {
		return m.Histogram.GetSampleSum()
	}
	return math.NaN()
}

// total sums a counter family over all its series.
func (fs families) total(name string) float64 {
	f := fs[name]
	if f == nil {
		return math.NaN()
	}
	t := 0.0
	for _, m := range f.Metric {
		t += m.GetCounter().GetValue()
	}
	return t
}

func (fs families) series(name string, labels ...string) *dto.Metric {
	f := fs[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

// seriesKeys lists every series of the chorus_ families as name{labels}.
func (fs families) seriesKeys() []string {
	var keys []string
	for name, f := range fs {
		if !strings.HasPrefix(name, "chorus_") {
			continue
		}
		for _, m := range f.Metric {
			keys = append(keys, name+labelKey(m))
		}
	}
	sort.Strings(keys)
	return keys
}

func labelKey(m *dto.Metric) string {
	var parts []string
	for _, l := range m.Label {
		parts = append(parts, l.GetName()+"="+strconv.Quote(l.GetValue()))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

// parseExposition parses a text exposition and checks it: lint-clean chorus_
// families, no series twice, and the fixed number of series of each
// labelled family.
func parseExposition(text string) (families, error) {
	p := expfmt.NewTextParser(model.LegacyValidation)
	fs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parse the exposition: %w", err)
	}
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		return nil, fmt.Errorf("lint the exposition: %w", err)
	}
	var errs []error
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "chorus_") {
			errs = append(errs, fmt.Errorf("lint: %s: %s", p.Metric, p.Text))
		}
	}
	for name, f := range fs {
		seen := map[string]bool{}
		for _, m := range f.Metric {
			k := labelKey(m)
			if seen[k] {
				errs = append(errs, fmt.Errorf("%s%s appears twice", name, k))
			}
			seen[k] = true
		}
		if want, ok := seriesPerFamily[name]; ok && len(f.Metric) != want {
			errs = append(errs, fmt.Errorf("%s has %d series, want %d", name, len(f.Metric), want))
		}
	}
	return fs, errors.Join(errs...)
}

// gather reads a registry as a scrape would.
func gather(reg *prometheus.Registry) (families, error) {
	list, err := reg.Gather()
	fs := families{}
	for _, f := range list {
		fs[f.GetName()] = f
	}
	return fs, err
}

// httpFrom is an HTTP client whose connections come from ip, so that each
// test client has an address of its own for the per-IP limits. It keeps no
// idle connections, which would outlive the test.
func httpFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// scrapeMetrics GETs addr's /metrics and parses it.
func scrapeMetrics(hc *http.Client, addr string) (families, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, code, err := testcluster.HTTPDo(ctx, hc, http.MethodGet, "http://"+addr+"/metrics", "", nil)
	if err != nil {
		return nil, "", err
	}
	if code != http.StatusOK {
		return nil, "", fmt.Errorf("GET /metrics: HTTP %d", code)
	}
	fs, err := parseExposition(string(b))
	return fs, string(b), err
}

// expectMetrics scrapes addr until check passes.
func expectMetrics(t *testing.T, hc *http.Client, addr string, check func(fs families) error) families {
	t.Helper()
	var last families
	testcluster.Eventually(t, metricsWait, func() error {
		fs, _, err := scrapeMetrics(hc, addr)
		if err != nil {
			return err
		}
		last = fs
		return check(fs)
	})
	return last
}

// want returns an error naming every figure that is not as wanted.
type want struct {
	fs   families
	errs []error
}

func (w *want) eq(v, exp float64, what string) {
	if v != exp {
		w.errs = append(w.errs, fmt.Errorf("%s = %v, want %v", what, v, exp))
	}
}

func (w *want) atLeast(v, exp float64, what string) {
	if !(v >= exp) {
		w.errs = append(w.errs, fmt.Errorf("%s = %v, want at least %v", what, v, exp))
	}
}

func (w *want) err() error { return errors.Join(w.errs...) }

// metricsNode starts a one-node cluster as chorus serve does, on
// metricsNodeIP, with o's limits, and stops it when the test ends unless
// the test stopped it first. It returns the options it started with.
func metricsNode(t *testing.T, o nodeOptions) (*running, nodeOptions) {
	t.Helper()
	hold, err := net.Listen("tcp", metricsNodeIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	peer := hold.Addr().String() // a free peer port for the node
	hold.Close()
	log := hclog.NewNullLogger()
	o.cfg = node.Config{ID: "n1", DataDir: filepath.Join(t.TempDir(), "n1"), PeerAddr: peer,
		Peers: []node.Peer{{ID: "n1", Addr: peer}}, ClusterSecret: []byte("metrics-test-secret"), Logger: log,
		SubscriberQueue: o.cfg.SubscriberQueue}
	o.httpAddr = metricsNodeIP + ":0"
	r, err := startNode(log, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopNode(t, r) })
	return r, o
}

// stopNode stops r unless it is stopped already.
func stopNode(t *testing.T, r *running) {
	t.Helper()
	if r.node.Status().State == "shutdown" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := r.stop(ctx); err != nil {
		t.Errorf("stop: %v", err)
	}
}

// createSession creates a session with metricsSession through addr, from
// hc, retrying until the node has a leader; it returns the session id.
func createSession(t *testing.T, hc *http.Client, addr string) string {
	t.Helper()
	var id string
	testcluster.Eventually(t, metricsWait, func() error {
		var err error
		id, err = postSession(hc, "http://"+addr, `{"state":`+metricsSession+`}`)
		return err
	})
	return id
}

// wsConn is a test client's WebSocket.
type wsConn struct {
	t    *testing.T
	conn *websocket.Conn
}

// dialWS opens a WebSocket to session id on addr, from hc.
func dialWS(t *testing.T, hc *http.Client, addr, id string) (*wsConn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), metricsWait)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, "ws://"+addr+"/api/sessions/"+id+"/ws", &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		return nil, resp, err
	}
	conn.SetReadLimit(-1)
	c := &wsConn{t: t, conn: conn}
	t.Cleanup(func() { c.conn.CloseNow() }) // closing twice is harmless
	return c, resp, nil
}

func (c *wsConn) send(msg string) error {
	ctx, cancel := context.WithTimeout(context.Background(), metricsWait)
	defer cancel()
	return c.conn.Write(ctx, websocket.MessageText, []byte(msg))
}

// expect reads frames until one of type typ (or the text pong), and fails
// the test on anything else that is not a broadcast of another player.
func (c *wsConn) expect(typ string) []byte {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), metricsWait)
	defer cancel()
	for {
		_, b, err := c.conn.Read(ctx)
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", typ, err)
		}
		if typ == "pong" && string(b) == "pong" {
			return b
		}
		var f struct{ Type string }
		if json.Unmarshal(b, &f) == nil && f.Type == typ {
			return b
		}
		if f.Type != "player_joined" && f.Type != "player_left" {
			c.t.Fatalf("waiting for %s, got %.200s", typ, b)
		}
	}
}

// TestMetrics starts a one-node cluster as chorus serve does and scrapes
// GET /metrics: the exposition parses and lints, each series appears once and
// the labelled families have a fixed set of series; the raft and session
// gauges; a write counts in the commit, submit and apply histograms; a
// socket's messages count in and out by type; a snapshot records its
// duration and size; a restart restores from it and records that.
func TestMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	const token = "t"
	r, o := metricsNode(t, nodeOptions{adminToken: token})
	hc := httpFrom("127.0.0.96")
	id := createSession(t, hc, r.addr)
	first := expectMetrics(t, hc, r.addr, func(fs families) error {
		w := &want{fs: fs}
		w.eq(fs.value("chorus_raft_state", "state", "leader"), 1, "raft state leader")
		w.eq(fs.value("chorus_raft_state", "state", "follower"), 0, "raft state follower")
		w.eq(fs.value("chorus_raft_members", "suffrage", "voter"), 1, "voters")
		w.eq(fs.value("chorus_raft_has_leader"), 1, "has leader")
		w.eq(fs.value("chorus_sessions"), 1, "sessions")
		w.eq(fs.value("chorus_sockets"), 0, "sockets")
		w.atLeast(fs.value("chorus_raft_applied_index"), 1, "applied index")
		w.atLeast(fs.value("chorus_raft_term"), 1, "term")
		for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", `chorus_snapshot_pause_seconds`} {
			if fs[name] == nil {
				w.errs = append(w.errs, fmt.Errorf("no %s", name))
			}
		}
		// The create, the node's epoch: proposed on this node, which leads.
		w.atLeast(fs.value("chorus_submit_seconds", "path", "local"), 2, "local submits")
		w.eq(fs.value("chorus_submit_seconds", "path", "forwarded"), 0, "forwarded submits")
		w.atLeast(fs.value("chorus_raft_commit_seconds"), 2, "commits")
		w.atLeast(fs.value("chorus_fsm_apply_seconds"), 1, "applied batches")
		w.eq(fs.total("chorus_forward_requests_total"), 0, "forwarded requests")
		return w.err()
	})

	// Messages in and out, by type.
	ws, _, err := dialWS(t, httpFrom("127.0.0.97"), r.addr, id)
	if err != nil {
		t.Fatal(err)
	}
	ws.expect("snapshot")
	const unknownTypes = 30
	for _, step := range []struct{ msg, reply string }{
		{`{"type":"set_tempo","tempo":100,"seq":1}`, "tempo_changed"},
		{`{"type":"toggle_step","trackId":"track-1","step":3,"seq":2}`, "step_toggled"},
		{`{"type":"clock_sync_request","clientTime":5}`, "clock_sync_response"},
		{`{"type":"state_hash","hash":"00000000"}`, "state_mismatch"},
		{"ping", "pong"},
		{`{"type":`, "error"},
		{`{"type":"request_snapshot"}`, "snapshot"},
	} {
		if err := ws.send(step.msg); err != nil {
			t.Fatal(err)
		}
		ws.expect(step.reply)
	}
	for i := range unknownTypes { // each a type of its own: none may add a series
		if err := ws.send(`{"type":"no_such_type_` + strconv.Itoa(i) + `"}`); err != nil {
			t.Fatal(err)
		}
	}
	if err := ws.send(`{"type":"clock_sync_request","clientTime":6}`); err != nil { // after them all
		t.Fatal(err)
	}
	ws.expect("clock_sync_response")
	second := expectMetrics(t, hc, r.addr, func(fs families) error {
		w := &want{fs: fs}
		in := func(typ string, n float64) {
			w.eq(fs.value("chorus_ws_messages_received_total", "type", typ), n, "received "+typ)
		}
		out := func(typ string, n float64) {
			w.eq(fs.value("chorus_ws_messages_sent_total", "type", typ), n, "sent "+typ)
		}
		in("set_tempo", 1)
		in("toggle_step", 1)
		in("clock_sync_request", 2)
		in("state_hash", 1)
		in("request_snapshot", 1)
		in("ping", 1)
		in("invalid", 1)
		in("unknown", unknownTypes)
		in("too_large", 0)
		out("snapshot", 2)
		out("tempo_changed", 1)
		out("step_toggled", 1)
		out("clock_sync_response", 2)
		out("state_mismatch", 1)
		out("pong", 1)
		out("error", 1)
		out("other", 0)
		w.eq(fs.total("chorus_ws_messages_received_total"), 8+unknownTypes, "messages received")
		w.eq(fs.total("chorus_ws_messages_sent_total"), 9, "messages sent")
		w.eq(fs.value("chorus_sockets"), 1, "sockets")
		return w.err()
	})
	if a, b := first.seriesKeys(), second.seriesKeys(); !slices.Equal(a, b) {
		t.Fatalf("the chorus_ series changed:\nbefore %v\nafter  %v", a, b)
	}

	// A snapshot: its duration and size, as POST /cluster/snapshot reports them.
	ctx, cancel := context.WithTimeout(context.Background(), metricsWait)
	defer cancel()
	b, code, err := testcluster.HTTPDo(ctx, hc, http.MethodPost, "http://"+r.addr+"/cluster/snapshot", token, nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("POST /cluster/snapshot: HTTP %d %s %v", code, b, err)
	}
	var snap struct {
		PersistMs float64
		Bytes     float64
	}
	if err := json.Unmarshal(b, &snap); err != nil || snap.Bytes <= 0 {
		t.Fatalf("snapshot report %s: %v", b, err)
	}
	expectMetrics(t, hc, r.addr, func(fs families) error {
		w := &want{fs: fs}
		w.eq(fs.value("chorus_snapshot_persist_seconds"), 1, "snapshots persisted")
		if d := math.Abs(fs.sum("chorus_snapshot_persist_seconds") - snap.PersistMs/1000); !(d < 1e-6) {
			w.errs = append(w.errs, fmt.Errorf("persist seconds %v, the report says %v ms", fs.sum("chorus_snapshot_persist_seconds"), snap.PersistMs))
		}
		w.eq(fs.value("chorus_snapshot_bytes"), 1, "snapshot sizes")
		w.eq(fs.sum("chorus_snapshot_bytes"), snap.Bytes, "snapshot bytes")
		w.eq(fs.value("chorus_snapshot_restore_seconds"), 0, "restores")
		return w.err()
	})

	// A restart on the data dir restores that snapshot, in a fresh registry.
	ws.conn.CloseNow()
	stopNode(t, r)
	r2, err := startNode(hclog.NewNullLogger(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopNode(t, r2) })
	expectMetrics(t, hc, r2.addr, func(fs families) error {
		w := &want{fs: fs}
		w.eq(fs.value("chorus_snapshot_restore_seconds"), 1, "restores")
		w.eq(fs.value("chorus_snapshot_persist_seconds"), 0, "snapshots persisted")
		w.eq(fs.value("chorus_sessions"), 1, "sessions")
		w.eq(fs.total("chorus_ws_messages_received_total"), 0, "messages received")
		return w.err()
	})
}

// TestMetricsLimits: each limit counts what it refuses, under its own name:
// the create rate, the per-IP connection cap and the message rate.
func TestMetricsLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	r, _ := metricsNode(t, nodeOptions{createRate: 1, maxConnsPerIP: 1, wsRate: 1})
	creator := httpFrom("127.0.0.96")
	scraper := httpFrom("127.0.0.99")
	testcluster.Eventually(t, metricsWait, func() error { // a leader, without spending the creator's quota
		_, code, err := testcluster.HTTPDo(context.Background(), scraper, http.MethodGet, "http://"+r.addr+"/readyz", "", nil)
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("readyz: HTTP %d", code)
		}
		return err
	})
	id := createSession(t, creator, r.addr)
	ctx, cancel := context.WithTimeout(context.Background(), metricsWait)
	defer cancel()
	if _, code, err := testcluster.HTTPDo(ctx, creator, http.MethodPost, "http://"+r.addr+"/api/sessions", "", []byte(`{}`)); err != nil || code != http.StatusTooManyRequests {
		t.Fatalf("a second create within the minute: HTTP %d, %v; want 429", code, err)
	}

	player := httpFrom("127.0.0.97")
	ws, _, err := dialWS(t, player, r.addr, id)
	if err != nil {
		t.Fatal(err)
	}
	ws.expect("snapshot")
	if _, resp, err := dialWS(t, player, r.addr, id); err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a second socket from one address: %v, %v; want 429", resp, err)
	}
	// One message a second, bursts of two: a burst of clock syncs is
	// refused, first with an error, then with a 1008 close.
	for i := 0; i < 50; i++ {
		if err := ws.send(`{"type":"clock_sync_request","clientTime":1}`); err != nil {
			break
		}
	}
	rctx, rcancel := context.WithTimeout(context.Background(), metricsWait)
	defer rcancel()
	for {
		if _, _, err := ws.conn.Read(rctx); err != nil {
			if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
				t.Fatalf("the flooding socket ended with %v, want a 1008 close", err)
			}
			break
		}
	}
	expectMetrics(t, scraper, r.addr, func(fs families) error {
		w := &want{fs: fs}
		w.eq(fs.value("chorus_create_rate_limited_total"), 1, "creates refused")
		w.eq(fs.value("chorus_ws_conn_cap_refused_total"), 1, "sockets refused")
		w.atLeast(fs.value("chorus_ws_rate_limited_messages_total"), 2, "messages refused")
		w.atLeast(fs.value("chorus_ws_messages_sent_total", "type", "error"), 1, "rate limit errors sent")
		w.atLeast(fs.value("chorus_ws_messages_received_total", "type", "clock_sync_request"), 1, "clock syncs let through")
		return w.err()
	})
}

// TestMetricsCluster runs the write path of a three-node cluster in this
// process, each node with registries of its own: a write and a read through a
// follower count as forwarded; the leader's commits and every node's applies
// are timed; a socket that stops reading is dropped by the hub on a node with
// a tiny queue and times out on a node with a short write timeout, each
// counted; and a write through a follower while its leader is cut off counts
// retries.
func TestMetricsCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	const (
		smallQueue   = 0 // this member's subscribers queue 8 deliveries
		shortTimeout = 1 // this member times writes out after 300 ms
	)
	var nm [3]*node.Metrics
	var tm [3]*transport.Metrics
	var regs [3]*prometheus.Registry
	for i := range regs {
		nm[i], tm[i], regs[i] = node.NewMetrics(), transport.NewMetrics(), prometheus.NewRegistry()
		regs[i].MustRegister(nm[i].Collectors()...)
		regs[i].MustRegister(tm[i].Collectors()...)
	}
	c := testcluster.New(t, testcluster.Options{
		FirstIP: metricsClusterIP, HTTP: true,
		Configure: func(i int, cfg *node.Config) {
			cfg.Metrics = nm[i]
			if i == smallQueue {
				cfg.SubscriberQueue = 8
			}
		},
		ConfigureAPI: func(i int, cfg *transport.APIConfig) {
			cfg.Metrics = tm[i]
			switch i {
			case smallQueue:
				cfg.WriteTimeout = 5 * time.Minute // the hub drops the socket first
			case shortTimeout:
				cfg.WriteTimeout = 300 * time.Millisecond
			}
		},
	})
	metricsOf := func(i int) families {
		t.Helper()
		fs, err := gather(regs[i])
		if err != nil {
			t.Fatal(err)
		}
		return fs
	}
	expect := func(check func(fs [3]families) error) {
		t.Helper()
		testcluster.Eventually(t, metricsWait, func() error {
			var fs [3]families
			for i := range fs {
				fs[i] = metricsOf(i)
			}
			return check(fs)
		})
	}
	hc := httpFrom("127.0.0.96")
	leader := c.WaitLeader(metricsWait)
	follower := (leader + 1) % 3
	before := metricsOf(follower)

	// A write and a linearizable read through a follower.
	id := createSession(t, hc, c.Members[follower].HTTPAddr)
	ctx, cancel := context.WithTimeout(context.Background(), metricsWait)
	defer cancel()
	if b, code, err := testcluster.HTTPDo(ctx, hc, http.MethodGet, c.Members[follower].URL()+"/api/sessions/"+id, "", nil); err != nil || code != http.StatusOK {
		t.Fatalf("read through the follower: HTTP %d %s %v", code, b, err)
	}
	expect(func(fs [3]families) error {
		w := &want{}
		f := fs[follower]
		w.atLeast(f.value("chorus_forward_requests_total", "rpc", "command", "outcome", "ok")-
			before.value("chorus_forward_requests_total", "rpc", "command", "outcome", "ok"), 1, "commands forwarded")
		w.atLeast(f.value("chorus_forward_requests_total", "rpc", "read_index", "outcome", "ok")-
			before.value("chorus_forward_requests_total", "rpc", "read_index", "outcome", "ok"), 1, "read indexes forwarded")
		w.atLeast(f.value("chorus_submit_seconds", "path", "forwarded")-before.value("chorus_submit_seconds", "path", "forwarded"), 1, "forwarded submits")
		w.atLeast(fs[leader].value("chorus_raft_commit_seconds"), 1, "the leader's commits")
		for i := range fs {
			w.atLeast(fs[i].value("chorus_fsm_apply_seconds"), 1, c.Members[i].ID+"'s applied batches")
		}
		return w.err()
	})

	// Slow consumers: one socket that never reads on each of two members,
	// and a player on the third that sends big broadcasts and reads them.
	var slow []*wsConn
	for _, i := range []int{smallQueue, shortTimeout} {
		ws, _, err := dialWS(t, httpFrom("127.0.0.9"+strconv.Itoa(7+i)), c.Members[i].HTTPAddr, id)
		if err != nil {
			t.Fatal(err)
		}
		slow = append(slow, ws)
	}
	sender, _, err := dialWS(t, httpFrom("127.0.0.100"), c.Members[2].HTTPAddr, id)
	if err != nil {
		t.Fatal(err)
	}
	var drained sync.WaitGroup
	drained.Add(1)
	go func() { // the sender reads what it is sent until its socket closes
		defer drained.Done()
		for {
			if _, _, err := sender.conn.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	dropped := func() error {
		w := &want{}
		w.atLeast(metricsOf(smallQueue).value("chorus_slow_subscribers_dropped_total"), 1, "slow subscribers dropped")
		w.atLeast(metricsOf(shortTimeout).value("chorus_ws_write_timeouts_total"), 1, "write timeouts")
		return w.err()
	}
	sent := 0
	pad := strings.Repeat("x", 30000) // a 60 KB broadcast fills the kernel's buffers quickly
	for deadline := time.Now().Add(metricsWait); dropped() != nil; sent++ {
		if time.Now().After(deadline) {
			t.Fatalf("after %d broadcasts: %v", sent, dropped())
		}
		msg := fmt.Sprintf(`{"type":"set_track_sample","trackId":"track-1","sampleId":"%d-%s","name":"%s"}`, sent, pad, pad)
		if err := sender.send(msg); err != nil {
			t.Fatalf("after %d broadcasts the sender failed (%v), and %v", sent, err, dropped())
		}
	}
	t.Logf("the slow sockets were dropped after at most %d broadcasts", sent)
	for _, ws := range slow {
		ws.conn.CloseNow()
	}
	sender.conn.CloseNow()
	drained.Wait()

	// A write through the follower while its leader is cut off: the
	// forward fails and is retried until a new leader takes it.
	// The follower notices the loss only after its heartbeat timeout, so
	// its first attempts go to the old leader.
	failedForwards := func(fs families) float64 {
		return fs.total("chorus_forward_requests_total") - fs.value("chorus_forward_requests_total", "rpc", "command", "outcome", "ok") -
			fs.value("chorus_forward_requests_total", "rpc", "read_index", "outcome", "ok")
	}
	leader = c.WaitLeader(metricsWait) // it may have moved under the load above
	follower = (leader + 1) % 3
	testcluster.Eventually(t, metricsWait, func() error {
		if got := c.Members[follower].Node().Status().Leader.ID; got != c.Members[leader].ID {
			return fmt.Errorf("%s sees leader %q, want %s", c.Members[follower].ID, got, c.Members[leader].ID)
		}
		return nil
	})
	before = metricsOf(follower)
	c.Isolate(leader)
	id2 := createSession(t, hc, c.Members[follower].HTTPAddr)
	c.Heal()
	after := metricsOf(follower)
	w := &want{}
	w.atLeast(after.total("chorus_request_retries_total")-before.total("chorus_request_retries_total"), 1, "retries")
	w.atLeast(failedForwards(after)-failedForwards(before), 1, "forwards that failed")
	submits := func(fs families) float64 {
		return fs.value("chorus_submit_seconds", "path", "local") + fs.value("chorus_submit_seconds", "path", "forwarded")
	}
	w.atLeast(submits(after)-submits(before), 1, "submits") // the follower may have been elected itself
	var counts []string
	for _, name := range []string{"chorus_request_retries_total", "chorus_forward_requests_total"} {
		for _, m := range after[name].Metric {
			if v := m.GetCounter().GetValue(); v > 0 {
				counts = append(counts, fmt.Sprintf("%s%s=%v", name, labelKey(m), v))
			}
		}
	}
	t.Logf("session %s created through %s with the leader cut off; %v", id2, c.Members[follower].ID, counts)
	if err := w.err(); err != nil {
		t.Fatal(err)
	}
}
