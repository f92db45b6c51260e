package ingress

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestAnOldAnswerIsNotTrusted: once the checker stops (the process is
// shutting down, or it is stuck), its last "ready" must not be served for ever.
func TestAnOldAnswerIsNotTrusted(t *testing.T) {
	now := time.Now()
	r := NewReadiness(func(context.Context) error { return nil }, time.Second, time.Second, slog.New(slog.DiscardHandler))
	r.now = func() time.Time { return now }
	if err := r.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.Ready(context.Background()); err != nil {
		t.Fatalf("fresh answer: %v", err)
	}
	now = now.Add(r.staleAfter() + time.Second)
	if err := r.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "last checked") {
		t.Fatalf("stale answer: %v, want it refused", err)
	}
}
