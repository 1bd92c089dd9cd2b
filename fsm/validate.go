package fsm

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf16"
)

// ValidateState applies the HTTP state rules (PROTOCOL.md §1.4.1) to the raw
// state of a create or PUT. It returns one message per failed rule, nil when the
// state is acceptable. Anything these rules do not check is accepted and
// normalised later by ParseSessionState.
func ValidateState(raw []byte) []string {
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
	details = checkRange(details, tempo, hasTempo, "Tempo", MinTempo, MaxTempo)
	details = checkRange(details, swing, hasSwing, "Swing", MinSwing, MaxSwing)
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
		details = append(details, validateTrack(i, e)...)
	}
	return details
}

func checkRange(details []string, val json.RawMessage, present bool, what string, lo, hi float64) []string {
	if !present {
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

func validateTrack(i int, raw json.RawMessage) []string {
	prefix := fmt.Sprintf("Track[%d]: ", i)
	if jsonKind(raw) != '{' {
		return []string{prefix + "must be an object"}
	}
	fields := map[string]json.RawMessage{}
	if err := eachMember(raw, func(key string, val json.RawMessage) { fields[key] = val }); err != nil {
		return []string{prefix + "must be an object"}
	}
	var details []string
	if id, ok := parseString(fields["id"]); !ok || id == "" {
		details = append(details, prefix+"id must be a non-empty string")
	}
	if _, ok := parseString(fields["sampleId"]); !ok {
		details = append(details, prefix+"sampleId must be a string")
	}
	if _, ok := parseString(fields["name"]); !ok {
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
		if n, isNum := parseNumber(v); !isNum || n < 0 || n > 1 {
			details = append(details, prefix+"volume must be between 0 and 1")
		}
	}
	if v, ok := fields["transpose"]; ok {
		if n, isNum := parseNumber(v); !isNum || n < MinTranspose || n > MaxTranspose {
			details = append(details, fmt.Sprintf("%stranspose must be between %d and %d", prefix, MinTranspose, MaxTranspose))
		}
	}
	if v, ok := fields["stepCount"]; ok {
		if n, isNum := parseNumber(v); !isNum || !IsValidStepCount(n) {
			details = append(details, prefix+"stepCount must be one of 4, 8, 12, 16, 24, 32, 64, 96, 128")
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
	name, ok := parseString(raw)
	if !ok {
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
