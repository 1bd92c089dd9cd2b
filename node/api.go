package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"chorus/fsm"
	"chorus/transport"
)

// API implements transport.Backend: it translates the Keyboardia HTTP and
// WebSocket calls into log commands, and applied events into the frames
// each socket receives.
type API struct {
	n   *Node
	log hclog.Logger

	actMu    sync.Mutex // guards activity and snapTS
	activity map[string]*activity
	snapTS   map[string]int64 // last snapshotTimestamp sent per session

	touchMu sync.Mutex // guards touches
	touches map[string]int64

	cursors chan cursorRelay
	bg      sync.WaitGroup // background leaves
}

var _ transport.Backend = (*API)(nil)

// activity is what a node knows of its own players beyond the log.
type activity struct {
	lastMessageAt atomic.Int64
	messages      atomic.Int64
}

type cursorRelay struct {
	session, exclude string
	frame            []byte
}

func newAPI(n *Node) *API {
	return &API{
		n: n, log: n.log.Named("api"),
		activity: map[string]*activity{},
		snapTS:   map[string]int64{},
		touches:  map[string]int64{},
		cursors:  make(chan cursorRelay, 256),
	}
}

// API returns the node's Keyboardia backend.
func (n *Node) API() *API { return n.api }

// run flushes access times, relays cursors and closes sockets while there
// is no leader, until ctx ends.
func (a *API) run(ctx context.Context) {
	flush := time.NewTicker(5 * time.Second)
	defer flush.Stop()
	leader := time.NewTicker(250 * time.Millisecond)
	defer leader.Stop()
	var lastLeader time.Time = time.Now()
	for {
		select {
		case <-ctx.Done():
			a.bg.Wait()
			return
		case <-flush.C:
			a.flushTouches(ctx)
		case c := <-a.cursors:
			a.relayCursor(ctx, c)
		case <-leader.C:
			if _, id := a.n.raft.LeaderWithID(); id != "" {
				lastLeader = time.Now()
			} else if time.Since(lastLeader) > a.n.cfg.NoLeaderTimeout && a.n.hub.count() > 0 {
				a.log.Warn("no leader: closing sockets so clients move to a healthy node", "for", time.Since(lastLeader).Round(time.Millisecond))
				a.n.hub.endAll(ErrNoLeader)
			}
		}
	}
}

func (a *API) now() int64 { return a.n.cfg.Now().UnixMilli() }

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// submit is Submit with the API's error mapping.
func (a *API) submit(ctx context.Context, c fsm.Command) (fsm.Result, error) {
	res, err := a.n.Submit(ctx, c)
	if err != nil {
		return res, err
	}
	switch res.Status {
	case fsm.StatusNotFound:
		return res, transport.ErrNotFound
	case fsm.StatusPublished:
		return res, transport.ErrPublished
	case fsm.StatusAlreadyPublished:
		return res, transport.ErrAlreadyPublished
	case fsm.StatusFull:
		return res, transport.ErrFull
	case fsm.StatusTooOld:
		// Not applied now; an earlier attempt of the op may have been.
		return res, fmt.Errorf("%s %s: %w", c.Kind, res.Status, transport.ErrOutcomeUnknown)
	}
	return res, nil
}

// CreateSession validates the initial state and name and creates the session.
func (a *API) CreateSession(ctx context.Context, name, state json.RawMessage) (string, error) {
	details := fsm.ValidateState(state)
	var namep *string
	if name != nil {
		details = append(details, fsm.ValidateName(name)...)
		var s *string
		if json.Unmarshal(name, &s) == nil {
			namep = s
		}
	}
	if len(details) > 0 {
		return "", &transport.ValidationError{Details: details}
	}
	for {
		id := newUUID()
		res, err := a.submit(ctx, fsm.Command{Kind: fsm.KindCreate, Session: id, Name: namep, State: state})
		if err != nil {
			return "", err
		}
		switch res.Status {
		case fsm.StatusOK:
			return id, nil
		case fsm.StatusExists:
			continue // a fresh random id collided: draw again
		}
		return "", fmt.Errorf("create session: %s", res.Status)
	}
}

// GetSession returns the Session JSON with lastAccessedAt set to now; the
// access time reaches the log in batches.
func (a *API) GetSession(ctx context.Context, id string, stale bool) ([]byte, error) {
	if !stale {
		if err := a.n.Barrier(ctx); err != nil {
			return nil, err
		}
	}
	now := a.now()
	var out []byte
	a.n.View(func(st *fsm.State, _ uint64) {
		s := st.Session(id)
		if s == nil {
			return
		}
		view := *s
		view.LastAccessedAt = max(now, s.LastAccessedAt)
		out = view.AppendJSON(nil)
	})
	if out == nil {
		return nil, transport.ErrNotFound
	}
	a.touchMu.Lock()
	a.touches[id] = now
	flush := len(a.touches) >= 10000
	a.touchMu.Unlock()
	if flush {
		a.flushTouches(ctx)
	}
	return out, nil
}

func (a *API) flushTouches(ctx context.Context) {
	a.touchMu.Lock()
	batch := a.touches
	a.touches = map[string]int64{}
	a.touchMu.Unlock()
	if len(batch) == 0 {
		return
	}
	c := fsm.Command{Kind: fsm.KindTouch}
	for id, at := range batch {
		c.Touches = append(c.Touches, fsm.Touch{Session: id, At: at})
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := a.n.Submit(sctx, c); err != nil {
		a.log.Debug("access times not recorded", "sessions", len(batch), "error", err)
	}
}

// Immutable reads the flag from local state: it never changes after create.
func (a *API) Immutable(id string) (immutable, ok bool) {
	a.n.View(func(st *fsm.State, _ uint64) {
		if s := st.Session(id); s != nil {
			immutable, ok = s.Immutable, true
		}
	})
	return immutable, ok
}

// ReplaceState is PUT: ignored (but answered 200) while players are connected.
func (a *API) ReplaceState(ctx context.Context, id string, state json.RawMessage) (int64, error) {
	if details := fsm.ValidateState(state); len(details) > 0 {
		return 0, &transport.ValidationError{Details: details}
	}
	c := fsm.Command{Kind: fsm.KindReplaceState, Session: id, State: state, At: a.now()}
	if _, err := a.submit(ctx, c); err != nil {
		return 0, err
	}
	return c.At, nil
}

// Rename is PATCH.
func (a *API) Rename(ctx context.Context, id string, name json.RawMessage) ([]byte, error) {
	if details := fsm.ValidateName(name); len(details) > 0 {
		return nil, &transport.ValidationError{Details: details}
	}
	var namep *string
	if err := json.Unmarshal(name, &namep); err != nil {
		return nil, &transport.ValidationError{Details: []string{"Name must be a string or null"}}
	}
	c := fsm.Command{Kind: fsm.KindRename, Session: id, Name: namep, At: a.now()}
	if _, err := a.submit(ctx, c); err != nil {
		return nil, err
	}
	type resp struct {
		ID        string  `json:"id"`
		Name      *string `json:"name"`
		UpdatedAt int64   `json:"updatedAt"`
	}
	r := resp{ID: id, UpdatedAt: c.At}
	if namep != nil {
		if n, ok := fsm.NormalizeName(*namep); ok {
			r.Name = &n
		}
	}
	return json.Marshal(r)
}

// Remix copies the live state into a new editable session.
func (a *API) Remix(ctx context.Context, id string) (string, error) {
	return a.copy(ctx, fsm.KindRemix, id)
}

// Publish copies the live state into a new immutable session.
func (a *API) Publish(ctx context.Context, id string) (string, error) {
	return a.copy(ctx, fsm.KindPublish, id)
}

func (a *API) copy(ctx context.Context, kind fsm.Kind, id string) (string, error) {
	for {
		target := newUUID()
		res, err := a.submit(ctx, fsm.Command{Kind: kind, Session: id, Target: target})
		if err != nil {
			return "", err
		}
		if res.Status == fsm.StatusExists {
			continue
		}
		return target, nil
	}
}

func isoTime(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z")
}

// SessionDebug is /api/debug/session/{id}.
func (a *API) SessionDebug(_ context.Context, id string) ([]byte, error) {
	type track struct {
		ID          string `json:"id"`
		Name        string `json:"name"`
		SampleID    string `json:"sampleId"`
		ActiveSteps int    `json:"activeSteps"`
		StepCount   int    `json:"stepCount"`
	}
	type body struct {
		ID             string  `json:"id"`
		Exists         bool    `json:"exists"`
		CreatedAt      string  `json:"createdAt"`
		UpdatedAt      string  `json:"updatedAt"`
		LastAccessedAt string  `json:"lastAccessedAt"`
		RemixedFrom    *string `json:"remixedFrom"`
		RemixCount     int64   `json:"remixCount"`
		State          struct {
			TrackCount int     `json:"trackCount"`
			Tempo      float64 `json:"tempo"`
			Swing      float64 `json:"swing"`
			Version    float64 `json:"version"`
			Tracks     []track `json:"tracks"`
		} `json:"state"`
		SizeBytes int `json:"sizeBytes"`
	}
	var b *body
	a.n.View(func(st *fsm.State, _ uint64) {
		s := st.Session(id)
		if s == nil {
			return
		}
		b = &body{ID: id, Exists: true, CreatedAt: isoTime(s.CreatedAt), UpdatedAt: isoTime(s.UpdatedAt),
			LastAccessedAt: isoTime(s.LastAccessedAt), RemixCount: s.RemixCount, SizeBytes: len(s.AppendJSON(nil))}
		if s.RemixedFrom != "" {
			from := s.RemixedFrom
			b.RemixedFrom = &from
		}
		b.State.TrackCount, b.State.Tempo, b.State.Swing, b.State.Version = len(s.State.Tracks), s.State.Tempo, s.State.Swing, s.State.Version
		b.State.Tracks = []track{}
		for i := range s.State.Tracks {
			t := &s.State.Tracks[i]
			sc := fsm.DefaultStepCount
			if t.Has(fsm.FieldStepCount) && !t.IsNull(fsm.FieldStepCount) {
				sc = int(t.StepCount)
			}
			b.State.Tracks = append(b.State.Tracks, track{ID: t.ID, Name: t.Name, SampleID: t.SampleID, ActiveSteps: t.ActiveSteps(), StepCount: sc})
		}
	})
	if b == nil {
		return nil, transport.ErrNotFound
	}
	return json.MarshalIndent(b, "", "  ")
}

// RoomDebug is live-debug: the room's internals, or a default room for an unknown id.
func (a *API) RoomDebug(_ context.Context, id string) ([]byte, bool, error) {
	var out []byte
	exists := false
	a.n.View(func(st *fsm.State, _ uint64) {
		s := st.Session(id)
		state := fsm.SessionState{Tempo: fsm.DefaultTempo, Version: 1}
		var players []fsm.PlayerInfo
		var playing []string
		if s != nil {
			exists, state, players, playing = true, s.State, s.Players(), s.PlayingPlayerIDs()
		}
		b := []byte(`{"sessionId":`)
		b = strconv.AppendQuote(b, id)
		b = append(b, `,"connectedPlayers":`...)
		b = strconv.AppendInt(b, int64(len(players)), 10)
		b = append(b, `,"players":`...)
		b = a.appendPlayers(b, players)
		b = append(b, `,"playingPlayerIds":`...)
		pj, _ := json.Marshal(nonNil(playing)) // a []string always marshals
		b = append(b, pj...)
		b = append(b, `,"playingCount":`...)
		b = strconv.AppendInt(b, int64(len(playing)), 10)
		b = append(b, `,"trackCount":`...)
		b = strconv.AppendInt(b, int64(len(state.Tracks)), 10)
		tj, _ := json.Marshal(map[string]float64{"tempo": state.Tempo, "swing": state.Swing}) // floats from JSON are finite
		b = append(b, ',')
		b = append(b, tj[1:len(tj)-1]...)
		violations := state.Violations()
		inv, _ := json.Marshal(map[string]any{"valid": len(violations) == 0, "violations": nonNil(violations), "warnings": []string{}}) // plain values
		b = append(b, `,"pendingKVSave":false,"invariants":`...)
		b = append(b, inv...)
		out = append(b, '}')
	})
	return out, exists, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// appendPlayers writes PlayerInfo objects, with this node's activity for its own players.
func (a *API) appendPlayers(b []byte, players []fsm.PlayerInfo) []byte {
	b = append(b, '[')
	a.actMu.Lock()
	defer a.actMu.Unlock()
	for i, p := range players {
		if i > 0 {
			b = append(b, ',')
		}
		last, count := p.ConnectedAt, int64(0)
		if act := a.activity[p.ID]; act != nil {
			last, count = max(last, act.lastMessageAt.Load()), act.messages.Load()
		}
		b = p.AppendJSON(b, last, count)
	}
	return append(b, ']')
}

// StateHash is the hash of the live state.
func (a *API) StateHash(_ context.Context, id string) (string, error) {
	var h string
	a.n.View(func(st *fsm.State, _ uint64) {
		if s := st.Session(id); s != nil {
			h = s.Hash()
		}
	})
	if h == "" {
		return "", transport.ErrNotFound
	}
	return h, nil
}

// Connections lists this node's players of the session.
func (a *API) Connections(id string) []json.RawMessage {
	var out []json.RawMessage
	a.n.View(func(st *fsm.State, _ uint64) {
		s := st.Session(id)
		if s == nil {
			return
		}
		a.actMu.Lock()
		defer a.actMu.Unlock()
		for _, p := range s.Players() {
			act := a.activity[p.ID]
			if p.Node != a.n.cfg.ID || act == nil {
				continue
			}
			j, _ := json.Marshal(map[string]any{"id": p.ID, "connectedAt": p.ConnectedAt, // plain values
				"lastMessage": act.lastMessageAt.Load(), "messageCount": act.messages.Load()})
			out = append(out, j)
		}
	})
	return out
}

// SessionCount is the number of sessions in local state.
func (a *API) SessionCount() int {
	var n int
	a.n.View(func(st *fsm.State, _ uint64) { n = st.Len() })
	return n
}

// Members returns every member's announced HTTP address.
func (a *API) Members() []string {
	var out []string
	for _, m := range a.n.Status().Members {
		if m.HTTPAddr != "" {
			out = append(out, m.HTTPAddr)
		}
	}
	return out
}

// Join adds a player through the log and subscribes it.
func (a *API) Join(ctx context.Context, req transport.JoinRequest) (transport.Player, error) {
	if err := a.n.Barrier(ctx); err != nil {
		return nil, err
	}
	if _, ok := a.Immutable(req.Session); !ok {
		return nil, transport.ErrNotFound
	}
	p := &player{api: a, session: req.Session, id: newUUID()}
	res, err := a.submit(ctx, fsm.Command{Kind: fsm.KindPlayerJoin, Session: req.Session, Player: p.id, Node: a.n.cfg.ID, Epoch: a.n.Epoch()})
	if err != nil {
		if !errors.Is(err, transport.ErrNotFound) && !errors.Is(err, transport.ErrFull) {
			// The join may still commit after our deadline: take it back, or
			// the player would hold one of the 10 seats with no socket.
			p.Leave()
		}
		return nil, err
	}
	switch res.Status {
	case fsm.StatusOK:
	case fsm.StatusStaleEpoch:
		return nil, fmt.Errorf("this node's epoch was retired: %w", transport.ErrUnavailable)
	default:
		return nil, fmt.Errorf("join: %s", res.Status)
	}
	act := &activity{}
	act.lastMessageAt.Store(a.now())
	a.actMu.Lock()
	a.activity[p.id] = act
	a.actMu.Unlock()
	sub, err := a.n.Subscribe(req.Session, func(s *fsm.Session, _ uint64) {
		p.immutable = s.Immutable
		if req.Since != nil {
			if events, ok := s.Since(*req.Since); ok {
				p.first = append(p.first, a.resumeFrame(s, p.id, *req.Since))
				for i := range events {
					p.first = append(p.first, events[i].AppendJSON(nil))
				}
				return
			}
		}
		p.first = append(p.first, a.snapshotFrame(s, p.id))
	})
	if err != nil {
		p.Leave()
		if errors.Is(err, ErrSessionNotFound) {
			return nil, transport.ErrNotFound
		}
		return nil, err
	}
	p.sub = sub
	return p, nil
}

// snapshotFrame renders the snapshot message. snapshotTimestamp never goes
// backwards for a session: it is at least the newest proposer time in the
// log and the last one this node sent.
func (a *API) snapshotFrame(s *fsm.Session, playerID string) []byte {
	a.actMu.Lock()
	ts := max(a.now(), s.MaxAt, a.snapTS[s.ID])
	a.snapTS[s.ID] = ts
	a.actMu.Unlock()
	b := []byte(`{"type":"snapshot","state":`)
	b = s.State.AppendJSON(b)
	b = append(b, `,"players":`...)
	b = a.appendPlayers(b, s.Players())
	b = append(b, `,"playerId":`...)
	b = strconv.AppendQuote(b, playerID)
	b = append(b, `,"immutable":`...)
	b = strconv.AppendBool(b, s.Immutable)
	b = append(b, `,"snapshotTimestamp":`...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, `,"playingPlayerIds":`...)
	pj, _ := json.Marshal(nonNil(s.PlayingPlayerIDs())) // a []string always marshals
	b = append(b, pj...)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, s.LastSeq, 10)
	return append(b, '}')
}

// resumeFrame precedes a replay: who this socket is now and who is here.
func (a *API) resumeFrame(s *fsm.Session, playerID string, since uint64) []byte {
	b := []byte(`{"type":"resume","playerId":`)
	b = strconv.AppendQuote(b, playerID)
	b = append(b, `,"players":`...)
	b = a.appendPlayers(b, s.Players())
	b = append(b, `,"playingPlayerIds":`...)
	pj, _ := json.Marshal(nonNil(s.PlayingPlayerIDs())) // a []string always marshals
	b = append(b, pj...)
	b = append(b, `,"immutable":`...)
	b = strconv.AppendBool(b, s.Immutable)
	b = append(b, `,"since":`...)
	b = strconv.AppendUint(b, since, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, s.LastSeq, 10)
	return append(b, '}')
}

func (a *API) relayCursor(ctx context.Context, c cursorRelay) {
	var servers []raft.Server
	if f := a.n.raft.GetConfiguration(); f.Error() == nil {
		servers = f.Configuration().Servers
	}
	payload := make([]byte, 0, len(c.session)+len(c.exclude)+len(c.frame)+2)
	payload = append(payload, c.session...)
	payload = append(payload, 0)
	payload = append(payload, c.exclude...)
	payload = append(payload, 0)
	payload = append(payload, c.frame...)
	for _, s := range servers {
		if string(s.ID) == a.n.cfg.ID {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := a.n.peer.Call(cctx, string(s.Address), rpcCursor, payload)
		cancel()
		if err != nil {
			a.log.Trace("cursor relay dropped", "peer_id", s.ID, "error", err)
		}
	}
}

// serveCursor delivers a cursor frame relayed by another node.
func (a *API) serveCursor(req []byte) error {
	var parts [3][]byte
	rest := req
	for i := 0; i < 2; i++ {
		j := bytes.IndexByte(rest, 0)
		if j < 0 {
			return &transport.RPCError{Code: codeBadInput, Msg: "malformed cursor relay"}
		}
		parts[i], rest = rest[:j], rest[j+1:]
	}
	parts[2] = rest
	a.n.hub.publishFrame(string(parts[0]), string(parts[1]), parts[2])
	return nil
}

// player is one socket's membership.
type player struct {
	api       *API
	session   string
	id        string
	immutable bool
	first     [][]byte
	sub       *Subscription
	leaveOnce sync.Once

	// Snapshots asked for with request_snapshot go out through Next, in
	// order with the broadcasts: after the ones they include, before the
	// ones they do not. A reply written by the reader would overtake
	// queued broadcasts it already contains (the client applies them
	// twice) or trail newer ones it lacks (the client loses them).
	snapMu sync.Mutex // guards snaps
	snaps  []pendingSnapshot
	wake   atomic.Pointer[func()] // the socket's wake-up (SetWake), for queued snapshots
	held   *Delivery              // popped while a snapshot was waiting; Next's goroutine only
	skipTo uint64                 // events at or below are in a snapshot sent; Next's goroutine only
}

// maxPendingSnapshots bounds the snapshots queued for a socket whose writes
// are blocked.
const maxPendingSnapshots = 4

// pendingSnapshot is a rendered snapshot and the index it reflects.
type pendingSnapshot struct {
	frame []byte
	index uint64
}

// popSnapshot returns the oldest queued snapshot, or nil.
func (p *player) popSnapshot() []byte {
	p.snapMu.Lock()
	defer p.snapMu.Unlock()
	if len(p.snaps) == 0 {
		return nil
	}
	s := p.snaps[0]
	p.snaps[0] = pendingSnapshot{} // the frame goes to the socket; the queue must not keep it
	p.snaps = p.snaps[1:]
	p.skipTo = max(p.skipTo, s.index)
	return s.frame
}

func (p *player) snapshotQueued() bool {
	p.snapMu.Lock()
	defer p.snapMu.Unlock()
	return len(p.snaps) > 0
}

func (p *player) ID() string      { return p.id }
func (p *player) Immutable() bool { return p.immutable }

// First hands the first frames over once (transport.Player).
func (p *player) First() [][]byte {
	f := p.first
	p.first = nil
	return f
}

// Touch records a message from the socket.
func (p *player) Touch() {
	p.api.actMu.Lock()
	act := p.api.activity[p.id]
	p.api.actMu.Unlock()
	if act != nil {
		act.lastMessageAt.Store(p.api.now())
		act.messages.Add(1)
	}
}

// Next returns the next frame for this socket, skipping what is not for it,
// without waiting: ok is false when nothing is queued (SetWake's fn says
// when to look again). A broadcast's frame is shared with the session's
// other sockets: it is encoded once, by whichever of them gets to it first,
// and nobody may modify it. One goroutine at a time calls Next.
func (p *player) Next() ([]byte, bool, error) {
	for {
		if f := p.popSnapshot(); f != nil {
			return f, true, nil
		}
		d := p.held
		p.held = nil
		if d == nil {
			var err error
			if d, err = p.sub.Pop(); err != nil {
				return nil, false, subscriptionErr(err)
			}
			if d == nil {
				return nil, false, nil
			}
			if p.snapshotQueued() {
				// Queued before this delivery was published: it goes first.
				p.held = d
				continue
			}
		}
		if d.ephemeral() {
			if d.Exclude == p.id {
				continue
			}
			return d.Frame(), true, nil
		}
		// Every case below looks at this socket's player and decides whether
		// it gets the frame at all; none changes the bytes, so they can be shared.
		ev := &d.Event
		switch {
		case ev.Type == fsm.EventSessionDeleted:
			return nil, false, transport.ErrGone
		case ev.Type == fsm.EventPlayerLeft && ev.Player == p.id:
			// This node's incarnation was retired or reaped: the client
			// must reconnect as a new player.
			return nil, false, fmt.Errorf("player removed from the session: %w", transport.ErrRestarting)
		case d.Index <= p.skipTo:
			continue // in a snapshot this socket was sent
		case ev.Others && ev.Player == p.id:
			continue
		}
		return d.Frame(), true, nil
	}
}

// SetWake registers the socket's wake-up (transport.Player): called whenever
// Next may have something new, a delivery, a queued snapshot or the end.
func (p *player) SetWake(fn func()) {
	p.wake.Store(&fn)
	p.sub.SetWake(fn)
}

func subscriptionErr(err error) error {
	switch {
	case errors.Is(err, ErrSlowSubscriber):
		return fmt.Errorf("%w: %v", transport.ErrOverloaded, err)
	case errors.Is(err, ErrNoLeader):
		return fmt.Errorf("%w: %v", transport.ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %v", transport.ErrRestarting, err)
}

// Leave removes the player from the session, in the background.
func (p *player) Leave() {
	p.leaveOnce.Do(func() {
		if p.sub != nil {
			p.sub.Close()
		}
		a := p.api
		a.actMu.Lock()
		delete(a.activity, p.id)
		a.actMu.Unlock()
		if a.n.closing.Load() {
			return // the next epoch of this node drops its players
		}
		a.bg.Add(1)
		go func() {
			defer a.bg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := a.n.Submit(ctx, fsm.Command{Kind: fsm.KindPlayerLeave, Session: p.session, Player: p.id}); err != nil {
				a.log.Debug("leave not recorded; the epoch or reaper will drop the player", "player_id", p.id, "error", err)
			}
		}()
	})
}

// wire is the union of the fields of the client messages.
type wire struct {
	TrackID    *string         `json:"trackId"`
	Step       *float64        `json:"step"`
	Tempo      *float64        `json:"tempo"`
	Swing      *float64        `json:"swing"`
	Muted      *bool           `json:"muted"`
	Soloed     *bool           `json:"soloed"`
	Lock       json.RawMessage `json:"lock"`
	Track      json.RawMessage `json:"track"`
	SampleID   *string         `json:"sampleId"`
	Name       *string         `json:"name"`
	Volume     *float64        `json:"volume"`
	Transpose  *float64        `json:"transpose"`
	StepCount  *float64        `json:"stepCount"`
	Effects    json.RawMessage `json:"effects"`
	FMParams   json.RawMessage `json:"fmParams"`
	Hash       *string         `json:"hash"`
	ClientTime json.RawMessage `json:"clientTime"`
	Position   json.RawMessage `json:"position"`
}

// intStep is a finite integer step, or -1.
func intStep(f *float64) (int, bool) {
	if f == nil || *f != math.Trunc(*f) || *f < -1e9 || *f > 1e9 {
		return 0, false
	}
	return int(*f), true
}

// mutation builds the command of a mutating message. ok is false for a
// message of the wrong shape, which is ignored silently (PROTOCOL.md §3.1).
func mutation(typ string, m *wire) (c fsm.Command, ok bool) {
	need := func(conds ...bool) bool {
		for _, c := range conds {
			if !c {
				return false
			}
		}
		return true
	}
	str := func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	}
	num := func(f *float64) float64 {
		if f == nil {
			return 0
		}
		return *f
	}
	c.TrackID = str(m.TrackID)
	hasTrack := m.TrackID != nil
	switch typ {
	case "toggle_step":
		step, isInt := intStep(m.Step)
		c.Kind, c.Step, ok = fsm.KindToggleStep, step, need(hasTrack, isInt)
	case "set_tempo":
		c.Kind, c.Number, ok = fsm.KindSetTempo, num(m.Tempo), m.Tempo != nil
	case "set_swing":
		c.Kind, c.Number, ok = fsm.KindSetSwing, num(m.Swing), m.Swing != nil
	case "mute_track":
		c.Kind, ok = fsm.KindMuteTrack, need(hasTrack, m.Muted != nil)
		c.Flag = ok && *m.Muted
	case "solo_track":
		c.Kind, ok = fsm.KindSoloTrack, need(hasTrack, m.Soloed != nil)
		c.Flag = ok && *m.Soloed
	case "set_parameter_lock":
		step, isInt := intStep(m.Step)
		c.Kind, c.Step, c.Payload, ok = fsm.KindSetParameterLock, step, m.Lock, need(hasTrack, isInt, m.Lock != nil)
	case "add_track":
		c.Kind, c.Payload, ok = fsm.KindAddTrack, m.Track, m.Track != nil
	case "delete_track":
		c.Kind, ok = fsm.KindDeleteTrack, hasTrack
	case "clear_track":
		c.Kind, ok = fsm.KindClearTrack, hasTrack
	case "set_track_sample":
		c.Kind, c.SampleID, c.TrackName, ok = fsm.KindSetTrackSample, str(m.SampleID), str(m.Name), need(hasTrack, m.SampleID != nil, m.Name != nil)
	case "set_track_volume":
		c.Kind, c.Number, ok = fsm.KindSetTrackVolume, num(m.Volume), need(hasTrack, m.Volume != nil)
	case "set_track_transpose":
		c.Kind, c.Number, ok = fsm.KindSetTrackTranspose, num(m.Transpose), need(hasTrack, m.Transpose != nil)
	case "set_track_step_count":
		c.Kind, c.Number, ok = fsm.KindSetTrackStepCount, num(m.StepCount), need(hasTrack, m.StepCount != nil)
	case "set_effects":
		c.Kind, c.Payload, ok = fsm.KindSetEffects, m.Effects, m.Effects != nil
	case "set_fm_params":
		c.Kind, c.Payload, ok = fsm.KindSetFMParams, m.FMParams, need(hasTrack, m.FMParams != nil)
	}
	return c, ok
}

// Handle runs one client message of a known type.
func (p *player) Handle(ctx context.Context, typ string, seq *int64, raw []byte) ([][]byte, error) {
	a := p.api
	var m wire
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, nil // a field of the wrong type: ignore the message silently
	}
	switch typ {
	case "play", "stop":
		kind := fsm.KindPlaybackStart
		if typ == "stop" {
			kind = fsm.KindPlaybackStop
		}
		return nil, p.submit(ctx, fsm.Command{Kind: kind, Session: p.session, Player: p.id})
	case "state_hash":
		if m.Hash == nil {
			return nil, nil
		}
		h, err := a.StateHash(ctx, p.session)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", transport.ErrGone, err)
		}
		if h == *m.Hash {
			return [][]byte{[]byte(`{"type":"state_hash_match"}`)}, nil
		}
		return [][]byte{[]byte(`{"type":"state_mismatch","serverHash":"` + h + `"}`)}, nil
	case "request_snapshot":
		// Queued under the state lock: no event past index is published
		// before Next knows the snapshot must precede it.
		found := false
		a.n.View(func(st *fsm.State, index uint64) {
			if s := st.Session(p.session); s != nil {
				found = true
				ps := pendingSnapshot{frame: a.snapshotFrame(s, p.id), index: index}
				p.snapMu.Lock()
				if len(p.snaps) < maxPendingSnapshots {
					p.snaps = append(p.snaps, ps)
				} else {
					p.snaps[len(p.snaps)-1] = ps // a blocked socket: the newest answers the last requests too
				}
				p.snapMu.Unlock()
			}
		})
		if !found {
			return nil, transport.ErrGone
		}
		if fn := p.wake.Load(); fn != nil {
			(*fn)() // Next has a snapshot to hand out
		}
		return nil, nil
	case "clock_sync_request":
		ct := []byte(m.ClientTime)
		if ct == nil {
			ct = []byte("null")
		}
		b := []byte(`{"type":"clock_sync_response","clientTime":`)
		b = append(b, ct...)
		b = append(b, `,"serverTime":`...)
		b = strconv.AppendInt(b, a.now(), 10)
		return [][]byte{append(b, '}')}, nil
	case "cursor_move":
		if m.Position == nil {
			return nil, nil
		}
		var info fsm.PlayerInfo
		a.n.View(func(st *fsm.State, _ uint64) {
			if s := st.Session(p.session); s != nil {
				info, _ = s.Player(p.id)
			}
		})
		if info.ID == "" {
			info = fsm.NewPlayerInfo(p.id, "", 0, 0)
		}
		b := []byte(`{"type":"cursor_moved","playerId":`)
		b = strconv.AppendQuote(b, p.id)
		b = append(b, `,"position":`...)
		b = append(b, m.Position...)
		b = append(b, `,"color":`...)
		b = strconv.AppendQuote(b, info.Color())
		b = append(b, `,"name":`...)
		b = strconv.AppendQuote(b, info.DisplayName())
		b = append(b, '}')
		a.n.hub.publishFrame(p.session, p.id, b)
		select {
		case a.cursors <- cursorRelay{session: p.session, exclude: p.id, frame: b}:
		default: // best effort: cursors are ephemeral, and the next one supersedes this
		}
		return nil, nil
	}
	c, ok := mutation(typ, &m)
	if !ok {
		return nil, nil
	}
	c.Session, c.Player, c.ClientSeq = p.session, p.id, seq
	res, err := a.n.Submit(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", transport.ErrUnavailable, err)
	}
	switch res.Status {
	case fsm.StatusPublished:
		return [][]byte{[]byte(`{"type":"error","code":"SESSION_PUBLISHED","message":"This session is published and cannot be edited. Remix it to create an editable copy."}`)}, nil
	case fsm.StatusNotJoined:
		return nil, fmt.Errorf("player no longer in the session: %w", transport.ErrRestarting)
	case fsm.StatusNotFound:
		return nil, transport.ErrGone
	case fsm.StatusIgnored, fsm.StatusTooOld:
		// No broadcast: the client's message times out, and it must treat the
		// op as unknown (too_old: an earlier attempt may have been applied).
	}
	return nil, nil
}

func (p *player) submit(ctx context.Context, c fsm.Command) error {
	res, err := p.api.n.Submit(ctx, c)
	if err != nil {
		return fmt.Errorf("%w: %v", transport.ErrUnavailable, err)
	}
	switch res.Status {
	case fsm.StatusNotJoined:
		return fmt.Errorf("player no longer in the session: %w", transport.ErrRestarting)
	case fsm.StatusNotFound:
		return transport.ErrGone
	case fsm.StatusTooOld:
		// As an ignored message: no broadcast, the op's outcome is unknown.
	}
	return nil
}
