package store

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
	"github.com/pressly/goose/v3/lock"
)

// Migrations of one database run one process at a time. goose decides what
// is pending before it applies it, so two processes starting together on a
// fresh database (replicas of a first deploy, or eventfn beside its own
// `eventfn dlq` command) both applied migration 1, and all but one stopped at
// start-up with "relation already exists" or a duplicate key in pg_type.
// Under the lock a process that waited finds the migrations applied and
// applies nothing.
//
// goose's own PostgreSQL locker is not used: it polls with
// pg_try_advisory_lock at a period of whole seconds, so every waiting
// replica starts at least a second late, and its lock id is one for every
// goose user of the database. SQLite has no session lock at all, and its
// file locks are SQLite's own (closing any other descriptor of the database
// file would drop them), so a lock file of its own beside the database
// stands in.

// migrationLockClass is the first key of eventfn's advisory lock on
// PostgreSQL; the second is the hash of the schema migrated, so deployments
// in different schemas of one database do not wait for each other.
const migrationLockClass = 0x4576466e // "EvFn"

// lockWaitReport is how often a process waiting for another's migration says
// so: a holder that hangs (an ALTER TABLE waiting for a long transaction
// elsewhere) must not look like a start-up that hangs by itself.
const lockWaitReport = 15 * time.Second

// migrationLocker returns the lock that serialises db's migrations.
func migrationLocker(db *DB, sqlitePath string, log *slog.Logger) lock.SessionLocker {
	if db.Driver == Postgres {
		return &advisoryLock{where: db.Where, log: log}
	}
	return sqliteMigrationLock(sqlitePath, log)
}

// sqliteMigrationLock returns the lock that serialises the migrations of the
// SQLite database at sqlitePath.
func sqliteMigrationLock(sqlitePath string, log *slog.Logger) *fileLock {
	where := sqlitePath
	// One lock per database file, whatever name a process gives it: SQLite
	// follows a symbolic link to the one file, and two lock files, one per
	// name, let two processes migrate it at once.
	if resolved, err := filepath.EvalSymlinks(sqlitePath); err == nil {
		sqlitePath = resolved
	}
	return &fileLock{lock: flock.New(sqlitePath+".migrate-lock", flock.SetPermissions(0o600)), where: where, log: log}
}

// advisoryLock is a PostgreSQL session-level advisory lock, taken on the
// connection goose migrates on and given back (or dropped with the session)
// after.
type advisoryLock struct {
	where string
	log   *slog.Logger
}

const advisoryKey = `$1, hashtext(coalesce(current_schema(), ''))`

func (l *advisoryLock) SessionLock(ctx context.Context, conn *sql.Conn) error {
	var got bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock(`+advisoryKey+`)`, migrationLockClass).Scan(&got); err != nil {
		return fmt.Errorf("take the migration lock: %w", err)
	}
	if got {
		return nil
	}
	return waitReporting(ctx, l.log, l.where, func(ctx context.Context) error {
		// Blocks in the server until the holder gives the lock back or its
		// session ends; ctx's end cancels the statement. A
		// statement_timeout or lock_timeout of the role or database
		// cancelled it too, and the replica failed to start whenever
		// another migrated for longer: the wait runs with both off, and
		// they are back at the role's values for the migration itself.
		if _, err := conn.ExecContext(ctx, `SELECT set_config('statement_timeout', '0', false), set_config('lock_timeout', '0', false)`); err != nil {
			return fmt.Errorf("wait for the migration lock: %w", err)
		}
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock(`+advisoryKey+`)`, migrationLockClass); err != nil {
			return fmt.Errorf("wait for the migration lock: %w", err)
		}
		if _, err := conn.ExecContext(ctx, `RESET statement_timeout; RESET lock_timeout`); err != nil {
			return fmt.Errorf("took the migration lock, then failed to restore the session's timeouts: %w", err)
		}
		return nil
	})
}

func (l *advisoryLock) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_unlock(`+advisoryKey+`)`, migrationLockClass); err != nil {
		return fmt.Errorf("give the migration lock back: %w", err)
	}
	return nil
}

// fileLock is an exclusive lock (flock, LockFileEx on Windows) on a file
// beside the SQLite database. The file stays; removing it would let a
// process lock a file another has just unlinked.
type fileLock struct {
	lock  *flock.Flock
	where string
	log   *slog.Logger
}

// fileLockRetry is how often a process waiting for another's SQLite
// migration tries the lock file again. Migrations take milliseconds.
const fileLockRetry = 20 * time.Millisecond

func (l *fileLock) SessionLock(ctx context.Context, _ *sql.Conn) error {
	got, err := l.lock.TryLock()
	if err != nil {
		return fmt.Errorf("take the migration lock %s: %w", l.lock.Path(), err)
	}
	if got {
		return nil
	}
	return waitReporting(ctx, l.log, l.where, func(ctx context.Context) error {
		if _, err := l.lock.TryLockContext(ctx, fileLockRetry); err != nil {
			return fmt.Errorf("wait for the migration lock %s: %w", l.lock.Path(), err)
		}
		return nil
	})
}

func (l *fileLock) SessionUnlock(context.Context, *sql.Conn) error {
	if err := l.lock.Unlock(); err != nil {
		return fmt.Errorf("give the migration lock %s back: %w", l.lock.Path(), err)
	}
	return nil
}

// waitReporting runs wait, which returns once the lock is taken, and logs
// that this process waits for another's migration: once at the start and
// every lockWaitReport after, until wait returns.
func waitReporting(ctx context.Context, log *slog.Logger, where string, wait func(context.Context) error) error {
	start := time.Now()
	log.InfoContext(ctx, "another process is migrating the database; waiting for it to finish", "database", where)
	done := make(chan struct{})
	defer close(done)
	go func() {
		tick := time.NewTicker(lockWaitReport)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				log.WarnContext(ctx, "still waiting for another process's migration of the database", "database", where, "waited", time.Since(start).Round(time.Second))
			}
		}
	}()
	return wait(ctx)
}
