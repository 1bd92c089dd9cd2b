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
	"syscall"
	"testing"
	"time"
)

// serveLimited serves api with NewServer's limits on a loopback port and
// returns its address.
func serveLimited(t *testing.T, api *API, l ServerLimits) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(api, nil, l)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := api.Shutdown(ctx); err != nil {
			t.Errorf("api shutdown: %v", err)
		}
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("server shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// upgradeRequest is a WebSocket handshake for idle session 0.
func upgradeRequest() string {
	return "GET /api/sessions/" + idleSessionID(0) + "/ws HTTP/1.1\r\nHost: chorus.test\r\n" +
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
}

// TestSlowHandshakeCut: a client that trickles the headers of a WebSocket
// upgrade, a byte at a time, is cut off once HeaderTimeout has passed, and
// never costs a join; a prompt handshake on the same server still works.
func TestSlowHandshakeCut(t *testing.T) {
	const headerTimeout = 300 * time.Millisecond
	be := &idleBackend{}
	addr := serveLimited(t, NewAPI(APIConfig{Backend: be}), ServerLimits{HeaderTimeout: headerTimeout})

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	req := upgradeRequest()
	cut := make(chan time.Duration, 1)
	go func() {
		// The server closes the connection without a response: the first
		// read that ends tells when.
		_, _ = io.Copy(io.Discard, conn) // the error is the cut itself
		cut <- time.Since(start)
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	sent := 0
	var took time.Duration
trickle:
	for sent < len(req)-1 { // never the last byte
		select {
		case took = <-cut:
			break trickle
		case <-tick.C:
			if _, err := conn.Write([]byte{req[sent]}); err != nil {
				took = <-cut
				break trickle
			}
			sent++
		case <-time.After(10 * time.Second):
			t.Fatal("the trickling handshake was not cut within 10s")
		}
	}
	if sent == len(req)-1 {
		t.Fatalf("the whole handshake but its last byte trickled in over %v without a cut", time.Since(start))
	}
	if took < headerTimeout || took > headerTimeout+2*time.Second {
		t.Errorf("cut after %v, want about %v", took, headerTimeout)
	}
	if n := be.joined.Load(); n != 0 {
		t.Errorf("a trickled handshake cost %d joins", n)
	}

	// A prompt handshake: 101.
	ok, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ok.Close()
	if _, err := ok.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	_ = ok.SetReadDeadline(time.Now().Add(5 * time.Second)) // the test's own bound
	resp, err := http.ReadResponse(bufio.NewReader(ok), nil)
	if err != nil {
		t.Fatalf("prompt handshake: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Errorf("prompt handshake: HTTP %d, want 101", resp.StatusCode)
	}
}

// TestOversizedHeadersRefused: headers beyond MaxHeaderBytes get 431 and
// cost nothing.
func TestOversizedHeadersRefused(t *testing.T) {
	be := &idleBackend{}
	addr := serveLimited(t, NewAPI(APIConfig{Backend: be}), ServerLimits{MaxHeaderBytes: 4 << 10})
	for _, size := range []int{1 << 10, 64 << 10} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		req := strings.Replace(upgradeRequest(), "\r\n\r\n", "\r\nX-Filler: "+strings.Repeat("a", size)+"\r\n\r\n", 1)
		// The server may answer before it has read all of a big request,
		// and then close: a failed write is fine, the response tells.
		go func() { _, _ = conn.Write([]byte(req)) }()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second)) // the test's own bound
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%d header bytes: %v", size, err)
		}
		resp.Body.Close()
		conn.Close()
		want := http.StatusSwitchingProtocols
		if size > 4<<10 {
			want = http.StatusRequestHeaderFieldsTooLarge
		}
		if resp.StatusCode != want {
			t.Errorf("%d header bytes: HTTP %d, want %d", size, resp.StatusCode, want)
		}
	}
	if n := be.joined.Load(); n != 1 {
		t.Errorf("%d joins, want the one with small headers", n)
	}
}

// TestStalledFrameClosed: a client that upgrades, then sends the start of a
// frame and stalls mid-payload, cannot hold its socket: the ping that its
// stuck frame keeps unanswered closes it. The close waits up to 5s for the
// client's close frame (the WebSocket library's fixed bound), which a stuck
// client never sends.
func TestStalledFrameClosed(t *testing.T) {
	const ping = 100 * time.Millisecond
	api := NewAPI(APIConfig{Backend: &idleBackend{}, PingInterval: ping})
	addr := serveLimited(t, api, ServerLimits{})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(upgradeRequest())); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // the test's own bound
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v, %v", resp, err)
	}
	// A masked text frame that announces 100 bytes and sends 3.
	if _, err := conn.Write([]byte{0x81, 0x80 | 100, 1, 2, 3, 4, 'a', 'b', 'c'}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		if n := api.Sockets(); n != 1 {
			return fmt.Errorf("%d sockets, want the stalled one", n)
		}
		return nil
	})
	start := time.Now()
	// The server's frames, the ping among them, then its close.
	if _, err := io.Copy(io.Discard, br); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read until the server closes: %v", err)
	}
	const closeHandshake = 5 * time.Second
	if took := time.Since(start); took > 2*ping+closeHandshake+2*time.Second {
		t.Errorf("the stalled socket was closed after %v, want within about %v", took, 2*ping+closeHandshake)
	}
	eventually(t, 5*time.Second, func() error {
		if n := api.Sockets(); n != 0 {
			return fmt.Errorf("%d sockets open", n)
		}
		return nil
	})
}
