package fsm

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// Fuzz targets. Run one locally with
//
//	go test ./fsm -run '^$' -fuzz '^FuzzApply$' -fuzztime 60s
//
// (make fuzz runs both). A crasher is written to testdata/fuzz/<Name>/ and
// from then on runs as a regression case in every plain go test.

const (
	fuzzSession = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
	fuzzPlayer  = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
)

// fuzzSeedCommands is a realistic command of every kind, aimed at the
// session, player and track that fuzzState sets up.
func fuzzSeedCommands() []Command {
	name := "Night Drive"
	seq := int64(7)
	var out []Command
	for i, k := range Kinds() {
		c := Command{Kind: k, Op: OpID{0xf0, byte(i + 1)}, At: 1_700_000_100_000 + int64(i), Session: fuzzSession, Player: fuzzPlayer, TrackID: "t1"}
		if k.IsMutation() {
			c.ClientSeq = &seq
		}
		switch k {
		case KindCreate:
			c.Session, c.Player, c.TrackID = "3f2504e0-4f89-41d3-9a0c-0305e82c3302", "", ""
			c.Name = &name
			c.State = json.RawMessage(`{"tracks":[{"id":"track-1700000000000","name":"Kick","sampleId":"kick","steps":[true,false,false,false,true],"parameterLocks":[{"pitch":5,"volume":0.8},null,null,null,{"volume":0.5,"pitch":-2}],"volume":1,"muted":false,"playbackMode":"oneshot","transpose":0}],"tempo":120,"swing":0,"version":1}`)
		case KindReplaceState:
			c.Player, c.TrackID = "", ""
			c.State = json.RawMessage(`{"tracks":[{"id":"t2","name":"Snare","sampleId":"snare","steps":[false,true],"stepCount":16}],"tempo":97.5,"swing":33}`)
		case KindRename:
			c.Player, c.TrackID = "", ""
			c.Name = &name
		case KindRemix, KindPublish:
			c.Player, c.TrackID = "", ""
			c.Target = "3f2504e0-4f89-41d3-9a0c-0305e82c33" + string(rune('a'+i%6)) + "0"
		case KindDelete:
			c.Player, c.TrackID = "", ""
		case KindTouch:
			c.Session, c.Player, c.TrackID = "", "", ""
			c.Touches = []Touch{{Session: fuzzSession, At: 1_700_000_200_000}}
		case KindToggleStep:
			c.Step = 4
		case KindSetTempo:
			c.Number = 128
		case KindSetSwing:
			c.Number = 25
		case KindMuteTrack, KindSoloTrack:
			c.Flag = true
		case KindSetParameterLock:
			c.Step = 3
			c.Payload = json.RawMessage(`{"volume":0.5,"pitch":-2}`)
		case KindAddTrack:
			c.TrackID = ""
			c.Payload = json.RawMessage(`{"id":"track-1700000000001","name":"Bass","sampleId":"synth:bass","steps":[],"parameterLocks":[],"volume":0.8,"muted":false,"soloed":false,"playbackMode":"gate","transpose":-3,"stepCount":32,"fmParams":{"harmonicity":2,"modulationIndex":4}}`)
		case KindDeleteTrack, KindClearTrack:
		case KindSetTrackSample:
			c.SampleID, c.TrackName = "tone:fm-bell", "Bell"
		case KindSetTrackVolume:
			c.Number = 0.75
		case KindSetTrackTranspose:
			c.Number = -2.5
		case KindSetTrackStepCount:
			c.Number = 64
		case KindSetEffects:
			c.TrackID = ""
			c.Payload = json.RawMessage(`{"reverb":{"decay":2,"wet":0.3},"delay":{"time":"8n","feedback":0.3,"wet":0.2},"chorus":{"frequency":1.5,"depth":0.5,"wet":0},"distortion":{"amount":0.4,"wet":0}}`)
		case KindSetFMParams:
			c.Payload = json.RawMessage(`{"harmonicity":3,"modulationIndex":10}`)
		case KindPlayerJoin:
			c.Player, c.TrackID = "7c9e6679-7425-40de-944b-e07fc1f90ae8", ""
			c.Node, c.Epoch = "n2", 1
		case KindPlayerLeave, KindPlaybackStart, KindPlaybackStop:
			c.TrackID = ""
		case KindNodeEpoch:
			c.Session, c.Player, c.TrackID = "", "", ""
			c.Node, c.Epoch, c.Addr = "n1", 2, "127.0.0.1:8081"
		case KindReapNode:
			c.Session, c.Player, c.TrackID = "", "", ""
			c.Node, c.Epoch = "n1", 2
		}
		out = append(out, c)
	}
	return out
}

func fuzzEncode(tb testing.TB, c Command) []byte {
	tb.Helper()
	b, err := Encode(c)
	if err != nil {
		tb.Fatalf("Encode(%s): %v", c.Kind, err)
	}
	return b
}

func FuzzDecodeCommand(f *testing.F) {
	for _, c := range fuzzSeedCommands() {
		f.Add(fuzzEncode(f, c))
	}
	f.Add([]byte(`{"v":1,"kind":"toggle_step","op":"000000000000000000000000000000ff","at":-1,"step":-1,"payload":null,"state":[ 1 , 2 ]}`))
	f.Add([]byte(`{"v":1,"kind":"create","op":"0123456789ABCDEF0123456789abcdef","KIND":"touch","touches":[]}`))
	f.Add([]byte(`{"v":2,"kind":"create","op":"0123456789abcdef0123456789abcdef"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Decode(data)
		if err != nil {
			return
		}
		if !json.Valid(data) {
			t.Fatalf("Decode accepted input that is not one JSON value: %q", data)
		}
		if c.Kind == 0 || c.Kind >= kindEnd || c.Op.IsZero() {
			t.Fatalf("Decode accepted kind %d, op %s", c.Kind, c.Op)
		}
		// Encode compacts the raw payloads and drops empty fields, so compare
		// after one round trip: from then on it must be a fixed point.
		enc1 := fuzzEncode(t, c)
		c1, err := Decode(enc1)
		if err != nil {
			t.Fatalf("Decode(Encode(c)): %v\n%s", err, enc1)
		}
		enc2 := fuzzEncode(t, c1)
		if !bytes.Equal(enc1, enc2) {
			t.Fatalf("re-encoding differs:\n%s\n%s", enc1, enc2)
		}
		c2, err := Decode(enc2)
		if err != nil || !reflect.DeepEqual(c1, c2) {
			t.Fatalf("second decode differs (%v):\n%#v\n%#v", err, c1, c2)
		}
		// What the round trip must keep exactly, whatever the input looked like.
		if c1.Kind != c.Kind || c1.Op != c.Op || c1.At != c.At || c1.Session != c.Session || c1.Target != c.Target ||
			c1.Player != c.Player || c1.Node != c.Node || c1.Epoch != c.Epoch || c1.Addr != c.Addr || c1.TrackID != c.TrackID ||
			c1.Step != c.Step || c1.Number != c.Number || c1.Flag != c.Flag || c1.SampleID != c.SampleID ||
			c1.TrackName != c.TrackName || !reflect.DeepEqual(c1.Name, c.Name) || !reflect.DeepEqual(c1.ClientSeq, c.ClientSeq) ||
			len(c1.Touches) != len(c.Touches) {
			t.Fatalf("round trip changed the command:\n%#v\n%#v", c, c1)
		}
		for _, raw := range [][2]json.RawMessage{{c.State, c1.State}, {c.Payload, c1.Payload}} {
			var compact bytes.Buffer
			if raw[0] != nil && (json.Compact(&compact, raw[0]) != nil || !bytes.Equal(compact.Bytes(), raw[1])) {
				t.Fatalf("payload %s came back as %s", raw[0], raw[1])
			}
		}
	})
}

// fuzzState is a state with one session (track t1) and one joined player.
func fuzzState(tb testing.TB) *State {
	tb.Helper()
	s := NewState()
	for i, c := range []Command{
		{Kind: KindCreate, Op: OpID{0xfe, 1}, At: 1_700_000_000_000, Session: fuzzSession,
			State: json.RawMessage(`{"tracks":[{"id":"t1","name":"Kick","sampleId":"kick","steps":[true],"parameterLocks":[{"pitch":1}]}],"tempo":120,"swing":0}`)},
		{Kind: KindPlayerJoin, Op: OpID{0xfe, 2}, At: 1_700_000_000_001, Session: fuzzSession, Player: fuzzPlayer, Node: "n1", Epoch: 1},
	} {
		if res, _ := s.Apply(uint64(i+1), c); res.Status != StatusOK {
			tb.Fatalf("seed %s: %+v", c.Kind, res)
		}
	}
	return s
}

func FuzzApply(f *testing.F) {
	var all [][]byte
	var del []byte
	for _, c := range fuzzSeedCommands() {
		b := fuzzEncode(f, c)
		f.Add(b)
		if c.Kind == KindDelete {
			del = b
		} else {
			all = append(all, b)
		}
	}
	f.Add(bytes.Join(append(all, del), []byte("\n"))) // every kind, the delete last
	// A retry, a lock cleared, an effects object with missing wets, and an
	// add_track with keys of the wrong types.
	seeds := fuzzSeedCommands()
	toggle := fuzzEncode(f, seeds[KindToggleStep-1])
	f.Add(bytes.Join([][]byte{toggle, toggle, fuzzEncode(f, seeds[KindPlayerLeave-1]), toggle}, []byte("\n")))
	f.Add([]byte(`{"v":1,"kind":"set_parameter_lock","op":"0f000000000000000000000000000001","session":"` + fuzzSession + `","player":"` + fuzzPlayer + `","trackId":"t1","step":0,"payload":null}
{"v":1,"kind":"set_effects","op":"0f000000000000000000000000000002","session":"` + fuzzSession + `","player":"` + fuzzPlayer + `","payload":{"reverb":{"wet":1},"delay":{"wet":1},"chorus":{"wet":"1"},"distortion":{"wet":1,"wet":null}}}
{"v":1,"kind":"add_track","op":"0f000000000000000000000000000003","session":"` + fuzzSession + `","player":"` + fuzzPlayer + `","payload":{"id":"t9","steps":null,"parameterLocks":"x","name":5,"stepCount":"16","volume":null}}
{"v":1,"kind":"set_track_sample","op":"0f000000000000000000000000000004","session":"` + fuzzSession + `","player":"` + fuzzPlayer + `","trackId":"t9","sampleId":"kick","trackName":"Kick"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := fuzzState(t)
		index := s.Index()
		oversized := propOversized{}
		for _, line := range bytes.Split(data, []byte("\n")) {
			c, err := Decode(line)
			if err != nil {
				continue
			}
			index++
			res, evs := s.Apply(index, c)
			oversized.note(c, res)
			if !res.Duplicate && res.Index != index {
				t.Fatalf("%s at %d: result %+v", c.Kind, index, res)
			}
			for i := range evs {
				if raw := evs[i].AppendJSON(nil); !json.Valid(raw) {
					t.Fatalf("%s at %d: event is not JSON: %s", c.Kind, index, raw)
				}
			}
			propCheckInvariants(t, s, oversized)
			for _, id := range s.SessionIDs() {
				propCheckJSON(t, s.Session(id))
			}
			b1 := propSnapshot(t, s)
			r, err := ReadSnapshot(bytes.NewReader(b1))
			if err != nil {
				t.Fatalf("%s at %d: ReadSnapshot: %v", c.Kind, index, err)
			}
			if b2 := propSnapshot(t, r); !bytes.Equal(b1, b2) {
				t.Fatalf("%s at %d: snapshot round trip differs", c.Kind, index)
			}
		}
	})
}
