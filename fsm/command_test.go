package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/commands")

// goldenCommands is one realistic command of every kind, as a proposer would
// stamp it. testdata/commands/<kind>.json holds each one's encoding: entries
// already in logs must decode the same way forever.
func goldenCommands() map[Kind]Command {
	const (
		session = "5f0c3c1e-7a8b-4c2d-9e0f-112233445566"
		other   = "0b6e1c2a-9f3d-4e5a-8b7c-6d5e4f3a2b1c"
		copy    = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
		player  = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
		track   = "track-1734567800000"
	)
	op := func(k Kind) OpID {
		return OpID{0x5e, 0xed, byte(k), 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x10, 0x32, 0x54, 0x76, 0x98}
	}
	at := func(k Kind) int64 { return 1734567890000 + int64(k) }
	seq := func(n int64) *int64 { return &n }
	name := func(s string) *string { return &s }
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }
	cmds := map[Kind]Command{
		KindCreate: {Session: session, Target: session, Name: name("Late Night Jam"),
			State: raw(`{"tracks":[{"id":"track-1734567800000","name":"Kick","sampleId":"kick","steps":[true,false,false,false,true,false,false,false],"parameterLocks":[null,null,null,null,{"pitch":-2,"volume":0.8}],"volume":1,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":8}],"tempo":120,"swing":0,"version":1}`)},
		KindReplaceState: {Session: session,
			State: raw(`{"tracks":[{"id":"track-1734567800000","name":"Kick","sampleId":"kick","steps":[true,false,true,false],"parameterLocks":[],"volume":0.9,"muted":true,"soloed":false,"playbackMode":"gate","transpose":-3,"stepCount":16}],"tempo":97.5,"swing":25,"version":1}`)},
		KindRename:  {Session: session, Name: name("Café ♪ <Demo> \"v2\"")},
		KindRemix:   {Session: session, Target: other},
		KindPublish: {Session: session, Target: copy},
		KindDelete:  {Session: session},
		KindTouch:   {Touches: []Touch{{Session: session, At: 1734567880000}, {Session: other, At: 1734567885000}}},

		KindToggleStep:       {Session: session, Player: player, ClientSeq: seq(12), TrackID: track, Step: 5},
		KindSetTempo:         {Session: session, Player: player, ClientSeq: seq(13), Number: 128.5},
		KindSetSwing:         {Session: session, Player: player, ClientSeq: seq(14), Number: 20},
		KindMuteTrack:        {Session: session, Player: player, ClientSeq: seq(15), TrackID: track, Flag: true},
		KindSoloTrack:        {Session: session, Player: player, ClientSeq: seq(16), TrackID: track, Flag: true},
		KindSetParameterLock: {Session: session, Player: player, ClientSeq: seq(17), TrackID: track, Step: 4, Payload: raw(`{"volume":0.5,"pitch":-2}`)},
		KindAddTrack: {Session: session, Player: player, ClientSeq: seq(18),
			Payload: raw(`{"id":"track-1734567899999","name":"Snare","sampleId":"snare","steps":[false,false,false,false,true,false,false,false,false,false,false,false,true,false,false,false],"parameterLocks":[null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null],"volume":1,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":16}`)},
		KindDeleteTrack:       {Session: session, Player: player, ClientSeq: seq(19), TrackID: track},
		KindClearTrack:        {Session: session, Player: player, ClientSeq: seq(20), TrackID: track},
		KindSetTrackSample:    {Session: session, Player: player, ClientSeq: seq(21), TrackID: track, SampleID: "synth:bass", TrackName: "Bass"},
		KindSetTrackVolume:    {Session: session, Player: player, ClientSeq: seq(22), TrackID: track, Number: 0.8},
		KindSetTrackTranspose: {Session: session, Player: player, ClientSeq: seq(23), TrackID: track, Number: -5},
		KindSetTrackStepCount: {Session: session, Player: player, ClientSeq: seq(24), TrackID: track, Number: 32},
		KindSetEffects: {Session: session, Player: player, ClientSeq: seq(25),
			Payload: raw(`{"reverb":{"decay":2,"wet":0.3},"delay":{"time":"8n","feedback":0.3,"wet":0.1},"chorus":{"frequency":1.5,"depth":0.5,"wet":0},"distortion":{"amount":0.4,"wet":0}}`)},
		KindSetFMParams: {Session: session, Player: player, ClientSeq: seq(26), TrackID: track, Payload: raw(`{"harmonicity":3,"modulationIndex":10}`)},

		KindPlayerJoin:    {Session: session, Player: player, Node: "n2", Epoch: 3},
		KindPlayerLeave:   {Session: session, Player: player},
		KindPlaybackStart: {Session: session, Player: player},
		KindPlaybackStop:  {Session: session, Player: player},
		KindNodeEpoch:     {Node: "n2", Epoch: 4},
		KindReapNode:      {Node: "n2", Epoch: 4},
	}
	for k, c := range cmds {
		c.Kind, c.Op, c.At = k, op(k), at(k)
		cmds[k] = c
	}
	return cmds
}

func goldenPath(k Kind) string { return filepath.Join("testdata", "commands", k.String()+".json") }

// goldenVersion is the command version of the golden files: they were written
// by the release that logged version 1, and the fields of version 2 encode the
// same, so only the envelope's version number differs from Encode's output.
const goldenVersion = 1

// goldenHeader is how an encoding of version v starts.
func goldenHeader(v int) []byte { return []byte(`{"v":` + strconv.Itoa(v) + `,`) }

// goldenAsVersion rewrites the envelope version of an encoding from one
// version to another.
func goldenAsVersion(tb testing.TB, b []byte, from, to int) []byte {
	tb.Helper()
	rest, ok := bytes.CutPrefix(b, goldenHeader(from))
	if !ok {
		tb.Fatalf("encoding does not start with %s: %s", goldenHeader(from), b)
	}
	return append(goldenHeader(to), rest...)
}

func TestGoldenCommands(t *testing.T) {
	cmds := goldenCommands()
	if *update {
		if err := os.MkdirAll(filepath.Join("testdata", "commands"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, k := range Kinds() {
			c, ok := cmds[k]
			if !ok {
				t.Fatalf("goldenCommands has no %s command", k)
			}
			b, err := Encode(c)
			if err != nil {
				t.Fatal(err)
			}
			b = goldenAsVersion(t, b, CommandVersion, goldenVersion)
			if err := os.WriteFile(goldenPath(k), append(b, '\n'), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, k := range Kinds() {
		t.Run(k.String(), func(t *testing.T) {
			file, err := os.ReadFile(goldenPath(k))
			if err != nil {
				t.Fatalf("golden file for %s: %v (run go test -run TestGoldenCommands -update)", k, err)
			}
			file = bytes.TrimSuffix(file, []byte("\n"))
			c, err := Decode(file)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if c.Kind != k {
				t.Fatalf("decoded kind %s, want %s", c.Kind, k)
			}
			if c.Version != goldenVersion {
				t.Fatalf("decoded version %d, want %d", c.Version, goldenVersion)
			}
			again, err := Encode(c)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			// Encode writes the current version, the rest unchanged.
			if want := goldenAsVersion(t, file, goldenVersion, CommandVersion); !bytes.Equal(again, want) {
				t.Fatalf("Encode(Decode(file)) differs from the file\n got %s\nwant %s", again, want)
			}
			want, ok := cmds[k]
			want.Version = goldenVersion
			if !ok || !reflect.DeepEqual(c, want) {
				t.Fatalf("decoded %+v\nwant     %+v", c, want)
			}
		})
	}
}

// TestGoldenCommandsApply checks that the golden commands are meaningful:
// each one applies successfully in a plausible order.
func TestGoldenCommandsApply(t *testing.T) {
	cmds := goldenCommands()
	s := NewState()
	var index uint64
	apply := func(k Kind, want Status) {
		t.Helper()
		index++
		if res, _ := s.Apply(index, cmds[k]); res.Status != want {
			t.Fatalf("apply golden %s: %+v, want %s", k, res, want)
		}
	}
	for _, k := range []Kind{KindCreate, KindPlayerJoin, KindToggleStep, KindSetTempo, KindSetSwing, KindMuteTrack, KindSoloTrack,
		KindSetParameterLock, KindAddTrack, KindSetTrackSample, KindSetTrackVolume, KindSetTrackTranspose, KindSetTrackStepCount,
		KindSetEffects, KindSetFMParams, KindClearTrack, KindDeleteTrack, KindPlaybackStart, KindPlaybackStop, KindPlayerLeave,
		KindReplaceState, KindRename, KindRemix, KindPublish, KindTouch, KindNodeEpoch, KindReapNode, KindDelete} {
		apply(k, StatusOK)
	}
	// A retry finds its op in the published copy, even with the source gone.
	index++
	if res, evs := s.Apply(index, cmds[KindPublish]); !res.Duplicate || res.Status != StatusOK || len(evs) != 0 {
		t.Fatalf("retried golden publish = %+v", res)
	}
}

func TestDecodeErrors(t *testing.T) {
	const op = `"op":"0123456789abcdef0123456789abcdef"`
	valid := `{"v":1,"kind":"set_tempo",` + op + `,"at":1,"session":"s","number":90}`
	if _, err := Decode([]byte(valid)); err != nil {
		t.Fatalf("Decode(valid) = %v", err)
	}
	tests := []struct {
		name    string
		in      string
		unknown bool // the error must wrap ErrUnknownKind
	}{
		{name: "unknown kind", in: `{"v":1,"kind":"teleport",` + op + `}`, unknown: true},
		{name: "kind in the wrong case", in: `{"v":1,"kind":"SET_TEMPO",` + op + `}`, unknown: true},
		{name: "missing kind", in: `{"v":1,` + op + `}`, unknown: true},
		{name: "numeric kind", in: `{"v":1,"kind":9,` + op + `}`},
		{name: "unsupported version", in: `{"v":3,"kind":"set_tempo",` + op + `}`},
		{name: "version zero", in: `{"v":0,"kind":"set_tempo",` + op + `}`},
		{name: "missing version", in: `{"kind":"set_tempo",` + op + `}`},
		{name: "missing op id", in: `{"v":1,"kind":"set_tempo"}`},
		{name: "zero op id", in: `{"v":1,"kind":"set_tempo","op":"00000000000000000000000000000000"}`},
		{name: "short op id", in: `{"v":1,"kind":"set_tempo","op":"0123"}`},
		{name: "op id not hex", in: `{"v":1,"kind":"set_tempo","op":"0123456789abcdef0123456789abcdeg"}`},
		{name: "trailing value", in: valid + ` {}`},
		{name: "trailing garbage", in: valid + `x`},
		{name: "trailing brace", in: valid + `}`},
		{name: "trailing bracket", in: valid + ` ]`},
		{name: "invalid JSON", in: `{"v":1,"kind":`},
		{name: "not an object", in: `[1]`},
		{name: "empty", in: ``},
		{name: "wrong field type", in: `{"v":1,"kind":"set_tempo",` + op + `,"number":"90"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("Decode(%s) succeeded", tt.in)
			}
			if got := errors.Is(err, ErrUnknownKind); got != tt.unknown {
				t.Fatalf("errors.Is(%v, ErrUnknownKind) = %v, want %v", err, got, tt.unknown)
			}
		})
	}
	t.Run("trailing whitespace", func(t *testing.T) {
		if _, err := Decode([]byte(valid + " \n\t")); err != nil {
			t.Fatalf("Decode with trailing whitespace: %v", err)
		}
	})
	t.Run("unknown fields are ignored", func(t *testing.T) {
		c, err := Decode([]byte(`{"v":1,"kind":"set_tempo",` + op + `,"future":{"x":1},"number":90}`))
		if err != nil || c.Number != 90 {
			t.Fatalf("Decode = %+v, %v", c, err)
		}
	})
}

func TestEncodeUnknownKind(t *testing.T) {
	for _, k := range []Kind{0, kindEnd, 255} {
		if _, err := Encode(Command{Kind: k, Op: OpID{1}}); !errors.Is(err, ErrUnknownKind) {
			t.Errorf("Encode(kind %d) = %v, want ErrUnknownKind", k, err)
		}
	}
}

func TestKindNames(t *testing.T) {
	// The 15 mutating client messages of PROTOCOL.md §3.2.
	mutations := strings.Fields(`toggle_step set_tempo set_swing mute_track solo_track set_parameter_lock add_track
		delete_track clear_track set_track_sample set_track_volume set_track_transpose set_track_step_count set_effects set_fm_params`)
	seen := map[string]bool{}
	for _, k := range Kinds() {
		name := k.String()
		if name == "" || strings.HasPrefix(name, "kind(") || seen[name] {
			t.Fatalf("kind %d has name %q", k, name)
		}
		seen[name] = true
		if back, ok := ParseKind(name); !ok || back != k {
			t.Fatalf("ParseKind(%q) = %v, %v", name, back, ok)
		}
		if k.IsMutation() != slices.Contains(mutations, name) {
			t.Fatalf("%s.IsMutation() = %v", k, k.IsMutation())
		}
	}
	if got := Kind(0).String(); got != "kind(0)" {
		t.Fatalf("Kind(0) = %q", got)
	}
	if _, ok := ParseKind("kind(0)"); ok {
		t.Fatal("ParseKind accepted a non-name")
	}
}
