package transport

import (
	"net"
	"sync"
	"time"
)

// peerConn is every TCP connection of a Peer, incoming or outgoing, from the
// moment it exists: the Peer tracks it so that Close can close it, and, once
// the handshake has named the node at the other end, Faults may act on its
// writes. Close is idempotent and safe for concurrent use; Read and Write
// follow net.Conn's rules.
type peerConn struct {
	// Conn is what the connection speaks through: tcp, or the TLS session
	// over it. The goroutine that runs the handshake replaces it once,
	// before c is shared; only Close may run concurrently, and it uses tcp.
	net.Conn
	tcp net.Conn // the TCP connection

	p    *Peer
	done chan struct{} // closed by Close; wakes a write waiting out a Delay

	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex // guards closed, faults, wlink, ilink, dropped
	closed  bool       // Close has begun; Faults.attach must not register c
	faults  *Faults    // set by Faults.attach; nil without fault injection
	wlink   link       // self → remote: the link this end's writes travel
	ilink   link       // dialer → acceptor: the link whose Refuse closes c
	dropped bool       // a write vanished under Drop
}

// Write applies the fault on c's write link, if any, then writes.
func (c *peerConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	f, wl := c.faults, c.wlink
	c.mu.Unlock()
	if f == nil {
		return c.Conn.Write(b)
	}
	lf := f.Get(wl.from, wl.to)
	if lf.Delay > 0 {
		t := time.NewTimer(lf.Delay)
		select {
		case <-t.C:
		case <-c.done:
			t.Stop()
			return 0, net.ErrClosed
		}
		// The fault may have changed while this write waited.
		lf = f.Get(wl.from, wl.to)
	}
	c.mu.Lock()
	if lf.Drop {
		c.dropped = true
		c.mu.Unlock()
		return len(b), nil
	}
	dropped := c.dropped
	c.mu.Unlock()
	if dropped {
		// The reader lost bytes; resuming the stream would corrupt it.
		_ = c.Close() // the write error below reports it
		return 0, errDropped
	}
	return c.Conn.Write(b)
}

// Close closes the connection and forgets it. Only the first call has any
// effect; later calls return the first call's error.
func (c *peerConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.mu.Lock()
		c.closed = true
		f, il := c.faults, c.ilink
		c.mu.Unlock()
		if f != nil {
			f.detach(c, il)
		}
		c.p.untrack(c)
		// Closing the TCP connection, not the TLS session: no close_notify,
		// which could block on a peer that does not read. Every stream is
		// framed, so none needs it to detect truncation.
		c.closeErr = c.tcp.Close()
	})
	return c.closeErr
}
