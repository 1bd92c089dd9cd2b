package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"chorus/testcluster"
)

// BareRaft is three hashicorp/raft nodes in this process with raft's own TCP
// transport and raft-boltdb/v2 with fsync: the same stores, timeouts and
// batching as chorus, and an FSM that only counts. It is the baseline that
// chorus's commit path is compared with.
type BareRaft struct {
	members []bareMember
}

type bareMember struct {
	r     *raft.Raft
	store *raftboltdb.BoltStore
	trans *raft.NetworkTransport
}

// StartBareRaft starts the three nodes on 127.0.0.firstIP to firstIP+2, with
// their bolt files under dir, and waits for a leader.
func StartBareRaft(dir string, firstIP int) (*BareRaft, error) {
	b := &BareRaft{}
	var servers []raft.Server
	var transports []*raft.NetworkTransport
	fail := func(err error) (*BareRaft, error) {
		b.Close()
		for _, t := range transports[len(b.members):] {
			_ = t.Close() // teardown of a failed start
		}
		return nil, fmt.Errorf("bare raft: %w", err)
	}
	for i := range 3 {
		t, err := raft.NewTCPTransport(net.JoinHostPort("127.0.0."+strconv.Itoa(firstIP+i), "0"), nil, 3, 10*time.Second, io.Discard)
		if err != nil {
			return fail(err)
		}
		transports = append(transports, t)
		servers = append(servers, raft.Server{ID: raft.ServerID("r" + strconv.Itoa(i)), Address: t.LocalAddr()})
	}
	for i := range 3 {
		store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "bare-raft-"+strconv.Itoa(i)+".db")})
		if err != nil {
			return fail(err)
		}
		cfg := raft.DefaultConfig()
		cfg.LocalID = servers[i].ID
		cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = 500*time.Millisecond, 500*time.Millisecond, 250*time.Millisecond
		cfg.CommitTimeout = 5 * time.Millisecond
		cfg.MaxAppendEntries = 128
		cfg.BatchApplyCh = true
		cfg.Logger = hclog.NewNullLogger()
		r, err := raft.NewRaft(cfg, &countFSM{}, store, store, raft.NewInmemSnapshotStore(), transports[i])
		if err != nil {
			_ = store.Close() // teardown of a failed start
			return fail(err)
		}
		b.members = append(b.members, bareMember{r: r, store: store, trans: transports[i]})
		if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
			return fail(err)
		}
	}
	err := testcluster.Poll(10*time.Second, func() error {
		for _, m := range b.members {
			if m.r.State() == raft.Leader {
				return nil
			}
		}
		return errors.New("no leader yet")
	})
	if err != nil {
		return fail(err)
	}
	return b, nil
}

// Apply commits one entry through the current leader and waits for it.
func (b *BareRaft) Apply(payload []byte, timeout time.Duration) error {
	for _, m := range b.members {
		if m.r.State() == raft.Leader {
			return m.r.Apply(payload, timeout).Error()
		}
	}
	return errors.New("bare raft: no leader")
}

// Close shuts every node down. Shutdown closes a transport's listener but
// not the connections the other nodes opened to it, whose handlers go on
// reading; closing every node's own outgoing connections ends them.
func (b *BareRaft) Close() {
	for _, m := range b.members {
		_ = m.r.Shutdown().Error() // teardown; nothing to report
		_ = m.store.Close()        // idem
	}
	for _, m := range b.members {
		m.trans.CloseStreams()
	}
	b.members = nil
}

// countFSM is the least an FSM can do: count entries.
type countFSM struct{ n atomic.Uint64 }

func (f *countFSM) Apply(*raft.Log) interface{}         { f.n.Add(1); return nil }
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) { return countSnap{}, nil }
func (f *countFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type countSnap struct{}

func (countSnap) Persist(s raft.SnapshotSink) error { return s.Close() }
func (countSnap) Release()                          {}
