package router

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// Group commit: when one handler's calls queue up faster than transactions
// commit, the calls waiting share a transaction. Each call still claims its
// event, runs its handler and stages its events, on SQLite inside a
// savepoint of its own, so a call that fails is rolled back to its
// savepoint alone and the others go on (on PostgreSQL, see newCommitter);
// the transaction commits once for all of them, with every staged event.
// Nothing waits to fill a batch: a call that finds no batch running starts
// one at once, so one call at a time runs exactly as alone.
//
// What it saves is per call: BEGIN and COMMIT (each a round trip on
// PostgreSQL, and a commit record, a lock and a snapshot on the server;
// a WAL write on SQLite, whose one writer every transaction waits for).
//
// Calls in one batch run one after another on its connection, so a slow
// call would hold up the calls behind it. Two rules bound that: a batch
// takes no more calls once it has run for batchBudget, and a call that no
// batch took within batchWait starts a batch of its own (up to the
// handler's Concurrency), so a slow handler's calls still run side by side.
const (
	batchBudget = 5 * time.Millisecond
	batchWait   = time.Millisecond
)

// sharedTxn is a transaction that calls can share, each in a savepoint or not.
type sharedTxn interface {
	txn
	// start makes a call's claim, after a savepoint of its own on SQLite.
	start(ctx context.Context, claim *inboxClaim) (claimed bool, err error)
	// undo rolls back to the current call's savepoint; on PostgreSQL, which
	// has none, it fails, and the batch with it.
	undo() error
	// settle readies the transaction for the current call's queued
	// statements. It fails when the database ended the transaction by
	// itself: SQLite does on some failures, and goes on in autocommit,
	// where they would commit on their own. undoable says whether undo can
	// still roll the call back alone after them.
	settle(ctx context.Context) (undoable bool, err error)
	// deferLater, when it reports true, has taken the current call's
	// queued statements to send with the next call's start or with the
	// commit, whichever comes first, saving them a round trip. Their
	// failure there is a *laterError.
	deferLater(callCtx context.Context, stmts []runtime.Statement) bool
}

// committer runs one handler's calls, in shared transactions when they queue.
type committer struct {
	db *store.DB
	// maxBatch caps the calls in one transaction; maxBatches, the
	// transactions at once.
	maxBatch, maxBatches int
	// budget and wait are batchBudget and batchWait (tests change them).
	budget, wait time.Duration
	// retriesAlone says that a retry never joins a batch: on PostgreSQL,
	// where calls share a transaction without savepoints. See newCommitter.
	retriesAlone bool
	// observe, when set, hears how many calls each transaction committed.
	observe func(calls float64)

	mu      sync.Mutex
	queue   []*call
	running int // batches running
	opening int // batches waiting for a connection: each takes a queued call
	timer   *time.Timer
}

// call is one handler call (or one write from outside handlers) waiting
// for, or in, a batch.
type call struct {
	ctx context.Context
	// claim is the inbox claim of a handler call; nil for a write from
	// outside handlers.
	claim *inboxClaim
	fn    func(ctx context.Context, tx sqlExecutor) (toCommit, error)
	done  chan callResult
}

type callResult struct {
	claimed bool
	err     error
	// panicked is the value of a panic in the call's function, which ran on
	// the batch's goroutine: run raises it again on the caller's, where it
	// would have been raised had the call run alone.
	panicked any
	// alone says that the shared transaction failed around the call (a
	// commit that did not go through, a connection lost because of another
	// call): the call runs again in a transaction of its own.
	alone bool
}

// maxBatch is the policy's MaxBatch, or when it leaves the choice to the
// database: calls share transactions on SQLite, where they wait for its one
// writer anyway (the load benchmark's capacity rose by about 40 %), and not
// on PostgreSQL, where sharing (even without savepoints) took 15 % of the
// server's CPU per order away but nothing measurable from the whole
// machine's, and made latency no better (docs/BENCHMARKS.md). Where
// PostgreSQL runs on a machine of its own and is what limits, MaxBatch is
// worth setting.
func maxBatch(p runtime.Policy, driver store.Driver) int {
	switch {
	case p.MaxBatch > 0:
		return p.MaxBatch
	case driver == store.SQLite:
		return 16
	default:
		return 1
	}
}

// newCommitter runs calls in batches of up to maxBatch, maxBatches at once.
//
// On PostgreSQL the calls of a batch share its transaction without a
// savepoint each: a savepoint and its release are two statements per call,
// which cost the server as much as the BEGIN and COMMIT that sharing saves
// (docs/BENCHMARKS.md). A call that fails there takes the transaction down
// with it; it fails with its own error, and the other calls run again, each
// alone. So that a call that keeps failing cannot do that again and again,
// a retry (an attempt after the first) always runs alone.
func newCommitter(db *store.DB, maxBatch, maxBatches int, observe func(float64)) *committer {
	return &committer{db: db, maxBatch: maxBatch, maxBatches: max(maxBatches, 1), budget: batchBudget, wait: batchWait, observe: observe,
		retriesAlone: db.Driver == store.Postgres}
}

// run runs fn as inTx does, in a batch when calls queue up.
func (m *committer) run(ctx context.Context, claim *inboxClaim, fn func(ctx context.Context, tx sqlExecutor) (toCommit, error)) (bool, error) {
	if m.maxBatch <= 1 || (m.retriesAlone && claim != nil && claim.meta.Attempt > 1) {
		return inTx(ctx, m.db, claim, fn)
	}
	c := &call{ctx: ctx, claim: claim, fn: fn, done: make(chan callResult, 1)}
	m.enqueue(c)
	// A batch always answers: a call whose context ends while it waits is
	// answered with that, and a running call returns at its timeout.
	var r callResult
	select {
	case r = <-c.done:
	case <-ctx.Done():
		if m.remove(c) {
			return false, infraError{fmt.Errorf("begin transaction: waited for a transaction until the call's context ended: %w", context.Cause(ctx))}
		}
		r = <-c.done // a batch has it: it answers at the call's end
	}
	if r.panicked != nil {
		panic(r.panicked)
	}
	if r.alone {
		return inTx(ctx, m.db, claim, fn)
	}
	return r.claimed, r.err
}

func (m *committer) enqueue(c *call) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.queue = append(m.queue, c)
	switch {
	case m.opening > 0:
		// A batch about to begin takes it.
	case m.running == 0:
		m.startBatch()
	case m.timer == nil:
		// A running batch takes it after its current call, unless that call
		// is slow: then a batch of its own starts.
		m.timer = time.AfterFunc(m.wait, m.waited)
	}
}

func (m *committer) waited() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.timer = nil
	if len(m.queue) > 0 && m.opening == 0 {
		m.startBatch()
	}
}

// startBatch starts a batch unless maxBatches run; then the running ones
// take the queue as they end. The caller holds m.mu.
func (m *committer) startBatch() {
	if m.running >= m.maxBatches {
		return
	}
	m.running++
	m.opening++
	go m.batches()
}

// take returns the next queued call, or nil.
func (m *committer) take() *call {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.queue) == 0 {
		return nil
	}
	c := m.queue[0]
	m.queue[0] = nil
	m.queue = m.queue[1:]
	return c
}

// remove takes c out of the queue, if it is still there.
func (m *committer) remove(c *call) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, q := range m.queue {
		if q == c {
			m.queue = append(m.queue[:i], m.queue[i+1:]...)
			return true
		}
	}
	return false
}

// peek returns the next queued call without taking it, or nil.
func (m *committer) peek() *call {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.queue) == 0 {
		return nil
	}
	return m.queue[0]
}

// batches runs batches until the queue is empty.
func (m *committer) batches() {
	for {
		m.batch()
		m.mu.Lock()
		if len(m.queue) == 0 {
			m.running--
			m.mu.Unlock()
			return
		}
		m.opening++ // the next batch takes a queued call
		m.mu.Unlock()
	}
}

// opened counts a batch out of those about to take a queued call.
func (m *committer) opened() {
	m.mu.Lock()
	m.opening--
	m.mu.Unlock()
}

// batch runs one shared transaction. The caller counted it as opening;
// it counts itself out once it has its connection (or none is needed).
func (m *committer) batch() {
	first := m.peek()
	if first == nil {
		m.opened()
		return
	}
	batchCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t, err := m.open(first.ctx, batchCtx)
	m.opened()
	if err != nil {
		// No connection before the first call's context ended, or no
		// database: that call hears it, unless another batch took it; the
		// next batch tries again for the calls after it.
		if m.remove(first) {
			first.done <- callResult{err: err}
		}
		return
	}
	var (
		committed []*call
		staged    []relay.Record
		broken    error
		began     = time.Now()
	)
	// failLast answers the last committed call with the failure of its
	// queued statements, sent after it returned (deferLater), and takes it
	// out of the batch.
	failLast := func(err error) {
		last := committed[len(committed)-1]
		committed = committed[:len(committed)-1]
		last.done <- callResult{claimed: true, err: err}
	}
	for n := 0; n < m.maxBatch && broken == nil && (n == 0 || time.Since(began) < m.budget); n++ {
		c := m.take()
		if c == nil {
			break
		}
		if err := c.ctx.Err(); err != nil {
			c.done <- callResult{err: infraError{fmt.Errorf("begin transaction: waited for a transaction until the call's context ended: %w", context.Cause(c.ctx))}}
			continue
		}
		res, rows, brk := m.one(batchCtx, t, c)
		var later *laterError
		switch {
		case errors.As(brk, &later):
			// The call before this one failed; this one was not started.
			failLast(later.err)
			broken = brk
			res = callResult{alone: true}
		case brk != nil:
			broken = brk
		case res.err == nil && res.claimed:
			committed = append(committed, c)
			staged = append(staged, rows...)
			continue
		}
		c.done <- res
	}
	if broken != nil {
		// Not waited for: a call past its timeout may still be in a
		// statement on the transaction.
		go t.rollback()
		for _, c := range committed {
			c.done <- callResult{alone: true}
		}
		return
	}
	if len(committed) == 0 {
		t.rollback()
		return
	}
	commitCtx, cancelCommit := commitContext(batchCtx, committed)
	defer cancelCommit()
	if err := t.commit(commitCtx, toCommit{rows: staged}); err != nil {
		var later *laterError
		if errors.As(err, &later) {
			failLast(later.err)
		}
		for _, c := range committed {
			c.done <- callResult{alone: true}
		}
		return
	}
	if m.observe != nil {
		m.observe(float64(len(committed)))
	}
	for _, c := range committed {
		c.done <- callResult{claimed: true}
	}
}

// one runs a call in t, in a savepoint of its own on SQLite. broken is set
// when t cannot go on: the savepoint could not be made, or rolled back to
// (on PostgreSQL, a call that failed).
//
// The savepoint and the claim run under the batch's context, not the
// call's: a call whose context ends in the middle of them would take the
// transaction, and every call's work in it, down with it.
func (m *committer) one(batchCtx context.Context, t sharedTxn, c *call) (res callResult, rows []relay.Record, broken error) {
	claimed, err := t.start(batchCtx, c.claim)
	if err != nil {
		// Whether the savepoint was made is not known: rolling back to "the
		// current savepoint" might undo the previous call's work.
		return callResult{err: err}, nil, err
	}
	if !claimed {
		return callResult{}, nil, nil
	}
	g := newGuardedTx(t, m.db.Read, c.ctx)
	work, panicked, err := callFn(c, g)
	if panicked != nil {
		// Uncaught here, it would end the process: nothing above the
		// batch's goroutine recovers. The call is undone like one that
		// failed, and its caller hears the panic.
		res := callResult{claimed: true, err: fmt.Errorf("panic: %v", panicked), panicked: panicked}
		if !g.end() {
			return res, nil, errors.New("a call that panicked is still in a statement on the transaction")
		}
		return res, nil, t.undo()
	}
	// A handler past its timeout may still run: after this none of its
	// statements reaches the transaction the next call uses. One that is in
	// a statement right now holds the transaction: it cannot go on.
	if !g.end() {
		return callResult{claimed: true, err: err}, nil, errors.New("a call that outlived its timeout is still in a statement on the transaction")
	}
	if err == nil && c.ctx.Err() != nil {
		// Its caller gave up while it ran, and its statements finished
		// (guardedTx): it is undone alone, as if it had seen that.
		err = fmt.Errorf("the call's context ended while it ran: %w", context.Cause(c.ctx))
	}
	if err == nil && len(work.stmts) > 0 && t.deferLater(c.ctx, work.stmts) {
		return callResult{claimed: true}, work.rows, nil
	}
	if err == nil && len(work.stmts) > 0 {
		undoable, serr := t.settle(batchCtx)
		if serr != nil {
			return callResult{claimed: true, err: serr}, nil, serr
		}
		// Within the call's time but not under its context: a statement cut
		// short there would take the connection, and every call's work on
		// it, down with it. One that runs out of time breaks the batch all
		// the same (pgx drops the connection), as one that fails where the
		// call cannot be undone alone does; the other calls run again alone.
		qctx, cancel := callDeadline(batchCtx, c.ctx)
		err = runQueued(qctx, t, work.stmts)
		cancel()
		if err != nil && (!undoable || qctx.Err() != nil) {
			return callResult{claimed: true, err: err}, nil, err
		}
	}
	if err != nil {
		if uerr := t.undo(); uerr != nil {
			broken = uerr
		}
		return callResult{claimed: true, err: err}, nil, broken
	}
	return callResult{claimed: true}, work.rows, nil
}

// callFn runs c's function on tx, and returns the value of a panic in it
// instead of letting it go on up the batch's goroutine.
func callFn(c *call, tx sqlExecutor) (work toCommit, panicked any, err error) {
	defer func() {
		if p := recover(); p != nil {
			panicked = p
		}
	}()
	work, err = c.fn(c.ctx, tx)
	return work, nil, err
}

// open takes a connection (waiting no longer than the first call's
// context) and begins a transaction that only batchCtx ends.
func (m *committer) open(callCtx, batchCtx context.Context) (sharedTxn, error) {
	if m.db.Driver == store.Postgres {
		return openForCall(callCtx, m.db)
	}
	conn, err := m.db.Conn(callCtx)
	if err != nil {
		return nil, infraError{fmt.Errorf("begin transaction: %w", err)}
	}
	tx, err := conn.BeginTx(batchCtx, nil)
	if err != nil {
		_ = conn.Close()
		return nil, infraError{fmt.Errorf("begin transaction: %w", err)}
	}
	return &sqlTx{Tx: tx, conn: conn}, nil
}

// callDeadline is batchCtx with the call's deadline, if it has one.
func callDeadline(batchCtx, callCtx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := callCtx.Deadline(); ok {
		return context.WithDeadline(batchCtx, d)
	}
	return context.WithCancel(batchCtx)
}

// commitContext bounds a batch's commit by the latest deadline of its calls.
func commitContext(batchCtx context.Context, calls []*call) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, c := range calls {
		d, ok := c.ctx.Deadline()
		if !ok {
			return context.WithCancel(batchCtx)
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(batchCtx, latest)
}

// guardedTx is one call's view of a shared transaction: once the call has
// ended, its statements fail with sql.ErrTxDone instead of running in the
// next call's part of the transaction.
//
// A statement does not stop when the call's caller gives up (the call's
// context is cancelled: a client gone): SQLite would interrupt it, which
// rolls the whole shared transaction back, or pgx would drop the
// connection, and every other call of the batch would run again alone,
// more work just when clients time out under overload. The statement
// finishes; the call then fails with its context's error and is undone
// alone (one). Deadlines still stop statements (a runaway query must
// stop), and so does a cancellation of the handler's own (a context it
// derived to give up on a query).
type guardedTx struct {
	sqlExecutor
	// read serves the *sql.Row of a QueryRowContext after the end.
	read  *sql.DB
	mu    sync.RWMutex
	ended bool
	// call is the call's context; base is it without its cancellation,
	// with its deadline: the context of statements given call (or a
	// context that ends with it), cancelled at the call's end.
	call     context.Context
	base     context.Context
	stopBase context.CancelFunc
	// derived are the statement contexts of the contexts the handler
	// derived (keyed by them), made once each, so that a call of many
	// statements keeps one per context, not one per statement; stopped at
	// the call's end, or once their context is done.
	derivedMu sync.Mutex
	derived   map[context.Context]derivedContext
}

// derivedContext is the statement context of a context the handler derived.
type derivedContext struct {
	ctx  context.Context
	stop func()
}

func newGuardedTx(t sqlExecutor, read *sql.DB, call context.Context) *guardedTx {
	g := &guardedTx{sqlExecutor: t, read: read, call: call}
	g.base, g.stopBase = withoutCancel(call)
	return g
}

// withoutCancel is ctx without its cancellation, with its deadline.
func withoutCancel(ctx context.Context) (context.Context, context.CancelFunc) {
	kept := context.WithoutCancel(ctx)
	if d, ok := ctx.Deadline(); ok {
		return context.WithDeadline(kept, d)
	}
	return context.WithCancel(kept)
}

// end ends the call's use of the transaction, unless a statement of it is
// running (then it reports false, and ends the call once that returns).
func (g *guardedTx) end() bool {
	if !g.mu.TryLock() {
		go func() {
			g.mu.Lock()
			g.finish()
			g.mu.Unlock()
		}()
		return false
	}
	g.finish()
	g.mu.Unlock()
	return true
}

// finish marks the call ended and ends its statements' contexts; the
// caller holds g.mu.
func (g *guardedTx) finish() {
	g.ended = true
	g.stopBase()
	g.derivedMu.Lock()
	for _, d := range g.derived {
		d.stop()
	}
	g.derived = nil
	g.derivedMu.Unlock()
}

// statementContext is the context a statement given ctx runs under: base
// when ctx ends with the call; else ctx without the call's cancellation.
func (g *guardedTx) statementContext(ctx context.Context) context.Context {
	if ctx.Done() == g.call.Done() {
		return g.base // the call's context, or one that adds values only
	}
	g.derivedMu.Lock()
	defer g.derivedMu.Unlock()
	if d, ok := g.derived[ctx]; ok {
		return d.ctx
	}
	if g.derived == nil {
		g.derived = map[context.Context]derivedContext{}
	}
	if n := len(g.derived); n >= 64 && n&(n-1) == 0 {
		// A context per statement (a timeout each): forget those done.
		for k, d := range g.derived {
			if k.Err() != nil {
				d.stop()
				delete(g.derived, k)
			}
		}
	}
	sctx, cancel := withoutCancel(ctx)
	// The handler's own cancellation stops the statement; its caller's
	// giving up, which cancels ctx too, does not.
	stopAfter := context.AfterFunc(ctx, func() {
		if g.call.Err() == nil {
			cancel()
		}
	})
	g.derived[ctx] = derivedContext{ctx: sctx, stop: func() { stopAfter(); cancel() }}
	return sctx
}

func (g *guardedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.ended {
		return nil, sql.ErrTxDone
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return g.sqlExecutor.ExecContext(g.statementContext(ctx), query, args...)
}

func (g *guardedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.ended {
		return nil, sql.ErrTxDone
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return g.sqlExecutor.QueryContext(g.statementContext(ctx), query, args...)
}

// QueryRowContext after the call ended goes to the read pool with a
// cancelled context: database/sql checks it before taking a connection, so
// the *sql.Row reports context.Canceled and nothing reaches the database.
// (On the shared connection a cancelled context makes pgx drop it.) So
// does one whose own context has ended.
func (g *guardedTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.ended || ctx.Err() != nil {
		done, cancel := context.WithCancel(ctx)
		cancel()
		return g.read.QueryRowContext(done, query, args...)
	}
	return g.sqlExecutor.QueryRowContext(g.statementContext(ctx), query, args...)
}
