package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/uuid"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router"
)

// TestManyOrdersReachEmailed drives orders through HTTP and the whole chain:
// order.placed -> payment.confirmed -> email.sent, each exactly once.
func TestManyOrdersReachEmailed(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	a := startApp(t, cfg)

	const orders = 60
	ids := make([]string, orders)
	var wg sync.WaitGroup
	errs := make(chan string, orders)
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < orders; i += 6 {
				id, status, body := a.tryPlaceOrder(fmt.Sprintf("c%d@example.com", i))
				if status != http.StatusCreated {
					errs <- fmt.Sprintf("order %d: %d %s", i, status, body)
					continue
				}
				ids[i] = id
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	a.waitEmailed(t, ids, 90*time.Second)

	if got := count(t, cfg, `SELECT COUNT(*) FROM payments`); got != orders {
		t.Errorf("payments = %d, want %d", got, orders)
	}
	if got := count(t, cfg, `SELECT COUNT(*) FROM emails`); got != orders {
		t.Errorf("emails = %d, want %d", got, orders)
	}
	if got := a.Payments.Charges(); got != orders {
		t.Errorf("gateway charges = %d, want %d", got, orders)
	}
	if got := a.Mailer.Count(); got != orders {
		t.Errorf("emails sent = %d, want %d", got, orders)
	}
	// /metrics reflects the traffic.
	metrics := a.get(t, "/metrics")
	for _, want := range []string{
		fmt.Sprintf(`eventfn_handler_attempts_total{handler="charge-payment",result="ok"} %d`, orders),
		fmt.Sprintf(`eventfn_handler_attempts_total{handler="mark-order-emailed",result="ok"} %d`, orders),
		"eventfn_outbox_pending 0",
		`eventfn_watermill_handler_execution_time_seconds_count{handler_name="send-confirmation",success="true"}`,
		"go_goroutines",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Every emitted event carries the CloudEvents binary-mode headers and the order id as key.
	client := kafkaClient(t, cfg)
	recs := readAll(t, client, cfg.Kafka.Topic("payment.confirmed"), orders, 30*time.Second, nil)
	for _, m := range recs[:3] {
		for _, h := range []string{router.HeaderID, router.HeaderType, router.HeaderSource, router.HeaderSpecVersion, router.HeaderTime, router.HeaderContentType, router.HeaderCorrelationID} {
			if header(m, h) == "" {
				t.Errorf("payment.confirmed record lacks header %s: %v", h, m.Headers)
			}
		}
		if header(m, router.HeaderType) != "payment.confirmed" || header(m, router.HeaderSpecVersion) != "1.0" {
			t.Errorf("headers: type %q specversion %q", header(m, router.HeaderType), header(m, router.HeaderSpecVersion))
		}
		if !strings.Contains(string(m.Value), string(m.Key)) || len(m.Key) == 0 {
			t.Errorf("key %q is not the order id of %s", m.Key, m.Value)
		}
	}
}

// TestSameEventTwiceHasOneEffect delivers one event (one ce_id) twice: the
// second delivery must be acknowledged without charging or emitting again.
func TestSameEventTwiceHasOneEffect(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	a := startApp(t, cfg)
	client := kafkaClient(t, cfg)

	orderID := "dup-" + uuid.NewString()
	eventID := uuid.NewString()
	payload := []byte(`{"order_id":"` + orderID + `","customer_email":"dup@example.com","total_cents":999}`)
	headers := map[string]string{
		router.HeaderID: eventID, router.HeaderType: "order.placed", router.HeaderSource: "test",
		router.HeaderSpecVersion: "1.0", router.HeaderContentType: "application/json",
	}
	topic := cfg.Kafka.Topic("order.placed")
	p1, o1 := produce(t, client, topic, []byte(orderID), payload, headers)
	p2, o2 := produce(t, client, topic, []byte(orderID), payload, headers)
	if p1 != p2 {
		t.Fatalf("same key went to partitions %d and %d", p1, p2)
	}
	group := cfg.Kafka.Group("charge-payment")
	eventually(t, 60*time.Second, "both deliveries consumed", func() (bool, string) {
		off := committedOffset(t, cfg, group, topic, p1)
		return off > o2, fmt.Sprintf("committed %d, second delivery at %d (first %d)", off, o2, o1)
	})
	// The downstream effects of the one processed delivery complete too.
	eventually(t, 60*time.Second, "email recorded", func() (bool, string) {
		n := count(t, cfg, `SELECT COUNT(*) FROM emails WHERE order_id = $1`, orderID)
		return n == 1, fmt.Sprintf("%d emails", n)
	})
	if got := a.Payments.Attempts("order-" + orderID); got != 1 {
		t.Errorf("gateway saw %d charge attempts, want 1", got)
	}
	if got := count(t, cfg, `SELECT COUNT(*) FROM payments WHERE order_id = $1`, orderID); got != 1 {
		t.Errorf("payments = %d, want 1", got)
	}
	if got := count(t, cfg, `SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'charge-payment' AND event_id = $1`, eventID); got != 1 {
		t.Errorf("inbox rows = %d, want 1", got)
	}
	confirmed := readAll(t, client, cfg.Kafka.Topic("payment.confirmed"), 1, 30*time.Second, func(m *sarama.ConsumerMessage) bool {
		return string(m.Key) == orderID
	})
	if len(confirmed) != 1 {
		t.Errorf("payment.confirmed emitted %d times, want 1", len(confirmed))
	}
	if got := header(confirmed[0], router.HeaderCorrelationID); got != eventID {
		t.Errorf("correlation id %q, want the first event's id %q", got, eventID)
	}
	if m := a.get(t, "/metrics"); !strings.Contains(m, `eventfn_inbox_duplicates_total{handler="charge-payment"} 1`) {
		t.Error("/metrics does not count the duplicate delivery")
	}
}

// TestFailingTwiceThenSucceedingIsRetried: the gateway fails the first two
// charges of every order; the handler is retried and the order completes.
func TestFailingTwiceThenSucceedingIsRetried(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, func(c *configs.Config) { c.Payments.FailAttempts = 2 })
	a := startApp(t, cfg)
	id := a.placeOrder(t, "retry@example.com")
	a.waitEmailed(t, []string{id}, 60*time.Second)
	if got := a.Payments.Attempts("order-" + id); got != 3 {
		t.Errorf("charge attempts = %d, want 3 (two failures, one success)", got)
	}
	if got := count(t, cfg, `SELECT COUNT(*) FROM payments WHERE order_id = $1`, id); got != 1 {
		t.Errorf("payments = %d, want 1", got)
	}
}

// TestEventThatKeepsFailingIsDeadLettered: a handler that fails past its retry
// budget moves the event to the dead-letter topic with the attempt count.
func TestEventThatKeepsFailingIsDeadLettered(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	two := 2
	cfg := e.config(t, func(c *configs.Config) {
		c.Payments.FailAttempts = 1000
		p := c.Handlers["charge-payment"]
		p.MaxRetries = &two
		c.Handlers["charge-payment"] = p
	})
	a := startApp(t, cfg)
	id := a.placeOrder(t, "doomed@example.com")
	client := kafkaClient(t, cfg)
	dead := readAll(t, client, cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic), 1, 60*time.Second, func(m *sarama.ConsumerMessage) bool {
		return string(m.Key) == id
	})
	m := dead[0]
	if got := header(m, router.HeaderAttempts); got != "3" {
		t.Errorf("attempts header = %q, want 3 (1 call + 2 retries)", got)
	}
	if got := header(m, router.HeaderDeadLetterReason); !strings.Contains(got, "payment gateway failed the charge") {
		t.Errorf("reason = %q", got)
	}
	if got := header(m, router.HeaderDeadLetterHandler); got != "charge-payment" {
		t.Errorf("handler = %q", got)
	}
	if got := a.Payments.Attempts("order-" + id); got != 3 {
		t.Errorf("gateway attempts = %d, want 3", got)
	}
	if s := a.orderStatus(t, id); s != "placed" {
		t.Errorf("order status = %q, want placed", s)
	}
	metrics := a.get(t, "/metrics")
	for _, want := range []string{
		`eventfn_dead_lettered_total{handler="charge-payment"} 1`,
		`eventfn_handler_attempts_total{handler="charge-payment",result="error"} 3`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestMalformedEventsAreDeadLetteredAndTrafficFlows sends events no handler can
// decode, then a good order: each bad one lands in the dead-letter topic with
// its payload, key, headers and reason, at once (no retries), and the good order
// completes behind them.
func TestMalformedEventsAreDeadLetteredAndTrafficFlows(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	a := startApp(t, cfg)
	client := kafkaClient(t, cfg)
	topic := cfg.Kafka.Topic("order.placed")

	cases := []struct {
		name    string
		payload string
		ce      bool // carries CloudEvents headers
		reason  string
	}{
		{"truncated JSON", `{"order_id":`, true, "unexpected EOF"},
		{"wrong type", `{"order_id": 42, "customer_email": "a@example.com"}`, true, "cannot unmarshal number"},
		{"missing fields", `{"customer_email": "a@example.com"}`, true, "order_id is required"},
		{"not JSON at all", "\x00\x01binary", false, "invalid character"},
		{"empty", ``, false, "empty payload"},
		{"trailing data", `{"order_id":"x","customer_email":"a@example.com"} {}`, true, "trailing data"},
	}
	sent := map[string]struct {
		partition int32
		offset    int64
		payload   string
		reason    string
	}{}
	for i, c := range cases {
		key := fmt.Sprintf("bad-%d-%s", i, uuid.NewString())
		h := map[string]string{"x-test-case": c.name}
		if c.ce {
			h[router.HeaderID] = uuid.NewString()
			h[router.HeaderType] = "order.placed"
			h[router.HeaderSpecVersion] = "1.0"
		}
		p, o := produce(t, client, topic, []byte(key), []byte(c.payload), h)
		sent[key] = struct {
			partition int32
			offset    int64
			payload   string
			reason    string
		}{p, o, c.payload, c.reason}
	}
	good := a.placeOrder(t, "fine@example.com")
	a.waitEmailed(t, []string{good}, 60*time.Second)

	dead := readAll(t, client, cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic), len(cases), 60*time.Second, func(m *sarama.ConsumerMessage) bool {
		_, ok := sent[string(m.Key)]
		return ok
	})
	if len(dead) != len(cases) {
		t.Fatalf("dead-lettered %d, want %d", len(dead), len(cases))
	}
	for _, m := range dead {
		want := sent[string(m.Key)]
		name := header(m, "x-test-case")
		t.Run(name, func(t *testing.T) {
			if string(m.Value) != want.payload {
				t.Errorf("payload %q, want %q", m.Value, want.payload)
			}
			if got := header(m, router.HeaderDeadLetterReason); !strings.Contains(got, want.reason) {
				t.Errorf("reason %q does not mention %q", got, want.reason)
			}
			if got := header(m, router.HeaderAttempts); got != "1" {
				t.Errorf("attempts %q, want 1: a payload error is permanent", got)
			}
			if got := header(m, router.HeaderDeadLetterHandler); got != "charge-payment" {
				t.Errorf("handler %q", got)
			}
			if header(m, router.HeaderOriginTopic) != topic ||
				header(m, router.HeaderOriginPartition) != strconv.Itoa(int(want.partition)) ||
				header(m, router.HeaderOriginOffset) != strconv.FormatInt(want.offset, 10) {
				t.Errorf("origin %s/%s/%s, want %s/%d/%d", header(m, router.HeaderOriginTopic),
					header(m, router.HeaderOriginPartition), header(m, router.HeaderOriginOffset), topic, want.partition, want.offset)
			}
		})
	}
}

// TestAnOrderWhoseAnswerWasLostIsSentAgainAndChargedOnce: clients that give
// up before their answer (a timeout shorter than the order's transaction)
// cannot tell whether their order was stored. They send it again with the
// same Idempotency-Key until one request is answered. Each key makes one
// order, charged and emailed once, and a request sent again later gets that
// order as it is now.
func TestAnOrderWhoseAnswerWasLostIsSentAgainAndChargedOnce(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	a := startApp(t, cfg)

	const orders = 20
	body := `{"customer_email": "lost@example.com", "items": [{"sku": "SKU-1", "quantity": 1, "price_cents": 700}]}`
	send := func(client *http.Client, key string) (*http.Response, error) {
		req, err := http.NewRequest(http.MethodPost, a.base+"/orders", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Idempotency-Key", key)
		return client.Do(req)
	}
	// Gives up before any answer: whether its order was stored is what
	// the test does not know, as such a client does not.
	impatient := &http.Client{Timeout: time.Millisecond}
	keys := make([]string, orders)
	ids := make([]string, orders)
	replayed := 0 // orders the impatient request had stored
	for i := range keys {
		keys[i] = fmt.Sprintf("lost-%d-%s", i, uuid.NewString())
		if resp, err := send(impatient, keys[i]); err == nil {
			resp.Body.Close()
		}
		eventually(t, 30*time.Second, "the order sent again answered", func() (bool, string) {
			resp, err := send(http.DefaultClient, keys[i])
			if err != nil {
				return false, err.Error()
			}
			defer resp.Body.Close()
			var out struct {
				ID string `json:"id"`
			}
			raw, _ := io.ReadAll(resp.Body)
			switch resp.StatusCode {
			case http.StatusCreated:
				if resp.Header.Get("Idempotent-Replayed") == "true" {
					replayed++
				}
				_ = json.Unmarshal(raw, &out)
				ids[i] = out.ID
				return out.ID != "", string(raw)
			case http.StatusConflict: // its first request is being stored
				return false, string(raw)
			}
			t.Fatalf("order %d sent again: %d %s", i, resp.StatusCode, raw)
			return false, ""
		})
	}
	t.Logf("%d of %d orders were stored by the request whose answer was lost", replayed, orders)
	a.waitEmailed(t, ids, 60*time.Second)
	if n := count(t, cfg, `SELECT COUNT(*) FROM orders WHERE idempotency_key LIKE 'lost-%'`); n != orders {
		t.Errorf("%d orders stored for %d keys, want one each", n, orders)
	}
	if n := count(t, cfg, `SELECT COUNT(*) FROM orders`); n != orders {
		t.Errorf("%d orders stored in all, want %d", n, orders)
	}
	if got := a.Payments.Charges(); got != orders {
		t.Errorf("the gateway charged %d times for %d orders", got, orders)
	}
	if n := count(t, cfg, `SELECT COUNT(*) FROM emails`); n != orders {
		t.Errorf("%d emails for %d orders", n, orders)
	}

	resp, err := send(http.DefaultClient, keys[0])
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var later struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&later)
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("Idempotent-Replayed") != "true" || later.ID != ids[0] || later.Status != "emailed" {
		t.Errorf("sent once more after it was emailed: %d, replayed %q, %+v; want 201, true, order %s emailed",
			resp.StatusCode, resp.Header.Get("Idempotent-Replayed"), later, ids[0])
	}
}
