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
// statement_timeout is shorter than one retention DELETE (a trigger makes
// each row's delete take 5 ms, so 500 rows take 2.5 s against 300 ms) once
// failed every sweep, while the table grew. A sweep now halves its batches
// until they get through and removes every row due, and the next sweep
// without a cancel doubles them back.
func TestARetentionSweepThatTimesOutGoesOnWithSmallerBatches(t *testing.T) {
	for _, tc := range []struct {
		table string
		fill  string
		cfg   configs.Retention
	}{
		{"eventfn_outbox", `INSERT INTO eventfn_outbox (topic, headers, payload, state, done_at)
			SELECT 't', '{}', '\x00', 1, now() - interval '1 hour' FROM generate_series(1, 600)`,
			configs.Retention{Outbox: time.Minute, BatchSize: 500}},
		{"eventfn_inbox", `INSERT INTO eventfn_inbox (handler, event_id, event_type, processed_at)
			SELECT 'h', 'e-' || i, 't', now() - interval '1 hour' FROM generate_series(1, 600) AS i`,
			configs.Retention{Inbox: time.Minute, BatchSize: 500}},
	} {
		t.Run(tc.table, func(t *testing.T) {
			pg := testenv.NewPostgresDatabase(t, testenv.RequirePostgres(t))
			ctx := context.Background()
			setup, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: pg.URL, MaxOpenConns: 2})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = setup.Close() })
			for _, stmt := range []string{
				`CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.005); RETURN OLD; END $$`,
				`CREATE TRIGGER slow_delete BEFORE DELETE ON ` + tc.table + ` FOR EACH ROW EXECUTE FUNCTION slow_delete()`,
				tc.fill,
			} {
				if _, err := setup.ExecContext(ctx, stmt); err != nil {
					t.Fatalf("%s: %v", stmt, err)
				}
			}
			pg.Set(t, "statement_timeout", "300ms")
			db, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: pg.URL, MaxOpenConns: 4})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			logs := &testenv.LogBuffer{}
			c, err := newCleaner(tc.cfg, db, relay.NewTable(db), prometheus.NewRegistry(), slog.New(slog.NewTextHandler(logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.sweep(ctx); err != nil {
				t.Fatalf("the sweep failed: %v\n%s", err, logs.String())
			}
			if n := rowCount(t, setup, tc.table); n != 0 {
				t.Fatalf("%d rows of %s left after the sweep", n, tc.table)
			}
			if !strings.Contains(logs.String(), "statement_timeout") || c.limit >= tc.cfg.BatchSize {
				t.Fatalf("batch limit %d after the sweep, and the log:\n%s", c.limit, logs.String())
			}
			shrunk := c.limit
			if err := c.sweep(ctx); err != nil {
				t.Fatal(err)
			}
			if c.limit != min(2*shrunk, tc.cfg.BatchSize) {
				t.Fatalf("a sweep without a cancel left the limit at %d, want %d", c.limit, 2*shrunk)
			}
		})
	}
}

func rowCount(t *testing.T, db *store.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(context.Background(), `SELECT count(*) FROM `+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
