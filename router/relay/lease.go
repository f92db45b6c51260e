package relay

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eventfn/eventfn/store"
)

// NewLease returns the lease that suits db: a PostgreSQL advisory lock shared
// by every replica on the database, or, on SQLite, whose file one process
// owns, a lease that is always held.
func NewLease(db *store.DB) Lease {
	if db.Driver == store.Postgres {
		return &pgLease{db: db.DB}
	}
	return soleLease{}
}

type soleLease struct{}

func (soleLease) Acquire(context.Context, func()) error { return nil }
func (soleLease) Held(context.Context) bool             { return true }
func (soleLease) Release()                              {}
func (soleLease) Leading() bool                         { return true }

func (soleLease) Fenced(ctx context.Context, stmt func(context.Context, Execer) error) error {
	return stmt(ctx, nil)
}

// pgLeaseKey is the first half of the advisory lock key; the second is the
// hash of the schema, so eventfn deployments in different schemas of one
// database (and parallel tests) do not wait for each other.
const pgLeaseKey = LeaseKey

// LeaseKey is the first key of the relay's PostgreSQL advisory lock, for
// tools that show who holds it; the second is hashtext(current_schema()).
const LeaseKey = 7262652

// heldCheckInterval is how often a leader checks that its lock session lives.
// A session that died mid-check means another replica may already forward:
// the worst case is a batch sent twice, which the inbox absorbs.
const heldCheckInterval = time.Second

// pgLease holds a session-level advisory lock on a connection of its own. A
// standby replica waits inside pg_advisory_lock, so it takes over as soon as
// the leader's session ends (process exit, crash, or network loss).
type pgLease struct {
	db      *sql.DB
	mu      sync.Mutex
	conn    *sql.Conn
	checked time.Time
	// leading mirrors conn != nil for Leading, which commits call and
	// which must not wait for a check of the session in progress.
	leading atomic.Bool
}

// Leading reports, without a round trip, whether this lease was held at its
// last check.
func (l *pgLease) Leading() bool { return l.leading.Load() }

func (l *pgLease) Acquire(ctx context.Context, standby func()) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		return nil
	}
	conn, err := l.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("relay lease: connect: %w", err)
	}
	fail := func(err error) error {
		_ = conn.Raw(func(any) error { return dropConn })
		_ = conn.Close()
		return fmt.Errorf("relay lease: take the advisory lock: %w", err)
	}
	// Try first: a lock another relay holds means the database answers and
	// this relay stands by, which the wait inside pg_advisory_lock below
	// cannot say while it lasts.
	var got bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1, hashtext(current_schema()))`, pgLeaseKey).Scan(&got); err != nil {
		return fail(err)
	}
	if !got {
		if standby != nil {
			standby()
		}
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1, hashtext(current_schema()))`, pgLeaseKey); err != nil {
			return fail(err)
		}
	}
	l.conn, l.checked = conn, time.Now()
	l.leading.Store(true)
	return nil
}

func (l *pgLease) Held(ctx context.Context) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return false
	}
	if time.Since(l.checked) < heldCheckInterval {
		return true
	}
	if err := l.conn.PingContext(ctx); err != nil {
		l.dropLocked()
		return false
	}
	l.checked = time.Now()
	return true
}

// Fenced runs stmt on the lock's own session: it commits only while the
// lock is held, as a session that ends takes its lock and its open
// statement with it.
func (l *pgLease) Fenced(ctx context.Context, stmt func(context.Context, Execer) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return errLeaseLost
	}
	err := stmt(ctx, l.conn)
	if err != nil && ctx.Err() == nil {
		if perr := l.conn.PingContext(ctx); perr != nil {
			l.dropLocked()
			return fmt.Errorf("%w: %w", errLeaseLost, err)
		}
	}
	return err
}

func (l *pgLease) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = l.conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1, hashtext(current_schema()))`, pgLeaseKey)
	_ = l.conn.Close()
	l.conn = nil
	l.leading.Store(false)
}

// dropLocked discards the lock connection rather than returning it to the
// pool, where it would carry a lock nobody knows of.
func (l *pgLease) dropLocked() {
	_ = l.conn.Raw(func(any) error { return dropConn })
	_ = l.conn.Close()
	l.conn = nil
	l.leading.Store(false)
}

// dropConn, returned from sql.Conn.Raw, makes database/sql discard the
// connection instead of pooling it.
var dropConn = driver.ErrBadConn
