// Command chorus is a Raft-replicated live-session store for the Keyboardia
// collaborative step sequencer.
//
// Usage:
//
//	chorus <command> [flags]
//
// The commands are serve (one cluster node), dev (three local nodes), chaos
// (the chaos-test harness), bench (the load generator), the operator commands
// over the admin API (status, members, leadership, snapshot), tls init (a CA
// and node certificates), version and help. Exit status: 0 on success, 1 on
// failure, 2 for a bad command line; chaos and bench document their own.
//
// This package owns flags, signal handling and wiring, and nothing else: no
// domain logic and no package-level state beyond the version that the build
// stamps in with -ldflags.
package main
