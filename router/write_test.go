package router_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

type bulky struct {
	S string `json:"s"`
}

func (bulky) EventType() string { return "probe.bulky" }

// TestWriteCommitsStatementsAndEventsTogether: Outbox.Write, the ingress's
// one-round-trip transaction, commits all its statements and events or
// none, reads RETURNING rows, and leaves its connection clean after a
// failure; on both engines.
func TestWriteCommitsStatementsAndEventsTogether(t *testing.T) {
	// A handler of probe.sent, so that the topic exists.
	tr := startRuntime(t, nil, runtime.NewHandler("probe-reader", func(context.Context, runtime.Tx, probe) error { return nil }))
	ctx := context.Background()
	if _, err := tr.db.ExecContext(ctx, `CREATE TABLE write_probe (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	insert := func(id string, n int) runtime.Statement {
		return runtime.Statement{Query: `INSERT INTO write_probe (id, n) VALUES ($1, $2)`, Args: []any{id, n}}
	}
	outboxRows := func() int {
		return countRows(t, tr, `SELECT COUNT(*) FROM eventfn_outbox WHERE topic = $1`, tr.cfg.Kafka.Topic("probe.sent"))
	}
	probeRows := func(id string) int {
		return countRows(t, tr, `SELECT COUNT(*) FROM write_probe WHERE id = $1`, id)
	}

	// All of it commits: two statements, a RETURNING row, one event.
	var doubled int
	err := tr.outbox.Write(ctx, []runtime.Statement{
		insert("a", 1),
		{Query: `INSERT INTO write_probe (id, n) VALUES ($1, $2) RETURNING n * 2`, Args: []any{"b", 21}, Returning: []any{&doubled}},
	}, probe{N: 1})
	if err != nil {
		t.Fatal(err)
	}
	if doubled != 42 || probeRows("a") != 1 || probeRows("b") != 1 || outboxRows() != 1 {
		t.Fatalf("after a Write: RETURNING gave %d (want 42), rows a %d, b %d, outbox %d (want 1 each)", doubled, probeRows("a"), probeRows("b"), outboxRows())
	}
	if got := tr.records(t, "probe.sent", 1); string(got[0].Value) != `{"n":1}` {
		t.Fatalf("the event on Kafka is %s", got[0].Value)
	}

	// A RETURNING statement that returns no row leaves its target alone,
	// and the transaction commits.
	kept := -1
	if err := tr.outbox.Write(ctx, []runtime.Statement{
		{Query: `INSERT INTO write_probe (id, n) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING n`, Args: []any{"a", 7}, Returning: []any{&kept}},
		insert("c", 3),
	}, probe{N: 2}); err != nil {
		t.Fatal(err)
	}
	if kept != -1 || probeRows("c") != 1 || outboxRows() != 2 {
		t.Fatalf("after a RETURNING with no row: target %d (want -1 untouched), row c %d, outbox %d (want 1 and 2)", kept, probeRows("c"), outboxRows())
	}

	// A RETURNING target that does not fit its row: on PostgreSQL the row
	// is read after COMMIT, so the error says the transaction committed and
	// is permanent (a retry would write it twice); on SQLite it is read
	// before, and nothing commits.
	var notANumber int
	err = tr.outbox.Write(ctx, []runtime.Statement{
		{Query: `INSERT INTO write_probe (id, n) VALUES ($1, $2) RETURNING id`, Args: []any{"h", 8}, Returning: []any{&notANumber}},
	}, probe{N: 6})
	switch {
	case err == nil:
		t.Fatal("a RETURNING text scanned into an int gave no error")
	case tr.store.Driver == store.Postgres:
		if !runtime.IsPermanent(err) || !strings.Contains(err.Error(), "committed") || probeRows("h") != 1 || outboxRows() != 3 {
			t.Fatalf("PostgreSQL: got %v (permanent %v), row h %d, outbox %d; want a permanent error saying it committed, the row and the event stored", err, runtime.IsPermanent(err), probeRows("h"), outboxRows())
		}
		if _, err := tr.db.ExecContext(ctx, `DELETE FROM write_probe WHERE id = 'h'`); err != nil {
			t.Fatal(err)
		}
		if _, err := tr.db.ExecContext(ctx, `DELETE FROM eventfn_outbox WHERE topic = $1 AND payload LIKE '%"n":6%'`, tr.cfg.Kafka.Topic("probe.sent")); err != nil {
			t.Fatal(err)
		}
	default:
		if runtime.IsPermanent(err) || probeRows("h") != 0 || outboxRows() != 2 {
			t.Fatalf("SQLite: got %v (permanent %v), row h %d, outbox %d; want an error and nothing stored", err, runtime.IsPermanent(err), probeRows("h"), outboxRows())
		}
	}

	for _, tc := range []struct {
		name    string
		stmts   []runtime.Statement
		events  []runtime.Event
		wantErr string
		perm    bool
	}{
		{"the second statement fails", []runtime.Statement{insert("d", 4), insert("a", 5)}, []runtime.Event{probe{N: 3}}, "statement 2 of 2", false},
		{"the first statement fails", []runtime.Statement{insert("a", 5), insert("e", 6)}, []runtime.Event{probe{N: 4}}, "statement 1 of 2", false},
		// PostgreSQL refuses it when pgx prepares it, before BEGIN; SQLite
		// when it runs.
		{"a statement names no table", []runtime.Statement{insert("f", 7), {Query: `INSERT INTO no_such_table VALUES (1)`}}, nil, "no_such_table", false},
		{"an event larger than Kafka takes", []runtime.Statement{insert("g", 8)}, []runtime.Event{probe{N: 5}, bulky{S: strings.Repeat("x", 2<<20)}}, "max_message_bytes", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Many times: every connection of the pool meets the failure,
			// and the writes after it find them clean.
			for range 10 {
				err := tr.outbox.Write(ctx, tc.stmts, tc.events...)
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				if runtime.IsPermanent(err) != tc.perm {
					t.Fatalf("permanent %v, want %v: %v", runtime.IsPermanent(err), tc.perm, err)
				}
			}
			for _, id := range []string{"d", "e", "f", "g"} {
				if n := probeRows(id); n != 0 {
					t.Fatalf("row %s committed from a failed Write", id)
				}
			}
			if n := outboxRows(); n != 2 {
				t.Fatalf("outbox has %d probe events, want the 2 of the Writes that committed", n)
			}
			if n := countRows(t, tr, `SELECT COUNT(*) FROM eventfn_outbox WHERE topic = $1`, tr.cfg.Kafka.Topic("probe.bulky")); n != 0 {
				t.Fatalf("outbox has %d bulky events", n)
			}
		})
	}

	// The connections are clean: writes after all those failures commit.
	for i := range 20 {
		if err := tr.outbox.Write(ctx, []runtime.Statement{insert("after-"+strings.Repeat("i", i+1), i)}); err != nil {
			t.Fatalf("write %d after the failures: %v", i, err)
		}
	}
	if n := countRows(t, tr, `SELECT COUNT(*) FROM write_probe WHERE id LIKE 'after-%'`); n != 20 {
		t.Fatalf("%d of 20 writes after the failures committed", n)
	}
}

// TestAWriteCutShortSaysItMayHaveCommitted: a Write whose context ends while
// PostgreSQL runs its pipeline cannot know whether it committed (once sent,
// the pipeline may run to its COMMIT), and must say so rather than report a
// plain failure a client would retry into a duplicate; the writes after it
// find clean connections.
func TestAWriteCutShortSaysItMayHaveCommitted(t *testing.T) {
	if testenv.DatabaseURL() == "" {
		t.Skip("needs pg_sleep: SQLite has no statement that waits without using a core, and its Write is not pipelined")
	}
	tr := startRuntime(t, nil, runtime.NewHandler("probe-reader", func(context.Context, runtime.Tx, probe) error { return nil }))
	ctx := context.Background()
	if _, err := tr.db.ExecContext(ctx, `CREATE TABLE write_probe (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	err := tr.outbox.Write(short, []runtime.Statement{
		{Query: `INSERT INTO write_probe (id, n) VALUES ('slow', 1)`},
		{Query: `SELECT pg_sleep(1)`},
	}, probe{N: 1})
	if err == nil || !strings.Contains(err.Error(), "may have committed") || runtime.IsPermanent(err) {
		t.Fatalf("got %v; want a non-permanent error saying the transaction may have committed", err)
	}
	for i := range 20 {
		if err := tr.outbox.Write(ctx, []runtime.Statement{{Query: `INSERT INTO write_probe (id, n) VALUES ($1, $2)`, Args: []any{fmt.Sprint("after-", i), i}}}); err != nil {
			t.Fatalf("write %d after the cut-short one: %v", i, err)
		}
	}
}

// TestATransactCutShortSaysItMayHaveCommitted: the same for Transact, whose
// queued statements and outbox rows go to PostgreSQL in one pipeline with
// its COMMIT.
func TestATransactCutShortSaysItMayHaveCommitted(t *testing.T) {
	if testenv.DatabaseURL() == "" {
		t.Skip("needs pg_sleep: SQLite has no statement that waits without using a core, and its commit is not pipelined")
	}
	tr := startRuntime(t, nil, runtime.NewHandler("probe-reader", func(context.Context, runtime.Tx, probe) error { return nil }))
	ctx := context.Background()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	err := tr.outbox.Transact(short, func(ctx context.Context, tx runtime.Tx) error {
		if err := tx.Queue(ctx, runtime.Statement{Query: `SELECT pg_sleep(1)`}); err != nil {
			return err
		}
		return tx.Emit(ctx, probe{N: 1})
	})
	if err == nil || !strings.Contains(err.Error(), "may have committed") || runtime.IsPermanent(err) {
		t.Fatalf("got %v; want a non-permanent error saying the transaction may have committed", err)
	}
	for i := range 20 {
		if err := tr.outbox.Transact(ctx, func(ctx context.Context, tx runtime.Tx) error { return tx.Emit(ctx, probe{N: i}) }); err != nil {
			t.Fatalf("transaction %d after the cut-short one: %v", i, err)
		}
	}
}

// TestAWriteOnConnectionsTheServerEndedGoesAgain: a restart of PostgreSQL
// ends the session of every pooled connection, and they wait in the pool
// until used. An order written on one failed (POST /orders answered 500)
// though nothing of it had run; it now goes again, once per such
// connection, and commits once.
func TestAWriteOnConnectionsTheServerEndedGoesAgain(t *testing.T) {
	u := testenv.RequirePostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	const pool = 4
	db, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: testenv.PostgresSchema(t, u), MaxOpenConns: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE ended_probe (n INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	outbox := router.NewOutbox(db, cfg, watermill.NopLogger{})
	// Fill the pool, note each connection's backend, and give them back;
	// twice, since pgx pings a pooled connection before its reuse when it
	// was idle for over a second, or never used again yet. Under load (the
	// fault suite's 25 orders a second) every connection is in recent use,
	// so none is pinged, and each one the server ended failed an order.
	var pids []int
	for range 2 {
		var held []*sql.Conn
		pids = pids[:0]
		for range pool {
			c, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var pid int
			if err := c.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
				t.Fatal(err)
			}
			pids, held = append(pids, pid), append(held, c)
		}
		for _, c := range held {
			_ = c.Close()
		}
	}
	inUse := time.Now()
	// End their sessions as a restart does (SQLSTATE 57P01), from outside.
	admin, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: u, MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, pid := range pids {
		if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "the sessions ended", time.Minute, func() bool {
		var n int
		if err := admin.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)`, pids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
	for i := range pool {
		if err := outbox.Write(ctx, []runtime.Statement{{Query: `INSERT INTO ended_probe (n) VALUES ($1)`, Args: []any{i}}}, probe{N: i}); err != nil {
			t.Fatalf("write %d on a pool of connections the server ended: %v", i, err)
		}
	}
	// Past a second, pgx's ping found them ended and this proved less.
	t.Logf("the writes ended %s after the connections' last use", time.Since(inUse).Round(time.Millisecond))
	var rows, events int
	if err := db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM ended_probe), (SELECT count(*) FROM eventfn_outbox)`).Scan(&rows, &events); err != nil {
		t.Fatal(err)
	}
	if rows != pool || events != pool {
		t.Errorf("%d rows and %d events committed, want %d of each, once", rows, events, pool)
	}
}
