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

// The JSON reading of parse.go and validate.go as it was before jsonr.go:
// every object read with a json.Decoder, every array with json.Unmarshal into
// []json.RawMessage, each level re-checking what is below it. It is slow but
// plainly encoding/json's reading, so it is kept as the reference that
// FuzzParseReference holds the single-pass reader to: the same model, the same
// validation messages, for any input. A deliberate change to the parsing
// rules is made in both.
//
// eachMember keeps its name: the property tests read the JSON that the model
// writes with it, a reader independent of the one under test.

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

// refEachElement calls fn for every element of a JSON array, or for every member of
// an object whose key is a non-negative integer (an array-like object, as some
// scripts send). fn sees elements with an index below limit only.
func refEachElement(raw []byte, limit int, fn func(i int, val json.RawMessage)) error {
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

// refParseNumber reads a JSON number. A number too large for float64 reads as ±Inf,
// as in JavaScript.
func refParseNumber(raw []byte) (float64, bool) {
	if jsonKind(raw) != '0' {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(bytes.TrimSpace(raw)), 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, false
	}
	return f, true
}

func refParseString(raw []byte) (string, bool) {
	if jsonKind(raw) != '"' {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

func refParseBool(raw []byte) (v, ok bool) {
	switch jsonKind(raw) {
	case 't':
		return true, true
	case 'f':
		return false, true
	}
	return false, false
}

// refTruthy is JavaScript truthiness of a JSON value.
func refTruthy(raw []byte) bool {
	switch jsonKind(raw) {
	case 't', '{', '[':
		return true
	case '"':
		s, _ := refParseString(raw)
		return s != ""
	case '0':
		f, _ := refParseNumber(raw)
		return f != 0 && !math.IsNaN(f)
	}
	return false
}

// refParseSessionState reads a state object sent by a client (HTTP create or PUT,
// already validated by refValidateState) over the defaults {tracks: [], tempo: 120,
// swing: 0, version: 1}, then repairs it (PROTOCOL.md §6). Track entries that
// are not objects with a non-empty string id are dropped.
func refParseSessionState(raw []byte) (SessionState, error) {
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
			_ = refEachElement(val, math.MaxInt, func(_ int, tv json.RawMessage) { // val is valid JSON: no error
				if t, ok := refParseTrack(tv); ok {
					st.Tracks = append(st.Tracks, t)
				}
			})
		case "tempo":
			st.Tempo, typed = refParseNumber(val)
			if !typed {
				st.Tempo = DefaultTempo
			}
		case "swing":
			st.Swing, typed = refParseNumber(val)
			if !typed {
				st.Swing = 0
			}
		case "version":
			st.Version, typed = refParseNumber(val)
			if !typed {
				st.Version = 1
			}
		case "effects":
			var e EffectsState
			if e, typed = refParseEffects(val); typed {
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

func refParseTrack(raw []byte) (SessionTrack, bool) {
	var t SessionTrack
	hasID := false
	err := eachMember(raw, func(key string, val json.RawMessage) {
		typed := true
		switch key {
		case "id":
			t.ID, typed = refParseString(val)
			hasID = typed && t.ID != ""
		case "name":
			typed = refParseField(&t, FieldName, &t.Name, val, refParseSharedString)
		case "sampleId":
			typed = refParseField(&t, FieldSampleID, &t.SampleID, val, refParseSharedString)
		case "playbackMode":
			t.Unset(FieldPlaybackMode)
			t.Mode = ModeNone
			switch jsonKind(val) {
			case 'n':
				t.SetNull(FieldPlaybackMode)
			case '"':
				s, _ := refParseString(val)
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
			typed = refParseField(&t, FieldVolume, &t.Volume, val, refParseNumber)
		case "transpose":
			typed = refParseField(&t, FieldTranspose, &t.Transpose, val, refParseNumber)
		case "stepCount":
			var f float64
			typed = refParseField(&t, FieldStepCount, &f, val, refParseNumber)
			t.StepCount = clampStepCount(f)
		case "muted":
			typed = refParseField(&t, FieldMuted, &t.Muted, val, refParseBool)
		case "soloed":
			typed = refParseField(&t, FieldSoloed, &t.Soloed, val, refParseBool)
		case "steps":
			t.steps = [2]uint64{}
			typed = refEachElement(val, MaxSteps, func(i int, v json.RawMessage) {
				t.SetStep(i, refTruthy(v))
			}) == nil
		case "parameterLocks":
			t.locks = nil
			typed = refEachElement(val, MaxSteps, func(i int, v json.RawMessage) {
				if l, ok := refParseLock(v, false); ok {
					t.SetLock(i, &l)
				} else {
					t.SetLock(i, nil)
				}
			}) == nil
		case "fmParams":
			var fm FMParams
			if fm, typed = refParseFM(val); typed {
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

// refParseField reads an optional track field: null marks it null, a value of
// the expected type sets it, anything else leaves it absent and reports false
// (the caller keeps the raw value among the unknown keys).
func refParseField[T any](t *SessionTrack, f Field, dst *T, val []byte, parse func([]byte) (T, bool)) bool {
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

// refParseSharedString is refParseString keeping one copy of each value: track
// names and sample ids repeat across sessions ("Kick", "kick").
func refParseSharedString(val []byte) (string, bool) {
	s, ok := refParseString(val)
	return unique.Make(s).Value(), ok
}

// refParseLock reads a parameter lock object. strict (the set_parameter_lock rule)
// rejects any key other than a numeric pitch or volume; lenient parsing (stored
// state, add_track) keeps the numeric pitch and volume and drops the rest.
func refParseLock(raw []byte, strict bool) (ParameterLock, bool) {
	var l ParameterLock
	ok := true
	err := eachMember(raw, func(key string, val json.RawMessage) {
		n, isNum := refParseNumber(val)
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

// refParseFM reads an FMParams object with numeric harmonicity and modulationIndex,
// unclamped.
func refParseFM(raw []byte) (FMParams, bool) {
	var fm FMParams
	var hasH, hasM bool
	err := eachMember(raw, func(key string, val json.RawMessage) {
		switch key {
		case "harmonicity":
			fm.Harmonicity, hasH = refParseNumber(val)
		case "modulationIndex":
			fm.ModulationIndex, hasM = refParseNumber(val)
		}
	})
	return fm, err == nil && hasH && hasM
}

// refParseEffects builds the validated effects object of set_effects (PROTOCOL.md
// §3.4). ok is false unless the four wet values are numbers. A missing or
// non-numeric other value takes the client's default (the original stored null).
func refParseEffects(raw []byte) (EffectsState, bool) {
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
				n, ok := refParseNumber(v)
				if ok {
					*wet = n
				}
				wetOK = ok // the last duplicate decides, as in JSON.parse
				return
			}
			if key == "time" && time != nil {
				if s, ok := refParseString(v); ok {
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
				if n, ok := refParseNumber(v); ok {
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

// refValidateState applies the HTTP state rules (PROTOCOL.md §1.4.1) to the raw
// state of a create or PUT. It returns one message per failed rule, nil when the
// state is acceptable. Anything these rules do not check is accepted and
// normalised later by refParseSessionState.
func refValidateState(raw []byte) []string {
	if jsonKind(raw) != '{' {
		return []string{"State must be an object"}
	}
	var details []string
	var tempo, swing, tracks json.RawMessage
	var hasTempo, hasSwing, hasTracks bool
	if err := eachMember(raw, func(key string, val json.RawMessage) {
		switch key {
		case "tempo":
			tempo, hasTempo = val, true
		case "swing":
			swing, hasSwing = val, true
		case "tracks":
			tracks, hasTracks = val, true
		}
	}); err != nil {
		return []string{"State must be an object"}
	}
	details = refCheckRange(details, tempo, hasTempo, "Tempo", MinTempo, MaxTempo)
	details = refCheckRange(details, swing, hasSwing, "Swing", MinSwing, MaxSwing)
	if !hasTracks {
		return details
	}
	if jsonKind(tracks) != '[' {
		return append(details, "Tracks must be an array")
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(tracks, &elems); err != nil {
		return append(details, "Tracks must be an array")
	}
	if len(elems) > MaxTracks {
		details = append(details, fmt.Sprintf("Cannot have more than %d tracks", MaxTracks))
	}
	for i, e := range elems {
		details = append(details, refValidateTrack(i, e)...)
	}
	return details
}

func refCheckRange(details []string, val json.RawMessage, present bool, what string, lo, hi float64) []string {
	if !present {
		return details
	}
	n, ok := refParseNumber(val)
	if !ok {
		return append(details, what+" must be a number")
	}
	if n < lo || n > hi {
		return append(details, fmt.Sprintf("%s must be between %g and %g", what, lo, hi))
	}
	return details
}

func refValidateTrack(i int, raw json.RawMessage) []string {
	prefix := fmt.Sprintf("Track[%d]: ", i)
	if jsonKind(raw) != '{' {
		return []string{prefix + "must be an object"}
	}
	fields := map[string]json.RawMessage{}
	if err := eachMember(raw, func(key string, val json.RawMessage) { fields[key] = val }); err != nil {
		return []string{prefix + "must be an object"}
	}
	var details []string
	if id, ok := refParseString(fields["id"]); !ok || id == "" {
		details = append(details, prefix+"id must be a non-empty string")
	}
	if _, ok := refParseString(fields["sampleId"]); !ok {
		details = append(details, prefix+"sampleId must be a string")
	}
	if _, ok := refParseString(fields["name"]); !ok {
		details = append(details, prefix+"name must be a string")
	}
	if steps, ok := fields["steps"]; !ok || jsonKind(steps) != '[' {
		details = append(details, prefix+"steps must be an array")
	} else {
		var elems []json.RawMessage
		if json.Unmarshal(steps, &elems) == nil && len(elems) > MaxSteps {
			details = append(details, fmt.Sprintf("%ssteps cannot exceed %d", prefix, MaxSteps))
		}
	}
	if v, ok := fields["volume"]; ok {
		if n, isNum := refParseNumber(v); !isNum || n < 0 || n > 1 {
			details = append(details, prefix+"volume must be between 0 and 1")
		}
	}
	if v, ok := fields["transpose"]; ok {
		if n, isNum := refParseNumber(v); !isNum || n < MinTranspose || n > MaxTranspose {
			details = append(details, fmt.Sprintf("%stranspose must be between %d and %d", prefix, MinTranspose, MaxTranspose))
		}
	}
	if v, ok := fields["stepCount"]; ok {
		if n, isNum := refParseNumber(v); !isNum || !IsValidStepCount(n) {
			details = append(details, prefix+"stepCount must be one of 4, 8, 12, 16, 24, 32, 64, 96, 128")
		}
	}
	return details
}
