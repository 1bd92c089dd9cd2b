package chaos

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"chorus/testcluster"
	"chorus/testcluster/check"
)

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
// then every checker. The seed is logged; TESTCLUSTER_SEED replays it.
func TestChaosRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the chaos run takes about a minute")
	}
	seed := envInt(t, "TESTCLUSTER_SEED", time.Now().UnixNano()%1_000_000_000)
	secs := envInt(t, "CHORUS_CHAOS_SECONDS", 30)
	t.Logf("seed %d (replay with TESTCLUSTER_SEED=%d)", seed, seed)
	bin, err := testcluster.BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second+4*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{Binary: bin, Dir: dir, Seed: seed, Duration: time.Duration(secs) * time.Second,
		Nemeses: AllNemeses, Out: testcluster.LogWriter(t)})
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
	checkPlanted(t, rep.History)
	counts := map[string]string{"lost-writes": "registers", "seq-monotonic": "deliveries", "convergence": "states",
		"linearizable": "ops", "no-double-apply": "ops", "no-silent-skip": "deliveries"}
	for _, r := range rep.Results {
		if k := counts[r.Name]; r.Counts[k] == 0 {
			t.Errorf("checker %s saw no %s: %v", r.Name, k, r.Counts)
		}
	}
}

// checkPlanted plants one violation of each kind into copies of a real,
// valid history and asserts that the matching checker reports it. It proves the run's checkers look
// at what the harness recorded, not just at synthetic histories.
func checkPlanted(t *testing.T, h *check.History) {
	t.Helper()
	raw, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	fresh := func() *check.History {
		c, err := check.Unmarshal(raw)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// lastWrite finds the acked write with the highest seq.
	lastWrite := func(h *check.History) check.Op {
		var w check.Op
		for _, o := range h.Ops {
			if o.IsWrite() && o.Outcome == check.OK && o.Seq > w.Seq && o.Kind != check.KindToggleStep {
				w = o
			}
		}
		if w.Seq == 0 {
			t.Fatal("no acked write with a seq to plant violations around")
		}
		return w
	}
	// chain finds a connection with three consecutive broadcasts.
	chain := func(h *check.History) int {
		for i := 2; i < len(h.Deliveries); i++ {
			a, b, c := h.Deliveries[i-2], h.Deliveries[i-1], h.Deliveries[i]
			if a.Client == c.Client && a.Conn == c.Conn && b.Client == c.Client && b.Conn == c.Conn &&
				a.Type != check.TypeSnapshot && b.Type != check.TypeSnapshot && c.Type != check.TypeSnapshot {
				return i - 1
			}
		}
		t.Fatal("no connection with three broadcasts in a row")
		return 0
	}
	for _, tt := range []struct {
		checker string
		plant   func(h *check.History)
	}{
		{"lost-writes", func(h *check.History) {
			w := lastWrite(h)
			for i := range h.Final {
				if h.Final[i].Session == w.Session {
					h.Final[i].Registers[w.Key] = "planted: lost"
				}
			}
		}},
		{"seq-monotonic", func(h *check.History) {
			i := chain(h)
			d := h.Deliveries[i+1]
			d.Seq = h.Deliveries[i].Seq - 1
			h.Deliveries = append(h.Deliveries, d)
		}},
		{"convergence", func(h *check.History) {
			for i := range h.Final {
				if h.Final[i].Session != wholeState {
					h.Final[i].Snapshot = append([]byte("planted"), h.Final[i].Snapshot...)
					return
				}
			}
		}},
		{"linearizable", func(h *check.History) {
			w := lastWrite(h)
			at := w.Complete.Add(time.Second)
			h.Ops = append(h.Ops, check.Op{Client: 999, Session: w.Session, Kind: check.KindRead, Key: w.Key,
				Value: "planted: never written", Invoke: at, Complete: at.Add(time.Millisecond), Outcome: check.OK})
		}},
		{"no-double-apply", func(h *check.History) {
			for _, d := range h.Deliveries {
				if d.ClientSeq != 0 && d.Type != check.TypeSnapshot {
					d.Seq += 1_000_000
					d.Client, d.Conn = 999, 0
					h.Deliveries = append(h.Deliveries, d)
					return
				}
			}
			t.Fatal("no acknowledged broadcast")
		}},
		{"no-silent-skip", func(h *check.History) {
			i := chain(h)
			h.Deliveries = append(h.Deliveries[:i], h.Deliveries[i+1:]...)
		}},
	} {
		h := fresh()
		tt.plant(h)
		for _, r := range check.CheckAll(h) {
			if r.Name == tt.checker && r.Valid {
				t.Errorf("planted a %s violation in the recorded history, but the checker passed it: %v", tt.checker, r.Counts)
			}
		}
	}
}
