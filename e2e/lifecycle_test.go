package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/eventfn/eventfn/cli"
	"github.com/eventfn/eventfn/configs"
)

// TestShutdownMidTrafficLosesNothing stops the app gracefully while orders are
// still arriving and in flight, starts a new one on the same engines, and checks
// every accepted order completes with exactly one payment and one email.
func TestShutdownMidTrafficLosesNothing(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	// A slow gateway keeps work in flight when the stop comes: slower than
	// an order's POST, or the last order accepted can be emailed before the
	// stop begins. At 30 ms, under CPU contention, a POST took longer than
	// the whole chain, and CI once found all 42 orders finished; at 200 ms,
	// 6 to 9 of 41 were unfinished in each run.
	cfg := e.config(t, func(c *configs.Config) { c.Payments.Delay = 200 * time.Millisecond })
	first := startApp(t, cfg)

	var mu sync.Mutex
	var accepted []string
	stop := make(chan struct{})
	// Four senders, so that orders arrive faster than they are charged: on
	// SQLite a charge holds the one writer for its 200 ms, and one sender's
	// next POST waited for it, so orders arrived no faster than they were
	// charged, and CI once found all 44 finished before the stop.
	var senders sync.WaitGroup
	for sender := range 4 {
		senders.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id, status, _ := first.tryPlaceOrder(fmt.Sprintf("s%d-%d@example.com", sender, i))
				if status == http.StatusCreated {
					mu.Lock()
					accepted = append(accepted, id)
					mu.Unlock()
				}
			}
		})
	}
	eventually(t, 30*time.Second, "orders accepted before the stop", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(accepted) >= 40, fmt.Sprint(len(accepted))
	})
	first.stop(t)
	close(stop)
	senders.Wait()

	mu.Lock()
	ids := append([]string(nil), accepted...)
	mu.Unlock()
	unfinished := count(t, cfg, `SELECT COUNT(*) FROM orders WHERE status <> 'emailed'`)
	if unfinished == 0 {
		t.Fatalf("all %d orders finished before the stop: the test did not stop mid-traffic", len(ids))
	}
	t.Logf("%d orders accepted, %d unfinished at the stop", len(ids), unfinished)

	second := startApp(t, cfg)
	second.waitEmailed(t, ids, 120*time.Second)
	if got := count(t, cfg, `SELECT COUNT(*) FROM payments`); got != len(ids) {
		t.Errorf("payments = %d, want %d", got, len(ids))
	}
	if got := count(t, cfg, `SELECT COUNT(*) FROM emails`); got != len(ids) {
		t.Errorf("emails = %d, want %d", got, len(ids))
	}
}

// TestZeroInfrastructureRestart runs the "local" profile that `go run .` uses:
// an embedded broker and SQLite under a data directory. A second run on the
// same directory keeps the orders and handles new ones.
func TestZeroInfrastructureRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg, err := configs.Load(configs.Options{Profile: "local", Overrides: map[string]any{
		"data_dir":      dir,
		"http.addr":     "127.0.0.1:0",
		"kafka.brokers": "127.0.0.1:0",
		"log.level":     "warn",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Kafka.Embedded || cfg.Database.URL != "" {
		t.Fatalf("local profile should use the embedded engines: %+v", cfg.Kafka)
	}
	first := startApp(t, cfg)
	if first.Broker.Embedded == nil || first.DB.Driver != "sqlite" {
		t.Fatalf("local profile did not start the embedded engines")
	}
	one := first.placeOrder(t, "one@example.com")
	first.waitEmailed(t, []string{one}, 60*time.Second)
	first.stop(t)

	second := startApp(t, cfg)
	if s := second.orderStatus(t, one); s != "emailed" {
		t.Fatalf("after restart order %s is %q, want emailed", one, s)
	}
	two := second.placeOrder(t, "two@example.com")
	second.waitEmailed(t, []string{two}, 60*time.Second)
	if got := second.Payments.Attempts("order-" + one); got != 0 {
		t.Errorf("the first order was charged again after the restart (%d attempts)", got)
	}
}

// TestCLIPublishWaitFollowsTheChain publishes through the CLI and follows the
// chain it starts, as a user does with `eventfn publish --wait`.
func TestCLIPublishWaitFollowsTheChain(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	startApp(t, cfg)
	environ := []string{
		"EVENTFN_PROFILE=test",
		"EVENTFN_KAFKA_EMBEDDED=false",
		"EVENTFN_KAFKA_BROKERS=" + strings.Join(cfg.Kafka.Brokers, ","),
		"EVENTFN_KAFKA_TOPIC_PREFIX=" + cfg.Kafka.TopicPrefix,
	}
	orderID := "cli-" + uuid.NewString()
	var out, errOut bytes.Buffer
	code := cli.Main(t.Context(), []string{"publish", "order.placed",
		`{"order_id":"` + orderID + `","customer_email":"cli@example.com","total_cents":1200}`,
		"--wait", "--quiet", "2s", "--timeout", "60s"}, strings.NewReader(""), &out, &errOut, environ)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{"published order.placed", "payment.confirmed key=\"" + orderID + "\"", "email.sent key=\"" + orderID + "\""} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	// A malformed event through the CLI is refused before it reaches Kafka.
	out.Reset()
	errOut.Reset()
	code = cli.Main(t.Context(), []string{"publish", "order.placed", `{"order_id":`}, strings.NewReader(""), &out, &errOut, environ)
	if code != 2 || !strings.Contains(errOut.String(), "not valid JSON") {
		t.Errorf("bad JSON: exit %d, stderr %q", code, errOut.String())
	}
}

// TestPublishWaitShowsTheChainInCausalOrder: `publish --wait` prints each
// event under the handler run that emitted it, and every handler run (its
// attempt, outcome and duration) under the event it handled, a retry and a
// handler that emits nothing included; indentation follows causation.
func TestPublishWaitShowsTheChainInCausalOrder(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, func(c *configs.Config) { c.Payments.FailAttempts = 1 })
	startApp(t, cfg)
	environ := []string{
		"EVENTFN_PROFILE=test",
		"EVENTFN_KAFKA_EMBEDDED=false",
		"EVENTFN_KAFKA_BROKERS=" + strings.Join(cfg.Kafka.Brokers, ","),
		"EVENTFN_KAFKA_TOPIC_PREFIX=" + cfg.Kafka.TopicPrefix,
	}
	orderID := "tree-" + uuid.NewString()
	var out, errOut bytes.Buffer
	code := cli.Main(t.Context(), []string{"publish", "order.placed",
		`{"order_id":"` + orderID + `","customer_email":"tree@example.com","total_cents":1200}`,
		"--wait", "--quiet", "2s", "--timeout", "60s"}, strings.NewReader(""), &out, &errOut, environ)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	t.Logf("publish --wait:\n%s", out.String())
	// Each line in causal order, with its depth of indentation.
	want := []struct {
		depth int
		text  string
	}{
		{1, "charge-payment attempt 1: retrying"},
		{1, "charge-payment attempt 2: ok"},
		{2, "payment.confirmed key=\"" + orderID + "\""},
		{3, "send-confirmation attempt 1: ok"},
		{4, "email.sent key=\"" + orderID + "\""},
		{5, "mark-order-emailed attempt 1: ok"},
	}
	lines := strings.Split(out.String(), "\n")
	at := 0
	for _, w := range want {
		found := false
		for ; at < len(lines); at++ {
			if strings.Contains(lines[at], w.text) {
				indent := len(lines[at]) - len(strings.TrimLeft(lines[at], " "))
				if indent != 2*w.depth {
					t.Errorf("%q is indented %d, want %d:\n%s", w.text, indent, 2*w.depth, out.String())
				}
				found = true
				at++
				break
			}
		}
		if !found {
			t.Fatalf("no %q after the lines before it:\n%s", w.text, out.String())
		}
	}
	if !strings.Contains(out.String(), "after 2 event(s) and 4 handler run(s)") {
		t.Errorf("summary:\n%s", out.String())
	}
}
