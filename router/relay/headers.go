package relay

import (
	"encoding/json"
	"unicode/utf8"
)

// decodeHeaders decodes an outbox row's headers column: a JSON object of
// strings, as Insert writes it.
//
// Decoding it with encoding/json was a third of the relay's CPU on a
// 100,000-row backlog (reflection, a validating scan and a second pass per
// row). Nearly every row's headers are CloudEvents attributes with no byte
// that JSON escapes, so decodeHeaders reads those itself, strictly: an
// object of plain strings, no escape, no control byte, valid UTF-8, nothing
// after it. Anything else goes to encoding/json, which decides it exactly
// as before (an error parks the row). Where the strict reading succeeds,
// encoding/json would have returned the same map (FuzzDecodeHeaders checks
// this).
func decodeHeaders(data []byte) (map[string]string, error) {
	if h, ok := plainHeaders(data); ok {
		return h, nil
	}
	var h map[string]string
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, err
	}
	return h, nil
}

// plainHeaders reads data when it is a JSON object whose keys and values are
// all strings without escapes; ok is false for anything else.
func plainHeaders(data []byte) (h map[string]string, ok bool) {
	if !utf8.Valid(data) {
		return nil, false
	}
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil, false
	}
	i = skipSpace(data, i+1)
	h = make(map[string]string, 8)
	if i < len(data) && data[i] == '}' {
		return h, skipSpace(data, i+1) == len(data)
	}
	for {
		key, next, ok := plainString(data, i)
		if !ok {
			return nil, false
		}
		i = skipSpace(data, next)
		if i >= len(data) || data[i] != ':' {
			return nil, false
		}
		value, next, ok := plainString(data, skipSpace(data, i+1))
		if !ok {
			return nil, false
		}
		h[key] = value
		i = skipSpace(data, next)
		if i >= len(data) {
			return nil, false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return h, skipSpace(data, i+1) == len(data)
		default:
			return nil, false
		}
	}
}

// plainString reads the JSON string at data[i:] when it has no escape and no
// control byte, and returns it and the index after its closing quote.
func plainString(data []byte, i int) (s string, next int, ok bool) {
	if i >= len(data) || data[i] != '"' {
		return "", 0, false
	}
	for j := i + 1; j < len(data); j++ {
		switch c := data[j]; {
		case c == '"':
			return string(data[i+1 : j]), j + 1, true
		case c == '\\' || c < 0x20:
			return "", 0, false
		}
	}
	return "", 0, false
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON white space.
func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}
