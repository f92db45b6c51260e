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
	"database/sql"
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
	var o benchOptions
	flag.IntVar(&o.n, "n", 2000, "events of the handler and outbox measurements")
	flag.IntVar(&o.relayN, "relay-n", 100_000, "events in the pre-filled outbox of the relay measurement")
	flag.IntVar(&o.noopN, "noop-n", 20_000, "events of the do-nothing handler measurement")
	flag.IntVar(&o.latN, "latency", 200, "events for the latency measurement")
	flag.BoolVar(&o.real, "real", false, "use EVENTFN_TEST_KAFKA_BROKERS and EVENTFN_TEST_DATABASE_URL (in a schema of its own)")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintln(os.Stderr, "eventfn-bench:", err)
		os.Exit(1)
	}
}

// benchOptions are the phases' sizes.
type benchOptions struct {
	n, relayN, noopN, latN int
	real                   bool
}

func run(ctx context.Context, o benchOptions) error {
	n, latN, real := o.n, o.latN, o.real
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
		schema := "bench_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
		admin, err := sql.Open("pgx", url)
		if err != nil {
			return err
		}
		defer admin.Close()
		if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+schema); err != nil {
			return fmt.Errorf("create schema %s: %w", schema, err)
		}
		defer admin.ExecContext(context.Background(), `DROP SCHEMA `+schema+` CASCADE`)
		if cfg.Database.URL, err = withSearchPath(url, schema); err != nil {
			return err
		}
		url = cfg.Database.URL
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

	// Ceiling: order+outbox transactions from several clients, as the load
	// benchmark measures it.
	txDriver, txDSN := "pgx", cfg.Database.URL
	if !real {
		txDriver, txDSN = "sqlite", sqliteCeilingDSN(filepath.Join(dir, "ceiling.db"))
	}
	txRate, err := txCeiling(ctx, txDriver, txDSN, 5*time.Second, 1<<40)
	if err != nil {
		return err
	}

	// The relay alone from a pre-filled outbox, beside its ceilings.
	relayFig, err := relayPhase(ctx, cfg, db, o.relayN)
	if err != nil {
		return err
	}
	// A handler that does nothing, beside a raw consumer-group read.
	noopRate, consumeRate, err := noopPhase(ctx, cfg, db, o.noopN)
	if err != nil {
		return err
	}
	// What the consumer path costs before a handler's decode and transaction,
	// at the default Concurrency and at four times it: target 4's room.
	floors := []consumeFloor{
		{inFlight: runtime.DefaultPolicy().Concurrency},
		{inFlight: runtime.DefaultPolicy().Concurrency, viaRouter: true},
		{inFlight: 4 * runtime.DefaultPolicy().Concurrency, viaRouter: true},
	}
	for i, f := range floors {
		if floors[i].rate, err = consumePathFloor(ctx, cfg, o.noopN, f.inFlight, f.viaRouter); err != nil {
			return fmt.Errorf("consumer path floor (%s): %w", f, err)
		}
	}

	sc, err := router.SaramaConfig(cfg.Kafka)
	if err != nil {
		return err
	}
	trigger := cfg.Kafka.Topic(benchEvent{}.EventType())
	if err := router.EnsureTopics(ctx, cfg.Kafka, []string{trigger, cfg.Kafka.Topic(relayedEvent{}.EventType())}, nil); err != nil {
		return err
	}
	// Events are put on the trigger topic with a plain synchronous producer;
	// that is set-up, not measured.
	producer, err := sarama.NewSyncProducer(cfg.Kafka.Brokers, sc)
	if err != nil {
		return err
	}
	defer producer.Close()

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

	// The runtime forwards those rows (set-up for the latency phase, not timed).
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

	fmt.Printf("%-52s %12s\n", "ceiling (same run, same engines)", "rate")
	fmt.Printf("%-52s %10.0f/s\n", "SQL: 1-row transactions, one client", sqlRate)
	fmt.Printf("%-52s %10.0f/s\n", fmt.Sprintf("SQL: order+outbox transactions, %d clients (tx)", ceilingClients), txRate)
	fmt.Printf("%-52s %10.0f/s\n", "SQL: batch read-and-mark of outbox rows (mark)", relayFig.readMark)
	fmt.Printf("%-52s %10.0f/s\n", "Kafka: batched pipelined produce, acks=all (prod)", relayFig.produce)
	fmt.Printf("%-52s %10.0f/s\n", "Kafka: consumer-group read (cons)", consumeRate)
	fmt.Println()
	fmt.Printf("%-52s %12s %14s %7s\n", "eventfn", "rate", "ceiling", "ratio")
	row := func(name string, v float64, baseName string, base float64) {
		fmt.Printf("%-52s %10.0f/s %10.0f/s %-4s %5.2f\n", name, v, base, baseName, v/base)
	}
	row(fmt.Sprintf("relay: pre-filled outbox of %d -> Kafka", relayFig.n), relayFig.relay, minName(relayFig), relayFig.ceiling())
	row("handler that does nothing (inbox + commit)", noopRate, "cons", consumeRate)
	for _, f := range floors {
		row("  floor: "+f.String(), f.rate, "cons", consumeRate)
	}
	row("handler that writes one row", handlerRate, "tx", txRate)
	row("outbox: transactions that emit one event", emitRate, "tx", txRate)
	fmt.Println()
	target := func(name string, ok bool, detail string) {
		verdict := "PASS"
		if !ok {
			verdict = "FAIL"
		}
		fmt.Printf("target %-60s %s  (%s)\n", name, verdict, detail)
	}
	target("3: relay >= 20,000 events/s", relayFig.relay >= 20_000, fmt.Sprintf("%.0f/s", relayFig.relay))
	target("3: relay >= 0.5 x min(produce, read-and-mark)", relayFig.relay >= 0.5*relayFig.ceiling(), fmt.Sprintf("%.2f", relayFig.relay/relayFig.ceiling()))
	target("4: do-nothing handler >= 0.5 x consumer-group read", noopRate >= 0.5*consumeRate, fmt.Sprintf("%.2f", noopRate/consumeRate))
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

// minName names the slower relay ceiling.
func minName(f relayFigures) string {
	if f.produce < f.readMark {
		return "prod"
	}
	return "mark"
}

// consumeFloor is one measurement of the consumer path without a handler's
// work: see consumePathFloor.
type consumeFloor struct {
	inFlight  int
	viaRouter bool
	rate      float64
}

func (f consumeFloor) String() string {
	if f.viaRouter {
		return fmt.Sprintf("dispatch + router, ack only, %d in flight", f.inFlight)
	}
	return fmt.Sprintf("dispatch alone, ack only, %d in flight", f.inFlight)
}
