package main

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/store"
)

// The engines' ceilings, taken in the same run as the load figures: what the
// database and the broker do with nothing of eventfn in the way.

// ceilingClients is the number of concurrent SQL clients of the transaction
// ceiling.
const ceilingClients = 4

// A realistic order.placed event, as eventfn writes it to its outbox: the
// payload and the CloudEvents metadata.
var (
	ceilingPayload  = `{"order_id":"%s","customer_email":"load-1@example.com","items":[{"sku":"SKU-1","quantity":2,"price_cents":1250},{"sku":"SKU-BOOK","quantity":1,"price_cents":499}],"total_cents":2999}`
	ceilingMetadata = `{"ce_type":"order.placed","ce_source":"eventfn","ce_specversion":"1.0","ce_time":"2026-11-22T10:00:00.000000000Z","content-type":"application/json","correlation_id":"%s","eventfn_key":"%s"}`
)

// txCeiling commits order+outbox transactions from ceilingClients concurrent
// clients for d (at most maxTx in all): each inserts one order row and one
// outbox row into scratch tables of its own. On SQLite the clients share one
// writer connection of a separate WAL file, as eventfn's writers do; on
// PostgreSQL each has its own connection. Statements are prepared once on
// both: pgx keeps them by default, and on SQLite the connection keeps them
// through store.OpenSQLite, as eventfn's do.
func txCeiling(ctx context.Context, driverName, dsn string, d time.Duration, maxTx int64) (float64, error) {
	open := sql.Open
	if driverName == "sqlite" {
		open = func(_, dsn string) (*sql.DB, error) { return store.OpenSQLite(dsn) }
	}
	db, err := open(driverName, dsn)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	ddl := []string{
		`CREATE TABLE bench_ceiling_orders (id TEXT PRIMARY KEY, customer_email TEXT NOT NULL, total_cents BIGINT NOT NULL,
			status TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
		`CREATE TABLE bench_ceiling_outbox ("offset" BIGSERIAL PRIMARY KEY, uuid TEXT NOT NULL, topic TEXT NOT NULL,
			payload JSON NOT NULL, metadata JSON NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
	}
	if driverName == "sqlite" {
		db.SetMaxOpenConns(1)
		ddl = []string{
			`CREATE TABLE bench_ceiling_orders (id TEXT PRIMARY KEY, customer_email TEXT NOT NULL, total_cents INTEGER NOT NULL,
				status TEXT NOT NULL, created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)`,
			`CREATE TABLE bench_ceiling_outbox ("offset" INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT NOT NULL, topic TEXT NOT NULL,
				payload TEXT NOT NULL, metadata TEXT NOT NULL, created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)`,
		}
	} else {
		db.SetMaxOpenConns(ceilingClients)
		db.SetMaxIdleConns(ceilingClients)
	}
	for _, q := range ddl {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return 0, fmt.Errorf("create scratch table: %w", err)
		}
	}
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, ceilingClients)
	start := time.Now()
	end := start.Add(d)
	for c := 0; c < ceilingClients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(end) && done.Load() < maxTx {
				id := uuid.NewString()
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					errs <- err
					return
				}
				_, err = tx.ExecContext(ctx, `INSERT INTO bench_ceiling_orders (id, customer_email, total_cents, status) VALUES ($1, $2, $3, $4)`,
					id, "load-1@example.com", 2999, "placed")
				if err == nil {
					_, err = tx.ExecContext(ctx, `INSERT INTO bench_ceiling_outbox (uuid, topic, payload, metadata) VALUES ($1, $2, $3, $4)`,
						uuid.NewString(), "order.placed", fmt.Sprintf(ceilingPayload, id), fmt.Sprintf(ceilingMetadata, id, id))
				}
				if err != nil {
					_ = tx.Rollback()
					errs <- err
					return
				}
				if err := tx.Commit(); err != nil {
					errs <- err
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	select {
	case err := <-errs:
		return 0, fmt.Errorf("order+outbox transaction: %w", err)
	default:
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return rate(int(done.Load()), took), nil
}

// sqliteCeilingDSN is a WAL SQLite file with eventfn's own settings.
func sqliteCeilingDSN(path string) string {
	q := url.Values{}
	for _, p := range []string{"busy_timeout(15000)", "journal_mode(WAL)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	return "file:" + path + "?" + q.Encode()
}

// ceilingRecord is a record of the size and shape the relay produces.
func ceilingRecord(topic string) *kgo.Record {
	id := uuid.NewString()
	return &kgo.Record{
		Topic: topic, Key: []byte(id), Value: []byte(fmt.Sprintf(ceilingPayload, id)),
		Headers: []kgo.RecordHeader{
			{Key: "ce_id", Value: []byte(uuid.NewString())},
			{Key: "ce_type", Value: []byte("order.placed")},
			{Key: "ce_source", Value: []byte("eventfn")},
			{Key: "ce_specversion", Value: []byte("1.0")},
			{Key: "content-type", Value: []byte("application/json")},
			{Key: "correlation_id", Value: []byte(id)},
		},
	}
}

// produceCeiling creates topic and produces n records to it, batched and
// pipelined: acks=all, the idempotent producer, a 2 ms linger and up to n
// records buffered. It returns records/s from the first produce to the last ack.
func produceCeiling(ctx context.Context, brokers []string, topic string, partitions, rf, n int, timeout time.Duration) (float64, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ClientID("eventfn-bench-produce"),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(2*time.Millisecond),
		kgo.MaxBufferedRecords(n),
		kgo.ProducerBatchMaxBytes(1_000_000),
	)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := kadm.NewClient(cl).CreateTopics(ctx, int32(partitions), int16(rf), nil, topic)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", topic, err)
	}
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = ceilingRecord(topic)
	}
	var failed atomic.Int64
	var (
		mu       sync.Mutex
		firstErr error
	)
	start := time.Now()
	for _, r := range recs {
		cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.Add(1)
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return 0, fmt.Errorf("produce %d records: %w", n, err)
	}
	took := time.Since(start)
	if f := failed.Load(); f > 0 {
		mu.Lock()
		defer mu.Unlock()
		return 0, fmt.Errorf("%d of %d records failed: %w", f, n, firstErr)
	}
	return rate(n, took), nil
}

// consumeCeiling reads n records of topic through a fresh consumer group,
// timed from joining the group to the n-th record.
func consumeCeiling(ctx context.Context, brokers []string, group, topic string, n int, timeout time.Duration) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ClientID("eventfn-bench-consume"),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	got := 0
	for got < n {
		fs := cl.PollRecords(ctx, 10_000)
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("read %d of %d records: %w", got, n, err)
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) { ferr = fmt.Errorf("%s[%d]: %w", t, p, err) })
		if ferr != nil {
			return 0, ferr
		}
		got += fs.NumRecords()
	}
	return rate(got, time.Since(start)), nil
}

// withSearchPath adds search_path=schema to a PostgreSQL URL; pgx passes it
// to the server as a run-time parameter, so unqualified tables live in schema.
func withSearchPath(raw, schema string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("EVENTFN_TEST_DATABASE_URL: %w", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
