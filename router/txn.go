package router

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// sqlExecutor runs a handler's statements: a *sql.Tx on SQLite, or the
// connection of a pipelined transaction on PostgreSQL.
type sqlExecutor interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// txn is one transaction of the runtime's: a handler call, or a write from
// outside handlers such as the HTTP ingress.
type txn interface {
	sqlExecutor
	// commit runs the queued statements, writes the outbox rows and commits.
	commit(ctx context.Context, work toCommit) error
	// rollback ends the transaction if it has not ended; it may be called twice.
	rollback()
}

// toCommit is what a transaction's function leaves for its commit: the
// statements it queued (runtime.Tx's Queue), which run first, and the rows
// for the outbox.
type toCommit struct {
	stmts []runtime.Statement
	rows  []relay.Record
}

// inboxClaim names the event a handler call claims in the inbox before
// anything else.
type inboxClaim struct {
	handler string
	meta    runtime.Metadata
}

// claimSQL records (handler, source, event) unless the inbox has it;
// CloudEvents makes source and id together unique. A row from before the
// inbox kept sources (an empty source) still claims its id. On PostgreSQL a
// concurrent claim of the same event waits for the first transaction and
// then sees its row (or takes over if it rolled back).
const claimSQL = `INSERT INTO eventfn_inbox (handler, source, event_id, event_type)
	SELECT $1, $2, $3, $4
	WHERE NOT EXISTS (SELECT 1 FROM eventfn_inbox WHERE handler = $1 AND source = '' AND event_id = $3)
	ON CONFLICT DO NOTHING`

// inTx runs fn in a transaction on the writer pool, and commits it with the
// outbox rows fn returns when fn returns nil. With claim set the transaction
// first claims the event in the inbox; when the inbox had it already, fn is
// not called and claimed is false.
func inTx(ctx context.Context, db *store.DB, claim *inboxClaim, fn func(ctx context.Context, tx sqlExecutor) (toCommit, error)) (claimed bool, err error) {
	t, claimed, err := beginTx(ctx, db, claim)
	if err != nil {
		return false, err
	}
	if !claimed {
		t.rollback() // nothing was written
		return false, nil
	}
	work, err := fn(ctx, t)
	if err != nil {
		t.rollback()
		return true, err
	}
	return true, t.commit(ctx, work)
}

// beginTx begins a transaction and makes the claim, if any.
func beginTx(ctx context.Context, db *store.DB, claim *inboxClaim) (txn, bool, error) {
	var t sharedTxn
	if db.Driver == store.Postgres {
		p, err := openForCall(ctx, db)
		if err != nil {
			return nil, false, err
		}
		t = p
	} else {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			// No transaction means no database (or no free connection before
			// the deadline): never the fault of what was to be written.
			return nil, false, infraError{fmt.Errorf("begin transaction: %w", err)}
		}
		t = &sqlTx{Tx: tx}
	}
	claimed, err := t.start(ctx, claim)
	if err != nil {
		t.rollback()
		return nil, false, err
	}
	return t, claimed, nil
}

func claimError(claim *inboxClaim, err error) error {
	return fmt.Errorf("record event %s in the inbox: %w", claim.meta.ID, err)
}

func commitError(err error) error {
	err = fmt.Errorf("commit: %w", err)
	if store.Unavailable(err) {
		return infraError{err}
	}
	return err
}

// sqlTx is a transaction through database/sql, statement by statement.
type sqlTx struct {
	*sql.Tx
	// conn, when set, is the connection the transaction was begun on; it
	// goes back to the pool when the transaction ends.
	conn *sql.Conn
	// savepoint says whether a call's savepoint is open.
	savepoint bool
}

// start makes the next call's claim after a savepoint of its own
// (releasing the previous call's). The savepoint lets a call of a shared
// transaction be rolled back alone, and lets commit see whether SQLite
// ended the transaction by itself (see sqlTx.commit).
func (t *sqlTx) start(ctx context.Context, claim *inboxClaim) (bool, error) {
	if t.savepoint {
		if _, err := t.ExecContext(ctx, `RELEASE SAVEPOINT eventfn_call`); err != nil {
			return false, fmt.Errorf("release savepoint: %w", err)
		}
	}
	if _, err := t.ExecContext(ctx, `SAVEPOINT eventfn_call`); err != nil {
		return false, fmt.Errorf("savepoint: %w", err)
	}
	t.savepoint = true
	if claim == nil {
		return true, nil
	}
	res, err := t.ExecContext(ctx, claimSQL, claim.handler, claim.meta.Source, claim.meta.ID, claim.meta.Type)
	if err != nil {
		return false, claimError(claim, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("inbox rows affected: %w", err)
	}
	return n == 1, nil
}

// settle releases the call's savepoint, which fails once SQLite has rolled
// the transaction back by itself and gone on in autocommit (an interrupted
// write, ON CONFLICT ROLLBACK, after a failure the handler ignored). The
// release is the one the next call's start would have made, so the check
// costs no statement; but the call can no longer be undone alone, and a
// queued statement that fails ends the batch.
func (t *sqlTx) settle(ctx context.Context) (bool, error) {
	if !t.savepoint {
		return false, nil
	}
	t.savepoint = false
	if _, err := t.ExecContext(ctx, `RELEASE SAVEPOINT eventfn_call`); err != nil {
		return false, fmt.Errorf("the transaction ended before the call's queued statements (a statement in it failed and SQLite rolled it back): %w", err)
	}
	return false, nil
}

// deferLater does not take a call's queued statements: on SQLite they run
// at once, where settle has checked the transaction is still there.
func (t *sqlTx) deferLater(context.Context, []runtime.Statement) bool { return false }

// undo rolls the transaction back to the current call's savepoint.
func (t *sqlTx) undo() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := t.ExecContext(ctx, `ROLLBACK TO SAVEPOINT eventfn_call`); err != nil {
		return fmt.Errorf("roll back to savepoint: %w", err)
	}
	return nil
}

func (t *sqlTx) commit(ctx context.Context, work toCommit) error {
	defer t.release()
	if t.savepoint {
		// SQLite rolls a whole transaction back by itself on some failures
		// (an interrupted write, ON CONFLICT ROLLBACK) and goes on in
		// autocommit; a handler that ignored the error would have the
		// outbox rows below commit one by one, outside any transaction.
		// Releasing the savepoint fails if the transaction is gone.
		if _, err := t.ExecContext(ctx, `RELEASE SAVEPOINT eventfn_call`); err != nil {
			_ = t.Rollback()
			return fmt.Errorf("commit: the transaction ended before its commit (a statement in it failed and SQLite rolled it back): %w", err)
		}
	}
	if err := runQueued(ctx, t, work.stmts); err != nil {
		_ = t.Rollback()
		return err
	}
	for _, r := range work.rows {
		query, args, err := relay.InsertStatement(r)
		if err == nil {
			_, err = t.ExecContext(ctx, query, args...)
		}
		if err != nil {
			_ = t.Rollback()
			return fmt.Errorf("write %s to the outbox: %w", r.Headers[HeaderType], err)
		}
	}
	if err := t.Commit(); err != nil {
		return commitError(err)
	}
	return nil
}

func (t *sqlTx) rollback() {
	_ = t.Rollback()
	t.release()
}

func (t *sqlTx) release() {
	if t.conn != nil {
		_ = t.conn.Close()
	}
}

// pipelinedTx is a PostgreSQL transaction that spends fewer round trips
// than database/sql's: BEGIN goes in one pipeline with the inbox claim, and
// the outbox rows in one with COMMIT. A handler call with one statement of
// its own thus takes three round trips instead of five; on two shared cores
// a round trip costs more CPU (system calls, context switches) than anything
// eventfn does with the event. The handler's statements run on the same
// connection through database/sql, so it still gets *sql.Rows.
type pipelinedTx struct {
	conn *sql.Conn
	// mu orders the handler's statements before the end of the transaction:
	// a handler that outlives its timeout must not send a statement after
	// the ROLLBACK, where it would run, and commit, on its own. Statements
	// hold it shared; commit and rollback hold it alone.
	mu    sync.RWMutex
	ended bool
	// begun says whether BEGIN was sent.
	begun bool
	// beginLockTimeout is what start sets lock_timeout to with BEGIN, in
	// milliseconds, from the context of the call that opened the
	// transaction (the first of a shared one); 0 for none.
	beginLockTimeout int64
	// lockTimeout is the lock_timeout in force: beginLockTimeout, or less
	// for a statement late in its call (see lockTimeoutFits). Atomic: a
	// handler's statements hold mu shared.
	lockTimeout atomic.Int64
	// later are the last call's queued statements, which go to the server
	// with what the transaction sends next (the next call's start, or the
	// commit) instead of in a round trip of their own.
	later laterStmts
	// open are the handler's queries, closed before the transaction ends:
	// pgx cannot send COMMIT while a result is being read, and on a
	// *sql.Conn (unlike a *sql.Tx) nothing else closes them.
	openMu   sync.Mutex
	rows     []*sql.Rows
	rowStops []context.CancelFunc
}

// openPipelined takes a connection for a transaction; start begins it.
func openPipelined(ctx context.Context, db *store.DB) (*pipelinedTx, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, infraError{fmt.Errorf("begin transaction: %w", err)}
	}
	return &pipelinedTx{conn: conn}, nil
}

// openForCall is openPipelined for a handler's call whose context is ctx:
// its transaction waits for a lock no longer than lockTimeoutFor(ctx).
func openForCall(ctx context.Context, db *store.DB) (*pipelinedTx, error) {
	t, err := openPipelined(ctx, db)
	if err != nil {
		return nil, err
	}
	t.beginLockTimeout = lockTimeoutFor(ctx, db.StatementTimeout)
	t.lockTimeout.Store(t.beginLockTimeout)
	return t, nil
}

// start sends, in one round trip: the last call's queued statements, if
// any (see later); BEGIN unless the transaction has begun; and the call's
// claim, if any. A failure of the queued statements is a *laterError: the
// last call's, not this one's. There is no savepoint per call (see
// newCommitter).
func (t *pipelinedTx) start(ctx context.Context, claim *inboxClaim) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	later := t.takeLater()
	ctx, cancel := later.bound(ctx)
	defer cancel()
	claimed := true
	err := t.raw(func(pc *pgx.Conn) error {
		if pc.PgConn().TxStatus() == 'E' {
			// A statement of the last call failed and aborted the
			// transaction, and its handler went on as if it had not.
			return &laterError{fmt.Errorf("a statement of the call failed and aborted the transaction, though the handler returned no error: %w", pgx.ErrTxCommitRollback)}
		}
		b := &pgx.Batch{}
		begin := !t.begun
		// Queued statements of the last call come only once the
		// transaction has begun, after the lock timeout is fitted to what
		// is left of their call, if it must be (no round trip: it goes in
		// this pipeline).
		fitted, refit := "", false
		if !begin {
			fitted, refit = t.lockTimeoutFits(ctx)
		}
		if refit {
			b.Queue(setLockTimeoutSQL, fitted)
		}
		for _, st := range later.stmts {
			b.Queue(st.Query, st.Args...)
		}
		beginTimeout := t.beginLockTimeout
		if begin {
			b.Queue("BEGIN")
			if beginTimeout > 0 {
				b.Queue(setLockTimeoutSQL, strconv.FormatInt(beginTimeout, 10))
			}
		}
		if claim != nil {
			b.Queue(claimSQL, claim.handler, claim.meta.Source, claim.meta.ID, claim.meta.Type)
		}
		br := pc.SendBatch(ctx, b)
		defer br.Close()
		if refit {
			if err := t.readLockTimeout(br, fitted); err != nil {
				return &laterError{err}
			}
		}
		if err := readQueued(br, later.stmts); err != nil {
			return &laterError{err}
		}
		if begin {
			if _, err := br.Exec(); err != nil {
				return infraError{fmt.Errorf("begin transaction: %w", err)}
			}
			if beginTimeout > 0 {
				if _, err := br.Exec(); err != nil {
					return infraError{fmt.Errorf("set the transaction's lock timeout: %w", err)}
				}
			}
		}
		if claim != nil {
			tag, err := br.Exec()
			if err != nil {
				return claimError(claim, err)
			}
			claimed = tag.RowsAffected() == 1
		}
		return br.Close()
	})
	if err != nil {
		return false, err
	}
	t.begun = true
	return claimed, nil
}

// setLockTimeoutSQL bounds, for the transaction alone, how long a statement
// waits for a lock. One statement, prepared once, whatever the value.
const setLockTimeoutSQL = `SELECT set_config('lock_timeout', $1, true)`

// lockTimeoutFor is the lock timeout of a transaction begun for a call whose
// context is ctx: half the time left to its deadline, in milliseconds (at
// least 1). A statement that waits that long for a lock held by another
// session (a long transaction elsewhere) fails with lock_not_available,
// which classifyFailure makes a wait that uses no retry. Without it, the
// wait ran into the call's timeout, an error of the call's own, and after
// the retries a good event was dead-lettered while the lock was held.
//
// It also stays a tenth below statementTimeout, the server's
// statement_timeout for eventfn's sessions (0 for none): a role's timeout
// of a few seconds under the default 30 s call (lock timeout 15 s) ended a
// lock wait as the statement cancelled, the call's own error, and after the
// retries a good event was dead-lettered while a lock elsewhere was held.
// 0 when ctx has no deadline and there is no statement_timeout.
func lockTimeoutFor(ctx context.Context, statementTimeout time.Duration) int64 {
	var ms int64
	if deadline, ok := ctx.Deadline(); ok {
		ms = max(time.Until(deadline).Milliseconds()/2, 1)
	}
	if st := statementTimeout.Milliseconds(); st > 0 {
		below := max(st-max(st/10, 1), 1)
		if ms == 0 || below < ms {
			ms = below
		}
	}
	return ms
}

// lockTimeoutFits says whether the lock timeout in force must change for a
// statement that runs within ctx, and to what. Lowered when a lock wait of
// it could end less than a third of the time left before ctx's deadline:
// a call that spent a quarter of its time (a slow query, a slow
// dependency) before a statement meets a lock would otherwise run into its
// own deadline first, and use a retry for a lock held elsewhere. Raised again,
// up to the value set with BEGIN, when it is well below what ctx allows: a
// statement under a short context of its own (or a late call before, in a
// shared transaction) must not cut the lock waits of those after it. Half
// the time left, as at BEGIN. Asked before every statement; a change,
// which costs a statement's round trip outside a pipeline, is needed only
// in such calls.
func (t *pipelinedTx) lockTimeoutFits(ctx context.Context) (string, bool) {
	current := t.lockTimeout.Load()
	if t.beginLockTimeout <= 0 {
		return "", false
	}
	want := t.beginLockTimeout
	if deadline, ok := ctx.Deadline(); ok {
		want = min(want, max(time.Until(deadline).Milliseconds()/2, 1))
	}
	// Hysteresis: a value within a third of want stays, so a call's
	// statements, each with a little less time left, change nothing.
	if current*3 > want*4 || current*4 < want*3 {
		return strconv.FormatInt(want, 10), true
	}
	return "", false
}

// readLockTimeout reads the result of a setLockTimeoutSQL queued in a
// pipeline to set the lock timeout to ms, and keeps the value once set.
func (t *pipelinedTx) readLockTimeout(br pgx.BatchResults, ms string) error {
	if _, err := br.Exec(); err != nil {
		if connBusy(err) {
			return rowLeftOpen(err)
		}
		return fmt.Errorf("set the transaction's lock timeout to %s ms: %w", ms, err)
	}
	t.noteLockTimeout(ms)
	return nil
}

// noteLockTimeout keeps ms, the lock timeout just set.
func (t *pipelinedTx) noteLockTimeout(ms string) {
	if v, err := strconv.ParseInt(ms, 10, 64); err == nil {
		t.lockTimeout.Store(v)
	}
}

// keepLockWaitsInside changes the lock timeout, in a round trip of its own,
// before a handler's statement that needs another (see lockTimeoutFits). A
// failure to set it is left to the statement, which meets the same cause
// (an aborted transaction, the context's end) and reports it as its own.
func (t *pipelinedTx) keepLockWaitsInside(ctx context.Context) {
	value, ok := t.lockTimeoutFits(ctx)
	if !ok {
		return
	}
	if _, err := t.conn.ExecContext(ctx, setLockTimeoutSQL, value); err == nil {
		t.noteLockTimeout(value)
	}
}

// deferLater keeps a call's queued statements to send with what the
// transaction sends next, within the call's deadline. Only a call in a
// shared transaction does this: alone, its statements go with its own
// commit. A call whose queued statements fail there fails, and the other
// calls of the batch run again alone.
func (t *pipelinedTx) deferLater(callCtx context.Context, stmts []runtime.Statement) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.later.stmts = stmts
	t.later.by, _ = callCtx.Deadline()
	return true
}

// laterStmts are queued statements deferred to the transaction's next
// round trip, and the deadline of the call they belong to.
type laterStmts struct {
	stmts []runtime.Statement
	by    time.Time
}

// takeLater returns and forgets what deferLater kept. The caller holds t.mu.
func (t *pipelinedTx) takeLater() laterStmts {
	l := t.later
	t.later = laterStmts{}
	return l
}

// bound is ctx within the deadline of the call the statements belong to:
// they must not run longer than that call could have.
func (l laterStmts) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if len(l.stmts) == 0 || l.by.IsZero() {
		return ctx, func() {}
	}
	return context.WithDeadline(ctx, l.by)
}

// laterError is the failure of a call's queued statements sent after the
// call had returned: that call's failure, not the one being started or the
// batch being committed.
type laterError struct{ err error }

func (e *laterError) Error() string { return e.err.Error() }
func (e *laterError) Unwrap() error { return e.err }

// settle is never needed: deferLater takes every call's queued statements.
func (t *pipelinedTx) settle(context.Context) (bool, error) { return false, nil }

// errNoSavepoint: a call of a shared transaction on PostgreSQL that fails
// cannot be rolled back alone, and takes the batch down (see newCommitter).
var errNoSavepoint = errors.New("a call of the shared transaction failed, and calls on PostgreSQL have no savepoint to roll it back alone")

// undo cannot roll a call back alone: there is no savepoint per call.
func (t *pipelinedTx) undo() error { return errNoSavepoint }

// raw runs fn on the pgx connection under database/sql's lock of it. A
// connection that fn left closed is reported to database/sql as bad, so the
// pool drops it; fn's own error is what the caller sees.
func (t *pipelinedTx) raw(fn func(pc *pgx.Conn) error) error {
	var fnErr error
	err := t.conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			fnErr = fmt.Errorf("pipelined transaction: the driver connection is a %T, not pgx's", dc)
			return nil
		}
		fnErr = fn(c.Conn())
		if c.Conn().IsClosed() {
			return driver.ErrBadConn
		}
		return nil
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil && !errors.Is(err, driver.ErrBadConn) {
		return infraError{fmt.Errorf("transaction connection: %w", err)}
	}
	return nil
}

func (t *pipelinedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	valueFirst(args) // panicsafe.go
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.ended {
		return nil, sql.ErrTxDone
	}
	t.keepLockWaitsInside(ctx)
	return t.conn.ExecContext(ctx, query, args...)
}

func (t *pipelinedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	valueFirst(args) // panicsafe.go
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.ended {
		return nil, sql.ErrTxDone
	}
	t.keepLockWaitsInside(ctx)
	rows, err := t.conn.QueryContext(ctx, query, args...)
	if err == nil {
		t.openMu.Lock()
		t.rows = append(t.rows, rows)
		t.openMu.Unlock()
	}
	return rows, err
}

// QueryRowContext after the end of the transaction goes to the closed
// connection, whose *sql.Row reports sql.ErrConnDone.
func (t *pipelinedTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	valueFirst(args) // panicsafe.go
	t.mu.RLock()
	defer t.mu.RUnlock()
	if !t.ended {
		t.keepLockWaitsInside(ctx)
	}
	// A *sql.Row's rows close when it is scanned; one never scanned closes
	// when this context ends, at the end of the transaction.
	ctx, stop := context.WithCancel(ctx)
	t.openMu.Lock()
	t.rowStops = append(t.rowStops, stop)
	t.openMu.Unlock()
	return t.conn.QueryRowContext(ctx, query, args...)
}

// closeRows closes what the handler's queries left open. A *sql.Row's
// rows close in database/sql's own goroutine once their context ends, so
// it waits (a little) for pgx to be done with them.
func (t *pipelinedTx) closeRows() {
	t.openMu.Lock()
	rows, stops := t.rows, t.rowStops
	t.rows, t.rowStops = nil, nil
	t.openMu.Unlock()
	for _, r := range rows {
		_ = r.Close()
	}
	for _, stop := range stops {
		stop()
	}
	if len(stops) == 0 {
		return
	}
	for range 1000 {
		busy := false
		if err := t.conn.Raw(func(dc any) error {
			if c, ok := dc.(*stdlib.Conn); ok {
				busy = c.Conn().PgConn().IsBusy()
			}
			return nil
		}); err != nil || !busy {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func (t *pipelinedTx) commit(ctx context.Context, work toCommit) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ended {
		return sql.ErrTxDone
	}
	t.ended = true
	defer t.conn.Close()
	t.closeRows()
	later := t.takeLater()
	ctx, cancel := later.bound(ctx)
	defer cancel()
	b := &pgx.Batch{}
	// The queued statements run now, perhaps late in their call: the lock
	// timeout is fitted first if it must be, in the same pipeline.
	fitted, refit := t.lockTimeoutFits(ctx)
	if refit {
		b.Queue(setLockTimeoutSQL, fitted)
	}
	for _, st := range later.stmts {
		b.Queue(st.Query, st.Args...)
	}
	for _, st := range work.stmts {
		b.Queue(st.Query, st.Args...)
	}
	for _, r := range work.rows {
		query, args, err := relay.InsertStatement(r)
		if err != nil {
			_ = t.raw(endTransaction)
			return fmt.Errorf("write %s to the outbox: %w", r.Headers[HeaderType], err)
		}
		b.Queue(query, args...)
	}
	b.Queue("COMMIT")
	return t.raw(func(pc *pgx.Conn) error {
		if pc.PgConn().TxStatus() == 'E' {
			// A statement failed and aborted the transaction, and the
			// handler went on as if it had not: nothing of it may commit.
			_ = endTransaction(pc)
			return fmt.Errorf("commit: a statement of the transaction failed and aborted it, though the handler returned no error: %w", pgx.ErrTxCommitRollback)
		}
		err := t.sendCommit(ctx, pc, b, fitted, later, work)
		if err != nil {
			// The transaction failed or may still be open: end it before the
			// connection goes back to the pool.
			_ = endTransaction(pc)
			if ctx.Err() != nil && !runtime.IsPermanent(err) {
				// Once sent, the pipeline runs to its COMMIT on the server
				// whatever happens to the client: the outcome is unknown.
				err = fmt.Errorf("the context ended while the commit was in flight; it may have committed: %w", err)
			}
		}
		return err
	})
}

// sendCommit sends b and reads its results: the fitted lock timeout if
// fitted is not "", the last call's queued statements, then the commit's.
func (t *pipelinedTx) sendCommit(ctx context.Context, pc *pgx.Conn, b *pgx.Batch, fitted string, later laterStmts, work toCommit) error {
	br := pc.SendBatch(ctx, b)
	defer br.Close()
	if fitted != "" {
		if err := t.readLockTimeout(br, fitted); err != nil {
			return err
		}
	}
	if err := readQueued(br, later.stmts); err != nil {
		return &laterError{err}
	}
	return readCommit(br, work)
}

// readCommit reads the results of a batch's last part: the queued
// statements, the outbox rows, then COMMIT. PostgreSQL skips what follows
// a statement that fails, COMMIT included, so the first error is the one
// that counts.
func readCommit(br pgx.BatchResults, work toCommit) error {
	step := func(err error) error {
		if connBusy(err) {
			return rowLeftOpen(err)
		}
		if store.Unavailable(err) {
			return infraError{err}
		}
		return err
	}
	if err := readQueued(br, work.stmts); err != nil {
		return err
	}
	for _, r := range work.rows {
		if _, err := br.Exec(); err != nil {
			return step(fmt.Errorf("write %s to the outbox: %w", r.Headers[HeaderType], err))
		}
	}
	tag, err := br.Exec()
	if err != nil && connBusy(err) {
		return rowLeftOpen(err)
	}
	if err == nil && tag.String() != "COMMIT" {
		// PostgreSQL answers COMMIT of a transaction that an error aborted
		// (a statement the handler ran failed, and it returned nil) with
		// ROLLBACK; pgx's own Commit reports the same.
		err = pgx.ErrTxCommitRollback
	}
	if err == nil {
		err = br.Close()
	}
	if err != nil {
		return commitError(err)
	}
	return nil
}

func (t *pipelinedTx) rollback() {
	if !t.mu.TryLock() {
		// A handler past its timeout is still in a statement: the
		// transaction ends when that returns, and the call does not wait
		// for it (database/sql does the same for a transaction whose
		// context ended).
		go func() {
			t.mu.Lock()
			t.rollbackLocked()
		}()
		return
	}
	t.rollbackLocked()
}

func (t *pipelinedTx) rollbackLocked() {
	defer t.mu.Unlock()
	if t.ended {
		return
	}
	t.ended = true
	t.closeRows()
	_ = t.raw(endTransaction)
	_ = t.conn.Close()
}

// endTransaction rolls back whatever transaction pc is in. It does not use
// the call's context, which may be what ended; a connection that cannot roll
// back is closed, which ends the transaction on the server too.
func endTransaction(pc *pgx.Conn) error {
	if pc.IsClosed() || pc.PgConn().TxStatus() == 'I' {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := pc.Exec(ctx, "ROLLBACK"); err != nil {
		_ = pc.Close(ctx)
		return err
	}
	return nil
}

// connBusy says pgx refused a statement because a result on the connection
// is still being read: the handler's doing, not the database's, though pgx
// calls it safe to retry.
func connBusy(err error) bool {
	return strings.Contains(err.Error(), "conn busy")
}

func rowLeftOpen(err error) error {
	return fmt.Errorf("commit: a row of the handler's QueryRowContext was never scanned, and the connection is still reading it: %w", err)
}

// readQueued reads the results of queued statements sent in a pipeline.
func readQueued(br pgx.BatchResults, stmts []runtime.Statement) error {
	for i := range stmts {
		if _, err := br.Exec(); err != nil {
			if connBusy(err) {
				return rowLeftOpen(err)
			}
			return queuedError(i, stmts, err)
		}
	}
	return nil
}

// runQueued runs queued statements one after another: at the commit on
// SQLite, and where a pipeline cannot carry them (a statement the handler
// runs itself after Queue, a call of a shared transaction).
func runQueued(ctx context.Context, tx sqlExecutor, stmts []runtime.Statement) error {
	for i := range stmts {
		if _, err := tx.ExecContext(ctx, stmts[i].Query, stmts[i].Args...); err != nil {
			return queuedError(i, stmts, err)
		}
	}
	return nil
}

// queuedError says which queued statement failed, with the start of its
// text: it fails after the handler has returned, away from its own context.
// A lost connection is the database's trouble, but a statement that ran
// out of the call's time (waiting for a lock, say) is the call's, as it is
// when the handler runs it itself: it uses up a retry.
func queuedError(i int, stmts []runtime.Statement, err error) error {
	var unprepared pgx.ErrPreprocessingBatch
	if errors.As(err, &unprepared) {
		// pgx prepares a whole pipeline before it sends it, and reports a
		// statement it could not prepare at the pipeline's first result.
		if j := slices.IndexFunc(stmts, func(st runtime.Statement) bool { return st.Query == unprepared.SQL() }); j >= 0 {
			i = j
		}
	}
	err = fmt.Errorf("queued statement %d of %d (%s): %w", i+1, len(stmts), statementText(stmts[i].Query), err)
	if store.Unavailable(err) && !endedWithItsContext(err) {
		return infraError{err}
	}
	return err
}

// statementText is the start of a statement on one line, to say in an
// error which of several it was.
func statementText(query string) string {
	return boundText(strings.Join(strings.Fields(query), " "), 80)
}
