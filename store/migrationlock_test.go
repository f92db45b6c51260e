package store

import (
	"context"
	"database/sql"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventfn/eventfn/internal/testenv"
)

// TestProcessesOpeningAFreshDatabaseTogetherAllStart: replicas of a first
// deploy, or eventfn beside its `dlq` command, open one fresh database at the
// same moment. goose decides what is pending before it applies it, so
// without a lock several applied migration 1 and all but one stopped at
// start-up ("table eventfn_inbox already exists"; on PostgreSQL a duplicate
// key in pg_type). Every one must start, on a database migrated once.
func TestProcessesOpeningAFreshDatabaseTogetherAllStart(t *testing.T) {
	const processes, rounds = 8, 4
	for _, e := range freshDatabases {
		t.Run(e.name, func(t *testing.T) {
			for round := range rounds {
				cfg := e.cfg(t)
				for i, err := range openAtOnce(slices.Repeat([]Config{cfg}, processes)) {
					if err != nil {
						t.Errorf("round %d, process %d of %d: %v", round, i, processes, err)
					}
				}
				assertMigratedOnce(t, cfg)
			}
		})
	}
}

// openAtOnce opens and closes a database per cfgs, all at the same moment,
// each as a process starting would, and returns their errors.
func openAtOnce(cfgs []Config) []error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := make(chan struct{})
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		wg.Go(func() {
			<-start
			db, err := Open(ctx, cfg)
			if err == nil {
				err = db.Close()
			}
			errs[i] = err
		})
	}
	close(start)
	wg.Wait()
	return errs
}

// assertMigratedOnce fails unless the database at cfg has every migration
// recorded as applied exactly once.
func assertMigratedOnce(t *testing.T, cfg Config) {
	t.Helper()
	db, err := connect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var applied, distinct int
	if err := db.QueryRowContext(context.Background(), `SELECT count(*), count(DISTINCT version_id) FROM goose_db_version WHERE version_id > 0 AND is_applied`).Scan(&applied, &distinct); err != nil {
		t.Fatal(err)
	}
	want := len(provider(t, db).ListSources())
	if applied != want || distinct != want {
		t.Fatalf("goose_db_version records %d applied migrations (%d distinct), want each of the %d once", applied, distinct, want)
	}
}

// TestAProcessWaitingForAnothersMigrationSaysSoAndKeepsItsDeadline: while
// another process holds the migration lock (its migration hangs, say an
// ALTER TABLE behind a long transaction), Open waits, says so in the log,
// and gives up at its context's end with an error that names the lock; once
// the lock is given back it starts.
func TestAProcessWaitingForAnothersMigrationSaysSoAndKeepsItsDeadline(t *testing.T) {
	for _, e := range freshDatabases {
		t.Run(e.name, func(t *testing.T) {
			cfg := e.cfg(t)
			holder, err := connect(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Close()
			ctx := context.Background()
			conn, err := holder.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			held := migrationLocker(holder, cfg.SQLitePath, slog.New(slog.DiscardHandler))
			if err := held.SessionLock(ctx, conn); err != nil {
				t.Fatal(err)
			}

			var logs testenv.LogBuffer
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			if db, err := Open(short, cfg); err == nil {
				_ = db.Close()
				t.Fatal("Open migrated while another process held the migration lock")
			} else if !strings.Contains(err.Error(), "migration lock") {
				t.Fatalf("Open's error does not name the migration lock: %v", err)
			}
			if !strings.Contains(logs.String(), "another process is migrating the database") {
				t.Fatalf("the wait was not logged; log:\n%s", logs.String())
			}

			if err := held.SessionUnlock(ctx, conn); err != nil {
				t.Fatal(err)
			}
			db, err := Open(ctx, cfg)
			if err != nil {
				t.Fatalf("Open after the lock was given back: %v", err)
			}
			_ = db.Close()
			assertMigratedOnce(t, cfg)
		})
	}
}

// TestOneSQLiteFileUnderTwoNamesMigratesOnce: processes that name one
// SQLite file by two paths (one a symbolic link to the file) open it at
// once. SQLite follows the link to one database; the lock file was named
// after the path as given, so each name had a lock of its own and two
// processes migrated together (found by a fresh-eyed attack: 3 of 4 rounds
// failed with "table eventfn_inbox already exists").
func TestOneSQLiteFileUnderTwoNamesMigratesOnce(t *testing.T) {
	const processes, rounds = 8, 4
	for round := range rounds {
		dir := t.TempDir()
		file := filepath.Join(dir, "real", "eventfn.db")
		link := filepath.Join(dir, "other", "eventfn.db")
		if err := createPrivateFile(file); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(file, link); err != nil {
			t.Fatal(err)
		}
		cfgs := make([]Config, processes)
		for i := range cfgs {
			cfgs[i] = Config{Driver: SQLite, SQLitePath: file}
			if i%2 == 1 {
				cfgs[i].SQLitePath = link
			}
		}
		for i, err := range openAtOnce(cfgs) {
			if err != nil {
				t.Errorf("round %d, process %d (by the %s): %v", round, i, map[bool]string{true: "link", false: "file"}[i%2 == 1], err)
			}
		}
		assertMigratedOnce(t, Config{Driver: SQLite, SQLitePath: file})
	}
}

// TestAWaitForAnothersMigrationOutlastsTheRolesTimeouts: with
// statement_timeout and lock_timeout set for the database, a replica that
// waited for another's migration longer than them failed to start
// ("canceling statement due to statement timeout"). It now waits as long
// as the migration takes, and its sessions keep the database's timeouts.
func TestAWaitForAnothersMigrationOutlastsTheRolesTimeouts(t *testing.T) {
	base := testenv.RequirePostgres(t)
	d := testenv.NewPostgresDatabase(t, base)
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d.Set(t, "statement_timeout", "200ms")
	d.Set(t, "lock_timeout", "100ms")
	cfg := Config{Driver: Postgres, URL: d.URL, MaxOpenConns: 1}
	holder, err := connect(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	conn, err := holder.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	held := migrationLocker(holder, "", slog.New(slog.DiscardHandler))
	if err := held.SessionLock(ctx, conn); err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	var db *DB
	go func() {
		var err error
		db, err = Open(ctx, cfg)
		opened <- err
	}()
	// The wait outlasts both timeouts many times over.
	testenv.AwaitAdvisoryLockWait(ctx, t, admin, d.Name(), 2*time.Second, opened, "Open")
	if err := held.SessionUnlock(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := <-opened; err != nil {
		t.Fatalf("Open after the lock was given back: %v", err)
	}
	defer db.Close()
	// MaxOpenConns 1: this is the session that waited.
	var timeout string
	if err := db.QueryRowContext(ctx, `SHOW statement_timeout`).Scan(&timeout); err != nil {
		t.Fatal(err)
	}
	if timeout != "200ms" {
		t.Fatalf("statement_timeout after the wait is %s; want the database's 200ms", timeout)
	}
}
