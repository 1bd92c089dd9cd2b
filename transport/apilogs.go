package transport

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// Bounds of the in-memory debug records (PROTOCOL.md §1.3.7): request logs
// kept for an hour, the last 200 overall and the last 100 per session.
const (
	logsKept       = 200
	logsPerSession = 100
	logsMaxAge     = time.Hour
	wsLogsKept     = 1000
)

// RequestLog is one entry of /api/debug/logs.
type RequestLog struct {
	Timestamp    string `json:"timestamp"`
	RequestID    string `json:"requestId"`
	Method       string `json:"method"`
	Path         string `json:"path"`
	SessionID    string `json:"sessionId,omitempty"`
	Status       int    `json:"status"`
	ResponseTime int64  `json:"responseTime"`
	at           time.Time
}

type requestLogs struct {
	mu   sync.Mutex // guards all, per
	all  []RequestLog
	per  map[string][]RequestLog
	seen int
}

func newRequestLogs() *requestLogs { return &requestLogs{per: map[string][]RequestLog{}} }

func requestID() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

func (l *requestLogs) add(now time.Time, r *http.Request, rec *recorder, took time.Duration) {
	e := RequestLog{
		Timestamp: now.UTC().Format(time.RFC3339Nano), RequestID: requestID(),
		Method: r.Method, Path: r.URL.Path, SessionID: idRun.FindString(r.URL.Path),
		Status: rec.status, ResponseTime: took.Milliseconds(), at: now,
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, e)
	if len(l.all) > logsKept {
		l.all = l.all[len(l.all)-logsKept:]
	}
	if e.SessionID != "" {
		s := append(l.per[e.SessionID], e)
		if len(s) > logsPerSession {
			s = s[len(s)-logsPerSession:]
		}
		l.per[e.SessionID] = s
	}
	l.seen++
	if l.seen%1000 == 0 { // drop sessions whose logs have all expired
		for id, s := range l.per {
			if now.Sub(s[len(s)-1].at) > logsMaxAge {
				delete(l.per, id)
			}
		}
	}
}

// last returns at most n entries, oldest first, younger than an hour.
func (l *requestLogs) last(session string, n int, now time.Time) []RequestLog {
	l.mu.Lock()
	defer l.mu.Unlock()
	src := l.all
	if session != "" {
		src = l.per[session]
	}
	out := []RequestLog{}
	for _, e := range src {
		if now.Sub(e.at) <= logsMaxAge {
			out = append(out, e)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// WSLog is one entry of /api/debug/session/{id}/ws-logs.
type WSLog struct {
	Timestamp string `json:"timestamp"`
	PlayerID  string `json:"playerId"`
	Event     string `json:"event"` // connect, message, disconnect
	Detail    string `json:"detail,omitempty"`
	session   string
	at        time.Time
}

type wsLogs struct {
	mu   sync.Mutex // guards buf, next
	buf  []WSLog
	next int
}

func newWSLogs() *wsLogs { return &wsLogs{} }

func (l *wsLogs) add(now time.Time, session, player, event, detail string) {
	e := WSLog{Timestamp: now.UTC().Format(time.RFC3339Nano), PlayerID: player, Event: event, Detail: detail, session: session, at: now}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) < wsLogsKept {
		l.buf = append(l.buf, e)
		return
	}
	l.buf[l.next] = e
	l.next = (l.next + 1) % wsLogsKept
}

func (l *wsLogs) each(fn func(WSLog)) {
	for i := range l.buf {
		fn(l.buf[(l.next+i)%len(l.buf)])
	}
}

func (l *wsLogs) last(session string, n int) []WSLog {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := []WSLog{}
	l.each(func(e WSLog) {
		if e.session == session {
			out = append(out, e)
		}
	})
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// rate is the session's messages in the last second.
func (l *wsLogs) rate(session string, now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	l.each(func(e WSLog) {
		if e.session == session && e.Event == "message" && now.Sub(e.at) <= time.Second {
			n++
		}
	})
	return n
}

// clientHashes remembers the last state_hash each player reported.
type clientHashes struct {
	mu sync.Mutex // guards m
	m  map[string]map[string]json.RawMessage
}

func newClientHashes() *clientHashes {
	return &clientHashes{m: map[string]map[string]json.RawMessage{}}
}

func (c *clientHashes) add(session, player, hash string, now time.Time) {
	j, _ := json.Marshal(map[string]any{"playerId": player, "hash": hash, "at": now.UnixMilli()}) // plain values
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[session] == nil {
		if len(c.m) > 10000 {
			c.m = map[string]map[string]json.RawMessage{} // bounded: start over
		}
		c.m[session] = map[string]json.RawMessage{}
	}
	if len(c.m[session]) < 64 {
		c.m[session][player] = j
	}
}

func (c *clientHashes) list(session string) []json.RawMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []json.RawMessage{}
	for _, j := range c.m[session] {
		out = append(out, j)
	}
	return out
}

// createLimiter is the per-IP fixed 60 s window of PROTOCOL.md §1.3.1.
type createLimiter struct {
	limit int
	mu    sync.Mutex // guards win
	win   map[string]window
}

type window struct {
	start time.Time
	n     int
}

func newCreateLimiter(limit int) *createLimiter {
	return &createLimiter{limit: limit, win: map[string]window{}}
}

// allow counts a create; when over the limit it returns the seconds to wait.
func (l *createLimiter) allow(ip string, now time.Time) (int, bool) {
	if l.limit <= 0 {
		return 0, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.win[ip]
	if now.Sub(w.start) >= time.Minute {
		if len(l.win) > 100000 {
			l.win = map[string]window{} // bounded memory: forget old windows
		}
		w = window{start: now}
	}
	w.n++
	l.win[ip] = w
	if w.n > l.limit {
		return max(1, int((time.Minute-now.Sub(w.start)+time.Second-1)/time.Second)), false
	}
	return 0, true
}

// counters back /api/metrics: per-minute request counts for five minutes
// and today's creates and distinct sessions read, on this node.
type counters struct {
	mu      sync.Mutex // guards all fields
	minutes map[int64]map[string]int
	day     string
	created int
	seen    map[string]struct{} // sessions read today
}

func newCounters() *counters {
	return &counters{minutes: map[int64]map[string]int{}, seen: map[string]struct{}{}}
}

func (c *counters) rollDay(now time.Time) {
	if d := now.UTC().Format("2006-01-02"); d != c.day {
		c.day, c.created, c.seen = d, 0, map[string]struct{}{}
	}
}

func (c *counters) add(now time.Time, what string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rollDay(now)
	if what == "creates" {
		c.created++
	}
	m := now.Unix() / 60
	if c.minutes[m] == nil {
		c.minutes[m] = map[string]int{}
		for k := range c.minutes {
			if k < m-5 {
				delete(c.minutes, k)
			}
		}
	}
	c.minutes[m][what]++
}

func (c *counters) accessed(now time.Time, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rollDay(now)
	if len(c.seen) < 1000000 {
		c.seen[id] = struct{}{}
	}
}

func (c *counters) today(now time.Time) (created, accessed int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rollDay(now)
	return c.created, len(c.seen)
}

func (c *counters) last5(now time.Time) map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{"creates": 0, "reads": 0, "updates": 0, "remixes": 0, "publishes": 0}
	m := now.Unix() / 60
	for k, v := range c.minutes {
		if k > m-5 {
			for what, n := range v {
				out[what] += n
			}
		}
	}
	return out
}
