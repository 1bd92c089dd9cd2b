package fsm

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
)

// ValidateState applies the HTTP state rules (PROTOCOL.md §1.4.1) to the raw
// state of a create or PUT. It returns one message per failed rule, nil when the
// state is acceptable. Anything these rules do not check is accepted and
// normalised later by ParseSessionState.
func ValidateState(raw []byte) []string {
	obj, err := checkObject(raw)
	if err != nil {
		return []string{"State must be an object"}
	}
	var details []string
	var tempo, swing, tracks jsonValue // nil when absent; the last duplicate wins
	obj.members(func(key []byte, val jsonValue) {
		switch string(key) {
		case "tempo":
			tempo = val
		case "swing":
			swing = val
		case "tracks":
			tracks = val
		}
	})
	details = checkRange(details, tempo, "Tempo", MinTempo, MaxTempo)
	details = checkRange(details, swing, "Swing", MinSwing, MaxSwing)
	if tracks == nil {
		return details
	}
	if jsonKind(tracks) != '[' {
		return append(details, "Tracks must be an array")
	}
	var elems []jsonValue
	tracks.elements(math.MaxInt, func(_ int, e jsonValue) { elems = append(elems, e) })
	if len(elems) > MaxTracks {
		details = append(details, fmt.Sprintf("Cannot have more than %d tracks", MaxTracks))
	}
	for i, e := range elems {
		details = validateTrack(details, i, e)
	}
	return details
}

// checkRange checks a number that must lie in lo..hi, if present (non-nil).
func checkRange(details []string, val jsonValue, what string, lo, hi float64) []string {
	if val == nil {
		return details
	}
	n, ok := parseNumber(val)
	if !ok {
		return append(details, what+" must be a number")
	}
	if n < lo || n > hi {
		return append(details, fmt.Sprintf("%s must be between %g and %g", what, lo, hi))
	}
	return details
}

// validateTrack appends the messages of the rules that track i fails.
func validateTrack(details []string, i int, track jsonValue) []string {
	fail := func(msg string) { details = append(details, "Track["+strconv.Itoa(i)+"]: "+msg) }
	if jsonKind(track) != '{' {
		fail("must be an object")
		return details
	}
	var id, sampleID, name, steps, volume, transpose, stepCount jsonValue // nil when absent
	track.members(func(key []byte, val jsonValue) {
		switch string(key) {
		case "id":
			id = val
		case "sampleId":
			sampleID = val
		case "name":
			name = val
		case "steps":
			steps = val
		case "volume":
			volume = val
		case "transpose":
			transpose = val
		case "stepCount":
			stepCount = val
		}
	})
	if s, ok := parseText(id); !ok || len(s) == 0 {
		fail("id must be a non-empty string")
	}
	if _, ok := parseText(sampleID); !ok {
		fail("sampleId must be a string")
	}
	if _, ok := parseText(name); !ok {
		fail("name must be a string")
	}
	if jsonKind(steps) != '[' {
		fail("steps must be an array")
	} else {
		n := 0
		steps.elements(MaxSteps+1, func(int, jsonValue) { n++ })
		if n > MaxSteps {
			fail(fmt.Sprintf("steps cannot exceed %d", MaxSteps))
		}
	}
	if volume != nil {
		if n, isNum := parseNumber(volume); !isNum || n < 0 || n > 1 {
			fail("volume must be between 0 and 1")
		}
	}
	if transpose != nil {
		if n, isNum := parseNumber(transpose); !isNum || n < MinTranspose || n > MaxTranspose {
			fail(fmt.Sprintf("transpose must be between %d and %d", MinTranspose, MaxTranspose))
		}
	}
	if stepCount != nil {
		if n, isNum := parseNumber(stepCount); !isNum || !IsValidStepCount(n) {
			fail("stepCount must be one of 4, 8, 12, 16, 24, 32, 64, 96, 128")
		}
	}
	return details
}

// unsafeName is the pattern of PROTOCOL.md §1.4.2 as a JavaScript regex reads
// it. RE2's \s is ASCII-only, so JavaScript's \s (see isJSSpace) is spelled out.
var unsafeName = regexp.MustCompile(`(?i)<script|javascript:|on\w+[\t\n\v\f\r \x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}]*=`)

// ValidateName applies the name rules (PROTOCOL.md §1.4.2) to a raw JSON name
// value. It returns the failed rules' messages, nil when the name is acceptable.
func ValidateName(raw []byte) []string {
	if jsonKind(raw) == 'n' {
		return nil
	}
	var name string
	if jsonKind(raw) != '"' || json.Unmarshal(raw, &name) != nil {
		return []string{"Name must be a string or null"}
	}
	var details []string
	if utf16Len(name) > MaxNameLen {
		details = append(details, fmt.Sprintf("Name cannot exceed %d characters", MaxNameLen))
	}
	if unsafeName.MatchString(name) {
		details = append(details, "Name contains potentially unsafe content")
	}
	for _, r := range name {
		if !unicode.In(r, unicode.L, unicode.N, unicode.P, unicode.S) && !isJSSpace(r) {
			details = append(details, "Name contains invalid characters")
			break
		}
	}
	return details
}

// NormalizeName is what a rename stores: the name trimmed of JavaScript
// whitespace and cut to 100 UTF-16 code units. ok is false when nothing is left,
// and the name is then null.
func NormalizeName(name string) (string, bool) {
	name = strings.TrimFunc(name, isJSSpace)
	if utf16Len(name) > MaxNameLen {
		units := utf16.Encode([]rune(name))[:MaxNameLen]
		if last := units[len(units)-1]; last >= 0xd800 && last < 0xdc00 {
			units = units[:len(units)-1] // the cut split a pair: never store half of it
		}
		name = string(utf16.Decode(units))
	}
	return name, name != ""
}

func utf16Len(s string) int {
	n := 0
	for _, r := range s {
		if r >= 0x10000 {
			n += 2
		} else {
			n++
		}
	}
	return n
}

// isJSSpace is JavaScript's \s (WhiteSpace and LineTerminator).
func isJSSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', ' ', 0xa0, 0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000, 0xfeff:
		return true
	}
	return r >= 0x2000 && r <= 0x200a
}
