package router_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
)

type merchantCharge struct {
	Merchant string `json:"merchant"`
	Seq      int    `json:"seq"`
}

func (merchantCharge) EventType() string  { return "merchant.charge" }
func (c merchantCharge) EventKey() string { return c.Merchant }

// TestAnUnavailableDependencyDeadLettersNoGoodEvent: a handler whose
// dependency was down used up its event's retries in a few hundred
// milliseconds and dead-lettered a good event. An error marked
// runtime.Unavailable now waits: far past the retries, holding only its own
// key (the key's next event waits behind it, other keys go on), without a
// dead letter, without failing readiness (the HTTP API still takes
// orders), logged as one outage rather than a line per call, and counted
// while it lasts. Once the dependency answers, the key's events are handled
// in order.
func TestAnUnavailableDependencyDeadLettersNoGoodEvent(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var mu sync.Mutex
	var handled []string
	h := runtime.NewHandler("merchant-charge", func(ctx context.Context, tx runtime.Tx, ev merchantCharge) error {
		if ev.Merchant == "down" && down.Load() {
			return runtime.Unavailable(errors.New("the merchant's gateway answers 503"))
		}
		mu.Lock()
		defer mu.Unlock()
		handled = append(handled, fmt.Sprintf("%s/%d", ev.Merchant, ev.Seq))
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: time.Second}))
	tr := startRuntime(t, nil, h)
	seen := func(id string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range handled {
			if s == id {
				return true
			}
		}
		return false
	}

	tr.emit(t, merchantCharge{Merchant: "down", Seq: 1}, merchantCharge{Merchant: "down", Seq: 2})
	tr.emit(t, merchantCharge{Merchant: "up", Seq: 1})
	waitUntil(t, "the other key handled", 30*time.Second, func() bool { return seen("up/1") })
	// Ten times the event's two tries: the budget was gone long before.
	waitUntil(t, "the event to wait past its retries", 30*time.Second, func() bool {
		return tr.metric(t, "eventfn_handler_attempts_total", "handler", "merchant-charge", "result", "unavailable") >= 20
	})
	if got := tr.metric(t, "eventfn_dependency_waits_in_progress", "handler", "merchant-charge"); got != 1 {
		t.Errorf("dependency waits in progress = %v while the event waits, want 1", got)
	}
	if seen("down/2") {
		t.Fatal("the key's second event was handled before its first")
	}
	if err := tr.rt.Ready(context.Background()); err != nil {
		t.Errorf("not ready while a dependency is away: %v", err)
	}

	down.Store(false)
	waitUntil(t, "the key's events handled", 30*time.Second, func() bool { return seen("down/2") })
	mu.Lock()
	order := strings.Join(handled, " ")
	mu.Unlock()
	if !strings.Contains(order, "down/1 down/2") {
		t.Errorf("handled %s; want down/1 right before down/2", order)
	}
	if got := tr.metric(t, "eventfn_dependency_waits_in_progress", "handler", "merchant-charge"); got != 0 {
		t.Errorf("dependency waits in progress = %v after the dependency answered", got)
	}
	if n := countRecords(t, tr, tr.cfg.Kafka.DeadLetterTopic); n != 0 {
		t.Fatalf("%d events dead-lettered while the dependency was away\n%s", n, tr.logs.String())
	}

	logs := tr.logs.String()
	if n := strings.Count(logs, "level=ERROR msg=\"a dependency of the handler is unavailable"); n != 1 {
		t.Errorf("the outage was logged at ERROR %d times, want once\n%s", n, logs)
	}
	// The outage ends once no event waited and none failed for twice the
	// longest wait (100 ms here).
	waitUntil(t, "the end of the outage logged", 10*time.Second, func() bool {
		return strings.Contains(tr.logs.String(), "the handler's dependency answers again")
	})
	if n := strings.Count(logs, "level=WARN msg=\"handler failed\""); n != 0 {
		t.Errorf("%d calls that found the dependency away were logged as failures", n)
	}

	// `publish --wait` reads the runs topic: the calls past the retries wait
	// for a dependency, none of them is a dead letter.
	var outcomes []string
	for _, rec := range tr.records(t, tr.cfg.Kafka.RunsTopic, 23) {
		var r router.RunRecord
		if err := json.Unmarshal(rec.Value, &r); err != nil {
			t.Fatal(err)
		}
		outcomes = append(outcomes, r.Outcome)
		if r.Outcome == router.RunDeadLettered {
			t.Errorf("run record of attempt %d of %s says %q", r.Attempt, r.EventID, r.Outcome)
		}
	}
	if !strings.Contains(strings.Join(outcomes, ","), router.RunUnavailable) {
		t.Errorf("run outcomes %v; want calls waiting for a dependency", outcomes)
	}
}

// TestADependencysConnectionFailureIsNotTheDatabase: a handler whose
// dependency is a database of its own (an inventory service's; nothing
// listens on port 1) marks the refused connection Unavailable. It was taken
// for eventfn's own database away: /readyz failed, the calls counted as
// "infrastructure", and the dependency's gauge and log said nothing.
func TestADependencysConnectionFailureIsNotTheDatabase(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var calls atomic.Int64
	h := runtime.NewHandler("merchant-charge", func(ctx context.Context, tx runtime.Tx, ev merchantCharge) error {
		calls.Add(1)
		if down.Load() {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			_, err := pgconn.Connect(cctx, "postgres://inv@127.0.0.1:1/inventory?connect_timeout=1")
			return runtime.Unavailable(fmt.Errorf("inventory service: %w", err))
		}
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: 5 * time.Second}))
	tr := startRuntime(t, nil, h)
	tr.emit(t, merchantCharge{Merchant: "m", Seq: 1})
	waitUntil(t, "a few calls", 30*time.Second, func() bool { return calls.Load() >= 5 })
	readyErr := tr.rt.Ready(context.Background())
	unavailable := tr.metric(t, "eventfn_handler_attempts_total", "handler", "merchant-charge", "result", "unavailable")
	infra := tr.metric(t, "eventfn_handler_attempts_total", "handler", "merchant-charge", "result", "infrastructure")
	down.Store(false)
	waitUntil(t, "the event handled", 30*time.Second, func() bool {
		return tr.metric(t, "eventfn_handler_attempts_total", "handler", "merchant-charge", "result", "ok") == 1
	})
	if readyErr != nil {
		t.Errorf("not ready while only a dependency was down: %v", readyErr)
	}
	if unavailable == 0 || infra != 0 {
		t.Errorf("attempts: unavailable %v, infrastructure %v; want them all unavailable", unavailable, infra)
	}
}

// TestAStopWhileEventsWaitEndsWithinTheDrain: with a backoff longer than the
// drain (10 s against 2 s), a stop used the whole drain and Run returned
// "router close timeout"; the wait now ends when the stop begins, and the
// event is left for redelivery, not dead-lettered.
func TestAStopWhileEventsWaitEndsWithinTheDrain(t *testing.T) {
	h := runtime.NewHandler("merchant-charge", func(ctx context.Context, tx runtime.Tx, ev merchantCharge) error {
		return runtime.Unavailable(errors.New("gateway down"))
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Second, MaxBackoff: 10 * time.Second, Timeout: time.Second}))
	tr := startRuntime(t, func(c *configs.Config) { c.Shutdown.Timeout = 2 * time.Second }, h)
	tr.emit(t, merchantCharge{Merchant: "m", Seq: 1})
	waitUntil(t, "the event waiting", 30*time.Second, func() bool {
		return tr.metric(t, "eventfn_dependency_waits_in_progress", "handler", "merchant-charge") == 1
	})
	tr.stop() // fails the test if Run returns an error or takes 60 s
	if n := countRecords(t, tr, tr.cfg.Kafka.DeadLetterTopic); n != 0 {
		t.Errorf("%d dead letters after a stop during the wait", n)
	}
	if g := tr.metric(t, "eventfn_dependency_waits_in_progress", "handler", "merchant-charge"); g != 0 {
		t.Errorf("%v events counted as waiting after the stop", g)
	}
}

// TestAWaitEndsWhenItsPartitionGoesToAnotherReplica: replica A waits for a
// gateway on twelve keys; replica B joins and takes some of A's partitions.
// A went on calling the handler without end for events B now owned (the
// revocation waits for calls in flight, and a wait never ended). A's waits
// on a revoked partition now end, and leave the event to B.
func TestAWaitEndsWhenItsPartitionGoesToAnotherReplica(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]map[string]int{"A": {}, "B": {}}
	handler := func(replica string) runtime.Handler {
		return runtime.NewHandler("merchant-charge", func(ctx context.Context, tx runtime.Tx, ev merchantCharge) error {
			mu.Lock()
			calls[replica][ev.Merchant]++
			mu.Unlock()
			return runtime.Unavailable(errors.New("gateway down"))
		}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: time.Second}))
	}
	short := func(c *configs.Config) { c.Shutdown.Timeout = 2 * time.Second }
	a := startRuntime(t, short, handler("A"))
	var evs []runtime.Event
	for i := range 12 {
		evs = append(evs, merchantCharge{Merchant: fmt.Sprintf("m%d", i), Seq: 1})
	}
	a.emit(t, evs...)
	callsOf := func(replica, key string) int {
		mu.Lock()
		defer mu.Unlock()
		return calls[replica][key]
	}
	waitUntil(t, "A calling every key", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls["A"]) == 12
	})
	startRuntime(t, func(c *configs.Config) {
		short(c)
		c.Kafka.TopicPrefix = a.cfg.Kafka.TopicPrefix
		c.Kafka.Brokers = a.cfg.Kafka.Brokers
		c.Database.URL = a.cfg.Database.URL
	}, handler("B"))
	var key string
	waitUntil(t, "B calling a key", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for k, n := range calls["B"] {
			if n >= 3 {
				key = k
				return true
			}
		}
		return false
	})
	// A waiting on key would call it every 50 ms: a second without a call
	// from A says A let it go.
	deadline := time.Now().Add(30 * time.Second)
	for {
		before := callsOf("A", key)
		time.Sleep(time.Second) // the window that is measured, not synchronisation
		if callsOf("A", key) == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %s: B owns it, yet A still calls it (%d calls in all, B %d)", key, callsOf("A", key), callsOf("B", key))
		}
	}
	if n := countRecords(t, a, a.cfg.Kafka.DeadLetterTopic); n != 0 {
		t.Errorf("%d dead letters from the rebalance", n)
	}
}

// TestADependencysDatabaseErrorIsTheDependencys: a dependency that is a
// PostgreSQL database of its own refuses the handler's work with what, from
// eventfn's own database, would be told apart by asking it or by the other
// writes: a read-only transaction (a standby), a shortage (a sort past its
// temp_file_limit). Marked Unavailable, it is the dependency's, waited for
// without using retries and never dead-lettered: the read-only refusal was
// taken for the handler's own (eventfn's database takes writes) and
// dead-lettered. PostgreSQL only: the dependency is a PostgreSQL server.
func TestADependencysDatabaseErrorIsTheDependencys(t *testing.T) {
	base := testenv.RequirePostgres(t)
	dependency, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dependency.Close() })
	for _, tc := range []struct {
		name string
		work func(ctx context.Context, conn *sql.Conn) error
	}{
		{"a write refused as read-only", func(ctx context.Context, conn *sql.Conn) error {
			tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
			if err != nil {
				return err
			}
			defer func() { _ = tx.Rollback() }()
			_, err = tx.ExecContext(ctx, `CREATE TEMP TABLE stock (n int)`)
			return err
		}},
		{"a sort past temp_file_limit", func(ctx context.Context, conn *sql.Conn) error {
			tx, err := conn.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer func() { _ = tx.Rollback() }()
			for _, q := range []string{`SET LOCAL work_mem = '64kB'`, `SET LOCAL temp_file_limit = '100kB'`,
				`SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC`} {
				if _, err := tx.ExecContext(ctx, q); err != nil {
					return err
				}
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var down atomic.Bool
			down.Store(true)
			var calls atomic.Int64
			h := runtime.NewHandler("merchant-charge", func(ctx context.Context, tx runtime.Tx, ev merchantCharge) error {
				calls.Add(1)
				if !down.Load() {
					return nil
				}
				conn, err := dependency.Conn(ctx)
				if err != nil {
					return runtime.Unavailable(fmt.Errorf("inventory service: %w", err))
				}
				defer conn.Close()
				if err := tc.work(ctx, conn); err != nil {
					return runtime.Unavailable(fmt.Errorf("inventory service: %w", err))
				}
				return errors.New("the dependency took the work it should refuse")
			}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: 5 * time.Second}))
			tr := startRuntime(t, nil, h)
			tr.emit(t, merchantCharge{Merchant: "m", Seq: 1})
			// The retry budget is 2 calls; the event outlives it.
			waitUntil(t, "a few calls", 30*time.Second, func() bool { return calls.Load() >= 5 })
			readyErr := tr.rt.Ready(context.Background())
			down.Store(false)
			waitUntil(t, "the event handled", 30*time.Second, func() bool {
				return tr.metric(t, "eventfn_handler_attempts_total", "handler", "merchant-charge", "result", "ok") == 1
			})
			if n := countRecords(t, tr, tr.cfg.Kafka.DeadLetterTopic); n != 0 {
				t.Fatalf("%d dead-lettered for the dependency's refusal\n%s", n, tr.logs.String())
			}
			if readyErr != nil {
				t.Errorf("not ready while only a dependency refused: %v", readyErr)
			}
			if n := tr.metric(t, "eventfn_handler_attempts_total", "handler", "merchant-charge", "result", "unavailable"); n < 4 {
				t.Errorf("%v calls waited for the dependency, want every failed one (at least 4)", n)
			}
		})
	}
}
