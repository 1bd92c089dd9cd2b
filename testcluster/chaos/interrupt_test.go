package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chorus/testcluster"
)

// TestInterruptHeals sends SIGINT (Ctrl-C) to chorus chaos while a
// partition is in force: the harness removes its iptables rules, stops its
// nodes, checks nothing and exits with status 3.
func TestInterruptHeals(t *testing.T) {
	if testing.Short() {
		t.Skip("runs chorus chaos")
	}
	needIptables(t)
	dir := t.TempDir()
	cmd := exec.Command(chorusBinary(t), "chaos", "--nemesis", "partition", "--duration", "2m", "--first-ip", "91",
		"--clients", "3", "--seed", "7", "--dir", dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill() // the test failed before the harness exited; the error is the test's
			_ = cmd.Wait()
		}
		if _, err := SweepFirewall(fmt.Sprintf("%s-%d-", FirewallPrefix, cmd.Process.Pid)); err != nil {
			t.Error(err)
		}
	})
	tag := fmt.Sprintf("%s-%d-", FirewallPrefix, cmd.Process.Pid)
	testcluster.Eventually(t, time.Minute, func() error {
		if len(taggedRules(t, tag)) == 0 {
			return errors.New("no partition yet")
		}
		return nil
	})
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	exited = true
	if ee, ok := errors.AsType[*exec.ExitError](err); !ok || ee.ExitCode() != 3 {
		t.Fatalf("chorus chaos after SIGINT: %v, want exit status 3\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "interrupted") {
		t.Errorf("the output does not say the run was interrupted:\n%s", out.String())
	}
	if rules := taggedRules(t, tag); len(rules) != 0 {
		t.Fatalf("rules left after SIGINT:\n%s", strings.Join(rules, "\n"))
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(dir)) {
			t.Errorf("a node outlived the harness: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}
