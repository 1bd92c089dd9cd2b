package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"unique"
)

// Apply applies the command committed at index and returns its result and the
// events to fan out. It is deterministic: the same state and command give the
// same result, events and next state on every replica. index must be greater
// than every index applied before; a lower one, or an unknown kind, means the
// log or the build diverged, and Apply panics rather than diverge silently.
//
// Expected failures (unknown session, published session, a full room, a
// mutation whose preconditions fail) are Result statuses.
//
// Every op (op ID) is applied once, answered as a duplicate of its first
// result, or refused with StatusTooOld: never applied twice (I6; the rule is
// at OpRetention). Touch, node_epoch and reap_node are idempotent instead, and
// a retried delete is answered from the tombstones.
func (s *State) Apply(index uint64, c Command) (Result, []Event) {
	if index <= s.index {
		panic(fmt.Sprintf("fsm: apply index %d after %d", index, s.index))
	}
	s.index = index
	switch {
	case c.Kind.IsMutation():
		return s.applyMutation(index, c)
	}
	switch c.Kind {
	case KindCreate:
		return s.create(index, c), nil
	case KindReplaceState:
		return s.replaceState(index, c), nil
	case KindRename:
		return s.rename(index, c), nil
	case KindRemix, KindPublish:
		return s.copySession(index, c), nil
	case KindDelete:
		return s.deleteSession(index, c)
	case KindTouch:
		return s.touch(index, c), nil
	case KindPlayerJoin:
		return s.playerJoin(index, c)
	case KindPlayerLeave, KindPlaybackStart, KindPlaybackStop:
		return s.presence(index, c)
	case KindNodeEpoch, KindReapNode:
		return s.nodeEpoch(index, c)
	default:
		panic(fmt.Sprintf("fsm: unknown command kind %d", uint8(c.Kind)))
	}
}

// begin looks up the target session and answers an op it may have applied
// before (see recall). When done is false the caller goes on with a writable
// session (nil if it does not exist).
func (s *State) begin(index uint64, c Command) (sess *Session, res Result, done bool) {
	cur := s.Session(c.Session)
	if cur == nil {
		return nil, Result{}, false
	}
	if res, ok := recall(cur, index, c); ok {
		return nil, res, true
	}
	return s.writable(c.Session), Result{}, false
}

// recall answers the op c if sess may have applied it before: from the op
// window, as a duplicate of the recorded result; or, when it is not there but
// is no newer than what has left the window, as StatusTooOld, because it may be
// a retry whose record is gone (I6; see OpRetention). Neither changes
// anything, not even MaxAt. A version-1 command is only looked up, as the
// rule it was written under did (see opWindow.addLegacy).
func recall(sess *Session, index uint64, c Command) (Result, bool) {
	if e, ok := sess.ops.find(c.Op); ok {
		return Result{Status: e.status, Index: e.index, Duplicate: true}, true
	}
	if !c.legacy() && sess.ops.tooOld(c.At) { // the v1 rule refused nothing
		return Result{Status: StatusTooOld, Index: index}, true
	}
	return Result{}, false
}

// finish records the op and its result in the session's window, under the
// rule of the command's version.
func finish(sess *Session, c Command, index uint64, st Status) Result {
	if c.At > sess.MaxAt {
		sess.MaxAt = c.At
	}
	if sess.ops == nil {
		sess.ops = &opWindow{}
	}
	e := opEntry{op: c.Op, status: st, index: index, at: c.At}
	if c.legacy() {
		sess.ops.addLegacy(e)
	} else {
		sess.ops.add(e, sess.MaxAt)
	}
	return Result{Status: st, Index: index}
}

func (s *State) create(index uint64, c Command) Result {
	if existing := s.Session(c.Session); existing != nil {
		if res, ok := recall(existing, index, c); ok {
			return res
		}
		return Result{Status: StatusExists, Index: index}
	}
	if c.Session == "" {
		return Result{Status: StatusInvalid, Index: index}
	}
	st := SessionState{Tempo: DefaultTempo, Version: 1}
	if c.State != nil {
		var err error
		if st, err = ParseSessionState(c.State); err != nil {
			return Result{Status: StatusInvalid, Index: index}
		}
		st.Version = 1 // every write stores schema version 1 (PROTOCOL.md §2.2)
	}
	sess := &Session{
		ID: c.Session, State: st,
		CreatedAt: c.At, UpdatedAt: c.At, LastAccessedAt: c.At,
		LastSeq: index,
	}
	if c.Name != nil {
		sess.Name, sess.HasName = *c.Name, true
	}
	s.put(sess)
	return finish(sess, c, index, StatusOK)
}

func (s *State) replaceState(index uint64, c Command) Result {
	sess, res, done := s.begin(index, c)
	switch {
	case done:
		return res
	case sess == nil:
		return Result{Status: StatusNotFound, Index: index}
	case sess.Immutable:
		return finish(sess, c, index, StatusPublished)
	case len(sess.Players()) > 0:
		// A PUT is up to 5 s stale and holds one player's local mix; while
		// players are connected the live state wins (PROTOCOL.md §1.3.3).
		return finish(sess, c, index, StatusIgnored)
	}
	st, err := ParseSessionState(c.State)
	if err != nil {
		return finish(sess, c, index, StatusInvalid)
	}
	st.Version = 1
	sess.State = st
	sess.UpdatedAt = c.At
	sess.LastSeq = index
	return finish(sess, c, index, StatusOK)
}

func (s *State) rename(index uint64, c Command) Result {
	sess, res, done := s.begin(index, c)
	switch {
	case done:
		return res
	case sess == nil:
		return Result{Status: StatusNotFound, Index: index}
	case sess.Immutable:
		return finish(sess, c, index, StatusPublished)
	}
	sess.Name, sess.HasName = "", false
	if c.Name != nil {
		sess.Name, sess.HasName = NormalizeName(*c.Name)
	}
	sess.UpdatedAt = c.At
	return finish(sess, c, index, StatusOK)
}

// copySession is remix and publish: a new session from the live state of the source.
func (s *State) copySession(index uint64, c Command) Result {
	if existing := s.Session(c.Target); existing != nil {
		// The target's window holds the remix or publish that made it.
		if res, ok := recall(existing, index, c); ok {
			return res
		}
		return Result{Status: StatusExists, Index: index}
	}
	src := s.Session(c.Session)
	switch {
	case c.Target == "":
		return Result{Status: StatusInvalid, Index: index}
	case src == nil:
		return Result{Status: StatusNotFound, Index: index}
	case c.Kind == KindPublish && src.Immutable:
		return Result{Status: StatusAlreadyPublished, Index: index}
	}
	st := src.State
	st.Tracks = append([]SessionTrack(nil), src.State.Tracks...)
	dst := &Session{
		ID: c.Target, State: st, RemixedFrom: src.ID,
		CreatedAt: c.At, UpdatedAt: c.At, LastAccessedAt: c.At,
		LastSeq: index,
	}
	dst.RemixedFromName, dst.HasRemixedFromName = src.displayName(), true
	if c.Kind == KindPublish {
		dst.Immutable = true
		dst.Name, dst.HasName = src.Name, src.HasName
	} else {
		s.writable(src.ID).RemixCount++
	}
	s.put(dst)
	return finish(dst, c, index, StatusOK)
}

// displayName is the name a remix records for its parent: the session name,
// else the first track's name, else "Untitled Session" (empty strings fall through).
func (s *Session) displayName() string {
	if s.HasName && s.Name != "" {
		return s.Name
	}
	if len(s.State.Tracks) > 0 {
		if t := &s.State.Tracks[0]; t.hasValue(FieldName) && t.Name != "" {
			return t.Name
		}
	}
	return "Untitled Session"
}

func (s *State) deleteSession(index uint64, c Command) (Result, []Event) {
	for _, t := range s.tombs {
		if t.op == c.Op && t.session == c.Session {
			return Result{Status: StatusOK, Index: t.index, Duplicate: true}, nil
		}
	}
	sess, res, done := s.begin(index, c)
	switch {
	case done:
		return res, nil
	case sess == nil:
		return Result{Status: StatusNotFound, Index: index}, nil
	}
	s.remove(c.Session)
	s.addTomb(tomb{session: c.Session, op: c.Op, index: index})
	return Result{Status: StatusOK, Index: index}, []Event{{Type: EventSessionDeleted, Session: c.Session}}
}

func (s *State) touch(index uint64, c Command) Result {
	for _, t := range c.Touches {
		cur := s.Session(t.Session)
		if cur == nil || cur.LastAccessedAt >= t.At {
			continue
		}
		s.writable(t.Session).LastAccessedAt = t.At
	}
	return Result{Status: StatusOK, Index: index}
}

func (s *State) applyMutation(index uint64, c Command) (Result, []Event) {
	sess, res, done := s.begin(index, c)
	switch {
	case done:
		return res, nil
	case sess == nil:
		return Result{Status: StatusNotFound, Index: index}, nil
	case sess.Immutable:
		return finish(sess, c, index, StatusPublished), nil
	}
	if _, ok := sess.Player(c.Player); !ok {
		return finish(sess, c, index, StatusNotJoined), nil
	}
	ev, ok := sess.State.mutate(c)
	if !ok {
		return finish(sess, c, index, StatusIgnored), nil
	}
	ev.Session, ev.Player = sess.ID, c.Player
	ev.Seq, ev.PrevSeq = index, sess.LastSeq
	if c.ClientSeq != nil {
		ev.ClientSeq, ev.HasClientSeq = *c.ClientSeq, true
	}
	sess.LastSeq = index
	sess.UpdatedAt = c.At
	sess.live.history.push(ev)
	return finish(sess, c, index, StatusOK), []Event{*ev}
}

// mutate applies one of the 15 client mutations to the state (PROTOCOL.md
// §3.4). ok is false when a precondition fails: the message is then ignored
// silently and the state is unchanged.
func (st *SessionState) mutate(c Command) (ev *Event, ok bool) {
	var t *SessionTrack
	switch c.Kind {
	case KindSetTempo, KindSetSwing, KindAddTrack, KindSetEffects:
	default:
		i := st.TrackIndex(c.TrackID)
		if i < 0 {
			return nil, false
		}
		t = &st.Tracks[i]
	}
	ev = &Event{TrackID: c.TrackID}
	switch c.Kind {
	case KindToggleStep:
		if c.Step < 0 || c.Step >= MaxSteps {
			return nil, false
		}
		t.SetStep(c.Step, !t.Step(c.Step))
		ev.Type, ev.Step, ev.Flag = EventStepToggled, c.Step, t.Step(c.Step)
	case KindSetTempo:
		st.Tempo = clamp(c.Number, MinTempo, MaxTempo)
		ev.Type, ev.Number = EventTempoChanged, st.Tempo
	case KindSetSwing:
		st.Swing = clamp(c.Number, MinSwing, MaxSwing)
		ev.Type, ev.Number = EventSwingChanged, st.Swing
	case KindMuteTrack:
		t.Muted = c.Flag
		t.Set(FieldMuted)
		ev.Type, ev.Flag = EventTrackMuted, c.Flag
	case KindSoloTrack:
		t.Soloed = c.Flag
		t.Set(FieldSoloed)
		ev.Type, ev.Flag = EventTrackSoloed, c.Flag
	case KindSetParameterLock:
		if c.Step < 0 || c.Step >= MaxSteps {
			return nil, false
		}
		var lock *ParameterLock
		if jsonKind(c.Payload) != 'n' {
			l, ok := parseLock(c.Payload, true)
			if !ok {
				return nil, false
			}
			lock = &l
		}
		t.SetLock(c.Step, lock)
		ev.Type, ev.Step, ev.Lock = EventParameterLockSet, c.Step, lock
	case KindAddTrack:
		if len(st.Tracks) >= MaxTracks {
			return nil, false
		}
		nt, ok := parseTrack(c.Payload)
		if !ok || st.TrackIndex(nt.ID) >= 0 {
			return nil, false
		}
		var raw bytes.Buffer
		if err := json.Compact(&raw, c.Payload); err != nil {
			return nil, false
		}
		st.Tracks = append(st.Tracks, nt)
		st.repair()
		ev.Type, ev.Track, ev.TrackID = EventTrackAdded, raw.Bytes(), ""
	case KindDeleteTrack:
		i := st.TrackIndex(c.TrackID)
		st.Tracks = append(st.Tracks[:i:i], st.Tracks[i+1:]...)
		st.repair()
		ev.Type = EventTrackDeleted
	case KindClearTrack:
		t.steps = [2]uint64{}
		t.locks = nil
		st.repair()
		ev.Type = EventTrackCleared
	case KindSetTrackSample:
		t.SampleID, t.Name = unique.Make(c.SampleID).Value(), unique.Make(c.TrackName).Value()
		t.Set(FieldSampleID)
		t.Set(FieldName)
		ev.Type, ev.Text, ev.Text2 = EventTrackSampleSet, c.SampleID, c.TrackName
	case KindSetTrackVolume:
		t.Volume = clamp(c.Number, 0, 1)
		t.Set(FieldVolume)
		ev.Type, ev.Number = EventTrackVolumeSet, t.Volume
	case KindSetTrackTranspose:
		// JavaScript's Math.round: halves go toward +∞.
		t.Transpose = math.Floor(clamp(c.Number, MinTranspose, MaxTranspose) + 0.5)
		t.Set(FieldTranspose)
		ev.Type, ev.Number = EventTrackTransposeSet, t.Transpose
	case KindSetTrackStepCount:
		if !IsValidStepCount(c.Number) {
			return nil, false
		}
		t.StepCount = uint8(c.Number)
		t.Set(FieldStepCount)
		ev.Type, ev.Number = EventTrackStepCountSet, c.Number
	case KindSetEffects:
		e, ok := parseEffects(c.Payload)
		if !ok {
			return nil, false
		}
		st.Effects = &e
		st.extra = st.extra.without("effects") // a wrong-typed one would repeat the key
		ev.Type, ev.Effects = EventEffectsChanged, &e
	case KindSetFMParams:
		fm, ok := parseFM(c.Payload)
		if !ok {
			return nil, false
		}
		fm = clampFM(fm)
		t.FM = &fm
		t.extra = t.extra.without("fmParams") // a wrong-typed one would repeat the key
		ev.Type, ev.FM = EventFMParamsChanged, &fm
	}
	return ev, true
}

func (s *State) playerJoin(index uint64, c Command) (Result, []Event) {
	sess, res, done := s.begin(index, c)
	switch {
	case done:
		return res, nil
	case sess == nil:
		return Result{Status: StatusNotFound, Index: index}, nil
	}
	ns := s.nodes[c.Node]
	if c.Epoch < ns.epoch || (c.Epoch == ns.epoch && ns.reaped) {
		return finish(sess, c, index, StatusStaleEpoch), nil
	}
	var events []Event
	if c.Epoch > ns.epoch {
		// The node's first join in a new incarnation implies its epoch.
		events = s.setEpoch(c.Node, nodeState{epoch: c.Epoch, httpAddr: ns.httpAddr})
		sess = s.writable(c.Session)
	}
	if _, ok := sess.Player(c.Player); ok || c.Player == "" {
		return finish(sess, c, index, StatusIgnored), events
	}
	if len(sess.Players()) >= MaxPlayers {
		return finish(sess, c, index, StatusFull), events
	}
	if sess.live == nil {
		sess.live = &room{}
	}
	p := NewPlayerInfo(c.Player, c.Node, c.Epoch, c.At)
	if !slices.ContainsFunc(sess.live.players, func(q PlayerInfo) bool { return q.Node == p.Node }) {
		s.writableShard(sess.ID).link(p.Node, sess.ID) // the session's first player on that node
	}
	sess.live.players = append(sess.live.players, p)
	events = append(events, Event{Type: EventPlayerJoined, Session: sess.ID, Player: p.ID, Others: true, Joined: &p})
	return finish(sess, c, index, StatusOK), events
}

func (s *State) presence(index uint64, c Command) (Result, []Event) {
	sess, res, done := s.begin(index, c)
	switch {
	case done:
		return res, nil
	case sess == nil:
		return Result{Status: StatusNotFound, Index: index}, nil
	}
	if _, ok := sess.Player(c.Player); !ok {
		return finish(sess, c, index, StatusNotJoined), nil
	}
	var events []Event
	switch c.Kind {
	case KindPlayerLeave:
		events = s.dropPlayers(sess, func(p PlayerInfo) bool { return p.ID == c.Player })
	case KindPlaybackStart:
		if !contains(sess.live.playing, c.Player) {
			sess.live.playing = append(sess.live.playing, c.Player)
		}
		events = []Event{{Type: EventPlaybackStarted, Session: sess.ID, Player: c.Player, At: c.At, Tempo: sess.State.Tempo}}
	case KindPlaybackStop:
		sess.live.playing = without(sess.live.playing, c.Player)
		events = []Event{{Type: EventPlaybackStopped, Session: sess.ID, Player: c.Player}}
	}
	return finish(sess, c, index, StatusOK), events
}

// dropPlayers removes the players of sess (a writable session) that match and
// returns what the remaining sockets are told: playback_stopped for a player
// who was playing, then player_left. A session left with no players drops its
// room and history. The shard's per-node index follows.
func (s *State) dropPlayers(sess *Session, match func(PlayerInfo) bool) []Event {
	if sess.live == nil {
		return nil
	}
	var events []Event
	gone := make([]string, 0, MaxPlayers) // the nodes of the dropped players (on the stack)
	kept := sess.live.players[:0]
	for _, p := range sess.live.players {
		if !match(p) {
			kept = append(kept, p)
			continue
		}
		gone = append(gone, p.Node)
		if contains(sess.live.playing, p.ID) {
			sess.live.playing = without(sess.live.playing, p.ID)
			events = append(events, Event{Type: EventPlaybackStopped, Session: sess.ID, Player: p.ID, Others: true})
		}
		events = append(events, Event{Type: EventPlayerLeft, Session: sess.ID, Player: p.ID, Others: true})
	}
	sess.live.players = kept
	if len(kept) == 0 {
		sess.live = nil
	}
	// A session stays in a node's index while one of its players on that node stays.
	sh := s.writableShard(sess.ID)
	for _, node := range gone {
		if !slices.ContainsFunc(kept, func(k PlayerInfo) bool { return k.Node == node }) {
			sh.unlink(node, sess.ID)
		}
	}
	return events
}

// nodeEpoch applies node_epoch (a node restarted: drop the players of its
// earlier incarnations) and reap_node (the leader gave up on an unreachable
// node: drop the players of that incarnation, and refuse its later joins).
func (s *State) nodeEpoch(index uint64, c Command) (Result, []Event) {
	ns := s.nodes[c.Node]
	if c.Node == "" {
		return Result{Status: StatusInvalid, Index: index}, nil
	}
	if c.Kind == KindNodeEpoch {
		if c.Epoch == ns.epoch && !ns.reaped && c.Addr != "" && c.Addr != ns.httpAddr {
			// A join implied this epoch before the node's own announcement
			// arrived: keep the epoch, record the address.
			ns.httpAddr = c.Addr
			s.nodes[c.Node] = ns
			return Result{Status: StatusOK, Index: index}, nil
		}
		if c.Epoch <= ns.epoch {
			return Result{Status: StatusStaleEpoch, Index: index}, nil
		}
		return Result{Status: StatusOK, Index: index}, s.setEpoch(c.Node, nodeState{epoch: c.Epoch, httpAddr: c.Addr})
	}
	if c.Epoch < ns.epoch || (c.Epoch == ns.epoch && ns.reaped) {
		return Result{Status: StatusStaleEpoch, Index: index}, nil
	}
	return Result{Status: StatusOK, Index: index}, s.setEpoch(c.Node, nodeState{epoch: c.Epoch, reaped: true, httpAddr: ns.httpAddr})
}

// setEpoch records a node's epoch and drops its players that the new epoch
// retires: older incarnations, and with reaped the current one too. Only the
// sessions with players on that node are visited (the shards' byNode index),
// in id order, so that events come out the same on every replica.
func (s *State) setEpoch(node string, ns nodeState) []Event {
	s.nodes[node] = ns
	retired := func(p PlayerInfo) bool {
		return p.Node == node && (p.Epoch < ns.epoch || (ns.reaped && p.Epoch == ns.epoch))
	}
	var ids []string
	for _, sh := range s.shards {
		for id := range sh.byNode[node] {
			if slices.ContainsFunc(sh.m[id].Players(), retired) {
				ids = append(ids, id)
			}
		}
	}
	sort.Strings(ids)
	var events []Event
	for _, id := range ids {
		events = append(events, s.dropPlayers(s.writable(id), retired)...)
	}
	return events
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// without returns list minus v, in a new slice when v is present.
func without(list []string, v string) []string {
	if !contains(list, v) {
		return list
	}
	out := make([]string, 0, len(list)-1)
	for _, x := range list {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}
