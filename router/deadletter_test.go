package router_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventfn/eventfn/runtime"
)

type signup struct {
	Key   string `json:"key"`
	Email string `json:"email"`
}

func (signup) EventType() string  { return "signup.requested" }
func (s signup) EventKey() string { return s.Key }
func (s signup) Validate() error {
	if !strings.Contains(s.Email, "@") {
		return fmt.Errorf("email %q is not an address", s.Email)
	}
	return nil
}

// TestADeadLetterAlwaysFitsAndIsCountedOnceWritten: an invalid 600 KB field
// quoted in the reason once made a 1.2 MB dead letter the broker refused; the
// event was redelivered every 100 ms for ever, the valid event behind it on
// the same key never ran, and the dead-letter counter counted every attempt.
func TestADeadLetterAlwaysFitsAndIsCountedOnceWritten(t *testing.T) {
	var mu sync.Mutex
	var handled []string
	h := runtime.NewHandler("signup", func(ctx context.Context, tx runtime.Tx, ev signup) error {
		mu.Lock()
		handled = append(handled, ev.Email)
		mu.Unlock()
		return nil
	})
	tr := startRuntime(t, nil, h)
	huge := strings.Repeat("x", 600_000)
	produceEvent(t, tr, signup{Key: "k", Email: huge})
	produceEvent(t, tr, signup{Key: "k", Email: "ok@example.com"})
	waitUntil(t, "the valid event behind it handled", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == 1
	})
	dead := tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 1)
	if len(dead[0].Value) != len(`{"key":"k","email":""}`)+len(huge) {
		t.Fatalf("the dead letter's payload is %d bytes, want it whole", len(dead[0].Value))
	}
	var reason string
	for _, hd := range dead[0].Headers {
		if hd.Key == "reason_poisoned" {
			reason = string(hd.Value)
		}
	}
	if len(reason) > 4096 || !strings.Contains(reason, "is not an address") || !strings.Contains(reason, "cut") {
		t.Fatalf("reason of %d bytes: %.200s", len(reason), reason)
	}
	if got := tr.metric(t, "eventfn_dead_lettered_total", "handler", "signup"); got != 1 {
		t.Fatalf("eventfn_dead_lettered_total = %v, want 1", got)
	}
}
