package store

import (
	"context"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/internal/testenv"
)

// TestTheSQLiteWriterCheckpointsLessOftenThanSQLitesDefault: the writer,
// whose commits every transaction waits for, checkpoints every
// walCheckpointPages; readers never commit, so theirs is moot.
func TestTheSQLiteWriterCheckpointsLessOftenThanSQLitesDefault(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, Config{Driver: SQLite, SQLitePath: filepath.Join(t.TempDir(), "wal.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var pages int
	if err := db.QueryRowContext(ctx, `PRAGMA wal_autocheckpoint`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if pages != walCheckpointPages || pages <= 1000 {
		t.Fatalf("the writer checkpoints every %d pages, want %d", pages, walCheckpointPages)
	}
}

// TestASearchPathWithNoSchemaThatExistsIsRefusedClearly: a typo in the
// search_path of database.url leaves PostgreSQL nowhere to create tables.
// Start-up must say so and name the path, not fail in the migration with
// "relation goose_db_version does not exist". A path whose first schema is
// missing but a later one exists is PostgreSQL's own rule: the later one is
// used.
func TestASearchPathWithNoSchemaThatExistsIsRefusedClearly(t *testing.T) {
	base := testenv.RequirePostgres(t)
	existing := testenv.PostgresSchema(t, base)
	u, err := url.Parse(existing)
	if err != nil {
		t.Fatal(err)
	}
	schema := u.Query().Get("search_path")
	missing := testenv.UniqueName("no_such_schema_")
	withPath := func(path string) string {
		v := *u
		q := v.Query()
		q.Set("search_path", path)
		v.RawQuery = q.Encode()
		return v.String()
	}
	tests := []struct {
		name    string
		path    string
		wantErr []string // every one appears in the error; none: Open succeeds
	}{
		{"only a missing schema", missing, []string{"no schema in its search_path", missing, "CREATE SCHEMA"}},
		{"a missing schema, then an existing one", missing + "," + schema, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			db, err := Open(ctx, Config{Driver: Postgres, URL: withPath(tt.path), MaxOpenConns: 2})
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				defer db.Close()
				var n int
				if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'eventfn_outbox'`, schema).Scan(&n); err != nil {
					t.Fatalf("find the outbox: %v", err)
				}
				if n != 1 {
					t.Fatalf("schema %s has %d outbox tables, want 1", schema, n)
				}
				return
			}
			if err == nil {
				db.Close()
				t.Fatalf("Open succeeded with search_path %q", tt.path)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}
