package fsm

import (
	"math"
	"reflect"
	"slices"
	"strconv"
	"testing"
)

// jsonrSeeds are client payloads that reach the corners of the reader:
// escaped and repeated keys, array-like objects, strings that need decoding,
// numbers out of float64's range, whitespace everywhere, and malformed input
// or input with bytes after the object.
var jsonrSeeds = []string{
	`{"tracks":[],"tempo":120,"swing":0,"version":1}`,
	` { "tracks" : [ { "id" : "a" , "steps" : [ true , 1 , "x" , "" , 0 , -0 , null , { } , [ ] ] } ] , "tempo" : 97.5 } `,
	"{\n\t\"tracks\":[{\"id\":\"a\",\"name\":\"K\",\"sampleId\":\"k\",\"steps\":[true]}]\r\n}\n",
	`{"tracks":[{"\u0069d":"a\"b","name":"Caf\u00e9 \ud83c\udfb5","sampleId":"\\","playbackMode":"gat\u0065"}]}`,
	"{\"tracks\":[{\"id\":\"\xff\",\"name\":\"a\xc3\",\"sampleId\":\"\xed\xa0\x80\"}],\"\xfe\":1}",
	`{"tracks":[{"id":"a","steps":{"0":true,"01":true,"\u0031":1,"127":"x","128":true,"-1":true,"+2":true,"3":false,"3":true,"":true,"99999999999999999999":true}}]}`,
	`{"tracks":[{"id":"a","parameterLocks":{"3":{"pitch":2},"5":{"volume":0.5,"pitch":-1},"3":null,"x":{"pitch":1}}}]}`,
	`{"tracks":[{"id":"a","parameterLocks":[null,{"volume":1,"pitch":2,"volume":3},{"pitch":"1"},5,[],{"pitch":1,"extra":true}]}]}`,
	`{"tempo":1e400,"swing":-1e400,"version":1e-400,"tracks":[{"id":"a","volume":1E2,"transpose":-0.5e1,"stepCount":7.9}]}`,
	`{"tempo":"120","swing":true,"version":null,"tracks":{"0":{"id":"a"}},"effects":[],"x-meta":{"a" : [1, 2.5, "b"]}}`,
	`{"tracks":[{"id":"a"}],"tracks":"none","tempo":90,"tempo":null}`,
	`{"tracks":[{"id":"a","id":5,"name":null,"name":"N","steps":"x","parameterLocks":null,"muted":"yes","soloed":null,"fmParams":{"harmonicity":2},"fmParams":{"modulationIndex":1,"harmonicity":"3"}}]}`,
	`{"tracks":[{"id":"a","fmParams":{"harmonicity":2,"modulationIndex":4,"harmonicity":3}}]}`,
	`{"effects":{"reverb":{"decay":2.5,"wet":0.3},"delay":{"time":"4n","feedback":0.3,"wet":0.2,"time":"3n"},"chorus":{"frequency":1.5,"depth":0.5,"wet":0},"distortion":{"amount":0.4,"wet":0}}}`,
	`{"effects":{"reverb":{"wet":1},"delay":{"wet":1},"chorus":{"wet":"1"},"distortion":{"wet":1,"wet":null}}}`,
	`{"effects":{"reverb":{"wet":1},"reverb":5,"delay":{"wet":1,"time":7},"chorus":{"wet":1,"time":"8n"},"distortion":{"wet":1}}}`,
	`{"tempo":500,"swing":"x","tracks":[{"id":"","sampleId":1,"name":null,"steps":{},"volume":2,"transpose":30,"stepCount":7},3,{"id":"t1","name":"Kick","sampleId":"kick","steps":[true,false]}]}`,
	`{"pitch":5,"volume":0.8}`,
	`{"volume":0.5,"pitch":-2,"x":1}`,
	`{"harmonicity":3,"modulationIndex":10}`,
	`{"tempo":90} trailing`,
	`{"tempo":90}}`,
	`{"tempo":90}{"tempo":100}`,
	`{"tempo":}`,
	`{"tempo":90,}`,
	`{"tempo" 90}`,
	`{"tracks":[{"id":"a"]}`,
	`{"a":"\x"}`,
	`{"a":1`,
	`{`,
	`[]`,
	`null`,
	` `,
	``,
}

// FuzzParseReference holds the single-pass reader to the encoding/json
// reading it replaced (parseref_test.go): for any input, every parser gives
// the same model (or the same error) and ValidateState the same messages.
func FuzzParseReference(f *testing.F) {
	for _, s := range jsonrSeeds {
		f.Add([]byte(s))
	}
	for _, v := range hashVectors {
		f.Add([]byte(v.state))
	}
	f.Add(benchStateJSON(0))
	f.Add([]byte(benchTrackJSON("t1", 1, 2)))
	f.Add(benchEffects[0])
	f.Fuzz(func(t *testing.T, raw []byte) {
		// The walk must end without a panic on any bytes, checked or not.
		jsonValue(raw).members(func([]byte, jsonValue) {})
		jsonValue(raw).elements(math.MaxInt, func(int, jsonValue) {})

		st, err := ParseSessionState(raw)
		want, wantErr := refParseSessionState(raw)
		if errText(err) != errText(wantErr) || !reflect.DeepEqual(st, want) {
			t.Fatalf("ParseSessionState(%q)\n got %v %s\nwant %v %s", raw, err, st.AppendJSON(nil), wantErr, want.AppendJSON(nil))
		}
		if got, want := ValidateState(raw), refValidateState(raw); !slices.Equal(got, want) {
			t.Fatalf("ValidateState(%q)\n got %q\nwant %q", raw, got, want)
		}
		// Callers use a parser's value only when it reports ok.
		tr, ok := parseTrack(raw)
		if wantTr, wantOK := refParseTrack(raw); ok != wantOK || (ok && !reflect.DeepEqual(tr, wantTr)) {
			t.Fatalf("parseTrack(%q)\n got %v %s\nwant %v %s", raw, ok, tr.AppendJSON(nil), wantOK, wantTr.AppendJSON(nil))
		}
		for _, strict := range []bool{false, true} {
			l, ok := parseLock(raw, strict)
			if wantL, wantOK := refParseLock(raw, strict); ok != wantOK || (ok && l != wantL) {
				t.Fatalf("parseLock(%q, %v) = %+v %v, want %+v %v", raw, strict, l, ok, wantL, wantOK)
			}
		}
		fm, ok := parseFM(raw)
		if wantFM, wantOK := refParseFM(raw); ok != wantOK || (ok && fm != wantFM) {
			t.Fatalf("parseFM(%q) = %+v %v, want %+v %v", raw, fm, ok, wantFM, wantOK)
		}
		e, ok := parseEffects(raw)
		if wantE, wantOK := refParseEffects(raw); ok != wantOK || (ok && e != wantE) {
			t.Fatalf("parseEffects(%q) = %+v %v, want %+v %v", raw, e, ok, wantE, wantOK)
		}
	})
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func TestArrayIndex(t *testing.T) {
	for _, limit := range []int{1, 10, MaxSteps, 1000, int(^uint(0) >> 1)} {
		for _, key := range []string{"", "0", "00", "01", "1", "9", "10", "99", "100", "127", "128", "129", "999", "1000",
			"-0", "-1", "+1", " 1", "1 ", "1.0", "1e2", "x", "٣",
			"9223372036854775806", "9223372036854775807", "9223372036854775808", "18446744073709551615", "18446744073709551616", "99999999999999999999"} {
			got, ok := arrayIndex([]byte(key), limit)
			// The rule of the reference reader (refEachElement).
			i, err := strconv.Atoi(key)
			wantOK := err == nil && i >= 0 && i < limit && strconv.Itoa(i) == key
			if ok != wantOK || (ok && got != i) {
				t.Errorf("arrayIndex(%q, %d) = %d, %v; want %d, %v", key, limit, got, ok, i, wantOK)
			}
		}
	}
}

// TestParseStateAllocs keeps the reader single-pass: a typical 8-track state
// (13 KB) costs a few allocations per track, not one per element.
func TestParseStateAllocs(t *testing.T) {
	raw := benchStateJSON(3)
	n := testing.AllocsPerRun(20, func() {
		if _, err := ParseSessionState(raw); err != nil {
			t.Fatal(err)
		}
	})
	// Per track: the id, name and sampleId strings and the parameter-lock
	// slices; then the tracks array as it grows.
	if n > 60 {
		t.Fatalf("ParseSessionState of a typical state: %v allocations, want at most 60", n)
	}
}
