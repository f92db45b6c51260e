package ingress

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	goruntime "runtime"
	"strings"
	"testing"
)

// FuzzDecodeOrder: whatever the body, decodeOrder does not panic, an order
// it accepts is the one encoding/json reads from the same body, and its scan
// for repeated keys finds what a plain scan of json.Decoder's tokens finds.
func FuzzDecodeOrder(f *testing.F) {
	for _, seed := range []string{
		`{"customer_email":"a@example.com","items":[{"sku":"a","quantity":1,"price_cents":1}]}`,
		`{"customer_email":"a@example.com","customer_email":"b@example.com"}`,
		`{"items":[{"sku":"a","SKU":"b"}],"x":{"a":[{"a":1}],"A":2}}`,
		`{"items":[[],[{}],{"k":[1,{"k":2}]}]}`,
		`{"a":1}}`, `[}`, `{"a"`, `{"ſ":1,"S":2}`, `{"K":1,"K":2}`, ` {} `, `{}x`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		// decodeOrder scans only what decoded: valid JSON.
		if len(body) < 64<<10 && json.Valid(body) {
			fast, slow := refuseRepeatedKeys(body), refuseRepeatedKeysByTokens(body)
			var ff, sf fieldError
			if errors.As(fast, &ff) != errors.As(slow, &sf) || ff != sf {
				t.Fatalf("byte scan: %v; token scan: %v", fast, slow)
			}
		}
		req, err := decodeOrder(bytes.NewReader(body))
		if err != nil {
			return
		}
		var want OrderRequest
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatalf("accepted a body encoding/json refuses: %v", err)
		}
		if !reflect.DeepEqual(req, want) {
			t.Fatalf("decoded %+v, encoding/json %+v", req, want)
		}
	})
}

// refuseRepeatedKeysByTokens is refuseRepeatedKeys written plainly on
// json.Decoder's tokens: the oracle the fuzz test holds it to.
func refuseRepeatedKeysByTokens(raw []byte) error {
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

// allocated is the bytes f allocates.
func allocated(f func()) uint64 {
	var ms goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	f()
	goruntime.ReadMemStats(&ms)
	return ms.TotalAlloc - before
}

// TestABodyCostsLittleMoreThanDecodingIt: the scan for repeated keys ran
// before the decoder, over json.Decoder's tokens (an allocation each), so a
// 1 MiB body that is no order (an array of numbers, of empty objects) cost
// 10 to 25 times what decoding it costs: a cheap way to burn the server's
// cores. It now scans bytes, and only bodies that decoded as an order.
func TestABodyCostsLittleMoreThanDecodingIt(t *testing.T) {
	const size = 1 << 20
	bodies := map[string][]byte{}
	for name, unit := range map[string]string{"numbers": "0,", "empty objects": "{},", "empty arrays": "[],"} {
		bodies[name] = []byte("[" + strings.TrimSuffix(strings.Repeat(unit, (size-2)/len(unit)), ",") + "]")
	}
	item := `{"sku":"a","quantity":1,"price_cents":1},`
	bodies["many items"] = []byte(`{"customer_email":"a@example.com","items":[` + strings.TrimSuffix(strings.Repeat(item, size/len(item)), ",") + `]}`)
	bodies["one key many times"] = []byte(`{"customer_email":"a@example.com","items":[{` + strings.Repeat(`"sku":"a",`, size/10) + `"quantity":1}]}`)
	for name, body := range bodies {
		plain := allocated(func() {
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			var req OrderRequest
			_ = dec.Decode(&req)
		})
		got := allocated(func() { _, _ = decodeOrder(bytes.NewReader(body)) })
		if got > 2*plain+(2<<20) {
			t.Errorf("%s: decoding a 1 MiB body allocated %.1f MiB, %.1fx what the decoder alone does", name, float64(got)/(1<<20), float64(got)/float64(plain))
		}
	}
}
