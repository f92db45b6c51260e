package ingress

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode"
)

// decodeOrder reads body as one JSON order and nothing else. encoding/json
// alone takes the last of two keys that are the same, matches keys to
// fields whatever their case, and stops reading after the first value: so
// {"quantity":1,"Quantity":10000} was an order of 10,000 to this server and
// perhaps of 1 to a proxy in front of it, and a body with a second order
// after the first was stored as the first. A body is bounded by
// http.max_body_bytes, so reading it whole first costs at most that.
func decodeOrder(body io.Reader) (OrderRequest, error) {
	var req OrderRequest
	raw, err := io.ReadAll(body)
	if err != nil {
		return req, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return req, errors.New("the body holds more after the order")
	}
	// After decoding: a body that is no order (a megabyte of unknown keys,
	// say) is refused at the decoder's cost, and what is scanned here has
	// an order's shape.
	if err := refuseRepeatedKeys(raw); err != nil {
		return OrderRequest{}, err
	}
	return req, nil
}

// maxDepth bounds how deep a body nests (an order is three levels deep):
// each level costs the scan below some memory.
const maxDepth = 32

// refuseRepeatedKeys fails with a fieldError when an object of raw's first
// JSON value holds a key twice, counting keys that differ only in case as
// one (encoding/json matches them to the same field, as bytes.EqualFold
// does). Malformed JSON is left to the decoder, which says where.
//
// It scans bytes rather than json.Decoder tokens: the tokens cost a
// request three times what decoding the order does.
func refuseRepeatedKeys(raw []byte) error {
	type frame struct {
		object  bool
		keyNext bool // in an object, the next string is a key
		first   int  // where the object's keys start in keys
		// folded holds the object's keys once it has many: comparing each
		// new key with every one before would cost a 1 MiB body of one
		// object minutes.
		folded map[string]struct{}
	}
	const manyKeys = 32
	var (
		stack []frame
		keys  []string // the keys of every open object, innermost last
	)
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; c {
		case '{', '[':
			if len(stack) == maxDepth {
				return fmt.Errorf("it nests deeper than %d levels", maxDepth)
			}
			stack = append(stack, frame{object: c == '{', keyNext: c == '{', first: len(keys)})
		case '}', ']':
			if len(stack) == 0 {
				return nil
			}
			keys = keys[:stack[len(stack)-1].first]
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				return nil // the first value ended: the rest is the decoder's
			}
		case ',':
			if len(stack) > 0 && stack[len(stack)-1].object {
				stack[len(stack)-1].keyNext = true
			}
		case '"':
			end := stringEnd(raw, i)
			if end < 0 {
				return nil
			}
			if len(stack) > 0 && stack[len(stack)-1].keyNext {
				top := &stack[len(stack)-1]
				top.keyNext = false
				key, ok := unquote(raw[i : end+1])
				if !ok {
					return nil
				}
				if top.folded == nil && len(keys)-top.first == manyKeys {
					top.folded = make(map[string]struct{}, 2*manyKeys)
					for _, k := range keys[top.first:] {
						top.folded[foldKey(k)] = struct{}{}
					}
				}
				repeated := false
				if top.folded != nil {
					f := foldKey(key)
					_, repeated = top.folded[f]
					top.folded[f] = struct{}{}
				} else {
					repeated = slices.ContainsFunc(keys[top.first:], func(k string) bool { return strings.EqualFold(k, key) })
				}
				if repeated {
					return fieldError{key, "is given twice in one object (keys that differ only in case are the same field)"}
				}
				keys = append(keys, key)
			}
			i = end
		}
	}
	return nil
}

// stringEnd is the index of the quote that ends the JSON string starting at
// raw[start], or -1.
func stringEnd(raw []byte, start int) int {
	for i := start + 1; i < len(raw); i++ {
		switch raw[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// unquote is the text of a quoted JSON string, escapes decoded; the
// encoding/json decoder reads keys the same way.
func unquote(quoted []byte) (string, bool) {
	if bytes.IndexByte(quoted, '\\') < 0 {
		return string(quoted[1 : len(quoted)-1]), true
	}
	var s string
	return s, json.Unmarshal(quoted, &s) == nil
}

// foldKey maps each letter of key to the least of the letters case folding
// makes it equal to, so that two keys fold alike exactly when
// strings.EqualFold holds for them (which is how encoding/json matches).
func foldKey(key string) string {
	folded := []rune(key)
	for i, r := range folded {
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			folded[i] = min(folded[i], f)
		}
	}
	return string(folded)
}
