package store

import (
	"context"
	"database/sql"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/internal/testenv"
)

// TestAPoolerThatSharesSessionsIsRefusedAtStart: behind PgBouncer in
// transaction mode two replicas both led the relay (its lease is a session
// advisory lock, which landed on pooled sessions), sent rows twice and left
// the lock with a pooled session after both exited; and with pgx's prepared
// statements handler transactions failed "prepared statement does not
// exist" and good events were dead-lettered. Open now refuses such a URL
// and says why and what to do, whatever the pool's size; a pool in session
// mode, which gives each connection a session of its own, is taken.
func TestAPoolerThatSharesSessionsIsRefusedAtStart(t *testing.T) {
	base := testenv.RequirePostgres(t)
	pooler := []string{"own server session", "pool_mode=transaction", "session mode", "database.url"}
	tests := []struct {
		mode     string
		poolSize int
		wantErr  []string // every one appears in the error; none: Open succeeds
	}{
		{"transaction", 1, pooler},
		{"transaction", 4, pooler},
		{"statement", 4, pooler},
		{"session", 4, nil},
		// Two sessions are all the check takes: with max_open_conns as
		// large as the pool, a third would wait for ever.
		{"session", 2, nil},
		// One is too few; the pooler queues the second's statement, and
		// the check says what it waited for.
		{"session", 1, []string{"no second session", "two at once"}},
	}
	for _, tt := range tests {
		t.Run(tt.mode+"/"+strconv.Itoa(tt.poolSize), func(t *testing.T) {
			schemaURL := testenv.PostgresSchema(t, base)
			su, err := url.Parse(schemaURL)
			if err != nil {
				t.Fatal(err)
			}
			schema := su.Query().Get("search_path")
			through := testenv.PgBouncer(t, base, tt.mode, tt.poolSize, schema)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			db, err := Open(ctx, Config{Driver: Postgres, URL: through, MaxOpenConns: tt.poolSize})
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Open through a pool in %s mode: %v", tt.mode, err)
				}
				defer db.Close()
				var n int
				if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'eventfn_outbox'`, schema).Scan(&n); err != nil {
					t.Fatalf("find the outbox: %v", err)
				}
				if n != 1 {
					t.Fatalf("schema %s has %d outbox tables after Open, want 1", schema, n)
				}
				return
			}
			if err == nil {
				_ = db.Close()
				t.Fatalf("Open through a pool in %s mode succeeded; want it refused", tt.mode)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			// Refused before the migration: nothing half-made in the schema.
			direct, err := sql.Open("pgx", base)
			if err != nil {
				t.Fatal(err)
			}
			defer direct.Close()
			var n int
			if err := direct.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1`, schema).Scan(&n); err != nil {
				t.Fatalf("count the tables of %s: %v", schema, err)
			}
			if n != 0 {
				t.Fatalf("schema %s has %d tables after a refused Open, want none", schema, n)
			}
		})
	}
}

// TestTheSessionCheckFitsInTwoConnections: a role whose connection limit is
// 2 (as a small managed plan or a careful operator sets) started eventfn's
// store with max_open_conns 1 or 2 before the session check; the check
// opened two sessions beside the pool's idle one and start-up failed with
// "too many connections for role". It now takes one of the pool's.
func TestTheSessionCheckFitsInTwoConnections(t *testing.T) {
	base := testenv.RequirePostgres(t)
	schemaURL := testenv.PostgresSchema(t, base)
	u, err := url.Parse(schemaURL)
	if err != nil {
		t.Fatal(err)
	}
	schema := u.Query().Get("search_path")
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	role := testenv.UniqueName("limited_")
	for _, stmt := range []string{
		`CREATE ROLE ` + role + ` LOGIN CONNECTION LIMIT 2`,
		`GRANT ALL ON SCHEMA ` + schema + ` TO ` + role,
	} {
		if _, err := admin.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t.Cleanup(func() {
		if _, err := admin.ExecContext(context.Background(), `DROP OWNED BY `+role+`; DROP ROLE `+role); err != nil {
			t.Logf("drop role %s: %v", role, err)
		}
		_ = admin.Close()
	})
	u.User = url.User(role)
	for _, maxOpen := range []int{1, 2} {
		db, err := Open(ctx, Config{Driver: Postgres, URL: u.String(), MaxOpenConns: maxOpen})
		if err != nil {
			t.Fatalf("Open as a role limited to 2 connections, max_open_conns %d: %v", maxOpen, err)
		}
		// Close waits for nothing on the server: the next Open could meet
		// this one's sessions still ending, and be refused for them.
		_ = db.Close()
		for {
			var n int
			if err := admin.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_stat_activity WHERE usename = $1`, role).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("%d sessions of %s left after Close", n, role)
			}
			time.Sleep(10 * time.Millisecond) // polling interval
		}
	}
}
