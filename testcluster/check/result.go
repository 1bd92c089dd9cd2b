package check

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// maxProblems caps Result.Problems; Counts keeps the full tally.
const maxProblems = 10

// Result is one checker's verdict on a History.
type Result struct {
	Name  string `json:"name"`
	Valid bool   `json:"valid"`
	// Problems holds the first few violations, human readable.
	Problems []string `json:"problems,omitempty"`
	// Counts tallies what the checker looked at and what it found.
	Counts map[string]int `json:"counts"`
}

func newResult(name string) Result {
	return Result{Name: name, Valid: true, Counts: map[string]int{}}
}

// fail records a violation: the result becomes invalid, the "violations"
// count goes up and the message is kept if there is room.
func (r *Result) fail(format string, args ...any) {
	r.Valid = false
	r.Counts["violations"]++
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// Checker is the signature every checker has.
type Checker func(h *History) Result

// Checkers lists every checker in the order CheckAll runs them.
var Checkers = []Checker{LostWrites, SeqMonotonic, Convergence, Linearizable, NoDoubleApply, NoSilentSkip}

// CheckAll runs every checker on h.
func CheckAll(h *History) []Result {
	out := make([]Result, 0, len(Checkers))
	for _, c := range Checkers {
		out = append(out, c(h))
	}
	return out
}

// Valid reports whether every result is valid.
func Valid(rs []Result) bool {
	for _, r := range rs {
		if !r.Valid {
			return false
		}
	}
	return true
}

// Summary renders results in the style of a Jepsen result map: per checker
// :valid?, its counts and problems, the op counts by outcome, and the overall
// :valid?.
func Summary(h *History, rs []Result) string {
	var b strings.Builder
	b.WriteString("{")
	for i, r := range rs {
		if i > 0 {
			b.WriteString("\n ")
		}
		fmt.Fprintf(&b, ":%s {:valid? %t", r.Name, r.Valid)
		for _, k := range slices.Sorted(maps.Keys(r.Counts)) {
			fmt.Fprintf(&b, ", :%s %d", k, r.Counts[k])
		}
		if len(r.Problems) > 0 {
			b.WriteString(",\n   :problems [")
			for j, p := range r.Problems {
				if j > 0 {
					b.WriteString("\n              ")
				}
				fmt.Fprintf(&b, "%q", p)
			}
			b.WriteString("]")
		}
		b.WriteString("},")
	}
	n := map[Outcome]int{}
	for _, o := range h.Ops {
		n[o.Outcome]++
	}
	if len(rs) > 0 {
		b.WriteString("\n ")
	}
	fmt.Fprintf(&b, ":ops {:ok %d, :failed %d, :unknown %d},\n :valid? %t}\n",
		n[OK], n[Failed], n[Unknown], Valid(rs))
	return b.String()
}
