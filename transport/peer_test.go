package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestPeerConfigValidate(t *testing.T) {
	valid := PeerConfig{ID: "n1", Addr: "127.0.0.1:0", Secret: testSecret, Handler: echo}
	tests := []struct {
		name   string
		mutate func(*PeerConfig)
		ok     bool
	}{
		{"valid", func(*PeerConfig) {}, true},
		{"no id", func(c *PeerConfig) { c.ID = "" }, false},
		{"id too long", func(c *PeerConfig) { c.ID = strings.Repeat("x", 256) }, false},
		{"id of 255 bytes", func(c *PeerConfig) { c.ID = strings.Repeat("x", 255) }, true},
		{"no addr", func(c *PeerConfig) { c.Addr = "" }, false},
		{"no secret", func(c *PeerConfig) { c.Secret = nil }, false},
		{"empty secret", func(c *PeerConfig) { c.Secret = []byte{} }, false},
		{"no handler", func(c *PeerConfig) { c.Handler = nil }, false},
		{"negative handshake timeout", func(c *PeerConfig) { c.HandshakeTimeout = -1 }, false},
		{"negative max concurrent", func(c *PeerConfig) { c.MaxConcurrentRPC = -1 }, false},
		{"negative write timeout", func(c *PeerConfig) { c.WriteTimeout = -1 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid
			tt.mutate(&cfg)
			err := cfg.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if !tt.ok {
				if _, err := ListenPeer(cfg); err == nil {
					t.Fatal("ListenPeer accepted an invalid config")
				}
			}
		})
	}
}

func TestRPCRoundTripConcurrent(t *testing.T) {
	server, _ := newPeer(t, PeerConfig{ID: "srv"})
	client, _ := newPeer(t, PeerConfig{ID: "cli"})

	const goroutines, perG = 200, 5
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*perG)
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				method := uint8((g + i) % 7)
				req := fmt.Sprintf("g%d-i%d-%s", g, i, strings.Repeat("x", g*i))
				got, err := call(client, server, method, req)
				want := fmt.Sprintf("cli/%d/%s", method, req)
				switch {
				case err != nil:
					errs <- err
				case got != want:
					errs <- fmt.Errorf("got %q, want %q", got, want)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// All of them shared one connection.
	client.mu.Lock()
	n := len(client.conns)
	client.mu.Unlock()
	if n != 1 {
		t.Errorf("client holds %d connections, want 1", n)
	}
}

func TestRPCErrors(t *testing.T) {
	big := bytes.Repeat([]byte("y"), MaxPayload+1)
	tests := []struct {
		name     string
		err      error
		resp     []byte
		wantCode uint8
		wantMsg  string
	}{
		{"rpc error", &RPCError{Code: 7, Msg: "not leader"}, nil, 7, "not leader"},
		{"wrapped rpc error", fmt.Errorf("forward: %w", &RPCError{Code: 9, Msg: "stale"}), nil, 9, "stale"},
		{"plain error", errors.New("disk on fire"), nil, CodeInternal, "disk on fire"},
		{"rpc error with code 0", &RPCError{Code: 0, Msg: "zero"}, nil, CodeInternal, "zero"},
		{"response too large", nil, big, CodeInternal, "response too large"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, _ := newPeer(t, PeerConfig{ID: "srv", Handler: handlerFunc(
				func(context.Context, string, uint8, []byte) ([]byte, error) { return tt.resp, tt.err })})
			client, _ := newPeer(t, PeerConfig{ID: "cli"})
			_, err := call(client, server, uint8(i), "req")
			var re *RPCError
			if !errors.As(err, &re) {
				t.Fatalf("err = %v, want an *RPCError", err)
			}
			if re.Code != tt.wantCode || re.Msg != tt.wantMsg {
				t.Fatalf("got code %d msg %q, want code %d msg %q", re.Code, re.Msg, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestRPCErrorsKeepConnection(t *testing.T) {
	server, _ := newPeer(t, PeerConfig{ID: "srv", Handler: handlerFunc(
		func(_ context.Context, from string, method uint8, req []byte) ([]byte, error) {
			if method == 1 {
				return nil, &RPCError{Code: 3, Msg: "no"}
			}
			return echo(context.Background(), from, method, req)
		})})
	client, _ := newPeer(t, PeerConfig{ID: "cli"})
	mustCall(t, client, server, 0, "a", "cli/0/a")
	rc := liveRPCConn(t, client, server)
	if _, err := call(client, server, 1, "b"); err == nil {
		t.Fatal("method 1 succeeded, want an RPCError")
	}
	mustCall(t, client, server, 0, "c", "cli/0/c")
	if liveRPCConn(t, client, server) != rc {
		t.Fatal("an RPC error replaced the connection")
	}
}

// liveRPCConn returns p's current RPC connection to to.
func liveRPCConn(tb testing.TB, p, to *Peer) *rpcConn {
	tb.Helper()
	p.mu.Lock()
	tg := p.targets[to.Addr().String()]
	p.mu.Unlock()
	if tg == nil {
		tb.Fatalf("%s has no RPC target for %s", p.cfg.ID, to.cfg.ID)
	}
	tg.mu.Lock()
	defer tg.mu.Unlock()
	if tg.conn == nil {
		tb.Fatalf("%s has no RPC connection to %s", p.cfg.ID, to.cfg.ID)
	}
	return tg.conn
}

func TestCallContext(t *testing.T) {
	started := make(chan struct{}, 2)
	release := make(chan struct{})
	handlerDone := make(chan struct{}, 2)
	server, _ := newPeer(t, PeerConfig{ID: "srv", Handler: handlerFunc(
		func(ctx context.Context, from string, method uint8, req []byte) ([]byte, error) {
			if method != 1 {
				return echo(ctx, from, method, req)
			}
			defer func() { handlerDone <- struct{}{} }()
			started <- struct{}{}
			select {
			case <-release:
				return []byte("late"), nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		})})
	client, _ := newPeer(t, PeerConfig{ID: "cli"})
	addr := server.Addr().String()
	mustCall(t, client, server, 0, "warm", "cli/0/warm")
	rc := liveRPCConn(t, client, server)

	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := client.Call(ctx, addr, 1, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
		<-started
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := client.Call(ctx, addr, 1, nil)
			errc <- err
		}()
		<-started
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})

	// Both handlers now answer; their responses arrive for abandoned ids and
	// are discarded, and the connection carries on.
	close(release)
	<-handlerDone
	<-handlerDone
	mustCall(t, client, server, 2, "after", "cli/2/after")
	if liveRPCConn(t, client, server) != rc {
		t.Fatal("abandoned calls replaced the connection")
	}
	rc.mu.Lock()
	pending := len(rc.pending)
	rc.mu.Unlock()
	if pending != 0 {
		t.Fatalf("%d calls still pending", pending)
	}
}

func TestHandlerContextCancelledOnClose(t *testing.T) {
	newBlocking := func() (RPCHandler, chan struct{}, chan struct{}) {
		started, cancelled := make(chan struct{}, 1), make(chan struct{}, 1)
		return handlerFunc(func(ctx context.Context, _ string, _ uint8, _ []byte) ([]byte, error) {
			started <- struct{}{}
			<-ctx.Done()
			cancelled <- struct{}{}
			return nil, ctx.Err()
		}), started, cancelled
	}

	t.Run("client closes", func(t *testing.T) {
		h, started, cancelled := newBlocking()
		server, _ := newPeer(t, PeerConfig{ID: "srv", Handler: h})
		client, _ := newPeer(t, PeerConfig{ID: "cli"})
		errc := make(chan error, 1)
		go func() {
			_, err := client.Call(context.Background(), server.Addr().String(), 1, nil)
			errc <- err
		}()
		<-started
		if err := client.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Fatalf("pending call err = %v, want ErrClosed", err)
		}
		select {
		case <-cancelled:
		case <-time.After(5 * time.Second):
			t.Fatal("handler ctx not cancelled 5s after the client closed")
		}
		if _, err := call(client, server, 1, ""); !errors.Is(err, ErrClosed) {
			t.Fatalf("call after Close: err = %v, want ErrClosed", err)
		}
	})

	t.Run("server closes", func(t *testing.T) {
		h, started, cancelled := newBlocking()
		server, _ := newPeer(t, PeerConfig{ID: "srv", Handler: h})
		client, _ := newPeer(t, PeerConfig{ID: "cli"})
		errc := make(chan error, 1)
		go func() {
			_, err := client.Call(context.Background(), server.Addr().String(), 1, nil)
			errc <- err
		}()
		<-started
		// Close returns only after the handler has returned.
		if err := server.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-cancelled:
		default:
			t.Fatal("server Close returned before the handler saw its ctx cancelled")
		}
		if err := <-errc; !errors.Is(err, ErrConnLost) {
			t.Fatalf("pending call err = %v, want ErrConnLost", err)
		}
	})
}

func TestCallDeadAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	client, _ := newPeer(t, PeerConfig{ID: "cli"})
	start := time.Now()
	_, err = client.Call(context.Background(), dead, 1, nil)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("call to a dead address took %v", d)
	}
	if _, err := client.DialRaft(dead, time.Second); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("DialRaft err = %v, want ErrUnreachable", err)
	}
}

func TestReconnectAfterServerRestart(t *testing.T) {
	server, _ := newPeer(t, PeerConfig{ID: "srv"})
	client, _ := newPeer(t, PeerConfig{ID: "cli"})
	addr := server.Addr().String()
	mustCall(t, client, server, 1, "before", "cli/1/before")

	if err := server.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := client.Call(context.Background(), addr, 1, []byte("down"))
	if !errors.Is(err, ErrUnreachable) && !errors.Is(err, ErrConnLost) {
		t.Fatalf("call to a closed server: err = %v, want ErrUnreachable or ErrConnLost", err)
	}

	restarted, _ := newPeer(t, PeerConfig{ID: "srv2", Addr: addr})
	mustCall(t, client, restarted, 1, "after", "cli/1/after")
}

func TestCallAfterClose(t *testing.T) {
	server, _ := newPeer(t, PeerConfig{ID: "srv"})
	client, _ := newPeer(t, PeerConfig{ID: "cli"})
	mustCall(t, client, server, 1, "x", "cli/1/x")
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	if err := client.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := call(client, server, 1, "x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Call after Close: err = %v, want ErrClosed", err)
	}
	if _, err := client.DialRaft(server.Addr().String(), time.Second); !errors.Is(err, ErrClosed) {
		t.Fatalf("DialRaft after Close: err = %v, want ErrClosed", err)
	}
	if _, err := client.RaftListener().Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: err = %v, want net.ErrClosed", err)
	}
}

func TestMaxConcurrentRPC(t *testing.T) {
	const limit, calls = 2, 6
	var running, peak atomic.Int32
	started := make(chan struct{}, calls)
	release := make(chan struct{})
	server, _ := newPeer(t, PeerConfig{ID: "srv", MaxConcurrentRPC: limit, Handler: handlerFunc(
		func(ctx context.Context, _ string, _ uint8, _ []byte) ([]byte, error) {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			started <- struct{}{}
			<-release
			return []byte("ok"), nil
		})})
	client, _ := newPeer(t, PeerConfig{ID: "cli"})

	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for range calls {
		wg.Go(func() {
			if _, err := call(client, server, 1, ""); err != nil {
				errs <- err
			}
		})
	}
	for range limit {
		<-started
	}
	// Absence check, bounded: with the limit held, no third handler starts.
	select {
	case <-started:
		t.Error("a handler started while the limit was held")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if p := peak.Load(); p != limit {
		t.Errorf("peak concurrency %d, want %d", p, limit)
	}
}

func TestRequestTooLarge(t *testing.T) {
	var seen atomic.Int64
	server, _ := newPeer(t, PeerConfig{ID: "srv", Handler: handlerFunc(
		func(_ context.Context, _ string, _ uint8, req []byte) ([]byte, error) {
			seen.Store(int64(len(req)))
			return []byte("ok"), nil
		})})
	client, _ := newPeer(t, PeerConfig{ID: "cli"})
	_, err := client.Call(context.Background(), server.Addr().String(), 1, make([]byte, MaxPayload+1))
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}
	if seen.Load() != 0 {
		t.Fatal("an oversize request reached the handler")
	}
	// The largest allowed request goes through.
	req := bytes.Repeat([]byte("z"), MaxPayload)
	if _, err := client.Call(context.Background(), server.Addr().String(), 1, req); err != nil {
		t.Fatalf("max-size call: %v", err)
	}
	if seen.Load() != MaxPayload {
		t.Fatalf("handler saw %d bytes, want %d", seen.Load(), MaxPayload)
	}
}

// authedRPCConn dials p with a correct handshake and selects the RPC stream.
func authedRPCConn(tb testing.TB, p *Peer, id string) net.Conn {
	tb.Helper()
	c := rawConn(tb, p.Addr().String())
	if _, err := clientHandshake(c, id, testSecret, kindRPC); err != nil {
		tb.Fatalf("handshake: %v", err)
	}
	return c
}

func TestServerRejectsBadFrames(t *testing.T) {
	tests := []struct {
		name   string
		length uint32
	}{
		{"over max", MaxFrameSize + 1},
		{"huge", 0xffffffff},
		{"shorter than header", rpcHeaderLen - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			server, logs := newPeer(t, PeerConfig{ID: "srv", Handler: handlerFunc(
				func(context.Context, string, uint8, []byte) ([]byte, error) {
					calls.Add(1)
					return nil, nil
				})})
			c := authedRPCConn(t, server, "raw")
			f := []byte{byte(tt.length >> 24), byte(tt.length >> 16), byte(tt.length >> 8), byte(tt.length)}
			f = append(f, make([]byte, rpcHeaderLen)...)
			if _, err := c.Write(f); err != nil {
				t.Fatal(err)
			}
			readClosed(t, c)
			if n := calls.Load(); n != 0 {
				t.Fatalf("handler called %d times", n)
			}
			eventually(t, 5*time.Second, func() error {
				if len(logs.lines("[WARN]", "bad frame")) == 0 {
					return errors.New("no bad-frame warning logged")
				}
				return nil
			})
		})
	}
}

func TestRaftStream(t *testing.T) {
	a, _ := newPeer(t, PeerConfig{ID: "a"})
	b, _ := newPeer(t, PeerConfig{ID: "b"})
	client, server := dialRaft(t, a, b)

	if got, want := server.RemoteAddr().String(), client.LocalAddr().String(); got != want {
		t.Errorf("server sees remote %s, client is %s", got, want)
	}
	// Bytes flow both ways, starting with what raft would send first.
	for _, dir := range []struct {
		name     string
		from, to net.Conn
		msg      []byte
	}{
		{"a to b", client, server, append([]byte{0}, "append entries"...)},
		{"b to a", server, client, []byte("response")},
		{"a to b, large", client, server, bytes.Repeat([]byte{1, 2, 3}, 1<<18)},
	} {
		errc := make(chan error, 1)
		go func() {
			_, err := dir.from.Write(dir.msg)
			errc <- err
		}()
		got := make([]byte, len(dir.msg))
		if err := dir.to.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(dir.to, got); err != nil {
			t.Fatalf("%s: read: %v", dir.name, err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("%s: write: %v", dir.name, err)
		}
		if !bytes.Equal(got, dir.msg) {
			t.Fatalf("%s: bytes differ", dir.name)
		}
	}

	// Closing one end is seen at the other.
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	if err := readClosed(t, server); !errors.Is(err, io.EOF) {
		t.Fatalf("server read after client close: %v, want EOF", err)
	}
}

func TestRaftListenerClose(t *testing.T) {
	a, _ := newPeer(t, PeerConfig{ID: "a"})
	b, _ := newPeer(t, PeerConfig{ID: "b"})
	ln := b.RaftListener()
	if ln != b.RaftListener() {
		t.Error("RaftListener returned a different view")
	}
	if ln.Addr().String() != b.Addr().String() {
		t.Errorf("raft listener addr %s, peer addr %s", ln.Addr(), b.Addr())
	}

	errc := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		errc <- err
	}()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked Accept: err = %v, want net.ErrClosed", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: err = %v, want net.ErrClosed", err)
	}

	// A raft stream arriving now is closed; RPCs still work.
	c, err := a.DialRaft(b.Addr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	readClosed(t, c)
	mustCall(t, a, b, 1, "still", "a/1/still")
}

func TestRaftStreamNotAcceptedInTime(t *testing.T) {
	a, _ := newPeer(t, PeerConfig{ID: "a"})
	b, logs := newPeer(t, PeerConfig{ID: "b", HandshakeTimeout: 200 * time.Millisecond})
	c, err := a.DialRaft(b.Addr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	readClosed(t, c) // nobody calls Accept on b
	eventually(t, 5*time.Second, func() error {
		if len(logs.lines("[WARN]", "raft stream not accepted in time")) == 0 {
			return errors.New("no warning logged")
		}
		return nil
	})
}

func TestLocalAddrBinding(t *testing.T) {
	a, _ := newPeer(t, PeerConfig{ID: "a", Addr: "127.0.0.12:0"})
	b, _ := newPeer(t, PeerConfig{ID: "b", Addr: "127.0.0.13:0"})

	client, server := dialRaft(t, a, b)
	want := net.ParseIP("127.0.0.12")
	if ip := server.RemoteAddr().(*net.TCPAddr).IP; !ip.Equal(want) {
		t.Fatalf("raft stream from a arrives from %s, want %s", ip, want)
	}
	if ip := client.LocalAddr().(*net.TCPAddr).IP; !ip.Equal(want) {
		t.Fatalf("raft stream leaves a from %s, want %s", ip, want)
	}

	// RPC connections bind the same way: b now holds the raft stream and
	// the RPC connection, both from a's address.
	mustCall(t, a, b, 1, "x", "a/1/x")
	var remotes []net.IP
	b.mu.Lock()
	for c := range b.conns {
		remotes = append(remotes, c.RemoteAddr().(*net.TCPAddr).IP)
	}
	b.mu.Unlock()
	if len(remotes) != 2 {
		t.Fatalf("b holds %d connections, want 2", len(remotes))
	}
	for _, ip := range remotes {
		if !ip.Equal(want) {
			t.Fatalf("a connection to b comes from %s, want %s", ip, want)
		}
	}
}
