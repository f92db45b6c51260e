package router

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/uuid"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/tracing"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// Outbox writes events into the outbox table inside a caller's transaction.
// The relay (package relay) forwards them to Kafka.
type Outbox struct {
	db    *store.DB
	table *relay.Table
	kafka configs.Kafka
	// wake lets a commit that emitted events start the relay's next read at once.
	wake   *relayWake
	logger watermill.LoggerAdapter
	// writes runs Write's transactions, shared when they queue up (group
	// commit) on SQLite; see newOutsideCommitter.
	writes *committer
}

// NewOutbox builds the outbox of db.
func NewOutbox(db *store.DB, cfg configs.Config, logger watermill.LoggerAdapter) *Outbox {
	return &Outbox{db: db, table: relay.NewTable(db), kafka: cfg.Kafka, logger: logger, wake: &relayWake{notifier: relay.NewNotifier(db)},
		writes: newOutsideCommitter(db)}
}

// outsideBatch caps the writes from outside handlers (the HTTP ingress's
// orders) that share one SQLite transaction.
const outsideBatch = 16

// newOutsideCommitter runs Write's transactions on SQLite as a handler's
// calls run there: those that queue for the one writer share a transaction,
// each in a savepoint of its own, so one that fails is rolled back alone.
// Why: each order was a transaction of its own, and its commit (a WAL write)
// was half of what POST /orders spent of the writer's time under load
// (docs/BENCHMARKS.md). On PostgreSQL, Write is one pipelined round trip per
// order, and calls sharing a transaction wait for each other's round trips
// (see maxBatch), so each stays alone.
func newOutsideCommitter(db *store.DB) *committer {
	if db.Driver != store.SQLite {
		return newCommitter(db, 1, 1, nil)
	}
	return newCommitter(db, outsideBatch, 1, nil)
}

// Pending counts outbox rows the relay has not forwarded yet.
func (o *Outbox) Pending(ctx context.Context) (int64, error) { return o.table.PendingCount(ctx) }

// Stats describes the outbox: pending and parked rows, the oldest pending one.
func (o *Outbox) Stats(ctx context.Context) (relay.Stats, error) { return o.table.Stats(ctx) }

// Transact runs fn in one transaction whose emitted events go to the outbox. It
// serves code outside handlers, such as the HTTP ingress; any event type may be
// emitted, and each call starts a new correlation id unless ctx carries one.
func (o *Outbox) Transact(ctx context.Context, fn func(ctx context.Context, tx runtime.Tx) error) error {
	emitted := false
	_, err := inTx(ctx, o.db, nil, func(ctx context.Context, tx sqlExecutor) (toCommit, error) {
		h, err := o.outsideHandle(ctx, tx)
		if err != nil {
			return toCommit{}, err
		}
		if err := fn(ctx, h); err != nil {
			return toCommit{}, h.failed(err)
		}
		work, err := h.done()
		emitted = len(work.rows) > 0
		return work, err
	})
	if err == nil && emitted {
		o.wake.nudge()
	}
	return err
}

// outsideHandle is the runtime.Tx of code outside handlers: any event type,
// and a new correlation id unless ctx carries one.
func (o *Outbox) outsideHandle(ctx context.Context, tx sqlExecutor) (*txHandle, error) {
	meta, ok := runtime.MetadataFrom(ctx)
	if !ok || meta.CorrelationID == "" {
		meta.CorrelationID = uuid.NewString()
	}
	return o.handle(tx, meta, "eventfn/ingress", nil)
}

// handle wraps tx as the runtime.Tx a handler sees. allowed, when not nil, limits
// the event types Emit accepts.
func (o *Outbox) handle(tx sqlExecutor, cause runtime.Metadata, source string, allowed func(string) bool) (*txHandle, error) {
	if err := runtime.ValidateCorrelationID(cause.CorrelationID); err != nil {
		return nil, runtime.Permanent(err)
	}
	return &txHandle{sqlExecutor: tx, cause: cause, source: source, allowed: allowed, kafka: o.kafka}, nil
}

// txHandle is runtime.Tx: the SQL transaction plus an Emit that writes to the outbox.
type txHandle struct {
	sqlExecutor
	cause   runtime.Metadata
	source  string
	allowed func(string) bool
	kafka   configs.Kafka
	// staged are the events emitted, in order; they are written to the
	// outbox with the commit (on PostgreSQL in the same round trip).
	staged []relay.Record
	// queued are the statements of Queue not run yet: they run with the
	// commit, or before a statement the handler runs itself. queueErr is
	// the first failure of Queue or of running what it queued: the call
	// fails with it even if the handler ignored it, since on SQLite the
	// transaction would otherwise commit without the statement.
	queued   []runtime.Statement
	queueErr error
	// emitErr is the first refusal of Emit for a mistake of the code: the
	// call fails with it even if the handler ignored it. tooLarge are the
	// refusals for size, which the handler may have handled.
	emitErr  error
	tooLarge []string
	// chainStarted is the HeaderChainStarted of the event being handled;
	// empty outside handlers, where each emitted event starts its chain.
	chainStarted string
	// ended is the first error of a statement that ended with its context
	// while it ran (a timeout or a cancellation of the handler's own). That
	// ends the transaction: on PostgreSQL pgx closes the connection, on
	// SQLite an interrupted write rolls the whole transaction back and the
	// statements after it would commit one by one, outside it. So every
	// later statement of the call is refused, and the call fails even if
	// the handler goes on and returns nil (left to the commit, a closed
	// connection looked like a database outage, retried without end).
	ended atomic.Pointer[error]
}

// note records err if it is a statement's context ending (see ended), and
// returns it. A statement whose context ended before it was sent never
// gets here (refused).
func (t *txHandle) note(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	// A failure once the context has ended is taken for its end, whatever
	// the driver made of it (database/sql reports a context that ended as
	// pgx began as a bad connection, and closes it). No row is an answer.
	if !errors.Is(err, sql.ErrNoRows) && (ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		t.ended.CompareAndSwap(nil, &err)
	}
	return err
}

// refused is why a statement given ctx may not run, or nil: its context has
// ended (then nothing is sent, and the transaction stays as it is), or an
// earlier statement ended the transaction.
func (t *txHandle) refused(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if p := t.ended.Load(); p != nil {
		return endedError(*p)
	}
	return nil
}

func endedError(err error) error {
	return fmt.Errorf("a statement of the call ended with its context (%w), which ends the transaction (on PostgreSQL its connection; on SQLite an interrupted write rolls it back): nothing of the call is committed", err)
}

var _ runtime.Tx = (*txHandle)(nil)

// Emit stages events for the outbox of this transaction. An event that could
// never be produced (larger than kafka.max_message_bytes) is refused here, with
// a permanent error, rather than accepted and stuck in the outbox. A refusal
// for a mistake of the code (an undeclared type, say) fails the call even if
// the handler goes on and returns nil, as a refused Queue does: its writes
// would otherwise commit without the event, silently. A refusal for the
// event's size depends on the data and may be handled (by emitting a
// reference instead), so it is not kept; tooLarge names it for a warning.
func (t *txHandle) Emit(ctx context.Context, events ...runtime.Event) error {
	err := t.emit(ctx, events)
	switch {
	case errors.Is(err, runtime.ErrEventTooLarge):
		t.tooLarge = append(t.tooLarge, err.Error())
	case err != nil:
		t.emitErr = cmp.Or(t.emitErr, err)
	}
	return err
}

func (t *txHandle) emit(ctx context.Context, events []runtime.Event) error {
	for _, ev := range events {
		typ := ev.EventType()
		if err := runtime.ValidateEventType(typ); err != nil {
			return runtime.Permanent(err)
		}
		if t.allowed != nil && !t.allowed(typ) {
			return runtime.Permanent(fmt.Errorf("emit %s: the handler did not declare it; add runtime.Emits(%T{}) to its options", typ, ev))
		}
		payload, err := json.Marshal(ev)
		if err != nil {
			return runtime.Permanent(fmt.Errorf("encode %s as JSON: %w", typ, err))
		}
		key := t.cause.Key
		if k, ok := ev.(runtime.Keyed); ok {
			key = k.EventKey()
		}
		rec := relay.Record{
			Topic:   t.kafka.Topic(typ),
			Payload: payload,
			Headers: map[string]string{
				HeaderID:            uuid.NewString(),
				HeaderType:          typ,
				HeaderSource:        t.source,
				HeaderSpecVersion:   "1.0",
				HeaderTime:          time.Now().UTC().Format(time.RFC3339Nano),
				HeaderContentType:   "application/json",
				HeaderCorrelationID: t.cause.CorrelationID,
			},
		}
		// Outside a handler the first event emitted starts the chain, and
		// the others of the transaction (same correlation id) share it.
		t.chainStarted = cmp.Or(t.chainStarted, rec.Headers[HeaderTime])
		rec.Headers[HeaderChainStarted] = t.chainStarted
		if key != "" {
			rec.Key = []byte(key)
		}
		if t.cause.ID != "" {
			rec.Headers[HeaderCausationID] = t.cause.ID
		}
		// The span of the handler call (or the HTTP request) that emits the
		// event is its parent: the relay and the next handler continue the trace.
		tracing.Inject(ctx, rec.Headers)
		if size := rec.Size(); size > t.kafka.MaxMessageBytes {
			return runtime.Permanent(fmt.Errorf("emit %s: %w: it takes %d bytes on Kafka, more than kafka.max_message_bytes (%d); send less, or a reference to the data", typ, runtime.ErrEventTooLarge, size, t.kafka.MaxMessageBytes))
		}
		t.staged = append(t.staged, rec)
	}
	return nil
}

// Queue adds statements to run with the commit; see runtime.Tx.
func (t *txHandle) Queue(_ context.Context, stmts ...runtime.Statement) error {
	for i, st := range stmts {
		var err error
		switch {
		case strings.TrimSpace(st.Query) == "":
			err = fmt.Errorf("queue statement %d of %d: the query is empty", i+1, len(stmts))
		case st.Returning != nil:
			err = fmt.Errorf("queue statement %d of %d (%s): a queued statement runs after the handler has returned, so nothing would read its Returning; run it with QueryRowContext", i+1, len(stmts), statementText(st.Query))
		}
		if err != nil {
			t.queueErr = cmp.Or(t.queueErr, runtime.Permanent(err))
			return t.queueErr
		}
	}
	for _, st := range stmts {
		// The handler may reuse its argument slice once Queue returns.
		t.queued = append(t.queued, runtime.Statement{Query: st.Query, Args: slices.Clone(st.Args)})
	}
	return nil
}

// flush runs what is queued before a statement the handler runs itself.
func (t *txHandle) flush(ctx context.Context) error {
	if t.queueErr != nil {
		return t.queueErr
	}
	if len(t.queued) == 0 {
		return nil
	}
	stmts := t.queued
	t.queued = nil
	if err := runQueued(ctx, t.sqlExecutor, stmts); err != nil {
		t.queueErr = err
		return err
	}
	return nil
}

// ready is what a statement of the handler's own needs first: not to be
// refused, and what was queued before it run.
func (t *txHandle) ready(ctx context.Context) error {
	if err := t.refused(ctx); err != nil {
		return err
	}
	return t.flush(ctx)
}

func (t *txHandle) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if err := t.ready(ctx); err != nil {
		return nil, err
	}
	res, err := t.sqlExecutor.ExecContext(ctx, query, args...)
	return res, t.note(ctx, err)
}

// QueryContext's rows call the handler's Scanners under a recover
// (guardedRows, panicsafe.go).
func (t *txHandle) QueryContext(ctx context.Context, query string, args ...any) (runtime.Rows, error) {
	if err := t.ready(ctx); err != nil {
		return nil, err
	}
	rows, err := t.sqlExecutor.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, t.note(ctx, err)
	}
	return &guardedRows{Rows: rows, ctx: ctx, note: t.note}, nil
}

// QueryRowContext does not run the query when what was queued failed: its
// Row reports that failure, and the call fails with it at its end all the
// same.
func (t *txHandle) QueryRowContext(ctx context.Context, query string, args ...any) runtime.Row {
	if err := t.ready(ctx); err != nil {
		return guardedRow{err: err}
	}
	return guardedRow{row: t.sqlExecutor.QueryRowContext(ctx, query, args...), ctx: ctx, note: t.note}
}

// failed is the error of a call whose handler returned err. A failure of
// what it queued comes first: the handler's error is most likely its
// consequence (on PostgreSQL, "current transaction is aborted" from a
// QueryRowContext whose flush failed), and it decides how the call is
// retried (a deadlock is the database's trouble, a refused Queue is
// permanent).
func (t *txHandle) failed(err error) error {
	if t.queueErr == nil || errors.Is(err, t.queueErr) {
		return err
	}
	return fmt.Errorf("%w (the handler then returned: %v)", t.queueErr, err)
}

// done is what the transaction commits once the handler returned nil.
func (t *txHandle) done() (toCommit, error) {
	if t.queueErr != nil {
		return toCommit{}, t.queueErr
	}
	if t.emitErr != nil {
		return toCommit{}, fmt.Errorf("%w (the handler went on and returned nil; nothing of the call was committed)", t.emitErr)
	}
	if p := t.ended.Load(); p != nil {
		return toCommit{}, fmt.Errorf("%w; the handler went on and returned nil", endedError(*p))
	}
	return toCommit{stmts: t.queued, rows: t.staged}, nil
}
