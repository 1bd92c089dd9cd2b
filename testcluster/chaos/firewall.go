package chaos

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// FirewallPrefix starts the comment of every iptables rule the harness adds.
// A harness tags its rules FirewallPrefix + "-" + something unique to the
// run (its pid first), and each run starts by removing the rules of
// harnesses that died without healing (sweepStale).
const FirewallPrefix = "chorus-chaos"

// firewall cuts links between loopback addresses with iptables DROP rules in
// the INPUT chain. Each node's peer dialer binds the node's own loopback IP,
// so a rule on a source/destination pair cuts exactly one link, while the
// harness's own traffic (from 127.0.0.1) passes. Safe for concurrent use.
type firewall struct {
	tag string // the comment on every rule

	// mu guards rules and cut. It is held across the iptables calls on
	// purpose: a Heal racing a Cut must not miss a rule that is being
	// inserted, or the rule would outlive the harness.
	mu    sync.Mutex
	rules [][]string         // specs of the rules in force, in insertion order
	cut   map[[2]string]bool // the cut pairs, lower address first
}

// newFirewall checks that iptables can be used (root, on PATH, and the INPUT
// chain can be listed) and returns a firewall whose rules carry tag, which
// must start with FirewallPrefix.
func newFirewall(tag string) (*firewall, error) {
	if !strings.HasPrefix(tag, FirewallPrefix) || strings.ContainsAny(tag, " \t\"'") || len(tag) > 255 {
		return nil, fmt.Errorf("firewall tag %q must start with %q, have no blanks or quotes and at most 255 bytes", tag, FirewallPrefix)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("firewall: iptables needs root (run the harness as root, or leave out the partition nemesis)")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil, fmt.Errorf("firewall: iptables not found: %w", err)
	}
	if _, err := iptables("-S", "INPUT"); err != nil {
		return nil, fmt.Errorf("firewall: iptables unusable: %w", err)
	}
	return &firewall{tag: tag, cut: map[[2]string]bool{}}, nil
}

// Cut drops all packets between the loopback IPs a and b, both ways. Cutting
// a pair that is already cut does nothing.
func (f *firewall) Cut(a, b string) error {
	pair := [2]string{min(a, b), max(a, b)}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut[pair] {
		return nil
	}
	for _, dir := range [][2]string{{a, b}, {b, a}} {
		spec := []string{"-s", dir[0], "-d", dir[1], "-j", "DROP", "-m", "comment", "--comment", f.tag}
		if _, err := iptables(append([]string{"-I", "INPUT"}, spec...)...); err != nil {
			return fmt.Errorf("cut %s from %s: %w", dir[0], dir[1], err)
		}
		f.rules = append(f.rules, spec)
	}
	f.cut[pair] = true
	return nil
}

// Heal deletes every rule the firewall added. It tries them all and returns
// the failures joined; a rule whose deletion failed but that is still in
// place is kept, so that a later Heal tries again. Calling it twice is fine.
func (f *firewall) Heal() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	var kept [][]string
	for i := len(f.rules) - 1; i >= 0; i-- {
		spec := f.rules[i]
		_, err := iptables(append([]string{"-D", "INPUT"}, spec...)...)
		if err == nil {
			continue
		}
		if in, cerr := ruleExists(spec); cerr == nil && !in {
			continue // already gone (swept by someone else): nothing left to heal
		}
		errs = append(errs, fmt.Errorf("heal %s: %w", strings.Join(spec, " "), err))
		kept = append([][]string{spec}, kept...)
	}
	f.rules = kept
	clear(f.cut)
	for _, spec := range kept {
		f.cut[[2]string{min(spec[1], spec[3]), max(spec[1], spec[3])}] = true
	}
	return errors.Join(errs...)
}

// SweepFirewall deletes every rule of the INPUT chain whose comment starts
// with prefix, such as those of a harness that was SIGKILLed, and returns
// how many it deleted.
func SweepFirewall(prefix string) (int, error) {
	if prefix == "" {
		return 0, errors.New("sweep firewall: empty prefix")
	}
	return sweep(func(tag string) bool { return strings.HasPrefix(tag, prefix) })
}

// sweepStale removes the rules of harnesses that are gone: tags
// FirewallPrefix-<pid>-… whose pid is not a live process. Rules of a harness
// that still runs (another run on other addresses) are left alone.
func sweepStale() (int, error) {
	return sweep(func(tag string) bool {
		rest, ok := strings.CutPrefix(tag, FirewallPrefix+"-")
		if !ok {
			return false
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil || pid <= 0 {
			return true // not a tag this harness writes: a leftover all the same
		}
		return syscall.Kill(pid, 0) == syscall.ESRCH
	})
}

// sweep deletes every INPUT rule whose comment match accepts.
func sweep(match func(tag string) bool) (int, error) {
	out, err := iptables("-S", "INPUT")
	if err != nil {
		return 0, fmt.Errorf("sweep firewall: %w", err)
	}
	n := 0
	var errs []error
	for _, line := range strings.Split(out, "\n") {
		args := strings.Fields(line)
		if len(args) < 2 || args[0] != "-A" || !match(comment(args)) {
			continue
		}
		args[0] = "-D"
		if _, err := iptables(args...); err != nil {
			errs = append(errs, fmt.Errorf("sweep firewall: %w", err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// comment returns the comment of a rule as iptables -S prints it, or "".
// Our tags have no blanks, so iptables does not quote them.
func comment(args []string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--comment" {
			return args[i+1]
		}
	}
	return ""
}

// hasComment reports whether a rule as iptables -S prints it has a comment
// starting with prefix.
func hasComment(args []string, prefix string) bool {
	c := comment(args)
	return c != "" && strings.HasPrefix(c, prefix)
}

// ruleExists checks for a rule of the INPUT chain with iptables -C, which
// exits with status 1 when there is none.
func ruleExists(spec []string) (bool, error) {
	_, err := iptables(append([]string{"-C", "INPUT"}, spec...)...)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 {
		return false, nil
	}
	return err == nil, err
}

// iptables runs iptables with args, waiting up to 5s for the xtables lock,
// and returns its output; an error carries the output too.
func iptables(args ...string) (string, error) {
	out, err := exec.Command("iptables", append([]string{"-w", "5"}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
