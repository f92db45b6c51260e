package ingress_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/ingress"
	"github.com/eventfn/eventfn/store"
)

const anOrder = `{"customer_email": "a@example.com", "items": [{"sku": "SKU-1", "quantity": 1, "price_cents": 100}]}`

// heldServer serves the API over a real SQLite database, holding orders while
// backlog reports limit or more events, for up to wait.
func heldServer(t *testing.T, backlog func() int64, limit int64, wait time.Duration) (*httptest.Server, *store.DB, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	bp, err := ingress.NewBackpressure(backlog, limit, wait, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv, db, _ := newUnstartedServer(t, 1<<20, func(*configs.Config) {}, ingress.WithBackpressure(bp))
	srv.Start()
	return srv, db, reg
}

func storedOrders(t *testing.T, db *store.DB) int {
	t.Helper()
	var n int
	if err := db.Read.QueryRow(`SELECT COUNT(*) FROM orders`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// heldCounts reads eventfn_http_orders_held_total, the registry's only
// family, by outcome.
func heldCounts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 {
		t.Fatalf("%d metric families, want eventfn_http_orders_held_total alone", len(mfs))
	}
	out := map[string]float64{}
	for _, m := range mfs[0].GetMetric() {
		out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
	}
	return out
}

// TestOrdersAreHeldWhileTheHandlersAreBehind: an order is taken at once below
// the limit, or with a limit of 0; held and then taken when the backlog falls
// within the wait; and answered 503 with Retry-After, and not stored, when it
// does not. Each held order is counted by its outcome.
func TestOrdersAreHeldWhileTheHandlersAreBehind(t *testing.T) {
	tests := []struct {
		name string
		// backlog is what the handlers report on each look: the i-th look
		// gets backlog(i).
		backlog      func(look int64) int64
		limit        int64
		wait         time.Duration
		status       int
		stored       int
		held         float64 // outcome "admitted"
		rejected     float64
		errorMention string
	}{
		{"below the limit", func(int64) int64 { return 4 }, 5, time.Minute, http.StatusCreated, 1, 0, 0, ""},
		{"no limit", func(int64) int64 { return 1 << 40 }, 0, time.Minute, http.StatusCreated, 1, 0, 0, ""},
		{"falls below within the wait", func(look int64) int64 {
			if look < 4 {
				return 5
			}
			return 4
		}, 5, time.Minute, http.StatusCreated, 1, 1, 0, ""},
		{"stays at the limit", func(int64) int64 { return 5 }, 5, 100 * time.Millisecond, http.StatusServiceUnavailable, 0, 0, 1, "http.max_backlog 5"},
		{"no wait", func(int64) int64 { return 9 }, 5, 0, http.StatusServiceUnavailable, 0, 0, 1, "9 events waiting"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var looks atomic.Int64
			srv, db, reg := heldServer(t, func() int64 { return tt.backlog(looks.Add(1) - 1) }, tt.limit, tt.wait)
			resp, err := http.Post(srv.URL+"/orders", "application/json", strings.NewReader(anOrder))
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, raw)
			}
			if tt.status == http.StatusServiceUnavailable {
				if got := resp.Header.Get("Retry-After"); got != "1" {
					t.Errorf("Retry-After %q, want 1", got)
				}
				var body map[string]string
				if err := json.Unmarshal(raw, &body); err != nil || !strings.Contains(body["error"], tt.errorMention) || !strings.Contains(body["error"], "not stored") {
					t.Errorf("error %q (%v), want it to say %q and that the order was not stored", body["error"], err, tt.errorMention)
				}
			}
			if n := storedOrders(t, db); n != tt.stored {
				t.Errorf("%d orders stored, want %d", n, tt.stored)
			}
			want := map[string]float64{"admitted": tt.held, "rejected": tt.rejected, "abandoned": 0}
			if tt.limit == 0 {
				return // nothing is held, and nothing looks at the backlog
			}
			for outcome, got := range heldCounts(t, reg) {
				if got != want[outcome] {
					t.Errorf("held %s = %v, want %v", outcome, got, want[outcome])
				}
			}
		})
	}
}

// TestAnOrderAbandonedWhileHeldIsNotStored: a client that gives up while its
// order is held leaves nothing behind, and is counted as abandoned.
func TestAnOrderAbandonedWhileHeldIsNotStored(t *testing.T) {
	var looks atomic.Int64
	srv, db, reg := heldServer(t, func() int64 { looks.Add(1); return 10 }, 5, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/orders", strings.NewReader(anOrder))
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = errors.New("answered " + resp.Status)
		}
		errs <- err
	}()
	// Held: it has looked at the backlog, found it full, and looked again.
	deadline := time.Now().Add(30 * time.Second)
	for looks.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatal("the order was never held")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Fatalf("client: %v, want its own cancellation", err)
	}
	abandoned := func() float64 { return heldCounts(t, reg)["abandoned"] }
	for abandoned() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("abandoned = %v, want 1", abandoned())
		}
		time.Sleep(time.Millisecond)
	}
	if n := storedOrders(t, db); n != 0 {
		t.Errorf("%d orders stored, want none", n)
	}
}
