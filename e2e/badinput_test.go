package e2e

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/router"
)

// TestBadRecordsOnAHandlerTopic writes, to order.placed, the records an
// unlucky producer writes: huge payloads up to the broker's limit, odd bytes in
// the key and the headers, repeated headers, a foreign CloudEvents version and
// a tombstone. Each is either handled (it is a valid order) or dead-lettered
// with a reason saying why, at once; and a valid order behind it on the same
// key is charged. Nothing wedges and nothing is lost.
func TestBadRecordsOnAHandlerTopic(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	topic := cfg.Kafka.Topic("order.placed")

	// The topic takes records up to 10 MiB, as a broker configured for large
	// records would; eventfn finds it already there.
	const topicLimit = 10<<20 + 64<<10
	prod, err := kgo.NewClient(kgo.SeedBrokers(cfg.Kafka.Brokers...), kgo.ProducerBatchMaxBytes(topicLimit),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		// The test creates the topic a moment before producing to it: retry an
		// unknown topic until the context's deadline (franz-go gives up after 4 tries).
		kgo.UnknownTopicRetries(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(prod.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	limit := strconv.Itoa(topicLimit)
	if _, err := kadm.NewClient(prod).CreateTopic(ctx, int32(cfg.Kafka.Partitions), int16(cfg.Kafka.ReplicationFactor),
		map[string]*string{"max.message.bytes": &limit}, topic); err != nil {
		t.Fatal(err)
	}
	startApp(t, cfg)
	client := kafkaClient(t, cfg)

	order := func(id, email string) []byte {
		b, err := json.Marshal(map[string]any{"order_id": id, "customer_email": email, "total_cents": 100})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	type hdr = kgo.RecordHeader
	ce := func(extra ...hdr) []hdr {
		return append([]hdr{{Key: router.HeaderID, Value: []byte(uuid.NewString())}, {Key: router.HeaderType, Value: []byte("order.placed")},
			{Key: router.HeaderSource, Value: []byte("e2e")}, {Key: router.HeaderSpecVersion, Value: []byte("1.0")}}, extra...)
	}
	cases := []struct {
		name    string
		key     []byte // "" for the case's order id
		value   func(id string) []byte
		headers []hdr
		reason  string // substring of the dead-letter reason; "" when the record is a valid order
	}{
		{name: "a payload of 1 MiB that is not JSON", value: func(string) []byte { return []byte(strings.Repeat("x", 1<<20)) },
			headers: ce(), reason: "decode order.placed"},
		{name: "a payload of 10 MiB, an order with a 10 MiB email", value: func(id string) []byte { return order(id, strings.Repeat("x", 10<<20-200)) },
			headers: ce(), reason: "is not an email address"},
		{name: "non-UTF-8 bytes in the key, a valid order", key: []byte("k\xff\xfe\x00"), value: func(id string) []byte { return order(id, "a@example.com") },
			headers: ce()},
		{name: "non-UTF-8 bytes in ce_id", value: func(id string) []byte { return order(id, "a@example.com") },
			headers: []hdr{{Key: router.HeaderID, Value: []byte("id\xc3\x28")}, {Key: router.HeaderType, Value: []byte("order.placed")}}, reason: "not valid UTF-8"},
		{name: "non-UTF-8 bytes in a header of the producer's own, a valid order", value: func(id string) []byte { return order(id, "a@example.com") },
			headers: ce(hdr{Key: "x-trace\xff", Value: []byte("\xff\xfe")})},
		{name: "non-UTF-8 bytes in the correlation id", value: func(id string) []byte { return order(id, "a@example.com") },
			headers: ce(hdr{Key: router.HeaderCorrelationID, Value: []byte("c\xff")}), reason: "correlation"},
		{name: "ce_id twice with different values", value: func(id string) []byte { return order(id, "a@example.com") },
			headers: ce(hdr{Key: router.HeaderID, Value: []byte(uuid.NewString())}), reason: "header ce_id appears more than once"},
		{name: "a producer's header twice, a valid order", value: func(id string) []byte { return order(id, "a@example.com") },
			headers: ce(hdr{Key: "x-trace", Value: []byte("1")}, hdr{Key: "x-trace", Value: []byte("2")})},
		{name: "ce_specversion 0.3", value: func(id string) []byte { return order(id, "a@example.com") },
			headers: []hdr{{Key: router.HeaderID, Value: []byte(uuid.NewString())}, {Key: router.HeaderType, Value: []byte("order.placed")},
				{Key: router.HeaderSpecVersion, Value: []byte("0.3")}}, reason: "ce_specversion \"0.3\" is not supported"},
		{name: "an empty value (a tombstone)", value: func(string) []byte { return nil }, headers: ce(), reason: "empty payload"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := "o-" + uuid.NewString()
			key := c.key
			if key == nil {
				key = []byte(id)
			} else {
				key = append(append([]byte(nil), key...), id...)
			}
			bad := &kgo.Record{Topic: topic, Key: key, Value: c.value(id), Headers: c.headers}
			next := "o-" + uuid.NewString()
			good := &kgo.Record{Topic: topic, Key: key, Value: order(next, "fine@example.com"), Headers: ce()}
			if err := prod.ProduceSync(ctx, bad, good).FirstErr(); err != nil {
				t.Fatalf("produce: %v", err)
			}
			eventually(t, 90*time.Second, "the valid order behind it on the same key charged", func() (bool, string) {
				n := count(t, cfg, `SELECT COUNT(*) FROM payments WHERE order_id = $1`, next)
				return n == 1, strconv.Itoa(n) + " payments"
			})
			if c.reason == "" {
				eventually(t, 30*time.Second, "the record, a valid order, charged once", func() (bool, string) {
					n := count(t, cfg, `SELECT COUNT(*) FROM payments WHERE order_id = $1`, id)
					return n == 1, strconv.Itoa(n) + " payments"
				})
				return
			}
			dead := readAll(t, client, cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic), 1, 60*time.Second, func(m *sarama.ConsumerMessage) bool {
				return string(m.Key) == string(key)
			})
			m := dead[0]
			if reason := header(m, router.HeaderDeadLetterReason); !strings.Contains(reason, c.reason) {
				t.Errorf("dead-letter reason %.300q, want it to say %q", reason, c.reason)
			}
			if got := header(m, router.HeaderAttempts); got != "1" {
				t.Errorf("attempts %q, want 1: a malformed record is dead-lettered at once", got)
			}
			size := len(m.Key) + len(m.Value)
			for _, h := range m.Headers {
				size += len(h.Key) + len(h.Value)
			}
			if size > cfg.Kafka.MaxMessageBytes {
				t.Errorf("the dead letter takes %d bytes, more than kafka.max_message_bytes (%d)", size, cfg.Kafka.MaxMessageBytes)
			}
			if n := count(t, cfg, `SELECT COUNT(*) FROM payments WHERE order_id = $1`, id); n != 0 {
				t.Errorf("the dead-lettered record charged %d payments", n)
			}
		})
	}
}
