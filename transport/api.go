package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// APIConfig configures the Keyboardia HTTP and WebSocket API of one node.
type APIConfig struct {
	Backend Backend
	Logger  hclog.Logger
	Now     func() time.Time // default time.Now

	// CreateRate is session creates per minute per client IP; 0 turns the
	// limit off.
	CreateRate int
	// WSRate is messages per second per socket (bursts of twice that); 0 turns
	// the limit off.
	WSRate int
	// MaxConnsPerIP bounds the WebSockets one client address may hold open
	// (or be opening) on this node; an upgrade beyond it gets 429 before it
	// costs a log entry. 0 turns the limit off. Behind a reverse proxy every
	// client has the proxy's address: raise it or turn it off there.
	MaxConnsPerIP int
	// AllowedOrigins lists the Origin values a WebSocket upgrade may carry
	// ("*" allows any). Empty: the request's own host and the cluster's
	// members. A request without an Origin (not a browser) is allowed.
	AllowedOrigins []string
	// Static serves / and /s/{id} (the SPA fallback to index.html) and other
	// files; nil serves nothing there.
	Static fs.FS
	// MaxBody bounds HTTP bodies and WebSocket messages. Default 65536.
	MaxBody int
	// JoinTimeout bounds a WebSocket join (barrier, log entry). Default 10s.
	JoinTimeout time.Duration
	// WriteTimeout bounds each frame write. Default 10s.
	WriteTimeout time.Duration
	// BodyTimeout bounds reading an HTTP request's body, from when the
	// handler starts on it; a client that sends it slower (slow loris) gets
	// 408. Default 10s.
	BodyTimeout time.Duration
	// PingInterval sends protocol pings for liveness; a socket that does not
	// answer within the interval is closed. Default 30s; negative disables.
	PingInterval time.Duration
	// Metrics counts messages, write timeouts and refusals (NewMetrics; the
	// caller registers it). Default: none are kept.
	Metrics *Metrics
}

// API serves the Keyboardia routes (PROTOCOL.md §1) and the WebSocket (§3, §4).
type API struct {
	cfg  APIConfig
	log  hclog.Logger
	logs *requestLogs
	wsl  *wsLogs
	hash *clientHashes
	rate *createLimiter
	stat *counters

	mu      sync.Mutex // guards sockets, perIP, closing
	sockets map[*socket]struct{}
	perIP   map[string]int // sockets open or opening per client address (MaxConnsPerIP)
	closing bool
	wg      sync.WaitGroup // socket goroutines
}

// NewAPI returns the API handler. Call Shutdown to close its sockets.
func NewAPI(cfg APIConfig) *API {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = 65536
	}
	if cfg.JoinTimeout == 0 {
		cfg.JoinTimeout = 10 * time.Second
	}
	if cfg.BodyTimeout == 0 {
		cfg.BodyTimeout = 10 * time.Second
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = 30 * time.Second
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics()
	}
	return &API{
		cfg: cfg, log: cfg.Logger.Named("api"),
		logs: newRequestLogs(), wsl: newWSLogs(), hash: newClientHashes(),
		rate: newCreateLimiter(cfg.CreateRate), stat: newCounters(),
		sockets: map[*socket]struct{}{}, perIP: map[string]int{},
	}
}

var (
	idPattern   = regexp.MustCompile(`^[a-f0-9-]{36}$`)
	uuidPattern = regexp.MustCompile(`^(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	spaPattern  = regexp.MustCompile(`^/s/[a-f0-9-]{36}$`)
	idRun       = regexp.MustCompile(`[a-f0-9-]{36}`)
)

func setCORS(h http.Header) {
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, OPTIONS")
	h.Set("Access-Control-Allow-Headers", "Content-Type")
}

// ServeHTTP routes a request.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodOptions {
		setCORS(w.Header())
		w.WriteHeader(http.StatusOK)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/api/") && r.URL.Path != "/api" {
		a.serveStatic(w, r)
		return
	}
	if isUpgrade(r) && strings.HasSuffix(r.URL.Path, "/ws") {
		if id, ok := matchID(strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/api/sessions/"), "/ws")); ok && r.Method == http.MethodGet {
			a.serveWS(w, r, id)
			return
		}
	}
	setCORS(w.Header())
	rec := &recorder{ResponseWriter: w, status: http.StatusOK}
	start := a.cfg.Now()
	a.route(rec, r)
	a.logs.add(a.cfg.Now(), r, rec, time.Since(start))
}

func isUpgrade(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// matchID applies the route pattern; a non-match is a 404.
func matchID(s string) (string, bool) { return s, idPattern.MatchString(s) }

func (a *API) route(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/"), "/")
	m := r.Method
	switch {
	case len(parts) == 1 && parts[0] == "sessions" && m == http.MethodPost:
		a.create(w, r)
		return
	case len(parts) == 1 && parts[0] == "metrics" && m == http.MethodGet:
		a.metrics(w)
		return
	case len(parts) == 2 && parts[0] == "debug" && parts[1] == "logs" && m == http.MethodGet:
		a.debugLogs(w, r)
		return
	}
	if len(parts) >= 2 && parts[0] == "sessions" {
		id, ok := matchID(parts[1])
		if ok {
			switch {
			case len(parts) == 2 && m == http.MethodGet:
				a.withID(w, id, func() { a.get(w, r, id) })
				return
			case len(parts) == 2 && m == http.MethodPut:
				a.withID(w, id, func() { a.put(w, r, id) })
				return
			case len(parts) == 2 && m == http.MethodPatch:
				a.withID(w, id, func() { a.patch(w, r, id) })
				return
			case len(parts) == 3 && parts[2] == "remix" && m == http.MethodPost:
				a.withID(w, id, func() { a.remix(w, r, id) })
				return
			case len(parts) == 3 && parts[2] == "publish" && m == http.MethodPost:
				a.withID(w, id, func() { a.publish(w, r, id) })
				return
			case len(parts) == 3 && parts[2] == "live-debug" && m == http.MethodGet:
				a.withID(w, id, func() { a.liveDebug(w, r, id) })
				return
			}
		}
	}
	if len(parts) >= 3 && parts[0] == "debug" && m == http.MethodGet {
		if id, ok := matchID(parts[2]); ok {
			switch {
			case parts[1] == "session" && len(parts) == 3:
				a.withID(w, id, func() { a.debugSession(w, r, id) })
				return
			case parts[1] == "session" && len(parts) == 4:
				a.withID(w, id, func() { a.debugSessionSub(w, r, id, parts[3]) })
				return
			case parts[1] == "durable-object" && len(parts) == 3:
				a.withID(w, id, func() { a.debugRoom(w, r, id) })
				return
			}
		}
	}
	writeError(w, http.StatusNotFound, "Not found")
}

// withID answers 400 for an id that matched the route but is not a UUID.
func (a *API) withID(w http.ResponseWriter, id string, next func()) {
	if !uuidPattern.MatchString(id) {
		writeError(w, http.StatusBadRequest, "Invalid session ID format")
		return
	}
	next()
}

// fail maps a backend error to a status and body; details stay in the log.
func (a *API) fail(w http.ResponseWriter, op string, err error) {
	var ve *ValidationError
	var hint RetryAfterHint
	switch {
	case errors.As(err, &ve):
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "Validation failed", "details": ve.Details})
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "Session not found")
	case errors.Is(err, ErrOutcomeUnknown):
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "Service temporarily unavailable",
			"message": "The request could not be confirmed and may or may not have taken effect. Check the session, then try again.", "retryAfter": 1})
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		retry := 2 * time.Second
		if errors.As(err, &hint) {
			retry = hint.RetryAfterHint()
		}
		secs := max(1, int(retry.Round(time.Second)/time.Second))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": "Service temporarily unavailable", "message": "The cluster has no leader right now. Please try again shortly.", "retryAfter": secs})
	case errors.Is(err, ErrBadRequest):
		writeError(w, http.StatusBadRequest, "Invalid request body")
	default:
		a.log.Error("request failed", "op", op, "error", err)
		writeError(w, http.StatusInternalServerError, "Failed to "+op)
	}
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (a *API) create(w http.ResponseWriter, r *http.Request) {
	if retry, ok := a.rate.allow(clientIP(r), a.cfg.Now()); !ok {
		a.cfg.Metrics.createLimited.Inc()
		secs := strconv.Itoa(retry)
		w.Header().Set("Retry-After", secs)
		w.Header().Set("X-RateLimit-Remaining", "0")
		writeJSON(w, http.StatusTooManyRequests, map[string]any{"error": "Too many requests. Please wait before creating more sessions.", "retryAfter": retry})
		return
	}
	if r.ContentLength > int64(a.cfg.MaxBody) {
		writeError(w, http.StatusRequestEntityTooLarge, "Request body too large")
		return
	}
	var name, state json.RawMessage
	if strings.Contains(r.Header.Get("Content-Type"), "application/json") {
		body, ok := a.readBody(w, r)
		if !ok {
			return
		}
		var fields map[string]json.RawMessage
		if len(strings.TrimSpace(string(body))) > 0 {
			if err := json.Unmarshal(body, &fields); err != nil {
				var anyv any
				if json.Unmarshal(body, &anyv) != nil {
					writeError(w, http.StatusBadRequest, "Invalid request body")
					return
				}
				fields = nil // valid JSON that is not an object: the default session
			}
		}
		if v, ok := fields["name"]; ok {
			name = v
		}
		switch {
		case fields["state"] != nil && strings.HasPrefix(strings.TrimSpace(string(fields["state"])), "{"):
			state = fields["state"]
		case fields["tracks"] != nil || fields["tempo"] != nil || fields["swing"] != nil:
			top := map[string]json.RawMessage{}
			for _, k := range []string{"tracks", "tempo", "swing", "version"} {
				if v, ok := fields[k]; ok {
					top[k] = v
				}
			}
			state, _ = json.Marshal(top) // raw messages from a parsed body re-marshal
		}
	}
	if state == nil {
		state = json.RawMessage(`{"tracks":[],"tempo":120,"swing":0,"version":1}`)
	}
	id, err := a.cfg.Backend.CreateSession(r.Context(), name, state)
	if err != nil {
		a.fail(w, "create session", err)
		return
	}
	a.stat.add(a.cfg.Now(), "creates")
	writeJSON(w, http.StatusCreated, map[string]string{"id": id, "url": "/s/" + id})
}

// readBody reads at most MaxBody bytes within BodyTimeout; a longer body
// is 413, a slower one 408.
func (a *API) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	// Not every ResponseWriter can set deadlines (a test recorder cannot);
	// the server's own can.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(a.cfg.BodyTimeout))
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(a.cfg.MaxBody)+1))
	if err != nil {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusRequestTimeout, "Request body not received in time")
			return nil, false
		}
		writeError(w, http.StatusBadRequest, "Invalid request body")
		return nil, false
	}
	if len(body) > a.cfg.MaxBody {
		writeError(w, http.StatusRequestEntityTooLarge, "Request body too large")
		return nil, false
	}
	return body, true
}

func (a *API) get(w http.ResponseWriter, r *http.Request, id string) {
	body, err := a.cfg.Backend.GetSession(r.Context(), id, r.URL.Query().Get("stale") == "1")
	if err != nil {
		a.fail(w, "read session", err)
		return
	}
	a.stat.add(a.cfg.Now(), "reads")
	a.stat.accessed(a.cfg.Now(), id)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body) // the status is out; a broken connection has no one left to tell
}

const publishedBody = "This session has been published and cannot be modified. Remix it to create an editable copy."

func (a *API) put(w http.ResponseWriter, r *http.Request, id string) {
	if imm, _ := a.cfg.Backend.Immutable(id); imm {
		writeJSON(w, http.StatusForbidden, map[string]any{"error": "Session is published", "message": publishedBody, "immutable": true})
		return
	}
	if r.ContentLength > int64(a.cfg.MaxBody) {
		writeError(w, http.StatusRequestEntityTooLarge, "Request body too large")
		return
	}
	body, ok := a.readBody(w, r)
	if !ok {
		return
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		if !json.Valid(body) {
			writeError(w, http.StatusBadRequest, "Invalid request body")
			return
		}
		fields = nil // valid JSON but not an object: it has no state (check 5, not 4)
	}
	state := fields["state"]
	if state == nil {
		state = json.RawMessage("null")
	}
	updatedAt, err := a.cfg.Backend.ReplaceState(r.Context(), id, state)
	if err != nil {
		if errors.Is(err, ErrPublished) {
			writeJSON(w, http.StatusForbidden, map[string]any{"error": "Session is published", "message": publishedBody, "immutable": true})
			return
		}
		a.fail(w, "update session", err)
		return
	}
	a.stat.add(a.cfg.Now(), "updates")
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "updatedAt": updatedAt})
}

const renamePublished = "This session has been published and cannot be renamed. Remix it to create an editable copy."

func (a *API) patch(w http.ResponseWriter, r *http.Request, id string) {
	if imm, _ := a.cfg.Backend.Immutable(id); imm {
		writeJSON(w, http.StatusForbidden, map[string]any{"error": "Session is published", "message": renamePublished, "immutable": true})
		return
	}
	body, ok := a.readBody(w, r)
	if !ok {
		return
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		writeError(w, http.StatusBadRequest, "Invalid request body")
		return
	}
	name, ok := fields["name"]
	if !ok {
		writeError(w, http.StatusBadRequest, "Missing name field")
		return
	}
	resp, err := a.cfg.Backend.Rename(r.Context(), id, name)
	if err != nil {
		if errors.Is(err, ErrPublished) {
			writeJSON(w, http.StatusForbidden, map[string]any{"error": "Session is published", "message": renamePublished, "immutable": true})
			return
		}
		a.fail(w, "update session name", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(resp) // as in get
}

func (a *API) remix(w http.ResponseWriter, r *http.Request, id string) {
	newID, err := a.cfg.Backend.Remix(r.Context(), id)
	if err != nil {
		a.fail(w, "remix session", err)
		return
	}
	a.stat.add(a.cfg.Now(), "remixes")
	writeJSON(w, http.StatusCreated, map[string]string{"id": newID, "remixedFrom": id, "url": "/s/" + newID})
}

func (a *API) publish(w http.ResponseWriter, r *http.Request, id string) {
	newID, err := a.cfg.Backend.Publish(r.Context(), id)
	if errors.Is(err, ErrAlreadyPublished) {
		writeError(w, http.StatusBadRequest, "Cannot publish from an already-published session. Remix it first to create an editable copy.")
		return
	}
	if err != nil {
		a.fail(w, "publish session", err)
		return
	}
	a.stat.add(a.cfg.Now(), "publishes")
	writeJSON(w, http.StatusCreated, map[string]any{"id": newID, "immutable": true, "url": "/s/" + newID, "sourceId": id})
}

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body) // as in get
}

func (a *API) liveDebug(w http.ResponseWriter, r *http.Request, id string) {
	body, _, err := a.cfg.Backend.RoomDebug(r.Context(), id)
	if err != nil {
		a.fail(w, "read session", err)
		return
	}
	writeRaw(w, http.StatusOK, body)
}

func (a *API) debugRoom(w http.ResponseWriter, r *http.Request, id string) {
	body, exists, err := a.cfg.Backend.RoomDebug(r.Context(), id)
	switch {
	case err != nil:
		a.fail(w, "read session", err)
	case !exists:
		writeJSON(w, http.StatusNotFound, map[string]any{"id": id, "exists": false, "error": "Session not found"})
	default:
		writeRaw(w, http.StatusOK, body)
	}
}

func (a *API) debugSession(w http.ResponseWriter, r *http.Request, id string) {
	body, err := a.cfg.Backend.SessionDebug(r.Context(), id)
	if errors.Is(err, ErrNotFound) {
		writeJSON(w, http.StatusNotFound, map[string]any{"id": id, "exists": false, "error": "Session not found"})
		return
	}
	if err != nil {
		a.fail(w, "read session", err)
		return
	}
	writeRaw(w, http.StatusOK, body)
}

func (a *API) debugSessionSub(w http.ResponseWriter, r *http.Request, id, sub string) {
	if sub == "ws-logs" {
		last := queryInt(r, "last", 100)
		writeJSON(w, http.StatusOK, map[string]any{"logs": a.wsl.last(id, last)})
		return
	}
	if _, ok := a.cfg.Backend.Immutable(id); !ok {
		writeJSON(w, http.StatusNotFound, map[string]any{"id": id, "exists": false, "error": "Session not found"})
		return
	}
	switch sub {
	case "connections":
		conns := a.cfg.Backend.Connections(id)
		if conns == nil {
			conns = []json.RawMessage{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"activeConnections": len(conns), "players": conns,
			"messageRate": fmt.Sprintf("%d/sec", a.wsl.rate(id, a.cfg.Now()))})
	case "clock":
		clients := a.cfg.Backend.Connections(id)
		if clients == nil {
			clients = []json.RawMessage{} // an array on the wire, never null
		}
		writeJSON(w, http.StatusOK, map[string]any{"serverTime": a.cfg.Now().UnixMilli(), "connectedClients": clients})
	case "state-sync":
		h, err := a.cfg.Backend.StateHash(r.Context(), id)
		if err != nil {
			a.fail(w, "read session", err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"serverStateHash": h, "clientHashes": a.hash.list(id)})
	default:
		writeError(w, http.StatusNotFound, "Not found")
	}
}

func queryInt(r *http.Request, key string, def int) int {
	if v, err := strconv.Atoi(r.URL.Query().Get(key)); err == nil && v > 0 {
		return v
	}
	return def
}

func (a *API) debugLogs(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"logs": a.logs.last(r.URL.Query().Get("sessionId"), queryInt(r, "last", 50), a.cfg.Now())})
}

func (a *API) metrics(w http.ResponseWriter) {
	now := a.cfg.Now()
	created, accessed := a.stat.today(now)
	writeJSON(w, http.StatusOK, map[string]any{
		"sessions": map[string]int{"total": a.cfg.Backend.SessionCount(), "createdToday": created, "accessedToday": accessed},
		"requests": map[string]any{"last5Minutes": a.stat.last5(now)},
	})
}

func (a *API) serveStatic(w http.ResponseWriter, r *http.Request) {
	if a.cfg.Static == nil || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.NotFound(w, r)
		return
	}
	p := r.URL.Path
	if p == "/" || spaPattern.MatchString(p) {
		http.ServeFileFS(w, r, a.cfg.Static, "index.html")
		return
	}
	name := strings.TrimPrefix(p, "/")
	if f, err := a.cfg.Static.Open(name); err == nil {
		st, err := f.Stat()
		f.Close()
		if err == nil && !st.IsDir() {
			http.ServeFileFS(w, r, a.cfg.Static, name)
			return
		}
	}
	http.NotFound(w, r)
}

// recorder remembers the status for the request log.
type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the server's writer (read
// deadlines for slow bodies, hijacking for WebSockets).
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
