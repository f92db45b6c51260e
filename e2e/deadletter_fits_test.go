package e2e

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/uuid"

	"github.com/eventfn/eventfn/router"
)

// TestAnOversizedInvalidOrderIsDeadLetteredAndItsKeyFlows: an order.placed
// whose 600 KB customer_email is invalid once made a 1.2 MB dead letter (the
// reason quoted the field), which the producer refused; the record was
// redelivered every 100 ms for ever, and the valid order behind it on the same
// key never ran. Each dead letter must fit: the reason is cut to 4 KiB, and a
// payload that leaves no room for the dead letter's headers is cut as well,
// with eventfn_payload_truncated saying its original size.
func TestAnOversizedInvalidOrderIsDeadLetteredAndItsKeyFlows(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	a := startApp(t, cfg)
	client := kafkaClient(t, cfg)
	topic := cfg.Kafka.Topic("order.placed")

	cases := []struct {
		name      string
		emailSize int
		truncated bool
	}{
		{"a 600 KB invalid email", 600_000, false},
		// The record fits kafka.max_message_bytes; with the dead letter's own
		// headers (reason, origin, attempts) it no longer does.
		{"an invalid email that fills the record", cfg.Kafka.MaxMessageBytes - 2_000, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key := "o-" + uuid.NewString()
			ce := func() map[string]string {
				return map[string]string{router.HeaderID: uuid.NewString(), router.HeaderType: "order.placed",
					router.HeaderSource: "e2e", router.HeaderSpecVersion: "1.0"}
			}
			bad, err := json.Marshal(map[string]any{"order_id": key, "customer_email": strings.Repeat("x", c.emailSize), "total_cents": 100})
			if err != nil {
				t.Fatal(err)
			}
			produce(t, client, topic, []byte(key), bad, ce())
			good, err := json.Marshal(map[string]any{"order_id": key, "customer_email": "fine@example.com", "total_cents": 100})
			if err != nil {
				t.Fatal(err)
			}
			produce(t, client, topic, []byte(key), good, ce())

			eventually(t, 60*time.Second, "the valid order behind it on the same key paid", func() (bool, string) {
				n := count(t, cfg, `SELECT COUNT(*) FROM payments WHERE order_id = $1`, key)
				return n == 1, strconv.Itoa(n) + " payments"
			})
			dead := readAll(t, client, cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic), 1, 60*time.Second, func(m *sarama.ConsumerMessage) bool {
				return string(m.Key) == key
			})
			m := dead[0]
			size := len(m.Key) + len(m.Value)
			for _, h := range m.Headers {
				size += len(h.Key) + len(h.Value)
			}
			if size > cfg.Kafka.MaxMessageBytes {
				t.Errorf("the dead letter takes %d bytes, more than kafka.max_message_bytes (%d)", size, cfg.Kafka.MaxMessageBytes)
			}
			reason := header(m, router.HeaderDeadLetterReason)
			if len(reason) > 4096 || !strings.Contains(reason, "is not an email address") {
				t.Errorf("reason of %d bytes, want at most 4096 naming the cause: %.300s", len(reason), reason)
			}
			if got := header(m, router.HeaderAttempts); got != "1" {
				t.Errorf("attempts %q, want 1: an invalid payload is permanent", got)
			}
			cut := header(m, router.HeaderPayloadTruncated)
			switch {
			case c.truncated && cut != strconv.Itoa(len(bad)):
				t.Errorf("%s = %q, want the original size %d", router.HeaderPayloadTruncated, cut, len(bad))
			case c.truncated && (len(m.Value) >= len(bad) || string(m.Value) != string(bad[:len(m.Value)])):
				t.Errorf("the payload, %d of %d bytes, is not the start of the original", len(m.Value), len(bad))
			case !c.truncated && (cut != "" || string(m.Value) != string(bad)):
				t.Errorf("the payload was changed (%d of %d bytes, %s = %q); it fitted whole", len(m.Value), len(bad), router.HeaderPayloadTruncated, cut)
			}
		})
	}
	// Each dead letter written is counted once, and nothing else is.
	want := `eventfn_dead_lettered_total{handler="charge-payment"} ` + strconv.Itoa(len(cases))
	if m := a.get(t, "/metrics"); !strings.Contains(m, want) {
		i := strings.Index(m, "eventfn_dead_lettered_total{")
		t.Errorf("/metrics lacks %q; it has %.80s", want, m[max(i, 0):])
	}
}
