package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf16"

	"github.com/coder/websocket"
)

var unitT0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func TestCreateLimiterWindows(t *testing.T) {
	l := newCreateLimiter(3)
	allow := func(ip string, at time.Duration) (int, bool) { return l.allow(ip, unitT0.Add(at)) }
	for i := range 3 {
		if retry, ok := allow("10.0.0.1", time.Duration(i)*time.Second); !ok {
			t.Fatalf("create %d refused (retry %d)", i+1, retry)
		}
	}
	// The window is fixed and opens at the first request: the 4th create,
	// 3 s in, waits the 57 s left.
	if retry, ok := allow("10.0.0.1", 3*time.Second); ok || retry != 57 {
		t.Fatalf("4th create: ok %v retry %d, want refused with 57", ok, retry)
	}
	// Other clients have their own windows.
	if _, ok := allow("10.0.0.2", 3*time.Second); !ok {
		t.Fatal("another IP was limited")
	}
	// Still refused at the end of the window, with at least 1 s to wait.
	for at, want := range map[time.Duration]int{
		10 * time.Second: 50, 30500 * time.Millisecond: 30, 59 * time.Second: 1,
		59999 * time.Millisecond: 1, time.Minute - time.Nanosecond: 1,
	} {
		if retry, ok := allow("10.0.0.1", at); ok || retry != want {
			t.Errorf("at %v: ok %v retry %d, want refused with %d", at, ok, retry, want)
		}
	}
	// A minute after the first request a new window opens, with the full allowance.
	for i := range 3 {
		if retry, ok := allow("10.0.0.1", time.Minute+time.Duration(i)*time.Millisecond); !ok {
			t.Fatalf("new window, create %d refused (retry %d)", i+1, retry)
		}
	}
	if retry, ok := allow("10.0.0.1", time.Minute+time.Second); ok || retry != 59 {
		t.Fatalf("new window, 4th create: ok %v retry %d, want refused with 59", ok, retry)
	}

	for _, limit := range []int{0, -1} {
		off := newCreateLimiter(limit)
		for i := range 1000 {
			if _, ok := off.allow("10.0.0.1", unitT0); !ok {
				t.Fatalf("limit %d: create %d refused", limit, i)
			}
		}
		if len(off.win) != 0 {
			t.Fatalf("limit %d: the disabled limiter keeps state", limit)
		}
	}
}

func TestCreateLimiterBounded(t *testing.T) {
	l := newCreateLimiter(1)
	for i := range 100_002 {
		l.allow(fmt.Sprintf("ip%d", i), unitT0)
		if len(l.win) > 100_001 {
			t.Fatalf("after %d clients the limiter holds %d windows", i+1, len(l.win))
		}
	}
}

func TestCountersRollover(t *testing.T) {
	c := newCounters()
	night := time.Date(2025, 3, 1, 23, 58, 30, 0, time.UTC)
	c.add(night, "creates")
	c.add(night, "creates")
	c.add(night, "reads")
	c.accessed(night, "a")
	c.accessed(night, "a")
	c.accessed(night, "b")
	if created, accessed := c.today(night); created != 2 || accessed != 2 {
		t.Fatalf("today: created %d accessed %d, want 2 and 2 (distinct sessions)", created, accessed)
	}
	// The same instant in another zone is the same UTC day.
	if created, _ := c.today(night.In(time.FixedZone("+14", 14*3600))); created != 2 {
		t.Fatalf("today in +14: created %d, want 2 (days are UTC)", created)
	}
	// Past UTC midnight the daily counts restart; the 5-minute window does not.
	morning := night.Add(2 * time.Minute)
	if created, accessed := c.today(morning); created != 0 || accessed != 0 {
		t.Fatalf("after midnight: created %d accessed %d, want 0 and 0", created, accessed)
	}
	if got := c.last5(morning); got["creates"] != 2 || got["reads"] != 1 {
		t.Fatalf("last5 after midnight %v", got)
	}
	c.add(morning, "creates")
	c.accessed(morning, "a")
	if created, accessed := c.today(morning); created != 1 || accessed != 1 {
		t.Fatalf("new day: created %d accessed %d, want 1 and 1", created, accessed)
	}
	// The window covers the current minute and the four before it.
	want := map[string]int{"creates": 3, "reads": 1, "updates": 0, "remixes": 0, "publishes": 0}
	if got := c.last5(night.Add(4 * time.Minute)); !reflect.DeepEqual(got, want) {
		t.Fatalf("last5 4 min on: %v, want %v", got, want)
	}
	if got := c.last5(night.Add(5*time.Minute + 30*time.Second)); got["creates"] != 1 || got["reads"] != 0 {
		t.Fatalf("last5 5 min on: %v, want only the create of the morning", got)
	}
	if got := c.last5(night.Add(time.Hour)); !reflect.DeepEqual(got, map[string]int{"creates": 0, "reads": 0, "updates": 0, "remixes": 0, "publishes": 0}) {
		t.Fatalf("last5 an hour on: %v, want every key at 0", got)
	}
	// Old minutes are dropped when a new one starts.
	c.add(night.Add(time.Hour), "updates")
	if len(c.minutes) != 1 {
		t.Fatalf("%d minutes kept, want 1", len(c.minutes))
	}
}

func unitLog(l *requestLogs, at time.Time, method, path string, status int) {
	l.add(at, httptest.NewRequest(method, path, nil), &recorder{status: status}, 3*time.Millisecond)
}

func TestRequestLogsBounds(t *testing.T) {
	const s1 = "11111111-1111-4111-8111-111111111111"
	const s2 = "22222222-2222-4222-8222-222222222222"
	l := newRequestLogs()
	for i := range 150 {
		unitLog(l, unitT0.Add(time.Duration(i)*time.Millisecond), "GET", "/api/sessions/"+s1, 200)
	}
	for i := range 100 {
		unitLog(l, unitT0.Add(time.Second+time.Duration(i)*time.Millisecond), "PATCH", "/api/debug/session/"+s2+"/clock", 404)
	}
	now := unitT0.Add(time.Minute)
	all := l.last("", 1000, now)
	if len(all) != 200 {
		t.Fatalf("%d entries kept overall, want 200", len(all))
	}
	// Oldest first: the 50 oldest fell out.
	if all[0].at != unitT0.Add(50*time.Millisecond) || all[199].SessionID != s2 {
		t.Fatalf("global log runs from %v (%s) to %s", all[0].at, all[0].SessionID, all[199].SessionID)
	}
	one := l.last(s1, 1000, now)
	if len(one) != 100 || one[0].at != unitT0.Add(50*time.Millisecond) || one[99].at != unitT0.Add(149*time.Millisecond) {
		t.Fatalf("%d entries for %s, want its last 100", len(one), s1)
	}
	for _, e := range one {
		if e.SessionID != s1 || e.Method != "GET" || e.Status != 200 || e.Path != "/api/sessions/"+s1 {
			t.Fatalf("entry %+v", e)
		}
	}
	if two := l.last(s2, 1000, now); len(two) != 100 || two[0].Status != 404 || two[0].Path != "/api/debug/session/"+s2+"/clock" {
		t.Fatalf("%d entries for %s: %+v", len(two), s2, two)
	}
	// n bounds the answer and keeps the newest.
	if got := l.last(s1, 3, now); len(got) != 3 || got[2].at != unitT0.Add(149*time.Millisecond) {
		t.Fatalf("last 3: %+v", got)
	}
	if got := l.last("33333333-3333-4333-8333-333333333333", 10, now); got == nil || len(got) != 0 {
		t.Fatalf("unknown session: %#v, want an empty, non-nil list", got)
	}
	// Entries expire after an hour.
	if got := l.last(s1, 1000, unitT0.Add(time.Hour+100*time.Millisecond)); len(got) != 50 {
		t.Fatalf("an hour on: %d entries of %s, want the 50 at most an hour old", len(got), s1)
	}
	if got := l.last("", 1000, unitT0.Add(2*time.Hour)); len(got) != 0 {
		t.Fatalf("two hours on: %d entries", len(got))
	}

	// Field formats.
	e := all[len(all)-1]
	if !regexp.MustCompile(`^[0-9a-f]{8}$`).MatchString(e.RequestID) {
		t.Fatalf("requestId %q", e.RequestID)
	}
	if ts, err := time.Parse(time.RFC3339, e.Timestamp); err != nil || !ts.Equal(e.at) {
		t.Fatalf("timestamp %q: %v", e.Timestamp, err)
	}
	j, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"timestamp", "requestId", "method", "path", "sessionId", "status", "responseTime"} {
		if _, ok := m[k]; !ok {
			t.Fatalf("log entry %s has no %s", j, k)
		}
	}

	// The session id is the first 36-character [a-f0-9-] run of the path.
	for path, want := range map[string]string{
		"/api/metrics":                   "",
		"/api/sessions":                  "",
		"/api/sessions/" + s1 + "/remix": s1,
		"/api/sessions/ABCDEF00-0000-4000-8000-0000000000AB": "",
		"/api/debug/durable-object/" + s2:                    s2,
	} {
		l := newRequestLogs()
		unitLog(l, unitT0, "GET", path, 200)
		if got := l.last("", 1, unitT0)[0].SessionID; got != want {
			t.Errorf("%s: sessionId %q, want %q", path, got, want)
		}
	}

	// Sessions whose logs have all expired are forgotten.
	for i := range 1000 {
		unitLog(l, unitT0.Add(2*time.Hour+time.Duration(i)*time.Millisecond), "GET", "/api/metrics", 200)
	}
	l.mu.Lock()
	n := len(l.per)
	l.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d sessions with expired logs still kept", n)
	}
}

func TestWSLogsRing(t *testing.T) {
	l := newWSLogs()
	for i := range wsLogsKept + 5 {
		l.add(unitT0.Add(time.Duration(i)*time.Millisecond), "s", "p", "message", fmt.Sprint(i))
	}
	l.add(unitT0.Add(2*time.Second), "other", "q", "connect", "")
	got := l.last("s", 10_000)
	if len(got) != wsLogsKept-1 || got[0].Detail != "6" || got[len(got)-1].Detail != fmt.Sprint(wsLogsKept+4) {
		t.Fatalf("%d entries from %s to %s", len(got), got[0].Detail, got[len(got)-1].Detail)
	}
	if got := l.last("s", 2); len(got) != 2 || got[1].Detail != fmt.Sprint(wsLogsKept+4) {
		t.Fatalf("last 2: %+v", got)
	}
	if got := l.last("none", 5); got == nil || len(got) != 0 {
		t.Fatalf("unknown session: %#v", got)
	}
	// rate counts the messages of the last second.
	if got := l.rate("s", unitT0.Add(1500*time.Millisecond)); got != wsLogsKept+5-500 {
		t.Fatalf("rate %d", got)
	}
	if got := l.rate("other", unitT0.Add(2*time.Second)); got != 0 {
		t.Fatalf("rate of connects %d, want 0", got)
	}
}

func TestCloseCodeNever1000(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want websocket.StatusCode
	}{
		{ErrOverloaded, 1013},
		{fmt.Errorf("queue: %w", ErrOverloaded), 1013},
		{ErrUnavailable, 1013},
		{ErrRestarting, 1012},
		{fmt.Errorf("x: %w", ErrRestarting), 1012},
		{ErrGone, 4404},
		{errRateLimited, 1008},
		{context.Canceled, 1013},
		{context.DeadlineExceeded, 1013},
		{nil, 1011},
		{errors.New("boom"), 1011},
		{io.EOF, 1011},
		{ErrNotFound, 1011},
		{ErrFull, 1011},
		{websocket.CloseError{Code: websocket.StatusNormalClosure}, 1011},
	} {
		code, reason := closeCode(tt.err)
		if code != tt.want || reason == "" {
			t.Errorf("closeCode(%v) = %d %q, want %d and a reason", tt.err, code, reason, tt.want)
		}
		if code == websocket.StatusNormalClosure {
			t.Errorf("closeCode(%v) = 1000: the client would not reconnect", tt.err)
		}
	}
}

// membersOnly is a Backend that only knows the cluster's members.
type membersOnly struct {
	Backend
	members []string
}

func (m membersOnly) Members() []string { return m.members }

func TestOriginAllowed(t *testing.T) {
	req := func(host, origin string) *http.Request {
		r := httptest.NewRequest("GET", "http://"+host+"/api/sessions/x/ws", nil)
		r.Host = host
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		return r
	}
	def := NewAPI(APIConfig{Backend: membersOnly{members: []string{"10.0.0.2:8082", "node3.example:8083"}}})
	for _, tt := range []struct {
		host, origin string
		want         bool
	}{
		{"chorus.example", "", true}, // not a browser
		{"chorus.example", "https://chorus.example", true},
		{"chorus.example", "http://CHORUS.example", true},
		{"chorus.example:8081", "http://chorus.example:8081", true},
		{"chorus.example:8081", "http://chorus.example", false},
		{"chorus.example", "http://chorus.example:8081", false},
		{"chorus.example", "https://evil.example", false},
		{"chorus.example", "https://chorus.example.evil.example", false},
		{"lb.example", "http://10.0.0.2:8082", true}, // a member's own page
		{"lb.example", "http://node3.example:8083", true},
		{"lb.example", "http://10.0.0.2:9999", false},
		{"chorus.example", "null", false},
		{"chorus.example", "chorus.example", false},
		{"chorus.example", "://", false},
	} {
		if got := def.originAllowed(req(tt.host, tt.origin)); got != tt.want {
			t.Errorf("default list: Host %s Origin %q: %v, want %v", tt.host, tt.origin, got, tt.want)
		}
	}

	listed := NewAPI(APIConfig{Backend: membersOnly{members: []string{"10.0.0.2:8082"}},
		AllowedOrigins: []string{"https://app.example", "studio.example:3000"}})
	for _, tt := range []struct {
		origin string
		want   bool
	}{
		{"", true},
		{"https://app.example", true},
		{"HTTPS://APP.example", true},
		{"http://app.example", false},
		{"https://app.example:444", false},
		{"http://studio.example:3000", true}, // a bare host allows either scheme
		{"https://studio.example:3000", true},
		{"https://studio.example", false},
		{"http://chorus.example", false}, // with a list, the own host is not implied
		{"http://10.0.0.2:8082", false},  // nor are the members
	} {
		if got := listed.originAllowed(req("chorus.example", tt.origin)); got != tt.want {
			t.Errorf("list: Origin %q: %v, want %v", tt.origin, got, tt.want)
		}
	}

	star := NewAPI(APIConfig{Backend: membersOnly{}, AllowedOrigins: []string{"*"}})
	for _, o := range []string{"", "https://anything.example", "http://127.0.0.1:1234"} {
		if !star.originAllowed(req("chorus.example", o)) {
			t.Errorf(`"*": Origin %q refused`, o)
		}
	}
}

func TestUTF16Len(t *testing.T) {
	for s, want := range map[string]int{
		"": 0, "ping": 4, "é": 1, "♪": 1, "🎵": 2, "Café ♪ 🎵 <&>": 13,
		strings.Repeat("😀", 1000): 2000, "a\u200db": 3, "\U0010FFFF": 2,
		"\xff\xfe": 2, // invalid bytes count one unit each (U+FFFD)
	} {
		if got := utf16Len([]byte(s)); got != want {
			t.Errorf("utf16Len(%q) = %d, want %d", s, got, want)
		}
		if utf8Valid := strings.ToValidUTF8(s, "?") == s; utf8Valid {
			if js := len(utf16.Encode([]rune(s))); js != want {
				t.Errorf("%q: JavaScript length %d, table says %d", s, js, want)
			}
		}
	}
}

func TestTokenBucket(t *testing.T) {
	b := tokenBucket{rate: 10, burst: 20, tokens: 20, last: unitT0}
	take := func(at time.Duration, n int) int {
		ok := 0
		for range n {
			if b.take(unitT0.Add(at)) {
				ok++
			}
		}
		return ok
	}
	if got := take(0, 25); got != 20 {
		t.Fatalf("burst: %d of 25 taken, want 20", got)
	}
	if got := take(100*time.Millisecond, 5); got != 1 {
		t.Fatalf("after 100 ms at 10/s: %d taken, want 1", got)
	}
	if got := take(350*time.Millisecond, 5); got != 2 {
		t.Fatalf("after 250 ms more: %d taken, want 2", got)
	}
	// A long idle period refills up to the burst, not beyond.
	if got := take(time.Hour, 100); got != 20 {
		t.Fatalf("after an hour: %d taken, want the burst of 20", got)
	}
	// Sustained, the rate holds: 10 per second (give or take the float
	// rounding of 0.1-token steps).
	total := 0
	for i := 1; i <= 1000; i++ {
		total += take(time.Hour+time.Duration(i)*10*time.Millisecond, 1)
	}
	if total < 99 || total > 100 {
		t.Fatalf("ten seconds at 100/s: %d taken, want 100", total)
	}
}

// failing is a Backend whose calls fail with err.
type failing struct {
	Backend
	err error
}

func (f failing) CreateSession(context.Context, json.RawMessage, json.RawMessage) (string, error) {
	return "", f.err
}
func (f failing) GetSession(context.Context, string, bool) ([]byte, error) { return nil, f.err }
func (f failing) Immutable(string) (bool, bool)                            { return false, true }
func (f failing) ReplaceState(context.Context, string, json.RawMessage) (int64, error) {
	return 0, f.err
}
func (f failing) Rename(context.Context, string, json.RawMessage) ([]byte, error) { return nil, f.err }
func (f failing) Remix(context.Context, string) (string, error)                   { return "", f.err }
func (f failing) Publish(context.Context, string) (string, error)                 { return "", f.err }

// hint is an unavailability error that says when to retry.
type hint time.Duration

func (h hint) Error() string                 { return "no leader" }
func (h hint) Is(target error) bool          { return target == ErrUnavailable }
func (h hint) RetryAfterHint() time.Duration { return time.Duration(h) }

// TestAPIErrorMapping: backend errors become the statuses and bodies of
// PROTOCOL.md §1.1 and DESIGN.md §5, whatever the route.
func TestAPIErrorMapping(t *testing.T) {
	const id = "11111111-1111-4111-8111-111111111111"
	routes := []struct{ method, path, body, op string }{
		{"POST", "/api/sessions", `{}`, "create session"},
		{"GET", "/api/sessions/" + id, ``, "read session"},
		{"PUT", "/api/sessions/" + id, `{"state":{}}`, "update session"},
		{"PATCH", "/api/sessions/" + id, `{"name":"x"}`, "update session name"},
		{"POST", "/api/sessions/" + id + "/remix", ``, "remix session"},
		{"POST", "/api/sessions/" + id + "/publish", ``, "publish session"},
	}
	for _, tt := range []struct {
		name   string
		err    error
		status int
		body   string
		retry  string
	}{
		{"not found", fmt.Errorf("x: %w", ErrNotFound), 404, `{"error":"Session not found"}`, ""},
		{"validation", &ValidationError{Details: []string{"a", "b"}}, 400, `{"error":"Validation failed","details":["a","b"]}`, ""},
		{"bad request", ErrBadRequest, 400, `{"error":"Invalid request body"}`, ""},
		{"no leader", hint(2500 * time.Millisecond), 503, "", "3"},
		{"no leader, short hint", hint(100 * time.Millisecond), 503, "", "1"},
		{"unavailable", ErrUnavailable, 503, "", "2"},
		{"deadline", context.DeadlineExceeded, 503, "", "2"},
		{"outcome unknown", fmt.Errorf("rename too_old: %w", ErrOutcomeUnknown), 503,
			`{"error":"Service temporarily unavailable","message":"The request could not be confirmed and may or may not have taken effect. Check the session, then try again.","retryAfter":1}`, "1"},
		{"other", errors.New("disk on fire"), 500, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			api := NewAPI(APIConfig{Backend: failing{err: tt.err}})
			for _, rt := range routes {
				rec := httptest.NewRecorder()
				req := httptest.NewRequest(rt.method, rt.path, strings.NewReader(rt.body))
				req.Header.Set("Content-Type", "application/json")
				api.ServeHTTP(rec, req)
				want := tt.body
				switch tt.status {
				case 500:
					want = `{"error":"Failed to ` + rt.op + `"}`
				case 503:
					if want == "" {
						want = `{"error":"Service temporarily unavailable","message":"The cluster has no leader right now. Please try again shortly.","retryAfter":` + tt.retry + `}`
					}
				}
				if rec.Code != tt.status || rec.Header().Get("Retry-After") != tt.retry {
					t.Errorf("%s %s: %d Retry-After %q, want %d %q", rt.method, rt.path, rec.Code, rec.Header().Get("Retry-After"), tt.status, tt.retry)
				}
				var got, w any
				if json.Unmarshal(rec.Body.Bytes(), &got) != nil || json.Unmarshal([]byte(want), &w) != nil || !reflect.DeepEqual(got, w) {
					t.Errorf("%s %s: body %s, want %s", rt.method, rt.path, rec.Body, want)
				}
				if rec.Header().Get("Access-Control-Allow-Origin") != "*" {
					t.Errorf("%s %s: no CORS headers", rt.method, rt.path)
				}
			}
		})
	}
	// A publish that commits after the local immutable check still answers 403.
	for _, rt := range routes[2:4] {
		rec := httptest.NewRecorder()
		NewAPI(APIConfig{Backend: failing{err: ErrPublished}}).ServeHTTP(rec, httptest.NewRequest(rt.method, rt.path, strings.NewReader(rt.body)))
		if rec.Code != 403 || !strings.Contains(rec.Body.String(), `"immutable":true`) {
			t.Errorf("%s after a concurrent publish: %d %s", rt.method, rec.Code, rec.Body)
		}
	}
}
