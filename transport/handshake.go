package transport

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
)

// The peer handshake runs on every peer connection before any other byte,
// or, with PeerConfig.TLS, as the first bytes inside the TLS session:
//
//	client → server: "CHP1" | nonceC (32) | u8 len | idC
//	server → client: nonceS (32) | u8 len | idS | macS (32)
//	client → server: macC (32) | u8 stream kind
//
// with macS = HMAC-SHA256(secret, labelServer | nonceC | nonceS | u8 len | idC | u8 len | idS)
// and macC the same with labelClient. Each side verifies the other's MAC
// before it trusts anything the other sent; the server reads the stream kind
// only after macC has verified. The ids enter the MAC with their length bytes,
// exactly as they travel, so no two (idC, idS) pairs hash the same.
const (
	handshakeMagic = "CHP1"
	nonceLen       = 32
	macLen         = sha256.Size
	maxIDLen       = 255

	labelServer = "chorus-peer-server\x00"
	labelClient = "chorus-peer-client\x00"

	// Stream kinds, the first byte after the handshake.
	kindRaft byte = 'R'
	kindRPC  byte = 'P'
)

// ErrHandshake matches every failed peer handshake: wrong magic, a MAC that
// does not verify (a different cluster secret), a bad id, a TLS handshake
// that failed (a certificate not signed by the CA, none, or no TLS at all),
// or I/O that failed or timed out before the handshake completed.
var ErrHandshake = errors.New("peer handshake failed")

// Reasons a handshake fails; they go into the Warn log line as "reason".
const (
	reasonBadMagic = "bad magic"
	reasonBadID    = "bad id length"
	reasonBadMAC   = "bad mac"
	reasonBadKind  = "unknown stream kind"
	reasonTimeout  = "timeout"
	reasonClosed   = "closed by remote"
	reasonIO       = "io error"
)

// handshakeError says why a handshake failed. It carries no secret material.
type handshakeError struct {
	reason string
	err    error // the I/O error, if any
}

func (e *handshakeError) Error() string {
	if e.err != nil {
		return "peer handshake: " + e.reason + ": " + e.err.Error()
	}
	return "peer handshake: " + e.reason
}

func (e *handshakeError) Unwrap() error        { return e.err }
func (e *handshakeError) Is(target error) bool { return target == ErrHandshake }

// ioFailure classifies an I/O error during the handshake. Over TLS, a
// client learns that the server refused its certificate at its first read:
// that is an alert from the remote.
func ioFailure(err error) *handshakeError {
	var (
		ne net.Error
		oe *net.OpError
	)
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return &handshakeError{reason: reasonTimeout, err: err}
	case errors.As(err, &oe) && oe.Op == tlsRemoteError:
		return &handshakeError{reason: reasonTLSAlert, err: err}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &handshakeError{reason: reasonClosed, err: err}
	default:
		return &handshakeError{reason: reasonIO, err: err}
	}
}

// handshakeReason returns the reason of a handshake failure, for logging.
func handshakeReason(err error) string {
	var he *handshakeError
	if errors.As(err, &he) {
		return he.reason
	}
	return reasonIO
}

func newNonce() []byte {
	b := make([]byte, nonceLen)
	// crypto/rand.Read never returns an error (it crashes the program
	// instead) since Go 1.24, so there is nothing to handle.
	_, _ = rand.Read(b)
	return b
}

// handshakeMAC computes macS (label labelServer) or macC (labelClient).
func handshakeMAC(secret []byte, label string, nonceC, nonceS []byte, idC, idS string) []byte {
	h := hmac.New(sha256.New, secret)
	// hash.Hash.Write never returns an error.
	_, _ = io.WriteString(h, label)
	_, _ = h.Write(nonceC)
	_, _ = h.Write(nonceS)
	_, _ = h.Write([]byte{byte(len(idC))})
	_, _ = io.WriteString(h, idC)
	_, _ = h.Write([]byte{byte(len(idS))})
	_, _ = io.WriteString(h, idS)
	return h.Sum(nil)
}

// appendID appends u8 len | id. The caller has checked 1 <= len(id) <= 255.
func appendID(b []byte, id string) []byte {
	b = append(b, byte(len(id)))
	return append(b, id...)
}

// readID reads u8 len | id and rejects an empty id.
func readID(r io.Reader) (string, error) {
	var l [1]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return "", ioFailure(err)
	}
	if l[0] == 0 {
		return "", &handshakeError{reason: reasonBadID}
	}
	id := make([]byte, l[0])
	if _, err := io.ReadFull(r, id); err != nil {
		return "", ioFailure(err)
	}
	return string(id), nil
}

func writeAll(w io.Writer, b []byte) error {
	if _, err := w.Write(b); err != nil {
		return ioFailure(err)
	}
	return nil
}

// clientHello is the first message: magic | nonceC | u8 len | idC.
func clientHello(nonceC []byte, id string) []byte {
	b := make([]byte, 0, len(handshakeMagic)+nonceLen+1+len(id))
	b = append(b, handshakeMagic...)
	b = append(b, nonceC...)
	return appendID(b, id)
}

// readServerHello reads nonceS | u8 len | idS | macS.
func readServerHello(r io.Reader) (nonceS []byte, idS string, macS []byte, err error) {
	nonceS = make([]byte, nonceLen)
	if _, err := io.ReadFull(r, nonceS); err != nil {
		return nil, "", nil, ioFailure(err)
	}
	if idS, err = readID(r); err != nil {
		return nil, "", nil, err
	}
	macS = make([]byte, macLen)
	if _, err := io.ReadFull(r, macS); err != nil {
		return nil, "", nil, ioFailure(err)
	}
	return nonceS, idS, macS, nil
}

// clientHandshake runs the dialing side on c and sends the stream kind. It
// returns the authenticated server id. The caller sets and clears deadlines.
//
// macC and the kind go out in one write: the client has already
// authenticated the server, and the server reads the kind only after
// verifying macC.
func clientHandshake(c net.Conn, id string, secret []byte, kind byte) (string, error) {
	nonceC := newNonce()
	if err := writeAll(c, clientHello(nonceC, id)); err != nil {
		return "", err
	}
	nonceS, idS, macS, err := readServerHello(c)
	if err != nil {
		return "", err
	}
	if !hmac.Equal(macS, handshakeMAC(secret, labelServer, nonceC, nonceS, id, idS)) {
		return "", &handshakeError{reason: reasonBadMAC}
	}
	macC := handshakeMAC(secret, labelClient, nonceC, nonceS, id, idS)
	if err := writeAll(c, append(macC, kind)); err != nil {
		return "", err
	}
	return idS, nil
}

// serverHandshake runs the accepting side on c up to and including the
// verification of macC, and returns the authenticated client id. It reads
// nothing after macC; the caller reads the stream kind with readKind. The
// caller sets and clears deadlines.
func serverHandshake(c net.Conn, id string, secret []byte) (string, error) {
	var magic [len(handshakeMagic)]byte
	if _, err := io.ReadFull(c, magic[:]); err != nil {
		return "", ioFailure(err)
	}
	if string(magic[:]) != handshakeMagic {
		return "", &handshakeError{reason: reasonBadMagic}
	}
	nonceC := make([]byte, nonceLen)
	if _, err := io.ReadFull(c, nonceC); err != nil {
		return "", ioFailure(err)
	}
	idC, err := readID(c)
	if err != nil {
		return "", err
	}
	nonceS := newNonce()
	hello := make([]byte, 0, nonceLen+1+len(id)+macLen)
	hello = append(hello, nonceS...)
	hello = appendID(hello, id)
	hello = append(hello, handshakeMAC(secret, labelServer, nonceC, nonceS, idC, id)...)
	if err := writeAll(c, hello); err != nil {
		return "", err
	}
	macC := make([]byte, macLen)
	if _, err := io.ReadFull(c, macC); err != nil {
		return "", ioFailure(err)
	}
	if !hmac.Equal(macC, handshakeMAC(secret, labelClient, nonceC, nonceS, idC, id)) {
		return "", &handshakeError{reason: reasonBadMAC}
	}
	return idC, nil
}

// readKind reads the stream kind that follows a verified handshake.
func readKind(c net.Conn) (byte, error) {
	var k [1]byte
	if _, err := io.ReadFull(c, k[:]); err != nil {
		return 0, ioFailure(err)
	}
	if k[0] != kindRaft && k[0] != kindRPC {
		return 0, &handshakeError{reason: reasonBadKind, err: fmt.Errorf("kind byte 0x%02x", k[0])}
	}
	return k[0], nil
}
