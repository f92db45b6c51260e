package router

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/store"
)

// TestARetentionSweepThatTimesOutGoesOnWithSmallerBatches: a database whose
// statement_timeout is shorter than one retention DELETE of a table (a
// trigger makes each row's delete take 5 ms, so 500 rows take 2.5 s against
// 300 ms) once failed every sweep, while the table grew. A sweep now halves
// that table's batches until they get through and removes every row due.
// The other table keeps its own batches: with one limit for both, the
// other's quick sweep doubled it back, and every sweep after had a DELETE
// cancelled (found by a fresh-eyed attack). The limit doubles back once
// regrowAfter has passed without a cancel.
func TestARetentionSweepThatTimesOutGoesOnWithSmallerBatches(t *testing.T) {
	const batchSize = 500
	fill := map[string]string{
		"outbox": `INSERT INTO eventfn_outbox (topic, headers, payload, state, done_at)
			SELECT 't', '{}', '\x00', 1, now() - interval '1 hour' FROM generate_series(1, $1::int)`,
		"inbox": `INSERT INTO eventfn_inbox (handler, event_id, event_type, processed_at)
			SELECT 'h', 'e-' || gen_random_uuid(), 't', now() - interval '1 hour' FROM generate_series(1, $1::int)`,
	}
	for _, slow := range []string{"outbox", "inbox"} {
		t.Run("slow "+slow, func(t *testing.T) {
			pg := testenv.NewPostgresDatabase(t, testenv.RequirePostgres(t))
			ctx := context.Background()
			setup, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: pg.URL, MaxOpenConns: 2})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = setup.Close() })
			exec := func(stmt string, args ...any) {
				t.Helper()
				if _, err := setup.ExecContext(ctx, stmt, args...); err != nil {
					t.Fatalf("%s: %v", stmt, err)
				}
			}
			exec(`CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.005); RETURN OLD; END $$`)
			exec(`CREATE TRIGGER slow_delete BEFORE DELETE ON eventfn_` + slow + ` FOR EACH ROW EXECUTE FUNCTION slow_delete()`)
			exec(fill["outbox"], 600)
			exec(fill["inbox"], 600)
			pg.Set(t, "statement_timeout", "300ms")
			db, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: pg.URL, MaxOpenConns: 4})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			logs := &testenv.LogBuffer{}
			c, err := newCleaner(configs.Retention{Outbox: time.Minute, Inbox: time.Minute, BatchSize: batchSize}, db, relay.NewTable(db), prometheus.NewRegistry(), slog.New(slog.NewTextHandler(logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			limits := func() map[string]int {
				out := map[string]int{}
				for _, tg := range c.targets {
					out[tg.table] = tg.limit
				}
				return out
			}
			left := func() int {
				var n int
				if err := setup.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM eventfn_outbox) + (SELECT count(*) FROM eventfn_inbox)`).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			if err := c.sweep(ctx); err != nil {
				t.Fatalf("the sweep failed: %v\n%s", err, logs.String())
			}
			if n := left(); n != 0 {
				t.Fatalf("%d rows left after the sweep", n)
			}
			cancels := strings.Count(logs.String(), "statement_timeout")
			if got := limits(); cancels == 0 || got[slow] >= batchSize || len(got) != 2 {
				t.Fatalf("limits %v after a sweep with %d cancels; want the slow table's halved:\n%s", got, cancels, logs.String())
			}
			shrunk := limits()

			exec(fill[slow], 200)
			if err := c.sweep(ctx); err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(logs.String(), "statement_timeout"); got != cancels {
				t.Fatalf("the second sweep had %d DELETEs cancelled, want none: the limit went back up meanwhile\n%s", got-cancels, logs.String())
			}
			if n := left(); n != 0 {
				t.Fatalf("%d rows left after the second sweep", n)
			}

			c.regrowAfter = 0
			if err := c.sweep(ctx); err != nil {
				t.Fatal(err)
			}
			for table, limit := range limits() {
				if want := min(2*shrunk[table], batchSize); limit != want {
					t.Errorf("%s: limit %d after a sweep without a cancel past regrowAfter, want %d", table, limit, want)
				}
			}
		})
	}
}

// TestASweepTakesTheTablesInTurn: with rows of one table falling due faster
// than its batches remove them, a sweep that finished one table before the
// next never reached the inbox (found by a fresh-eyed attack). The tables'
// DELETEs are stand-ins here: what is tested is the order of the sweep.
func TestASweepTakesTheTablesInTurn(t *testing.T) {
	c, err := newCleaner(configs.Retention{BatchSize: 100}, nil, nil, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var endless, other int
	c.targets = []*sweepTarget{
		{table: "outbox", limit: 100, del: func(context.Context, int) (int, error) { endless++; return 100, nil }},
		{table: "inbox", limit: 100, del: func(_ context.Context, limit int) (int, error) {
			other++
			if other < 3 {
				return limit, nil
			}
			return 0, nil
		}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*retentionPause)
	defer cancel()
	if err := c.sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if other != 3 || endless < 3 {
		t.Fatalf("the endless table's DELETEs ran %d times, the other's %d; want the other's three (two full, one short) among them", endless, other)
	}
}
