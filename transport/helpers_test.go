package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

var testSecret = []byte("test-cluster-secret")

// handlerFunc adapts a function to RPCHandler.
type handlerFunc func(ctx context.Context, from string, method uint8, req []byte) ([]byte, error)

func (f handlerFunc) ServeRPC(ctx context.Context, from string, method uint8, req []byte) ([]byte, error) {
	return f(ctx, from, method, req)
}

// echo answers "<from>/<method>/<req>".
var echo = handlerFunc(func(_ context.Context, from string, method uint8, req []byte) ([]byte, error) {
	return fmt.Appendf(nil, "%s/%d/%s", from, method, req), nil
})

// testLog is a log sink that writes to t.Log and remembers what it wrote.
type testLog struct {
	tb  testing.TB
	mu  sync.Mutex // guards buf
	buf strings.Builder
}

func (l *testLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(b)
	l.mu.Unlock()
	l.tb.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// lines returns the logged lines that contain every one of subs.
func (l *testLog) lines(subs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for line := range strings.Lines(l.buf.String()) {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

func newTestLogger(tb testing.TB, name string) (hclog.Logger, *testLog) {
	sink := &testLog{tb: tb}
	return hclog.New(&hclog.LoggerOptions{Name: name, Output: sink, Level: hclog.Debug}), sink
}

// newPeer starts a Peer on cfg, filling ID (default "n1"), Addr (default
// 127.0.0.1:0), Secret, Handler (echo) and Logger, and closes it in Cleanup.
func newPeer(tb testing.TB, cfg PeerConfig) (*Peer, *testLog) {
	tb.Helper()
	if cfg.ID == "" {
		cfg.ID = "n1"
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Secret == nil {
		cfg.Secret = testSecret
	}
	if cfg.Handler == nil {
		cfg.Handler = echo
	}
	var sink *testLog
	if cfg.Logger == nil {
		cfg.Logger, sink = newTestLogger(tb, cfg.ID)
	}
	p, err := ListenPeer(cfg)
	if err != nil {
		tb.Fatalf("ListenPeer(%s): %v", cfg.ID, err)
	}
	tb.Cleanup(func() {
		if err := p.Close(); err != nil {
			tb.Errorf("close %s: %v", cfg.ID, err)
		}
	})
	return p, sink
}

// eventually polls cond until it returns nil or within passes.
func eventually(tb testing.TB, within time.Duration, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for err := cond(); err != nil; err = cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("not true after %v: %v", within, err)
		}
		time.Sleep(10 * time.Millisecond) // poll interval only
	}
}

// call makes an RPC with a 5s bound.
func call(p *Peer, to *Peer, method uint8, req string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := p.Call(ctx, to.Addr().String(), method, []byte(req))
	return string(resp), err
}

// mustCall makes an RPC that must succeed and answer want.
func mustCall(tb testing.TB, p, to *Peer, method uint8, req, want string) {
	tb.Helper()
	got, err := call(p, to, method, req)
	if err != nil {
		tb.Fatalf("call %s → %s: %v", p.cfg.ID, to.cfg.ID, err)
	}
	if got != want {
		tb.Fatalf("call %s → %s = %q, want %q", p.cfg.ID, to.cfg.ID, got, want)
	}
}

// acceptRaft accepts one raft stream on p within 5s.
func acceptRaft(tb testing.TB, p *Peer) net.Conn {
	tb.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := p.RaftListener().Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			tb.Fatalf("raft accept: %v", r.err)
		}
		tb.Cleanup(func() { _ = r.c.Close() })
		return r.c
	case <-time.After(5 * time.Second):
		// Unblock the Accept so the goroutine ends.
		_ = p.RaftListener().Close()
		<-ch
		tb.Fatal("no raft stream accepted within 5s")
		return nil
	}
}

// dialRaft opens a raft stream from p to to and accepts it there.
func dialRaft(tb testing.TB, p, to *Peer) (client, server net.Conn) {
	tb.Helper()
	c, err := p.DialRaft(to.Addr().String(), 5*time.Second)
	if err != nil {
		tb.Fatalf("DialRaft %s → %s: %v", p.cfg.ID, to.cfg.ID, err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c, acceptRaft(tb, to)
}

// readClosed waits up to 5s for a read on c to fail with something other
// than a timeout: EOF, a reset, or net.ErrClosed.
func readClosed(tb testing.TB, c net.Conn) error {
	tb.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil && !errors.Is(err, net.ErrClosed) {
		tb.Fatalf("set read deadline: %v", err)
	}
	var b [64]byte
	n, err := c.Read(b[:])
	if err == nil {
		tb.Fatalf("read %d bytes %q from a conn that should be closed", n, b[:n])
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		tb.Fatalf("conn still open after 5s: %v", err)
	}
	return err
}

// rawConn dials addr over plain TCP, with no handshake.
func rawConn(tb testing.TB, addr string) net.Conn {
	tb.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		tb.Fatalf("raw dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// raftAccepts starts accepting raft streams on p and returns a func that
// closes the raft listener and reports how many streams were accepted.
func raftAccepts(p *Peer) (stop func() int) {
	done := make(chan int)
	go func() {
		n := 0
		for {
			c, err := p.RaftListener().Accept()
			if err != nil {
				done <- n
				return
			}
			n++
			_ = c.Close()
		}
	}()
	return func() int {
		_ = p.RaftListener().Close()
		return <-done
	}
}

// slowRequest sends head (a request line, headers and the start of a body)
// on a new connection to addr, then, with trickle, one byte of filler every
// 50 ms, until the server answers or bound passes. It returns the answer's
// status and body and how long the answer took from the first byte sent.
func slowRequest(tb testing.TB, addr, head string, trickle bool, bound time.Duration) (int, []byte, time.Duration) {
	tb.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := conn.Write([]byte(head)); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	if trickle {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-done:
					return
				case <-tick.C:
					if _, err := conn.Write([]byte(" ")); err != nil {
						return
					}
				}
			}
		}()
	}
	defer wg.Wait()
	defer close(done)
	_ = conn.SetReadDeadline(time.Now().Add(bound)) // the test's own bound
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	took := time.Since(start)
	if err != nil {
		tb.Fatalf("trickle %v: no response after %v: %v", trickle, took, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body) // a short body still has its status
	return resp.StatusCode, body, took
}
