// Command chorus is a Raft-replicated live-session store for the Keyboardia
// collaborative step sequencer.
//
// Usage:
//
//	chorus <command> [flags]
//
// The commands are serve (one cluster node), dev (three local nodes), chaos
// (the chaos-test harness), bench (the load generator), version and help.
// Only version and help work so far; the other four report that they are not
// implemented yet and exit with status 2.
//
// This package owns flags, signal handling and wiring, and nothing else: no
// domain logic and no package-level state beyond the version that the build
// stamps in with -ldflags.
package main
