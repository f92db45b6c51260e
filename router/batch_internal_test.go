package router

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"

	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// openBatchDB opens a migrated database, PostgreSQL when the environment
// names one, SQLite otherwise, with the tables the calls below write.
func openBatchDB(t *testing.T) *store.DB {
	t.Helper()
	cfg := store.Config{Driver: store.SQLite, SQLitePath: filepath.Join(t.TempDir(), "batch.db")}
	if u := testenv.DatabaseURL(); u != "" {
		cfg = store.Config{Driver: store.Postgres, URL: testenv.PostgresSchema(t, u), MaxOpenConns: 8}
	}
	db, err := store.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	for _, q := range []string{
		`CREATE TABLE parents (id TEXT PRIMARY KEY)`,
		`CREATE TABLE written (name TEXT PRIMARY KEY, parent TEXT REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)`,
	} {
		if _, err := db.ExecContext(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	return db
}

// batchCall is what one test call does in its transaction.
type batchCall struct {
	name string
	// parent, when set, is the parent row the written row names; one that
	// does not exist fails the commit (the constraint is deferred).
	parent string
	// fail makes the call fail after its write; sqlFail, after a statement
	// that fails.
	fail, sqlFail bool
	// sqlIgnored makes the call run a statement that fails and return no
	// error all the same.
	sqlIgnored bool
	// attempt is the call's attempt (1 when zero).
	attempt int
	// queued makes the call queue a statement that records it in parents
	// as "q-<name>"; queuedFail, a statement that fails.
	queued, queuedFail bool
	// giveUp makes the call's caller give up (its context cancelled) while
	// a long statement of the call runs.
	giveUp bool
}

// giveUpInsert writes one row after counting to 100,000, and has its
// caller give up as it starts: SQLite calls eventfn_test_give_up (see
// registerGiveUp) before the 100,000 steps, and the cancellation reaches
// the statement while they run (tens of milliseconds; a million steps took
// 22 s under -race, near the calls' 30 s). PostgreSQL has no Go function to
// call: its caller gives up when pgx reads the argument (cancellingValue).
const (
	giveUpInsertSQLite = `INSERT INTO written (name)
		SELECT $1 WHERE (WITH RECURSIVE c(x) AS (SELECT eventfn_test_give_up($1) UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT COUNT(*) FROM c) > 0`
	giveUpInsertPostgres = `INSERT INTO written (name) VALUES ($1)`
)

// givingUp holds, by call name, the cancel functions eventfn_test_give_up
// calls. SQLite functions are the driver's, registered once per process.
var (
	givingUp       sync.Map
	registerGiveUp = sync.OnceValue(func() error {
		return sqlite.RegisterScalarFunction("eventfn_test_give_up", 1, func(_ *sqlite.FunctionContext, args []driver.Value) (driver.Value, error) {
			name, _ := args[0].(string)
			if cancel, ok := givingUp.Load(name); ok {
				cancel.(context.CancelFunc)()
			}
			return int64(1), nil
		})
	})
)

// cancellingValue cancels its call's context when it is read.
type cancellingValue struct {
	value  string
	cancel context.CancelFunc
}

func (v cancellingValue) Value() (driver.Value, error) {
	v.cancel()
	return v.value, nil
}

// queueCalls submits calls to m one after another, each in a goroutine of
// its own, the next once the one before is queued; the first blocks in its
// handler until all are queued, so the rest wait in one queue. It returns
// each call's outcome and how often each call's function ran.
func queueCalls(t *testing.T, m *committer, calls []batchCall) ([]callResult, []int32) {
	t.Helper()
	release := make(chan struct{})
	results := make([]callResult, len(calls))
	runs := make([]int32, len(calls))
	var wg sync.WaitGroup
	queued := 0
	for i, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			meta := runtime.Metadata{ID: c.name, Source: "test", Type: "test.called", Attempt: max(c.attempt, 1)}
			claimed, err := m.run(ctx, &inboxClaim{handler: "batch", meta: meta}, func(ctx context.Context, tx sqlExecutor) (toCommit, error) {
				atomic.AddInt32(&runs[i], 1)
				if i == 0 {
					<-release
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO written (name, parent) VALUES ($1, $2)`, c.name, sql.NullString{String: c.parent, Valid: c.parent != ""}); err != nil {
					return toCommit{}, err
				}
				if c.giveUp {
					slow := c.name + "-slow"
					query, arg := giveUpInsertSQLite, any(slow)
					if m.db.Driver == store.Postgres {
						query, arg = giveUpInsertPostgres, cancellingValue{value: slow, cancel: cancel}
					}
					givingUp.Store(slow, cancel)
					if _, err := tx.ExecContext(ctx, query, arg); err != nil {
						return toCommit{}, err
					}
				}
				if c.sqlFail {
					if _, err := tx.ExecContext(ctx, `INSERT INTO no_such_table (x) VALUES (1)`); err != nil {
						return toCommit{}, err
					}
				}
				if c.sqlIgnored {
					_, _ = tx.ExecContext(ctx, `INSERT INTO no_such_table (x) VALUES (1)`)
				}
				if c.fail {
					return toCommit{}, errors.New("refused " + c.name)
				}
				work := toCommit{rows: []relay.Record{{Topic: "t", Key: []byte(c.name), Headers: map[string]string{HeaderType: "test.done"}, Payload: []byte(c.name)}}}
				if c.queued {
					work.stmts = append(work.stmts, runtime.Statement{Query: `INSERT INTO parents (id) VALUES ($1)`, Args: []any{"q-" + c.name}})
				}
				if c.queuedFail {
					work.stmts = append(work.stmts, runtime.Statement{Query: `INSERT INTO no_such_table (x) VALUES ($1)`, Args: []any{c.name}})
				}
				return work, nil
			})
			results[i] = callResult{claimed: claimed, err: err}
		}()
		if i == 0 {
			// The first call is in its handler, holding its transaction.
			waitFor(t, func() bool { return atomic.LoadInt32(&runs[0]) == 1 })
			continue
		}
		if c.attempt > 1 && m.retriesAlone {
			// A retry runs alone, at once.
			waitFor(t, func() bool { return atomic.LoadInt32(&runs[i]) == 1 })
			continue
		}
		queued++
		waitFor(t, func() bool {
			m.mu.Lock()
			defer m.mu.Unlock()
			return len(m.queue) == queued
		})
	}
	close(release)
	wg.Wait()
	return results, runs
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20 s")
		}
		time.Sleep(time.Millisecond)
	}
}

func column(t *testing.T, db *store.DB, query string) []string {
	t.Helper()
	return testenv.Column[string](context.Background(), t, db.Read, query)
}

// serialCommitter runs one batch at a time and never starts another for a
// waiting call, so the calls queued behind the first share its batch.
func serialCommitter(db *store.DB, observe func(float64)) *committer {
	m := newCommitter(db, 16, 1, observe)
	m.budget, m.wait = time.Hour, time.Hour
	return m
}

// TestQueuedCallsShareATransactionEachWithItsOwnOutcome: calls that queue
// behind a running one commit together, in one transaction; a call that
// fails, with its own error or a failed statement, fails alone; an event
// the inbox has is acknowledged without running. On SQLite each call has a
// savepoint, and one that fails is rolled back to it; on PostgreSQL calls
// share the transaction bare, so one that fails takes it down, and the
// calls before it run again alone (see newCommitter).
func TestQueuedCallsShareATransactionEachWithItsOwnOutcome(t *testing.T) {
	db := openBatchDB(t)
	if _, err := db.ExecContext(context.Background(), `INSERT INTO eventfn_inbox (handler, source, event_id, event_type) VALUES ('batch', 'test', 'seen', 'test.called')`); err != nil {
		t.Fatal(err)
	}
	var sizes []float64
	m := serialCommitter(db, func(n float64) { sizes = append(sizes, n) })
	calls := []batchCall{{name: "a"}, {name: "b"}, {name: "c", fail: true}, {name: "d", sqlFail: true}, {name: "e"}, {name: "seen"}, {name: "f"}}
	results, runs := queueCalls(t, m, calls)
	bare := db.Driver == store.Postgres // no savepoint per call
	// a, b, e and f commit in one transaction; without savepoints c breaks
	// the batch of a and b, which run again alone, and d its own.
	wantSizes := "[4]"
	if bare {
		wantSizes = "[2]"
	}
	for i, c := range calls {
		r := results[i]
		want := int32(1)
		if bare && (c.name == "a" || c.name == "b") {
			want = 2
		}
		switch {
		case c.name == "seen":
			if r.claimed || r.err != nil || runs[i] != 0 {
				t.Errorf("%s: claimed %v, err %v, ran %d times; want a duplicate that did not run", c.name, r.claimed, r.err, runs[i])
			}
		case c.fail || c.sqlFail:
			if r.err == nil {
				t.Errorf("%s: no error", c.name)
			}
		default:
			if !r.claimed || r.err != nil || runs[i] != want {
				t.Errorf("%s: claimed %v, err %v, ran %d times; want committed, having run %d times", c.name, r.claimed, r.err, runs[i], want)
			}
		}
	}
	if got := strings.Join(column(t, db, `SELECT name FROM written ORDER BY name`), ","); got != "a,b,e,f" {
		t.Errorf("rows committed: %s, want a,b,e,f", got)
	}
	if got := strings.Join(column(t, db, `SELECT event_id FROM eventfn_inbox WHERE handler = 'batch' ORDER BY event_id`), ","); got != "a,b,e,f,seen" {
		t.Errorf("inbox: %s, want a,b,e,f,seen", got)
	}
	// In order where they committed together; a and b, sent back alone on
	// PostgreSQL, commit side by side.
	outbox := column(t, db, `SELECT key FROM eventfn_outbox ORDER BY id`)
	if !bare && strings.Join(outbox, ",") != "a,b,e,f" {
		t.Errorf("outbox, in order: %v, want a,b,e,f", outbox)
	}
	if bare && slices.Index(outbox, "e") > slices.Index(outbox, "f") {
		t.Errorf("outbox, in order: %v; e and f committed together, in order", outbox)
	}
	if got := strings.Join(column(t, db, `SELECT key FROM eventfn_outbox ORDER BY key`), ","); got != "a,b,e,f" {
		t.Errorf("outbox: %s, want a,b,e,f", got)
	}
	if fmt.Sprint(sizes) != wantSizes {
		t.Errorf("calls per committed transaction: %v, want %s", sizes, wantSizes)
	}
}

// TestACallWhoseCallerGivesUpMidStatementFailsAlone: a caller that gives up
// (a client gone) while its call's statement runs in a shared transaction
// hears context.Canceled and stores nothing, and the calls beside it
// commit, once each. On SQLite the cancellation interrupted the statement,
// which rolled the whole transaction back, and every other call of the
// batch ran again alone (more work just when clients time out under
// overload). On PostgreSQL, whose batches share transactions without
// savepoints, a call that fails sends the calls before it back alone.
func TestACallWhoseCallerGivesUpMidStatementFailsAlone(t *testing.T) {
	if err := registerGiveUp(); err != nil {
		t.Fatal(err)
	}
	db := openBatchDB(t)
	var sizes []float64
	var mu sync.Mutex
	m := serialCommitter(db, func(n float64) { mu.Lock(); sizes = append(sizes, n); mu.Unlock() })
	calls := []batchCall{{name: "a"}, {name: "b"}, {name: "gone", giveUp: true}, {name: "c"}, {name: "d"}}
	results, runs := queueCalls(t, m, calls)
	bare := db.Driver == store.Postgres
	for i, c := range calls {
		r := results[i]
		if c.giveUp {
			if !errors.Is(r.err, context.Canceled) {
				t.Errorf("%s: %v, want context.Canceled", c.name, r.err)
			}
			continue
		}
		want := int32(1)
		if bare && (c.name == "a" || c.name == "b") {
			want = 2
		}
		if !r.claimed || r.err != nil || runs[i] != want {
			t.Errorf("%s: claimed %v, err %v, ran %d times; want committed, having run %d times", c.name, r.claimed, r.err, runs[i], want)
		}
	}
	if got := strings.Join(column(t, db, `SELECT name FROM written ORDER BY name`), ","); got != "a,b,c,d" {
		t.Errorf("rows committed: %s, want a,b,c,d", got)
	}
	if got := strings.Join(column(t, db, `SELECT event_id FROM eventfn_inbox WHERE handler = 'batch' ORDER BY event_id`), ","); got != "a,b,c,d" {
		t.Errorf("inbox: %s, want a,b,c,d", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if !bare && fmt.Sprint(sizes) != "[4]" {
		t.Errorf("calls per committed transaction: %v, want [4]: one transaction", sizes)
	}
}

// TestWithoutSavepointsARetryRunsAloneAndAnIgnoredFailureIsTheCallers: on
// PostgreSQL, where a batch's calls share its transaction bare, a call
// whose handler ignored a failed statement (which aborted the
// transaction) fails with that, not the call after it; and a retry never
// joins a batch, where failing again it would send the others back alone.
// On SQLite the ignored failure aborts nothing, and the call commits.
func TestWithoutSavepointsARetryRunsAloneAndAnIgnoredFailureIsTheCallers(t *testing.T) {
	db := openBatchDB(t)
	var sizes []float64
	var mu sync.Mutex
	m := serialCommitter(db, func(n float64) { mu.Lock(); sizes = append(sizes, n); mu.Unlock() })
	calls := []batchCall{{name: "first"}, {name: "ignores", sqlIgnored: true}, {name: "a"}, {name: "retry", attempt: 2}, {name: "b"}}
	results, runs := queueCalls(t, m, calls)
	bare := db.Driver == store.Postgres // no savepoint per call
	for i, c := range calls {
		r := results[i]
		if c.name == "ignores" && bare {
			if r.err == nil || !strings.Contains(r.err.Error(), "aborted the transaction") {
				t.Errorf("ignores: %v; want the failure it ignored", r.err)
			}
			continue
		}
		if !r.claimed || r.err != nil {
			t.Errorf("%s: claimed %v, err %v; want committed", c.name, r.claimed, r.err)
		}
	}
	want := "a,b,first,ignores,retry"
	if bare {
		want = "a,b,first,retry"
		// "retry" ran alone while "first" held its batch.
		if runs[3] != 1 {
			t.Errorf("the retry ran %d times, want once, alone", runs[3])
		}
		// "ignores" fails at "a"'s start, which sends "first" and "a" back
		// alone; "b" then has a batch of its own.
		mu.Lock()
		got := fmt.Sprint(sizes)
		mu.Unlock()
		if got != "[1]" {
			t.Errorf("calls per committed transaction: %v, want [1]", got)
		}
	}
	if got := strings.Join(column(t, db, `SELECT name FROM written ORDER BY name`), ","); got != want {
		t.Errorf("rows committed: %s, want %s", got, want)
	}
}

// TestACommitThatFailsSendsEveryCallBackAlone: one call breaks a deferred
// constraint, so the shared commit fails; every call of the batch then runs
// again in a transaction of its own, and only that call fails.
func TestACommitThatFailsSendsEveryCallBackAlone(t *testing.T) {
	db := openBatchDB(t)
	if _, err := db.ExecContext(context.Background(), `INSERT INTO parents (id) VALUES ('p')`); err != nil {
		t.Fatal(err)
	}
	m := serialCommitter(db, nil)
	calls := []batchCall{{name: "first"}, {name: "a", parent: "p"}, {name: "orphan", parent: "missing"}, {name: "b", parent: "p"}}
	results, runs := queueCalls(t, m, calls)
	for i, c := range calls {
		r := results[i]
		if c.name == "orphan" {
			if r.err == nil {
				t.Errorf("orphan: committed in spite of its constraint")
			}
			continue
		}
		if !r.claimed || r.err != nil {
			t.Errorf("%s: claimed %v, err %v; want committed", c.name, r.claimed, r.err)
		}
	}
	// Each ran once in the batch, then once alone.
	for i, want := range []int32{2, 2, 2, 2} {
		if runs[i] != want {
			t.Errorf("%s ran %d times, want %d", calls[i].name, runs[i], want)
		}
	}
	if got := strings.Join(column(t, db, `SELECT name FROM written ORDER BY name`), ","); got != "a,b,first" {
		t.Errorf("rows committed: %s, want a,b,first", got)
	}
	if got := strings.Join(column(t, db, `SELECT event_id FROM eventfn_inbox WHERE handler = 'batch' ORDER BY event_id`), ","); got != "a,b,first" {
		t.Errorf("inbox: %s, want a,b,first", got)
	}
}

// TestAQueuedStatementThatFailsInABatchFailsOnlyItsCall: a call's queued
// statements may run after its handler returned (on PostgreSQL, with the
// next call's start or with the commit); one that fails there fails its
// call with its own error, in the middle of a batch and at its end, and
// every other call commits once, its queued statement with it.
func TestAQueuedStatementThatFailsInABatchFailsOnlyItsCall(t *testing.T) {
	db := openBatchDB(t)
	m := serialCommitter(db, nil)
	calls := []batchCall{{name: "first", queued: true}, {name: "a", queued: true}, {name: "bad", queuedFail: true}, {name: "b", queued: true}, {name: "last", queued: true, queuedFail: true}}
	results, _ := queueCalls(t, m, calls)
	for i, c := range calls {
		r := results[i]
		if c.queuedFail {
			if r.err == nil || isInfra(r.err) || !strings.Contains(r.err.Error(), "queued statement") || !strings.Contains(r.err.Error(), "no_such_table") {
				t.Errorf("%s: %v; want its own queued statement's error, not the database's trouble", c.name, r.err)
			}
			continue
		}
		if !r.claimed || r.err != nil {
			t.Errorf("%s: claimed %v, err %v; want committed", c.name, r.claimed, r.err)
		}
	}
	if got := strings.Join(column(t, db, `SELECT name FROM written ORDER BY name`), ","); got != "a,b,first" {
		t.Errorf("rows committed: %s, want a,b,first", got)
	}
	if got := strings.Join(column(t, db, `SELECT id FROM parents ORDER BY id`), ","); got != "q-a,q-b,q-first" {
		t.Errorf("queued statements committed: %s, want q-a,q-b,q-first", got)
	}
	if got := strings.Join(column(t, db, `SELECT event_id FROM eventfn_inbox WHERE handler = 'batch' ORDER BY event_id`), ","); got != "a,b,first" {
		t.Errorf("inbox: %s, want a,b,first", got)
	}
	if got := strings.Join(column(t, db, `SELECT key FROM eventfn_outbox ORDER BY key`), ","); got != "a,b,first" {
		t.Errorf("outbox: %s, want a,b,first", got)
	}
}

// TestACallPastItsTimeoutCannotWriteIntoTheNextCalls: a handler that
// ignores its context and writes after its call returned must not get the
// write into the shared transaction, which goes on with the next calls.
func TestACallPastItsTimeoutCannotWriteIntoTheNextCalls(t *testing.T) {
	db := openBatchDB(t)
	m := serialCommitter(db, nil)
	late := make(chan error, 1)
	proceed := make(chan struct{})
	var wg sync.WaitGroup
	run := func(name string, timeout time.Duration, fn func(ctx context.Context, tx sqlExecutor) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			_, _ = m.run(ctx, &inboxClaim{handler: "batch", meta: runtime.Metadata{ID: name, Source: "test", Type: "t"}},
				func(ctx context.Context, tx sqlExecutor) (toCommit, error) { return toCommit{}, fn(ctx, tx) })
		}()
	}
	started := make(chan struct{})
	run("overstayer", 300*time.Millisecond, func(ctx context.Context, tx sqlExecutor) error {
		return callBounded(ctx, slog.New(slog.DiscardHandler), "overstayer", func() error {
			close(started)
			<-ctx.Done()
			<-proceed
			_, err := tx.ExecContext(context.Background(), `INSERT INTO written (name) VALUES ('late')`)
			late <- err
			return err
		})
	})
	<-started
	var lateErr error
	run("next", 30*time.Second, func(ctx context.Context, tx sqlExecutor) error {
		// The overstayer's call ended; its late statement is sent while
		// this call runs in the same transaction.
		close(proceed)
		lateErr = <-late
		_, err := tx.ExecContext(ctx, `INSERT INTO written (name) VALUES ('next')`)
		return err
	})
	wg.Wait()
	if !errors.Is(lateErr, sql.ErrTxDone) {
		t.Fatalf("the late statement: %v, want sql.ErrTxDone", lateErr)
	}
	if got := strings.Join(column(t, db, `SELECT name FROM written ORDER BY name`), ","); got != "next" {
		t.Errorf("rows committed: %s, want next", got)
	}
}

// TestASlowCallDoesNotHoldUpTheCallsQueuedBehindIt: a call that no running
// batch takes within the wait starts a batch of its own, so one slow call
// (a payment gateway taking its time) does not serialise the others. On
// SQLite every transaction waits for the one writer, batched or not.
func TestASlowCallDoesNotHoldUpTheCallsQueuedBehindIt(t *testing.T) {
	db := openBatchDB(t)
	if db.Driver == store.SQLite {
		t.Skip("SQLite has one writer: a transaction that is slow holds up every other, with or without batches")
	}
	m := newCommitter(db, 16, 4, nil)
	release := make(chan struct{})
	slow := make(chan error, 1)
	go func() {
		_, err := m.run(context.Background(), &inboxClaim{handler: "batch", meta: runtime.Metadata{ID: "slow", Source: "test", Type: "t"}},
			func(ctx context.Context, tx sqlExecutor) (toCommit, error) {
				<-release
				return toCommit{}, nil
			})
		slow <- err
	}()
	waitFor(t, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.running == 1 && len(m.queue) == 0
	})
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		claimed, err := m.run(ctx, &inboxClaim{handler: "batch", meta: runtime.Metadata{ID: fmt.Sprint("quick-", i), Source: "test", Type: "t"}},
			func(ctx context.Context, tx sqlExecutor) (toCommit, error) { return toCommit{}, nil })
		cancel()
		if err != nil || !claimed {
			t.Fatalf("quick call %d behind a slow one: claimed %v, err %v", i, claimed, err)
		}
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
}

// TestTheDatabaseDecidesMaxBatchUnlessThePolicyDoes: calls share
// transactions on SQLite and not on PostgreSQL, unless the policy says.
func TestTheDatabaseDecidesMaxBatchUnlessThePolicyDoes(t *testing.T) {
	for _, tc := range []struct {
		policy int
		driver store.Driver
		want   int
	}{
		{0, store.SQLite, 16},
		{0, store.Postgres, 1},
		{4, store.Postgres, 4},
		{1, store.SQLite, 1},
	} {
		if got := maxBatch(runtime.Policy{MaxBatch: tc.policy}, tc.driver); got != tc.want {
			t.Errorf("MaxBatch %d on %s: %d, want %d", tc.policy, tc.driver, got, tc.want)
		}
	}
}

// TestAQueuedCallWhoseContextEndsReturns: a call still waiting for a batch
// when its context ends (its timeout, shutdown) returns at once, as an
// infrastructure wait, and is never run.
func TestAQueuedCallWhoseContextEndsReturns(t *testing.T) {
	db := openBatchDB(t)
	m := serialCommitter(db, nil)
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		_, err := m.run(context.Background(), &inboxClaim{handler: "batch", meta: runtime.Metadata{ID: "first", Source: "test", Type: "t"}},
			func(ctx context.Context, tx sqlExecutor) (toCommit, error) {
				<-release
				return toCommit{}, nil
			})
		first <- err
	}()
	waitFor(t, func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.running == 1 && m.opening == 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	ran := false
	_, err := m.run(ctx, &inboxClaim{handler: "batch", meta: runtime.Metadata{ID: "late", Source: "test", Type: "t"}},
		func(ctx context.Context, tx sqlExecutor) (toCommit, error) {
			ran = true
			return toCommit{}, nil
		})
	if !isInfra(err) || !errors.Is(err, context.DeadlineExceeded) || ran {
		t.Fatalf("queued call past its deadline: err %v (infrastructure %v), ran %v", err, isInfra(err), ran)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if got := column(t, db, `SELECT event_id FROM eventfn_inbox WHERE handler = 'batch' ORDER BY event_id`); fmt.Sprint(got) != "[first]" {
		t.Fatalf("inbox: %v, want [first]", got)
	}
}

// TestQueuedStatementsNeverRunInAutocommit: SQLite rolls a whole
// transaction back by itself on some failures (here ON CONFLICT ROLLBACK)
// and goes on in autocommit. A call whose handler ignored such a failure
// must not have its queued statements commit on their own, in a
// transaction of its own or in a shared one (where, found by a review,
// they did, once per retry); a good call after it commits them. SQLite
// only, whatever the engines of the run: PostgreSQL keeps a failed
// transaction, aborted, until it is rolled back.
func TestQueuedStatementsNeverRunInAutocommit(t *testing.T) {
	for _, maxBatch := range []int{1, 4} {
		t.Run(fmt.Sprintf("max_batch=%d", maxBatch), func(t *testing.T) {
			ctx := context.Background()
			db, err := store.Open(ctx, store.Config{Driver: store.SQLite, SQLitePath: filepath.Join(t.TempDir(), "queued.db")})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			for _, q := range []string{
				`CREATE TABLE taken (id INTEGER PRIMARY KEY ON CONFLICT ROLLBACK)`,
				`INSERT INTO taken (id) VALUES (1)`,
				`CREATE TABLE effects (event TEXT NOT NULL)`,
			} {
				if _, err := db.ExecContext(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			m := newCommitter(db, maxBatch, 1, nil)
			call := func(event string, id int) error {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				_, err := m.run(cctx, &inboxClaim{handler: "h", meta: runtime.Metadata{ID: event, Source: "s", Type: "t"}},
					func(ctx context.Context, tx sqlExecutor) (toCommit, error) {
						h := &txHandle{sqlExecutor: tx}
						_, _ = h.ExecContext(ctx, `INSERT INTO taken (id) VALUES ($1)`, id) // an error ignored
						if err := h.Queue(ctx, runtime.Statement{Query: `INSERT INTO effects (event) VALUES ($1)`, Args: []any{event}}); err != nil {
							return toCommit{}, err
						}
						return h.done()
					})
				return err
			}
			effects := func(event string) int {
				var n int
				if err := db.Read.QueryRowContext(ctx, `SELECT COUNT(*) FROM effects WHERE event = $1`, event).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			for attempt := 1; attempt <= 3; attempt++ {
				if err := call("bad", 1); err == nil {
					t.Fatalf("attempt %d: a call whose transaction SQLite rolled back succeeded", attempt)
				}
			}
			if n := effects("bad"); n != 0 {
				t.Fatalf("every call failed, yet %d of their queued statements committed", n)
			}
			if err := call("good", 2); err != nil {
				t.Fatal(err)
			}
			if n := effects("good"); n != 1 {
				t.Fatalf("a good call committed %d queued statements, want 1", n)
			}
		})
	}
}

// TestAQueuedStatementPastItsCallsDeadline: in a shared transaction a
// call's queued statements run after the handler returned, but within the
// call's time, not without end; the call fails with a retryable error (not
// an infrastructure one, which would wait without end), and the calls after
// it find clean connections.
func TestAQueuedStatementPastItsCallsDeadline(t *testing.T) {
	if testenv.DatabaseURL() == "" {
		t.Skip("needs pg_sleep: SQLite has no statement that waits without using a core")
	}
	db := openBatchDB(t)
	m := newCommitter(db, 4, 2, nil)
	call := func(event string, timeout time.Duration, stmt string) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err := m.run(ctx, &inboxClaim{handler: "h", meta: runtime.Metadata{ID: event, Source: "s", Type: "t"}},
			func(ctx context.Context, tx sqlExecutor) (toCommit, error) {
				h := &txHandle{sqlExecutor: tx}
				if err := h.Queue(ctx, runtime.Statement{Query: stmt}); err != nil {
					return toCommit{}, err
				}
				return h.done()
			})
		return err
	}
	start := time.Now()
	err := call("slow", 300*time.Millisecond, `SELECT pg_sleep(10)`)
	if err == nil || isInfra(err) || !strings.Contains(err.Error(), "queued statement 1 of 1") {
		t.Fatalf("got %v; want a retryable error of the queued statement", err)
	}
	if waited := time.Since(start); waited > 8*time.Second {
		t.Fatalf("the call returned after %v: its queued statement ran past its deadline", waited)
	}
	for i := range 10 {
		if err := call(fmt.Sprint("after-", i), 10*time.Second, `SELECT 1`); err != nil {
			t.Fatalf("call %d after it: %v", i, err)
		}
	}
}

// TestQueuedErrorClasses: a queued statement that fails because the
// database is gone waits for it like any infrastructure failure; one that
// ran out of its call's time, or that the database refused, is the call's
// and uses up a retry.
func TestQueuedErrorClasses(t *testing.T) {
	stmts := []runtime.Statement{{Query: "UPDATE orders\n   SET status = 'paid' WHERE id = $1"}}
	for _, c := range []struct {
		name  string
		err   error
		infra bool
	}{
		{"connection lost", driver.ErrBadConn, true},
		{"deadline", context.DeadlineExceeded, false},
		{"connect", &pgconn.ConnectError{}, true},
		{"refused", &pgconn.PgError{Code: "23505", Message: "duplicate key"}, false},
		{"admin shutdown", &pgconn.PgError{Code: "57P01"}, true},
	} {
		err := queuedError(0, stmts, c.err)
		if isInfra(err) != c.infra {
			t.Errorf("%s: infrastructure %v, want %v (%v)", c.name, isInfra(err), c.infra, err)
		}
		if !errors.Is(err, c.err) || !strings.Contains(err.Error(), "queued statement 1 of 1 (UPDATE orders SET status = 'paid' WHERE id = $1)") {
			t.Errorf("%s: %v does not say which statement failed, or lost its cause", c.name, err)
		}
	}
}

// TestACallOfManyStatementsKeepsNoContextPerStatement: statements given the
// call's context share one statement context, and one the handler derived
// is made once for all the statements it is given; those of contexts that
// are done are forgotten. Each query kept a context and a timer until the
// call's end: 600 bytes a statement, 60 MB for a call of 100,000 lookups.
func TestACallOfManyStatementsKeepsNoContextPerStatement(t *testing.T) {
	db := openBatchDB(t)
	call, cancelCall := context.WithTimeout(context.Background(), time.Minute)
	defer cancelCall()
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	g := newGuardedTx(tx, db.Read, call)
	var x int
	for i := range 1000 {
		if err := g.QueryRowContext(call, `SELECT CAST($1 AS INTEGER)`, i).Scan(&x); err != nil {
			t.Fatal(err)
		}
	}
	lookup, cancelLookup := context.WithTimeout(call, time.Minute)
	defer cancelLookup()
	for i := range 1000 {
		if err := g.QueryRowContext(lookup, `SELECT CAST($1 AS INTEGER)`, i).Scan(&x); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 1000 { // a timeout of its own for each statement
		each, cancel := context.WithTimeout(call, time.Minute)
		if _, err := g.ExecContext(each, `SELECT CAST($1 AS INTEGER)`, i); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	g.derivedMu.Lock()
	kept := len(g.derived)
	g.derivedMu.Unlock()
	if kept > 128 {
		t.Fatalf("%d statement contexts kept after 3,000 statements under 1,002 contexts", kept)
	}
	if !g.end() {
		t.Fatal("no statement runs, yet the call could not end")
	}
	if g.base.Err() == nil {
		t.Fatal("the call's statement context outlived the call")
	}
}
