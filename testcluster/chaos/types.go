package chaos

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"chorus/testcluster/check"
)

// The nemesis kinds, as named on the command line (--nemesis).
const (
	NemKill      = "kill"      // SIGKILL a node (any, or the leader) or all of them, restart later
	NemPause     = "pause"     // SIGSTOP a node (any, or the leader), SIGCONT later
	NemPartition = "partition" // iptables: minority/majority, isolate the leader, ring
	NemTransfer  = "transfer"  // leadership transfer through the admin API
	NemMember    = "member"    // remove a node, wipe it, add it back empty
)

// AllNemeses lists every nemesis kind in a fixed order.
var AllNemeses = []string{NemKill, NemPause, NemPartition, NemTransfer, NemMember}

// ParseNemeses parses a --nemesis list: comma-separated kinds, "all", or
// "none".
func ParseNemeses(s string) ([]string, error) {
	switch s = strings.TrimSpace(s); s {
	case "all":
		return slices.Clone(AllNemeses), nil
	case "none", "":
		return nil, nil
	}
	var out []string
	for _, k := range strings.Split(s, ",") {
		k = strings.TrimSpace(k)
		if !slices.Contains(AllNemeses, k) {
			return nil, fmt.Errorf("unknown nemesis %q; want some of %s, or all, or none", k, strings.Join(AllNemeses, ","))
		}
		if !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out, nil
}

// Fault is one fault the nemesis injected: a window from Start to End (End
// is zero while the fault is still active).
type Fault struct {
	Kind string `json:"kind"` // one of the Nem* kinds
	// Detail says what exactly happened, e.g. "kill n2 (leader)" or
	// "partition n1 | n2 n3".
	Detail string    `json:"detail"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	// Err is set when injecting or healing the fault failed.
	Err string `json:"err,omitempty"`
}

// Report is everything one run produced: its settings, the recorded
// history, the checker results and the faults.
type Report struct {
	Seed     int64         `json:"seed"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration"` // the workload's length as asked
	Elapsed  time.Duration `json:"elapsed"`  // the whole run, setup and checks included
	Nodes    int           `json:"nodes"`
	Clients  int           `json:"clients"`
	Sessions int           `json:"sessions"`
	Nemeses  []string      `json:"nemeses"`
	// Notes are remarks for the reader, e.g. that the partition nemesis was
	// skipped because the harness is not root.
	Notes   []string          `json:"notes,omitempty"`
	Faults  []Fault           `json:"faults"`
	History *check.History    `json:"history"`
	Results []check.Result    `json:"results"`
	Valid   bool              `json:"valid"`
	Logs    map[string]string `json:"logs"` // node id -> log file path
}
