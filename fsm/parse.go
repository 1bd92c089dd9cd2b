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
// It reads with jsonr.go: one syntax check per payload, then one walk.

// member is one key of a JSON object that the model does not interpret.
type member struct {
	key string
	raw []byte // compact JSON
}

// members is an ordered list of uninterpreted keys. It is never modified in
// place once stored, so clones can share it.
type members []member

// with returns the list with key set to a compacted copy of raw, which
// therefore never shares memory with the command it came from.
func (m *members) with(key string, raw []byte) *members {
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

// parseNumber reads a JSON number. A number too large for float64 reads as ±Inf,
// as in JavaScript.
func parseNumber(v jsonValue) (float64, bool) {
	if jsonKind(v) != '0' {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, false
	}
	return f, true
}

// parseText reads a JSON string without copying it: the result may share
// memory with v.
func parseText(v jsonValue) ([]byte, bool) {
	if jsonKind(v) != '"' {
		return nil, false
	}
	return unquote(v), true
}

func parseString(v jsonValue) (string, bool) {
	s, ok := parseText(v)
	return string(s), ok
}

func parseBool(v jsonValue) (b, ok bool) {
	switch jsonKind(v) {
	case 't':
		return true, true
	case 'f':
		return false, true
	}
	return false, false
}

// truthy is JavaScript truthiness of a JSON value.
func truthy(v jsonValue) bool {
	switch jsonKind(v) {
	case 't', '{', '[':
		return true
	case '"':
		return len(v) > 2 // only "" decodes to the empty string
	case '0':
		f, _ := parseNumber(v)
		return f != 0 && !math.IsNaN(f)
	}
	return false
}

// The parsers below come in two forms: parseX reads raw client bytes
// (checking them with checkObject first), and xFrom reads a value that is
// already checked, such as one track of a state.

// ParseSessionState reads a state object sent by a client (HTTP create or PUT,
// already validated by ValidateState) over the defaults {tracks: [], tempo: 120,
// swing: 0, version: 1}, then repairs it (PROTOCOL.md §6). Track entries that
// are not objects with a non-empty string id are dropped.
func ParseSessionState(raw []byte) (SessionState, error) {
	obj, err := checkObject(raw)
	if err != nil {
		return SessionState{}, fmt.Errorf("parse state: %w", err)
	}
	st := SessionState{Tempo: DefaultTempo, Swing: 0, Version: 1}
	obj.members(func(key []byte, val jsonValue) {
		typed := true
		switch string(key) {
		case "tracks":
			if jsonKind(val) != '[' {
				typed = false
				break
			}
			st.Tracks = st.Tracks[:0]
			val.elements(math.MaxInt, func(_ int, tv jsonValue) {
				if t, ok := trackFrom(tv); ok {
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
			if e, typed = effectsFrom(val); typed {
				st.Effects = &e
			} else {
				st.Effects = nil
			}
		default:
			typed = false
		}
		// AppendJSON always writes tracks, tempo, swing and version, so a
		// wrong-typed one kept among the unknown keys would repeat the key.
		// (string(key) in a comparison or a call that does not keep it
		// allocates nothing.)
		if typed || string(key) == "tracks" || string(key) == "tempo" || string(key) == "swing" || string(key) == "version" {
			st.extra = st.extra.without(string(key))
		} else {
			st.extra = st.extra.with(string(key), val)
		}
	})
	st.repair()
	return st, nil
}

// ParseTrack reads a track object as add_track sends it. ok is false when it is
// not an object or has no non-empty string id. The result is not yet repaired.
func ParseTrack(raw []byte) (t SessionTrack, ok bool) { return parseTrack(raw) }

func parseTrack(raw []byte) (SessionTrack, bool) {
	obj, err := checkObject(raw)
	if err != nil {
		return SessionTrack{}, false
	}
	return trackFrom(obj)
}

func trackFrom(obj jsonValue) (SessionTrack, bool) {
	if jsonKind(obj) != '{' {
		return SessionTrack{}, false
	}
	var t SessionTrack
	hasID := false
	obj.members(func(key []byte, val jsonValue) {
		typed := true
		switch string(key) {
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
				s, _ := parseText(val)
				switch string(s) {
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
			typed = val.elements(MaxSteps, func(i int, v jsonValue) {
				t.SetStep(i, truthy(v))
			})
		case "parameterLocks":
			t.locks = nil
			typed = val.elements(MaxSteps, func(i int, v jsonValue) {
				if l, ok := lockFrom(v, false); ok {
					t.SetLock(i, &l)
				} else {
					t.SetLock(i, nil)
				}
			})
		case "fmParams":
			var fm FMParams
			if fm, typed = fmFrom(val); typed {
				t.FM = &fm
			} else {
				t.FM = nil
			}
		default:
			typed = false
		}
		// AppendJSON always writes steps and parameterLocks (as 128-entry
		// arrays): a wrong-typed one reads as empty, not as an unknown key.
		if typed || string(key) == "steps" || string(key) == "parameterLocks" {
			t.extra = t.extra.without(string(key))
		} else {
			t.extra = t.extra.with(string(key), val)
		}
	})
	if !hasID {
		return SessionTrack{}, false
	}
	return t, true
}

// parseField reads an optional track field: null marks it null, a value of
// the expected type sets it, anything else leaves it absent and reports false
// (the caller keeps the raw value among the unknown keys).
func parseField[T any](t *SessionTrack, f Field, dst *T, val jsonValue, parse func(jsonValue) (T, bool)) bool {
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
func parseSharedString(val jsonValue) (string, bool) {
	s, ok := parseString(val)
	return unique.Make(s).Value(), ok
}

// parseLock reads a parameter lock object. strict (the set_parameter_lock rule)
// rejects any key other than a numeric pitch or volume; lenient parsing (stored
// state, add_track) keeps the numeric pitch and volume and drops the rest.
func parseLock(raw []byte, strict bool) (ParameterLock, bool) {
	obj, err := checkObject(raw)
	if err != nil {
		return ParameterLock{}, false
	}
	return lockFrom(obj, strict)
}

func lockFrom(obj jsonValue, strict bool) (ParameterLock, bool) {
	if jsonKind(obj) != '{' {
		return ParameterLock{}, false
	}
	var l ParameterLock
	ok := true
	obj.members(func(key []byte, val jsonValue) {
		n, isNum := parseNumber(val)
		switch k := string(key); {
		case k == "pitch" && isNum:
			l.Pitch = n
			l.flags |= lockPitch
		case k == "volume" && isNum:
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
	if !ok {
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
	obj, err := checkObject(raw)
	if err != nil {
		return FMParams{}, false
	}
	return fmFrom(obj)
}

func fmFrom(obj jsonValue) (FMParams, bool) {
	if jsonKind(obj) != '{' {
		return FMParams{}, false
	}
	var fm FMParams
	var hasH, hasM bool
	obj.members(func(key []byte, val jsonValue) {
		switch string(key) {
		case "harmonicity":
			fm.Harmonicity, hasH = parseNumber(val)
		case "modulationIndex":
			fm.ModulationIndex, hasM = parseNumber(val)
		}
	})
	return fm, hasH && hasM
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
	obj, err := checkObject(raw)
	if err != nil {
		return EffectsState{}, false
	}
	return effectsFrom(obj)
}

func effectsFrom(obj jsonValue) (EffectsState, bool) {
	if jsonKind(obj) != '{' {
		return EffectsState{}, false
	}
	e := EffectsState{
		ReverbDecay: 2, DelayTime: "8n", DelayFeedback: 0.3,
		ChorusFrequency: 1.5, ChorusDepth: 0.5, DistortionAmount: 0.4,
	}
	// JSON.parse keeps the last of duplicate keys: find the last of each
	// section first, then read each once. A missing section stays nil.
	var reverb, delay, chorus, distortion jsonValue
	obj.members(func(key []byte, val jsonValue) {
		switch string(key) {
		case "reverb":
			reverb = val
		case "delay":
			delay = val
		case "chorus":
			chorus = val
		case "distortion":
			distortion = val
		}
	})
	wets := 0
	for _, sec := range [...]struct {
		val    jsonValue
		wet    *float64
		time   *string // delay only
		fields [2]effectField
	}{
		{reverb, &e.ReverbWet, nil, [2]effectField{{"decay", &e.ReverbDecay}}},
		{delay, &e.DelayWet, &e.DelayTime, [2]effectField{{"feedback", &e.DelayFeedback}}},
		{chorus, &e.ChorusWet, nil, [2]effectField{{"frequency", &e.ChorusFrequency}, {"depth", &e.ChorusDepth}}},
		{distortion, &e.DistortionWet, nil, [2]effectField{{"amount", &e.DistortionAmount}}},
	} {
		if effectSection(sec.val, sec.wet, sec.time, sec.fields) {
			wets++
		}
	}
	if wets < 4 {
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

// effectField is a numeric key of an effects section and where it goes.
type effectField struct {
	key string
	dst *float64
}

// effectSection reads one section of an effects object (reverb, delay, ...)
// into wet, time (delay's, else nil) and fields. It reports whether the
// section has a numeric wet, counted once per section, so that a duplicate
// "wet" key cannot stand in for a missing one; the last duplicate decides, as
// in JSON.parse. Anything but an object counts as a missing section.
func effectSection(sec jsonValue, wet *float64, time *string, fields [2]effectField) (wetOK bool) {
	sec.members(func(key []byte, v jsonValue) {
		switch k := string(key); {
		case k == "wet":
			n, ok := parseNumber(v)
			if ok {
				*wet = n
			}
			wetOK = ok
		case k == "time" && time != nil:
			if s, ok := parseText(v); ok {
				*time = "8n"
				for _, d := range delayTimes {
					if string(s) == d {
						*time = d
					}
				}
			}
		default:
			for _, f := range fields {
				if f.dst != nil && k == f.key {
					if n, ok := parseNumber(v); ok {
						*f.dst = n
					}
				}
			}
		}
	})
	return wetOK
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
