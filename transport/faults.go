package transport

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// LinkFault is the fault on one directed link between two node ids. The zero
// value is a healthy link.
type LinkFault struct {
	// Refuse makes new connections initiated on the link fail at once, and
	// closes the existing ones when it is set. A connection belongs to the
	// link (dialer id, acceptor id), whichever way its bytes flow: an RPC
	// needs both directions of one TCP connection, so Refuse on (A, B) cuts
	// A's calls to B and A's raft streams to B, while connections that B
	// initiated to A stay up and keep working in both directions. Use
	// Faults.Partition to cut both.
	Refuse bool
	// Drop makes bytes written on the link vanish: the writer sees success,
	// the reader sees silence and times out. A connection that dropped
	// anything is closed at its next write after Drop is cleared, so a
	// stream never resumes corrupt. Drop on (A, B) applies to every write
	// from A to B, on connections of either initiator.
	Drop bool
	// Delay makes each write from A to B wait this long first: user-space
	// latency, since netem is unavailable in tests. The writer blocks for the
	// delay (a Call cannot return before its request is written), unless the
	// conn closes first.
	Delay time.Duration
}

// errRefused is returned when a fault refuses a connection.
var errRefused = errors.New("link refused by fault injection")

// errDropped is returned by the first write after Drop was cleared on a
// connection that dropped bytes; the connection is closed by then.
var errDropped = fmt.Errorf("bytes were dropped by fault injection: %w", net.ErrClosed)

// link is a directed pair of node ids.
type link struct{ from, to string }

// Faults injects faults into the peer links of one or more Peers, by node id.
// Tests share one Faults between all nodes of a cluster; product code passes
// nil. Raft streams and RPC connections go through the same path, so a
// partition cuts both. Faults act on a connection once its handshake has
// named both ends: the handshake itself is never dropped or delayed, so a
// connection made under Drop is established and then silent. All methods
// are safe for concurrent use.
type Faults struct {
	mu    sync.Mutex                      // guards links and conns
	links map[link]LinkFault              // only non-zero faults
	conns map[link]map[*peerConn]struct{} // live conns by (dialer, acceptor)
}

// NewFaults returns a Faults with every link healthy.
func NewFaults() *Faults {
	return &Faults{
		links: make(map[link]LinkFault),
		conns: make(map[link]map[*peerConn]struct{}),
	}
}

// Set sets the fault on the directed link from → to; the zero LinkFault
// clears it. Setting Refuse closes the live connections that from initiated
// to to (see LinkFault.Refuse).
func (f *Faults) Set(from, to string, lf LinkFault) {
	f.mu.Lock()
	doomed := f.setLocked(link{from, to}, lf, nil)
	f.mu.Unlock()
	closeAll(doomed)
}

// Get returns the fault on the directed link from → to.
func (f *Faults) Get(from, to string) LinkFault {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.links[link{from, to}]
}

// Partition sets Refuse in both directions between every node of a and every
// node of b, keeping any Drop or Delay already set on those links, and closes
// the connections between the two groups.
func (f *Faults) Partition(a, b []string) {
	var doomed []*peerConn
	f.mu.Lock()
	for _, x := range a {
		for _, y := range b {
			for _, l := range []link{{x, y}, {y, x}} {
				lf := f.links[l]
				lf.Refuse = true
				doomed = f.setLocked(l, lf, doomed)
			}
		}
	}
	f.mu.Unlock()
	closeAll(doomed)
}

// Heal clears every fault. Connections that dropped bytes are closed at their
// next write.
func (f *Faults) Heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.links)
}

// setLocked sets the fault on l and appends to doomed the conns that Refuse
// closes; the caller closes them after releasing f.mu.
func (f *Faults) setLocked(l link, lf LinkFault, doomed []*peerConn) []*peerConn {
	if lf == (LinkFault{}) {
		delete(f.links, l)
		return doomed
	}
	f.links[l] = lf
	if lf.Refuse {
		for c := range f.conns[l] {
			doomed = append(doomed, c)
		}
	}
	return doomed
}

func closeAll(cs []*peerConn) {
	for _, c := range cs {
		// The conn's owner sees the close as an I/O error and handles it.
		_ = c.Close()
	}
}

// attach puts c under fault injection: its writes travel self → remote, and
// it belongs to the link dialer → acceptor. It fails with errRefused, and
// leaves c unattached, if that link is refused, and with net.ErrClosed if c
// is closing. The check and the registration are atomic with Set, so a conn
// is either refused or closed by a later Refuse. It is called once per conn,
// right after the handshake.
func (f *Faults) attach(c *peerConn, self, remote, dialer, acceptor string) error {
	l := link{dialer, acceptor}
	f.mu.Lock() // lock order: f.mu, then c.mu
	defer f.mu.Unlock()
	if f.links[l].Refuse {
		return errRefused
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.faults = f
	c.wlink = link{self, remote}
	c.ilink = l
	c.mu.Unlock()
	set := f.conns[l]
	if set == nil {
		set = make(map[*peerConn]struct{})
		f.conns[l] = set
	}
	set[c] = struct{}{}
	return nil
}

// detach forgets c, which belongs to link l; it is called when c closes.
func (f *Faults) detach(c *peerConn, l link) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if set := f.conns[l]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(f.conns, l)
		}
	}
}
