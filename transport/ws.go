package transport

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Close codes (RFC 6455 and the registry). A live socket is never closed
// with 1000: the Keyboardia client does not reconnect after it.
const (
	closeGoingAway                           = websocket.StatusGoingAway       // 1001
	closePolicy                              = websocket.StatusPolicyViolation // 1008
	closeInternal                            = websocket.StatusInternalError   // 1011
	closeServiceRestart websocket.StatusCode = 1012
	closeTryAgainLater  websocket.StatusCode = 1013
	closeSessionGone    websocket.StatusCode = 4404 // application code: the session was deleted
)

// closeCode is the one place that turns an error into a close code and a reason.
func closeCode(err error) (websocket.StatusCode, string) {
	switch {
	case errors.Is(err, ErrOverloaded):
		return closeTryAgainLater, "socket could not keep up; reconnect"
	case errors.Is(err, ErrUnavailable):
		return closeTryAgainLater, "no leader; try another node"
	case errors.Is(err, ErrRestarting):
		return closeServiceRestart, "service restart; reconnect"
	case errors.Is(err, ErrGone):
		return closeSessionGone, "session deleted"
	case errors.Is(err, errRateLimited):
		return closePolicy, "message rate limit exceeded"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return closeTryAgainLater, "timeout"
	}
	return closeInternal, "internal error"
}

var errRateLimited = errors.New("rate limited")

// mutatingTypes are the 15 messages that change state (PROTOCOL.md §3.2).
var mutatingTypes = map[string]bool{
	"toggle_step": true, "set_tempo": true, "set_swing": true, "mute_track": true, "solo_track": true,
	"set_parameter_lock": true, "add_track": true, "delete_track": true, "clear_track": true,
	"set_track_sample": true, "set_track_volume": true, "set_track_transpose": true,
	"set_track_step_count": true, "set_effects": true, "set_fm_params": true,
}

// readOnlyTypes are the other 6 client messages.
var readOnlyTypes = map[string]bool{
	"play": true, "stop": true, "state_hash": true, "request_snapshot": true,
	"clock_sync_request": true, "cursor_move": true,
}

const (
	frameTooLarge  = `{"type":"error","message":"Message too large"}`
	frameBadJSON   = `{"type":"error","message":"Invalid JSON"}`
	frameRateLimit = `{"type":"error","message":"Rate limit exceeded: slow down or the connection will be closed"}`
	framePublished = `{"type":"error","code":"SESSION_PUBLISHED","message":"This session is published and cannot be edited. Remix it to create an editable copy."}`
)

// originAllowed applies the allow-list. Without one: the request's own host
// and the cluster's members. No Origin (not a browser) is allowed.
func (a *API) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if len(a.cfg.AllowedOrigins) > 0 {
		for _, o := range a.cfg.AllowedOrigins {
			if o == "*" || strings.EqualFold(o, origin) || strings.EqualFold(o, u.Host) {
				return true
			}
		}
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, m := range a.cfg.Backend.Members() {
		if strings.EqualFold(u.Host, m) {
			return true
		}
	}
	return false
}

func (a *API) serveWS(w http.ResponseWriter, r *http.Request, id string) {
	if !uuidPattern.MatchString(id) {
		setCORS(w.Header())
		writeError(w, http.StatusBadRequest, "Invalid session ID format")
		return
	}
	if !a.originAllowed(r) {
		a.log.Warn("websocket origin refused", "origin", r.Header.Get("Origin"), "remote_addr", r.RemoteAddr)
		setCORS(w.Header())
		writeError(w, http.StatusForbidden, "Origin not allowed")
		return
	}
	var req JoinRequest
	req.Session = id
	if s := r.URL.Query().Get("since"); s != "" {
		since, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			setCORS(w.Header())
			writeError(w, http.StatusBadRequest, "since must be a non-negative integer")
			return
		}
		req.Since = &since
	}
	a.mu.Lock()
	closing := a.closing
	a.mu.Unlock()
	if closing {
		http.Error(w, "Service temporarily unavailable", http.StatusServiceUnavailable)
		return
	}
	ip := clientIP(r)
	if !a.reserveConn(ip) {
		a.cfg.Metrics.connCap.Inc()
		a.log.Warn("websocket refused: too many connections from one address", "remote_addr", r.RemoteAddr, "max", a.cfg.MaxConnsPerIP)
		setCORS(w.Header())
		w.Header().Set("Retry-After", "10")
		writeError(w, http.StatusTooManyRequests, "Too many connections from this address")
		return
	}
	handedOver := false // to the socket, whose end releases the reservation
	defer func() {
		if !handedOver {
			a.releaseConn(ip)
		}
	}()
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.JoinTimeout)
	p, err := a.cfg.Backend.Join(ctx, req)
	cancel()
	if err != nil {
		setCORS(w.Header())
		switch {
		case errors.Is(err, ErrNotFound):
			writeError(w, http.StatusNotFound, "Session not found")
		case errors.Is(err, ErrFull):
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("Session full (max 10 players)")) // as in get
		case errors.Is(err, ErrUnavailable), errors.Is(err, ErrOutcomeUnknown), errors.Is(err, context.DeadlineExceeded):
			w.Header().Set("Retry-After", "2")
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("Service temporarily unavailable")) // as in get
		default:
			a.log.Error("websocket join failed", "session_id", id, "error", err)
			writeError(w, http.StatusInternalServerError, "WebSocket connection failed")
		}
		return
	}
	conn, err := websocket.Accept(withSmallBuffers(w), r, &websocket.AcceptOptions{InsecureSkipVerify: true, CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		p.Leave()
		a.log.Debug("websocket upgrade failed", "session_id", id, "error", err)
		return
	}
	// Frames over MaxBody get an error reply, not a close: read a little more
	// than that, and let only abusive frames close the connection (1009).
	conn.SetReadLimit(int64(a.cfg.MaxBody)*4 + 1024)
	s := &socket{api: a, conn: conn, player: p, session: id, remote: r.RemoteAddr, ip: ip}
	if !a.track(s) {
		p.Leave()
		_ = conn.Close(closeServiceRestart, "service restart") // shutting down; the client reconnects elsewhere
		return
	}
	handedOver = true
	a.wsl.add(a.cfg.Now(), id, p.ID(), "connect", "")
	// On a goroutine of its own, so that net/http's ends now and lets go
	// of its stack and of the request. Shutdown waits for it (track).
	go s.run()
}

// Buffer sizes of a socket's connection. net/http's are 4 KiB each, and
// they would stay for the socket's life: an idle socket would be mostly
// buffers. Broadcasts and client messages are a few hundred bytes; bufio
// reads or writes a bigger payload straight to the connection.
const (
	wsReadBuffer  = 512
	wsWriteBuffer = 512
)

// withSmallBuffers has websocket.Accept hijack the connection with buffers
// of wsReadBuffer and wsWriteBuffer bytes. A w that is no http.Hijacker
// itself is left to websocket.Accept as it is.
func withSmallBuffers(w http.ResponseWriter) http.ResponseWriter {
	if hj, ok := w.(http.Hijacker); ok {
		return smallBuffers{ResponseWriter: w, hj: hj}
	}
	return w
}

type smallBuffers struct {
	http.ResponseWriter
	hj http.Hijacker
}

func (w smallBuffers) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := w.hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	r := brw.Reader
	if r.Buffered() == 0 { // else the client wrote ahead of the handshake: keep what it sent
		r = bufio.NewReaderSize(c, wsReadBuffer)
	}
	return c, bufio.NewReadWriter(r, bufio.NewWriterSize(c, wsWriteBuffer)), nil
}

func (a *API) track(s *socket) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing {
		return false
	}
	a.sockets[s] = struct{}{}
	a.wg.Add(1)
	return true
}

func (a *API) untrack(s *socket) {
	a.mu.Lock()
	delete(a.sockets, s)
	a.mu.Unlock()
	a.releaseConn(s.ip)
	a.wg.Done()
}

// reserveConn counts one more socket from ip, unless ip is at
// MaxConnsPerIP already.
func (a *API) reserveConn(ip string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg.MaxConnsPerIP > 0 && a.perIP[ip] >= a.cfg.MaxConnsPerIP {
		return false
	}
	a.perIP[ip]++
	return true
}

// releaseConn gives back a reservation of reserveConn.
func (a *API) releaseConn(ip string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.perIP[ip]--; a.perIP[ip] <= 0 {
		delete(a.perIP, ip)
	}
}

// Shutdown closes every socket with 1012 (service restart) and waits for
// their goroutines, or for ctx.
func (a *API) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	a.closing = true
	socks := make([]*socket, 0, len(a.sockets))
	for s := range a.sockets {
		socks = append(socks, s)
	}
	a.mu.Unlock()
	for _, s := range socks {
		s.close(closeServiceRestart, "service restart; reconnect")
	}
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Sockets returns the number of open sockets.
func (a *API) Sockets() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.sockets)
}

// socket runs one connection. Its goroutine reads; a writer goroutine runs
// only while the player has frames queued (wake starts it), and a ping
// runs on a timer's goroutine every PingInterval. An idle socket so has one
// goroutine, not three: at 10k sockets on a node that is most of its memory.
type socket struct {
	api     *API
	conn    *websocket.Conn
	player  Player
	session string
	remote  string
	ip      string // clientIP of the upgrade: its MaxConnsPerIP reservation

	closeOnce sync.Once
	bucket    tokenBucket
	warned    time.Time // when the rate-limit warning was sent

	ctx     context.Context    // the socket's life; ends when run ends
	cancel  context.CancelFunc // ends ctx: the reader stops too
	wmu     sync.Mutex         // guards writing, stopped, ping; and wg.Add against wg.Wait
	writing bool               // a writer goroutine is running
	stopped bool               // run is ending: no new writer or ping
	ping    *time.Timer
	wg      sync.WaitGroup // the writer and a ping in progress
}

func (s *socket) close(code websocket.StatusCode, reason string) {
	s.closeOnce.Do(func() {
		_ = s.conn.Close(code, reason) // the peer may be gone already; nothing else to do
	})
}

// write sends one frame within WriteTimeout, and counts it by type.
func (s *socket) write(ctx context.Context, frame []byte) error {
	wctx, cancel := context.WithTimeout(ctx, s.api.cfg.WriteTimeout)
	defer cancel()
	m := s.api.cfg.Metrics
	if err := s.conn.Write(wctx, websocket.MessageText, frame); err != nil {
		// Only WriteTimeout ends wctx with DeadlineExceeded: the socket's
		// context has no deadline. (That context may be cancelled by now:
		// the timeout closed the connection under the reader too.)
		if errors.Is(err, context.DeadlineExceeded) {
			m.writeTimeouts.Inc()
		}
		return err
	}
	m.sent[sentType(frame)].Inc()
	return nil
}

func (s *socket) run() {
	a := s.api
	defer a.untrack(s)
	defer s.player.Leave()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.ctx, s.cancel = ctx, cancel
	for _, f := range s.player.First() {
		if err := s.write(ctx, f); err != nil {
			s.close(closeGoingAway, "write failed")
			return
		}
	}
	s.player.SetWake(s.wake)
	s.wake() // what was queued while the first frames went out
	s.schedulePing()
	if a.cfg.WSRate > 0 {
		s.bucket = tokenBucket{rate: float64(a.cfg.WSRate), burst: float64(2 * a.cfg.WSRate), tokens: float64(2 * a.cfg.WSRate), last: a.cfg.Now()}
	}
	err := s.readLoop(ctx)
	cancel()
	s.wmu.Lock()
	s.stopped = true
	if s.ping != nil {
		s.ping.Stop()
	}
	s.wmu.Unlock()
	s.wg.Wait()
	code, reason := closeCode(err)
	if websocket.CloseStatus(err) != -1 || errors.Is(err, context.Canceled) {
		code, reason = closeGoingAway, "closed"
	}
	s.close(code, reason)
	a.wsl.add(a.cfg.Now(), s.session, s.player.ID(), "disconnect", reason)
}

// wake starts the writer unless it is running or the socket is ending. The
// player calls it whenever a frame may be waiting, from any goroutine.
func (s *socket) wake() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.writing || s.stopped {
		return
	}
	s.writing = true
	s.wg.Add(1)
	go s.writer()
}

// writer sends the player's frames until none is queued. It looks and
// stands down under wmu, so a wake between the two starts a new writer.
func (s *socket) writer() {
	defer s.wg.Done()
	for {
		s.wmu.Lock()
		frame, ok, err := s.player.Next()
		if !ok && err == nil {
			s.writing = false
			s.wmu.Unlock()
			return
		}
		s.wmu.Unlock()
		if err != nil {
			// writing stays set: the socket is closing, nothing more goes out.
			code, reason := closeCode(err)
			s.api.log.Debug("closing socket", "session_id", s.session, "player_id", s.player.ID(), "code", int(code), "error", err)
			s.close(code, reason)
			s.cancel() // and the reader stops, whether or not the peer answers the close
			return
		}
		if err := s.write(s.ctx, frame); err != nil {
			if s.ctx.Err() == nil {
				s.close(closeTryAgainLater, "write timed out")
				s.cancel()
			}
			return
		}
	}
}

// schedulePing arms the next ping, PingInterval from now, unless the socket
// is ending. A ping that gets no pong within PingInterval closes the socket.
func (s *socket) schedulePing() {
	interval := s.api.cfg.PingInterval
	if interval <= 0 {
		return
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.stopped {
		return
	}
	s.ping = time.AfterFunc(interval, func() {
		s.wmu.Lock()
		if s.stopped {
			s.wmu.Unlock()
			return
		}
		s.wg.Add(1)
		s.wmu.Unlock()
		defer s.wg.Done()
		pctx, cancel := context.WithTimeout(s.ctx, interval)
		defer cancel()
		if err := s.conn.Ping(pctx); err != nil {
			if s.ctx.Err() == nil {
				s.close(closeGoingAway, "ping timeout")
				s.cancel()
			}
			return
		}
		s.schedulePing()
	})
}

// utf16Len is the length JavaScript sees for a text frame.
func utf16Len(b []byte) int {
	n := 0
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		b = b[size:]
		if r >= 0x10000 {
			n += 2
		} else {
			n++
		}
	}
	return n
}

func (s *socket) readLoop(ctx context.Context) error {
	a := s.api
	m := a.cfg.Metrics
	for {
		typ, data, err := s.conn.Read(ctx)
		if err != nil {
			return err
		}
		size := len(data)
		if typ == websocket.MessageText && size > a.cfg.MaxBody {
			size = utf16Len(data)
		}
		if size > a.cfg.MaxBody {
			m.received[recvTooLarge].Inc()
			if err := s.write(ctx, []byte(frameTooLarge)); err != nil {
				return err
			}
			continue
		}
		s.player.Touch()
		if a.cfg.WSRate > 0 && !s.bucket.take(a.cfg.Now()) {
			m.rateLimited.Inc()
			now := a.cfg.Now()
			if !s.warned.IsZero() && now.Sub(s.warned) < 5*time.Second {
				return errRateLimited
			}
			s.warned = now
			if err := s.write(ctx, []byte(frameRateLimit)); err != nil {
				return err
			}
			continue
		}
		if typ == websocket.MessageText && string(data) == "ping" {
			m.received[recvPing].Inc()
			if err := s.write(ctx, []byte("pong")); err != nil {
				return err
			}
			continue
		}
		t, seq, err := decodeFrame(data)
		if errors.Is(err, errBadJSON) {
			m.received[recvInvalid].Inc()
			if err := s.write(ctx, []byte(frameBadJSON)); err != nil {
				return err
			}
			continue
		}
		m.received[receivedType(t)].Inc() // "" is unknown
		if t == "" {
			continue
		}
		a.wsl.add(a.cfg.Now(), s.session, s.player.ID(), "message", t)
		if mutatingTypes[t] && s.player.Immutable() {
			if err := s.write(ctx, []byte(framePublished)); err != nil {
				return err
			}
			continue
		}
		if t == "state_hash" {
			var h struct {
				Hash string `json:"hash"`
			}
			if json.Unmarshal(data, &h) == nil {
				a.hash.add(s.session, s.player.ID(), h.Hash, a.cfg.Now())
			}
		}
		hctx, cancel := context.WithTimeout(ctx, a.cfg.JoinTimeout)
		replies, err := s.player.Handle(hctx, t, seq, data)
		cancel()
		for _, r := range replies {
			if werr := s.write(ctx, r); werr != nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
	}
}

var errBadJSON = errors.New("invalid JSON")

// decodeFrame reads the type and seq of a client message. It returns
// errBadJSON for a frame that is not JSON, and an empty type for one that is
// ignored silently: not an object, no string type, or an unknown type. seq is
// nil unless the message has an integral numeric seq within ±2^53.
func decodeFrame(data []byte) (typ string, seq *int64, err error) {
	if !json.Valid(data) {
		return "", nil, errBadJSON
	}
	var env struct {
		Type *string         `json:"type"`
		Seq  json.RawMessage `json:"seq"`
	}
	if json.Unmarshal(data, &env) != nil || env.Type == nil {
		return "", nil, nil // not an object, or no string type: ignored silently
	}
	if t := *env.Type; mutatingTypes[t] || readOnlyTypes[t] {
		typ = t
	} else {
		return "", nil, nil
	}
	var f float64
	if env.Seq != nil && json.Unmarshal(env.Seq, &f) == nil && f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		v := int64(f)
		seq = &v
	}
	return typ, seq, nil
}

// tokenBucket is the per-socket message rate limit.
type tokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

func (b *tokenBucket) take(now time.Time) bool {
	b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
