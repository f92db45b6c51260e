package router_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
)

// TestARecordOfManyHeadersIsDeadLetteredAndItsKeyFlows: the broker takes a
// record up to its max.message.bytes (1048588 by default), above eventfn's
// kafka.max_message_bytes (1000000). An invalid record of 250 headers of 4 KB
// had a dead letter that did not fit even with its payload cut to nothing, so
// it was tried again for ever and the valid event behind it never ran.
func TestARecordOfManyHeadersIsDeadLetteredAndItsKeyFlows(t *testing.T) {
	var mu sync.Mutex
	var handled []string
	h := runtime.NewHandler("signup", func(ctx context.Context, tx runtime.Tx, ev signup) error {
		mu.Lock()
		handled = append(handled, ev.Email)
		mu.Unlock()
		return nil
	})
	tr := startRuntime(t, nil, h)
	// The runtime created the topic a moment ago: retry an unknown topic
	// until the context's deadline (franz-go gives up after 4 tries).
	cl, err := kgo.NewClient(kgo.SeedBrokers(tr.cfg.Kafka.Brokers...), kgo.ProducerBatchMaxBytes(2<<20), kgo.UnknownTopicRetries(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	rec := func(email string, extra int) *kgo.Record {
		r := &kgo.Record{Topic: tr.cfg.Kafka.Topic("signup.requested"), Key: []byte("k"),
			Value: []byte(`{"key":"k","email":"` + email + `"}`), Headers: []kgo.RecordHeader{
				{Key: "ce_id", Value: []byte(email)}, {Key: "ce_type", Value: []byte("signup.requested")},
				{Key: "ce_source", Value: []byte("test")}, {Key: "ce_specversion", Value: []byte("1.0")}}}
		for i := range extra {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: fmt.Sprintf("x-app-%03d", i), Value: []byte(strings.Repeat("h", 4000))})
		}
		return r
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, rec("not-an-address", 250), rec("ok@example.com", 0)).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the valid event behind it handled", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == 1
	})
	dead := tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 1)
	var dropped, reason string
	size := len(dead[0].Key) + len(dead[0].Value)
	for _, hd := range dead[0].Headers {
		size += len(hd.Key) + len(hd.Value)
		switch hd.Key {
		case router.HeaderHeadersDropped:
			dropped = string(hd.Value)
		case router.HeaderDeadLetterReason:
			reason = string(hd.Value)
		}
	}
	if size > tr.cfg.Kafka.MaxMessageBytes || dropped == "" || !strings.Contains(reason, "is not an address") {
		t.Fatalf("dead letter of %d bytes, %s=%q, reason %q", size, router.HeaderHeadersDropped, dropped, reason)
	}
}
