package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// RPC connections (stream kind 'P') are multiplexed. After the handshake the
// client sends request frames and the server answers with response frames,
// in any order:
//
//	request:  u32 length | u64 request id | u8 method | payload
//	response: u32 length | u64 request id | u8 code   | payload
//
// length counts the bytes after itself, at most MaxFrameSize. Code 0 means
// success and the payload is the response; any other code is an error and
// the payload is its message. All integers are big-endian.

// MaxFrameSize is the largest RPC frame, counting the bytes after the length
// prefix. A peer that announces a larger frame is disconnected.
const MaxFrameSize = 4 << 20

// rpcHeaderLen is the request id and the method or code.
const rpcHeaderLen = 8 + 1

// MaxPayload is the largest request or response payload an RPC can carry.
const MaxPayload = MaxFrameSize - rpcHeaderLen

// Codes of RPC errors. Handlers may use any other non-zero value for their
// own errors; 0 is success on the wire and never an error code.
const (
	// CodeUnavailable means the serving node could not answer now because it
	// is shutting down (transport sends it when a handler fails after its
	// connection or Peer began to close); handlers may return it for "not
	// ready" as well. The caller may retry, here or elsewhere.
	CodeUnavailable uint8 = 254
	// CodeInternal carries any handler error that is not an *RPCError, with
	// the error's text as the message.
	CodeInternal uint8 = 255

	codeOK uint8 = 0
)

// ErrConnLost is returned by Call when the connection died while the call was
// in flight, or before the request could be written completely. The request
// may or may not have run on the peer; callers retry (chorus requests carry
// op ids for that).
var ErrConnLost = errors.New("peer connection lost")

// ErrFrameTooLarge is returned by Call for a request larger than MaxPayload.
var ErrFrameTooLarge = errors.New("rpc frame too large")

var errShortFrame = errors.New("rpc frame too short")

// RPCHandler serves the RPCs that arrive on a Peer.
type RPCHandler interface {
	// ServeRPC runs on its own goroutine per request, at most
	// MaxConcurrentRPC at once per Peer. from is the authenticated peer id.
	// ctx is cancelled when the connection or the Peer closes (the caller's
	// deadline does not travel); Peer.Close waits for ServeRPC to return.
	// req is owned by the handler. An *RPCError reaches the caller with its
	// code and message; any other error arrives as CodeInternal with its text.
	ServeRPC(ctx context.Context, from string, method uint8, req []byte) ([]byte, error)
}

// RPCError is an error answer to an RPC. It travels back to the caller with
// its code; any other handler error arrives as code CodeInternal with its
// text.
type RPCError struct {
	Code uint8
	Msg  string
}

func (e *RPCError) Error() string { return fmt.Sprintf("peer rpc error %d: %s", e.Code, e.Msg) }

// rpcStatus maps what a handler returned to what goes on the wire. It is the
// one place that decides what a caller learns about a handler's error.
func rpcStatus(ctx context.Context, resp []byte, err error) (uint8, []byte) {
	if err == nil {
		if len(resp) > MaxPayload {
			return CodeInternal, []byte("response too large")
		}
		return codeOK, resp
	}
	code, msg := CodeInternal, err.Error()
	var re *RPCError
	switch {
	case errors.As(err, &re):
		if re.Code != codeOK {
			code = re.Code
		}
		msg = re.Msg
	case ctx.Err() != nil:
		code = CodeUnavailable
	}
	if len(msg) > MaxPayload {
		msg = msg[:MaxPayload]
	}
	return code, []byte(msg)
}

// readFrame reads one frame body (what follows the length prefix).
func readFrame(r io.Reader) ([]byte, error) {
	var h [4]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > MaxFrameSize {
		return nil, fmt.Errorf("frame of %d bytes: %w", n, ErrFrameTooLarge)
	}
	if n < rpcHeaderLen {
		return nil, fmt.Errorf("frame of %d bytes: %w", n, errShortFrame)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return body, nil
}

// newFrame returns a whole frame with the given header byte and payload; the
// id is filled in by putFrameID.
func newFrame(b uint8, payload []byte) []byte {
	f := make([]byte, 4+rpcHeaderLen+len(payload))
	binary.BigEndian.PutUint32(f, uint32(rpcHeaderLen+len(payload)))
	f[4+8] = b
	copy(f[4+rpcHeaderLen:], payload)
	return f
}

func putFrameID(f []byte, id uint64) { binary.BigEndian.PutUint64(f[4:], id) }

// writeFrame writes a whole frame within timeout. The caller holds the
// connection's write mutex: frames must not interleave, so this is the one
// place where a lock is held across I/O, bounded by timeout.
func writeFrame(c *peerConn, f []byte, timeout time.Duration) (int, error) {
	if err := c.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return 0, err
	}
	return c.Write(f)
}

// serveRPC serves the requests of one RPC connection until it fails, then
// cancels the handlers' context, closes the connection and waits for the
// handlers to return.
func (p *Peer) serveRPC(c *peerConn, from string) {
	log := p.log.With("peer_id", from, "remote_addr", c.RemoteAddr().String())
	ctx, cancel := context.WithCancel(context.Background())
	var (
		handlers sync.WaitGroup
		wmu      sync.Mutex // serialises response frames on c
	)
	defer func() {
		cancel()
		_ = c.Close() // the read error that got us here has been handled
		handlers.Wait()
	}()
	log.Debug("rpc connection opened")
	br := bufio.NewReader(c)
	for {
		body, err := readFrame(br)
		if err != nil {
			switch {
			case errors.Is(err, ErrFrameTooLarge), errors.Is(err, errShortFrame):
				log.Warn("closing rpc connection: bad frame", "error", err)
			case !p.isClosed():
				log.Debug("rpc connection ended", "error", err)
			}
			return
		}
		id := binary.BigEndian.Uint64(body)
		method := body[8]
		req := body[rpcHeaderLen:]
		select {
		case p.sem <- struct{}{}:
		case <-p.closing:
			return
		}
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			resp, herr := p.cfg.Handler.ServeRPC(ctx, from, method, req)
			<-p.sem
			code, out := rpcStatus(ctx, resp, herr)
			f := newFrame(code, out)
			putFrameID(f, id)
			wmu.Lock()
			_, err := writeFrame(c, f, p.cfg.WriteTimeout)
			wmu.Unlock()
			if err != nil {
				if !p.isClosed() && ctx.Err() == nil {
					log.Debug("rpc response write failed", "error", err)
				}
				_ = c.Close() // wakes the read loop, which ends the conn
			}
		}()
	}
}

// rpcTarget is the client state for one peer address: at most one live
// connection, and at most one dial in flight.
type rpcTarget struct {
	addr string

	mu      sync.Mutex // guards conn, dialing
	conn    *rpcConn
	dialing *pendingDial
}

// pendingDial is a dial that callers wait for; conn and err are written
// before done is closed.
type pendingDial struct {
	done chan struct{}
	conn *rpcConn
	err  error
}

// rpcConn is the client end of one multiplexed RPC connection.
type rpcConn struct {
	c   *peerConn
	wmu sync.Mutex // serialises request frames on c

	mu      sync.Mutex // guards nextID, pending, err
	nextID  uint64
	pending map[uint64]chan rpcResult // nil once err is set
	err     error                     // why the conn died; nil while alive
}

type rpcResult struct {
	code    uint8
	payload []byte
	err     error // the conn died first
}

// Call sends an RPC to the peer port at addr and waits for its answer. It
// reuses one connection per address, dialing (and redialing after a
// failure) as needed. ctx bounds the wait: a call abandoned on ctx returns
// ctx's error, and its late response is discarded. Errors:
//   - *RPCError: the handler answered with an error;
//   - ErrUnreachable: no connection could be made; the request was not sent;
//   - ErrConnLost: the connection died with the call in flight;
//   - ErrClosed: p is closed;
//   - ctx.Err(), wrapped;
//   - ErrFrameTooLarge: req is larger than MaxPayload.
//
// All but *RPCError and ErrFrameTooLarge are transport failures that a
// caller may retry.
func (p *Peer) Call(ctx context.Context, addr string, method uint8, req []byte) ([]byte, error) {
	if len(req) > MaxPayload {
		return nil, fmt.Errorf("call %s: request of %d bytes: %w", addr, len(req), ErrFrameTooLarge)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("call %s: %w", addr, err)
	}
	f := newFrame(method, req)
	for attempt := 1; ; attempt++ {
		rc, fresh, err := p.rpcConnTo(ctx, addr)
		if err != nil {
			return nil, err
		}
		res, sent, err := rc.roundTrip(ctx, f, p.cfg.WriteTimeout)
		if err != nil && !sent && !fresh && attempt == 1 && ctx.Err() == nil {
			// An idle conn that died unnoticed (the peer restarted, or a
			// fault closed it): nothing left, so resending is safe.
			continue
		}
		switch {
		case ctx.Err() != nil && errors.Is(err, ctx.Err()):
			return nil, fmt.Errorf("call %s: %w", addr, err)
		case err != nil && p.isClosed():
			return nil, ErrClosed
		case err != nil:
			return nil, fmt.Errorf("call %s: %w: %w", addr, ErrConnLost, err)
		case res.code != codeOK:
			return nil, &RPCError{Code: res.code, Msg: string(res.payload)}
		}
		return res.payload, nil
	}
}

// rpcConnTo returns the live connection to addr, dialing if there is none.
// fresh reports that the conn was dialed for this call (or a concurrent one).
func (p *Peer) rpcConnTo(ctx context.Context, addr string) (rc *rpcConn, fresh bool, err error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, false, ErrClosed
	}
	t := p.targets[addr]
	if t == nil {
		t = &rpcTarget{addr: addr}
		p.targets[addr] = t
	}
	p.mu.Unlock()

	t.mu.Lock()
	if t.conn != nil && t.conn.alive() {
		rc := t.conn
		t.mu.Unlock()
		return rc, false, nil
	}
	d := t.dialing
	if d == nil {
		d = &pendingDial{done: make(chan struct{})}
		// Lock order: t.mu, then p.mu (inside goTracked).
		if !p.goTracked(func() { p.runRPCConn(t, d) }) {
			t.mu.Unlock()
			return nil, false, ErrClosed
		}
		t.dialing = d
	}
	t.mu.Unlock()

	select {
	case <-d.done:
		if d.err != nil {
			return nil, false, d.err
		}
		return d.conn, true, nil
	case <-ctx.Done():
		return nil, false, fmt.Errorf("call %s: %w", addr, ctx.Err())
	}
}

// runRPCConn dials t.addr for the callers waiting on d, then, if that
// worked, reads responses until the connection dies. The dial is bounded by
// HandshakeTimeout and Close, not by any one caller's ctx, since several
// callers share it.
func (p *Peer) runRPCConn(t *rpcTarget, d *pendingDial) {
	ctx, cancel := context.WithTimeout(p.lifetime(), p.cfg.HandshakeTimeout)
	c, err := p.dial(ctx, t.addr, kindRPC)
	cancel()
	var rc *rpcConn
	if err == nil {
		rc = &rpcConn{c: c, pending: make(map[uint64]chan rpcResult)}
	}
	t.mu.Lock()
	t.dialing = nil
	if rc != nil {
		t.conn = rc
	}
	t.mu.Unlock()
	d.conn, d.err = rc, err
	close(d.done)
	if rc == nil {
		return
	}

	err = rc.readLoop()
	if !p.isClosed() {
		p.log.Debug("rpc connection lost", "addr", t.addr, "error", err)
	}
	t.mu.Lock()
	if t.conn == rc {
		t.conn = nil
	}
	t.mu.Unlock()
}

// readLoop delivers responses to their callers until the conn fails, then
// fails every pending call and returns why.
func (rc *rpcConn) readLoop() error {
	br := bufio.NewReader(rc.c)
	for {
		body, err := readFrame(br)
		if err != nil {
			rc.fail(err)
			return err
		}
		id := binary.BigEndian.Uint64(body)
		rc.mu.Lock()
		ch := rc.pending[id]
		delete(rc.pending, id)
		rc.mu.Unlock()
		if ch != nil { // nil: the caller gave up; drop the late response
			ch <- rpcResult{code: body[8], payload: body[rpcHeaderLen:]}
		}
	}
}

func (rc *rpcConn) alive() bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.err == nil
}

// fail marks the conn dead, closes it and fails every pending call with err.
// Only the first call has any effect.
func (rc *rpcConn) fail(err error) {
	rc.mu.Lock()
	if rc.err != nil {
		rc.mu.Unlock()
		return
	}
	rc.err = err
	pending := rc.pending
	rc.pending = nil
	rc.mu.Unlock()
	_ = rc.c.Close() // err, which the callers get, says why
	for _, ch := range pending {
		ch <- rpcResult{err: err} // buffered, and each ch is sent to once
	}
}

// roundTrip sends frame f under a new request id and waits for the answer
// or ctx. sent reports whether any byte of the request may have left.
func (rc *rpcConn) roundTrip(ctx context.Context, f []byte, writeTimeout time.Duration) (res rpcResult, sent bool, err error) {
	rc.mu.Lock()
	if rc.err != nil {
		err := rc.err
		rc.mu.Unlock()
		return rpcResult{}, false, err
	}
	rc.nextID++
	id := rc.nextID
	ch := make(chan rpcResult, 1)
	rc.pending[id] = ch
	rc.mu.Unlock()

	putFrameID(f, id)
	rc.wmu.Lock()
	n, err := writeFrame(rc.c, f, writeTimeout)
	rc.wmu.Unlock()
	if err != nil {
		// A partly written frame would desynchronise the stream.
		rc.fail(err)
		return rpcResult{}, n > 0, err
	}

	select {
	case res := <-ch:
		return res, true, res.err
	case <-ctx.Done():
		rc.mu.Lock()
		delete(rc.pending, id)
		rc.mu.Unlock()
		return rpcResult{}, true, ctx.Err()
	}
}
