// Package testenv tells tests which engines to run against. With no variables
// set they use the embedded engines (kfake and SQLite); EVENTFN_TEST_KAFKA_BROKERS
// and EVENTFN_TEST_DATABASE_URL name real Apache Kafka and PostgreSQL. Under
// CI=true a test that needs a real engine fails instead of skipping, so a CI run
// cannot pass by silently testing less; the one exception is a pass that
// declares itself embedded-only with EVENTFN_TEST_ENGINES=embedded (.ci/run's
// second pass, after the real-engine pass ran those tests).
package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// Variables that name real engines.
const (
	KafkaBrokersVar = "EVENTFN_TEST_KAFKA_BROKERS"
	DatabaseURLVar  = "EVENTFN_TEST_DATABASE_URL"
	// EnginesVar=embedded declares a deliberately embedded-only pass.
	EnginesVar = "EVENTFN_TEST_ENGINES"
)

// KafkaBrokers returns the real brokers named for tests, or nil.
func KafkaBrokers() []string {
	v := strings.TrimSpace(os.Getenv(KafkaBrokersVar))
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// DatabaseURL returns the PostgreSQL URL named for tests, or "".
func DatabaseURL() string { return strings.TrimSpace(os.Getenv(DatabaseURLVar)) }

// RequireKafka returns the real brokers or skips; under CI=true it fails instead.
func RequireKafka(t testing.TB) []string {
	t.Helper()
	b := KafkaBrokers()
	if len(b) == 0 {
		missing(t, KafkaBrokersVar, "a real Apache Kafka broker (start one with ci/services.sh up)")
	}
	return b
}

// RequirePostgres returns the PostgreSQL URL or skips; under CI=true it fails instead.
func RequirePostgres(t testing.TB) string {
	t.Helper()
	u := DatabaseURL()
	if u == "" {
		missing(t, DatabaseURLVar, "a real PostgreSQL server (start one with ci/services.sh up)")
	}
	return u
}

func missing(t testing.TB, variable, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" && os.Getenv(EnginesVar) != "embedded" {
		t.Fatalf("%s is not set: this test needs %s, and CI=true forbids skipping it", variable, what)
	}
	t.Skipf("%s is not set: this test needs %s", variable, what)
}

// UniqueName returns prefix plus a random suffix, safe as a topic, group or schema name.
func UniqueName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// PostgresSchema creates a fresh schema in the database at baseURL, drops it when
// the test ends, and returns a URL whose connections use it. Tests sharing one
// server stay apart this way.
func PostgresSchema(t testing.TB, baseURL string) string {
	t.Helper()
	schema := UniqueName("t_")
	admin, err := sql.Open("pgx", baseURL)
	if err != nil {
		t.Fatalf("open %s: %v", baseURL, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+schema); err != nil {
		t.Fatalf("create schema %s: %v", schema, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
		_ = admin.Close()
	})
	u, err := url.Parse(baseURL)
	if err != nil {
		t.Fatalf("parse %s: %v", baseURL, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// PostgresDatabase is a database of its own on a test server, for a test
// that changes what only a whole database can have (a setting of every
// session), which the tests beside it must not see.
type PostgresDatabase struct {
	// URL connects to it.
	URL   string
	name  string
	admin *sql.DB
}

// NewPostgresDatabase creates a database on the server at baseURL and drops
// it when the test ends.
func NewPostgresDatabase(t testing.TB, baseURL string) *PostgresDatabase {
	t.Helper()
	admin, err := sql.Open("pgx", baseURL)
	if err != nil {
		t.Fatalf("open %s: %v", baseURL, err)
	}
	d := &PostgresDatabase{name: UniqueName("eventfn_db_"), admin: admin}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE `+d.name); err != nil {
		t.Fatalf("create database %s: %v", d.name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, `DROP DATABASE `+d.name+` WITH (FORCE)`); err != nil {
			t.Logf("drop database %s: %v", d.name, err)
		}
		_ = admin.Close()
	})
	u, err := url.Parse(baseURL)
	if err != nil {
		t.Fatalf("parse %s: %v", baseURL, err)
	}
	u.Path = "/" + d.name
	d.URL = u.String()
	return d
}

// Name is the database's name.
func (d *PostgresDatabase) Name() string { return d.name }

// Set makes setting value the database's default for new sessions (ALTER
// DATABASE ... SET), as an operator or a managed service sets it.
func (d *PostgresDatabase) Set(t testing.TB, setting, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stmt := `ALTER DATABASE ` + d.name + ` SET ` + setting + ` = '` + strings.ReplaceAll(value, "'", "''") + `'`
	if _, err := d.admin.ExecContext(ctx, stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

// SetReadOnly makes the server take no writes in this database, or take
// them again, as a failover to a standby or a managed service whose disk
// filled does: the setting for new sessions, then every open session ended
// (as the failover ends them), so that their pools open new ones.
func (d *PostgresDatabase) SetReadOnly(t testing.TB, on bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stmt := `ALTER DATABASE ` + d.name + ` RESET default_transaction_read_only`
	if on {
		stmt = `ALTER DATABASE ` + d.name + ` SET default_transaction_read_only = on`
	}
	if _, err := d.admin.ExecContext(ctx, stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
	if _, err := d.admin.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, d.name); err != nil {
		t.Fatalf("end the sessions of %s: %v", d.name, err)
	}
}

// LogBuffer collects a logger's output for a test; it is safe for the
// concurrent writes of a running app and the test's reads.
type LogBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String is everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// AwaitAdvisoryLockWait returns once a session of database has waited for
// an advisory lock for longer than atLeast. It fails the test if returned
// delivers first (the waiter gave up: what the caller tests against) or
// ctx ends; what names the waiter in the failure.
func AwaitAdvisoryLockWait(ctx context.Context, t testing.TB, admin *sql.DB, database string, atLeast time.Duration, returned <-chan error, what string) {
	t.Helper()
	for {
		var waiting bool
		if err := admin.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
			WHERE datname = $1 AND wait_event_type = 'Lock' AND wait_event = 'advisory'
			AND now() - query_start > $2 * interval '1 millisecond')`, database, atLeast.Milliseconds()).Scan(&waiting); err != nil {
			t.Fatalf("look for a wait for an advisory lock: %v", err)
		}
		if waiting {
			return
		}
		select {
		case err := <-returned:
			t.Fatalf("%s returned before it had waited %s for the lock: %v", what, atLeast, err)
		case <-ctx.Done():
			t.Fatalf("%s never waited %s for the lock", what, atLeast)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Querier runs a query: a *sql.DB, *sql.Conn or *sql.Tx.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Column is the one column of query's rows, in order, scanned as T; a
// failure fails t.
func Column[T any](ctx context.Context, t testing.TB, db Querier, query string, args ...any) []T {
	t.Helper()
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var v T
		if err := rows.Scan(&v); err != nil {
			t.Fatalf("%s: scan: %v", query, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return out
}
