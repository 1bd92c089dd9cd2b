package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// countingHandler counts its calls.
func countingHandler(n *atomic.Int32) RPCHandler {
	return handlerFunc(func(context.Context, string, uint8, []byte) ([]byte, error) {
		n.Add(1)
		return []byte("ok"), nil
	})
}

// wantReset checks that err is a connection reset. The server closing a
// socket that still holds unread bytes makes Linux send RST instead of FIN,
// so a reset proves the server never read what followed the point where it
// gave up. The bytes were sent in a single write, so on loopback they were
// all in the server's receive buffer when it read the part it judged.
func wantReset(tb testing.TB, err error) {
	tb.Helper()
	if !errors.Is(err, syscall.ECONNRESET) {
		tb.Fatalf("read after rejection: %v, want a connection reset (server left bytes unread)", err)
	}
}

func wantWarn(tb testing.TB, logs *testLog, subs ...string) {
	tb.Helper()
	subs = append([]string{"[WARN]", "peer handshake failed"}, subs...)
	eventually(tb, 5*time.Second, func() error {
		if len(logs.lines(subs...)) == 0 {
			return errors.New("no warning logged with " + strings.Join(subs, ", "))
		}
		return nil
	})
}

// reasonKV is how hclog prints the reason key: quoted if it has a space.
func reasonKV(reason string) string {
	if strings.Contains(reason, " ") {
		return "reason=" + strconv.Quote(reason)
	}
	return "reason=" + reason
}

// TestAuthWrongSecret runs the client side of the handshake by hand with the
// wrong secret, ignoring that the server's MAC does not verify, and sends
// macC, the stream kind and a whole request in one write. The server must
// close after reading macC, with the kind and the request unread.
func TestAuthWrongSecret(t *testing.T) {
	for _, kind := range []byte{kindRPC, kindRaft} {
		t.Run(string(kind), func(t *testing.T) {
			var calls atomic.Int32
			server, logs := newPeer(t, PeerConfig{ID: "srv", Handler: countingHandler(&calls)})
			stopAccepts := raftAccepts(server)

			c := rawConn(t, server.Addr().String())
			nonceC := newNonce()
			if _, err := c.Write(clientHello(nonceC, "intruder")); err != nil {
				t.Fatal(err)
			}
			if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
				t.Fatal(err)
			}
			nonceS, idS, macS, err := readServerHello(c)
			if err != nil {
				t.Fatal(err)
			}
			wrong := []byte("not-the-cluster-secret")
			if idS != "srv" {
				t.Fatalf("server id %q", idS)
			}
			if string(macS) == string(handshakeMAC(wrong, labelServer, nonceC, nonceS, "intruder", idS)) {
				t.Fatal("server MAC verifies under the wrong secret")
			}
			msg := handshakeMAC(wrong, labelClient, nonceC, nonceS, "intruder", idS)
			msg = append(msg, kind)
			req := newFrame(1, []byte("payload"))
			putFrameID(req, 1)
			msg = append(msg, req...)
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			wantReset(t, readClosed(t, c))

			wantWarn(t, logs, reasonKV("bad mac"), "remote_addr="+c.LocalAddr().String())
			if n := stopAccepts(); n != 0 {
				t.Fatalf("raft listener accepted %d streams", n)
			}
			if n := calls.Load(); n != 0 {
				t.Fatalf("handler called %d times", n)
			}
		})
	}
}

// TestAuthWrongSecretPeer: a real Peer with another secret rejects the
// server's MAC itself and never sends its own; nothing gets through.
func TestAuthWrongSecretPeer(t *testing.T) {
	var calls atomic.Int32
	server, logs := newPeer(t, PeerConfig{ID: "srv", Handler: countingHandler(&calls)})
	stopAccepts := raftAccepts(server)
	client, _ := newPeer(t, PeerConfig{ID: "cli", Secret: []byte("other-cluster")})

	_, err := call(client, server, 1, "x")
	if !errors.Is(err, ErrUnreachable) || !errors.Is(err, ErrHandshake) {
		t.Fatalf("Call err = %v, want ErrUnreachable and ErrHandshake", err)
	}
	if _, err := client.DialRaft(server.Addr().String(), time.Second); !errors.Is(err, ErrHandshake) {
		t.Fatalf("DialRaft err = %v, want ErrHandshake", err)
	}
	// The server saw the client hang up before sending its MAC.
	wantWarn(t, logs, reasonKV("closed by remote"))
	if n := stopAccepts(); n != 0 {
		t.Fatalf("raft listener accepted %d streams", n)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("handler called %d times", n)
	}

	// The server's own clients are unaffected.
	other, _ := newPeer(t, PeerConfig{ID: "ok"})
	mustCall(t, other, server, 1, "x", "ok")
}

// TestAuthNoHandshake sends bytes that are not a handshake, such as what
// hashicorp/raft writes first on a stream (rpcType 0, AppendEntries, then
// msgpack), or a bad hello.
func TestAuthNoHandshake(t *testing.T) {
	appendEntries := append([]byte{0}, "\x8a\xa4Term\x01\xa6Leader\xc4\x05node1garbage"...)
	longID := append([]byte(handshakeMagic), make([]byte, nonceLen)...)
	tests := []struct {
		name   string
		send   []byte
		reason string
		reset  bool // bytes remain unread when the server gives up
	}{
		{"raft append entries", appendEntries, "bad magic", true},
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "bad magic", true},
		{"empty id", append(append([]byte(nil), longID...), 0, 'P', 'P'), "bad id length", true},
		{"truncated hello", append(append([]byte(nil), longID...), 5, 'n'), "timeout", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			server, logs := newPeer(t, PeerConfig{ID: "srv", Handler: countingHandler(&calls),
				HandshakeTimeout: 300 * time.Millisecond})
			stopAccepts := raftAccepts(server)

			c := rawConn(t, server.Addr().String())
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			err := readClosed(t, c)
			if tt.reset {
				wantReset(t, err)
			} else if !errors.Is(err, io.EOF) {
				t.Fatalf("read: %v, want EOF", err)
			}
			wantWarn(t, logs, reasonKV(tt.reason), "remote_addr="+c.LocalAddr().String())
			if n := stopAccepts(); n != 0 {
				t.Fatalf("raft listener accepted %d streams", n)
			}
			if n := calls.Load(); n != 0 {
				t.Fatalf("handler called %d times", n)
			}
		})
	}
}

// TestHandshakeTimeout: a client that connects and stalls at any point of
// the handshake is closed after HandshakeTimeout.
func TestHandshakeTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	tests := []struct {
		name string
		send func(c net.Conn) error
	}{
		{"silent", func(net.Conn) error { return nil }},
		{"magic only", func(c net.Conn) error {
			_, err := c.Write([]byte(handshakeMagic))
			return err
		}},
		{"no mac", func(c net.Conn) error {
			if _, err := c.Write(clientHello(newNonce(), "slow")); err != nil {
				return err
			}
			_, _, _, err := readServerHello(c)
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, logs := newPeer(t, PeerConfig{ID: "srv", HandshakeTimeout: timeout})
			start := time.Now() // before the dial: the server's clock starts after it
			c := rawConn(t, server.Addr().String())
			if err := tt.send(c); err != nil {
				t.Fatal(err)
			}
			if err := readClosed(t, c); !errors.Is(err, io.EOF) {
				t.Fatalf("read: %v, want EOF", err)
			}
			if d := time.Since(start); d < timeout {
				t.Fatalf("closed after %v, before the %v timeout", d, timeout)
			}
			wantWarn(t, logs, reasonKV("timeout"))
		})
	}
}

// TestHandshakeKind: after a valid handshake the server waits for the kind
// byte only until HandshakeTimeout, and rejects an unknown one.
func TestHandshakeKind(t *testing.T) {
	server, logs := newPeer(t, PeerConfig{ID: "srv", HandshakeTimeout: 300 * time.Millisecond})

	c := rawConn(t, server.Addr().String())
	if _, err := clientHandshake(c, "cli", testSecret, 'X'); err != nil {
		t.Fatal(err)
	}
	if err := readClosed(t, c); !errors.Is(err, io.EOF) {
		t.Fatalf("read: %v, want EOF", err)
	}
	wantWarn(t, logs, reasonKV("unknown stream kind"))
}

// TestHandshakeMAC pins the MAC layout: the fields in order, each id with
// its length byte, so that ("ab", "c") and ("a", "bc") differ.
func TestHandshakeMAC(t *testing.T) {
	nc, ns := make([]byte, nonceLen), make([]byte, nonceLen)
	for i := range nc {
		nc[i], ns[i] = byte(i), byte(255-i)
	}
	a := handshakeMAC(testSecret, labelServer, nc, ns, "ab", "c")
	if b := handshakeMAC(testSecret, labelServer, nc, ns, "a", "bc"); string(a) == string(b) {
		t.Fatal("MAC does not separate the ids")
	}
	if b := handshakeMAC(testSecret, labelClient, nc, ns, "ab", "c"); string(a) == string(b) {
		t.Fatal("server and client MACs coincide")
	}
	if b := handshakeMAC(testSecret, labelServer, ns, nc, "ab", "c"); string(a) == string(b) {
		t.Fatal("MAC does not bind the nonce order")
	}
	// The client hello layout.
	h := clientHello(nc, "n1")
	if string(h[:4]) != "CHP1" || string(h[4:4+nonceLen]) != string(nc) || h[36] != 2 || string(h[37:]) != "n1" {
		t.Fatalf("client hello %x", h)
	}
	// Request frames are big-endian: length | id | method | payload.
	f := newFrame(7, []byte("hi"))
	putFrameID(f, 0x0102030405060708)
	if binary.BigEndian.Uint32(f) != 11 || binary.BigEndian.Uint64(f[4:]) != 0x0102030405060708 || f[12] != 7 || string(f[13:]) != "hi" {
		t.Fatalf("frame %x", f)
	}
}
