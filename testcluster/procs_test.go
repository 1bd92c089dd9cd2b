package testcluster

import (
	"context"
	"testing"
	"time"
)

// TestProcsKillAndRestart runs three real chorus serve processes, SIGKILLs
// the leader, waits for a new one, and brings the old leader back.
func TestProcsKillAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	bin, err := BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := StartProcs(ctx, ProcOptions{Binary: bin, Dir: t.TempDir(), FirstIP: 41})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	leader, err := p.WaitLeader(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
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
}
