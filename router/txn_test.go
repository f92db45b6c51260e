package router_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

type probe struct {
	N int `json:"n"`
}

func (probe) EventType() string { return "probe.sent" }

type probed struct {
	N int `json:"n"`
}

func (probed) EventType() string { return "probe.handled" }

// textRows is the one text column of query's rows, in order.
func textRows(t *testing.T, tr *testRuntime, query string, args ...any) []string {
	t.Helper()
	return testenv.Column[string](context.Background(), t, tr.db.Read, query, args...)
}

func countRows(t *testing.T, tr *testRuntime, query string, args ...any) int {
	t.Helper()
	var n int
	if err := tr.db.Read.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAHandlerPastItsTimeoutCannotWrite: a handler that ignores its context
// and writes after its call was cut short (with a context of its own) must
// not get that write committed: its transaction is over, and the statement
// must neither join a later transaction on the same connection nor run on
// its own.
func TestAHandlerPastItsTimeoutCannotWrite(t *testing.T) {
	timedOut := make(chan struct{})
	proceed := make(chan struct{})
	late := make(chan error, 1)
	h := runtime.NewHandler("overstayer", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		if ev.N != 0 {
			_, err := tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', $1, 'x')`, fmt.Sprint(ev.N))
			return err
		}
		<-ctx.Done()
		close(timedOut)
		<-proceed
		_, err := tx.ExecContext(context.Background(), `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', 'late', 'x')`)
		late <- err
		return err
	}, runtime.WithPolicy(runtime.Policy{Timeout: 200 * time.Millisecond, MaxRetries: -1}))
	tr := startRuntime(t, nil, h)

	tr.emit(t, probe{N: 0})
	<-timedOut
	tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 1)
	// Events after it use the connections meanwhile.
	for i := 1; i <= 10; i++ {
		tr.emit(t, probe{N: i})
	}
	waitUntil(t, "the events behind it handled", 20*time.Second, func() bool {
		return countRows(t, tr, `SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'probe'`) == 10
	})
	close(proceed)
	select {
	case err := <-late:
		if err == nil {
			t.Fatal("a statement after the call's timeout succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the late statement did not return")
	}
	// More transactions after it, on every connection of the pool.
	for i := 11; i <= 30; i++ {
		tr.emit(t, probe{N: i})
	}
	waitUntil(t, "the events after it handled", 20*time.Second, func() bool {
		return countRows(t, tr, `SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'probe'`) == 30
	})
	if n := countRows(t, tr, `SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'probe' AND event_id = 'late'`); n != 0 {
		t.Fatal("the write made after the timeout was committed")
	}
}

// TestAStatementErrorTheHandlerIgnores: on PostgreSQL a failed statement
// aborts the transaction, so a handler that ignores the error and returns
// nil must not be taken as a success: nothing of the call commits (neither
// its later write nor its event) and the event is retried, then
// dead-lettered with the reason. SQLite keeps a transaction usable after a
// failed statement, so there the rest of the call commits, as the handler
// asked.
func TestAStatementErrorTheHandlerIgnores(t *testing.T) {
	h := runtime.NewHandler("careless", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		_, _ = tx.ExecContext(ctx, `INSERT INTO no_such_table (x) VALUES (1)`)
		if _, err := tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', $1, 'x')`, fmt.Sprint(ev.N)); err != nil && !strings.Contains(err.Error(), "aborted") {
			return err
		}
		return tx.Emit(ctx, probed(ev))
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}), runtime.Emits(probed{}))
	tr := startRuntime(t, nil, h)
	tr.emit(t, probe{N: 1})

	if tr.db.Driver == store.SQLite {
		tr.records(t, "probe.handled", 1)
		if n := countRows(t, tr, `SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'probe'`); n != 1 {
			t.Fatalf("SQLite: %d rows of the call committed, want 1", n)
		}
		return
	}
	dead := tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 1)
	var reason string
	for _, h := range dead[0].Headers {
		if h.Key == "reason_poisoned" {
			reason = string(h.Value)
		}
	}
	if !strings.Contains(reason, "rollback") {
		t.Errorf("dead-letter reason %q does not say the commit rolled back", reason)
	}
	nothingCommitted(t, tr)
}

// nothingCommitted checks that a call that failed left neither its write
// (an inbox row of handler "probe") nor its probe.handled events.
func nothingCommitted(t *testing.T, tr *testRuntime) {
	t.Helper()
	if n := countRows(t, tr, `SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'probe'`); n != 0 {
		t.Errorf("%d rows of a rolled-back call committed", n)
	}
	if n := countRows(t, tr, `SELECT COUNT(*) FROM eventfn_outbox WHERE topic = $1`, tr.cfg.Kafka.Topic("probe.handled")); n != 0 {
		t.Errorf("%d outbox rows of a rolled-back call committed", n)
	}
}

// TestARefusedEmitTheHandlerIgnores: a handler that emits an event it did
// not declare (a mistake of its code) without checking Emit's error, and
// returns nil: nothing of the call commits (its write, the event staged
// before the refused one) and the event is dead-lettered at once with the
// refusal, which is permanent. Before, the write committed and the event
// was gone, with nothing logged or dead-lettered.
func TestARefusedEmitTheHandlerIgnores(t *testing.T) {
	h := runtime.NewHandler("careless", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', $1, 'x')`, fmt.Sprint(ev.N)); err != nil {
			return err
		}
		_ = tx.Emit(ctx, probed(ev), probe{N: 2})
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 3, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}), runtime.Emits(probed{}))
	tr := startRuntime(t, nil, h)
	tr.emit(t, probe{N: 1})
	dead := tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 1)
	if reason := chainHeader(dead[0], "reason_poisoned"); !strings.Contains(reason, "did not declare it") || !strings.Contains(reason, "returned nil") {
		t.Errorf("dead-letter reason %q does not give the refusal and that the handler went on", reason)
	}
	if attempts := chainHeader(dead[0], router.HeaderAttempts); attempts != "1" {
		t.Errorf("dead-lettered after %s attempts, want 1: the refusal is permanent", attempts)
	}
	nothingCommitted(t, tr)
}

// TestAnEventTooLargeForKafkaMayBeHandled: an event over
// kafka.max_message_bytes depends on the data, and Emit's error says so
// (runtime.ErrEventTooLarge), as the error text invites: a handler that
// emits a reference instead commits with it; one that ignores the refusal
// commits without the event, and the runtime logs a warning that names it.
func TestAnEventTooLargeForKafkaMayBeHandled(t *testing.T) {
	h := runtime.NewHandler("sizes", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		err := tx.Emit(ctx, bulky{S: strings.Repeat("x", 2<<20)})
		if ev.N == 1 && errors.Is(err, runtime.ErrEventTooLarge) {
			return tx.Emit(ctx, probed{N: -1}) // a reference to the data
		}
		return nil // ev.N == 2: ignores it
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 3, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}), runtime.Emits(probed{}, bulky{}))
	tr := startRuntime(t, nil, h)
	tr.emit(t, probe{N: 1})
	if got := tr.records(t, "probe.handled", 1); string(got[0].Value) != `{"n":-1}` {
		t.Errorf("the handled call emitted %s, want its reference", got[0].Value)
	}
	tr.emit(t, probe{N: 2})
	waitUntil(t, "the warning of an ignored refusal", 30*time.Second, func() bool {
		return strings.Contains(tr.logs.String(), "Emit refused events too large for Kafka")
	})
	if n := tr.metric(t, "eventfn_dead_lettered_total"); n != 0 {
		t.Errorf("%v events dead-lettered", n)
	}
	if n := countRows(t, tr, `SELECT COUNT(*) FROM eventfn_outbox WHERE topic = $1`, tr.cfg.Kafka.Topic("probe.bulky")); n != 0 {
		t.Errorf("%d events over the limit reached the outbox", n)
	}
}

// TestAHandlerErrorThatWrapsCanceledIsRetried: a handler's own error that
// wraps context.Canceled (a client library's call it cancelled, say) is a
// failure like any other, retried on the policy's schedule. It was taken for
// a shutdown and dead-lettered on the first attempt, retries unused.
func TestAHandlerErrorThatWrapsCanceledIsRetried(t *testing.T) {
	var calls atomic.Int32
	h := runtime.NewHandler("cancels", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		if calls.Add(1) <= 2 {
			call, cancel := context.WithCancel(ctx)
			cancel()
			return fmt.Errorf("call the refund service: %w", call.Err())
		}
		return tx.Emit(ctx, probed(ev))
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 3, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}), runtime.Emits(probed{}))
	tr := startRuntime(t, nil, h)
	tr.emit(t, probe{N: 1})
	tr.records(t, "probe.handled", 1)
	if n := calls.Load(); n != 3 {
		t.Errorf("the handler ran %d times, want 3 (two failures, then success)", n)
	}
	if n := tr.metric(t, "eventfn_dead_lettered_total"); n != 0 {
		t.Errorf("%v events dead-lettered", n)
	}
}

// TestFailedCallsLeaveTheirConnectionsClean: calls that fail in every way a
// transaction can end early (a statement error returned, a handler error, a
// panic) are interleaved with good ones on a pool of eight connections;
// every good call commits, and none meets a transaction left open.
func TestFailedCallsLeaveTheirConnectionsClean(t *testing.T) {
	h := runtime.NewHandler("mixed", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', $1, 'x')`, fmt.Sprint(ev.N)); err != nil {
			return err
		}
		switch ev.N % 4 {
		case 1:
			_, err := tx.ExecContext(ctx, `INSERT INTO no_such_table (x) VALUES (1)`)
			return runtime.Permanent(err)
		case 2:
			return runtime.Permanent(errors.New("refused"))
		case 3:
			panic("handler bug")
		}
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: -1}))
	tr := startRuntime(t, nil, h)
	const n = 64
	for i := 0; i < n; i++ {
		tr.emit(t, probe{N: i})
	}
	tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 3*n/4)
	waitUntil(t, "the good calls committed", 20*time.Second, func() bool {
		return countRows(t, tr, `SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'probe'`) == n/4
	})
	if got := countRows(t, tr, `SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'mixed'`); got != n/4 {
		t.Fatalf("%d inbox claims committed, want %d (only the good calls')", got, n/4)
	}
}

// TestAQueryTheHandlerLeavesOpenDoesNotStopTheCommit: a handler that reads
// part of a result and returns without closing its rows, or never scans a
// QueryRowContext, still commits (a *sql.Tx closes them at the commit; the
// pipelined transaction must too).
func TestAQueryTheHandlerLeavesOpenDoesNotStopTheCommit(t *testing.T) {
	h := runtime.NewHandler("sloppy-reader", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		if err := tx.Emit(ctx, probed(ev)); err != nil {
			return err
		}
		if ev.N == 1 {
			rows, err := tx.QueryContext(ctx, `SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3`)
			if err != nil {
				return err
			}
			rows.Next() // and never closed
			return nil
		}
		_ = tx.QueryRowContext(ctx, `SELECT 4`) // never scanned
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: -1, Timeout: 5 * time.Second}), runtime.Emits(probed{}))
	tr := startRuntime(t, nil, h)
	tr.emit(t, probe{N: 1}, probe{N: 2})
	tr.records(t, "probe.handled", 2)
	if n := countRecords(t, tr, tr.cfg.Kafka.DeadLetterTopic); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
}

// TestACallStuckInAStatementPastItsTimeoutReturnsAtItsTimeout: a handler
// whose statement ignores the call's context (it was given another) holds
// its connection until the statement ends, but the call itself returns at
// its timeout: the event is dead-lettered before the statement ends.
func TestACallStuckInAStatementPastItsTimeoutReturnsAtItsTimeout(t *testing.T) {
	slept := make(chan struct{})
	h := runtime.NewHandler("sleeper", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		defer close(slept)
		_, err := tx.ExecContext(context.Background(), `SELECT pg_sleep(4)`)
		return err
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: -1, Timeout: 300 * time.Millisecond}))
	tr := startRuntime(t, nil, h)
	if tr.db.Driver != store.Postgres {
		t.Skip("needs pg_sleep: SQLite has no statement that waits without using a core")
	}
	tr.emit(t, probe{N: 1})
	tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 1)
	select {
	case <-slept:
		t.Fatal("the call waited for its statement to end")
	default:
	}
}

// TestATransactionTheDatabaseEndedEarlyCommitsNothing: SQLite rolls a whole
// transaction back by itself on INSERT OR ROLLBACK's conflict (and goes on
// in autocommit); PostgreSQL refuses the statement and aborts the
// transaction. Either way a handler that ignores the error and emits must
// not have its event committed (the outbox rows would otherwise be written
// outside any transaction), and the event is dead-lettered. On SQLite a
// statement the handler runs after that commits on its own: database/sql
// cannot tell that SQLite ended the transaction (a known limit, in the
// README); on PostgreSQL nothing of the call commits.
func TestATransactionTheDatabaseEndedEarlyCommitsNothing(t *testing.T) {
	h := runtime.NewHandler("stubborn-writer", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		for range 2 {
			_, _ = tx.ExecContext(ctx, `INSERT OR ROLLBACK INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', 'twice', 'x')`)
		}
		_, _ = tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', 'after', 'x')`)
		return tx.Emit(ctx, probed(ev))
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: -1}), runtime.Emits(probed{}))
	tr := startRuntime(t, nil, h)
	tr.emit(t, probe{N: 3})
	tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 1)
	if n := countRows(t, tr, `SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'stubborn-writer' OR event_id = 'twice'`); n != 0 {
		t.Errorf("%d inbox rows of the call committed", n)
	}
	after := countRows(t, tr, `SELECT COUNT(*) FROM eventfn_inbox WHERE event_id = 'after'`)
	if want := map[store.Driver]int{store.SQLite: 1, store.Postgres: 0}[tr.db.Driver]; after != want {
		t.Errorf("%s: the write after the failed statement committed %d times, want %d", tr.db.Driver, after, want)
	}
	if n := countRows(t, tr, `SELECT COUNT(*) FROM eventfn_outbox WHERE topic = $1`, tr.cfg.Kafka.Topic("probe.handled")); n != 0 {
		t.Errorf("%d outbox rows of the call committed", n)
	}
}

// brokenScanner is a user's sql.Scanner with a bug.
type brokenScanner struct{}

func (*brokenScanner) Scan(any) error { panic("a broken sql.Scanner") }

// TestAScannerThatPanicsInTheHandlersOwnScanFailsOnlyItsCall: database/sql
// keeps a lock of the rows when a sql.Scanner panics in Rows.Scan or
// Row.Scan, so the handler's deferred Close waited for ever in the panic
// itself, and the transaction never ended: on SQLite, whose connection is
// the one writer, nothing was written again; on PostgreSQL the call ended
// at its timeout, leaking its connection. The call must fail with its
// panic, at once, and the calls after it go on.
func TestAScannerThatPanicsInTheHandlersOwnScanFailsOnlyItsCall(t *testing.T) {
	h := runtime.NewHandler("scanner-user", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('scanned', $1, 'x')`, fmt.Sprint(ev.N)); err != nil {
			return err
		}
		switch ev.N {
		case 1:
			rows, err := tx.QueryContext(ctx, `SELECT 'a' UNION ALL SELECT 'b'`)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				if err := rows.Scan(&brokenScanner{}); err != nil {
					return err
				}
			}
			return rows.Err()
		case 2:
			return tx.QueryRowContext(ctx, `SELECT 'a'`).Scan(&brokenScanner{})
		}
		return tx.Emit(ctx, probed(ev))
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: -1, Timeout: time.Minute}), runtime.Emits(probed{}))
	tr := startRuntime(t, nil, h)
	tr.emit(t, probe{N: 1}, probe{N: 2}, probe{N: 3})
	tr.records(t, "probe.handled", 1)
	dead := tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 2)
	for _, d := range dead {
		var reason string
		for _, hd := range d.Headers {
			if hd.Key == "reason_poisoned" {
				reason = string(hd.Value)
			}
		}
		if !strings.Contains(reason, "a broken sql.Scanner") {
			t.Errorf("dead letter's reason %q, want the Scanner's panic", reason)
		}
	}
	if got := textRows(t, tr, `SELECT event_id FROM eventfn_inbox WHERE handler = 'scanned'`); len(got) != 1 || got[0] != "3" {
		t.Fatalf("committed statements of calls %v, want only call 3's", got)
	}
}

// slowStatements are, per engine, a query that runs for a minute and a
// write that does, for a handler to give up on.
func slowStatements(tr *testRuntime) (query, write string) {
	if tr.db.Driver == store.Postgres {
		return `SELECT pg_sleep(60)::text`, `INSERT INTO ended_rows (n) SELECT 0 FROM pg_sleep(60)`
	}
	count := `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000000) SELECT COUNT(*) FROM c`
	return `SELECT CAST((` + count + `) AS TEXT)`, `INSERT INTO ended_rows (n) ` + count
}

// TestAStatementWhoseContextEndsEndsTheCall: a handler's statement whose
// context ends while it runs (a timeout or a cancellation of the handler's
// own) stops, and ends the call's transaction: on PostgreSQL pgx closes the
// connection, on SQLite an interrupted write rolls the transaction back.
// The call then fails, even if the handler goes on: its retries are used up
// and it is dead-lettered. Before:
//   - in a shared transaction (MaxBatch > 1) a handler's own cancellation
//     was ignored, and the statement ran to the call's deadline;
//   - on PostgreSQL the commit then met a closed connection, or a timeout
//     pgx calls safe to retry, and both looked like a database outage:
//     retried without end, the key held, /readyz failing;
//   - on SQLite the writes after an interrupted write ran outside any
//     transaction and committed alone, once per attempt;
//   - a statement whose context had ended before it began closed the
//     PostgreSQL connection (database/sql's answer to pgx refusing it) and
//     the call waited as an outage; it is refused with nothing sent, and
//     the call goes on.
func TestAStatementWhoseContextEndsEndsTheCall(t *testing.T) {
	type how int
	const (
		cancelQuery how = iota
		timeOutQuery
		timeOutWrite
		readRowsThenCancel
		endedBefore
	)
	cases := []struct {
		name string
		how  how
		// returns says the handler returns the statement's error; else it
		// goes on without the statement's result.
		returns bool
		// commits: the call commits (nothing was sent); else it is
		// dead-lettered after its retries.
		commits bool
	}{
		{"a query it cancels, going on", cancelQuery, false, false},
		{"a query that times out, going on", timeOutQuery, false, false},
		{"a query that times out, returning the error", timeOutQuery, true, false},
		{"a write that times out, then a write on the call's context", timeOutWrite, false, false},
		{"rows it stops reading midway", readRowsThenCancel, false, false},
		{"a statement whose context had ended", endedBefore, false, true},
	}
	for _, c := range cases {
		for _, maxBatch := range []int{1, 4} {
			t.Run(fmt.Sprintf("%s, MaxBatch %d", c.name, maxBatch), func(t *testing.T) {
				var calls atomic.Int32
				var tr *testRuntime
				h := runtime.NewHandler("ender", func(ctx context.Context, tx runtime.Tx, ev probe) error {
					calls.Add(1)
					query, write := slowStatements(tr)
					var err error
					switch c.how {
					case cancelQuery:
						qctx, cancel := context.WithCancel(ctx)
						defer cancel()
						// The handler's own decision to stop waiting.
						stop := time.AfterFunc(100*time.Millisecond, cancel)
						defer stop.Stop()
						var s string
						err = tx.QueryRowContext(qctx, query).Scan(&s)
					case timeOutQuery:
						qctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
						defer cancel()
						var s string
						err = tx.QueryRowContext(qctx, query).Scan(&s)
					case timeOutWrite:
						qctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
						defer cancel()
						if _, err = tx.ExecContext(qctx, write); err != nil {
							// The optional write gave up; the mandatory one goes on.
							_, _ = tx.ExecContext(ctx, `INSERT INTO ended_rows (n) VALUES ($1)`, ev.N)
						}
					case readRowsThenCancel:
						qctx, cancel := context.WithCancel(ctx)
						defer cancel()
						rows, qerr := tx.QueryContext(qctx, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000000) SELECT x FROM c`)
						if qerr != nil {
							return qerr
						}
						rows.Next() // one row is enough
						cancel()
						err = rows.Close()
					case endedBefore:
						qctx, cancel := context.WithCancel(ctx)
						cancel() // its time went on work outside the database
						_, err = tx.ExecContext(qctx, `INSERT INTO ended_rows (n) VALUES (-1)`)
						if err == nil {
							return errors.New("a statement whose context had ended ran")
						}
						err = nil
					}
					if err != nil && c.returns {
						return err
					}
					return tx.Emit(ctx, probed(ev))
				}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
					Timeout: 20 * time.Second, MaxBatch: maxBatch}), runtime.Emits(probed{}))
				tr = startRuntime(t, nil, h)
				if _, err := tr.db.ExecContext(context.Background(), `CREATE TABLE ended_rows (n BIGINT)`); err != nil {
					t.Fatal(err)
				}
				tr.emit(t, probe{N: 1})
				if c.commits {
					tr.records(t, "probe.handled", 1)
					if n := calls.Load(); n != 1 {
						t.Errorf("%d calls, want 1", n)
					}
				} else {
					dead := tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 1)
					// The first call, and its one retry (on PostgreSQL a
					// batched call that fails runs again alone first).
					if n := calls.Load(); n < 2 || n > 3 {
						t.Errorf("%d calls, want the first and one retry", n)
					}
					if reason := chainHeader(dead[0], "reason_poisoned"); !c.returns && !strings.Contains(reason, "ends the transaction") {
						t.Errorf("dead letter's reason %q, want the statement that ended the transaction named", reason)
					}
				}
				if got := textRows(t, tr, `SELECT CAST(n AS TEXT) FROM ended_rows`); len(got) != 0 {
					t.Errorf("rows %v committed by calls that did not commit", got)
				}
				if err := tr.rt.Ready(context.Background()); err != nil {
					t.Errorf("not ready: %v", err)
				}
			})
		}
	}
}
