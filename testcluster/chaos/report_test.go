package chaos

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"chorus/testcluster/check"
)

var reportT0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// newTestReport builds an invalid Report with n ops, 10 ms apart. Op i has
// kind i%3 (read, set_tempo, toggle_step) and is Failed when i%10 == 0,
// Unknown when i%10 == 1 and OK otherwise, so with n a multiple of 30 each
// kind has n/30 failed, n/30 unknown and 8n/30 OK ops. OK latencies are
// 1..40 ms. Of the two faults, the kill failed to heal and the partition is
// still open.
func newTestReport(tb testing.TB, n int) *Report {
	tb.Helper()
	kinds := []string{check.KindRead, check.KindSetTempo, check.KindToggleStep}
	ops := make([]check.Op, n)
	for i := range ops {
		inv := reportT0.Add(time.Duration(i) * 10 * time.Millisecond)
		o := check.Op{
			Client: i % 4, Session: "s" + strconv.Itoa(i%2), Kind: kinds[i%3], Key: "tempo",
			Value: strconv.Itoa(i), Invoke: inv, Complete: inv.Add(time.Duration(1+i%40) * time.Millisecond),
			Outcome: check.OK, Seq: uint64(i + 1),
		}
		switch i % 10 {
		case 0:
			o.Outcome, o.Seq = check.Failed, 0
		case 1:
			o.Outcome, o.Seq, o.Complete = check.Unknown, 0, time.Time{}
		}
		ops[i] = o
	}
	return &Report{
		Seed: 42, Started: reportT0.Add(-2 * time.Second), Duration: time.Minute, Elapsed: 75 * time.Second,
		Nodes: 3, Clients: 4, Sessions: 2,
		Nemeses: []string{NemKill, NemPartition, NemPause},
		Notes:   []string{"pause nemesis found no leader twice"},
		Faults: []Fault{
			{Kind: NemKill, Detail: "kill n2 (leader)", Start: reportT0.Add(time.Second), End: reportT0.Add(2 * time.Second), Err: "restart n2: exit status 1"},
			{Kind: NemPartition, Detail: "partition n1 | n2 n3 <minority>", Start: reportT0.Add(1500 * time.Millisecond)},
		},
		History: &check.History{Ops: ops},
		Results: []check.Result{
			{Name: "lost-writes", Valid: true, Counts: map[string]int{"registers": 3, "checked": 6}},
			{Name: "linearizable", Valid: false, Counts: map[string]int{"violations": 1, "registers": 2},
				Problems: []string{"s0/tempo is not linearizable: <script>alert(1)</script>"}},
		},
		Valid: false,
		Logs:  map[string]string{"n3": "/tmp/run/n3.log", "n1": "/tmp/run/n1.log", "n2": "/tmp/run/n2.log"},
	}
}

func TestReportSummary(t *testing.T) {
	r := newTestReport(t, 300)
	s := r.Summary()
	t.Log("\n" + s)
	for _, want := range []string{
		":seed 42,", ":duration 1m0s,", ":elapsed 1m15s,", ":nodes 3,", ":clients 4,", ":sessions 2,",
		":nemeses [:kill :partition :pause],",
		`:replay "chorus chaos --seed 42 --duration 1m0s --nodes 3 --clients 4 --sessions 2 --nemesis kill,partition,pause"`,
		":lost-writes {:valid? true, :checked 6, :registers 3}",
		":linearizable {:valid? false, :registers 2, :violations 1",
		`"s0/tempo is not linearizable: <script>alert(1)</script>"`,
		":ops {:ok 240, :failed 30, :unknown 30}",
		":read {:ok 80, :failed 10, :unknown 10}",
		":set_tempo {:ok 80, :failed 10, :unknown 10}",
		":toggle_step {:ok 80, :failed 10, :unknown 10}",
		":latency-ms {:count 240, :p50 ", ":max 40.0}",
		":kill {:count 1, :errors 1, :open 0}",
		":partition {:count 1, :errors 0, :open 1}",
		":pause {:count 0, :errors 0, :open 0}",
		`:notes ["pause nemesis found no leader twice"]`,
		`:n1 "/tmp/run/n1.log"`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	if i, j := strings.Index(s, ":n1 "), strings.Index(s, ":n3 "); i > j {
		t.Errorf("logs not sorted: n1 at %d, n3 at %d", i, j)
	}
	if !strings.HasSuffix(s, "}\n:valid? false\nAnalysis invalid! (ﾉಥ益ಥ）ﾉ ┻━┻\n") {
		t.Errorf("summary does not end with :valid? false:\n%s", s[max(len(s)-200, 0):])
	}
	if again := r.Summary(); again != s {
		t.Errorf("Summary is not deterministic")
	}

	r.Valid = true
	if s := r.Summary(); !strings.HasSuffix(s, "\n:valid? true\nEverything looks good! ヽ(‘ー`)ノ\n") {
		t.Errorf("summary does not end with :valid? true:\n%s", s[max(len(s)-200, 0):])
	}
}

func TestReportSummaryEmpty(t *testing.T) {
	s := (&Report{}).Summary()
	for _, want := range []string{":ops {}", ":latency-ms {:count 0}", ":faults {}", ":notes []", ":logs {}", "--nemesis none"} {
		if !strings.Contains(s, want) {
			t.Errorf("empty summary lacks %q:\n%s", want, s)
		}
	}
	if !strings.Contains(s, "\n:valid? false\n") {
		t.Errorf("empty summary lacks :valid? false:\n%s", s)
	}
}

// renderHTML renders r and checks that the page is well-formed: the template
// is written to be well-formed XML too, so a strict XML parse checks that
// every element is closed and nested properly.
func renderHTML(tb testing.TB, r *Report) string {
	tb.Helper()
	html := renderHTMLUnchecked(tb, r)
	d := xml.NewDecoder(strings.NewReader(html))
	for {
		_, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tb.Fatalf("HTML is not well-formed: %v", err)
		}
	}
	return html
}

func renderHTMLUnchecked(tb testing.TB, r *Report) string {
	tb.Helper()
	var b bytes.Buffer
	if err := r.WriteHTML(&b); err != nil {
		tb.Fatalf("WriteHTML: %v", err)
	}
	return b.String()
}

func TestReportHTML(t *testing.T) {
	r := newTestReport(t, 300)
	html := renderHTML(t, r)
	for _, want := range []string{
		`<svg class="plot" xmlns="http://www.w3.org/2000/svg"`,
		`class="badge invalid"`,
		"replay with: <code>chorus chaos --seed 42 --duration 1m0s --nodes 3 --clients 4 --sessions 2 --nemesis kill,partition,pause</code>",
		`<rect class="fault f-kill"`, `<rect class="fault f-partition"`,
		`>kill n2 (leader)</text>`,
		`>partition n1 | n2 n3 &lt;minority&gt;</text>`,
		"s0/tempo is not linearizable: &lt;script&gt;alert(1)&lt;/script&gt;",
		"restart n2: exit status 1", "<td class=\"n\">open</td>",
		"/tmp/run/n2.log",
		"pause nemesis found no leader twice",
	} {
		if !strings.Contains(html, want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
	for _, bad := range []string{"<script", "<link", "src=", "url(", "@import", "<minority>"} {
		if strings.Contains(html, bad) {
			t.Errorf("HTML contains %q", bad)
		}
	}
	if n := strings.Count(html, `<rect class="fault `); n != len(r.Faults) {
		t.Errorf("%d fault rects, want %d", n, len(r.Faults))
	}
	if n := strings.Count(html, `class="flabel"`); n != len(r.Faults) {
		t.Errorf("%d fault labels, want %d", n, len(r.Faults))
	}
	for _, c := range []struct {
		class string
		want  int
	}{{`<circle class="o-ok"`, 240}, {`<circle class="o-failed"`, 30}, {`<circle class="o-unknown"`, 30}} {
		if n := strings.Count(html, c.class); n != c.want {
			t.Errorf("%d × %s, want %d", n, c.class, c.want)
		}
	}
	if n := strings.Count(html, `<tr class="o-`); n != 300 {
		t.Errorf("%d history rows, want all 300", n)
	}
	if strings.Contains(html, "left out") {
		t.Errorf("HTML says ops were left out of a 300-op history")
	}

	// The open partition runs to the right edge of the plot.
	f := r.htmlView().Plot.Faults[1]
	if x, w := parseFloat(t, f.X), parseFloat(t, f.W); math.Abs(x+w-plotRight) > 0.2 {
		t.Errorf("open fault spans x %v..%v, want it to end at %v", x, x+w, plotRight)
	}

	r.Valid = true
	if html := renderHTML(t, r); !strings.Contains(html, `class="badge valid"`) {
		t.Errorf("valid report lacks the valid badge")
	}
}

func parseFloat(tb testing.TB, s string) float64 {
	tb.Helper()
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		tb.Fatalf("parse %q: %v", s, err)
	}
	return f
}

func TestReportPlotSample(t *testing.T) {
	tests := []struct {
		name          string
		n             int
		nonOK         func(i int) bool
		wantStepAbove int // the step must be greater than this
	}{
		{"under the cap", 300, func(i int) bool { return i%10 < 2 }, 0},
		{"mixed", 50000, func(i int) bool { return i%10 < 2 }, 1},
		{"mostly non-OK", 30000, func(i int) bool { return i%6 != 0 }, 0},
		{"all OK", 45000, func(int) bool { return false }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops := make([]check.Op, tt.n)
			nonOK := 0
			for i := range ops {
				ops[i].Outcome = check.OK
				if tt.nonOK(i) {
					ops[i].Outcome = check.Unknown
					nonOK++
				}
			}
			idx, step := plotSample(ops)
			if step <= tt.wantStepAbove {
				t.Errorf("step %d, want > %d", step, tt.wantStepAbove)
			}
			kept := map[int]bool{}
			keptOK := 0
			for j, i := range idx {
				if j > 0 && i <= idx[j-1] {
					t.Fatalf("indexes not ascending at %d: %d after %d", j, i, idx[j-1])
				}
				kept[i] = true
				if ops[i].Outcome == check.OK {
					keptOK++
				}
			}
			for i, o := range ops {
				if o.Outcome != check.OK && !kept[i] {
					t.Fatalf("non-OK op %d not plotted", i)
				}
			}
			if tt.n <= plotMaxOps && len(idx) != tt.n {
				t.Errorf("plotted %d of %d ops under the cap", len(idx), tt.n)
			}
			if limit := max(plotMaxOps-nonOK, plotMinOK); tt.n > plotMaxOps && keptOK > limit {
				t.Errorf("plotted %d OK ops, want at most %d", keptOK, limit)
			}
			if again, _ := plotSample(ops); !equalInts(again, idx) {
				t.Errorf("sampling is not deterministic")
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestReportHTMLLarge checks that a history over plotMaxOps is sampled in
// the plot and capped in the table, and that every non-OK op survives both.
func TestReportHTMLLarge(t *testing.T) {
	const n = plotMaxOps + 1000
	r := newTestReport(t, n)
	nonOK, nonOKLate := 0, 0 // non-OK ops, and those after the first historyMaxRows
	for i := range r.History.Ops {
		o := &r.History.Ops[i]
		o.Outcome = check.OK
		if i%50 < 2 {
			o.Outcome = check.Failed
			nonOK++
			if i >= historyMaxRows {
				nonOKLate++
			}
		}
	}
	html := renderHTMLUnchecked(t, r) // TestReportHTML checks well-formedness, on a smaller page
	if got := strings.Count(html, `<circle class="o-failed"`); got != nonOK {
		t.Errorf("%d failed dots, want all %d", got, nonOK)
	}
	if got, okOps := strings.Count(html, `<circle class="o-ok"`), n-nonOK; got >= okOps || got < okOps/2 {
		t.Errorf("%d OK dots of %d OK ops, want them sampled with step 2", got, okOps)
	}
	if got := strings.Count(html, "<circle "); got > plotMaxOps {
		t.Errorf("%d dots, want at most %d", got, plotMaxOps)
	}
	if got := strings.Count(html, `<tr class="o-`); got != historyMaxRows+nonOKLate {
		t.Errorf("%d history rows, want the first %d and %d non-OK ops after them", got, historyMaxRows, nonOKLate)
	}
	if got := strings.Count(html, `<tr class="o-failed"`); got != nonOK {
		t.Errorf("%d failed history rows, want all %d", got, nonOK)
	}
	omitted := n - historyMaxRows - nonOKLate
	if want := strconv.Itoa(omitted) + " OK ops are left out; history.json has them all"; !strings.Contains(html, want) {
		t.Errorf("HTML lacks %q", want)
	}
}

func TestReportHTMLEmpty(t *testing.T) {
	tests := []struct {
		name string
		r    *Report
	}{
		{"zero report", &Report{}},
		{"no ops", &Report{Seed: 7, History: &check.History{}, Nemeses: []string{NemKill}}},
		{"faults but no ops", &Report{History: &check.History{}, Faults: []Fault{
			{Kind: NemPause, Detail: "pause n1", Start: reportT0, End: reportT0.Add(time.Second)},
			{Kind: "bogus", Detail: "unknown kind", Start: reportT0.Add(time.Second)},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			html := renderHTML(t, tt.r)
			for _, want := range []string{"<svg ", "no ops recorded", "0 ops by invoke time"} {
				if !strings.Contains(html, want) {
					t.Errorf("HTML lacks %q", want)
				}
			}
			if n := strings.Count(html, `<rect class="fault `); n != len(tt.r.Faults) {
				t.Errorf("%d fault rects, want %d", n, len(tt.r.Faults))
			}
			_ = tt.r.Summary() // must not panic either
		})
	}
}
