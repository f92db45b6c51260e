package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

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

// TestAHandlerWhoseCommitIsPastThePartitionsEndReadsItAgainAndChargesOnce:
// the broker lost records charge-payment had consumed (an unclean leader
// election), so its group's commit lies past the end of order.placed.
// `eventfn groups` shows the partition to be read again from its start,
// and the restarted handler does so: the orders placed since are paid, and
// the ones paid before are not charged again (the inbox has them).
func TestAHandlerWhoseCommitIsPastThePartitionsEndReadsItAgainAndChargesOnce(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, func(c *configs.Config) { c.Kafka.Partitions = 1 })
	a := startApp(t, cfg)
	before := []string{a.placeOrder(t, "before-0@example.com"), a.placeOrder(t, "before-1@example.com")}
	a.waitEmailed(t, before, 60*time.Second)
	a.stop(t)

	group := groupsByHandler(t, cfg)["charge-payment"].Group
	topic := cfg.Kafka.Topic("order.placed")
	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Kafka.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var past kadm.Offsets
	past.AddOffset(topic, 0, 40, -1)
	if resp, err := kadm.NewClient(cl).CommitOffsets(ctx, group, past); err != nil || resp.Error() != nil {
		t.Fatalf("commit offset 40 of %s for %s: %v %v", topic, group, err, resp.Error())
	}
	if g := groupsByHandler(t, cfg)["charge-payment"]; g.Lag != 2 || len(g.Partitions) != 1 || g.Partitions[0].Committed == nil || *g.Partitions[0].Committed != 40 {
		t.Errorf("eventfn groups with the commit past the end: lag %d, want 2 (read again from the start), committed 40: %+v", g.Lag, g)
	}

	c := startApp(t, cfg)
	since := []string{c.placeOrder(t, "since-0@example.com"), c.placeOrder(t, "since-1@example.com")}
	c.waitEmailed(t, since, 60*time.Second)
	eventually(t, 30*time.Second, "charge-payment caught up", func() (bool, string) {
		g := groupsByHandler(t, cfg)["charge-payment"]
		return g.Lag == 0, fmt.Sprintf("%+v", g)
	})
	for _, id := range before {
		if n := c.Payments.Attempts("order-" + id); n != 0 {
			t.Errorf("order %s, paid before the loss, was charged %d more times by the restarted app", id, n)
		}
	}
	if !strings.Contains(c.logs.String(), "kafka lost records this group had consumed") {
		t.Error("the restarted app did not log that Kafka lost records the group had consumed")
	}
}
