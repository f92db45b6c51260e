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
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/store"
)

// newServer serves the API over a real database and outbox: PostgreSQL when
// the environment names one, SQLite otherwise.
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
	db, cfg := openStore(t, testStore(t))
	edit(&cfg)
	outbox := router.NewOutbox(db, cfg, watermill.NopLogger{})
	ready := func(context.Context) error { return nil }
	srv := httptest.NewUnstartedServer(ingress.NewServer(outbox, db.Read, ready, http.NotFoundHandler(), maxBody, slog.New(slog.DiscardHandler), opts...).Handler())
	t.Cleanup(srv.Close)
	return srv, db, outbox
}

// testStore names a database of the test's own: PostgreSQL when the
// environment names one, SQLite otherwise.
func testStore(t *testing.T) store.Config {
	t.Helper()
	if u := testenv.DatabaseURL(); u != "" {
		return store.Config{Driver: store.Postgres, URL: testenv.PostgresSchema(t, u), MaxOpenConns: 4}
	}
	return store.Config{Driver: store.SQLite, SQLitePath: filepath.Join(t.TempDir(), "api.db")}
}

// openStore opens and migrates the database sc names, closed when the test
// ends, with the test profile's configuration.
func openStore(t *testing.T, sc store.Config) (*store.DB, configs.Config) {
	t.Helper()
	db, err := store.Open(context.Background(), sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return db, cfg
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
		// PostgreSQL refuses a NUL in text: that was a 500, logged as an outage.
		{"NUL in sku", `{"customer_email":"a@example.com","items":[{"sku":"A\u0000B","quantity":1,"price_cents":1}]}`, 400, "items[0].sku"},
		{"escape in sku", `{"customer_email":"a@example.com","items":[{"sku":"\u001b[31mA","quantity":1,"price_cents":1}]}`, 400, "items[0].sku"},
		{"sku of 65 characters", `{"customer_email":"a@example.com","items":[{"sku":"` + strings.Repeat("é", 65) + `","quantity":1,"price_cents":1}]}`, 400, "items[0].sku"},
		// encoding/json stops after the first value: these were stored.
		{"data after the order", `{"customer_email":"a@example.com","items":[{"sku":"a","quantity":1,"price_cents":1}]}x`, 400, ""},
		{"two orders", `{"customer_email":"a@example.com","items":[{"sku":"a","quantity":1,"price_cents":1}]} {"customer_email":"b@example.com","items":[{"sku":"b","quantity":9,"price_cents":9}]}`, 400, ""},
		{"data after the order past the limit", `{"customer_email":"a@example.com","items":[{"sku":"a","quantity":1,"price_cents":1}]}` + strings.Repeat(" ", 600) + "x", 413, ""},
		// encoding/json takes the last of repeated keys, whatever their case.
		{"a key twice", `{"customer_email":"a@example.com","customer_email":"b@example.com","items":[{"sku":"a","quantity":1,"price_cents":1}]}`, 400, "customer_email"},
		{"a key twice in another case", `{"customer_email":"a@example.com","items":[{"sku":"a","quantity":1,"Quantity":10000,"price_cents":1}]}`, 400, "Quantity"},
		{"nested too deep", `{"customer_email":"a@example.com","items":[{"sku":"a","quantity":1,"price_cents":1}],"x":` + strings.Repeat("[", 40) + `}`, 400, ""},
		{"a key twice, folded", `{"customer_email":"a@example.com","items":[{"sku":"a","quantity":1,"price_cents":1}],"ITEMS":[]}`, 400, "ITEMS"},
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
	// Ids no order has, some PostgreSQL cannot compare (a 500 before).
	for _, id := range []string{"does-not-exist", "%00", "a%00b", "%FF", "%C3%28", strings.Repeat("x", 5000)} {
		resp, err := http.Get(srv.URL + "/orders/" + id)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET /orders/%.20s: status %d, want 404", id, resp.StatusCode)
		}
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

// TestASKUIsCountedInCharacters: the limit says characters, and a SKU of 64
// two-byte characters (128 bytes) was refused.
func TestASKUIsCountedInCharacters(t *testing.T) {
	srv, _, _ := newServer(t, 1<<20)
	status, out := post(t, srv.URL, `{"customer_email":"a@example.com","items":[{"sku":"`+strings.Repeat("é", 64)+`","quantity":1,"price_cents":1}]}`)
	if status != http.StatusCreated {
		t.Fatalf("status %d, want 201: %v", status, out)
	}
}
