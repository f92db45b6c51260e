package router

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// panickingValue is an argument whose driver.Valuer panics: user code that
// database/sql calls inside a write's transaction.
type panickingValue struct{}

func (panickingValue) Value() (driver.Value, error) { panic("a broken driver.Valuer") }

// panickingScanner is a RETURNING target whose sql.Scanner panics.
type panickingScanner struct{}

func (*panickingScanner) Scan(any) error { panic("a broken sql.Scanner") }

type written struct {
	Name string `json:"name"`
}

func (written) EventType() string { return "test.written" }

// TestWritesThatQueueShareATransactionAndFailAlone: Outbox.Write's
// transactions (the ingress's orders) that queue for SQLite's writer commit
// together, and one whose statement fails fails alone: it writes nothing,
// says why, and every other write commits its row and its event once. A
// write whose caller gives up while it waits (a client gone) stores
// nothing and takes no other write down. A write whose statement panics (a
// broken driver.Valuer) panics in its caller's goroutine, as it would have
// alone, stores nothing and takes neither the process nor the other writes
// down: on SQLite the panic happens on the committer's goroutine, where it
// once ended the process, and inside database/sql, whose locks a panic in a
// query's Valuer or a RETURNING target's Scanner leaves held (the shared
// transaction then never ended, and the one writer with it). On PostgreSQL
// each write is a transaction of its own, with the same outcome, but for a
// panicking Scanner: its RETURNING row is scanned after the commit.
func TestWritesThatQueueShareATransactionAndFailAlone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := openBatchDB(t)
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	o := NewOutbox(db, cfg, watermill.NopLogger{})
	var mu sync.Mutex
	var sizes []float64
	o.writes.observe = func(calls float64) {
		mu.Lock()
		sizes = append(sizes, calls)
		mu.Unlock()
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO parents (id) VALUES ('taken')`); err != nil {
		t.Fatal(err)
	}

	const writes, failing, abandoned, panicking, panickingInQuery, panickingScan = 14, 5, 8, 3, 10, 12
	abandon, giveUp := context.WithCancel(ctx)
	defer giveUp()
	var hold *sql.Tx
	if db.Driver == store.SQLite {
		// Hold the one writer, so that the writes below queue for it.
		if hold, err = db.BeginTx(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	errs := make([]error, writes)
	var wg sync.WaitGroup
	for i := range writes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprint("w", i)
			stmts := []runtime.Statement{{Query: `INSERT INTO written (name) VALUES ($1)`, Args: []any{name}}}
			switch i {
			case failing:
				stmts = append(stmts, runtime.Statement{Query: `INSERT INTO parents (id) VALUES ($1)`, Args: []any{"taken"}})
			case panicking:
				stmts = append(stmts, runtime.Statement{Query: `INSERT INTO parents (id) VALUES ($1)`, Args: []any{panickingValue{}}})
			case panickingInQuery:
				var id string
				stmts = append(stmts, runtime.Statement{Query: `INSERT INTO parents (id) VALUES ($1) RETURNING id`, Args: []any{panickingValue{}}, Returning: []any{&id}})
			case panickingScan:
				stmts = append(stmts, runtime.Statement{Query: `INSERT INTO parents (id) VALUES ($1) RETURNING id`, Args: []any{name}, Returning: []any{&panickingScanner{}}})
			}
			wctx := ctx
			if i == abandoned {
				wctx = abandon
			}
			defer func() {
				if p := recover(); p != nil {
					errs[i] = fmt.Errorf("panicked: %v", p)
				}
			}()
			errs[i] = o.Write(wctx, stmts, written{Name: name})
		}()
	}
	if hold != nil {
		waitFor(t, func() bool {
			o.writes.mu.Lock()
			defer o.writes.mu.Unlock()
			return len(o.writes.queue) == writes
		})
		giveUp()
		waitFor(t, func() bool {
			o.writes.mu.Lock()
			defer o.writes.mu.Unlock()
			return len(o.writes.queue) == writes-1
		})
		if err := hold.Rollback(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()

	for i, err := range errs {
		switch {
		case i == failing:
			if err == nil || !strings.Contains(err.Error(), "statement 2 of 2") {
				t.Errorf("the write with a duplicate key: %v, want its statement's failure", err)
			}
		case i == panicking || i == panickingInQuery:
			if err == nil || !strings.Contains(err.Error(), "panicked: a broken driver.Valuer") {
				t.Errorf("write %d, whose Valuer panics: %v, want its panic in the caller", i, err)
			}
		case i == panickingScan:
			if err == nil || !strings.Contains(err.Error(), "panicked: a broken sql.Scanner") {
				t.Errorf("write %d, whose Scanner panics: %v, want its panic in the caller", i, err)
			}
		case i == abandoned && hold != nil:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("the write whose caller gave up: %v, want context.Canceled", err)
			}
		case err != nil:
			t.Errorf("write %d: %v", i, err)
		}
	}
	var rows, events int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM written`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM eventfn_outbox WHERE topic = $1`, cfg.Kafka.Topic("test.written")).Scan(&events); err != nil {
		t.Fatal(err)
	}
	notStored := []int{failing, panicking, panickingInQuery}
	if db.Driver == store.SQLite {
		// On PostgreSQL RETURNING rows are scanned after COMMIT's answer
		// (Write): the write whose Scanner panics has committed.
		notStored = append(notStored, panickingScan)
	}
	if hold != nil {
		notStored = append(notStored, abandoned)
	}
	for _, i := range notStored {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM written WHERE name = $1`, fmt.Sprint("w", i)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("write %d, which failed, stored its row", i)
		}
	}
	want := writes - len(notStored)
	if rows != want || events != want {
		t.Fatalf("%d rows and %d events; want %d of each", rows, events, want)
	}

	mu.Lock()
	defer mu.Unlock()
	if db.Driver == store.Postgres {
		if len(sizes) != 0 {
			t.Fatalf("on PostgreSQL writes shared transactions: %v", sizes)
		}
		return
	}
	total, most := 0.0, 0.0
	for _, n := range sizes {
		total += n
		most = max(most, n)
	}
	if total != float64(want) || most < 2 {
		t.Fatalf("transactions committed %v writes: want %d in all, some shared", sizes, want)
	}
}
