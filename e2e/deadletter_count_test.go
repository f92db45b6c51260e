package e2e

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/uuid"

	"github.com/eventfn/eventfn/router"
)

// TestADeadLetterKafkaRefusesIsNotCounted: eventfn_dead_lettered_total once
// counted 124 while nothing reached the dead-letter topic, because it was
// incremented before the dead letter was written. Here the dead-letter topic
// takes records of at most 20 KB, so Kafka refuses the dead letter of a
// 100 KB invalid order every time: the event is tried again and again, and the
// counter must stay at 0.
func TestADeadLetterKafkaRefusesIsNotCounted(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	client := kafkaClient(t, cfg)
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	a := startApp(t, cfg)
	// An operator lowers the dead-letter topic's limit once the app runs
	// (start-up refuses a topic that takes less than kafka.max_message_bytes).
	limit := "20000"
	dlq := cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic)
	if err := admin.IncrementalAlterConfig(sarama.TopicResource, dlq, map[string]sarama.IncrementalAlterConfigsEntry{
		"max.message.bytes": {Operation: sarama.IncrementalAlterConfigsOperationSet, Value: &limit}}, false); err != nil {
		t.Fatalf("lower %s's max.message.bytes: %v", dlq, err)
	}

	key := "o-" + uuid.NewString()
	bad, err := json.Marshal(map[string]any{"order_id": key, "customer_email": strings.Repeat("x", 100_000), "total_cents": 1})
	if err != nil {
		t.Fatal(err)
	}
	produce(t, client, cfg.Kafka.Topic("order.placed"), []byte(key), bad, map[string]string{
		router.HeaderID: uuid.NewString(), router.HeaderType: "order.placed", router.HeaderSource: "e2e", router.HeaderSpecVersion: "1.0"})

	attempts := regexp.MustCompile(`eventfn_handler_attempts_total\{handler="charge-payment",result="permanent"\} (\d+)`)
	var metrics string
	eventually(t, 60*time.Second, "the event to fail its dead-lettering three times", func() (bool, string) {
		metrics = a.get(t, "/metrics")
		m := attempts.FindStringSubmatch(metrics)
		if m == nil {
			return false, "no permanent attempt yet"
		}
		n, _ := strconv.Atoi(m[1])
		return n >= 3, m[0]
	})
	if strings.Contains(metrics, `eventfn_dead_lettered_total{handler="charge-payment"}`) &&
		!strings.Contains(metrics, `eventfn_dead_lettered_total{handler="charge-payment"} 0`) {
		i := strings.Index(metrics, `eventfn_dead_lettered_total{handler="charge-payment"}`)
		t.Fatalf("nothing was written to %s, yet /metrics has %.70s", dlq, metrics[i:])
	}
	if n := count(t, cfg, `SELECT COUNT(*) FROM payments WHERE order_id = $1`, key); n != 0 {
		t.Fatalf("the invalid order was paid (%d payments)", n)
	}
}
