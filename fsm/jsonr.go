package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// This file holds the reader that parse.go and validate.go read client JSON
// with, the counterpart of jsonw.go. encoding/json checks a payload's syntax
// once (checkObject); the reader then walks the checked bytes in a single
// pass. It never checks again, never copies an element into a
// json.RawMessage, and decodes only the strings that the model keeps. Reading
// a 13 KB state used to run a json.Decoder per object and a json.Unmarshal
// per array, each rescanning and copying everything below it (about 3,700
// allocations); walking it with encoding/json's token API is no faster.
//
// The walk relies on the check: it only looks for where each value ends.
// Every jsonValue therefore comes from checkObject, or from walking one that
// did. On anything else its results mean nothing, but it still never indexes
// out of range, and every step consumes at least one byte, so it ends.

// jsonValue is one JSON value whose syntax encoding/json has checked, with no
// whitespace around it.
type jsonValue []byte

var errNotObject = errors.New("not a JSON object")

// jsonKind returns the first byte of a JSON value: '{', '[', '"', 't', 'f', 'n',
// or '0' for a number. It returns 0 for empty input.
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

// checkObject checks that raw starts with a JSON object and returns that
// object. What follows the object is ignored, as encoding/json's Decoder
// (which this package read objects with before) ignores it.
func checkObject(raw []byte) (jsonValue, error) {
	if jsonKind(raw) != '{' {
		return nil, errNotObject
	}
	start := skipSpace(raw, 0)
	if json.Valid(raw) {
		end := len(raw)
		for end > start && isSpace(raw[end-1]) {
			end--
		}
		return jsonValue(raw[start:end]), nil
	}
	// The object is malformed, or something follows it. Read it token by
	// token, as the Decoder did: that gives the same errors, and the end.
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		if _, ok := tok.(string); !ok {
			return nil, fmt.Errorf("object key is %T", tok)
		}
		if err := dec.Decode(new(json.RawMessage)); err != nil {
			return nil, err
		}
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	return jsonValue(raw[start:dec.InputOffset()]), nil
}

// members calls fn for every member of the object v, in order; for anything
// but an object it does nothing. Duplicate keys are reported each time;
// callers let the last one win, as JSON.parse does. key is decoded, and may
// share memory with v: it is valid only during the call.
func (v jsonValue) members(fn func(key []byte, val jsonValue)) {
	if len(v) == 0 || v[0] != '{' {
		return
	}
	for i := 1; ; {
		i = skipSpace(v, i)
		if i < len(v) && v[i] == ',' {
			i = skipSpace(v, i+1)
		}
		if i >= len(v) || v[i] != '"' {
			return // '}'
		}
		end := stringEnd(v, i)
		key := unquote(v[i:end])
		i = skipSpace(v, end) // at ':'
		i = skipSpace(v, i+1)
		if i >= len(v) {
			return
		}
		end = valueEnd(v, i)
		fn(key, v[i:end])
		i = end
	}
}

// elements calls fn for every element of the array v whose index is below
// limit, or, for an object, for every member whose key is such an index (an
// array-like object, as some scripts send). It reports false for anything
// else.
func (v jsonValue) elements(limit int, fn func(i int, val jsonValue)) bool {
	switch jsonKind(v) {
	case '[':
		for i, n := 1, 0; n < limit; n++ {
			i = skipSpace(v, i)
			if i < len(v) && v[i] == ',' {
				i = skipSpace(v, i+1)
			}
			if i >= len(v) || v[i] == ']' {
				break
			}
			end := valueEnd(v, i)
			fn(n, v[i:end])
			i = end
		}
		return true
	case '{':
		v.members(func(key []byte, val jsonValue) {
			if i, ok := arrayIndex(key, limit); ok {
				fn(i, val)
			}
		})
		return true
	}
	return false
}

// arrayIndex reads an object key as an array index below limit (limit > 0).
// It accepts exactly the keys that strconv.Itoa(strconv.Atoi(key)) gives back
// unchanged: decimal digits without sign or leading zero.
func arrayIndex(key []byte, limit int) (int, bool) {
	if len(key) == 0 || (key[0] == '0' && len(key) > 1) {
		return 0, false
	}
	var n uint64
	for _, c := range key {
		if c < '0' || c > '9' || n > uint64(limit)/10 { // n*10 would reach limit
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return int(n), n < uint64(limit)
}

// unquote decodes a JSON string literal (quotes included) as encoding/json
// does: invalid UTF-8 becomes U+FFFD. The common literal, without escapes and
// in valid UTF-8, is returned in place.
func unquote(lit []byte) []byte {
	if len(lit) < 2 {
		return nil
	}
	s := lit[1 : len(lit)-1]
	if bytes.IndexByte(s, '\\') < 0 && utf8.Valid(s) {
		return s
	}
	var out string
	if json.Unmarshal(lit, &out) != nil {
		return nil // not a checked literal
	}
	return []byte(out)
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// stringEnd returns the index just past the string literal that starts at b[i].
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++ // the escaped byte cannot end the string
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// valueEnd returns the index just past the value that starts at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			for i < len(b) && !jsonNesting[b[i]] {
				i++
			}
			if i == len(b) {
				break
			}
			switch b[i] {
			case '"':
				i = stringEnd(b, i)
				continue
			case '{', '[':
				depth++
			default: // '}', ']'
				if depth--; depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(b)
	default: // a number, true, false or null; never empty
		for i++; i < len(b) && !jsonLiteralEnd[b[i]]; i++ {
		}
		return i
	}
}

// jsonNesting marks the bytes that valueEnd looks at inside an object or
// array; jsonLiteralEnd the bytes that end a number or literal. Read-only.
var (
	jsonNesting    = [256]bool{'"': true, '{': true, '}': true, '[': true, ']': true}
	jsonLiteralEnd = [256]bool{',': true, ']': true, '}': true, ' ': true, '\t': true, '\n': true, '\r': true}
)
