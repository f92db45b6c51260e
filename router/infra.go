package router

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/eventfn/eventfn/router/dispatch"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// infraError marks a failure of what the runtime owns (the database, its
// connections, the writer lock) rather than of the event or the handler: the
// event is not at fault, so it must not use up its retries or be
// dead-lettered.
type infraError struct{ err error }

func (e infraError) Error() string { return e.err.Error() }
func (e infraError) Unwrap() error { return e.err }

// isInfra reports whether err is an infrastructure failure.
func isInfra(err error) bool {
	var ie infraError
	return errors.As(err, &ie)
}

// usesRetry reports whether a failed call counts against the handler's
// retries: not a permanent error (dead-lettered at once) and not an
// infrastructure failure (waited out without using a retry).
func usesRetry(err error) bool {
	return !runtime.IsPermanent(err) && !isInfra(err)
}

// pgConflictCodes are the PostgreSQL errors of a transaction that met
// another session's: a lock not available (past the transaction's
// lock_timeout, see lockTimeoutFor, or a NOWAIT refused), a deadlock, a
// serialization failure. The call is tried again, as for an unavailable
// dependency, without using a retry.
var pgConflictCodes = []string{"55P03", "40P01", "40001"}

// infraWatch tracks the events that wait for the infrastructure, for /readyz.
type infraWatch struct {
	mu      sync.Mutex
	waiting int
	since   time.Time
	last    error
}

func (w *infraWatch) enter(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiting == 0 {
		w.since = time.Now()
	}
	w.waiting++
	w.last = err
}

func (w *infraWatch) leave() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waiting--
}

// Err is nil, or says how many events wait for the infrastructure since when.
func (w *infraWatch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiting == 0 {
		return nil
	}
	return fmt.Errorf("%d events wait for the database since %s: %w", w.waiting, w.since.UTC().Format(time.RFC3339), w.last)
}

// waitOutInfrastructure retries a call that failed because the infrastructure
// was away, with a backoff doubling from 100 ms to 5 s, for as long as it
// takes, without counting against the handler's retries; the event's key is
// held meanwhile, so one key's order is kept. It sits outside the retry
// middleware (which passes infrastructure failures straight up) and inside
// the dead-letter middleware, which therefore never sees them, except at
// shutdown, when the event is left for redelivery.
func waitOutInfrastructure(watch *infraWatch, closing func() bool, logger *slog.Logger) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			// Inner middlewares (the timeout) replace the message's context;
			// each new try starts from the original one, as Watermill's retry
			// does with ResetContextOnRetry.
			ctx := msg.Context()
			backoff := 100 * time.Millisecond
			entered := false
			defer func() {
				if entered {
					watch.leave()
				}
			}()
			for {
				msg.SetContext(ctx)
				out, err := h(msg)
				if err == nil || !isInfra(err) || closing() {
					return out, err
				}
				if !entered {
					entered = true
					watch.enter(err)
					logger.Warn("infrastructure unavailable; the event waits and is retried without using its retries",
						"event_id", msg.UUID, "err", err)
				}
				if !dispatch.Pause(ctx, backoff) {
					// Shutdown, or the partition went to another member.
					return nil, leftForRedelivery{errors.Join(err, context.Cause(ctx))}
				}
				backoff = min(2*backoff, 5*time.Second)
			}
		}
	}
}

// classifyFailure marks err as an infrastructure failure when the database,
// not the event, is why the call failed: the error says so, or the database
// does not answer a ping right after. Permanent errors stay what they are.
func classifyFailure(db prober, err error) error {
	if err == nil || runtime.IsPermanent(err) {
		return err
	}
	// A write refused as read-only says the server takes none (a standby, a
	// full disk's setting), unless the server says it does: then the
	// handler made its own transaction read-only, and its every call will
	// fail so; waited for, its key waited without end with the replica
	// unready. A dependency's refusal (marked Unavailable) stays the
	// dependency's.
	if !runtime.IsUnavailable(err) && readOnlyRefused(err) && serverTakesWrites(db) {
		return fmt.Errorf("%w (the transaction itself was made read-only: the server takes writes)", ownReadOnly{err})
	}
	if isInfra(err) {
		return err
	}
	// A conflict with another session: neither the event's fault nor the
	// database away. The event waits and is tried again, using no retry,
	// as for an unavailable dependency; readiness is not affected.
	if conflictWithAnotherSession(err) && !runtime.IsUnavailable(err) {
		return runtime.Unavailable(fmt.Errorf("a conflict with another session: %w", err))
	}
	// A dependency's failure may look like the database's (a connection
	// refused by the handler's own inventory database, say): marked
	// Unavailable, only the ping below says eventfn's database is away.
	if !runtime.IsUnavailable(err) && store.Unavailable(err) && !endedWithItsContext(err) {
		return infraError{err}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if perr := db.PingContext(ctx); perr != nil {
		return infraError{fmt.Errorf("%w (and the database does not answer: %v)", err, perr)}
	}
	return err
}

// conflictWithAnotherSession says err is one of pgConflictCodes.
func conflictWithAnotherSession(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && slices.Contains(pgConflictCodes, pe.Code)
}

// endedWithItsContext says that err is a statement's context ending (a
// timeout, waiting for a lock, say, or a cancellation of the handler's
// own), which pgx reports as a timeout and safe to retry: the call's
// trouble, which uses up a retry, unless the database does not answer
// either (classifyFailure pings it). Left to store.Unavailable alone, it
// was an outage, retried without end and without a dead letter.
func endedWithItsContext(err error) bool {
	return pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// prober asks the database whether it serves.
type prober interface {
	PingContext(ctx context.Context) error
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// ownReadOnly is a read-only refusal of a transaction the handler made
// read-only itself. It hides the infrastructure mark the refusal may carry
// from an inner layer (a queued statement's, the commit's), and keeps the
// PostgreSQL error for errors.As.
type ownReadOnly struct{ err error }

func (e ownReadOnly) Error() string { return e.err.Error() }

func (e ownReadOnly) Unwrap() error {
	var pe *pgconn.PgError
	if errors.As(e.err, &pe) {
		return pe
	}
	return nil
}

// readOnlyRefused says err is PostgreSQL's refusal of a write in a
// read-only transaction (25006).
func readOnlyRefused(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "25006"
}

// serverTakesWrites asks PostgreSQL whether it takes writes now: it is no
// standby, and new transactions are not read-only. No answer is no.
func serverTakesWrites(db prober) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var writable bool
	err := db.QueryRowContext(ctx, `SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'`).Scan(&writable)
	return err == nil && writable
}
