package fsm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// The fixture every Apply test starts from: session rigSID holding rigBaseState,
// with player rigPlayer joined from node rigNode at epoch rigEpoch.
const (
	rigSID    = "5f0c3c1e-7a8b-4c2d-9e0f-112233445566"
	rigPlayer = "p1"
	rigNode   = "n1"
	rigEpoch  = 1
)

const rigBaseState = `{"tracks":[` +
	`{"id":"t1","name":"Kick","sampleId":"kick","steps":[true,false,false,false],"parameterLocks":[],"volume":1,"muted":false,"playbackMode":"oneshot","transpose":0,"stepCount":16},` +
	`{"id":"t2","name":"Bass","sampleId":"synth:bass","steps":[],"parameterLocks":[null,{"pitch":3}],"volume":0.5,"muted":false,"stepCount":16}` +
	`],"tempo":120,"swing":0,"version":1}`

// cmdRig applies commands to a State at increasing indexes.
type cmdRig struct {
	tb    testing.TB
	s     *State
	index uint64
	ops   uint32
}

func newCmdRig(tb testing.TB) *cmdRig {
	tb.Helper()
	return &cmdRig{tb: tb, s: NewState()}
}

// newJoinedRig returns a State holding session rigSID with the given state
// (rigBaseState when empty), created at index 1, and player rigPlayer joined
// at index 2.
func newJoinedRig(tb testing.TB, state string) *cmdRig {
	tb.Helper()
	r := newCmdRig(tb)
	if state == "" {
		state = rigBaseState
	}
	r.create(rigSID, state)
	r.join(rigSID, rigPlayer)
	return r
}

// rigAt is the proposer timestamp the rig stamps on the command at index.
func rigAt(index uint64) int64 { return 1_700_000_000_000 + int64(index)*1000 }

func (r *cmdRig) nextOp() OpID {
	r.ops++
	op := OpID{0: 0xc0}
	binary.BigEndian.PutUint32(op[12:], r.ops)
	return op
}

// apply applies c at the next index. A zero Op becomes a fresh one and a zero
// At becomes rigAt(index).
func (r *cmdRig) apply(c Command) (Result, []Event) {
	r.tb.Helper()
	r.index++
	if c.Op.IsZero() {
		c.Op = r.nextOp()
	}
	if c.At == 0 {
		c.At = rigAt(r.index)
	}
	return r.s.Apply(r.index, c)
}

// must applies c and fails the test unless it got status want, as a new
// operation at this index.
func (r *cmdRig) must(want Status, c Command) []Event {
	r.tb.Helper()
	res, evs := r.apply(c)
	if res != (Result{Status: want, Index: r.index}) {
		r.tb.Fatalf("apply %s at %d: got %+v, want status %s", c.Kind, r.index, res, want)
	}
	return evs
}

func (r *cmdRig) create(id, state string) {
	r.tb.Helper()
	c := Command{Kind: KindCreate, Session: id, Target: id}
	if state != "" {
		c.State = json.RawMessage(state)
	}
	r.must(StatusOK, c)
}

func (r *cmdRig) join(session, player string) []Event {
	r.tb.Helper()
	return r.must(StatusOK, Command{Kind: KindPlayerJoin, Session: session, Player: player, Node: rigNode, Epoch: rigEpoch})
}

// mut builds a mutation of rigSID by rigPlayer.
func rigMut(k Kind, c Command) Command {
	c.Kind = k
	if c.Session == "" {
		c.Session = rigSID
	}
	if c.Player == "" {
		c.Player = rigPlayer
	}
	return c
}

// sess returns a session that must exist.
func (r *cmdRig) sess(id string) *Session {
	r.tb.Helper()
	s := r.s.Session(id)
	if s == nil {
		r.tb.Fatalf("session %s does not exist", id)
	}
	return s
}

// track returns a track of rigSID that must exist.
func (r *cmdRig) track(id string) *SessionTrack {
	r.tb.Helper()
	st := &r.sess(rigSID).State
	i := st.TrackIndex(id)
	if i < 0 {
		r.tb.Fatalf("track %s does not exist", id)
	}
	return &st.Tracks[i]
}

func (r *cmdRig) trackJSON(id string) string { return string(r.track(id).AppendJSON(nil)) }

// view is everything observable about a session: the record, its seq, hash
// and presence. Equal views mean Apply left the session alone.
func (r *cmdRig) view(id string) string {
	r.tb.Helper()
	s := r.s.Session(id)
	if s == nil {
		return "<nil>"
	}
	var ids []string
	for _, p := range s.Players() {
		ids = append(ids, p.ID)
	}
	return fmt.Sprintf("%s lastSeq=%d hash=%s players=%v playing=%v", s.AppendJSON(nil), s.LastSeq, s.Hash(), ids, s.PlayingPlayerIDs())
}

// snapshotBody is WriteSnapshot without what changes with every Apply: the
// header's applied index and the checksum over it.
func (r *cmdRig) snapshotBody() []byte {
	r.tb.Helper()
	var buf bytes.Buffer
	if err := r.s.WriteSnapshot(&buf); err != nil {
		r.tb.Fatal(err)
	}
	b := buf.Bytes()
	if !bytes.HasPrefix(b, []byte(snapshotMagic)) {
		r.tb.Fatalf("snapshot does not start with %q", snapshotMagic)
	}
	b = b[len(snapshotMagic):]
	for range 2 { // version, index
		_, n := binary.Uvarint(b)
		if n <= 0 {
			r.tb.Fatal("bad snapshot header")
		}
		b = b[n:]
	}
	return b[:len(b)-4]
}

func rigEventJSONs(evs []Event) []string {
	out := make([]string, len(evs))
	for i := range evs {
		out[i] = string(evs[i].AppendJSON(nil))
	}
	return out
}

// rigBools is a JSON array of n booleans with the given indexes true.
func rigBools(n int, on ...int) string {
	v := make([]string, n)
	for i := range v {
		v[i] = "false"
	}
	for _, i := range on {
		v[i] = "true"
	}
	return "[" + strings.Join(v, ",") + "]"
}

// rigLocks is a JSON array of n entries, null except the given locks.
func rigLocks(n int, locks map[int]string) string {
	v := make([]string, n)
	for i := range v {
		v[i] = "null"
		if l, ok := locks[i]; ok {
			v[i] = l
		}
	}
	return "[" + strings.Join(v, ",") + "]"
}

// rigTracksState is a state with n minimal tracks t1..tn.
func rigTracksState(n int) string {
	tracks := make([]string, n)
	for i := range tracks {
		tracks[i] = fmt.Sprintf(`{"id":"t%d","name":"T%d","sampleId":"kick","steps":[]}`, i+1, i+1)
	}
	return `{"tracks":[` + strings.Join(tracks, ",") + `],"tempo":120,"swing":0}`
}

func rigPtr[T any](v T) *T { return &v }

// rigApplyCase is one command applied to newJoinedRig.
type rigApplyCase struct {
	name  string
	state string          // the session's state; rigBaseState when empty
	prep  func(r *cmdRig) // commands applied before cmd
	cmd   Command         // Session and Player default to rigSID and rigPlayer where the kind uses them
	want  Status
	// events are the emitted events in order: full Event.AppendJSON, with $SEQ
	// and $PREV standing for the index and the session's previous LastSeq, or a
	// bare type name when only the type is checked.
	events []string
	check  func(tb testing.TB, r *cmdRig)
}

// rigTail ends the JSON of a mutating broadcast sent by rigPlayer with clientSeq 7.
const rigTail = `,"playerId":"p1","seq":$SEQ,"prevSeq":$PREV,"clientSeq":7}`

func rigEq[T comparable](tb testing.TB, what string, got, want T) {
	tb.Helper()
	if got != want {
		tb.Fatalf("%s = %v, want %v", what, got, want)
	}
}

func rigApplyCases() []rigApplyCase {
	t1Has := func(want string) func(testing.TB, *cmdRig) {
		return func(tb testing.TB, r *cmdRig) {
			tb.Helper()
			if got := r.trackJSON("t1"); !strings.Contains(got, want) {
				tb.Fatalf("track t1 = %s, want it to contain %s", got, want)
			}
		}
	}
	effects := func(want string) func(testing.TB, *cmdRig) {
		return func(tb testing.TB, r *cmdRig) {
			tb.Helper()
			fx := r.sess(rigSID).State.Effects
			if fx == nil {
				tb.Fatal("state has no effects")
			}
			rigEq(tb, "effects", string(fx.AppendJSON(nil)), want)
			if got := string(r.sess(rigSID).State.AppendJSON(nil)); !strings.Contains(got, `,"effects":`+want+`,"version":1}`) {
				tb.Fatalf("state JSON %s lacks the effects", got)
			}
		}
	}
	lockAt := func(track string, step int, want string) func(testing.TB, *cmdRig) {
		return func(tb testing.TB, r *cmdRig) {
			tb.Helper()
			l, ok := r.track(track).Lock(step)
			got := "null"
			if ok {
				got = string(l.AppendJSON(nil))
			}
			rigEq(tb, fmt.Sprintf("lock %s[%d]", track, step), got, want)
		}
	}
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }

	cases := []rigApplyCase{
		// toggle_step
		{name: "toggle_step turns a step on", cmd: rigMut(KindToggleStep, Command{TrackID: "t1", Step: 1}), want: StatusOK,
			events: []string{`{"type":"step_toggled","trackId":"t1","step":1,"value":true` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				rigEq(tb, "t1 step 1", r.track("t1").Step(1), true)
				rigEq(tb, "t1 active steps", r.track("t1").ActiveSteps(), 2)
			}},
		{name: "toggle_step turns a step off", cmd: rigMut(KindToggleStep, Command{TrackID: "t1", Step: 0}), want: StatusOK,
			events: []string{`{"type":"step_toggled","trackId":"t1","step":0,"value":false` + rigTail},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "t1 active steps", r.track("t1").ActiveSteps(), 0) }},
		{name: "toggle_step twice flips back", prep: func(r *cmdRig) { r.must(StatusOK, rigMut(KindToggleStep, Command{TrackID: "t2", Step: 9})) },
			cmd: rigMut(KindToggleStep, Command{TrackID: "t2", Step: 9}), want: StatusOK,
			events: []string{`{"type":"step_toggled","trackId":"t2","step":9,"value":false` + rigTail}},
		{name: "toggle_step step 127", cmd: rigMut(KindToggleStep, Command{TrackID: "t2", Step: 127}), want: StatusOK,
			events: []string{`{"type":"step_toggled","trackId":"t2","step":127,"value":true` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				rigEq(tb, "t2 JSON", r.trackJSON("t2"), `{"id":"t2","name":"Bass","sampleId":"synth:bass","steps":`+rigBools(128, 127)+
					`,"parameterLocks":`+rigLocks(128, map[int]string{1: `{"pitch":3}`})+`,"volume":0.5,"muted":false,"stepCount":16}`)
			}},
		{name: "toggle_step step 128 ignored", cmd: rigMut(KindToggleStep, Command{TrackID: "t1", Step: 128}), want: StatusIgnored},
		{name: "toggle_step step -1 ignored", cmd: rigMut(KindToggleStep, Command{TrackID: "t1", Step: -1}), want: StatusIgnored},
		{name: "toggle_step unknown track ignored", cmd: rigMut(KindToggleStep, Command{TrackID: "nope", Step: 1}), want: StatusIgnored},

		// set_tempo, set_swing
		{name: "set_tempo 500 clamps to 180", cmd: rigMut(KindSetTempo, Command{Number: 500}), want: StatusOK,
			events: []string{`{"type":"tempo_changed","tempo":180` + rigTail},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "tempo", r.sess(rigSID).State.Tempo, 180) }},
		{name: "set_tempo 10 clamps to 60", cmd: rigMut(KindSetTempo, Command{Number: 10}), want: StatusOK,
			events: []string{`{"type":"tempo_changed","tempo":60` + rigTail},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "tempo", r.sess(rigSID).State.Tempo, 60) }},
		{name: "set_tempo keeps a fraction", cmd: rigMut(KindSetTempo, Command{Number: 97.5}), want: StatusOK,
			events: []string{`{"type":"tempo_changed","tempo":97.5` + rigTail},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "tempo", r.sess(rigSID).State.Tempo, 97.5) }},
		{name: "set_swing 150 clamps to 100", cmd: rigMut(KindSetSwing, Command{Number: 150}), want: StatusOK,
			events: []string{`{"type":"swing_changed","swing":100` + rigTail},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "swing", r.sess(rigSID).State.Swing, 100) }},
		{name: "set_swing -5 clamps to 0", prep: func(r *cmdRig) { r.must(StatusOK, rigMut(KindSetSwing, Command{Number: 50})) },
			cmd: rigMut(KindSetSwing, Command{Number: -5}), want: StatusOK,
			events: []string{`{"type":"swing_changed","swing":0` + rigTail},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "swing", r.sess(rigSID).State.Swing, 0) }},
		{name: "set_swing keeps a fraction", cmd: rigMut(KindSetSwing, Command{Number: 33.3}), want: StatusOK,
			events: []string{`{"type":"swing_changed","swing":33.3` + rigTail},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "swing", r.sess(rigSID).State.Swing, 33.3) }},

		// mute_track, solo_track
		{name: "mute_track", cmd: rigMut(KindMuteTrack, Command{TrackID: "t1", Flag: true}), want: StatusOK,
			events: []string{`{"type":"track_muted","trackId":"t1","muted":true` + rigTail},
			check:  t1Has(`,"muted":true,`)},
		{name: "mute_track false", prep: func(r *cmdRig) { r.must(StatusOK, rigMut(KindMuteTrack, Command{TrackID: "t1", Flag: true})) },
			cmd: rigMut(KindMuteTrack, Command{TrackID: "t1", Flag: false}), want: StatusOK,
			events: []string{`{"type":"track_muted","trackId":"t1","muted":false` + rigTail},
			check:  t1Has(`,"muted":false,`)},
		{name: "mute_track unknown track ignored", cmd: rigMut(KindMuteTrack, Command{TrackID: "nope", Flag: true}), want: StatusIgnored},
		{name: "solo_track adds the field", cmd: rigMut(KindSoloTrack, Command{TrackID: "t1", Flag: true}), want: StatusOK,
			events: []string{`{"type":"track_soloed","trackId":"t1","soloed":true` + rigTail},
			check:  t1Has(`,"muted":false,"soloed":true,"playbackMode":"oneshot",`)},
		{name: "solo_track unknown track ignored", cmd: rigMut(KindSoloTrack, Command{TrackID: "nope", Flag: true}), want: StatusIgnored},

		// set_parameter_lock
		{name: "set_parameter_lock keeps volume-first key order", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: 4, Payload: raw(`{"volume":0.5,"pitch":-2}`)}), want: StatusOK,
			events: []string{`{"type":"parameter_lock_set","trackId":"t1","step":4,"lock":{"volume":0.5,"pitch":-2}` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				lockAt("t1", 4, `{"volume":0.5,"pitch":-2}`)(tb, r)
				canon := string(r.sess(rigSID).State.AppendCanonical(nil))
				if want := `"parameterLocks":` + rigLocks(16, map[int]string{4: `{"volume":0.5,"pitch":-2}`}); !strings.Contains(canon, want) {
					tb.Fatalf("canonical %s lacks %s", canon, want)
				}
			}},
		{name: "set_parameter_lock keeps pitch-first key order", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: 0, Payload: raw(`{"pitch":5,"volume":0.8}`)}), want: StatusOK,
			events: []string{`{"type":"parameter_lock_set","trackId":"t1","step":0,"lock":{"pitch":5,"volume":0.8}` + rigTail},
			check:  lockAt("t1", 0, `{"pitch":5,"volume":0.8}`)},
		{name: "set_parameter_lock one key", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: 127, Payload: raw(` { "volume" : 0.25 } `)}), want: StatusOK,
			events: []string{`{"type":"parameter_lock_set","trackId":"t1","step":127,"lock":{"volume":0.25}` + rigTail},
			check:  lockAt("t1", 127, `{"volume":0.25}`)},
		{name: "set_parameter_lock replaces a lock", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t2", Step: 1, Payload: raw(`{"pitch":-12}`)}), want: StatusOK,
			events: []string{`{"type":"parameter_lock_set","trackId":"t2","step":1,"lock":{"pitch":-12}` + rigTail},
			check:  lockAt("t2", 1, `{"pitch":-12}`)},
		{name: "set_parameter_lock null clears", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t2", Step: 1, Payload: raw(`null`)}), want: StatusOK,
			events: []string{`{"type":"parameter_lock_set","trackId":"t2","step":1,"lock":null` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				lockAt("t2", 1, "null")(tb, r)
				rigEq(tb, "t2 locks", r.track("t2").Locks(), 0)
			}},
		{name: "set_parameter_lock with an extra key ignored", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: 2, Payload: raw(`{"pitch":1,"gain":2}`)}), want: StatusIgnored},
		{name: "set_parameter_lock with a string pitch ignored", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: 2, Payload: raw(`{"pitch":"3"}`)}), want: StatusIgnored},
		{name: "set_parameter_lock with a null volume ignored", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: 2, Payload: raw(`{"volume":null}`)}), want: StatusIgnored},
		{name: "set_parameter_lock with an array ignored", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: 2, Payload: raw(`[3]`)}), want: StatusIgnored},
		{name: "set_parameter_lock without a lock ignored", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: 2}), want: StatusIgnored},
		{name: "set_parameter_lock step 128 ignored", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: 128, Payload: raw(`{"pitch":1}`)}), want: StatusIgnored},
		{name: "set_parameter_lock step -1 ignored", cmd: rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: -1, Payload: raw(`{"pitch":1}`)}), want: StatusIgnored},
		{name: "set_parameter_lock unknown track ignored", cmd: rigMut(KindSetParameterLock, Command{TrackID: "nope", Step: 1, Payload: raw(`{"pitch":1}`)}), want: StatusIgnored},

		// add_track
		{name: "add_track appends and repairs, event has the track as received",
			cmd: rigMut(KindAddTrack, Command{Payload: raw(`{ "id": "track-9", "name": "Snare", "sampleId": "snare", "steps": [true, false],
				"parameterLocks": [null, {"pitch": 2}], "volume": 1.5, "muted": false, "custom": {"a": [1, 2]} }`)}),
			want:   StatusOK,
			events: []string{`{"type":"track_added","track":{"id":"track-9","name":"Snare","sampleId":"snare","steps":[true,false],"parameterLocks":[null,{"pitch":2}],"volume":1.5,"muted":false,"custom":{"a":[1,2]}}` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				st := r.sess(rigSID).State
				rigEq(tb, "tracks", len(st.Tracks), 3)
				rigEq(tb, "third track", st.Tracks[2].ID, "track-9")
				rigEq(tb, "track-9 JSON", r.trackJSON("track-9"), `{"id":"track-9","name":"Snare","sampleId":"snare","steps":`+rigBools(128, 0)+
					`,"parameterLocks":`+rigLocks(128, map[int]string{1: `{"pitch":2}`})+`,"volume":1,"muted":false,"custom":{"a":[1,2]}}`)
			}},
		{name: "add_track with only an id gets full arrays", cmd: rigMut(KindAddTrack, Command{Payload: raw(`{"id":"bare"}`)}), want: StatusOK,
			events: []string{`{"type":"track_added","track":{"id":"bare"}` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				rigEq(tb, "bare JSON", r.trackJSON("bare"), `{"id":"bare","steps":`+rigBools(128)+`,"parameterLocks":`+rigLocks(128, nil)+`}`)
			}},
		{name: "add_track converts objects with numeric keys",
			cmd:    rigMut(KindAddTrack, Command{Payload: raw(`{"id":"obj","steps":{"0":true,"2":1,"200":true,"x":true},"parameterLocks":{"2":{"pitch":4},"130":{"pitch":1},"01":{"pitch":9},"x":{"pitch":9}}}`)}),
			want:   StatusOK,
			events: []string{"track_added"},
			check: func(tb testing.TB, r *cmdRig) {
				rigEq(tb, "obj JSON", r.trackJSON("obj"), `{"id":"obj","steps":`+rigBools(128, 0, 2)+`,"parameterLocks":`+rigLocks(128, map[int]string{2: `{"pitch":4}`})+`}`)
			}},
		{name: "add_track clamps stepCount 500 to 128", cmd: rigMut(KindAddTrack, Command{Payload: raw(`{"id":"big","stepCount":500}`)}), want: StatusOK,
			events: []string{`{"type":"track_added","track":{"id":"big","stepCount":500}` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				if got := r.trackJSON("big"); !strings.HasSuffix(got, `,"stepCount":128}`) {
					tb.Fatalf("big = %s, want stepCount 128", got)
				}
			}},
		{name: "add_track to 15 tracks makes 16", state: rigTracksState(15), cmd: rigMut(KindAddTrack, Command{Payload: raw(`{"id":"t16"}`)}), want: StatusOK,
			events: []string{"track_added"},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "tracks", len(r.sess(rigSID).State.Tracks), 16) }},
		{name: "add_track 17th track ignored", state: rigTracksState(16), cmd: rigMut(KindAddTrack, Command{Payload: raw(`{"id":"t17"}`)}), want: StatusIgnored},
		{name: "add_track duplicate id ignored", cmd: rigMut(KindAddTrack, Command{Payload: raw(`{"id":"t1","name":"Other"}`)}), want: StatusIgnored},
		{name: "add_track missing id ignored", cmd: rigMut(KindAddTrack, Command{Payload: raw(`{"name":"No id","steps":[]}`)}), want: StatusIgnored},
		{name: "add_track empty id ignored", cmd: rigMut(KindAddTrack, Command{Payload: raw(`{"id":""}`)}), want: StatusIgnored},
		{name: "add_track numeric id ignored", cmd: rigMut(KindAddTrack, Command{Payload: raw(`{"id":5}`)}), want: StatusIgnored},
		{name: "add_track non-object ignored", cmd: rigMut(KindAddTrack, Command{Payload: raw(`["t9"]`)}), want: StatusIgnored},
		{name: "add_track without a track ignored", cmd: rigMut(KindAddTrack, Command{}), want: StatusIgnored},

		// delete_track, clear_track
		{name: "delete_track", cmd: rigMut(KindDeleteTrack, Command{TrackID: "t1"}), want: StatusOK,
			events: []string{`{"type":"track_deleted","trackId":"t1"` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				st := r.sess(rigSID).State
				rigEq(tb, "tracks", len(st.Tracks), 1)
				rigEq(tb, "remaining", st.Tracks[0].ID, "t2")
			}},
		{name: "delete_track second delete ignored", prep: func(r *cmdRig) { r.must(StatusOK, rigMut(KindDeleteTrack, Command{TrackID: "t1"})) },
			cmd: rigMut(KindDeleteTrack, Command{TrackID: "t1"}), want: StatusIgnored},
		{name: "delete_track unknown track ignored", cmd: rigMut(KindDeleteTrack, Command{TrackID: "nope"}), want: StatusIgnored},
		{name: "clear_track", cmd: rigMut(KindClearTrack, Command{TrackID: "t2"}), want: StatusOK,
			events: []string{`{"type":"track_cleared","trackId":"t2"` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				rigEq(tb, "t2 locks", r.track("t2").Locks(), 0)
				rigEq(tb, "t1 active steps", r.track("t1").ActiveSteps(), 1)
			}},
		{name: "clear_track keeps stepCount and volume",
			prep: func(r *cmdRig) {
				r.must(StatusOK, rigMut(KindToggleStep, Command{TrackID: "t1", Step: 100}))
				r.must(StatusOK, rigMut(KindSetParameterLock, Command{TrackID: "t1", Step: 3, Payload: json.RawMessage(`{"pitch":1}`)}))
				r.must(StatusOK, rigMut(KindSetTrackStepCount, Command{TrackID: "t1", Number: 32}))
			},
			cmd: rigMut(KindClearTrack, Command{TrackID: "t1"}), want: StatusOK,
			events: []string{`{"type":"track_cleared","trackId":"t1"` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				rigEq(tb, "t1 JSON", r.trackJSON("t1"), `{"id":"t1","name":"Kick","sampleId":"kick","steps":`+rigBools(128)+`,"parameterLocks":`+rigLocks(128, nil)+
					`,"volume":1,"muted":false,"playbackMode":"oneshot","transpose":0,"stepCount":32}`)
				rigEq(tb, "t2 locks", r.track("t2").Locks(), 1)
			}},
		{name: "clear_track unknown track ignored", cmd: rigMut(KindClearTrack, Command{TrackID: "nope"}), want: StatusIgnored},

		// set_track_sample, set_track_volume, set_track_transpose
		{name: "set_track_sample", cmd: rigMut(KindSetTrackSample, Command{TrackID: "t1", SampleID: "snare", TrackName: "Snare"}), want: StatusOK,
			events: []string{`{"type":"track_sample_set","trackId":"t1","sampleId":"snare","name":"Snare"` + rigTail},
			check:  t1Has(`{"id":"t1","name":"Snare","sampleId":"snare","steps":`)},
		{name: "set_track_sample unknown track ignored", cmd: rigMut(KindSetTrackSample, Command{TrackID: "nope", SampleID: "snare", TrackName: "Snare"}), want: StatusIgnored},
		{name: "set_track_volume 1.5 clamps to 1", cmd: rigMut(KindSetTrackVolume, Command{TrackID: "t2", Number: 1.5}), want: StatusOK,
			events: []string{`{"type":"track_volume_set","trackId":"t2","volume":1` + rigTail},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "t2 volume", r.track("t2").Volume, 1) }},
		{name: "set_track_volume -0.2 clamps to 0", cmd: rigMut(KindSetTrackVolume, Command{TrackID: "t1", Number: -0.2}), want: StatusOK,
			events: []string{`{"type":"track_volume_set","trackId":"t1","volume":0` + rigTail},
			check:  t1Has(`,"volume":0,`)},
		{name: "set_track_volume in range", cmd: rigMut(KindSetTrackVolume, Command{TrackID: "t1", Number: 0.25}), want: StatusOK,
			events: []string{`{"type":"track_volume_set","trackId":"t1","volume":0.25` + rigTail},
			check:  t1Has(`,"volume":0.25,`)},
		{name: "set_track_volume unknown track ignored", cmd: rigMut(KindSetTrackVolume, Command{TrackID: "nope", Number: 0.5}), want: StatusIgnored},
	}
	for _, tc := range []struct {
		in   float64
		want string
	}{{-2.5, "-2"}, {2.5, "3"}, {30, "24"}, {-30, "-24"}, {7.4, "7"}, {-7.6, "-8"}, {-0.4, "0"}} {
		in := strconv.FormatFloat(tc.in, 'g', -1, 64)
		cases = append(cases, rigApplyCase{
			name: "set_track_transpose " + in + " is " + tc.want,
			cmd:  rigMut(KindSetTrackTranspose, Command{TrackID: "t1", Number: tc.in}), want: StatusOK,
			events: []string{`{"type":"track_transpose_set","trackId":"t1","transpose":` + tc.want + rigTail},
			check:  t1Has(`,"transpose":` + tc.want + `,`),
		})
	}
	cases = append(cases, rigApplyCase{name: "set_track_transpose unknown track ignored", cmd: rigMut(KindSetTrackTranspose, Command{TrackID: "nope", Number: 3}), want: StatusIgnored})

	// set_track_step_count: only the nine values.
	for _, n := range []int{4, 8, 12, 16, 24, 32, 64, 96, 128} {
		cases = append(cases, rigApplyCase{
			name: fmt.Sprintf("set_track_step_count %d", n),
			cmd:  rigMut(KindSetTrackStepCount, Command{TrackID: "t2", Number: float64(n)}), want: StatusOK,
			events: []string{fmt.Sprintf(`{"type":"track_step_count_set","trackId":"t2","stepCount":%d`, n) + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				want := fmt.Sprintf(`{"id":"t2","name":"Bass","sampleId":"synth:bass","steps":%s,"parameterLocks":%s,"volume":0.5,"muted":false,"stepCount":%d}`,
					rigBools(128), rigLocks(128, map[int]string{1: `{"pitch":3}`}), n)
				rigEq(tb, "t2 JSON (arrays not resized)", string(r.track("t2").AppendJSON(nil)), want)
			},
		})
	}
	for _, n := range []float64{0, 1, 5, 17, 16.5, 127, 129, 256, -16} {
		cases = append(cases, rigApplyCase{
			name: "set_track_step_count " + strconv.FormatFloat(n, 'g', -1, 64) + " ignored",
			cmd:  rigMut(KindSetTrackStepCount, Command{TrackID: "t2", Number: n}), want: StatusIgnored,
		})
	}
	cases = append(cases,
		rigApplyCase{name: "set_track_step_count unknown track ignored", cmd: rigMut(KindSetTrackStepCount, Command{TrackID: "nope", Number: 32}), want: StatusIgnored},

		// set_effects
		rigApplyCase{name: "set_effects writes keys in the fixed order",
			cmd: rigMut(KindSetEffects, Command{Payload: raw(`{"distortion":{"wet":0,"amount":0.4},"chorus":{"wet":0.1,"depth":0.5,"frequency":1.5},` +
				`"delay":{"wet":0.2,"feedback":0.3,"time":"4n"},"reverb":{"wet":0.5,"decay":2}}`)}),
			want:   StatusOK,
			events: []string{`{"type":"effects_changed","effects":{"reverb":{"decay":2,"wet":0.5},"delay":{"time":"4n","feedback":0.3,"wet":0.2},"chorus":{"frequency":1.5,"depth":0.5,"wet":0.1},"distortion":{"amount":0.4,"wet":0}}` + rigTail},
			check:  effects(`{"reverb":{"decay":2,"wet":0.5},"delay":{"time":"4n","feedback":0.3,"wet":0.2},"chorus":{"frequency":1.5,"depth":0.5,"wet":0.1},"distortion":{"amount":0.4,"wet":0}}`)},
		rigApplyCase{name: "set_effects clamps every field to its maximum",
			cmd:    rigMut(KindSetEffects, Command{Payload: raw(`{"reverb":{"decay":50,"wet":2},"delay":{"time":"16t","feedback":1,"wet":1.5},"chorus":{"frequency":50,"depth":3,"wet":5},"distortion":{"amount":7,"wet":9}}`)}),
			want:   StatusOK,
			events: []string{"effects_changed"},
			check:  effects(`{"reverb":{"decay":10,"wet":1},"delay":{"time":"16t","feedback":0.95,"wet":1},"chorus":{"frequency":10,"depth":1,"wet":1},"distortion":{"amount":1,"wet":1}}`)},
		rigApplyCase{name: "set_effects clamps every field to its minimum",
			cmd:    rigMut(KindSetEffects, Command{Payload: raw(`{"reverb":{"decay":0,"wet":-1},"delay":{"time":"1m","feedback":-0.5,"wet":-3},"chorus":{"frequency":0,"depth":-1,"wet":-2},"distortion":{"amount":-3,"wet":-0.1}}`)}),
			want:   StatusOK,
			events: []string{"effects_changed"},
			check:  effects(`{"reverb":{"decay":0.1,"wet":0},"delay":{"time":"1m","feedback":0,"wet":0},"chorus":{"frequency":0.1,"depth":0,"wet":0},"distortion":{"amount":0,"wet":0}}`)},
		rigApplyCase{name: "set_effects unknown delay.time becomes 8n",
			prep: func(r *cmdRig) {
				r.must(StatusOK, rigMut(KindSetEffects, Command{Payload: json.RawMessage(`{"reverb":{"wet":0},"delay":{"time":"2m","wet":0},"chorus":{"wet":0},"distortion":{"wet":0}}`)}))
			},
			cmd:    rigMut(KindSetEffects, Command{Payload: raw(`{"reverb":{"wet":0.1},"delay":{"time":"3n","wet":0.2},"chorus":{"wet":0.3},"distortion":{"wet":0.4}}`)}),
			want:   StatusOK,
			events: []string{`{"type":"effects_changed","effects":{"reverb":{"decay":2,"wet":0.1},"delay":{"time":"8n","feedback":0.3,"wet":0.2},"chorus":{"frequency":1.5,"depth":0.5,"wet":0.3},"distortion":{"amount":0.4,"wet":0.4}}` + rigTail},
			check:  effects(`{"reverb":{"decay":2,"wet":0.1},"delay":{"time":"8n","feedback":0.3,"wet":0.2},"chorus":{"frequency":1.5,"depth":0.5,"wet":0.3},"distortion":{"amount":0.4,"wet":0.4}}`)},
		rigApplyCase{name: "set_effects non-string delay.time becomes 8n",
			cmd:    rigMut(KindSetEffects, Command{Payload: raw(`{"reverb":{"wet":0},"delay":{"time":8,"wet":0},"chorus":{"wet":0},"distortion":{"wet":0},"flanger":{"wet":1}}`)}),
			want:   StatusOK,
			events: []string{"effects_changed"},
			check:  effects(`{"reverb":{"decay":2,"wet":0},"delay":{"time":"8n","feedback":0.3,"wet":0},"chorus":{"frequency":1.5,"depth":0.5,"wet":0},"distortion":{"amount":0.4,"wet":0}}`)},
		rigApplyCase{name: "set_effects missing distortion.wet ignored",
			cmd: rigMut(KindSetEffects, Command{Payload: raw(`{"reverb":{"wet":0},"delay":{"wet":0},"chorus":{"wet":0},"distortion":{"amount":0.5}}`)}), want: StatusIgnored},
		rigApplyCase{name: "set_effects string wet ignored",
			cmd: rigMut(KindSetEffects, Command{Payload: raw(`{"reverb":{"wet":"0.5"},"delay":{"wet":0},"chorus":{"wet":0},"distortion":{"wet":0}}`)}), want: StatusIgnored},
		rigApplyCase{name: "set_effects null delay ignored",
			cmd: rigMut(KindSetEffects, Command{Payload: raw(`{"reverb":{"wet":0},"delay":null,"chorus":{"wet":0},"distortion":{"wet":0}}`)}), want: StatusIgnored},
		rigApplyCase{name: "set_effects a duplicate wet does not stand in for a missing one",
			cmd: rigMut(KindSetEffects, Command{Payload: raw(`{"reverb":{"wet":0.1,"wet":0.2},"delay":{"wet":0},"chorus":{"wet":0},"distortion":{}}`)}), want: StatusIgnored},
		rigApplyCase{name: "set_effects a later non-numeric duplicate wet wins",
			cmd: rigMut(KindSetEffects, Command{Payload: raw(`{"reverb":{"wet":0.1,"wet":"x"},"delay":{"wet":0},"chorus":{"wet":0},"distortion":{"wet":0}}`)}), want: StatusIgnored},
		rigApplyCase{name: "set_effects non-object ignored", cmd: rigMut(KindSetEffects, Command{Payload: raw(`[]`)}), want: StatusIgnored},
		rigApplyCase{name: "set_effects without effects ignored", cmd: rigMut(KindSetEffects, Command{}), want: StatusIgnored},

		// set_fm_params
		rigApplyCase{name: "set_fm_params clamps high values", cmd: rigMut(KindSetFMParams, Command{TrackID: "t1", Payload: raw(`{"harmonicity":20,"modulationIndex":25}`)}), want: StatusOK,
			events: []string{`{"type":"fm_params_changed","trackId":"t1","fmParams":{"harmonicity":10,"modulationIndex":20}` + rigTail},
			check:  t1Has(`,"fmParams":{"harmonicity":10,"modulationIndex":20}}`)},
		rigApplyCase{name: "set_fm_params clamps low values and orders keys", cmd: rigMut(KindSetFMParams, Command{TrackID: "t1", Payload: raw(`{"modulationIndex":-1,"harmonicity":0.1,"extra":1}`)}), want: StatusOK,
			events: []string{`{"type":"fm_params_changed","trackId":"t1","fmParams":{"harmonicity":0.5,"modulationIndex":0}` + rigTail},
			check:  t1Has(`,"fmParams":{"harmonicity":0.5,"modulationIndex":0}}`)},
		rigApplyCase{name: "set_fm_params in range", cmd: rigMut(KindSetFMParams, Command{TrackID: "t2", Payload: raw(`{"harmonicity":3.5,"modulationIndex":7}`)}), want: StatusOK,
			events: []string{`{"type":"fm_params_changed","trackId":"t2","fmParams":{"harmonicity":3.5,"modulationIndex":7}` + rigTail},
			check: func(tb testing.TB, r *cmdRig) {
				fm := r.track("t2").FM
				if fm == nil || *fm != (FMParams{Harmonicity: 3.5, ModulationIndex: 7}) {
					tb.Fatalf("t2 fm = %+v", fm)
				}
			}},
		rigApplyCase{name: "set_fm_params string harmonicity ignored", cmd: rigMut(KindSetFMParams, Command{TrackID: "t1", Payload: raw(`{"harmonicity":"3","modulationIndex":7}`)}), want: StatusIgnored},
		rigApplyCase{name: "set_fm_params missing modulationIndex ignored", cmd: rigMut(KindSetFMParams, Command{TrackID: "t1", Payload: raw(`{"harmonicity":3}`)}), want: StatusIgnored},
		rigApplyCase{name: "set_fm_params null ignored", cmd: rigMut(KindSetFMParams, Command{TrackID: "t1", Payload: raw(`null`)}), want: StatusIgnored},
		rigApplyCase{name: "set_fm_params unknown track ignored", cmd: rigMut(KindSetFMParams, Command{TrackID: "nope", Payload: raw(`{"harmonicity":3,"modulationIndex":7}`)}), want: StatusIgnored},

		// Session lifecycle (more in the dedicated tests below).
		rigApplyCase{name: "create", cmd: Command{Kind: KindCreate, Session: "s2", Target: "s2", Name: rigPtr("Jam")}, want: StatusOK,
			check: func(tb testing.TB, r *cmdRig) {
				s := r.sess("s2")
				rigEq(tb, "name", s.Name, "Jam")
				rigEq(tb, "sessions", r.s.Len(), 2)
			}},
		rigApplyCase{name: "replace_state with players connected ignored", cmd: Command{Kind: KindReplaceState, State: raw(`{"tracks":[],"tempo":90,"swing":0}`)}, want: StatusIgnored},
		rigApplyCase{name: "replace_state",
			prep: func(r *cmdRig) { r.must(StatusOK, rigMut(KindPlayerLeave, Command{})) },
			cmd:  Command{Kind: KindReplaceState, State: raw(`{"tracks":[],"tempo":90,"swing":0}`)}, want: StatusOK,
			check: func(tb testing.TB, r *cmdRig) {
				rigEq(tb, "state", string(r.sess(rigSID).State.AppendJSON(nil)), `{"tracks":[],"tempo":90,"swing":0,"version":1}`)
			}},
		rigApplyCase{name: "rename", cmd: Command{Kind: KindRename, Name: rigPtr(" New name ")}, want: StatusOK,
			check: func(tb testing.TB, r *cmdRig) { rigEq(tb, "name", r.sess(rigSID).Name, "New name") }},
		rigApplyCase{name: "remix", cmd: Command{Kind: KindRemix, Target: "remix-1"}, want: StatusOK,
			check: func(tb testing.TB, r *cmdRig) {
				rigEq(tb, "remixedFrom", r.sess("remix-1").RemixedFrom, rigSID)
				rigEq(tb, "source remixCount", r.sess(rigSID).RemixCount, 1)
			}},
		rigApplyCase{name: "publish", cmd: Command{Kind: KindPublish, Target: "pub-1"}, want: StatusOK,
			check: func(tb testing.TB, r *cmdRig) { rigEq(tb, "immutable", r.sess("pub-1").Immutable, true) }},
		rigApplyCase{name: "delete", cmd: Command{Kind: KindDelete}, want: StatusOK, events: []string{"session_deleted"},
			check: func(tb testing.TB, r *cmdRig) {
				if r.s.Session(rigSID) != nil || r.s.Len() != 0 {
					tb.Fatal("session still exists")
				}
			}},
		rigApplyCase{name: "delete unknown session", cmd: Command{Kind: KindDelete, Session: "nope"}, want: StatusNotFound},
		rigApplyCase{name: "touch", cmd: Command{Kind: KindTouch, Touches: []Touch{{Session: rigSID, At: 1_800_000_000_000}}}, want: StatusOK,
			check: func(tb testing.TB, r *cmdRig) {
				rigEq(tb, "lastAccessedAt", r.sess(rigSID).LastAccessedAt, 1_800_000_000_000)
			}},

		// Presence (more in the dedicated tests below).
		rigApplyCase{name: "player_join", cmd: Command{Kind: KindPlayerJoin, Player: "p2", Node: rigNode, Epoch: rigEpoch}, want: StatusOK, events: []string{"player_joined"},
			check: func(tb testing.TB, r *cmdRig) { rigEq(tb, "players", len(r.sess(rigSID).Players()), 2) }},
		rigApplyCase{name: "player_join same player ignored", cmd: Command{Kind: KindPlayerJoin, Node: rigNode, Epoch: rigEpoch}, want: StatusIgnored},
		rigApplyCase{name: "player_leave", prep: func(r *cmdRig) { r.join(rigSID, "p2") }, cmd: Command{Kind: KindPlayerLeave}, want: StatusOK,
			events: []string{`{"type":"player_left","playerId":"p1"}`},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "players", len(r.sess(rigSID).Players()), 1) }},
		rigApplyCase{name: "playback_start", cmd: Command{Kind: KindPlaybackStart, At: 1_700_000_123_456}, want: StatusOK,
			events: []string{`{"type":"playback_started","startTime":1700000123456,"tempo":120,"playerId":"p1"}`},
			check: func(tb testing.TB, r *cmdRig) {
				rigEq(tb, "playing", fmt.Sprint(r.sess(rigSID).PlayingPlayerIDs()), "[p1]")
			}},
		rigApplyCase{name: "playback_stop", prep: func(r *cmdRig) { r.must(StatusOK, rigMut(KindPlaybackStart, Command{})) },
			cmd: Command{Kind: KindPlaybackStop}, want: StatusOK,
			events: []string{`{"type":"playback_stopped","playerId":"p1"}`},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "playing", len(r.sess(rigSID).PlayingPlayerIDs()), 0) }},
		rigApplyCase{name: "node_epoch drops older players", cmd: Command{Kind: KindNodeEpoch, Node: rigNode, Epoch: rigEpoch + 1}, want: StatusOK,
			events: []string{`{"type":"player_left","playerId":"p1"}`},
			check:  func(tb testing.TB, r *cmdRig) { rigEq(tb, "players", len(r.sess(rigSID).Players()), 0) }},
		rigApplyCase{name: "reap_node drops that incarnation", cmd: Command{Kind: KindReapNode, Node: rigNode, Epoch: rigEpoch}, want: StatusOK,
			events: []string{`{"type":"player_left","playerId":"p1"}`},
			check: func(tb testing.TB, r *cmdRig) {
				epoch, reaped := r.s.NodeEpoch(rigNode)
				rigEq(tb, "epoch", epoch, uint64(rigEpoch))
				rigEq(tb, "reaped", reaped, true)
			}},
	)
	return cases
}

// rigUsesSession and rigUsesPlayer say which command fields a kind reads.
func rigUsesSession(k Kind) bool { return k != KindTouch && k != KindNodeEpoch && k != KindReapNode }

func rigUsesPlayer(k Kind) bool {
	switch k {
	case KindPlayerJoin, KindPlayerLeave, KindPlaybackStart, KindPlaybackStop:
		return true
	}
	return k.IsMutation()
}

func TestApplyTable(t *testing.T) {
	for _, tt := range rigApplyCases() {
		t.Run(tt.name, func(t *testing.T) {
			r := newJoinedRig(t, tt.state)
			if tt.prep != nil {
				tt.prep(r)
			}
			c := tt.cmd
			if c.Session == "" && rigUsesSession(c.Kind) {
				c.Session = rigSID
			}
			if c.Player == "" && rigUsesPlayer(c.Kind) {
				c.Player = rigPlayer
			}
			if c.Kind.IsMutation() {
				c.ClientSeq = rigPtr[int64](7)
			}
			before := r.view(rigSID)
			prev := r.sess(rigSID).LastSeq

			res, evs := r.apply(c)
			if res != (Result{Status: tt.want, Index: r.index}) {
				t.Fatalf("result = %+v, want status %s at index %d", res, tt.want, r.index)
			}
			got := rigEventJSONs(evs)
			if len(got) != len(tt.events) {
				t.Fatalf("events:\n%s\nwant %d: %v", strings.Join(got, "\n"), len(tt.events), tt.events)
			}
			for i, want := range tt.events {
				if !strings.HasPrefix(want, "{") {
					rigEq(t, fmt.Sprintf("event %d type", i), evs[i].Type.String(), want)
					continue
				}
				want = strings.NewReplacer("$SEQ", strconv.FormatUint(r.index, 10), "$PREV", strconv.FormatUint(prev, 10)).Replace(want)
				rigEq(t, fmt.Sprintf("event %d", i), got[i], want)
			}
			for i, e := range evs {
				if e.Session != c.Session && c.Kind != KindNodeEpoch && c.Kind != KindReapNode {
					t.Errorf("event %d session = %q, want %q", i, e.Session, c.Session)
				}
				if e.Type.IsMutation() && (e.Seq != r.index || e.PrevSeq != prev || e.Others) {
					t.Errorf("event %d: seq %d prevSeq %d others %v, want %d %d false", i, e.Seq, e.PrevSeq, e.Others, r.index, prev)
				}
			}
			if s := r.s.Session(rigSID); s != nil && c.Kind.IsMutation() {
				wantLast, wantUpdated := prev, rigAt(1)
				if tt.want == StatusOK {
					wantLast, wantUpdated = r.index, rigAt(r.index)
				}
				rigEq(t, "LastSeq", s.LastSeq, wantLast)
				if tt.prep == nil {
					rigEq(t, "UpdatedAt", s.UpdatedAt, wantUpdated)
				}
			}
			if tt.want != StatusOK {
				if after := r.view(rigSID); after != before {
					t.Fatalf("status %s changed the session:\nbefore %s\nafter  %s", tt.want, before, after)
				}
			}
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

// TestApplyTableCoversEveryKind fails when a command kind has no successful case
// in the Apply table: a kind added without tests.
func TestApplyTableCoversEveryKind(t *testing.T) {
	ok := map[Kind]bool{}
	for _, tt := range rigApplyCases() {
		if tt.want == StatusOK {
			ok[tt.cmd.Kind] = true
		}
	}
	for _, k := range Kinds() {
		if !ok[k] {
			t.Errorf("no successful Apply case for kind %s", k)
		}
	}
}

// rigValidMutation returns the first table case that applies kind k successfully
// to the plain fixture.
func rigValidMutation(tb testing.TB, k Kind) Command {
	tb.Helper()
	for _, tt := range rigApplyCases() {
		if tt.cmd.Kind == k && tt.want == StatusOK && tt.prep == nil && tt.state == "" {
			return tt.cmd
		}
	}
	tb.Fatalf("no plain successful case for %s", k)
	return Command{}
}

func TestApplyPublishedSessionRejectsMutations(t *testing.T) {
	const pub = "pub-0000"
	for _, k := range Kinds() {
		if !k.IsMutation() {
			continue
		}
		t.Run(k.String(), func(t *testing.T) {
			r := newJoinedRig(t, "")
			r.must(StatusOK, Command{Kind: KindPublish, Session: rigSID, Target: pub})
			r.join(pub, rigPlayer)
			before := r.view(pub)
			c := rigValidMutation(t, k)
			c.Session = pub
			res, evs := r.apply(c)
			if res != (Result{Status: StatusPublished, Index: r.index}) || len(evs) != 0 {
				t.Fatalf("got %+v and %d events, want published and none", res, len(evs))
			}
			if after := r.view(pub); after != before {
				t.Fatalf("published session changed:\nbefore %s\nafter  %s", before, after)
			}
			// The same mutation applies to the editable source.
			c.Session = rigSID
			r.must(StatusOK, c)
		})
	}
	t.Run("http and presence", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.must(StatusOK, Command{Kind: KindPublish, Session: rigSID, Target: pub})
		r.join(pub, rigPlayer)
		r.must(StatusOK, Command{Kind: KindPlayerLeave, Session: pub, Player: rigPlayer}) // replace_state needs an empty room
		before := r.view(pub)
		r.must(StatusPublished, Command{Kind: KindReplaceState, Session: pub, State: json.RawMessage(`{"tempo":90}`)})
		r.must(StatusPublished, Command{Kind: KindRename, Session: pub, Name: rigPtr("x")})
		r.must(StatusAlreadyPublished, Command{Kind: KindPublish, Session: pub, Target: "pub-2"})
		if r.s.Session("pub-2") != nil {
			t.Fatal("publishing a published session made a session")
		}
		if after := r.view(pub); after != before {
			t.Fatalf("published session changed:\nbefore %s\nafter  %s", before, after)
		}
		r.join(pub, "p2")
		evs := r.must(StatusOK, Command{Kind: KindPlaybackStart, Session: pub, Player: "p2", At: 42})
		rigEq(t, "play", strings.Join(rigEventJSONs(evs), " "), `{"type":"playback_started","startTime":42,"tempo":120,"playerId":"p2"}`)
		evs = r.must(StatusOK, Command{Kind: KindPlaybackStop, Session: pub, Player: "p2"})
		rigEq(t, "stop", strings.Join(rigEventJSONs(evs), " "), `{"type":"playback_stopped","playerId":"p2"}`)
		r.must(StatusOK, Command{Kind: KindRemix, Session: pub, Target: "remix-of-pub"})
		rigEq(t, "remix immutable", r.sess("remix-of-pub").Immutable, false)
		rigEq(t, "published remixCount", r.sess(pub).RemixCount, 1)
	})
}

func TestApplyMutationFromPlayerNotJoined(t *testing.T) {
	for _, k := range Kinds() {
		if !k.IsMutation() && k != KindPlayerLeave && k != KindPlaybackStart && k != KindPlaybackStop {
			continue
		}
		t.Run(k.String(), func(t *testing.T) {
			r := newJoinedRig(t, "")
			before := r.view(rigSID)
			c := Command{Kind: k, Session: rigSID}
			if k.IsMutation() {
				c = rigValidMutation(t, k)
			}
			c.Player = "ghost"
			res, evs := r.apply(c)
			if res != (Result{Status: StatusNotJoined, Index: r.index}) || len(evs) != 0 {
				t.Fatalf("got %+v and %d events, want not_joined and none", res, len(evs))
			}
			if after := r.view(rigSID); after != before {
				t.Fatalf("session changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
	t.Run("unknown session", func(t *testing.T) {
		r := newJoinedRig(t, "")
		c := rigValidMutation(t, KindToggleStep)
		c.Session = "nope"
		if res, evs := r.apply(c); res.Status != StatusNotFound || len(evs) != 0 {
			t.Fatalf("got %+v and %d events, want not_found", res, len(evs))
		}
	})
}

func TestApplySeqAndPrevSeq(t *testing.T) {
	const other = "session-b"
	r := newJoinedRig(t, "")      // 1 create A, 2 join A
	r.create(other, rigBaseState) // 3
	r.join(other, "q1")           // 4
	tempo := func(session, player string, n float64) []Event {
		t.Helper()
		return r.must(StatusOK, Command{Kind: KindSetTempo, Session: session, Player: player, Number: n})
	}
	wantSeq := func(evs []Event, seq, prev uint64) {
		t.Helper()
		if len(evs) != 1 || evs[0].Seq != seq || evs[0].PrevSeq != prev {
			t.Fatalf("events %v, want one with seq %d prevSeq %d", rigEventJSONs(evs), seq, prev)
		}
	}
	wantSeq(tempo(rigSID, rigPlayer, 100), 5, 1)
	wantSeq(tempo(other, "q1", 100), 6, 3)
	r.must(StatusIgnored, rigMut(KindToggleStep, Command{TrackID: "nope"})) // 7
	rigEq(t, "A LastSeq after an ignored mutation", r.sess(rigSID).LastSeq, 5)
	r.join(rigSID, "p2")                                                                            // 8: presence is not a mutation
	r.must(StatusOK, Command{Kind: KindTouch, Touches: []Touch{{Session: rigSID, At: rigAt(100)}}}) // 9
	rigEq(t, "A LastSeq after presence and touch", r.sess(rigSID).LastSeq, 5)
	wantSeq(tempo(other, "q1", 110), 10, 6)
	evs := r.must(StatusOK, rigMut(KindSetSwing, Command{Player: "p2", Number: 10})) // 11
	wantSeq(evs, 11, 5)
	rigEq(t, "event without clientSeq", string(evs[0].AppendJSON(nil)), `{"type":"swing_changed","swing":10,"playerId":"p2","seq":11,"prevSeq":5}`)
	evs = r.must(StatusOK, rigMut(KindSetSwing, Command{Number: 20, ClientSeq: rigPtr[int64](0)})) // 12
	rigEq(t, "event with clientSeq 0", string(evs[0].AppendJSON(nil)), `{"type":"swing_changed","swing":20,"playerId":"p1","seq":12,"prevSeq":11,"clientSeq":0}`)
	rigEq(t, "A LastSeq", r.sess(rigSID).LastSeq, 12)
	rigEq(t, "B LastSeq", r.sess(other).LastSeq, 10)
}

func TestApplyDuplicateOp(t *testing.T) {
	tests := []struct {
		name  string
		setup func(r *cmdRig)
		cmd   Command
		want  Status
	}{
		{name: "toggle_step", cmd: rigMut(KindToggleStep, Command{TrackID: "t1", Step: 3}), want: StatusOK},
		{name: "ignored mutation", cmd: rigMut(KindToggleStep, Command{TrackID: "nope", Step: 3}), want: StatusIgnored},
		{name: "not joined", cmd: rigMut(KindSetTempo, Command{Player: "ghost", Number: 90}), want: StatusNotJoined},
		{name: "add_track", cmd: rigMut(KindAddTrack, Command{Payload: json.RawMessage(`{"id":"t3"}`)}), want: StatusOK},
		{name: "create", cmd: Command{Kind: KindCreate, Session: "s2", Target: "s2", State: json.RawMessage(`{"tempo":99}`)}, want: StatusOK},
		{name: "replace_state", setup: func(r *cmdRig) { r.must(StatusOK, rigMut(KindPlayerLeave, Command{})) },
			cmd: Command{Kind: KindReplaceState, Session: rigSID, State: json.RawMessage(`{"tempo":99}`)}, want: StatusOK},
		{name: "rename", cmd: Command{Kind: KindRename, Session: rigSID, Name: rigPtr("A")}, want: StatusOK},
		{name: "remix", cmd: Command{Kind: KindRemix, Session: rigSID, Target: "s2"}, want: StatusOK},
		{name: "publish", cmd: Command{Kind: KindPublish, Session: rigSID, Target: "s2"}, want: StatusOK},
		{name: "delete", cmd: Command{Kind: KindDelete, Session: rigSID}, want: StatusOK},
		{name: "player_join", cmd: Command{Kind: KindPlayerJoin, Session: rigSID, Player: "p2", Node: "n2", Epoch: 1}, want: StatusOK},
		{name: "player_leave", cmd: rigMut(KindPlayerLeave, Command{}), want: StatusOK},
		{name: "playback_start", cmd: rigMut(KindPlaybackStart, Command{}), want: StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newJoinedRig(t, "")
			r.create("other", "")
			if tt.setup != nil {
				tt.setup(r)
			}
			c := tt.cmd
			c.Op, c.At = OpID{0xd0, 0x0d}, rigAt(r.index+1)
			first, firstEvs := r.apply(c)
			if first != (Result{Status: tt.want, Index: r.index}) {
				t.Fatalf("first apply = %+v, want %s", first, tt.want)
			}
			// Other entries, on this session and another, come between the
			// original and its retry.
			if r.s.Session(rigSID) != nil {
				r.apply(rigMut(KindSetSwing, Command{Number: 5}))
			}
			r.must(StatusNotJoined, Command{Kind: KindSetTempo, Session: "other", Player: "nobody", Number: 90})
			body := r.snapshotBody()

			res, evs := r.apply(c) // the same At: node.Submit stamps it once for every attempt
			if want := (Result{Status: first.Status, Index: first.Index, Duplicate: true}); res != want {
				t.Fatalf("retry = %+v, want %+v", res, want)
			}
			if len(evs) != 0 {
				t.Fatalf("retry emitted %v", rigEventJSONs(evs))
			}
			if !bytes.Equal(r.snapshotBody(), body) {
				t.Fatal("retry changed the state")
			}
			if tt.want == StatusOK && c.Kind.IsMutation() && len(firstEvs) != 1 {
				t.Fatalf("first apply emitted %d events", len(firstEvs))
			}
		})
	}
}

// rigToggleX is the op whose retries the op window tests follow: toggle step 3
// of t1 (off in rigBaseState), proposed at at.
func rigToggleX(at int64) Command {
	return rigMut(KindToggleStep, Command{TrackID: "t1", Step: 3, Op: OpID{0xee}, At: at})
}

// tooOld applies c (whose At must be set) and fails unless it is refused with
// StatusTooOld, without events and without changing the state, MaxAt included.
func (r *cmdRig) tooOld(c Command) {
	r.tb.Helper()
	body := r.snapshotBody()
	var sess []byte
	if s := r.s.Session(c.Session); s != nil {
		sess = s.AppendSnapshot(nil)
	}
	res, evs := r.apply(c)
	if res != (Result{Status: StatusTooOld, Index: r.index}) || len(evs) != 0 {
		r.tb.Fatalf("%s at %d (At %d): got %+v and %d events, want too_old", c.Kind, r.index, c.At, res, len(evs))
	}
	if s := r.s.Session(c.Session); s == nil || !bytes.Equal(s.AppendSnapshot(nil), sess) || !bytes.Equal(r.snapshotBody(), body) {
		r.tb.Fatalf("%s refused as too old changed the state", c.Kind)
	}
}

// dupOf applies c and fails unless it is answered as the duplicate of first,
// without events and without changing the state.
func (r *cmdRig) dupOf(c Command, first Result) {
	r.tb.Helper()
	body := r.snapshotBody()
	if res, evs := r.apply(c); res != (Result{Status: first.Status, Index: first.Index, Duplicate: true}) || len(evs) != 0 {
		r.tb.Fatalf("retry of %s at %d: got %+v and %d events, want the duplicate of %+v", c.Kind, r.index, res, len(evs), first)
	}
	if !bytes.Equal(r.snapshotBody(), body) {
		r.tb.Fatalf("retry of %s changed the state", c.Kind)
	}
}

// TestApplyOpWindowKeepsRetries: a retry (same op ID, same At) is answered
// from the window however many ops of the session came between, as long as
// they are fewer than OpWindowMax and within OpRetention of it: the toggle
// flips once.
func TestApplyOpWindowKeepsRetries(t *testing.T) {
	for _, later := range []int{64, 65, 3000, OpWindowMax - 3} { // the window also holds create and join
		t.Run(strconv.Itoa(later), func(t *testing.T) {
			r := newJoinedRig(t, "")
			t0 := rigAt(r.index + 1)
			x := rigToggleX(t0)
			first, evs := r.apply(x)
			if first.Status != StatusOK || len(evs) != 1 || !evs[0].Flag {
				t.Fatalf("first apply = %+v, events %v", first, rigEventJSONs(evs))
			}
			for i := range later {
				at := t0 + int64(i+1)*(OpRetention-3000)/int64(later) // create and join, 2 s before x, stay too
				r.must(StatusOK, rigMut(KindSetTempo, Command{Number: float64(60 + i%100), At: at}))
			}
			r.dupOf(x, first)
			if w := r.sess(rigSID).ops; w.len() != later+3 || w.dropped {
				t.Fatalf("window holds %d entries (dropped %v), want %d and none dropped", w.len(), w.dropped, later+3)
			}
			if !r.sess(rigSID).State.Tracks[0].Step(3) {
				t.Fatal("step 3 is off: x was applied twice")
			}
		})
	}
}

// TestApplyOpWindowExpires: an entry stays while the session's MaxAt is at
// most OpRetention past its At, and leaves with the first op beyond. A retry
// is then refused as too old, as is any new op no newer than what left; a
// newer op is applied.
func TestApplyOpWindowExpires(t *testing.T) {
	r := newJoinedRig(t, "")
	t0 := rigAt(r.index + 1)
	x := rigToggleX(t0)
	first, _ := r.apply(x)
	r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 90, At: t0 + OpRetention}))
	r.dupOf(x, first)
	w := r.sess(rigSID).ops
	if _, ok := w.find(x.Op); !ok || w.horizon != rigAt(2) {
		t.Fatalf("x left early, or the horizon %d is not the join's At %d", w.horizon, rigAt(2))
	}

	r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 91, At: t0 + OpRetention + 1}))
	w = r.sess(rigSID).ops
	if _, ok := w.find(x.Op); ok || !w.dropped || w.horizon != t0 || w.len() != 2 {
		t.Fatalf("after MaxAt passed x's At + OpRetention: x still there or horizon %d (dropped %v, %d entries), want %d", w.horizon, w.dropped, w.len(), t0)
	}
	r.tooOld(x)
	if !r.sess(rigSID).State.Tracks[0].Step(3) {
		t.Fatal("step 3 is off: x was applied twice")
	}
	r.tooOld(rigMut(KindToggleStep, Command{TrackID: "t1", Step: 5, At: t0})) // a new op, as old as x
	if evs := r.must(StatusOK, rigMut(KindToggleStep, Command{TrackID: "t1", Step: 5, At: t0 + 1})); len(evs) != 1 {
		t.Fatalf("a new op newer than the horizon emitted %v", rigEventJSONs(evs))
	}
	// A refused op is not recorded: refused again, for the same reason.
	r.tooOld(x)
}

// TestApplyTooOldEveryPath: wherever the window is consulted (the begin of
// every session command, create of an existing id, remix and publish onto an
// existing target), an op at or below the horizon that is not in the window
// is refused and changes nothing; a delete does not delete.
func TestApplyTooOldEveryPath(t *testing.T) {
	r := newJoinedRig(t, "")
	r.create("other", "")
	t0 := rigAt(r.index + 1)
	r.apply(rigToggleX(t0))
	r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 90, At: t0 + 50}))
	y := rigMut(KindSetTempo, Command{Number: 80, At: t0 - 100, Op: OpID{0xab}}) // from a node whose clock lags
	firstY, _ := r.apply(y)
	// x leaves; the entry after it is recent, so y stays although it is older.
	r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 91, At: t0 + OpRetention + 1}))
	if w := r.sess(rigSID).ops; w.horizon != t0 || w.len() != 3 {
		t.Fatalf("horizon %d with %d entries, want %d with 3", w.horizon, w.len(), t0)
	}
	for _, c := range []Command{
		rigToggleX(t0),
		rigMut(KindSetTempo, Command{Number: 100}),
		{Kind: KindReplaceState, Session: rigSID, State: json.RawMessage(`{"tempo":99}`)},
		{Kind: KindRename, Session: rigSID, Name: rigPtr("Old")},
		{Kind: KindPlayerJoin, Session: rigSID, Player: "p2", Node: rigNode, Epoch: rigEpoch},
		rigMut(KindPlayerLeave, Command{}),
		rigMut(KindPlaybackStart, Command{}),
		{Kind: KindDelete, Session: rigSID},
		{Kind: KindCreate, Session: rigSID, Target: rigSID},
		{Kind: KindRemix, Session: "other", Target: rigSID},
		{Kind: KindPublish, Session: "other", Target: rigSID},
	} {
		if c.At == 0 {
			c.At = t0 - 5
		}
		r.tooOld(c)
	}
	// What is in the window is a duplicate, whatever its At.
	r.dupOf(y, firstY)
}

// TestApplyOpWindowCap: the window never holds more than OpWindowMax entries;
// past it the oldest leaves, however recent, and raises the horizon.
func TestApplyOpWindowCap(t *testing.T) {
	r := newJoinedRig(t, "")
	t0 := rigAt(r.index + 1)
	x := rigToggleX(t0)
	first, _ := r.apply(x)
	at := func(i int) int64 { return t0 + 1 + int64(i) } // all well within OpRetention
	for i := range OpWindowMax - 3 {                     // create, join and x are in the window too
		r.must(StatusOK, rigMut(KindSetSwing, Command{Number: float64(i % 100), At: at(i)}))
	}
	w := r.sess(rigSID).ops
	if w.len() != OpWindowMax || w.dropped {
		t.Fatalf("%d entries, dropped %v; want a full window, nothing dropped", w.len(), w.dropped)
	}
	r.dupOf(x, first)

	r.must(StatusOK, rigMut(KindSetSwing, Command{Number: 1, At: at(OpWindowMax)})) // create leaves
	r.must(StatusOK, rigMut(KindSetSwing, Command{Number: 2, At: at(OpWindowMax)})) // join leaves
	r.dupOf(x, first)
	r.must(StatusOK, rigMut(KindSetSwing, Command{Number: 3, At: at(OpWindowMax)})) // x leaves
	w = r.sess(rigSID).ops
	if _, ok := w.find(x.Op); ok || w.len() != OpWindowMax || len(w.ring) != OpWindowMax || w.horizon != t0 {
		t.Fatalf("x found %v, %d entries in a ring of %d, horizon %d; want x gone, a full window, horizon %d", ok, w.len(), len(w.ring), w.horizon, t0)
	}
	r.tooOld(x)
	r.must(StatusOK, rigMut(KindSetSwing, Command{Number: 4, At: at(OpWindowMax)})) // the first swing leaves
	if w := r.sess(rigSID).ops; w.horizon != at(0) {
		t.Fatalf("horizon %d, want the first swing's At %d", w.horizon, at(0))
	}
	r.tooOld(rigMut(KindSetSwing, Command{Number: 5, At: at(0)}))
	r.must(StatusOK, rigMut(KindSetSwing, Command{Number: 5, At: at(0) + 1}))
}

// TestApplyOpWindowShrinks: once a burst's entries expire, the window's ring
// shrinks with the next op.
func TestApplyOpWindowShrinks(t *testing.T) {
	r := newJoinedRig(t, "")
	t0 := rigAt(r.index + 1)
	for i := range 1000 {
		r.must(StatusOK, rigMut(KindSetSwing, Command{Number: float64(i % 100), At: t0 + int64(i)}))
	}
	if n := len(r.sess(rigSID).ops.ring); n < 1000 {
		t.Fatalf("ring of %d for 1002 entries", n)
	}
	r.must(StatusOK, rigMut(KindSetSwing, Command{Number: 1, At: t0 + 1000 + OpRetention}))
	if w := r.sess(rigSID).ops; w.len() != 1 || len(w.ring) > 4 || w.horizon != t0+999 {
		t.Fatalf("%d entries in a ring of %d, horizon %d; want 1 in a small ring, horizon %d", w.len(), len(w.ring), w.horizon, t0+999)
	}
}

func TestApplyCreate(t *testing.T) {
	const id = "0b6e1c2a-9f3d-4e5a-8b7c-6d5e4f3a2b1c"
	meta := func(name string) string {
		at := strconv.FormatInt(rigAt(1), 10)
		return `{"id":"` + id + `","name":` + name + `,"createdAt":` + at + `,"updatedAt":` + at + `,"lastAccessedAt":` + at +
			`,"remixedFrom":null,"remixedFromName":null,"remixCount":0,"immutable":false,"state":`
	}
	tests := []struct {
		name  string
		cmd   Command
		want  Status
		wantJ string // Session.AppendJSON when created
	}{
		{name: "default state and null name", cmd: Command{}, want: StatusOK,
			wantJ: meta("null") + `{"tracks":[],"tempo":120,"swing":0,"version":1}}`},
		{name: "name stored verbatim", cmd: Command{Name: rigPtr("  Late Night <Jam>  ")}, want: StatusOK,
			wantJ: meta(`"  Late Night <Jam>  "`) + `{"tracks":[],"tempo":120,"swing":0,"version":1}}`},
		{name: "partial state over the defaults keeps extra keys", cmd: Command{State: json.RawMessage(
			`{"tempo":90.5,"custom":{"x":[1, 2]},"effects":{"reverb":{"decay":3,"wet":0.5},"delay":{"time":"4n","feedback":0.5,"wet":0.1},"chorus":{"frequency":2,"depth":0.4,"wet":0},"distortion":{"amount":0.2,"wet":0}}}`)},
			want: StatusOK,
			wantJ: meta("null") + `{"tracks":[],"tempo":90.5,"swing":0,"effects":{"reverb":{"decay":3,"wet":0.5},"delay":{"time":"4n","feedback":0.5,"wet":0.1},` +
				`"chorus":{"frequency":2,"depth":0.4,"wet":0},"distortion":{"amount":0.2,"wet":0}},"version":1,"custom":{"x":[1,2]}}}`},
		{name: "tracks are repaired to 128 entries", cmd: Command{State: json.RawMessage(
			`{"tracks":[{"id":"a","name":"A","sampleId":"snare","steps":[true],"volume":0.5,"stepCount":4}],"tempo":60,"swing":100}`)},
			want: StatusOK,
			wantJ: meta("null") + `{"tracks":[{"id":"a","name":"A","sampleId":"snare","steps":` + rigBools(128, 0) + `,"parameterLocks":` + rigLocks(128, nil) +
				`,"volume":0.5,"stepCount":4}],"tempo":60,"swing":100,"version":1}}`},
		{name: "array state is invalid", cmd: Command{State: json.RawMessage(`[1]`)}, want: StatusInvalid},
		{name: "string state is invalid", cmd: Command{State: json.RawMessage(`"x"`)}, want: StatusInvalid},
		{name: "null state is invalid", cmd: Command{State: json.RawMessage(`null`)}, want: StatusInvalid},
		{name: "truncated state is invalid", cmd: Command{State: json.RawMessage(`{"tempo":`)}, want: StatusInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newCmdRig(t)
			c := tt.cmd
			c.Kind, c.Session, c.Target = KindCreate, id, id
			res, evs := r.apply(c)
			if res != (Result{Status: tt.want, Index: 1}) || len(evs) != 0 {
				t.Fatalf("got %+v and %d events, want %s", res, len(evs), tt.want)
			}
			s := r.s.Session(id)
			if tt.want != StatusOK {
				if s != nil || r.s.Len() != 0 {
					t.Fatal("a failed create made a session")
				}
				return
			}
			rigEq(t, "session", string(s.AppendJSON(nil)), tt.wantJ)
			rigEq(t, "LastSeq", s.LastSeq, 1)
			rigEq(t, "players", len(s.Players()), 0)
			rigEq(t, "sessions", r.s.Len(), 1)
		})
	}
	t.Run("id taken", func(t *testing.T) {
		r := newJoinedRig(t, "")
		before := r.view(rigSID)
		r.must(StatusExists, Command{Kind: KindCreate, Session: rigSID, Target: rigSID, Name: rigPtr("x")})
		rigEq(t, "session", r.view(rigSID), before)
	})
	t.Run("empty id", func(t *testing.T) {
		r := newCmdRig(t)
		r.must(StatusInvalid, Command{Kind: KindCreate})
		rigEq(t, "sessions", r.s.Len(), 0)
	})
}

func TestApplyReplaceState(t *testing.T) {
	t.Run("replaces the state and forces version 1", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.must(StatusOK, Command{Kind: KindRename, Session: rigSID, Name: rigPtr("Song")}) // 3
		r.must(StatusOK, rigMut(KindPlayerLeave, Command{}))                               // 4
		r.must(StatusOK, Command{Kind: KindReplaceState, Session: rigSID,                  // 5
			State: json.RawMessage(`{"tracks":[{"id":"z","name":"Z","sampleId":"kick","steps":[false,true]}],"tempo":100,"swing":10,"version":7,"extra":true}`)})
		s := r.sess(rigSID)
		want := fmt.Sprintf(`{"id":"%s","name":"Song","createdAt":%d,"updatedAt":%d,"lastAccessedAt":%d,"remixedFrom":null,"remixedFromName":null,"remixCount":0,"immutable":false,`+
			`"state":{"tracks":[{"id":"z","name":"Z","sampleId":"kick","steps":%s,"parameterLocks":%s}],"tempo":100,"swing":10,"version":1,"extra":true}}`,
			rigSID, rigAt(1), rigAt(5), rigAt(1), rigBools(128, 1), rigLocks(128, nil))
		rigEq(t, "session", string(s.AppendJSON(nil)), want)
		rigEq(t, "LastSeq", s.LastSeq, 5)
	})
	t.Run("with players connected", func(t *testing.T) {
		r := newJoinedRig(t, "")
		before := r.view(rigSID)
		r.must(StatusIgnored, Command{Kind: KindReplaceState, Session: rigSID, State: json.RawMessage(`{"tempo":100}`)})
		rigEq(t, "session", r.view(rigSID), before)
	})
	t.Run("invalid payload", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.must(StatusOK, rigMut(KindPlayerLeave, Command{}))
		before := r.view(rigSID)
		r.must(StatusInvalid, Command{Kind: KindReplaceState, Session: rigSID, State: json.RawMessage(`[]`)})
		rigEq(t, "session", r.view(rigSID), before)
	})
	t.Run("unknown session", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.must(StatusNotFound, Command{Kind: KindReplaceState, Session: "nope", State: json.RawMessage(`{}`)})
	})
}

func TestApplyRename(t *testing.T) {
	tests := []struct {
		name string
		in   *string
		want string // the name as JSON
	}{
		{name: "null", in: nil, want: `null`},
		{name: "trimmed", in: rigPtr("  My Song \t\n"), want: `"My Song"`},
		{name: "JavaScript whitespace trimmed", in: rigPtr("\u00a0\u3000\ufeffSong\u2028"), want: `"Song"`},
		{name: "empty", in: rigPtr(""), want: `null`},
		{name: "only whitespace", in: rigPtr(" \t "), want: `null`},
		{name: "no validation in Apply", in: rigPtr("<b>Tom & Jerry</b>"), want: `"<b>Tom & Jerry</b>"`},
		{name: "cut at 100", in: rigPtr(strings.Repeat("x", 150)), want: `"` + strings.Repeat("x", 100) + `"`},
		{name: "cut at 100 UTF-16 units", in: rigPtr(strings.Repeat("a", 98) + "🎵b"), want: `"` + strings.Repeat("a", 98) + `🎵"`},
		{name: "cut never splits a surrogate pair", in: rigPtr(strings.Repeat("a", 99) + "🎵"), want: `"` + strings.Repeat("a", 99) + `"`},
		{name: "trimmed before the cut", in: rigPtr("   " + strings.Repeat("y", 100) + "   "), want: `"` + strings.Repeat("y", 100) + `"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newJoinedRig(t, "")
			r.must(StatusOK, Command{Kind: KindRename, Session: rigSID, Name: rigPtr("Old")})
			r.must(StatusOK, Command{Kind: KindRename, Session: rigSID, Name: tt.in})
			s := r.sess(rigSID)
			if got := string(s.AppendJSON(nil)); !strings.Contains(got, `,"name":`+tt.want+`,"createdAt":`) {
				t.Fatalf("session = %s, want name %s", got, tt.want)
			}
			rigEq(t, "updatedAt", s.UpdatedAt, rigAt(4))
			rigEq(t, "LastSeq (a rename is not a mutation)", s.LastSeq, 1)
		})
	}
	t.Run("unknown session", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.must(StatusNotFound, Command{Kind: KindRename, Session: "nope", Name: rigPtr("x")})
	})
}

func TestApplyRemix(t *testing.T) {
	t.Run("copies the live state", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.must(StatusOK, rigMut(KindToggleStep, Command{TrackID: "t1", Step: 5}))
		r.must(StatusOK, rigMut(KindSetEffects, Command{Payload: json.RawMessage(`{"reverb":{"wet":0.5},"delay":{"wet":0},"chorus":{"wet":0},"distortion":{"wet":0}}`)}))
		r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 97.5}))
		r.must(StatusOK, Command{Kind: KindRemix, Session: rigSID, Target: "remix-1"}) // 6
		src, dst := r.sess(rigSID), r.sess("remix-1")
		srcState := string(src.State.AppendJSON(nil))
		if !strings.Contains(srcState, `"effects":`) || !strings.Contains(srcState, `"tempo":97.5`) {
			t.Fatalf("source state lacks the live edits: %s", srcState)
		}
		at := rigAt(6)
		want := fmt.Sprintf(`{"id":"remix-1","name":null,"createdAt":%d,"updatedAt":%d,"lastAccessedAt":%d,"remixedFrom":"%s","remixedFromName":"Kick","remixCount":0,"immutable":false,"state":%s}`,
			at, at, at, rigSID, srcState)
		rigEq(t, "remix", string(dst.AppendJSON(nil)), want)
		rigEq(t, "hash", dst.Hash(), src.Hash())
		rigEq(t, "remix LastSeq", dst.LastSeq, 6)
		rigEq(t, "remix players", len(dst.Players()), 0)
		rigEq(t, "source remixCount", src.RemixCount, 1)
		r.must(StatusOK, Command{Kind: KindRemix, Session: rigSID, Target: "remix-2"})
		rigEq(t, "source remixCount after two remixes", r.sess(rigSID).RemixCount, 2)
		rigEq(t, "remix remixCount", r.sess("remix-1").RemixCount, 0)
	})
	t.Run("copies are independent", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.must(StatusOK, Command{Kind: KindRemix, Session: rigSID, Target: "remix-1"})
		r.join("remix-1", "p2")
		srcBefore := string(r.sess(rigSID).State.AppendJSON(nil))
		r.must(StatusOK, Command{Kind: KindToggleStep, Session: "remix-1", Player: "p2", TrackID: "t1", Step: 7})
		r.must(StatusOK, Command{Kind: KindSetParameterLock, Session: "remix-1", Player: "p2", TrackID: "t2", Step: 1, Payload: json.RawMessage(`null`)})
		r.must(StatusOK, Command{Kind: KindSetFMParams, Session: "remix-1", Player: "p2", TrackID: "t2", Payload: json.RawMessage(`{"harmonicity":2,"modulationIndex":2}`)})
		rigEq(t, "source after editing the remix", string(r.sess(rigSID).State.AppendJSON(nil)), srcBefore)
		dstBefore := string(r.sess("remix-1").State.AppendJSON(nil))
		r.must(StatusOK, rigMut(KindDeleteTrack, Command{TrackID: "t1"}))
		r.must(StatusOK, rigMut(KindSetParameterLock, Command{TrackID: "t2", Step: 2, Payload: json.RawMessage(`{"pitch":1}`)}))
		rigEq(t, "remix after editing the source", string(r.sess("remix-1").State.AppendJSON(nil)), dstBefore)
	})
	nameCases := []struct {
		name   string
		state  string
		rename *string
		want   string
	}{
		{name: "session name", rename: rigPtr("Song"), want: "Song"},
		{name: "first track name", want: "Kick"},
		{name: "name renamed to null", rename: rigPtr("   "), want: "Kick"},
		{name: "no name and no tracks", state: `{"tracks":[]}`, want: "Untitled Session"},
		{name: "empty names fall through", state: `{"tracks":[{"id":"a","name":"","sampleId":"x","steps":[]}]}`, want: "Untitled Session"},
		{name: "only the first track counts", state: `{"tracks":[{"id":"a","sampleId":"x","steps":[]},{"id":"b","name":"B","sampleId":"x","steps":[]}]}`, want: "Untitled Session"},
	}
	for _, tt := range nameCases {
		t.Run("remixedFromName "+tt.name, func(t *testing.T) {
			for _, k := range []Kind{KindRemix, KindPublish} {
				r := newJoinedRig(t, tt.state)
				if tt.rename != nil {
					r.must(StatusOK, Command{Kind: KindRename, Session: rigSID, Name: tt.rename})
				}
				r.must(StatusOK, Command{Kind: k, Session: rigSID, Target: "copy"})
				c := r.sess("copy")
				rigEq(t, k.String()+" remixedFromName", c.RemixedFromName, tt.want)
				rigEq(t, k.String()+" has remixedFromName", c.HasRemixedFromName, true)
			}
		})
	}
	t.Run("empty session name falls through", func(t *testing.T) {
		r := newCmdRig(t)
		r.must(StatusOK, Command{Kind: KindCreate, Session: rigSID, Target: rigSID, Name: rigPtr(""), State: json.RawMessage(rigBaseState)})
		r.must(StatusOK, Command{Kind: KindRemix, Session: rigSID, Target: "copy"})
		rigEq(t, "remixedFromName", r.sess("copy").RemixedFromName, "Kick")
	})
	t.Run("errors", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.create("taken", "")
		before := r.view(rigSID)
		r.must(StatusNotFound, Command{Kind: KindRemix, Session: "nope", Target: "new"})
		r.must(StatusExists, Command{Kind: KindRemix, Session: rigSID, Target: "taken"})
		r.must(StatusInvalid, Command{Kind: KindRemix, Session: rigSID})
		rigEq(t, "source", r.view(rigSID), before)
		rigEq(t, "sessions", r.s.Len(), 2)
	})
}

func TestApplyPublish(t *testing.T) {
	r := newJoinedRig(t, "")
	r.must(StatusOK, Command{Kind: KindRename, Session: rigSID, Name: rigPtr("Song")}) // 3
	r.must(StatusOK, rigMut(KindToggleStep, Command{TrackID: "t2", Step: 2}))          // 4
	before := r.view(rigSID)
	r.must(StatusOK, Command{Kind: KindPublish, Session: rigSID, Target: "pub-1"}) // 5
	rigEq(t, "source after publish", r.view(rigSID), before)
	src, pub := r.sess(rigSID), r.sess("pub-1")
	at := rigAt(5)
	want := fmt.Sprintf(`{"id":"pub-1","name":"Song","createdAt":%d,"updatedAt":%d,"lastAccessedAt":%d,"remixedFrom":"%s","remixedFromName":"Song","remixCount":0,"immutable":true,"state":%s}`,
		at, at, at, rigSID, src.State.AppendJSON(nil))
	rigEq(t, "published", string(pub.AppendJSON(nil)), want)
	rigEq(t, "source remixCount", src.RemixCount, 0)

	r.must(StatusOK, Command{Kind: KindPublish, Session: rigSID, Target: "pub-2"})
	rigEq(t, "each publish is a new session", r.s.Len(), 3)

	r.must(StatusOK, Command{Kind: KindRename, Session: rigSID, Name: nil})
	r.must(StatusOK, Command{Kind: KindPublish, Session: rigSID, Target: "pub-3"})
	if got := string(r.sess("pub-3").AppendJSON(nil)); !strings.HasPrefix(got, `{"id":"pub-3","name":null,`) {
		t.Fatalf("publish of an unnamed session = %s, want name null", got)
	}

	before = r.view("pub-1")
	r.must(StatusAlreadyPublished, Command{Kind: KindPublish, Session: "pub-1", Target: "pub-4"})
	rigEq(t, "published after a second publish", r.view("pub-1"), before)
	rigEq(t, "sessions", r.s.Len(), 4)
	r.must(StatusNotFound, Command{Kind: KindPublish, Session: "nope", Target: "pub-5"})
}

func TestApplyDelete(t *testing.T) {
	r := newJoinedRig(t, "")
	r.create("other", "")
	del := Command{Kind: KindDelete, Session: rigSID, Op: OpID{0xde}}
	res, evs := r.apply(del) // 4
	if res != (Result{Status: StatusOK, Index: 4}) {
		t.Fatalf("delete = %+v", res)
	}
	if len(evs) != 1 || evs[0].Type != EventSessionDeleted || evs[0].Session != rigSID {
		t.Fatalf("delete events = %+v, want one session_deleted for %s", evs, rigSID)
	}
	if r.s.Session(rigSID) != nil || r.s.Len() != 1 {
		t.Fatal("session still exists")
	}
	body := r.snapshotBody()
	if res, evs := r.apply(del); res != (Result{Status: StatusOK, Index: 4, Duplicate: true}) || len(evs) != 0 {
		t.Fatalf("retried delete = %+v with %d events, want the duplicate of index 4", res, len(evs))
	}
	if !bytes.Equal(r.snapshotBody(), body) {
		t.Fatal("retried delete changed the state")
	}
	r.must(StatusNotFound, Command{Kind: KindDelete, Session: rigSID})
	r.create(rigSID, "")
	rigEq(t, "recreated session LastSeq", r.sess(rigSID).LastSeq, r.index)
}

func TestApplyTouch(t *testing.T) {
	r := newJoinedRig(t, "") // rigSID accessed at rigAt(1)
	r.create("other", "")    // accessed at rigAt(3)
	beforeOther := r.view("other")
	r.must(StatusOK, Command{Kind: KindTouch, Touches: []Touch{
		{Session: rigSID, At: rigAt(1) + 500},
		{Session: "other", At: rigAt(3) - 500},
		{Session: "nope", At: rigAt(50)},
		{Session: rigSID, At: rigAt(1) + 100},
	}})
	s := r.sess(rigSID)
	rigEq(t, "lastAccessedAt", s.LastAccessedAt, rigAt(1)+500)
	rigEq(t, "updatedAt", s.UpdatedAt, rigAt(1))
	rigEq(t, "LastSeq", s.LastSeq, 1)
	rigEq(t, "other (older touch skipped)", r.view("other"), beforeOther)
	rigEq(t, "sessions", r.s.Len(), 2)
}

func (r *cmdRig) joinAs(session, player, node string, epoch uint64, want Status) []Event {
	r.tb.Helper()
	return r.must(want, Command{Kind: KindPlayerJoin, Session: session, Player: player, Node: node, Epoch: epoch})
}

func rigPlayerIDs(s *Session) string {
	var ids []string
	for _, p := range s.Players() {
		ids = append(ids, p.ID)
	}
	return strings.Join(ids, ",")
}

func TestApplyPlayerJoin(t *testing.T) {
	t.Run("event and identity", func(t *testing.T) {
		const id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
		r := newJoinedRig(t, "")
		evs := r.joinAs(rigSID, id, "n2", 4, StatusOK) // 3
		at := rigAt(3)
		want := fmt.Sprintf(`{"type":"player_joined","player":{"id":"%s","connectedAt":%d,"lastMessageAt":%d,"messageCount":0,"color":"#6D4C41","colorIndex":16,"animal":"Jaguar","name":"Brown Jaguar"}}`, id, at, at)
		rigEq(t, "events", strings.Join(rigEventJSONs(evs), " "), want)
		e := evs[0]
		if e.Type != EventPlayerJoined || !e.Others || e.Player != id || e.Session != rigSID || e.Seq != 0 {
			t.Fatalf("event = %+v", e)
		}
		if *e.Joined != (PlayerInfo{ID: id, Node: "n2", Epoch: 4, ConnectedAt: at, ColorIndex: 16, AnimalIndex: 36}) {
			t.Fatalf("joined = %+v", *e.Joined)
		}
		p, ok := r.sess(rigSID).Player(id)
		if !ok || p != *e.Joined {
			t.Fatalf("Player(%s) = %+v, %v", id, p, ok)
		}
		rigEq(t, "players in join order", rigPlayerIDs(r.sess(rigSID)), rigPlayer+","+id)
		rigEq(t, "LastSeq", r.sess(rigSID).LastSeq, 1)
	})
	t.Run("11th player is full", func(t *testing.T) {
		r := newJoinedRig(t, "")
		for i := 2; i <= MaxPlayers; i++ {
			r.join(rigSID, fmt.Sprintf("p%d", i))
		}
		before := r.view(rigSID)
		if evs := r.joinAs(rigSID, "p11", rigNode, rigEpoch, StatusFull); len(evs) != 0 {
			t.Fatalf("full join emitted %v", rigEventJSONs(evs))
		}
		rigEq(t, "session", r.view(rigSID), before)
		rigEq(t, "players", len(r.sess(rigSID).Players()), MaxPlayers)
		r.must(StatusOK, rigMut(KindPlayerLeave, Command{Player: "p4"}))
		r.join(rigSID, "p11")
	})
	t.Run("same player twice", func(t *testing.T) {
		r := newJoinedRig(t, "")
		before := r.view(rigSID)
		if evs := r.joinAs(rigSID, rigPlayer, "n2", 1, StatusIgnored); len(evs) != 0 {
			t.Fatalf("second join emitted %v", rigEventJSONs(evs))
		}
		rigEq(t, "session", r.view(rigSID), before)
	})
	t.Run("empty player id", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.joinAs(rigSID, "", rigNode, rigEpoch, StatusIgnored)
	})
	t.Run("unknown session", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.joinAs("nope", "p2", rigNode, rigEpoch, StatusNotFound)
	})
}

func TestApplyPlayerLeave(t *testing.T) {
	t.Run("while playing", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.join(rigSID, "p2")
		r.must(StatusOK, rigMut(KindPlaybackStart, Command{}))
		r.must(StatusOK, rigMut(KindPlaybackStart, Command{Player: "p2"}))
		evs := r.must(StatusOK, rigMut(KindPlayerLeave, Command{}))
		rigEq(t, "events", strings.Join(rigEventJSONs(evs), " "), `{"type":"playback_stopped","playerId":"p1"} {"type":"player_left","playerId":"p1"}`)
		for _, e := range evs {
			if !e.Others || e.Session != rigSID {
				t.Fatalf("event %+v: want Others for session %s", e, rigSID)
			}
		}
		rigEq(t, "playing", fmt.Sprint(r.sess(rigSID).PlayingPlayerIDs()), "[p2]")
		rigEq(t, "players", rigPlayerIDs(r.sess(rigSID)), "p2")
	})
	t.Run("not playing", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.join(rigSID, "p2")
		evs := r.must(StatusOK, rigMut(KindPlayerLeave, Command{Player: "p2"}))
		rigEq(t, "events", strings.Join(rigEventJSONs(evs), " "), `{"type":"player_left","playerId":"p2"}`)
		r.must(StatusNotJoined, rigMut(KindPlayerLeave, Command{Player: "p2"}))
	})
	t.Run("last player drops the history", func(t *testing.T) {
		r := newJoinedRig(t, "")
		r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 100})) // 3
		r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 110})) // 4
		if evs, ok := r.sess(rigSID).Since(3); !ok || len(evs) != 1 {
			t.Fatalf("Since(3) before the leave = %d events, %v", len(evs), ok)
		}
		r.must(StatusOK, rigMut(KindPlayerLeave, Command{}))
		s := r.sess(rigSID)
		if evs, ok := s.Since(3); ok {
			t.Fatalf("Since(3) after the last player left = %v, true; want a snapshot", rigEventJSONs(evs))
		}
		if evs, ok := s.Since(4); !ok || len(evs) != 0 {
			t.Fatalf("Since(LastSeq) = %d events, %v; want none, true", len(evs), ok)
		}
		if s.Players() != nil || s.PlayingPlayerIDs() != nil {
			t.Fatal("room kept after the last player left")
		}
		rigEq(t, "state kept", s.State.Tempo, 110)
		// A new room starts a new history.
		r.join(rigSID, "p2")                                                       // 6
		r.must(StatusOK, rigMut(KindSetTempo, Command{Player: "p2", Number: 120})) // 7
		if evs, ok := r.sess(rigSID).Since(4); !ok || len(evs) != 1 || evs[0].Seq != 7 || evs[0].PrevSeq != 4 {
			t.Fatalf("Since(4) in the new room = %v, %v", rigEventJSONs(evs), ok)
		}
	})
}

func TestApplyPlayback(t *testing.T) {
	r := newJoinedRig(t, "")
	r.join(rigSID, "p2")
	r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 97.5}))
	evs := r.must(StatusOK, rigMut(KindPlaybackStart, Command{Player: "p2", At: 1234}))
	rigEq(t, "start p2", strings.Join(rigEventJSONs(evs), " "), `{"type":"playback_started","startTime":1234,"tempo":97.5,"playerId":"p2"}`)
	if evs[0].Others || evs[0].Session != rigSID {
		t.Fatalf("playback_started %+v: want all recipients", evs[0])
	}
	r.must(StatusOK, rigMut(KindPlaybackStart, Command{}))
	rigEq(t, "playing", fmt.Sprint(r.sess(rigSID).PlayingPlayerIDs()), "[p2 p1]")
	evs = r.must(StatusOK, rigMut(KindPlaybackStart, Command{Player: "p2"}))
	rigEq(t, "second start events", len(evs), 1)
	rigEq(t, "playing after a second start", fmt.Sprint(r.sess(rigSID).PlayingPlayerIDs()), "[p2 p1]")
	evs = r.must(StatusOK, rigMut(KindPlaybackStop, Command{Player: "p2"}))
	rigEq(t, "stop p2", strings.Join(rigEventJSONs(evs), " "), `{"type":"playback_stopped","playerId":"p2"}`)
	if evs[0].Others {
		t.Fatal("playback_stopped from stop: want all recipients")
	}
	rigEq(t, "playing after stop", fmt.Sprint(r.sess(rigSID).PlayingPlayerIDs()), "[p1]")
	evs = r.must(StatusOK, rigMut(KindPlaybackStop, Command{Player: "p2"}))
	rigEq(t, "stop when not playing", strings.Join(rigEventJSONs(evs), " "), `{"type":"playback_stopped","playerId":"p2"}`)
	rigEq(t, "LastSeq (playback is not a mutation)", r.sess(rigSID).LastSeq, 4)
	r.must(StatusNotFound, Command{Kind: KindPlaybackStart, Session: "nope", Player: rigPlayer})
}

func TestApplyNodeEpoch(t *testing.T) {
	r := newCmdRig(t)
	// Shard iteration would visit b-room (shard 171) before a-room (shard 228):
	// the events must still come in session-id order.
	r.create("b-room", "")
	r.create("a-room", "")
	r.create("c-room", "")
	r.joinAs("b-room", "b1", "n1", 1, StatusOK)
	r.joinAs("a-room", "a1", "n1", 1, StatusOK)
	r.joinAs("a-room", "a2", "n2", 1, StatusOK)
	r.joinAs("a-room", "a3", "n1", 1, StatusOK)
	r.joinAs("c-room", "c1", "n2", 1, StatusOK)
	r.must(StatusOK, Command{Kind: KindPlaybackStart, Session: "a-room", Player: "a3"})
	r.must(StatusOK, Command{Kind: KindPlaybackStart, Session: "a-room", Player: "a2"})

	evs := r.must(StatusOK, Command{Kind: KindNodeEpoch, Node: "n1", Epoch: 2})
	var got []string
	for _, e := range evs {
		if !e.Others {
			t.Errorf("event %+v: want Others", e)
		}
		got = append(got, e.Session+":"+string(e.AppendJSON(nil)))
	}
	want := []string{
		`a-room:{"type":"player_left","playerId":"a1"}`,
		`a-room:{"type":"playback_stopped","playerId":"a3"}`,
		`a-room:{"type":"player_left","playerId":"a3"}`,
		`b-room:{"type":"player_left","playerId":"b1"}`,
	}
	rigEq(t, "events", strings.Join(got, "\n"), strings.Join(want, "\n"))
	rigEq(t, "a players", rigPlayerIDs(r.sess("a-room")), "a2")
	rigEq(t, "a playing", fmt.Sprint(r.sess("a-room").PlayingPlayerIDs()), "[a2]")
	rigEq(t, "b players", rigPlayerIDs(r.sess("b-room")), "")
	rigEq(t, "c players", rigPlayerIDs(r.sess("c-room")), "c1")
	if epoch, reaped := r.s.NodeEpoch("n1"); epoch != 2 || reaped {
		t.Fatalf("NodeEpoch(n1) = %d, %v", epoch, reaped)
	}

	before := r.snapshotBody()
	for _, epoch := range []uint64{2, 1, 0} {
		if res, evs := r.apply(Command{Kind: KindNodeEpoch, Node: "n1", Epoch: epoch}); res.Status != StatusStaleEpoch || len(evs) != 0 {
			t.Fatalf("node_epoch %d: %+v, %d events; want stale_epoch", epoch, res, len(evs))
		}
	}
	if !bytes.Equal(r.snapshotBody(), before) {
		t.Fatal("a stale node_epoch changed the state")
	}
	r.joinAs("a-room", "old", "n1", 1, StatusStaleEpoch)
	r.joinAs("a-room", "new", "n1", 2, StatusOK)
	r.must(StatusInvalid, Command{Kind: KindNodeEpoch, Epoch: 5})
	if evs := r.must(StatusOK, Command{Kind: KindNodeEpoch, Node: "n3", Epoch: 1}); len(evs) != 0 {
		t.Fatalf("epoch of a node without players emitted %v", rigEventJSONs(evs))
	}
}

func TestApplyReapNode(t *testing.T) {
	r := newJoinedRig(t, "") // p1 on n1 epoch 1
	r.joinAs(rigSID, "p2", "n2", 1, StatusOK)
	evs := r.must(StatusOK, Command{Kind: KindReapNode, Node: "n1", Epoch: 1})
	rigEq(t, "events", strings.Join(rigEventJSONs(evs), " "), `{"type":"player_left","playerId":"p1"}`)
	rigEq(t, "players", rigPlayerIDs(r.sess(rigSID)), "p2")
	if epoch, reaped := r.s.NodeEpoch("n1"); epoch != 1 || !reaped {
		t.Fatalf("NodeEpoch(n1) = %d, %v; want 1, true", epoch, reaped)
	}
	r.joinAs(rigSID, "p3", "n1", 1, StatusStaleEpoch)
	r.must(StatusStaleEpoch, Command{Kind: KindReapNode, Node: "n1", Epoch: 1})
	r.must(StatusStaleEpoch, Command{Kind: KindReapNode, Node: "n1", Epoch: 0})
	r.must(StatusInvalid, Command{Kind: KindReapNode, Epoch: 1})

	// The restarted node's first join implies its new epoch.
	evs = r.joinAs(rigSID, "p4", "n1", 2, StatusOK)
	if len(evs) != 1 || evs[0].Type != EventPlayerJoined {
		t.Fatalf("join events = %v", rigEventJSONs(evs))
	}
	if epoch, reaped := r.s.NodeEpoch("n1"); epoch != 2 || reaped {
		t.Fatalf("NodeEpoch(n1) = %d, %v; want 2, false", epoch, reaped)
	}
	r.joinAs(rigSID, "p5", "n1", 1, StatusStaleEpoch)
	r.joinAs(rigSID, "p5", "n1", 2, StatusOK)

	// Reaping a later epoch than the node has announced also works.
	evs = r.must(StatusOK, Command{Kind: KindReapNode, Node: "n2", Epoch: 3})
	rigEq(t, "reap n2 events", strings.Join(rigEventJSONs(evs), " "), `{"type":"player_left","playerId":"p2"}`)
	rigEq(t, "players", rigPlayerIDs(r.sess(rigSID)), "p4,p5")
}

func TestApplyJoinImpliesEpoch(t *testing.T) {
	r := newJoinedRig(t, "") // p1 on n1 epoch 1
	r.create("other", "")
	r.must(StatusOK, rigMut(KindPlaybackStart, Command{}))
	evs := r.joinAs("other", "p9", "n1", 3, StatusOK)
	var got []string
	for _, e := range evs {
		got = append(got, e.Session+":"+e.Type.String()+":"+e.Player)
	}
	rigEq(t, "events", strings.Join(got, " "), rigSID+":playback_stopped:p1 "+rigSID+":player_left:p1 other:player_joined:p9")
	if epoch, reaped := r.s.NodeEpoch("n1"); epoch != 3 || reaped {
		t.Fatalf("NodeEpoch(n1) = %d, %v; want 3, false", epoch, reaped)
	}
	rigEq(t, "players", rigPlayerIDs(r.sess(rigSID)), "")
	r.joinAs(rigSID, "p1", "n1", 2, StatusStaleEpoch)
}

func TestSessionSince(t *testing.T) {
	r := newJoinedRig(t, "")
	r.create("other", "")
	r.join("other", "q1")
	var emitted []Event
	var seqs []uint64
	for i := range 6 {
		evs := r.must(StatusOK, rigMut(KindToggleStep, Command{TrackID: "t1", Step: i, ClientSeq: rigPtr(int64(i))}))
		emitted = append(emitted, evs...)
		seqs = append(seqs, r.index)
		r.must(StatusOK, Command{Kind: KindSetTempo, Session: "other", Player: "q1", Number: float64(100 + i)})
		r.must(StatusIgnored, rigMut(KindToggleStep, Command{TrackID: "nope"}))
	}
	s := r.sess(rigSID)
	rigEq(t, "LastSeq", s.LastSeq, seqs[5])
	for _, tt := range []struct {
		name  string
		since uint64
		from  int // index into emitted
	}{
		{"from the create", 1, 0},
		{"after the first", seqs[0], 1},
		{"between two of ours", seqs[2] + 1, 3},
		{"before the last", seqs[4], 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			evs, ok := s.Since(tt.since)
			if !ok {
				t.Fatalf("Since(%d) not ok", tt.since)
			}
			rigEq(t, "replay", strings.Join(rigEventJSONs(evs), "\n"), strings.Join(rigEventJSONs(emitted[tt.from:]), "\n"))
			for _, e := range evs {
				rigEq(t, "event session", e.Session, rigSID)
			}
		})
	}
	if evs, ok := s.Since(seqs[5]); !ok || len(evs) != 0 {
		t.Fatalf("Since(LastSeq) = %d events, %v; want none, true", len(evs), ok)
	}
	if _, ok := s.Since(seqs[5] + 1); ok {
		t.Fatal("Since(LastSeq+1) ok; want false")
	}
	if _, ok := s.Since(r.index + 100); ok {
		t.Fatal("Since(far ahead) ok; want false")
	}
	if _, ok := s.Since(0); ok {
		t.Fatal("Since(0), before the session existed, ok; want false")
	}
}

func TestSessionSinceHistoryIsBounded(t *testing.T) {
	const extra = 44
	r := newJoinedRig(t, "")
	var seqs []uint64
	for i := range HistoryLen + extra {
		r.must(StatusOK, rigMut(KindSetTempo, Command{Number: float64(60 + i%100)}))
		seqs = append(seqs, r.index)
	}
	s := r.sess(rigSID)
	// The history holds the last HistoryLen events; the oldest one's prevSeq
	// is seqs[extra-1], the furthest back a replay can start.
	evs, ok := s.Since(seqs[extra-1])
	if !ok || len(evs) != HistoryLen || evs[0].Seq != seqs[extra] || evs[len(evs)-1].Seq != seqs[len(seqs)-1] {
		t.Fatalf("Since(oldest prevSeq): %d events, ok %v", len(evs), ok)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].PrevSeq != evs[i-1].Seq {
			t.Fatalf("event %d prevSeq %d, want %d", i, evs[i].PrevSeq, evs[i-1].Seq)
		}
	}
	if _, ok := s.Since(seqs[extra-2]); ok {
		t.Fatal("Since(one further back) ok; a partial replay must not happen")
	}
	if _, ok := s.Since(1); ok {
		t.Fatal("Since(create) ok after more than HistoryLen mutations")
	}
}

func TestApplyPanics(t *testing.T) {
	tests := []struct {
		name  string
		index uint64
		kind  Kind
	}{
		{"index zero", 0, KindTouch},
		{"same index", 2, KindTouch},
		{"lower index", 1, KindTouch},
		{"kind zero", 3, 0},
		{"kind past the end", 3, kindEnd},
		{"kind 255", 3, 255},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newJoinedRig(t, "")
			defer func() {
				if recover() == nil {
					t.Fatal("Apply did not panic")
				}
			}()
			r.s.Apply(tt.index, Command{Kind: tt.kind, Op: OpID{1}, Session: rigSID})
		})
	}
}
