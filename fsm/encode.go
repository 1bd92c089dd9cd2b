package fsm

import (
	"strconv"
	"unicode/utf16"
)

// AppendJSON writes the state as clients receive it (GET, snapshot): every track
// with 128-entry steps and parameterLocks arrays, present fields only, then any
// unknown keys as they were received.
func (st *SessionState) AppendJSON(b []byte) []byte {
	b = append(b, `{"tracks":[`...)
	for i := range st.Tracks {
		if i > 0 {
			b = append(b, ',')
		}
		b = st.Tracks[i].AppendJSON(b)
	}
	b = append(b, `],"tempo":`...)
	b = appendNumber(b, st.Tempo)
	b = append(b, `,"swing":`...)
	b = appendNumber(b, st.Swing)
	if st.Effects != nil {
		b = append(b, `,"effects":`...)
		b = st.Effects.AppendJSON(b)
	}
	b = append(b, `,"version":`...)
	b = appendNumber(b, st.Version)
	b = st.extra.appendJSON(b, false)
	return append(b, '}')
}

// AppendJSON writes the track with full 128-entry arrays.
func (t *SessionTrack) AppendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, t.ID)
	b = t.appendStringField(b, FieldName, "name", t.Name)
	b = t.appendStringField(b, FieldSampleID, "sampleId", t.SampleID)
	b = append(b, `,"steps":`...)
	b = t.appendSteps(b, MaxSteps)
	b = append(b, `,"parameterLocks":`...)
	b = t.appendLocks(b, MaxSteps)
	b = t.appendNumberField(b, FieldVolume, "volume", t.Volume)
	b = t.appendBoolField(b, FieldMuted, "muted", t.Muted)
	b = t.appendBoolField(b, FieldSoloed, "soloed", t.Soloed)
	b = t.appendStringField(b, FieldPlaybackMode, "playbackMode", modeNames[t.Mode])
	b = t.appendNumberField(b, FieldTranspose, "transpose", t.Transpose)
	b = t.appendNumberField(b, FieldStepCount, "stepCount", float64(t.StepCount))
	if t.FM != nil {
		b = append(b, `,"fmParams":`...)
		b = t.FM.AppendJSON(b)
	}
	b = t.extra.appendJSON(b, false)
	return append(b, '}')
}

func (t *SessionTrack) appendStringField(b []byte, f Field, key, v string) []byte {
	if !t.Has(f) {
		return b
	}
	b = appendKey(b, key, false)
	if t.IsNull(f) {
		return append(b, "null"...)
	}
	return appendString(b, v)
}

func (t *SessionTrack) appendNumberField(b []byte, f Field, key string, v float64) []byte {
	if !t.Has(f) {
		return b
	}
	b = appendKey(b, key, false)
	if t.IsNull(f) {
		return append(b, "null"...)
	}
	return appendNumber(b, v)
}

func (t *SessionTrack) appendBoolField(b []byte, f Field, key string, v bool) []byte {
	if !t.Has(f) {
		return b
	}
	b = appendKey(b, key, false)
	if t.IsNull(f) {
		return append(b, "null"...)
	}
	return appendBool(b, v)
}

// appendSteps writes the first n steps (n ≤ 128 are stored; beyond that false).
func (t *SessionTrack) appendSteps(b []byte, n int) []byte {
	b = append(b, '[')
	for i := 0; i < n; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendBool(b, t.Step(i))
	}
	return append(b, ']')
}

func (t *SessionTrack) appendLocks(b []byte, n int) []byte {
	b = append(b, '[')
	next := 0
	for i := 0; i < n; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		if next < len(t.locks) && int(t.locks[next].step) == i {
			b = t.locks[next].lock.AppendJSON(b)
			next++
		} else {
			b = append(b, "null"...)
		}
	}
	return append(b, ']')
}

// AppendJSON writes the validated effects object with its keys in the fixed order.
func (e *EffectsState) AppendJSON(b []byte) []byte {
	b = append(b, `{"reverb":{"decay":`...)
	b = appendNumber(b, e.ReverbDecay)
	b = append(b, `,"wet":`...)
	b = appendNumber(b, e.ReverbWet)
	b = append(b, `},"delay":{"time":`...)
	b = appendString(b, e.DelayTime)
	b = append(b, `,"feedback":`...)
	b = appendNumber(b, e.DelayFeedback)
	b = append(b, `,"wet":`...)
	b = appendNumber(b, e.DelayWet)
	b = append(b, `},"chorus":{"frequency":`...)
	b = appendNumber(b, e.ChorusFrequency)
	b = append(b, `,"depth":`...)
	b = appendNumber(b, e.ChorusDepth)
	b = append(b, `,"wet":`...)
	b = appendNumber(b, e.ChorusWet)
	b = append(b, `},"distortion":{"amount":`...)
	b = appendNumber(b, e.DistortionAmount)
	b = append(b, `,"wet":`...)
	b = appendNumber(b, e.DistortionWet)
	return append(b, `}}`...)
}

// AppendJSON writes {"harmonicity":…,"modulationIndex":…}.
func (fm *FMParams) AppendJSON(b []byte) []byte {
	b = append(b, `{"harmonicity":`...)
	b = appendNumber(b, fm.Harmonicity)
	b = append(b, `,"modulationIndex":`...)
	b = appendNumber(b, fm.ModulationIndex)
	return append(b, '}')
}

// AppendJSON writes the full Session record, as GET /api/sessions/{id} returns it.
func (s *Session) AppendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, s.ID)
	b = append(b, `,"name":`...)
	b = appendNullableString(b, s.Name, s.HasName)
	b = append(b, `,"createdAt":`...)
	b = strconv.AppendInt(b, s.CreatedAt, 10)
	b = append(b, `,"updatedAt":`...)
	b = strconv.AppendInt(b, s.UpdatedAt, 10)
	b = append(b, `,"lastAccessedAt":`...)
	b = strconv.AppendInt(b, s.LastAccessedAt, 10)
	b = append(b, `,"remixedFrom":`...)
	b = appendNullableString(b, s.RemixedFrom, s.RemixedFrom != "")
	b = append(b, `,"remixedFromName":`...)
	b = appendNullableString(b, s.RemixedFromName, s.HasRemixedFromName)
	b = append(b, `,"remixCount":`...)
	b = strconv.AppendInt(b, s.RemixCount, 10)
	b = append(b, `,"immutable":`...)
	b = appendBool(b, s.Immutable)
	b = append(b, `,"state":`...)
	b = s.State.AppendJSON(b)
	return append(b, '}')
}

func appendNullableString(b []byte, s string, ok bool) []byte {
	if !ok {
		return append(b, "null"...)
	}
	return appendString(b, s)
}

// AppendCanonical writes the canonical string that the state hash is taken over
// (PROTOCOL.md §4.9 step 1).
func (st *SessionState) AppendCanonical(b []byte) []byte {
	b = append(b, `{"tracks":[`...)
	for i := range st.Tracks {
		if i > 0 {
			b = append(b, ',')
		}
		b = st.Tracks[i].appendCanonical(b)
	}
	b = append(b, `],"tempo":`...)
	b = appendNumber(b, st.Tempo)
	b = append(b, `,"swing":`...)
	b = appendNumber(b, st.Swing)
	return append(b, '}')
}

func (t *SessionTrack) appendCanonical(b []byte) []byte {
	n := t.effectiveStepCount()
	b = append(b, `{"id":`...)
	b = appendString(b, t.ID)
	b = t.appendStringField(b, FieldName, "name", t.Name)
	b = t.appendStringField(b, FieldSampleID, "sampleId", t.SampleID)
	b = append(b, `,"steps":`...)
	b = t.appendSteps(b, n)
	b = append(b, `,"parameterLocks":`...)
	b = t.appendLocks(b, n)
	b = t.appendNumberField(b, FieldVolume, "volume", t.Volume)
	b = t.appendBoolField(b, FieldMuted, "muted", t.Muted)
	b = append(b, `,"soloed":`...)
	b = appendBool(b, t.hasValue(FieldSoloed) && t.Soloed)
	b = t.appendStringField(b, FieldPlaybackMode, "playbackMode", modeNames[t.Mode])
	b = t.appendNumberField(b, FieldTranspose, "transpose", t.Transpose)
	b = append(b, `,"stepCount":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '}')
}

// Hash returns the canonical state hash (PROTOCOL.md §4.9): eight lowercase hex
// digits of a 31-multiplier hash over the UTF-16 code units of the canonical string.
func (st *SessionState) Hash() string {
	return HashString(string(st.AppendCanonical(make([]byte, 0, 512+len(st.Tracks)*1024))))
}

// HashString applies step 3 of the hash to an already canonical string.
func HashString(s string) string {
	var buf [8]byte
	h := hashUTF16(s)
	for i := 7; i >= 0; i-- {
		buf[i] = hexDigits[h&0xf]
		h >>= 4
	}
	return string(buf[:])
}

// hashUTF16 is h = h*31 + c over the UTF-16 code units of s, mod 2^32.
func hashUTF16(s string) uint32 {
	var h uint32
	for _, r := range s {
		if r >= 0x10000 {
			r1, r2 := utf16.EncodeRune(r)
			h = h*31 + uint32(r1)
			h = h*31 + uint32(r2)
			continue
		}
		h = h*31 + uint32(r)
	}
	return h
}
