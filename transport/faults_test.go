package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

func TestFaultsSetGet(t *testing.T) {
	f := NewFaults()
	if got := f.Get("a", "b"); got != (LinkFault{}) {
		t.Fatalf("new Faults: Get = %+v", got)
	}
	f.Set("a", "b", LinkFault{Drop: true, Delay: time.Second})
	if got := f.Get("a", "b"); got != (LinkFault{Drop: true, Delay: time.Second}) {
		t.Fatalf("Get(a, b) = %+v", got)
	}
	if got := f.Get("b", "a"); got != (LinkFault{}) {
		t.Fatalf("links are directed, but Get(b, a) = %+v", got)
	}
	f.Set("a", "b", LinkFault{})
	if got := f.Get("a", "b"); got != (LinkFault{}) {
		t.Fatalf("after clearing: Get = %+v", got)
	}

	f.Set("a", "c", LinkFault{Delay: time.Millisecond})
	f.Partition([]string{"a"}, []string{"b", "c"})
	for _, l := range []link{{"a", "b"}, {"b", "a"}, {"a", "c"}, {"c", "a"}} {
		if !f.Get(l.from, l.to).Refuse {
			t.Errorf("after Partition: %v not refused", l)
		}
	}
	if got := f.Get("a", "c").Delay; got != time.Millisecond {
		t.Errorf("Partition lost the delay on (a, c): %v", got)
	}
	if f.Get("b", "c").Refuse {
		t.Error("Partition refused (b, c), inside one group")
	}
	f.Heal()
	for _, l := range []link{{"a", "b"}, {"b", "a"}, {"a", "c"}, {"c", "a"}} {
		if got := f.Get(l.from, l.to); got != (LinkFault{}) {
			t.Errorf("after Heal: %v has %+v", l, got)
		}
	}
}

// cluster is three peers n1, n2, n3 on 127.0.0.11, .12 and .13 sharing one
// Faults, each counting the RPCs its handler ran.
type cluster struct {
	faults *Faults
	peers  map[string]*Peer
	calls  map[string]*atomic.Int32
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	c := &cluster{faults: NewFaults(), peers: map[string]*Peer{}, calls: map[string]*atomic.Int32{}}
	for i, id := range []string{"n1", "n2", "n3"} {
		n := new(atomic.Int32)
		c.calls[id] = n
		c.peers[id], _ = newPeer(t, PeerConfig{
			ID:     id,
			Addr:   fmt.Sprintf("127.0.0.%d:0", 11+i),
			Faults: c.faults,
			Handler: handlerFunc(func(ctx context.Context, from string, method uint8, req []byte) ([]byte, error) {
				n.Add(1)
				return echo(ctx, from, method, req)
			}),
		})
	}
	return c
}

// ok checks that from can call to.
func (c *cluster) ok(t *testing.T, from, to string) {
	t.Helper()
	mustCall(t, c.peers[from], c.peers[to], 1, "hi", from+"/1/hi")
}

// refused checks that from's call to to fails fast as unreachable.
func (c *cluster) refused(t *testing.T, from, to string) {
	t.Helper()
	start := time.Now()
	_, err := call(c.peers[from], c.peers[to], 1, "hi")
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("call %s → %s: err = %v, want ErrUnreachable", from, to, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("call %s → %s took %v to fail", from, to, d)
	}
}

// timesOut checks that from's call to to runs into a 200ms deadline.
func (c *cluster) timesOut(t *testing.T, from, to string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.peers[from].Call(ctx, c.peers[to].Addr().String(), 1, []byte("hi"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call %s → %s: err = %v, want context.DeadlineExceeded", from, to, err)
	}
}

// echoes checks that bytes written on from arrive on to.
func echoes(t *testing.T, from, to net.Conn, msg string) {
	t.Helper()
	if _, err := from.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := to.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(to, got); err != nil || string(got) != msg {
		t.Fatalf("read %q, %v; want %q", got, err, msg)
	}
}

// TestFaultRefuseOneDirection: Refuse on (n1, n2) cuts the connections n1
// initiates to n2, both existing and new, and leaves n2's connections to n1
// working in both directions.
func TestFaultRefuseOneDirection(t *testing.T) {
	c := newCluster(t)
	n1, n2 := c.peers["n1"], c.peers["n2"]
	c.ok(t, "n1", "n2")
	c.ok(t, "n2", "n1")
	rc21 := liveRPCConn(t, n2, n1)
	cli12, srv12 := dialRaft(t, n1, n2)
	cli21, srv21 := dialRaft(t, n2, n1)

	c.faults.Set("n1", "n2", LinkFault{Refuse: true})

	// Existing connections initiated by n1 are closed at both ends.
	readClosed(t, srv12)
	readClosed(t, cli12)
	// New ones fail at once.
	c.refused(t, "n1", "n2")
	if _, err := n1.DialRaft(n2.Addr().String(), time.Second); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("DialRaft n1 → n2: err = %v, want ErrUnreachable", err)
	}

	// n2's connections to n1 are untouched and carry traffic both ways.
	c.ok(t, "n2", "n1")
	if liveRPCConn(t, n2, n1) != rc21 {
		t.Fatal("n2's RPC connection to n1 was replaced")
	}
	echoes(t, cli21, srv21, "n2 to n1")
	echoes(t, srv21, cli21, "n1 to n2")
	dialRaft(t, n2, n1)

	c.faults.Set("n1", "n2", LinkFault{})
	c.ok(t, "n1", "n2")
	dialRaft(t, n1, n2)
}

func TestFaultPartitionHeal(t *testing.T) {
	c := newCluster(t)
	ids := []string{"n1", "n2", "n3"}
	for _, a := range ids {
		for _, b := range ids {
			if a != b {
				c.ok(t, a, b)
			}
		}
	}
	_, srv21 := dialRaft(t, c.peers["n2"], c.peers["n1"])
	_, srv13 := dialRaft(t, c.peers["n1"], c.peers["n3"])
	cli23, srv23 := dialRaft(t, c.peers["n2"], c.peers["n3"])

	c.faults.Partition([]string{"n1"}, []string{"n2", "n3"})

	readClosed(t, srv21)
	readClosed(t, srv13)
	for _, pair := range [][2]string{{"n1", "n2"}, {"n2", "n1"}, {"n1", "n3"}, {"n3", "n1"}} {
		c.refused(t, pair[0], pair[1])
	}
	c.ok(t, "n2", "n3")
	c.ok(t, "n3", "n2")
	echoes(t, cli23, srv23, "same side")

	c.faults.Heal()
	for _, a := range ids {
		for _, b := range ids {
			if a != b {
				c.ok(t, a, b)
			}
		}
	}
	dialRaft(t, c.peers["n1"], c.peers["n2"])
}

// TestFaultDrop: Drop on (n1, n2) swallows what n1 writes to n2: n1's
// requests and n1's responses to n2's requests. After Heal, n1's calls work
// at once (the conn that dropped bytes is replaced before the request is
// sent); n2's first call fails with ErrConnLost, because n1's end of that
// conn dropped a response and is closed when it writes the next one.
func TestFaultDrop(t *testing.T) {
	c := newCluster(t)
	c.ok(t, "n1", "n2")
	c.ok(t, "n2", "n1")
	n1Calls, n2Calls := c.calls["n1"].Load(), c.calls["n2"].Load()

	c.faults.Set("n1", "n2", LinkFault{Drop: true})

	c.timesOut(t, "n1", "n2")
	if got := c.calls["n2"].Load(); got != n2Calls {
		t.Fatalf("n2's handler ran %d times for a dropped request", got-n2Calls)
	}
	c.timesOut(t, "n2", "n1")
	eventually(t, 5*time.Second, func() error {
		if got := c.calls["n1"].Load(); got != n1Calls+1 {
			return fmt.Errorf("n1's handler ran %d times, want 1 (the request arrived, the response was dropped)", got-n1Calls)
		}
		return nil
	})
	c.ok(t, "n1", "n3") // other links are unaffected

	c.faults.Heal()
	c.ok(t, "n1", "n2")
	if _, err := call(c.peers["n2"], c.peers["n1"], 1, "hi"); !errors.Is(err, ErrConnLost) {
		t.Fatalf("first n2 → n1 call after Heal: err = %v, want ErrConnLost", err)
	}
	c.ok(t, "n2", "n1")
}

func TestFaultDropRaftStream(t *testing.T) {
	c := newCluster(t)
	cli, srv := dialRaft(t, c.peers["n1"], c.peers["n2"])

	c.faults.Set("n1", "n2", LinkFault{Drop: true})
	if _, err := cli.Write([]byte("lost")); err != nil {
		t.Fatalf("write under Drop: %v", err)
	}
	// Absence check, bounded: nothing arrives.
	if err := srv.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	n, err := srv.Read(b[:])
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read under Drop: %d bytes %q, %v; want a timeout", n, b[:n], err)
	}
	// The other direction is not dropped.
	echoes(t, srv, cli, "n2 to n1")

	c.faults.Heal()
	if _, err := cli.Write([]byte("resumed")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("first write after Heal: %v, want the conn closed", err)
	}
	if err := readClosed(t, srv); !errors.Is(err, io.EOF) {
		t.Fatalf("reader after Heal: %v, want EOF", err)
	}
	// A new stream works.
	cli, srv = dialRaft(t, c.peers["n1"], c.peers["n2"])
	echoes(t, cli, srv, "fresh")
}

func TestFaultDelay(t *testing.T) {
	const delay = 150 * time.Millisecond
	tests := []struct {
		name  string
		links []link
		min   time.Duration
	}{
		{"request", []link{{"n1", "n2"}}, delay},
		{"response", []link{{"n2", "n1"}}, delay},
		{"both", []link{{"n1", "n2"}, {"n2", "n1"}}, 2 * delay},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCluster(t)
			c.ok(t, "n1", "n2") // connect first: only the call is measured
			for _, l := range tt.links {
				c.faults.Set(l.from, l.to, LinkFault{Delay: delay})
			}
			start := time.Now()
			c.ok(t, "n1", "n2")
			if d := time.Since(start); d < tt.min {
				t.Fatalf("call took %v, want at least %v", d, tt.min)
			}
			c.faults.Heal()
			c.ok(t, "n1", "n2")
		})
	}
}
