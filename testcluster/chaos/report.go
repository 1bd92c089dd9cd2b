package chaos

// The run's report for a human: Summary for the terminal, WriteHTML for a
// browser. Both are pure functions of the Report and render every map in
// sorted key order, so one Report always renders the same bytes.

import (
	"cmp"
	"fmt"
	"html/template"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"chorus/testcluster/check"
)

const (
	// plotMaxOps bounds the dots of the latency plot. Above it the OK ops
	// are sampled (every k-th in recording order); every failed or unknown
	// op is always plotted, since those are the ones a reader looks for.
	plotMaxOps = 20000
	// plotMinOK is the fewest OK ops the plot keeps when the failed and
	// unknown ops alone reach plotMaxOps.
	plotMinOK = 5000
	// historyMaxRows caps the HTML history table at its first rows by
	// invoke time; every non-OK op after them is listed as well.
	historyMaxRows = 5000
)

// reportOutcomes are the outcomes in the order they are shown.
var reportOutcomes = []check.Outcome{check.OK, check.Failed, check.Unknown}

// Summary renders r for a terminal in the style of a Jepsen result map: the
// run's settings, the checker results (check.Summary), the ops by kind and
// outcome, the latency of OK ops, the faults by kind, the notes and the node
// logs. The last two lines are ":valid? true|false" and a verdict for humans.
func (r *Report) Summary() string {
	h := r.history()
	var e []string
	e = append(e, fmt.Sprintf(":seed %d", r.Seed))
	if !r.Started.IsZero() {
		e = append(e, ":started "+r.Started.UTC().Format(time.RFC3339))
	}
	e = append(e,
		":duration "+r.Duration.String(),
		":elapsed "+r.Elapsed.Round(time.Millisecond).String(),
		fmt.Sprintf(":nodes %d", r.Nodes),
		fmt.Sprintf(":clients %d", r.Clients),
		fmt.Sprintf(":sessions %d", r.Sessions),
		":nemeses "+ednKeywords(r.Nemeses),
		fmt.Sprintf(":replay %q", r.replayCommand()),
		ednEntry("checkers", strings.TrimSuffix(check.Summary(h, r.Results), "\n")),
	)

	ops := requests(h.Ops)
	tally := tallyOps(ops)
	var kinds []string
	for _, k := range tally.kinds {
		var oc []string
		for _, o := range tally.outcomes {
			oc = append(oc, fmt.Sprintf(":%s %d", o, tally.n[k][o]))
		}
		kinds = append(kinds, ednEntry(k, ednInline(oc)))
	}
	e = append(e, ednEntry("ops", ednMap(kinds)))

	lat := okLatency(ops)
	le := []string{fmt.Sprintf(":count %d", lat.n)}
	if lat.n > 0 {
		le = append(le, ":p50 "+fmtMS(lat.p50), ":p99 "+fmtMS(lat.p99), ":max "+fmtMS(lat.max))
	}
	e = append(e, ednEntry("latency-ms", ednInline(le)))

	var faults []string
	for _, ft := range tallyFaults(r.Nemeses, r.Faults) {
		faults = append(faults, ednEntry(ft.kind, ednInline([]string{
			fmt.Sprintf(":count %d", ft.count),
			fmt.Sprintf(":errors %d", ft.errors),
			fmt.Sprintf(":open %d", ft.open),
		})))
	}
	e = append(e, ednEntry("faults", ednMap(faults)))

	var notes []string
	for _, n := range r.Notes {
		notes = append(notes, strconv.Quote(n))
	}
	e = append(e, ednEntry("notes", "["+strings.Join(notes, "\n ")+"]"))

	var logs []string
	for _, id := range slices.Sorted(maps.Keys(r.Logs)) {
		logs = append(logs, ednEntry(id, strconv.Quote(r.Logs[id])))
	}
	e = append(e, ednEntry("logs", ednMap(logs)))

	var b strings.Builder
	b.WriteString(ednMap(e))
	fmt.Fprintf(&b, "\n:valid? %t\n", r.Valid)
	if r.Valid {
		b.WriteString("Everything looks good! ヽ(‘ー`)ノ\n")
	} else {
		b.WriteString("Analysis invalid! (ﾉಥ益ಥ）ﾉ ┻━┻\n")
	}
	return b.String()
}

// The edn* helpers render Jepsen-style maps. A rendered value is relative:
// its first line starts at column 0 and its later lines are indented from
// column 0, so a value can be nested by shifting its later lines.

// ednShift re-indents the later lines of the relative value v placed at column col.
func ednShift(v string, col int) string {
	return strings.ReplaceAll(v, "\n", "\n"+strings.Repeat(" ", col))
}

// ednEntry renders ":key value", with value's later lines under its first.
func ednEntry(key, value string) string {
	p := ":" + key + " "
	return p + ednShift(value, len(p))
}

// ednMap renders entries one per line.
func ednMap(entries []string) string {
	shifted := make([]string, len(entries))
	for i, e := range entries {
		shifted[i] = ednShift(e, 1)
	}
	return "{" + strings.Join(shifted, ",\n ") + "}"
}

// ednInline renders one-line entries on one line.
func ednInline(entries []string) string {
	return "{" + strings.Join(entries, ", ") + "}"
}

func ednKeywords(ks []string) string {
	var b strings.Builder
	b.WriteString("[")
	for i, k := range ks {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(":" + k)
	}
	b.WriteString("]")
	return b.String()
}

// replayCommand is the command line that reruns r's settings (the flags of
// cmd/chorus/chaos.go; an empty nemesis list is "none", since the flag's
// default is all of them).
func (r *Report) replayCommand() string {
	nem := strings.Join(orNone(r.Nemeses), ",")
	sessions := ""
	if r.Sessions > 0 {
		sessions = fmt.Sprintf(" --sessions %d", r.Sessions)
	}
	return fmt.Sprintf("chorus chaos --seed %d --duration %s --nodes %d --clients %d%s --nemesis %s",
		r.Seed, r.Duration, r.Nodes, r.Clients, sessions, nem)
}

// history returns r.History, or an empty history if there is none, so that a
// run that failed before recording anything still renders.
func (r *Report) history() *check.History {
	if r.History == nil {
		return &check.History{}
	}
	return r.History
}

// origin is the time the report's times are relative to: the first op's
// invoke, or, without ops, the first fault's start, or else r.Started.
func (r *Report) origin() time.Time {
	var t0 time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (t0.IsZero() || t.Before(t0)) {
			t0 = t
		}
	}
	for _, o := range r.history().Ops {
		earliest(o.Invoke)
	}
	if t0.IsZero() {
		for _, f := range r.Faults {
			earliest(f.Start)
		}
	}
	if t0.IsZero() {
		return r.Started
	}
	return t0
}

// opLatency is how long an op took. It is meaningless for Unknown ops, whose
// Complete is only when the client gave up; a clock step backwards counts as 0.
func opLatency(o check.Op) time.Duration {
	return max(o.Complete.Sub(o.Invoke), 0)
}

func fmtMS(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	if ms < 10 {
		return strconv.FormatFloat(ms, 'f', 2, 64)
	}
	return strconv.FormatFloat(ms, 'f', 1, 64)
}

// opTally counts ops by kind and outcome.
type opTally struct {
	kinds    []string        // sorted
	outcomes []check.Outcome // reportOutcomes, then any others sorted
	n        map[string]map[check.Outcome]int
}

func tallyOps(ops []check.Op) opTally {
	t := opTally{n: map[string]map[check.Outcome]int{}}
	var other []check.Outcome
	for _, o := range ops {
		if t.n[o.Kind] == nil {
			t.n[o.Kind] = map[check.Outcome]int{}
			t.kinds = append(t.kinds, o.Kind)
		}
		t.n[o.Kind][o.Outcome]++
		if !slices.Contains(reportOutcomes, o.Outcome) && !slices.Contains(other, o.Outcome) {
			other = append(other, o.Outcome)
		}
	}
	slices.Sort(t.kinds)
	slices.Sort(other)
	t.outcomes = append(slices.Clone(reportOutcomes), other...)
	return t
}

type latencyStats struct {
	n             int
	p50, p99, max time.Duration
}

// okLatency summarises the latency of the OK ops (nearest-rank percentiles).
func okLatency(ops []check.Op) latencyStats {
	var ls []time.Duration
	for _, o := range ops {
		if o.Outcome == check.OK {
			ls = append(ls, opLatency(o))
		}
	}
	if len(ls) == 0 {
		return latencyStats{}
	}
	slices.Sort(ls)
	rank := func(p float64) time.Duration {
		return ls[max(int(math.Ceil(p*float64(len(ls))))-1, 0)]
	}
	return latencyStats{n: len(ls), p50: rank(0.50), p99: rank(0.99), max: ls[len(ls)-1]}
}

type faultTally struct {
	kind                string
	count, errors, open int
}

// tallyFaults counts faults by kind: every enabled nemesis, even one that
// injected nothing, and every kind that occurs, sorted by kind.
func tallyFaults(nemeses []string, faults []Fault) []faultTally {
	by := map[string]*faultTally{}
	for _, k := range nemeses {
		by[k] = &faultTally{kind: k}
	}
	for _, f := range faults {
		t := by[f.Kind]
		if t == nil {
			t = &faultTally{kind: f.Kind}
			by[f.Kind] = t
		}
		t.count++
		if f.Err != "" {
			t.errors++
		}
		if f.End.IsZero() {
			t.open++
		}
	}
	out := make([]faultTally, 0, len(by))
	for _, k := range slices.Sorted(maps.Keys(by)) {
		out = append(out, *by[k])
	}
	return out
}

// requests folds the read ops of one HTTP read (the workload records a
// read as one op per register, all with the read's OpID) into one op with
// Key "*", so that counts, latencies and the plot are per request.
func requests(ops []check.Op) []check.Op {
	out := make([]check.Op, 0, len(ops))
	seen := map[string]bool{}
	for _, o := range ops {
		if o.Kind == check.KindRead && o.OpID != "" {
			if seen[o.OpID] {
				continue
			}
			seen[o.OpID] = true
			o.Key, o.Value = "*", ""
		}
		out = append(out, o)
	}
	return out
}

// plotSample picks the ops of the latency plot: all of them up to
// plotMaxOps, else every failed and unknown op and every step-th OK op, in
// recording order. The number of OK ops kept is at most
// max(plotMaxOps-nonOK, plotMinOK).
func plotSample(ops []check.Op) (idx []int, step int) {
	nOK := 0
	for _, o := range ops {
		if o.Outcome == check.OK {
			nOK++
		}
	}
	step = 1
	if len(ops) > plotMaxOps {
		budget := max(plotMaxOps-(len(ops)-nOK), plotMinOK)
		step = max((nOK+budget-1)/budget, 1)
	}
	seenOK := 0
	for i, o := range ops {
		if o.Outcome == check.OK {
			seenOK++
			if (seenOK-1)%step != 0 {
				continue
			}
		}
		idx = append(idx, i)
	}
	return idx, step
}

// outcomeClass is the CSS class of an outcome; the outcome comes from a
// history file, so anything unexpected gets a class of its own.
func outcomeClass(o check.Outcome) string {
	if slices.Contains(reportOutcomes, o) {
		return "o-" + string(o)
	}
	return "o-other"
}

// faultClass is the CSS class that colours a nemesis kind.
func faultClass(kind string) string {
	if slices.Contains(AllNemeses, kind) {
		return "f-" + kind
	}
	return "f-other"
}

// fmtF formats a coordinate; one decimal is plenty for a screen.
func fmtF(x float64) string { return strconv.FormatFloat(x, 'f', 1, 64) }

// fmtRel formats t relative to t0 in seconds.
func fmtRel(t, t0 time.Time) string {
	return strconv.FormatFloat(t.Sub(t0).Seconds(), 'f', 3, 64)
}

// The html* types are what the template renders: every number is formatted
// in Go, the template only escapes and places.

type htmlKV struct{ K, V string }

type htmlReport struct {
	Valid    bool
	Seed     int64
	Settings []htmlKV
	Replay   string
	Notes    []string
	Logs     []htmlKV
	Latency  string
	OpKinds  []string
	OpCols   []string
	OpRows   []htmlOpRow
	Plot     htmlPlot
	Results  []htmlResult
	Faults   []htmlFault
	Rows     []htmlRow
	TotalOps int
	RowCap   int
	Omitted  int
}

type htmlOpRow struct {
	Kind   string
	Counts []int
}

type htmlResult struct {
	Name     string
	Valid    bool
	Counts   string
	Problems []string
}

type htmlFault struct {
	Kind, Class, Detail, Start, End, Duration, Err string
}

type htmlRow struct {
	Class, Time, Session, Kind, Key, Value, Outcome, Seq, Latency string
	Client                                                        int
}

type htmlPlot struct {
	W, H                           int
	L, R, Top, Bottom, Band, BandY string
	FrameW, FrameH                 string
	MidY, XTitleX, XTitleY         string
	TickY, LegendY                 string
	XTicks, YTicks                 []htmlTick
	Faults                         []htmlPlotFault
	Dots                           []htmlDot
	Legend                         []htmlLegend
	Shown, Total, Step             int
}

type htmlTick struct{ Pos, Label string }

type htmlPlotFault struct {
	Class, X, Y, W, H, LabelX, LabelY, Label, Title string
}

type htmlDot struct{ Class, X, Y, Title string }

type htmlLegend struct{ Class, X, TextX, Label string }

// WriteHTML writes r as one self-contained HTML page (inline CSS and SVG,
// no scripts, no external resources): the verdict and settings, a
// latency-over-time plot with the fault windows shaded, the checker results,
// the faults and the history (capped; history.json has every op). Times are
// in seconds since the first op's invoke.
func (r *Report) WriteHTML(w io.Writer) error {
	if err := reportTemplate.Execute(w, r.htmlView()); err != nil {
		return fmt.Errorf("write html report: %w", err)
	}
	return nil
}

func (r *Report) htmlView() htmlReport {
	h := r.history()
	ops := requests(h.Ops)
	t0 := r.origin()
	v := htmlReport{
		Valid:    r.Valid,
		Seed:     r.Seed,
		Replay:   r.replayCommand(),
		Notes:    r.Notes,
		TotalOps: len(ops),
		RowCap:   historyMaxRows,
	}
	nem := strings.Join(orNone(r.Nemeses), ",")
	v.Settings = []htmlKV{
		{"seed", strconv.FormatInt(r.Seed, 10)},
		{"duration", r.Duration.String()},
		{"elapsed", r.Elapsed.Round(time.Millisecond).String()},
		{"nodes", strconv.Itoa(r.Nodes)},
		{"clients", strconv.Itoa(r.Clients)},
		{"sessions", strconv.Itoa(r.Sessions)},
		{"nemeses", nem},
		{"ops", strconv.Itoa(len(ops))},
		{"faults", strconv.Itoa(len(r.Faults))},
	}
	if !r.Started.IsZero() {
		v.Settings = append(v.Settings, htmlKV{"started", r.Started.UTC().Format(time.RFC3339)})
	}
	for _, id := range slices.Sorted(maps.Keys(r.Logs)) {
		v.Logs = append(v.Logs, htmlKV{id, r.Logs[id]})
	}

	tally := tallyOps(ops)
	for _, o := range tally.outcomes {
		v.OpCols = append(v.OpCols, string(o))
	}
	for _, k := range tally.kinds {
		row := htmlOpRow{Kind: k}
		for _, o := range tally.outcomes {
			row.Counts = append(row.Counts, tally.n[k][o])
		}
		v.OpRows = append(v.OpRows, row)
	}
	if lat := okLatency(ops); lat.n > 0 {
		v.Latency = fmt.Sprintf("OK ops: %d, p50 %s ms, p99 %s ms, max %s ms",
			lat.n, fmtMS(lat.p50), fmtMS(lat.p99), fmtMS(lat.max))
	} else {
		v.Latency = "no OK ops"
	}

	for _, res := range r.Results {
		var counts []string
		for _, k := range slices.Sorted(maps.Keys(res.Counts)) {
			counts = append(counts, fmt.Sprintf("%s=%d", k, res.Counts[k]))
		}
		v.Results = append(v.Results, htmlResult{
			Name: res.Name, Valid: res.Valid, Counts: strings.Join(counts, ", "), Problems: res.Problems,
		})
	}

	for _, f := range r.Faults {
		hf := htmlFault{Kind: f.Kind, Class: faultClass(f.Kind), Detail: f.Detail, Start: fmtRel(f.Start, t0), Err: f.Err}
		if f.End.IsZero() {
			hf.End, hf.Duration = "open", "-"
		} else {
			hf.End = fmtRel(f.End, t0)
			hf.Duration = f.End.Sub(f.Start).Round(time.Millisecond).String()
		}
		v.Faults = append(v.Faults, hf)
	}

	v.Rows, v.Omitted = historyRows(ops, t0)
	v.Plot = r.plot(ops, t0)
	return v
}

// historyRows lists the first historyMaxRows ops by invoke time and every
// non-OK op after them, and says how many it left out.
func historyRows(ops []check.Op, t0 time.Time) (rows []htmlRow, omitted int) {
	order := make([]int, len(ops))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return ops[a].Invoke.Compare(ops[b].Invoke) })
	for n, i := range order {
		o := ops[i]
		if n >= historyMaxRows && o.Outcome == check.OK {
			omitted++
			continue
		}
		row := htmlRow{
			Class: outcomeClass(o.Outcome), Time: fmtRel(o.Invoke, t0), Client: o.Client,
			Session: o.Session, Kind: o.Kind, Key: o.Key, Value: o.Value, Outcome: string(o.Outcome),
			Latency: "?",
		}
		if o.Seq != 0 {
			row.Seq = strconv.FormatUint(o.Seq, 10)
		}
		if o.Outcome != check.Unknown {
			row.Latency = fmtMS(opLatency(o))
		}
		rows = append(rows, row)
	}
	return rows, omitted
}

// The plot's geometry, in SVG user units. Unknown ops have no latency: they
// are drawn in a band above the plot area.
const (
	plotW      = 960
	plotH      = 372
	plotLeft   = 56.0
	plotRight  = plotW - 16.0
	plotBand   = 8.0  // top of the unknown band and of the fault windows
	plotBandY  = 17.0 // where unknown ops are drawn
	plotTop    = 28.0
	plotBottom = 300.0
	plotMinExp = -1 // the y axis starts at 0.1 ms
)

func (r *Report) plot(ops []check.Op, t0 time.Time) htmlPlot {
	p := htmlPlot{
		W: plotW, H: plotH,
		L: fmtF(plotLeft), R: fmtF(plotRight), Top: fmtF(plotTop), Bottom: fmtF(plotBottom),
		Band: fmtF(plotBand), BandY: fmtF(plotBandY + 4),
		FrameW: fmtF(plotRight - plotLeft), FrameH: fmtF(plotBottom - plotTop),
		MidY:    fmtF((plotTop + plotBottom) / 2),
		XTitleX: fmtF((plotLeft + plotRight) / 2), XTitleY: fmtF(plotBottom + 30),
		TickY: fmtF(plotBottom + 14), LegendY: fmtF(plotH - 6),
		Total: len(ops),
	}
	idx, step := plotSample(ops)
	p.Shown, p.Step = len(idx), step

	// The x axis runs from the first op to the last thing that happened.
	span := 0.0
	later := func(t time.Time) {
		if !t.IsZero() {
			span = max(span, t.Sub(t0).Seconds())
		}
	}
	maxMS := 0.0
	for _, o := range ops {
		later(o.Invoke)
		if o.Outcome != check.Unknown {
			later(o.Complete)
			maxMS = max(maxMS, float64(opLatency(o))/float64(time.Millisecond))
		}
	}
	for _, f := range r.Faults {
		later(f.Start)
		later(f.End)
	}
	if span <= 0 {
		span = 1
	}
	xOf := func(s float64) float64 {
		return plotLeft + min(max(s/span, 0), 1)*(plotRight-plotLeft)
	}
	maxExp := 4 // ticks up to 10 s at least
	if maxMS > 0 {
		maxExp = min(max(maxExp, int(math.Ceil(math.Log10(maxMS)))), 7)
	}
	yOf := func(ms float64) float64 {
		l := math.Log10(max(ms, math.Pow(10, plotMinExp)))
		frac := min((l-plotMinExp)/float64(maxExp-plotMinExp), 1)
		return plotBottom - frac*(plotBottom-plotTop)
	}

	tick := niceStep(span)
	dec := max(0, -int(math.Floor(math.Log10(tick))))
	for i := 0; float64(i)*tick <= span*(1+1e-9); i++ {
		s := float64(i) * tick
		p.XTicks = append(p.XTicks, htmlTick{Pos: fmtF(xOf(s)), Label: strconv.FormatFloat(s, 'f', dec, 64)})
	}
	for e := 0; e <= maxExp; e++ {
		ms := math.Pow(10, float64(e))
		p.YTicks = append(p.YTicks, htmlTick{Pos: fmtF(yOf(ms)), Label: strconv.FormatFloat(ms, 'f', 0, 64)})
	}

	kinds := map[string]bool{}
	for i, f := range r.Faults {
		kinds[f.Kind] = true
		x0 := xOf(f.Start.Sub(t0).Seconds())
		x1 := plotRight
		end := "open (still active at the end)"
		if !f.End.IsZero() {
			x1 = xOf(f.End.Sub(t0).Seconds())
			end = fmtRel(f.End, t0) + " s"
		}
		title := fmt.Sprintf("%s: %s, %s s to %s", f.Kind, f.Detail, fmtRel(f.Start, t0), end)
		if f.Err != "" {
			title += ", error: " + f.Err
		}
		p.Faults = append(p.Faults, htmlPlotFault{
			Class: faultClass(f.Kind),
			X:     fmtF(x0), Y: fmtF(plotBand), W: fmtF(max(x1-x0, 1)), H: fmtF(plotBottom - plotBand),
			LabelX: fmtF(x0 + 3), LabelY: fmtF(plotTop + 11 + float64(i%4)*11),
			Label: f.Detail, Title: title,
		})
	}

	// Non-OK dots go last so that they are drawn on top.
	slices.SortStableFunc(idx, func(a, b int) int {
		return cmp.Compare(outcomeRank(ops[a].Outcome), outcomeRank(ops[b].Outcome))
	})
	for _, i := range idx {
		o := ops[i]
		d := htmlDot{Class: outcomeClass(o.Outcome), X: fmtF(xOf(o.Invoke.Sub(t0).Seconds()))}
		if o.Outcome == check.Unknown {
			d.Y = fmtF(plotBandY)
		} else {
			d.Y = fmtF(yOf(float64(opLatency(o)) / float64(time.Millisecond)))
		}
		if o.Outcome != check.OK {
			d.Title = fmt.Sprintf("%s s: client %d %s %s/%s %q %s", fmtRel(o.Invoke, t0), o.Client, o.Kind, o.Session, o.Key, o.Value, o.Outcome)
		}
		p.Dots = append(p.Dots, d)
	}

	x := plotLeft
	legend := func(class, label string) {
		p.Legend = append(p.Legend, htmlLegend{Class: class, X: fmtF(x), TextX: fmtF(x + 14), Label: label})
		x += 14 + 7*float64(len(label)) + 16
	}
	for _, o := range reportOutcomes {
		legend(outcomeClass(o), string(o))
	}
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		legend("swatch "+faultClass(k), k)
	}
	return p
}

func outcomeRank(o check.Outcome) int {
	if i := slices.Index(reportOutcomes, o); i >= 0 {
		return i
	}
	return len(reportOutcomes)
}

// niceStep is a 1, 2 or 5 times a power of ten step that cuts span into
// about eight intervals.
func niceStep(span float64) float64 {
	raw := span / 8
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5} {
		if m*mag >= raw {
			return m * mag
		}
	}
	return 10 * mag
}

// reportTemplate is written to be well-formed XML as well as HTML (void
// elements self-closed, no named entities), so tests can parse its output
// with encoding/xml.
var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"inc": func(n int) int { return n + 1 },
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8"/>
<title>chorus chaos seed {{.Seed}}: {{if .Valid}}valid{{else}}INVALID{{end}}</title>
<style>
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 8px}
h2{font-size:15px;margin:20px 0 6px;padding-bottom:2px;border-bottom:1px solid #ddd}
p{margin:4px 0}
code,td{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.badge{padding:1px 10px;border-radius:3px;color:#fff}
.badge.valid{background:#1a7f37}
.badge.invalid{background:#c62828}
td.valid{color:#1a7f37;font-weight:600}
td.invalid{color:#c62828;font-weight:600}
.settings span{margin-right:16px;white-space:nowrap}
.settings b{color:#666;font-weight:normal}
table{border-collapse:collapse;margin:4px 0}
th,td{border:1px solid #e3e3e3;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f5f5f5;font-weight:600}
td.n{text-align:right}
td ul{margin:0;padding-left:16px}
tr.o-failed td{background:#fdecea}
tr.o-unknown td{background:#fff4e0}
tr.o-other td{background:#eee}
svg.plot{display:block;max-width:100%;height:auto}
td svg{vertical-align:-1px;margin-right:2px}
svg text{font:11px system-ui,sans-serif;fill:#444}
.frame{fill:none;stroke:#999}
.grid{stroke:#eee}
.band{fill:#fafafa;stroke:#eee}
circle.o-ok{fill:#2b7bba;fill-opacity:.5}
circle.o-failed{fill:#d62728}
circle.o-unknown{fill:#ff9f1c}
circle.o-other{fill:#555}
rect.o-ok{fill:#2b7bba}
rect.o-failed{fill:#d62728}
rect.o-unknown{fill:#ff9f1c}
.fault{fill-opacity:.16}
.swatch{fill-opacity:.4}
.f-kill{fill:#9467bd}
.f-pause{fill:#8c564b}
.f-partition{fill:#17becf}
.f-transfer{fill:#bcbd22}
.f-member{fill:#e377c2}
.f-other{fill:#7f7f7f}
text.flabel{font-size:10px;fill:#333}
</style>
</head>
<body>
<h1>chorus chaos <span class="badge {{if .Valid}}valid{{else}}invalid{{end}}">{{if .Valid}}valid{{else}}INVALID{{end}}</span></h1>
<p class="settings">{{range .Settings}}<span><b>{{.K}}</b> {{.V}}</span> {{end}}</p>
<p>replay with: <code>{{.Replay}}</code></p>
{{- if .Notes}}
<h2>Notes</h2>
<ul>{{range .Notes}}<li>{{.}}</li>{{end}}</ul>
{{- end}}

<h2>Latency</h2>
<p>{{.Latency}}. Seconds since the first op; one dot per op at its invoke time{{if gt .Plot.Step 1}} (showing {{.Plot.Shown}} of {{.Plot.Total}} ops: one OK op in {{.Plot.Step}} and every failed or unknown op){{end}}; unknown ops have no latency and sit in the top band.</p>
{{with .Plot -}}
<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{{.W}}" height="{{.H}}" viewBox="0 0 {{.W}} {{.H}}" role="img" aria-label="latency over time">
<rect class="band" x="{{.L}}" y="{{.Band}}" width="{{.FrameW}}" height="18"/>
<text x="{{.L}}" y="{{.BandY}}" dx="-4" text-anchor="end">unknown</text>
{{- range .YTicks}}
<line class="grid" x1="{{$.Plot.L}}" x2="{{$.Plot.R}}" y1="{{.Pos}}" y2="{{.Pos}}"/><text x="{{$.Plot.L}}" y="{{.Pos}}" dx="-4" dy="4" text-anchor="end">{{.Label}}</text>
{{- end}}
{{- range .XTicks}}
<line class="grid" x1="{{.Pos}}" x2="{{.Pos}}" y1="{{$.Plot.Top}}" y2="{{$.Plot.Bottom}}"/><text x="{{.Pos}}" y="{{$.Plot.TickY}}" text-anchor="middle">{{.Label}}</text>
{{- end}}
{{- range .Faults}}
<rect class="fault {{.Class}}" x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}"><title>{{.Title}}</title></rect><text class="flabel" x="{{.LabelX}}" y="{{.LabelY}}">{{.Label}}</text>
{{- end}}
<rect class="frame" x="{{.L}}" y="{{.Top}}" width="{{.FrameW}}" height="{{.FrameH}}"/>
<text x="14" y="{{.MidY}}" text-anchor="middle" transform="rotate(-90 14 {{.MidY}})">latency (ms, log scale)</text>
<text x="{{.XTitleX}}" y="{{.XTitleY}}" text-anchor="middle">seconds since the first op</text>
{{- if not .Dots}}
<text x="{{.XTitleX}}" y="{{.MidY}}" text-anchor="middle">no ops recorded</text>
{{- end}}
<g>
{{- range .Dots}}
{{- if .Title}}<circle class="{{.Class}}" cx="{{.X}}" cy="{{.Y}}" r="2"><title>{{.Title}}</title></circle>
{{- else}}<circle class="{{.Class}}" cx="{{.X}}" cy="{{.Y}}" r="2"/>
{{- end}}
{{- end}}
</g>
{{- range .Legend}}
<rect class="{{.Class}}" x="{{.X}}" y="{{$.Plot.LegendY}}" width="10" height="10" transform="translate(0 -9)"/><text x="{{.TextX}}" y="{{$.Plot.LegendY}}">{{.Label}}</text>
{{- end}}
</svg>
{{- end}}

<h2>Ops</h2>
<table>
<thead><tr><th>kind</th>{{range .OpCols}}<th>{{.}}</th>{{end}}</tr></thead>
<tbody>
{{- range .OpRows}}
<tr><td>{{.Kind}}</td>{{range .Counts}}<td class="n">{{.}}</td>{{end}}</tr>
{{- else}}
<tr><td colspan="{{len .OpCols | inc}}">no ops recorded</td></tr>
{{- end}}
</tbody>
</table>

<h2>Checkers</h2>
<table>
<thead><tr><th>checker</th><th>valid?</th><th>counts</th><th>problems</th></tr></thead>
<tbody>
{{- range .Results}}
<tr><td>{{.Name}}</td><td class="{{if .Valid}}valid{{else}}invalid{{end}}">{{.Valid}}</td><td>{{.Counts}}</td><td>{{if .Problems}}<ul>{{range .Problems}}<li>{{.}}</li>{{end}}</ul>{{end}}</td></tr>
{{- else}}
<tr><td colspan="4">no checker results</td></tr>
{{- end}}
</tbody>
</table>

<h2>Faults</h2>
{{- if .Faults}}
<table>
<thead><tr><th>kind</th><th>detail</th><th>start (s)</th><th>end (s)</th><th>duration</th><th>error</th></tr></thead>
<tbody>
{{- range .Faults}}
<tr><td><svg width="10" height="10"><rect class="swatch {{.Class}}" width="10" height="10"/></svg> {{.Kind}}</td><td>{{.Detail}}</td><td class="n">{{.Start}}</td><td class="n">{{.End}}</td><td class="n">{{.Duration}}</td><td>{{.Err}}</td></tr>
{{- end}}
</tbody>
</table>
{{- else}}
<p>No faults were injected.</p>
{{- end}}

<h2>Logs</h2>
{{- if .Logs}}
<table>
{{- range .Logs}}
<tr><td>{{.K}}</td><td>{{.V}}</td></tr>
{{- end}}
</table>
{{- else}}
<p>No node logs.</p>
{{- end}}

<h2>History</h2>
<p>{{.TotalOps}} ops by invoke time{{if .Omitted}}: the first {{.RowCap}} and every failed or unknown op after them are listed, {{.Omitted}} OK ops are left out; history.json has them all{{end}}.</p>
<table>
<thead><tr><th>time (s)</th><th>client</th><th>session</th><th>kind</th><th>key</th><th>value</th><th>outcome</th><th>seq</th><th>latency (ms)</th></tr></thead>
<tbody>
{{- range .Rows}}
<tr class="{{.Class}}"><td class="n">{{.Time}}</td><td class="n">{{.Client}}</td><td>{{.Session}}</td><td>{{.Kind}}</td><td>{{.Key}}</td><td>{{.Value}}</td><td>{{.Outcome}}</td><td class="n">{{.Seq}}</td><td class="n">{{.Latency}}</td></tr>
{{- end}}
</tbody>
</table>
</body>
</html>
`))
