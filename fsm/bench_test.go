package fsm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// Benchmarks of the state machine: Apply per command kind, Decode+Apply (the
// per-entry cost on raft's apply goroutine), the snapshot codec and Clone over
// 100k sessions, and resident heap bytes per session. BENCHMARKS.md at the
// module root has the figures and the commands that produce them.
//
// Every helper here is prefixed bench so it cannot collide with the helpers of
// other test files in the package.

const (
	benchNode  = "node-1"
	benchEpoch = 1
	// benchLive has the five bench players, a full resume history and a full
	// op window (OpWindowMax entries, as in a session whose ops come faster
	// than OpWindowMax per OpRetention).
	benchLive = "5f0c6a7e-2b1d-4c3a-9e8f-00000000000a"
	// benchIdle has no players and a full op window.
	benchIdle = "5f0c6a7e-2b1d-4c3a-9e8f-00000000000b"
	// benchEdits is how many edits the edited and active sessions of
	// BenchmarkResidentBytes had within OpRetention, so their op window holds
	// all of them.
	benchEdits = 64
	// benchChunk is how many commands a pooled kind prepares per timer stop.
	benchChunk = 512
)

var benchPlayers = [5]string{
	"3f2504e0-4f89-41d3-9a0c-0305e82c3301",
	"7c9e6679-7425-40de-944b-e07fc1f90ae7",
	"a8098c1a-f86e-11da-bd1a-00112444be1e",
	"16fd2706-8baf-433b-82eb-8c7fada847da",
	"886313e1-3b8a-5372-9b90-0c9aee199e5d",
}

// benchJoiners are the players that player_join adds to a room of five.
var benchJoiners = [5]string{
	"e0a1b2c3-d4e5-4f60-8172-839405162738",
	"f1b2c3d4-e5f6-4071-8283-940516273849",
	"02c3d4e5-f607-4182-9394-05162738495a",
	"13d4e5f6-0718-4293-a405-162738495a6b",
	"24e5f607-1829-43a4-b516-2738495a6b7c",
}

var benchTrackSamples = [8][2]string{
	{"Kick", "kick"}, {"Snare", "snare"}, {"Closed Hat", "hihat-closed"}, {"Clap", "clap"},
	{"Bass", "synth:bass"}, {"FM Bell", "tone:fm-bell"}, {"Piano", "sampled:piano"}, {"Open Hat", "hihat-open"},
}

// benchTrackIDs are the ids of the tracks of every bench session, built once so
// that commands cost the benchmark no allocation.
var benchTrackIDs = func() (ids [MaxTracks]string) {
	for i := range ids {
		ids[i] = "track-" + strconv.Itoa(1700000000000+i)
	}
	return ids
}()

// benchTrackID is the id of track i of every bench session.
func benchTrackID(i int) string { return benchTrackIDs[i] }

// benchTrackJSON is a track as the client sends it: 128-entry steps and
// parameterLocks arrays and every synced field. Tracks 0..2 carry two
// parameter locks each; v varies the 16-step pattern.
func benchTrackJSON(id string, i, v int) string {
	var b strings.Builder
	ts := benchTrackSamples[i%len(benchTrackSamples)]
	fmt.Fprintf(&b, `{"id":%q,"name":%q,"sampleId":%q,"steps":[`, id, ts[0], ts[1])
	for s := 0; s < MaxSteps; s++ {
		if s > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatBool(s < DefaultStepCount && (s+i+v)%(2+i%3) == 0))
	}
	b.WriteString(`],"parameterLocks":[`)
	for s := 0; s < MaxSteps; s++ {
		if s > 0 {
			b.WriteByte(',')
		}
		switch {
		case i < 3 && s == 4:
			b.WriteString(`{"pitch":5,"volume":0.8}`)
		case i < 3 && s == 12:
			b.WriteString(`{"volume":0.5,"pitch":-2}`)
		default:
			b.WriteString("null")
		}
	}
	b.WriteString(`],"volume":0.8,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":16}`)
	return b.String()
}

// benchStateJSON is a typical session state: 8 tracks, 6 parameter locks, no effects.
func benchStateJSON(v int) []byte {
	var b strings.Builder
	b.WriteString(`{"tracks":[`)
	for i := 0; i < 8; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(benchTrackJSON(benchTrackID(i), i, v))
	}
	fmt.Fprintf(&b, `],"tempo":%d,"swing":%d,"version":1}`, 90+v, 10*(v%3))
	return []byte(b.String())
}

// benchSessionID is a UUID-shaped session id, unique per i.
func benchSessionID(i int) string {
	return fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", uint32(i)*2654435761, i&0xffff, i&0xfff, 0x8000|i&0x3fff, i)
}

var (
	benchLockPayloads = [3][]byte{[]byte(`{"pitch":3,"volume":0.8}`), []byte(`{"volume":0.5}`), []byte(`{"pitch":-7}`)}
	benchEffects      = [2][]byte{
		[]byte(`{"reverb":{"decay":2.5,"wet":0.3},"delay":{"time":"8n","feedback":0.3,"wet":0.2},"chorus":{"frequency":1.5,"depth":0.5,"wet":0},"distortion":{"amount":0.4,"wet":0}}`),
		[]byte(`{"reverb":{"decay":4,"wet":0.5},"delay":{"time":"4n","feedback":0.5,"wet":0.1},"chorus":{"frequency":2,"depth":0.3,"wet":0.2},"distortion":{"amount":0.2,"wet":0.1}}`),
	}
	benchFM = [2][]byte{[]byte(`{"harmonicity":3,"modulationIndex":10}`), []byte(`{"harmonicity":1.5,"modulationIndex":4}`)}
)

// benchApplier applies commands at increasing indexes, with fresh op IDs drawn
// from a counter and proposer times one millisecond apart.
type benchApplier struct {
	s         *State
	index     uint64
	ops       uint64
	at        int64
	clientSeq int64
}

func newBenchApplier() *benchApplier {
	return &benchApplier{s: NewState(), at: 1_700_000_000_000}
}

func (a *benchApplier) nextOp() OpID {
	a.ops++
	var op OpID
	op[0] = 0xbe
	binary.BigEndian.PutUint64(op[8:], a.ops)
	return op
}

func (a *benchApplier) apply(c Command) (Result, []Event) {
	c.Op = a.nextOp()
	a.at++
	c.At = a.at
	a.index++
	return a.s.Apply(a.index, c)
}

func (a *benchApplier) must(tb testing.TB, c Command) {
	tb.Helper()
	if res, _ := a.apply(c); res.Status != StatusOK {
		tb.Fatalf("%s %s: status %s", c.Kind, c.Session, res.Status)
	}
}

func (a *benchApplier) create(tb testing.TB, id, name string, state []byte) {
	tb.Helper()
	a.must(tb, Command{Kind: KindCreate, Session: id, Target: id, Name: &name, State: state})
}

func (a *benchApplier) join(tb testing.TB, session string, players []string) {
	tb.Helper()
	for _, p := range players {
		a.must(tb, Command{Kind: KindPlayerJoin, Session: session, Player: p, Node: benchNode, Epoch: benchEpoch})
	}
}

// toggle is a toggle_step by one of the five players, with a client seq.
func (a *benchApplier) toggle(session string, i int) Command {
	a.clientSeq++
	return Command{
		Kind: KindToggleStep, Session: session, Player: benchPlayers[i%5], ClientSeq: &a.clientSeq,
		TrackID: benchTrackID(i % 8), Step: (i * 7) % DefaultStepCount,
	}
}

// newBenchFixture is the state every BenchmarkApply case starts from: benchLive
// (8 tracks, 6 locks, 5 players, 256-event history and OpWindowMax-op window
// full) and benchIdle (the same state, no players, op window full). Proposer
// times are 1 ms apart, so nothing leaves a window by age: the window is at its
// cap, and every new op is looked up among OpWindowMax.
func newBenchFixture(tb testing.TB) *benchApplier {
	tb.Helper()
	a := newBenchApplier()
	a.create(tb, benchLive, "Friday jam", benchStateJSON(0))
	a.join(tb, benchLive, benchPlayers[:])
	// Toggle each step an even number of times: the history and op window fill
	// and the pattern ends where it began.
	for i := 0; i < max(2*HistoryLen, OpWindowMax); i++ {
		a.must(tb, a.toggle(benchLive, i/2))
	}
	a.create(tb, benchIdle, "Sunday sketch", benchStateJSON(1))
	for i := 0; i < OpWindowMax; i++ {
		name := "Sunday sketch"
		a.must(tb, Command{Kind: KindRename, Session: benchIdle, Name: &name})
	}
	return a
}

// dup puts a copy of session from under the id to, as if it had lived the same
// history: same tracks, players, resume history and op window, though only the
// window's newest benchEdits entries. A pool prepares hundreds of copies per
// chunk: whole windows at the cap (176 KiB each) would have the timed loop
// pay for collecting them.
func (a *benchApplier) dup(from, to string) *Session {
	src := a.s.Session(from)
	c := src.clone()
	c.ID = to
	c.ops = &opWindow{}
	for i := max(src.ops.len()-benchEdits, 0); i < src.ops.len(); i++ {
		c.ops.add(src.ops.entry(i), c.MaxAt)
	}
	a.s.put(c)
	return c
}

// benchPool prepares sessions for the kinds that use something up (a free
// track or player slot, a track, a player, a session): per prepared session
// it allows per commands, and the previous chunk's sessions are removed so
// the state stays the fixture's size.
type benchPool struct {
	a    *benchApplier
	per  int
	ids  []string
	next int // session ids are never reused
}

func (p *benchPool) prep(from string, n int, adjust func(*Session)) {
	for _, id := range p.ids {
		p.a.s.remove(id)
	}
	p.ids = p.ids[:0]
	for k := 0; k < (n+p.per-1)/p.per; k++ {
		p.next++
		id := benchSessionID(1_000_000 + p.next)
		sess := p.a.dup(from, id)
		if adjust != nil {
			adjust(sess)
		}
		p.ids = append(p.ids, id)
	}
}

// session returns the session that command i uses.
func (p *benchPool) session(i int) string { return p.ids[(i%benchChunk)/p.per] }

// benchCase makes the commands of one kind. When chunk is set, prep runs with
// the timer stopped before commands i..i+chunk-1 so that each does real work.
type benchCase struct {
	chunk int
	prep  func(i int)
	cmd   func(i int) Command
}

func (a *benchApplier) applyCase(tb testing.TB, k Kind) benchCase {
	tb.Helper()
	mut := func(i int, c Command) Command {
		a.clientSeq++
		c.Kind, c.Player, c.ClientSeq = k, benchPlayers[i%5], &a.clientSeq
		if c.Session == "" {
			c.Session = benchLive
		}
		return c
	}
	// freshIDs names the sessions that the next chunk of create, remix or
	// publish makes, after removing the previous chunk's, so that the state
	// stays the fixture's size.
	ids := make([]string, benchChunk)
	freshIDs := func(i int) {
		for j := range ids {
			if ids[j] != "" {
				a.s.remove(ids[j])
			}
			ids[j] = benchSessionID(i + j)
		}
	}
	pool := func(per int) *benchPool { return &benchPool{a: a, per: per} }
	switch k {
	case KindCreate:
		state, name := benchStateJSON(2), "New beat"
		return benchCase{chunk: benchChunk, prep: freshIDs, cmd: func(i int) Command {
			id := ids[i%benchChunk]
			return Command{Kind: k, Session: id, Target: id, Name: &name, State: state}
		}}
	case KindReplaceState:
		states := [2][]byte{benchStateJSON(3), benchStateJSON(4)}
		return benchCase{cmd: func(i int) Command {
			return Command{Kind: k, Session: benchIdle, State: states[i%2]}
		}}
	case KindRename:
		names := [2]string{"Friday jam", "Friday jam (final)"}
		return benchCase{cmd: func(i int) Command { return Command{Kind: k, Session: benchLive, Name: &names[i%2]} }}
	case KindRemix, KindPublish:
		return benchCase{chunk: benchChunk, prep: freshIDs, cmd: func(i int) Command {
			return Command{Kind: k, Session: benchLive, Target: ids[i%benchChunk]}
		}}
	case KindDelete:
		p := pool(1)
		return benchCase{chunk: benchChunk, prep: func(int) { p.prep(benchIdle, benchChunk, nil) }, cmd: func(i int) Command {
			return Command{Kind: k, Session: p.session(i)}
		}}
	case KindTouch:
		touches := []Touch{{Session: benchLive}}
		return benchCase{cmd: func(i int) Command {
			touches[0].At = 1_800_000_000_000 + int64(i)
			return Command{Kind: k, Touches: touches}
		}}
	case KindToggleStep:
		return benchCase{cmd: func(i int) Command { return a.toggle(benchLive, i) }}
	case KindSetTempo:
		return benchCase{cmd: func(i int) Command { return mut(i, Command{Number: float64(60 + i%121)}) }}
	case KindSetSwing:
		return benchCase{cmd: func(i int) Command { return mut(i, Command{Number: float64(i % 101)}) }}
	case KindMuteTrack, KindSoloTrack:
		return benchCase{cmd: func(i int) Command {
			return mut(i, Command{TrackID: benchTrackID(i % 8), Flag: (i/8)%2 == 0})
		}}
	case KindSetParameterLock:
		return benchCase{cmd: func(i int) Command {
			return mut(i, Command{TrackID: benchTrackID(i % 8), Step: i % DefaultStepCount, Payload: benchLockPayloads[i%3]})
		}}
	case KindAddTrack:
		// A dup of benchLive has 8 tracks: room for 8 more.
		var payloads [MaxTracks - 8][]byte
		for j := range payloads {
			payloads[j] = []byte(benchTrackJSON("track-new-"+strconv.Itoa(j), j, j))
		}
		p := pool(len(payloads))
		return benchCase{chunk: benchChunk, prep: func(int) { p.prep(benchLive, benchChunk, nil) }, cmd: func(i int) Command {
			return mut(i, Command{Session: p.session(i), Payload: payloads[i%p.per]})
		}}
	case KindDeleteTrack:
		p := pool(8)
		return benchCase{chunk: benchChunk, prep: func(int) { p.prep(benchLive, benchChunk, nil) }, cmd: func(i int) Command {
			return mut(i, Command{Session: p.session(i), TrackID: benchTrackID(i % 8)})
		}}
	case KindClearTrack:
		return benchCase{cmd: func(i int) Command { return mut(i, Command{TrackID: benchTrackID(i % 8)}) }}
	case KindSetTrackSample:
		return benchCase{cmd: func(i int) Command {
			ts := benchTrackSamples[i%len(benchTrackSamples)]
			return mut(i, Command{TrackID: benchTrackID(i % 8), TrackName: ts[0], SampleID: ts[1]})
		}}
	case KindSetTrackVolume:
		return benchCase{cmd: func(i int) Command {
			return mut(i, Command{TrackID: benchTrackID(i % 8), Number: float64(i%11) / 10})
		}}
	case KindSetTrackTranspose:
		return benchCase{cmd: func(i int) Command {
			return mut(i, Command{TrackID: benchTrackID(i % 8), Number: float64(i%49 - 24)})
		}}
	case KindSetTrackStepCount:
		return benchCase{cmd: func(i int) Command {
			return mut(i, Command{TrackID: benchTrackID(i % 8), Number: validStepCounts[i%len(validStepCounts)]})
		}}
	case KindSetEffects:
		return benchCase{cmd: func(i int) Command { return mut(i, Command{Payload: benchEffects[i%2]}) }}
	case KindSetFMParams:
		return benchCase{cmd: func(i int) Command {
			return mut(i, Command{TrackID: benchTrackID(i % 8), Payload: benchFM[i%2]})
		}}
	case KindPlayerJoin:
		// A dup of benchLive has 5 players: room for 5 more.
		p := pool(len(benchJoiners))
		return benchCase{chunk: benchChunk, prep: func(int) { p.prep(benchLive, benchChunk, nil) }, cmd: func(i int) Command {
			return Command{Kind: k, Session: p.session(i), Player: benchJoiners[i%p.per], Node: benchNode, Epoch: benchEpoch}
		}}
	case KindPlayerLeave, KindPlaybackStart:
		// Leave: the fifth leave of a session drops its room. Start: nobody plays yet.
		p := pool(len(benchPlayers))
		return benchCase{chunk: benchChunk, prep: func(int) { p.prep(benchLive, benchChunk, nil) }, cmd: func(i int) Command {
			return Command{Kind: k, Session: p.session(i), Player: benchPlayers[i%p.per]}
		}}
	case KindPlaybackStop:
		p := pool(len(benchPlayers))
		playing := func(s *Session) { s.live.playing = append([]string(nil), benchPlayers[:]...) }
		return benchCase{chunk: benchChunk, prep: func(int) { p.prep(benchLive, benchChunk, playing) }, cmd: func(i int) Command {
			return Command{Kind: k, Session: p.session(i), Player: benchPlayers[i%p.per]}
		}}
	case KindNodeEpoch, KindReapNode:
		// Another node's newer epoch: a scan of every session, nobody dropped.
		return benchCase{cmd: func(i int) Command { return Command{Kind: k, Node: "node-2", Epoch: uint64(i + 1)} }}
	}
	tb.Fatalf("no benchmark case for command kind %s: add one", k)
	return benchCase{}
}

// BenchmarkApply is Apply's cost per command kind on a state holding one live
// session (8 tracks, 6 locks, 5 players, full history and op window) and one
// idle one. Every iteration must return StatusOK: none is ignored or answered
// from the op window.
func BenchmarkApply(b *testing.B) {
	for _, k := range Kinds() {
		b.Run(k.String(), func(b *testing.B) {
			a := newBenchFixture(b)
			bc := a.applyCase(b, k)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if bc.chunk > 0 && i%bc.chunk == 0 {
					b.StopTimer()
					bc.prep(i)
					b.StartTimer()
				}
				if res, _ := a.apply(bc.cmd(i)); res.Status != StatusOK || res.Duplicate {
					b.Fatalf("%s #%d: status %s, duplicate %v", k, i, res.Status, res.Duplicate)
				}
				i++
			}
		})
	}
}

// BenchmarkDecodeApply is the per-entry cost on raft's apply goroutine: Decode
// of the logged bytes, then Apply.
func BenchmarkDecodeApply(b *testing.B) {
	b.Run("toggle_step", func(b *testing.B) {
		a := newBenchFixture(b)
		entries := make([][]byte, benchChunk)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if i%benchChunk == 0 {
				b.StopTimer()
				for j := range entries {
					c := a.toggle(benchLive, i+j)
					c.Op = a.nextOp()
					a.at++ // later than every op before, so never too old
					c.At = a.at
					var err error
					if entries[j], err = Encode(c); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
			}
			c, err := Decode(entries[i%benchChunk])
			if err != nil {
				b.Fatal(err)
			}
			a.index++
			if res, _ := a.s.Apply(a.index, c); res.Status != StatusOK {
				b.Fatalf("#%d: status %s", i, res.Status)
			}
			i++
		}
		b.ReportMetric(float64(len(entries[0])), "entry-B")
	})
}

// benchTypicalSessions is how many sessions the snapshot and resident-bytes
// benchmarks hold.
const benchTypicalSessions = 100_000

// benchBuildTypical creates n typical sessions through Apply: 8 tracks, 6
// parameter locks, a name, no players, one op in the window.
func benchBuildTypical(tb testing.TB, a *benchApplier, n int) {
	tb.Helper()
	var states [16][]byte
	for v := range states {
		states[v] = benchStateJSON(v)
	}
	for i := 0; i < n; i++ {
		a.create(tb, benchSessionID(i), "Beat "+strconv.Itoa(i), states[i%len(states)])
	}
}

// benchSnapBase is BenchmarkSnapshot's state, built on its first run and
// kept for the later runs of -count: building 100k sessions through Apply is
// most of the benchmark's wall time. No sub-benchmark modifies it.
var benchSnapBase struct {
	a    *benchApplier
	snap []byte
}

// benchSink keeps a Clone on the heap, as a snapshot in flight is; without it
// the compiler may place a clone that does not escape on the stack.
var benchSink *State

// BenchmarkSnapshot measures the snapshot codec and Clone on 100k typical
// sessions, one of which also has 5 players (the target of CloneThenApply).
func BenchmarkSnapshot(b *testing.B) {
	if benchSnapBase.a == nil {
		a := newBenchApplier()
		benchBuildTypical(b, a, benchTypicalSessions)
		a.join(b, benchSessionID(0), benchPlayers[:])
		var buf bytes.Buffer
		if err := a.s.WriteSnapshot(&buf); err != nil {
			b.Fatal(err)
		}
		benchSnapBase.a, benchSnapBase.snap = a, buf.Bytes()
	}
	base, snap := benchSnapBase.a, benchSnapBase.snap
	perSession := float64(len(snap)) / benchTypicalSessions

	b.Run("Encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(snap)))
		for b.Loop() {
			if err := base.s.WriteSnapshot(io.Discard); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(snap)), "snapshot-B")
		b.ReportMetric(perSession, "snapshot-B/session")
	})
	b.Run("Restore", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(snap)))
		for b.Loop() {
			s, err := ReadSnapshot(bytes.NewReader(snap))
			if err != nil {
				b.Fatal(err)
			}
			if s.Len() != benchTypicalSessions {
				b.Fatalf("restored %d sessions", s.Len())
			}
		}
	})
	b.Run("Clone", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			benchSink = base.s.Clone()
		}
		benchSink = nil
	})
	// The first write after a Clone copies the written session's shard map
	// (about 390 sessions at 100k) and the session itself, op window
	// included: the loop's toggles come 1 ms apart, so after OpWindowMax of
	// them the window is at its cap (160 KiB of entries, 16 KiB of index). It
	// runs on a clone of the base, which shares every shard with it, so the
	// base stays as built.
	b.Run("CloneThenApply", func(b *testing.B) {
		w := *base
		w.s = base.s.Clone()
		live := benchSessionID(0)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			benchSink = w.s.Clone()
			if res, _ := w.apply(w.toggle(live, i)); res.Status != StatusOK {
				b.Fatalf("#%d: status %s", i, res.Status)
			}
			i++
		}
		benchSink = nil
	})
}

func benchHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkResidentBytes reports live heap bytes per session (B/session), after
// a full GC, for three kinds of session. ns/op is the cost of building them.
//
//   - typical: created with 8 tracks and 6 locks, never joined (also
//     restored-B/session: the same state after a snapshot round trip);
//   - edited: typical, then 64 edits by one player who left (all in the op
//     window, no room);
//   - active: 5 players, 2 of them playing, 256-event history, and 320 ops in
//     the op window. (A session at the window's cap holds OpWindowMax entries
//     of 40 B, 160 KiB.)
func BenchmarkResidentBytes(b *testing.B) {
	benchSnapBase.a, benchSnapBase.snap = nil, nil // not needed any more: let it go before measuring
	b.Run("typical", func(b *testing.B) {
		b.ReportAllocs()
		var per, restored float64
		for b.Loop() {
			before := benchHeap()
			a := newBenchApplier()
			benchBuildTypical(b, a, benchTypicalSessions)
			per = float64(benchHeap()-before) / benchTypicalSessions

			var buf bytes.Buffer
			if err := a.s.WriteSnapshot(&buf); err != nil {
				b.Fatal(err)
			}
			a = nil
			before = benchHeap() // the snapshot bytes are live in both readings
			s, err := ReadSnapshot(&buf)
			if err != nil {
				b.Fatal(err)
			}
			restored = float64(benchHeap()-before) / benchTypicalSessions
			runtime.KeepAlive(s)
			runtime.KeepAlive(&buf)
		}
		b.ReportMetric(per, "B/session")
		b.ReportMetric(restored, "restored-B/session")
	})
	b.Run("edited", func(b *testing.B) {
		const n = 10_000
		b.ReportAllocs()
		var per float64
		for b.Loop() {
			before := benchHeap()
			a := newBenchApplier()
			benchBuildTypical(b, a, n)
			for i := 0; i < n; i++ {
				id := benchSessionID(i)
				a.join(b, id, benchPlayers[:1])
				for j := 0; j < benchEdits; j++ {
					a.must(b, a.toggle(id, 5*j)) // player 0 only
				}
				a.must(b, Command{Kind: KindPlayerLeave, Session: id, Player: benchPlayers[0]})
			}
			per = float64(benchHeap()-before) / n
			runtime.KeepAlive(a)
		}
		b.ReportMetric(per, "B/session")
	})
	b.Run("active", func(b *testing.B) {
		const n = 1_000
		b.ReportAllocs()
		var per float64
		for b.Loop() {
			before := benchHeap()
			a := newBenchApplier()
			benchBuildTypical(b, a, n)
			for i := 0; i < n; i++ {
				id := benchSessionID(i)
				a.join(b, id, benchPlayers[:])
				for j := 0; j < HistoryLen+benchEdits; j++ {
					c := a.toggle(id, j)
					switch j % 10 {
					case 3:
						c.Kind, c.Payload = KindSetParameterLock, benchLockPayloads[j%3]
					case 7:
						c.Kind, c.Number = KindSetTrackVolume, float64(j%11)/10
					}
					a.must(b, c)
				}
				for _, p := range benchPlayers[:2] {
					a.must(b, Command{Kind: KindPlaybackStart, Session: id, Player: p})
				}
			}
			per = float64(benchHeap()-before) / n
			runtime.KeepAlive(a)
		}
		b.ReportMetric(per, "B/session")
	})
}

// benchEpochLive is how many of BenchmarkNodeEpoch's sessions have players.
const benchEpochLive = 4

// BenchmarkNodeEpoch is what a node restarting (node_epoch) or being reaped
// (reap_node) costs raft's apply goroutine in a state of 100k sessions, of
// which benchEpochLive have players: two on node-1 and one on node-2 each.
//
//   - node_epoch, reap_node: the command about node-1, which drops its 8
//     players. Before each iteration, with the timer stopped, they join again.
//   - node_epoch_no_players: a newer epoch of node-3, which has no players.
func BenchmarkNodeEpoch(b *testing.B) {
	const other = "node-2"
	build := func(b *testing.B) (a *benchApplier, live []string) {
		a = newBenchApplier()
		name := "Beat"
		for i := 0; i < benchTypicalSessions; i++ {
			id := benchSessionID(i)
			a.must(b, Command{Kind: KindCreate, Session: id, Target: id, Name: &name}) // the default state
		}
		for i := 0; i < benchEpochLive; i++ {
			id := benchSessionID(i * (benchTypicalSessions / benchEpochLive))
			a.must(b, Command{Kind: KindPlayerJoin, Session: id, Player: benchPlayers[2], Node: other, Epoch: 1})
			live = append(live, id)
		}
		return a, live
	}
	for _, k := range []Kind{KindNodeEpoch, KindReapNode} {
		b.Run(k.String(), func(b *testing.B) {
			a, live := build(b)
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				epoch, reaped := a.s.NodeEpoch(benchNode)
				if reaped || epoch == 0 {
					epoch++ // the first join implies the new epoch
				}
				for _, id := range live {
					for _, p := range benchPlayers[:2] {
						a.must(b, Command{Kind: KindPlayerJoin, Session: id, Player: p, Node: benchNode, Epoch: epoch})
					}
				}
				c := Command{Kind: k, Node: benchNode, Epoch: epoch}
				if k == KindNodeEpoch {
					c.Epoch++
				}
				b.StartTimer()
				res, events := a.apply(c)
				if res.Status != StatusOK || len(events) != 2*benchEpochLive {
					b.Fatalf("%s: status %s, %d events", k, res.Status, len(events))
				}
			}
		})
	}
	b.Run("node_epoch_no_players", func(b *testing.B) {
		a, _ := build(b)
		b.ReportAllocs()
		epoch := uint64(0)
		for b.Loop() {
			epoch++
			if res, events := a.apply(Command{Kind: KindNodeEpoch, Node: "node-3", Epoch: epoch}); res.Status != StatusOK || len(events) != 0 {
				b.Fatalf("status %s, %d events", res.Status, len(events))
			}
		}
	})
}

// BenchmarkValidateState is the HTTP check (PROTOCOL.md §1.4.1) of the
// typical 8-track state that BenchmarkApply/create parses; a node runs it
// before proposing a create or PUT.
func BenchmarkValidateState(b *testing.B) {
	state := benchStateJSON(2)
	b.ReportAllocs()
	b.SetBytes(int64(len(state)))
	for b.Loop() {
		if d := ValidateState(state); d != nil {
			b.Fatal(d)
		}
	}
}
