package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"chorus/testcluster"
)

// TestQuickRun runs every scenario at the quick sizes against real node
// processes and checks that each produced its figures, sane ones, and left
// no process or data behind.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real node processes")
	}
	bin, err := testcluster.BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var out bytes.Buffer
	rep, err := Run(t.Context(), Options{Binary: bin, Dir: dir, FirstIP: 2, Sizes: Quick(), Seed: 7, Out: &out})
	t.Logf("progress:\n%s", out.String())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var table bytes.Buffer
	if err := rep.Table(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", table.String())

	get := func(scenario, name string) Figure {
		t.Helper()
		i := slices.IndexFunc(rep.Figures, func(f Figure) bool { return f.Scenario == scenario && f.Name == name })
		if i < 0 {
			t.Fatalf("no figure %q in %s", name, scenario)
		}
		return rep.Figures[i]
	}
	positive := func(scenario, name string) {
		t.Helper()
		if v := get(scenario, name).Value; !(v > 0) || math.IsInf(v, 0) {
			t.Errorf("%s %s = %g, want a positive number", scenario, name, v)
		}
	}
	zero := func(scenario, name string) {
		t.Helper()
		if v := get(scenario, name).Value; v != 0 {
			t.Errorf("%s %s = %g, want 0", scenario, name, v)
		}
	}
	for _, name := range []string{"mutations acknowledged", "fan-out", "end-to-end p50", "end-to-end p99", "all sockets max",
		"join (snapshot) p50", "resume (?since=) p50", "RSS n1"} {
		positive(ScenarioSteady, name)
	}
	if f := get(ScenarioSteady, "mutations acknowledged"); f.Value < 0.5*Quick().Rate*float64(Quick().Sessions) {
		t.Errorf("steady acknowledged %g ops/s, want about %g", f.Value, Quick().Rate*float64(Quick().Sessions))
	}
	zero(ScenarioSteady, "sockets dropped")
	for _, name := range []string{"8 writers on the leader", "8 writers spread over the nodes", "8 writers on 1 node", "8 writers on the leader, acknowledgement p50"} {
		positive(ScenarioBurst, name)
	}
	for _, name := range []string{"8 writers on the leader", "8 writers spread over the nodes"} {
		if f := get(ScenarioBurst, name); f.Baseline != "bare raft" || !(f.BaselineValue > 0) || math.Abs(f.Ratio-f.Value/f.BaselineValue) > 1e-9 {
			t.Errorf("burst throughput against bare raft: %+v", f)
		}
	}
	if f := get(ScenarioBurst, "8 writers on the leader"); f.Met == nil {
		t.Errorf("the like-for-like burst figure has no judged target: %+v", f)
	}
	positive(ScenarioFanout, "fan-out")
	positive(ScenarioFanout, "all sockets p50")
	positive(ScenarioIdle, "memory per socket")
	zero(ScenarioIdle, "sockets dropped")
	positive(ScenarioFailover, "writes resume (median)")
	positive(ScenarioFailover, "all caught up (max)")
	zero(ScenarioFailover, "survivors' sockets dropped")
	if r, c := get(ScenarioFailover, "writes resume (max)").Value, get(ScenarioFailover, "all caught up (max)").Value; c < r {
		t.Errorf("every player caught up after %g ms, before the first write resumed at %g ms", c, r)
	}
	positive(ScenarioRestart, "restart: serving again")
	positive(ScenarioRestart, "sessions created")
	if f := get(ScenarioRestart, "snapshot: FSM stall (max)"); f.Value < 0 || f.Met == nil {
		t.Errorf("snapshot stall %+v, want a judged figure", f)
	}

	// The figures survive JSON for scripts.
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || len(back.Figures) != len(rep.Figures) {
		t.Errorf("JSON round trip: %v, %d figures, want %d", err, len(back.Figures), len(rep.Figures))
	}

	// Every cluster's data is gone (KeepData is off).
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			if files, _ := filepath.Glob(filepath.Join(dir, e.Name(), "n*", "*")); len(files) > 0 {
				t.Errorf("%s still holds node data: %v", e.Name(), files)
			}
		}
	}
}

// TestInterrupted cancels a run once its load runs: Run returns soon with
// an error, its nodes are stopped and its addresses free (goleak checks the
// goroutines).
func TestInterrupted(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real node processes")
	}
	bin, err := testcluster.BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testcluster.Context(t, 2*time.Minute))
	defer cancel()
	sizes := Quick()
	sizes.Duration = 10 * time.Minute
	out := &cancelOn{text: "broadcasts/s received", cancel: cancel}
	_, err = Run(ctx, Options{Binary: bin, Dir: t.TempDir(), FirstIP: 2, Sizes: sizes, Scenarios: []string{ScenarioSteady}, Out: out})
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want the cancellation", err)
	}
	if !out.seen() {
		t.Fatal("the run ended before its load ran")
	}
	unlock, err := testcluster.LockAddrs(2, 7)
	if err != nil {
		t.Fatalf("the run still holds its addresses: %v", err)
	}
	unlock()
}

// cancelOn calls cancel when a progress line contains text.
type cancelOn struct {
	text   string
	cancel context.CancelFunc
	mu     sync.Mutex
	hit    bool
}

func (c *cancelOn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.hit && strings.Contains(string(p), c.text) {
		c.hit = true
		c.cancel()
	}
	return len(p), nil
}

func (c *cancelOn) seen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hit
}
