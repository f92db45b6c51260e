package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/wiring"
)

// createTopicsWithRetention creates the topics the handlers consume, before
// eventfn does, with retention.ms of retention, and returns their names.
func createTopicsWithRetention(t *testing.T, cfg configs.Config, retention time.Duration) []string {
	t.Helper()
	infos, err := router.Describe(cfg, wiring.BuildHandlers(wiring.BaseConfig(cfg), slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	sc, err := router.SaramaConfig(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdmin(cfg.Kafka.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ms := fmt.Sprint(retention.Milliseconds())
	var topics []string
	for _, i := range infos {
		err := admin.CreateTopic(i.Topic, &sarama.TopicDetail{
			NumPartitions: int32(cfg.Kafka.Partitions), ReplicationFactor: int16(cfg.Kafka.ReplicationFactor),
			ConfigEntries: map[string]*string{"retention.ms": &ms},
		}, false)
		if err != nil {
			t.Fatalf("create topic %s: %v", i.Topic, err)
		}
		topics = append(topics, i.Topic)
	}
	return topics
}

// TestRetentionKeepsTablesBoundedUnderTraffic runs orders for several
// retention periods with short retentions. Forwarded outbox rows and inbox
// rows are deleted while traffic flows, the tables stay a fraction of what
// was written, and every guarantee holds: each order is charged once and
// emailed once, and every event reached its handler.
func TestRetentionKeepsTablesBoundedUnderTraffic(t *testing.T) {
	t.Parallel()
	for _, archive := range []bool{false, true} {
		t.Run(fmt.Sprintf("archive=%t", archive), func(t *testing.T) {
			t.Parallel()
			e := newEngines(t)
			cfg := e.config(t, func(c *configs.Config) {
				c.Retention = configs.Retention{Outbox: 300 * time.Millisecond, OutboxArchive: archive,
					Inbox: 1500 * time.Millisecond, Interval: 200 * time.Millisecond, BatchSize: 20}
			})
			createTopicsWithRetention(t, cfg, time.Second)
			a := startApp(t, cfg)

			const orders = 200
			var (
				mu       sync.Mutex
				ids      []string
				maxRows  = map[string]int{}
				stopPoll = make(chan struct{})
				polled   = make(chan struct{})
			)
			go func() {
				defer close(polled)
				for {
					select {
					case <-stopPoll:
						return
					case <-time.After(50 * time.Millisecond):
					}
					for table, q := range map[string]string{
						"outbox": `SELECT count(*) FROM eventfn_outbox WHERE state = 1`,
						"inbox":  `SELECT count(*) FROM eventfn_inbox`,
					} {
						n := count(t, cfg, q)
						mu.Lock()
						maxRows[table] = max(maxRows[table], n)
						mu.Unlock()
					}
				}
			}()
			// 25 orders a second for 8 s: five inbox retentions, twenty-five
			// outbox ones.
			tick := time.NewTicker(40 * time.Millisecond)
			for i := range orders {
				<-tick.C
				ids = append(ids, a.placeOrder(t, fmt.Sprintf("keep-%d@example.com", i)))
			}
			tick.Stop()
			a.waitEmailed(t, ids, 90*time.Second)
			close(stopPoll)
			<-polled

			// Three handlers write an inbox row per order, and three events per
			// order pass through the outbox.
			written := 3 * orders
			t.Logf("most rows at once: %v of %d written to each table", maxRows, written)
			// Never all at once: rows were removed while traffic flowed. (How
			// few depends on how bursty the handlers were: a starved machine
			// catches up in bursts, so the peak is not asserted closer.)
			for table, most := range maxRows {
				if most == 0 || most >= written {
					t.Errorf("%s: at most %d rows at once of %d written; want some, and fewer than all", table, most, written)
				}
			}
			for _, id := range ids {
				if n := a.Payments.Attempts("order-" + id); n != 1 {
					t.Errorf("order %s charged %d times", id, n)
				}
			}
			if n := count(t, cfg, `SELECT count(*) FROM emails`); n != orders {
				t.Errorf("%d emails for %d orders", n, orders)
			}
			eventually(t, 30*time.Second, "every forwarded row and inbox row removed", func() (bool, string) {
				o, i := count(t, cfg, `SELECT count(*) FROM eventfn_outbox WHERE state = 1`), count(t, cfg, `SELECT count(*) FROM eventfn_inbox`)
				return o == 0 && i == 0, fmt.Sprintf("%d outbox, %d inbox rows left", o, i)
			})
			archived := count(t, cfg, `SELECT count(*) FROM eventfn_outbox_archive`)
			if archive && archived != written {
				t.Errorf("%d rows archived, want the %d forwarded", archived, written)
			}
			if !archive && archived != 0 {
				t.Errorf("%d rows archived with archiving off", archived)
			}
			metrics := a.get(t, "/metrics")
			for _, table := range []string{"outbox", "inbox"} {
				if !strings.Contains(metrics, fmt.Sprintf(`eventfn_retention_deleted_rows_total{table="%s"}`, table)) {
					t.Errorf("/metrics lacks the %s deletions", table)
				}
			}
		})
	}
}

// TestAnInboxRetentionTheTopicsOutliveIsRefused: the handlers' topics keep
// records a week (the broker's default); an inbox row kept a day would let a
// redelivered record run its handler again. Start-up refuses it.
func TestAnInboxRetentionTheTopicsOutliveIsRefused(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, func(c *configs.Config) { c.Retention.Inbox = 24 * time.Hour })
	createTopicsWithRetention(t, cfg, 7*24*time.Hour)
	err := startRefused(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "retention.inbox") || !strings.Contains(err.Error(), "168h0m0s") {
		t.Fatalf("err = %v, want a refusal naming retention.inbox and the topic's retention", err)
	}
}

// TestAKafkaMaxMessageBytesAboveATopicsLimitIsRefused: a topic that takes
// record batches of at most 100,000 bytes, and kafka.max_message_bytes at its
// default of 1,000,000. Emit would accept events the topic refuses, and the
// relay's batches of small ones would be refused too. Start-up refuses it,
// naming the topic and what it takes; at the topic's limit eventfn starts.
func TestAKafkaMaxMessageBytesAboveATopicsLimitIsRefused(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	topic := cfg.Kafka.Topic("email.sent")
	client := kafkaClient(t, cfg)
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	limit := "100000"
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: int16(cfg.Kafka.ReplicationFactor),
		ConfigEntries: map[string]*string{"max.message.bytes": &limit}}, false); err != nil {
		t.Fatalf("create %s: %v", topic, err)
	}
	err = startRefused(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "kafka.max_message_bytes") || !strings.Contains(err.Error(), topic+" takes 100000") {
		t.Fatalf("err = %v, want a refusal naming kafka.max_message_bytes, the topic and its limit", err)
	}

	cfg.Kafka.MaxMessageBytes = 100000
	a := startApp(t, cfg)
	if code, body := a.readyz(); code != http.StatusOK {
		t.Fatalf("/readyz = %d %s at the topic's limit, want 200", code, body)
	}
}

// TestAHandlersTopicThatCompactsIsWarnedOf: order.placed made by an operator
// with cleanup.policy compact. Kafka would delete an event once a later one
// with its key is written, handled or not, and nothing reports such a loss
// (the log start does not move). eventfn starts, and says so at WARN,
// naming the topic; a topic that deletes is not named.
func TestAHandlersTopicThatCompactsIsWarnedOf(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	compacted := cfg.Kafka.Topic("order.placed")
	admin, err := sarama.NewClusterAdminFromClient(kafkaClient(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	policy := "compact"
	if err := admin.CreateTopic(compacted, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: int16(cfg.Kafka.ReplicationFactor),
		ConfigEntries: map[string]*string{"cleanup.policy": &policy}}, false); err != nil {
		t.Fatalf("create %s: %v", compacted, err)
	}
	a := startApp(t, cfg)
	var warned []string
	for line := range strings.Lines(a.logs.String()) {
		if strings.Contains(line, "kafka topic compacts") {
			warned = append(warned, line)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "topic="+compacted+" ") || !strings.Contains(warned[0], "level=WARN") {
		t.Errorf("start-up's warnings of compacting topics: %q, want one at WARN naming %s", warned, compacted)
	}
}

// startRefused runs an app of cfg that must refuse to start, and returns why;
// it fails t if the app starts.
func startRefused(t *testing.T, cfg configs.Config) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	built, cleanup, err := wiring.BuildApp(ctx, wiring.BaseConfig(cfg), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	return built.Run(ctx)
}
