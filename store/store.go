// Package store opens eventfn's SQL database, SQLite or PostgreSQL, and brings its
// schema up to date with the migrations embedded in the binary.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations
var migrations embed.FS

// Driver names a database engine.
type Driver string

const (
	SQLite   Driver = "sqlite"
	Postgres Driver = "postgres"
)

// DB is an open, migrated database. Its embedded *sql.DB is for transactions
// that write; Read is for queries that only read.
type DB struct {
	*sql.DB
	// Read serves read-only queries. On SQLite it is a separate pool, so reads run
	// beside the one writer; on PostgreSQL it is the same pool as DB.
	Read *sql.DB
	// Driver says which engine this is; SQL that differs between them switches on it.
	Driver Driver
	// Where names the database for people (a file path or host/database), never a password.
	Where string
	// StatementTimeout is PostgreSQL's statement_timeout for this pool's
	// sessions when Open ran (a role's, a database's or the URL's
	// setting); 0 for none, and on SQLite. Handler transactions keep their
	// lock waits below it (see the router's lockTimeoutFor).
	StatementTimeout time.Duration
}

// Config says which database to open.
type Config struct {
	// Driver is SQLite or Postgres.
	Driver Driver
	// SQLitePath is the database file (SQLite).
	SQLitePath string
	// URL is the connection URL (PostgreSQL).
	URL string
	// MaxOpenConns caps the PostgreSQL pool.
	MaxOpenConns int
	// Logger says when Open waits for another process's migration; nil
	// logs nothing.
	Logger *slog.Logger
}

// Open connects, checks the connection and applies pending migrations.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var locker lock.SessionLocker
	if cfg.Driver == SQLite {
		// On SQLite the lock is held from before the first connection: the
		// first one to a fresh file turns it to WAL, which takes the file
		// exclusively, and processes opening a fresh file together failed
		// at their first statement with SQLITE_BUSY, busy timeout or not
		// (1 to 2 in 15 runs of TestProcessesOpeningAFreshDatabaseTogetherAllStart).
		if err := createPrivateFile(cfg.SQLitePath); err != nil {
			return nil, err
		}
		fl := sqliteMigrationLock(cfg.SQLitePath, log)
		if err := fl.SessionLock(ctx, nil); err != nil {
			return nil, err
		}
		defer func() { _ = fl.SessionUnlock(ctx, nil) }()
	}
	db, err := connect(cfg)
	if err != nil {
		return nil, err
	}
	if err := db.Ping(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("reach %s database %s: %w", db.Driver, db.Where, err)
	}
	if err := checkSessions(ctx, db, cfg.URL); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := checkSchema(ctx, db); err != nil {
		_ = db.Close()
		return nil, err
	}
	if db.Driver == Postgres {
		var ms int64
		if err := db.QueryRowContext(ctx, `SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout'`).Scan(&ms); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("read statement_timeout of %s database %s: %w", db.Driver, db.Where, err)
		}
		db.StatementTimeout = time.Duration(ms) * time.Millisecond
	}
	if db.Driver == Postgres {
		locker = migrationLocker(db, "", log)
	}
	if err := migrate(ctx, db, locker, log); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

func connect(cfg Config) (*DB, error) {
	switch cfg.Driver {
	case SQLite:
		if err := createPrivateFile(cfg.SQLitePath); err != nil {
			return nil, err
		}
		// SQLite allows one writer per file. All writes share one connection, so
		// writers queue in database/sql's pool, which hands the connection to a
		// waiting goroutine at once, instead of in SQLite's busy handler, which
		// sleeps up to 100 ms between tries and lets a fast re-poller starve the
		// others. Transactions are IMMEDIATE so a transaction never has to
		// upgrade from reader to writer (which fails in WAL mode if another write
		// committed meanwhile). WAL lets the read pool run beside the writer.
		writer, err := openSQLite(cfg.SQLitePath, "immediate", 1, "wal_autocheckpoint("+strconv.Itoa(walCheckpointPages)+")")
		if err != nil {
			return nil, err
		}
		reader, err := openSQLite(cfg.SQLitePath, "deferred", 4)
		if err != nil {
			_ = writer.Close()
			return nil, err
		}
		return &DB{DB: writer, Read: reader, Driver: SQLite, Where: cfg.SQLitePath}, nil
	case Postgres:
		db, err := sql.Open("pgx", cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("open PostgreSQL: %w", err)
		}
		if cfg.MaxOpenConns > 0 {
			db.SetMaxOpenConns(cfg.MaxOpenConns)
			db.SetMaxIdleConns(cfg.MaxOpenConns)
		}
		return &DB{DB: db, Read: db, Driver: Postgres, Where: redact(cfg.URL)}, nil
	}
	return nil, fmt.Errorf("unknown database driver %q: accepted: sqlite, postgres", cfg.Driver)
}

// createPrivateFile creates the SQLite database file, and any directory it
// needs, readable by the owner only: it holds customer data. SQLite gives its
// -wal and -shm files the mode of the database file, so they follow. A file
// that exists is left as it is: its mode is then its owner's choice.
func createPrivateFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create directory for %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return f.Close()
}

// walCheckpointPages is how many pages the WAL holds before the writer
// copies them into the database file (SQLite's default is 1,000). The copy
// and its two fsyncs run in the commit of the one writer, where every other
// transaction waits for them; a hot page rewritten by many commits is copied
// once per checkpoint. At 1,000 pages the writer checkpointed several times
// a second under load. At 10,000 (a WAL of up to about 40 MB) the embedded
// closed loop completed 1,140–1,244 chains/s against 995–1,135
// (docs/BENCHMARKS.md).
const walCheckpointPages = 10_000

func openSQLite(path, txlock string, conns int, pragmas ...string) (*sql.DB, error) {
	q := url.Values{}
	for _, p := range append([]string{"busy_timeout(15000)", "journal_mode(WAL)", "synchronous(NORMAL)", "foreign_keys(1)"}, pragmas...) {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", txlock)
	db, err := OpenSQLite("file:" + path + "?" + q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open SQLite %s: %w", path, err)
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	db.SetConnMaxIdleTime(time.Minute)
	return db, nil
}

// Close closes both pools.
func (db *DB) Close() error {
	err := db.DB.Close()
	if db.Read != db.DB {
		err = errors.Join(err, db.Read.Close())
	}
	return err
}

// checkSchema fails when PostgreSQL has no schema to create eventfn's tables
// in: every schema the URL's search_path names is missing (a typo, or a
// schema not yet created) or not usable by the role (current_schema()
// skips schemas without USAGE). The migration would fail too, but with "relation
// goose_db_version does not exist", which does not say why.
func checkSchema(ctx context.Context, db *DB) error {
	if db.Driver != Postgres {
		return nil
	}
	var schema sql.NullString
	var path string
	if err := db.QueryRowContext(ctx, `SELECT current_schema(), current_setting('search_path')`).Scan(&schema, &path); err != nil {
		return fmt.Errorf("read the search_path of PostgreSQL database %s: %w", db.Where, err)
	}
	if !schema.Valid {
		return fmt.Errorf("PostgreSQL database %s: no schema in its search_path (%s) exists that this role may use, so eventfn has nowhere to create its tables: create the schema (CREATE SCHEMA name), grant the role USAGE and CREATE on it, or correct search_path in database.url", db.Where, path)
	}
	return nil
}

// migrate applies pending migrations under locker; nil for a caller that
// holds the lock already (SQLite's, see Open). A schema newer than this
// binary's migrations (a rollback, or an old replica restarted during a
// deploy) is used as it is, with a warning: migrations only add what an
// older release does not read (see TestMigrationsOnlyAdd).
func migrate(ctx context.Context, db *DB, locker lock.SessionLocker, log *slog.Logger) error {
	dialect := goose.DialectSQLite3
	if db.Driver == Postgres {
		dialect = goose.DialectPostgres
	}
	dir, err := fs.Sub(migrations, "migrations/"+string(db.Driver))
	if err != nil {
		return fmt.Errorf("migrations for %s: %w", db.Driver, err)
	}
	var opts []goose.ProviderOption
	if locker != nil {
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	p, err := goose.NewProvider(dialect, db.DB, dir, opts...)
	if err != nil {
		return fmt.Errorf("prepare migrations for %s: %w", db.Driver, err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate %s database %s: %w", db.Driver, db.Where, err)
	}
	applied, err := p.GetDBVersion(ctx)
	if err != nil {
		return fmt.Errorf("read the schema version of %s database %s: %w", db.Driver, db.Where, err)
	}
	sources := p.ListSources()
	if known := sources[len(sources)-1].Version; applied > known {
		log.WarnContext(ctx, "the database's schema is newer than this eventfn's: running on it, as after a rollback; its migrations only added what this release does not read",
			"database", db.Where, "schema_version", applied, "this_release_version", known)
	}
	return nil
}

// Ping checks that both pools reach the database.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.DB.PingContext(ctx); err != nil {
		return err
	}
	return db.Read.PingContext(ctx)
}

// redact masks every secret of a connection URL so it can be logged or shown
// in /readyz: the user-info password and any query parameter that carries one
// (password, sslpassword), as PostgreSQL accepts either.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	q := u.Query()
	masked := false
	for k := range q {
		if strings.Contains(strings.ToLower(k), "password") {
			q.Set(k, "xxxxx")
			masked = true
		}
	}
	if masked {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}
