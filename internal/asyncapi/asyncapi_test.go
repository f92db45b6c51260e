package asyncapi_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/eventfn/eventfn/cli"
	"github.com/eventfn/eventfn/handlers"
	"github.com/eventfn/eventfn/internal/asyncapi"
)

// generate runs `eventfn asyncapi` as go generate does: the local profile,
// no other configuration.
func generate(t *testing.T) []byte {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := cli.Main(t.Context(), []string{"asyncapi"}, strings.NewReader(""), &out, &errOut, []string{"EVENTFN_PROFILE=local"}); code != 0 {
		t.Fatalf("eventfn asyncapi: exit %d: %s", code, errOut.String())
	}
	return out.Bytes()
}

// TestTheCommittedDocumentIsCurrent: docs/asyncapi.json is what the handlers
// say now; go generate ./... rewrites it.
func TestTheCommittedDocumentIsCurrent(t *testing.T) {
	committed, err := os.ReadFile(filepath.Join("..", "..", "docs", "asyncapi.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, generate(t)) {
		t.Fatal("docs/asyncapi.json is stale: run go generate ./...")
	}
}

func compile(t *testing.T, url string, doc any, resources map[string]any) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	for u, r := range resources {
		if err := c.AddResource(u, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.AddResource(url, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(url)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func loadJSON(t *testing.T, raw []byte) any {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestTheDocumentIsValidAsyncAPI validates the document against the AsyncAPI
// 3.0 JSON Schema (testdata, from @asyncapi/specs), and checks that it says
// who receives and who sends each event.
func TestTheDocumentIsValidAsyncAPI(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "asyncapi-3.0.0.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	schema := compile(t, "http://asyncapi.com/definitions/3.0.0/asyncapi.json", loadJSON(t, raw), nil)
	doc := generate(t)
	if err := schema.Validate(loadJSON(t, doc)); err != nil {
		t.Fatalf("not a valid AsyncAPI 3.0 document: %v", err)
	}
	var d struct {
		Operations map[string]struct {
			Action  string            `json:"action"`
			Channel map[string]string `json:"channel"`
		} `json:"operations"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"charge-payment.receive":                "receive #/channels/order.placed",
		"charge-payment.send.payment.confirmed": "send #/channels/payment.confirmed",
		"send-confirmation.receive":             "receive #/channels/payment.confirmed",
		"send-confirmation.send.email.sent":     "send #/channels/email.sent",
		"mark-order-emailed.receive":            "receive #/channels/email.sent",
		"ingress.send.order.placed":             "send #/channels/order.placed",
	}
	for id, w := range want {
		op, ok := d.Operations[id]
		if got := op.Action + " " + op.Channel["$ref"]; !ok || got != w {
			t.Errorf("operation %s: %q, want %q", id, got, w)
		}
	}
	if len(d.Operations) != len(want) {
		t.Errorf("%d operations, want %d", len(d.Operations), len(want))
	}

	// A valid AsyncAPI document that lacks a required field is refused: the
	// validation can fail.
	var broken map[string]any
	_ = json.Unmarshal(doc, &broken)
	delete(broken, "info")
	b, _ := json.Marshal(broken)
	if err := schema.Validate(loadJSON(t, b)); err == nil {
		t.Error("a document without info passed validation")
	}
}

// TestTheSchemasSayWhatDecodeAccepts: a payload eventfn accepts validates
// against its type's schema, and one whose email or id Validate refuses is
// refused by the schema too.
func TestTheSchemasSayWhatDecodeAccepts(t *testing.T) {
	schemas, err := asyncapi.Schemas(handlers.Events())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		typ, payload string
		valid        bool
	}{
		{"order.placed", `{"order_id":"o-1","customer_email":"a@example.com","items":[{"sku":"tea","quantity":1,"price_cents":250}],"total_cents":250}`, true},
		{"order.placed", `{"order_id":"o-1","customer_email":"not an email","items":[],"total_cents":250}`, false},
		{"order.placed", `{"order_id":"","customer_email":"a@example.com","items":[],"total_cents":250}`, false},
		{"order.placed", `{"order_id":"o-1","customer_email":"a@example.com","items":[],"total_cents":-1}`, false},
		{"payment.confirmed", `{"order_id":"o-1","payment_id":"p-1","amount_cents":250,"customer_email":"a@example.com"}`, true},
		{"email.sent", `{"order_id":"o-1","recipient":"a@example.com"}`, true},
		{"email.sent", `{"recipient":"a@example.com"}`, false},
	}
	for _, c := range cases {
		raw, _ := json.Marshal(schemas[c.typ])
		s := compile(t, "https://eventfn.local/"+c.typ+".json", loadJSON(t, raw), nil)
		err := s.Validate(loadJSON(t, []byte(c.payload)))
		if (err == nil) != c.valid {
			t.Errorf("%s %s: valid %t, want %t (%v)", c.typ, c.payload, err == nil, c.valid, err)
		}
		var check error
		for _, spec := range handlers.Events() {
			if spec.Type == c.typ {
				check = spec.Check([]byte(c.payload))
			}
		}
		if (check == nil) != c.valid {
			t.Errorf("%s %s: eventfn accepts it: %t, the schema: %t", c.typ, c.payload, check == nil, c.valid)
		}
	}
}
