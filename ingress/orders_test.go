package ingress_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/ingress"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/store"
)

// newServer serves the API over a real SQLite database and outbox.
func newServer(t *testing.T, maxBody int64) (*httptest.Server, *store.DB, *router.Outbox) {
	t.Helper()
	return newServerWith(t, maxBody, func(*configs.Config) {})
}

// newServerWith is newServer with the configuration changed by edit first.
func newServerWith(t *testing.T, maxBody int64, edit func(*configs.Config)) (*httptest.Server, *store.DB, *router.Outbox) {
	t.Helper()
	srv, db, outbox := newUnstartedServer(t, maxBody, edit)
	srv.Start()
	return srv, db, outbox
}

// newUnstartedServer is newServerWith before Start, for a test that sets the
// HTTP server's own limits first.
func newUnstartedServer(t *testing.T, maxBody int64, edit func(*configs.Config), opts ...ingress.ServerOption) (*httptest.Server, *store.DB, *router.Outbox) {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, store.Config{Driver: store.SQLite, SQLitePath: filepath.Join(t.TempDir(), "api.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	edit(&cfg)
	outbox := router.NewOutbox(db, cfg, watermill.NopLogger{})
	ready := func(context.Context) error { return nil }
	srv := httptest.NewUnstartedServer(ingress.NewServer(outbox, db.Read, ready, http.NotFoundHandler(), maxBody, slog.New(slog.DiscardHandler), opts...).Handler())
	t.Cleanup(srv.Close)
	return srv, db, outbox
}

func post(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url+"/orders", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func TestCreateOrderWritesOrderAndEventTogether(t *testing.T) {
	srv, db, outbox := newServer(t, 1<<20)
	status, out := post(t, srv.URL, `{"customer_email": "a@example.com", "items": [{"sku": "SKU-1", "quantity": 2, "price_cents": 1250}]}`)
	if status != http.StatusCreated {
		t.Fatalf("status %d: %v", status, out)
	}
	if out["status"] != "placed" || out["total_cents"] != float64(2500) || out["id"] == "" {
		t.Errorf("body %v", out)
	}
	if n, err := outbox.Pending(context.Background()); err != nil || n != 1 {
		t.Errorf("outbox holds %d events (%v), want the one order.placed", n, err)
	}
	var orders int
	if err := db.Read.QueryRow(`SELECT COUNT(*) FROM orders`).Scan(&orders); err != nil || orders != 1 {
		t.Errorf("orders = %d (%v)", orders, err)
	}

	resp, err := http.Get(srv.URL + "/orders/" + out["id"].(string))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&got)
	if resp.StatusCode != http.StatusOK || got["status"] != "placed" || len(got["items"].([]any)) != 1 {
		t.Errorf("GET: %d %v", resp.StatusCode, got)
	}
}

func TestBadOrdersAreRefusedNamingTheField(t *testing.T) {
	srv, db, outbox := newServer(t, 512)
	cases := []struct {
		name, body string
		status     int
		field      string
	}{
		{"not JSON", `{`, 400, ""},
		{"missing email", `{"items":[{"sku":"a","quantity":1,"price_cents":1}]}`, 400, "customer_email"},
		{"bad email", `{"customer_email":"nope","items":[{"sku":"a","quantity":1,"price_cents":1}]}`, 400, "customer_email"},
		{"no items", `{"customer_email":"a@example.com","items":[]}`, 400, "items"},
		{"zero quantity", `{"customer_email":"a@example.com","items":[{"sku":"a","quantity":0,"price_cents":1}]}`, 400, "items[0].quantity"},
		{"negative price", `{"customer_email":"a@example.com","items":[{"sku":"a","quantity":1,"price_cents":1},{"sku":"b","quantity":1,"price_cents":-1}]}`, 400, "items[1].price_cents"},
		{"empty sku", `{"customer_email":"a@example.com","items":[{"sku":" ","quantity":1,"price_cents":1}]}`, 400, "items[0].sku"},
		{"wrong type", `{"customer_email":"a@example.com","items":[{"sku":"a","quantity":"two","price_cents":1}]}`, 400, "items.quantity"},
		{"unknown field", `{"customer_email":"a@example.com","itemz":[]}`, 400, "itemz"},
		{"too large", `{"customer_email":"a@example.com","items":[{"sku":"` + strings.Repeat("x", 600) + `","quantity":1,"price_cents":1}]}`, 413, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, out := post(t, srv.URL, c.body)
			if status != c.status {
				t.Fatalf("status %d, want %d: %v", status, c.status, out)
			}
			if out["error"] == nil || out["error"] == "" {
				t.Errorf("no error message: %v", out)
			}
			if c.field != "" && out["field"] != c.field {
				t.Errorf("field %v, want %s", out["field"], c.field)
			}
		})
	}
	// Nothing was written for any refused order.
	var orders int
	if err := db.Read.QueryRow(`SELECT COUNT(*) FROM orders`).Scan(&orders); err != nil || orders != 0 {
		t.Errorf("orders = %d (%v)", orders, err)
	}
	if n, _ := outbox.Pending(context.Background()); n != 0 {
		t.Errorf("outbox holds %d events after refused orders", n)
	}
}

func TestUnknownOrderIs404(t *testing.T) {
	srv, _, _ := newServer(t, 1<<20)
	resp, err := http.Get(srv.URL + "/orders/does-not-exist")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
	}
}
