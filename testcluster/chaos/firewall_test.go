package chaos

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// The firewall tests use their own loopback addresses, 127.0.0.241-243:
// iptables rules are global, so they must not cut another test's links.
const (
	fwA = "127.0.0.241"
	fwB = "127.0.0.242"
	fwC = "127.0.0.243"
)

// needIptables skips the test unless iptables can be used.
func needIptables(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for iptables")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		tb.Skipf("iptables not on PATH: %v", err)
	}
}

// taggedRules returns the INPUT rules whose comment starts with prefix.
func taggedRules(tb testing.TB, prefix string) []string {
	tb.Helper()
	out, err := iptables("-S", "INPUT")
	if err != nil {
		tb.Fatal(err)
	}
	var rules []string
	for _, line := range strings.Split(out, "\n") {
		if hasComment(strings.Fields(line), prefix) {
			rules = append(rules, line)
		}
	}
	return rules
}

// fwListen accepts (and closes) connections on ip until the test ends.
func fwListen(tb testing.TB, ip string) string {
	tb.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// fwDial connects from the loopback address from ("": the kernel's choice,
// 127.0.0.1) to addr.
func fwDial(from, addr string) error {
	d := net.Dialer{Timeout: 300 * time.Millisecond}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return fmt.Errorf("dial %s from %s: %w", addr, from, err)
	}
	return c.Close()
}

func TestFirewallTag(t *testing.T) {
	for _, tag := range []string{"", "other-tag", FirewallPrefix + " x", FirewallPrefix + `-"q"`, FirewallPrefix + strings.Repeat("x", 250)} {
		if _, err := newFirewall(tag); err == nil {
			t.Errorf("newFirewall(%q) succeeded", tag)
		}
	}
}

func TestFirewallCutHeal(t *testing.T) {
	needIptables(t)
	tag := fmt.Sprintf("%s-test-%d", FirewallPrefix, os.Getpid())
	f, err := newFirewall(tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := SweepFirewall(tag); err != nil {
			t.Error(err)
		}
	})
	onB, onA := fwListen(t, fwB), fwListen(t, fwA)
	if err := fwDial(fwA, onB); err != nil {
		t.Fatalf("before the cut: %v", err)
	}

	for range 2 { // the second cut is a no-op
		if err := f.Cut(fwA, fwB); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Cut(fwB, fwA); err != nil {
		t.Fatal(err)
	}
	if rules := taggedRules(t, tag); len(rules) != 2 {
		t.Fatalf("after cutting one pair: %d rules, want 2:\n%s", len(rules), strings.Join(rules, "\n"))
	}
	for _, c := range []struct{ from, to string }{{fwA, onB}, {fwB, onA}} {
		var ne net.Error
		if err := fwDial(c.from, c.to); !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("cut link: want a timeout, got %v", err)
		}
	}
	for _, c := range []struct{ from, to string }{{"127.0.0.1", onB}, {"", onA}, {fwC, onB}} {
		if err := fwDial(c.from, c.to); err != nil {
			t.Errorf("uncut link: %v", err)
		}
	}

	// Heal from two goroutines at once, as the harness may on Ctrl-C.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f.Heal() }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if rules := taggedRules(t, tag); len(rules) != 0 {
		t.Fatalf("after Heal: %s", strings.Join(rules, "\n"))
	}
	if err := fwDial(fwA, onB); err != nil {
		t.Fatalf("after Heal: %v", err)
	}
	// A healed pair can be cut again.
	if err := f.Cut(fwA, fwB); err != nil {
		t.Fatal(err)
	}
	if err := f.Heal(); err != nil {
		t.Fatal(err)
	}
	if rules := taggedRules(t, tag); len(rules) != 0 {
		t.Fatalf("after the second Heal: %s", strings.Join(rules, "\n"))
	}
}

// TestFirewallSweep leaves rules behind, as a SIGKILLed harness would, and
// sweeps them by prefix; the abandoned firewall's Heal then finds nothing to do.
func TestFirewallSweep(t *testing.T) {
	needIptables(t)
	prefix := fmt.Sprintf("%s-sweep-%d", FirewallPrefix, os.Getpid())
	t.Cleanup(func() {
		if _, err := SweepFirewall(prefix); err != nil {
			t.Error(err)
		}
	})
	var fws []*firewall
	for i := range 2 {
		f, err := newFirewall(fmt.Sprintf("%s-%d", prefix, i))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Cut(fwA, fwC); err != nil {
			t.Fatal(err)
		}
		fws = append(fws, f)
	}
	other, err := newFirewall(fmt.Sprintf("%s-other-%d", FirewallPrefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := other.Heal(); err != nil {
			t.Error(err)
		}
	})
	if err := other.Cut(fwB, fwC); err != nil {
		t.Fatal(err)
	}

	n, err := SweepFirewall(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("swept %d rules, want 4", n)
	}
	if rules := taggedRules(t, prefix); len(rules) != 0 {
		t.Fatalf("after the sweep: %s", strings.Join(rules, "\n"))
	}
	if rules := taggedRules(t, other.tag); len(rules) != 2 {
		t.Errorf("the sweep touched another tag's rules: %d left, want 2", len(rules))
	}
	for _, f := range fws {
		if err := f.Heal(); err != nil {
			t.Errorf("Heal after a sweep: %v", err)
		}
	}
	if _, err := SweepFirewall(""); err == nil {
		t.Error("sweep with an empty prefix succeeded")
	}
}

// TestFirewallSweepStale: a run removes the rules of a harness that died,
// and leaves those of a harness that still runs.
func TestFirewallSweepStale(t *testing.T) {
	needIptables(t)
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dead, err := newFirewall(fmt.Sprintf("%s-%d-stale", FirewallPrefix, gone.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	live, err := newFirewall(fmt.Sprintf("%s-%d-live", FirewallPrefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := errors.Join(dead.Heal(), live.Heal()); err != nil {
			t.Error(err)
		}
	})
	if err := errors.Join(dead.Cut(fwA, fwB), live.Cut(fwB, fwC)); err != nil {
		t.Fatal(err)
	}
	if _, err := sweepStale(); err != nil {
		t.Fatal(err)
	}
	if rules := taggedRules(t, dead.tag); len(rules) != 0 {
		t.Errorf("the dead harness's rules survived the sweep: %s", strings.Join(rules, "\n"))
	}
	if rules := taggedRules(t, live.tag); len(rules) != 2 {
		t.Errorf("the sweep touched a live harness's rules: %d left, want 2", len(rules))
	}
}
