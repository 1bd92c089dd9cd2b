package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
)

// httpCall sends body (JSON, when not "") and returns the status and body.
func httpCall(tb testing.TB, method, url, body string) (int, []byte) {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		tb.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	return resp.StatusCode, b
}

func testState(tempo int) string {
	return `{"tracks":[{"id":"t1","name":"Kick","sampleId":"kick","steps":[true,false,false,false,true,false,false,false,true,false,false,false,true,false,false,false],"parameterLocks":[],"volume":0.8,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":16}],"tempo":` +
		strconv.Itoa(tempo) + `,"swing":0,"version":1}`
}

// sessionView is GET /api/sessions/{id} on base (a stale read when stale),
// without lastAccessedAt, which a read sets to its own time.
func sessionView(tb testing.TB, base, id string, stale bool) (string, error) {
	tb.Helper()
	url := base + "/api/sessions/" + id
	if stale {
		url += "?stale=1"
	}
	code, b := httpCall(tb, http.MethodGet, url, "")
	if code != http.StatusOK {
		return "", fmt.Errorf("GET %s: HTTP %d %s", url, code, b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		tb.Fatalf("GET %s: %v", url, err)
	}
	delete(m, "lastAccessedAt")
	out, _ := json.Marshal(m) // a decoded object always encodes
	return string(out), nil
}

// transient reports whether a command failed for a passing reason: no
// leader for a moment, or leadership lost mid-request (HTTP 503).
func transient(err error) bool {
	if err == nil {
		return false
	}
	for _, s := range []string{"HTTP 503", "knows no leader", "leadership keeps moving", "connection refused"} {
		if strings.Contains(err.Error(), s) {
			return true
		}
	}
	return false
}

// runRetried runs the command line, again while it fails for a passing
// reason, for up to a minute: the machine is small and shared, and a leader
// may lose its quorum under load. An interrupted restore is repeated with
// --force, as its message says. retried reports whether it had to.
func runRetried(t *testing.T, args ...string) (out string, code int, err error, retried bool) {
	t.Helper()
	_ = testcluster.Poll(time.Minute, func() error { // the last attempt's outcome is what counts
		if out, code, err = runOps(t, args...); !transient(err) {
			return nil
		}
		t.Logf("retrying %q after: %v", args, err)
		retried = true
		if strings.Contains(err.Error(), "restore interrupted") && !slices.Contains(args, "--force") {
			args = append([]string{args[0], args[1], "--force"}, args[2:]...)
		}
		return err
	})
	return out, code, err, retried
}

// sameStateEverywhere waits until every member of c has applied the same
// index and checks that they hold byte-identical state (I4).
func sameStateEverywhere(tb testing.TB, c *testcluster.Cluster) {
	tb.Helper()
	testcluster.Eventually(tb, 30*time.Second, func() error {
		var first []byte
		var firstIdx uint64
		for i, m := range c.Members {
			var b bytes.Buffer
			idx, err := m.Node().WriteState(&b)
			if err != nil {
				tb.Fatal(err)
			}
			if i == 0 {
				first, firstIdx = b.Bytes(), idx
				continue
			}
			if idx != firstIdx {
				return fmt.Errorf("%s at index %d, %s at %d", c.Members[0].ID, firstIdx, m.ID, idx)
			}
			if !bytes.Equal(b.Bytes(), first) {
				tb.Fatalf("I4: %s and %s both at index %d hold different states", c.Members[0].ID, m.ID, idx)
			}
		}
		return nil
	})
}

// TestSnapshotSaveRestore: sessions created and edited over HTTP on one
// three-node cluster are saved with chorus snapshot save (through a
// follower) and restored with chorus snapshot restore into a brand-new
// three-node cluster whose log is already past the backup's. Every session
// reads back identical on every node, the backup's players are gone, the
// members' HTTP addresses are the new cluster's, new writes get seqs above
// every index either cluster had, and the restored cluster keeps all of it
// across a restart of all its nodes. On the way: save will not overwrite a
// file without --force, a follower redirects a backup to the leader, a
// damaged file and a wrong token change nothing, a second restore needs
// --force and closes the sockets with 1012.
func TestSnapshotSaveRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two clusters")
	}
	const token = "snap-test-token"
	src := testcluster.New(t, testcluster.Options{FirstIP: 62, HTTP: true, AdminToken: token})
	tgt := testcluster.New(t, testcluster.Options{FirstIP: 65, HTTP: true, AdminToken: token})
	ctx := testcluster.Context(t, 3*time.Minute)
	srcLeader := src.WaitLeader(10 * time.Second)

	// Sessions created, replaced and renamed through every node.
	var ids []string
	for i := range 4 {
		code, b := httpCall(t, http.MethodPost, src.Members[i%3].URL()+"/api/sessions", `{"state":`+testState(100+i)+`}`)
		var created struct{ ID string }
		if code != http.StatusCreated || json.Unmarshal(b, &created) != nil {
			t.Fatalf("create: HTTP %d %s", code, b)
		}
		ids = append(ids, created.ID)
		if code, b := httpCall(t, http.MethodPut, src.Members[(i+1)%3].URL()+"/api/sessions/"+created.ID, `{"state":`+testState(110+i)+`}`); code != http.StatusOK {
			t.Fatalf("PUT: HTTP %d %s", code, b)
		}
		if code, b := httpCall(t, http.MethodPatch, src.Members[(i+2)%3].URL()+"/api/sessions/"+created.ID, `{"name":"session `+strconv.Itoa(i)+`"}`); code != http.StatusOK {
			t.Fatalf("PATCH: HTTP %d %s", code, b)
		}
	}
	// A player of the source's n1, as a socket there would have.
	n1 := src.Members[0].Node()
	if res, err := n1.Submit(ctx, fsm.Command{Kind: fsm.KindPlayerJoin, Session: ids[0], Player: "10000000-0000-4000-8000-000000000001", Node: n1.ID(), Epoch: n1.Epoch()}); err != nil || res.Status != fsm.StatusOK {
		t.Fatalf("join: %v %v", res.Status, err)
	}
	want := map[string]string{}
	for _, id := range ids {
		v, err := sessionView(t, src.Members[srcLeader].URL(), id, false)
		if err != nil {
			t.Fatal(err)
		}
		want[id] = v
	}

	// The target has taken writes before: sessions created and deleted, so
	// its log is past the source's and it holds no session.
	tn := tgt.Members[tgt.WaitLeader(10*time.Second)].Node()
	for i := range 30 {
		id := fmt.Sprintf("20000000-0000-4000-8000-%012d", i)
		for _, c := range []fsm.Command{{Kind: fsm.KindCreate, Session: id, Target: id, State: []byte(testState(90))}, {Kind: fsm.KindDelete, Session: id}} {
			if res, err := tn.Submit(ctx, c); err != nil || res.Status != fsm.StatusOK {
				t.Fatalf("%s on the target: %v %v", c.Kind, res.Status, err)
			}
		}
	}
	sameStateEverywhere(t, tgt)
	var tgtLast uint64
	for _, m := range tgt.Members {
		tgtLast = max(tgtLast, m.Node().Status().LastLogIndex)
	}

	// Save through a follower.
	srcFollower := src.Members[(srcLeader+1)%3].HTTPAddr
	file := filepath.Join(t.TempDir(), "chorus.backup")
	out, code, err, _ := runRetried(t, "snapshot", "save", "--addr", srcFollower, "--admin-token", token, file)
	if code != 0 || !strings.Contains(out, "saved "+file) || !strings.Contains(out, "4 sessions") {
		t.Fatalf("save: exit %d, %v\n%s", code, err, out)
	}
	saved, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	h, err := node.ReadBackupHeader(bytes.NewReader(saved))
	if err != nil || h.Index > tgtLast {
		t.Fatalf("saved header %+v, %v; the target's log is at %d and should be past it", h, err, tgtLast)
	}
	if _, err := os.Stat(file + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("save left %s.tmp: %v", file, err)
	}
	// Not over an existing file, unless --force.
	if _, code, err := runOps(t, "snapshot", "save", "--addr", srcFollower, "--admin-token", token, file); code != exitCode || !strings.Contains(err.Error(), "exists; --force overwrites it") {
		t.Fatalf("save over an existing file: exit %d, %v", code, err)
	}
	if b, _ := os.ReadFile(file); !bytes.Equal(b, saved) {
		t.Fatal("a refused save changed the file")
	}
	if out, code, err, _ := runRetried(t, "snapshot", "save", "--force", "--addr", srcFollower, "--admin-token", token, file); code != 0 || !strings.Contains(out, "4 sessions") {
		t.Fatalf("save --force: exit %d, %v\n%s", code, err, out)
	}
	if out, code, err := runOps(t, "snapshot", "inspect", file); code != 0 || !strings.Contains(out, "4 sessions") {
		t.Fatalf("inspect: exit %d, %v\n%s", code, err, out)
	}
	// A follower sends a backup request to the leader.
	code, body := httpCall(t, http.MethodGet, "http://"+srcFollower+"/cluster/backup", "")
	if code != http.StatusUnauthorized {
		t.Fatalf("backup without a token: HTTP %d %s", code, body)
	}
	// Asked again if leadership moves meanwhile (a loaded machine can miss
	// a heartbeat): the redirect must name the leader of the moment.
	testcluster.Eventually(t, 20*time.Second, func() error {
		leader, err := src.LeaderIndex()
		if err != nil {
			return err
		}
		follower := src.Members[(leader+1)%3]
		req, _ := http.NewRequest(http.MethodGet, follower.URL()+"/cluster/backup", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusTemporaryRedirect || loc != src.Members[leader].URL()+"/cluster/backup" {
			return fmt.Errorf("backup on follower %s: HTTP %d to %q, want 307 to the leader %s", follower.ID, resp.StatusCode, loc, src.Members[leader].ID)
		}
		return nil
	})

	// A damaged file and a wrong token change nothing.
	var before bytes.Buffer
	if _, err := tn.WriteState(&before); err != nil {
		t.Fatal(err)
	}
	damaged := filepath.Join(t.TempDir(), "damaged.backup")
	b := slices.Clone(saved)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(damaged, b, 0o600); err != nil {
		t.Fatal(err)
	}
	tgtFollower := tgt.Members[(tgt.WaitLeader(10*time.Second)+1)%3].HTTPAddr
	if _, code, err := runOps(t, "snapshot", "restore", "--addr", tgtFollower, "--admin-token", token, damaged); code != exitCode || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("restore of a damaged file: exit %d, %v", code, err)
	}
	if _, code, err := runOps(t, "snapshot", "restore", "--addr", tgtFollower, "--admin-token", "wrong", file); code != exitCode || !strings.Contains(err.Error(), "HTTP 403") {
		t.Fatalf("restore with a wrong token: exit %d, %v", code, err)
	}
	if _, code, _ := runOps(t, "snapshot", "restore", "--addr", tgtFollower, file); code != usageExitCode {
		t.Fatalf("restore without a token: exit %d, want %d", code, usageExitCode)
	}
	var after bytes.Buffer
	if _, err := tn.WriteState(&after); err != nil || !bytes.Equal(after.Bytes(), before.Bytes()) {
		t.Fatalf("refused restores changed the target (%v)", err)
	}

	// The restore, through a follower.
	out, code, err, _ = runRetried(t, "snapshot", "restore", "--addr", tgtFollower, "--admin-token", token, file)
	if code != 0 || !strings.Contains(out, "4 sessions") {
		t.Fatalf("restore: exit %d, %v\n%s", code, err, out)
	}
	m := regexp.MustCompile(`continues after index (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("restore printed no index:\n%s", out)
	}
	restoredAt, _ := strconv.ParseUint(m[1], 10, 64)
	if restoredAt <= tgtLast {
		t.Fatalf("restored at index %d, not past the target's last index %d", restoredAt, tgtLast)
	}
	// Linearizable reads on every node see the restored state: with strict,
	// at once (only a failed read is retried), because the restore returned
	// after entries past it committed and the read barrier waits for them.
	checkSessions := func(want map[string]string, strict bool) {
		t.Helper()
		testcluster.Eventually(t, 30*time.Second, func() error {
			for _, mb := range tgt.Members {
				for id, w := range want {
					got, err := sessionView(t, mb.URL(), id, false)
					if err != nil {
						return err
					}
					if got != w && strict {
						t.Fatalf("%s on %s right after the restore:\n got %s\nwant %s", id, mb.ID, got, w)
					} else if got != w {
						return fmt.Errorf("%s on %s:\n got %s\nwant %s", id, mb.ID, got, w)
					}
				}
				var n int
				mb.Node().View(func(st *fsm.State, _ uint64) { n = st.Len() })
				if n != len(want) {
					t.Fatalf("%s holds %d sessions after a linearizable read, want %d", mb.ID, n, len(want))
				}
			}
			return nil
		})
	}
	checkSessions(want, true)
	sameStateEverywhere(t, tgt)
	// No player of the source is left, and the status names the target's own
	// HTTP addresses (the backup knew the same ids at the source's).
	testcluster.Eventually(t, 30*time.Second, func() error {
		for _, mb := range tgt.Members {
			n := mb.Node()
			var players int
			n.View(func(st *fsm.State, _ uint64) {
				for _, id := range st.SessionIDs() {
					players += len(st.Session(id).Players())
				}
			})
			if players != 0 {
				return fmt.Errorf("%s still lists %d players of the backup", mb.ID, players)
			}
			for _, ms := range n.Status().Members {
				if ms.HTTPAddr != tgt.Members[slices.IndexFunc(tgt.Members, func(x *testcluster.Member) bool { return x.ID == ms.ID })].HTTPAddr {
					return fmt.Errorf("%s lists %s at %s", mb.ID, ms.ID, ms.HTTPAddr)
				}
			}
		}
		return nil
	})

	// New writes come after every index either cluster had.
	backedUp := maps.Clone(want)
	code, body = httpCall(t, http.MethodPut, tgt.Members[0].URL()+"/api/sessions/"+ids[0], `{"state":`+testState(77)+`}`)
	if code != http.StatusOK {
		t.Fatalf("PUT after the restore: HTTP %d %s", code, body)
	}
	var seq uint64
	tgt.Members[0].Node().View(func(st *fsm.State, _ uint64) { seq = st.Session(ids[0]).LastSeq })
	if seq <= max(restoredAt, tgtLast, h.Index) {
		t.Fatalf("a write after the restore is at index %d, not above %d", seq, max(restoredAt, tgtLast, h.Index))
	}
	if want[ids[0]], err = sessionView(t, tgt.Members[1].URL(), ids[0], false); err != nil {
		t.Fatal(err)
	}

	// A restart of every node keeps it all.
	for i := range tgt.Members {
		tgt.Kill(i)
	}
	for i := range tgt.Members {
		tgt.Start(i)
	}
	tgt.WaitLeader(30 * time.Second)
	checkSessions(want, false)
	sameStateEverywhere(t, tgt)

	// A second restore needs --force now; it closes the sockets with 1012.
	if _, code, err, _ := runRetried(t, "snapshot", "restore", "--addr", tgtFollower, "--admin-token", token, file); code != exitCode || !strings.Contains(err.Error(), "HTTP 409") || !strings.Contains(err.Error(), "holds 4 sessions") {
		t.Fatalf("restore into a cluster with sessions: exit %d, %v", code, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(wctx, "ws://"+tgt.Members[2].HTTPAddr+"/api/sessions/"+ids[1]+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	if _, first, err := conn.Read(wctx); err != nil || !bytes.Contains(first, []byte(`"type":"snapshot"`)) {
		t.Fatalf("first frame %.100s, %v", first, err)
	}
	closed := make(chan error, 1)
	go func() {
		for {
			if _, _, err := conn.Read(wctx); err != nil {
				closed <- err
				return
			}
		}
	}()
	out, code, err, retried := runRetried(t, "snapshot", "restore", "--force", "--addr", tgtFollower, "--admin-token", token, file)
	if code != 0 || !strings.Contains(out, "4 sessions replaced") {
		t.Fatalf("restore --force: exit %d, %v\n%s", code, err, out)
	}
	// 1012 (service restart): the client reconnects and takes a snapshot.
	// A leader lost under load may have closed it first with 1013 (no
	// leader), which has the client do the same.
	if err := <-closed; websocket.CloseStatus(err) != 1012 && (!retried || websocket.CloseStatus(err) != 1013) {
		t.Fatalf("a socket on the target ended with %v, want close 1012", err)
	}
	checkSessions(backedUp, !retried) // ids[0] is back to the backup's version
	sameStateEverywhere(t, tgt)
}

func TestSnapshotCommandLines(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		wantIn string
	}{
		{[]string{"snapshot"}, usageExitCode, "want save, restore or inspect"},
		{[]string{"snapshot", "take"}, usageExitCode, "want save, restore or inspect"},
		{[]string{"snapshot", "save", "--admin-token", "x"}, usageExitCode, "want exactly one FILE"},
		{[]string{"snapshot", "save", "--admin-token", "x", "a", "b"}, usageExitCode, "want exactly one FILE"},
		{[]string{"snapshot", "restore", "f.backup"}, usageExitCode, "admin token"},
		{[]string{"snapshot", "inspect", "--force", "f.backup"}, usageExitCode, "force"},
		{[]string{"snapshot", "inspect", filepath.Join(t.TempDir(), "missing.backup")}, exitCode, "no such file"},
		{[]string{"snapshot", "restore", "--admin-token", "x", filepath.Join(t.TempDir(), "missing.backup")}, exitCode, "no such file"},
	}
	for _, tt := range tests {
		_, code, err := runOps(t, tt.args...)
		if code != tt.code || err == nil || !strings.Contains(err.Error(), tt.wantIn) {
			t.Errorf("%q: exit %d, %v; want %d with %q", tt.args, code, err, tt.code, tt.wantIn)
		}
	}
	// A file that is not a backup: inspect says why.
	junk := filepath.Join(t.TempDir(), "junk.backup")
	if err := os.WriteFile(junk, []byte("hello, world"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, code, err := runOps(t, "snapshot", "inspect", junk); code != exitCode || !strings.Contains(err.Error(), "not a chorus backup") {
		t.Errorf("inspect of a junk file: exit %d, %v", code, err)
	}
	out, code, err := runOps(t, "snapshot", "-h")
	if code != 0 || !strings.Contains(out, "chorus snapshot save") {
		t.Errorf("snapshot -h: exit %d, %v\n%s", code, err, out)
	}
}

// TestSnapshotRestoreRetries: against a node that answers 503 a few times,
// restore tries again; a restore interrupted after it may have taken effect
// is tried again only with --force, and otherwise says to use it.
func TestSnapshotRestoreRetries(t *testing.T) {
	// A valid backup file of an empty state.
	var payload bytes.Buffer
	if err := fsm.NewState().WriteSnapshot(&payload); err != nil {
		t.Fatal(err)
	}
	h := node.BackupHeader{Version: node.BackupVersion, Index: 7, Term: 2, FSMVersion: fsm.SnapshotVersion, Length: uint64(payload.Len()), SHA256: sha256.Sum256(payload.Bytes())}
	hb, _ := h.MarshalBinary()
	file := filepath.Join(t.TempDir(), "empty.backup")
	if err := os.WriteFile(file, append(hb, payload.Bytes()...), 0o600); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex // guards answers, bodies
	var answers []string
	var bodies [][]byte
	ln, err := net.Listen("tcp", "127.0.0.70:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cluster/status", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(node.Status{ID: "n1", State: "leader", Leader: node.Leader{ID: "n1", HTTPAddr: addr}})
	})
	mux.HandleFunc("POST /cluster/restore", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, b)
		answer := answers[0]
		answers = answers[1:]
		mu.Unlock()
		if answer == "ok" {
			_ = json.NewEncoder(w).Encode(node.RestoreReport{Index: 9, BackupIndex: 7, BackupTerm: 2})
			return
		}
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": answer})
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = ln
	srv.Start()
	defer srv.Close()

	for _, tt := range []struct {
		name    string
		force   bool
		answers []string
		calls   int
		wantOK  bool
		wantErr string
	}{
		{"no leader, then done", false, []string{"no leader", "no leader", "ok"}, 3, true, ""},
		{"interrupted", false, []string{"restore interrupted; the cluster may or may not hold the backup now, so restore it again with force", "ok"}, 1, false, "restore it again with force"},
		{"interrupted, forced", true, []string{"restore interrupted; ...", "ok"}, 2, true, ""},
		{"no leader for good", false, []string{"no leader", "no leader", "no leader", "no leader", "no leader"}, 5, false, "HTTP 503: no leader"},
	} {
		mu.Lock()
		answers, bodies = tt.answers, nil
		mu.Unlock()
		args := []string{"snapshot", "restore", "--addr", addr, "--admin-token", "x", file}
		if tt.force {
			args = append(args[:2], append([]string{"--force"}, args[2:]...)...)
		}
		out, code, err := runOps(t, args...)
		mu.Lock()
		calls, got := len(bodies), bodies
		mu.Unlock()
		if calls != tt.calls || (code == 0) != tt.wantOK || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: exit %d, %v, %d calls; want ok %v, %d calls\n%s", tt.name, code, err, calls, tt.wantOK, tt.calls, out)
		}
		for _, b := range got {
			if !bytes.Equal(b, append(hb, payload.Bytes()...)) {
				t.Errorf("%s: a try sent %d bytes, not the whole file", tt.name, len(b))
			}
		}
	}
}
