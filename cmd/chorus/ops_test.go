package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"chorus/testcluster"
)

// runOps runs the command line and returns stdout and the exit code (0 for
// success).
func runOps(t *testing.T, args ...string) (string, int, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(args, &stdout, &stderr)
	code := 0
	if err != nil {
		code = exitCode
		if ee, ok := errors.AsType[*exitError](err); ok {
			code = ee.code
		}
	}
	return stdout.String(), code, err
}

// TestOperatorCommands drives status, members and leadership against a real
// three-node cluster in this process, over HTTP.
func TestOperatorCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	const token = "ops-test-token"
	c := testcluster.New(t, testcluster.Options{FirstIP: 26, HTTP: true, AdminToken: token})
	leader := c.WaitLeader(10 * time.Second)
	addr := c.Members[(leader+1)%3].HTTPAddr // a follower: the routes work through any node

	// A healthy cluster: every member listed with its state, exit 0.
	testcluster.Eventually(t, 10*time.Second, func() error {
		out, code, err := runOps(t, "status", "--addr", addr)
		if code != 0 {
			return fmt.Errorf("status: exit %d: %v\n%s", code, err, out)
		}
		for _, want := range []string{"ID", "LAG", "leader", "follower", c.Members[0].ID, c.Members[1].ID, c.Members[2].ID, c.Members[leader].HTTPAddr} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("status lacks %q:\n%s", want, out)
			}
		}
		return nil
	})
	out, code, err := runOps(t, "status", "--addr", addr, "--json")
	var views []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &views) != nil || len(views) != 3 {
		t.Fatalf("status --json: exit %d, %v, %d members:\n%s", code, err, len(views), out)
	}

	// The admin commands need the token, and a right one.
	if _, code, err := runOps(t, "leadership", "transfer", "--addr", addr); code != usageExitCode || !strings.Contains(err.Error(), "admin token") {
		t.Fatalf("transfer without a token: exit %d, %v", code, err)
	}
	if _, code, err := runOps(t, "members", "remove", "--addr", addr, "--admin-token", "wrong", "n3"); code != exitCode || !strings.Contains(err.Error(), "HTTP 403") {
		t.Fatalf("remove with a wrong token: exit %d, %v", code, err)
	}

	// Leadership to a chosen follower.
	target := c.Members[(leader+2)%3]
	out, code, err = runOps(t, "leadership", "transfer", "--addr", addr, "--admin-token", token, "--to", target.ID)
	if code != 0 || !strings.Contains(out, "leadership transferred") {
		t.Fatalf("transfer: exit %d, %v\n%s", code, err, out)
	}
	if got := c.WaitLeader(10 * time.Second); got != target.Index {
		t.Fatalf("leader %s after a transfer to %s", c.Members[got].ID, target.ID)
	}

	// A member that never answers: status shows it unreachable and exits 1.
	if out, code, err := runOps(t, "members", "add", "--addr", addr, "--admin-token", token,
		"--id", "n9", "--peer-addr", "127.0.0.1:1", "--http-addr", "127.0.0.1:1", "--nonvoter"); code != 0 || !strings.Contains(out, "added n9") {
		t.Fatalf("add: exit %d, %v\n%s", code, err, out)
	}
	testcluster.Eventually(t, 10*time.Second, func() error {
		out, code, err := runOps(t, "status", "--addr", addr)
		if code != exitCode || !strings.Contains(out, "unreachable") || err == nil || !strings.Contains(err.Error(), "n9 is unreachable") {
			return fmt.Errorf("status with n9: exit %d, %v\n%s", code, err, out)
		}
		return nil
	})
	if out, code, err := runOps(t, "members", "remove", "--addr", addr, "--admin-token", token, "n9"); code != 0 || !strings.Contains(out, "removed n9") {
		t.Fatalf("remove: exit %d, %v\n%s", code, err, out)
	}
	testcluster.Eventually(t, 10*time.Second, func() error {
		if out, code, err := runOps(t, "status", "--addr", addr); code != 0 || strings.Contains(out, "n9") {
			return fmt.Errorf("status after removing n9: exit %d, %v\n%s", code, err, out)
		}
		return nil
	})

	// A bad request gets the node's message; a dead address a clear error.
	if _, code, err := runOps(t, "leadership", "transfer", "--addr", addr, "--admin-token", token, "--to", "n8"); code != exitCode || !strings.Contains(err.Error(), "HTTP 400") {
		t.Fatalf("transfer to an unknown node: exit %d, %v", code, err)
	}
	if _, code, err := runOps(t, "status", "--addr", "127.0.0.1:1"); code != exitCode || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("status of a dead address: exit %d, %v", code, err)
	}
}

func TestOperatorCommandLines(t *testing.T) {
	tests := []struct {
		args   []string
		wantIn string
	}{
		{[]string{"members"}, "want add or remove"},
		{[]string{"members", "join"}, "want add or remove"},
		{[]string{"members", "add", "--admin-token", "x", "--id", "n4"}, "needs --id and --peer-addr"},
		{[]string{"members", "remove", "--admin-token", "x"}, "one member id"},
		{[]string{"leadership"}, "want transfer"},
		{[]string{"leadership", "transfer", "now"}, `unexpected argument "now"`},
		{[]string{"status", "now"}, `unexpected argument "now"`},
	}
	// A node's own settings in the environment are not a member to add.
	t.Setenv("CHORUS_ID", "n9")
	t.Setenv("CHORUS_PEER_ADDR", "127.0.0.1:9089")
	tests = append(tests, struct {
		args   []string
		wantIn string
	}{[]string{"members", "add", "--admin-token", "x"}, "needs --id and --peer-addr"})
	for _, tt := range tests {
		_, code, err := runOps(t, tt.args...)
		if code != usageExitCode || err == nil || !strings.Contains(err.Error(), tt.wantIn) {
			t.Errorf("%q: exit %d, %v; want %d with %q", tt.args, code, err, usageExitCode, tt.wantIn)
		}
	}
}
