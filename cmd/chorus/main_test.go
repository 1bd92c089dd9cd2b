package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRun(t *testing.T) {
	subcommands := []string{"serve", "dev", "chaos", "bench", "status", "members", "leadership", "tls", "snapshot", "version", "help"}
	tests := []struct {
		name       string
		args       []string
		wantCode   int      // 0: run succeeds
		wantErrIn  string   // substring of the error, when wantCode != 0
		wantStdout []string // substrings of stdout
		wantStderr []string // substrings of stderr
	}{
		{name: "help", args: []string{"help"}, wantStdout: subcommands},
		{name: "-h", args: []string{"-h"}, wantStdout: subcommands},
		{name: "--help", args: []string{"--help"}, wantStdout: subcommands},
		{name: "version", args: []string{"version"}, wantStdout: []string{"chorus " + version}},
		{name: "no command", args: nil, wantCode: usageExitCode, wantErrIn: "no command", wantStderr: subcommands},
		{name: "unknown", args: []string{"frobnicate"}, wantCode: usageExitCode, wantErrIn: "chorus help"},
		{name: "serve missing flags", args: []string{"serve", "--id", "n1"}, wantCode: usageExitCode, wantErrIn: "missing --"},
		{name: "serve bad peers", args: []string{"serve", "--id", "n1", "--data-dir", "d", "--cluster-secret", "s", "--peers", "n1"}, wantCode: usageExitCode, wantErrIn: "not id=host:port"},
		{name: "serve advertised wildcard", args: []string{"serve", "--id", "n1", "--data-dir", "d", "--cluster-secret", "s", "--advertise-http-addr", "0.0.0.0:8081"}, wantCode: usageExitCode, wantErrIn: "--advertise-http-addr"},
		{name: "serve advertised no port", args: []string{"serve", "--id", "n1", "--data-dir", "d", "--cluster-secret", "s", "--advertise-http-addr", "chorus.example"}, wantCode: usageExitCode, wantErrIn: "--advertise-http-addr"},
		{name: "serve bad flag", args: []string{"serve", "--bogus"}, wantCode: usageExitCode, wantErrIn: "bogus"},
		{name: "dev bad flag", args: []string{"dev", "--bogus"}, wantCode: usageExitCode, wantErrIn: "bogus"},
		{name: "chaos help", args: []string{"chaos", "-h"}, wantStderr: []string{"chorus chaos [flags]", "-nemesis", "-seed", "iptables"}},
		{name: "chaos bad nemesis", args: []string{"chaos", "--nemesis", "kill,flood"}, wantCode: usageExitCode, wantErrIn: `unknown nemesis "flood"`},
		{name: "chaos argument", args: []string{"chaos", "now"}, wantCode: usageExitCode, wantErrIn: `unexpected argument "now"`},
		{name: "chaos too many nodes", args: []string{"chaos", "--nodes", "12", "--dir", "/nonexistent/chaos"}, wantCode: usageExitCode, wantErrIn: "12 nodes"},
		{name: "chaos crowded session", args: []string{"chaos", "--clients", "20", "--sessions", "1", "--dir", "/nonexistent/chaos"}, wantCode: usageExitCode, wantErrIn: "more than 8 on one session"},
		{name: "chaos nemeses on one node", args: []string{"chaos", "--nodes", "1", "--dir", "/nonexistent/chaos"}, wantCode: usageExitCode, wantErrIn: "at least 3 nodes"},
		{name: "bench help", args: []string{"bench", "-h"}, wantStderr: []string{"chorus bench [flags]", "-scenarios", "-target", "bare hashicorp/raft"}},
		{name: "bench unknown scenario", args: []string{"bench", "--scenarios", "steady,flood", "--dir", "/nonexistent/bench"}, wantCode: usageExitCode, wantErrIn: `unknown scenario "flood"`},
		{name: "bench bad profile", args: []string{"bench", "--profile", "huge"}, wantCode: usageExitCode, wantErrIn: "--profile"},
		{name: "bench bad writers", args: []string{"bench", "--writers", "64,x"}, wantCode: usageExitCode, wantErrIn: `"x" is not a positive count`},
		{name: "bench crowded session", args: []string{"bench", "--players", "11", "--dir", "/nonexistent/bench"}, wantCode: usageExitCode, wantErrIn: "at most 10"},
		{name: "bench failover on a target", args: []string{"bench", "--target", "127.0.0.1:1", "--scenarios", "failover"}, wantCode: usageExitCode, wantErrIn: "cannot run against --target"},
		{name: "bench argument", args: []string{"bench", "now"}, wantCode: usageExitCode, wantErrIn: `unexpected argument "now"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(tt.args, &stdout, &stderr)
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("run(%q) = %v, want nil", tt.args, err)
				}
			} else {
				ee, ok := errors.AsType[*exitError](err)
				if !ok {
					t.Fatalf("run(%q) = %v, want an *exitError", tt.args, err)
				}
				if ee.code != tt.wantCode {
					t.Errorf("exit code = %d, want %d", ee.code, tt.wantCode)
				}
				// The message is what the user reads, so its wording is the
				// behaviour under test here.
				if !strings.Contains(err.Error(), tt.wantErrIn) {
					t.Errorf("error %q does not contain %q", err, tt.wantErrIn)
				}
			}
			for _, s := range tt.wantStdout {
				if !strings.Contains(stdout.String(), s) {
					t.Errorf("stdout does not contain %q:\n%s", s, stdout.String())
				}
			}
			for _, s := range tt.wantStderr {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("stderr does not contain %q:\n%s", s, stderr.String())
				}
			}
			if tt.wantStdout == nil && stdout.Len() > 0 {
				t.Errorf("unexpected stdout:\n%s", stdout.String())
			}
		})
	}
}
