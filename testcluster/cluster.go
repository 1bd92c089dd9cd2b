package testcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"chorus/node"
	"chorus/transport"
)

// Eventually polls cond every 10ms until it returns nil, and fails the test
// with cond's last error if that takes longer than within.
func Eventually(tb testing.TB, within time.Duration, cond func() error) {
	tb.Helper()
	if err := Poll(within, cond); err != nil {
		tb.Fatal(err)
	}
}

// Consistently checks cond every 10 ms for the whole of d and fails the
// test at the first error: something that must stay true, not become true.
func Consistently(tb testing.TB, d time.Duration, cond func() error) {
	tb.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		if err := cond(); err != nil {
			tb.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // poll interval only
	}
}

// Poll is Eventually without a test: it returns cond's last error after within.
func Poll(within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not true after %v: %w", within, err)
		}
		time.Sleep(10 * time.Millisecond) // poll interval only
	}
}

// Options configure an in-process cluster.
type Options struct {
	// Nodes is the cluster size; default 3.
	Nodes int
	// FirstIP is the last octet of the first node's loopback address
	// 127.0.0.FirstIP; node i gets FirstIP+i. Default 21.
	FirstIP int
	// Configure, when set, adjusts each node's config before it starts.
	Configure func(i int, cfg *node.Config)
	// LogLevel of the nodes' loggers, which write to the test log. Default warn
	// (CHORUS_TEST_LOG=debug overrides).
	LogLevel hclog.Level
	// HTTP serves each node's Keyboardia API, admin routes and web client on
	// its own address (Member.HTTPAddr, fixed across restarts).
	HTTP bool
	// ConfigureAPI, when set, adjusts each node's API config (HTTP only).
	// The defaults: no create or message rate limit, the built-in web client.
	ConfigureAPI func(i int, cfg *transport.APIConfig)
	// AdminToken for the admin routes (HTTP only). Default "test-admin-token".
	AdminToken string
}

// Member is one node of an in-process cluster.
type Member struct {
	Index    int
	ID       string
	DataDir  string
	PeerAddr string // fixed for the life of the cluster, across restarts
	HTTPAddr string // with Options.HTTP: the client address, fixed across restarts

	mu     sync.Mutex // guards node, api, srv, served
	node   *node.Node
	api    *transport.API
	srv    *http.Server
	served chan error
}

// API returns the running node's HTTP API, or nil.
func (m *Member) API() *transport.API {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.api
}

// URL returns the member's HTTP base URL, "http://host:port".
func (m *Member) URL() string { return "http://" + m.HTTPAddr }

// Node returns the running node, or nil while the member is down.
func (m *Member) Node() *node.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.node
}

// Cluster is N real nodes in this process: real peer transport over TCP on
// their own loopback addresses, real bolt files with fsync in a temp dir.
type Cluster struct {
	tb      testing.TB
	opts    Options
	secret  []byte
	Faults  *transport.Faults
	Members []*Member
	log     hclog.Logger
}

// New starts a cluster and waits for a leader. It is stopped in tb.Cleanup.
func New(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.FirstIP == 0 {
		opts.FirstIP = 21
	}
	if opts.LogLevel == hclog.NoLevel {
		opts.LogLevel = hclog.Warn
	}
	if lvl := hclog.LevelFromString(os.Getenv("CHORUS_TEST_LOG")); lvl != hclog.NoLevel {
		opts.LogLevel = lvl
	}
	c := &Cluster{
		tb: tb, opts: opts, secret: []byte("test-cluster-secret"),
		Faults: transport.NewFaults(),
		log: hclog.New(&hclog.LoggerOptions{
			Name: "tc", Level: opts.LogLevel, Output: &testWriter{tb: tb},
			TimeFormat: "15:04:05.000",
		}),
	}
	dir := tb.TempDir()
	var held []net.Listener // keeps chosen ports taken until all are chosen, so no two are equal
	for i := 0; i < opts.Nodes; i++ {
		ip := "127.0.0." + strconv.Itoa(opts.FirstIP+i)
		c.Members = append(c.Members, &Member{
			Index: i, ID: "n" + strconv.Itoa(i+1),
			DataDir:  filepath.Join(dir, "n"+strconv.Itoa(i+1)),
			PeerAddr: net.JoinHostPort(ip, strconv.Itoa(freePort(tb, ip, &held))),
		})
		if opts.HTTP {
			c.Members[i].HTTPAddr = net.JoinHostPort(ip, strconv.Itoa(freePort(tb, ip, &held)))
		}
	}
	for _, ln := range held {
		ln.Close()
	}
	tb.Cleanup(c.Close)
	for i := range c.Members {
		c.Start(i)
	}
	c.WaitLeader(10 * time.Second)
	return c
}

// freePort finds a port that is free on ip now. The cluster keeps it across
// restarts, so a node comes back at the address raft knows.
func freePort(tb testing.TB, ip string, held *[]net.Listener) int {
	tb.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		tb.Fatalf("find a free port on %s: %v", ip, err)
	}
	*held = append(*held, ln)
	return ln.Addr().(*net.TCPAddr).Port
}

// Config returns the node config member i starts with.
func (c *Cluster) Config(i int) node.Config {
	m := c.Members[i]
	var peers []node.Peer
	for _, p := range c.Members {
		peers = append(peers, node.Peer{ID: p.ID, Addr: p.PeerAddr})
	}
	cfg := node.Config{
		ID: m.ID, DataDir: m.DataDir, PeerAddr: m.PeerAddr,
		HTTPAddr:      "http-" + m.ID, // without Options.HTTP, in-process clusters serve no HTTP
		Peers:         peers,
		ClusterSecret: c.secret,
		Logger:        c.log.Named(m.ID),
		Faults:        c.Faults,
	}
	if c.opts.HTTP {
		cfg.HTTPAddr = m.HTTPAddr
	}
	if c.opts.Configure != nil {
		c.opts.Configure(i, &cfg)
	}
	return cfg
}

// Start starts member i on its data dir (first start or restart).
func (c *Cluster) Start(i int) {
	c.tb.Helper()
	c.start(i, nil)
}

// StartEmpty starts member i, which must be down, on an emptied data dir and
// without Peers: it bootstraps nothing and waits until a member of the
// cluster adds it (node.ChangeMember). It is how a replaced machine rejoins.
func (c *Cluster) StartEmpty(i int) {
	c.tb.Helper()
	m := c.Members[i]
	if m.Node() != nil {
		c.tb.Fatalf("start %s empty: it is running", m.ID)
	}
	if err := os.RemoveAll(m.DataDir); err != nil {
		c.tb.Fatalf("start %s empty: %v", m.ID, err)
	}
	c.start(i, func(cfg *node.Config) { cfg.Peers = nil })
}

// start starts member i with its config, adjusted by adjust when set.
func (c *Cluster) start(i int, adjust func(*node.Config)) {
	c.tb.Helper()
	m := c.Members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.node != nil {
		c.tb.Fatalf("start %s: already running", m.ID)
	}
	var n *node.Node
	// The port was free when chosen, and the previous incarnation's listener
	// may need a moment to be released: retry briefly.
	err := Poll(5*time.Second, func() error {
		var err error
		cfg := c.Config(i)
		if adjust != nil {
			adjust(&cfg)
		}
		n, err = node.New(cfg)
		return err
	})
	if err != nil {
		c.tb.Fatalf("start %s: %v", m.ID, err)
	}
	m.node = n
	if c.opts.HTTP {
		c.serveHTTP(m, n)
	}
}

// serveHTTP serves the node's API and admin routes on m.HTTPAddr.
func (c *Cluster) serveHTTP(m *Member, n *node.Node) {
	c.tb.Helper()
	var ln net.Listener
	if err := Poll(5*time.Second, func() error {
		var err error
		ln, err = net.Listen("tcp", m.HTTPAddr)
		return err
	}); err != nil {
		c.tb.Fatalf("start %s: listen http: %v", m.ID, err)
	}
	cfg := transport.APIConfig{Backend: n.API(), Logger: c.log.Named(m.ID), Static: transport.WebClient()}
	if c.opts.ConfigureAPI != nil {
		c.opts.ConfigureAPI(m.Index, &cfg)
	}
	api := transport.NewAPI(cfg)
	mux := http.NewServeMux()
	token := c.opts.AdminToken
	if token == "" {
		token = "test-admin-token"
	}
	transport.AdminHandler(mux, transport.AdminConfig{Cluster: n, AdminToken: token, Logger: c.log.Named(m.ID)})
	mux.Handle("/", api)
	m.api, m.srv, m.served = api, transport.NewServer(mux, nil, transport.ServerLimits{}), make(chan error, 1)
	go func(srv *http.Server, served chan error) { served <- srv.Serve(ln) }(m.srv, m.served)
}

// stopHTTP closes the member's sockets (1012) and HTTP server. The caller holds m.mu.
func (c *Cluster) stopHTTP(m *Member) {
	if m.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.api.Shutdown(ctx); err != nil {
		c.tb.Errorf("stop %s: close sockets: %v", m.ID, err)
	}
	_ = m.srv.Close() // Serve returns ErrServerClosed below; nothing else to report
	<-m.served
	m.api, m.srv, m.served = nil, nil, nil
}

// detach takes member m's node out of the cluster and stops its HTTP server;
// the caller stops the node. It returns nil if m was not running.
func (c *Cluster) detach(m *Member) *node.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.node
	m.node = nil
	c.stopHTTP(m)
	return n
}

// Kill stops member i at once: no leadership transfer, subscribers dropped.
func (c *Cluster) Kill(i int) {
	c.tb.Helper()
	m := c.Members[i]
	n := c.detach(m)
	if n == nil {
		return
	}
	if err := n.Close(); err != nil {
		c.tb.Errorf("kill %s: %v", m.ID, err)
	}
}

// Stop stops member i gracefully (node.Shutdown): a leader hands leadership
// to another voter first.
func (c *Cluster) Stop(i int) {
	c.tb.Helper()
	m := c.Members[i]
	n := c.detach(m)
	if n == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		c.tb.Errorf("stop %s: %v", m.ID, err)
	}
}

// Restart kills member i and starts it again on the same data.
func (c *Cluster) Restart(i int) {
	c.tb.Helper()
	c.Kill(i)
	c.Start(i)
}

// Close stops every member.
func (c *Cluster) Close() {
	var wg sync.WaitGroup
	for i := range c.Members {
		wg.Add(1)
		go func() { defer wg.Done(); c.Kill(i) }()
	}
	wg.Wait()
	c.Faults.Heal()
}

// Running returns the indexes of the members that are up.
func (c *Cluster) Running() []int {
	var out []int
	for i, m := range c.Members {
		if m.Node() != nil {
			out = append(out, i)
		}
	}
	return out
}

// Partition cuts every link between the two groups of member indexes, in
// both directions, for raft and RPC alike.
func (c *Cluster) Partition(a, b []int) {
	c.Faults.Partition(c.ids(a), c.ids(b))
}

// Isolate cuts member i off from every other member.
func (c *Cluster) Isolate(i int) {
	var rest []int
	for j := range c.Members {
		if j != i {
			rest = append(rest, j)
		}
	}
	c.Partition([]int{i}, rest)
}

// Heal removes every link fault.
func (c *Cluster) Heal() { c.Faults.Heal() }

func (c *Cluster) ids(idx []int) []string {
	var out []string
	for _, i := range idx {
		out = append(out, c.Members[i].ID)
	}
	return out
}

// LeaderIndex returns the member that running members agree is the leader
// and that itself believes it leads, or an error.
func (c *Cluster) LeaderIndex(among ...int) (int, error) {
	if len(among) == 0 {
		among = c.Running()
	}
	leader := -1
	for _, i := range among {
		n := c.Members[i].Node()
		if n == nil {
			continue
		}
		st := n.Status()
		if st.State == "leader" {
			if leader >= 0 {
				return -1, fmt.Errorf("two leaders: %s and %s", c.Members[leader].ID, st.ID)
			}
			leader = i
		}
	}
	if leader < 0 {
		return -1, errors.New("no leader")
	}
	for _, i := range among {
		if n := c.Members[i].Node(); n != nil && n.Status().Leader.ID != c.Members[leader].ID {
			return -1, fmt.Errorf("%s does not follow %s yet", c.Members[i].ID, c.Members[leader].ID)
		}
	}
	return leader, nil
}

// WaitLeader waits until the running members agree on a leader and returns it.
func (c *Cluster) WaitLeader(within time.Duration, among ...int) int {
	c.tb.Helper()
	var leader int
	Eventually(c.tb, within, func() error {
		var err error
		leader, err = c.LeaderIndex(among...)
		return err
	})
	return leader
}

// WaitApplied waits until every running member has applied at least index.
func (c *Cluster) WaitApplied(within time.Duration, index uint64) {
	c.tb.Helper()
	Eventually(c.tb, within, func() error {
		for _, i := range c.Running() {
			if got := c.Members[i].Node().AppliedIndex(); got < index {
				return fmt.Errorf("%s applied %d < %d", c.Members[i].ID, got, index)
			}
		}
		return nil
	})
}

// Context returns a context that ends with the test or after d.
func Context(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// LogWriter returns a writer that sends each line to tb's log; lines written
// after the test has finished go to stderr instead of panicking.
func LogWriter(tb testing.TB) io.Writer { return &testWriter{tb: tb} }

// testWriter sends log lines to the test log. Lines written after the test
// has finished go to stderr instead of panicking.
type testWriter struct {
	tb testing.TB
	mu sync.Mutex
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	line := strings.TrimRight(string(p), "\n")
	defer func() {
		if recover() != nil {
			_, _ = io.WriteString(os.Stderr, line+"\n") // the test is over; stderr is all that is left
		}
	}()
	w.tb.Log(line)
	return len(p), nil
}
