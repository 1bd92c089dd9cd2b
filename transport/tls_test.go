package transport

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The peer TLS tests use this block of loopback addresses.
const (
	tlsIP1 = "127.0.0.52"
	tlsIP2 = "127.0.0.53"
)

// testCA creates a CA valid from an hour ago for a year.
func testCA(tb testing.TB) *CA {
	tb.Helper()
	ca, err := NewCA(time.Now().Add(-time.Hour), time.Now().Add(365*24*time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	return ca
}

// issue has ca issue a certificate for name with IP SANs ips, valid for a
// day, and returns it and its key in PEM.
func issue(tb testing.TB, ca *CA, name string, ips ...string) (certPEM, keyPEM []byte) {
	tb.Helper()
	var parsed []net.IP
	for _, ip := range ips {
		parsed = append(parsed, net.ParseIP(ip))
	}
	certPEM, keyPEM, err := ca.Issue(name, parsed, nil, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	return certPEM, keyPEM
}

// peerTLS returns the PeerTLS of a node name, certified by ca for ips.
func peerTLS(tb testing.TB, ca *CA, name string, ips ...string) *PeerTLS {
	tb.Helper()
	c, k := issue(tb, ca, name, ips...)
	pt, err := ParsePeerTLS(c, k, ca.CertPEM(), time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	return pt
}

// trusting returns pt with its CA pool replaced by ca's: a node whose own
// certificate comes from elsewhere but which trusts ca.
func trusting(pt *PeerTLS, ca *CA) *PeerTLS {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &PeerTLS{Cert: pt.Cert, CAs: pool}
}

// tlsConns returns the TLS states of p's open connections, failing on a
// connection that is not TLS.
func tlsConns(tb testing.TB, p *Peer) []tls.ConnectionState {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []tls.ConnectionState
	for c := range p.conns {
		tc, ok := c.Conn.(*tls.Conn)
		if !ok {
			tb.Fatalf("%s holds a %T connection, want *tls.Conn", p.cfg.ID, c.Conn)
		}
		out = append(out, tc.ConnectionState())
	}
	return out
}

// rawConnFrom dials addr over plain TCP from localIP, with no handshake.
func rawConnFrom(tb testing.TB, localIP, addr string) net.Conn {
	tb.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		tb.Fatalf("raw dial %s: %v", addr, err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// TestPeerTLS: two peers with certificates from one CA make RPCs and raft
// streams both ways, over TLS 1.3 with each other's certificate verified.
func TestPeerTLS(t *testing.T) {
	ca := testCA(t)
	a, _ := newPeer(t, PeerConfig{ID: "a", Addr: tlsIP1 + ":0", TLS: peerTLS(t, ca, "a", tlsIP1)})
	b, _ := newPeer(t, PeerConfig{ID: "b", Addr: tlsIP2 + ":0", TLS: peerTLS(t, ca, "b", tlsIP2)})

	mustCall(t, a, b, 1, "x", "a/1/x")
	mustCall(t, b, a, 2, "y", "b/2/y")
	ac, bc := dialRaft(t, a, b)
	msg := bytes.Repeat([]byte("raft"), 1<<16) // several TLS records
	errc := make(chan error, 1)
	go func() {
		_, err := ac.Write(msg)
		errc <- err
	}()
	got := make([]byte, len(msg))
	if err := bc.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(bc, got); err != nil {
		t.Fatalf("raft stream read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("raft stream write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("raft stream bytes differ")
	}

	for _, p := range []*Peer{a, b} {
		states := tlsConns(t, p)
		if len(states) != 3 { // its RPC conn, the other's RPC conn, the raft stream
			t.Fatalf("%s holds %d connections, want 3", p.cfg.ID, len(states))
		}
		for _, st := range states {
			if st.Version != tls.VersionTLS13 || !st.HandshakeComplete || len(st.PeerCertificates) == 0 {
				t.Fatalf("%s: TLS version %x, complete %t, %d peer certificates", p.cfg.ID, st.Version, st.HandshakeComplete, len(st.PeerCertificates))
			}
			if cn := st.PeerCertificates[0].Subject.CommonName; cn == p.cfg.ID || (cn != "a" && cn != "b") {
				t.Fatalf("%s sees a peer certificate of %q", p.cfg.ID, cn)
			}
		}
	}
}

// TestPeerTLSRejected: a peer that cannot show a certificate of the CA (or
// does not check the server's), speaks no TLS, or lacks the cluster secret
// gets no RPC and no raft stream through, in either direction; the listener
// logs why, with the remote address, and keeps serving good peers.
func TestPeerTLSRejected(t *testing.T) {
	ca, other := testCA(t), testCA(t)
	srvTLS := peerTLS(t, ca, "srv", tlsIP1)
	tests := []struct {
		name string
		// server is the listener's TLS (default srvTLS).
		server func() *PeerTLS
		// client is the dialing peer's config (ID, TLS, Secret), or nil
		// for a hand-made client, run by raw.
		client *PeerConfig
		raw    func(t *testing.T, addr string)
		// serverReason is the reason the listener logs; clientReason, when
		// set, the one a dialing Peer logs.
		serverReason, clientReason string
	}{
		{
			name:         "client certificate from another CA",
			client:       &PeerConfig{ID: "intruder", TLS: trusting(peerTLS(t, other, "intruder", tlsIP2), ca)},
			serverReason: "untrusted certificate", clientReason: "refused by remote",
		},
		{
			name:         "server certificate from another CA",
			server:       func() *PeerTLS { return trusting(peerTLS(t, other, "srv", tlsIP1), ca) },
			client:       &PeerConfig{ID: "cli", TLS: peerTLS(t, ca, "cli", tlsIP2)},
			serverReason: "refused by remote", clientReason: "untrusted certificate",
		},
		{
			name:         "server certificate for another address",
			server:       func() *PeerTLS { return peerTLS(t, ca, "srv", "127.0.0.60") },
			client:       &PeerConfig{ID: "cli", TLS: peerTLS(t, ca, "cli", tlsIP2)},
			serverReason: "refused by remote", clientReason: "untrusted certificate",
		},
		{
			name:         "plain peer with the cluster secret",
			client:       &PeerConfig{ID: "plain"},
			serverReason: "not tls",
		},
		{
			name:         "right certificate, wrong secret",
			client:       &PeerConfig{ID: "cli", TLS: peerTLS(t, ca, "cli", tlsIP2), Secret: []byte("other-cluster")},
			serverReason: "closed by remote",
		},
		{
			name: "no client certificate",
			raw: func(t *testing.T, addr string) {
				pool := x509.NewCertPool()
				pool.AddCert(ca.Cert)
				raw := rawConnFrom(t, tlsIP2, addr)
				c := tls.Client(raw, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: tlsIP1})
				if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
					t.Fatal(err)
				}
				// TLS 1.3: the client finishes before the server has judged
				// its (empty) certificate. It sends a hello, a MAC, a kind
				// and a request at once; none of it may be read.
				if err := c.Handshake(); err != nil {
					t.Fatalf("client side of the handshake: %v", err)
				}
				msg := clientHello(newNonce(), "anon")
				msg = append(msg, make([]byte, macLen)...)
				msg = append(msg, kindRPC)
				req := newFrame(1, []byte("payload"))
				putFrameID(req, 1)
				if _, err := c.Write(append(msg, req...)); err != nil {
					t.Fatal(err)
				}
				var oe *net.OpError
				if err := readClosed(t, c); !errors.As(err, &oe) || oe.Op != tlsRemoteError {
					t.Fatalf("read: %v, want the server's alert", err)
				}
			},
			serverReason: "tls handshake",
		},
		{
			name: "plain bytes",
			raw: func(t *testing.T, addr string) {
				c := rawConnFrom(t, tlsIP2, addr)
				if _, err := c.Write(clientHello(newNonce(), "plain")); err != nil {
					t.Fatal(err)
				}
				readClosed(t, c)
			},
			serverReason: "not tls",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			st := srvTLS
			if tt.server != nil {
				st = tt.server()
			}
			server, logs := newPeer(t, PeerConfig{ID: "srv", Addr: tlsIP1 + ":0", TLS: st, Handler: countingHandler(&calls)})
			stopAccepts := raftAccepts(server)
			addr := server.Addr().String()

			if tt.raw != nil {
				tt.raw(t, addr)
			} else {
				cfg := *tt.client
				cfg.Addr = tlsIP2 + ":0"
				client, clientLogs := newPeer(t, cfg)
				if _, err := client.Call(context.Background(), addr, 1, []byte("x")); !errors.Is(err, ErrUnreachable) || !errors.Is(err, ErrHandshake) {
					t.Fatalf("Call err = %v, want ErrUnreachable and ErrHandshake", err)
				}
				if _, err := client.DialRaft(addr, 5*time.Second); !errors.Is(err, ErrHandshake) {
					t.Fatalf("DialRaft err = %v, want ErrHandshake", err)
				}
				if tt.clientReason != "" && len(clientLogs.lines("[WARN]", "peer TLS handshake failed", reasonKV(tt.clientReason), "remote_addr="+addr)) == 0 {
					t.Fatalf("the dialer logged no TLS warning with %s", reasonKV(tt.clientReason))
				}
			}
			wantWarn(t, logs, reasonKV(tt.serverReason), "remote_addr="+tlsIP2)
			if n := calls.Load(); n != 0 {
				t.Fatalf("handler called %d times", n)
			}
			if n := stopAccepts(); n != 0 {
				t.Fatalf("raft listener accepted %d streams", n)
			}

			// A good peer still gets through, when the listener is one.
			if tt.server == nil {
				good, _ := newPeer(t, PeerConfig{ID: "good", Addr: tlsIP2 + ":0", TLS: peerTLS(t, ca, "good", tlsIP2)})
				if _, err := call(good, server, 1, "x"); err != nil {
					t.Fatalf("a good peer after the rejection: %v", err)
				}
				if n := calls.Load(); n != 1 {
					t.Fatalf("handler called %d times, want 1", n)
				}
			}
		})
	}
}

// TestPeerTLSToPlainPeer: a TLS peer dialing a peer without TLS is refused
// there, and nothing reaches its handler.
func TestPeerTLSToPlainPeer(t *testing.T) {
	var calls atomic.Int32
	server, logs := newPeer(t, PeerConfig{ID: "srv", Addr: tlsIP1 + ":0", Handler: countingHandler(&calls)})
	client, _ := newPeer(t, PeerConfig{ID: "cli", Addr: tlsIP2 + ":0", TLS: peerTLS(t, testCA(t), "cli", tlsIP2)})
	if _, err := call(client, server, 1, "x"); !errors.Is(err, ErrHandshake) {
		t.Fatalf("Call err = %v, want ErrHandshake", err)
	}
	wantWarn(t, logs, reasonKV("bad magic"))
	if n := calls.Load(); n != 0 {
		t.Fatalf("handler called %d times", n)
	}
}

// TestPeerTLSHandshakeTimeout: a client that stalls before or inside the TLS
// handshake is closed after HandshakeTimeout.
func TestPeerTLSHandshakeTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	for _, tt := range []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		{"half a client hello", []byte{0x16, 0x03, 0x01, 0x01, 0x00, 0x01}}, // a record of 256 bytes, 1 sent
	} {
		t.Run(tt.name, func(t *testing.T) {
			server, logs := newPeer(t, PeerConfig{ID: "srv", Addr: tlsIP1 + ":0", HandshakeTimeout: timeout,
				TLS: peerTLS(t, testCA(t), "srv", tlsIP1)})
			start := time.Now()
			c := rawConn(t, server.Addr().String())
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			readClosed(t, c)
			if d := time.Since(start); d < timeout {
				t.Fatalf("closed after %v, before the %v timeout", d, timeout)
			}
			wantWarn(t, logs, reasonKV("timeout"))
		})
	}
}

func TestPeerConfigValidateTLS(t *testing.T) {
	good := peerTLS(t, testCA(t), "n1", tlsIP1)
	for _, tt := range []struct {
		name string
		tls  *PeerTLS
		ok   bool
	}{
		{"good", good, true},
		{"no certificate", &PeerTLS{CAs: good.CAs}, false},
		{"no key", &PeerTLS{Cert: tls.Certificate{Certificate: good.Cert.Certificate}, CAs: good.CAs}, false},
		{"no CA", &PeerTLS{Cert: good.Cert}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := PeerConfig{ID: "n1", Addr: tlsIP1 + ":0", Secret: testSecret, Handler: echo, TLS: tt.tls}
			if err := cfg.Validate(); (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%t", err, tt.ok)
			}
		})
	}
}

// TestParsePeerTLS: the checks a node makes of its certificate, key and CA
// at startup.
func TestParsePeerTLS(t *testing.T) {
	ca, other := testCA(t), testCA(t)
	cert, key := issue(t, ca, "n1", tlsIP1)
	cert2, key2 := issue(t, ca, "n2", tlsIP2)
	foreign, foreignKey := issue(t, other, "n1", tlsIP1)
	expired, expiredKey, err := ca.Issue("n1", []net.IP{net.ParseIP(tlsIP1)}, nil, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	serverOnly, serverOnlyKey := issueWithUsage(t, ca, x509.ExtKeyUsageServerAuth)

	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	for _, tt := range []struct {
		name           string
		cert, key, cas []byte
		check          func(error) bool // nil: any error
	}{
		{"key of another certificate", cert, key2, ca.CertPEM(), nil},
		{"certificate of another CA", foreign, foreignKey, ca.CertPEM(), func(err error) bool { return errors.As(err, &unknown) }},
		{"expired", expired, expiredKey, ca.CertPEM(), func(err error) bool { return errors.As(err, &invalid) && invalid.Reason == x509.Expired }},
		{"server auth only", serverOnly, serverOnlyKey, ca.CertPEM(), func(err error) bool {
			return errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage
		}},
		{"CA file holds a key", cert, key, key, nil},
		{"empty key", cert, nil, ca.CertPEM(), nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePeerTLS(tt.cert, tt.key, tt.cas, time.Now())
			if err == nil || (tt.check != nil && !tt.check(err)) {
				t.Fatalf("ParsePeerTLS = %v", err)
			}
		})
	}

	// Two CAs in the file: certificates of either verify.
	both := append(other.CertPEM(), ca.CertPEM()...)
	if _, err := ParsePeerTLS(cert2, key2, both, time.Now()); err != nil {
		t.Fatalf("a CA bundle: %v", err)
	}

	// LoadPeerTLS names the file that is missing.
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cf, kf, caf := write("n1.pem", cert), write("n1-key.pem", key), write("ca.pem", ca.CertPEM())
	pt, err := LoadPeerTLS(cf, kf, caf)
	if err != nil {
		t.Fatal(err)
	}
	if cn := pt.Cert.Leaf.Subject.CommonName; cn != "n1" {
		t.Fatalf("leaf %q", cn)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, files := range [][3]string{{missing, kf, caf}, {cf, missing, caf}, {cf, kf, missing}} {
		if _, err := LoadPeerTLS(files[0], files[1], files[2]); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
			t.Fatalf("LoadPeerTLS%q = %v, want a not-exist error naming the file", files, err)
		}
	}
	if _, err := LoadPeerTLS(cf, kf, write("other.pem", other.CertPEM())); !errors.As(err, &unknown) || !strings.Contains(err.Error(), cf) {
		t.Fatalf("LoadPeerTLS with another CA = %v, want an unknown authority naming the files", err)
	}
}

// issueWithUsage issues a certificate for n1 with only the given extended
// key usage, by hand.
func issueWithUsage(tb testing.TB, ca *CA, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	serial, err := newSerial()
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "n1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.ParseIP(tlsIP1)},
	}, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		tb.Fatal(err)
	}
	kp, err := encodeKeyPEM(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), kp
}

// TestCA: a CA survives its PEM round trip, and the certificates it issues
// carry what a peer port and an HTTPS listener need.
func TestCA(t *testing.T) {
	ca := testCA(t)
	kp, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseCA(ca.CertPEM(), kp)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cert.Equal(ca.Cert) || !again.Key.Equal(ca.Key) {
		t.Fatal("the CA changed in its PEM round trip")
	}
	if !ca.Cert.IsCA || !ca.Cert.MaxPathLenZero || !strings.HasPrefix(ca.Cert.Subject.CommonName, "chorus CA ") {
		t.Fatalf("CA certificate: IsCA %t, MaxPathLenZero %t, name %q", ca.Cert.IsCA, ca.Cert.MaxPathLenZero, ca.Cert.Subject.CommonName)
	}
	if other := testCA(t); other.Cert.Subject.CommonName == ca.Cert.Subject.CommonName {
		t.Fatal("two CAs share a name")
	}

	certPEM, keyPEM, err := ca.Issue("n1", []net.IP{net.ParseIP(tlsIP1)}, []string{"n1.example"}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	kpair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf := kpair.Leaf
	if leaf.Subject.CommonName != "n1" || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP(tlsIP1)) ||
		len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "n1.example" || leaf.IsCA {
		t.Fatalf("leaf: %q, IPs %v, DNS %v, IsCA %t", leaf.Subject.CommonName, leaf.IPAddresses, leaf.DNSNames, leaf.IsCA)
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Fatalf("leaf key %T, want ECDSA", leaf.PublicKey)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, host := range []string{tlsIP1, "n1.example"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("verify for %s: %v", host, err)
		}
	}

	// What ParseCA and Issue refuse.
	if _, err := ParseCA(ca.CertPEM(), keyPEM); err == nil {
		t.Fatal("ParseCA accepted a key of another certificate")
	}
	if _, err := ParseCA(certPEM, keyPEM); err == nil {
		t.Fatal("ParseCA accepted a node certificate")
	}
	if _, _, err := ca.Issue("n1", nil, nil, time.Now(), time.Now().Add(time.Hour)); err == nil {
		t.Fatal("Issue accepted a certificate without SANs")
	}
	if _, _, err := ca.Issue("n1", []net.IP{net.ParseIP(tlsIP1)}, nil, time.Now(), ca.Cert.NotAfter.Add(time.Hour)); err == nil {
		t.Fatal("Issue accepted a certificate that outlives the CA")
	}
}

// TestPeerTLSFaults: fault injection acts above TLS, on whole writes, so a
// partition refuses TLS peers as it does plain ones, and a link that
// dropped bytes is closed and redialled rather than left with a corrupt
// TLS stream.
func TestPeerTLSFaults(t *testing.T) {
	ca, f := testCA(t), NewFaults()
	a, _ := newPeer(t, PeerConfig{ID: "a", Addr: tlsIP1 + ":0", Faults: f, TLS: peerTLS(t, ca, "a", tlsIP1)})
	b, _ := newPeer(t, PeerConfig{ID: "b", Addr: tlsIP2 + ":0", Faults: f, TLS: peerTLS(t, ca, "b", tlsIP2)})
	mustCall(t, a, b, 1, "x", "a/1/x")

	f.Partition([]string{"a"}, []string{"b"})
	if _, err := call(a, b, 1, "x"); !errors.Is(err, ErrUnreachable) && !errors.Is(err, ErrConnLost) {
		t.Fatalf("call across a partition: %v, want ErrUnreachable or ErrConnLost", err)
	}
	f.Heal()
	mustCall(t, a, b, 1, "y", "a/1/y")

	f.Set("a", "b", LinkFault{Drop: true})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err := a.Call(ctx, b.Addr().String(), 1, []byte("lost"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call with its request dropped: %v, want a timeout", err)
	}
	f.Heal()
	eventually(t, 5*time.Second, func() error {
		_, err := call(a, b, 1, "z")
		return err
	})
	for _, st := range tlsConns(t, a) {
		if !st.HandshakeComplete {
			t.Fatal("a connection without a complete TLS handshake")
		}
	}
}
