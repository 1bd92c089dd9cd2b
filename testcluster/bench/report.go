package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Target is a goal a figure (or its ratio to a baseline) must meet.
type Target struct {
	Max     *float64 `json:"max,omitempty"` // at most
	Min     *float64 `json:"min,omitempty"` // at least
	OfRatio bool     `json:"ofRatio"`       // the bound applies to Ratio, not Value
}

// atMost and atLeast build targets on the value; ratioAtLeast on the ratio.
func atMost(v float64) *Target       { return &Target{Max: &v} }
func ratioAtLeast(v float64) *Target { return &Target{Min: &v, OfRatio: true} }

func (t *Target) String() string {
	if t == nil {
		return ""
	}
	what := ""
	if t.OfRatio {
		what = "ratio "
	}
	if t.Max != nil {
		return what + "≤ " + num(*t.Max)
	}
	return what + "≥ " + num(*t.Min)
}

// Figure is one measured number.
type Figure struct {
	Scenario string  `json:"scenario"`
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Target   *Target `json:"target,omitempty"`
	// Baseline is what the value is compared with, measured in the same
	// run, and Ratio is Value / BaselineValue.
	Baseline      string  `json:"baseline,omitempty"`
	BaselineValue float64 `json:"baselineValue,omitempty"`
	Ratio         float64 `json:"ratio,omitempty"`
	Met           *bool   `json:"met,omitempty"` // set when there is a target
	Note          string  `json:"note,omitempty"`
}

// MarshalJSON writes a figure that was not measured (NaN, an empty set) or
// a ratio to a zero baseline (±Inf) as null, as JSON has no such numbers;
// a figure without a baseline has no baselineValue or ratio.
func (f Figure) MarshalJSON() ([]byte, error) {
	type plain Figure // without this method
	number := func(v float64) json.RawMessage {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return json.RawMessage("null")
		}
		return strconv.AppendFloat(nil, v, 'g', -1, 64)
	}
	out := struct {
		plain
		Value         json.RawMessage `json:"value"`
		BaselineValue json.RawMessage `json:"baselineValue,omitempty"`
		Ratio         json.RawMessage `json:"ratio,omitempty"`
	}{plain: plain(f), Value: number(f.Value)}
	if f.Baseline != "" {
		out.BaselineValue, out.Ratio = number(f.BaselineValue), number(f.Ratio)
	}
	return json.Marshal(out)
}

// judge sets Met from the target.
func (f *Figure) judge() {
	if f.Target == nil {
		return
	}
	v := f.Value
	if f.Target.OfRatio {
		v = f.Ratio
	}
	ok := !math.IsNaN(v) && !math.IsInf(v, 0) // nothing measured, or a zero baseline, meets nothing
	if f.Target.Max != nil {
		ok = ok && v <= *f.Target.Max
	}
	if f.Target.Min != nil {
		ok = ok && v >= *f.Target.Min
	}
	f.Met = &ok
}

// Report is the outcome of a run.
type Report struct {
	Started   time.Time     `json:"started"`
	Took      time.Duration `json:"tookNs"`
	Machine   string        `json:"machine"`
	Scenarios []string      `json:"scenarios"`
	Figures   []Figure      `json:"figures"`
}

// Missed returns the figures that missed their target.
func (r *Report) Missed() []Figure {
	var out []Figure
	for _, f := range r.Figures {
		if f.Met != nil && !*f.Met {
			out = append(out, f)
		}
	}
	return out
}

// Table writes the figures for people: one row per figure.
func (r *Report) Table(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "scenario\tfigure\tvalue\tunit\ttarget\tbaseline\tratio\tmet\t\n")
	for _, f := range r.Figures {
		met := ""
		if f.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*f.Met]
		}
		base, ratio := "", ""
		if f.Baseline != "" {
			base = f.Baseline + " " + num(f.BaselineValue)
			ratio = strconv.FormatFloat(f.Ratio, 'f', 2, 64)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", f.Scenario, f.Name, num(f.Value), f.Unit, f.Target, base, ratio, met)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, f := range r.Figures {
		if f.Note != "" {
			fmt.Fprintf(w, "  %s %s: %s\n", f.Scenario, f.Name, f.Note)
		}
	}
	missed := r.Missed()
	targets := 0
	for _, f := range r.Figures {
		if f.Met != nil {
			targets++
		}
	}
	_, err := fmt.Fprintf(w, "\n%d of %d targets met; took %v on %s.\n", targets-len(missed), targets, r.Took.Round(time.Second), r.Machine)
	return err
}

// machine describes where the run happened.
func machine() string {
	return fmt.Sprintf("%d CPUs, %s/%s, %s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// num prints a figure with about three significant digits.
func num(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "n/a"
	case a >= 100 || v == math.Trunc(v):
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// percentile returns the p-quantile (0..1) of ds in milliseconds, NaN when
// there are none. It sorts ds.
func percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return math.NaN()
	}
	slices.Sort(ds)
	i := int(math.Ceil(p*float64(len(ds)))) - 1
	return ms(ds[max(0, min(i, len(ds)-1))])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// median returns the median of vs, NaN when there are none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(vs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// latencyFigures are p50, p99, p999 and max of ds, in ms, named prefix + " p50" and so on.
func latencyFigures(scenario, prefix string, ds []time.Duration) []Figure {
	var out []Figure
	for _, q := range []struct {
		name string
		p    float64
	}{{"p50", 0.50}, {"p99", 0.99}, {"p999", 0.999}, {"max", 1}} {
		out = append(out, Figure{Scenario: scenario, Name: strings.TrimSpace(prefix + " " + q.name), Value: percentile(ds, q.p), Unit: "ms"})
	}
	return out
}
