package relay

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strconv"
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

// heldCheckInterval is how long a busy leader trusts its last check that its
// lock session lives: the relay asks (Held) after every read, and the
// session is pinged when the last check is older. Once the session has
// ended (terminated, the server restarted, the network gone), a standby
// takes the lock at once, and both relays forward the same rows until the
// leader checks: up to this long, at full speed. With a second, a lock
// session terminated under a 3,000-row backlog had most of it sent twice
// (found by a fresh-eyed attack, 2026-12-04); the inbox absorbs the copies,
// but they cost. Busy, a check every 100 ms is ten round trips a second.
const heldCheckInterval = 100 * time.Millisecond

// keepAliveInterval is how often an idle leader checks its lock session, so
// that the server does not end it as silent (leaseIdleTimeout) and the
// leader finds out that it lost the session while no rows come.
const keepAliveInterval = time.Second

// leaseIdleTimeout is the lock session's idle_session_timeout: PostgreSQL
// ends it, and with it the lock, once the leader has been silent this long.
// A leader that is frozen (stopped, swapped out) or cut off behind a
// half-open connection keeps its session, and its lock, for as long as the
// server's TCP keepalive takes to notice, two hours by default; the standby
// waited all that while, healthy by /readyz, with nothing forwarded. A live
// leader checks its session every keepAliveInterval at least, so only one
// silent for ten such checks loses it. (PostgreSQL 14 and later; older servers do
// not have the setting, and keep the old behaviour.)
const leaseIdleTimeout = 10 * time.Second

// leasePingTimeout bounds a check of the lock session: over a half-open
// connection a ping waits for an answer that never comes, and the leader
// would go on believing it leads while the server has ended its session.
const leasePingTimeout = 5 * time.Second

// pgLease holds a session-level advisory lock on a connection of its own. A
// standby replica waits inside pg_advisory_lock, so it takes over as soon as
// the leader's session ends (process exit, crash, network loss, or silence
// past leaseIdleTimeout).
type pgLease struct {
	db      *sql.DB
	mu      sync.Mutex
	conn    *sql.Conn
	checked time.Time
	// own are the lock session's settings as the lease found them.
	own sessionSettings
	// endKeepAlive ends the keep-alive of the lock held now, and its check
	// in progress. Release calls it before it waits for mu, which a check
	// holds: against a database that does not answer, a stop waited for the
	// check's leasePingTimeout (found by a fresh-eyed attack: 5.6 s where
	// the unlock's own bound is 2 s).
	endKeepAlive atomic.Pointer[context.CancelFunc]
	// idleTimeout is leaseIdleTimeout; tests shorten it.
	idleTimeout time.Duration
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
	// The session's own values of the settings the lease changes, given
	// back when it is done with them: behind a pooler in session mode with
	// an empty server_reset_query the session outlives the lease, and its
	// settings went to the next client (no statement_timeout, ended after
	// 10 s idle); RESET would give the role's values, not those the
	// pooler's connect_query set (a search_path, a timeout).
	var own sessionSettings
	if err := conn.QueryRowContext(ctx, `SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), current_setting('idle_session_timeout', true)`).Scan(&own.statementTimeout, &own.lockTimeout, &own.idleSessionTimeout); err != nil {
		_ = conn.Raw(func(any) error { return dropConn })
		_ = conn.Close()
		return fmt.Errorf("relay lease: read the session's timeouts: %w", err)
	}
	fail := func(err error) error {
		own.restore(conn)
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
		// The wait lasts as long as the leader leads: a statement_timeout
		// or lock_timeout set for the role or the database cancelled it
		// every few seconds, which logged an error and flapped the
		// standby's readiness.
		if _, err := conn.ExecContext(ctx, `SELECT set_config('statement_timeout', '0', false), set_config('lock_timeout', '0', false)`); err != nil {
			return fail(err)
		}
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1, hashtext(current_schema()))`, pgLeaseKey); err != nil {
			return fail(err)
		}
		// The leader's own statements (Fenced) keep the session's
		// timeouts: without them a former standby's hold could wait on a
		// row lock without end, holding the lease's mutex.
		if _, err := conn.ExecContext(ctx, `SELECT set_config('statement_timeout', $1, false), set_config('lock_timeout', $2, false)`, own.statementTimeout, own.lockTimeout); err != nil {
			return fail(err)
		}
	}
	if own.idleSessionTimeout.Valid { // PostgreSQL 14 and later
		if _, err := conn.ExecContext(ctx, `SELECT set_config('idle_session_timeout', $1, false)`, strconv.FormatInt(l.idleTimeoutOrDefault().Milliseconds(), 10)); err != nil {
			return fail(err)
		}
	}
	l.own = own
	l.conn, l.checked = conn, time.Now()
	l.leading.Store(true)
	keepAliveCtx, end := context.WithCancel(context.Background())
	l.endKeepAlive.Store(&end)
	go l.keepAlive(keepAliveCtx)
	return nil
}

func (l *pgLease) idleTimeoutOrDefault() time.Duration {
	if l.idleTimeout > 0 {
		return l.idleTimeout
	}
	return leaseIdleTimeout
}

// keepAlive checks the lock session every keepAliveInterval until ctx
// ends, so that an idle leader is not taken for a silent one, and finds out
// that it lost its session while no rows come.
func (l *pgLease) keepAlive(ctx context.Context) {
	t := time.NewTicker(keepAliveInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		l.mu.Lock()
		// Unless released, or lost and perhaps taken again since: that
		// lease has a keep-alive of its own.
		if ctx.Err() == nil {
			l.checkLocked(ctx)
		}
		l.mu.Unlock()
	}
}

func (l *pgLease) Held(ctx context.Context) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.checkLocked(ctx)
}

// checkLocked pings the lock session if it was not checked for
// heldCheckInterval, drops it when that fails, and says whether it is held.
func (l *pgLease) checkLocked(ctx context.Context) bool {
	if l.conn == nil {
		return false
	}
	if time.Since(l.checked) < heldCheckInterval {
		return true
	}
	pingCtx, cancel := context.WithTimeout(ctx, leasePingTimeout)
	defer cancel()
	if err := l.conn.PingContext(pingCtx); err != nil {
		if ctx.Err() == nil {
			l.dropLocked()
		}
		// Otherwise the caller gave up (a stop, or Release ending the
		// keep-alive): Release lets the lease go, and gives the session
		// its settings back first, for a pooler's next client.
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
		pctx, cancel := context.WithTimeout(ctx, leasePingTimeout)
		defer cancel()
		if perr := l.conn.PingContext(pctx); perr != nil {
			l.dropLocked()
			return fmt.Errorf("%w: %w", errLeaseLost, err)
		}
	}
	if err == nil {
		// A statement is as good a sign of life as a ping.
		l.checked = time.Now()
	}
	return err
}

func (l *pgLease) Release() {
	l.stopKeepAlive()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = l.conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1, hashtext(current_schema()))`, pgLeaseKey)
	l.own.restore(l.conn)
	l.dropLocked()
}

// sessionSettings are a session's own values of the settings the lease
// changes; idleSessionTimeout is NULL before PostgreSQL 14.
type sessionSettings struct {
	statementTimeout, lockTimeout string
	idleSessionTimeout            sql.NullString
}

// restore gives the session these values back, best effort, before its
// connection is dropped, and drops its prepared statements, which would
// meet the next client's of the same text ("prepared statement already
// exists") behind a pooler that keeps the session.
func (s sessionSettings) restore(conn *sql.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = conn.ExecContext(ctx, `SELECT set_config('statement_timeout', $1, false), set_config('lock_timeout', $2, false)`, s.statementTimeout, s.lockTimeout)
	if s.idleSessionTimeout.Valid {
		_, _ = conn.ExecContext(ctx, `SELECT set_config('idle_session_timeout', $1, false)`, s.idleSessionTimeout.String)
	}
	_, _ = conn.ExecContext(ctx, `DEALLOCATE ALL`)
}

// dropLocked discards the lock connection rather than returning it to the
// pool, where it would carry a lock nobody knows of, and ends its
// keep-alive.
func (l *pgLease) dropLocked() {
	_ = l.conn.Raw(func(any) error { return dropConn })
	_ = l.conn.Close()
	l.conn = nil
	l.leading.Store(false)
	l.stopKeepAlive()
}

// stopKeepAlive ends the keep-alive of the lock held now, if any.
func (l *pgLease) stopKeepAlive() {
	if end := l.endKeepAlive.Load(); end != nil {
		(*end)()
	}
}

// dropConn, returned from sql.Conn.Raw, makes database/sql discard the
// connection instead of pooling it.
var dropConn = driver.ErrBadConn
