package router_test

import (
	"context"
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
// count (attempt=429361 was seen).
func TestAReplayedDeadLetterStartsAtAttemptOne(t *testing.T) {
	var attempt atomic.Int32
	h := runtime.NewHandler("replay-target", func(ctx context.Context, tx runtime.Tx, ev replayed) error {
		m, _ := runtime.MetadataFrom(ctx)
		attempt.Store(int32(m.Attempt))
		return nil
	})
	tr := startRuntime(t, nil, h)
	produceEvent(t, tr, replayed{ID: "r1"}, kgo.RecordHeader{Key: "eventfn_attempts", Value: []byte("429361")},
		kgo.RecordHeader{Key: "reason_poisoned", Value: []byte("the old failure")})
	waitUntil(t, "the replayed event handled", 30*time.Second, func() bool { return attempt.Load() != 0 })
	if got := attempt.Load(); got != 1 {
		t.Fatalf("the replayed event ran as attempt %d, want 1", got)
	}
}
