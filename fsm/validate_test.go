package fsm

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestValidateState(t *testing.T) {
	// validTrack passes every rule of PROTOCOL.md §1.4.1.
	const validTrack = `{"id":"t1","name":"Kick","sampleId":"kick","steps":[true,false]}`
	tracks := func(n int) string {
		return `{"tracks":[` + strings.TrimSuffix(strings.Repeat(validTrack+",", n), ",") + `]}`
	}
	steps := func(n int) string {
		return `[` + strings.TrimSuffix(strings.Repeat("false,", n), ",") + `]`
	}
	const sc = "stepCount must be one of 4, 8, 12, 16, 24, 32, 64, 96, 128"
	tests := []struct {
		name string
		raw  string
		want []string
	}{
		// The state itself.
		{"null", `null`, []string{"State must be an object"}},
		{"array", `[]`, []string{"State must be an object"}},
		{"string", `"state"`, []string{"State must be an object"}},
		{"number", `5`, []string{"State must be an object"}},
		{"empty input", ``, []string{"State must be an object"}},
		{"malformed object", `{"tempo":}`, []string{"State must be an object"}},
		{"empty object", `{}`, nil},
		{"the frontend's default", `{"tracks":[],"tempo":120,"swing":0,"version":1}`, nil},

		// tempo and swing.
		{"tempo string", `{"tempo":"120"}`, []string{"Tempo must be a number"}},
		{"tempo null", `{"tempo":null}`, []string{"Tempo must be a number"}},
		{"tempo 59", `{"tempo":59}`, []string{"Tempo must be between 60 and 180"}},
		{"tempo 180.5", `{"tempo":180.5}`, []string{"Tempo must be between 60 and 180"}},
		{"tempo too large for float64", `{"tempo":1e999}`, []string{"Tempo must be between 60 and 180"}},
		{"tempo bounds", `{"tempo":60,"swing":100}`, nil},
		{"tempo fractional", `{"tempo":97.5,"swing":0.5}`, nil},
		{"swing bool", `{"swing":true}`, []string{"Swing must be a number"}},
		{"swing -1", `{"swing":-1}`, []string{"Swing must be between 0 and 100"}},
		{"swing 101", `{"swing":101}`, []string{"Swing must be between 0 and 100"}},

		// tracks.
		{"tracks object", `{"tracks":{}}`, []string{"Tracks must be an array"}},
		{"tracks null", `{"tracks":null}`, []string{"Tracks must be an array"}},
		{"16 tracks", tracks(16), nil},
		{"17 tracks", tracks(17), []string{"Cannot have more than 16 tracks"}},
		{"track number", `{"tracks":[5]}`, []string{"Track[0]: must be an object"}},
		{"track null", `{"tracks":[` + validTrack + `,null]}`, []string{"Track[1]: must be an object"}},
		{"id missing", `{"tracks":[{"name":"K","sampleId":"k","steps":[]}]}`, []string{"Track[0]: id must be a non-empty string"}},
		{"id empty", `{"tracks":[{"id":"","name":"K","sampleId":"k","steps":[]}]}`, []string{"Track[0]: id must be a non-empty string"}},
		{"id number", `{"tracks":[{"id":1,"name":"K","sampleId":"k","steps":[]}]}`, []string{"Track[0]: id must be a non-empty string"}},
		{"sampleId missing", `{"tracks":[{"id":"a","name":"K","steps":[]}]}`, []string{"Track[0]: sampleId must be a string"}},
		{"sampleId null", `{"tracks":[{"id":"a","name":"K","sampleId":null,"steps":[]}]}`, []string{"Track[0]: sampleId must be a string"}},
		{"empty sampleId and name", `{"tracks":[{"id":"a","name":"","sampleId":"","steps":[]}]}`, nil},
		{"name number", `{"tracks":[{"id":"a","name":5,"sampleId":"k","steps":[]}]}`, []string{"Track[0]: name must be a string"}},
		{"steps missing", `{"tracks":[{"id":"a","name":"K","sampleId":"k"}]}`, []string{"Track[0]: steps must be an array"}},
		{"steps object", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":{"0":true}}]}`, []string{"Track[0]: steps must be an array"}},
		{"128 steps", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":` + steps(128) + `}]}`, nil},
		{"129 steps", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":` + steps(129) + `}]}`, []string{"Track[0]: steps cannot exceed 128"}},
		{"volume 1.5", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":[],"volume":1.5}]}`, []string{"Track[0]: volume must be between 0 and 1"}},
		{"volume -0.1", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":[],"volume":-0.1}]}`, []string{"Track[0]: volume must be between 0 and 1"}},
		{"volume string", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":[],"volume":"1"}]}`, []string{"Track[0]: volume must be between 0 and 1"}},
		{"volume bounds", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":[],"volume":0},{"id":"b","name":"K","sampleId":"k","steps":[],"volume":1}]}`, nil},
		{"transpose 25", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":[],"transpose":25}]}`, []string{"Track[0]: transpose must be between -24 and 24"}},
		{"transpose -24.5", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":[],"transpose":-24.5}]}`, []string{"Track[0]: transpose must be between -24 and 24"}},
		{"transpose fractional", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":[],"transpose":12.5},{"id":"b","name":"K","sampleId":"k","steps":[],"transpose":-24}]}`, nil},
		{"stepCount 20", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":[],"stepCount":20}]}`, []string{"Track[0]: " + sc}},
		{"stepCount string", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":[],"stepCount":"16"}]}`, []string{"Track[0]: " + sc}},
		{"stepCount 16.5", `{"tracks":[{"id":"a","name":"K","sampleId":"k","steps":[],"stepCount":16.5}]}`, []string{"Track[0]: " + sc}},

		// Several failures in one body, in rule order.
		{"many failures", `{"tempo":500,"swing":"x","tracks":[{"id":"","sampleId":1,"name":null,"steps":{},"volume":2,"transpose":30,"stepCount":7},3,` + validTrack + `]}`, []string{
			"Tempo must be between 60 and 180",
			"Swing must be a number",
			"Track[0]: id must be a non-empty string",
			"Track[0]: sampleId must be a string",
			"Track[0]: name must be a string",
			"Track[0]: steps must be an array",
			"Track[0]: volume must be between 0 and 1",
			"Track[0]: transpose must be between -24 and 24",
			"Track[0]: " + sc,
			"Track[1]: must be an object",
		}},
		{"bad tracks with bad tempo", `{"tempo":"x","tracks":"y"}`, []string{"Tempo must be a number", "Tracks must be an array"}},
		{"too many tracks and a bad one", `{"tracks":[` + strings.Repeat(validTrack+",", 16) + `{"id":"x"}]}`, []string{
			"Cannot have more than 16 tracks",
			"Track[16]: sampleId must be a string",
			"Track[16]: name must be a string",
			"Track[16]: steps must be an array",
		}},

		// What the rules do not check (PROTOCOL.md §1.4.1).
		{"short steps and no parameterLocks", `{"tracks":[{"id":"a","name":"A","sampleId":"snare","steps":[true]}]}`, nil},
		{"object parameterLocks", `{"tracks":[{"id":"a","name":"A","sampleId":"s","steps":[],"parameterLocks":{"0":{"pitch":1}}}]}`, nil},
		{"parameterLocks longer than 128", `{"tracks":[{"id":"a","name":"A","sampleId":"s","steps":[],"parameterLocks":` + steps(200) + `}]}`, nil},
		{"unchecked fields of any type", `{"tracks":[{"id":"a","name":"A","sampleId":"s","steps":[1,"x",null],"muted":"yes","soloed":3,"playbackMode":"loop","fmParams":"fm","custom":{}}]}`, nil},
		{"unchecked state keys", `{"effects":"none","version":"x","extra":[1],"tracks":[]}`, nil},
		{"duplicate track ids", `{"tracks":[` + validTrack + `,` + validTrack + `]}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ValidateState([]byte(tt.raw))
			if !slices.Equal(got, tt.want) {
				t.Fatalf("ValidateState(%s)\n got %q\nwant %q", tt.raw, got, tt.want)
			}
		})
	}
}

// TestValidStatesParse checks that every state ValidateState accepts can be
// parsed for a create or PUT.
func TestValidStatesParse(t *testing.T) {
	for _, raw := range []string{
		`{}`,
		`{"tracks":[{"id":"a","name":"A","sampleId":"snare","steps":[true]}]}`,
		`{"tracks":[{"id":"a","name":"A","sampleId":"s","steps":[],"parameterLocks":{"0":{"pitch":1}}}]}`,
		`{"tracks":[{"id":"a","name":"A","sampleId":"s","steps":[1,"x",null],"muted":"yes","soloed":3,"playbackMode":"loop","fmParams":"fm","custom":{}}]}`,
		`{"effects":"none","version":"x","extra":[1],"tracks":[]}`,
	} {
		if d := ValidateState([]byte(raw)); d != nil {
			t.Fatalf("ValidateState(%s) = %q", raw, d)
		}
		if _, err := ParseSessionState([]byte(raw)); err != nil {
			t.Errorf("ParseSessionState(%s): %v", raw, err)
		}
	}
}

func TestValidateName(t *testing.T) {
	const (
		long    = "Name cannot exceed 100 characters"
		unsafe  = "Name contains potentially unsafe content"
		invalid = "Name contains invalid characters"
		notStr  = "Name must be a string or null"
	)
	q := func(s string) string { return fmt.Sprintf("%q", s) } // Go quoting is valid JSON for these names
	tests := []struct {
		name string
		raw  string
		want []string
	}{
		{"null", `null`, nil},
		{"plain", `"Late Night Jam"`, nil},
		{"empty", `""`, nil},
		{"number", `5`, []string{notStr}},
		{"bool", `true`, []string{notStr}},
		{"object", `{"name":"x"}`, []string{notStr}},
		{"array", `["x"]`, []string{notStr}},
		{"100 units", q(strings.Repeat("a", 100)), nil},
		{"101 units", q(strings.Repeat("a", 101)), []string{long}},
		{"100 units with an emoji", q(strings.Repeat("a", 98) + "🎵"), nil},
		{"101 units with an emoji", q(strings.Repeat("a", 99) + "🎵"), []string{long}},
		{"100 runes but 150 units", q(strings.Repeat("🎵", 50) + strings.Repeat("é", 50)), []string{long}},
		{"script tag", `"<script>alert(1)</script>"`, []string{unsafe}},
		{"script tag upper case", `"<SCRIPT"`, []string{unsafe}},
		{"javascript url", `"javascript:void(0)"`, []string{unsafe}},
		{"javascript url mixed case", `"JavaScript:x"`, []string{unsafe}},
		{"event handler with space", `"onclick = x"`, []string{unsafe}},
		{"event handler", `"x onLoad=y"`, []string{unsafe}},
		{"event handler with a tab", `"onmouseover\t=1"`, []string{unsafe}},
		{"event handler with a vertical tab", `"onclick\u000b="`, []string{unsafe}},
		{"event handler with a no-break space", `"onclick\u00a0="`, []string{unsafe}},
		{"event handler with an ideographic space", `"onclick\u3000="`, []string{unsafe}},
		{"on without a word", `"on = off"`, nil},
		{"on inside a word", `"Don Quixote"`, nil},
		{"angle brackets and ampersand", `"<b>Tom & Jerry</b>"`, nil},
		{"emoji", `"🎵 Beats ♪ ★"`, nil},
		{"accents and scripts", `"Café Ñandú 東京 Москва"`, nil},
		{"punctuation and symbols", `"a-b_c (d) [e] {f} 'g' \"h\" #1 $2 %3 +4 =5 ~6"`, nil},
		{"whitespace", `"a\tb\nc\u00a0d\u2028e"`, nil},
		{"zero-width joiner", `"👨\u200d👩"`, []string{invalid}},
		{"variation selector", `"❤\ufe0f"`, []string{invalid}},
		{"combining mark", `"e\u0301"`, []string{invalid}},
		{"control character", `"a\u0001b"`, []string{invalid}},
		{"DEL", `"a\u007fb"`, []string{invalid}},
		{"every rule", q(strings.Repeat("x", 95) + "<script\u200d"), []string{long, unsafe, invalid}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ValidateName([]byte(tt.raw))
			if !slices.Equal(got, tt.want) {
				t.Fatalf("ValidateName(%s)\n got %q\nwant %q", tt.raw, got, tt.want)
			}
		})
	}
}

func TestNormalizeName(t *testing.T) {
	tests := []struct {
		name, in, want string
		ok             bool
	}{
		{"unchanged", "Song", "Song", true},
		{"trimmed", "  Song \t\n", "Song", true},
		{"inner space kept", " My  Song ", "My  Song", true},
		{"JavaScript whitespace", "\u00a0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000\ufeff\vSong\f", "Song", true},
		{"not whitespace in JavaScript", "\u200bSong\u0085", "\u200bSong\u0085", true},
		{"empty", "", "", false},
		{"only whitespace", " \t\n\u00a0", "", false},
		{"100 units kept", strings.Repeat("x", 100), strings.Repeat("x", 100), true},
		{"cut to 100", strings.Repeat("x", 101), strings.Repeat("x", 100), true},
		{"cut after an emoji", strings.Repeat("a", 98) + "🎵b", strings.Repeat("a", 98) + "🎵", true},
		{"cut never splits a pair", strings.Repeat("a", 99) + "🎵", strings.Repeat("a", 99), true},
		{"trim before cut", "  " + strings.Repeat("y", 100) + "z  ", strings.Repeat("y", 100), true},
		{"cut leaves trailing space", strings.Repeat("y", 99) + " z", strings.Repeat("y", 99) + " ", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := NormalizeName(tt.in)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("NormalizeName(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}
