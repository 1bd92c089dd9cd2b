package testcluster

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// startTestProcs builds chorus and runs three nodes from 127.0.0.firstIP,
// skipping in -short mode. It returns them, a context for the test, and the
// leader.
func startTestProcs(t *testing.T, firstIP int) (*Procs, context.Context, int) {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test")
	}
	bin, err := BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := Context(t, 60*time.Second)
	p, err := StartProcs(ctx, ProcOptions{Binary: bin, Dir: t.TempDir(), FirstIP: firstIP})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	leader, err := p.WaitLeader(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return p, ctx, leader
}

// TestProcsKillAndRestart runs three real chorus serve processes, SIGKILLs
// the leader, waits for a new one, and brings the old leader back.
func TestProcsKillAndRestart(t *testing.T) {
	p, ctx, leader := startTestProcs(t, 41)
	if err := p.Kill(leader); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	next, err := p.WaitLeader(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if next == leader {
		t.Fatalf("killed leader %d still leads", leader)
	}
	t.Logf("new leader %s after %v", p.Nodes[next].ID, time.Since(start))
	if err := p.Start(leader); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 15*time.Second, func() error {
		_, err := p.Status(ctx, leader)
		return err
	})
	if _, err := p.WaitLeader(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// The restarted node rejoined by itself: every node lists the three
	// members, and it reports ready once it has caught up.
	Eventually(t, 15*time.Second, func() error {
		for i := range p.Nodes {
			st, err := p.Status(ctx, i)
			if err != nil {
				return err
			}
			if len(st.Members) != 3 {
				return fmt.Errorf("%s lists %d members", st.ID, len(st.Members))
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Nodes[leader].HTTPAddr+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := p.http.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("restarted %s: /readyz HTTP %d", p.Nodes[leader].ID, resp.StatusCode)
		}
		return nil
	})
}

// TestProcsRemoveStartFreshAddBack removes a follower through the other
// follower, wipes it, starts it without --peers and adds it back.
func TestProcsRemoveStartFreshAddBack(t *testing.T) {
	p, ctx, leader := startTestProcs(t, 44)
	victim, via := (leader+1)%3, (leader+2)%3
	members := func(want int, nodes ...int) func() error {
		return func() error {
			for _, i := range nodes {
				st, err := p.Status(ctx, i)
				if err != nil {
					return err
				}
				if len(st.Members) != want {
					return fmt.Errorf("%s lists %d members, want %d", st.ID, len(st.Members), want)
				}
			}
			return nil
		}
	}
	start := time.Now()
	if err := p.RemoveMember(ctx, via, victim); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, members(2, leader, via))
	if err := p.StartFresh(victim); err == nil {
		t.Fatal("StartFresh of a running node succeeded")
	}
	if err := p.Kill(victim); err != nil {
		t.Fatal(err)
	}
	if err := p.StartFresh(victim); err != nil {
		t.Fatal(err)
	}
	// Started without --peers on an empty dir, it waits to be added.
	Eventually(t, 10*time.Second, members(0, victim))
	if err := p.AddMember(ctx, via, victim); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 15*time.Second, members(3, 0, 1, 2))
	if _, err := p.WaitLeader(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, func() error {
		want, err := p.Status(ctx, leader)
		if err != nil {
			return err
		}
		st, err := p.Status(ctx, victim)
		if err != nil {
			return err
		}
		if st.AppliedIndex < want.CommitIndex {
			return fmt.Errorf("%s applied %d, leader committed %d", st.ID, st.AppliedIndex, want.CommitIndex)
		}
		return nil
	})
	t.Logf("%s removed, wiped and added back in %v", p.Nodes[victim].ID, time.Since(start))
	if err := p.Admin(ctx, via, http.MethodPost, "/cluster/members", map[string]any{"id": ""}); err == nil {
		t.Fatal("admin call with an empty id succeeded")
	}
}
