package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
)

// TestOrdersAreHeldWhileTheHandlersAreBehind drives the whole process: with
// every charge taking 5 s and http.max_backlog 3, orders are taken until the
// charge-payment handler has 3 events in hand; the next is held and answered
// 503 with Retry-After, not stored. Once the charges complete, orders are
// taken again, and every order that was taken reaches emailed.
func TestOrdersAreHeldWhileTheHandlersAreBehind(t *testing.T) {
	e := newEngines(t)
	cfg := e.config(t, func(c *configs.Config) {
		c.Payments.Delay = 5 * time.Second
		c.HTTP.MaxBacklog = 3
		c.HTTP.BacklogWait = 300 * time.Millisecond
	})
	a := startApp(t, cfg)

	body, _ := json.Marshal(map[string]any{"customer_email": "held@example.com",
		"items": []map[string]any{{"sku": "SKU-1", "quantity": 1, "price_cents": 100}}})
	post := func() (status int, retryAfter string, answer string, id string) {
		resp, err := http.Post(a.base+"/orders", "application/json", bytes.NewReader(body))
		if err != nil {
			return 0, "", err.Error(), "" // in a burst's goroutine: no t.Fatal
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out struct {
			ID    string `json:"id"`
			Error string `json:"error"`
		}
		_ = json.Unmarshal(raw, &out)
		if out.Error != "" {
			return resp.StatusCode, resp.Header.Get("Retry-After"), out.Error, ""
		}
		return resp.StatusCode, resp.Header.Get("Retry-After"), string(raw), out.ID
	}

	var taken []string
	var rejection string
	// Orders go in bursts of four at once. On SQLite a charge holds the one
	// writer for its 5 s, and orders posted one after another got in one per
	// charge, as fast as the charges drained them: the backlog never grew.
	// Posted together, they wait for the writer together.
	const burst = 4
	eventually(t, 60*time.Second, "an order answered 503 while the charges are slow", func() (bool, string) {
		type answer struct {
			status               int
			retryAfter, text, id string
		}
		answers := make(chan answer, burst)
		for range burst {
			go func() {
				status, retryAfter, text, id := post()
				answers <- answer{status, retryAfter, text, id}
			}()
		}
		refused := false
		for range burst {
			got := <-answers
			switch got.status {
			case http.StatusCreated:
				taken = append(taken, got.id)
			case http.StatusServiceUnavailable:
				if got.retryAfter != "1" {
					t.Errorf("Retry-After %q, want 1", got.retryAfter)
				}
				rejection, refused = got.text, true
			default:
				t.Errorf("POST /orders: %d %s", got.status, got.text)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		return refused, fmt.Sprintf("%d orders taken", len(taken))
	})
	if len(taken) < 3 {
		t.Errorf("only %d orders taken before the first 503, want at least http.max_backlog (3)", len(taken))
	}
	for _, want := range []string{"http.max_backlog 3", "not stored"} {
		if !strings.Contains(rejection, want) {
			t.Errorf("503 says %q, want it to mention %q", rejection, want)
		}
	}
	if got := count(t, cfg, `SELECT COUNT(*) FROM orders`); got != len(taken) {
		t.Errorf("%d orders stored, want the %d taken (a refused order is not stored)", got, len(taken))
	}
	if n := sum(a.scrape(t), "eventfn_http_orders_held_total", "outcome", "rejected"); n < 1 {
		t.Errorf("eventfn_http_orders_held_total{outcome=\"rejected\"} = %v, want the rejected order counted", n)
	}

	// The charges complete: orders are taken again, and none is lost.
	eventually(t, 60*time.Second, "an order taken again once the handlers caught up", func() (bool, string) {
		status, _, answer, id := post()
		if status == http.StatusCreated {
			taken = append(taken, id)
			return true, ""
		}
		return false, fmt.Sprintf("%d %s", status, answer)
	})
	a.waitEmailed(t, taken, 120*time.Second)
}
