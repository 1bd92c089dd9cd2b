package node_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"chorus/testcluster"
)

// Helpers for the WebSocket protocol tests (ws_protocol_test.go): a real
// cluster serving HTTP, and clients that record every frame they receive.
// Names carry a wsp prefix: other test files share the package.

// wspFirstIP is this file's block of loopback addresses (127.0.0.101-103).
// The tests run one after another, so they share it.
const wspFirstIP = 101

// wspWait bounds the wait for one expected frame or event. Generous: the
// machine is small and -race slows everything down.
const wspWait = 15 * time.Second

// wspMutating are the 15 broadcasts that carry seq (PROTOCOL.md §3.3),
// written out here rather than taken from fsm so that the tests check fsm.
var wspMutating = map[string]bool{
	"step_toggled": true, "tempo_changed": true, "swing_changed": true, "track_muted": true,
	"track_soloed": true, "parameter_lock_set": true, "track_added": true, "track_deleted": true,
	"track_cleared": true, "track_sample_set": true, "track_volume_set": true,
	"track_transpose_set": true, "track_step_count_set": true, "effects_changed": true,
	"fm_params_changed": true,
}

// wspEnv is a test cluster with HTTP and a client for its API.
type wspEnv struct {
	tb testing.TB
	c  *testcluster.Cluster
	hc *http.Client
}

// newWSPEnv starts a cluster serving HTTP and waits until it is idle, every
// node having announced its epoch and HTTP address.
func newWSPEnv(tb testing.TB, opts testcluster.Options) *wspEnv {
	tb.Helper()
	opts.HTTP = true
	if opts.FirstIP == 0 {
		opts.FirstIP = wspFirstIP
	}
	c := testcluster.New(tb, opts)
	e := &wspEnv{tb: tb, c: c, hc: &http.Client{Transport: &http.Transport{}}}
	tb.Cleanup(e.hc.CloseIdleConnections)
	settle(tb, c, waitLong)
	return e
}

// do sends an HTTP request to member node and returns the status, headers and body.
func (e *wspEnv) do(node int, method, path, body string) (int, http.Header, []byte) {
	e.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wspWait)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.c.Members[node].URL()+path, rd)
	if err != nil {
		e.tb.Fatalf("%s %s: %v", method, path, err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		e.tb.Fatalf("%s %s on %s: %v", method, path, e.c.Members[node].ID, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.tb.Fatalf("%s %s on %s: read body: %v", method, path, e.c.Members[node].ID, err)
	}
	return resp.StatusCode, resp.Header, b
}

// create creates a session with state through member node and returns its id.
func (e *wspEnv) create(node int, state string) string {
	e.tb.Helper()
	status, _, body := e.do(node, http.MethodPost, "/api/sessions", `{"state":`+state+`}`)
	var r struct{ ID string }
	if status != http.StatusCreated || json.Unmarshal(body, &r) != nil || r.ID == "" {
		e.tb.Fatalf("create session: %d %s", status, body)
	}
	return r.ID
}

// publish publishes session id through member node and returns the new id.
func (e *wspEnv) publish(node int, id string) string {
	e.tb.Helper()
	status, _, body := e.do(node, http.MethodPost, "/api/sessions/"+id+"/publish", "")
	var r struct {
		ID        string
		Immutable bool
	}
	if status != http.StatusCreated || json.Unmarshal(body, &r) != nil || r.ID == "" || r.ID == id || !r.Immutable {
		e.tb.Fatalf("publish %s: %d %s", id, status, body)
	}
	return r.ID
}

// wsURL is the WebSocket URL of session id on member node; query starts with "?" or is empty.
func (e *wspEnv) wsURL(node int, id, query string) string {
	return "ws://" + e.c.Members[node].HTTPAddr + "/api/sessions/" + id + "/ws" + query
}

var wspClientN atomic.Int64

// tryDial opens a socket to session id on member node. On success it returns
// a client that is reading (unless noRead); otherwise the handshake response
// (its body holds the start of the response body) and the error.
func (e *wspEnv) tryDial(node int, id, query string, hdr http.Header, noRead bool) (*wspClient, *http.Response, error) {
	e.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wspWait)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, e.wsURL(node, id, query), &websocket.DialOptions{HTTPClient: e.hc, HTTPHeader: hdr})
	if err != nil {
		return nil, resp, err
	}
	conn.SetReadLimit(-1)
	cl := &wspClient{
		tb:   e.tb,
		name: fmt.Sprintf("client%d@%s", wspClientN.Add(1), e.c.Members[node].ID),
		node: node, conn: conn,
		wake: make(chan struct{}), readerDone: make(chan struct{}),
	}
	e.tb.Cleanup(cl.cleanup)
	if !noRead {
		cl.startReading()
	}
	return cl, resp, nil
}

// dial opens a socket and fails the test unless the upgrade succeeds.
func (e *wspEnv) dial(node int, id, query string) *wspClient {
	e.tb.Helper()
	cl, resp, err := e.tryDial(node, id, query, nil, false)
	if err != nil {
		e.tb.Fatalf("dial %s on %s: %v (%s)", id, e.c.Members[node].ID, err, wspRespString(resp))
	}
	return cl
}

// join opens a socket and reads its first frame, which must be a snapshot.
func (e *wspEnv) join(node int, id string) (*wspClient, wspFrame) {
	e.tb.Helper()
	cl := e.dial(node, id, "")
	snap := cl.expect("snapshot")
	cl.ID = snap.str("playerId")
	if cl.ID == "" {
		e.tb.Fatalf("%s: snapshot without playerId: %s", cl.name, snap)
	}
	return cl, snap
}

// wantRefused dials session id on member node and fails the test unless the
// upgrade is refused with status. It returns the response body.
func (e *wspEnv) wantRefused(node int, id string, hdr http.Header, status int) (http.Header, string) {
	e.tb.Helper()
	cl, resp, err := e.tryDial(node, id, "", hdr, true)
	if err == nil {
		cl.leave()
		e.tb.Fatalf("upgrade on %s: accepted, want %d", e.c.Members[node].ID, status)
	}
	if resp == nil || resp.StatusCode != status {
		e.tb.Fatalf("upgrade on %s: %v (%s), want status %d", e.c.Members[node].ID, err, wspRespString(resp), status)
	}
	return resp.Header, wspBody(resp)
}

func wspBody(resp *http.Response) string {
	if resp == nil || resp.Body == nil {
		return ""
	}
	b, _ := io.ReadAll(resp.Body) // the dialer already buffered it
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return string(b)
}

func wspRespString(resp *http.Response) string {
	if resp == nil {
		return "no response"
	}
	return fmt.Sprintf("status %d, body %q", resp.StatusCode, wspBody(resp))
}

// wspFrame is one frame a client received.
type wspFrame struct {
	Text bool
	Raw  []byte
	M    map[string]any // the JSON object; nil when the frame is not one
}

func (f wspFrame) String() string {
	s := string(f.Raw)
	if len(s) > 400 {
		s = s[:400] + fmt.Sprintf("...(%d bytes)", len(f.Raw))
	}
	return s
}

func (f wspFrame) typ() string { s, _ := f.M["type"].(string); return s }

func (f wspFrame) str(key string) string { s, _ := f.M[key].(string); return s }

func (f wspFrame) num(key string) (float64, bool) { v, ok := f.M[key].(float64); return v, ok }

// seq returns the frame's seq, 0 when it has none.
func (f wspFrame) seq() uint64 { v, _ := f.num("seq"); return uint64(v) }

func (f wspFrame) prevSeq() uint64 { v, _ := f.num("prevSeq"); return uint64(v) }

func (f wspFrame) mutating() bool { return wspMutating[f.typ()] }

// has reports whether every field of want (a JSON object) is in the frame
// with an equal value.
func (f wspFrame) has(want string) error {
	var w map[string]any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		return fmt.Errorf("bad expectation %s: %v", want, err)
	}
	for k, v := range w {
		got, ok := f.M[k]
		if !ok {
			return fmt.Errorf("no %q in %s", k, f)
		}
		if !reflect.DeepEqual(got, v) {
			return fmt.Errorf("%q is %v, want %v, in %s", k, got, v, f)
		}
	}
	return nil
}

// players returns the ids in the frame's players list, in order.
func (f wspFrame) players() []string {
	var ids []string
	list, _ := f.M["players"].([]any)
	for _, p := range list {
		m, _ := p.(map[string]any)
		id, _ := m["id"].(string)
		ids = append(ids, id)
	}
	return ids
}

// player returns the PlayerInfo of id in the frame's players list.
func (f wspFrame) player(id string) map[string]any {
	list, _ := f.M["players"].([]any)
	for _, p := range list {
		if m, _ := p.(map[string]any); m["id"] == id {
			return m
		}
	}
	return nil
}

// wspClient is one socket. A reader goroutine records every frame; the test
// goroutine takes them in order with next and friends.
type wspClient struct {
	tb   testing.TB
	name string
	node int
	conn *websocket.Conn
	ID   string // playerId of the first snapshot (or resume)

	mu       sync.Mutex // guards frames, err, done, byClient, wake
	frames   []wspFrame
	err      error // why reading ended
	done     bool
	byClient bool          // the test had started closing when reading ended
	wake     chan struct{} // closed and replaced whenever the fields above change

	pos        int   // the next frame to take; test goroutine only
	seq        int64 // the client message counter; one sender goroutine only
	closing    atomic.Bool
	reading    atomic.Bool
	readerDone chan struct{}
}

var wspSyncN atomic.Int64

func (cl *wspClient) startReading() {
	if cl.reading.Swap(true) {
		return
	}
	go cl.read()
}

func (cl *wspClient) read() {
	defer close(cl.readerDone)
	for {
		typ, data, err := cl.conn.Read(context.Background()) // a closed conn ends it
		f := wspFrame{Text: typ == websocket.MessageText, Raw: data}
		if err == nil {
			var m map[string]any
			if json.Unmarshal(data, &m) == nil {
				f.M = m
			}
		}
		cl.mu.Lock()
		if err != nil {
			cl.err, cl.done, cl.byClient = err, true, cl.closing.Load()
		} else {
			cl.frames = append(cl.frames, f)
		}
		close(cl.wake)
		cl.wake = make(chan struct{})
		cl.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// cleanup closes the socket, waits for the reader and checks what every
// socket must satisfy: a snapshot (or resume) first; text frames only; seq
// and prevSeq exactly on the 15 mutating broadcasts, clientSeq only there;
// seq strictly increasing on one connection; never a 1000 close from the
// server.
func (cl *wspClient) cleanup() {
	cl.closing.Store(true)
	_ = cl.conn.CloseNow() // may be closed already
	if cl.reading.Load() {
		<-cl.readerDone
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.done && !cl.byClient && websocket.CloseStatus(cl.err) == websocket.StatusNormalClosure {
		cl.tb.Errorf("%s: the server closed the socket with 1000: %v", cl.name, cl.err)
	}
	if len(cl.frames) > 0 && cl.frames[0].typ() != "snapshot" && cl.frames[0].typ() != "resume" {
		cl.tb.Errorf("%s: the first frame is not a snapshot or resume: %s", cl.name, cl.frames[0])
	}
	var last uint64
	for i, f := range cl.frames {
		if !f.Text {
			cl.tb.Errorf("%s: binary frame %s", cl.name, f)
			continue
		}
		if f.M == nil {
			if string(f.Raw) != "pong" {
				cl.tb.Errorf("%s: frame is not a JSON object: %s", cl.name, f)
			}
			continue
		}
		_, hasSeq := f.M["seq"]
		_, hasPrev := f.M["prevSeq"]
		_, hasClientSeq := f.M["clientSeq"]
		switch t := f.typ(); {
		case wspMutating[t]:
			if !hasSeq || !hasPrev || f.seq() == 0 {
				cl.tb.Errorf("%s: mutating broadcast without seq/prevSeq: %s", cl.name, f)
			}
			if f.seq() <= last || f.prevSeq() >= f.seq() {
				cl.tb.Errorf("%s: seq went from %d to %s", cl.name, last, f)
			}
			last = f.seq()
		case t == "snapshot" || t == "resume":
			// Both carry the session's last mutating seq (DESIGN.md §4). The
			// broadcasts after a first snapshot follow its seq; after a
			// resume, its since. A later snapshot (request_snapshot) is
			// written by another goroutine than the broadcasts, so it says
			// nothing about their order.
			if !hasSeq || hasPrev || hasClientSeq {
				cl.tb.Errorf("%s: %s with wrong seq fields: %s", cl.name, t, f)
			}
			if i == 0 && t == "snapshot" {
				last = f.seq()
			}
			if since, ok := f.num("since"); i == 0 && t == "resume" && ok {
				last = uint64(since)
			}
		default:
			if hasSeq || hasPrev || hasClientSeq {
				cl.tb.Errorf("%s: non-mutating message with seq fields: %s", cl.name, f)
			}
		}
	}
}

// framesSoFar returns every frame received so far, taken or not.
func (cl *wspClient) framesSoFar() []wspFrame {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return append([]wspFrame(nil), cl.frames...)
}

// waitFrame waits until frame i exists or reading has ended.
func (cl *wspClient) waitFrame(i int, within time.Duration) (wspFrame, error) {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		cl.mu.Lock()
		if i < len(cl.frames) {
			f := cl.frames[i]
			cl.mu.Unlock()
			return f, nil
		}
		done, err, wake := cl.done, cl.err, cl.wake
		cl.mu.Unlock()
		if done {
			return wspFrame{}, fmt.Errorf("%s: socket closed after %d frames: %w", cl.name, i, err)
		}
		select {
		case <-wake:
		case <-deadline.C:
			return wspFrame{}, fmt.Errorf("%s: no frame %d within %v", cl.name, i, within)
		}
	}
}

// next takes the next frame, failing the test after wspWait.
func (cl *wspClient) next() wspFrame {
	cl.tb.Helper()
	f, err := cl.waitFrame(cl.pos, wspWait)
	if err != nil {
		cl.tb.Fatal(err)
	}
	cl.pos++
	return f
}

// expect takes the next frame, which must have type typ.
func (cl *wspClient) expect(typ string) wspFrame {
	cl.tb.Helper()
	f := cl.next()
	if f.typ() != typ {
		cl.tb.Fatalf("%s: got %s, want a %s", cl.name, f, typ)
	}
	return f
}

// expectRaw takes the next frame, which must be exactly raw.
func (cl *wspClient) expectRaw(raw string) wspFrame {
	cl.tb.Helper()
	f := cl.next()
	if string(f.Raw) != raw {
		cl.tb.Fatalf("%s: got %s, want %s", cl.name, f, raw)
	}
	return f
}

// until skips frames until one of type typ and returns it with the skipped ones.
func (cl *wspClient) until(typ string) (wspFrame, []wspFrame) {
	cl.tb.Helper()
	var skipped []wspFrame
	for {
		f := cl.next()
		if f.typ() == typ {
			return f, skipped
		}
		skipped = append(skipped, f)
	}
}

// mutations takes frames until it has n mutating broadcasts, skipping others.
func (cl *wspClient) mutations(n int) []wspFrame {
	cl.tb.Helper()
	var out []wspFrame
	for len(out) < n {
		if f := cl.next(); f.mutating() {
			out = append(out, f)
		}
	}
	return out
}

// send writes a text frame. Safe to call from one goroutine besides the test's.
func (cl *wspClient) send(raw string) error {
	ctx, cancel := context.WithTimeout(context.Background(), wspWait)
	defer cancel()
	if err := cl.conn.Write(ctx, websocket.MessageText, []byte(raw)); err != nil {
		return fmt.Errorf("%s: write %.80s: %w", cl.name, raw, err)
	}
	return nil
}

// must sends raw and fails the test if the write fails.
func (cl *wspClient) must(raw string) {
	cl.tb.Helper()
	if err := cl.send(raw); err != nil {
		cl.tb.Fatal(err)
	}
}

// msgFrame builds a client message with the frontend's envelope: the next
// seq and ack 0. fields is the rest of the object without braces, or "".
func (cl *wspClient) msgFrame(typ, fields string) (string, int64) {
	cl.seq++
	b := `{"type":` + strconv.Quote(typ)
	if fields != "" {
		b += "," + fields
	}
	return b + `,"seq":` + strconv.FormatInt(cl.seq, 10) + `,"ack":0}`, cl.seq
}

// msg sends a client message with the envelope and returns its seq.
func (cl *wspClient) msg(typ, fields string) int64 {
	cl.tb.Helper()
	raw, seq := cl.msgFrame(typ, fields)
	cl.must(raw)
	return seq
}

// sync sends a clock_sync_request with a unique clientTime and takes frames
// until its response. It returns the frames before the response: the
// replies to earlier messages and whatever else arrived meanwhile.
func (cl *wspClient) sync() []wspFrame {
	cl.tb.Helper()
	ct := strconv.FormatInt(1_700_000_000_000+wspSyncN.Add(1), 10)
	cl.must(`{"type":"clock_sync_request","clientTime":` + ct + `}`)
	var before []wspFrame
	for {
		f := cl.next()
		if f.typ() == "clock_sync_response" && string(mustJSON(cl.tb, f.M["clientTime"])) == ct {
			return before
		}
		before = append(before, f)
	}
}

// quiet checks that the socket received nothing before a sync round trip:
// the server answers messages in order, so earlier messages got no reply.
func (cl *wspClient) quiet(what string) {
	cl.tb.Helper()
	if got := cl.sync(); len(got) > 0 {
		cl.tb.Fatalf("%s: %s: got %d frames, want none; first %s", cl.name, what, len(got), got[0])
	}
}

// leave closes the socket on purpose, as the frontend does (1000), and waits
// for the reader to end.
func (cl *wspClient) leave() {
	cl.closing.Store(true)
	_ = cl.conn.Close(websocket.StatusNormalClosure, "Client disconnect") // the handshake may race the server; either way it is closed
	if cl.reading.Load() {
		<-cl.readerDone
	}
}

// closed waits until the server closes the socket and returns the close
// error, taking every frame that came before it. The close must carry a
// status, and never 1000.
func (cl *wspClient) closed(within time.Duration) (websocket.CloseError, []wspFrame) {
	cl.tb.Helper()
	cl.startReading()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		cl.mu.Lock()
		done, err, wake := cl.done, cl.err, cl.wake
		rest := append([]wspFrame(nil), cl.frames[cl.pos:]...)
		cl.mu.Unlock()
		if done {
			cl.pos += len(rest)
			var ce websocket.CloseError
			if !asCloseError(err, &ce) {
				cl.tb.Fatalf("%s: the socket ended without a close status: %v", cl.name, err)
			}
			if ce.Code == websocket.StatusNormalClosure {
				cl.tb.Fatalf("%s: closed with 1000 (%q): the client would not reconnect", cl.name, ce.Reason)
			}
			return ce, rest
		}
		select {
		case <-wake:
		case <-deadline.C:
			cl.tb.Fatalf("%s: still open after %v", cl.name, within)
		}
	}
}

func asCloseError(err error, ce *websocket.CloseError) bool { return errors.As(err, ce) }

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatalf("marshal %v: %v", v, err)
	}
	return b
}

// wspChain checks that frames are consecutive mutating broadcasts of one
// session after seq from: each prevSeq is the seq before it. It returns the
// last seq.
func wspChain(tb testing.TB, who string, from uint64, frames []wspFrame) uint64 {
	tb.Helper()
	for _, f := range frames {
		if !f.mutating() {
			tb.Fatalf("%s: %s is not a mutating broadcast", who, f)
		}
		if f.prevSeq() != from || f.seq() <= from {
			tb.Fatalf("%s: after seq %d got %s", who, from, f)
		}
		from = f.seq()
	}
	return from
}
