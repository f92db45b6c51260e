package router

import (
	"context"
	"database/sql"
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

type written struct {
	Name string `json:"name"`
}

func (written) EventType() string { return "test.written" }

// TestWritesThatQueueShareATransactionAndFailAlone: Outbox.Write's
// transactions (the ingress's orders) that queue for SQLite's writer commit
// together, and one whose statement fails fails alone: it writes nothing,
// says why, and every other write commits its row and its event once. On
// PostgreSQL each write is a transaction of its own, with the same outcome.
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

	const writes, failing = 12, 5
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
			if i == failing {
				stmts = append(stmts, runtime.Statement{Query: `INSERT INTO parents (id) VALUES ($1)`, Args: []any{"taken"}})
			}
			errs[i] = o.Write(ctx, stmts, written{Name: name})
		}()
	}
	if hold != nil {
		waitFor(t, func() bool {
			o.writes.mu.Lock()
			defer o.writes.mu.Unlock()
			return len(o.writes.queue) == writes
		})
		if err := hold.Rollback(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()

	for i, err := range errs {
		switch {
		case i == failing && (err == nil || !strings.Contains(err.Error(), "statement 2 of 2")):
			t.Errorf("the write with a duplicate key: %v, want its statement's failure", err)
		case i != failing && err != nil:
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
	var failed int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM written WHERE name = $1`, fmt.Sprint("w", failing)).Scan(&failed); err != nil {
		t.Fatal(err)
	}
	if rows != writes-1 || events != writes-1 || failed != 0 {
		t.Fatalf("%d rows and %d events, the failed write's row %d times; want %d, %d and 0", rows, events, failed, writes-1, writes-1)
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
	if total != writes-1 || most < 2 {
		t.Fatalf("transactions committed %v writes: want %d in all, some shared", sizes, writes-1)
	}
}
