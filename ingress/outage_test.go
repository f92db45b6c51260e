package ingress_test

import (
	"context"
	"database/sql/driver"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/ingress"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/runtime"
)

// faultyTransactor runs the real outbox's transactions, except while down
// (each fails as a lost connection would) or stalled (each waits for its
// request's end, as a frozen database makes it).
type faultyTransactor struct {
	runtime.Transactor
	down, stalled atomic.Bool
}

func (f *faultyTransactor) Transact(ctx context.Context, fn func(context.Context, runtime.Tx) error) error {
	if err := f.fault(ctx); err != nil {
		return err
	}
	return f.Transactor.Transact(ctx, fn)
}

func (f *faultyTransactor) Write(ctx context.Context, stmts []runtime.Statement, events ...runtime.Event) error {
	if err := f.fault(ctx); err != nil {
		return err
	}
	return f.Transactor.Write(ctx, stmts, events...)
}

func (f *faultyTransactor) fault(ctx context.Context) error {
	switch {
	case f.down.Load():
		return fmt.Errorf("begin transaction: %w", driver.ErrBadConn)
	case f.stalled.Load():
		<-ctx.Done()
		return fmt.Errorf("begin transaction: %w", ctx.Err())
	}
	return nil
}

// TestADatabaseOutageIsReportedNotShouted: while orders cannot be stored, 50
// failed requests give one ERROR, not fifty, and the recovery is logged once;
// clients that give up on a stalled database log no ERROR at all.
func TestADatabaseOutageIsReportedNotShouted(t *testing.T) {
	_, db, outbox := newServerWith(t, 1<<20, func(*configs.Config) {})
	tx := &faultyTransactor{Transactor: outbox}
	logs := &testenv.LogBuffer{}
	srv := httptest.NewServer(ingress.NewServer(tx, db.Read, func(context.Context) error { return nil }, http.NotFoundHandler(), 1<<20,
		slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))).Handler())
	t.Cleanup(srv.Close)
	const order = `{"customer_email": "a@example.com", "items": [{"sku": "SKU-1", "quantity": 1, "price_cents": 100}]}`

	tx.down.Store(true)
	for range 50 {
		if status, out := post(t, srv.URL, order); status != http.StatusInternalServerError {
			t.Fatalf("status %d (%v) while the database is down, want 500", status, out)
		}
	}
	tx.down.Store(false)
	if status, out := post(t, srv.URL, order); status != http.StatusCreated {
		t.Fatalf("status %d (%v) after the outage, want 201", status, out)
	}

	tx.stalled.Store(true)
	client := &http.Client{Timeout: 50 * time.Millisecond}
	for range 20 {
		resp, err := client.Post(srv.URL+"/orders", "application/json", strings.NewReader(order))
		if err == nil {
			resp.Body.Close()
			t.Fatalf("a request to a stalled database was answered %d", resp.StatusCode)
		}
	}
	tx.stalled.Store(false)
	// The server sees each client leave a moment after the client does.
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(logs.String(), "abandoned by the client") < 20 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}

	out := logs.String()
	if n := strings.Count(out, "level=ERROR"); n != 1 {
		t.Errorf("%d ERROR lines, want 1 for the whole outage:\n%s", n, out)
	}
	if n := strings.Count(out, `msg="orders stored again"`); n != 1 || !strings.Contains(out, "failures=50") {
		t.Errorf("want one recovery line counting 50 failures:\n%s", out)
	}
	if n := strings.Count(out, "abandoned by the client"); n != 20 {
		t.Errorf("%d abandoned requests logged (at DEBUG), want 20:\n%s", n, out)
	}
}
