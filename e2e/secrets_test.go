package e2e

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/wiring"
)

// TestADatabasePasswordIsNeverShown: eventfn is started, at debug level,
// against a PostgreSQL that does not answer, with a password both in the
// URL's user info and as a ?password= parameter. The start fails; neither
// its error nor any log line shows the password. The parameter form once
// reached the log and the /readyz body, and only the user info was masked.
func TestADatabasePasswordIsNeverShown(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-marker"
	e := newEngines(t)
	cfg := e.config(t, func(c *configs.Config) {
		c.Database.URL = "postgres://app:" + secret + "@127.0.0.1:1/eventfn?connect_timeout=1&password=" + secret + "&sslpassword=" + secret
	})
	logs := &testenv.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	built, cleanup, err := wiring.BuildApp(ctx, wiring.BaseConfig(cfg), logger)
	if err == nil {
		cleanup()
		_ = built
		t.Fatal("eventfn started without its database")
	}
	t.Logf("start-up error: %v", err)
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("the start-up error shows the password: %v", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("the start-up error does not say which database: %v", err)
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "s3cr3t") {
			t.Errorf("a log line shows the password: %s", line)
		}
	}
}

// TestTheDataDirectoryIsPrivate: the data directory holds the embedded
// broker's log and the SQLite database, customer emails both. It was 0755 and
// the database 0644, readable by every user of the host. A data directory
// that exists with wider modes, as every earlier run left it, is narrowed.
func TestTheDataDirectoryIsPrivate(t *testing.T) {
	t.Parallel()
	cfg, err := configs.Load(configs.Options{Profile: "local"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(cfg.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = []string{"127.0.0.1:0"}
	cfg.HTTP.Addr = "127.0.0.1:0"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	built, cleanup, err := wiring.BuildApp(ctx, wiring.BaseConfig(cfg), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	_ = built

	mode := func(path string) os.FileMode {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	if m := mode(cfg.DataDir); m != 0o700 {
		t.Errorf("data directory mode %v, want 0700", m)
	}
	db := cfg.Database.SQLitePath(cfg.DataDir)
	for _, f := range []string{db, db + "-wal", db + "-shm"} {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) && f != db {
			continue // written on the first commit
		}
		if m := mode(f); m != 0o600 {
			t.Errorf("%s mode %v, want 0600", filepath.Base(f), m)
		}
	}
}
