package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// PeerTLS is the mutual TLS of a peer port: this node's certificate and the
// CA that signs the certificate of every member. With it, every peer
// connection, in both directions, is TLS 1.3 with a certificate required on
// both ends and verified against CAs; the dialer also checks that the host of
// the address it dials is among the server certificate's SANs. The HMAC
// handshake over the cluster secret still runs, inside the TLS session, so a
// peer needs both a certificate signed by the CA and the secret.
//
// Build it with LoadPeerTLS or ParsePeerTLS, which check that the pieces fit
// together. It is read-only once built and safe for concurrent use.
type PeerTLS struct {
	Cert tls.Certificate // this node's certificate (with any intermediates) and private key; Leaf set
	CAs  *x509.CertPool  // the CAs a peer's certificate must chain to
}

// LoadPeerTLS reads PEM files (a node certificate, its private key and the
// cluster CA certificate) and checks them as ParsePeerTLS does. The errors
// name the file at fault.
func LoadPeerTLS(certFile, keyFile, caFile string) (*PeerTLS, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	pt, err := ParsePeerTLS(certPEM, keyPEM, caPEM, time.Now())
	if err != nil {
		return nil, fmt.Errorf("%s, %s, %s: %w", certFile, keyFile, caFile, err)
	}
	return pt, nil
}

// ParsePeerTLS builds a PeerTLS from PEM blocks and checks, at time now, that
// the key belongs to the certificate and that the certificate chains to a
// certificate of caPEM and may serve both as a TLS server and a TLS client
// certificate (the same certificate does both on a peer connection).
func ParsePeerTLS(certPEM, keyPEM, caPEM []byte, now time.Time) (*PeerTLS, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("node certificate and key: %w", err)
	}
	cas, err := parseCertsPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("intermediate certificate: %w", err)
		}
		inter.AddCert(c)
	}
	// KeyUsages accepts a chain valid for any one of its usages: check
	// each on its own.
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{
			Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage},
		}); err != nil {
			return nil, fmt.Errorf("node certificate %q does not verify against the CA (a certificate of another CA, expired, or not for both server and client auth): %w",
				cert.Leaf.Subject.CommonName, err)
		}
	}
	return &PeerTLS{Cert: cert, CAs: pool}, nil
}

// parseCertsPEM returns every CERTIFICATE block of b; there must be one.
func parseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return out, nil
}

// validate reports what makes t unusable.
func (t *PeerTLS) validate() error {
	switch {
	case len(t.Cert.Certificate) == 0:
		return errors.New("peer config: TLS has no certificate")
	case t.Cert.PrivateKey == nil:
		return errors.New("peer config: TLS certificate has no private key")
	case t.CAs == nil:
		return errors.New("peer config: TLS has no CA")
	}
	return nil
}

// serverConfig is the listener's side: TLS 1.3 only, a client certificate
// required and verified against the CAs. No session tickets: every
// connection presents and verifies certificates afresh.
func (t *PeerTLS) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{t.Cert},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              t.CAs,
		SessionTicketsDisabled: true,
	}
}

// clientConfig is the dialer's side towards the server at host, which must
// be among the server certificate's SANs (an IP SAN for an IP address).
// It presents its certificate even when the server names other CAs than
// its issuer (crypto/tls would send none then), so that the server's log
// says the certificate is untrusted rather than missing.
func (t *PeerTLS) clientConfig(host string) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &t.Cert, nil },
		RootCAs:              t.CAs,
		ServerName:           host,
	}
}

// Reasons a TLS handshake fails, for the Warn log line; timeouts and a
// remote that hangs up keep the reasons of handshake.go.
const (
	reasonNotTLS    = "not tls"               // the remote spoke something else (plain TCP, the bare HMAC handshake)
	reasonUntrusted = "untrusted certificate" // its certificate does not verify against the CA, or names another host
	reasonTLSAlert  = "refused by remote"     // the remote refused this node's certificate, or the handshake
	reasonTLS       = "tls handshake"         // anything else, such as no client certificate
)

// tlsRemoteError is the Op of the *net.OpError that crypto/tls returns for
// an alert the remote sent (a certificate it refused, say).
const tlsRemoteError = "remote error"

// tlsFailure classifies an error of a TLS handshake, or of the first reads
// after it (TLS 1.3 tells a client that the server refused its certificate
// only then).
func tlsFailure(err error) *handshakeError {
	var (
		rhe tls.RecordHeaderError
		cve *tls.CertificateVerificationError
	)
	switch {
	case errors.As(err, &rhe):
		return &handshakeError{reason: reasonNotTLS, err: err}
	case errors.As(err, &cve):
		return &handshakeError{reason: reasonUntrusted, err: err}
	}
	if he := ioFailure(err); he.reason != reasonIO {
		return he // a timeout, a hang-up, an alert from the remote
	}
	return &handshakeError{reason: reasonTLS, err: err}
}

// isTLSReason reports whether err is a handshake failure that TLS decided.
func isTLSReason(err error) bool {
	switch handshakeReason(err) {
	case reasonNotTLS, reasonUntrusted, reasonTLSAlert, reasonTLS:
		return true
	}
	return false
}

// tlsClient runs the client side of the TLS handshake on c, whose deadline
// bounds it, towards addr, and makes c speak through the session. It is
// called by the goroutine that dialled c, before c is shared.
func (p *Peer) tlsClient(ctx context.Context, c *peerConn, addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return &handshakeError{reason: reasonTLS, err: err}
	}
	tc := tls.Client(c.tcp, p.cfg.TLS.clientConfig(host))
	if err := tc.HandshakeContext(ctx); err != nil {
		return tlsFailure(err)
	}
	c.Conn = tc
	return nil
}

// tlsServer runs the server side of the TLS handshake on c, whose deadline
// bounds it, and makes c speak through the session. It is called by the
// goroutine that serves c, before c is shared. A client without a
// certificate signed by the CA fails here, before any byte of the HMAC
// handshake, the stream kind or a payload is read.
func (p *Peer) tlsServer(c *peerConn) error {
	tc := tls.Server(c.tcp, p.serverTLS)
	if err := tc.Handshake(); err != nil {
		return tlsFailure(err)
	}
	c.Conn = tc
	return nil
}
