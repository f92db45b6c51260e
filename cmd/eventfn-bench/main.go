// Command eventfn-bench measures eventfn against baselines taken in the same
// run, on the same engines: raw Kafka produce and consume (Sarama, eventfn's
// client settings) and raw SQL commits. It prints each eventfn figure as a
// ratio of its baseline, so a number means the same on any machine.
//
//	go run ./cmd/eventfn-bench                # embedded engines (kfake, SQLite)
//	eval "$(ci/services.sh env)"; go run ./cmd/eventfn-bench -real   # Apache Kafka, PostgreSQL
//
// `eventfn-bench load` drives eventfn, run as a separate process, over HTTP
// at given rates and concurrency and prints its latency and throughput beside
// the engines' ceilings (load.go; `eventfn-bench load -h`).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/embedded"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

type benchEvent struct {
	ID  string `json:"id"`
	Pad string `json:"pad"`
}

func (benchEvent) EventType() string  { return "bench.event" }
func (e benchEvent) EventKey() string { return e.ID }

func main() {
	if len(os.Args) > 1 && os.Args[1] == "load" {
		os.Exit(loadMain(os.Args[2:]))
	}
	n := flag.Int("n", 2000, "events per throughput measurement")
	lat := flag.Int("latency", 200, "events for the latency measurement")
	real := flag.Bool("real", false, "use EVENTFN_TEST_KAFKA_BROKERS and EVENTFN_TEST_DATABASE_URL")
	flag.Parse()
	if err := run(context.Background(), *n, *lat, *real); err != nil {
		fmt.Fprintln(os.Stderr, "eventfn-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, n, latN int, real bool) error {
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "eventfn-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg.Kafka.Embedded = false
	cfg.Kafka.TopicPrefix = "bench" + uuid.NewString()[:8] + "."
	cfg.Relay.PollInterval = 10 * time.Millisecond // the shipped default, not the test profile's
	engines := "embedded (kfake, SQLite)"
	if real {
		brokers, url := os.Getenv("EVENTFN_TEST_KAFKA_BROKERS"), os.Getenv("EVENTFN_TEST_DATABASE_URL")
		if brokers == "" || url == "" {
			return errors.New("-real needs EVENTFN_TEST_KAFKA_BROKERS and EVENTFN_TEST_DATABASE_URL (ci/services.sh up; eval \"$(ci/services.sh env)\")")
		}
		cfg.Kafka.Brokers = strings.Split(brokers, ",")
		cfg.Database.URL = url
		engines = "Apache Kafka " + strings.Join(cfg.Kafka.Brokers, ",") + ", PostgreSQL"
	} else {
		b, err := embedded.Start("127.0.0.1:0", "", cfg.Kafka.Partitions)
		if err != nil {
			return err
		}
		defer b.Close()
		cfg.Kafka.Brokers = []string{b.Addr()}
		cfg.Database.URL = "sqlite://" + filepath.Join(dir, "bench.db")
	}
	driver, _ := cfg.Database.Driver()
	db, err := store.Open(ctx, store.Config{Driver: store.Driver(driver), SQLitePath: cfg.Database.SQLitePath(dir), URL: cfg.Database.URL, MaxOpenConns: 16})
	if err != nil {
		return err
	}
	defer db.Close()
	table := "bench_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	if _, err := db.ExecContext(ctx, `CREATE TABLE `+table+` (id TEXT PRIMARY KEY, kind TEXT NOT NULL)`); err != nil {
		return err
	}
	defer db.ExecContext(context.Background(), `DROP TABLE `+table)

	fmt.Printf("eventfn-bench: %d events, %s, GOMAXPROCS-bound machine\n\n", n, engines)
	payload := func(id string) benchEvent { return benchEvent{ID: id, Pad: strings.Repeat("x", 160)} }

	// Baseline: raw SQL commits, one row per transaction, one at a time.
	start := time.Now()
	for i := 0; i < n; i++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+table+` (id, kind) VALUES ($1, 'raw')`, uuid.NewString()); err != nil {
			_ = tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	sqlRate := rate(n, time.Since(start))

	// Baseline: raw Kafka, one synchronous produce at a time (as the relay does),
	// then a consumer group reading them all.
	sc, err := router.SaramaConfig(cfg.Kafka)
	if err != nil {
		return err
	}
	rawTopic := cfg.Kafka.Topic("bench.raw")
	trigger := cfg.Kafka.Topic(benchEvent{}.EventType())
	if err := router.EnsureTopics(ctx, cfg.Kafka, []string{rawTopic, trigger, cfg.Kafka.Topic(relayedEvent{}.EventType())}); err != nil {
		return err
	}
	producer, err := sarama.NewSyncProducer(cfg.Kafka.Brokers, sc)
	if err != nil {
		return err
	}
	defer producer.Close()
	start = time.Now()
	for i := 0; i < n; i++ {
		id := uuid.NewString()
		if _, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: rawTopic, Key: sarama.StringEncoder(id), Value: sarama.StringEncoder(`{"id":"` + id + `","pad":"` + payload(id).Pad + `"}`)}); err != nil {
			return err
		}
	}
	produceRate := rate(n, time.Since(start))
	consumeRate, err := consumeAll(ctx, cfg, sc, rawTopic, n)
	if err != nil {
		return err
	}

	// eventfn, handler path alone: n events wait on the trigger topic before the
	// runtime starts; a handler writes one row per event (consumer group,
	// middlewares, inbox, transaction, ack).
	var handled atomic.Int64
	sink := runtime.NewHandler("bench-sink", func(ctx context.Context, tx runtime.Tx, ev benchEvent) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO `+table+` (id, kind) VALUES ($1, 'handled')`, ev.ID); err != nil {
			return err
		}
		handled.Add(1)
		return nil
	})
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	outbox := router.NewOutbox(db, cfg, watermill.NopLogger{})
	for i := 0; i < n; i++ {
		id := uuid.NewString()
		if _, _, err := producer.SendMessage(ceRecord(trigger, id, payload(id))); err != nil {
			return err
		}
	}
	stopRuntime, err := startRuntime(ctx, cfg, db, outbox, sink, logger)
	if err != nil {
		return err
	}
	start = time.Now()
	if err := waitFor(5*time.Minute, func() error {
		if h := handled.Load(); h < int64(n) {
			return fmt.Errorf("%d of %d handled", h, n)
		}
		return nil
	}); err != nil {
		return err
	}
	handlerRate := rate(n, time.Since(start))
	stopRuntime()

	// eventfn, outbox writes alone: n transactions each emit one event of a type
	// no handler consumes, with the runtime stopped.
	start = time.Now()
	for i := 0; i < n; i++ {
		id := uuid.NewString()
		if err := outbox.Transact(ctx, func(ctx context.Context, tx runtime.Tx) error {
			return tx.Emit(ctx, relayedEvent{ID: id, Pad: payload(id).Pad})
		}); err != nil {
			return err
		}
	}
	emitRate := rate(n, time.Since(start))

	// eventfn, relay alone: the runtime starts and forwards those n rows.
	start = time.Now()
	stopRuntime, err = startRuntime(ctx, cfg, db, outbox, sink, logger)
	if err != nil {
		return err
	}
	defer stopRuntime()
	if err := waitFor(5*time.Minute, func() error {
		p, err := outbox.Pending(ctx)
		if err == nil && p > 0 {
			err = fmt.Errorf("%d pending", p)
		}
		return err
	}); err != nil {
		return err
	}
	relayRate := rate(n, time.Since(start))

	// eventfn latency on a quiet system, one event at a time: from the commit of
	// the emitting transaction to the record on Kafka (seen by a plain consumer),
	// and to the commit of the handler's transaction.
	arrived, stopWatch, err := watch(cfg, sc, trigger)
	if err != nil {
		return err
	}
	defer stopWatch()
	// Baseline: a raw synchronous produce until a plain consumer sees it.
	var rawLat []time.Duration
	for i := 0; i < latN; i++ {
		id := uuid.NewString()
		t0 := time.Now()
		if _, _, err := producer.SendMessage(ceRecord(trigger, id, payload(id))); err != nil {
			return err
		}
		select {
		case at := <-arrived:
			rawLat = append(rawLat, at.Sub(t0))
		case <-time.After(30 * time.Second):
			return errors.New("raw latency record not seen within 30s")
		}
	}
	if err := waitFor(time.Minute, func() error {
		if h := handled.Load(); h < int64(n+latN) {
			return fmt.Errorf("%d of %d handled", h, n+latN)
		}
		return nil
	}); err != nil {
		return err
	}
	var toRelayed, toKafka, toHandled []time.Duration
	for i := 0; i < latN; i++ {
		before := handled.Load()
		id := uuid.NewString()
		if err := outbox.Transact(ctx, func(ctx context.Context, tx runtime.Tx) error { return tx.Emit(ctx, payload(id)) }); err != nil {
			return err
		}
		committed := time.Now()
		// Relayed: Kafka acknowledged the record and the relay moved past its row.
		if err := waitFor(30*time.Second, func() error {
			p, err := outbox.Pending(ctx)
			if err == nil && p > 0 {
				err = errors.New("not relayed within 30s")
			}
			return err
		}); err != nil {
			return err
		}
		toRelayed = append(toRelayed, time.Since(committed))
		select {
		case at := <-arrived:
			toKafka = append(toKafka, at.Sub(committed))
		case <-time.After(30 * time.Second):
			return errors.New("latency event not on Kafka within 30s")
		}
		if err := waitFor(30*time.Second, func() error {
			if handled.Load() == before {
				return errors.New("latency event not handled within 30s")
			}
			return nil
		}); err != nil {
			return err
		}
		toHandled = append(toHandled, time.Since(committed))
	}

	fmt.Printf("%-46s %12s %14s %8s\n", "measurement", "rate", "baseline", "ratio")
	row := func(name string, v float64, baseName string, base float64) {
		fmt.Printf("%-46s %10.0f/s %10.0f/s %-3s %7.2f\n", name, v, base, baseName, v/base)
	}
	fmt.Printf("%-46s %10.0f/s\n", "baseline SQL: 1-row transaction commits (sql)", sqlRate)
	fmt.Printf("%-46s %10.0f/s\n", "baseline Kafka: sync produce (prod)", produceRate)
	fmt.Printf("%-46s %10.0f/s\n", "baseline Kafka: consumer group read (cons)", consumeRate)
	row("eventfn handler: consume+inbox+write+ack", handlerRate, "sql", sqlRate)
	row("eventfn handler vs raw consumer group", handlerRate, "cons", consumeRate)
	row("eventfn outbox: transactions that emit", emitRate, "sql", sqlRate)
	row("eventfn relay: outbox -> Kafka", relayRate, "prod", produceRate)
	fmt.Printf("\nlatency on a quiet system, %d events one at a time (relay.poll_interval %s):\n", latN, cfg.Relay.PollInterval)
	for _, l := range []struct {
		name string
		d    []time.Duration
	}{
		{"baseline: produce -> consumer", rawLat},
		{"commit -> relayed (Kafka ack)", toRelayed},
		{"commit -> consumer sees it", toKafka},
		{"commit -> handler committed", toHandled},
	} {
		sort.Slice(l.d, func(i, j int) bool { return l.d[i] < l.d[j] })
		fmt.Printf("  %-28s p50 %-10s p90 %-10s p99 %-10s max %s\n", l.name, pct(l.d, 0.50), pct(l.d, 0.90), pct(l.d, 0.99), l.d[len(l.d)-1].Round(time.Microsecond))
	}
	return nil
}

// relayedEvent is emitted but consumed by no handler: it measures the relay alone.
type relayedEvent struct {
	ID  string `json:"id"`
	Pad string `json:"pad"`
}

func (relayedEvent) EventType() string  { return "bench.relayed" }
func (e relayedEvent) EventKey() string { return e.ID }

// startRuntime runs a runtime with the one handler until the returned stop is called.
func startRuntime(ctx context.Context, cfg configs.Config, db *store.DB, outbox *router.Outbox, h runtime.Handler, logger *slog.Logger) (func(), error) {
	rt, err := router.New(cfg, db, outbox, []runtime.Handler{h}, prometheus.NewRegistry(), logger)
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rt.Run(runCtx, cfg.Kafka.Topic(relayedEvent{}.EventType())) }()
	stopped := false
	stopFn := func() {
		if !stopped {
			stopped = true
			stop()
			<-done
		}
	}
	if err := waitFor(2*time.Minute, func() error { return rt.Ready(ctx) }); err != nil {
		stopFn()
		return nil, err
	}
	return stopFn, nil
}

// watch reports the arrival time of every new record on topic.
func watch(cfg configs.Config, sc *sarama.Config, topic string) (<-chan time.Time, func(), error) {
	client, err := sarama.NewClient(cfg.Kafka.Brokers, sc)
	if err != nil {
		return nil, nil, err
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	parts, err := client.Partitions(topic)
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	arrived := make(chan time.Time, 16)
	var pcs []sarama.PartitionConsumer
	for _, p := range parts {
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetNewest)
		if err != nil {
			client.Close()
			return nil, nil, err
		}
		pcs = append(pcs, pc)
		go func() {
			for range pc.Messages() {
				arrived <- time.Now()
			}
		}()
	}
	return arrived, func() {
		for _, pc := range pcs {
			pc.AsyncClose()
		}
		consumer.Close()
		client.Close()
	}, nil
}

func ceRecord(topic, id string, ev benchEvent) *sarama.ProducerMessage {
	return &sarama.ProducerMessage{
		Topic: topic, Key: sarama.StringEncoder(id),
		Value: sarama.StringEncoder(`{"id":"` + id + `","pad":"` + ev.Pad + `"}`),
		Headers: []sarama.RecordHeader{
			{Key: []byte(router.HeaderID), Value: []byte(id)},
			{Key: []byte(router.HeaderType), Value: []byte(ev.EventType())},
			{Key: []byte(router.HeaderSpecVersion), Value: []byte("1.0")},
		},
	}
}

type countingHandler struct {
	want int
	got  atomic.Int64
	done chan struct{}
}

func (h *countingHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *countingHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *countingHandler) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	for m := range c.Messages() {
		s.MarkMessage(m, "")
		if h.got.Add(1) == int64(h.want) {
			close(h.done)
		}
	}
	return nil
}

// consumeAll reads n records of topic through a fresh consumer group and
// returns the rate from the first record to the last.
func consumeAll(ctx context.Context, cfg configs.Config, sc *sarama.Config, topic string, n int) (float64, error) {
	group, err := sarama.NewConsumerGroup(cfg.Kafka.Brokers, cfg.Kafka.Group("bench-raw-"+uuid.NewString()[:8]), sc)
	if err != nil {
		return 0, err
	}
	defer group.Close()
	h := &countingHandler{want: n, done: make(chan struct{})}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Timed from joining, as the handler phase is: a batch fetch delivers
	// thousands of records within a millisecond, so first-to-last would
	// measure memory, not Kafka.
	start := time.Now()
	go func() {
		for cctx.Err() == nil {
			_ = group.Consume(cctx, []string{topic}, h)
		}
	}()
	select {
	case <-h.done:
	case <-time.After(5 * time.Minute):
		return 0, errors.New("raw consume timed out")
	}
	return rate(n, time.Since(start)), nil
}

func waitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func rate(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }

func pct(d []time.Duration, p float64) time.Duration {
	return d[int(p*float64(len(d)-1))].Round(time.Microsecond)
}
