package ingress_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/eventfn/eventfn/ingress"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// keyedAnswer is what POST /orders answered a request with a key.
type keyedAnswer struct {
	status   int
	body     map[string]any
	location string
	replayed string
	// retryAfter is the Retry-After header.
	retryAfter string
}

// postKeyed sends an order with the Idempotency-Key header set to each of
// keys (none: no header).
func postKeyed(t *testing.T, url, body string, keys ...string) keyedAnswer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/orders", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for _, k := range keys {
		req.Header.Add("Idempotency-Key", k)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return keyedAnswer{}
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := keyedAnswer{status: resp.StatusCode, location: resp.Header.Get("Location"), replayed: resp.Header.Get("Idempotent-Replayed"),
		retryAfter: resp.Header.Get("Retry-After")}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		t.Errorf("answer %d is not JSON: %q", resp.StatusCode, raw)
	}
	return a
}

// storedAndSent counts the orders stored and the events in the outbox.
func storedAndSent(t *testing.T, db *store.DB, outbox *router.Outbox) (orders, events int) {
	t.Helper()
	pending, err := outbox.Pending(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return storedOrders(t, db), int(pending)
}

const (
	// anOrderAgain is anOrder (backpressure_test.go) with its fields in another order and spaced
	// otherwise: the same order.
	anOrderAgain = `{"items":[{"price_cents":100,"sku":"SKU-1","quantity":1}],"customer_email":"a@example.com"}`
	anotherOrder = `{"customer_email": "a@example.com", "items": [{"sku": "SKU-1", "quantity": 3, "price_cents": 100}]}`
)

// TestAnOrderSentAgainWithItsKeyIsStoredOnce: a client whose answer was lost
// sends its order again with the same Idempotency-Key and gets the order
// stored the first time, with no second order and no second order.placed
// (which would charge the customer twice). The same key with a different
// order is refused, storing nothing.
func TestAnOrderSentAgainWithItsKeyIsStoredOnce(t *testing.T) {
	srv, db, outbox := newServer(t, 1<<20)

	first := postKeyed(t, srv.URL, anOrder, "order-7f3a")
	if first.status != http.StatusCreated || first.replayed != "" {
		t.Fatalf("first: %d replayed %q: %v", first.status, first.replayed, first.body)
	}
	id, _ := first.body["id"].(string)
	for _, again := range []struct{ name, body string }{
		{"the same body", anOrder},
		{"the same order written otherwise", anOrderAgain},
	} {
		a := postKeyed(t, srv.URL, again.body, "order-7f3a")
		if a.status != http.StatusCreated || a.replayed != "true" || a.body["id"] != id || a.location != "/orders/"+id {
			t.Errorf("%s again: %d, replayed %q, location %q, id %v; want 201, true, the first order %s",
				again.name, a.status, a.replayed, a.location, a.body["id"], id)
		}
		if a.body["total_cents"] != float64(100) || a.body["customer_email"] != "a@example.com" || len(a.body["items"].([]any)) != 1 {
			t.Errorf("%s again: the answer is not the stored order: %v", again.name, a.body)
		}
	}
	if orders, events := storedAndSent(t, db, outbox); orders != 1 || events != 1 {
		t.Fatalf("after one order sent three times: %d orders, %d events; want 1 and 1", orders, events)
	}

	other := postKeyed(t, srv.URL, anotherOrder, "order-7f3a")
	if other.status != http.StatusUnprocessableEntity || other.body["field"] != "Idempotency-Key" || other.replayed != "" {
		t.Errorf("another order under a used key: %d %v, replayed %q; want 422 naming Idempotency-Key", other.status, other.body, other.replayed)
	}
	if orders, events := storedAndSent(t, db, outbox); orders != 1 || events != 1 {
		t.Fatalf("after another order under a used key: %d orders, %d events; want 1 and 1", orders, events)
	}

	// Keys are compared byte for byte, and orders without one are never
	// taken for each other.
	for _, keys := range [][]string{{"ORDER-7F3A"}, {"order-7f3b"}, nil, nil} {
		if a := postKeyed(t, srv.URL, anOrder, keys...); a.status != http.StatusCreated || a.replayed != "" || a.body["id"] == id {
			t.Errorf("key %q: %d, replayed %q, id %v; want a new order", keys, a.status, a.replayed, a.body["id"])
		}
	}
	if orders, events := storedAndSent(t, db, outbox); orders != 5 || events != 5 {
		t.Fatalf("after four more orders: %d orders, %d events; want 5 and 5", orders, events)
	}
}

// TestRequestsWithOneKeyAtOnceStoreOneOrder: a client that retries before
// its first request was answered (a timeout shorter than the server's) sends
// the same key while the first order's transaction is open. Every request
// gets the one order; one stored it.
func TestRequestsWithOneKeyAtOnceStoreOneOrder(t *testing.T) {
	srv, db, outbox := newServer(t, 1<<20)
	const senders = 16
	answers := make([]keyedAnswer, senders)
	var wg sync.WaitGroup
	for i := range answers {
		wg.Go(func() { answers[i] = postKeyed(t, srv.URL, anOrder, "retry-storm") })
	}
	wg.Wait()
	stored := 0
	for i, a := range answers {
		if a.status != http.StatusCreated || a.body["id"] != answers[0].body["id"] {
			t.Errorf("request %d: %d %v; want 201 with order %v", i, a.status, a.body, answers[0].body["id"])
		}
		if a.replayed == "" {
			stored++
		}
	}
	if stored != 1 {
		t.Errorf("%d answers say they stored the order, want 1", stored)
	}
	if orders, events := storedAndSent(t, db, outbox); orders != 1 || events != 1 {
		t.Fatalf("%d requests with one key: %d orders, %d events; want 1 and 1", senders, orders, events)
	}
}

// TestABadIdempotencyKeyIsRefused: a key the server could not compare or
// show as sent is refused with a 400 naming the header, and nothing is
// stored; the longest key is taken.
func TestABadIdempotencyKeyIsRefused(t *testing.T) {
	srv, db, outbox := newServer(t, 1<<20)
	for _, tc := range []struct {
		name string
		keys []string
		want string // in the error
	}{
		{"empty", []string{""}, "is empty"},
		{"past 255 bytes", []string{strings.Repeat("k", 256)}, "at most 255"},
		{"a space inside", []string{"order 1"}, "0x20"},
		{"a tab inside", []string{"order\t1"}, "0x09"},
		{"a comma (two keys a proxy joined)", []string{"a,b"}, "0x2c"},
		{"UTF-8 past ASCII", []string{"заказ-1"}, "0xd0"},
		{"a byte past ASCII", []string{"order-\xff"}, "0xff"},
		{"sent twice", []string{"a", "b"}, "2 times"},
		{"sent twice, the same", []string{"a", "a"}, "2 times"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := postKeyed(t, srv.URL, anOrder, tc.keys...)
			msg, _ := a.body["error"].(string)
			if a.status != http.StatusBadRequest || a.body["field"] != "Idempotency-Key" || !strings.Contains(msg, tc.want) {
				t.Errorf("%d %v; want 400 naming Idempotency-Key, saying %q", a.status, a.body, tc.want)
			}
		})
	}
	if orders, events := storedAndSent(t, db, outbox); orders != 0 || events != 0 {
		t.Fatalf("bad keys stored %d orders and %d events", orders, events)
	}
	longest := strings.Repeat("k", 255)
	for range 2 {
		if a := postKeyed(t, srv.URL, anOrder, longest); a.status != http.StatusCreated {
			t.Fatalf("a key of 255 bytes: %d %v", a.status, a.body)
		}
	}
	if orders, events := storedAndSent(t, db, outbox); orders != 1 || events != 1 {
		t.Fatalf("the longest key twice: %d orders, %d events; want 1 and 1", orders, events)
	}
}

// collidingTransactor fails every Write with a real unique violation of the
// engine's, made on a scratch table, while no order holds the key: what a
// request sees when the order that held its key was not committed after all
// (on SQLite, the transaction a group of calls shared failed at its commit).
type collidingTransactor struct {
	runtime.Transactor
	db *store.DB
}

func (c collidingTransactor) Write(ctx context.Context, _ []runtime.Statement, _ ...runtime.Event) error {
	_, err := c.db.ExecContext(ctx, `INSERT INTO scratch_keys (k) VALUES ('taken')`)
	return fmt.Errorf("statement 1 of 2: %w", err)
}

// TestAKeyWhoseOrderNeverCommittedIsAnsweredConflict: a request whose key
// collided with an order that then did not commit finds no order under the
// key. It is answered 409 with Retry-After, not a 500 and not another
// order's answer, and the request sent again stores the order.
func TestAKeyWhoseOrderNeverCommittedIsAnsweredConflict(t *testing.T) {
	ctx := context.Background()
	db, cfg := openStore(t, testStore(t))
	for _, q := range []string{`CREATE TABLE scratch_keys (k TEXT PRIMARY KEY)`, `INSERT INTO scratch_keys (k) VALUES ('taken')`} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	outbox := router.NewOutbox(db, cfg, watermill.NopLogger{})
	serve := func(tx runtime.Transactor) *httptest.Server {
		srv := httptest.NewServer(ingress.NewServer(tx, db.Read, func(context.Context) error { return nil },
			http.NotFoundHandler(), 1<<20, slog.New(slog.DiscardHandler)).Handler())
		t.Cleanup(srv.Close)
		return srv
	}

	a := postKeyed(t, serve(collidingTransactor{outbox, db}).URL, anOrder, "order-7f3a")
	if a.status != http.StatusConflict || a.body["field"] != "Idempotency-Key" || a.retryAfter != "1" {
		t.Fatalf("a key whose order never committed: %d %v, Retry-After %q; want 409 naming Idempotency-Key with Retry-After 1",
			a.status, a.body, a.retryAfter)
	}
	if orders, events := storedAndSent(t, db, outbox); orders != 0 || events != 0 {
		t.Fatalf("a collision stored %d orders and %d events", orders, events)
	}
	if a := postKeyed(t, serve(outbox).URL, anOrder, "order-7f3a"); a.status != http.StatusCreated || a.replayed != "" {
		t.Fatalf("sent again: %d %v, replayed %q; want 201 storing the order", a.status, a.body, a.replayed)
	}
	if orders, events := storedAndSent(t, db, outbox); orders != 1 || events != 1 {
		t.Fatalf("sent again: %d orders, %d events; want 1 and 1", orders, events)
	}
}

// TestAnOrderSentAgainWhileTheHandlersAreBehindGetsItsOrder: while the
// backlog holds and refuses new orders, a request whose key an order holds
// stores nothing, so it is answered as at any other time, without being
// held: its order, or 422. It was held, then answered 503 saying the order
// was not stored, which was false.
func TestAnOrderSentAgainWhileTheHandlersAreBehindGetsItsOrder(t *testing.T) {
	var backlog atomic.Int64
	srv, db, reg := heldServer(t, backlog.Load, 10, 200*time.Millisecond)
	first := postKeyed(t, srv.URL, anOrder, "sent-before-the-backlog")
	if first.status != http.StatusCreated {
		t.Fatalf("first: %d %v", first.status, first.body)
	}
	backlog.Store(100)
	for _, tc := range []struct {
		name, body, key string
		status          int
		replayed        string
	}{
		{"the same order again", anOrder, "sent-before-the-backlog", http.StatusCreated, "true"},
		{"another order under its key", anotherOrder, "sent-before-the-backlog", http.StatusUnprocessableEntity, ""},
		{"a new key", anOrder, "sent-during-the-backlog", http.StatusServiceUnavailable, ""},
	} {
		a := postKeyed(t, srv.URL, tc.body, tc.key)
		if a.status != tc.status || a.replayed != tc.replayed {
			t.Errorf("%s during a backlog: %d, replayed %q (%v); want %d, %q", tc.name, a.status, a.replayed, a.body, tc.status, tc.replayed)
		}
		if tc.replayed != "" && a.body["id"] != first.body["id"] {
			t.Errorf("%s during a backlog: order %v, want %v", tc.name, a.body["id"], first.body["id"])
		}
	}
	if n := storedOrders(t, db); n != 1 {
		t.Fatalf("%d orders stored, want 1", n)
	}
	if held := heldCounts(t, reg); held["rejected"] != 1 || held["admitted"] != 0 {
		t.Errorf("orders held, by outcome: %v; want the new key's alone, rejected", held)
	}
}
