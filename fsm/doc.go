// Package fsm is chorus's replicated state machine: the Keyboardia session
// model (PROTOCOL.md §2), the versioned log commands that change it, Apply with
// the validation, clamping and silent-ignore rules of the protocol, the
// invariant repair, the canonical state hash, the per-session resume history
// and op-ID window, and the versioned snapshot codec.
//
// The package is pure. It imports only the standard library, does no I/O
// beyond the io.Reader and io.Writer it is handed, never reads a clock or a
// random source, starts no goroutines and never logs: time, ids and player
// identities arrive as fields of a Command, stamped by the proposer. Every
// replica that applies the same log therefore holds byte-identical state
// (DESIGN.md invariants I4 and I7).
//
// State has no locks. Its owner (the node's raft adapter) serialises Apply
// with reads; Clone gives a copy-on-write view that can be snapshotted or read
// while Apply goes on.
package fsm
