package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"chorus/testcluster/chaos"
)

// chaosInvalidExitCode is chorus chaos's status when a checker failed;
// chaosErrorExitCode when the run itself could not be done.
const (
	chaosInvalidExitCode = 1
	chaosErrorExitCode   = 3
)

const chaosAbout = `Runs the chaos-test harness: starts real chorus serve processes of this
binary on 127.0.0.11, .12, .13 ... with fresh data dirs, drives WebSocket and
HTTP clients against them while the nemeses kill, pause, partition and
reconfigure the nodes, heals everything, and checks the recorded history: no
acknowledged write lost, seq never going back, all nodes converged, every
register linearizable, nothing applied twice, no socket skipped silently.

It prints a progress line while it runs and a summary at the end, and writes
history.json, report.html (latency over time with the faults shaded) and
summary.txt into --dir, next to every node's log. The partition nemesis needs
root and iptables; without them it is skipped with a message. Every iptables
rule it adds carries the comment chorus-chaos-... and is removed at the end,
on Ctrl-C, and by the next run if this one was killed.

--seed replays the same schedule of choices (timing still differs from run
to run). Exit status: 0 when every checker passed, 1 when one failed, 2 for a
bad command line, 3 when the run could not be carried out.
Every flag has a CHORUS_* twin (CHORUS_SEED, CHORUS_DURATION, ...).`

func chaosCmd(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("chorus chaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	seed := fs.Int64("seed", 0, "seed of the workload's and the nemeses' choices; 0 picks one from the clock (printed, so the run can be replayed)")
	duration := fs.Duration("duration", 60*time.Second, "how long the workload and the nemeses run")
	nodes := fs.Int("nodes", 3, "number of nodes (3 or 5 are the usual choices)")
	clients := fs.Int("clients", 12, "number of WebSocket clients, spread over the nodes")
	sessions := fs.Int("sessions", 0, "number of sessions the clients share; 0 means one per 4 clients")
	nemesis := fs.String("nemesis", "all", "faults to inject: a comma-separated list of kill,pause,partition,transfer,member, or all, or none")
	dir := fs.String("dir", "", "directory for the nodes' data and logs and the reports (default chaos-runs/<time>-seed<seed>)")
	binary := fs.String("binary", "", "the chorus binary the nodes run (default: this one)")
	firstIP := fs.Int("first-ip", 11, "last octet of node 1's loopback address; the other nodes take the next ones")
	keepData := fs.Bool("keep-data", false, "keep the nodes' data dirs after a valid run (they are always kept after an invalid one)")
	if help, err := parseCommand(fs, args, getenv, "chorus chaos [flags]", chaosAbout); help || err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{code: usageExitCode, err: fmt.Errorf("chaos: unexpected argument %q", fs.Arg(0))}
	}
	kinds, err := chaos.ParseNemeses(*nemesis)
	if err != nil {
		return &exitError{code: usageExitCode, err: fmt.Errorf("--nemesis: %w", err)}
	}
	if *seed == 0 {
		*seed = time.Now().UnixNano() % 1_000_000_000
	}
	if *dir == "" {
		*dir = filepath.Join("chaos-runs", time.Now().Format("20060102-150405")+fmt.Sprintf("-seed%d", *seed))
	}
	if *binary == "" {
		if *binary, err = os.Executable(); err != nil {
			return &exitError{code: chaosErrorExitCode, err: fmt.Errorf("chaos: find this binary: %w", err)}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first Ctrl-C the run cleans up; a second one kills chorus
	// at once (the next run removes any iptables rules left behind).
	context.AfterFunc(ctx, stop)
	rep, err := chaos.Run(ctx, chaos.Options{
		Binary: *binary, Dir: *dir, Seed: *seed, Duration: *duration, Nodes: *nodes, Clients: *clients,
		Sessions: *sessions, Nemeses: kinds, FirstIP: *firstIP, Out: stdout, Live: isTerminal(stdout),
	})
	switch {
	case errors.Is(err, chaos.ErrBadOptions):
		return &exitError{code: usageExitCode, err: err}
	case errors.Is(err, chaos.ErrInterrupted):
		return &exitError{code: chaosErrorExitCode, err: fmt.Errorf("chaos: interrupted; the cluster is stopped, nothing was checked; logs in %s", *dir)}
	case err != nil && rep == nil:
		return &exitError{code: chaosErrorExitCode, err: err}
	case err != nil:
		return &exitError{code: chaosErrorExitCode, err: fmt.Errorf("%w (logs in %s)", err, *dir)}
	}
	fmt.Fprint(stdout, rep.Summary())
	fmt.Fprintf(stdout, "\nreport: %s\nhistory: %s\n", filepath.Join(*dir, "report.html"), filepath.Join(*dir, "history.json"))
	if !rep.Valid {
		return &exitError{code: chaosInvalidExitCode, err: fmt.Errorf("chaos: the history is not valid (seed %d); see %s", *seed, filepath.Join(*dir, "summary.txt"))}
	}
	if !*keepData {
		for id := range rep.Logs {
			if err := os.RemoveAll(filepath.Join(*dir, "nodes", id)); err != nil {
				fmt.Fprintf(stderr, "chorus chaos: remove %s's data: %v\n", id, err)
			}
		}
	}
	return nil
}

// isTerminal reports whether w is a character device, where a progress
// line can be rewritten in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
