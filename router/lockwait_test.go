package router_test

import (
	"context"
	"database/sql"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/runtime"
)

// TestALockHeldElsewhereDeadLettersNoGoodEvent: a long transaction
// elsewhere (an operator's session, a batch job) holds a lock the handler's
// statement needs, for longer than the handler's whole retry budget. The
// event is not at fault: it must wait for the lock, holding only its key,
// and be handled once the lock is released, never dead-lettered. On
// PostgreSQL the lock is a row's; on SQLite the one write lock.
//
// A queued statement (tx.Queue) that met the lock failed the replica's
// readiness: lock_not_available was the database away there. A statement
// late in its call (after 1 s of a 1.5 s call, a slow dependency before
// it) met the lock with less time left than the lock timeout set at BEGIN
// (750 ms), ran into the call's deadline and used a retry; now it lowers
// the lock timeout to 250 ms first.
func TestALockHeldElsewhereDeadLettersNoGoodEvent(t *testing.T) {
	update := func(ctx context.Context, tx runtime.Tx, ev chargeLike) error {
		_, err := tx.ExecContext(ctx, `UPDATE lock_probe SET n = n + 1 WHERE id = $1`, ev.ID)
		return err
	}
	queue := func(ctx context.Context, tx runtime.Tx, ev chargeLike) error {
		return tx.Queue(ctx, runtime.Statement{Query: `UPDATE lock_probe SET n = n + 1 WHERE id = $1`, Args: []any{ev.ID}})
	}
	// after is fn after a slow step of d (a slow dependency's call).
	after := func(d time.Duration, fn func(context.Context, runtime.Tx, chargeLike) error) func(context.Context, runtime.Tx, chargeLike) error {
		return func(ctx context.Context, tx runtime.Tx, ev chargeLike) error {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ctx.Err()
			}
			return fn(ctx, tx, ev)
		}
	}
	const quick, slow = 300 * time.Millisecond, 1500 * time.Millisecond
	// MaxBatch 16: the first attempt runs in a shared transaction.
	for _, tc := range []struct {
		name     string
		fn       func(context.Context, runtime.Tx, chargeLike) error
		maxBatch int
		timeout  time.Duration
	}{
		{"statement, alone", update, 1, quick},
		{"statement, in a batch", update, 16, quick},
		{"queued, alone", queue, 1, quick},
		{"queued, in a batch", queue, 16, quick},
		{"statement late in the call, alone", after(time.Second, update), 1, slow},
		{"statement late in the call, in a batch", after(time.Second, update), 16, slow},
		{"queued late in the call, alone", after(time.Second, queue), 1, slow},
		{"queued late in the call, in a batch", after(time.Second, queue), 16, slow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := runtime.NewHandler("lock-probe", tc.fn,
				runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: tc.timeout, MaxBatch: tc.maxBatch}))
			tr := startRuntime(t, nil, h)
			ctx := context.Background()
			holder := lockRowElsewhere(t, tr, "lock_probe")
			postgres := strings.HasPrefix(tr.cfg.Database.URL, "postgres")

			produceEvent(t, tr, chargeLike{ID: "locked"})
			// Far past the event's two tries.
			deadline := time.Now().Add(max(3*time.Second, 5*tc.timeout))
			var unready error
			for time.Now().Before(deadline) && tr.metric(t, "eventfn_dead_lettered_total", "handler", "lock-probe") == 0 {
				if err := tr.rt.Ready(ctx); err != nil && unready == nil {
					unready = err
				}
				time.Sleep(20 * time.Millisecond) // polling interval
			}
			if n := tr.metric(t, "eventfn_dead_lettered_total", "handler", "lock-probe"); n != 0 {
				t.Fatalf("the event was dead-lettered while a lock elsewhere held it\n%s", tr.logs.String())
			}
			if postgres {
				// The database answers: a lock held elsewhere makes no replica
				// unready. (SQLite's write lock held elsewhere is the database
				// unavailable to every writer, and readiness says so.)
				if unready != nil {
					t.Errorf("not ready while a lock elsewhere held one event: %v", unready)
				}
				if n := tr.metric(t, "eventfn_handler_attempts_total", "handler", "lock-probe", "result", "unavailable"); n == 0 {
					t.Errorf("no attempt counted as waiting for the lock\n%s", tr.logs.String())
				}
			}
			if err := holder.Rollback(); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "the event handled after the lock was released", 30*time.Second, func() bool {
				var n int
				return tr.db.Read.QueryRowContext(ctx, `SELECT n FROM lock_probe WHERE id = 'locked'`).Scan(&n) == nil && n == 1
			})
		})
	}
}

// TestADeadlockBetweenTwoCallsKeepsReadiness: two calls of one handler take
// two rows in opposite order, and PostgreSQL ends the deadlock by failing
// one (40P01; the handler's 4 s timeout puts its lock timeout, 2 s, past
// deadlock_timeout, 1 s). That was the database away: the replica went
// unready while the victim waited. It is tried again like a lock held
// elsewhere, and both events are handled. SQLite has one writer: two of its
// transactions cannot deadlock.
func TestADeadlockBetweenTwoCallsKeepsReadiness(t *testing.T) {
	if testenv.DatabaseURL() == "" {
		t.Skip("SQLite has one writer, so two transactions cannot deadlock: PostgreSQL only")
	}
	firstLocks := make(chan string, 2)
	both := make(chan struct{})
	h := runtime.NewHandler("lock-dead", func(ctx context.Context, tx runtime.Tx, ev chargeLike) error {
		a, b := "a", "b"
		if ev.ID == "ba" {
			a, b = b, a
		}
		if _, err := tx.ExecContext(ctx, `UPDATE lock_dead SET n = n + 1 WHERE id = $1`, a); err != nil {
			return err
		}
		select {
		case firstLocks <- ev.ID: // the first attempt of each waits for the other's first lock
			select {
			case <-both:
			case <-ctx.Done():
				return ctx.Err()
			}
		default:
		}
		_, err := tx.ExecContext(ctx, `UPDATE lock_dead SET n = n + 1 WHERE id = $1`, b)
		return err
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 3, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: 4 * time.Second, MaxBatch: 1}))
	tr := startRuntime(t, nil, h)
	ctx := context.Background()
	if _, err := tr.db.ExecContext(ctx, `CREATE TABLE lock_dead (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.db.ExecContext(ctx, `INSERT INTO lock_dead (id, n) VALUES ('a', 0), ('b', 0)`); err != nil {
		t.Fatal(err)
	}
	produceEvent(t, tr, chargeLike{ID: "ab"})
	produceEvent(t, tr, chargeLike{ID: "ba"})
	waitUntil(t, "both calls holding their first lock", 30*time.Second, func() bool { return len(firstLocks) == 2 })
	close(both)
	var unready error
	waitUntil(t, "both events handled", 30*time.Second, func() bool {
		if err := tr.rt.Ready(ctx); err != nil && unready == nil {
			unready = err
		}
		var n int
		return tr.db.Read.QueryRowContext(ctx, `SELECT sum(n) FROM lock_dead`).Scan(&n) == nil && n == 4
	})
	if unready != nil {
		t.Errorf("a deadlock between two events made the replica unready: %v", unready)
	}
	// The victim's call: tried again as a conflict, not the database away.
	if n := tr.metric(t, "eventfn_handler_attempts_total", "handler", "lock-dead", "result", "infrastructure"); n != 0 {
		t.Errorf("%v calls counted as the database away", n)
	}
	if n := tr.metric(t, "eventfn_handler_attempts_total", "handler", "lock-dead", "result", "unavailable"); n == 0 {
		t.Errorf("no call counted as a conflict with another session\n%s", tr.logs.String())
	}
	if n := tr.metric(t, "eventfn_dead_lettered_total", "handler", "lock-dead"); n != 0 {
		t.Errorf("%v dead letters from a deadlock", n)
	}
}

// TestAShortStatementContextDoesNotCutLaterLockWaits: a handler bounds one
// quick statement with a short context of its own (200 ms, a common Go
// idiom), then updates a row another session holds for 500 ms, with the
// call's context (2 s: a lock timeout of 1 s). The wait fits, so the first
// attempt must succeed. The lock timeout fitted to the short statement
// (100 ms) stayed for the rest of the transaction, and the update failed
// as a conflict, attempt after attempt (found by a fresh-eyed attack: 5
// attempts, 4 conflicts); it is fitted up again for the update.
func TestAShortStatementContextDoesNotCutLaterLockWaits(t *testing.T) {
	if testenv.DatabaseURL() == "" {
		t.Skip("SQLite takes its one write lock with BEGIN: no lock wait happens within a call; PostgreSQL only")
	}
	var attempts atomic.Int32
	reached := make(chan struct{}, 16)
	h := runtime.NewHandler("lock-ctx", func(ctx context.Context, tx runtime.Tx, ev chargeLike) error {
		attempts.Add(1)
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		var one int
		err := tx.QueryRowContext(short, `SELECT 1`).Scan(&one)
		cancel()
		if err != nil {
			return err
		}
		select {
		case reached <- struct{}{}:
		default:
		}
		_, err = tx.ExecContext(ctx, `UPDATE lock_ctx SET n = n + 1 WHERE id = $1`, ev.ID)
		return err
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 3, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: 2 * time.Second, MaxBatch: 1}))
	tr := startRuntime(t, nil, h)
	ctx := context.Background()
	holder := lockRowElsewhere(t, tr, "lock_ctx")
	produceEvent(t, tr, chargeLike{ID: "locked"})
	select {
	case <-reached:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler never reached the update")
	}
	held := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(held) {
		time.Sleep(10 * time.Millisecond) // the other session's short transaction: its length is the scenario
	}
	if err := holder.Rollback(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the event handled", 30*time.Second, func() bool {
		var n int
		return tr.db.Read.QueryRowContext(ctx, `SELECT n FROM lock_ctx WHERE id = 'locked'`).Scan(&n) == nil && n == 1
	})
	if n, conflicts := attempts.Load(), tr.metric(t, "eventfn_handler_attempts_total", "handler", "lock-ctx", "result", "unavailable"); n != 1 || conflicts != 0 {
		t.Errorf("a 500 ms lock wait within a 1 s lock timeout failed: %d attempts, %v counted as conflicts\n%s", n, conflicts, tr.logs.String())
	}
}

// TestALockWaitEndsBeforeTheStatementTimeout: a role's statement_timeout
// (here the URL's, 400 ms) shorter than a call's lock timeout (half its
// 10 s) ended a wait for a lock held elsewhere as the statement cancelled,
// the call's own error: the retries went, and the good event was
// dead-lettered while the lock was held. The lock timeout now stays below
// the statement_timeout, so the wait ends as a conflict, waited out
// without using a retry, and the event is handled once the lock is gone.
func TestALockWaitEndsBeforeTheStatementTimeout(t *testing.T) {
	if testenv.DatabaseURL() == "" {
		t.Skip("SQLite has no statement_timeout; PostgreSQL only")
	}
	update := func(ctx context.Context, tx runtime.Tx, ev chargeLike) error {
		_, err := tx.ExecContext(ctx, `UPDATE lock_stmt SET n = n + 1 WHERE id = $1`, ev.ID)
		return err
	}
	h := runtime.NewHandler("lock-stmt", update,
		runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: 10 * time.Second, MaxBatch: 1}))
	tr := startRuntime(t, func(c *configs.Config) { c.Database.URL += "&statement_timeout=400" }, h)
	if got := tr.db.StatementTimeout; got != 400*time.Millisecond {
		t.Fatalf("the store read statement_timeout %s, want 400ms", got)
	}
	ctx := context.Background()
	holder := lockRowElsewhere(t, tr, "lock_stmt")
	produceEvent(t, tr, chargeLike{ID: "locked"})
	// Several statement_timeouts past the event's two tries.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && tr.metric(t, "eventfn_dead_lettered_total", "handler", "lock-stmt") == 0 {
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	if n := tr.metric(t, "eventfn_dead_lettered_total", "handler", "lock-stmt"); n != 0 {
		t.Fatalf("the event was dead-lettered while a lock elsewhere held it\n%s", tr.logs.String())
	}
	if n := tr.metric(t, "eventfn_handler_attempts_total", "handler", "lock-stmt", "result", "unavailable"); n == 0 {
		t.Errorf("no attempt counted as waiting for the lock\n%s", tr.logs.String())
	}
	if err := holder.Rollback(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the event handled after the lock was released", 30*time.Second, func() bool {
		var n int
		return tr.db.Read.QueryRowContext(ctx, `SELECT n FROM lock_stmt WHERE id = 'locked'`).Scan(&n) == nil && n == 1
	})
}

// lockRowElsewhere makes table (id, n) with the row 'locked' and returns a
// transaction of another session that holds that row's lock (on SQLite the
// one write lock), rolled back when the test ends if the test has not.
func lockRowElsewhere(t *testing.T, tr *testRuntime, table string) *sql.Tx {
	t.Helper()
	ctx := context.Background()
	if _, err := tr.db.ExecContext(ctx, `CREATE TABLE `+table+` (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.db.ExecContext(ctx, `INSERT INTO `+table+` (id, n) VALUES ('locked', 0)`); err != nil {
		t.Fatal(err)
	}
	postgres := strings.HasPrefix(tr.cfg.Database.URL, "postgres")
	var other *sql.DB
	var err error
	if postgres {
		other, err = sql.Open("pgx", tr.cfg.Database.URL)
	} else {
		other, err = sql.Open("sqlite", "file:"+strings.TrimPrefix(tr.cfg.Database.URL, "sqlite://")+"?_txlock=immediate&_pragma=busy_timeout(10000)")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Close() })
	holder, err := other.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Rollback() })
	if postgres {
		_, err = holder.ExecContext(ctx, `SELECT n FROM `+table+` WHERE id = 'locked' FOR UPDATE`)
	} else {
		_, err = holder.ExecContext(ctx, `UPDATE `+table+` SET n = n WHERE id = 'locked'`)
	}
	if err != nil {
		t.Fatal(err)
	}
	return holder
}
