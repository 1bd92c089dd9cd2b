package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"chorus/testcluster/bench"
)

// benchMissedExitCode is chorus bench's status with --strict when a target
// was missed; benchErrorExitCode when the run could not be done.
const (
	benchMissedExitCode = 1
	benchErrorExitCode  = 3
)

const benchAbout = `Runs the load generator. By default it starts real chorus serve processes of
this binary on 127.0.0.31, .32, .33 (the one-node baseline on .34, bare raft
on .35-.37), a fresh cluster per scenario, with their rate limits off, and
drives WebSocket players against them:

  steady    sessions × players editing at a set rate: end-to-end latency
            (send on one node → broadcast on every other player's socket,
            on every node), fan-out, join (snapshot) and ?since= resume
            costs, each node's RSS
  burst     64 and 256 writers as fast as acknowledgements allow, against
            three nodes, one node, and bare hashicorp/raft on the same
            stores with as many writers, in the same run
  fanout    one session of 10 players, all writing
  idle      10k idle sockets on one node with occasional broadcasts: RSS
            per socket
  failover  SIGKILL of the leader under steady load, 10 times: until writes
            resume, until every player is caught up, sockets kept
  restart   100k sessions: how long a snapshot stalls the FSM, and how soon
            all three nodes serve again after a restart

It prints a progress line while it runs and a table of figures, targets,
baselines and ratios at the end (--json prints JSON instead), and writes
report.json and report.txt into --dir. --target loads a running cluster
instead (steady, burst and fanout only; start it with --ws-rate 0
--create-rate 0 --max-conns-per-ip 0). --profile quick shrinks every scenario for a smoke test.
Exit status: 0 when the run completed (with --strict: and every target was
met), 1 with --strict when a target was missed, 2 for a bad command line,
3 when the run could not be carried out. Every flag has a CHORUS_* twin.`

func benchCmd(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("chorus bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenarios := fs.String("scenarios", "all", "comma-separated scenarios: "+strings.Join(bench.AllScenarios, ",")+", or all")
	profile := fs.String("profile", "standard", "scenario sizes: standard (the figures in BENCHMARKS.md) or quick (a smoke run)")
	target := fs.String("target", "", "comma-separated HTTP addresses (host:port) of a running cluster to load, instead of starting nodes")
	dir := fs.String("dir", "", "directory for the nodes' data and logs and the reports (default bench-runs/<time>)")
	binary := fs.String("binary", "", "the chorus binary the nodes run (default: this one)")
	firstIP := fs.Int("first-ip", 31, "last octet of the first loopback address; the run takes it and the next six")
	seed := fs.Uint64("seed", 0, "seed of the load's choices; 0 picks one from the clock")
	jsonOut := fs.Bool("json", false, "print the report as JSON on stdout (progress goes to stderr)")
	strict := fs.Bool("strict", false, "exit 1 when a figure misses its target")
	keepData := fs.Bool("keep-data", false, "keep the nodes' data dirs")
	nodeArgs := fs.String("node-args", "", `space-separated flags added to every node's chorus serve command line, e.g. "--commit-timeout 1ms"`)
	// Overrides of the profile's sizes; 0 keeps the profile's.
	sessions := fs.Int("sessions", 0, "steady: sessions (standard 100)")
	players := fs.Int("players", 0, "steady and failover: players per session, at most 10 (standard 5)")
	rate := fs.Float64("rate", 0, "steady and failover: mutations per second per session (standard 20)")
	duration := fs.Duration("duration", 0, "steady: how long the load is measured, after a warm-up (standard 20s)")
	writers := fs.String("writers", "", "burst: comma-separated writer counts (standard 64,256)")
	burstTime := fs.Duration("burst-time", 0, "burst and fanout: how long each run is measured (standard 5s)")
	repeats := fs.Int("repeats", 0, "burst and fanout: runs of each, of which the median counts (standard 3)")
	idleSockets := fs.Int("idle-sockets", 0, "idle: sockets on one node (standard 10000)")
	rounds := fs.Int("rounds", 0, "failover: leader kills (standard 10)")
	restartSessions := fs.Int("restart-sessions", 0, "restart: sessions (standard 100000)")
	if help, err := parseCommand(fs, args, getenv, "chorus bench [flags]", benchAbout); help || err != nil {
		return err
	}
	usage := func(err error) error { return &exitError{code: usageExitCode, err: fmt.Errorf("bench: %w", err)} }
	if fs.NArg() > 0 {
		return usage(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	opts := bench.Options{FirstIP: *firstIP, Seed: *seed, KeepData: *keepData, NodeArgs: strings.Fields(*nodeArgs)}
	switch *profile {
	case "standard":
		opts.Sizes = bench.Standard()
	case "quick":
		opts.Sizes = bench.Quick()
	default:
		return usage(fmt.Errorf("--profile %q: want standard or quick", *profile))
	}
	z := &opts.Sizes
	for _, o := range []struct {
		flag int
		to   *int
	}{{*sessions, &z.Sessions}, {*players, &z.Players}, {*repeats, &z.Repeats}, {*idleSockets, &z.IdleSockets}, {*rounds, &z.Rounds}, {*restartSessions, &z.RestartSessions}} {
		if o.flag != 0 {
			*o.to = o.flag
		}
	}
	if *rate != 0 {
		z.Rate = *rate
	}
	if *duration != 0 {
		z.Duration = *duration
	}
	if *burstTime != 0 {
		z.BurstTime = *burstTime
	}
	if *writers != "" {
		z.Writers = nil
		for _, w := range strings.Split(*writers, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(w))
			if err != nil || n < 1 {
				return usage(fmt.Errorf("--writers: %q is not a positive count", w))
			}
			z.Writers = append(z.Writers, n)
		}
	}
	if *scenarios != "all" {
		for _, s := range strings.Split(*scenarios, ",") {
			opts.Scenarios = append(opts.Scenarios, strings.TrimSpace(s))
		}
	}
	if *target != "" {
		for _, t := range strings.Split(*target, ",") {
			opts.Targets = append(opts.Targets, strings.TrimSpace(t))
		}
		if *scenarios == "all" {
			opts.Scenarios = []string{bench.ScenarioSteady, bench.ScenarioBurst, bench.ScenarioFanout}
		}
	}
	if *dir == "" {
		*dir = filepath.Join("bench-runs", time.Now().Format("20060102-150405"))
	}
	opts.Dir = *dir
	if *binary == "" {
		var err error
		if *binary, err = os.Executable(); err != nil {
			return &exitError{code: benchErrorExitCode, err: fmt.Errorf("bench: find this binary: %w", err)}
		}
	}
	opts.Binary = *binary
	progress := stdout
	if *jsonOut {
		progress = stderr
	}
	opts.Out, opts.Live = progress, isTerminal(progress)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second Ctrl-C kills chorus at once
	rep, err := bench.Run(ctx, opts)
	if errors.Is(err, bench.ErrBadOptions) {
		return usage(err)
	}
	if rep == nil {
		return &exitError{code: benchErrorExitCode, err: err}
	}
	if werr := writeBenchReports(*dir, rep); werr != nil {
		err = errors.Join(err, werr)
	}
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(rep); jerr != nil {
			return jerr
		}
	} else {
		fmt.Fprintln(stdout)
		if terr := rep.Table(stdout); terr != nil {
			return terr
		}
		fmt.Fprintf(stdout, "report: %s\n", filepath.Join(*dir, "report.json"))
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("bench: interrupted; the figures above are those measured so far: %w", err)
		}
		return &exitError{code: benchErrorExitCode, err: err}
	}
	if missed := rep.Missed(); *strict && len(missed) > 0 {
		return &exitError{code: benchMissedExitCode, err: fmt.Errorf("bench: %d figures missed their targets", len(missed))}
	}
	return nil
}

// writeBenchReports writes report.json and report.txt into dir.
func writeBenchReports(dir string, rep *bench.Report) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(b, '\n'), 0o640); err != nil {
		return err
	}
	var txt strings.Builder
	if err := rep.Table(&txt); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.txt"), []byte(txt.String()), 0o640)
}
