package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unique"
)

// This file turns client JSON (as received, carried in the log) into the model.
// Parsing is lenient and deterministic: a known key whose value has an
// unexpected type is kept verbatim among the unknown keys, so nothing a client
// sent is lost, and every replica that parses the same bytes gets the same model.
// The exception is a key that AppendJSON always writes from the model (state
// tracks, tempo, swing and version; track steps and parameterLocks): keeping it
// too would send the key twice, and JSON.parse keeps the last one.

// member is one key of a JSON object that the model does not interpret.
type member struct {
	key string
	raw []byte // compact JSON
}

// members is an ordered list of uninterpreted keys. It is never modified in
// place once stored, so clones can share it.
type members []member

func (m *members) with(key string, raw json.RawMessage) *members {
	var out members
	if m != nil {
		out = make(members, 0, len(*m)+1)
		for _, e := range *m {
			if e.key != key {
				out = append(out, e)
			}
		}
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		buf.Reset()
		buf.Write(raw)
	}
	out = append(out, member{key: key, raw: buf.Bytes()})
	return &out
}

func (m *members) without(key string) *members {
	if m == nil {
		return nil
	}
	out := make(members, 0, len(*m))
	for _, e := range *m {
		if e.key != key {
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return &out
}

func (m *members) appendJSON(b []byte, first bool) []byte {
	if m == nil {
		return b
	}
	for _, e := range *m {
		b = appendKey(b, e.key, first)
		b = append(b, e.raw...)
		first = false
	}
	return b
}

// jsonKind returns the first byte of a JSON value: '{', '[', '"', 't', 'f', 'n',
// or a digit or '-' for a number. It returns 0 for empty input.
func jsonKind(raw []byte) byte {
	for _, c := range raw {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		if c == '-' || (c >= '0' && c <= '9') {
			return '0'
		}
		return c
	}
	return 0
}

var errNotObject = errors.New("not a JSON object")

// eachMember calls fn for every key of a JSON object, in order. Duplicate keys
// are reported each time; callers let the last one win, as JSON.parse does.
func eachMember(raw []byte, fn func(key string, val json.RawMessage)) error {
	if jsonKind(raw) != '{' {
		return errNotObject
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("object key is %T", tok)
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return err
		}
		fn(key, val)
	}
	_, err := dec.Token()
	return err
}

// eachElement calls fn for every element of a JSON array, or for every member of
// an object whose key is a non-negative integer (an array-like object, as some
// scripts send). fn sees elements with an index below limit only.
func eachElement(raw []byte, limit int, fn func(i int, val json.RawMessage)) error {
	switch jsonKind(raw) {
	case '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return err
		}
		for i, e := range elems {
			if i >= limit {
				break
			}
			fn(i, e)
		}
		return nil
	case '{':
		return eachMember(raw, func(key string, val json.RawMessage) {
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= limit || strconv.Itoa(i) != key {
				return
			}
			fn(i, val)
		})
	default:
		return errors.New("not an array")
	}
}

// parseNumber reads a JSON number. A number too large for float64 reads as ±Inf,
// as in JavaScript.
func parseNumber(raw []byte) (float64, bool) {
	if jsonKind(raw) != '0' {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(bytes.TrimSpace(raw)), 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, false
	}
	return f, true
}

func parseString(raw []byte) (string, bool) {
	if jsonKind(raw) != '"' {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

func parseBool(raw []byte) (v, ok bool) {
	switch jsonKind(raw) {
	case 't':
		return true, true
	case 'f':
		return false, true
	}
	return false, false
}

// truthy is JavaScript truthiness of a JSON value.
func truthy(raw []byte) bool {
	switch jsonKind(raw) {
	case 't', '{', '[':
		return true
	case '"':
		s, _ := parseString(raw)
		return s != ""
	case '0':
		f, _ := parseNumber(raw)
		return f != 0 && !math.IsNaN(f)
	}
	return false
}

// ParseSessionState reads a state object sent by a client (HTTP create or PUT,
// already validated by ValidateState) over the defaults {tracks: [], tempo: 120,
// swing: 0, version: 1}, then repairs it (PROTOCOL.md §6). Track entries that
// are not objects with a non-empty string id are dropped.
func ParseSessionState(raw []byte) (SessionState, error) {
	st := SessionState{Tempo: DefaultTempo, Swing: 0, Version: 1}
	err := eachMember(raw, func(key string, val json.RawMessage) {
		typed := true
		switch key {
		case "tracks":
			if jsonKind(val) != '[' {
				typed = false
				break
			}
			st.Tracks = st.Tracks[:0]
			_ = eachElement(val, math.MaxInt, func(_ int, tv json.RawMessage) { // val is valid JSON: no error
				if t, ok := parseTrack(tv); ok {
					st.Tracks = append(st.Tracks, t)
				}
			})
		case "tempo":
			st.Tempo, typed = parseNumber(val)
			if !typed {
				st.Tempo = DefaultTempo
			}
		case "swing":
			st.Swing, typed = parseNumber(val)
			if !typed {
				st.Swing = 0
			}
		case "version":
			st.Version, typed = parseNumber(val)
			if !typed {
				st.Version = 1
			}
		case "effects":
			var e EffectsState
			if e, typed = parseEffects(val); typed {
				st.Effects = &e
			} else {
				st.Effects = nil
			}
		default:
			typed = false
		}
		// AppendJSON always writes tracks, tempo, swing and version, so a
		// wrong-typed one kept among the unknown keys would repeat the key.
		if typed || key == "tracks" || key == "tempo" || key == "swing" || key == "version" {
			st.extra = st.extra.without(key)
		} else {
			st.extra = st.extra.with(key, val)
		}
	})
	if err != nil {
		return SessionState{}, fmt.Errorf("parse state: %w", err)
	}
	st.repair()
	return st, nil
}

// ParseTrack reads a track object as add_track sends it. ok is false when it is
// not an object or has no non-empty string id. The result is not yet repaired.
func ParseTrack(raw []byte) (t SessionTrack, ok bool) { return parseTrack(raw) }

func parseTrack(raw []byte) (SessionTrack, bool) {
	var t SessionTrack
	hasID := false
	err := eachMember(raw, func(key string, val json.RawMessage) {
		typed := true
		switch key {
		case "id":
			t.ID, typed = parseString(val)
			hasID = typed && t.ID != ""
		case "name":
			typed = parseField(&t, FieldName, &t.Name, val, parseSharedString)
		case "sampleId":
			typed = parseField(&t, FieldSampleID, &t.SampleID, val, parseSharedString)
		case "playbackMode":
			t.Unset(FieldPlaybackMode)
			t.Mode = ModeNone
			switch jsonKind(val) {
			case 'n':
				t.SetNull(FieldPlaybackMode)
			case '"':
				s, _ := parseString(val)
				switch s {
				case "oneshot":
					t.Mode = ModeOneshot
					t.Set(FieldPlaybackMode)
				case "gate":
					t.Mode = ModeGate
					t.Set(FieldPlaybackMode)
				default:
					typed = false
				}
			default:
				typed = false
			}
		case "volume":
			typed = parseField(&t, FieldVolume, &t.Volume, val, parseNumber)
		case "transpose":
			typed = parseField(&t, FieldTranspose, &t.Transpose, val, parseNumber)
		case "stepCount":
			var f float64
			typed = parseField(&t, FieldStepCount, &f, val, parseNumber)
			t.StepCount = clampStepCount(f)
		case "muted":
			typed = parseField(&t, FieldMuted, &t.Muted, val, parseBool)
		case "soloed":
			typed = parseField(&t, FieldSoloed, &t.Soloed, val, parseBool)
		case "steps":
			t.steps = [2]uint64{}
			typed = eachElement(val, MaxSteps, func(i int, v json.RawMessage) {
				t.SetStep(i, truthy(v))
			}) == nil
		case "parameterLocks":
			t.locks = nil
			typed = eachElement(val, MaxSteps, func(i int, v json.RawMessage) {
				if l, ok := parseLock(v, false); ok {
					t.SetLock(i, &l)
				} else {
					t.SetLock(i, nil)
				}
			}) == nil
		case "fmParams":
			var fm FMParams
			if fm, typed = parseFM(val); typed {
				t.FM = &fm
			} else {
				t.FM = nil
			}
		default:
			typed = false
		}
		// AppendJSON always writes steps and parameterLocks (as 128-entry
		// arrays): a wrong-typed one reads as empty, not as an unknown key.
		if typed || key == "steps" || key == "parameterLocks" {
			t.extra = t.extra.without(key)
		} else {
			t.extra = t.extra.with(key, val)
		}
	})
	if err != nil || !hasID {
		return SessionTrack{}, false
	}
	return t, true
}

// parseField reads an optional track field: null marks it null, a value of
// the expected type sets it, anything else leaves it absent and reports false
// (the caller keeps the raw value among the unknown keys).
func parseField[T any](t *SessionTrack, f Field, dst *T, val []byte, parse func([]byte) (T, bool)) bool {
	t.Unset(f)
	var zero T
	*dst = zero
	if jsonKind(val) == 'n' {
		t.SetNull(f)
		return true
	}
	v, ok := parse(val)
	if ok {
		*dst = v
		t.Set(f)
	}
	return ok
}

// parseSharedString is parseString keeping one copy of each value: track
// names and sample ids repeat across sessions ("Kick", "kick").
func parseSharedString(val []byte) (string, bool) {
	s, ok := parseString(val)
	return unique.Make(s).Value(), ok
}

// parseLock reads a parameter lock object. strict (the set_parameter_lock rule)
// rejects any key other than a numeric pitch or volume; lenient parsing (stored
// state, add_track) keeps the numeric pitch and volume and drops the rest.
func parseLock(raw []byte, strict bool) (ParameterLock, bool) {
	var l ParameterLock
	ok := true
	err := eachMember(raw, func(key string, val json.RawMessage) {
		n, isNum := parseNumber(val)
		switch {
		case key == "pitch" && isNum:
			l.Pitch = n
			l.flags |= lockPitch
		case key == "volume" && isNum:
			if l.flags&lockPitch == 0 {
				l.flags |= lockVolumeFirst
			}
			l.Volume = n
			l.flags |= lockVolume
		default:
			if strict {
				ok = false
			}
		}
	})
	if err != nil || !ok {
		return ParameterLock{}, false
	}
	if l.flags&(lockPitch|lockVolume) != lockPitch|lockVolume {
		l.flags &^= lockVolumeFirst
	}
	return l, true
}

// parseFM reads an FMParams object with numeric harmonicity and modulationIndex,
// unclamped.
func parseFM(raw []byte) (FMParams, bool) {
	var fm FMParams
	var hasH, hasM bool
	err := eachMember(raw, func(key string, val json.RawMessage) {
		switch key {
		case "harmonicity":
			fm.Harmonicity, hasH = parseNumber(val)
		case "modulationIndex":
			fm.ModulationIndex, hasM = parseNumber(val)
		}
	})
	return fm, err == nil && hasH && hasM
}

// clampFM applies the FMParams bounds of PROTOCOL.md §2.4.
func clampFM(fm FMParams) FMParams {
	return FMParams{
		Harmonicity:     clamp(fm.Harmonicity, 0.5, 10),
		ModulationIndex: clamp(fm.ModulationIndex, 0, 20),
	}
}

var delayTimes = [...]string{"32n", "16n", "16t", "8n", "8t", "4n", "4t", "2n", "2t", "1n", "1m", "2m", "4m"}

// parseEffects builds the validated effects object of set_effects (PROTOCOL.md
// §3.4). ok is false unless the four wet values are numbers. A missing or
// non-numeric other value takes the client's default (the original stored null).
func parseEffects(raw []byte) (EffectsState, bool) {
	e := EffectsState{
		ReverbDecay: 2, DelayTime: "8n", DelayFeedback: 0.3,
		ChorusFrequency: 1.5, ChorusDepth: 0.5, DistortionAmount: 0.4,
	}
	var wets int
	sub := func(val json.RawMessage, fields map[string]*float64, wet *float64, time *string) {
		// Counted once per object, so a duplicate "wet" key cannot stand in for a missing one.
		wetOK := false
		_ = eachMember(val, func(key string, v json.RawMessage) { // a non-object counts as missing
			if key == "wet" {
				n, ok := parseNumber(v)
				if ok {
					*wet = n
				}
				wetOK = ok // the last duplicate decides, as in JSON.parse
				return
			}
			if key == "time" && time != nil {
				if s, ok := parseString(v); ok {
					*time = "8n"
					for _, d := range delayTimes {
						if s == d {
							*time = s
						}
					}
				}
				return
			}
			if dst, ok := fields[key]; ok {
				if n, ok := parseNumber(v); ok {
					*dst = n
				}
			}
		})
		if wetOK {
			wets++
		}
	}
	// JSON.parse keeps the last of duplicate keys: collect the last of each
	// group first, then read them once.
	groups := map[string]json.RawMessage{}
	err := eachMember(raw, func(key string, val json.RawMessage) { groups[key] = val })
	if v, ok := groups["reverb"]; ok {
		sub(v, map[string]*float64{"decay": &e.ReverbDecay}, &e.ReverbWet, nil)
	}
	if v, ok := groups["delay"]; ok {
		sub(v, map[string]*float64{"feedback": &e.DelayFeedback}, &e.DelayWet, &e.DelayTime)
	}
	if v, ok := groups["chorus"]; ok {
		sub(v, map[string]*float64{"frequency": &e.ChorusFrequency, "depth": &e.ChorusDepth}, &e.ChorusWet, nil)
	}
	if v, ok := groups["distortion"]; ok {
		sub(v, map[string]*float64{"amount": &e.DistortionAmount}, &e.DistortionWet, nil)
	}
	if err != nil || wets < 4 {
		return EffectsState{}, false
	}
	e.ReverbDecay = clamp(e.ReverbDecay, 0.1, 10)
	e.ReverbWet = clamp(e.ReverbWet, 0, 1)
	e.DelayFeedback = clamp(e.DelayFeedback, 0, 0.95)
	e.DelayWet = clamp(e.DelayWet, 0, 1)
	e.ChorusFrequency = clamp(e.ChorusFrequency, 0.1, 10)
	e.ChorusDepth = clamp(e.ChorusDepth, 0, 1)
	e.ChorusWet = clamp(e.ChorusWet, 0, 1)
	e.DistortionAmount = clamp(e.DistortionAmount, 0, 1)
	e.DistortionWet = clamp(e.DistortionWet, 0, 1)
	return e, true
}

func clamp(x, lo, hi float64) float64 {
	if x < lo {
		return lo
	}
	if x > hi {
		return hi
	}
	return x
}

// clampStepCount applies the repair rule for stepCount (1..128). A fractional
// value is truncated: the model keeps whole steps.
func clampStepCount(f float64) uint8 {
	f = clamp(math.Trunc(f), 1, MaxSteps)
	if math.IsNaN(f) {
		return DefaultStepCount
	}
	return uint8(f)
}
