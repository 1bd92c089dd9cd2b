package node_test

// HTTP API tests (PROTOCOL.md §1, §2, §9; DESIGN.md §5, §7, §9) against real
// three-node clusters, each request sent through a chosen node. Helpers here
// carry an "ht" prefix: other files of this package are written concurrently.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
	"chorus/transport"
)

// htUUID is the form of the ids the server generates: lowercase v4 UUIDs.
var htUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// htMissing is a well-formed id that no test creates.
const htMissing = "00000000-0000-4000-8000-00000000dead"

// htBadFormat matches the route pattern [a-f0-9-]{36} but is not 8-4-4-4-12.
const htBadFormat = "0123456789abcdef0123456789abcdef0123"

const (
	htPublishedPUT   = "This session has been published and cannot be modified. Remix it to create an editable copy."
	htPublishedPATCH = "This session has been published and cannot be renamed. Remix it to create an editable copy."
	htAlreadyPub     = "Cannot publish from an already-published session. Remix it first to create an editable copy."
)

// htTrack is a valid four-step track with its first step on.
func htTrack(id, name string) string {
	return `{"id":"` + id + `","name":"` + name + `","sampleId":"kick","steps":[true,false,false,false],` +
		`"parameterLocks":[null,null,null,null],"volume":0.8,"muted":false,"soloed":false,` +
		`"playbackMode":"oneshot","transpose":0,"stepCount":4}`
}

// htState is a state with the given tempo and tracks, swing 10.
func htState(tempo float64, tracks ...string) string {
	return `{"tracks":[` + strings.Join(tracks, ",") + `],"tempo":` + strconv.FormatFloat(tempo, 'g', -1, 64) + `,"swing":10,"version":1}`
}

// htCluster starts a three-node cluster that serves HTTP.
func htCluster(tb testing.TB, opts testcluster.Options) *testcluster.Cluster {
	tb.Helper()
	opts.HTTP = true
	return testcluster.New(tb, opts)
}

// htHTTP sends requests with its own connection pool, closed at cleanup.
type htHTTP struct {
	tb testing.TB
	c  *http.Client
}

func newHT(tb testing.TB) *htHTTP {
	tb.Helper()
	tr := &http.Transport{DisableCompression: true}
	tb.Cleanup(tr.CloseIdleConnections)
	return &htHTTP{tb: tb, c: &http.Client{
		Transport: tr, Timeout: waitLong,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// htResp is a response read in full.
type htResp struct {
	tb     testing.TB
	what   string
	status int
	header http.Header
	body   []byte
}

// do sends a request. hdr holds header names and values in pairs. Every
// /api response must carry the CORS headers (PROTOCOL.md §1.1).
func (h *htHTTP) do(method, url string, body io.Reader, hdr ...string) htResp {
	h.tb.Helper()
	r, err := h.try(method, url, body, hdr...)
	if err != nil {
		h.tb.Fatal(err)
	}
	return r
}

// try is do without failing the test on a transport error; it may run on
// any goroutine.
func (h *htHTTP) try(method, url string, body io.Reader, hdr ...string) (htResp, error) {
	h.tb.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return htResp{}, fmt.Errorf("%s %s: %w", method, url, err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return htResp{}, fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return htResp{}, fmt.Errorf("%s %s: read body: %w", method, url, err)
	}
	r := htResp{tb: h.tb, what: method + " " + url, status: resp.StatusCode, header: resp.Header, body: b}
	if req.URL.Path == "/api" || strings.HasPrefix(req.URL.Path, "/api/") {
		r.wantCORS() // Errorf only: safe on any goroutine
	}
	return r, nil
}

// on returns a client that reports to tb (a subtest) and shares h's pool.
func (h *htHTTP) on(tb testing.TB) *htHTTP { return &htHTTP{tb: tb, c: h.c} }

func (h *htHTTP) get(url string) htResp {
	h.tb.Helper()
	return h.do(http.MethodGet, url, nil)
}

// send sends body as JSON with method.
func (h *htHTTP) send(method, url, body string) htResp {
	h.tb.Helper()
	return h.do(method, url, strings.NewReader(body), "Content-Type", "application/json")
}

func (r htResp) wantCORS() {
	r.tb.Helper()
	for k, v := range map[string]string{
		"Access-Control-Allow-Origin":  "*",
		"Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
		"Access-Control-Allow-Headers": "Content-Type",
	} {
		if got := r.header.Get(k); got != v {
			r.tb.Errorf("%s: %s = %q, want %q", r.what, k, got, v)
		}
	}
}

func (r htResp) wantStatus(status int) htResp {
	r.tb.Helper()
	if r.status != status {
		r.tb.Fatalf("%s: status %d, want %d; body %s", r.what, r.status, status, r.body)
	}
	return r
}

// want checks the status and that the body is JSON equal to want.
func (r htResp) want(status int, want string) htResp {
	r.tb.Helper()
	r.wantStatus(status)
	htEqualJSON(r.tb, r.what, r.body, want)
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		r.tb.Errorf("%s: Content-Type %q, want application/json", r.what, ct)
	}
	return r
}

func (r htResp) wantError(status int, msg string) htResp {
	r.tb.Helper()
	return r.want(status, htMarshal(r.tb, map[string]any{"error": msg}))
}

func (r htResp) wantDetails(details ...string) htResp {
	r.tb.Helper()
	return r.want(http.StatusBadRequest, htMarshal(r.tb, map[string]any{"error": "Validation failed", "details": details}))
}

// obj decodes the body as a JSON object.
func (r htResp) obj() map[string]any {
	r.tb.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		r.tb.Fatalf("%s: body is not a JSON object: %v: %s", r.what, err, r.body)
	}
	return m
}

func htMarshal(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

func htEqualJSON(tb testing.TB, what string, got []byte, want string) {
	tb.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		tb.Fatalf("%s: body is not JSON: %v: %s", what, err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		tb.Fatalf("%s: bad expectation %s: %v", what, want, err)
	}
	if !reflect.DeepEqual(g, w) {
		tb.Fatalf("%s:\n got %s\nwant %s", what, got, want)
	}
}

// htKeys checks that m has exactly the given keys.
func htKeys(tb testing.TB, what string, m map[string]any, keys ...string) {
	tb.Helper()
	got := make([]string, 0, len(m))
	for k := range m {
		got = append(got, k)
	}
	slices.Sort(got)
	keys = slices.Clone(keys)
	slices.Sort(keys)
	if !slices.Equal(got, keys) {
		tb.Fatalf("%s: keys %v, want %v", what, got, keys)
	}
}

// create posts body as JSON and returns the new session's id.
func (h *htHTTP) create(base, body string) string {
	h.tb.Helper()
	m := h.send(http.MethodPost, base+"/api/sessions", body).wantStatus(http.StatusCreated).obj()
	htKeys(h.tb, "create response", m, "id", "url")
	id, _ := m["id"].(string)
	if !htUUID.MatchString(id) || m["url"] != "/s/"+id {
		h.tb.Fatalf("create response %v: want a lowercase v4 id and url /s/<id>", m)
	}
	return id
}

// session GETs a session, which must exist.
func (h *htHTTP) session(base, id string) map[string]any {
	h.tb.Helper()
	return h.get(base + "/api/sessions/" + id).wantStatus(http.StatusOK).obj()
}

// sync makes every node apply what is committed so far, as far as ids
// exist: a linearizable GET on each is a read barrier. Routes that read
// local state (the immutable check, debug routes) see as much afterwards.
func (h *htHTTP) sync(c *testcluster.Cluster, ids ...string) {
	h.tb.Helper()
	for _, m := range c.Members {
		for _, id := range ids {
			h.session(m.URL(), id)
		}
	}
}

func (h *htHTTP) state(base, id string) map[string]any {
	h.tb.Helper()
	st, ok := h.session(base, id)["state"].(map[string]any)
	if !ok {
		h.tb.Fatalf("session %s has no state object", id)
	}
	return st
}

func (h *htHTTP) remix(base, id string) string {
	h.tb.Helper()
	m := h.send(http.MethodPost, base+"/api/sessions/"+id+"/remix", "").wantStatus(http.StatusCreated).obj()
	htKeys(h.tb, "remix response", m, "id", "remixedFrom", "url")
	nid, _ := m["id"].(string)
	if !htUUID.MatchString(nid) || nid == id || m["remixedFrom"] != id || m["url"] != "/s/"+nid {
		h.tb.Fatalf("remix of %s answered %v", id, m)
	}
	return nid
}

func (h *htHTTP) publish(base, id string) string {
	h.tb.Helper()
	m := h.send(http.MethodPost, base+"/api/sessions/"+id+"/publish", "").wantStatus(http.StatusCreated).obj()
	htKeys(h.tb, "publish response", m, "id", "immutable", "url", "sourceId")
	nid, _ := m["id"].(string)
	if !htUUID.MatchString(nid) || nid == id || m["immutable"] != true || m["url"] != "/s/"+nid || m["sourceId"] != id {
		h.tb.Fatalf("publish of %s answered %v", id, m)
	}
	return nid
}

func htNum(tb testing.TB, m map[string]any, key string) float64 {
	tb.Helper()
	f, ok := m[key].(float64)
	if !ok {
		tb.Fatalf("%s = %#v, want a number (in %v)", key, m[key], m)
	}
	return f
}

// htNowish checks that ms is a Unix-ms time within the test's recent past.
func htNowish(tb testing.TB, what string, ms float64, since time.Time) {
	tb.Helper()
	lo, hi := since.Add(-time.Second).UnixMilli(), time.Now().Add(time.Second).UnixMilli()
	if int64(ms) < lo || int64(ms) > hi {
		tb.Fatalf("%s = %v, want a time in [%d, %d]", what, ms, lo, hi)
	}
}

// htWS is one WebSocket player.
type htWS struct {
	tb       testing.TB
	conn     *websocket.Conn
	playerID string
	snapshot map[string]any
}

// htDial joins session id through the node at base and reads the snapshot.
func htDial(tb testing.TB, base, id string) *htWS {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitMid)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+strings.TrimPrefix(base, "http://")+"/api/sessions/"+id+"/ws", nil)
	if err != nil {
		tb.Fatalf("dial %s on %s: %v", id, base, err)
	}
	w := &htWS{tb: tb, conn: conn}
	tb.Cleanup(w.close)
	w.snapshot = w.next("snapshot")
	w.playerID, _ = w.snapshot["playerId"].(string)
	if w.playerID == "" {
		tb.Fatalf("snapshot without playerId: %v", w.snapshot)
	}
	return w
}

// close closes the socket the way the frontend does on purpose; idempotent.
func (w *htWS) close() {
	_ = w.conn.Close(websocket.StatusNormalClosure, "Client disconnect") // fails only if already closed
}

func (w *htWS) send(msg string) {
	w.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitMid)
	defer cancel()
	if err := w.conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		w.tb.Fatalf("send %s: %v", msg, err)
	}
}

// next reads frames until one of type typ arrives.
func (w *htWS) next(typ string) map[string]any {
	w.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitMid)
	defer cancel()
	for {
		_, data, err := w.conn.Read(ctx)
		if err != nil {
			w.tb.Fatalf("waiting for %s: %v", typ, err)
		}
		var m map[string]any
		if json.Unmarshal(data, &m) == nil && m["type"] == typ {
			return m
		}
	}
}

// TestHTTPCommon covers the rules of PROTOCOL.md §1.1: CORS and OPTIONS,
// the two id checks, and 404 for unknown paths and wrong methods.
func TestHTTPCommon(t *testing.T) {
	c := htCluster(t, testcluster.Options{FirstIP: 131})
	h := newHT(t)
	id := h.create(c.Members[0].URL(), htState(120))

	t.Run("OPTIONS", func(t *testing.T) {
		h := h.on(t)
		for i, path := range []string{"/api/sessions", "/api/sessions/" + id, "/api/sessions/" + id + "/ws",
			"/api/nope", "/api", "/", "/s/" + id, "/app.js", "/no/such/file", "/cluster/status"} {
			r := h.do(http.MethodOptions, c.Members[i%3].URL()+path, nil,
				"Origin", "http://elsewhere.example", "Access-Control-Request-Method", "PUT")
			r.wantStatus(http.StatusOK)
			r.wantCORS()
			if len(r.body) != 0 {
				t.Errorf("OPTIONS %s: body %q, want empty", path, r.body)
			}
		}
	})

	t.Run("ids", func(t *testing.T) {
		h := h.on(t)
		routes := []struct{ method, path string }{
			{"GET", "/api/sessions/%s"}, {"PUT", "/api/sessions/%s"}, {"PATCH", "/api/sessions/%s"},
			{"POST", "/api/sessions/%s/remix"}, {"POST", "/api/sessions/%s/publish"},
			{"GET", "/api/sessions/%s/live-debug"}, {"GET", "/api/debug/session/%s"},
			{"GET", "/api/debug/session/%s/connections"}, {"GET", "/api/debug/session/%s/clock"},
			{"GET", "/api/debug/session/%s/state-sync"}, {"GET", "/api/debug/session/%s/ws-logs?last=5"},
			{"GET", "/api/debug/durable-object/%s"},
		}
		for i, rt := range routes {
			base := c.Members[i%3].URL()
			body := `{"state":` + htState(120) + `,"name":"x"}`
			// Not the route pattern: no route matches.
			for _, bad := range []string{"abc", strings.ToUpper(id), id + "0", "0123456789abcdef0123456789abcdef012g"} {
				h.send(rt.method, base+fmt.Sprintf(rt.path, bad), body).wantError(http.StatusNotFound, "Not found")
			}
			// The pattern but not 8-4-4-4-12 (the check ignores case and version).
			for _, bad := range []string{htBadFormat, strings.Repeat("-", 36), "0000000-00000-0000-0000-000000000000"} {
				h.send(rt.method, base+fmt.Sprintf(rt.path, bad), body).wantError(http.StatusBadRequest, "Invalid session ID format")
			}
		}
		// A v1-style id that is 8-4-4-4-12 passes the format check.
		h.get(c.Members[1].URL()+"/api/sessions/00000000-0000-1000-0000-000000000000").wantError(http.StatusNotFound, "Session not found")
	})

	t.Run("unknown routes", func(t *testing.T) {
		h := h.on(t)
		for i, rt := range []struct{ method, path string }{
			{"GET", "/api"}, {"GET", "/api/"}, {"GET", "/api/nope"}, {"GET", "/api/sessions"},
			{"PUT", "/api/sessions"}, {"PATCH", "/api/sessions"}, {"DELETE", "/api/sessions"},
			{"DELETE", "/api/sessions/" + id}, {"POST", "/api/sessions/" + id},
			{"GET", "/api/sessions/" + id + "/remix"}, {"PUT", "/api/sessions/" + id + "/publish"},
			{"POST", "/api/sessions/" + id + "/live-debug"}, {"GET", "/api/sessions/" + id + "/nope"},
			{"GET", "/api/sessions/" + id + "/ws"}, // no Upgrade header (§4.1)
			{"GET", "/api/sessions/" + id + "/remix/x"}, {"GET", "/api/sessions/"},
			{"POST", "/api/metrics"}, {"GET", "/api/metrics/x"}, {"POST", "/api/debug/logs"},
			{"GET", "/api/debug/logs/x"}, {"GET", "/api/debug/session/" + id + "/nope"},
			{"POST", "/api/debug/session/" + id}, {"GET", "/api/debug/nope/" + id},
			{"GET", "/api/debug/durable-object/" + id + "/x"}, {"GET", "/api/debug/session"},
		} {
			h.do(rt.method, c.Members[i%3].URL()+rt.path, nil).wantError(http.StatusNotFound, "Not found")
		}
		r := h.do(http.MethodHead, c.Members[0].URL()+"/api/sessions/"+id, nil).wantStatus(http.StatusNotFound)
		if len(r.body) != 0 {
			t.Errorf("HEAD: body %q", r.body)
		}
	})
}

// TestHTTPCreate covers POST /api/sessions (§1.3.1, §1.4).
func TestHTTPCreate(t *testing.T) {
	c := htCluster(t, testcluster.Options{FirstIP: 141})
	h := newHT(t)
	url := func(i int) string { return c.Members[i%3].URL() }

	t.Run("state form", func(t *testing.T) {
		h := h.on(t)
		state := `{"tracks":[` + htTrack("t1", "Kick") + `],"tempo":97.5,"swing":33,"version":7,` +
			`"effects":{"reverb":{"decay":2,"wet":0.25},"delay":{"time":"8n","feedback":0.3,"wet":0},"chorus":{"frequency":1.5,"depth":0.5,"wet":0},"distortion":{"amount":0.4,"wet":0}}}`
		before := time.Now()
		id := h.create(url(0), `{"state":`+state+`,"name":"  My Song  "}`)
		s := h.session(url(2), id)
		htKeys(t, "session", s, "id", "name", "createdAt", "updatedAt", "lastAccessedAt", "remixedFrom", "remixedFromName", "remixCount", "immutable", "state")
		if s["id"] != id || s["name"] != "  My Song  " { // stored verbatim on create
			t.Fatalf("session %v", s)
		}
		htNowish(t, "createdAt", htNum(t, s, "createdAt"), before)
		st := s["state"].(map[string]any)
		htKeys(t, "state", st, "tracks", "tempo", "swing", "version", "effects")
		if st["tempo"] != 97.5 || st["swing"] != 33.0 || st["version"] != 1.0 {
			t.Fatalf("state %v: want tempo 97.5, swing 33, version forced to 1", st)
		}
		htEqualJSON(t, "effects", []byte(htMarshal(t, st["effects"])),
			`{"reverb":{"decay":2,"wet":0.25},"delay":{"time":"8n","feedback":0.3,"wet":0},"chorus":{"frequency":1.5,"depth":0.5,"wet":0},"distortion":{"amount":0.4,"wet":0}}`)
		tr := st["tracks"].([]any)[0].(map[string]any)
		if tr["id"] != "t1" || tr["name"] != "Kick" || tr["stepCount"] != 4.0 || len(tr["steps"].([]any)) != 128 || tr["steps"].([]any)[0] != true {
			t.Fatalf("track %v", tr)
		}
		// A charset parameter still counts as JSON; name null is allowed.
		id = h.create(url(1), `{"state":`+htState(150)+`,"name":null}`)
		r := h.do(http.MethodPost, url(1)+"/api/sessions", strings.NewReader(`{"state":`+htState(61)+`}`), "Content-Type", "application/json; charset=utf-8")
		id2 := r.wantStatus(http.StatusCreated).obj()["id"].(string)
		if s := h.session(url(0), id); s["name"] != nil || s["state"].(map[string]any)["tempo"] != 150.0 {
			t.Fatalf("session %v", s)
		}
		if st := h.state(url(2), id2); st["tempo"] != 61.0 {
			t.Fatalf("state %v", st)
		}
	})

	t.Run("top-level form", func(t *testing.T) {
		h := h.on(t)
		for i, tt := range []struct {
			body, want string
			name       any
		}{
			{`{"tracks":[` + htTrack("a", "A") + `],"tempo":90}`, `{"tempo":90,"swing":0,"tracks":1}`, nil},
			{`{"tracks":[]}`, `{"tempo":120,"swing":0,"tracks":0}`, nil},
			{`{"swing":20,"name":"Top"}`, `{"tempo":120,"swing":20,"tracks":0}`, "Top"},
			{`{"tempo":100,"swing":5,"version":3,"extra":true}`, `{"tempo":100,"swing":5,"tracks":0}`, nil},
		} {
			id := h.create(url(i), tt.body)
			s := h.session(url(i+1), id)
			st := s["state"].(map[string]any)
			got := htMarshal(t, map[string]any{"tempo": st["tempo"], "swing": st["swing"], "tracks": len(st["tracks"].([]any))})
			htEqualJSON(t, tt.body, []byte(got), tt.want)
			if st["version"] != 1.0 {
				t.Errorf("%s: version %v, want 1", tt.body, st["version"])
			}
			if _, ok := st["extra"]; ok {
				t.Errorf("%s: the top-level form copied an unknown key: %v", tt.body, st)
			}
			if s["name"] != tt.name {
				t.Errorf("%s: name %v, want %v", tt.body, s["name"], tt.name)
			}
		}
	})

	t.Run("default session", func(t *testing.T) {
		h := h.on(t)
		def := `{"tracks":[],"tempo":120,"swing":0,"version":1}`
		for i, tt := range []struct {
			name string
			body io.Reader
			hdr  []string
		}{
			{"no body", nil, nil},
			{"not JSON", strings.NewReader(`{"state":` + htState(99) + `}`), []string{"Content-Type", "text/plain"}},
			{"form", strings.NewReader("tempo=99"), []string{"Content-Type", "application/x-www-form-urlencoded"}},
			{"empty JSON body", strings.NewReader(""), []string{"Content-Type", "application/json"}},
			{"no known keys", strings.NewReader(`{"foo":1}`), []string{"Content-Type", "application/json"}},
			{"empty object", strings.NewReader(`{}`), []string{"Content-Type", "application/json"}},
		} {
			r := h.do(http.MethodPost, url(i)+"/api/sessions", tt.body, tt.hdr...).wantStatus(http.StatusCreated)
			id := r.obj()["id"].(string)
			s := h.session(url(i+2), id)
			htEqualJSON(t, tt.name, []byte(htMarshal(t, s["state"])), def)
			if s["name"] != nil || s["remixedFrom"] != nil || s["remixedFromName"] != nil || s["remixCount"] != 0.0 || s["immutable"] != false {
				t.Errorf("%s: %v", tt.name, s)
			}
		}
	})

	t.Run("name rules", func(t *testing.T) {
		h := h.on(t)
		for i, tt := range htBadNames() {
			t.Run(tt.name, func(t *testing.T) {
				h := h.on(t)
				h.send(http.MethodPost, url(i)+"/api/sessions", `{"state":`+htState(120)+`,"name":`+tt.json+`}`).wantDetails(tt.details...)
			})
		}
		for i, name := range htGoodNames() {
			id := h.create(url(i), `{"state":`+htState(120)+`,"name":`+htMarshal(t, name)+`}`)
			if got := h.session(url(i+1), id)["name"]; got != name {
				t.Errorf("name %q stored as %q", name, got)
			}
		}
	})

	t.Run("state rules", func(t *testing.T) {
		h := h.on(t)
		okTrack := htTrack("ok", "OK")
		track := func(fields string) string { return `{"tracks":[` + fields + `]}` }
		var seventeen []string
		for i := range 17 {
			seventeen = append(seventeen, htTrack(fmt.Sprintf("t%d", i), "T"))
		}
		for i, tt := range []struct {
			name, state string
			details     []string
		}{
			{"tempo type", `{"tempo":"fast"}`, []string{"Tempo must be a number"}},
			{"tempo null", `{"tempo":null}`, []string{"Tempo must be a number"}},
			{"tempo low", `{"tempo":59.9}`, []string{"Tempo must be between 60 and 180"}},
			{"tempo high", `{"tempo":181}`, []string{"Tempo must be between 60 and 180"}},
			{"swing type", `{"swing":"lots"}`, []string{"Swing must be a number"}},
			{"swing low", `{"swing":-1}`, []string{"Swing must be between 0 and 100"}},
			{"swing high", `{"swing":100.5}`, []string{"Swing must be between 0 and 100"}},
			{"tracks type", `{"tracks":{}}`, []string{"Tracks must be an array"}},
			{"17 tracks", `{"tracks":[` + strings.Join(seventeen, ",") + `]}`, []string{"Cannot have more than 16 tracks"}},
			{"track type", track(`5`), []string{"Track[0]: must be an object"}},
			{"track null", track(`null`), []string{"Track[0]: must be an object"}},
			{"no id", track(`{"name":"A","sampleId":"kick","steps":[]}`), []string{"Track[0]: id must be a non-empty string"}},
			{"empty id", track(`{"id":"","name":"A","sampleId":"kick","steps":[]}`), []string{"Track[0]: id must be a non-empty string"}},
			{"sampleId", track(`{"id":"a","name":"A","sampleId":5,"steps":[]}`), []string{"Track[0]: sampleId must be a string"}},
			{"name", track(`{"id":"a","name":null,"sampleId":"kick","steps":[]}`), []string{"Track[0]: name must be a string"}},
			{"steps type", track(`{"id":"a","name":"A","sampleId":"kick","steps":"x"}`), []string{"Track[0]: steps must be an array"}},
			{"no steps", track(`{"id":"a","name":"A","sampleId":"kick"}`), []string{"Track[0]: steps must be an array"}},
			{"129 steps", track(`{"id":"a","name":"A","sampleId":"kick","steps":[` + strings.Repeat("false,", 128) + `true]}`), []string{"Track[0]: steps cannot exceed 128"}},
			{"volume high", track(`{"id":"a","name":"A","sampleId":"kick","steps":[],"volume":1.01}`), []string{"Track[0]: volume must be between 0 and 1"}},
			{"volume type", track(`{"id":"a","name":"A","sampleId":"kick","steps":[],"volume":"1"}`), []string{"Track[0]: volume must be between 0 and 1"}},
			{"transpose", track(`{"id":"a","name":"A","sampleId":"kick","steps":[],"transpose":-24.5}`), []string{"Track[0]: transpose must be between -24 and 24"}},
			{"stepCount", track(`{"id":"a","name":"A","sampleId":"kick","steps":[],"stepCount":20}`), []string{"Track[0]: stepCount must be one of 4, 8, 12, 16, 24, 32, 64, 96, 128"}},
			{"second track", track(okTrack + `,{"id":"b","name":"B","sampleId":"kick","steps":[],"stepCount":0}`), []string{"Track[1]: stepCount must be one of 4, 8, 12, 16, 24, 32, 64, 96, 128"}},
			{"several", `{"tempo":"x","swing":200,"tracks":[{"id":"","sampleId":1,"name":2,"steps":{}},` + okTrack + `,7]}`, []string{
				"Tempo must be a number", "Swing must be between 0 and 100",
				"Track[0]: id must be a non-empty string", "Track[0]: sampleId must be a string",
				"Track[0]: name must be a string", "Track[0]: steps must be an array", "Track[2]: must be an object"}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				h := h.on(t)
				h.send(http.MethodPost, url(i)+"/api/sessions", `{"state":`+tt.state+`}`).wantDetails(tt.details...)
			})
		}
		// The top-level form is validated too.
		h.send(http.MethodPost, url(0)+"/api/sessions", `{"tracks":[5],"tempo":300}`).
			wantDetails("Tempo must be between 60 and 180", "Track[0]: must be an object")
		// What the rules do not check is accepted (§1.4.1), bounds included.
		var sixteen []string
		for i := range 16 {
			sixteen = append(sixteen, fmt.Sprintf(`{"id":"dup","name":"T","sampleId":"s","steps":[true],"volume":%d,"stepCount":%d,"transpose":2.5}`, i%2, []int{4, 8, 12, 16, 24, 32, 64, 96, 128}[i%9]))
		}
		for i, st := range []string{
			`{"tracks":[` + strings.Join(sixteen, ",") + `],"tempo":60,"swing":100}`,
			`{"tracks":[{"id":"x","name":"","sampleId":"","steps":[` + strings.Repeat("true,", 127) + `true],"parameterLocks":{"3":{"pitch":2}},"muted":"no","fmParams":5}],"tempo":180,"swing":0}`,
		} {
			h.create(url(i), `{"state":`+st+`}`)
		}
	})

	t.Run("body limits", func(t *testing.T) {
		h := h.on(t)
		big := `{"state":` + htState(120) + `,"pad":"` + strings.Repeat("x", 70000) + `"}`
		h.send(http.MethodPost, url(0)+"/api/sessions", big).wantError(http.StatusRequestEntityTooLarge, "Request body too large")
		// Only the header counts, whatever the content type.
		h.do(http.MethodPost, url(1)+"/api/sessions", strings.NewReader(big), "Content-Type", "text/plain").
			wantError(http.StatusRequestEntityTooLarge, "Request body too large")
		// Without a Content-Length (chunked), the read is bounded all the same.
		h.do(http.MethodPost, url(2)+"/api/sessions", io.MultiReader(strings.NewReader(big)), "Content-Type", "application/json").
			wantError(http.StatusRequestEntityTooLarge, "Request body too large")
		// Exactly 65536 bytes is allowed.
		head := `{"state":` + htState(120) + `,"pad":"`
		exact := head + strings.Repeat("x", 65536-len(head)-2) + `"}`
		if len(exact) != 65536 {
			t.Fatalf("exact body is %d bytes", len(exact))
		}
		h.create(url(0), exact)
	})

	t.Run("malformed JSON", func(t *testing.T) {
		h := h.on(t)
		for i, body := range []string{`{"state":`, `{"state":{}`, `nope`, `{'a':1}`} {
			h.send(http.MethodPost, url(i)+"/api/sessions", body).wantError(http.StatusBadRequest, "Invalid request body")
		}
	})

	t.Run("rate limit off", func(t *testing.T) {
		h := h.on(t)
		for i := range 13 {
			r := h.send(http.MethodPost, url(0)+"/api/sessions", `{}`).wantStatus(http.StatusCreated)
			if r.header.Get("X-RateLimit-Remaining") != "" || r.header.Get("Retry-After") != "" {
				t.Fatalf("create %d: rate-limit headers %v", i, r.header)
			}
		}
	})
}

// htBadName is a name that fails the rules of §1.4.2.
type htBadName struct {
	name, json string
	details    []string
}

func htBadNames() []htBadName {
	long := "Name cannot exceed 100 characters"
	unsafe := "Name contains potentially unsafe content"
	invalid := "Name contains invalid characters"
	return []htBadName{
		{"number", `5`, []string{"Name must be a string or null"}},
		{"bool", `true`, []string{"Name must be a string or null"}},
		{"object", `{"a":"b"}`, []string{"Name must be a string or null"}},
		{"101 units", `"` + strings.Repeat("a", 101) + `"`, []string{long}},
		{"101 units with a surrogate pair", `"` + strings.Repeat("a", 99) + `😀"`, []string{long}},
		{"script", `"<script>x</script>"`, []string{unsafe}},
		{"script any case", `"a <ScRiPt"`, []string{unsafe}},
		{"javascript", `"JavaScript:alert(1)"`, []string{unsafe}},
		{"handler", `"x onClick = y"`, []string{unsafe}},
		{"handler no space", `"onload=1"`, []string{unsafe}},
		{"joiner", `"a\u200db"`, []string{invalid}},
		{"variation selector", `"\u2764\ufe0f"`, []string{invalid}},
		{"control", `"a\u0007b"`, []string{invalid}},
		{"several", `"<script>` + strings.Repeat("a", 100) + `"`, []string{long, unsafe}},
	}
}

func htGoodNames() []string {
	return []string{"🎹 Jam! #1 (café) — ünïcødé ♪", strings.Repeat("a", 98) + "😀", "Tabs\tand\nlines", "日本語の歌", "on the go", "a < b > c & d"}
}

// TestHTTPCreateRateLimit covers the per-IP create limit (§1.3.1, DESIGN.md §9).
func TestHTTPCreateRateLimit(t *testing.T) {
	var skew atomic.Int64 // node 0's API clock runs this far ahead
	c := htCluster(t, testcluster.Options{FirstIP: 151, ConfigureAPI: func(i int, cfg *transport.APIConfig) {
		cfg.CreateRate = 3
		if i == 0 {
			cfg.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
		}
	}})
	h := newHT(t)
	base := c.Members[0].URL()
	for range 3 {
		r := h.send(http.MethodPost, base+"/api/sessions", `{}`).wantStatus(http.StatusCreated)
		if r.header.Get("X-RateLimit-Remaining") != "" {
			t.Fatalf("X-RateLimit-Remaining on an allowed create: %v", r.header)
		}
	}
	limited := func() int {
		t.Helper()
		r := h.send(http.MethodPost, base+"/api/sessions", `{"state":`+htState(120)+`}`).wantStatus(http.StatusTooManyRequests)
		m := r.obj()
		htKeys(t, "429 body", m, "error", "retryAfter")
		secs := int(htNum(t, m, "retryAfter"))
		if m["error"] != "Too many requests. Please wait before creating more sessions." || secs < 1 || secs > 60 {
			t.Fatalf("429 body %s", r.body)
		}
		if r.header.Get("Retry-After") != strconv.Itoa(secs) || r.header.Get("X-RateLimit-Remaining") != "0" {
			t.Fatalf("429 headers %v, want Retry-After %d and X-RateLimit-Remaining 0", r.header, secs)
		}
		return secs
	}
	first := limited()
	if first < 55 {
		t.Errorf("retryAfter %d right after the window opened, want about 60", first)
	}
	// The window is fixed: later in it the wait is shorter.
	skew.Store(int64(40 * time.Second))
	if got := limited(); got > first-39 || got < first-41 {
		t.Errorf("retryAfter %d 40 s later, want about %d", got, first-40)
	}
	// Only creates are limited.
	id := h.create(c.Members[1].URL(), `{}`)
	h.remix(base, id)
	h.publish(base, id)
	h.session(base, id)
	// A new window opens a minute after the first request.
	skew.Store(int64(61 * time.Second))
	for range 3 {
		h.create(base, `{}`)
	}
	limited()
}

// TestHTTPGet covers GET /api/sessions/{id} (§1.3.2, §2.1, DESIGN.md §5).
func TestHTTPGet(t *testing.T) {
	c := htCluster(t, testcluster.Options{FirstIP: 161})
	h := newHT(t)
	url := func(i int) string { return c.Members[i%3].URL() }
	before := time.Now()
	id := h.create(url(0), `{"state":`+htState(110, htTrack("t1", "Kick"), htTrack("t2", "Snare"))+`,"name":"Song"}`)

	t.Run("shape", func(t *testing.T) {
		h := h.on(t)
		s := h.session(url(1), id)
		htKeys(t, "session", s, "id", "name", "createdAt", "updatedAt", "lastAccessedAt", "remixedFrom", "remixedFromName", "remixCount", "immutable", "state")
		if s["id"] != id || s["name"] != "Song" || s["remixedFrom"] != nil || s["remixedFromName"] != nil || s["remixCount"] != 0.0 || s["immutable"] != false {
			t.Fatalf("session %v", s)
		}
		created := htNum(t, s, "createdAt")
		htNowish(t, "createdAt", created, before)
		if htNum(t, s, "updatedAt") != created || htNum(t, s, "lastAccessedAt") < created {
			t.Fatalf("times %v", s)
		}
		st := s["state"].(map[string]any)
		htKeys(t, "state", st, "tracks", "tempo", "swing", "version")
		if st["tempo"] != 110.0 || st["swing"] != 10.0 || st["version"] != 1.0 || len(st["tracks"].([]any)) != 2 {
			t.Fatalf("state %v", st)
		}
		for i, tr := range st["tracks"].([]any) {
			tm := tr.(map[string]any)
			htKeys(t, "track", tm, "id", "name", "sampleId", "steps", "parameterLocks", "volume", "muted", "soloed", "playbackMode", "transpose", "stepCount")
			if tm["id"] != []string{"t1", "t2"}[i] || tm["sampleId"] != "kick" || tm["volume"] != 0.8 || tm["muted"] != false ||
				tm["playbackMode"] != "oneshot" || tm["transpose"] != 0.0 || tm["stepCount"] != 4.0 ||
				len(tm["steps"].([]any)) != 128 || len(tm["parameterLocks"].([]any)) != 128 {
				t.Fatalf("track %v", tm)
			}
		}
	})

	t.Run("not found", func(t *testing.T) {
		h := h.on(t)
		for i := range 3 {
			h.get(url(i)+"/api/sessions/"+htMissing).wantError(http.StatusNotFound, "Session not found")
			h.get(url(i)+"/api/sessions/"+htMissing+"?stale=1").wantError(http.StatusNotFound, "Session not found")
		}
	})

	t.Run("linearizable", func(t *testing.T) {
		h := h.on(t)
		// A write acknowledged by one node is visible to the next GET on any other.
		for k := range 9 {
			w, r := url(k), url(k+1+(k/3)%2)
			nid := h.create(w, `{"state":`+htState(60+float64(k))+`}`)
			if st := h.state(r, nid); st["tempo"] != 60+float64(k) {
				t.Fatalf("round %d: created on %s, read on %s: %v", k, w, r, st)
			}
			h.send(http.MethodPut, w+"/api/sessions/"+id, `{"state":`+htState(100+float64(k))+`}`).wantStatus(http.StatusOK)
			if st := h.state(r, id); st["tempo"] != 100+float64(k) {
				t.Fatalf("round %d: PUT on %s, GET on %s: tempo %v", k, w, r, st["tempo"])
			}
			name := fmt.Sprintf("Name %d", k)
			h.send(http.MethodPatch, w+"/api/sessions/"+id, htMarshal(t, map[string]string{"name": name})).wantStatus(http.StatusOK)
			if got := h.session(r, id)["name"]; got != name {
				t.Fatalf("round %d: PATCH on %s, GET on %s: name %v", k, w, r, got)
			}
			// After a linearizable read, a stale read on that node sees as much.
			if st := h.get(r + "/api/sessions/" + id + "?stale=1").wantStatus(http.StatusOK).obj()["state"].(map[string]any); st["tempo"] != 100+float64(k) {
				t.Fatalf("round %d: stale GET on %s: tempo %v", k, r, st["tempo"])
			}
		}
	})

	t.Run("stale", func(t *testing.T) {
		h := h.on(t)
		nid := h.create(url(0), `{"state":`+htState(133)+`}`)
		for i := range 3 {
			testcluster.Eventually(t, waitMid, func() error {
				r := h.get(url(i) + "/api/sessions/" + nid + "?stale=1")
				if r.status != http.StatusOK {
					return fmt.Errorf("stale GET on %s: %d %s", url(i), r.status, r.body)
				}
				if st := r.obj()["state"].(map[string]any); st["tempo"] != 133.0 {
					t.Fatalf("stale GET on %s: %v", url(i), st)
				}
				return nil
			})
		}
	})

	t.Run("lastAccessedAt", func(t *testing.T) {
		h := h.on(t)
		start := time.Now()
		s := h.session(url(2), id)
		first := htNum(t, s, "lastAccessedAt")
		htNowish(t, "lastAccessedAt", first, start)
		if first < htNum(t, s, "updatedAt") {
			t.Fatalf("lastAccessedAt %v before updatedAt: %v", first, s)
		}
		updated := htNum(t, s, "updatedAt")
		for i := range 3 {
			testcluster.Eventually(t, waitMid, func() error {
				s := h.session(url(i), id)
				if got := htNum(t, s, "lastAccessedAt"); got <= first {
					return fmt.Errorf("lastAccessedAt on %s: %v, not after %v", url(i), got, first)
				}
				if htNum(t, s, "updatedAt") != updated {
					t.Fatalf("GET changed updatedAt: %v", s)
				}
				return nil
			})
		}
	})
}

// TestHTTPPut covers PUT /api/sessions/{id} (§1.3.3).
func TestHTTPPut(t *testing.T) {
	c := htCluster(t, testcluster.Options{FirstIP: 171})
	h := newHT(t)
	url := func(i int) string { return c.Members[i%3].URL() }
	effects := `"effects":{"reverb":{"decay":2,"wet":0.5},"delay":{"time":"8n","feedback":0.3,"wet":0},"chorus":{"frequency":1.5,"depth":0.5,"wet":0},"distortion":{"amount":0.4,"wet":0}}`
	id := h.create(url(0), `{"state":{"tracks":[`+htTrack("t1", "Kick")+`],"tempo":120,"swing":0,`+effects+`},"name":"Keep"}`)
	pub := h.publish(url(0), id)
	h.sync(c, pub)
	big := `{"state":` + htState(120) + `,"pad":"` + strings.Repeat("x", 70000) + `"}`

	t.Run("check order", func(t *testing.T) {
		h := h.on(t)
		published := htMarshal(t, map[string]any{"error": "Session is published", "message": htPublishedPUT, "immutable": true})
		for i := range 3 {
			put := func(sid, body string) htResp {
				return h.send(http.MethodPut, url(i)+"/api/sessions/"+sid, body)
			}
			// 1. id format, before anything else.
			put(htBadFormat, big).wantError(http.StatusBadRequest, "Invalid session ID format")
			// 2. published, before the size and the body.
			put(pub, big).want(http.StatusForbidden, published)
			put(pub, `{nope`).want(http.StatusForbidden, published)
			put(pub, `{"state":`+htState(120)+`}`).want(http.StatusForbidden, published)
			// 3. size, before parsing and existence.
			put(id, big).wantError(http.StatusRequestEntityTooLarge, "Request body too large")
			put(htMissing, big).wantError(http.StatusRequestEntityTooLarge, "Request body too large")
			// 4. JSON, before validation and existence.
			for _, body := range []string{`{nope`, ``, `{"state":{}`} {
				put(id, body).wantError(http.StatusBadRequest, "Invalid request body")
				put(htMissing, body).wantError(http.StatusBadRequest, "Invalid request body")
			}
			// 5. validation, before existence.
			for _, body := range []string{`{}`, `{"state":5}`, `{"state":null}`, `{"state":[]}`, `{"tracks":[],"tempo":120}`, `[]`, `null`, `"x"`} {
				put(id, body).wantDetails("State must be an object")
				put(htMissing, body).wantDetails("State must be an object")
			}
			put(id, `{"state":{"tempo":300,"tracks":[{"id":"a"}]}}`).wantDetails("Tempo must be between 60 and 180",
				"Track[0]: sampleId must be a string", "Track[0]: name must be a string", "Track[0]: steps must be an array")
			// 6. existence.
			put(htMissing, `{"state":`+htState(120)+`}`).wantError(http.StatusNotFound, "Session not found")
		}
	})

	t.Run("replace", func(t *testing.T) {
		h := h.on(t)
		before := h.session(url(0), id)
		start := time.Now()
		r := h.send(http.MethodPut, url(1)+"/api/sessions/"+id, `{"state":{"tracks":[`+htTrack("n1", "New")+`],"tempo":130,"swing":20,"version":9,"extra":"kept"}}`)
		m := r.wantStatus(http.StatusOK).obj()
		htKeys(t, "PUT response", m, "id", "updatedAt")
		if m["id"] != id {
			t.Fatalf("PUT response %v", m)
		}
		updated := htNum(t, m, "updatedAt")
		htNowish(t, "updatedAt", updated, start)
		s := h.session(url(2), id)
		st := s["state"].(map[string]any)
		if st["tempo"] != 130.0 || st["swing"] != 20.0 || st["version"] != 1.0 || st["tracks"].([]any)[0].(map[string]any)["id"] != "n1" {
			t.Fatalf("state after PUT %v (version must be forced to 1)", st)
		}
		if _, ok := st["effects"]; ok {
			t.Fatalf("state after PUT kept effects the body did not have: %v", st)
		}
		if st["extra"] != "kept" {
			t.Fatalf("state after PUT lost an unknown key: %v", st)
		}
		if htNum(t, s, "updatedAt") != updated || s["createdAt"] != before["createdAt"] || s["name"] != "Keep" || s["remixCount"] != before["remixCount"] {
			t.Fatalf("metadata after PUT: %v, before %v", s, before)
		}
	})

	t.Run("live room wins", func(t *testing.T) {
		h := h.on(t)
		ws := htDial(t, url(2), id)
		r := h.send(http.MethodPut, url(0)+"/api/sessions/"+id, `{"state":`+htState(77)+`}`)
		m := r.wantStatus(http.StatusOK).obj()
		htKeys(t, "PUT response", m, "id", "updatedAt")
		for i := range 3 {
			if st := h.state(url(i), id); st["tempo"] != 130.0 {
				t.Fatalf("a PUT while a player is connected changed the live state: %v", st)
			}
		}
		ws.send(`{"type":"set_tempo","tempo":140,"seq":1,"ack":0}`)
		if f := ws.next("tempo_changed"); f["tempo"] != 140.0 {
			t.Fatalf("tempo_changed %v", f)
		}
		// Once the room is empty, PUT replaces the state again.
		ws.close()
		testcluster.Eventually(t, waitMid, func() error {
			m := h.get(url(0) + "/api/sessions/" + id + "/live-debug").wantStatus(http.StatusOK).obj()
			if m["connectedPlayers"] != 0.0 {
				return fmt.Errorf("connectedPlayers %v", m["connectedPlayers"])
			}
			return nil
		})
		h.send(http.MethodPut, url(0)+"/api/sessions/"+id, `{"state":`+htState(77)+`}`).wantStatus(http.StatusOK)
		if st := h.state(url(1), id); st["tempo"] != 77.0 {
			t.Fatalf("PUT after the room emptied: %v", st)
		}
	})
}

// TestHTTPPatch covers PATCH /api/sessions/{id} (§1.3.4).
func TestHTTPPatch(t *testing.T) {
	c := htCluster(t, testcluster.Options{FirstIP: 181})
	h := newHT(t)
	url := func(i int) string { return c.Members[i%3].URL() }
	id := h.create(url(0), `{"state":`+htState(120)+`,"name":"Before"}`)
	pub := h.publish(url(0), id)
	h.sync(c, pub)

	t.Run("check order", func(t *testing.T) {
		h := h.on(t)
		published := htMarshal(t, map[string]any{"error": "Session is published", "message": htPublishedPATCH, "immutable": true})
		for i := range 3 {
			patch := func(sid, body string) htResp {
				return h.send(http.MethodPatch, url(i)+"/api/sessions/"+sid, body)
			}
			patch(htBadFormat, `nope`).wantError(http.StatusBadRequest, "Invalid session ID format")
			for _, body := range []string{`nope`, `{}`, `{"name":5}`, `{"name":"ok"}`} {
				patch(pub, body).want(http.StatusForbidden, published)
			}
			for _, body := range []string{`nope`, ``, `[1]`, `"name"`, `5`, `null`, `{"name":`} {
				patch(id, body).wantError(http.StatusBadRequest, "Invalid request body")
				patch(htMissing, body).wantError(http.StatusBadRequest, "Invalid request body")
			}
			for _, body := range []string{`{}`, `{"nam":"x"}`} {
				patch(id, body).wantError(http.StatusBadRequest, "Missing name field")
				patch(htMissing, body).wantError(http.StatusBadRequest, "Missing name field")
			}
			for _, tt := range htBadNames() {
				patch(id, `{"name":`+tt.json+`}`).wantDetails(tt.details...)
				patch(htMissing, `{"name":`+tt.json+`}`).wantDetails(tt.details...)
			}
			patch(htMissing, `{"name":"ok"}`).wantError(http.StatusNotFound, "Session not found")
		}
		if got := h.session(url(1), id)["name"]; got != "Before" {
			t.Fatalf("rejected PATCHes changed the name to %v", got)
		}
	})

	t.Run("rename", func(t *testing.T) {
		h := h.on(t)
		for i, tt := range []struct {
			json string
			want any
		}{
			{`"  My Jam  "`, "My Jam"},
			{`"\u00a0\t\nX y\u3000"`, "X y"}, // JavaScript's trim
			{`"` + strings.Repeat("a", 98) + `😀"`, strings.Repeat("a", 98) + "😀"}, // exactly 100 units
			{`" ` + strings.Repeat("b", 99) + `"`, strings.Repeat("b", 99)},
			{`"   "`, nil},
			{`""`, nil},
			{`"Again"`, "Again"},
			{`null`, nil},
		} {
			before := h.session(url(i), id)
			start := time.Now()
			m := h.send(http.MethodPatch, url(i)+"/api/sessions/"+id, `{"name":`+tt.json+`}`).wantStatus(http.StatusOK).obj()
			htKeys(t, "PATCH response", m, "id", "name", "updatedAt")
			if m["id"] != id || m["name"] != tt.want {
				t.Fatalf("PATCH %s answered %v, want name %v", tt.json, m, tt.want)
			}
			updated := htNum(t, m, "updatedAt")
			htNowish(t, "updatedAt", updated, start)
			s := h.session(url(i+1), id)
			if s["name"] != tt.want || htNum(t, s, "updatedAt") != updated {
				t.Fatalf("after PATCH %s: %v", tt.json, s)
			}
			if !reflect.DeepEqual(s["state"], before["state"]) || s["createdAt"] != before["createdAt"] {
				t.Fatalf("PATCH changed more than the name: %v, before %v", s, before)
			}
		}
		for i, name := range htGoodNames() {
			m := h.send(http.MethodPatch, url(i)+"/api/sessions/"+id, htMarshal(t, map[string]string{"name": name})).wantStatus(http.StatusOK).obj()
			want := strings.TrimSpace(name)
			if m["name"] != want || h.session(url(i+2), id)["name"] != want {
				t.Fatalf("PATCH %q answered %v", name, m)
			}
		}
	})
}

// TestHTTPRemixPublish covers remix and publish (§1.3.5, §1.3.6, §3.6).
func TestHTTPRemixPublish(t *testing.T) {
	c := htCluster(t, testcluster.Options{FirstIP: 191})
	h := newHT(t)
	url := func(i int) string { return c.Members[i%3].URL() }

	t.Run("remix", func(t *testing.T) {
		h := h.on(t)
		src := h.create(url(0), `{"state":`+htState(111, htTrack("t1", "Bassline"), htTrack("t2", "Other"))+`}`)
		srcBefore := h.session(url(0), src)
		start := time.Now()
		rid := h.remix(url(1), src)
		r := h.session(url(2), rid)
		htKeys(t, "remix", r, "id", "name", "createdAt", "updatedAt", "lastAccessedAt", "remixedFrom", "remixedFromName", "remixCount", "immutable", "state")
		if r["id"] != rid || r["name"] != nil || r["remixedFrom"] != src || r["remixedFromName"] != "Bassline" || r["remixCount"] != 0.0 || r["immutable"] != false {
			t.Fatalf("remix %v", r)
		}
		htNowish(t, "createdAt", htNum(t, r, "createdAt"), start)
		if r["updatedAt"] != r["createdAt"] || htNum(t, r, "lastAccessedAt") < htNum(t, r, "createdAt") {
			t.Fatalf("remix times %v", r)
		}
		if !reflect.DeepEqual(r["state"], srcBefore["state"]) {
			t.Fatalf("remix state %v, source %v", r["state"], srcBefore["state"])
		}
		s := h.session(url(1), src)
		if s["remixCount"] != 1.0 || !reflect.DeepEqual(s["state"], srcBefore["state"]) || s["updatedAt"] != srcBefore["updatedAt"] {
			t.Fatalf("source after remix %v", s)
		}
		h.remix(url(0), src)
		if got := h.session(url(2), src)["remixCount"]; got != 2.0 {
			t.Fatalf("remixCount after two remixes: %v", got)
		}
		// Remixes are independent of their source.
		h.send(http.MethodPut, url(0)+"/api/sessions/"+rid, `{"state":`+htState(70)+`}`).wantStatus(http.StatusOK)
		if st := h.state(url(1), src); st["tempo"] != 111.0 {
			t.Fatalf("source changed with its remix: %v", st)
		}
	})

	t.Run("remixedFromName", func(t *testing.T) {
		h := h.on(t)
		for i, tt := range []struct{ body, want string }{
			{`{"state":` + htState(120, htTrack("t1", "Track name")) + `,"name":"Session name"}`, "Session name"},
			{`{"state":` + htState(120, htTrack("t1", "Track name")) + `}`, "Track name"},
			{`{"state":` + htState(120, htTrack("t1", "Track name")) + `,"name":""}`, "Track name"},
			{`{"state":` + htState(120, htTrack("t1", "")) + `}`, "Untitled Session"},
			{`{"state":` + htState(120) + `}`, "Untitled Session"},
		} {
			src := h.create(url(i), tt.body)
			rid := h.remix(url(i+1), src)
			if got := h.session(url(i+2), rid)["remixedFromName"]; got != tt.want {
				t.Errorf("%s: remixedFromName %v, want %q", tt.body, got, tt.want)
			}
		}
	})

	t.Run("remix copies the live state", func(t *testing.T) {
		h := h.on(t)
		src := h.create(url(0), `{"state":`+htState(120, htTrack("t1", "Kick"))+`}`)
		ws := htDial(t, url(1), src)
		ws.send(`{"type":"set_tempo","tempo":133,"seq":1,"ack":0}`)
		if f := ws.next("tempo_changed"); f["tempo"] != 133.0 {
			t.Fatalf("tempo_changed %v", f)
		}
		ws.send(`{"type":"toggle_step","trackId":"t1","step":2,"seq":2,"ack":0}`)
		ws.next("step_toggled")
		rid := h.remix(url(2), src)
		st := h.state(url(0), rid)
		steps := st["tracks"].([]any)[0].(map[string]any)["steps"].([]any)
		if st["tempo"] != 133.0 || steps[2] != true {
			t.Fatalf("remix of a live room: tempo %v, step 2 %v; want the live tempo 133 and step 2 on", st["tempo"], steps[2])
		}
		pid := h.publish(url(2), src)
		if st := h.state(url(1), pid); st["tempo"] != 133.0 {
			t.Fatalf("publish of a live room: tempo %v, want 133", st["tempo"])
		}
	})

	t.Run("publish", func(t *testing.T) {
		h := h.on(t)
		src := h.create(url(0), `{"state":`+htState(99, htTrack("t1", "Lead"))+`,"name":"Pub me"}`)
		before := h.session(url(0), src)
		start := time.Now()
		pid := h.publish(url(1), src)
		p := h.session(url(2), pid)
		htKeys(t, "published", p, "id", "name", "createdAt", "updatedAt", "lastAccessedAt", "remixedFrom", "remixedFromName", "remixCount", "immutable", "state")
		if p["id"] != pid || p["name"] != "Pub me" || p["remixedFrom"] != src || p["remixedFromName"] != "Pub me" || p["remixCount"] != 0.0 || p["immutable"] != true {
			t.Fatalf("published %v", p)
		}
		htNowish(t, "createdAt", htNum(t, p, "createdAt"), start)
		if !reflect.DeepEqual(p["state"], before["state"]) {
			t.Fatalf("published state %v, source %v", p["state"], before["state"])
		}
		after := h.session(url(0), src)
		if after["remixCount"] != 0.0 || after["immutable"] != false || after["updatedAt"] != before["updatedAt"] {
			t.Fatalf("source after publish %v", after)
		}
		// Every publish is a new session; an unnamed source gives the track name.
		if pid2 := h.publish(url(2), src); pid2 == pid {
			t.Fatal("two publishes gave the same id")
		}
		anon := h.create(url(0), `{"state":`+htState(99, htTrack("t1", "Lead"))+`}`)
		if p := h.session(url(1), h.publish(url(2), anon)); p["name"] != nil || p["remixedFromName"] != "Lead" {
			t.Fatalf("publish of an unnamed session %v", p)
		}

		for i := range 3 {
			// Publishing a published session is refused.
			h.send(http.MethodPost, url(i)+"/api/sessions/"+pid+"/publish", "").wantError(http.StatusBadRequest, htAlreadyPub)
			// The copy is frozen over HTTP...
			h.send(http.MethodPut, url(i)+"/api/sessions/"+pid, `{"state":`+htState(150)+`}`).
				want(http.StatusForbidden, htMarshal(t, map[string]any{"error": "Session is published", "message": htPublishedPUT, "immutable": true}))
			h.send(http.MethodPatch, url(i)+"/api/sessions/"+pid, `{"name":"x"}`).
				want(http.StatusForbidden, htMarshal(t, map[string]any{"error": "Session is published", "message": htPublishedPATCH, "immutable": true}))
		}
		if !reflect.DeepEqual(h.session(url(0), pid)["state"], p["state"]) {
			t.Fatal("a published session changed")
		}
		// ...but can be read and remixed, and the remix is editable.
		rid := h.remix(url(0), pid)
		r := h.session(url(1), rid)
		if r["immutable"] != false || r["remixedFrom"] != pid || r["remixedFromName"] != "Pub me" || !reflect.DeepEqual(r["state"], p["state"]) {
			t.Fatalf("remix of a published session %v", r)
		}
		h.send(http.MethodPut, url(2)+"/api/sessions/"+rid, `{"state":`+htState(150)+`}`).wantStatus(http.StatusOK)
		h.send(http.MethodPatch, url(2)+"/api/sessions/"+rid, `{"name":"Mine"}`).wantStatus(http.StatusOK)
		// A socket on the published session is told it is read-only.
		if ws := htDial(t, url(1), pid); ws.snapshot["immutable"] != true {
			t.Fatalf("snapshot of a published session %v", ws.snapshot)
		}
	})

	t.Run("not found", func(t *testing.T) {
		h := h.on(t)
		for i := range 3 {
			h.send(http.MethodPost, url(i)+"/api/sessions/"+htMissing+"/remix", "").wantError(http.StatusNotFound, "Session not found")
			h.send(http.MethodPost, url(i)+"/api/sessions/"+htMissing+"/publish", "").wantError(http.StatusNotFound, "Session not found")
		}
	})
}

// TestHTTPDebugRoutes covers §1.3.7.
func TestHTTPDebugRoutes(t *testing.T) {
	c := htCluster(t, testcluster.Options{FirstIP: 201})
	h := newHT(t)
	url := func(i int) string { return c.Members[i%3].URL() }
	before := time.Now()
	id := h.create(url(0), `{"state":`+htState(100, htTrack("t1", "Kick"), `{"id":"t2","name":"Hat","sampleId":"hihat","steps":[true,true,false,true]}`)+`}`)
	remixed := h.remix(url(0), id)
	h.sync(c, id, remixed)

	roomKeys := []string{"sessionId", "connectedPlayers", "players", "playingPlayerIds", "playingCount", "trackCount", "tempo", "swing", "pendingKVSave", "invariants"}

	t.Run("live-debug", func(t *testing.T) {
		h := h.on(t)
		// No existence check: an unknown id gives a default room.
		h.get(url(1)+"/api/sessions/"+htMissing+"/live-debug").want(http.StatusOK,
			`{"sessionId":"`+htMissing+`","connectedPlayers":0,"players":[],"playingPlayerIds":[],"playingCount":0,"trackCount":0,"tempo":120,"swing":0,"pendingKVSave":false,"invariants":{"valid":true,"violations":[],"warnings":[]}}`)
		h.get(url(2)+"/api/sessions/"+id+"/live-debug").want(http.StatusOK,
			`{"sessionId":"`+id+`","connectedPlayers":0,"players":[],"playingPlayerIds":[],"playingCount":0,"trackCount":2,"tempo":100,"swing":10,"pendingKVSave":false,"invariants":{"valid":true,"violations":[],"warnings":[]}}`)

		ws := htDial(t, url(1), id)
		ws.send(`{"type":"play","seq":1,"ack":0}`)
		for i := range 3 {
			testcluster.Eventually(t, waitMid, func() error {
				m := h.get(url(i) + "/api/sessions/" + id + "/live-debug").wantStatus(http.StatusOK).obj()
				htKeys(t, "live-debug", m, roomKeys...)
				if m["playingCount"] != 1.0 {
					return fmt.Errorf("live-debug on %s: %v", url(i), m)
				}
				players := m["players"].([]any)
				if m["connectedPlayers"] != 1.0 || len(players) != 1 || !reflect.DeepEqual(m["playingPlayerIds"], []any{ws.playerID}) || m["trackCount"] != 2.0 {
					t.Fatalf("live-debug on %s: %v", url(i), m)
				}
				p := players[0].(map[string]any)
				htKeys(t, "player", p, "id", "connectedAt", "lastMessageAt", "messageCount", "color", "colorIndex", "animal", "name")
				if p["id"] != ws.playerID || !regexp.MustCompile(`^#[0-9A-F]{6}$`).MatchString(p["color"].(string)) || p["animal"] == "" {
					t.Fatalf("player %v", p)
				}
				htNowish(t, "connectedAt", htNum(t, p, "connectedAt"), before)
				inv := m["invariants"].(map[string]any)
				if inv["valid"] != true {
					t.Fatalf("invariants %v", inv)
				}
				return nil
			})
		}
	})

	t.Run("session", func(t *testing.T) {
		h := h.on(t)
		for i, sid := range []string{id, remixed} {
			r := h.get(url(i+1) + "/api/debug/session/" + sid).wantStatus(http.StatusOK)
			m := r.obj()
			htKeys(t, "debug session", m, "id", "exists", "createdAt", "updatedAt", "lastAccessedAt", "remixedFrom", "remixCount", "state", "sizeBytes")
			for _, k := range []string{"createdAt", "updatedAt", "lastAccessedAt"} {
				ts, err := time.Parse(time.RFC3339, m[k].(string))
				if err != nil || ts.Before(before.Add(-time.Second)) || ts.After(time.Now().Add(time.Second)) {
					t.Fatalf("%s = %v: want an ISO-8601 time of this test (%v)", k, m[k], err)
				}
			}
			if m["id"] != sid || m["exists"] != true || htNum(t, m, "sizeBytes") <= 0 {
				t.Fatalf("debug session %v", m)
			}
			if sid == id && (m["remixedFrom"] != nil || m["remixCount"] != 1.0) || sid == remixed && (m["remixedFrom"] != id || m["remixCount"] != 0.0) {
				t.Fatalf("debug session %v", m)
			}
			htEqualJSON(t, "debug state", []byte(htMarshal(t, m["state"])), `{"trackCount":2,"tempo":100,"swing":10,"version":1,"tracks":[`+
				`{"id":"t1","name":"Kick","sampleId":"kick","activeSteps":1,"stepCount":4},`+
				`{"id":"t2","name":"Hat","sampleId":"hihat","activeSteps":3,"stepCount":16}]}`)
			if !bytes.Contains(r.body, []byte("\n  \"")) {
				t.Errorf("debug session is not pretty-printed: %s", r.body)
			}
		}
		for i := range 3 {
			h.get(url(i)+"/api/debug/session/"+htMissing).want(http.StatusNotFound, `{"id":"`+htMissing+`","exists":false,"error":"Session not found"}`)
		}
	})

	t.Run("connections clock state-sync", func(t *testing.T) {
		h := h.on(t)
		sid := h.create(url(0), `{}`)
		h.sync(c, sid)
		for i := range 3 {
			h.get(url(i)+"/api/debug/session/"+sid+"/connections").want(http.StatusOK, `{"activeConnections":0,"players":[],"messageRate":"0/sec"}`)
			m := h.get(url(i) + "/api/debug/session/" + sid + "/clock").wantStatus(http.StatusOK).obj()
			htKeys(t, "clock", m, "serverTime", "connectedClients")
			htNowish(t, "serverTime", htNum(t, m, "serverTime"), before)
			if !reflect.DeepEqual(m["connectedClients"], []any{}) {
				t.Fatalf("clock %v: want connectedClients []", m)
			}
			h.get(url(i)+"/api/debug/session/"+sid+"/state-sync").want(http.StatusOK, `{"serverStateHash":"9cdc0372","clientHashes":[]}`)
			for _, sub := range []string{"connections", "clock", "state-sync"} {
				h.get(url(i)+"/api/debug/session/"+htMissing+"/"+sub).want(http.StatusNotFound, `{"id":"`+htMissing+`","exists":false,"error":"Session not found"}`)
			}
		}

		a := htDial(t, url(1), sid)
		b := htDial(t, url(1), sid)
		d := htDial(t, url(2), sid)
		a.send(`{"type":"state_hash","hash":"12345678"}`)
		a.next("state_mismatch")
		a.send(`{"type":"set_tempo","tempo":97.5,"seq":1,"ack":0}`)
		a.next("tempo_changed")
		want := map[int][]string{0: nil, 1: {a.playerID, b.playerID}, 2: {d.playerID}}
		for i := range 3 {
			testcluster.Eventually(t, waitMid, func() error {
				m := h.get(url(i) + "/api/debug/session/" + sid + "/connections").wantStatus(http.StatusOK).obj()
				htKeys(t, "connections", m, "activeConnections", "players", "messageRate")
				var ids []string
				for _, p := range m["players"].([]any) {
					pm := p.(map[string]any)
					htKeys(t, "connection", pm, "id", "connectedAt", "lastMessage", "messageCount")
					ids = append(ids, pm["id"].(string))
				}
				slices.Sort(ids)
				w := slices.Sorted(slices.Values(want[i]))
				if m["activeConnections"] != float64(len(w)) || !slices.Equal(ids, w) {
					return fmt.Errorf("connections on %s: %v, want players %v", url(i), m, w)
				}
				if !regexp.MustCompile(`^\d+/sec$`).MatchString(m["messageRate"].(string)) {
					t.Fatalf("messageRate %v", m["messageRate"])
				}
				return nil
			})
		}
		// The hash is that of the live state (§4.9).
		liveHash := fsm.HashString(`{"tracks":[],"tempo":97.5,"swing":0}`)
		for i := range 3 {
			testcluster.Eventually(t, waitMid, func() error {
				m := h.get(url(i) + "/api/debug/session/" + sid + "/state-sync").wantStatus(http.StatusOK).obj()
				if m["serverStateHash"] != liveHash {
					return fmt.Errorf("state-sync on %s: %v, want hash %s", url(i), m, liveHash)
				}
				hashes := m["clientHashes"].([]any)
				if i != 1 {
					if len(hashes) != 0 {
						t.Fatalf("state-sync on %s: %v", url(i), m)
					}
					return nil
				}
				if len(hashes) != 1 || hashes[0].(map[string]any)["playerId"] != a.playerID || hashes[0].(map[string]any)["hash"] != "12345678" {
					t.Fatalf("state-sync on %s: %v", url(i), m)
				}
				return nil
			})
		}
	})

	t.Run("state-sync vectors", func(t *testing.T) {
		h := h.on(t)
		// The test vectors of PROTOCOL.md §4.9, as stored states.
		locks := make([]string, 128)
		steps := make([]string, 128)
		for i := range 128 {
			locks[i], steps[i] = "null", "false"
		}
		steps[0], steps[4] = "true", "true"
		locks[0], locks[4] = `{"pitch":5,"volume":0.8}`, `{"volume":0.5,"pitch":-2}`
		for i, tt := range []struct{ state, hash string }{
			{`{"tracks":[],"tempo":120,"swing":0}`, "9cdc0372"},
			{`{"tracks":[{"id":"a","name":"A","sampleId":"snare","steps":[],"parameterLocks":[],"volume":0.5,"muted":false,"stepCount":4}],"tempo":60,"swing":100}`, "f5c8210b"},
			{`{"tracks":[{"id":"t1","name":"Café ♪ 🎵 <&>","sampleId":"synth:bass","steps":[true,false,true,false],"parameterLocks":[null,null,null,null],"volume":0.75,"muted":true,"soloed":true,"playbackMode":"gate","transpose":-3,"stepCount":4}],"tempo":97.5,"swing":33}`, "dc434a53"},
			{`{"tracks":[{"id":"track-1700000000000","name":"Kick","sampleId":"kick","steps":[` + strings.Join(steps, ",") + `],"parameterLocks":[` + strings.Join(locks, ",") + `],"volume":1,"muted":false,"playbackMode":"oneshot","transpose":0}],"tempo":120,"swing":0}`, "a6584345"},
		} {
			sid := h.create(url(i), `{"state":`+tt.state+`}`)
			h.get(url(i)+"/api/debug/session/"+sid+"/state-sync").want(http.StatusOK, `{"serverStateHash":"`+tt.hash+`","clientHashes":[]}`)
		}
	})

	t.Run("ws-logs", func(t *testing.T) {
		h := h.on(t)
		sid := h.create(url(0), `{}`)
		h.get(url(2)+"/api/debug/session/"+sid+"/ws-logs").want(http.StatusOK, `{"logs":[]}`)
		h.get(url(2)+"/api/debug/session/"+htMissing+"/ws-logs?last=5").want(http.StatusOK, `{"logs":[]}`)
		ws := htDial(t, url(2), sid)
		for i := range 3 {
			ws.send(fmt.Sprintf(`{"type":"set_swing","swing":%d,"seq":%d,"ack":0}`, 10+i, i+1))
			ws.next("swing_changed")
		}
		all := h.get(url(2) + "/api/debug/session/" + sid + "/ws-logs?last=100").wantStatus(http.StatusOK).obj()["logs"].([]any)
		if len(all) != 4 {
			t.Fatalf("ws-logs %v: want a connect and three messages", all)
		}
		for i, e := range all {
			m := e.(map[string]any)
			want := "message"
			if i == 0 {
				want = "connect"
			}
			if m["playerId"] != ws.playerID || m["event"] != want {
				t.Fatalf("ws-logs[%d] = %v", i, m)
			}
			if _, err := time.Parse(time.RFC3339, m["timestamp"].(string)); err != nil {
				t.Fatalf("ws-logs[%d] timestamp: %v", i, err)
			}
		}
		last := h.get(url(2) + "/api/debug/session/" + sid + "/ws-logs?last=2").wantStatus(http.StatusOK).obj()["logs"].([]any)
		if !reflect.DeepEqual(last, all[2:]) {
			t.Fatalf("ws-logs?last=2 = %v, want the last two of %v", last, all)
		}
		// Each node logs its own sockets.
		h.get(url(1)+"/api/debug/session/"+sid+"/ws-logs").want(http.StatusOK, `{"logs":[]}`)
		ws.close()
		testcluster.Eventually(t, waitMid, func() error {
			logs := h.get(url(2) + "/api/debug/session/" + sid + "/ws-logs").wantStatus(http.StatusOK).obj()["logs"].([]any)
			if len(logs) != 5 || logs[4].(map[string]any)["event"] != "disconnect" {
				return fmt.Errorf("ws-logs after close: %v", logs)
			}
			return nil
		})
	})

	t.Run("durable-object", func(t *testing.T) {
		h := h.on(t)
		for i := range 3 {
			h.get(url(i) + "/api/debug/durable-object/" + htMissing).wantStatus(http.StatusNotFound)
			m := h.get(url(i) + "/api/debug/durable-object/" + remixed).wantStatus(http.StatusOK).obj()
			htKeys(t, "durable-object", m, roomKeys...)
			if m["sessionId"] != remixed || m["trackCount"] != 2.0 || m["tempo"] != 100.0 || m["connectedPlayers"] != 0.0 {
				t.Fatalf("durable-object %v", m)
			}
		}
	})

	t.Run("logs", func(t *testing.T) {
		h := h.on(t)
		base := url(2)
		id := h.create(url(0), `{}`) // sessions no other subtest requested on node 2
		other := h.create(url(0), `{}`)
		const missing = "00000000-0000-4000-8000-00000000f00d"
		h.get(base + "/api/sessions/" + id)
		h.get(base + "/api/sessions/" + other)
		h.get(base + "/api/sessions/" + missing)
		h.send(http.MethodPatch, base+"/api/sessions/"+id, `{"name":"Logged"}`)
		h.get(base + "/api/sessions/" + other + "/live-debug")
		check := func(logs []any) []map[string]any {
			t.Helper()
			var out []map[string]any
			prev := time.Time{}
			for _, e := range logs {
				m := e.(map[string]any)
				for _, k := range []string{"timestamp", "requestId", "method", "path", "status"} {
					if _, ok := m[k]; !ok {
						t.Fatalf("log entry %v has no %s", m, k)
					}
				}
				ts, err := time.Parse(time.RFC3339, m["timestamp"].(string))
				if err != nil || ts.Before(prev) {
					t.Fatalf("log timestamp %v: %v (previous %v): want ISO-8601, oldest first", m["timestamp"], err, prev)
				}
				prev = ts
				if !regexp.MustCompile(`^[0-9a-f]{8}$`).MatchString(m["requestId"].(string)) {
					t.Fatalf("requestId %v", m["requestId"])
				}
				htNum(t, m, "status")
				out = append(out, m)
			}
			return out
		}
		mine := check(h.get(base + "/api/debug/logs?sessionId=" + id).wantStatus(http.StatusOK).obj()["logs"].([]any))
		if len(mine) != 2 {
			t.Fatalf("logs for %s: %v, want the GET and the PATCH", id, mine)
		}
		for _, m := range mine {
			if m["sessionId"] != id || !strings.Contains(m["path"].(string), id) {
				t.Fatalf("logs for %s hold %v", id, m)
			}
		}
		if mine[0]["method"] != "GET" || mine[0]["path"] != "/api/sessions/"+id || mine[0]["status"] != 200.0 ||
			mine[1]["method"] != "PATCH" || mine[1]["status"] != 200.0 {
			t.Fatalf("logs for %s: %v", id, mine)
		}
		if theirs := check(h.get(base + "/api/debug/logs?sessionId=" + other).wantStatus(http.StatusOK).obj()["logs"].([]any)); len(theirs) != 2 || theirs[1]["path"] != "/api/sessions/"+other+"/live-debug" {
			t.Fatalf("logs for %s: %v", other, theirs)
		}
		if logs := check(h.get(base + "/api/debug/logs?sessionId=" + missing).wantStatus(http.StatusOK).obj()["logs"].([]any)); len(logs) != 1 || logs[0]["status"] != 404.0 {
			t.Fatalf("logs for the missing session: %v", logs)
		}
		h.get(base+"/api/debug/logs?sessionId=00000000-0000-4000-8000-00000000beef").want(http.StatusOK, `{"logs":[]}`)
		// last=N bounds the answer; the default is 50.
		for range 55 {
			h.get(base + "/api/metrics")
		}
		if logs := check(h.get(base + "/api/debug/logs?last=3").wantStatus(http.StatusOK).obj()["logs"].([]any)); len(logs) != 3 || logs[2]["path"] != "/api/metrics" {
			t.Fatalf("logs?last=3: %v", logs)
		}
		if logs := check(h.get(base + "/api/debug/logs").wantStatus(http.StatusOK).obj()["logs"].([]any)); len(logs) != 50 {
			t.Fatalf("logs: %d entries, want the default 50", len(logs))
		}
	})

	t.Run("metrics", func(t *testing.T) {
		h := h.on(t)
		for i := range 3 {
			m := h.get(url(i) + "/api/metrics").wantStatus(http.StatusOK).obj()
			sessions, ok := m["sessions"].(map[string]any)
			if !ok {
				t.Fatalf("metrics %v", m)
			}
			for _, k := range []string{"total", "createdToday", "accessedToday"} {
				htNum(t, sessions, k)
			}
			last5, ok := m["requests"].(map[string]any)["last5Minutes"].(map[string]any)
			if !ok {
				t.Fatalf("metrics %v", m)
			}
			for _, k := range []string{"creates", "reads", "updates", "remixes"} {
				htNum(t, last5, k)
			}
			if htNum(t, sessions, "total") < 7 {
				t.Fatalf("metrics on %s: %v, want at least the 7 sessions of this test", url(i), m)
			}
		}
		// Node 0 took every create and the remix of this test.
		m := h.get(url(0) + "/api/metrics").wantStatus(http.StatusOK).obj()
		last5 := m["requests"].(map[string]any)["last5Minutes"].(map[string]any)
		if htNum(t, last5, "creates") < 6 || htNum(t, last5, "remixes") < 1 || htNum(t, m["sessions"].(map[string]any), "createdToday") < 6 {
			t.Fatalf("metrics on node 0: %v", m)
		}
	})
}

// TestHTTPNoLeader: a node cut off from the leader answers writes and
// linearizable reads with 503 and Retry-After (DESIGN.md §5), and serves
// again once healed.
func TestHTTPNoLeader(t *testing.T) {
	c := htCluster(t, testcluster.Options{FirstIP: 211, Configure: func(_ int, cfg *node.Config) {
		cfg.NoLeaderTimeout = time.Second
		cfg.RetryAfter = 3 * time.Second
	}})
	h := newHT(t)
	leader := c.WaitLeader(waitMid)
	f := (leader + 1) % 3
	base := c.Members[f].URL()
	id := h.create(base, `{"state":`+htState(120)+`}`)
	h.session(base, id)

	c.Isolate(f)
	unavailable := func(r htResp) {
		t.Helper()
		r.wantStatus(http.StatusServiceUnavailable)
		if r.header.Get("Retry-After") != "3" {
			t.Fatalf("%s: Retry-After %q, want 3", r.what, r.header.Get("Retry-After"))
		}
		if _, ok := r.obj()["error"].(string); !ok {
			t.Fatalf("%s: body %s", r.what, r.body)
		}
	}
	// Each request waits NoLeaderTimeout for a leader: send them together.
	reqs := []struct{ method, path, body string }{
		{http.MethodPost, "/api/sessions", `{}`},
		{http.MethodPut, "/api/sessions/" + id, `{"state":` + htState(130) + `}`},
		{http.MethodPatch, "/api/sessions/" + id, `{"name":"x"}`},
		{http.MethodPost, "/api/sessions/" + id + "/remix", ""},
		{http.MethodPost, "/api/sessions/" + id + "/publish", ""},
		{http.MethodGet, "/api/sessions/" + id, ""}, // linearizable: the read barrier needs a leader
	}
	type result struct {
		r   htResp
		err error
	}
	results := make([]chan result, len(reqs))
	for i, rq := range reqs {
		results[i] = make(chan result, 1)
		go func() {
			r, err := h.try(rq.method, base+rq.path, strings.NewReader(rq.body), "Content-Type", "application/json")
			results[i] <- result{r, err}
		}()
	}
	for _, ch := range results {
		res := <-ch
		if res.err != nil {
			t.Fatal(res.err)
		}
		unavailable(res.r)
	}
	// A stale read is served from local state.
	if st := h.get(base + "/api/sessions/" + id + "?stale=1").wantStatus(http.StatusOK).obj()["state"].(map[string]any); st["tempo"] != 120.0 {
		t.Fatalf("stale read %v", st)
	}
	// The rest of the cluster carries on.
	other := c.Members[(f+1)%3].URL()
	id2 := h.create(other, `{}`)
	h.send(http.MethodPut, other+"/api/sessions/"+id, `{"state":`+htState(140)+`}`).wantStatus(http.StatusOK)

	c.Heal()
	testcluster.Eventually(t, waitLong, func() error {
		if r := h.send(http.MethodPost, base+"/api/sessions", `{}`); r.status != http.StatusCreated {
			return fmt.Errorf("create after heal: %d %s", r.status, r.body)
		}
		return nil
	})
	if st := h.state(base, id); st["tempo"] != 140.0 {
		t.Fatalf("after heal: %v", st)
	}
	h.session(base, id2)
	h.send(http.MethodPut, base+"/api/sessions/"+id, `{"state":`+htState(150)+`}`).wantStatus(http.StatusOK)
	if st := h.state(other, id); st["tempo"] != 150.0 {
		t.Fatalf("after heal: %v", st)
	}
}

// TestHTTPStatic covers §1.5 and §9: the built-in web client on nodes 0 and
// 2, and a static directory (--static-dir) on node 1.
func TestHTTPStatic(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"index.html":       `<!doctype html><title>fake keyboardia</title><div id="root"></div>`,
		"assets/x.js":      `console.log("fake asset")`,
		"keyboardia.svg":   `<svg xmlns="http://www.w3.org/2000/svg"></svg>`,
		"instruments/a.js": `1`,
	} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := htCluster(t, testcluster.Options{FirstIP: 221, ConfigureAPI: func(i int, cfg *transport.APIConfig) {
		if i == 1 {
			cfg.Static = os.DirFS(dir)
		}
	}})
	h := newHT(t)
	id := h.create(c.Members[0].URL(), `{}`)

	page := func(r htResp, contains, ctype string) {
		t.Helper()
		r.wantStatus(http.StatusOK)
		if !strings.Contains(string(r.body), contains) {
			t.Fatalf("%s: body does not contain %q: %.200s", r.what, contains, r.body)
		}
		if ct := r.header.Get("Content-Type"); !strings.Contains(ct, ctype) {
			t.Fatalf("%s: Content-Type %q, want %s", r.what, ct, ctype)
		}
	}
	for _, i := range []int{0, 2} {
		base := c.Members[i].URL()
		page(h.get(base+"/"), `id="grid"`, "text/html")
		page(h.get(base+"/s/"+id), `id="grid"`, "text/html")
		page(h.get(base+"/s/"+htMissing), `id="grid"`, "text/html") // the client reports the 404
		page(h.get(base+"/app.js"), "", "javascript")
		page(h.get(base+"/style.css"), "", "text/css")
		if r := h.do(http.MethodHead, base+"/", nil).wantStatus(http.StatusOK); len(r.body) != 0 {
			t.Fatalf("HEAD /: body %q", r.body)
		}
		for _, p := range []string{"/nope.js", "/assets/x.js", "/s/abc", "/s/" + id + "/x", "/s/" + strings.ToUpper(id), "/s/", "/web/app.js", "/apix"} {
			h.get(base + p).wantStatus(http.StatusNotFound)
		}
		h.do(http.MethodPost, base+"/", nil).wantStatus(http.StatusNotFound)
	}

	base := c.Members[1].URL()
	page(h.get(base+"/"), "fake keyboardia", "text/html")
	page(h.get(base+"/s/"+id), "fake keyboardia", "text/html")
	page(h.get(base+"/assets/x.js"), "fake asset", "javascript")
	page(h.get(base+"/keyboardia.svg"), "<svg", "image/svg+xml")
	for _, p := range []string{"/app.js", "/style.css", "/assets/nope.js", "/assets", "/assets/", "/instruments", "/s/abc"} {
		h.get(base + p).wantStatus(http.StatusNotFound)
	}
	// The API is unaffected.
	if s := h.session(base, id); s["id"] != id {
		t.Fatalf("session %v", s)
	}
}
