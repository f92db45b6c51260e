package ingress

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecodeOrder: whatever the body, decodeOrder does not panic, and an
// order it accepts is the one encoding/json reads from the same body.
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
