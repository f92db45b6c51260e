package router

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// TestBackoffDoublesFromInitialToMax: the README's "100 ms doubling to 5 s".
// Watermill's retry middleware took two steps of its backoff per failure, so
// the waits were 170 ms, 690 ms, 2.7 s, then 5 s.
func TestBackoffDoublesFromInitialToMax(t *testing.T) {
	s := backoffSchedule{Initial: 100 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i, w := range want {
		n := i + 1
		if got := s.base(n); got != w*time.Millisecond {
			t.Errorf("retry %d: base wait %s, want %s", n, got, w*time.Millisecond)
		}
		lo, hi := s.wait(n, 0), s.wait(n, 0.999999)
		if lo < time.Duration(float64(w*time.Millisecond)*0.8) || hi > time.Duration(float64(w*time.Millisecond)*1.2) || lo >= hi {
			t.Errorf("retry %d: waits %s..%s, want within ±20%% of %s", n, lo, hi, w*time.Millisecond)
		}
	}
}

// TestRetryingWaitsTheScheduleAndStopsWhenTold: the middleware itself asks for
// exactly the scheduled waits, tries MaxRetries+1 times, and stops at once for
// an error it must not retry.
func TestRetryingWaitsTheScheduleAndStopsWhenTold(t *testing.T) {
	fail := errors.New("fail")
	stop := errors.New("stop")
	tests := []struct {
		name      string
		results   []error
		calls     int
		waits     []time.Duration
		wantError error
	}{
		{"succeeds at once", []error{nil}, 1, nil, nil},
		{"succeeds on the third try", []error{fail, fail, nil}, 3, []time.Duration{100, 200}, nil},
		{"retries used up", []error{fail, fail, fail, fail, fail}, 4, []time.Duration{100, 200, 400}, fail},
		{"not retried", []error{stop}, 1, nil, stop},
		{"not retried after a retry", []error{fail, stop}, 2, []time.Duration{100}, stop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var waits []time.Duration
			sleep := func(_ context.Context, d time.Duration) bool { waits = append(waits, d); return true }
			mw := retryingWith(backoffSchedule{Initial: 100 * time.Millisecond, Max: time.Second}, 3,
				func(err error) bool { return !errors.Is(err, stop) }, sleep, func() float64 { return 0.5 }, slog.New(slog.DiscardHandler))
			calls := 0
			h := mw(func(*message.Message) ([]*message.Message, error) {
				err := tt.results[calls]
				calls++
				return nil, err
			})
			_, err := h(message.NewMessage("1", nil))
			if !errors.Is(err, tt.wantError) || (tt.wantError == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tt.wantError)
			}
			if calls != tt.calls {
				t.Fatalf("%d calls, want %d", calls, tt.calls)
			}
			if len(waits) != len(tt.waits) {
				t.Fatalf("waits %v, want %v ms", waits, tt.waits)
			}
			for i, w := range tt.waits {
				if waits[i] != w*time.Millisecond {
					t.Fatalf("waits %v, want %v ms", waits, tt.waits)
				}
			}
		})
	}
}
