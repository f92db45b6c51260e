package router_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
)

type merchantCharge struct {
	Merchant string `json:"merchant"`
	Seq      int    `json:"seq"`
}

func (merchantCharge) EventType() string  { return "merchant.charge" }
func (c merchantCharge) EventKey() string { return c.Merchant }

// TestAnUnavailableDependencyDeadLettersNoGoodEvent: a handler whose
// dependency was down used up its event's retries in a few hundred
// milliseconds and dead-lettered a good event. An error marked
// runtime.Unavailable now waits: far past the retries, holding only its own
// key (the key's next event waits behind it, other keys go on), without a
// dead letter, without failing readiness (the HTTP API still takes
// orders), logged as one outage rather than a line per call, and counted
// while it lasts. Once the dependency answers, the key's events are handled
// in order.
func TestAnUnavailableDependencyDeadLettersNoGoodEvent(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var mu sync.Mutex
	var handled []string
	h := runtime.NewHandler("merchant-charge", func(ctx context.Context, tx runtime.Tx, ev merchantCharge) error {
		if ev.Merchant == "down" && down.Load() {
			return runtime.Unavailable(errors.New("the merchant's gateway answers 503"))
		}
		mu.Lock()
		defer mu.Unlock()
		handled = append(handled, fmt.Sprintf("%s/%d", ev.Merchant, ev.Seq))
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Timeout: time.Second}))
	tr := startRuntime(t, nil, h)
	seen := func(id string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range handled {
			if s == id {
				return true
			}
		}
		return false
	}

	tr.emit(t, merchantCharge{Merchant: "down", Seq: 1}, merchantCharge{Merchant: "down", Seq: 2})
	tr.emit(t, merchantCharge{Merchant: "up", Seq: 1})
	waitUntil(t, "the other key handled", 30*time.Second, func() bool { return seen("up/1") })
	// Ten times the event's two tries: the budget was gone long before.
	waitUntil(t, "the event to wait past its retries", 30*time.Second, func() bool {
		return tr.metric(t, "eventfn_handler_attempts_total", "handler", "merchant-charge", "result", "unavailable") >= 20
	})
	if got := tr.metric(t, "eventfn_dependency_waits_in_progress", "handler", "merchant-charge"); got != 1 {
		t.Errorf("dependency waits in progress = %v while the event waits, want 1", got)
	}
	if seen("down/2") {
		t.Fatal("the key's second event was handled before its first")
	}
	if err := tr.rt.Ready(context.Background()); err != nil {
		t.Errorf("not ready while a dependency is away: %v", err)
	}

	down.Store(false)
	waitUntil(t, "the key's events handled", 30*time.Second, func() bool { return seen("down/2") })
	mu.Lock()
	order := strings.Join(handled, " ")
	mu.Unlock()
	if !strings.Contains(order, "down/1 down/2") {
		t.Errorf("handled %s; want down/1 right before down/2", order)
	}
	if got := tr.metric(t, "eventfn_dependency_waits_in_progress", "handler", "merchant-charge"); got != 0 {
		t.Errorf("dependency waits in progress = %v after the dependency answered", got)
	}
	if n := countRecords(t, tr, tr.cfg.Kafka.DeadLetterTopic); n != 0 {
		t.Fatalf("%d events dead-lettered while the dependency was away\n%s", n, tr.logs.String())
	}

	logs := tr.logs.String()
	if n := strings.Count(logs, "level=ERROR msg=\"a dependency of the handler is unavailable"); n != 1 {
		t.Errorf("the outage was logged at ERROR %d times, want once\n%s", n, logs)
	}
	if !strings.Contains(logs, "the handler's dependency answers again") {
		t.Errorf("the end of the outage was not logged\n%s", logs)
	}
	if n := strings.Count(logs, "level=WARN msg=\"handler failed\""); n != 0 {
		t.Errorf("%d calls that found the dependency away were logged as failures", n)
	}

	// `publish --wait` reads the runs topic: the calls past the retries wait
	// for a dependency, none of them is a dead letter.
	var outcomes []string
	for _, rec := range tr.records(t, tr.cfg.Kafka.RunsTopic, 23) {
		var r router.RunRecord
		if err := json.Unmarshal(rec.Value, &r); err != nil {
			t.Fatal(err)
		}
		outcomes = append(outcomes, r.Outcome)
		if r.Outcome == router.RunDeadLettered {
			t.Errorf("run record of attempt %d of %s says %q", r.Attempt, r.EventID, r.Outcome)
		}
	}
	if !strings.Contains(strings.Join(outcomes, ","), router.RunUnavailable) {
		t.Errorf("run outcomes %v; want calls waiting for a dependency", outcomes)
	}
}
