package store

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	neturl "net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/eventfn/eventfn/internal/testenv"
)

// TestUnavailableTellsADatabaseThatCannotServeFromBadWork: the errors a
// database gives when it cannot serve now (work that failed so goes through
// once it is back, and must not be dead-lettered) against the errors of work
// that is wrong (retrying does not help). Every error is the engine's own,
// made here, but out of memory: running the shared server out of it (by
// filling its lock table) would fail the tests beside this one; the fault
// suite does it on a server of its own (TestPostgresLockTableFull). A
// database turned read-only (a failover to a standby, a managed service
// whose disk filled) was taken for bad work, and its events were
// dead-lettered; so was a full SQLite disk. A sort past temp_file_limit was
// taken for the server short of resources, and its event waited without end.
func TestUnavailableTellsADatabaseThatCannotServeFromBadWork(t *testing.T) {
	ctx := context.Background()
	// What an error says: the work is wrong, or the database cannot serve.
	type verdict bool
	const (
		work   verdict = false
		server verdict = true
	)
	type engineCase struct {
		name string
		err  func(t *testing.T, db *sql.DB) error
		want verdict
	}
	run := func(t *testing.T, db *sql.DB, cases []engineCase) {
		t.Helper()
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				err := c.err(t, db)
				if err == nil {
					t.Fatal("the engine gave no error")
				}
				wrapped := fmt.Errorf("record event e-1 in the inbox: %w", err)
				if got := Unavailable(wrapped); got != bool(c.want) {
					t.Fatalf("Unavailable(%v) = %v, want %v", wrapped, got, c.want)
				}
			})
		}
	}
	exec := func(query string) func(*testing.T, *sql.DB) error {
		return func(t *testing.T, db *sql.DB) error {
			_, err := db.ExecContext(ctx, query)
			return err
		}
	}

	t.Run("nil", func(t *testing.T) {
		if Unavailable(nil) {
			t.Fatal("Unavailable(nil) = true")
		}
	})

	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "u.db")
		db, err := Open(ctx, Config{Driver: SQLite, SQLitePath: path})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, `CREATE TABLE probe (id INTEGER PRIMARY KEY, v BLOB)`); err != nil {
			t.Fatal(err)
		}
		run(t, db.DB, []engineCase{
			{"a syntax error", exec(`INSER INTO probe VALUES (1, 'x')`), work},
			{"a key given twice", func(t *testing.T, db *sql.DB) error {
				if _, err := db.ExecContext(ctx, `INSERT INTO probe VALUES (7, 'x')`); err != nil {
					t.Fatal(err)
				}
				_, err := db.ExecContext(ctx, `INSERT INTO probe VALUES (7, 'x')`)
				return err
			}, work},
			{"the disk full", func(t *testing.T, db *sql.DB) error {
				// max_page_count is the connection's: this one is limited to
				// the pages the file has, as a full disk limits every one.
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer func() {
					_, _ = conn.ExecContext(ctx, `PRAGMA max_page_count = 4294967294`)
					_ = conn.Close()
				}()
				var pages int
				if err := conn.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
					t.Fatal(err)
				}
				if _, err := conn.ExecContext(ctx, fmt.Sprintf(`PRAGMA max_page_count = %d`, pages)); err != nil {
					t.Fatal(err)
				}
				_, err = conn.ExecContext(ctx, `INSERT INTO probe (v) VALUES (zeroblob(1000000))`)
				return err
			}, server},
			{"the file read-only", func(t *testing.T, _ *sql.DB) error {
				ro, err := OpenSQLite("file:" + path + "?mode=ro")
				if err != nil {
					t.Fatal(err)
				}
				defer ro.Close()
				_, err = ro.ExecContext(ctx, `INSERT INTO probe (v) VALUES ('x')`)
				return err
			}, server},
			{"a connection set query_only", func(t *testing.T, db *sql.DB) error {
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer func() {
					_, _ = conn.ExecContext(ctx, `PRAGMA query_only = OFF`)
					_ = conn.Close()
				}()
				if _, err := conn.ExecContext(ctx, `PRAGMA query_only = ON`); err != nil {
					t.Fatal(err)
				}
				_, err = conn.ExecContext(ctx, `INSERT INTO probe (v) VALUES ('x')`)
				return err
			}, server},
			{"the write lock held past the busy timeout", func(t *testing.T, db *sql.DB) error {
				holder, err := db.BeginTx(ctx, nil) // IMMEDIATE: takes the write lock
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = holder.Rollback() }()
				other, err := OpenSQLite("file:" + path + "?_pragma=busy_timeout(50)&_txlock=immediate")
				if err != nil {
					t.Fatal(err)
				}
				defer other.Close()
				_, err = other.ExecContext(ctx, `INSERT INTO probe (v) VALUES ('x')`)
				return err
			}, server},
		})
	})

	t.Run("postgres", func(t *testing.T) {
		url := testenv.PostgresSchema(t, testenv.RequirePostgres(t))
		db, err := Open(ctx, Config{Driver: Postgres, URL: url})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, `CREATE TABLE probe (id int PRIMARY KEY)`); err != nil {
			t.Fatal(err)
		}
		run(t, db.DB, []engineCase{
			{"a syntax error", exec(`INSER INTO probe VALUES (1)`), work},
			{"a key given twice", exec(`INSERT INTO probe VALUES (1), (1)`), work},
			{"a value out of range", exec(`INSERT INTO probe VALUES (2147483648)`), work},
			{"a NUL in text", func(t *testing.T, db *sql.DB) error {
				_, err := db.ExecContext(ctx, `SELECT $1::text`, "a\x00")
				return err
			}, work},
			{"a sort past temp_file_limit (one statement's limit)", func(t *testing.T, db *sql.DB) error {
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer func() {
					_, _ = conn.ExecContext(ctx, `RESET temp_file_limit`)
					_, _ = conn.ExecContext(ctx, `RESET work_mem`)
					_ = conn.Close()
				}()
				if _, err := conn.ExecContext(ctx, `SET work_mem = '64kB'`); err != nil {
					t.Fatal(err)
				}
				if _, err := conn.ExecContext(ctx, `SET temp_file_limit = '100kB'`); err != nil {
					t.Fatal(err)
				}
				_, err = conn.ExecContext(ctx, `SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC`)
				return err
			}, work},
			{"out of memory (made here, see above)", func(*testing.T, *sql.DB) error {
				return &pgconn.PgError{Severity: "ERROR", Code: "53200", Message: "out of memory"}
			}, server},
			{"too many connections (a role's limit)", func(t *testing.T, db *sql.DB) error {
				role := testenv.UniqueName("eventfn_limited_")
				if _, err := db.ExecContext(ctx, `CREATE ROLE `+role+` LOGIN CONNECTION LIMIT 0`); err != nil {
					t.Fatal(err)
				}
				defer func() { _, _ = db.ExecContext(ctx, `DROP ROLE `+role) }()
				u, err := neturl.Parse(url)
				if err != nil {
					t.Fatal(err)
				}
				u.User = neturl.User(role)
				limited, err := sql.Open("pgx", u.String())
				if err != nil {
					t.Fatal(err)
				}
				defer limited.Close()
				return limited.PingContext(ctx)
			}, server},
			{"a write the server takes read-only", func(t *testing.T, db *sql.DB) error {
				tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = tx.Rollback() }()
				_, err = tx.ExecContext(ctx, `INSERT INTO probe VALUES (3)`)
				return err
			}, server},
			{"the server refusing connections", func(t *testing.T, _ *sql.DB) error {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				addr := l.Addr().String()
				_ = l.Close()
				gone, err := sql.Open("pgx", "postgres://postgres@"+addr+"/x?connect_timeout=5")
				if err != nil {
					t.Fatal(err)
				}
				defer gone.Close()
				ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				return gone.PingContext(ctx)
			}, server},
			{"a session ended for idling (idle_session_timeout)", func(t *testing.T, db *sql.DB) error {
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if _, err := conn.ExecContext(ctx, `SET idle_session_timeout = '20ms'`); err != nil {
					t.Fatal(err)
				}
				// The server ends the session after 20 ms idle; until then
				// a statement still goes through.
				deadline := time.Now().Add(10 * time.Second)
				for {
					if _, err := conn.ExecContext(ctx, `SELECT 1`); err != nil {
						return err
					}
					if time.Now().After(deadline) {
						t.Fatal("the session was not ended for idling")
					}
					time.Sleep(50 * time.Millisecond) // idles the session: the fault itself
				}
			}, server},
			{"a session ended by the administrator", func(t *testing.T, db *sql.DB) error {
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				_, err = conn.ExecContext(ctx, `SELECT pg_terminate_backend(pg_backend_pid())`)
				return err
			}, server},
		})
	})
}

// TestStatementTimedOutTellsACancelledStatement: a statement PostgreSQL
// cancelled at its statement_timeout is told apart from the failures that a
// smaller statement would meet as well.
func TestStatementTimedOutTellsACancelledStatement(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, Config{Driver: Postgres, URL: testenv.PostgresSchema(t, testenv.RequirePostgres(t)), MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, tc := range []struct {
		name  string
		query string
		want  bool
	}{
		{"past statement_timeout", `SET statement_timeout = '50ms'; SELECT pg_sleep(5)`, true},
		{"a division by zero", `SET statement_timeout = 0; SELECT 1/0`, false},
		{"a relation that does not exist", `SET statement_timeout = 0; SELECT * FROM no_such_table`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := db.ExecContext(ctx, tc.query)
			if err == nil {
				t.Fatal("no error")
			}
			wrapped := fmt.Errorf("mark 500 outbox rows forwarded: %w", err)
			if got := StatementTimedOut(wrapped); got != tc.want {
				t.Fatalf("StatementTimedOut(%v) = %v, want %v", wrapped, got, tc.want)
			}
		})
	}
	if StatementTimedOut(nil) || StatementTimedOut(context.DeadlineExceeded) {
		t.Fatal("StatementTimedOut is true for nil or a context's end")
	}
}

// TestUniqueViolationTellsACollisionFromOtherBadWork: a write that collides
// with a row on a unique index or a primary key is told apart from other
// errors of bad work, on each engine, through a wrapping error.
func TestUniqueViolationTellsACollisionFromOtherBadWork(t *testing.T) {
	ctx := context.Background()
	for _, e := range freshDatabases {
		t.Run(e.name, func(t *testing.T) {
			db, err := Open(ctx, e.cfg(t))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := db.ExecContext(ctx, `CREATE TABLE u (id INTEGER PRIMARY KEY, k TEXT NOT NULL)`); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, `CREATE UNIQUE INDEX u_k ON u (k) WHERE k <> ''`); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, `INSERT INTO u (id, k) VALUES (1, 'a')`); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name  string
				query string
				want  bool
			}{
				{"the same primary key", `INSERT INTO u (id, k) VALUES (1, 'b')`, true},
				{"the same key on a partial unique index", `INSERT INTO u (id, k) VALUES (2, 'a')`, true},
				{"a NULL where none may be", `INSERT INTO u (id, k) VALUES (3, NULL)`, false},
				{"a table that does not exist", `INSERT INTO nothing (id) VALUES (1)`, false},
			} {
				t.Run(tc.name, func(t *testing.T) {
					_, err := db.ExecContext(ctx, tc.query)
					if err == nil {
						t.Fatal("no error")
					}
					wrapped := fmt.Errorf("statement 1 of 2: %w", err)
					if got := UniqueViolation(wrapped); got != tc.want {
						t.Fatalf("UniqueViolation(%v) = %v, want %v", wrapped, got, tc.want)
					}
				})
			}
			if UniqueViolation(nil) || UniqueViolation(context.Canceled) {
				t.Fatal("UniqueViolation is true for nil or a context's end")
			}
		})
	}
}
