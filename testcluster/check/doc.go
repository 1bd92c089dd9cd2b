// Package check owns the chaos harness's history model and its checkers: the
// recorded operations, deliveries, socket closes and final node states of one
// run (History, which round-trips through JSON so a run can be saved and
// re-checked), and one checker per invariant of DESIGN.md §2 (LostWrites for
// I5, SeqMonotonic for I1, Convergence for I4, Linearizable for the
// register-like fields, NoDoubleApply for I6, NoSilentSkip for I3), plus
// CheckAll and a Jepsen-style text Summary. Recorder collects a History from
// a workload's goroutines, and registers.go holds the register names and
// renderings that the workloads share.
//
// It is pure: it does no I/O, starts no processes and talks to no cluster.
// The harness that runs processes, nemeses and the workload records a History
// and hands it here. It must not import fsm, node or transport: the harness
// translates wire frames and session state into History values (for example
// NodeState.Registers), so a protocol change never rewrites the checkers.
package check
