package router_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/runtime"
)

type replayed struct {
	ID string `json:"id"`
}

func (replayed) EventType() string  { return "replayed.event" }
func (r replayed) EventKey() string { return r.ID }

// TestAReplayedDeadLetterStartsAtAttemptOne: a dead letter sent back to its
// topic carried eventfn_attempts, and its attempt number went on from the old
// count (attempt=429361 was seen). Its eventfn_retries, the retries its
// failures used up, must not follow it either: a replay gets its retries
// afresh.
func TestAReplayedDeadLetterStartsAtAttemptOne(t *testing.T) {
	var first, last atomic.Int32
	h := runtime.NewHandler("replay-target", func(ctx context.Context, tx runtime.Tx, ev replayed) error {
		m, _ := runtime.MetadataFrom(ctx)
		first.CompareAndSwap(0, int32(m.Attempt))
		last.Store(int32(m.Attempt))
		if m.Attempt < 2 {
			return errors.New("fails once")
		}
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 10 * time.Millisecond}))
	tr := startRuntime(t, nil, h)
	produceEvent(t, tr, replayed{ID: "r1"}, kgo.RecordHeader{Key: "eventfn_attempts", Value: []byte("429361")},
		kgo.RecordHeader{Key: "eventfn_retries", Value: []byte("1000")},
		kgo.RecordHeader{Key: "reason_poisoned", Value: []byte("the old failure")})
	waitUntil(t, "the replayed event handled", 30*time.Second, func() bool {
		return tr.metric(t, "eventfn_handler_attempts_total", "handler", "replay-target", "result", "ok") == 1 ||
			tr.metric(t, "eventfn_dead_lettered_total", "handler", "replay-target") > 0
	})
	if got := first.Load(); got != 1 {
		t.Fatalf("the replayed event ran first as attempt %d, want 1", got)
	}
	if got := last.Load(); got != 2 {
		t.Fatalf("the replayed event ran last as attempt %d, want 2: its one retry", got)
	}
	if n := tr.metric(t, "eventfn_dead_lettered_total", "handler", "replay-target"); n != 0 {
		t.Fatalf("the replay was dead-lettered with its retry unused (%v)", n)
	}
}
