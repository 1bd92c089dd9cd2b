package testcluster

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	calls := 0
	if err := Poll(time.Second, func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || calls != 3 {
		t.Fatalf("Poll: %v after %d calls, want nil after 3", err, calls)
	}
	errNever := errors.New("never")
	start := time.Now()
	err := Poll(50*time.Millisecond, func() error { return errNever })
	if !errors.Is(err, errNever) {
		t.Fatalf("Poll of a condition that never holds: %v, want it to wrap the last error", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("Poll gave up after %v, before its deadline", d)
	}
}

// TestClusterFaults checks the in-process cluster's own controls: Isolate cuts
// a node off and Heal lets it back, Restart keeps the member's address,
// and StartEmpty starts a member that has bootstrapped nothing.
func TestClusterFaults(t *testing.T) {
	c := New(t, Options{FirstIP: 71})
	if got := len(c.Running()); got != 3 {
		t.Fatalf("%d members running, want 3", got)
	}
	leader := c.WaitLeader(10 * time.Second)
	var rest []int
	for i := range c.Members {
		if i != leader {
			rest = append(rest, i)
		}
	}

	c.Isolate(leader)
	next := c.WaitLeader(15*time.Second, rest...)
	if next == leader {
		t.Fatalf("isolated leader %s still leads the majority", c.Members[leader].ID)
	}
	Eventually(t, 15*time.Second, func() error {
		if st := c.Members[leader].Node().Status(); st.State == "leader" || st.Leader.ID != "" {
			return fmt.Errorf("isolated node: state %s, leader %q", st.State, st.Leader.ID)
		}
		return nil
	})
	c.Heal()
	c.WaitLeader(15 * time.Second)

	m := c.Members[rest[0]]
	addr := m.PeerAddr
	c.Restart(m.Index)
	if m.Node().PeerAddr() != addr {
		t.Fatalf("%s came back at %s, want %s", m.ID, m.Node().PeerAddr(), addr)
	}
	c.WaitLeader(15 * time.Second)

	c.Kill(m.Index)
	if m.Node() != nil || len(c.Running()) != 2 {
		t.Fatalf("killed member still running: %v", c.Running())
	}
	c.StartEmpty(m.Index)
	if st := m.Node().Status(); len(st.Members) != 0 || st.LastLogIndex != 0 || st.Leader.ID != "" {
		t.Fatalf("empty member bootstrapped or joined by itself: %+v", st)
	}
}
