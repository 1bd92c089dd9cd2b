package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"chorus/testcluster"
	"chorus/testcluster/check"
)

// Workload timing. An op without an answer within ackTimeout is Unknown: it
// may still commit, as a forwarded write keeps retrying until its deadline.
const (
	ackTimeout   = 5 * time.Second
	httpTimeout  = 2 * time.Second
	joinTimeout  = 3 * time.Second
	maxFrameSize = 1 << 20
)

// Close codes the workload uses. closeAbandon says "I gave up on this socket"
// (an op timed out), so the server owes it nothing; closeSwitch is an
// orderly reconnect, after which ?since= must replay every missed broadcast.
const (
	closeSwitch  = websocket.StatusNormalClosure
	closeAbandon = websocket.StatusCode(4000)
)

// recorder collects the history, and counts outcomes for the progress line.
// Every method is safe for concurrent use.
type recorder struct {
	check.Recorder
	ok   atomic.Int64
	fail atomic.Int64
	unk  atomic.Int64
	errs atomic.Int64 // connection attempts that failed

	panicMu sync.Mutex
	panics  []error // panics of goroutines that are not the run's own
}

func (r *recorder) op(o check.Op) {
	switch o.Outcome {
	case check.OK:
		r.ok.Add(1)
	case check.Failed:
		r.fail.Add(1)
	default:
		r.unk.Add(1)
	}
	r.Op(o)
}

// recovered records a panic of the calling goroutine, if any, so that the
// run fails with it instead of the process dying without its cleanup (the
// iptables rules, the nodes). Use it as a deferred call.
func (r *recorder) recovered(what string) {
	if p := recover(); p != nil {
		r.panicMu.Lock()
		r.panics = append(r.panics, fmt.Errorf("%s panicked: %v", what, p))
		r.panicMu.Unlock()
	}
}

// frame is the part of a server message the workload reads.
type frame struct {
	Type      string          `json:"type"`
	Seq       uint64          `json:"seq"`
	PrevSeq   uint64          `json:"prevSeq"`
	ClientSeq uint64          `json:"clientSeq"`
	PlayerID  string          `json:"playerId"`
	Value     json.RawMessage `json:"value"` // step_toggled's new value; other types use it differently
}

// session is one session of the run and the clients that use it.
type session struct {
	id      string
	clients []int
}

// client is one simulated player: one socket at a time, one op at a time.
type client struct {
	id    int
	sess  *session
	nodes []string // HTTP addresses
	rng   *rand.Rand
	rec   *recorder
	http  *http.Client
	think time.Duration

	conn     *conn
	conns    int    // connections opened so far
	node     int    // node of the current or last connection
	lastSeq  uint64 // highest seq seen on any connection
	seqMu    sync.Mutex
	opSeq    uint64 // the client's message counter (clientSeq); never reset
	renames  int
	reads    int
	hasTrack bool // whether the client's own track exists, if known
	known    bool // whether hasTrack is known
}

// conn is one WebSocket connection of a client.
type conn struct {
	ws     *websocket.Conn
	n      int
	node   string
	player string
	acks   chan frame    // this player's acknowledgements and snapshots, in order
	done   chan struct{} // closed when the reader has stopped
	code   atomic.Int64  // close code the client chose, 0 if none
	cancel context.CancelFunc
}

func (c *client) seenSeq(s uint64) {
	c.seqMu.Lock()
	c.lastSeq = max(c.lastSeq, s)
	c.seqMu.Unlock()
}

func (c *client) since() uint64 {
	c.seqMu.Lock()
	defer c.seqMu.Unlock()
	return c.lastSeq
}

// run performs ops until ctx is done, then closes its socket. An op in
// flight when ctx ends still runs to its answer or its timeout, so the end
// of the run does not turn it into an unknown.
func (c *client) run(ctx context.Context) {
	defer c.disconnect(closeSwitch)
	opCtx := context.WithoutCancel(ctx)
	for ctx.Err() == nil {
		if c.conn == nil {
			if err := c.connect(ctx); err != nil {
				if ctx.Err() == nil {
					c.rec.errs.Add(1)
				}
				testcluster.Hold(ctx, time.Duration(50+c.rng.IntN(250))*time.Millisecond)
				continue
			}
		}
		c.step(opCtx)
		if c.think > 0 {
			testcluster.Hold(ctx, time.Duration(c.rng.Int64N(int64(c.think))))
		}
	}
}

// step performs one randomly chosen action.
func (c *client) step(ctx context.Context) {
	track := stableTrackID(c.rng.IntN(stableTracks))
	switch p := c.rng.IntN(100); {
	case p < 40:
		step := c.rng.IntN(stepRegs)
		c.mutate(ctx, check.KindToggleStep, check.StepKey(track, step), "",
			`{"type":"toggle_step","trackId":"`+track+`","step":`+strconv.Itoa(step))
	case p < 50:
		v := check.FormatNum(60 + float64(c.rng.IntN(12001))/100)
		c.mutate(ctx, check.KindSetTempo, tempoKey, v, `{"type":"set_tempo","tempo":`+v)
	case p < 60:
		v := check.FormatNum(float64(c.rng.IntN(1001)) / 1000)
		c.mutate(ctx, check.KindSetTrackVolume, check.VolumeKey(track), v,
			`{"type":"set_track_volume","trackId":"`+track+`","volume":`+v)
	case p < 68:
		step := c.rng.IntN(lockRegs)
		lock := "null"
		if c.rng.IntN(5) > 0 {
			lock = `{"pitch":` + strconv.Itoa(c.rng.IntN(25)-12) + `,"volume":` + check.FormatNum(float64(c.rng.IntN(1001))/1000) + `}`
		}
		v, _ := check.LockValue(json.RawMessage(lock)) // the workload's own well-formed lock
		c.mutate(ctx, check.KindSetParameterLock, check.LockKey(track, step), v,
			`{"type":"set_parameter_lock","trackId":"`+track+`","step":`+strconv.Itoa(step)+`,"lock":`+lock)
	case p < 75:
		if !c.known {
			c.read(ctx) // learn whether the own track exists first
			return
		}
		own := clientTrackID(c.id)
		if c.hasTrack {
			c.mutate(ctx, check.KindDeleteTrack, existsKey(own), "false", `{"type":"delete_track","trackId":"`+own+`"`)
		} else {
			c.mutate(ctx, check.KindAddTrack, existsKey(own), "true", `{"type":"add_track","track":`+trackJSON(own))
		}
	case p < 85:
		c.read(ctx)
	case p < 90:
		c.rename(ctx)
	case p < 95:
		c.send(ctx, `{"type":"request_snapshot"}`)
	default:
		c.disconnect(closeSwitch)
	}
}

// mutate sends one mutation (msg is its JSON without the envelope's seq,
// ack and closing brace) and waits for this player's broadcast of it.
func (c *client) mutate(ctx context.Context, kind, key, value, msg string) {
	c.opSeq++
	cs := c.opSeq
	cn := c.conn
	o := check.Op{Client: c.id, Session: c.sess.id, Kind: kind, Key: key, Value: value,
		OpID: "c" + strconv.Itoa(c.id) + "-" + strconv.FormatUint(cs, 10), Invoke: time.Now(),
		PlayerID: cn.player, ClientSeq: cs}
	full := msg + `,"seq":` + strconv.FormatUint(cs, 10) + `,"ack":` + strconv.FormatUint(c.since(), 10) + `}`
	wctx, cancel := context.WithTimeout(ctx, httpTimeout)
	err := cn.ws.Write(wctx, websocket.MessageText, []byte(full))
	cancel()
	if err != nil {
		// The frame may have reached the server before the error.
		o.Outcome, o.Complete = check.Unknown, time.Now()
		c.settle(o, kind)
		c.disconnect(closeAbandon)
		return
	}
	timeout := time.NewTimer(ackTimeout)
	defer timeout.Stop()
	acked := func(f frame) bool {
		if f.ClientSeq != cs {
			return false
		}
		o.Outcome, o.Complete, o.Seq = check.OK, time.Now(), f.Seq
		if kind == check.KindToggleStep {
			o.Value = strconv.FormatBool(string(f.Value) == "true")
		}
		c.settle(o, kind)
		return true
	}
	for {
		select {
		case f := <-cn.acks:
			if acked(f) {
				return
			}
			continue
		case <-cn.done:
			// The reader has stopped, so acks holds everything it got; the
			// ack may be there even though select picked done.
			for len(cn.acks) > 0 {
				if acked(<-cn.acks) {
					return
				}
			}
		case <-timeout.C:
		}
		o.Outcome, o.Complete = check.Unknown, time.Now()
		c.settle(o, kind)
		c.disconnect(closeAbandon)
		return
	}
}

// settle records o and updates what the client knows about its own track.
func (c *client) settle(o check.Op, kind string) {
	c.rec.op(o)
	if kind == check.KindAddTrack || kind == check.KindDeleteTrack {
		c.known = o.Outcome == check.OK
		c.hasTrack = kind == check.KindAddTrack
	}
}

// send writes a message that needs no answer.
func (c *client) send(ctx context.Context, msg string) {
	wctx, cancel := context.WithTimeout(ctx, httpTimeout)
	defer cancel()
	if err := c.conn.ws.Write(wctx, websocket.MessageText, []byte(msg)); err != nil {
		c.disconnect(closeAbandon)
	}
}

// read does a linearizable HTTP read and records it as a read of the
// tempo, the name, the client's own track and every register of one stable
// track. HTTP goes to the node the client's socket is on, as a browser's
// would behind a load balancer, so a fault stalls only that node's clients.
func (c *client) read(ctx context.Context) {
	node := c.node
	track := stableTrackID(c.rng.IntN(stableTracks))
	start := time.Now()
	body, status, err := c.do(ctx, http.MethodGet, node, "/api/sessions/"+c.sess.id, nil)
	end := time.Now()
	var regs map[string]string
	if err == nil && status == http.StatusOK {
		regs, err = registers(body, c.sess.clients)
	} else if err == nil {
		err = fmt.Errorf("HTTP %d", status)
	}
	if err != nil {
		c.rec.op(check.Op{Client: c.id, Session: c.sess.id, Kind: check.KindRead, Key: "*", Invoke: start, Complete: end, Outcome: check.Failed})
		return
	}
	c.reads++
	id := "r" + strconv.Itoa(c.id) + "-" + strconv.Itoa(c.reads) // one HTTP read, recorded as one op per register
	keys := []string{tempoKey, nameKey, existsKey(clientTrackID(c.id)), check.VolumeKey(track)}
	for s := range stepRegs {
		keys = append(keys, check.StepKey(track, s))
	}
	for s := range lockRegs {
		keys = append(keys, check.LockKey(track, s))
	}
	for _, k := range keys {
		c.rec.op(check.Op{Client: c.id, Session: c.sess.id, Kind: check.KindRead, Key: k, Value: regs[k], OpID: id, Invoke: start, Complete: end, Outcome: check.OK})
	}
	c.known, c.hasTrack = true, regs[existsKey(clientTrackID(c.id))] == "true"
}

// rename is the HTTP write: PATCH the session's name through the client's node.
func (c *client) rename(ctx context.Context) {
	c.renames++
	name := "c" + strconv.Itoa(c.id) + "-" + strconv.Itoa(c.renames)
	o := check.Op{Client: c.id, Session: c.sess.id, Kind: check.KindRename, Key: nameKey, Value: name, Invoke: time.Now()}
	_, status, err := c.do(ctx, http.MethodPatch, c.node, "/api/sessions/"+c.sess.id, []byte(`{"name":"`+name+`"}`))
	o.Complete = time.Now()
	switch {
	case err == nil && status == http.StatusOK:
		o.Outcome = check.OK
	case err == nil && status >= 400 && status < 500:
		o.Outcome = check.Failed // refused before it reached the log
	default:
		o.Outcome = check.Unknown // a timeout or a 5xx may follow a commit
	}
	c.rec.op(o)
}

func (c *client) do(ctx context.Context, method string, node int, path string, body []byte) ([]byte, int, error) {
	ctx, cancel := context.WithTimeout(ctx, httpTimeout)
	defer cancel()
	return testcluster.HTTPDo(ctx, c.http, method, "http://"+c.nodes[node]+path, "", body)
}

// connect opens a socket on a node other than the last one, resuming with
// ?since= from the highest seq seen, and waits for the first frame (a
// snapshot, or a resume before a replay).
func (c *client) connect(ctx context.Context) error {
	if c.conns > 0 && len(c.nodes) > 1 {
		c.node = (c.node + 1 + c.rng.IntN(len(c.nodes)-1)) % len(c.nodes)
	}
	url := "ws://" + c.nodes[c.node] + "/api/sessions/" + c.sess.id + "/ws"
	since := c.since()
	if since > 0 {
		url += "?since=" + strconv.FormatUint(since, 10)
	}
	dctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	ws, resp, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPClient: c.http})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return fmt.Errorf("dial n%d: %w", c.node+1, err)
	}
	ws.SetReadLimit(maxFrameSize)
	rctx, rcancel := context.WithCancel(context.Background())
	cn := &conn{ws: ws, n: c.conns, node: "n" + strconv.Itoa(c.node+1), acks: make(chan frame, 1024), done: make(chan struct{}), cancel: rcancel}
	c.conns++
	c.rec.Opened(check.Conn{Client: c.id, Conn: cn.n, Node: cn.node, Session: c.sess.id, Since: since, At: time.Now()})
	first := make(chan string, 1)
	go c.readLoop(rctx, cn, first)
	select {
	case p := <-first:
		cn.player = p
		c.conn = cn
		return nil
	case <-cn.done:
	case <-dctx.Done():
	}
	c.conn = cn
	c.disconnect(closeAbandon)
	return fmt.Errorf("n%d sent no snapshot within %v", c.node+1, joinTimeout)
}

// readLoop records every frame with a seq as a delivery and hands this
// player's acks and snapshots to the op loop.
func (c *client) readLoop(ctx context.Context, cn *conn, first chan<- string) {
	defer close(cn.done)
	defer c.rec.recovered("the reader of client " + strconv.Itoa(c.id))
	player, joined := "", false
	for {
		typ, data, err := cn.ws.Read(ctx)
		now := time.Now()
		if err != nil {
			code := int(cn.code.Load())
			if code == 0 {
				code = int(websocket.CloseStatus(err))
				if code < 0 {
					code = int(websocket.StatusAbnormalClosure)
				}
			}
			c.rec.Closed(check.Close{Client: c.id, Conn: cn.n, Code: code, At: now})
			return
		}
		if typ != websocket.MessageText || len(data) == 0 || data[0] != '{' {
			continue
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			continue
		}
		if !joined && (f.Type == "snapshot" || f.Type == "resume") {
			player, joined = f.PlayerID, true
			first <- player
		}
		// A resume frame's seq is where the replay ends, not a broadcast:
		// the replayed broadcasts follow it with their own seqs.
		if f.Seq > 0 && f.Type != "resume" {
			typ := f.Type
			if typ == "snapshot" {
				typ = check.TypeSnapshot
			}
			d := check.Delivery{Client: c.id, Conn: cn.n, Node: cn.node, Session: c.sess.id, Seq: f.Seq, PrevSeq: f.PrevSeq,
				Type: typ, PlayerID: f.PlayerID, ClientSeq: f.ClientSeq, At: now}
			if typ == "step_toggled" {
				d.Value = strconv.FormatBool(string(f.Value) == "true")
			}
			c.rec.Delivery(d)
			c.seenSeq(f.Seq)
		}
		if f.ClientSeq > 0 && f.PlayerID == player {
			select {
			case cn.acks <- f:
			default: // the op loop is far behind; it only needs its own acks, and it will time out
			}
		}
	}
}

// disconnect closes the current socket and waits for its reader. An
// orderly switch does the close handshake; an abandoned socket (its server
// may be paused or cut off) is dropped at once.
func (c *client) disconnect(code websocket.StatusCode) {
	cn := c.conn
	if cn == nil {
		return
	}
	c.conn = nil
	cn.code.CompareAndSwap(0, int64(code))
	if code == closeSwitch {
		_ = cn.ws.Close(code, "chaos client switches node") // an error means the socket was already gone
	}
	_ = cn.ws.CloseNow() // idem
	cn.cancel()
	<-cn.done
}
