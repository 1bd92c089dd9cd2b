package node_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
	"chorus/transport"
)

// newAdminServerOn is newAdminServer listening on ip (a loopback address).
func newAdminServerOn(tb testing.TB, n *node.Node, ip string) *adminClient {
	tb.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		tb.Fatal(err)
	}
	mux := http.NewServeMux()
	transport.AdminHandler(mux, transport.AdminConfig{Cluster: n, AdminToken: adminToken, Timeout: 10 * time.Second})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = ln
	srv.Start()
	client := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	tb.Cleanup(func() {
		srv.Close()
		client.CloseIdleConnections()
	})
	return &adminClient{tb: tb, url: srv.URL, client: client}
}

// withHeader returns backup with its header replaced by h's encoding.
func withHeader(backup []byte, h node.BackupHeader) []byte {
	hb, _ := h.MarshalBinary()
	return append(hb, backup[node.BackupHeaderSize:]...)
}

// TestBackupRestoreChecks takes a backup from a one-node cluster and
// restores it into another: every kind of damage is refused with 400 and
// the reason, a target that holds a session is refused with 409, and
// neither changes a byte of the target's state; wrong or missing tokens get
// 403 and 401. The forced restore installs the backup's sessions, drops the
// target's, retires the backup's players, and the log goes on above both
// clusters' indexes.
func TestBackupRestoreChecks(t *testing.T) {
	// The target starts first, so the source's n1 has a later epoch than the
	// target's n1: the restore must reap it, and the target's n1 then
	// announces a newer epoch by itself.
	tgt := testcluster.New(t, testcluster.Options{Nodes: 1, FirstIP: 63})
	src := testcluster.New(t, testcluster.Options{Nodes: 1, FirstIP: 62})
	settle(t, tgt, waitLong)
	settle(t, src, waitLong)
	ctx := testcluster.Context(t, 2*time.Minute)
	sn, tn := src.Members[0].Node(), tgt.Members[0].Node()
	if sn.Epoch() <= tn.Epoch() {
		t.Fatalf("source epoch %d not after the target's %d", sn.Epoch(), tn.Epoch())
	}
	for i := range 3 {
		createSession(t, ctx, sn, sessionID(i))
		joinPlayer(t, ctx, sn, sessionID(i), playerID(i))
		submit(t, ctx, sn, toggleStep(sessionID(i), playerID(i), i), fsm.StatusOK)
	}
	last := submit(t, ctx, sn, setTempo(sessionID(0), playerID(0), 99), fsm.StatusOK)

	sa := newAdminServerOn(t, sn, "127.0.0.62")
	ta := newAdminServerOn(t, tn, "127.0.0.63")
	sa.want("GET", "/cluster/backup", "", "", http.StatusUnauthorized)
	sa.want("GET", "/cluster/backup", "wrong-token", "", http.StatusForbidden)
	backup := sa.want("GET", "/cluster/backup", adminToken, "", http.StatusOK)
	h, err := node.ReadBackupHeader(bytes.NewReader(backup))
	if err != nil {
		t.Fatalf("the backup's header: %v", err)
	}
	if h.Index < last.Index || h.Term == 0 || h.FSMVersion != fsm.SnapshotVersion || h.Length != uint64(len(backup)-node.BackupHeaderSize) ||
		h.SHA256 != sha256.Sum256(backup[node.BackupHeaderSize:]) {
		t.Fatalf("backup header %+v for %d bytes, after a write at index %d", h, len(backup), last.Index)
	}
	srcState, err := fsm.ReadSnapshot(bytes.NewReader(backup[node.BackupHeaderSize:]))
	if err != nil || srcState.Len() != 3 || srcState.Index() < last.Index {
		t.Fatalf("the backup's payload: %v; %d sessions at index %d", err, srcState.Len(), srcState.Index())
	}

	flip := func(i int) []byte {
		b := slices.Clone(backup)
		b[i] ^= 0x40
		return b
	}
	future, fsmFuture, behind := h, h, h
	future.Version = node.BackupVersion + 1
	fsmFuture.FSMVersion = 99
	behind.Index = srcState.Index() - 1
	garbage := bytes.Repeat([]byte("not a snapshot "), 100)
	garbageHeader := h
	garbageHeader.Length, garbageHeader.SHA256 = uint64(len(garbage)), sha256.Sum256(garbage)
	futureBytes := slices.Clone(backup)
	binary.BigEndian.PutUint32(futureBytes[8:], node.BackupVersion+1)
	bad := []struct {
		name string
		body []byte
		want string
	}{
		{"bad checksum", flip(len(backup) - 1), "payload checksum mismatch"},
		{"truncated", backup[:len(backup)-10], "truncated payload"},
		{"truncated header", backup[:30], "truncated header: 30 of 76 bytes"},
		{"empty", nil, "truncated header: 0 of 76 bytes"},
		{"wrong magic", flip(0), "not a chorus backup (wrong magic)"},
		{"future version", futureBytes, "format version 2; this build reads versions 1 to 1"},
		{"future version, consistent header", withHeader(backup, future), "format version 2"},
		{"future FSM version", withHeader(backup, fsmFuture), "FSM snapshot version 99"},
		{"damaged header", flip(15), "damaged header"},
		{"trailing data", append(slices.Clone(backup), 'x'), "data after the payload"},
		{"payload not a snapshot", withHeader(append(make([]byte, node.BackupHeaderSize), garbage...), garbageHeader), "payload: corrupt snapshot"},
		{"index behind the payload", withHeader(backup, behind), "past the header's"},
	}
	_, before := writeState(t, tn)
	for _, tt := range bad {
		code, body := ta.do("POST", "/cluster/restore", adminToken, string(tt.body))
		var e struct{ Error string }
		_ = json.Unmarshal(body, &e) // checked through e below
		if code != http.StatusBadRequest || !strings.Contains(e.Error, tt.want) {
			t.Errorf("%s: HTTP %d %s, want 400 with %q", tt.name, code, body, tt.want)
		}
		if _, after := writeState(t, tn); !bytes.Equal(after, before) {
			t.Fatalf("%s: the refused restore changed the target's state", tt.name)
		}
	}
	ta.want("POST", "/cluster/restore", "", string(backup), http.StatusUnauthorized)
	ta.want("POST", "/cluster/restore", "wrong-token", string(backup), http.StatusForbidden)
	if _, after := writeState(t, tn); !bytes.Equal(after, before) {
		t.Fatal("an unauthorised restore changed the target's state")
	}

	// A target with a session: 409 unless forced, and nothing changes.
	createSession(t, ctx, tn, sessionID(100))
	_, before = writeState(t, tn)
	body := ta.want("POST", "/cluster/restore", adminToken, string(backup), http.StatusConflict)
	if !strings.Contains(string(body), "holds 1 sessions") {
		t.Errorf("409 says %s", body)
	}
	if _, after := writeState(t, tn); !bytes.Equal(after, before) {
		t.Fatal("the refused restore changed the target's state")
	}
	lastBefore := tn.Status().LastLogIndex

	var rep node.RestoreReport
	if err := json.Unmarshal(ta.want("POST", "/cluster/restore?force=1", adminToken, string(backup), http.StatusOK), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Sessions != 3 || rep.Replaced != 1 || rep.BackupIndex != h.Index || rep.BackupTerm != h.Term || rep.Bytes != h.Length ||
		rep.Index <= max(lastBefore, h.Index) || !slices.Equal(rep.DroppedNodes, []string{"n1"}) {
		t.Fatalf("restore report %+v; backup %+v, the target's last index was %d", rep, h, lastBefore)
	}
	tn.View(func(st *fsm.State, _ uint64) {
		if ids := st.SessionIDs(); !slices.Equal(ids, srcState.SessionIDs()) {
			t.Fatalf("sessions after the restore %v, want the backup's %v", ids, srcState.SessionIDs())
		}
		for _, id := range st.SessionIDs() {
			s := st.Session(id)
			if s.Hash() != srcState.Session(id).Hash() || s.LastSeq != srcState.Session(id).LastSeq {
				t.Errorf("session %s differs from the backup's", id)
			}
			if len(s.Players()) != 0 {
				t.Errorf("session %s keeps the backup's players %+v", id, s.Players())
			}
		}
	})
	// The backup's n1 was reaped; the target's n1 moves past it and takes
	// joins again.
	testcluster.Eventually(t, waitMid, func() error {
		var epoch uint64
		var reaped bool
		tn.View(func(st *fsm.State, _ uint64) { epoch, reaped = st.NodeEpoch("n1") })
		if reaped || epoch != tn.Epoch() || epoch <= sn.Epoch() {
			return fmt.Errorf("n1 at epoch %d (reaped %v), the node at %d, the source's at %d", epoch, reaped, tn.Epoch(), sn.Epoch())
		}
		return nil
	})
	joinPlayer(t, ctx, tn, sessionID(0), playerID(10))
	res := submit(t, ctx, tn, setTempo(sessionID(0), playerID(10), 101), fsm.StatusOK)
	if res.Index <= rep.Index {
		t.Fatalf("a write after the restore got index %d, not above the restore's %d", res.Index, rep.Index)
	}
	readSession(t, ctx, tn, sessionID(0), func(s *fsm.Session) {
		if s.State.Tempo != 101 || s.LastSeq != res.Index {
			t.Fatalf("after the restore: tempo %v, last seq %d; want 101 at %d", s.State.Tempo, s.LastSeq, res.Index)
		}
	})

	// The restored node keeps that state across a restart.
	hashes := func() map[string]string {
		out := map[string]string{}
		tn.View(func(st *fsm.State, _ uint64) {
			for _, id := range st.SessionIDs() {
				out[id] = st.Session(id).Hash()
			}
		})
		return out
	}
	want := hashes()
	tgt.Restart(0)
	tn = tgt.Members[0].Node()
	testcluster.Eventually(t, waitLong, func() error {
		if !tn.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	if got := hashes(); !maps.Equal(got, want) {
		t.Fatalf("after a restart the sessions' hashes are %v, want %v", got, want)
	}
}
