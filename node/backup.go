package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"chorus/fsm"
	"chorus/transport"
)

// A backup file is a small fixed header followed by the payload, an FSM
// snapshot exactly as fsm.State.WriteSnapshot writes it (and as raft's
// snapshot store keeps it). Integers are big-endian.
//
//	offset size
//	0      8    magic "CHORUSBK"
//	8      4    format version (BackupVersion)
//	12     8    the raft index the state reflects: the last entry of the raft snapshot it was taken from
//	20     8    the term of that entry
//	28     4    the FSM snapshot format version of the payload (fsm.SnapshotVersion when written)
//	32     8    payload length in bytes
//	40     32   SHA-256 of the payload
//	72     4    CRC-32C (Castagnoli) of bytes 0 to 71
//	76          the payload
//
// The header's own checksum catches a damaged index before a restore uses
// it to place the restored state in the log.
const (
	// BackupVersion is the backup format version this build writes and the
	// newest one it reads.
	BackupVersion = 1
	// BackupHeaderSize is the size of the header in bytes.
	BackupHeaderSize = 76

	backupMagic = "CHORUSBK"
	// maxBackupIndex bounds the header's index: raft places a restored state
	// one past it, and an index near 2^64 would wrap.
	maxBackupIndex = 1 << 62
)

var backupCRC = crc32.MakeTable(crc32.Castagnoli)

// BackupHeader describes a backup file's payload.
type BackupHeader struct {
	Version    uint32 // format version of the file
	Index      uint64 // raft index the state reflects
	Term       uint64 // term of that index
	FSMVersion uint32 // FSM snapshot format version of the payload
	Length     uint64 // payload bytes
	SHA256     [sha256.Size]byte
}

// ErrBadBackup matches every error about a backup that cannot be restored:
// wrong magic, unknown version, damaged header, truncated or extended
// payload, checksum mismatch, a payload that does not decode. It also
// matches transport.ErrBadRequest.
var ErrBadBackup = errors.New("not a usable backup")

type badBackupError struct {
	reason string
	err    error // the cause, when there is one
}

func (e *badBackupError) Error() string { return "not a usable backup: " + e.reason }
func (e *badBackupError) Unwrap() error { return e.err }

func (e *badBackupError) Is(target error) bool {
	return target == ErrBadBackup || target == transport.ErrBadRequest
}

func badBackup(format string, args ...any) error {
	err := fmt.Errorf(format, args...) // keeps a %w cause
	return &badBackupError{reason: err.Error(), err: errors.Unwrap(err)}
}

// MarshalBinary returns the header's BackupHeaderSize bytes; it never fails.
func (h BackupHeader) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, BackupHeaderSize)
	b = append(b, backupMagic...)
	b = binary.BigEndian.AppendUint32(b, h.Version)
	b = binary.BigEndian.AppendUint64(b, h.Index)
	b = binary.BigEndian.AppendUint64(b, h.Term)
	b = binary.BigEndian.AppendUint32(b, h.FSMVersion)
	b = binary.BigEndian.AppendUint64(b, h.Length)
	b = append(b, h.SHA256[:]...)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, backupCRC))
	return b, nil
}

// ReadBackupHeader reads and checks a backup's header. Errors about the
// bytes match ErrBadBackup; a failing reader's errors are returned wrapped.
func ReadBackupHeader(r io.Reader) (BackupHeader, error) {
	var b [BackupHeaderSize]byte
	n, err := io.ReadFull(r, b[:])
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		if n >= len(backupMagic) && string(b[:len(backupMagic)]) != backupMagic {
			return BackupHeader{}, badBackup("not a chorus backup (wrong magic)")
		}
		return BackupHeader{}, badBackup("truncated header: %d of %d bytes", n, BackupHeaderSize)
	case err != nil:
		return BackupHeader{}, fmt.Errorf("read backup header: %w", err)
	}
	if string(b[:len(backupMagic)]) != backupMagic {
		return BackupHeader{}, badBackup("not a chorus backup (wrong magic)")
	}
	h := BackupHeader{
		Version:    binary.BigEndian.Uint32(b[8:]),
		Index:      binary.BigEndian.Uint64(b[12:]),
		Term:       binary.BigEndian.Uint64(b[20:]),
		FSMVersion: binary.BigEndian.Uint32(b[28:]),
		Length:     binary.BigEndian.Uint64(b[32:]),
	}
	copy(h.SHA256[:], b[40:72])
	// A newer format may lay its header out differently: its version is
	// all this build can trust, so it is checked before the checksum.
	if h.Version == 0 || h.Version > BackupVersion {
		return BackupHeader{}, badBackup("format version %d; this build reads versions 1 to %d", h.Version, BackupVersion)
	}
	if got, want := crc32.Checksum(b[:72], backupCRC), binary.BigEndian.Uint32(b[72:]); got != want {
		return BackupHeader{}, badBackup("damaged header (header checksum mismatch)")
	}
	switch {
	case h.FSMVersion == 0 || h.FSMVersion > fsm.SnapshotVersion:
		return BackupHeader{}, badBackup("FSM snapshot version %d; this build reads versions 1 to %d", h.FSMVersion, fsm.SnapshotVersion)
	case h.Index == 0 || h.Index > maxBackupIndex:
		return BackupHeader{}, badBackup("raft index %d out of range", h.Index)
	case h.Length == 0 || h.Length > 1<<62:
		return BackupHeader{}, badBackup("payload length %d out of range", h.Length)
	}
	return h, nil
}

// CopyBackupPayload copies the payload that follows h from r to w (which may
// be io.Discard) and checks it against h: exactly h.Length bytes, then the
// end of r, and the SHA-256. Errors about the bytes match ErrBadBackup; a
// failing reader's or writer's errors are returned wrapped.
func CopyBackupPayload(w io.Writer, r io.Reader, h BackupHeader) error {
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, sum), io.LimitReader(r, int64(h.Length)))
	if err != nil {
		return fmt.Errorf("copy backup payload: %w", err)
	}
	if uint64(n) < h.Length {
		return badBackup("truncated payload: %d of %d bytes", n, h.Length)
	}
	var one [1]byte
	switch k, err := io.ReadFull(r, one[:]); {
	case k > 0:
		return badBackup("data after the payload's %d bytes", h.Length)
	case err != nil && !errors.Is(err, io.EOF):
		return fmt.Errorf("read backup: %w", err)
	}
	if got := sum.Sum(nil); !bytes.Equal(got, h.SHA256[:]) {
		return badBackup("payload checksum mismatch (SHA-256 %s, the header says %s)", hex.EncodeToString(got), hex.EncodeToString(h.SHA256[:]))
	}
	return nil
}

// Backup is a backup file ready to stream: the header, then the payload
// read from the raft snapshot it was taken from.
type Backup struct {
	Header  BackupHeader
	r       io.Reader
	payload io.Closer
}

// Read reads the backup file.
func (b *Backup) Read(p []byte) (int, error) { return b.r.Read(p) }

// Close releases the snapshot file.
func (b *Backup) Close() error { return b.payload.Close() }

// Size is the file's size in bytes.
func (b *Backup) Size() int64 { return BackupHeaderSize + int64(b.Header.Length) }

// leaderElsewhereError says that a leader-only operation reached another
// node. It matches transport.ErrLeaderElsewhere and names the leader's HTTP
// address when one is known, so that the HTTP layer can redirect.
type leaderElsewhereError struct{ id, httpAddr string }

func (e *leaderElsewhereError) Error() string {
	switch {
	case e.id == "":
		return "this node does not lead and knows no leader; try again"
	case e.httpAddr == "":
		return "this node does not lead; the leader " + e.id + " has announced no HTTP address"
	}
	return "this node does not lead; the leader is " + e.id + " at " + e.httpAddr
}

func (e *leaderElsewhereError) Is(target error) bool {
	return target == transport.ErrLeaderElsewhere || target == ErrNotLeader
}

// LeaderHTTPAddr is the leader's HTTP address, or "".
func (e *leaderElsewhereError) LeaderHTTPAddr() string { return e.httpAddr }

// conflictError is a refusal that repeating the request unchanged meets
// again (transport.ErrConflict).
type conflictError struct{ msg string }

func (e *conflictError) Error() string        { return e.msg }
func (e *conflictError) Is(target error) bool { return target == transport.ErrConflict }

// unavailable marks err as worth retrying later (transport.ErrUnavailable).
func unavailable(op string, err error) error {
	if errors.Is(err, transport.ErrUnavailable) {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w: %w", op, transport.ErrUnavailable, err)
}

// leading returns nil on the leader, and otherwise an error that says where
// the leader is.
func (n *Node) leading() error {
	if n.closed() {
		return ErrShutdown
	}
	if n.raft.State() == raft.Leader {
		return nil
	}
	st := n.Status()
	return &leaderElsewhereError{id: st.Leader.ID, httpAddr: st.Leader.HTTPAddr}
}

// Backup takes a consistent backup of the cluster's state. Only the leader
// takes one (other nodes answer with an error that names the leader). It
// passes the read barrier, so the backup holds every write acknowledged
// before the call, then has raft take a snapshot (which also compacts the
// log, as raft's own snapshots do) and hands out that snapshot's bytes
// behind a header with its raft index and term, length and SHA-256. They
// go through a temporary file in the data dir, never through memory. The
// caller must Close the result.
func (n *Node) Backup(ctx context.Context) (*Backup, error) {
	if err := n.leading(); err != nil {
		return nil, err
	}
	if err := n.Barrier(ctx); err != nil {
		return nil, fmt.Errorf("backup: read barrier: %w", err)
	}
	f := n.raft.Snapshot()
	if err := n.await(ctx, f); err != nil {
		if errors.Is(err, raft.ErrNothingNewToSnapshot) {
			return nil, &conflictError{"nothing to back up: the cluster has applied no entry yet"}
		}
		return nil, unavailable("backup: snapshot", raftErr(err))
	}
	meta, rc, err := f.Open() // once only: raft may remove the snapshot once two newer ones exist
	if err != nil {
		return nil, unavailable("backup: open the snapshot", err)
	}
	defer rc.Close()
	// The header needs the payload's length and checksum before the payload:
	// copy it to a file of its own while hashing, then send that. The file is
	// unlinked at once, so nothing is left behind whatever happens.
	spool, err := os.CreateTemp(n.cfg.DataDir, "backup-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("backup: spool file: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = spool.Close() // failing anyway
		}
	}()
	if err := os.Remove(spool.Name()); err != nil {
		return nil, fmt.Errorf("backup: spool file: %w", err)
	}
	sum := sha256.New()
	size, err := io.Copy(io.MultiWriter(spool, sum), rc)
	if err != nil {
		return nil, fmt.Errorf("backup: copy the snapshot: %w", err)
	}
	if size != meta.Size || size == 0 {
		return nil, fmt.Errorf("backup: snapshot %s has %d bytes, its meta says %d", meta.ID, size, meta.Size)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	h := BackupHeader{
		Version: BackupVersion, Index: meta.Index, Term: meta.Term,
		FSMVersion: fsm.SnapshotVersion, // raft.Snapshot just wrote it with this build
		Length:     uint64(size),
	}
	copy(h.SHA256[:], sum.Sum(nil))
	hb, _ := h.MarshalBinary() // never fails
	n.log.Info("backup taken", "index", meta.Index, "term", meta.Term, "bytes", size)
	ok = true
	return &Backup{Header: h, r: io.MultiReader(bytes.NewReader(hb), bufio.NewReaderSize(spool, 64<<10)), payload: spool}, nil
}

// ClusterBackup is Backup for the HTTP layer.
func (n *Node) ClusterBackup(ctx context.Context) (transport.Backup, error) {
	b, err := n.Backup(ctx)
	if err != nil {
		return transport.Backup{}, err
	}
	return transport.Backup{
		Name: "chorus-" + strconv.FormatUint(b.Header.Index, 10) + ".backup",
		Size: b.Size(), Body: b,
	}, nil
}

// RestoreReport is what POST /cluster/restore answers.
type RestoreReport struct {
	// Index is the raft index at which this cluster installed the backup:
	// one past both its own last index and the backup's, so every write
	// after the restore gets a seq above every index this cluster or the
	// backup's had. A snapshot frame of a restored session carries that
	// session's own last seq, which a client of the old cluster may have seen
	// exceeded; such a client takes the snapshot (PROTOCOL.md §4.10).
	Index       uint64 `json:"index"`
	BackupIndex uint64 `json:"backupIndex"`
	BackupTerm  uint64 `json:"backupTerm"`
	Sessions    int    `json:"sessions"` // in the backup, now the cluster's
	Replaced    int    `json:"replaced"` // sessions the cluster held before (with force)
	Bytes       uint64 `json:"bytes"`    // payload
	// DroppedNodes are the node ids whose players from the backup were
	// retired through the log, or whose epoch was announced again.
	DroppedNodes []string `json:"droppedNodes"`
	// Warning, when set, says what did not go to plan after the backup was
	// installed; the restore itself stands.
	Warning string `json:"warning,omitempty"`
}

// Restore replaces the cluster's whole state with a backup read from body
// (the file chorus snapshot save writes). Only the leader restores.
//
// Nothing changes until the backup has been checked completely: the header,
// the payload's length and SHA-256, and a full decode of the payload. The
// payload is spooled to a temporary file in the data dir on the way. A
// cluster that holds sessions is refused with an error matching
// transport.ErrConflict unless force is set. raft.Restore then installs the
// payload as a snapshot at one past both this cluster's last index and the
// backup's, leaving a hole in the log, so the followers get it by
// InstallSnapshot; every node's subscribers are dropped with ErrResync
// (their sockets close with 1012 and their clients take a new snapshot).
//
// The backup's players belonged to sockets of the nodes it was taken on,
// which are not here: Restore retires every one of them through the log (a
// current member announces its current epoch again, which also puts its
// HTTP address back; any other node is reaped). Those entries also make the
// read barrier wait, on every node, for the restored state.
//
// While it counts the sessions and installs the backup, the leader takes no
// writes (they are retried and land after it). One restore runs at a time
// per node; ctx bounds the transfer and the barrier, raft bounds the rest
// (its restore ends when the entry after the snapshot commits, or with
// ErrLeadershipLost).
func (n *Node) Restore(ctx context.Context, body io.Reader, force bool) (RestoreReport, error) {
	if !n.restoreMu.TryLock() {
		return RestoreReport{}, &conflictError{"a restore is already running on this node"}
	}
	defer n.restoreMu.Unlock()
	if err := n.leading(); err != nil {
		return RestoreReport{}, err
	}
	// Refuse before reading what may be a large body.
	before, err := n.sessionCount(ctx)
	if err != nil {
		return RestoreReport{}, err
	}
	if before > 0 && !force {
		return RestoreReport{}, refuseNonEmpty(before)
	}

	h, err := ReadBackupHeader(body)
	if err != nil {
		return RestoreReport{}, err
	}
	spool, err := os.CreateTemp(n.cfg.DataDir, "restore-*.tmp")
	if err != nil {
		return RestoreReport{}, fmt.Errorf("restore: spool file: %w", err)
	}
	defer spool.Close() // read only by now, or failing anyway; raft keeps its own copy
	// Unlinked at once, so that not even a crash leaves it behind.
	if err := os.Remove(spool.Name()); err != nil {
		return RestoreReport{}, fmt.Errorf("restore: spool file: %w", err)
	}
	if err := CopyBackupPayload(spool, body, h); err != nil {
		return RestoreReport{}, err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return RestoreReport{}, fmt.Errorf("restore: %w", err)
	}
	st, err := fsm.ReadSnapshot(spool)
	if err != nil {
		return RestoreReport{}, badBackup("payload: %w", err)
	}
	if st.Index() > h.Index {
		// Raft would place the state at or below indexes it already
		// holds, and the next apply would find the log behind it.
		return RestoreReport{}, badBackup("the payload reflects index %d, past the header's %d", st.Index(), h.Index)
	}

	timeout := n.cfg.ApplyTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), time.Second)
	}
	// Check again, now that the backup is known to be good: the cluster may
	// have taken writes while it arrived. From here until raft.Restore the
	// leader takes no writes (they are retried, and land after the restore),
	// and the barrier waits for every write it took before, so the count is
	// final and nothing acknowledged is replaced unless force says so.
	n.applyGate.Lock()
	n.restoring = true
	n.applyGate.Unlock()
	reopen := func() {
		n.applyGate.Lock()
		n.restoring = false
		n.applyGate.Unlock()
	}
	defer reopen() // again after the explicit call below: harmless
	if err := n.await(ctx, n.raft.Barrier(timeout)); err != nil {
		return RestoreReport{}, unavailable("restore: barrier", raftErr(err))
	}
	n.fsm.view(func(st *fsm.State, _ uint64) { before = st.Len() })
	if before > 0 && !force {
		return RestoreReport{}, refuseNonEmpty(before)
	}
	members, current, err := n.incarnations()
	if err != nil {
		return RestoreReport{}, err
	}
	plan, dropped := presencePlan(st, members, current, n.cfg.ID)
	rep := RestoreReport{BackupIndex: h.Index, BackupTerm: h.Term, Sessions: st.Len(), Replaced: before, Bytes: h.Length, DroppedNodes: dropped}
	st = nil // the adapter decodes its own copy; this one may go

	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return RestoreReport{}, fmt.Errorf("restore: %w", err)
	}
	n.log.Warn("restoring a backup: the cluster's whole state is replaced", "backup_index", h.Index, "backup_term", h.Term,
		"sessions", rep.Sessions, "replaced_sessions", before, "bytes", h.Length)
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: h.Index, Term: h.Term, Size: int64(h.Length)}
	if err := n.raft.Restore(meta, spool, timeout); err != nil {
		// Raft may have installed the state and failed only to commit the
		// entry after it (leadership lost): say so.
		return RestoreReport{}, unavailable("restore interrupted; the cluster may or may not hold the backup now, so restore it again with force", raftErr(err))
	}
	rep.Index = n.lastSnapshotIndex()
	reopen()
	for _, c := range plan {
		if _, err := n.Submit(ctx, c); err != nil {
			// The backup is in; only its players linger. The leader's reaper
			// drops those of nodes that are not members by itself.
			n.log.Warn("backup restored, but retiring its players failed", "index", rep.Index, "node", c.Node, "error", err)
			rep.Warning = "restored, but retiring the backup's players failed (" + err.Error() + "); the leader drops those of nodes that are not members by itself, and a restart of a member drops its own"
			break
		}
	}
	n.log.Info("backup restored", "index", rep.Index, "backup_index", h.Index, "sessions", rep.Sessions, "dropped_nodes", dropped)
	return rep, nil
}

// ClusterRestore is Restore for the HTTP layer.
func (n *Node) ClusterRestore(ctx context.Context, body io.Reader, force bool) (any, error) {
	return n.Restore(ctx, body, force)
}

func refuseNonEmpty(sessions int) error {
	return &conflictError{fmt.Sprintf("the cluster holds %d sessions; a restore would replace them all (force it to)", sessions)}
}

// sessionCount is the number of sessions after the read barrier.
func (n *Node) sessionCount(ctx context.Context) (int, error) {
	var count int
	if err := n.Read(ctx, func(st *fsm.State, _ uint64) { count = st.Len() }); err != nil {
		return 0, fmt.Errorf("restore: read barrier: %w", err)
	}
	return count, nil
}

// lastSnapshotIndex is raft's newest snapshot index: right after a Restore,
// the one the restore burned.
func (n *Node) lastSnapshotIndex() uint64 {
	i, _ := strconv.ParseUint(n.raft.Stats()["last_snapshot_index"], 10, 64) // raft formats it from a uint64
	return i
}

// incarnation is a node's current epoch and announced HTTP address.
type incarnation struct {
	epoch uint64
	addr  string
}

// incarnations returns the members of the raft configuration and, for those
// whose current incarnation is known (announced and not reaped), its epoch.
func (n *Node) incarnations() ([]string, map[string]incarnation, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, nil, unavailable("restore: read the configuration", raftErr(err))
	}
	var members []string
	for _, s := range f.Configuration().Servers {
		members = append(members, string(s.ID))
	}
	cur := map[string]incarnation{}
	n.fsm.view(func(st *fsm.State, _ uint64) {
		for _, id := range members {
			if id == n.cfg.ID {
				cur[id] = incarnation{n.epoch.Load(), n.cfg.HTTPAddr}
				continue
			}
			if e, reaped := st.NodeEpoch(id); e > 0 && !reaped {
				cur[id] = incarnation{e, st.NodeHTTPAddr(id)}
			}
		}
	})
	return members, cur, nil
}

// presencePlan returns the commands that retire every player of the
// restored state, and the node ids they are about. A member whose current
// epoch is above the backup's epoch for its id announces it again (which
// drops the older players and records its HTTP address); any other node
// that owns players in the backup, or a member the backup knows at an epoch
// not below its current one, is reaped at the backup's epoch (a member so
// reaped announces a fresh epoch by itself, see checkReaped). When nothing
// needs doing, a stale announcement of this node's epoch is committed
// anyway: it changes nothing, but it is a command entry past the restored
// snapshot, which the read barrier then waits for on every node.
func presencePlan(restored *fsm.State, members []string, cur map[string]incarnation, self string) ([]fsm.Command, []string) {
	owners := map[string]bool{}
	for _, id := range restored.SessionIDs() {
		for _, p := range restored.Session(id).Players() {
			owners[p.Node] = true
		}
	}
	ids := slices.Clone(members)
	for id := range owners {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var plan []fsm.Command
	about := []string{}
	for _, id := range ids {
		epoch, reaped := restored.NodeEpoch(id)
		c, isMember := cur[id]
		switch {
		case isMember && c.epoch > epoch:
			plan = append(plan, fsm.Command{Kind: fsm.KindNodeEpoch, Node: id, Epoch: c.epoch, Addr: c.addr})
		case owners[id] || (slices.Contains(members, id) && epoch > 0 && !reaped):
			plan = append(plan, fsm.Command{Kind: fsm.KindReapNode, Node: id, Epoch: epoch})
		default:
			continue
		}
		about = append(about, id)
	}
	if len(plan) == 0 {
		c := cur[self]
		plan = append(plan, fsm.Command{Kind: fsm.KindNodeEpoch, Node: self, Epoch: c.epoch, Addr: c.addr})
	}
	return plan, about
}
