package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// PeerConfig configures a node's peer port.
type PeerConfig struct {
	ID               string        // this node's id; required, 1 to 255 bytes; sent in the handshake
	Addr             string        // listen address "host:port" (port 0 allowed); outgoing dials bind to this host (port 0)
	Secret           []byte        // cluster secret; required, non-empty
	Handler          RPCHandler    // serves incoming RPCs; required
	Faults           *Faults       // optional fault hook (tests); nil means none
	Logger           hclog.Logger  // default hclog.NewNullLogger(); narrowed with Named("peer")
	HandshakeTimeout time.Duration // default 5s; also bounds each dial
	MaxConcurrentRPC int           // handlers running at once, per node; default 1024; excess requests wait
	WriteTimeout     time.Duration // default 10s; bounds each RPC frame write; a conn that cannot take a frame in time is closed
	// TLS, when set, makes every peer connection mutual TLS 1.3 (see
	// PeerTLS), with the HMAC handshake over Secret inside it. Nil: the HMAC
	// handshake alone, over plain TCP.
	TLS *PeerTLS
}

const (
	defaultHandshakeTimeout = 5 * time.Second
	defaultMaxConcurrentRPC = 1024
	defaultWriteTimeout     = 10 * time.Second
)

// withDefaults fills zero values only.
func (c PeerConfig) withDefaults() PeerConfig {
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = defaultHandshakeTimeout
	}
	if c.MaxConcurrentRPC == 0 {
		c.MaxConcurrentRPC = defaultMaxConcurrentRPC
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = defaultWriteTimeout
	}
	return c
}

// Validate reports the first problem with c. It never mutates c. Zero values
// that have defaults are valid.
func (c PeerConfig) Validate() error {
	switch {
	case c.ID == "":
		return errors.New("peer config: ID is required")
	case len(c.ID) > maxIDLen:
		return fmt.Errorf("peer config: ID is %d bytes, at most %d allowed", len(c.ID), maxIDLen)
	case c.Addr == "":
		return errors.New("peer config: Addr is required")
	case len(c.Secret) == 0:
		return errors.New("peer config: Secret is required")
	case c.Handler == nil:
		return errors.New("peer config: Handler is required")
	case c.HandshakeTimeout < 0:
		return errors.New("peer config: HandshakeTimeout is negative")
	case c.MaxConcurrentRPC < 0:
		return errors.New("peer config: MaxConcurrentRPC is negative")
	case c.WriteTimeout < 0:
		return errors.New("peer config: WriteTimeout is negative")
	case c.TLS != nil:
		return c.TLS.validate()
	}
	return nil
}

// ErrClosed is returned by Call and DialRaft once the Peer is closed, and by
// calls that were pending when it closed.
var ErrClosed = errors.New("peer port closed")

// ErrUnreachable is returned by Call and DialRaft when no authenticated
// connection to the peer could be made: the dial failed or timed out, the
// handshake failed, or a fault refused the link. The request was not sent.
var ErrUnreachable = errors.New("peer unreachable")

// Peer is a node's peer port: one TCP listener that carries both raft streams
// and chorus's RPCs, and the client side of both. Every connection, either
// way, is authenticated before its first byte of payload: by mutual TLS
// (tls.go) when configured, then by the HMAC handshake in handshake.go. All
// methods are safe for concurrent use.
type Peer struct {
	cfg       PeerConfig
	log       hclog.Logger
	ln        net.Listener
	serverTLS *tls.Config   // nil without PeerConfig.TLS
	localIP   net.IP        // outgoing dials bind here; nil lets the kernel choose
	closing   chan struct{} // closed when Close begins
	sem       chan struct{} // one token per running handler, cap MaxConcurrentRPC
	raft      *raftListener
	wg        sync.WaitGroup // every goroutine the Peer starts

	mu      sync.Mutex // guards closed, conns, targets; wg.Add happens under it
	closed  bool
	conns   map[*peerConn]struct{} // every open connection, either direction
	targets map[string]*rpcTarget  // RPC client state by address
}

// ListenPeer validates cfg, listens on cfg.Addr and starts the accept loop.
// Close the returned Peer to stop it.
func ListenPeer(cfg PeerConfig) (*Peer, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on peer address %s: %w", cfg.Addr, err)
	}
	p := &Peer{
		cfg:     cfg,
		log:     cfg.Logger.Named("peer"),
		ln:      ln,
		closing: make(chan struct{}),
		sem:     make(chan struct{}, cfg.MaxConcurrentRPC),
		conns:   make(map[*peerConn]struct{}),
		targets: make(map[string]*rpcTarget),
	}
	if cfg.TLS != nil {
		p.serverTLS = cfg.TLS.serverConfig()
	}
	p.raft = &raftListener{p: p, conns: make(chan net.Conn), closed: make(chan struct{})}
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
		p.localIP = ta.IP
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.acceptLoop()
	}()
	p.log.Info("peer port listening", "addr", ln.Addr().String(), "tls", cfg.TLS != nil)
	return p, nil
}

// Addr returns the address the Peer listens on, with the port resolved.
func (p *Peer) Addr() net.Addr { return p.ln.Addr() }

// RaftListener returns the view of the peer port that yields raft streams:
// Accept returns connections that passed the handshake and chose the raft
// stream kind, positioned after the mux byte. Close closes only this view
// (Accept then returns net.ErrClosed, and later raft streams are refused);
// it does not close the Peer. Every call returns the same view.
func (p *Peer) RaftListener() net.Listener { return p.raft }

// DialRaft dials the peer port at addr, authenticates and selects the raft
// stream. timeout bounds the dial and the handshake together, and is itself
// capped by HandshakeTimeout; 0 means HandshakeTimeout. The conn is closed by
// Close if the caller has not closed it by then.
func (p *Peer) DialRaft(addr string, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 || timeout > p.cfg.HandshakeTimeout {
		timeout = p.cfg.HandshakeTimeout
	}
	ctx, cancel := context.WithTimeout(p.lifetime(), timeout)
	defer cancel()
	c, err := p.dial(ctx, addr, kindRaft)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Close closes the listener and every connection, fails pending calls with
// ErrClosed, cancels the contexts of running handlers, and waits until every
// goroutine of the Peer has returned (so handlers must honour their ctx).
// Call and DialRaft fail with ErrClosed afterwards. Closing twice is a no-op.
func (p *Peer) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.closing)
	conns := make([]*peerConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()

	err := p.ln.Close()
	closeAll(conns)
	p.wg.Wait()
	p.log.Info("peer port closed")
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close peer listener: %w", err)
	}
	return nil
}

// track registers a new TCP conn so that Close can close it. After Close it
// closes raw and returns ErrClosed.
func (p *Peer) track(raw net.Conn) (*peerConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		// Nothing was sent on raw; its close error says nothing useful.
		_ = raw.Close()
		return nil, ErrClosed
	}
	c := &peerConn{Conn: raw, tcp: raw, p: p, done: make(chan struct{})}
	p.conns[c] = struct{}{}
	return c, nil
}

func (p *Peer) untrack(c *peerConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

// goTracked runs f on a goroutine that Close waits for. It returns false, and
// does not run f, once Close has begun.
func (p *Peer) goTracked(f func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		f()
	}()
	return true
}

func (p *Peer) isClosed() bool {
	select {
	case <-p.closing:
		return true
	default:
		return false
	}
}

// lifetime returns a context that is cancelled when Close begins. It lets
// work started on behalf of one caller (a shared dial) outlive that caller
// without the Peer storing a context.
func (p *Peer) lifetime() context.Context { return lifetimeCtx{p.closing} }

type lifetimeCtx struct{ done <-chan struct{} }

func (lifetimeCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (l lifetimeCtx) Done() <-chan struct{}     { return l.done }
func (lifetimeCtx) Value(any) any               { return nil }
func (l lifetimeCtx) Err() error {
	select {
	case <-l.done:
		return context.Canceled
	default:
		return nil
	}
}

// dial connects to addr from p.localIP, runs the client handshake, sends
// kind, and puts the conn under fault injection. ctx bounds the dial and
// the handshake; the handshake deadlines are cleared on success.
func (p *Peer) dial(ctx context.Context, addr string, kind byte) (*peerConn, error) {
	var d net.Dialer
	if p.localIP != nil {
		d.LocalAddr = &net.TCPAddr{IP: p.localIP}
	}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if p.isClosed() {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("dial peer %s: %w: %w", addr, ErrUnreachable, err)
	}
	c, err := p.track(raw)
	if err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(p.cfg.HandshakeTimeout)
	}
	if err := c.SetDeadline(deadline); err != nil {
		_ = c.Close() // the error below is the one that matters
		return nil, fmt.Errorf("dial peer %s: %w: %w", addr, ErrUnreachable, err)
	}
	var serverID string
	if p.cfg.TLS != nil {
		err = p.tlsClient(ctx, c, addr)
	}
	if err == nil {
		serverID, err = clientHandshake(c.Conn, p.cfg.ID, p.cfg.Secret, kind)
	}
	if isTLSReason(err) && !p.isClosed() {
		p.log.Warn("peer TLS handshake failed", "remote_addr", addr, "reason", handshakeReason(err), "error", err)
	}
	if err == nil {
		err = c.SetDeadline(time.Time{})
	}
	if err == nil && p.cfg.Faults != nil {
		err = p.cfg.Faults.attach(c, p.cfg.ID, serverID, p.cfg.ID, serverID)
	}
	if err != nil {
		_ = c.Close() // the handshake error is the one that matters
		if p.isClosed() {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("dial peer %s: %w: %w", addr, ErrUnreachable, err)
	}
	return c, nil
}

// acceptLoop accepts connections until the listener closes and serves each on
// its own goroutine.
func (p *Peer) acceptLoop() {
	const (
		baseDelay = 5 * time.Millisecond
		maxDelay  = time.Second
	)
	var delay time.Duration
	for {
		raw, err := p.ln.Accept()
		if err != nil {
			if p.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, say: back off as net/http does.
			delay = min(max(2*delay, baseDelay), maxDelay)
			p.log.Warn("peer accept failed", "error", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-p.closing:
				t.Stop()
				return
			}
			continue
		}
		delay = 0
		c, err := p.track(raw)
		if err != nil {
			return // closed
		}
		if !p.goTracked(func() { p.serveConn(c) }) {
			_ = c.Close() // Close has begun; nothing was read
			return
		}
	}
}

// serveConn authenticates an incoming connection and hands it to the raft
// listener or the RPC server. A connection that fails the handshake is
// closed before any further byte is read.
func (p *Peer) serveConn(c *peerConn) {
	remote := c.RemoteAddr().String()
	clientID, kind, err := p.acceptHandshake(c)
	if err != nil {
		_ = c.Close() // the handshake failure is what gets reported
		if p.isClosed() {
			return
		}
		if errors.Is(err, errRefused) {
			p.log.Debug("peer connection refused by fault", "remote_addr", remote, "peer_id", clientID)
			return
		}
		p.log.Warn("peer handshake failed", "remote_addr", remote, "reason", handshakeReason(err), "error", err)
		return
	}
	switch kind {
	case kindRaft:
		p.raft.deliver(c, clientID)
	case kindRPC:
		p.serveRPC(c, clientID)
	}
}

// acceptHandshake runs the TLS handshake when configured, the server
// handshake, the fault check and the stream kind read, all under one
// deadline that it clears on success.
func (p *Peer) acceptHandshake(c *peerConn) (clientID string, kind byte, err error) {
	if err := c.SetDeadline(time.Now().Add(p.cfg.HandshakeTimeout)); err != nil {
		return "", 0, ioFailure(err)
	}
	if p.serverTLS != nil {
		if err := p.tlsServer(c); err != nil {
			return "", 0, err
		}
	}
	clientID, err = serverHandshake(c.Conn, p.cfg.ID, p.cfg.Secret)
	if err != nil {
		return "", 0, err
	}
	if p.cfg.Faults != nil {
		if err := p.cfg.Faults.attach(c, p.cfg.ID, clientID, clientID, p.cfg.ID); err != nil {
			return clientID, 0, err
		}
	}
	if kind, err = readKind(c.Conn); err != nil {
		return clientID, 0, err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return clientID, 0, ioFailure(err)
	}
	return clientID, kind, nil
}

// raftListener is the net.Listener view of the raft streams of a Peer.
type raftListener struct {
	p         *Peer
	conns     chan net.Conn // unbuffered: a stream is handed over or closed, never stranded
	closed    chan struct{}
	closeOnce sync.Once
}

// Accept waits for the next authenticated raft stream. It returns
// net.ErrClosed once the view or the Peer is closed.
func (l *raftListener) Accept() (net.Conn, error) {
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.p.closing:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.p.closing:
		return nil, net.ErrClosed
	}
}

// Close closes the view only; streams that arrive afterwards are closed.
func (l *raftListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

// Addr returns the Peer's address.
func (l *raftListener) Addr() net.Addr { return l.p.Addr() }

// deliver hands c to Accept. A stream that nobody accepts within
// HandshakeTimeout, or that arrives after the view closed, is closed.
func (l *raftListener) deliver(c *peerConn, from string) {
	t := time.NewTimer(l.p.cfg.HandshakeTimeout)
	defer t.Stop()
	select {
	case l.conns <- c:
		return
	case <-l.closed:
		l.p.log.Debug("raft stream refused: raft listener closed", "peer_id", from)
	case <-l.p.closing:
	case <-t.C:
		l.p.log.Warn("raft stream not accepted in time", "peer_id", from, "remote_addr", c.RemoteAddr().String())
	}
	_ = c.Close() // never handed over; nobody else holds it
}
