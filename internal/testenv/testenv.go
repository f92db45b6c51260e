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
