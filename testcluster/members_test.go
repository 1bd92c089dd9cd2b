package testcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// membersFirstIP is this file's loopback block: n1-n3 on 127.0.0.75-77,
// their replacement n4 on .78.
const membersFirstIP = 75

// TestReplaceDeadNode replaces a dead node with the operator commands of the
// real binary while Keyboardia-like pages edit: n3 is made the leader
// (`chorus leadership transfer --to n3`), then killed for good (SIGKILL,
// data dir wiped), `chorus members remove n3`, a fresh n4 (new id,
// empty data dir, no --peers) is started and `chorus members add` adds it.
// `chorus status` then shows three voters, one leader, every member
// reachable, exit code 0, and lag 0 once the edits stop. Edits are
// acknowledged throughout but for a bounded blip; n4 ends with
// byte-identical state (what was written before and during the
// replacement), serves a page of its own, and nothing acknowledged is lost.
func TestReplaceDeadNode(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	seed := kbSeed(t)
	bin, err := BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := Context(t, 3*time.Minute)
	p, err := StartProcs(ctx, ProcOptions{Binary: bin, Dir: t.TempDir(), FirstIP: membersFirstIP})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	t.Cleanup(func() { logNodeTails(t, p) })
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	addrs := []string{p.Nodes[0].HTTPAddr, p.Nodes[1].HTTPAddr, p.Nodes[2].HTTPAddr}
	cli := func(args ...string) (string, int, error) { return runChorus(ctx, bin, args...) }
	via := p.Nodes[0].HTTPAddr
	token := p.AdminToken()

	sessions := kbCreateSessions(t, ctx, hc, addrs[0], 2)
	rec := &kbRecorder{}
	var players []*kbPlayer
	for i, s := range sessions {
		for j := range 3 {
			// Behind a load balancer: a page whose node is gone reconnects
			// to another one.
			players = append(players, newKBPlayer(len(players), s, addrs, (i+j)%3, false, 60*time.Millisecond, rec, hc, seed))
		}
	}
	load := startKBLoad(ctx, players)
	t.Cleanup(load.close)
	if err := load.waitConnected(30*time.Second, nil, 25); err != nil {
		t.Fatalf("warm-up: %v", err)
	}

	// n3 leads, and dies for good: the worst case, an election comes first.
	const dead = 2
	Eventually(t, 20*time.Second, func() error {
		if out, code, err := cli("leadership", "transfer", "--addr", via, "--admin-token", token, "--to", "n3"); code != 0 {
			return fmt.Errorf("chorus leadership transfer --to n3: exit %d: %v\n%s", code, err, out)
		}
		if l, err := p.WaitLeader(ctx, 5*time.Second); err != nil || l != dead {
			return fmt.Errorf("leader %d after the transfer to n3 (%v)", l, err)
		}
		return nil
	})
	if err := load.waitConnected(30*time.Second, load.ackCounts(), 5); err != nil {
		t.Fatalf("with n3 leading: %v", err)
	}
	start := time.Now()
	if err := p.Kill(dead); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(p.Nodes[dead].DataDir); err != nil {
		t.Fatal(err)
	}
	t.Log("n3, the leader, killed and its data dir wiped")
	// What the operator sees first: n3 unreachable, exit 1.
	Eventually(t, 10*time.Second, func() error {
		out, code, _ := cli("status", "--addr", via)
		for _, line := range strings.Split(out, "\n") {
			if code == 1 && strings.HasPrefix(line, "n3 ") && strings.Contains(line, "unreachable") {
				t.Logf("chorus status with n3 dead exits 1:\n%s", out)
				return nil
			}
		}
		return fmt.Errorf("chorus status with n3 dead: exit %d:\n%s", code, out)
	})

	// The operator removes it. Through n1, which forwards to the leader;
	// while an election runs (n3 led) the command fails and is run again.
	var out string
	Eventually(t, 20*time.Second, func() error {
		o, code, err := cli("members", "remove", "--addr", via, "--admin-token", token, "n3")
		if code != 0 {
			return fmt.Errorf("chorus members remove n3: exit %d: %v\n%s", code, err, o)
		}
		out = o
		return nil
	})
	removed := time.Since(start)
	if !strings.Contains(out, "removed n3") {
		t.Fatalf("chorus members remove n3 printed %q", out)
	}

	// A new machine: a new id, an empty data dir, no --peers.
	fresh, err := p.AddNode()
	if err != nil {
		t.Fatal(err)
	}
	n4 := p.Nodes[fresh]
	if err := p.StartFresh(fresh); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 15*time.Second, func() error {
		st, err := p.Status(ctx, fresh)
		if err != nil {
			return err
		}
		if len(st.Members) != 0 {
			return fmt.Errorf("the fresh n4 lists %d members before it is added", len(st.Members))
		}
		return nil
	})
	out, code, err := cli("members", "add", "--addr", via, "--admin-token", token,
		"--id", n4.ID, "--peer-addr", n4.PeerAddr, "--http-addr", n4.HTTPAddr)
	if code != 0 || !strings.Contains(out, "added n4") {
		t.Fatalf("chorus members add n4: exit %d: %v\n%s", code, err, out)
	}
	added := time.Since(start)

	// chorus status: three voters, one leader, all reachable, exit 0.
	var table string
	Eventually(t, 30*time.Second, func() error {
		var err error
		table, err = checkStatusTable(cli, via, []string{"n1", "n2", "n4"}, false)
		return err
	})
	healthy := time.Since(start)
	t.Logf("n3 removed after %v, n4 added after %v, chorus status healthy with three voters after %v:\n%s",
		removed.Round(time.Millisecond), added.Round(time.Millisecond), healthy.Round(time.Millisecond), table)

	// n4 serves pages too: one on each session, joined through n4.
	addrs4 := []string{p.Nodes[0].HTTPAddr, p.Nodes[1].HTTPAddr, n4.HTTPAddr}
	var late []*kbPlayer
	for _, s := range sessions {
		late = append(late, newKBPlayer(len(players)+len(late), s, addrs4, 2, false, 60*time.Millisecond, rec, hc, seed))
	}
	load4 := startKBLoad(ctx, late)
	t.Cleanup(load4.close)
	if err := load4.waitConnected(30*time.Second, nil, 10); err != nil {
		t.Fatalf("pages on n4: %v", err)
	}
	// Every page edits on the repaired cluster.
	if err := load.waitConnected(30*time.Second, load.ackCounts(), 5); err != nil {
		t.Fatalf("after the replacement: %v", err)
	}
	end := time.Now()
	gap, at := rec.longestGap(start, end)
	t.Logf("the longest time without an acknowledged edit from the kill on was %v, %v after the kill", gap.Round(time.Millisecond), at.Sub(start).Round(time.Millisecond))
	if gap > 10*time.Second {
		t.Errorf("no edit was acknowledged for %v during the replacement", gap)
	}
	if err := errors.Join(load.stop(), load4.stop()); err != nil {
		t.Fatalf("the last edits: %v", err)
	}

	// Quiet: every member's lag goes to 0.
	Eventually(t, 20*time.Second, func() error {
		var err error
		table, err = checkStatusTable(cli, via, []string{"n1", "n2", "n4"}, true)
		return err
	})
	t.Logf("chorus status once the edits stopped:\n%s", table)
	all := append(slices.Clone(players), late...)
	final, err := kbSettle(ctx, p, hc, []int{0, 1, fresh}, sessions, all)
	if err != nil {
		t.Fatalf("n4 did not converge with n1 and n2: %v", err)
	}
	logKBStats(t, rec, all)
	checkKBHistory(t, rec, all, final)
}

// runChorus runs the chorus binary with args and returns its stdout and
// exit code.
func runChorus(ctx context.Context, bin string, args ...string) (string, int, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, args...)
	cmd.Env = append(os.Environ(), "CHORUS_ADMIN_TOKEN=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return stdout.String(), ee.ExitCode(), fmt.Errorf("%w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	if err != nil {
		return stdout.String(), -1, err
	}
	return stdout.String(), 0, nil
}

// checkStatusTable runs chorus status through addr and checks its table:
// exit 0, exactly the members ids, every one a voter, reachable and
// following the one leader among them, and with zeroLag, every lag 0. It
// returns the table.
func checkStatusTable(cli func(...string) (string, int, error), addr string, ids []string, zeroLag bool) (string, error) {
	out, code, err := cli("status", "--addr", addr)
	if code != 0 {
		return out, fmt.Errorf("chorus status: exit %d: %v\n%s", code, err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(ids)+1 || !strings.HasPrefix(lines[0], "ID") {
		return out, fmt.Errorf("chorus status shows %d members, want %v:\n%s", len(lines)-1, ids, out)
	}
	var got []string
	leaders, followed := 0, map[string]bool{}
	for _, line := range lines[1:] {
		// ID VOTER STATE LEADER TERM APPLIED COMMIT LAST-LOG LAG HTTP
		f := strings.Fields(line)
		if len(f) != 10 {
			return out, fmt.Errorf("chorus status row %q: want 10 columns", line)
		}
		got = append(got, f[0])
		if f[1] != "true" {
			return out, fmt.Errorf("%s is not a voter:\n%s", f[0], out)
		}
		switch f[2] {
		case "leader":
			leaders++
		case "follower":
		default:
			return out, fmt.Errorf("%s is %s:\n%s", f[0], f[2], out)
		}
		followed[f[3]] = true
		if zeroLag && f[8] != "0" {
			return out, fmt.Errorf("%s lags by %s:\n%s", f[0], f[8], out)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, ids) {
		return out, fmt.Errorf("chorus status lists %v, want %v:\n%s", got, ids, out)
	}
	if leaders != 1 || len(followed) != 1 {
		return out, fmt.Errorf("%d leaders, %d leaders followed:\n%s", leaders, len(followed), out)
	}
	return out, nil
}
