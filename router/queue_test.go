package router_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/runtime"
)

// TestQueuedStatements: what a handler queues with Tx.Queue commits with
// the call or not at all; it runs after the handler's own statements of
// before and before the ones of after; and a queued statement that fails,
// or cannot be queued, fails the call even when the handler ignores the
// error. On both engines, with calls in transactions of their own and
// sharing one (group commit, where a failure must undo only its own call).
func TestQueuedStatements(t *testing.T) {
	for _, maxBatch := range []int{1, 8} {
		t.Run(fmt.Sprintf("max_batch=%d", maxBatch), func(t *testing.T) { testQueuedStatements(t, maxBatch) })
	}
}

func testQueuedStatements(t *testing.T, maxBatch int) {
	insert := func(n int, tag string) runtime.Statement {
		return runtime.Statement{Query: `INSERT INTO queue_probe (n, tag) VALUES ($1, $2)`, Args: []any{n, tag}}
	}
	// Each event's N picks what its call does.
	cases := map[int]struct {
		what string
		run  func(ctx context.Context, tx runtime.Tx, n int) error
		// rows are queue_probe's rows of n afterwards, sorted; dead says
		// the event is dead-lettered with a reason holding it.
		rows []string
		dead string
	}{
		1: {what: "direct and queued statements and an event commit together", rows: []string{"direct", "q1", "q2"},
			run: func(ctx context.Context, tx runtime.Tx, n int) error {
				if _, err := tx.ExecContext(ctx, `INSERT INTO queue_probe (n, tag) VALUES ($1, 'direct')`, n); err != nil {
					return err
				}
				args := []any{n, "q1"}
				if err := tx.Queue(ctx, runtime.Statement{Query: `INSERT INTO queue_probe (n, tag) VALUES ($1, $2)`, Args: args}); err != nil {
					return err
				}
				args[1] = "overwritten after Queue" // Queue keeps its own copy
				if err := tx.Queue(ctx, insert(n, "q2")); err != nil {
					return err
				}
				return tx.Emit(ctx, probed{N: n})
			}},
		2: {what: "a query after Queue sees what was queued; a statement queued after it runs after it", rows: []string{"b"},
			run: func(ctx context.Context, tx runtime.Tx, n int) error {
				if err := tx.Queue(ctx, insert(n, "a")); err != nil {
					return err
				}
				var seen int
				if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM queue_probe WHERE n = $1`, n).Scan(&seen); err != nil {
					return err
				}
				if seen != 1 {
					return runtime.Permanent(fmt.Errorf("the query saw %d queued rows, want 1", seen))
				}
				if err := tx.Queue(ctx, runtime.Statement{Query: `UPDATE queue_probe SET tag = 'b' WHERE n = $1 AND tag = 'a'`, Args: []any{n}}); err != nil {
					return err
				}
				return tx.Emit(ctx, probed{N: n})
			}},
		3: {what: "a queued statement that fails at the commit undoes the call", dead: "queued statement 3 of 3 (INSERT INTO queue_probe",
			run: func(ctx context.Context, tx runtime.Tx, n int) error {
				if _, err := tx.ExecContext(ctx, `INSERT INTO queue_probe (n, tag) VALUES ($1, 'direct')`, n); err != nil {
					return err
				}
				if err := tx.Queue(ctx, insert(n, "q"), insert(n, "dup"), insert(n, "dup")); err != nil {
					return err
				}
				return tx.Emit(ctx, probed{N: n})
			}},
		4: {what: "a Returning it cannot read fails the call, though the handler ignores the error", dead: "nothing would read its Returning",
			run: func(ctx context.Context, tx runtime.Tx, n int) error {
				var tag string
				_ = tx.Queue(ctx, runtime.Statement{Query: `INSERT INTO queue_probe (n, tag) VALUES ($1, 'r') RETURNING tag`, Args: []any{n}, Returning: []any{&tag}})
				return tx.Emit(ctx, probed{N: n})
			}},
		5: {what: "a handler that fails leaves its queue unrun", dead: "refused after queueing",
			run: func(ctx context.Context, tx runtime.Tx, n int) error {
				if err := tx.Queue(ctx, insert(n, "q")); err != nil {
					return err
				}
				return runtime.Permanent(errors.New("refused after queueing"))
			}},
		6: {what: "a queued statement that fails before a direct one fails the call, though the handler ignores the error", dead: "queued statement 2 of 2",
			run: func(ctx context.Context, tx runtime.Tx, n int) error {
				if err := tx.Queue(ctx, insert(n, "dup"), insert(n, "dup")); err != nil {
					return err
				}
				_, _ = tx.ExecContext(ctx, `INSERT INTO queue_probe (n, tag) VALUES ($1, 'after')`, n)
				return tx.Emit(ctx, probed{N: n})
			}},
		7: {what: "a queued statement's failure is the call's error, not the one the handler met after it", dead: "queued statement 2 of 2",
			run: func(ctx context.Context, tx runtime.Tx, n int) error {
				if err := tx.Queue(ctx, insert(n, "dup"), insert(n, "dup")); err != nil {
					return err
				}
				// The flush failed (on PostgreSQL it aborted the
				// transaction): the Row reports its error, the query never ran.
				var seen int
				if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM queue_probe WHERE n = $1`, n).Scan(&seen); err != nil {
					return fmt.Errorf("count: %w", err)
				}
				return tx.Emit(ctx, probed{N: n})
			}},
		8: {what: "the calls after the failures commit", rows: []string{"direct", "q1", "q2"}},
	}
	h := runtime.NewHandler("queuer", func(ctx context.Context, tx runtime.Tx, ev probe) error {
		c, ok := cases[ev.N]
		if !ok {
			return runtime.Permanent(fmt.Errorf("no case %d", ev.N))
		}
		if c.run == nil {
			c = cases[1]
		}
		return c.run(ctx, tx, ev.N)
	}, runtime.Emits(probed{}), runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Concurrency: 8, MaxBatch: maxBatch}))
	tr := startRuntime(t, nil, h)
	if _, err := tr.db.ExecContext(context.Background(), `CREATE TABLE queue_probe (n INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (n, tag))`); err != nil {
		t.Fatal(err)
	}
	var events []runtime.Event
	for n := 1; n <= len(cases); n++ {
		events = append(events, probe{N: n})
	}
	tr.emit(t, events...) // in one transaction: they arrive together, and share batches

	var committed, dead int
	for _, c := range cases {
		if c.dead != "" {
			dead++
		} else {
			committed++
		}
	}
	handled := map[int]bool{}
	for _, r := range tr.records(t, "probe.handled", committed) {
		var ev probed
		if err := json.Unmarshal(r.Value, &ev); err != nil {
			t.Fatal(err)
		}
		handled[ev.N] = true
	}
	reasons := map[int]string{}
	for _, r := range tr.records(t, tr.cfg.Kafka.DeadLetterTopic, dead) {
		var ev probe
		if err := json.Unmarshal(r.Value, &ev); err != nil {
			t.Fatal(err)
		}
		for _, h := range r.Headers {
			if h.Key == "reason_poisoned" {
				reasons[ev.N] = string(h.Value)
			}
		}
	}
	for n := 1; n <= len(cases); n++ {
		c := cases[n]
		rows := textRows(t, tr, `SELECT tag FROM queue_probe WHERE n = $1 ORDER BY tag`, n)
		if strings.Join(rows, ",") != strings.Join(c.rows, ",") {
			t.Errorf("%d, %s: rows %q, want %q", n, c.what, rows, c.rows)
		}
		if c.dead == "" && !handled[n] {
			t.Errorf("%d, %s: its event was not emitted", n, c.what)
		}
		if c.dead != "" {
			if handled[n] {
				t.Errorf("%d, %s: the event of a call that failed was emitted", n, c.what)
			}
			if !strings.Contains(reasons[n], c.dead) {
				t.Errorf("%d, %s: dead-letter reason %q does not hold %q", n, c.what, reasons[n], c.dead)
			}
		}
	}
}

// TestQueuedStatementsOutsideHandlers: Transact (the HTTP ingress's kind
// of transaction) commits what its function queued with its events, and
// a queued statement that fails makes Transact fail with nothing written.
func TestQueuedStatementsOutsideHandlers(t *testing.T) {
	tr := startRuntime(t, nil, runtime.NewHandler("probe-reader", func(context.Context, runtime.Tx, probe) error { return nil }))
	ctx := context.Background()
	if _, err := tr.db.ExecContext(ctx, `CREATE TABLE queue_outside (id TEXT PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	insert := func(id string) runtime.Statement {
		return runtime.Statement{Query: `INSERT INTO queue_outside (id) VALUES ($1)`, Args: []any{id}}
	}
	outboxRows := func() int {
		return countRows(t, tr, `SELECT COUNT(*) FROM eventfn_outbox WHERE topic = $1`, tr.cfg.Kafka.Topic("probe.sent"))
	}
	if err := tr.outbox.Transact(ctx, func(ctx context.Context, tx runtime.Tx) error {
		if err := tx.Queue(ctx, insert("a")); err != nil {
			return err
		}
		return tx.Emit(ctx, probe{N: 1})
	}); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, tr, `SELECT COUNT(*) FROM queue_outside WHERE id = 'a'`); n != 1 || outboxRows() != 1 {
		t.Fatalf("after a Transact that queued a statement: %d rows, %d outbox rows, want 1 and 1", n, outboxRows())
	}
	err := tr.outbox.Transact(ctx, func(ctx context.Context, tx runtime.Tx) error {
		if err := tx.Queue(ctx, insert("b"), insert("a")); err != nil {
			return err
		}
		return tx.Emit(ctx, probe{N: 2})
	})
	if err == nil || !strings.Contains(err.Error(), "queued statement 2 of 2") {
		t.Fatalf("a Transact whose queued statement fails: %v, want the statement's error", err)
	}
	if n := countRows(t, tr, `SELECT COUNT(*) FROM queue_outside WHERE id = 'b'`); n != 0 || outboxRows() != 1 {
		t.Fatalf("a failed Transact left %d of its rows and %d outbox rows, want 0 and 1", n, outboxRows())
	}
	// A statement the server cannot even prepare: PostgreSQL's pipeline is
	// prepared whole before it runs, and the error still names the second.
	err = tr.outbox.Transact(ctx, func(ctx context.Context, tx runtime.Tx) error {
		return tx.Queue(ctx, insert("c"), runtime.Statement{Query: `INSERT INTO no_such_table (id) VALUES ($1)`, Args: []any{"c"}})
	})
	if err == nil || !strings.Contains(err.Error(), "queued statement 2 of 2 (INSERT INTO no_such_table") {
		t.Fatalf("a Transact whose second queued statement cannot be prepared: %v, want that statement named", err)
	}
	if n := countRows(t, tr, `SELECT COUNT(*) FROM queue_outside WHERE id = 'c'`); n != 0 {
		t.Fatalf("a failed Transact left %d of its rows", n)
	}
}
