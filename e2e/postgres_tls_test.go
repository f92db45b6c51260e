package e2e

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/wiring"
)

// postgresTLSURL is a URL of the CI PostgreSQL over TLS that ci/services.sh
// names, or the test fails on the real pass (where it must run) and skips on
// the embedded one (there is no PostgreSQL there).
func postgresTLSURL(t *testing.T, name string) string {
	t.Helper()
	if testenv.DatabaseURL() == "" {
		t.Skip("PostgreSQL over TLS: runs in the real pass")
	}
	u := os.Getenv(name)
	if u == "" {
		t.Fatalf("%s is unset: ci/services.sh env names it when PostgreSQL runs with TLS", name)
	}
	return u
}

// TestTheReferenceFlowOverPostgresTLS runs orders through the whole chain
// with every database connection on TLS: sslmode=verify-full with the CA
// file, and a client certificate as the only credential. Each form is the
// URL the README documents.
func TestTheReferenceFlowOverPostgresTLS(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, env string }{
		{"verify-full", "EVENTFN_TEST_DATABASE_TLS_URL"},
		{"client certificate", "EVENTFN_TEST_DATABASE_CERT_URL"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			app := testenv.UniqueName("tls")
			u := testenv.PostgresSchema(t, postgresTLSURL(t, c.env)) + "&application_name=" + app
			cfg := newEngines(t).config(t, func(cfg *configs.Config) { cfg.Database.URL = u })
			a := startApp(t, cfg)
			ids := []string{a.placeOrder(t, "tls1@example.com"), a.placeOrder(t, "tls2@example.com")}
			a.waitEmailed(t, ids, 90*time.Second)
			db := openDB(t, cfg)
			var conns, plain int
			// Every connection the app and its URL opened is encrypted.
			if err := db.QueryRowContext(context.Background(), `SELECT count(*), count(*) FILTER (WHERE NOT s.ssl)
				FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1`, app).Scan(&conns, &plain); err != nil {
				t.Fatal(err)
			}
			if conns == 0 || plain != 0 {
				t.Errorf("%d of %d connections are not on TLS", plain, conns)
			}
		})
	}
}

// TestAnUntrustedPostgresCertificateEndsStartUp: verify-full against a CA
// that did not sign the server's certificate fails at once, naming the
// database, and shows no password.
func TestAnUntrustedPostgresCertificateEndsStartUp(t *testing.T) {
	t.Parallel()
	base := postgresTLSURL(t, "EVENTFN_TEST_DATABASE_TLS_URL")
	other := testenv.NewTLSFiles(t)
	u := strings.Replace(base, "postgres@", "postgres:s3cr3t-marker@", 1)
	u = u[:strings.Index(u, "sslrootcert=")] + "sslrootcert=" + other.CA
	cfg := newEngines(t).config(t, func(cfg *configs.Config) { cfg.Database.URL = u })
	logs := &testenv.LogBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	_, cleanup, err := wiring.BuildApp(ctx, wiring.BaseConfig(cfg), slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err == nil {
		cleanup()
		t.Fatal("eventfn started against a database whose certificate it cannot verify")
	}
	// It must end on the refusal, not hang in the handshake until the
	// minute is out. (Not a time limit: on a starved machine one TLS
	// handshake can take seconds.)
	t.Logf("start-up gave up after %s", time.Since(start).Round(time.Millisecond))
	if ctx.Err() != nil { // its own handshake timeouts are refusals too
		t.Errorf("start-up waited out its deadline instead of giving up on the refusal: %v", err)
	}
	if !strings.Contains(err.Error(), "certificate") || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("the error does not say which database and that its certificate failed: %v", err)
	}
	for _, line := range append(strings.Split(logs.String(), "\n"), err.Error()) {
		if strings.Contains(line, "s3cr3t") {
			t.Errorf("the password is shown: %s", line)
		}
	}
}
