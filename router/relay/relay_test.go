package relay_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/embedded"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/store"
)

type engines struct {
	db      *store.DB
	brokers []string
	// url is the PostgreSQL URL of db's schema; empty on SQLite.
	url string
}

// open gives a fresh database (PostgreSQL schema or SQLite file) and Kafka
// (real or embedded), as the environment names them.
func open(t *testing.T) engines {
	t.Helper()
	ctx := context.Background()
	var e engines
	cfg := store.Config{Driver: store.SQLite, SQLitePath: filepath.Join(t.TempDir(), "relay.db")}
	if u := testenv.DatabaseURL(); u != "" {
		e.url = testenv.PostgresSchema(t, u)
		cfg = store.Config{Driver: store.Postgres, URL: e.url, MaxOpenConns: 8}
	}
	db, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	e.db = db
	if b := testenv.KafkaBrokers(); len(b) > 0 {
		e.brokers = b
	} else {
		b, err := embedded.Start("127.0.0.1:0", "", 4)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		e.brokers = []string{b.Addr()}
	}
	return e
}

func (e engines) topic(t *testing.T, partitions int32) string {
	t.Helper()
	topic := testenv.UniqueName("relay-")
	testenv.DeleteTopicsAtCleanup(t, topic)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.admin(t).CreateTopic(ctx, partitions, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	return topic
}

// admin is a Kafka admin client of the engines' brokers, closed when the
// test ends.
func (e engines) admin(t *testing.T) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// insert writes recs to the outbox, in transactions of perTx rows.
func insert(t *testing.T, e engines, recs []relay.Record, perTx int) {
	t.Helper()
	table := relay.NewTable(e.db)
	ctx := context.Background()
	for len(recs) > 0 {
		n := min(perTx, len(recs))
		tx, err := e.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs[:n] {
			if err := table.Insert(ctx, tx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		recs = recs[n:]
	}
}

// start runs a relay until the test ends.
func start(t *testing.T, e engines, maxBytes int, lease relay.Lease) *relay.Relay {
	t.Helper()
	p, err := relay.NewProducer(relay.ProducerConfig{Brokers: e.brokers, MaxRecordBytes: maxBytes, DeliveryTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	m, err := relay.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close) // after the relay stops: cleanups run last first
	r := relay.New(relay.Config{BatchSize: 100, PollInterval: 10 * time.Millisecond}, relay.NewTable(e.db), p, lease, m, slog.New(slog.DiscardHandler))
	run(t, r)
	return r
}

// stoppable runs r until stop is called; stopped then waits for Run to
// return, and fails t if it returns an error or takes over a minute.
func stoppable(t *testing.T, r *relay.Relay) (stop, stopped func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	return cancel, func() {
		t.Helper()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(time.Minute):
			t.Fatal("the relay did not stop")
		}
	}
}

// run runs r until the test ends.
func run(t *testing.T, r *relay.Relay) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// consume reads topic from the start until want records arrived.
func consume(t *testing.T, e engines, topic string, want int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var got []*kgo.Record
	for len(got) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records from %s before the deadline", len(got), want, topic)
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, r) })
	}
	return got
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func stats(t *testing.T, e engines) relay.Stats {
	t.Helper()
	s, err := relay.NewTable(e.db).Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRelayForwardsEveryRowKeepingEachKeysOrder: a backlog of many rows in
// several batches reaches Kafka whole, with headers and keys, each key's rows
// in the order they were written, and every row is marked forwarded.
func TestRelayForwardsEveryRowKeepingEachKeysOrder(t *testing.T) {
	e := open(t)
	topic := e.topic(t, 4)
	const keys, perKey = 10, 50
	var recs []relay.Record
	for seq := range perKey {
		for k := range keys {
			recs = append(recs, relay.Record{
				Topic:   topic,
				Key:     []byte("key-" + strconv.Itoa(k)),
				Headers: map[string]string{"ce_id": fmt.Sprintf("%d-%d", k, seq), "ce_type": "t"},
				Payload: []byte(strconv.Itoa(seq)),
			})
		}
	}
	insert(t, e, recs, 7)
	start(t, e, 1_000_000, relay.NewLease(e.db))
	got := consume(t, e, topic, keys*perKey)
	last := map[string]int{}
	for _, r := range got {
		seq, _ := strconv.Atoi(string(r.Value))
		k := string(r.Key)
		if prev, ok := last[k]; ok && seq != prev+1 {
			t.Fatalf("key %s: %d after %d", k, seq, prev)
		}
		last[k] = seq
		if len(r.Headers) != 2 {
			t.Fatalf("headers %v", r.Headers)
		}
	}
	if len(last) != keys {
		t.Fatalf("%d keys arrived, want %d", len(last), keys)
	}
	waitFor(t, "every row marked forwarded", 10*time.Second, func() bool { return stats(t, e).Pending == 0 })
}

// TestARowThatCanNeverBeProducedIsParkedAndTheRowsBehindItGoOn: a row over the
// producer's limit once made the relay retry it forever while every later
// event waited.
func TestARowThatCanNeverBeProducedIsParkedAndTheRowsBehindItGoOn(t *testing.T) {
	e := open(t)
	topic := e.topic(t, 1)
	insert(t, e, []relay.Record{
		{Topic: topic, Key: []byte("k"), Headers: map[string]string{"n": "1"}, Payload: []byte("before")},
		{Topic: topic, Key: []byte("k"), Headers: map[string]string{"n": "2"}, Payload: []byte(strings.Repeat("x", 20_000))},
		{Topic: topic, Key: []byte("k"), Headers: map[string]string{"n": "3"}, Payload: []byte("after")},
	}, 1)
	start(t, e, 10_000, relay.NewLease(e.db))
	got := consume(t, e, topic, 2)
	if string(got[0].Value) != "before" || string(got[1].Value) != "after" {
		t.Fatalf("got %q, %q", got[0].Value, got[1].Value)
	}
	waitFor(t, "the large row parked", 10*time.Second, func() bool { s := stats(t, e); return s.Pending == 0 && s.Parked == 1 })
	parked, err := relay.NewTable(e.db).Parked(context.Background(), 10)
	if err != nil || len(parked) != 1 || !strings.Contains(parked[0].Reason, "too large") {
		t.Fatalf("parked rows %+v (%v)", parked, err)
	}
}

// TestARowWhoseHeadersDoNotDecodeIsParked: an outbox row written by
// something other than eventfn, whose headers column is not a JSON object
// of strings, has no CloudEvents attributes for its consumers to route or
// deduplicate it by. Such rows went to Kafka with a header saying the
// decode failed, and were marked forwarded (found by a fresh-eyed attack);
// they are parked now, and the rows around them go on in order.
func TestARowWhoseHeadersDoNotDecodeIsParked(t *testing.T) {
	e := open(t)
	topic := e.topic(t, 1)
	ctx := context.Background()
	for i, headers := range []string{`{"n":"0"}`, `not json`, `{"n":"2"}`, `{"n":3}`, `[]`, `{"n":"5"} x`, `{"n":"6","ce_type":"caf\u00e9"}`} {
		if _, err := e.db.ExecContext(ctx, `INSERT INTO eventfn_outbox (topic, key, headers, payload) VALUES ($1, $2, $3, $4)`,
			topic, []byte("k"), headers, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	start(t, e, 1_000_000, relay.NewLease(e.db))
	waitFor(t, "every row forwarded or parked", 30*time.Second, func() bool { s := stats(t, e); return s.Pending == 0 && s.Parked == 4 })
	got := consume(t, e, topic, 3)
	var values []string
	for _, rec := range got {
		values = append(values, string(rec.Value))
	}
	if strings.Join(values, ",") != "0,2,6" {
		t.Fatalf("records %v on Kafka, want 0,2,6: the rows whose headers decode, in order", values)
	}
	if !slices.ContainsFunc(got[2].Headers, func(h kgo.RecordHeader) bool { return h.Key == "ce_type" && string(h.Value) == "café" }) {
		t.Fatalf("the escaped header did not arrive decoded: %v", got[2].Headers)
	}
	if n := endOffset(t, e, topic); n != 3 {
		t.Fatalf("%d records on Kafka, want 3", n)
	}
	parked, err := relay.NewTable(e.db).Parked(ctx, 10)
	if err != nil || len(parked) != 4 {
		t.Fatalf("parked rows %+v (%v)", parked, err)
	}
	for _, p := range parked {
		if !strings.Contains(p.Reason, "headers column") {
			t.Fatalf("parked for %q; want the reason to name the headers column", p.Reason)
		}
	}
}

// TestAnOpenTransactionElsewhereDoesNotHoldTheRelay: on PostgreSQL an idle
// transaction anywhere on the server (and a slow one that wrote an outbox row
// itself) once held every event back until it ended.
func TestAnOpenTransactionElsewhereDoesNotHoldTheRelay(t *testing.T) {
	testenv.RequirePostgres(t)
	e := open(t)
	topic := e.topic(t, 1)
	ctx := context.Background()
	start(t, e, 1_000_000, relay.NewLease(e.db))

	// An idle transaction that holds an xid, in another session.
	other, err := sql.Open("pgx", testenv.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	idle, err := other.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = idle.Rollback() }()
	if _, err := idle.ExecContext(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	// A slow transaction that wrote an outbox row first and has not committed.
	slow, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = slow.Rollback() }()
	if err := relay.NewTable(e.db).Insert(ctx, slow, relay.Record{Topic: topic, Payload: []byte("slow")}); err != nil {
		t.Fatal(err)
	}
	// A later row, committed: it must not wait for either.
	insert(t, e, []relay.Record{{Topic: topic, Payload: []byte("quick")}}, 1)
	if got := consume(t, e, topic, 1); string(got[0].Value) != "quick" {
		t.Fatalf("first record %q, want quick", got[0].Value)
	}
	if err := slow.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := consume(t, e, topic, 2); string(got[1].Value) != "slow" {
		t.Fatalf("second record %q, want slow", got[1].Value)
	}
}

// TestOneReplicaRelaysAtATimeAndAStandbyTakesOver: two relays on one database
// schema never forward together; when the leader goes, the other takes over.
func TestOneReplicaRelaysAtATimeAndAStandbyTakesOver(t *testing.T) {
	testenv.RequirePostgres(t)
	e := open(t)
	ctx := context.Background()
	first, second := relay.NewLease(e.db), relay.NewLease(e.db)
	if err := first.Acquire(ctx, nil); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	acquired := false
	done := make(chan error, 1)
	go func() {
		err := second.Acquire(ctx, nil)
		mu.Lock()
		acquired = err == nil
		mu.Unlock()
		done <- err
	}()
	// The standby waits inside pg_advisory_lock: check it is there.
	waitFor(t, "the standby to wait for the lock", 10*time.Second, func() bool {
		var n int
		_ = e.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 7262652 AND NOT granted`).Scan(&n)
		return n >= 1
	})
	mu.Lock()
	if acquired {
		t.Fatal("two relays hold the lease at once")
	}
	mu.Unlock()
	if !first.Held(ctx) {
		t.Fatal("the leader lost its lease")
	}
	first.Release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the standby did not take over within 10s")
	}
	second.Release()
}

// producerAndMetrics gives a relay's producer, closed when the test ends,
// and fresh metrics, for a test that builds its relay itself.
func producerAndMetrics(t *testing.T, e engines) (*relay.Producer, *relay.Metrics) {
	t.Helper()
	p, err := relay.NewProducer(relay.ProducerConfig{Brokers: e.brokers, MaxRecordBytes: 1_000_000, DeliveryTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	m, err := relay.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return p, m
}

// countingSource counts the relay's reads of the outbox table.
type countingSource struct {
	*relay.Table
	mu    sync.Mutex
	reads int
}

// Pending counts a read once it returned: a test that waits for the count
// knows the read is over, and a row it commits next cannot be in it.
func (s *countingSource) Pending(ctx context.Context, after int64, limit relay.Limit) ([]relay.Row, error) {
	rows, err := s.Table.Pending(ctx, after, limit)
	s.mu.Lock()
	s.reads++
	s.mu.Unlock()
	return rows, err
}

func (s *countingSource) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// TestACommitAloneCostsOneRead: below a backlog, a nudged relay reads the
// new row, and does not read again while its produce is in flight (such a
// read found nothing, and was a third of the relay's statements at 100
// orders/s); a nudge that arrives meanwhile is still read at once.
func TestACommitAloneCostsOneRead(t *testing.T) {
	e := open(t)
	topic := e.topic(t, 1)
	p, m := producerAndMetrics(t, e)
	src := &countingSource{Table: relay.NewTable(e.db)}
	// No poll within the test: every read is the start's or a nudge's.
	r := relay.New(relay.Config{BatchSize: 100, PollInterval: time.Hour}, src, p, relay.NewLease(e.db), m, slog.New(slog.DiscardHandler))
	run(t, r)
	waitFor(t, "the relay's first read", 30*time.Second, func() bool { return src.count() == 1 })

	const events = 5
	for i := range events {
		insert(t, e, []relay.Record{{Topic: topic, Key: []byte("k"), Payload: []byte(strconv.Itoa(i))}}, 1)
		r.Nudge()
		waitFor(t, "the row forwarded", 30*time.Second, func() bool { return stats(t, e).Pending == 0 })
	}
	got := consume(t, e, topic, events)
	for i, rec := range got {
		if string(rec.Value) != strconv.Itoa(i) {
			t.Fatalf("record %d is %q", i, rec.Value)
		}
	}
	if n := src.count(); n != 1+events {
		t.Fatalf("the relay read the outbox %d times for %d commits one at a time, want %d: the start's read and one per commit", n, events, 1+events)
	}

	// Two commits while the first is in flight: each is read, nothing waits
	// for a poll.
	insert(t, e, []relay.Record{{Topic: topic, Key: []byte("k"), Payload: []byte("a")}}, 1)
	r.Nudge()
	insert(t, e, []relay.Record{{Topic: topic, Key: []byte("k"), Payload: []byte("b")}}, 1)
	r.Nudge()
	waitFor(t, "both rows forwarded without a poll", 30*time.Second, func() bool { return stats(t, e).Pending == 0 })
	if got := consume(t, e, topic, events+2); string(got[events].Value) != "a" || string(got[events+1].Value) != "b" {
		t.Fatalf("the last two records are %q and %q, want a and b", got[events].Value, got[events+1].Value)
	}
}

// sendHook runs a function as each batch is handed to the producer.
type sendHook struct {
	relay.Sink
	onSend func(recs []relay.Record)
}

func (s *sendHook) Send(ctx context.Context, recs []relay.Record) relay.Sent {
	sent := s.Sink.Send(ctx, recs)
	s.onSend(recs)
	return sent
}

// lowRow inserts a row "low" into topic in a transaction left open: it
// takes an outbox id below every row inserted after it, and commits when the
// test commits it (it is rolled back at the test's end otherwise).
func lowRow(t *testing.T, e engines, topic string) *sql.Tx {
	t.Helper()
	ctx := context.Background()
	low, err := e.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = low.Rollback() })
	if err := relay.NewTable(e.db).Insert(ctx, low, relay.Record{Topic: topic, Key: []byte("low"), Payload: []byte("low")}); err != nil {
		t.Fatal(err)
	}
	return low
}

// TestALateCommitBelowTheBatchInFlightGoesAtOnce: on PostgreSQL a
// transaction that took a lower outbox id can commit after one with a
// higher id. When its nudge arrives while the higher row is in flight, the
// relay's read ahead (above the batch) cannot see it; the relay must still
// read it as soon as the batch is done, not at the next poll.
func TestALateCommitBelowTheBatchInFlightGoesAtOnce(t *testing.T) {
	e := open(t)
	if e.url == "" {
		t.Skip("SQLite's one writer commits outbox rows in id order: a lower id cannot commit after a higher one")
	}
	topic := e.topic(t, 1)
	p, m := producerAndMetrics(t, e)
	low := lowRow(t, e, topic)

	var r *relay.Relay
	var once sync.Once
	hook := &sendHook{Sink: p, onSend: func(recs []relay.Record) {
		if string(recs[0].Payload) != "high" {
			return
		}
		// While "high" is in flight, the lower id commits and nudges.
		once.Do(func() {
			if err := low.Commit(); err != nil {
				t.Error(err)
			}
			r.Nudge()
		})
	}}
	// No poll within the test: only nudges move the relay.
	r = relay.New(relay.Config{BatchSize: 100, PollInterval: time.Hour}, relay.NewTable(e.db), hook, relay.NewLease(e.db), m, slog.New(slog.DiscardHandler))
	run(t, r)

	insert(t, e, []relay.Record{{Topic: topic, Key: []byte("high"), Payload: []byte("high")}}, 1)
	r.Nudge()
	waitFor(t, "both rows forwarded, the late one without a poll", 30*time.Second, func() bool { return stats(t, e).Pending == 0 })
	got := consume(t, e, topic, 2)
	if string(got[0].Value) != "high" || string(got[1].Value) != "low" {
		t.Fatalf("records %q, %q; want high, then low", got[0].Value, got[1].Value)
	}
}

// TestALateCommitGoesWhileBatchesStream: under steady load a batch is
// always in flight and the relay reads ahead of it, never from the lowest
// pending id. A row whose transaction took a lower id and committed while
// a backlog streams must still go within LateCommitWait, not after the
// backlog (at 650 orders/s such rows waited up to 20 s).
func TestALateCommitGoesWhileBatchesStream(t *testing.T) {
	e := open(t)
	if e.url == "" {
		t.Skip("SQLite's one writer commits outbox rows in id order: a lower id cannot commit after a higher one")
	}
	topic := e.topic(t, 1)
	p, m := producerAndMetrics(t, e)
	low := lowRow(t, e, topic)
	// A backlog of full batches above it, committed.
	const backlog, batch = 3000, 10
	recs := make([]relay.Record, backlog)
	for i := range recs {
		recs[i] = relay.Record{Topic: topic, Key: []byte(strconv.Itoa(i)), Payload: []byte(strconv.Itoa(i))}
	}
	insert(t, e, recs, 500)

	var once sync.Once
	hook := &sendHook{Sink: p, onSend: func([]relay.Record) {
		// The lower id commits while the first batch is in flight.
		once.Do(func() {
			if err := low.Commit(); err != nil {
				t.Error(err)
			}
		})
	}}
	r := relay.New(relay.Config{BatchSize: batch, PollInterval: time.Hour, LateCommitWait: 10 * time.Millisecond},
		relay.NewTable(e.db), hook, relay.NewLease(e.db), m, slog.New(slog.DiscardHandler))
	run(t, r)
	waitFor(t, "every row forwarded", time.Minute, func() bool { return stats(t, e).Pending == 0 })
	got := consume(t, e, topic, backlog+1)
	at := slices.IndexFunc(got, func(rec *kgo.Record) bool { return string(rec.Value) == "low" })
	if at < 0 || at > backlog/2 {
		t.Fatalf("the late row went as record %d of %d: it waited for the backlog to drain", at, backlog+1)
	}
}

// slowLowestSource makes every read from the lowest pending id (after 0)
// slow, as on a loaded database, and counts reads of each kind.
type slowLowestSource struct {
	*relay.Table
	slow time.Duration
	mu   sync.Mutex
	// fromLowest and ahead count the reads from the lowest pending id and
	// those above a batch in flight.
	fromLowest, ahead int
}

func (s *slowLowestSource) Pending(ctx context.Context, after int64, limit relay.Limit) ([]relay.Row, error) {
	if after == 0 {
		time.Sleep(s.slow)
	}
	s.mu.Lock()
	if after == 0 {
		s.fromLowest++
	} else {
		s.ahead++
	}
	s.mu.Unlock()
	return s.Table.Pending(ctx, after, limit)
}

// TestReadsGoOnAheadAfterASlowReadFromTheLowestId: once reads have gone on
// ahead of the batch in flight for LateCommitWait, the relay reads from the
// lowest pending id again. When that read itself took longer than
// LateCommitWait (a loaded database), the relay still reads ahead after it:
// it once counted the wait from the read's start, never read ahead again,
// and forwarded one batch at a time just when the database was slow.
func TestReadsGoOnAheadAfterASlowReadFromTheLowestId(t *testing.T) {
	e := open(t)
	topic := e.topic(t, 1)
	p, m := producerAndMetrics(t, e)
	const backlog, batch = 1000, 10
	recs := make([]relay.Record, backlog)
	for i := range recs {
		recs[i] = relay.Record{Topic: topic, Key: []byte(strconv.Itoa(i)), Payload: []byte(strconv.Itoa(i))}
	}
	insert(t, e, recs, 500)
	const lateCommitWait = 100 * time.Millisecond
	src := &slowLowestSource{Table: relay.NewTable(e.db), slow: lateCommitWait + 50*time.Millisecond}
	r := relay.New(relay.Config{BatchSize: batch, PollInterval: time.Hour, LateCommitWait: lateCommitWait},
		src, p, relay.NewLease(e.db), m, slog.New(slog.DiscardHandler))
	run(t, r)
	waitFor(t, "every row forwarded", time.Minute, func() bool { return stats(t, e).Pending == 0 })
	src.mu.Lock()
	fromLowest, ahead := src.fromLowest, src.ahead
	src.mu.Unlock()
	if ahead <= fromLowest {
		t.Fatalf("%d reads from the lowest pending id and %d ahead of a batch in flight: the relay stopped reading ahead", fromLowest, ahead)
	}
	if got := consume(t, e, topic, backlog); string(got[backlog-1].Value) != strconv.Itoa(backlog-1) {
		t.Fatalf("the last record is %q, want %d", got[backlog-1].Value, backlog-1)
	}
}

// TestABatchAboveSQLitesParameterLimitIsMarkedAndDeleted: a relay batch, and
// a retention batch, of more rows than SQLite takes parameters (32,766)
// could never be marked or deleted: one parameter per id. relay.batch_size
// has no upper bound and retention.batch_size goes to 100,000.
func TestABatchAboveSQLitesParameterLimitIsMarkedAndDeleted(t *testing.T) {
	e := open(t)
	topic := e.topic(t, 4)
	const n = 33_000 // above 32,766
	recs := make([]relay.Record, n)
	for i := range recs {
		recs[i] = relay.Record{Topic: topic, Key: []byte(strconv.Itoa(i % 16)), Headers: map[string]string{"ce_id": strconv.Itoa(i)}, Payload: []byte("x")}
	}
	insert(t, e, recs, n)
	p, m := producerAndMetrics(t, e)
	logs := &testenv.LogBuffer{}
	r := relay.New(relay.Config{BatchSize: n, PollInterval: 10 * time.Millisecond}, relay.NewTable(e.db), p, relay.NewLease(e.db), m, slog.New(slog.NewTextHandler(logs, nil)))
	run(t, r)
	waitFor(t, "every row marked forwarded", 120*time.Second, func() bool { return stats(t, e).Pending == 0 })
	if err := r.Healthy(); err != nil {
		t.Fatalf("relay unhealthy: %v\n%s", err, logs.String())
	}
	deleted, err := relay.NewTable(e.db).DeleteForwarded(context.Background(), 0, n, false)
	if err != nil || deleted != n {
		t.Fatalf("retention deleted %d of %d rows in one batch: %v", deleted, n, err)
	}
}

// TestATopicDeletedAndCreatedAgainGetsItsRows: an operator deletes a topic
// the relay produces to and creates it again. franz-go keeps producing to
// the id it first met and failed every record with UNKNOWN_TOPIC_ID, so the
// relay retried the same batch for good and every event behind it waited
// until a restart. The rows written meanwhile reach the new topic.
func TestATopicDeletedAndCreatedAgainGetsItsRows(t *testing.T) {
	e := open(t)
	topic := e.topic(t, 2)
	row := func(payload string) relay.Record {
		return relay.Record{Topic: topic, Key: []byte("k"), Headers: map[string]string{"ce_id": payload}, Payload: []byte(payload)}
	}
	insert(t, e, []relay.Record{row("before")}, 1)
	start(t, e, 1_000_000, relay.NewLease(e.db))
	consume(t, e, topic, 1)
	waitFor(t, "the first row marked forwarded", 10*time.Second, func() bool { return stats(t, e).Pending == 0 })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := e.admin(t)
	if _, err := admin.DeleteTopics(ctx, topic); err != nil {
		t.Fatal(err)
	}
	insert(t, e, []relay.Record{row("while deleted")}, 1)
	testenv.CreateTopicAgain(ctx, t, admin, topic, 2)
	insert(t, e, []relay.Record{row("after")}, 1)
	got := consume(t, e, topic, 2)
	if string(got[0].Value) != "while deleted" || string(got[1].Value) != "after" {
		t.Fatalf("the new topic has %q, %q; want the rows written while it was deleted and after, in order", got[0].Value, got[1].Value)
	}
	waitFor(t, "every row marked forwarded", 30*time.Second, func() bool { return stats(t, e).Pending == 0 })
}

// stallingMarks holds the relay's second mark of rows forwarded until the
// test releases it, then runs it with the context it was given.
type stallingMarks struct {
	*relay.Table
	mu      sync.Mutex
	marks   int
	stalled chan []int64 // the held mark's ids, once it is held
	release chan struct{}
}

func (s *stallingMarks) MarkForwarded(ctx context.Context, ids []int64) error {
	s.mu.Lock()
	s.marks++
	second := s.marks == 2
	s.mu.Unlock()
	if second {
		s.stalled <- ids
		select {
		case <-s.release:
		case <-ctx.Done(): // as a database that does not answer
			return ctx.Err()
		}
	}
	return s.Table.MarkForwarded(ctx, ids)
}

// TestAStopDoesNotCutAMarkBehindShort: draining a backlog, an acked batch
// is marked while the next one is acked. A stop that arrived meanwhile
// cancelled that mark, and its rows, already on Kafka, went again after the
// restart. The mark now goes on after the stop, for a while: a database
// that does not answer does not hold the stop.
func TestAStopDoesNotCutAMarkBehindShort(t *testing.T) {
	for _, tc := range []struct {
		name      string
		answers   bool // the database answers the mark after the stop
		forwarded bool
	}{
		{"the database answers", true, true},
		{"the database does not answer", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := open(t)
			topic := e.topic(t, 1)
			p, m := producerAndMetrics(t, e)
			const backlog, batch = 60, 10
			insert(t, e, oneKey(topic, backlog), backlog)
			src := &stallingMarks{Table: relay.NewTable(e.db), stalled: make(chan []int64, 1), release: make(chan struct{})}
			r := relay.New(relay.Config{BatchSize: batch, PollInterval: time.Hour}, src, p, relay.NewLease(e.db), m, slog.New(slog.DiscardHandler))
			stop, stopped := stoppable(t, r)
			var ids []int64
			select {
			case ids = <-src.stalled:
			case <-time.After(time.Minute):
				t.Fatal("the relay never marked a second batch")
			}
			stop()
			if tc.answers {
				close(src.release)
			}
			stopped()

			args := make([]any, len(ids))
			marks := make([]string, len(ids))
			for i, id := range ids {
				args[i], marks[i] = id, fmt.Sprintf("$%d", i+1)
			}
			var forwarded int
			if err := e.db.QueryRowContext(context.Background(), `SELECT COUNT(*) FROM eventfn_outbox WHERE state = 1 AND id IN (`+strings.Join(marks, ",")+`)`, args...).Scan(&forwarded); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: len(ids), false: 0}[tc.forwarded]; forwarded != want {
				t.Fatalf("%d of the %d rows whose mark the stop met are marked forwarded, want %d", forwarded, len(ids), want)
			}
		})
	}
}

// refusingMarks refuses every mark of rows forwarded while refuse is set,
// as a database that takes reads but no writes, and says so on refused.
type refusingMarks struct {
	*relay.Table
	refuse  atomic.Bool
	refused chan struct{}
}

func (s *refusingMarks) MarkForwarded(ctx context.Context, ids []int64) error {
	if s.refuse.Load() {
		select {
		case s.refused <- struct{}{}:
		default:
		}
		return errors.New("cannot execute UPDATE in a read-only transaction")
	}
	return s.Table.MarkForwarded(ctx, ids)
}

// TestAStopMarksTheRowsOnKafkaWhoseMarkFailed: rows on Kafka whose mark
// failed are marked before the relay reads again; a relay stopped while it
// waited to retry left them pending, and they went again after the restart
// (found by a fresh-eyed attack, with marks cancelled at a
// statement_timeout). A stop now tries their mark once more.
func TestAStopMarksTheRowsOnKafkaWhoseMarkFailed(t *testing.T) {
	e := open(t)
	topic := e.topic(t, 1)
	p, m := producerAndMetrics(t, e)
	const rows = 20
	insert(t, e, oneKey(topic, rows), rows)
	src := &refusingMarks{Table: relay.NewTable(e.db), refused: make(chan struct{}, 1)}
	src.refuse.Store(true)
	// After the refused mark the relay waits an hour to retry: only the
	// stop can mark the rows.
	r := relay.New(relay.Config{BatchSize: 100, PollInterval: time.Hour, MinBackoff: time.Hour, MaxBackoff: time.Hour}, src, p, relay.NewLease(e.db), m, slog.New(slog.DiscardHandler))
	stop, stopped := stoppable(t, r)
	select {
	case <-src.refused:
	case <-time.After(time.Minute):
		t.Fatal("the relay never marked its batch")
	}
	src.refuse.Store(false)
	stop()
	stopped()
	if s := stats(t, e); s.Pending != 0 {
		t.Fatalf("%d rows on Kafka left pending by the stop, to go again after the restart", s.Pending)
	}
	if got := endOffset(t, e, topic); got != rows {
		t.Fatalf("%d records on Kafka for %d rows", got, rows)
	}
}

// handoverLease is lost once, as pgLease is when its lock session ends:
// Leading and Held turn false, and Acquire finds another replica's relay
// holding the lock (it calls standby) and waits until the test hands the
// lock back.
type handoverLease struct {
	waiting chan struct{} // closed once Acquire waits
	back    chan struct{} // closed to hand the lease back
	mu      sync.Mutex
	held    bool
}

func newHandoverLease() *handoverLease {
	return &handoverLease{waiting: make(chan struct{}), back: make(chan struct{}), held: true}
}

func (l *handoverLease) lose() {
	l.mu.Lock()
	l.held = false
	l.mu.Unlock()
}

func (l *handoverLease) Acquire(ctx context.Context, standby func()) error {
	if l.Leading() {
		return nil
	}
	if standby != nil {
		standby()
	}
	close(l.waiting)
	select {
	case <-l.back:
	case <-ctx.Done():
		return ctx.Err()
	}
	l.mu.Lock()
	l.held = true
	l.mu.Unlock()
	return nil
}

func (l *handoverLease) Held(context.Context) bool { return l.Leading() }
func (l *handoverLease) Release()                  {}
func (l *handoverLease) Leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held
}

func (l *handoverLease) Fenced(ctx context.Context, stmt func(context.Context, relay.Execer) error) error {
	return stmt(ctx, nil)
}

// TestRowsReadAheadAreNotSentAfterTheLeaseChangedHands: draining a backlog,
// the relay reads the next batch before it needs it. When the lease was
// lost meanwhile and came back, the replica that led in between had
// forwarded those rows, and the relay sent them again from what it had read
// before (found by a fresh-eyed attack). What was read ahead is dropped
// when the lease is lost.
func TestRowsReadAheadAreNotSentAfterTheLeaseChangedHands(t *testing.T) {
	e := open(t)
	topic := e.topic(t, 1)
	p, m := producerAndMetrics(t, e)
	const backlog, batch = 50, 10
	insert(t, e, oneKey(topic, backlog), backlog)
	lease := newHandoverLease()
	var sends sync.Mutex
	sent := 0
	hook := &sendHook{Sink: p, onSend: func([]relay.Record) {
		sends.Lock()
		defer sends.Unlock()
		if sent++; sent == 2 {
			// Rows 0-19 are handed over, and 20-29 read ahead.
			lease.lose()
		}
	}}
	src := &countingSource{Table: relay.NewTable(e.db)}
	// Reads go on ahead however long the hand-over takes.
	r := relay.New(relay.Config{BatchSize: batch, PollInterval: time.Hour, LateCommitWait: time.Hour}, src, hook, lease, m, slog.New(slog.DiscardHandler))
	run(t, r)
	select {
	case <-lease.waiting:
	case <-time.After(time.Minute):
		t.Fatal("the relay never waited for the lease it lost")
	}
	// Three reads have ended: rows 0-9, 10-19 and, ahead, 20-29.
	waitFor(t, "the read ahead of rows 20-29", 30*time.Second, func() bool { return src.count() >= 3 })
	// The replica that led meanwhile forwarded rows 20-29.
	ids := rowIDs(t, e)
	if _, err := e.db.ExecContext(context.Background(), `UPDATE eventfn_outbox SET state = 1 WHERE id >= $1 AND id <= $2`, ids[20], ids[29]); err != nil {
		t.Fatal(err)
	}
	close(lease.back)
	waitFor(t, "every row forwarded", 30*time.Second, func() bool { return stats(t, e).Pending == 0 })
	got := consume(t, e, topic, backlog-10)
	for _, rec := range got {
		if i, _ := strconv.Atoi(string(rec.Value)); i >= 20 && i < 30 {
			t.Fatalf("row %d, forwarded by the replica that led meanwhile, was sent again", i)
		}
	}
	if n := endOffset(t, e, topic); n != backlog-10 {
		t.Fatalf("%d records on Kafka, want %d", n, backlog-10)
	}
}

// oneKey is n records of one key to topic, their values 0 to n-1.
func oneKey(topic string, n int) []relay.Record {
	recs := make([]relay.Record, n)
	for i := range recs {
		recs[i] = relay.Record{Topic: topic, Key: []byte("k"), Payload: []byte(strconv.Itoa(i))}
	}
	return recs
}

// rowIDs are the outbox's row ids, in order.
func rowIDs(t *testing.T, e engines) []int64 {
	t.Helper()
	return testenv.Column[int64](context.Background(), t, e.db, `SELECT id FROM eventfn_outbox ORDER BY id`)
}

// deafMarks is a database that stops answering the relay's marks after the
// first: each waits until its context ends.
type deafMarks struct {
	*relay.Table
	mu      sync.Mutex
	marks   int
	stalled chan struct{} // closed when the second mark waits
}

func (s *deafMarks) MarkForwarded(ctx context.Context, ids []int64) error {
	s.mu.Lock()
	s.marks++
	n := s.marks
	s.mu.Unlock()
	if n == 1 {
		return s.Table.MarkForwarded(ctx, ids)
	}
	if n == 2 {
		close(s.stalled)
	}
	<-ctx.Done()
	return ctx.Err()
}

// TestAStopGivesMarksBehindOneGrace: a stop gives the marks in progress
// stopGrace to end, counted from the stop. A batch acked while the relay
// waited for a mark got a mark of its own after the stop, with a grace of
// its own: a database that did not answer held the stop twice as long
// (found by a fresh-eyed attack).
func TestAStopGivesMarksBehindOneGrace(t *testing.T) {
	e := open(t)
	topic := e.topic(t, 1)
	p, m := producerAndMetrics(t, e)
	const backlog, batch = 100, 10
	insert(t, e, oneKey(topic, backlog), backlog)
	src := &deafMarks{Table: relay.NewTable(e.db), stalled: make(chan struct{})}
	r := relay.New(relay.Config{BatchSize: batch, PollInterval: time.Hour}, src, p, relay.NewLease(e.db), m, slog.New(slog.DiscardHandler))
	stop, stopped := stoppable(t, r)
	select {
	case <-src.stalled:
	case <-time.After(time.Minute):
		t.Fatal("the relay never marked a second batch")
	}
	stop()
	start := time.Now()
	stopped()
	// The grace is two seconds; a second grace would make four.
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("the stop took %v against a database that did not answer: the marks it met had more than one grace", took)
	}
}

// TestAReadTakesRowsUpToItsBytes: a read with a byte bound takes rows while
// the rows before them hold fewer bytes (key, headers as stored, payload)
// than the bound, so a row larger than the bound comes alone and none is
// ever skipped; Full says when rows may have been left behind.
func TestAReadTakesRowsUpToItsBytes(t *testing.T) {
	e := open(t)
	table := relay.NewTable(e.db)
	// The rows' bytes as stored, in id order: a key of 2 bytes, headers
	// stored as "null" (4), the payload the rest; the fourth row has no key,
	// the seventh 208 bytes of headers.
	sizes := []int{40, 40, 40, 300, 10, 10, 212, 10}
	var recs []relay.Record
	for i, n := range sizes {
		rec := relay.Record{Topic: "t", Key: []byte("k" + strconv.Itoa(i)), Payload: bytes.Repeat([]byte{'x'}, n-6)}
		switch i {
		case 3:
			rec.Key, rec.Payload = nil, bytes.Repeat([]byte{'x'}, n-4)
		case 6:
			rec.Headers = map[string]string{"h": strings.Repeat("x", 200)} // {"h":"x…"}: 208 bytes
			rec.Payload = []byte("xx")
		}
		recs = append(recs, rec)
	}
	insert(t, e, recs, len(recs))
	ids := func(rows []relay.Row) []int { // 0-based positions of rows
		var out []int
		for _, r := range rows {
			out = append(out, int(r.ID)-1)
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		after int64
		limit relay.Limit
		want  []int
		full  bool
	}{
		{"no byte bound", 0, relay.Limit{Rows: 100}, []int{0, 1, 2, 3, 4, 5, 6, 7}, false},
		{"rows bound first", 0, relay.Limit{Rows: 2, Bytes: 1000}, []int{0, 1}, true},
		{"bytes bound first", 0, relay.Limit{Rows: 100, Bytes: 100}, []int{0, 1, 2}, true},
		{"bound met exactly by the rows before", 0, relay.Limit{Rows: 100, Bytes: 80}, []int{0, 1}, true},
		{"a row larger than the bound comes alone", 3, relay.Limit{Rows: 100, Bytes: 100}, []int{3}, true},
		{"a bound of one byte takes one row", 0, relay.Limit{Rows: 100, Bytes: 1}, []int{0}, true},
		{"headers count", 5, relay.Limit{Rows: 100, Bytes: 100}, []int{5, 6}, true},
		{"the last row, under the bound", 7, relay.Limit{Rows: 100, Bytes: 100}, []int{7}, false},
		{"nothing left", 8, relay.Limit{Rows: 100, Bytes: 100}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := table.Pending(context.Background(), tc.after, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(rows); !slices.Equal(got, tc.want) {
				t.Fatalf("read rows %v, want %v", got, tc.want)
			}
			if got := tc.limit.Full(rows); got != tc.full {
				t.Fatalf("Full = %v, want %v", got, tc.full)
			}
		})
	}
}

// sizingSource records the most key and payload bytes one read of the relay
// returned.
type sizingSource struct {
	*relay.Table
	mu       sync.Mutex
	maxBytes int
}

func (s *sizingSource) Pending(ctx context.Context, after int64, limit relay.Limit) ([]relay.Row, error) {
	rows, err := s.Table.Pending(ctx, after, limit)
	n := 0
	for _, r := range rows {
		n += len(r.Key) + len(r.Payload)
	}
	s.mu.Lock()
	s.maxBytes = max(s.maxBytes, n)
	s.mu.Unlock()
	return rows, err
}

// TestABacklogOfLargeRowsIsReadInBatchesOfBoundedBytes: a backlog of rows of
// 20 KB, and one of 200 KB among them, with batches of 500 rows and 64 KB:
// every row reaches Kafka once, each key's in order, and no read held more
// than the bound and one row. The relay read 500 rows whatever their size,
// so a backlog of large events held 500 times the largest record the broker
// takes, three times over (two batches in flight and one read ahead).
func TestABacklogOfLargeRowsIsReadInBatchesOfBoundedBytes(t *testing.T) {
	const (
		rows       = 120
		batchBytes = 64 << 10
		rowBytes   = 20 << 10
		largeBytes = 200 << 10
	)
	e := open(t)
	topic := e.topic(t, 2)
	var recs []relay.Record
	for i := range rows {
		size := rowBytes
		if i == rows/2 {
			size = largeBytes
		}
		payload := bytes.Repeat([]byte{'x'}, size)
		copy(payload, strconv.Itoa(i)+" ")
		recs = append(recs, relay.Record{Topic: topic, Key: []byte(strconv.Itoa(i % 3)), Payload: payload})
	}
	insert(t, e, recs, 20)
	p, m := producerAndMetrics(t, e)
	src := &sizingSource{Table: relay.NewTable(e.db)}
	r := relay.New(relay.Config{BatchSize: 500, BatchBytes: batchBytes, PollInterval: 10 * time.Millisecond}, src, p, relay.NewLease(e.db), m, slog.New(slog.DiscardHandler))
	run(t, r)
	waitFor(t, "every row forwarded", 60*time.Second, func() bool { return stats(t, e).Pending == 0 })
	last := map[string]int{}
	for _, rec := range consume(t, e, topic, rows) {
		var n int
		if _, err := fmt.Sscan(string(rec.Value[:16]), &n); err != nil {
			t.Fatal(err)
		}
		if prev, ok := last[string(rec.Key)]; ok && prev >= n {
			t.Fatalf("key %s: row %d after row %d", rec.Key, n, prev)
		}
		last[string(rec.Key)] = n
	}
	if got := endOffset(t, e, topic); got != rows {
		t.Fatalf("%d records on Kafka for %d rows", got, rows)
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	if limit := batchBytes + largeBytes; src.maxBytes >= limit || src.maxBytes == 0 {
		t.Fatalf("a read held %d bytes of keys and payloads; the bound and one row are %d", src.maxBytes, limit)
	}
}
