package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"chorus/testcluster"
)

// startNemesis starts three chorus serve processes on 127.0.0.firstIP+ (a
// block no other test uses: partitions cut real links) and a nemesis over
// them with every kind it can run. The firewall is nil, with the reason, when
// iptables cannot be used.
func startNemesis(t *testing.T, firstIP int, quiet, hold [2]time.Duration) (*nemesis, *testcluster.Procs, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test")
	}
	bin := chorusBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := testcluster.StartProcs(ctx, testcluster.ProcOptions{Binary: bin, Dir: t.TempDir(), FirstIP: firstIP})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	tag := fmt.Sprintf("%s-test-%d-%d", FirewallPrefix, os.Getpid(), firstIP)
	fw, err := newFirewall(tag)
	why := ""
	if err != nil {
		why = err.Error()
	} else {
		t.Cleanup(func() {
			if err := fw.Heal(); err != nil {
				t.Error(err)
			}
			if _, err := SweepFirewall(tag); err != nil {
				t.Error(err)
			}
		})
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TESTCLUSTER_SEED"); s != "" {
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("TESTCLUSTER_SEED: %v", err)
		}
	}
	t.Logf("nemesis seed %d (replay with TESTCLUSTER_SEED)", seed)
	var logMu sync.Mutex // t.Logf is safe, but lines from Run and HealAll must not outlive the test
	done := false
	t.Cleanup(func() { logMu.Lock(); done = true; logMu.Unlock() })
	n := newNemesis(nemesisConfig{Procs: p, Kinds: AllNemeses, Rand: rand.New(rand.NewPCG(seed, 1)), Firewall: fw,
		Quiet: quiet, Hold: hold, Logf: func(format string, args ...any) {
			logMu.Lock()
			defer logMu.Unlock()
			if !done {
				t.Logf("nemesis: "+format, args...)
			}
		}})
	return n, p, why
}

// requireHealthy checks that the cluster has one leader, every node lists the
// three members, and every node has applied the same index.
func requireHealthy(t *testing.T, p *testcluster.Procs) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := p.WaitLeader(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	testcluster.Eventually(t, 15*time.Second, func() error {
		var applied []uint64
		for i := range p.Nodes {
			st, err := p.Status(ctx, i)
			if err != nil {
				return err
			}
			if len(st.Members) != len(p.Nodes) {
				return fmt.Errorf("%s lists %d members", st.ID, len(st.Members))
			}
			applied = append(applied, st.AppliedIndex)
		}
		for _, a := range applied {
			if a != applied[0] {
				return fmt.Errorf("applied indexes differ: %v", applied)
			}
		}
		return nil
	})
}

// TestNemesisKinds injects and heals every kind, and every variant of the
// partition, once each.
func TestNemesisKinds(t *testing.T) {
	n, p, noFirewall := startNemesis(t, 111, [2]time.Duration{}, [2]time.Duration{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cases := []struct {
		name, kind string
		pk         pick
	}{
		{"kill-leader", NemKill, pick{leader: true, perm: []int{0, 1, 2}}},
		{"kill-random", NemKill, pick{perm: []int{1, 0, 2}}},
		{"pause-leader", NemPause, pick{leader: true, perm: []int{2, 1, 0}}},
		{"partition-minority", NemPartition, pick{perm: []int{2, 0, 1}, n: 0}},
		{"partition-isolate-leader", NemPartition, pick{perm: []int{0, 1, 2}, n: 1}},
		{"partition-ring", NemPartition, pick{perm: []int{0, 2, 1}, n: 2}},
		{"transfer-any", NemTransfer, pick{perm: []int{1, 2, 0}}},
		{"transfer-named", NemTransfer, pick{leader: true, perm: []int{0, 1, 2}}},
		{"member", NemMember, pick{perm: []int{1, 2, 0}}},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			if tt.kind == NemPartition && noFirewall != "" {
				t.Skip("no firewall: " + noFirewall)
			}
			start := time.Now()
			n.step(ctx, tt.kind, tt.pk, 700*time.Millisecond)
			fs := n.Faults()
			f := fs[len(fs)-1]
			t.Logf("%s: window %v, healthy after %v", f.Detail, f.End.Sub(f.Start).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			if f.Kind != tt.kind || f.Err != "" || !f.Start.Before(f.End) || len(n.Active()) != 0 {
				t.Fatalf("fault %+v (active %v)", f, n.Active())
			}
			requireHealthy(t, p)
		})
	}
}

// TestNemesisHealAll leaves the cluster in a state no single fault does (a
// paused node, a killed one and a cut link, so no quorum) and a member
// removed but not yet back, and checks that HealAll repairs each.
func TestNemesisHealAll(t *testing.T) {
	n, p, noFirewall := startNemesis(t, 114, [2]time.Duration{}, [2]time.Duration{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.Pause(0); err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(1); err != nil {
		t.Fatal(err)
	}
	if noFirewall == "" {
		if err := n.cfg.Firewall.Cut(n.ip(0), n.ip(2)); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if err := n.HealAll(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("healed a paused, a killed node and a cut link in %v", time.Since(start).Round(time.Millisecond))
	requireHealthy(t, p)

	// The member nemesis removed n3 and killed it; the heal never ran.
	n.opMu.Lock()
	_, err := n.member(ctx, pick{perm: []int{2, 0, 1}}, func(string) {})
	n.opMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if p.Running(2) {
		t.Fatal("the removed node still runs")
	}
	start = time.Now()
	for range 2 { // idempotent
		if err := n.HealAll(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("added the removed member back in %v", time.Since(start).Round(time.Millisecond))
	requireHealthy(t, p)
}

// TestNemesisRun runs the nemesis loop over every kind for a few seconds,
// then stops it as Ctrl-C would: the context ends and HealAll runs at once.
func TestNemesisRun(t *testing.T) {
	n, p, _ := startNemesis(t, 117,
		[2]time.Duration{300 * time.Millisecond, 600 * time.Millisecond},
		[2]time.Duration{500 * time.Millisecond, time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); n.Run(ctx) }()
	<-ctx.Done()
	hctx, hcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer hcancel()
	if err := n.HealAll(hctx); err != nil {
		t.Error(err)
	}
	wg.Wait()
	if err := n.HealAll(hctx); err != nil {
		t.Error(err)
	}
	requireHealthy(t, p)
	fs := n.Faults()
	if len(fs) < 2 {
		t.Fatalf("%d faults in 8s", len(fs))
	}
	for i, f := range fs {
		t.Logf("%s %v +%v %s", f.Kind, f.Detail, f.End.Sub(f.Start).Round(time.Millisecond), f.Err)
		if !f.Start.Before(f.End) {
			t.Errorf("fault %d: %+v: Start not before End", i, f)
		}
		if i > 0 && f.Start.Before(fs[i-1].End) {
			t.Errorf("fault %d overlaps the one before", i)
		}
		if f.Err != "" && i < len(fs)-1 {
			t.Errorf("fault %d: %s", i, f.Err) // only the last may have been cut short
		}
	}
	if len(n.Active()) != 0 {
		t.Errorf("active after HealAll: %v", n.Active())
	}
}
