package router_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/runtime"
)

// TestALockHeldElsewhereDeadLettersNoGoodEvent: a long transaction
// elsewhere (an operator's session, a batch job) holds a lock the handler's
// statement needs, for longer than the handler's whole retry budget. The
// event is not at fault: it must wait for the lock, holding only its key,
// and be handled once the lock is released, never dead-lettered. On
// PostgreSQL the lock is a row's; on SQLite the one write lock.
func TestALockHeldElsewhereDeadLettersNoGoodEvent(t *testing.T) {
	// MaxBatch 16: the first attempt runs in a shared transaction.
	for _, maxBatch := range []int{1, 16} {
		t.Run(fmt.Sprintf("max batch %d", maxBatch), func(t *testing.T) {
			h := runtime.NewHandler("lock-probe", func(ctx context.Context, tx runtime.Tx, ev chargeLike) error {
				_, err := tx.ExecContext(ctx, `UPDATE lock_probe SET n = n + 1 WHERE id = $1`, ev.ID)
				return err
			}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: 300 * time.Millisecond, MaxBatch: maxBatch}))
			tr := startRuntime(t, nil, h)
			ctx := context.Background()
			if _, err := tr.db.ExecContext(ctx, `CREATE TABLE lock_probe (id TEXT PRIMARY KEY, n INTEGER NOT NULL)`); err != nil {
				t.Fatal(err)
			}
			if _, err := tr.db.ExecContext(ctx, `INSERT INTO lock_probe (id, n) VALUES ('locked', 0)`); err != nil {
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
			defer other.Close()
			holder, err := other.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = holder.Rollback() }()
			if postgres {
				_, err = holder.ExecContext(ctx, `SELECT n FROM lock_probe WHERE id = 'locked' FOR UPDATE`)
			} else {
				_, err = holder.ExecContext(ctx, `UPDATE lock_probe SET n = n WHERE id = 'locked'`)
			}
			if err != nil {
				t.Fatal(err)
			}

			produceEvent(t, tr, chargeLike{ID: "locked"})
			// Far past the event's two tries of 300 ms each.
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) && tr.metric(t, "eventfn_dead_lettered_total", "handler", "lock-probe") == 0 {
				time.Sleep(20 * time.Millisecond) // polling interval
			}
			if n := tr.metric(t, "eventfn_dead_lettered_total", "handler", "lock-probe"); n != 0 {
				t.Fatalf("the event was dead-lettered while a lock elsewhere held it\n%s", tr.logs.String())
			}
			if postgres {
				// The database answers: a lock held elsewhere makes no replica
				// unready. (SQLite's write lock held elsewhere is the database
				// unavailable to every writer, and readiness says so.)
				if err := tr.rt.Ready(ctx); err != nil {
					t.Errorf("not ready while a lock elsewhere holds one event: %v", err)
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
