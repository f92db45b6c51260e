package ingress_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/eventfn/eventfn/configs"
)

// TestInputThatCouldNeverReachKafkaIsRefused: what the outbox could never
// produce is refused at the edge with a clear error, and nothing is stored.
// (An outbox row over the producer's limit once stopped the relay for good.)
func TestInputThatCouldNeverReachKafkaIsRefused(t *testing.T) {
	item := func(i int) string {
		return fmt.Sprintf(`{"sku": "%s", "quantity": 1, "price_cents": 1}`, strings.Repeat("S", 60)+fmt.Sprintf("%04d", i))
	}
	var items []string
	for i := range 100 {
		items = append(items, item(i))
	}
	manyItems := `{"customer_email": "a@example.com", "items": [` + strings.Join(items, ",") + `]}`
	longEmail := `{"customer_email": "` + strings.Repeat("a", 900_000) + `@example.com", "items": [` + item(0) + `]}`
	tests := []struct {
		name        string
		body        string
		correlation string
		status      int
		says        string
	}{
		{"an email longer than SMTP carries", longEmail, "", http.StatusBadRequest, "customer_email"},
		{"a correlation id of a megabyte", manyItems, strings.Repeat("c", 1_050_000), http.StatusBadRequest, "X-Correlation-ID"},
		{"a correlation id just over the limit", `{"customer_email": "a@example.com", "items": [` + item(0) + `]}`, strings.Repeat("c", 257), http.StatusBadRequest, "at most 256"},
		{"a correlation id that is not UTF-8", `{"customer_email": "a@example.com", "items": [` + item(0) + `]}`, "c\xff\xfe", http.StatusBadRequest, "not valid UTF-8"},
		{"a correlation id with a tab", `{"customer_email": "a@example.com", "items": [` + item(0) + `]}`, "a\tb", http.StatusBadRequest, "control character"},
		{"an event larger than kafka.max_message_bytes", manyItems, "", http.StatusUnprocessableEntity, "kafka.max_message_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, db, outbox := newServerWith(t, 1<<20, func(c *configs.Config) { c.Kafka.MaxMessageBytes = 8192 })
			req, err := http.NewRequest(http.MethodPost, srv.URL+"/orders", strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.correlation != "" {
				req.Header.Set("X-Correlation-ID", tt.correlation)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status || !strings.Contains(string(body), tt.says) {
				t.Fatalf("status %d, body %.300s; want %d naming %q", resp.StatusCode, body, tt.status, tt.says)
			}
			var orders int
			if err := db.Read.QueryRow(`SELECT COUNT(*) FROM orders`).Scan(&orders); err != nil || orders != 0 {
				t.Errorf("orders stored: %d (%v), want none", orders, err)
			}
			if n, err := outbox.Pending(context.Background()); err != nil || n != 0 {
				t.Errorf("outbox holds %d rows (%v), want none", n, err)
			}
		})
	}
	// The same order within the limit is taken.
	srv, db, _ := newServer(t, 1<<20)
	status, out := post(t, srv.URL, manyItems)
	if status != http.StatusCreated {
		t.Fatalf("an order of 100 items within the default limit: status %d %v", status, out)
	}
	// All of them stored, each on its line (they go in one statement).
	rows, err := db.Read.Query(`SELECT line, sku FROM order_items WHERE order_id = $1 ORDER BY line`, out["id"])
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for ; rows.Next(); n++ {
		var line int
		var sku string
		if err := rows.Scan(&line, &sku); err != nil {
			t.Fatal(err)
		}
		if want := strings.Repeat("S", 60) + fmt.Sprintf("%04d", n); line != n || sku != want {
			t.Fatalf("item on line %d is %s, want line %d %s", line, sku, n, want)
		}
	}
	if err := rows.Err(); err != nil || n != 100 {
		t.Fatalf("%d items stored (%v), want 100", n, err)
	}
}
