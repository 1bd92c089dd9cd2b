package fsm

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
)

// TestAppendNumber checks the ECMAScript Number::toString forms (PROTOCOL.md §4.9).
func TestAppendNumber(t *testing.T) {
	tests := []struct {
		name string
		in   float64
		want string
	}{
		{"zero", 0, "0"},
		{"negative zero", math.Copysign(0, -1), "0"},
		{"one", 1, "1"},
		{"hundred", 100, "100"},
		{"negative fraction", -1.5, "-1.5"},
		{"tenth", 0.1, "0.1"},
		{"shortest round trip", 0.30000000000000004, "0.30000000000000004"},
		{"fraction", 97.5, "97.5"},
		{"2^53", 1 << 53, "9007199254740992"},
		{"large integer", 123456789012345680000, "123456789012345680000"},
		{"just below 1e21", 999999999999999900000, "999999999999999900000"},
		{"1e21", 1e21, "1e+21"},
		{"-1e21", -1e21, "-1e+21"},
		{"1.5e300", 1.5e300, "1.5e+300"},
		{"max float", math.MaxFloat64, "1.7976931348623157e+308"},
		{"1e-6 is not exponential", 1e-6, "0.000001"},
		{"small fraction", 0.000001234, "0.000001234"},
		{"1e-7", 1e-7, "1e-7"},
		{"-1e-7", -1e-7, "-1e-7"},
		{"1.25e-8", 1.25e-8, "1.25e-8"},
		{"1e-10", 1e-10, "1e-10"},
		{"1.2345e-100", 1.2345e-100, "1.2345e-100"},
		{"smallest subnormal", 5e-324, "5e-324"},
		{"NaN", math.NaN(), "null"},
		{"+Inf", math.Inf(1), "null"},
		{"-Inf", math.Inf(-1), "null"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(appendNumber([]byte("x"), tt.in)); got != "x"+tt.want {
				t.Fatalf("appendNumber(%v) = %q, want %q", tt.in, got[1:], tt.want)
			}
		})
	}
}

// TestAppendString checks JSON.stringify's string escapes (PROTOCOL.md §4.9).
func TestAppendString(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", `""`},
		{"plain", "Kick", `"Kick"`},
		{"quote", `a"b`, `"a\"b"`},
		{"backslash", `a\b`, `"a\\b"`},
		{"short escapes", "\b\f\n\r\t", `"\b\f\n\r\t"`},
		{"NUL", "\x00", `"\u0000"`},
		{"U+0001", "a\x01b", `"a\u0001b"`},
		{"vertical tab", "\v", `"\u000b"`},
		{"escape", "\x1b", `"\u001b"`},
		{"U+001F lowercase hex", "\x1f", `"\u001f"`},
		{"space is literal", " ", `" "`},
		{"html characters literal", "<a href='x'>&amp;</a>", `"<a href='x'>&amp;</a>"`},
		{"U+2028 and U+2029 literal", "a\u2028b\u2029c", "\"a\u2028b\u2029c\""},
		{"DEL literal", "a\x7fb", "\"a\x7fb\""},
		{"non-ASCII literal", "Café ♪ 🎵 東京", `"Café ♪ 🎵 東京"`},
		{"mixed", "x\"\\\n\u00e9\x1f", `"x\"\\\né\u001f"`},
		{"invalid UTF-8 becomes U+FFFD", "a\xffb", "\"a\ufffdb\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := appendString([]byte("x"), tt.in)
			if string(got) != "x"+tt.want {
				t.Fatalf("appendString(%q) = %s, want %s", tt.in, got[1:], tt.want)
			}
			var back string
			if err := json.Unmarshal(got[1:], &back); err != nil {
				t.Fatalf("not a JSON string: %v", err)
			}
			if want := strings.ToValidUTF8(tt.in, "\ufffd"); back != want {
				t.Fatalf("round trip = %q, want %q", back, want)
			}
		})
	}
}

// jwKeys returns the keys of a JSON object in the order they appear.
func jwKeys(tb testing.TB, raw []byte) []string {
	tb.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		tb.Fatalf("not an object: %s", raw)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			tb.Fatalf("%v in %s", err, raw)
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			tb.Fatalf("%v in %s", err, raw)
		}
	}
	return keys
}

// jwField returns one member of a JSON object.
func jwField(tb testing.TB, raw []byte, key string) json.RawMessage {
	tb.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		tb.Fatalf("%v in %s", err, raw)
	}
	v, ok := m[key]
	if !ok {
		tb.Fatalf("no %q in %s", key, raw)
	}
	return v
}

func jwWantKeys(tb testing.TB, what string, raw []byte, want ...string) {
	tb.Helper()
	if !json.Valid(raw) {
		tb.Fatalf("%s is not valid JSON: %s", what, raw)
	}
	if got := jwKeys(tb, raw); !slices.Equal(got, want) {
		tb.Fatalf("%s keys = %q, want %q\n%s", what, got, want, raw)
	}
}

const jwFullState = `{"tracks":[{"id":"t\"1","name":"Bass \"808\" <&> \u2028 🎵","sampleId":"synth:bass","steps":[true,1,"x",0],` +
	`"parameterLocks":[{"volume":0.5,"pitch":-2},null,{"pitch":1e-7}],"volume":0.75,"muted":true,"soloed":false,"playbackMode":"gate",` +
	`"transpose":-3,"stepCount":32,"fmParams":{"harmonicity":2,"modulationIndex":5},"color":"red"},` +
	`{"id":"t2","name":null,"sampleId":"kick","steps":[],"volume":null,"muted":null,"playbackMode":"loop","stepCount":null}],` +
	`"tempo":97.5,"swing":12.5,"effects":{"reverb":{"decay":2,"wet":0.5},"delay":{"time":"8t","feedback":0.1,"wet":0.2},` +
	`"chorus":{"frequency":1,"depth":0.2,"wet":0.3},"distortion":{"amount":0.1,"wet":0.4}},"version":1,"custom":{"k":["v"]}}`

func TestSessionJSON(t *testing.T) {
	r := newCmdRig(t)
	r.must(StatusOK, Command{Kind: KindCreate, Session: rigSID, Target: rigSID, Name: rigPtr("Jam \"1\" <\u2028>\n"), State: json.RawMessage(jwFullState)})
	r.must(StatusOK, Command{Kind: KindRemix, Session: rigSID, Target: "remix-\"1\""})
	for _, id := range []string{rigSID, "remix-\"1\""} {
		raw := r.sess(id).AppendJSON(nil)
		jwWantKeys(t, "session "+id, raw, "id", "name", "createdAt", "updatedAt", "lastAccessedAt", "remixedFrom", "remixedFromName", "remixCount", "immutable", "state")
		state := jwField(t, raw, "state")
		if !bytes.Equal(state, r.sess(id).State.AppendJSON(nil)) {
			t.Fatalf("session state differs from SessionState.AppendJSON")
		}
		jwWantKeys(t, "state", state, "tracks", "tempo", "swing", "effects", "version", "custom")
		jwWantKeys(t, "effects", jwField(t, state, "effects"), "reverb", "delay", "chorus", "distortion")
		var tracks []json.RawMessage
		if err := json.Unmarshal(jwField(t, state, "tracks"), &tracks); err != nil || len(tracks) != 2 {
			t.Fatalf("tracks: %v, %d", err, len(tracks))
		}
		jwWantKeys(t, "track 0", tracks[0], "id", "name", "sampleId", "steps", "parameterLocks", "volume", "muted", "soloed", "playbackMode", "transpose", "stepCount", "fmParams", "color")
		jwWantKeys(t, "track 1", tracks[1], "id", "name", "sampleId", "steps", "parameterLocks", "volume", "muted", "stepCount", "playbackMode")
		jwWantKeys(t, "fmParams", jwField(t, tracks[0], "fmParams"), "harmonicity", "modulationIndex")
		for i, tr := range tracks {
			var arrays struct {
				Steps          []bool
				ParameterLocks []json.RawMessage
			}
			if err := json.Unmarshal(tr, &arrays); err != nil {
				t.Fatalf("track %d: %v", i, err)
			}
			if len(arrays.Steps) != MaxSteps || len(arrays.ParameterLocks) != MaxSteps {
				t.Fatalf("track %d: %d steps and %d locks, want 128 each", i, len(arrays.Steps), len(arrays.ParameterLocks))
			}
		}
	}
	// Values that only a hand-written encoder gets right.
	raw := string(r.sess(rigSID).AppendJSON(nil))
	for _, want := range []string{
		`"name":"Jam \"1\" <` + "\u2028" + `>\n"`,
		`"parameterLocks":[{"volume":0.5,"pitch":-2},null,{"pitch":1e-7},null,`,
		`"steps":[true,true,true,false,false,`,
		`"playbackMode":"gate"`,
		`"name":null,"sampleId":"kick"`,
		`"volume":null,"muted":null,"stepCount":null,"playbackMode":"loop"}`,
		`"remixedFrom":null,"remixedFromName":null,"remixCount":1,`,
	} {
		if !strings.Contains(raw, want) {
			t.Errorf("session JSON lacks %s:\n%s", want, raw)
		}
	}
	remix := string(r.sess("remix-\"1\"").AppendJSON(nil))
	if !strings.HasPrefix(remix, `{"id":"remix-\"1\"","name":null,`) || !strings.Contains(remix, `"remixedFrom":"`+rigSID+`","remixedFromName":"Jam \"1\" <`+"\u2028"+`>\n",`) {
		t.Errorf("remix JSON: %s", remix)
	}
}

func TestPlayerInfoJSON(t *testing.T) {
	p := NewPlayerInfo("3f2504e0-4f89-41d3-9a0c-0305e82c3301", "n1", 1, 1700000000000)
	got := p.AppendJSON(nil, 1700000005000, 7)
	want := `{"id":"3f2504e0-4f89-41d3-9a0c-0305e82c3301","connectedAt":1700000000000,"lastMessageAt":1700000005000,"messageCount":7,"color":"#6D4C41","colorIndex":16,"animal":"Jaguar","name":"Brown Jaguar"}`
	if string(got) != want {
		t.Fatalf("PlayerInfo JSON\n got %s\nwant %s", got, want)
	}
}

// TestEventJSON drives Apply through every event type and checks that each
// wire message is valid JSON with the fields of PROTOCOL.md §3.3, in order.
func TestEventJSON(t *testing.T) {
	mutTail := []string{"playerId", "seq", "prevSeq", "clientSeq"}
	wantKeys := map[EventType][]string{
		EventStepToggled:       {"type", "trackId", "step", "value"},
		EventTempoChanged:      {"type", "tempo"},
		EventSwingChanged:      {"type", "swing"},
		EventTrackMuted:        {"type", "trackId", "muted"},
		EventTrackSoloed:       {"type", "trackId", "soloed"},
		EventParameterLockSet:  {"type", "trackId", "step", "lock"},
		EventTrackAdded:        {"type", "track"},
		EventTrackDeleted:      {"type", "trackId"},
		EventTrackCleared:      {"type", "trackId"},
		EventTrackSampleSet:    {"type", "trackId", "sampleId", "name"},
		EventTrackVolumeSet:    {"type", "trackId", "volume"},
		EventTrackTransposeSet: {"type", "trackId", "transpose"},
		EventTrackStepCountSet: {"type", "trackId", "stepCount"},
		EventEffectsChanged:    {"type", "effects"},
		EventFMParamsChanged:   {"type", "trackId", "fmParams"},
		EventPlaybackStarted:   {"type", "startTime", "tempo", "playerId"},
		EventPlaybackStopped:   {"type", "playerId"},
		EventPlayerJoined:      {"type", "player"},
		EventPlayerLeft:        {"type", "playerId"},
	}
	r := newJoinedRig(t, "")
	seen := map[EventType]Event{}
	do := func(c Command) {
		t.Helper()
		if c.Kind.IsMutation() {
			c.ClientSeq = rigPtr[int64](42)
			c = rigMut(c.Kind, c)
		}
		for _, e := range r.must(StatusOK, c) {
			seen[e.Type] = e
		}
	}
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }
	do(Command{Kind: KindToggleStep, TrackID: "t1", Step: 1})
	do(Command{Kind: KindSetTempo, Number: 1e-7})
	do(Command{Kind: KindSetSwing, Number: 12.5})
	do(Command{Kind: KindMuteTrack, TrackID: "t1", Flag: true})
	do(Command{Kind: KindSoloTrack, TrackID: "t1", Flag: true})
	do(Command{Kind: KindSetParameterLock, TrackID: "t1", Step: 2, Payload: raw(`{"volume":0.5,"pitch":3}`)})
	do(Command{Kind: KindAddTrack, Payload: raw(`{"id":"t\"3","name":"Lead <\u2028>","steps":[true],"x":{"y":null}}`)})
	do(Command{Kind: KindClearTrack, TrackID: "t\"3"})
	do(Command{Kind: KindSetTrackSample, TrackID: "t\"3", SampleID: "synth:lead", TrackName: "Lead \"A\"\n"})
	do(Command{Kind: KindSetTrackVolume, TrackID: "t1", Number: 0.5})
	do(Command{Kind: KindSetTrackTranspose, TrackID: "t1", Number: -2.5})
	do(Command{Kind: KindSetTrackStepCount, TrackID: "t1", Number: 64})
	do(Command{Kind: KindSetEffects, Payload: raw(`{"reverb":{"wet":0.5},"delay":{"wet":0},"chorus":{"wet":0},"distortion":{"wet":0}}`)})
	do(Command{Kind: KindSetFMParams, TrackID: "t1", Payload: raw(`{"harmonicity":2,"modulationIndex":5}`)})
	do(Command{Kind: KindDeleteTrack, TrackID: "t\"3"})
	do(Command{Kind: KindPlaybackStart, Session: rigSID, Player: rigPlayer})
	do(Command{Kind: KindPlayerJoin, Session: rigSID, Player: "p\"2", Node: rigNode, Epoch: rigEpoch})
	do(Command{Kind: KindPlayerLeave, Session: rigSID, Player: rigPlayer}) // playback_stopped, player_left
	do(Command{Kind: KindDelete, Session: rigSID})

	for et := EventType(1); et < eventEnd; et++ {
		t.Run(et.String(), func(t *testing.T) {
			e, ok := seen[et]
			if !ok {
				t.Fatalf("no %s event was emitted", et)
			}
			b := e.AppendJSON(nil)
			if !json.Valid(b) {
				t.Fatalf("invalid JSON: %s", b)
			}
			var typ string
			if err := json.Unmarshal(jwField(t, b, "type"), &typ); err != nil || typ != et.String() {
				t.Fatalf("type = %q (%v), want %q", typ, err, et)
			}
			if et == EventSessionDeleted {
				return // not a client message
			}
			want := wantKeys[et]
			if et.IsMutation() {
				want = append(slices.Clone(want), mutTail...)
			}
			jwWantKeys(t, et.String(), b, want...)
			switch et {
			case EventPlayerJoined:
				jwWantKeys(t, "player", jwField(t, b, "player"), "id", "connectedAt", "lastMessageAt", "messageCount", "color", "colorIndex", "animal", "name")
			case EventEffectsChanged:
				jwWantKeys(t, "effects", jwField(t, b, "effects"), "reverb", "delay", "chorus", "distortion")
			case EventFMParamsChanged:
				jwWantKeys(t, "fmParams", jwField(t, b, "fmParams"), "harmonicity", "modulationIndex")
			case EventParameterLockSet:
				jwWantKeys(t, "lock", jwField(t, b, "lock"), "volume", "pitch")
			case EventTrackAdded:
				jwWantKeys(t, "track", jwField(t, b, "track"), "id", "name", "steps", "x")
			}
		})
	}
	for _, want := range []string{
		`{"type":"tempo_changed","tempo":60,`,
		`"transpose":-2,`,
		`{"type":"track_sample_set","trackId":"t\"3","sampleId":"synth:lead","name":"Lead \"A\"\n",`,
		`{"type":"track_added","track":{"id":"t\"3","name":"Lead <\u2028>","steps":[true],"x":{"y":null}},`, // as received, escapes and all
		`"player":{"id":"p\"2",`,
	} {
		found := false
		for _, e := range seen {
			if strings.Contains(string(e.AppendJSON(nil)), want) {
				found = true
			}
		}
		if !found {
			t.Errorf("no event JSON contains %s", want)
		}
	}
}
