package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// PeersFile is the file in a node's data dir that forces a new raft
// configuration on the node's next start: the way out of a lost quorum. It
// is a JSON list of every member the cluster is to have, this node included,
// each a voter:
//
//	[{"id": "n1", "peerAddr": "10.0.0.1:9081"}]
//
// The node applies it once, before raft starts, with raft.RecoverCluster:
// it replays its whole log into a snapshot whose configuration is the
// list's, and deletes the log. Entries it holds that were never committed
// become committed. It then renames the file to PeersFileApplied, so that a
// later restart does not force the configuration again.
const PeersFile = "peers.json"

// PeersFileApplied is what PeersFile is renamed to once applied.
const PeersFileApplied = "peers.json.applied"

// ErrBadPeersFile matches every error about the content of a peers.json.
var ErrBadPeersFile = errors.New("bad " + PeersFile)

// RecoveryPeer is one entry of a peers.json.
type RecoveryPeer struct {
	ID       string `json:"id"`
	PeerAddr string `json:"peerAddr"`
}

// maxPeersFile bounds a peers.json; a real one is a few hundred bytes.
const maxPeersFile = 1 << 20

// ReadPeersFile reads and checks the peers.json at path for the node self:
// a non-empty list without unknown fields, every id and address present,
// unique and well formed, and self among them. Errors about the content
// match ErrBadPeersFile.
func ReadPeersFile(path, self string) ([]RecoveryPeer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w: %s", path, ErrBadPeersFile, fmt.Sprintf(format, args...))
	}
	if len(b) > maxPeersFile {
		return nil, bad("%d bytes; a list of a few members is far smaller", len(b))
	}
	var peers []RecoveryPeer
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&peers); err != nil {
		return nil, bad("not a JSON list of {\"id\", \"peerAddr\"}: %v", err)
	}
	if dec.More() {
		return nil, bad("data after the list")
	}
	if len(peers) == 0 {
		return nil, bad("the list is empty")
	}
	ids, addrs := map[string]bool{}, map[string]bool{}
	for i, p := range peers {
		at := "entry " + strconv.Itoa(i+1)
		switch {
		case p.ID == "":
			return nil, bad("%s: no id", at)
		case ids[p.ID]:
			return nil, bad("%s: id %s twice", at, p.ID)
		case p.PeerAddr == "":
			return nil, bad("%s (%s): no peerAddr", at, p.ID)
		case addrs[p.PeerAddr]:
			return nil, bad("%s (%s): peerAddr %s twice", at, p.ID, p.PeerAddr)
		}
		host, port, err := net.SplitHostPort(p.PeerAddr)
		if err != nil {
			return nil, bad("%s (%s): peerAddr %q: %v", at, p.ID, p.PeerAddr, err)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || host == "" {
			return nil, bad("%s (%s): peerAddr %q is not host:port", at, p.ID, p.PeerAddr)
		}
		ids[p.ID], addrs[p.PeerAddr] = true, true
	}
	if !ids[self] {
		return nil, bad("this node, %s, is not in the list", self)
	}
	return peers, nil
}

// recoverFromPeersFile forces the configuration of DataDir/peers.json when
// the file exists (see PeersFile); New calls it just before raft.NewRaft,
// with the stores and transport raft is about to get. A file that does not
// check out stops the start with an error, having changed nothing. The FSM
// that RecoverCluster replays the log into is a throwaway: raft restores the
// real one from the snapshot the recovery writes.
func recoverFromPeersFile(cfg Config, rc *raft.Config, logs raft.LogStore, stable raft.StableStore,
	snaps raft.SnapshotStore, trans raft.Transport, log hclog.Logger) error {
	path := filepath.Join(cfg.DataDir, PeersFile)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	peers, err := ReadPeersFile(path, cfg.ID)
	if err != nil {
		return fmt.Errorf("quorum recovery: %w", err)
	}
	var conf raft.Configuration
	for _, p := range peers {
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.PeerAddr), Suffrage: raft.Voter})
		if p.ID == cfg.ID && p.PeerAddr != string(trans.LocalAddr()) {
			log.Warn("peers.json gives this node another peer address than it advertises; the others will dial the file's",
				"file_addr", p.PeerAddr, "advertised", trans.LocalAddr())
		}
	}
	log.Warn("peers.json found: forcing a new cluster configuration; entries this node holds that were never committed become committed",
		"path", path, "members", len(peers), "configuration", conf.Servers)
	scratch := newAdapter(log.Named("recovery"), newHub(log.Named("recovery"), 1))
	if err := raft.RecoverCluster(rc, scratch, logs, stable, snaps, trans, conf); err != nil {
		return fmt.Errorf("quorum recovery from %s: %w", path, err)
	}
	// Once only: the same file applied again after the cluster has grown
	// would shrink it back behind the others' backs.
	if err := os.Rename(path, filepath.Join(cfg.DataDir, PeersFileApplied)); err != nil {
		return fmt.Errorf("quorum recovery applied, but %s could not be renamed; remove it before the next start: %w", path, err)
	}
	if d, err := os.Open(cfg.DataDir); err == nil {
		err = d.Sync()
		_ = d.Close() // a directory opened to sync; Sync's error is the one that matters
		if err != nil {
			return fmt.Errorf("quorum recovery applied, but syncing the rename of %s failed; remove it before the next start: %w", path, err)
		}
	}
	log.Warn("quorum recovery applied: this node starts with the configuration of peers.json; add new members to it with chorus members add",
		"index", scratch.applied.Load(), "members", len(peers), "renamed_to", PeersFileApplied)
	return nil
}
