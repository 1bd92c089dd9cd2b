package chaos

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"chorus/testcluster"
)

// testLog writes progress lines to the test log.
type testLog struct {
	mu sync.Mutex
	tb testing.TB
}

func (w *testLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// envInt reads an integer knob of the test from the environment.
func envInt(tb testing.TB, name string, def int64) int64 {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		tb.Fatalf("%s=%q: %v", name, s, err)
	}
	return v
}

// TestChaosRun is the short chaos run of make test: three real node
// processes, every nemesis, 30 seconds of workload (CHORUS_CHAOS_SECONDS),
// then every checker. The seed is logged; CHORUS_CHAOS_SEED replays it.
func TestChaosRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the chaos run takes about a minute")
	}
	seed := envInt(t, "CHORUS_CHAOS_SEED", time.Now().UnixNano()%1_000_000_000)
	secs := envInt(t, "CHORUS_CHAOS_SECONDS", 30)
	t.Logf("seed %d (replay with CHORUS_CHAOS_SEED=%d)", seed, seed)
	bin, err := testcluster.BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second+4*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{Binary: bin, Dir: dir, Seed: seed, Duration: time.Duration(secs) * time.Second,
		Nemeses: AllNemeses, Out: &testLog{tb: t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + rep.Summary())
	if !rep.Valid {
		t.Fatalf("seed %d: the history is not valid; node logs: %v", seed, rep.Logs)
	}
	for _, name := range []string{"history.json", "report.html", "summary.txt"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The run must have exercised something: faults, acked writes, and
	// every checker looking at real data.
	kinds := map[string]int{}
	for _, f := range rep.Faults {
		kinds[f.Kind]++
		if f.End.Before(f.Start) || f.End.IsZero() {
			t.Errorf("fault %s %q was not healed: %v to %v", f.Kind, f.Detail, f.Start, f.End)
		}
	}
	if len(rep.Faults) < 2 {
		t.Errorf("only %d faults in %ds: %v", len(rep.Faults), secs, kinds)
	}
	ok := 0
	for _, o := range rep.History.Ops {
		if o.Outcome == "ok" && o.IsWrite() {
			ok++
		}
	}
	if ok < 100 {
		t.Errorf("only %d acknowledged writes", ok)
	}
	counts := map[string]string{"lost-writes": "registers", "seq-monotonic": "deliveries", "convergence": "states",
		"linearizable": "ops", "no-double-apply": "ops", "no-silent-skip": "deliveries"}
	for _, r := range rep.Results {
		if k := counts[r.Name]; r.Counts[k] == 0 {
			t.Errorf("checker %s saw no %s: %v", r.Name, k, r.Counts)
		}
	}
}
