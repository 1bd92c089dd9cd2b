package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// version is stamped at build time with
// -ldflags "-X main.version=<version>"; it is the only package-level variable.
var version = "dev"

// exitCode is the status main exits with for an error that carries none.
const exitCode = 1

// usageExitCode is the status for a command line chorus cannot act on: an
// unknown or missing command, or one that is not implemented yet.
const usageExitCode = 2

const helpText = `chorus is a Raft-replicated live-session store for the Keyboardia step sequencer.

Usage:
  chorus <command> [flags]

Commands:
  serve       one cluster node: Raft log, peer port, HTTP and WebSocket API
  dev         three local nodes (HTTP 127.0.0.1:8081-8083, peers :9081-9083, data under ./data), Ctrl-C stops all
  chaos       the chaos-test harness (real node processes, nemeses, workload, checkers, report)
  bench       the load generator (throughput, end-to-end latency, fan-out, failover)
  status      the cluster as every member sees it: state, leader, indexes, lag
  members     add or remove a member (admin token)
  leadership  transfer leadership to another voter (admin token)
  tls         tls init: create a CA and node certificates for mutual TLS and HTTPS
  snapshot    save a backup of the cluster's state, restore one, inspect one (admin token)
  version     print the version
  help        print this help

Run 'chorus <command> -h' for a command's flags.
`

// exitError is an error that tells main which status to exit with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chorus:", err)
		code := exitCode
		if ee, ok := errors.AsType[*exitError](err); ok {
			code = ee.code
		}
		os.Exit(code)
	}
}

// run executes the command line args (without the program name), writing
// normal output to stdout and diagnostics to stderr.
func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		// Write errors to stderr are not actionable: the error returned below
		// still reaches the user through main.
		_, _ = io.WriteString(stderr, helpText)
		return &exitError{code: usageExitCode, err: errors.New("no command given")}
	}
	switch name := args[0]; name {
	case "help", "-h", "-help", "--help":
		_, err := io.WriteString(stdout, helpText)
		return err
	case "version", "-version", "--version":
		_, err := fmt.Fprintf(stdout, "chorus %s\n", version)
		return err
	case "serve":
		return serve(args[1:], stdout, stderr, os.Getenv)
	case "dev":
		return dev(args[1:], stdout, stderr, os.Getenv)
	case "chaos":
		return chaosCmd(args[1:], stdout, stderr, os.Getenv)
	case "bench":
		return benchCmd(args[1:], stdout, stderr, os.Getenv)
	case "status":
		return statusCmd(args[1:], stdout, stderr, os.Getenv)
	case "members":
		return membersCmd(args[1:], stdout, stderr, os.Getenv)
	case "leadership":
		return leadershipCmd(args[1:], stdout, stderr, os.Getenv)
	case "tls":
		return tlsCmd(args[1:], stdout, stderr)
	case "snapshot":
		return snapshotCmd(args[1:], stdout, stderr, os.Getenv)
	default:
		return &exitError{
			code: usageExitCode,
			err:  fmt.Errorf("unknown command %q; run 'chorus help' for usage", name),
		}
	}
}
