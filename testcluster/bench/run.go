package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"chorus/testcluster"
)

// The scenarios, in the order a run takes them.
const (
	ScenarioSteady   = "steady"
	ScenarioBurst    = "burst"
	ScenarioFanout   = "fanout"
	ScenarioIdle     = "idle"
	ScenarioFailover = "failover"
	ScenarioRestart  = "restart"
)

// AllScenarios is every scenario, in run order.
var AllScenarios = []string{ScenarioSteady, ScenarioBurst, ScenarioFanout, ScenarioIdle, ScenarioFailover, ScenarioRestart}

// ownCluster lists the scenarios that need a cluster of their own: they kill,
// restart or measure the memory of node processes.
var ownCluster = []string{ScenarioIdle, ScenarioFailover, ScenarioRestart}

// ErrBadOptions wraps every error about the options themselves.
var ErrBadOptions = errors.New("bad options")

// Sizes are the scenarios' dimensions.
type Sizes struct {
	// steady: Sessions × Players, Rate mutations per second per session,
	// measured for Duration after Warmup.
	Sessions, Players int
	Rate              float64
	Duration, Warmup  time.Duration
	// burst: each count of writers sends as fast as acknowledgements allow,
	// one session each, for BurstTime per run; Repeats runs of chorus and of
	// each baseline, interleaved, of which the median counts.
	Writers   []int
	BurstTime time.Duration
	Repeats   int
	// fanout: one session of FanoutPlayers players, all writing as fast as
	// acknowledgements allow, for BurstTime per run, Repeats runs.
	FanoutPlayers int
	// idle: IdleSockets sockets (10 per session) on one node, IdleRate
	// mutations per second into random sessions, for IdleTime.
	IdleSockets int
	IdleRate    float64
	IdleTime    time.Duration
	// failover: Rounds SIGKILLs of the leader under the steady load of
	// FailoverSessions sessions.
	Rounds           int
	FailoverSessions int
	// restart: RestartSessions sessions, then a snapshot and a restart of every node.
	RestartSessions int
}

// Standard returns the sizes of the standard scenarios (make bench).
func Standard() Sizes {
	return Sizes{
		Sessions: 100, Players: 5, Rate: 20, Duration: 20 * time.Second, Warmup: 3 * time.Second,
		Writers: []int{64, 256}, BurstTime: 5 * time.Second, Repeats: 3,
		FanoutPlayers: 10,
		IdleSockets:   10_000, IdleRate: 10, IdleTime: 10 * time.Second,
		Rounds: 10, FailoverSessions: 30,
		RestartSessions: 100_000,
	}
}

// Quick returns sizes for a smoke run of every scenario in well under a minute.
func Quick() Sizes {
	return Sizes{
		Sessions: 6, Players: 3, Rate: 10, Duration: 2 * time.Second, Warmup: 500 * time.Millisecond,
		Writers: []int{8}, BurstTime: time.Second, Repeats: 1,
		FanoutPlayers: 4,
		IdleSockets:   100, IdleRate: 5, IdleTime: time.Second,
		Rounds: 1, FailoverSessions: 4,
		RestartSessions: 300,
	}
}

// Options configure a run.
type Options struct {
	Binary string // the chorus binary the nodes run; required unless Targets is set
	Dir    string // data dirs and node logs; required unless Targets is set
	// Targets are the HTTP addresses of a running cluster to load instead of
	// starting one. Only steady, burst and fanout can run against it, and
	// without the baselines or memory figures.
	Targets []string
	// FirstIP is the last octet of the first loopback address: the cluster
	// takes FirstIP to FirstIP+2, the one-node baseline FirstIP+3 and bare
	// raft FirstIP+4 to FirstIP+6. Default 31.
	FirstIP   int
	Scenarios []string // default AllScenarios
	Sizes     Sizes    // zero: Standard()
	Seed      uint64   // of the load's choices; 0 picks one from the clock
	Out       io.Writer
	Live      bool // rewrite one progress line in place (a terminal)
	KeepData  bool // keep the nodes' data dirs
	// NodeArgs are added to every chorus serve command line the run starts
	// (after its own), e.g. to try another --commit-timeout.
	NodeArgs []string
}

func (o *Options) fill() error {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.FirstIP == 0 {
		o.FirstIP = 31
	}
	if o.FirstIP < 2 || o.FirstIP+6 > 254 {
		return fmt.Errorf("%w: first IP octet %d: the run needs 127.0.0.<first> to <first+6>", ErrBadOptions, o.FirstIP)
	}
	if len(o.Scenarios) == 0 {
		o.Scenarios = AllScenarios
	}
	for _, s := range o.Scenarios {
		if !slices.Contains(AllScenarios, s) {
			return fmt.Errorf("%w: unknown scenario %q; want some of %s", ErrBadOptions, s, strings.Join(AllScenarios, ","))
		}
		if len(o.Targets) > 0 && slices.Contains(ownCluster, s) {
			return fmt.Errorf("%w: scenario %s starts and kills its own nodes; it cannot run against --target", ErrBadOptions, s)
		}
	}
	if len(o.Targets) == 0 && (o.Binary == "" || o.Dir == "") {
		return fmt.Errorf("%w: Binary and Dir are required without Targets", ErrBadOptions)
	}
	if o.Sizes.Sessions == 0 {
		o.Sizes = Standard()
	}
	z := o.Sizes
	if z.Sessions < 1 || z.Players < 1 || z.Players > 10 || z.Rate <= 0 || z.Duration <= 0 || z.Repeats < 1 ||
		z.BurstTime <= 0 || len(z.Writers) == 0 || z.FanoutPlayers < 2 || z.FanoutPlayers > 10 ||
		z.IdleSockets < 10 || z.IdleRate <= 0 || z.Rounds < 1 || z.FailoverSessions < 1 || z.RestartSessions < 1 {
		return fmt.Errorf("%w: sizes %+v: every count must be positive, players per session at most 10 (the protocol's room size), idle sockets at least 10", ErrBadOptions, z)
	}
	for _, w := range z.Writers {
		if w < 1 {
			return fmt.Errorf("%w: writers %d: must be positive", ErrBadOptions, w)
		}
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	return nil
}

// runner is one run's shared state.
type runner struct {
	opts  Options
	hc    *http.Client
	start time.Time
	rep   *Report

	outMu sync.Mutex
}

// Run runs the scenarios and returns their figures. Scenarios that start
// nodes give each its own cluster under opts.Dir, and stop it before the
// next one.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	r := &runner{
		opts:  opts,
		hc:    &http.Client{Timeout: httpTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 256}},
		start: time.Now(),
		rep:   &Report{Started: time.Now(), Machine: machine(), Scenarios: opts.Scenarios},
	}
	defer r.hc.CloseIdleConnections()
	if len(opts.Targets) == 0 {
		unlock, err := testcluster.LockAddrs(opts.FirstIP, 7)
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		defer unlock()
		if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
	}
	r.say("seed %d; scenarios %s", opts.Seed, strings.Join(opts.Scenarios, ", "))
	for _, name := range AllScenarios {
		if !slices.Contains(opts.Scenarios, name) {
			continue
		}
		figs, err := r.scenario(ctx, name)
		for i := range figs {
			figs[i].Scenario = name
			figs[i].judge()
		}
		r.rep.Figures = append(r.rep.Figures, figs...)
		if err != nil {
			r.rep.Took = time.Since(r.start)
			return r.rep, fmt.Errorf("bench: %s: %w", name, err)
		}
	}
	r.rep.Took = time.Since(r.start)
	return r.rep, nil
}

func (r *runner) scenario(ctx context.Context, name string) ([]Figure, error) {
	switch name {
	case ScenarioSteady:
		return r.steady(ctx)
	case ScenarioBurst:
		return r.burst(ctx)
	case ScenarioFanout:
		return r.fanout(ctx)
	case ScenarioIdle:
		return r.idle(ctx)
	case ScenarioFailover:
		return r.failover(ctx)
	default:
		return r.restart(ctx)
	}
}

// say prints one progress line, with the time since the run began.
func (r *runner) say(format string, args ...any) {
	r.outMu.Lock()
	defer r.outMu.Unlock()
	line := fmt.Sprintf("[%6.1fs] ", time.Since(r.start).Seconds()) + fmt.Sprintf(format, args...)
	if r.opts.Live {
		fmt.Fprintf(r.opts.Out, "\r\033[K%s", line)
		return
	}
	fmt.Fprintln(r.opts.Out, line)
}

// sayDone ends a live progress line, so that the next output starts on its own line.
func (r *runner) sayDone() {
	if r.opts.Live {
		r.outMu.Lock()
		fmt.Fprintln(r.opts.Out)
		r.outMu.Unlock()
	}
}

// cluster is the nodes a scenario loads: its own processes, or the targets.
type cluster struct {
	procs *testcluster.Procs // nil for targets
	addrs []string
	dir   string
	keep  bool
}

// startCluster starts nodes chorus serve processes for scenario name on
// 127.0.0.(firstIP+offset)..., with the rate limits off (DESIGN.md §9), or
// returns the targets.
func (r *runner) startCluster(ctx context.Context, name string, nodes, offset int) (*cluster, error) {
	if len(r.opts.Targets) > 0 {
		return &cluster{addrs: r.opts.Targets}, nil
	}
	dir := filepath.Join(r.opts.Dir, name+"-"+strconv.Itoa(nodes)+"n")
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	args := append([]string{"--ws-rate", "0", "--create-rate", "0", "--max-conns-per-ip", "0", "--log-level", "warn"}, r.opts.NodeArgs...)
	procs, err := testcluster.StartProcs(ctx, testcluster.ProcOptions{
		Binary: r.opts.Binary, Dir: dir, Nodes: nodes, FirstIP: r.opts.FirstIP + offset, ExtraArgs: args,
	})
	if err != nil {
		return nil, fmt.Errorf("start %d nodes: %w", nodes, err)
	}
	c := &cluster{procs: procs, dir: dir, keep: r.opts.KeepData}
	for _, n := range procs.Nodes {
		c.addrs = append(c.addrs, n.HTTPAddr)
	}
	if err := c.ready(ctx, 30*time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// ready waits until every node answers /readyz.
func (c *cluster) ready(ctx context.Context, within time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	return testcluster.Poll(within, func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		for i, a := range c.addrs {
			if c.procs != nil && !c.procs.Running(i) {
				continue
			}
			_, status, err := testcluster.HTTPDo(ctx, hc, http.MethodGet, "http://"+a+"/readyz", "", nil)
			if err != nil || status != http.StatusOK {
				return fmt.Errorf("%s not ready: HTTP %d %v", a, status, err)
			}
		}
		return nil
	})
}

// stop stops the processes and removes their data unless asked to keep it.
func (c *cluster) stop() {
	if c.procs == nil {
		return
	}
	c.procs.Close()
	if !c.keep {
		_ = os.RemoveAll(c.dir) // best effort; the data is scratch
	}
}

// rssKiB returns node i's resident set size in KiB, from /proc.
func (c *cluster) rssKiB(i int) (float64, error) {
	pid := c.procs.PID(i)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("read the RSS of %s: %w", c.procs.Nodes[i].ID, err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("parse the RSS of %s: %q", c.procs.Nodes[i].ID, rest)
			}
			return kb, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for %s", c.procs.Nodes[i].ID)
}

// rssFigures are each node's RSS in MiB.
func (c *cluster) rssFigures(what string) []Figure {
	if c.procs == nil {
		return nil
	}
	var out []Figure
	for i, n := range c.procs.Nodes {
		if !c.procs.Running(i) {
			continue
		}
		kb, err := c.rssKiB(i)
		if err != nil {
			continue
		}
		out = append(out, Figure{Name: strings.TrimSpace("RSS " + n.ID + " " + what), Value: kb / 1024, Unit: "MiB"})
	}
	return out
}
