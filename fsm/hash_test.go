package fsm

import (
	"testing"
)

// The four vectors of PROTOCOL.md §4.9, each given as the state a client holds.
var hashVectors = []struct {
	name      string
	state     string
	canonical string
	hash      string
}{
	{
		name:      "empty",
		state:     `{"tracks":[],"tempo":120,"swing":0}`,
		canonical: `{"tracks":[],"tempo":120,"swing":0}`,
		hash:      "9cdc0372",
	},
	{
		name:      "empty arrays, absent fields, stepCount 4",
		state:     `{"tracks":[{"id":"a","name":"A","sampleId":"snare","steps":[],"parameterLocks":[],"volume":0.5,"muted":false,"stepCount":4}],"tempo":60,"swing":100}`,
		canonical: `{"tracks":[{"id":"a","name":"A","sampleId":"snare","steps":[false,false,false,false],"parameterLocks":[null,null,null,null],"volume":0.5,"muted":false,"soloed":false,"stepCount":4}],"tempo":60,"swing":100}`,
		hash:      "f5c8210b",
	},
	{
		name:      "unicode and every field",
		state:     `{"tracks":[{"id":"t1","name":"Café ♪ 🎵 <&>","sampleId":"synth:bass","steps":[true,false,true,false],"parameterLocks":[null,null,null,null],"volume":0.75,"muted":true,"soloed":true,"playbackMode":"gate","transpose":-3,"stepCount":4}],"tempo":97.5,"swing":33}`,
		canonical: `{"tracks":[{"id":"t1","name":"Café ♪ 🎵 <&>","sampleId":"synth:bass","steps":[true,false,true,false],"parameterLocks":[null,null,null,null],"volume":0.75,"muted":true,"soloed":true,"playbackMode":"gate","transpose":-3,"stepCount":4}],"tempo":97.5,"swing":33}`,
		hash:      "dc434a53",
	},
	{
		name:      "128 steps, default stepCount, lock key order",
		state:     `{"tracks":[{"id":"track-1700000000000","name":"Kick","sampleId":"kick","steps":[true,false,false,false,true],"parameterLocks":[{"pitch":5,"volume":0.8},null,null,null,{"volume":0.5,"pitch":-2}],"volume":1,"muted":false,"playbackMode":"oneshot","transpose":0}],"tempo":120,"swing":0}`,
		canonical: `{"tracks":[{"id":"track-1700000000000","name":"Kick","sampleId":"kick","steps":[true,false,false,false,true,false,false,false,false,false,false,false,false,false,false,false],"parameterLocks":[{"pitch":5,"volume":0.8},null,null,null,{"volume":0.5,"pitch":-2},null,null,null,null,null,null,null,null,null,null,null],"volume":1,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":16}],"tempo":120,"swing":0}`,
		hash:      "a6584345",
	},
}

func TestHashVectors(t *testing.T) {
	for _, tt := range hashVectors {
		t.Run(tt.name, func(t *testing.T) {
			if got := HashString(tt.canonical); got != tt.hash {
				t.Fatalf("HashString(canonical) = %s, want %s", got, tt.hash)
			}
			st, err := ParseSessionState([]byte(tt.state))
			if err != nil {
				t.Fatal(err)
			}
			if got := string(st.AppendCanonical(nil)); got != tt.canonical {
				t.Fatalf("canonical:\n got %s\nwant %s", got, tt.canonical)
			}
			if got := st.Hash(); got != tt.hash {
				t.Fatalf("Hash() = %s, want %s", got, tt.hash)
			}
		})
	}
}

func TestPlayerIdentityVector(t *testing.T) {
	const id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
	if h := int32(hashUTF16(id)); h != -2099793040 {
		t.Fatalf("h = %d, want -2099793040", h)
	}
	p := NewPlayerInfo(id, "n1", 1, 0)
	if p.ColorIndex != 16 || p.Color() != "#6D4C41" || p.AnimalIndex != 36 || p.DisplayName() != "Brown Jaguar" {
		t.Fatalf("got colorIndex %d %s animal %d %q", p.ColorIndex, p.Color(), p.AnimalIndex, p.DisplayName())
	}
}
