package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"chorus/testcluster"
)

// Timing of the load's own calls. An op without its acknowledgement within
// ackTimeout counts as lost for the closed loop, which then sends the next.
const (
	ackTimeout   = 5 * time.Second
	dialTimeout  = 10 * time.Second
	httpTimeout  = 10 * time.Second
	maxFrameSize = 1 << 20
)

// Tracks and steps of every session the load creates: a small song, four
// tracks of 16 steps, like a new Keyboardia session after a minute of use.
const (
	loadTracks = 4
	loadSteps  = 16
)

// initialState is the state every session of a run starts with.
func initialState() string {
	tracks := make([]string, loadTracks)
	for i := range tracks {
		id := "t" + strconv.Itoa(i)
		tracks[i] = `{"id":"` + id + `","name":"Track ` + id + `","sampleId":"kick","steps":[],"parameterLocks":[],` +
			`"volume":1,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":16}`
	}
	return `{"tracks":[` + strings.Join(tracks, ",") + `],"tempo":120,"swing":0,"version":1}`
}

// sample is one measured latency: when the op was sent and how long its
// broadcast took to arrive.
type sample struct {
	at  time.Time
	lat time.Duration
}

// sendKey names one sent op as its broadcasts name it.
type sendKey struct {
	player string
	cs     uint64
}

// inflight is an op whose broadcast has not reached every socket yet.
type inflight struct {
	at   time.Time
	left int // sockets still to receive it, the sender's included
}

// session is one session of the load and its players.
type session struct {
	id      string
	players []*player

	mu      sync.Mutex // guards pending, all and sent
	pending map[sendKey]*inflight
	all     []sample      // per op: until the last socket had it
	sent    []time.Time   // when each op was sent
	mark    *atomic.Int64 // unix ns: receipts of ops sent from then on set firstAfter; shared by the load
}

// player is one WebSocket client: one socket at a time, a reader goroutine,
// and ops sent by whichever driver owns it.
type player struct {
	s     *session
	addrs []string     // every node's HTTP address
	node  atomic.Int32 // index of the node its socket is on (or goes to next)

	sock   atomic.Pointer[sock]
	id     atomic.Pointer[string] // the playerId the server gave it; set by connect
	acks   chan uint64            // its own acknowledged clientSeqs, for the closed loop
	cs     atomic.Uint64          // clientSeq of its last op
	seq    atomic.Uint64          // highest seq seen
	live   atomic.Bool            // the socket is open and its reader running
	drops  atomic.Int64           // sockets that ended without being asked to
	closed atomic.Int64           // the close code of the last socket that ended unasked

	// firstAfter is when the player first received the broadcast of an op
	// sent at or after its session's mark (unix ns; 0: not yet), and
	// ackAfter the same for its own acknowledgements.
	firstAfter, ackAfter atomic.Int64

	mu         sync.Mutex // guards the fields below; written by the reader
	ack, e2e   []sample   // own acknowledgements; other players' broadcasts
	deliveries int64      // broadcasts (frames with a seq) received
	bytes      int64      // bytes of every frame received
}

// sock is one connection of a player.
type sock struct {
	ws     *websocket.Conn
	done   chan struct{} // closed when the reader has stopped
	cancel context.CancelFunc
	asked  atomic.Bool // the player closed it
}

// noMark is a mark no op is sent after (see session.mark).
const noMark = 1 << 62

// newPlayer adds a player to s whose socket goes to node n.
func newPlayer(s *session, addrs []string, n int) *player {
	p := &player{s: s, addrs: addrs, acks: make(chan uint64, 16)}
	p.node.Store(int32(n))
	s.players = append(s.players, p)
	return p
}

// frame is the part of a server message the players read.
type frame struct {
	Type      string `json:"type"`
	Seq       uint64 `json:"seq"`
	ClientSeq uint64 `json:"clientSeq"`
	PlayerID  string `json:"playerId"`
}

// scanFrame reads the envelope fields of a broadcast without decoding the
// whole frame: the load generator shares the machine with the nodes, so it
// spends as little CPU per frame as it can. It finds the top-level keys by
// their quoted names, which is exact for the frames the load provokes (no
// string value of theirs contains a quoted key). Frames without a seq need
// nothing more than their type.
func scanFrame(data []byte) (frame, bool) {
	var f frame
	if len(data) == 0 || data[0] != '{' {
		return f, false
	}
	f.Seq = scanUint(data, `"seq":`)
	if f.Seq == 0 {
		return f, true
	}
	f.ClientSeq = scanUint(data, `"clientSeq":`)
	if i := bytes.Index(data, []byte(`"playerId":"`)); i >= 0 {
		rest := data[i+len(`"playerId":"`):]
		if j := bytes.IndexByte(rest, '"'); j >= 0 {
			f.PlayerID = string(rest[:j])
		}
	}
	return f, true
}

// scanUint returns the unsigned integer after key in data, or 0.
func scanUint(data []byte, key string) uint64 {
	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return 0
	}
	var v uint64
	for _, c := range data[i+len(key):] {
		if c < '0' || c > '9' {
			break
		}
		v = v*10 + uint64(c-'0')
	}
	return v
}

// joinCost is what one connection cost to open: until its first frame.
type joinCost struct {
	took  time.Duration
	bytes int
}

// connect opens p's socket (resuming after since when it is not 0), waits
// for the snapshot (or the resume and its replay) and starts the reader.
func (p *player) connect(ctx context.Context, hc *http.Client, since uint64) (joinCost, error) {
	addr := p.addrs[p.node.Load()]
	url := "ws://" + addr + "/api/sessions/" + p.s.id + "/ws"
	if since > 0 {
		url += "?since=" + strconv.FormatUint(since, 10)
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	start := time.Now()
	ws, resp, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPClient: hc})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		return joinCost{}, fmt.Errorf("dial %s: %w", addr, err)
	}
	ws.SetReadLimit(maxFrameSize)
	cost := joinCost{}
	// Read the first frame here: a snapshot, or a resume frame followed by
	// the replayed broadcasts up to its seq.
	var until uint64
	id := ""
	for {
		_, data, err := ws.Read(dctx)
		if err != nil {
			ws.CloseNow()
			return joinCost{}, fmt.Errorf("join %s on %s: %w", p.s.id, addr, err)
		}
		cost.bytes += len(data)
		var f frame
		if len(data) == 0 || data[0] != '{' || json.Unmarshal(data, &f) != nil {
			continue
		}
		switch {
		case f.Type == "snapshot":
			id = f.PlayerID
			p.seq.Store(f.Seq)
		case f.Type == "resume":
			id, until = f.PlayerID, f.Seq
		case f.Seq > 0:
			p.seq.Store(f.Seq)
		}
		if id != "" && p.seq.Load() >= until {
			break
		}
	}
	p.id.Store(&id)
	cost.took = time.Since(start)
	rctx, rcancel := context.WithCancel(context.Background())
	sk := &sock{ws: ws, cancel: rcancel, done: make(chan struct{})}
	p.sock.Store(sk)
	p.live.Store(true)
	go p.read(rctx, sk)
	return cost, nil
}

// read handles every frame until the socket ends.
func (p *player) read(ctx context.Context, sk *sock) {
	defer close(sk.done)
	for {
		_, data, err := sk.ws.Read(ctx)
		now := time.Now()
		if err != nil {
			p.live.Store(false)
			if !sk.asked.Load() {
				code := websocket.CloseStatus(err)
				if code < 0 {
					code = websocket.StatusAbnormalClosure
				}
				p.closed.Store(int64(code))
				p.drops.Add(1)
			}
			return
		}
		f, ok := scanFrame(data)
		if !ok {
			p.mu.Lock()
			p.bytes += int64(len(data))
			p.mu.Unlock()
			continue
		}
		if f.Seq > 0 {
			p.seq.Store(max(p.seq.Load(), f.Seq))
		}
		own := f.PlayerID == *p.id.Load()
		var at time.Time
		if f.Seq > 0 && f.ClientSeq > 0 {
			at = p.s.received(sendKey{f.PlayerID, f.ClientSeq}, now)
		}
		if !at.IsZero() && at.UnixNano() >= p.s.mark.Load() {
			p.firstAfter.CompareAndSwap(0, now.UnixNano())
			if own {
				p.ackAfter.CompareAndSwap(0, now.UnixNano())
			}
		}
		p.mu.Lock()
		p.bytes += int64(len(data))
		if f.Seq > 0 {
			p.deliveries++
		}
		if !at.IsZero() {
			if own {
				p.ack = append(p.ack, sample{at, now.Sub(at)})
			} else {
				p.e2e = append(p.e2e, sample{at, now.Sub(at)})
			}
		}
		p.mu.Unlock()
		if own && f.ClientSeq > 0 {
			select {
			case p.acks <- f.ClientSeq:
			default: // no closed loop is waiting
			}
		}
	}
}

// received counts one socket's receipt of an op's broadcast and returns the
// op's send time, or the zero time for an op the load did not time.
func (s *session) received(k sendKey, now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.pending[k]
	if !ok {
		return time.Time{}
	}
	in.left--
	if in.left <= 0 {
		delete(s.pending, k)
		s.all = append(s.all, sample{in.at, now.Sub(in.at)})
	}
	return in.at
}

// send sends one mutation from p and returns its clientSeq. Every socket of
// the session that is open is expected to receive its broadcast. Its
// latencies count from due, when the op was due to be sent, or from now when
// due is zero: an open loop that falls behind its schedule then shows it in
// the latencies instead of hiding it.
func (p *player) send(ctx context.Context, rng *rand.Rand, due time.Time) (uint64, error) {
	cs := p.cs.Add(1)
	msg := mutation(rng) + `,"seq":` + strconv.FormatUint(cs, 10) + `,"ack":` + strconv.FormatUint(p.seq.Load(), 10) + `}`
	open := 0
	for _, o := range p.s.players {
		if o.live.Load() {
			open++
		}
	}
	sk := p.sock.Load()
	if sk == nil {
		return cs, errors.New("not connected")
	}
	now := time.Now()
	if !due.IsZero() && due.Before(now) {
		now = due
	}
	p.s.mu.Lock()
	p.s.pending[sendKey{*p.id.Load(), cs}] = &inflight{at: now, left: open}
	p.s.sent = append(p.s.sent, now)
	p.s.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, ackTimeout)
	defer cancel()
	return cs, sk.ws.Write(wctx, websocket.MessageText, []byte(msg))
}

// mutation is one edit of the kind people make most, without the envelope's
// seq, ack and closing brace: mostly step toggles, some volume, tempo and
// parameter-lock changes.
func mutation(rng *rand.Rand) string {
	track := `"t` + strconv.Itoa(rng.IntN(loadTracks)) + `"`
	step := strconv.Itoa(rng.IntN(loadSteps))
	switch p := rng.IntN(100); {
	case p < 70:
		return `{"type":"toggle_step","trackId":` + track + `,"step":` + step
	case p < 80:
		return `{"type":"set_track_volume","trackId":` + track + `,"volume":0.` + strconv.Itoa(rng.IntN(10))
	case p < 90:
		return `{"type":"set_tempo","tempo":` + strconv.Itoa(80+rng.IntN(80))
	default:
		return `{"type":"set_parameter_lock","trackId":` + track + `,"step":` + step +
			`,"lock":{"pitch":` + strconv.Itoa(rng.IntN(25)-12) + `,"volume":0.5}`
	}
}

// disconnect closes p's socket and waits for its reader.
func (p *player) disconnect() {
	sk := p.sock.Swap(nil)
	if sk == nil {
		return
	}
	sk.asked.Store(true)
	p.live.Store(false)
	_ = sk.ws.Close(websocket.StatusNormalClosure, "bench player leaves") // an error means the socket was already gone
	_ = sk.ws.CloseNow()                                                  // idem
	sk.cancel()
	<-sk.done
}

// load is the sessions and players of one scenario.
type load struct {
	hc       *http.Client
	addrs    []string // the nodes' HTTP addresses
	sessions []*session
	players  []*player
	joins    []joinCost
	mark     *atomic.Int64 // see session.mark
}

// createSessions creates n sessions with the initial state, spread over the
// nodes, conc at a time, and reports progress through tick.
func createSessions(ctx context.Context, hc *http.Client, addrs []string, n, conc int, tick func(done int)) ([]string, error) {
	ids := make([]string, n)
	body := []byte(`{"name":"bench","state":` + initialState() + `}`)
	var next, done atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, conc)
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				id, err := createOne(ctx, hc, addrs[i%len(addrs)], body)
				if err != nil {
					errs[w] = err
					return
				}
				ids[i] = id
				if d := int(done.Add(1)); tick != nil && d%1000 == 0 {
					tick(d)
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return ids, ctx.Err()
}

// createOne creates one session through the node at addr, retrying while
// the cluster is briefly unavailable (an election).
func createOne(ctx context.Context, hc *http.Client, addr string, body []byte) (string, error) {
	var id string
	err := testcluster.Poll(30*time.Second, func() error {
		if ctx.Err() != nil {
			return nil
		}
		rctx, cancel := context.WithTimeout(ctx, httpTimeout)
		defer cancel()
		b, status, err := testcluster.HTTPDo(rctx, hc, http.MethodPost, "http://"+addr+"/api/sessions", "", body)
		if err != nil || status != http.StatusCreated {
			return fmt.Errorf("create a session on %s: HTTP %d %s %v", addr, status, b, err)
		}
		var created struct{ ID string }
		if err := json.Unmarshal(b, &created); err != nil || created.ID == "" {
			return fmt.Errorf("create a session on %s: answer %s: %v", addr, b, err)
		}
		id = created.ID
		return nil
	})
	if err == nil && id == "" {
		err = ctx.Err()
	}
	return id, err
}

// newLoad creates sessions × players and connects every player, spreading
// the sockets over the nodes (player j of session i on node (i+j) mod
// nodes), or all on node onNode when it is not negative.
func newLoad(ctx context.Context, hc *http.Client, addrs []string, sessions, players, onNode int, progress func(string)) (*load, error) {
	l, err := prepareLoad(ctx, hc, addrs, sessions, players, onNode)
	if err != nil {
		return nil, err
	}
	if err := l.connect(ctx, progress); err != nil {
		return nil, err
	}
	return l, nil
}

// prepareLoad is newLoad without connecting the players: the sessions exist,
// the sockets do not yet.
func prepareLoad(ctx context.Context, hc *http.Client, addrs []string, sessions, players, onNode int) (*load, error) {
	l := &load{hc: hc, addrs: addrs, mark: new(atomic.Int64)}
	l.mark.Store(noMark)
	ids, err := createSessions(ctx, hc, addrs, sessions, min(64, sessions), nil)
	if err != nil {
		return nil, err
	}
	for i, id := range ids {
		s := &session{id: id, pending: map[sendKey]*inflight{}, mark: l.mark}
		for j := range players {
			n := (i + j) % len(addrs)
			if onNode >= 0 {
				n = onNode
			}
			p := newPlayer(s, addrs, n)
			l.players = append(l.players, p)
		}
		l.sessions = append(l.sessions, s)
	}
	return l, nil
}

// connect opens every player's socket, 64 at a time; on failure it closes
// those it opened.
func (l *load) connect(ctx context.Context, progress func(string)) error {
	l.joins = make([]joinCost, len(l.players))
	var next, done atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, 64)
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(l.players) || ctx.Err() != nil {
					return
				}
				cost, err := l.players[i].connect(ctx, l.hc, 0)
				if err != nil {
					errs[w] = err
					return
				}
				l.joins[i] = cost
				if d := done.Add(1); progress != nil && d%1000 == 0 {
					progress(fmt.Sprintf("%d of %d sockets open", d, len(l.players)))
				}
			}
		}()
	}
	wg.Wait()
	err := errors.Join(errs...)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		l.close()
	}
	return err
}

// close disconnects every player.
func (l *load) close() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, p := range l.players {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			p.disconnect()
			<-sem
		}()
	}
	wg.Wait()
}

// openLoop sends rate mutations per second into every session, from its
// players in turn, without waiting for acknowledgements, until ctx ends.
func (l *load) openLoop(ctx context.Context, rate float64, seed uint64) *sync.WaitGroup {
	var wg sync.WaitGroup
	every := time.Duration(float64(time.Second) / rate)
	for i, s := range l.sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			pace := newPacer(time.Now(), every, rng)
			t := time.NewTimer(pace.wait(time.Now()))
			defer t.Stop()
			for k := 0; ; k++ {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				p := s.players[k%len(s.players)]
				if p.live.Load() {
					_, _ = p.send(ctx, rng, pace.next) // a failed write shows as a missing acknowledgement
				}
				pace.sent()
				t.Reset(pace.wait(time.Now()))
			}
		}()
	}
	return &wg
}

// pacer spaces one session's sends every apart, starting at a random phase
// so that the sessions do not send in step. The schedule keeps the phase
// and the average rate when a send is late.
type pacer struct {
	next  time.Time
	every time.Duration
}

func newPacer(now time.Time, every time.Duration, rng *rand.Rand) pacer {
	return pacer{next: now.Add(time.Duration(rng.Int64N(int64(every)))), every: every}
}

// wait is how long until the next send is due.
func (p *pacer) wait(now time.Time) time.Duration { return max(0, p.next.Sub(now)) }

// sent moves the schedule on by one send.
func (p *pacer) sent() { p.next = p.next.Add(p.every) }

// closedLoop makes each of writers send its next mutation as soon as its
// previous one is acknowledged, until ctx ends. It returns the number of
// acknowledged and timed-out ops.
func closedLoop(ctx context.Context, writers []*player, seed uint64) (acked, lost int64) {
	var a, lo atomic.Int64
	var wg sync.WaitGroup
	for i, p := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for ctx.Err() == nil {
				cs, err := p.send(ctx, rng, time.Time{})
				if err != nil {
					if ctx.Err() == nil {
						lo.Add(1)
					}
					return
				}
				if waitAck(ctx, p, cs) {
					a.Add(1)
				} else if ctx.Err() == nil {
					lo.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return a.Load(), lo.Load()
}

// waitAck waits until p's op cs is acknowledged, its socket ends or the
// ack timeout passes.
func waitAck(ctx context.Context, p *player, cs uint64) bool {
	sk := p.sock.Load()
	if sk == nil {
		return false
	}
	done := sk.done
	t := time.NewTimer(ackTimeout)
	defer t.Stop()
	for {
		select {
		case got := <-p.acks:
			if got >= cs {
				return true
			}
		case <-done:
			return false
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// stats gathers what the players measured for ops sent in [from, to).
type stats struct {
	ack, e2e, all []time.Duration
	ackByNode     map[int][]time.Duration // ack by the node the sender's socket is on
	deliveries    int64
	bytes         int64
	sent          int // ops sent
	closed        int // sockets that ended without being asked
}

func (l *load) stats(from, to time.Time) stats {
	st := stats{ackByNode: map[int][]time.Duration{}}
	in := func(s sample) bool { return !s.at.Before(from) && s.at.Before(to) }
	for _, p := range l.players {
		node := int(p.node.Load())
		p.mu.Lock()
		for _, s := range p.ack {
			if in(s) {
				st.ack = append(st.ack, s.lat)
				st.ackByNode[node] = append(st.ackByNode[node], s.lat)
			}
		}
		for _, s := range p.e2e {
			if in(s) {
				st.e2e = append(st.e2e, s.lat)
			}
		}
		st.deliveries += p.deliveries
		st.bytes += p.bytes
		p.mu.Unlock()
		st.closed += int(p.drops.Load())
	}
	for _, s := range l.sessions {
		s.mu.Lock()
		for _, x := range s.all {
			if in(x) {
				st.all = append(st.all, x.lat)
			}
		}
		for _, at := range s.sent {
			if in(sample{at: at}) {
				st.sent++
			}
		}
		s.mu.Unlock()
	}
	return st
}

// counters returns the total broadcasts and bytes received so far, for
// rates over a window.
func (l *load) counters() (deliveries, bytes int64) {
	for _, p := range l.players {
		d, b := p.counters()
		deliveries, bytes = deliveries+d, bytes+b
	}
	return deliveries, bytes
}

// counters returns the broadcasts and bytes p received so far.
func (p *player) counters() (deliveries, bytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.deliveries, p.bytes
}

// reset drops the samples gathered so far (after a warm-up).
func (l *load) reset() {
	for _, p := range l.players {
		p.mu.Lock()
		p.ack, p.e2e = nil, nil
		p.mu.Unlock()
	}
	for _, s := range l.sessions {
		s.mu.Lock()
		s.all, s.sent = nil, nil
		s.mu.Unlock()
	}
}
