package node

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"chorus/fsm"
)

// TestRestoreGate: while a restore holds the gate, the leader puts no write
// into the log (a write waits and retries, and fails at its deadline), and
// one that was waiting goes in once the gate opens.
func TestRestoreGate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	n, err := New(Config{ID: "n1", DataDir: filepath.Join(t.TempDir(), "n1"), PeerAddr: "127.0.0.28:0",
		Peers: []Peer{{ID: "n1", Addr: "127.0.0.28:0"}}, ClusterSecret: []byte("gate-test")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Barrier(ctx); err != nil { // leads, and has applied its first entries
		t.Fatal(err)
	}
	const marker = "127.0.0.28:1" // the address the test's announcements carry
	addr := func() string {
		var a string
		n.View(func(st *fsm.State, _ uint64) { a = st.NodeHTTPAddr("n1") })
		return a
	}
	// The node's own announcement of its epoch, a command too, goes first.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var epoch uint64
		n.View(func(st *fsm.State, _ uint64) { epoch, _ = st.NodeEpoch("n1") })
		if epoch == n.Epoch() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the node never announced its epoch")
		}
		time.Sleep(10 * time.Millisecond) // poll interval only
	}
	announce := func(ctx context.Context) error {
		_, err := n.Submit(ctx, fsm.Command{Kind: fsm.KindNodeEpoch, Node: "n1", Epoch: n.Epoch(), Addr: marker})
		return err
	}

	n.applyGate.Lock()
	n.restoring = true
	n.applyGate.Unlock()
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	err = announce(short)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a write while the gate is closed: %v, want its deadline", err)
	}
	// Raft's own entries (a new term's no-op, barriers) may still go in;
	// no command does.
	if got := addr(); got == marker {
		t.Fatal("a command was applied while the gate was closed")
	}
	waiting := make(chan error, 1)
	go func() { waiting <- announce(ctx) }()

	n.applyGate.Lock()
	n.restoring = false
	n.applyGate.Unlock()
	select {
	case err := <-waiting:
		if err != nil {
			t.Fatalf("the write waiting at the gate: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the write waiting at the gate never went in")
	}
	if got := addr(); got != marker {
		t.Fatalf("after the gate opened the node announces %q, want %q", got, marker)
	}
}
