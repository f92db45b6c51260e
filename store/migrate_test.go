package store

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/eventfn/eventfn/internal/testenv"
)

// TestTheInboxMigrationKeepsEveryProcessedEvent: the inbox is keyed by
// (handler, source, event_id) from migration 4 on. A database that processed
// events before it keeps every row, under the empty source, so a redelivery of
// such an event is still found (claimInbox matches an empty source by id), and
// the new key lets two sources use one id. Down goes back to (handler,
// event_id) and keeps one row per id.
func TestTheInboxMigrationKeepsEveryProcessedEvent(t *testing.T) {
	for _, e := range freshDatabases {
		t.Run(e.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cfg := e.cfg(t)
			db, err := connect(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			p := provider(t, db)
			if _, err := p.UpTo(ctx, 3); err != nil {
				t.Fatalf("migrate to 3: %v", err)
			}
			old := [][3]string{{"charge-payment", "e1", "order.placed"}, {"charge-payment", "e2", "order.placed"}, {"send-confirmation", "e1", "payment.confirmed"}}
			for _, r := range old {
				if _, err := db.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type, processed_at) VALUES ($1, $2, $3, '2026-01-02 03:04:05')`, r[0], r[1], r[2]); err != nil {
					t.Fatal(err)
				}
			}

			if err := migrate(ctx, db, migrationLocker(db, cfg.SQLitePath, slog.New(slog.DiscardHandler)), slog.New(slog.DiscardHandler)); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := db.QueryRowContext(ctx, `SELECT count(*) FROM eventfn_inbox WHERE source = '' AND processed_at = '2026-01-02 03:04:05'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != len(old) {
				t.Fatalf("%d of the %d rows kept with an empty source and their time", n, len(old))
			}
			claims := []struct {
				source, id string
				new        bool
			}{
				{"", "e1", false},       // an old row's key is still taken
				{"shop-a", "e1", true},  // another source's e1 is another event
				{"shop-b", "e1", true},  // and so is a third's
				{"shop-a", "e1", false}, // the same source and id once more is not
			}
			for _, c := range claims {
				res, err := db.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, source, event_id, event_type) VALUES ('charge-payment', $1, $2, 'order.placed') ON CONFLICT DO NOTHING`, c.source, c.id)
				if err != nil {
					t.Fatal(err)
				}
				if got, _ := res.RowsAffected(); (got == 1) != c.new {
					t.Fatalf("claim (%q, %q): inserted %d rows, want a new row: %v", c.source, c.id, got, c.new)
				}
			}

			if _, err := p.DownTo(ctx, 3); err != nil {
				t.Fatalf("migrate down to 3: %v", err)
			}
			if err := db.QueryRowContext(ctx, `SELECT count(*) FROM eventfn_inbox`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != len(old) {
				t.Fatalf("after down, %d rows, want one per (handler, id): %d", n, len(old))
			}
		})
	}
}

// freshDatabases are the engines, each with a function that gives a
// database of its own, not yet migrated.
var freshDatabases = []struct {
	name string
	cfg  func(t *testing.T) Config
}{
	{"sqlite", func(t *testing.T) Config {
		return Config{Driver: SQLite, SQLitePath: filepath.Join(t.TempDir(), "eventfn.db")}
	}},
	{"postgres", func(t *testing.T) Config {
		return Config{Driver: Postgres, URL: testenv.PostgresSchema(t, testenv.RequirePostgres(t)), MaxOpenConns: 2}
	}},
}

func provider(t *testing.T, db *DB) *goose.Provider {
	t.Helper()
	dialect := goose.DialectSQLite3
	if db.Driver == Postgres {
		dialect = goose.DialectPostgres
	}
	dir, err := fs.Sub(migrations, "migrations/"+string(db.Driver))
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(dialect, db.DB, dir)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestASchemaNewerThanTheBinaryIsUsedWithAWarning: an eventfn older than
// the database's schema (a rollback, an old replica restarted during a
// deploy) starts on it, as the migrations only add, and says so at WARN
// with both versions; a schema this release made says nothing.
func TestASchemaNewerThanTheBinaryIsUsedWithAWarning(t *testing.T) {
	for _, e := range freshDatabases {
		t.Run(e.name, func(t *testing.T) {
			ctx := context.Background()
			cfg := e.cfg(t)
			open := func() (*DB, string) {
				t.Helper()
				logs := &testenv.LogBuffer{}
				c := cfg
				c.Logger = slog.New(slog.NewTextHandler(logs, nil))
				db, err := Open(ctx, c)
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				return db, logs.String()
			}
			db, logs := open()
			if strings.Contains(logs, "level=WARN") {
				t.Fatalf("a schema this release made logged a warning:\n%s", logs)
			}
			sources := provider(t, db).ListSources()
			// A later release's migration, as its goose row says.
			_, err := db.ExecContext(ctx, `INSERT INTO goose_db_version (version_id, is_applied) VALUES (990, TRUE)`)
			_ = db.Close()
			if err != nil {
				t.Fatal(err)
			}
			db, logs = open()
			defer db.Close()
			want := fmt.Sprintf("schema_version=990 this_release_version=%d", sources[len(sources)-1].Version)
			if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, want) {
				t.Fatalf("a schema at 990 logged no warning with %q:\n%s", want, logs)
			}
		})
	}
}
