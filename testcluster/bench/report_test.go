package bench

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestPercentileAndMedian(t *testing.T) {
	ds := func(msList ...int) []time.Duration {
		var out []time.Duration
		for _, m := range msList {
			out = append(out, time.Duration(m)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		name string
		in   []time.Duration
		p    float64
		want float64
	}{
		{"empty", nil, 0.5, math.NaN()},
		{"one", ds(7), 0.99, 7},
		{"p50 of 1..10", ds(10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 0.5, 5},
		{"p99 of 1..100 is 99", ds(seq(100)...), 0.99, 99},
		{"max", ds(3, 1, 2), 1, 3},
		{"p0 is the least", ds(3, 1, 2), 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := percentile(tt.in, tt.p)
			if !(got == tt.want || math.IsNaN(got) && math.IsNaN(tt.want)) {
				t.Errorf("percentile(%v, %g) = %g, want %g", tt.in, tt.p, got, tt.want)
			}
		})
	}
	for _, tt := range []struct {
		in   []float64
		want float64
	}{{nil, math.NaN()}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(tt.in); !(got == tt.want || math.IsNaN(got) && math.IsNaN(tt.want)) {
			t.Errorf("median(%v) = %g, want %g", tt.in, got, tt.want)
		}
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i + 1
	}
	return out
}

func TestJudge(t *testing.T) {
	tests := []struct {
		name string
		f    Figure
		want *bool
	}{
		{"no target", Figure{Value: 3}, nil},
		{"at most, met at the bound", Figure{Value: 15, Target: atMost(15)}, ptr(true)},
		{"at most, missed", Figure{Value: 15.01, Target: atMost(15)}, ptr(false)},
		{"ratio at least, met", Figure{Value: 1, Ratio: 0.8, Target: ratioAtLeast(0.8)}, ptr(true)},
		{"ratio at least, missed although the value is large", Figure{Value: 1e9, Ratio: 0.79, Target: ratioAtLeast(0.8)}, ptr(false)},
		{"nothing measured misses", Figure{Value: math.NaN(), Target: atMost(15)}, ptr(false)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.f.judge()
			switch {
			case tt.want == nil && tt.f.Met != nil:
				t.Errorf("Met = %v, want unset", *tt.f.Met)
			case tt.want != nil && (tt.f.Met == nil || *tt.f.Met != *tt.want):
				t.Errorf("Met = %v, want %v", tt.f.Met, *tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestTable(t *testing.T) {
	rep := &Report{Took: 90 * time.Second, Machine: "test machine", Figures: []Figure{
		{Scenario: "steady", Name: "end-to-end p99", Value: 12.345, Unit: "ms", Target: atMost(15), Note: "a note"},
		{Scenario: "burst", Name: "64 writers throughput", Value: 8000, Unit: "ops/s", Target: ratioAtLeast(0.8), Baseline: "bare raft", BaselineValue: 10000, Ratio: 0.8},
		{Scenario: "idle", Name: "memory per socket", Value: 25, Unit: "KiB", Target: atMost(20)},
	}}
	for i := range rep.Figures {
		rep.Figures[i].judge()
	}
	var b strings.Builder
	if err := rep.Table(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"end-to-end p99", "12.3", "≤ 15", "bare raft 10000", "0.80", "ratio ≥ 0.80", "NO", "a note", "2 of 3 targets met", "test machine"} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q:\n%s", want, out)
		}
	}
	if missed := rep.Missed(); len(missed) != 1 || missed[0].Name != "memory per socket" {
		t.Errorf("Missed() = %+v, want the memory figure", missed)
	}
}

func TestOptionsRefused(t *testing.T) {
	bad := func(mod func(*Options)) Options {
		o := Options{Binary: "/bin/true", Dir: t.TempDir(), Sizes: Quick()}
		mod(&o)
		return o
	}
	tests := []struct {
		name   string
		opts   Options
		wantIn string
	}{
		{"unknown scenario", bad(func(o *Options) { o.Scenarios = []string{"steady", "flood"} }), `unknown scenario "flood"`},
		{"11 players", bad(func(o *Options) { o.Sizes.Players = 11 }), "at most 10"},
		{"no writers", bad(func(o *Options) { o.Sizes.Writers = nil }), "sizes"},
		{"zero writers", bad(func(o *Options) { o.Sizes.Writers = []int{64, 0} }), "writers 0"},
		{"first IP too high", bad(func(o *Options) { o.FirstIP = 250 }), "first IP octet 250"},
		{"no binary", bad(func(o *Options) { o.Binary = "" }), "Binary and Dir"},
		{"restart on a target", bad(func(o *Options) { o.Targets = []string{"127.0.0.1:1"}; o.Scenarios = []string{"restart"} }), "cannot run against --target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := Run(t.Context(), tt.opts)
			if !errors.Is(err, ErrBadOptions) || !strings.Contains(err.Error(), tt.wantIn) || rep != nil {
				t.Errorf("Run = %v, %v; want nil and ErrBadOptions with %q", rep, err, tt.wantIn)
			}
		})
	}
}

func TestScanFrame(t *testing.T) {
	tests := []struct {
		in   string
		want frame
		ok   bool
	}{
		{`{"type":"step_toggled","trackId":"t1","step":3,"value":true,"playerId":"p-ab12","seq":1042,"clientSeq":17}`,
			frame{Seq: 1042, ClientSeq: 17, PlayerID: "p-ab12"}, true},
		{`{"type":"tempo_changed","tempo":120,"playerId":"p-x","seq":9,"prevSeq":8}`, frame{Seq: 9, PlayerID: "p-x"}, true},
		{`{"type":"player_joined","player":{"id":"p-1"}}`, frame{}, true},
		{`pong`, frame{}, false},
		{``, frame{}, false},
	}
	for _, tt := range tests {
		got, ok := scanFrame([]byte(tt.in))
		if ok != tt.ok || got != tt.want {
			t.Errorf("scanFrame(%s) = %+v, %v; want %+v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// TestPacerKeepsPhases: sessions started together send at their own random
// phases on every round, not all at once after the first.
func TestPacerKeepsPhases(t *testing.T) {
	const sessions, every = 100, 50 * time.Millisecond
	start := time.Unix(1_700_000_000, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	var pacers []pacer
	for range sessions {
		pacers = append(pacers, newPacer(start, every, rng))
	}
	for round := range 3 {
		buckets := map[time.Duration]int{} // sends per millisecond of the round
		for i := range pacers {
			p := &pacers[i]
			at := p.next.Sub(start) - time.Duration(round)*every
			if at < 0 || at >= every {
				t.Fatalf("round %d: session %d sends at %v into the round, want within [0, %v)", round, i, at, every)
			}
			buckets[at.Truncate(time.Millisecond)]++
			if w := p.wait(p.next.Add(-time.Millisecond)); w != time.Millisecond {
				t.Fatalf("wait a millisecond before the send = %v", w)
			}
			p.sent()
		}
		for ms, n := range buckets {
			if n > 10 {
				t.Errorf("round %d: %d of %d sessions send in the same millisecond (%v)", round, n, sessions, ms)
			}
		}
	}
	late := pacers[0]
	if w := late.wait(late.next.Add(time.Second)); w != 0 {
		t.Errorf("a late send waits %v, want 0", w)
	}
}

// TestReportJSONWithoutAFigure: a figure with nothing measured (NaN) or a
// ratio to a zero baseline (Inf) still gives a JSON report, with null.
func TestReportJSONWithoutAFigure(t *testing.T) {
	rep := &Report{Figures: []Figure{
		{Scenario: "steady", Name: "resume (?since=) p50", Value: math.NaN(), Unit: "ms"},
		{Scenario: "burst", Name: "64 writers on the leader", Value: 10, Unit: "ops/s", Baseline: "bare raft", BaselineValue: 0, Ratio: math.Inf(1), Target: ratioAtLeast(0.8)},
		{Scenario: "idle", Name: "memory per socket", Value: 18.5, Unit: "KiB"},
	}}
	for i := range rep.Figures {
		rep.Figures[i].judge()
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	for _, want := range []string{`"value":null`, `"ratio":null`, `"value":18.5`, `"met":false`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the JSON lacks %s: %s", want, b)
		}
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || len(back.Figures) != 3 || back.Figures[2].Value != 18.5 || back.Figures[0].Name != "resume (?since=) p50" {
		t.Errorf("round trip: %v, %+v", err, back.Figures)
	}
}

// TestBareRaftCloses: the baseline commits, and Close leaves no goroutine
// behind (the connections between its nodes included).
func TestBareRaftCloses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three raft nodes")
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	b, err := StartBareRaft(t.TempDir(), 2)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := b.Apply([]byte("entry"), 5*time.Second); err != nil {
			b.Close()
			t.Fatalf("apply %d: %v", i, err)
		}
	}
	b.Close()
}
