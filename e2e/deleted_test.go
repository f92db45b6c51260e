package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventfn/eventfn/configs"
)

// TestOrdersKafkaDeletedBeforeTheirHandlerRanAreCountedAndTheRestPaid:
// charge-payment is stopped for longer than order.placed is kept, and Kafka
// deletes the first orders placed meanwhile (kafka-delete-records stands in
// for retention.ms). Those are lost to the handler: the log and
// eventfn_consumer_records_deleted_total must say so. The orders placed
// after them are still on Kafka and must be paid, from either start
// position: from latest, the group resumed at the partition's end and
// skipped them, silently, with a lag of 0.
func TestOrdersKafkaDeletedBeforeTheirHandlerRanAreCountedAndTheRestPaid(t *testing.T) {
	t.Parallel()
	for _, start := range []string{configs.StartEarliest, configs.StartLatest} {
		t.Run(start, func(t *testing.T) {
			t.Parallel()
			e := newEngines(t)
			// One partition: the group commits on the partition the first
			// order goes to, and so knows where it was.
			cfg := e.config(t, func(c *configs.Config) {
				c.Kafka.Partitions = 1
				c.Run.StartPosition = start
			})
			a := startApp(t, cfg)
			first := a.placeOrder(t, "first@example.com")
			a.waitEmailed(t, []string{first}, 60*time.Second)
			a.stop(t)

			without := cfg
			without.Run.Handlers = []string{"mark-order-emailed"}
			b := startApp(t, without)
			placed := func(n int, prefix string) []string {
				var ids []string
				for i := range n {
					ids = append(ids, b.placeOrder(t, fmt.Sprintf("%s-%d@example.com", prefix, i)))
				}
				eventually(t, 30*time.Second, prefix+" orders on Kafka", func() (bool, string) {
					st := outboxState(t, without)
					return st.Pending == 0, fmt.Sprintf("%+v", st)
				})
				return ids
			}
			lost := placed(3, "lost")
			kc := kafkaClient(t, cfg)
			topic := cfg.Kafka.Topic("order.placed")
			end, err := kc.GetOffset(topic, 0, sarama.OffsetNewest)
			if err != nil {
				t.Fatal(err)
			}
			kept := placed(3, "kept")
			b.stop(t)
			adm, err := sarama.NewClusterAdminFromClient(kc)
			if err != nil {
				t.Fatal(err)
			}
			if err := adm.DeleteRecords(topic, map[int32]int64{0: end}); err != nil {
				t.Fatalf("delete the records of %s before %d: %v", topic, end, err)
			}
			if g := groupsByHandler(t, cfg)["charge-payment"]; g.Deleted != 3 || g.Lag != 3 {
				t.Errorf("eventfn groups before the restart: %d deleted and a lag of %d, want 3 and 3: %+v", g.Deleted, g.Lag, g)
			}

			c := startApp(t, cfg)
			c.waitEmailed(t, kept, 60*time.Second)
			eventually(t, 30*time.Second, "the deleted orders counted", func() (bool, string) {
				n := sum(c.scrape(t), "eventfn_consumer_records_deleted_total", "handler", "charge-payment")
				return n == 3, fmt.Sprintf("eventfn_consumer_records_deleted_total %v, want 3", n)
			})
			for _, id := range lost {
				if s, n := c.orderStatus(t, id), c.Payments.Attempts("order-"+id); s != "placed" || n != 0 {
					t.Errorf("order %s, deleted from Kafka: %s after %d charges, want placed after 0", id, s, n)
				}
			}
			eventually(t, 10*time.Second, "the loss in the log", func() (bool, string) {
				return strings.Contains(c.logs.String(), "kafka deleted records before this handler's group consumed them"), ""
			})
		})
	}
}
