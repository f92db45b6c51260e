package relay_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/eventfn/eventfn/embedded"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/store"
)

// TestABrokerOutageIsLoggedOnceAndItsEndOnce: while the broker is away the
// relay retries many times, but logs the outage once (ERROR), not once per
// retry, shows it in Healthy, and logs its end once (INFO) when the rows
// behind it are forwarded. The relay used to count a batch merely handed to
// the producer as a recovery, so every retry logged the outage afresh. It
// stops and restarts the broker, so the broker is the embedded one; the
// database is the one the environment names.
func TestABrokerOutageIsLoggedOnceAndItsEndOnce(t *testing.T) {
	e := open(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	dataDir := t.TempDir()
	broker, err := embedded.Start(addr, dataDir, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.brokers = []string{addr}
	topic := e.topic(t, 1)

	logs := &testenv.LogBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("relay log:\n%s", logs.String())
		}
	})
	p, err := relay.NewProducer(relay.ProducerConfig{Brokers: e.brokers, MaxRecordBytes: 1_000_000, DeliveryTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := relay.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	r := relay.New(relay.Config{BatchSize: 10, PollInterval: 10 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond},
		relay.NewTable(e.db), p, relay.NewLease(e.db), m, slog.New(slog.NewTextHandler(logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		p.Close()
	})
	row := func(i int) relay.Record {
		return relay.Record{Topic: topic, Key: []byte("k"), Headers: map[string]string{"ce_id": fmt.Sprint(i)}, Payload: []byte(fmt.Sprint(i))}
	}
	insert(t, e, []relay.Record{row(0)}, 1)
	waitFor(t, "the first row forwarded", 30*time.Second, func() bool { return stats(t, e).Pending == 0 })

	broker.Close()
	var more []relay.Record
	for i := 1; i <= 30; i++ {
		more = append(more, row(i))
	}
	insert(t, e, more, 1)
	waitFor(t, "three failed attempts", 90*time.Second, func() bool { return counter(t, reg, "eventfn_relay_errors_total") >= 3 })
	if err := r.Healthy(); err == nil || !strings.Contains(err.Error(), "since") {
		t.Errorf("Healthy() = %v during the outage, want since when and why", err)
	}
	if n := counter(t, reg, "eventfn_relay_healthy"); n != 0 {
		t.Errorf("eventfn_relay_healthy = %v during the outage", n)
	}

	broker, err = embedded.Start(addr, dataDir, 1)
	if err != nil {
		t.Fatalf("restart the broker on %s: %v", addr, err)
	}
	t.Cleanup(broker.Close)
	waitFor(t, "the rows behind the outage forwarded", 60*time.Second, func() bool { return stats(t, e).Pending == 0 })
	waitFor(t, "the relay healthy again", 10*time.Second, func() bool { return r.Healthy() == nil })

	out := logs.String()
	if n := strings.Count(out, "level=ERROR"); n != 1 {
		t.Errorf("%d ERROR lines over %v failed attempts, want 1:\n%s", n, counter(t, reg, "eventfn_relay_errors_total"), out)
	}
	if n := strings.Count(out, `msg="outbox relay produces to every topic again"`); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, out)
	}
	if n := counter(t, reg, "eventfn_relay_healthy"); n != 1 {
		t.Errorf("eventfn_relay_healthy = %v after the outage", n)
	}
}

// counter reads one unlabelled counter or gauge from reg.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	return -1
}

// awayThenStandby is a lease whose database is away for its first attempts,
// and then held by another relay: Acquire stands by until ctx ends.
type awayThenStandby struct{ away int }

func (l *awayThenStandby) Acquire(ctx context.Context, standby func()) error {
	if l.away > 0 {
		l.away--
		return fmt.Errorf("relay lease: connect: %w", net.ErrClosed)
	}
	standby()
	<-ctx.Done()
	return ctx.Err()
}
func (*awayThenStandby) Held(context.Context) bool { return false }
func (*awayThenStandby) Release()                  {}
func (*awayThenStandby) Leading() bool             { return false }
func (*awayThenStandby) Fenced(context.Context, func(context.Context, relay.Execer) error) error {
	return errors.New("not leading")
}

// TestAStandbyIsHealthyOnceTheDatabaseAnswers: a replica that waits for the
// lease while another forwards reported the database outage it saw before
// (a restart of PostgreSQL) until it led again, and /readyz said 503
// meanwhile; it is healthy once the database answers and it stands by.
func TestAStandbyIsHealthyOnceTheDatabaseAnswers(t *testing.T) {
	e := open(t)
	m, err := relay.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.LogBuffer{}
	r := relay.New(relay.Config{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}, relay.NewTable(e.db), nil,
		&awayThenStandby{away: 3}, m, slog.New(slog.NewTextHandler(logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "the outage seen and then the standby healthy", 30*time.Second, func() bool {
		return strings.Contains(logs.String(), "level=ERROR") && r.Healthy() == nil &&
			strings.Contains(logs.String(), "this one waits to take over")
	})
}

// TestRowsOnKafkaWhoseMarkFailedAreNotSentAgain: a database that takes
// reads but no writes (PostgreSQL turned read-only: a failover to a
// standby, a managed service whose disk filled) lets the relay read and
// produce a batch, then refuses its mark. The relay read the same rows again
// after each backoff and sent them again, one more copy of every row per
// retry for as long as the window lasted. It now keeps the ids and marks
// them before it reads again: each row reaches Kafka once. PostgreSQL only:
// SQLite has no state that takes reads but refuses this write, and the
// relay's part of it is the same on both.
//
// Draining a backlog, a batch's mark runs while the next batch is acked
// (markBehind): the second case is a backlog of full batches, whose refused
// marks surface a batch later.
func TestRowsOnKafkaWhoseMarkFailedAreNotSentAgain(t *testing.T) {
	for _, tc := range []struct {
		name      string
		rows      int
		batchSize int
	}{
		{"one batch", 20, 100},
		{"a backlog of full batches", 60, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pg := testenv.NewPostgresDatabase(t, testenv.RequirePostgres(t))
			ctx := context.Background()
			db, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: pg.URL, MaxOpenConns: 8})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			e := open(t)
			e.db = db
			topic := e.topic(t, 1)
			var recs []relay.Record
			for i := range tc.rows {
				recs = append(recs, relay.Record{Topic: topic, Key: []byte("k"), Headers: map[string]string{"ce_id": fmt.Sprint(i)}, Payload: []byte(fmt.Sprint(i))})
			}
			insert(t, e, recs, tc.rows)
			pg.SetReadOnly(t, true)

			p, m := producerAndMetrics(t, e)
			logs := &testenv.LogBuffer{}
			r := relay.New(relay.Config{BatchSize: tc.batchSize, PollInterval: 10 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond},
				relay.NewTable(e.db), p, relay.NewLease(e.db), m, slog.New(slog.NewTextHandler(logs, nil)))
			run(t, r)
			waitFor(t, "the relay to report the refused mark", 30*time.Second, func() bool {
				err := r.Healthy()
				return err != nil && strings.Contains(err.Error(), "read-only")
			})
			time.Sleep(time.Second) // the window's length: some twenty retries; not synchronisation
			pg.SetReadOnly(t, false)
			waitFor(t, "every row marked once writes are taken", 30*time.Second, func() bool { return stats(t, e).Pending == 0 })
			waitFor(t, "the relay healthy again", 30*time.Second, func() bool { return r.Healthy() == nil })
			got := consume(t, e, topic, tc.rows)
			for i, rec := range got {
				if string(rec.Value) != fmt.Sprint(i) {
					t.Fatalf("record %d is %q: the key's order was lost", i, rec.Value)
				}
			}
			if got := endOffset(t, e, topic); got != int64(tc.rows) {
				t.Fatalf("%d records on Kafka for %d rows: rows were sent again while their mark failed\n%s", got, tc.rows, logs.String())
			}
		})
	}
}

// endOffset is how many records topic holds.
func endOffset(t *testing.T, e engines, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ends, err := e.admin(t).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
	return total
}

// TestARelayWhoseStatementsTimeOutGoesOnWithSmallerBatches: a database
// whose statement_timeout is shorter than the mark of a whole batch (a
// trigger makes each row's update take 5 ms, so 500 rows take 2.5 s against
// a timeout of 300 ms) once stopped the relay for good: it retried the same
// batch, cancelled each time. It now halves its batches until they get
// through, sends no row twice meanwhile (the rows on Kafka are marked in
// smaller statements before anything is read again), keeps each key's
// order, and grows its batches back once the statements get through again.
// The second case is a backlog, whose marks run behind the next batch.
func TestARelayWhoseStatementsTimeOutGoesOnWithSmallerBatches(t *testing.T) {
	for _, tc := range []struct {
		name string
		rows int
	}{
		{"one batch", 200},
		{"a backlog of full batches", 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const batchSize = 500
			pg := testenv.NewPostgresDatabase(t, testenv.RequirePostgres(t))
			ctx := context.Background()
			setup, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: pg.URL, MaxOpenConns: 4})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = setup.Close() })
			if _, err := setup.ExecContext(ctx, `CREATE FUNCTION slow_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$`); err != nil {
				t.Fatal(err)
			}
			if _, err := setup.ExecContext(ctx, `CREATE TRIGGER slow_update BEFORE UPDATE ON eventfn_outbox FOR EACH ROW EXECUTE FUNCTION slow_update()`); err != nil {
				t.Fatal(err)
			}
			e := open(t)
			e.db = setup
			topic := e.topic(t, 3)
			var recs []relay.Record
			for i := range tc.rows {
				recs = append(recs, relay.Record{Topic: topic, Key: []byte(fmt.Sprint(i % 7)), Headers: map[string]string{"ce_id": fmt.Sprint(i)}, Payload: []byte(fmt.Sprint(i))})
			}
			insert(t, e, recs, 100)

			pg.Set(t, "statement_timeout", "300ms")
			db, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: pg.URL, MaxOpenConns: 8})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			e.db = db
			p, _ := producerAndMetrics(t, e)
			reg := prometheus.NewRegistry()
			m, err := relay.NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			logs := &testenv.LogBuffer{}
			r := relay.New(relay.Config{BatchSize: batchSize, PollInterval: 10 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, RegrowAfter: 200 * time.Millisecond},
				relay.NewTable(db), p, relay.NewLease(db), m, slog.New(slog.NewTextHandler(logs, nil)))
			run(t, r)
			waitFor(t, "every row forwarded and marked", 60*time.Second, func() bool { return stats(t, e).Pending == 0 })
			if got := counter(t, reg, "eventfn_relay_forwarded_total"); got != float64(tc.rows) {
				t.Errorf("eventfn_relay_forwarded_total = %v for %d rows", got, tc.rows)
			}
			if !strings.Contains(logs.String(), "statement_timeout") {
				t.Errorf("no warning named statement_timeout:\n%s", logs.String())
			}
			byKey := map[string][]int{}
			for _, rec := range consume(t, e, topic, tc.rows) {
				var n int
				if _, err := fmt.Sscan(string(rec.Value), &n); err != nil {
					t.Fatal(err)
				}
				k := string(rec.Key)
				if l := byKey[k]; len(l) > 0 && l[len(l)-1] >= n {
					t.Fatalf("key %s: row %d after row %d", k, n, l[len(l)-1])
				}
				byKey[k] = append(byKey[k], n)
			}
			if got := endOffset(t, e, topic); got != int64(tc.rows) {
				t.Fatalf("%d records on Kafka for %d rows: rows were sent again while their marks timed out\n%s", got, tc.rows, logs.String())
			}

			if _, err := setup.ExecContext(ctx, `DROP TRIGGER slow_update ON eventfn_outbox`); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "batches back to relay.batch_size", 30*time.Second, func() bool {
				return counter(t, reg, "eventfn_relay_batch_limit") == batchSize
			})
		})
	}
}
