package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/router/dispatch"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// relayFigures are the relay phase's result and its same-run ceilings.
type relayFigures struct {
	n                        int
	relay, produce, readMark float64
}

// ceiling is the slower of the two things the relay must do.
func (f relayFigures) ceiling() float64 { return min(f.produce, f.readMark) }

// relayPhase measures the relay alone draining a pre-filled outbox of n
// events, and beside it, on the same rows and records, the two ceilings it
// cannot beat: a raw batched, pipelined produce of n such records (franz-go,
// acks=all, idempotent) and a raw SQL batch read-and-mark of the n rows (read
// a batch in id order, mark it in one statement, as fast as the database
// goes).
func relayPhase(ctx context.Context, cfg configs.Config, db *store.DB, n int) (relayFigures, error) {
	f := relayFigures{n: n}
	outbox := router.NewOutbox(db, cfg, watermill.NopLogger{})
	pad := strings.Repeat("x", 160)
	const perTx = 500
	for done := 0; done < n; {
		k := min(perTx, n-done)
		if err := outbox.Transact(ctx, func(ctx context.Context, tx runtime.Tx) error {
			evs := make([]runtime.Event, k)
			for i := range evs {
				evs[i] = relayedEvent{ID: uuid.NewString(), Pad: pad}
			}
			return tx.Emit(ctx, evs...)
		}); err != nil {
			return f, fmt.Errorf("fill the outbox: %w", err)
		}
		done += k
	}
	topic := cfg.Kafka.Topic(relayedEvent{}.EventType())
	if err := router.EnsureTopics(ctx, cfg.Kafka, []string{topic}, nil); err != nil {
		return f, err
	}

	// Ceiling: raw SQL batch read-and-mark of these rows, then put them back.
	var err error
	if f.readMark, err = readAndMark(ctx, db, cfg.Relay.BatchSize); err != nil {
		return f, err
	}
	// Ceiling: a raw batched produce of as many records of the same shape.
	if f.produce, err = produceCeiling(ctx, cfg.Kafka.Brokers, cfg.Kafka.Topic("bench.produce-ceiling"), cfg.Kafka.Partitions, cfg.Kafka.ReplicationFactor, n, 5*time.Minute); err != nil {
		return f, err
	}

	// eventfn's relay, as the runtime builds it, on the pre-filled outbox.
	p, err := relay.NewProducer(relay.ProducerConfig{Brokers: cfg.Kafka.Brokers, ClientID: "eventfn-bench-relay", MaxRecordBytes: cfg.Kafka.MaxMessageBytes})
	if err != nil {
		return f, err
	}
	defer p.Close()
	reg := prometheus.NewRegistry()
	m, err := relay.NewMetrics(reg)
	if err != nil {
		return f, err
	}
	r := relay.New(relay.Config{BatchSize: cfg.Relay.BatchSize, PollInterval: cfg.Relay.PollInterval},
		relay.NewTable(db), p, relay.NewLease(db), m, slog.New(slog.DiscardHandler))
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- r.Run(runCtx) }()
	// The relay's own count of rows forwarded says when it is done, read
	// every millisecond in this process. Polling the table instead (a COUNT
	// of pending rows every 10 ms) slowed the relay it measured, from
	// 51,000–57,000 to 40,000 rows/s on PostgreSQL (2026-12-04): the
	// partial index of pending rows keeps the entries of rows marked since,
	// until a vacuum, and every count visited them all.
	deadline := time.Now().Add(5 * time.Minute)
	for {
		forwarded, gerr := counterValue(reg, "eventfn_relay_forwarded_total")
		if gerr == nil && forwarded >= float64(n) {
			break
		}
		if time.Now().After(deadline) {
			err = fmt.Errorf("relay phase: %.0f of %d forwarded after 5 minutes (%v)", forwarded, n, gerr)
			break
		}
		time.Sleep(time.Millisecond)
	}
	f.relay = rate(n, time.Since(start))
	stop()
	<-done
	if err == nil {
		// Every row was counted once: none may still be pending.
		if pending, perr := outbox.Pending(ctx); perr != nil || pending != 0 {
			err = fmt.Errorf("relay phase: the relay counted %d rows forwarded, but %d are still pending (%v)", n, pending, perr)
		}
	}
	return f, err
}

// counterValue reads the counter named name from reg.
func counterValue(reg prometheus.Gatherer, name string) (float64, error) {
	families, err := reg.Gather()
	if err != nil {
		return 0, fmt.Errorf("gather metrics: %w", err)
	}
	for _, mf := range families {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue(), nil
		}
	}
	return 0, fmt.Errorf("no counter %s", name)
}

// readAndMark reads the pending outbox rows batch by batch in id order and
// marks each batch forwarded in one statement: the SQL part of a relay with
// nothing else in the way. It then marks them pending again.
func readAndMark(ctx context.Context, db *store.DB, batch int) (float64, error) {
	start := time.Now()
	n := 0
	for {
		rows, err := db.Read.QueryContext(ctx, `SELECT id, topic, key, headers, payload FROM eventfn_outbox WHERE state = 0 ORDER BY id LIMIT $1`, batch)
		if err != nil {
			return 0, err
		}
		var ids []int64
		for rows.Next() {
			var id int64
			var topic, headers string
			var key, payload []byte
			if err := rows.Scan(&id, &topic, &key, &headers, &payload); err != nil {
				_ = rows.Close()
				return 0, err
			}
			ids = append(ids, id)
		}
		if err := rows.Close(); err != nil {
			return 0, err
		}
		if len(ids) == 0 {
			break
		}
		if err := markIDs(ctx, db, ids); err != nil {
			return 0, err
		}
		n += len(ids)
	}
	took := time.Since(start)
	if _, err := db.ExecContext(ctx, `UPDATE eventfn_outbox SET state = 0, done_at = NULL WHERE state = 1`); err != nil {
		return 0, fmt.Errorf("put the rows back: %w", err)
	}
	if db.Driver == store.Postgres {
		// The read-and-mark left a dead tuple per row; the relay must not pay for it.
		if _, err := db.ExecContext(ctx, `VACUUM ANALYZE eventfn_outbox`); err != nil {
			return 0, err
		}
	}
	return rate(n, took), nil
}

func markIDs(ctx context.Context, db *store.DB, ids []int64) error {
	if db.Driver == store.Postgres {
		_, err := db.ExecContext(ctx, `UPDATE eventfn_outbox SET state = 1, done_at = now() WHERE id = ANY($1)`, ids)
		return err
	}
	args := make([]any, len(ids))
	marks := make([]string, len(ids))
	for i, id := range ids {
		args[i] = id
		marks[i] = fmt.Sprintf("$%d", i+1)
	}
	_, err := db.ExecContext(ctx, `UPDATE eventfn_outbox SET state = 1, done_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id IN (`+strings.Join(marks, ",")+`)`, args...)
	return err
}

// noopEvent decodes the ceiling records (order.placed-shaped).
type noopEvent struct {
	OrderID string `json:"order_id"`
}

func (noopEvent) EventType() string { return "bench.noop" }

// noopPhase measures a handler that does nothing (eventfn still decodes the
// event, claims it in the inbox and commits) reading n records, next to a raw
// consumer-group read of the same topic in the same run.
func noopPhase(ctx context.Context, cfg configs.Config, db *store.DB, n int) (handler, consume float64, err error) {
	topic := cfg.Kafka.Topic(noopEvent{}.EventType())
	if _, err := produceCeiling(ctx, cfg.Kafka.Brokers, topic, cfg.Kafka.Partitions, cfg.Kafka.ReplicationFactor, n, 5*time.Minute); err != nil {
		return 0, 0, err
	}
	if consume, err = consumeCeiling(ctx, cfg.Kafka.Brokers, cfg.Kafka.Topic("bench-raw-consumer"), topic, n, 5*time.Minute); err != nil {
		return 0, 0, err
	}
	var handled atomic.Int64
	h := runtime.NewHandler("bench-noop", func(context.Context, runtime.Tx, noopEvent) error {
		handled.Add(1)
		return nil
	})
	outbox := router.NewOutbox(db, cfg, watermill.NopLogger{})
	start := time.Now()
	stop, err := startRuntime(ctx, cfg, db, outbox, h, slog.New(slog.DiscardHandler))
	if err != nil {
		return 0, consume, err
	}
	defer stop()
	err = waitFor(10*time.Minute, func() error {
		if got := handled.Load(); got < int64(n) {
			return fmt.Errorf("%d of %d handled", got, n)
		}
		return nil
	})
	return rate(n, time.Since(start)), consume, err
}

// consumePathFloor measures the part of a handler's path that has nothing to
// do with the database or the event's type, on the n records noopPhase read:
// the dispatch subscriber (franz-go consumer group, per-key hand-out, offset
// commits) with one loop that acknowledges each event as it arrives, or, with
// viaRouter, the same subscriber under a Watermill router whose one handler
// only acknowledges. No CloudEvents mapping, no decode, no inbox, no
// transaction: whatever a handler does, eventfn's consumer path runs no faster
// than this.
func consumePathFloor(ctx context.Context, cfg configs.Config, n, inFlight int, viaRouter bool) (float64, error) {
	topic := cfg.Kafka.Topic(noopEvent{}.EventType())
	sub, err := dispatch.NewSubscriber(dispatch.Config{
		Brokers:     cfg.Kafka.Brokers,
		ClientID:    "eventfn-bench-floor",
		Group:       cfg.Kafka.Topic(fmt.Sprintf("bench-floor-%d-%t", inFlight, viaRouter)),
		Unmarshal:   func(r *kgo.Record) *message.Message { return message.NewMessage(string(r.Key), r.Value) },
		MaxInFlight: inFlight,
	})
	if err != nil {
		return 0, err
	}
	var handled atomic.Int64
	start := time.Now()
	stop, err := runFloorConsumer(ctx, sub, topic, viaRouter, func() { handled.Add(1) })
	if err != nil {
		_ = sub.Close()
		return 0, err
	}
	err = waitFor(10*time.Minute, func() error {
		if got := handled.Load(); got < int64(n) {
			return fmt.Errorf("%d of %d acknowledged", got, n)
		}
		return nil
	})
	took := time.Since(start)
	if serr := stop(); err == nil && serr != nil {
		err = serr
	}
	return rate(n, took), err
}

// runFloorConsumer starts acknowledging sub's events on topic, calling
// handled once for each; stop ends it and closes sub.
func runFloorConsumer(ctx context.Context, sub *dispatch.Subscriber, topic string, viaRouter bool, handled func()) (stop func() error, err error) {
	if !viaRouter {
		msgs, err := sub.Subscribe(ctx, topic)
		if err != nil {
			return nil, err
		}
		go func() {
			for m := range msgs {
				handled()
				m.Ack()
			}
		}()
		return sub.Close, nil
	}
	wr, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, watermill.NopLogger{})
	if err != nil {
		return nil, err
	}
	wr.AddConsumerHandler("bench-floor", topic, sub, func(*message.Message) error {
		handled()
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- wr.Run(ctx) }()
	return func() error {
		// Run returns only after Close (a cancelled context does not end
		// it); Close also closes the subscriber.
		err := wr.Close()
		if rerr := <-done; err == nil {
			err = rerr
		}
		return err
	}, nil
}
