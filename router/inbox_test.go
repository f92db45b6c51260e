package router_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/runtime"
)

type note struct {
	Text string `json:"text"`
}

func (note) EventType() string { return "note.written" }

// noteRuntime runs a handler that records every note it handles.
func noteRuntime(t *testing.T) (*testRuntime, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var seen []string
	h := runtime.NewHandler("notes", func(ctx context.Context, tx runtime.Tx, ev note) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, ev.Text)
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 5, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}))
	tr := startRuntime(t, nil, h)
	return tr, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), seen...)
	}
}

// produceRaw writes a note with exactly these CloudEvents attributes.
func produceRaw(t *testing.T, tr *testRuntime, text string, headers map[string]string) {
	t.Helper()
	rec := &kgo.Record{Topic: tr.cfg.Kafka.Topic("note.written"), Key: []byte("k"), Value: []byte(`{"text":"` + text + `"}`)}
	for k, v := range headers {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	// A topic the runtime has just created may not be served yet: retry
	// that until the deadline (franz-go gives up after 4 tries by default).
	cl, err := kgo.NewClient(kgo.SeedBrokers(tr.cfg.Kafka.Brokers...), kgo.UnknownTopicRetries(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// TestTheInboxKeysEventsBySourceAndID: two producers' events with the same
// ce_id are two events (CloudEvents: source + id is unique); the second was
// once dropped as a duplicate. The same source and id twice is one event, and
// a row from before sources were kept still catches its redelivery.
func TestTheInboxKeysEventsBySourceAndID(t *testing.T) {
	tr, seen := noteRuntime(t)
	if _, err := tr.db.Exec(`INSERT INTO eventfn_inbox (handler, source, event_id, event_type) VALUES ('notes', '', 'legacy-1', 'note.written')`); err != nil {
		t.Fatal(err)
	}
	ce := func(source, id string) map[string]string {
		return map[string]string{"ce_id": id, "ce_source": source, "ce_type": "note.written", "ce_specversion": "1.0"}
	}
	produceRaw(t, tr, "a/1", ce("shop-a", "1"))
	produceRaw(t, tr, "b/1", ce("shop-b", "1"))
	produceRaw(t, tr, "a/1 again", ce("shop-a", "1"))
	produceRaw(t, tr, "legacy again", ce("shop-a", "legacy-1"))
	produceRaw(t, tr, "last", ce("shop-a", "2"))
	waitUntil(t, "the last note handled", 30*time.Second, func() bool {
		s := seen()
		return len(s) > 0 && s[len(s)-1] == "last"
	})
	got := seen()
	want := []string{"a/1", "b/1", "last"}
	if len(got) != len(want) {
		t.Fatalf("handled %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("handled %q, want %q", got, want)
		}
	}
}

// TestMalformedAttributesAreDeadLetteredAtOnce: non-UTF-8 or NUL bytes in
// ce_id, ce_type or ce_source were a transient error on PostgreSQL, retried
// for 14 s while the key waited. They are malformed: dead-lettered at once, on
// either database, and the next event flows. So is a CloudEvents version other
// than 1.0 (a record without the attribute is read as before).
func TestMalformedAttributesAreDeadLetteredAtOnce(t *testing.T) {
	tr, seen := noteRuntime(t)
	bad := []map[string]string{
		{"ce_id": "bad\xff\xfe", "ce_source": "s", "ce_type": "note.written"},
		{"ce_id": "nul\x00id", "ce_source": "s", "ce_type": "note.written"},
		{"ce_id": "ok-1", "ce_source": "s\xc3\x28", "ce_type": "note.written"},
		{"ce_id": "ok-2", "ce_source": "s", "ce_type": "note.\x00written"},
		{"ce_id": "ok-4", "ce_source": "s", "ce_type": "note.written", "ce_specversion": "0.3"},
	}
	for _, h := range bad {
		produceRaw(t, tr, "bad", h)
	}
	produceRaw(t, tr, "good", map[string]string{"ce_id": "ok-3", "ce_source": "s", "ce_type": "note.written"})
	waitUntil(t, "the good note handled", 30*time.Second, func() bool {
		s := seen()
		return len(s) == 1 && s[0] == "good"
	})
	waitUntil(t, "every malformed event dead-lettered", 30*time.Second, func() bool {
		return countRecords(t, tr, tr.cfg.Kafka.DeadLetterTopic) == len(bad)
	})
	if n := tr.metric(t, "eventfn_handler_attempts_total", "handler", "notes", "result", "error"); n != 0 {
		t.Fatalf("%v attempts failed as if transient; want none (dead-lettered at once)", n)
	}
}
