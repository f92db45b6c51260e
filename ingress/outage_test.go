package ingress_test

import (
	"context"
	"database/sql/driver"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/ingress"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
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
		if status, out := post(t, srv.URL, order); status != http.StatusServiceUnavailable {
			t.Fatalf("status %d (%v) while the database is down, want 503", status, out)
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

// TestADatabaseThatCannotServeAnswers503: while the database takes no
// writes, POST /orders answers 503 with Retry-After (a client or a load
// balancer tries again then), stores nothing, and logs the outage once; it
// answered 500, as for a bug. The database's own errors: on PostgreSQL a
// database turned read-only (a failover to a standby, a managed service
// whose disk filled), on SQLite a full disk.
func TestADatabaseThatCannotServeAnswers503(t *testing.T) {
	ctx := context.Background()
	var (
		sc          store.Config
		stop, start func(db *store.DB)
	)
	if base := testenv.DatabaseURL(); base != "" {
		pg := testenv.NewPostgresDatabase(t, base)
		sc = store.Config{Driver: store.Postgres, URL: pg.URL, MaxOpenConns: 4}
		stop = func(*store.DB) { pg.SetReadOnly(t, true) }
		start = func(*store.DB) { pg.SetReadOnly(t, false) }
	} else {
		sc = store.Config{Driver: store.SQLite, SQLitePath: filepath.Join(t.TempDir(), "full.db")}
		// The writer is one connection: limited to the pages the file has,
		// it meets a full disk at the first write that needs another.
		stop = func(db *store.DB) {
			var pages int
			if err := db.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, fmt.Sprintf(`PRAGMA max_page_count = %d`, pages)); err != nil {
				t.Fatal(err)
			}
		}
		start = func(db *store.DB) {
			if _, err := db.ExecContext(ctx, `PRAGMA max_page_count = 4294967294`); err != nil {
				t.Fatal(err)
			}
		}
	}
	db, cfg := openStore(t, sc)
	logs := &testenv.LogBuffer{}
	srv := httptest.NewServer(ingress.NewServer(router.NewOutbox(db, cfg, watermill.NopLogger{}), db.Read, func(context.Context) error { return nil },
		http.NotFoundHandler(), 1<<20, slog.New(slog.NewTextHandler(logs, nil))).Handler())
	t.Cleanup(srv.Close)
	// Long enough that a few orders fill a page.
	order := `{"customer_email": "a@example.com", "items": [{"sku": "` + strings.Repeat("S", 64) + `", "quantity": 1, "price_cents": 100}]}`

	stored := 0
	if status, out := post(t, srv.URL, order); status != http.StatusCreated {
		t.Fatalf("status %d (%v) before, want 201", status, out)
	}
	stored++
	stop(db)
	refused := 0
	for range 100 {
		resp, err := http.Post(srv.URL+"/orders", "application/json", strings.NewReader(order))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusCreated:
			stored++ // SQLite: the page had room for it
			continue
		case http.StatusServiceUnavailable:
		default:
			t.Fatalf("status %d (%s) while the database takes no writes, want 503", resp.StatusCode, raw)
		}
		if got := resp.Header.Get("Retry-After"); got != "5" {
			t.Errorf("Retry-After %q, want 5", got)
		}
		if !strings.Contains(string(raw), "the database cannot take it now") {
			t.Errorf("body %s does not say why", raw)
		}
		if refused++; refused == 10 {
			break
		}
	}
	if refused < 10 {
		t.Fatalf("%d of 100 orders refused while the database takes no writes", refused)
	}
	start(db)
	deadline := time.Now().Add(30 * time.Second)
	for {
		status, out := post(t, srv.URL, order)
		if status == http.StatusCreated {
			stored++
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %d (%v) after the database takes writes again", status, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var n int
	if err := db.Read.QueryRowContext(ctx, `SELECT count(*) FROM orders`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != stored {
		t.Errorf("%d orders stored, want the %d answered 201", n, stored)
	}
	out := logs.String()
	if c := strings.Count(out, "level=ERROR"); c != 1 || !strings.Contains(out, "POST /orders answers 503") {
		t.Errorf("%d ERROR lines, want 1 saying 503 for the whole outage:\n%s", c, out)
	}
}

// TestAnOrderTheStatementTimeoutCancelsAnswers503: an order whose insert
// the role's statement_timeout cancels (here a trigger makes it take
// 500 ms against 200 ms; a lock held elsewhere or a loaded server do the
// same) answered 500, as for a bug. It is the database that could not take
// it in time: 503 with Retry-After, nothing stored, and stored once the
// insert is quick again.
func TestAnOrderTheStatementTimeoutCancelsAnswers503(t *testing.T) {
	pg := testenv.NewPostgresDatabase(t, testenv.RequirePostgres(t))
	ctx := context.Background()
	setup, _ := openStore(t, store.Config{Driver: store.Postgres, URL: pg.URL, MaxOpenConns: 2})
	for _, stmt := range []string{
		`CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$`,
		`CREATE TRIGGER slow_insert BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION slow_insert()`,
	} {
		if _, err := setup.ExecContext(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	pg.Set(t, "statement_timeout", "200ms")
	db, cfg := openStore(t, store.Config{Driver: store.Postgres, URL: pg.URL, MaxOpenConns: 4})
	srv := httptest.NewServer(ingress.NewServer(router.NewOutbox(db, cfg, watermill.NopLogger{}), db.Read, func(context.Context) error { return nil },
		http.NotFoundHandler(), 1<<20, slog.New(slog.DiscardHandler)).Handler())
	t.Cleanup(srv.Close)
	order := `{"customer_email": "a@example.com", "items": [{"sku": "S-1", "quantity": 1, "price_cents": 100}]}`

	resp, err := http.Post(srv.URL+"/orders", "application/json", strings.NewReader(order))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q (%s) for an order the statement_timeout cancelled, want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), raw)
	}
	var n int
	if err := setup.QueryRowContext(ctx, `SELECT count(*) FROM orders`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d orders stored (%v), want none", n, err)
	}
	if _, err := setup.ExecContext(ctx, `DROP TRIGGER slow_insert ON orders`); err != nil {
		t.Fatal(err)
	}
	if status, out := post(t, srv.URL, order); status != http.StatusCreated {
		t.Fatalf("status %d (%v) once the insert is quick, want 201", status, out)
	}
}
