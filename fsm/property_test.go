package fsm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

// Property tests over logs drawn by gen_test.go.
//
// rapid runs 100 cases per property by default. When one fails it shrinks the
// case, prints the log (one encoded command per line) and the seed, and keeps a
// fail file under testdata/rapid/ (a local artifact: do not commit it). To
// replay a failure:
//
//	go test ./fsm -run TestPropDeterminism -rapid.seed=N
//
// and to look harder: go test ./fsm -run 'TestProp' -rapid.checks=2000
// (-rapid.v prints every case).

// propTB is what the checks need; *testing.T and *rapid.T both have it.
type propTB interface {
	Helper()
	Fatalf(format string, args ...any)
}

type propStep struct {
	res    Result
	events []Event
}

func propApply(s *State, log genLog) []propStep {
	out := make([]propStep, len(log))
	for i, e := range log {
		out[i].res, out[i].events = s.Apply(e.Index, e.Cmd)
	}
	return out
}

func propSnapshot(tb propTB, s *State) []byte {
	tb.Helper()
	var buf bytes.Buffer
	if err := s.WriteSnapshot(&buf); err != nil {
		tb.Fatalf("WriteSnapshot: %v", err)
	}
	return buf.Bytes()
}

// propStateNoIndex is the snapshot with the applied index left out: what an
// entry that changes nothing must leave alone.
func propStateNoIndex(tb propTB, s *State) []byte {
	tb.Helper()
	idx := s.index
	s.index = 0
	defer func() { s.index = idx }()
	return propSnapshot(tb, s)
}

func propReplay(tb propTB, logs ...genLog) []byte {
	tb.Helper()
	s := NewState()
	for _, l := range logs {
		propApply(s, l)
	}
	return propSnapshot(tb, s)
}

// propEventsJSON is everything an event says: its wire form, and the routing
// fields that the wire form leaves out.
// propSameOutcome fails unless two applies of one entry gave the same result
// and the same events.
func propSameOutcome(tb propTB, where string, ra, rb Result, ea, eb []Event) {
	tb.Helper()
	if ra != rb {
		tb.Fatalf("%s: results %+v / %+v", where, ra, rb)
	}
	if ja, jb := propEventsJSON(ea), propEventsJSON(eb); ja != jb {
		tb.Fatalf("%s: events\n%s\n%s", where, ja, jb)
	}
}

func propEventsJSON(evs []Event) string {
	var b []byte
	for i := range evs {
		e := &evs[i]
		b = fmt.Appendf(b, "%s|%s|others=%v|seq=%d/%d|", e.Type, e.Session, e.Others, e.Seq, e.PrevSeq)
		b = e.AppendJSON(b)
		b = append(b, '\n')
	}
	return string(b)
}

// propOversized tracks the sessions that may hold more than 16 tracks: those
// whose state came from a create or replace_state carrying more. The HTTP
// layer refuses such a state (ValidateState) and the FSM only reports it
// (PROTOCOL.md §6), so it is the one invariant a raw log can break. add_track
// must never take a session past 16.
type propOversized map[string]bool

// note updates the set after c was applied with result res.
func (o propOversized) note(c Command, res Result) {
	if res.Status != StatusOK || res.Duplicate {
		return
	}
	switch c.Kind {
	case KindCreate, KindReplaceState:
		// Any "tracks" member counts, not only the last: with a repeated key,
		// ValidateState (like JSON.parse) reads the last, while the parser
		// keeps an earlier array when a later copy has the wrong type.
		many := false
		_ = eachMember(c.State, func(key string, val json.RawMessage) { // not an object: no tracks
			var ts []json.RawMessage
			if key == "tracks" && json.Unmarshal(val, &ts) == nil && len(ts) > MaxTracks {
				many = true
			}
		})
		o[c.Session] = many
	case KindRemix, KindPublish:
		o[c.Target] = o[c.Session]
	case KindDelete:
		delete(o, c.Session)
	}
}

// propCheckInvariants checks PROTOCOL.md §6 and the presence rules for every
// session. Sessions in oversized may hold more than 16 tracks.
func propCheckInvariants(tb propTB, s *State, oversized propOversized) {
	tb.Helper()
	ids := s.SessionIDs()
	if len(ids) != s.Len() {
		tb.Fatalf("Len() = %d, but %d session ids", s.Len(), len(ids))
	}
	for _, id := range ids {
		sess := s.Session(id)
		if sess == nil || sess.ID != id {
			tb.Fatalf("Session(%q) = %v", id, sess)
		}
		if sess.LastSeq > s.Index() {
			tb.Fatalf("session %s: LastSeq %d beyond applied index %d", id, sess.LastSeq, s.Index())
		}
		st := &sess.State
		v := st.Violations()
		if len(st.Tracks) > MaxTracks {
			if !oversized[id] {
				tb.Fatalf("session %s has %d tracks; its state never carried that many", id, len(st.Tracks))
			}
			if !slices.Equal(v, []string{"more than 16 tracks"}) {
				tb.Fatalf("session %s: Violations() = %q", id, v)
			}
		} else if len(v) > 0 {
			tb.Fatalf("session %s: Violations() = %q", id, v)
		}
		if !(st.Tempo >= MinTempo && st.Tempo <= MaxTempo) {
			tb.Fatalf("session %s: tempo %v", id, st.Tempo)
		}
		if !(st.Swing >= MinSwing && st.Swing <= MaxSwing) {
			tb.Fatalf("session %s: swing %v", id, st.Swing)
		}
		seen := map[string]bool{}
		for i := range st.Tracks {
			tr := &st.Tracks[i]
			if tr.ID == "" || seen[tr.ID] {
				tb.Fatalf("session %s: track id %q empty or repeated", id, tr.ID)
			}
			seen[tr.ID] = true
			if tr.hasValue(FieldStepCount) && (tr.StepCount < 1 || tr.StepCount > MaxSteps) {
				tb.Fatalf("session %s track %s: stepCount %d", id, tr.ID, tr.StepCount)
			}
			if tr.hasValue(FieldVolume) && !(tr.Volume >= 0 && tr.Volume <= 1) {
				tb.Fatalf("session %s track %s: volume %v", id, tr.ID, tr.Volume)
			}
			if tr.null&^tr.has != 0 {
				tb.Fatalf("session %s track %s: fields %b null but absent", id, tr.ID, tr.null&^tr.has)
			}
			last := -1
			for _, la := range tr.locks {
				if int(la.step) <= last || la.step >= MaxSteps {
					tb.Fatalf("session %s track %s: locks out of order at step %d", id, tr.ID, la.step)
				}
				last = int(la.step)
			}
		}
		players := sess.Players()
		if len(players) > MaxPlayers {
			tb.Fatalf("session %s: %d players", id, len(players))
		}
		if sess.live != nil && len(players) == 0 {
			tb.Fatalf("session %s: a room with no players", id)
		}
		joined := map[string]bool{}
		for _, p := range players {
			if p.ID == "" || joined[p.ID] {
				tb.Fatalf("session %s: player id %q empty or repeated", id, p.ID)
			}
			joined[p.ID] = true
			epoch, reaped := s.NodeEpoch(p.Node)
			if p.Epoch < epoch || (reaped && p.Epoch == epoch) {
				tb.Fatalf("session %s: player %s of node %q epoch %d, node at epoch %d reaped=%v",
					id, p.ID, p.Node, p.Epoch, epoch, reaped)
			}
		}
		playing := map[string]bool{}
		for _, p := range sess.PlayingPlayerIDs() {
			if !joined[p] || playing[p] {
				tb.Fatalf("session %s: playing %q is not a player, or is listed twice", id, p)
			}
			playing[p] = true
		}
	}
	propCheckNodeIndex(tb, s)
}

// propCheckNodeIndex checks the per-node index that node_epoch and
// reap_node read (shard.byNode) against a walk of every session: under each
// node, each shard lists exactly its sessions with a player on that node,
// and no node with none.
func propCheckNodeIndex(tb propTB, s *State) {
	tb.Helper()
	owners := map[string]bool{}
	for i, sh := range s.shards {
		want := map[string]map[string]struct{}{}
		for id, sess := range sh.m {
			if shardOf(id) != i {
				tb.Fatalf("session %s in shard %d, not %d", id, i, shardOf(id))
			}
			for _, p := range sess.Players() {
				if want[p.Node] == nil {
					want[p.Node] = map[string]struct{}{}
				}
				want[p.Node][id] = struct{}{}
				owners[p.Node] = true
			}
		}
		if !maps.EqualFunc(sh.byNode, want, maps.Equal) {
			tb.Fatalf("shard %d: node index %v, sessions with players per node %v", i, sh.byNode, want)
		}
	}
	// PlayerNodes and HasPlayersOn, read from the index, agree with the walk.
	if got, want := s.PlayerNodes(), slices.Sorted(maps.Keys(owners)); !slices.Equal(got, want) {
		tb.Fatalf("PlayerNodes() = %v, the sessions have players on %v", got, want)
	}
	for _, node := range []string{"n1", "n2", "n3", "n4", ""} {
		if got := s.HasPlayersOn(node); got != owners[node] {
			tb.Fatalf("HasPlayersOn(%q) = %v, want %v", node, got, owners[node])
		}
	}
}

// propCheckJSON checks what clients receive for a session: valid JSON, no key
// repeated in any object the model writes (the session, its state, each
// track and each lock: JSON.parse would keep the last copy), and every track
// with 128-entry steps and parameterLocks arrays (PROTOCOL.md §6; clients
// crash without them). Unknown keys are carried verbatim, and what is inside
// them is the client's business.
func propCheckJSON(tb propTB, sess *Session) {
	tb.Helper()
	raw := sess.AppendJSON(nil)
	fail := func(format string, args ...any) {
		tb.Helper()
		tb.Fatalf("session %s JSON: %s\n%s", sess.ID, fmt.Sprintf(format, args...), raw)
	}
	if !json.Valid(raw) {
		fail("invalid")
	}
	session := propMembers(raw, fail)
	state := propMembers(session["state"], fail)
	var tracks []json.RawMessage
	if err := json.Unmarshal(state["tracks"], &tracks); err != nil {
		fail("tracks: %v", err)
	}
	for i, tr := range tracks {
		track := propMembers(tr, fail)
		var steps, locks []json.RawMessage
		if json.Unmarshal(track["steps"], &steps) != nil || json.Unmarshal(track["parameterLocks"], &locks) != nil ||
			len(steps) != MaxSteps || len(locks) != MaxSteps {
			fail("track %d: %d steps, %d parameterLocks", i, len(steps), len(locks))
		}
		for _, l := range locks {
			if jsonKind(l) == '{' {
				propMembers(l, fail)
			}
		}
	}
}

// propMembers reads one JSON object and fails on a repeated key.
func propMembers(raw []byte, fail func(string, ...any)) map[string]json.RawMessage {
	m := map[string]json.RawMessage{}
	err := eachMember(raw, func(key string, val json.RawMessage) {
		if _, dup := m[key]; dup {
			fail("key %q repeated in %.80s", key, raw)
		}
		m[key] = val
	})
	if err != nil {
		fail("%v in %.80s", err, raw)
	}
	return m
}

// propSameView checks that two states answer every read the same way.
func propSameView(tb propTB, a, b *State) {
	tb.Helper()
	propCheckNodeIndex(tb, a)
	propCheckNodeIndex(tb, b)
	if a.Index() != b.Index() || a.Len() != b.Len() || !slices.Equal(a.SessionIDs(), b.SessionIDs()) {
		tb.Fatalf("index %d/%d, sessions %q / %q", a.Index(), b.Index(), a.SessionIDs(), b.SessionIDs())
	}
	for _, n := range append([]string{""}, genNodes...) {
		ea, ra := a.NodeEpoch(n)
		eb, rb := b.NodeEpoch(n)
		if ea != eb || ra != rb || a.NodeHTTPAddr(n) != b.NodeHTTPAddr(n) {
			tb.Fatalf("node %q: epoch %d reaped %v addr %q vs %d %v %q", n, ea, ra, a.NodeHTTPAddr(n), eb, rb, b.NodeHTTPAddr(n))
		}
	}
	for _, id := range a.SessionIDs() {
		sa, sb := a.Session(id), b.Session(id)
		if ja, jb := string(sa.AppendJSON(nil)), string(sb.AppendJSON(nil)); ja != jb {
			tb.Fatalf("session %s JSON:\n%s\n%s", id, ja, jb)
		}
		if sa.Hash() != sb.Hash() || sa.LastSeq != sb.LastSeq || sa.MaxAt != sb.MaxAt {
			tb.Fatalf("session %s: hash %s/%s lastSeq %d/%d maxAt %d/%d", id, sa.Hash(), sb.Hash(), sa.LastSeq, sb.LastSeq, sa.MaxAt, sb.MaxAt)
		}
		if !reflect.DeepEqual(sa.Players(), sb.Players()) || !slices.Equal(sa.PlayingPlayerIDs(), sb.PlayingPlayerIDs()) {
			tb.Fatalf("session %s: players %v / %v, playing %v / %v", id, sa.Players(), sb.Players(), sa.PlayingPlayerIDs(), sb.PlayingPlayerIDs())
		}
		probes := []uint64{0, sa.LastSeq, sa.LastSeq + 1}
		if sa.LastSeq > 0 {
			probes = append(probes, sa.LastSeq-1)
		}
		if sa.live != nil {
			if n := sa.live.history.len(); n > 0 {
				for _, i := range []int{0, 1 % n, n / 2, n - 1} {
					e := sa.live.history.at(i)
					probes = append(probes, e.PrevSeq-1, e.PrevSeq, e.Seq-1, e.Seq)
				}
			}
		}
		for _, q := range probes {
			ea, oka := sa.Since(q)
			eb, okb := sb.Since(q)
			if oka != okb || propEventsJSON(ea) != propEventsJSON(eb) {
				tb.Fatalf("session %s Since(%d): %v %s / %v %s", id, q, oka, propEventsJSON(ea), okb, propEventsJSON(eb))
			}
		}
	}
}

// TestGenLogEncodes checks the generator itself: every command it draws is one
// a proposer could log (it encodes, and decodes to the same encoding).
func TestGenLogEncodes(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := drawGenLog(t, "log", 60)
		var prev uint64
		for _, e := range log {
			if e.Index <= prev {
				t.Fatalf("index %d after %d", e.Index, prev)
			}
			prev = e.Index
			raw, err := Encode(e.Cmd)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			back, err := Decode(raw)
			if err != nil {
				t.Fatalf("Decode(%s): %v", raw, err)
			}
			if again, err := Encode(back); err != nil || !bytes.Equal(again, raw) {
				t.Fatalf("re-encoding differs (%v):\n%s\n%s", err, raw, again)
			}
		}
	})
}

// TestPropInvariants: after every entry of any log, every session satisfies
// PROTOCOL.md §6 and the presence rules, and what clients receive is well formed.
func TestPropInvariants(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := drawGenLog(t, "log", 150)
		s := NewState()
		oversized := propOversized{}
		for _, e := range log {
			res, _ := s.Apply(e.Index, e.Cmd)
			oversized.note(e.Cmd, res)
			if !res.Duplicate && res.Index != e.Index {
				t.Fatalf("entry %d: result index %d", e.Index, res.Index)
			}
			if res.Duplicate && res.Index >= e.Index {
				t.Fatalf("entry %d: duplicate of index %d", e.Index, res.Index)
			}
			propCheckInvariants(t, s, oversized)
			switch e.Cmd.Kind {
			case KindCreate, KindReplaceState, KindAddTrack, KindRemix, KindPublish:
				for _, id := range []string{e.Cmd.Session, e.Cmd.Target} {
					if sess := s.Session(id); sess != nil {
						propCheckJSON(t, sess)
					}
				}
			}
		}
		for _, id := range s.SessionIDs() {
			propCheckJSON(t, s.Session(id))
		}
	})
}

// TestPropDeterminism (I4, I7): two replicas fed the same log reach the same
// results, events, snapshot bytes and hashes, even when one of them clones and
// snapshots along the way as the node adapter does.
func TestPropDeterminism(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := drawGenLog(t, "log", 150)
		snapAt := rapid.SliceOfN(rapid.IntRange(0, len(log)-1), 0, 4).Draw(t, "b snapshots before")
		a, b := NewState(), NewState()
		for i, e := range log {
			ra, ea := a.Apply(e.Index, e.Cmd)
			if slices.Contains(snapAt, i) {
				propSnapshot(t, b.Clone())
			}
			rb, eb := b.Apply(e.Index, e.Cmd)
			propSameOutcome(t, "entry "+strconv.FormatUint(e.Index, 10), ra, rb, ea, eb)
		}
		if sa, sb := propSnapshot(t, a), propSnapshot(t, b); !bytes.Equal(sa, sb) {
			t.Fatalf("snapshots differ (%d / %d bytes)", len(sa), len(sb))
		}
		propSameView(t, a, b)
	})
}

// TestPropSnapshotRoundTrip: a snapshot restores to a state that writes the
// same bytes, answers every read the same, and goes on applying the rest of
// the log exactly as the original does.
func TestPropSnapshotRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := drawGenLog(t, "log", 150)
		k := rapid.IntRange(0, len(log)).Draw(t, "snapshot after")
		s := NewState()
		propApply(s, log[:k])
		b1 := propSnapshot(t, s)
		r, err := ReadSnapshot(bytes.NewReader(b1))
		if err != nil {
			t.Fatalf("ReadSnapshot: %v", err)
		}
		if b2 := propSnapshot(t, r); !bytes.Equal(b1, b2) {
			t.Fatalf("snapshot → restore → snapshot differs (%d / %d bytes)", len(b1), len(b2))
		}
		propSameView(t, s, r)
		for _, e := range log[k:] {
			rs, es := s.Apply(e.Index, e.Cmd)
			rr, er := r.Apply(e.Index, e.Cmd)
			propSameOutcome(t, "entry "+strconv.FormatUint(e.Index, 10)+" after restore", rs, rr, es, er)
		}
		if fs, fr := propSnapshot(t, s), propSnapshot(t, r); !bytes.Equal(fs, fr) {
			t.Fatalf("final snapshots differ (%d / %d bytes)", len(fs), len(fr))
		}
		propSameView(t, s, r)
		// Restoring the old snapshot now gives the old state, whatever
		// happened since: nothing of a later state leaks in.
		again, err := ReadSnapshot(bytes.NewReader(b1))
		if err != nil {
			t.Fatalf("ReadSnapshot again: %v", err)
		}
		if b3 := propSnapshot(t, again); !bytes.Equal(b1, b3) {
			t.Fatal("second restore of the same snapshot differs")
		}
	})
}

// TestPropCloneIsolation: a Clone is a frozen view. Writes to the original,
// to another clone, or to the clone itself never show through, and every
// state still equals a fresh replay of its own log.
func TestPropCloneIsolation(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := drawGenLog(t, "log", 120)
		k := rapid.IntRange(0, len(log)).Draw(t, "clone after")
		k2 := rapid.IntRange(k, len(log)).Draw(t, "second clone after")
		alt := drawContinuation(t, "alt", log[:k], 2, 60)
		m := rapid.IntRange(0, len(alt)).Draw(t, "clone of d after")

		s := NewState()
		propApply(s, log[:k])
		c := s.Clone()
		frozen := propSnapshot(t, c)
		if want := propReplay(t, log[:k]); !bytes.Equal(frozen, want) {
			t.Fatal("clone differs from a fresh replay of its prefix")
		}
		d := s.Clone() // d takes the alternative future
		var c2, c3 *State
		var frozen2, frozen3 []byte
		tail := log[k:]
		for i := 0; i <= max(len(tail), len(alt)); i++ {
			if i == k2-k {
				c2 = s.Clone()
				frozen2 = propSnapshot(t, c2)
			}
			if i == m {
				c3 = d.Clone()
				frozen3 = propSnapshot(t, c3)
			}
			if i < len(tail) {
				s.Apply(tail[i].Index, tail[i].Cmd)
			}
			if i < len(alt) {
				d.Apply(alt[i].Index, alt[i].Cmd)
			}
		}
		if got := propSnapshot(t, c); !bytes.Equal(got, frozen) {
			t.Fatal("clone c changed while the original and d applied")
		}
		if got := propSnapshot(t, c2); !bytes.Equal(got, frozen2) || !bytes.Equal(got, propReplay(t, log[:k2])) {
			t.Fatal("clone c2 changed, or differs from a fresh replay of its prefix")
		}
		if got := propSnapshot(t, c3); !bytes.Equal(got, frozen3) || !bytes.Equal(got, propReplay(t, log[:k], alt[:m])) {
			t.Fatal("clone c3 (of d) changed, or differs from a fresh replay of its prefix")
		}
		sBytes := propSnapshot(t, s)
		if !bytes.Equal(sBytes, propReplay(t, log)) {
			t.Fatal("the original differs from a fresh replay after cloning")
		}
		dBytes := propSnapshot(t, d)
		if !bytes.Equal(dBytes, propReplay(t, log[:k], alt)) {
			t.Fatal("clone d differs from a fresh replay of its own log")
		}
		// Now write to the frozen clone c: s and d must not move.
		propApply(c, alt)
		if !bytes.Equal(propSnapshot(t, s), sBytes) || !bytes.Equal(propSnapshot(t, d), dBytes) {
			t.Fatal("applying to clone c changed the original or d")
		}
		if !bytes.Equal(propSnapshot(t, c), dBytes) {
			t.Fatal("clone c with the alternative log differs from d")
		}
		for _, st := range []*State{s, c, c2, c3, d} {
			propCheckNodeIndex(t, st)
		}
	})
}

// propKey is the session whose op window records c.
func propKey(c Command) string {
	if c.Kind == KindRemix || c.Kind == KindPublish {
		return c.Target
	}
	return c.Session
}

// propRecorded reports whether applying c with result first left a record
// that a retry must meet: an entry in the op window of its session, or for a
// delete a tombstone.
func propRecorded(c Command, first Result) bool {
	switch c.Kind {
	case KindTouch, KindNodeEpoch, KindReapNode:
		return false // never recorded; they are idempotent instead
	case KindDelete, KindCreate, KindRemix, KindPublish:
		return first.Status == StatusOK
	}
	return first.Status != StatusNotFound && first.Status != StatusTooOld
}

// propDeletedBetween reports whether the session that records c was deleted
// between positions i and j, taking its op window along. A session created
// again under the same id starts a new window: a retry of an op of the old one
// may apply to it (deletes are retried against the tombstones instead).
func propDeletedBetween(log genLog, i, j int) bool {
	key := propKey(log[i].Cmd)
	for _, e := range log[i+1 : j] {
		if e.Cmd.Kind == KindDelete && e.Cmd.Session == key {
			return true
		}
	}
	return false
}

// propInWindow reports whether a retry at position j must still find the op
// first applied at position i with result first. maxAt is the MaxAt of the
// op's session just before j. It is conservative: it counts every later
// command aimed at the same session, though some of them record nothing, and
// an entry may stay past OpRetention while an older one is ahead of it.
func propInWindow(log genLog, i, j int, first Result, maxAt int64) bool {
	c := log[i].Cmd
	switch {
	case !propRecorded(c, first):
		return false
	case c.Kind == KindDelete:
		return j-i < tombLen
	case propDeletedBetween(log, i, j), expired(c.At, maxAt):
		return false
	}
	key, n := propKey(c), 0
	for _, e := range log[i+1 : j] {
		if propKey(e.Cmd) == key {
			n++
		}
	}
	return n < OpWindowMax-1
}

// propMaxAt is the MaxAt of the session that records c, or 0.
func propMaxAt(s *State, c Command) int64 {
	if sess := s.Session(propKey(c)); sess != nil {
		return sess.MaxAt
	}
	return 0
}

// TestPropRetryAppliedOnce (I6): a retried op, the whole command proposed
// again, is applied at most once. Inside the op window it is answered from the
// window (Duplicate, the original status and index) and changes nothing;
// outside it is refused as too old and changes nothing; node_epoch, reap_node
// and touch are idempotent instead.
func TestPropRetryAppliedOnce(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := drawGenLog(t, "log", 200)
		s := NewState()
		type first struct {
			pos int
			res Result
		}
		firsts := map[OpID]first{}
		for j, e := range log {
			c := e.Cmd
			f, retried := firsts[c.Op]
			var before []byte
			var maxAt int64
			if retried {
				before, maxAt = propStateNoIndex(t, s), propMaxAt(s, c)
			}
			res, evs := s.Apply(e.Index, c)
			switch {
			case !retried && res.Duplicate:
				t.Fatalf("entry %d: a new op reported as duplicate: %+v", e.Index, res)
			case retried:
				propCheckRetry(t, log, f.pos, j, f.res, res, evs, before, propStateNoIndex(t, s), maxAt)
			}
			if !res.Duplicate && res.Status != StatusTooOld {
				// The latest application not answered from the window is the
				// one a later retry must repeat: an attempt that recorded
				// nothing (not_found, say) does not count.
				firsts[c.Op] = first{j, res}
			}
		}
	})
}

// propCheckRetry checks the retry at log[j] of the op whose reference
// application was log[i], with result first. maxAt is the MaxAt of the op's
// session before the retry.
func propCheckRetry(t *rapid.T, log genLog, i, j int, first, res Result, evs []Event, before, after []byte, maxAt int64) {
	t.Helper()
	c, index, orig := log[j].Cmd, log[j].Index, log[i].Index
	if !reflect.DeepEqual(log[i].Cmd, c) {
		t.Fatalf("generator bug: op %s reused by a different command", c.Op)
	}
	unchanged := func(why string) {
		t.Helper()
		if len(evs) > 0 {
			t.Fatalf("entry %d: retry of entry %d (%s) emitted %d events:\n%s", index, orig, why, len(evs), propEventsJSON(evs))
		}
		if !bytes.Equal(before, after) {
			t.Fatalf("entry %d: retry of entry %d (%s) changed the state", index, orig, why)
		}
	}
	switch {
	case res.Duplicate:
		if res.Status != first.Status || res.Index != first.Index {
			t.Fatalf("entry %d: duplicate answers %+v, entry %d got %+v", index, res, orig, first)
		}
		unchanged("duplicate")
	case res.Status == StatusTooOld:
		if res.Index != index {
			t.Fatalf("entry %d: too_old answers index %d", index, res.Index)
		}
		unchanged("too old")
	}
	if propInWindow(log, i, j, first, maxAt) {
		if !res.Duplicate {
			t.Fatalf("entry %d: retry of %s (entry %d, %+v) inside the window not answered from it: %+v", index, c.Kind, orig, first, res)
		}
		return
	}
	if propRecorded(c, first) && c.Kind != KindDelete && !propDeletedBetween(log, i, j) && !res.Duplicate && res.Status != StatusTooOld {
		t.Fatalf("entry %d: retry of %s (entry %d, %+v) neither answered from the window nor refused as too old: %+v", index, c.Kind, orig, first, res)
	}
	switch c.Kind {
	case KindNodeEpoch, KindReapNode:
		unchanged("idempotent epoch")
	case KindTouch:
		recreated := false
		for _, x := range log[i+1 : j] {
			switch x.Cmd.Kind {
			case KindCreate, KindRemix, KindPublish, KindDelete:
				for _, tc := range c.Touches {
					recreated = recreated || propKey(x.Cmd) == tc.Session
				}
			}
		}
		if !recreated {
			unchanged("idempotent touch")
		}
	}
}

// TestRetriedToggleStepFlipsOnce is I6 on the message that is not idempotent
// (W7): a retried toggle flips once and broadcasts once. Once the session has
// forgotten it (OpRetention), a retry is refused, never applied again.
func TestRetriedToggleStepFlipsOnce(t *testing.T) {
	s := NewState()
	sid, player := genSessions[0], genPlayers[0]
	op := func(n byte) OpID { return OpID{0xee, n} }
	must := func(index uint64, c Command) []Event {
		t.Helper()
		res, evs := s.Apply(index, c)
		if res.Status != StatusOK || res.Duplicate || res.Index != index {
			t.Fatalf("apply %s at %d: %+v", c.Kind, index, res)
		}
		return evs
	}
	must(1, Command{Kind: KindCreate, Op: op(1), Session: sid, State: json.RawMessage(`{"tracks":[{"id":"t1","name":"Kick","sampleId":"kick","steps":[]}]}`)})
	must(2, Command{Kind: KindPlayerJoin, Op: op(2), Session: sid, Player: player, Node: "n1", Epoch: 1})
	toggle := Command{Kind: KindToggleStep, Op: op(3), At: 5, Session: sid, Player: player, TrackID: "t1", Step: 5}
	if evs := must(4, toggle); len(evs) != 1 || evs[0].Type != EventStepToggled || !evs[0].Flag || evs[0].Seq != 4 {
		t.Fatalf("toggle: events %s", propEventsJSON(evs))
	}
	for _, index := range []uint64{6, 9} {
		res, evs := s.Apply(index, toggle)
		if !res.Duplicate || res.Status != StatusOK || res.Index != 4 || len(evs) != 0 {
			t.Fatalf("retry at %d: %+v, %d events", index, res, len(evs))
		}
	}
	sess := s.Session(sid)
	if tr := &sess.State.Tracks[0]; !tr.Step(5) || sess.LastSeq != 4 {
		t.Fatalf("after retries: step 5 = %v, LastSeq %d; want true, 4", tr.Step(5), sess.LastSeq)
	}
	if evs, ok := sess.Since(2); !ok || len(evs) != 1 {
		t.Fatalf("Since(2) = %d events, %v; want the one toggle", len(evs), ok)
	}
	index := uint64(10)
	for i := 0; i < 100; i++ {
		index++
		must(index, Command{Kind: KindSetTempo, Op: OpID{0xef, byte(i)}, At: toggle.At + int64(i)*OpRetention/50, Session: sid, Player: player, Number: 100})
	}
	index++
	res, evs := s.Apply(index, toggle)
	if res != (Result{Status: StatusTooOld, Index: index}) || len(evs) != 0 {
		t.Fatalf("retry past the window: %+v, events %s", res, propEventsJSON(evs))
	}
	if sess := s.Session(sid); !sess.State.Tracks[0].Step(5) {
		t.Fatal("step 5 flipped back: the toggle was applied twice")
	}
}

// TestPropSeq (I1): every mutating event carries the index that applied it as
// seq, and the session's previous mutating index as prevSeq; seqs only grow;
// non-mutating events carry neither.
func TestPropSeq(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := drawGenLog(t, "log", 200)
		s := NewState()
		lastSeq := map[string]uint64{} // the model of Session.LastSeq
		lastEvent := map[string]uint64{}
		for _, e := range log {
			c := e.Cmd
			res, evs := s.Apply(e.Index, c)
			applied := res.Status == StatusOK && !res.Duplicate
			mutating := 0
			for _, ev := range evs {
				if !ev.Type.IsMutation() {
					if ev.Seq != 0 || ev.PrevSeq != 0 || ev.HasClientSeq {
						t.Fatalf("entry %d: %s carries seq %d/%d", e.Index, ev.Type, ev.Seq, ev.PrevSeq)
					}
					continue
				}
				mutating++
				switch {
				case !c.Kind.IsMutation() || !applied:
					t.Fatalf("entry %d: %s from %s with result %+v", e.Index, ev.Type, c.Kind, res)
				case ev.Session != c.Session || ev.Player != c.Player:
					t.Fatalf("entry %d: event for %s/%s, command for %s/%s", e.Index, ev.Session, ev.Player, c.Session, c.Player)
				case ev.Seq != e.Index:
					t.Fatalf("entry %d: seq %d", e.Index, ev.Seq)
				case ev.PrevSeq != lastSeq[c.Session]:
					t.Fatalf("entry %d: prevSeq %d, the session's last mutating index is %d", e.Index, ev.PrevSeq, lastSeq[c.Session])
				case ev.Seq <= lastEvent[c.Session] || ev.PrevSeq < lastEvent[c.Session]:
					t.Fatalf("entry %d: seq %d prevSeq %d after a broadcast with seq %d", e.Index, ev.Seq, ev.PrevSeq, lastEvent[c.Session])
				case ev.HasClientSeq != (c.ClientSeq != nil) || (c.ClientSeq != nil && ev.ClientSeq != *c.ClientSeq):
					t.Fatalf("entry %d: clientSeq %v/%d, command %v", e.Index, ev.HasClientSeq, ev.ClientSeq, c.ClientSeq)
				}
				lastEvent[c.Session] = ev.Seq
			}
			want := 0
			if c.Kind.IsMutation() && applied {
				want = 1
			}
			if mutating != want {
				t.Fatalf("entry %d: %s with result %+v emitted %d mutating events", e.Index, c.Kind, res, mutating)
			}
			if applied {
				switch {
				case c.Kind == KindCreate, c.Kind == KindReplaceState, c.Kind.IsMutation():
					lastSeq[c.Session] = e.Index
				case c.Kind == KindRemix, c.Kind == KindPublish:
					lastSeq[c.Target] = e.Index
				case c.Kind == KindDelete:
					delete(lastSeq, c.Session)
				}
			}
			if len(lastSeq) != s.Len() {
				t.Fatalf("entry %d: %d sessions, model has %d", e.Index, s.Len(), len(lastSeq))
			}
			for id, want := range lastSeq {
				if sess := s.Session(id); sess == nil || sess.LastSeq != want {
					t.Fatalf("entry %d: session %s LastSeq, want %d (session %v)", e.Index, id, want, sess != nil)
				}
			}
		}
	})
}

// propCheckSince compares sess.Since with the model history: the mutating
// events emitted since the session's room opened (last HistoryLen of them).
func propCheckSince(tb propTB, sess *Session, hist []Event) {
	tb.Helper()
	last := sess.LastSeq
	probes := []uint64{0, last, last + 1}
	if last > 0 {
		probes = append(probes, last-1)
	}
	if n := len(hist); n > 0 {
		for _, i := range []int{0, n / 2, n - 1} {
			e := hist[i]
			probes = append(probes, e.PrevSeq, e.PrevSeq+1, e.Seq-1, e.Seq, e.Seq+1)
			if e.PrevSeq > 0 {
				probes = append(probes, e.PrevSeq-1)
			}
		}
	}
	for _, q := range probes {
		var want []Event
		wantOK := false
		switch {
		case q > last:
		case q == last:
			wantOK = true
		case len(hist) == 0 || q < hist[0].PrevSeq:
		default:
			wantOK = true
			for _, e := range hist {
				if e.Seq > q {
					want = append(want, e)
				}
			}
		}
		got, ok := sess.Since(q)
		if ok != wantOK || propEventsJSON(got) != propEventsJSON(want) {
			tb.Fatalf("session %s (LastSeq %d) Since(%d) = %v\n%s\nwant %v\n%s", sess.ID, last, q, ok, propEventsJSON(got), wantOK, propEventsJSON(want))
		}
	}
}

// propHistory models each session's resume history: the mutating events
// emitted since its room opened, the last HistoryLen of them.
type propHistory map[string][]Event

// apply applies e to s and updates the model.
func (h propHistory) apply(s *State, e genEntry) (Result, []Event) {
	before := map[string]int{}
	for _, id := range s.SessionIDs() {
		before[id] = len(s.Session(id).Players())
	}
	res, evs := s.Apply(e.Index, e.Cmd)
	left := map[string]int{}
	for _, ev := range evs {
		if ev.Type == EventPlayerLeft {
			left[ev.Session]++
		}
	}
	// A room closes when its last player goes (possibly just before a join
	// in the same entry, from a newer node epoch, opens a new one), and its
	// history goes with it.
	for id := range h {
		sess := s.Session(id)
		if sess == nil || len(sess.Players()) == 0 || (before[id] > 0 && left[id] >= before[id]) {
			delete(h, id)
		}
	}
	for _, ev := range evs {
		if ev.Type.IsMutation() {
			l := append(h[ev.Session], ev)
			if len(l) > HistoryLen {
				l = l[len(l)-HistoryLen:]
			}
			h[ev.Session] = l
		}
	}
	return res, evs
}

// TestPropSince: Since(seq) replays exactly the mutating broadcasts after seq,
// in order, while the session's room and history reach back to seq, and says
// "send a snapshot" otherwise; never a partial replay.
func TestPropSince(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := drawGenLog(t, "log", 200)
		s := NewState()
		hist := propHistory{}
		for _, e := range log {
			hist.apply(s, e)
			if sess := s.Session(e.Cmd.Session); sess != nil {
				propCheckSince(t, sess, hist[sess.ID])
			}
		}
		for _, id := range s.SessionIDs() {
			propCheckSince(t, s.Session(id), hist[id])
		}
	})
}

// TestPropSinceLongHistory drives one session past HistoryLen mutations, so
// the ring wraps, and checks Since at both ends of what it still holds, also
// on a state restored from a snapshot taken mid-way and on a clone.
func TestPropSinceLongHistory(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		sid, player := genSessions[0], genPlayers[0]
		s := NewState()
		index := uint64(1)
		s.Apply(index, Command{Kind: KindCreate, Op: OpID{1}, Session: sid, State: json.RawMessage(`{"tracks":[{"id":"t1"}]}`)})
		index++
		s.Apply(index, Command{Kind: KindPlayerJoin, Op: OpID{2}, Session: sid, Player: player, Node: "n1"})
		// About 4 in 5 toggles reach the session, so this always wraps the ring.
		n := rapid.IntRange(HistoryLen*3/2, HistoryLen*2+3).Draw(t, "mutations")
		cut := rapid.IntRange(0, n).Draw(t, "snapshot after")
		var r, frozen *State
		var frozenBytes []byte
		var hist []Event
		for i := 0; i < n; i++ {
			if i == cut {
				r = snapRestore(t, propSnapshot(t, s))
				frozen = s.Clone()
				frozenBytes = propSnapshot(t, frozen)
			}
			index += rapid.Uint64Range(1, 3).Draw(t, "gap")
			c := Command{Kind: KindToggleStep, Op: OpID{3, byte(i >> 8), byte(i)}, Session: sid, Player: player, TrackID: "t1", Step: i % MaxSteps}
			if rapid.IntRange(0, 4).Draw(t, "other session?") == 0 {
				c.Session = genSessions[1] // not found: the index moves on, the session's seq does not
			}
			_, evs := s.Apply(index, c)
			hist = append(hist, evs...)
			if r != nil {
				if _, evr := r.Apply(index, c); propEventsJSON(evr) != propEventsJSON(evs) {
					t.Fatalf("entry %d after restore: events differ", index)
				}
			}
		}
		if len(hist) > HistoryLen {
			hist = hist[len(hist)-HistoryLen:]
		}
		propCheckSince(t, s.Session(sid), hist)
		if r != nil {
			propCheckSince(t, r.Session(sid), hist)
			propSameView(t, s, r)
			if !bytes.Equal(propSnapshot(t, frozen), frozenBytes) {
				t.Fatal("clone changed while the original applied")
			}
		}
	})
}

// TestPropBusySession drives one session through up to a few hundred
// commands, so that op entries leave the window (the generator's clock
// pauses now and then), and checks I6 and Since there, and
// that a snapshot or a clone taken mid-way carries the window and its horizon:
// the restored state answers later retries and Since exactly as the original.
// (TestPropSinceLongHistory wraps the history ring.)
func TestPropBusySession(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := drawBusyLog(t, "log", 80, 128, HistoryLen)
		cut := rapid.IntRange(0, len(log)).Draw(t, "snapshot after")
		s := NewState()
		var r, frozen *State
		var frozenBytes []byte
		type first struct {
			pos int
			res Result
		}
		firsts := map[OpID]first{}
		hist := propHistory{}
		for j, e := range log {
			if j == cut {
				r = snapRestore(t, propSnapshot(t, s))
				frozen = s.Clone()
				frozenBytes = propSnapshot(t, frozen)
			}
			f, retried := firsts[e.Cmd.Op]
			var before []byte
			var maxAt int64
			if retried {
				before, maxAt = propStateNoIndex(t, s), propMaxAt(s, e.Cmd)
			}
			res, evs := hist.apply(s, e)
			if retried {
				propCheckRetry(t, log, f.pos, j, f.res, res, evs, before, propStateNoIndex(t, s), maxAt)
			} else if res.Duplicate {
				t.Fatalf("entry %d: a new op reported as duplicate", e.Index)
			}
			if !res.Duplicate && res.Status != StatusTooOld {
				firsts[e.Cmd.Op] = first{j, res}
			}
			if r != nil {
				rr, er := r.Apply(e.Index, e.Cmd)
				if rr != res || propEventsJSON(er) != propEventsJSON(evs) {
					t.Fatalf("entry %d after restore: %+v %s / %+v %s", e.Index, res, propEventsJSON(evs), rr, propEventsJSON(er))
				}
			}
			if len(hist[genSessions[0]]) == HistoryLen && j%16 == 0 {
				propCheckSince(t, s.Session(genSessions[0]), hist[genSessions[0]]) // the ring is full
			}
		}
		sess := s.Session(genSessions[0])
		if sess == nil {
			t.Fatal("the busy session is gone")
		}
		propCheckSince(t, sess, hist[sess.ID])
		if r != nil {
			if !bytes.Equal(propSnapshot(t, s), propSnapshot(t, r)) {
				t.Fatal("restored state diverged from the original")
			}
			propSameView(t, s, r)
			if !bytes.Equal(propSnapshot(t, frozen), frozenBytes) {
				t.Fatal("clone changed while the original applied")
			}
		}
	})
}

// TestPropTrackLimit: add_track appends a track with a new id while the
// session has fewer than 16, broadcasting it as received, and is ignored
// otherwise; a session never passes 16 tracks through add_track.
func TestPropTrackLimit(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		sid, player := genSessions[0], genPlayers[0]
		k := rapid.IntRange(MaxTracks-4, MaxTracks).Draw(t, "initial tracks")
		ids := make([]string, k)
		var tracks []string
		for i := range ids {
			ids[i] = "m" + strconv.Itoa(i)
			tracks = append(tracks, `{"id":"`+ids[i]+`","steps":[]}`)
		}
		s := NewState()
		s.Apply(1, Command{Kind: KindCreate, Op: OpID{1}, Session: sid, State: json.RawMessage(`{"tracks":[` + strings.Join(tracks, ",") + `]}`)})
		s.Apply(2, Command{Kind: KindPlayerJoin, Op: OpID{2}, Session: sid, Player: player, Node: "n1"})
		for i, n := 0, rapid.IntRange(1, 8).Draw(t, "adds"); i < n; i++ {
			id := "a" + strconv.Itoa(rapid.IntRange(0, 5).Draw(t, "id"))
			if rapid.IntRange(0, 5).Draw(t, "existing id?") == 0 {
				id = ids[rapid.IntRange(0, len(ids)-1).Draw(t, "existing")]
			}
			raw := `{"name":"Added", "id":"` + id + `"}`
			index := uint64(3 + i)
			res, evs := s.Apply(index, Command{Kind: KindAddTrack, Op: OpID{3, byte(i)}, Session: sid, Player: player, Payload: json.RawMessage(raw)})
			fits := len(ids) < MaxTracks && !slices.Contains(ids, id)
			if fits {
				ids = append(ids, id)
			}
			got := s.Session(sid).State.Tracks
			var gotIDs []string
			for _, tr := range got {
				gotIDs = append(gotIDs, tr.ID)
			}
			switch {
			case !slices.Equal(gotIDs, ids):
				t.Fatalf("add_track %s at %d tracks: tracks %q, want %q", id, len(got), gotIDs, ids)
			case fits && (res.Status != StatusOK || len(evs) != 1 || string(evs[0].Track) != `{"name":"Added","id":"`+id+`"}`):
				t.Fatalf("add_track %s: %+v, %s", id, res, propEventsJSON(evs))
			case !fits && (res.Status != StatusIgnored || len(evs) != 0):
				t.Fatalf("add_track %s to a full session or with a taken id: %+v, %d events", id, res, len(evs))
			}
		}
	})
}

// TestPropEventsWellFormed: every event's wire form is one JSON object of its
// type. (track_added carries the track as received, so repeated keys may
// appear inside it.)
func TestPropEventsWellFormed(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := drawGenLog(t, "log", 100)
		s := NewState()
		for _, e := range log {
			_, evs := s.Apply(e.Index, e.Cmd)
			for i := range evs {
				raw := evs[i].AppendJSON(nil)
				if !json.Valid(raw) || !strings.HasPrefix(string(raw), `{"type":"`+evs[i].Type.String()+`"`) {
					t.Fatalf("entry %d: event %s", e.Index, raw)
				}
			}
		}
	})
}

// TestPropOpWindow checks the op window against a plain FIFO model through
// adds (entries leaving by age and by the cap), clones and snapshot round
// trips: the same entries in the same order, the same horizon, and find
// (through the hash index once the ring is large) finds exactly what is there.
func TestPropOpWindow(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		type model struct {
			entries []opEntry
			dropped bool
			horizon int64
		}
		var m model
		sess := &Session{ID: "w"}
		var gone []OpID // ops that left the window
		at := int64(1_700_000_000_000)
		steps := rapid.SampledFrom([]int{10, 100, 1000, OpWindowMax + 300}).Draw(t, "steps")
		randomIDs := rapid.Bool().Draw(t, "random op IDs?")
		for i := 0; i < steps; i++ {
			switch rapid.IntRange(0, 199).Draw(t, "event") {
			case 0:
				at += rapid.Int64Range(OpRetention/2, 2*OpRetention).Draw(t, "pause")
			case 1:
				at -= rapid.Int64Range(0, 5000).Draw(t, "clock back")
			case 2:
				if sess.ops == nil {
					break
				}
				c := sess.clone()
				before := sess.AppendSnapshot(nil)
				c.ops.add(opEntry{op: OpID{0xcc, byte(i)}, at: at}, max(at, c.MaxAt)) // must not touch sess
				if !bytes.Equal(sess.AppendSnapshot(nil), before) {
					t.Fatalf("step %d: adding to a clone changed the original", i)
				}
				sess = sess.clone()
			case 3:
				sess = propRestoreSession(t, sess)
			}
			at += rapid.Int64Range(0, 3).Draw(t, "dt")
			var op OpID
			if randomIDs {
				copy(op[:], rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "op"))
			} else {
				op = OpID{0x0b, 8: byte(i >> 16), 9: byte(i >> 8), 10: byte(i)}
			}
			if _, ok := sess.ops.find(op); ok {
				continue // a random ID drawn twice: Apply would answer it as a duplicate
			}
			e := opEntry{op: op, status: Status(i % 3), index: uint64(i + 1), at: at}
			sess.MaxAt = max(sess.MaxAt, at)
			if sess.ops == nil {
				sess.ops = &opWindow{}
			}
			sess.ops.add(e, sess.MaxAt)
			for len(m.entries) > 0 && (len(m.entries) >= OpWindowMax || m.entries[0].at < sess.MaxAt-OpRetention) {
				if m.entries[0].at > 0 && (!m.dropped || m.entries[0].at > m.horizon) { // a legacy entry (at 0) sets no horizon
					m.dropped, m.horizon = true, m.entries[0].at
				}
				gone = append(gone, m.entries[0].op)
				m.entries = m.entries[1:]
			}
			m.entries = append(m.entries, e)

			w := sess.ops
			if w.len() != len(m.entries) || w.dropped != m.dropped || w.horizon != m.horizon {
				t.Fatalf("step %d: %d entries, dropped %v, horizon %d; model %d, %v, %d", i, w.len(), w.dropped, w.horizon, len(m.entries), m.dropped, m.horizon)
			}
			if len(w.ring) > OpWindowMax || (len(w.ring) >= opIndexMin) != (w.index != nil) {
				t.Fatalf("step %d: ring of %d, index of %d", i, len(w.ring), len(w.index))
			}
			check := func(j int) {
				if got, ok := w.find(m.entries[j].op); !ok || got != m.entries[j] || w.entry(j) != m.entries[j] {
					t.Fatalf("step %d: entry %d of %d: found %v %+v, at it %+v; want %+v", i, j, len(m.entries), ok, got, w.entry(j), m.entries[j])
				}
			}
			if i%97 == 0 || i == steps-1 {
				for j := range m.entries {
					check(j)
				}
				for _, op := range gone {
					if _, ok := w.find(op); ok {
						t.Fatalf("step %d: op %s left the window but is found", i, op)
					}
				}
			} else {
				check(0)
				check(len(m.entries) - 1)
				check(rapid.IntRange(0, len(m.entries)-1).Draw(t, "check"))
			}
		}
	})
}

// propRestoreSession decodes what the session's AppendSnapshot writes.
func propRestoreSession(t *rapid.T, s *Session) *Session {
	d := &decoder{r: bufio.NewReader(bytes.NewReader(s.AppendSnapshot(nil))), crc: crc32.New(crcTable), version: SnapshotVersion}
	r := d.session()
	if d.err != nil {
		t.Fatalf("restore session: %v", d.err)
	}
	return r
}
