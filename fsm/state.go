package fsm

import (
	"maps"
	"slices"
	"sort"
)

// numShards splits the sessions so that Clone copies 256 pointers, not one map
// entry per session, and the first write after a Clone copies one small map.
const numShards = 256

// tombLen is how many deletes State remembers, so a retried delete returns
// its original result instead of not_found.
const tombLen = 1024

type shard struct {
	gen uint64
	m   map[string]*Session
	// byNode is derived from m: for each node, the ids of this shard's
	// sessions that have at least one player on that node. node_epoch and
	// reap_node read it instead of walking every session. It is kept up to
	// date wherever players come and go (put, remove, playerJoin,
	// dropPlayers), copied with the shard (writableShard), never encoded,
	// and rebuilt by put as ReadSnapshot restores sessions.
	byNode map[string]map[string]struct{}
}

// link records that session id has a player on node.
func (sh *shard) link(node, id string) {
	ids := sh.byNode[node]
	if ids == nil {
		if sh.byNode == nil {
			sh.byNode = map[string]map[string]struct{}{}
		}
		ids = map[string]struct{}{}
		sh.byNode[node] = ids
	}
	ids[id] = struct{}{}
}

// unlink records that session id has no player on node any more.
func (sh *shard) unlink(node, id string) {
	if ids := sh.byNode[node]; ids != nil {
		delete(ids, id)
		if len(ids) == 0 {
			delete(sh.byNode, node)
		}
	}
}

type nodeState struct {
	epoch    uint64
	reaped   bool
	httpAddr string // where the node serves clients, as it announced with its epoch
}

type tomb struct {
	session string
	op      OpID
	index   uint64
}

// State is the replicated state machine: every session, and each node's
// presence epoch. It has no locks: its owner serialises Apply with reads.
//
// Copy-on-write: every shard and session records the generation that may
// modify it in place. Clone moves both states to new generations, so neither
// modifies what they share; the first write to a shared shard or session
// copies it. A Clone is therefore cheap, and may be read while the original
// keeps applying.
type State struct {
	index    uint64 // last applied log index
	gen      uint64
	count    int // sessions
	shards   [numShards]*shard
	nodes    map[string]nodeState
	tombs    []tomb
	tombNext int
}

// NewState returns an empty state at index 0.
func NewState() *State {
	s := &State{gen: 1, nodes: map[string]nodeState{}}
	for i := range s.shards {
		s.shards[i] = &shard{gen: s.gen, m: map[string]*Session{}}
	}
	return s
}

// Index returns the last applied log index.
func (s *State) Index() uint64 { return s.index }

// Len returns the number of sessions.
func (s *State) Len() int { return s.count }

// Session returns the session with the given id, or nil. The result is
// read-only and valid until the next Apply (see Session).
func (s *State) Session(id string) *Session { return s.shards[shardOf(id)].m[id] }

// SessionIDs returns every session id in sorted order.
func (s *State) SessionIDs() []string {
	ids := make([]string, 0, s.count)
	for _, sh := range s.shards {
		for id := range sh.m {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// NodeEpoch returns the replicated epoch of a node and whether the leader has
// reaped that incarnation's players.
func (s *State) NodeEpoch(node string) (epoch uint64, reaped bool) {
	ns := s.nodes[node]
	return ns.epoch, ns.reaped
}

// HasPlayersOn reports whether any session has a player on node. It reads
// the shards' index, not the sessions.
func (s *State) HasPlayersOn(node string) bool {
	for _, sh := range s.shards {
		if len(sh.byNode[node]) > 0 {
			return true
		}
	}
	return false
}

// PlayerNodes returns, sorted, every node that has a player in some session.
func (s *State) PlayerNodes() []string {
	var out []string
	for _, sh := range s.shards {
		for node := range sh.byNode {
			if i, found := slices.BinarySearch(out, node); !found {
				out = slices.Insert(out, i, node)
			}
		}
	}
	return out
}

// NodeHTTPAddr returns the client address a node announced with its latest
// epoch, or "" if it never did.
func (s *State) NodeHTTPAddr(node string) string { return s.nodes[node].httpAddr }

// Clone returns a copy of the state that shares every session with s. Apply on
// s (or on the clone) never changes what the other sees. It costs O(shards +
// nodes), independent of the number of sessions.
func (s *State) Clone() *State {
	c := &State{
		index:    s.index,
		gen:      s.gen + 2,
		count:    s.count,
		shards:   s.shards,
		nodes:    make(map[string]nodeState, len(s.nodes)),
		tombs:    append([]tomb(nil), s.tombs...),
		tombNext: s.tombNext,
	}
	for k, v := range s.nodes {
		c.nodes[k] = v
	}
	s.gen++
	return c
}

// shardOf is FNV-1a of the id: stable across versions, because shard layout
// decides nothing visible, but cheap on the apply path.
func shardOf(id string) int {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return int(h % numShards)
}

// writableShard returns the shard of id, copying it first if it is shared.
func (s *State) writableShard(id string) *shard {
	i := shardOf(id)
	sh := s.shards[i]
	if sh.gen != s.gen {
		m := make(map[string]*Session, len(sh.m)+1)
		for k, v := range sh.m {
			m[k] = v
		}
		var byNode map[string]map[string]struct{}
		if len(sh.byNode) > 0 {
			byNode = make(map[string]map[string]struct{}, len(sh.byNode))
			for node, ids := range sh.byNode {
				byNode[node] = maps.Clone(ids)
			}
		}
		sh = &shard{gen: s.gen, m: m, byNode: byNode}
		s.shards[i] = sh
	}
	return sh
}

// writable returns the session with the given id for modification, copying it
// first if it is shared with a clone. It returns nil if there is no such session.
func (s *State) writable(id string) *Session {
	sess := s.Session(id)
	if sess == nil || sess.gen == s.gen {
		return sess
	}
	sess = sess.clone()
	sess.gen = s.gen
	s.writableShard(id).m[id] = sess
	return sess
}

// put stores sess, replacing any session with its id.
func (s *State) put(sess *Session) {
	sess.gen = s.gen
	sh := s.writableShard(sess.ID)
	if old, ok := sh.m[sess.ID]; ok {
		for _, p := range old.Players() {
			sh.unlink(p.Node, old.ID)
		}
	} else {
		s.count++
	}
	sh.m[sess.ID] = sess
	for _, p := range sess.Players() {
		sh.link(p.Node, sess.ID)
	}
}

func (s *State) remove(id string) {
	sh := s.writableShard(id)
	if old, ok := sh.m[id]; ok {
		for _, p := range old.Players() {
			sh.unlink(p.Node, id)
		}
		delete(sh.m, id)
		s.count--
	}
}

func (s *State) addTomb(t tomb) {
	if len(s.tombs) < tombLen {
		s.tombs = append(s.tombs, t)
		return
	}
	s.tombs[s.tombNext] = t
	s.tombNext = (s.tombNext + 1) % tombLen
}

// clone copies everything a write may change in place. Slices that are only
// ever replaced (track locks, unknown keys, effects) stay shared.
func (s *Session) clone() *Session {
	c := *s
	c.State.Tracks = append([]SessionTrack(nil), s.State.Tracks...)
	if s.live != nil {
		c.live = &room{
			players: append([]PlayerInfo(nil), s.live.players...),
			playing: append([]string(nil), s.live.playing...),
			history: s.live.history.clone(),
		}
	}
	c.ops = s.ops.clone()
	return &c
}

// Hash returns the session's canonical state hash.
func (s *Session) Hash() string { return s.State.Hash() }

// TrackIndex returns the position of the track with the given id, or -1.
func (st *SessionState) TrackIndex(id string) int {
	for i := range st.Tracks {
		if st.Tracks[i].ID == id {
			return i
		}
	}
	return -1
}

// Violations runs the invariant check (PROTOCOL.md §6) on a copy of the state
// and returns what it would repair. State kept by chorus is always repaired,
// so this is empty except for more than 16 tracks, which is only reported.
func (st *SessionState) Violations() []string {
	c := *st
	c.Tracks = append([]SessionTrack(nil), st.Tracks...)
	return c.repair()
}

// repair enforces the invariants of PROTOCOL.md §6 and returns what it fixed.
// Steps and parameter locks are 128-entry by construction.
func (st *SessionState) repair() []string {
	var fixed []string
	for i := 0; i < len(st.Tracks); i++ {
		for j := 0; j < i; j++ {
			if st.Tracks[j].ID == st.Tracks[i].ID {
				fixed = append(fixed, "duplicate track id "+st.Tracks[i].ID)
				st.Tracks = append(st.Tracks[:i], st.Tracks[i+1:]...)
				i--
				break
			}
		}
	}
	if len(st.Tracks) > MaxTracks {
		fixed = append(fixed, "more than 16 tracks")
	}
	if t := clamp(st.Tempo, MinTempo, MaxTempo); t != st.Tempo {
		fixed = append(fixed, "tempo out of range")
		st.Tempo = t
	}
	if sw := clamp(st.Swing, MinSwing, MaxSwing); sw != st.Swing {
		fixed = append(fixed, "swing out of range")
		st.Swing = sw
	}
	for i := range st.Tracks {
		t := &st.Tracks[i]
		if t.hasValue(FieldVolume) {
			if v := clamp(t.Volume, 0, 1); v != t.Volume {
				fixed = append(fixed, "track "+t.ID+" volume out of range")
				t.Volume = v
			}
		}
		if t.hasValue(FieldStepCount) && (t.StepCount < 1 || t.StepCount > MaxSteps) {
			fixed = append(fixed, "track "+t.ID+" stepCount out of range")
			t.StepCount = uint8(clamp(float64(t.StepCount), 1, MaxSteps))
		}
	}
	return fixed
}
