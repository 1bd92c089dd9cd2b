package testcluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"chorus/fsm"
	"chorus/testcluster/check"
)

// The players of the graceful-operations tests behave like the Keyboardia
// client (PROTOCOL.md §4.10, §4.11): one socket at a time, a reconnect after
// any close but 1000, with ?since=<last seq> once they hold a state, and a
// request_snapshot when seq jumps by more than 3. They keep a view of the
// session from snapshots and broadcasts, as the page's grid would be.
//
// The reconnect backoff is the client's schedule, min(1000·2^n, 30000) ms
// ±25%, scaled down by four so that the tests fit their time budget; the
// client's give-up rule (single-player mode after 10 failed attempts) is
// kept, which makes the tests stricter, not looser.
const (
	kbBackoffBase = 250 * time.Millisecond
	kbBackoffCap  = 7500 * time.Millisecond
	kbMaxAttempts = 10
	// kbDialTimeout covers the node's join (read barrier and log entry),
	// which it bounds by its own 10 s join timeout before the upgrade.
	kbDialTimeout = 12 * time.Second
	// kbAckTimeout is longer than the node's 10 s bound on handling one
	// message: an open socket that has not acknowledged an edit by then
	// (nor sent a snapshot since) has dropped it silently.
	kbAckTimeout = 15 * time.Second
	// kbSnapTimeout bounds the wait for an asked-for snapshot on an open
	// socket: request_snapshot is always answered (DESIGN.md §4).
	kbSnapTimeout = 10 * time.Second
	// kbMaxInFlight bounds a page's unacknowledged edits on its socket: a
	// person's edits are sparse, and the load stays within what a loaded
	// machine's nodes can take.
	kbMaxInFlight = 4
	kbTracks      = 4
	kbSteps       = 16
)

// kbAllowedClose are the close codes after which a Keyboardia page simply
// reconnects and carries on: going away, abnormal closure (a killed node
// sends none), service restart, try again later.
var kbAllowedClose = map[int]bool{1001: true, 1006: true, 1012: true, 1013: true}

// kbInitialState is the state of every session of these tests: four 16-step
// tracks t0..t3.
func kbInitialState() string {
	tracks := make([]string, kbTracks)
	for i := range tracks {
		id := "t" + strconv.Itoa(i)
		tracks[i] = `{"id":"` + id + `","name":"Track ` + id + `","sampleId":"kick","steps":[],"parameterLocks":[],` +
			`"volume":1,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":16}`
	}
	return `{"tracks":[` + strings.Join(tracks, ",") + `],"tempo":120,"swing":0,"version":1}`
}

// kbCreateSessions creates n sessions through the node at addr, retrying
// while the cluster is briefly unavailable.
func kbCreateSessions(tb testing.TB, ctx context.Context, hc *http.Client, addr string, n int) []string {
	tb.Helper()
	body := []byte(`{"name":"roll","state":` + kbInitialState() + `}`)
	var ids []string
	for range n {
		Eventually(tb, 20*time.Second, func() error {
			b, status, err := HTTPDo(ctx, hc, http.MethodPost, "http://"+addr+"/api/sessions", "", body)
			if err != nil || status != http.StatusCreated {
				return fmt.Errorf("create a session on %s: HTTP %d %s %v", addr, status, b, err)
			}
			var created struct{ ID string }
			if err := json.Unmarshal(b, &created); err != nil || created.ID == "" {
				return fmt.Errorf("create a session: answer %s: %v", b, err)
			}
			ids = append(ids, created.ID)
			return nil
		})
	}
	return ids
}

const (
	kbTempoKey  = "tempo"
	kbTracksKey = "tracks"
)

// kbRegisters reads the registers of these tests from a SessionState: the
// track list, the tempo, and each track's volume and the steps and
// parameter locks of its first kbSteps steps.
func kbRegisters(state json.RawMessage) (map[string]string, error) {
	var s struct {
		Tempo  float64 `json:"tempo"`
		Tracks []struct {
			ID             string            `json:"id"`
			Steps          []bool            `json:"steps"`
			ParameterLocks []json.RawMessage `json:"parameterLocks"`
			Volume         float64           `json:"volume"`
		} `json:"tracks"`
	}
	if err := json.Unmarshal(state, &s); err != nil {
		return nil, fmt.Errorf("session state: %w", err)
	}
	regs := map[string]string{kbTempoKey: check.FormatNum(s.Tempo)}
	var ids []string
	for _, tr := range s.Tracks {
		ids = append(ids, tr.ID)
		regs[check.VolumeKey(tr.ID)] = check.FormatNum(tr.Volume)
		for n := range kbSteps {
			regs[check.StepKey(tr.ID, n)] = strconv.FormatBool(n < len(tr.Steps) && tr.Steps[n])
			lock := "null"
			if n < len(tr.ParameterLocks) {
				var err error
				if lock, err = check.LockValue(tr.ParameterLocks[n]); err != nil {
					return nil, err
				}
			}
			regs[check.LockKey(tr.ID, n)] = lock
		}
	}
	regs[kbTracksKey] = strings.Join(ids, ",")
	return regs, nil
}

// kbFrame is the part of a server message the players read.
type kbFrame struct {
	Type              string          `json:"type"`
	Seq               uint64          `json:"seq"`
	PrevSeq           uint64          `json:"prevSeq"`
	ClientSeq         uint64          `json:"clientSeq"`
	PlayerID          string          `json:"playerId"`
	Since             uint64          `json:"since"`
	SnapshotTimestamp int64           `json:"snapshotTimestamp"`
	State             json.RawMessage `json:"state"`
	TrackID           string          `json:"trackId"`
	Step              int             `json:"step"`
	Value             bool            `json:"value"`
	Tempo             float64         `json:"tempo"`
	Volume            float64         `json:"volume"`
	Lock              json.RawMessage `json:"lock"`
	Message           string          `json:"message"`
}

// register returns the register a mutating broadcast sets and its new value.
func (f *kbFrame) register() (key, value string, err error) {
	switch f.Type {
	case "step_toggled":
		return check.StepKey(f.TrackID, f.Step), strconv.FormatBool(f.Value), nil
	case "tempo_changed":
		return kbTempoKey, check.FormatNum(f.Tempo), nil
	case "track_volume_set":
		return check.VolumeKey(f.TrackID), check.FormatNum(f.Volume), nil
	case "parameter_lock_set":
		v, err := check.LockValue(f.Lock)
		return check.LockKey(f.TrackID, f.Step), v, err
	}
	return "", "", fmt.Errorf("a %s broadcast, which these players never cause", f.Type)
}

// kbRecorder collects the history of every player for the checkers, and
// when each acknowledgement arrived. Safe for concurrent use.
type kbRecorder struct {
	check.Recorder
	mu   sync.Mutex // guards acks
	acks []time.Time
}

func (r *kbRecorder) op(o check.Op) {
	r.Op(o)
	if o.Outcome == check.OK {
		r.mu.Lock()
		r.acks = append(r.acks, o.Complete)
		r.mu.Unlock()
	}
}

// longestGap returns the longest time in [from, to] without an
// acknowledged write, and when it began.
func (r *kbRecorder) longestGap(from, to time.Time) (time.Duration, time.Time) {
	r.mu.Lock()
	var acks []time.Time
	for _, a := range r.acks {
		if a.After(from) && a.Before(to) {
			acks = append(acks, a)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(acks, func(a, b time.Time) int { return a.Compare(b) })
	prev, gap, at := from, time.Duration(0), from
	for _, a := range append(acks, to) {
		if d := a.Sub(prev); d > gap {
			gap, at = d, prev
		}
		prev = a
	}
	return gap, at
}

// kbStats counts what a player went through.
type kbStats struct {
	reconnects    int // sockets opened after the first
	resumes       int // reconnects answered with resume and a replay
	joinSnapshots int // reconnects answered with a full snapshot
	failedDials   int // connection attempts that failed
	asked         int // request_snapshot sent (seq jumped by more than 3)
	answered      int // snapshots received on request
}

// kbPlayer is one simulated Keyboardia page. Its op loop (run) owns the
// fields from node to attempt; a reader goroutine per socket handles the
// server's frames.
type kbPlayer struct {
	id      int
	session string
	addrs   []string // every node's HTTP address, by node index
	// sticky players reconnect to the node they were on, which comes back;
	// the others to the next node, as a browser behind a load balancer would.
	sticky bool
	think  time.Duration // the mean pause between two edits
	rec    *kbRecorder
	rng    *rand.Rand
	hc     *http.Client

	node      int     // node of the current or last socket
	conn      *kbConn // nil between sockets
	conns     int     // sockets opened so far
	clientSeq uint64  // the envelope's seq: never reset
	attempt   int     // failed attempts since the last socket opened

	gaveUp atomic.Bool // after kbMaxAttempts failed attempts in a row

	// wmu serialises the page's writes (edits from the op loop, snapshot
	// requests from the reader), so that the order of two messages on the
	// wire is known: writes numbers them. It is held across the write,
	// which is what it is for.
	wmu    sync.Mutex
	writes uint64

	connected atomic.Bool  // a socket is open and has joined
	ackedN    atomic.Int64 // acknowledged edits

	mu         sync.Mutex // guards the fields below
	lastSeq    uint64     // highest seq applied
	lastSnapTS int64
	view       map[string]string     // the session as this page shows it
	ids        map[string]bool       // every playerId this page has had
	snapAsked  time.Time             // when an unanswered request_snapshot went out
	snapAskedW uint64                // its write number
	pending    map[uint64]*kbPending // edits sent and not yet acknowledged, by clientSeq
	folded     []check.Op            // edits folded into a snapshot instead of acknowledged
	problems   []string              // whatever would make a user reload the page
	stats      kbStats
}

// kbPending is an edit sent and not yet acknowledged.
type kbPending struct {
	op   check.Op
	conn int       // the socket it went out on
	w    uint64    // its write number
	sent time.Time // when its frame had been written; zero if the write failed
}

// kbConn is one socket of a player.
type kbConn struct {
	ws     *websocket.Conn
	n      int // the player's socket number
	node   int
	player string        // the playerId the server gave this socket
	first  chan string   // the playerId of the first frame (snapshot or resume)
	done   chan struct{} // closed when the reader has stopped
	cancel context.CancelFunc
	asked  atomic.Bool // the page closed it
}

func newKBPlayer(id int, session string, addrs []string, node int, sticky bool, think time.Duration, rec *kbRecorder, hc *http.Client, seed uint64) *kbPlayer {
	return &kbPlayer{id: id, session: session, addrs: addrs, node: node, sticky: sticky, think: think, rec: rec, hc: hc,
		rng: rand.New(rand.NewPCG(seed, uint64(id))), ids: map[string]bool{}, pending: map[uint64]*kbPending{}}
}

func (p *kbPlayer) String() string {
	kind := "balanced"
	if p.sticky {
		kind = "sticky"
	}
	return "player " + strconv.Itoa(p.id) + " (" + kind + ")"
}

// problem records something that would make a user reload the page.
func (p *kbPlayer) problem(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.problemLocked(format, args...)
}

// problemLocked is problem for a caller that holds p.mu.
func (p *kbPlayer) problemLocked(format string, args ...any) {
	p.problems = append(p.problems, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
}

// run edits until ctx ends, reconnecting as the page would. The socket
// stays open afterwards: kbLoad.stop waits for the edits still in flight,
// close closes it.
func (p *kbPlayer) run(ctx context.Context) {
	opCtx := context.WithoutCancel(ctx)
	for ctx.Err() == nil && !p.gaveUp.Load() {
		if p.conn != nil {
			select {
			case <-p.conn.done:
				p.conn.cancel()
				p.conn = nil
			default:
			}
		}
		if p.conn == nil {
			if !p.connect(ctx) {
				continue
			}
		}
		p.mu.Lock()
		busy := p.inFlight(p.conn) >= kbMaxInFlight
		p.mu.Unlock()
		if !busy {
			p.edit(opCtx)
		}
		p.checkPending()
		p.mu.Lock()
		if !p.snapAsked.IsZero() && time.Since(p.snapAsked) > kbSnapTimeout {
			p.problemLocked("request_snapshot unanswered for %v on an open socket", kbSnapTimeout)
			p.snapAsked, p.snapAskedW = time.Time{}, 0
		}
		p.mu.Unlock()
		Hold(ctx, p.think/2+time.Duration(p.rng.Int64N(int64(p.think))))
	}
}

// backoff is the wait before reconnect attempt n (from 0).
func (p *kbPlayer) backoff(n int) time.Duration {
	d := kbBackoffCap
	if n < 10 {
		d = min(kbBackoffBase<<n, kbBackoffCap)
	}
	return time.Duration(float64(d) * (0.75 + 0.5*p.rng.Float64()))
}

// connect opens a socket, waiting the backoff first unless it is the page's
// first. It returns false when the attempt failed (or ctx ended).
func (p *kbPlayer) connect(ctx context.Context) bool {
	if p.conns > 0 || p.attempt > 0 {
		if !Hold(ctx, p.backoff(p.attempt)) {
			return false
		}
		if !p.sticky && p.conns > 0 {
			p.node = (p.node + 1) % len(p.addrs)
		}
	}
	p.attempt++
	err := p.dial(ctx)
	if err == nil {
		p.attempt = 0
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.failedDials++
	if p.attempt >= kbMaxAttempts {
		p.problemLocked("gave up after %d failed attempts, the last to n%d: %v (single-player mode; only a reload reconnects)", p.attempt, p.node+1, err)
		p.gaveUp.Store(true)
	}
	return false
}

// dial opens a socket on p.node and waits for its first frame.
func (p *kbPlayer) dial(ctx context.Context) error {
	p.mu.Lock()
	since := p.lastSeq
	p.mu.Unlock()
	url := "ws://" + p.addrs[p.node] + "/api/sessions/" + p.session + "/ws"
	if since > 0 {
		url += "?since=" + strconv.FormatUint(since, 10)
	}
	dctx, cancel := context.WithTimeout(ctx, kbDialTimeout)
	defer cancel()
	ws, resp, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPClient: p.hc})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		// A node that is down, shutting down or not ready refuses the
		// connection or answers 503 (429: too many sockets from one
		// address). Anything else is an answer the page cannot get past.
		if resp != nil && resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusTooManyRequests {
			p.problem("n%d refused the socket with HTTP %d", p.node+1, resp.StatusCode)
		}
		return fmt.Errorf("dial n%d: %w", p.node+1, err)
	}
	ws.SetReadLimit(1 << 20)
	rctx, rcancel := context.WithCancel(context.Background())
	c := &kbConn{ws: ws, n: p.conns, node: p.node, first: make(chan string, 1),
		done: make(chan struct{}), cancel: rcancel}
	p.conns++
	p.rec.Opened(check.Conn{Client: p.id, Conn: c.n, Node: "n" + strconv.Itoa(c.node+1), Session: p.session, Since: since, At: time.Now()})
	go p.read(rctx, c)
	select {
	case c.player = <-c.first:
		p.conn = c
		p.connected.Store(true)
		if c.n > 0 {
			p.mu.Lock()
			p.stats.reconnects++
			p.mu.Unlock()
		}
		return nil
	case <-c.done:
		rcancel()
		return fmt.Errorf("n%d closed the socket before its first frame", c.node+1)
	case <-dctx.Done():
	}
	c.asked.Store(true)
	_ = ws.CloseNow() // a join that never came: give the socket up
	rcancel()
	<-c.done
	return fmt.Errorf("n%d sent no first frame within %v", c.node+1, kbDialTimeout)
}

// read handles the frames of one socket until it ends.
func (p *kbPlayer) read(ctx context.Context, c *kbConn) {
	defer close(c.done)
	joined := false
	node := "n" + strconv.Itoa(c.node+1)
	for {
		typ, data, err := c.ws.Read(ctx)
		now := time.Now()
		if err != nil {
			p.ended(c, err, now)
			return
		}
		if typ != websocket.MessageText || len(data) == 0 || data[0] != '{' {
			continue
		}
		var f kbFrame
		if err := json.Unmarshal(data, &f); err != nil {
			p.problem("%s sent a frame that does not parse: %v", node, err)
			continue
		}
		if ask := p.handle(c, &f, &joined, now); ask {
			// The envelope's seq is the page's own counter; the op loop owns
			// it, so this message goes without one, as a state_hash does.
			err := p.send(ctx, c, `{"type":"request_snapshot"}`, func(w uint64) { p.snapAskedW = w })
			if err != nil {
				p.mu.Lock()
				p.snapAsked, p.snapAskedW = time.Time{}, 0 // the socket is going; the next one starts afresh
				p.mu.Unlock()
			}
		}
	}
}

// send writes msg on c as the page's next write. mark runs with the
// write's number under p.mu before the write, so that an answer can never
// come before the number is known.
func (p *kbPlayer) send(ctx context.Context, c *kbConn, msg string, mark func(w uint64)) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.writes++
	p.mu.Lock()
	mark(p.writes)
	p.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.ws.Write(wctx, websocket.MessageText, []byte(msg))
}

// handle applies one frame to the page's view, settles the page's edit it
// acknowledges, and checks it. ask says that the page must ask for a
// snapshot.
func (p *kbPlayer) handle(c *kbConn, f *kbFrame, joined *bool, now time.Time) (ask bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	node := "n" + strconv.Itoa(c.node+1)
	d := check.Delivery{Client: p.id, Conn: c.n, Node: node, Session: p.session, Seq: f.Seq, PrevSeq: f.PrevSeq,
		Type: f.Type, PlayerID: f.PlayerID, ClientSeq: f.ClientSeq, At: now}
	if !*joined && f.Type != "snapshot" && f.Type != "resume" {
		p.problemLocked("%s: the first frame of socket %d is a %s", node, c.n, f.Type)
	}
	switch {
	case f.Type == "snapshot":
		if !*joined {
			*joined = true
			p.ids[f.PlayerID] = true
			if c.n > 0 {
				p.stats.joinSnapshots++
			}
			c.first <- f.PlayerID
		} else {
			p.stats.answered++
		}
		p.fold(c, p.snapAskedW)
		p.snapAsked, p.snapAskedW = time.Time{}, 0
		switch {
		case f.SnapshotTimestamp < p.lastSnapTS:
			// The client ignores such a snapshot (PROTOCOL.md §4.3).
			p.problemLocked("%s: snapshotTimestamp went back from %d to %d", node, p.lastSnapTS, f.SnapshotTimestamp)
		case f.Seq < p.lastSeq:
			p.problemLocked("%s: a snapshot at seq %d after seq %d: the page would go back in time", node, f.Seq, p.lastSeq)
		default:
			regs, err := kbRegisters(f.State)
			if err != nil {
				p.problemLocked("%s: snapshot: %v", node, err)
				break
			}
			p.view, p.lastSeq, p.lastSnapTS = regs, f.Seq, f.SnapshotTimestamp
		}
		d.Type = check.TypeSnapshot
		p.rec.Delivery(d)
	case f.Type == "resume":
		if *joined {
			p.problemLocked("%s: a resume frame on a joined socket", node)
			break
		}
		*joined = true
		p.ids[f.PlayerID] = true
		p.stats.resumes++
		if f.Since != p.lastSeq {
			p.problemLocked("%s: resumed from seq %d, but the page asked for %d", node, f.Since, p.lastSeq)
		}
		c.first <- f.PlayerID
	case f.Seq > 0:
		if f.Type == "step_toggled" {
			d.Value = strconv.FormatBool(f.Value)
		}
		p.rec.Delivery(d)
		if f.Seq <= p.lastSeq {
			p.problemLocked("%s: %s seq %d after seq %d: seq went back or repeated", node, f.Type, f.Seq, p.lastSeq)
			break
		}
		if f.PrevSeq > p.lastSeq {
			p.problemLocked("%s: %s seq %d follows prevSeq %d, but the page last saw seq %d: broadcasts were skipped", node, f.Type, f.Seq, f.PrevSeq, p.lastSeq)
		}
		// The Keyboardia client's rule: a jump of more than 3 asks for a
		// snapshot; one request at a time.
		if p.lastSeq > 0 && f.Seq-p.lastSeq-1 > 3 && p.snapAsked.IsZero() {
			ask, p.snapAsked = true, now
			p.stats.asked++
		}
		p.lastSeq = f.Seq
		key, value, err := f.register()
		if err != nil {
			p.problemLocked("%s: %v", node, err)
			break
		}
		if p.view != nil {
			p.view[key] = value
		}
		if f.ClientSeq > 0 {
			p.acked(f, value, now)
		}
	case f.Type == "error":
		p.problemLocked("%s: error frame %q", node, f.Message)
	}
	return ask
}

// ended records the end of a socket and checks its close code.
func (p *kbPlayer) ended(c *kbConn, err error, now time.Time) {
	code := int(websocket.CloseStatus(err))
	if code < 0 {
		code = int(websocket.StatusAbnormalClosure)
	}
	if c.asked.Load() {
		code = int(websocket.StatusNormalClosure)
	}
	p.rec.Closed(check.Close{Client: p.id, Conn: c.n, Code: code, At: now})
	p.connected.Store(false)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.snapAsked, p.snapAskedW = time.Time{}, 0
	if !c.asked.Load() && !kbAllowedClose[code] {
		p.problemLocked("n%d closed socket %d with code %d (%v)", c.node+1, c.n, code, err)
	}
}

// edit sends one edit. As the Keyboardia page, it does not wait for the
// edit's broadcast: the reader takes that as the acknowledgement.
func (p *kbPlayer) edit(ctx context.Context) {
	c := p.conn
	p.clientSeq++
	cs := p.clientSeq
	track := "t" + strconv.Itoa(p.rng.IntN(kbTracks))
	step := p.rng.IntN(kbSteps)
	var kind, key, value, msg string
	switch r := p.rng.IntN(100); {
	case r < 55:
		kind, key = check.KindToggleStep, check.StepKey(track, step)
		msg = `{"type":"toggle_step","trackId":"` + track + `","step":` + strconv.Itoa(step)
	case r < 65:
		kind, key, value = check.KindSetTempo, kbTempoKey, strconv.Itoa(60+p.rng.IntN(121))
		msg = `{"type":"set_tempo","tempo":` + value
	case r < 80:
		kind, key, value = check.KindSetTrackVolume, check.VolumeKey(track), check.FormatNum(float64(p.rng.IntN(101))/100)
		msg = `{"type":"set_track_volume","trackId":"` + track + `","volume":` + value
	default:
		lock := `{"pitch":` + strconv.Itoa(p.rng.IntN(25)-12) + `,"volume":` + check.FormatNum(float64(p.rng.IntN(101))/100) + `}`
		kind, key = check.KindSetParameterLock, check.LockKey(track, step)
		value, _ = check.LockValue(json.RawMessage(lock)) // the page's own well-formed lock
		msg = `{"type":"set_parameter_lock","trackId":"` + track + `","step":` + strconv.Itoa(step) + `,"lock":` + lock
	}
	p.mu.Lock()
	ackSeq := p.lastSeq
	pe := &kbPending{op: check.Op{Client: p.id, Session: p.session, Kind: kind, Key: key, Value: value,
		OpID: "p" + strconv.Itoa(p.id) + "-" + strconv.FormatUint(cs, 10), Invoke: time.Now(), PlayerID: c.player, ClientSeq: cs},
		conn: c.n}
	p.pending[cs] = pe
	p.mu.Unlock()
	err := p.send(ctx, c, msg+`,"seq":`+strconv.FormatUint(cs, 10)+`,"ack":`+strconv.FormatUint(ackSeq, 10)+`}`,
		func(w uint64) { pe.w = w })
	// An error means the socket is ending, and the reader sees that; the
	// edit may have gone out before, so it stays pending.
	if err == nil {
		p.mu.Lock()
		pe.sent = time.Now()
		p.mu.Unlock()
	}
}

// inFlight counts the page's unacknowledged edits on socket c. The caller
// holds p.mu.
func (p *kbPlayer) inFlight(c *kbConn) int {
	n := 0
	for _, pe := range p.pending {
		if pe.conn == c.n {
			n++
		}
	}
	return n
}

// fold settles the edits that went out on c before the request_snapshot
// that a snapshot answers, the page's write number asked: the node handles
// a socket's messages in order, and applies an edit before it takes the
// next message, so the snapshot holds each of them. Their broadcast has
// either come already or been left out for the snapshot (the node skips
// what a snapshot it sent holds), which is why the page cannot tell the
// edit's seq. The caller holds p.mu.
func (p *kbPlayer) fold(c *kbConn, asked uint64) {
	if asked == 0 {
		return
	}
	for _, cs := range slices.Sorted(maps.Keys(p.pending)) {
		pe := p.pending[cs]
		if pe.conn == c.n && pe.w != 0 && pe.w < asked {
			delete(p.pending, cs)
			p.folded = append(p.folded, pe.op)
		}
	}
}

// acked settles a pending edit with its broadcast. The caller holds p.mu.
func (p *kbPlayer) acked(f *kbFrame, value string, now time.Time) {
	pe, ok := p.pending[f.ClientSeq]
	if !ok || !p.ids[f.PlayerID] {
		return
	}
	delete(p.pending, f.ClientSeq)
	o := pe.op
	o.Outcome, o.Complete, o.Seq, o.Value = check.OK, now, f.Seq, value
	p.rec.op(o)
	p.ackedN.Add(1)
}

// checkPending reports an edit that an open socket has neither
// acknowledged within kbAckTimeout nor folded into a snapshot (see fold).
// The node handles a socket's messages in order, each within 10 s.
func (p *kbPlayer) checkPending() {
	c := p.conn
	p.mu.Lock()
	defer p.mu.Unlock()
	for cs, pe := range p.pending {
		if c == nil || pe.conn != c.n || pe.sent.IsZero() || time.Since(pe.sent) < kbAckTimeout {
			continue
		}
		p.problemLocked("n%d did not acknowledge clientSeq %d within %v on an open socket", c.node+1, cs, kbAckTimeout)
		delete(p.pending, cs)
		o := pe.op
		o.Outcome, o.Complete = check.Unknown, time.Now()
		p.rec.op(o)
	}
}

// finish records the edits without an acknowledgement as unknown: those
// folded into a snapshot were applied, at a seq the page does not know;
// those still pending went out on a socket that ended, and may or may not
// have been. Call it once the pages have converged.
func (p *kbPlayer) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, cs := range slices.Sorted(maps.Keys(p.pending)) {
		p.folded = append(p.folded, p.pending[cs].op)
	}
	clear(p.pending)
	for _, o := range p.folded {
		o.Outcome, o.Complete = check.Unknown, time.Now()
		p.rec.op(o)
	}
	p.folded = nil
}

// settled reports whether every edit sent on the page's current socket is
// acknowledged or folded into a snapshot. Call it after run has returned.
func (p *kbPlayer) settled() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.conn
	if c == nil || !p.connected.Load() {
		return nil // its edits can no longer be answered; the checks see it is not connected
	}
	var in []string
	for _, cs := range slices.Sorted(maps.Keys(p.pending)) {
		if pe := p.pending[cs]; pe.conn == c.n {
			in = append(in, fmt.Sprintf("%s (clientSeq %d, sent %s)", pe.op.Kind, cs, pe.sent.Format("15:04:05.000")))
		}
	}
	if len(in) > 0 {
		return fmt.Errorf("%v has edits in flight on socket %d to n%d (player %s): %s", p, c.n, c.node+1, c.player, strings.Join(in, ", "))
	}
	return nil
}

// close closes the page's socket with 1000, as a page that is left does,
// and waits for its reader. Call it after run has returned.
func (p *kbPlayer) close() {
	c := p.conn
	if c == nil {
		return
	}
	p.conn = nil
	c.asked.Store(true)
	_ = c.ws.Close(websocket.StatusNormalClosure, "page closed") // the node may be gone already
	_ = c.ws.CloseNow()                                          // idem
	c.cancel()
	<-c.done
}

// snapshot returns the page's view, its last seq and its problems.
func (p *kbPlayer) snapshot() (map[string]string, uint64, []string, kbStats) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.view), p.lastSeq, slices.Clone(p.problems), p.stats
}

// kbLoad runs the players until stop is called.
type kbLoad struct {
	players []*kbPlayer
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped bool
}

func startKBLoad(ctx context.Context, players []*kbPlayer) *kbLoad {
	lctx, cancel := context.WithCancel(ctx)
	l := &kbLoad{players: players, cancel: cancel}
	for _, p := range players {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			p.run(lctx)
		}()
	}
	return l
}

// stop ends the edits, and waits until every edit sent on an open socket
// is acknowledged or folded into a snapshot, so that the nodes have no
// edit left to apply; the sockets stay open.
func (l *kbLoad) stop() error {
	if l.stopped {
		return nil
	}
	l.stopped = true
	l.cancel()
	l.wg.Wait()
	return Poll(30*time.Second, func() error {
		for _, p := range l.players {
			if err := p.settled(); err != nil {
				return err
			}
		}
		return nil
	})
}

// close stops the load and closes every socket.
func (l *kbLoad) close() {
	_ = l.stop() // at cleanup: only the sockets matter now
	for _, p := range l.players {
		p.close()
	}
}

// waitConnected waits until every player has a joined socket and at least
// min more acknowledged ops than in base (nil: none).
func (l *kbLoad) waitConnected(within time.Duration, base []int64, more int64) error {
	return Poll(within, func() error {
		for i, p := range l.players {
			if p.gaveUp.Load() {
				return fmt.Errorf("%v gave up reconnecting", p)
			}
			if !p.connected.Load() {
				return fmt.Errorf("%v is not connected", p)
			}
			var b int64
			if base != nil {
				b = base[i]
			}
			if n := p.ackedN.Load(); n < b+more {
				return fmt.Errorf("%v has %d acknowledged ops, want %d", p, n, b+more)
			}
		}
		return nil
	})
}

// ackCounts returns each player's acknowledged ops so far.
func (l *kbLoad) ackCounts() []int64 {
	out := make([]int64, len(l.players))
	for i, p := range l.players {
		out[i] = p.ackedN.Load()
	}
	return out
}

// kbFinal is the cluster's settled state: the FSM every listed node holds
// (byte-identical), and each node's state of each session for the checkers.
type kbFinal struct {
	state *fsm.State
	nodes []check.NodeState
}

// kbSettle waits until the nodes have applied the same index, at least
// the highest seq a page has seen, and hold byte-identical FSM state (I4),
// with the same state hash of each session by each node's own account, and
// returns that state.
func kbSettle(ctx context.Context, p *Procs, hc *http.Client, nodes []int, sessions []string, players []*kbPlayer) (kbFinal, error) {
	var seen uint64
	for _, pl := range players {
		_, seq, _, _ := pl.snapshot()
		seen = max(seen, seq)
	}
	type nodeState struct {
		raw    []byte
		hashes map[string]string
		index  uint64
	}
	get := func(i int, path, token string) ([]byte, error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		b, status, err := HTTPDo(rctx, hc, http.MethodGet, "http://"+p.Nodes[i].HTTPAddr+path, token, nil)
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("HTTP %d: %s", status, bytes.TrimSpace(b))
		}
		if err != nil {
			return nil, fmt.Errorf("%s: GET %s: %w", p.Nodes[i].ID, path, err)
		}
		return b, nil
	}
	states := make([]nodeState, len(nodes))
	err := Poll(60*time.Second, func() error {
		for k, i := range nodes {
			before, err := p.Status(ctx, i)
			if err != nil {
				return err
			}
			raw, err := get(i, "/cluster/state", p.AdminToken())
			if err != nil {
				return err
			}
			hashes := map[string]string{}
			for _, s := range sessions {
				b, err := get(i, "/api/debug/session/"+s+"/state-sync", "")
				if err != nil {
					return err
				}
				var sync struct{ ServerStateHash string }
				if err := json.Unmarshal(b, &sync); err != nil {
					return fmt.Errorf("%s: state-sync of %s: %w", p.Nodes[i].ID, s, err)
				}
				hashes[s] = sync.ServerStateHash
			}
			after, err := p.Status(ctx, i)
			if err != nil {
				return err
			}
			if after.AppliedIndex != before.AppliedIndex {
				return fmt.Errorf("%s moved on from index %d to %d while it was read", p.Nodes[i].ID, before.AppliedIndex, after.AppliedIndex)
			}
			states[k] = nodeState{raw, hashes, after.AppliedIndex}
		}
		if st, err := fsm.ReadSnapshot(bytes.NewReader(states[0].raw)); err != nil || st.Index() < seen {
			return fmt.Errorf("%s's state is at index %v, but a page has seen seq %d (%v)", p.Nodes[nodes[0]].ID, st.Index(), seen, err)
		}
		ref := states[0]
		for k, st := range states {
			id, refID := p.Nodes[nodes[k]].ID, p.Nodes[nodes[0]].ID
			switch {
			case st.index != ref.index:
				return fmt.Errorf("%s is at index %d, %s at %d", id, st.index, refID, ref.index)
			case !bytes.Equal(st.raw, ref.raw):
				a, b := sha256.Sum256(st.raw), sha256.Sum256(ref.raw)
				return fmt.Errorf("at index %d the FSM state of %s (sha256 %x) differs from %s's (%x)", st.index, id, a[:6], refID, b[:6])
			case !maps.Equal(st.hashes, ref.hashes):
				return fmt.Errorf("at index %d %s reports the session hashes %v, %s %v", st.index, id, st.hashes, refID, ref.hashes)
			}
		}
		return nil
	})
	if err != nil {
		return kbFinal{}, err
	}
	st, err := fsm.ReadSnapshot(bytes.NewReader(states[0].raw))
	if err != nil {
		return kbFinal{}, fmt.Errorf("decode the FSM state: %w", err)
	}
	f := kbFinal{state: st}
	for k, i := range nodes {
		// Each node's own bytes, decoded on their own: the checkers then
		// see each node's state, not a copy of the first's.
		ns, err := fsm.ReadSnapshot(bytes.NewReader(states[k].raw))
		if err != nil {
			return kbFinal{}, fmt.Errorf("decode %s's state: %w", p.Nodes[i].ID, err)
		}
		for _, s := range sessions {
			sess := ns.Session(s)
			if sess == nil {
				return kbFinal{}, fmt.Errorf("%s does not have session %s", p.Nodes[i].ID, s)
			}
			regs, err := kbSessionRegisters(sess)
			if err != nil {
				return kbFinal{}, err
			}
			f.nodes = append(f.nodes, check.NodeState{Node: p.Nodes[i].ID, Session: s, Hash: states[k].hashes[s],
				Snapshot: sess.AppendSnapshot(nil), Index: ns.Index(), Registers: regs})
		}
	}
	return f, nil
}

// kbSessionRegisters reads the registers from fsm's rendering of a session
// (the GET /api/sessions/{id} body).
func kbSessionRegisters(s *fsm.Session) (map[string]string, error) {
	var doc struct {
		State json.RawMessage `json:"state"`
	}
	if err := json.Unmarshal(s.AppendJSON(nil), &doc); err != nil {
		return nil, fmt.Errorf("session %s: %w", s.ID, err)
	}
	return kbRegisters(doc.State)
}

// checkKBHistory proves, from what the players recorded and the settled
// cluster: no acknowledged write is lost on any node (I5), the nodes agree
// (I4), no page saw seq go back or a broadcast twice (I1, I6), no socket
// skipped a broadcast (I3); and for every page: nothing happened that
// would make its user reload it, it is connected, and it shows exactly the
// server's state at the session's last seq.
func checkKBHistory(t *testing.T, rec *kbRecorder, players []*kbPlayer, final kbFinal) {
	t.Helper()
	server := map[string]map[string]string{}
	lastSeq := map[string]uint64{}
	for _, ns := range final.nodes {
		server[ns.Session] = ns.Registers
		lastSeq[ns.Session] = final.state.Session(ns.Session).LastSeq
	}
	err := Poll(15*time.Second, func() error {
		for _, p := range players {
			view, seq, _, _ := p.snapshot()
			if !p.connected.Load() {
				return fmt.Errorf("%v is not connected at the end", p)
			}
			if seq != lastSeq[p.session] {
				return fmt.Errorf("%v is at seq %d, its session at %d", p, seq, lastSeq[p.session])
			}
			if !maps.Equal(view, server[p.session]) {
				return fmt.Errorf("%v shows a state other than the server's: %s", p, kbDiff(view, server[p.session]))
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("the pages did not converge on the server state: %v", err)
	}
	for _, p := range players {
		p.finish()
		if _, _, problems, _ := p.snapshot(); len(problems) > 0 {
			t.Errorf("%v would have needed a reload:\n  %s", p, strings.Join(problems, "\n  "))
		}
	}

	h := rec.History()
	h.Final = final.nodes
	resolved := h.ResolveUnknown()
	results := []check.Result{check.LostWrites(&h), check.Convergence(&h), check.SeqMonotonic(&h),
		check.NoSilentSkip(&h), check.NoDoubleApply(&h)}
	counts := map[check.Outcome]int{}
	for _, o := range h.Ops {
		counts[o.Outcome]++
	}
	t.Logf("history: %d edits acknowledged (%d of them resolved through another page's copy of the broadcast), %d unknown, %d deliveries, %d sockets",
		counts[check.OK], resolved, counts[check.Unknown], len(h.Deliveries), len(h.Conns))
	if !check.Valid(results) {
		t.Errorf("the checkers found violations:\n%s", check.Summary(&h, results))
	}
	if counts[check.OK] == 0 {
		t.Error("no edit was acknowledged")
	}
}

// kbDiff describes the first few registers where a view and the server differ.
func kbDiff(view, server map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(server)) {
		if view[k] != server[k] {
			out = append(out, fmt.Sprintf("%s: page %q, server %q", k, view[k], server[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(view)) {
		if _, ok := server[k]; !ok {
			out = append(out, fmt.Sprintf("%s: page %q, server has none", k, view[k]))
		}
	}
	if len(out) > 5 {
		out = append(out[:5], fmt.Sprintf("… %d more", len(out)-5))
	}
	if len(out) == 0 {
		return "(no difference)"
	}
	return strings.Join(out, "; ")
}

// logNodeTails logs the end of every node's log when the test has failed.
func logNodeTails(t *testing.T, p *Procs) {
	if !t.Failed() {
		return
	}
	for _, n := range p.Nodes {
		b, err := os.ReadFile(n.LogPath)
		if err != nil {
			t.Logf("%s: %v", n.ID, err)
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		t.Logf("the last lines of %s's log:\n%s", n.ID, strings.Join(lines[max(0, len(lines)-25):], "\n"))
	}
}

// kbSeed is the seed of a randomised test: TESTCLUSTER_SEED, else the clock.
func kbSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano() % 1_000_000_000)
	if s := os.Getenv("TESTCLUSTER_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TESTCLUSTER_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (TESTCLUSTER_SEED=%d replays the players' choices)", seed, seed)
	return seed
}
