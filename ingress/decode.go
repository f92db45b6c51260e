package ingress

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	if err := refuseRepeatedKeys(raw); err != nil {
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
	return req, nil
}

// maxDepth bounds how deep a body nests (an order is three levels deep):
// each level costs the scan below some memory.
const maxDepth = 32

// refuseRepeatedKeys fails with a fieldError when an object of raw's first
// JSON value holds a key twice, counting keys that differ only in case as
// one (encoding/json matches them to the same field). Malformed JSON is
// left to the decoder, which says where.
func refuseRepeatedKeys(raw []byte) error {
	type frame struct {
		object  bool
		keyNext bool // in an object, the next token is a key
		keys    map[string]struct{}
	}
	var stack []*frame
	dec := json.NewDecoder(bytes.NewReader(raw))
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.keyNext {
			if key, ok := tok.(string); ok {
				folded := foldKey(key)
				if _, seen := top.keys[folded]; seen {
					return fieldError{key, "is given twice in one object (keys that differ only in case are the same field)"}
				}
				top.keys[folded] = struct{}{}
				top.keyNext = false
				continue
			}
		}
		if len(stack) == maxDepth {
			return fmt.Errorf("it nests deeper than %d levels", maxDepth)
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, keyNext: true, keys: map[string]struct{}{}})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		// A value ended: its object's next token is a key. The first
		// value ended: the rest is the decoder's to refuse.
		if len(stack) == 0 {
			return nil
		}
		if top := stack[len(stack)-1]; top.object {
			top.keyNext = true
		}
	}
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
