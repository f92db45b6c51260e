package runtime_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/runtime"
)

type thing struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func (thing) EventType() string  { return "thing.happened" }
func (t thing) EventKey() string { return t.Name }
func (t thing) Validate() error {
	if t.Name == "" {
		return errors.New("name is required")
	}
	return nil
}

func TestDecode(t *testing.T) {
	cases := []struct {
		name    string
		payload string
		wantErr string
	}{
		{"valid", `{"name":"a","count":2}`, ""},
		{"unknown fields are tolerated", `{"name":"a","extra":true}`, ""},
		{"empty", ``, "empty payload"},
		{"blank", "  \n", "empty payload"},
		{"truncated", `{"name":`, "unexpected EOF"},
		{"wrong type", `{"name":1}`, "cannot unmarshal number"},
		{"fails validation", `{"count":1}`, "name is required"},
		{"trailing value", `{"name":"a"} {"name":"b"}`, "trailing data"},
		{"not an object", `[1,2]`, "cannot unmarshal array"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev, err := runtime.Decode[thing]([]byte(c.payload))
			if c.wantErr == "" {
				if err != nil || ev.Name != "a" {
					t.Fatalf("Decode = %+v, %v", ev, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, c.wantErr)
			}
			if !runtime.IsPermanent(err) {
				t.Errorf("decode errors must be permanent: %v", err)
			}
			// Only a payload that does not decode is malformed; one that
			// decodes and fails its own Validate is the producer's valid
			// JSON refused on its merits.
			if want := !strings.Contains(c.wantErr, "required"); runtime.IsMalformed(err) != want {
				t.Errorf("IsMalformed(%v) = %v, want %v", err, !want, want)
			}
		})
	}
}

func TestPermanent(t *testing.T) {
	base := errors.New("boom")
	if runtime.Permanent(nil) != nil {
		t.Error("Permanent(nil) must be nil")
	}
	wrapped := errors.Join(errors.New("context"), runtime.Permanent(base))
	if !runtime.IsPermanent(wrapped) || !errors.Is(wrapped, base) {
		t.Error("a wrapped permanent error must stay permanent and unwrap to its cause")
	}
	if runtime.IsPermanent(base) {
		t.Error("a plain error is not permanent")
	}
}

func TestPolicyDefaultsAndValidation(t *testing.T) {
	p := runtime.Policy{}.WithDefaults()
	if p != runtime.DefaultPolicy() {
		t.Errorf("zero policy with defaults = %+v", p)
	}
	if got := (runtime.Policy{MaxRetries: -1}).WithDefaults().MaxRetries; got != 0 {
		t.Errorf("negative MaxRetries means none, got %d", got)
	}
	// Only a MaxBackoff below the default first wait: no wait is longer
	// (it was refused for an initial backoff the policy never set).
	if p := (runtime.Policy{MaxBackoff: 50 * time.Millisecond}).WithDefaults(); p.InitialBackoff != 50*time.Millisecond || p.Validate() != nil {
		t.Errorf("MaxBackoff 50ms alone: %+v, %v", p, p.Validate())
	}
	bad := []runtime.Policy{
		{InitialBackoff: time.Second, MaxBackoff: time.Millisecond},
		{Timeout: -time.Second},
		{Concurrency: -1},
	}
	for _, p := range bad {
		if p.Validate() == nil {
			t.Errorf("%+v should be invalid", p)
		}
	}
}

func TestHandlerMetadataAndValidation(t *testing.T) {
	called := false
	h := runtime.NewHandler("count-things", func(ctx context.Context, tx runtime.Tx, ev thing) error {
		called = ev.Name == "a"
		return nil
	}, runtime.Emits(thing{}), runtime.WithPolicy(runtime.Policy{MaxRetries: 1}))
	if h.Name() != "count-things" || h.Trigger() != "thing.happened" || !h.MayEmit("thing.happened") || h.MayEmit("other") {
		t.Fatalf("handler metadata wrong: %s %s %v", h.Name(), h.Trigger(), h.Emits())
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := h.Invoke(context.Background(), nil, []byte(`{"name":"a"}`)); err != nil || !called {
		t.Fatalf("Invoke: %v, called %v", err, called)
	}
	if err := h.Invoke(context.Background(), nil, []byte(`nope`)); !runtime.IsPermanent(err) {
		t.Fatalf("bad payload must be a permanent error, got %v", err)
	}
	for _, name := range []string{"", "Upper", "has space", "-leading", strings.Repeat("a", 64)} {
		bad := runtime.NewHandler(name, func(context.Context, runtime.Tx, thing) error { return nil })
		if bad.Validate() == nil {
			t.Errorf("name %q should be rejected", name)
		}
	}
	if (runtime.Handler{}).Validate() == nil {
		t.Error("a zero Handler must not validate")
	}
}

func TestSpecOf(t *testing.T) {
	s := runtime.SpecOf[thing]()
	if s.Type != "thing.happened" {
		t.Fatalf("type %q", s.Type)
	}
	if err := s.Check([]byte(`{"name":"k"}`)); err != nil {
		t.Error(err)
	}
	if err := s.Check([]byte(`{}`)); err == nil {
		t.Error("invalid payload passed Check")
	}
	if got := s.Key([]byte(`{"name":"k"}`)); got != "k" {
		t.Errorf("Key = %q", got)
	}
}

func TestMetadataInContext(t *testing.T) {
	if _, ok := runtime.MetadataFrom(context.Background()); ok {
		t.Fatal("empty context has no metadata")
	}
	m := runtime.Metadata{ID: "1", CorrelationID: "c"}
	got, ok := runtime.MetadataFrom(runtime.WithMetadata(context.Background(), m))
	if !ok || got != m {
		t.Fatalf("got %+v", got)
	}
}

func TestValidateCorrelationID(t *testing.T) {
	tests := []struct {
		name, id string
		ok       bool
	}{
		{"empty", "", true},
		{"a uuid", "4f1c2a9e-0d3b-4c55-9a57-0b7c1f0e2d11", true},
		{"non-ASCII text", "commande-é-42", true},
		{"at the limit", strings.Repeat("c", runtime.MaxCorrelationIDBytes), true},
		{"past the limit", strings.Repeat("c", runtime.MaxCorrelationIDBytes+1), false},
		{"not UTF-8", "c\xff", false},
		{"a NUL byte", "c\x00d", false},
		{"a newline", "c\nd", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := runtime.ValidateCorrelationID(tt.id); (err == nil) != tt.ok {
				t.Fatalf("ValidateCorrelationID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
			}
		})
	}
}
