package router

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventfn/eventfn/runtime"
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
	down := runtime.Unavailable(errors.New("gateway down"))
	downForGood := runtime.Permanent(down)
	tests := []struct {
		name      string
		results   []error
		calls     int
		waits     []time.Duration // "u" in waitKinds: a wait for a dependency; "r": for a retry
		waitKinds string
		wantError error
	}{
		{"succeeds at once", []error{nil}, 1, nil, "", nil},
		{"succeeds on the third try", []error{fail, fail, nil}, 3, []time.Duration{100, 200}, "rr", nil},
		{"retries used up", []error{fail, fail, fail, fail, fail}, 4, []time.Duration{100, 200, 400}, "rrr", fail},
		{"not retried", []error{stop}, 1, nil, "", stop},
		{"not retried after a retry", []error{fail, stop}, 2, []time.Duration{100}, "r", stop},
		{"a dependency down past the retries is waited out", []error{down, down, down, down, down, down, down, nil}, 8,
			[]time.Duration{100, 200, 400, 800, 1000, 1000, 1000}, "uuuuuuu", nil},
		{"waits for a dependency use no retry", []error{fail, down, down, fail, fail, down, fail, fail}, 7,
			[]time.Duration{100, 100, 200, 200, 400, 100}, "ruurru", fail},
		{"permanent wins over unavailable", []error{downForGood}, 1, nil, "", downForGood},
		{"a shutdown ends the waits", []error{down, stop}, 2, []time.Duration{100}, "u", stop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var waits []time.Duration
			var kinds string
			sleeper := func(kind string) func(context.Context, time.Duration) bool {
				return func(_ context.Context, d time.Duration) bool {
					waits = append(waits, d)
					kinds += kind
					return true
				}
			}
			mw := retryPlan{
				schedule:    backoffSchedule{Initial: 100 * time.Millisecond, Max: time.Second},
				maxRetries:  3,
				shouldRetry: func(err error) bool { return !errors.Is(err, stop) && !runtime.IsPermanent(err) },
				sleep:       sleeper("r"),
				waitOut:     sleeper("u"),
				uniform:     func() float64 { return 0.5 },
				logger:      slog.New(slog.DiscardHandler),
			}.middleware()
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
			if kinds != tt.waitKinds {
				t.Fatalf("waits of kinds %q, want %q (u: a dependency, r: a retry)", kinds, tt.waitKinds)
			}
		})
	}
}

// TestAWaitForTheDatabaseDoesNotStartTheRetriesOver: waitOutInfrastructure
// calls the retries' middleware again once the database is back; the
// retries the delivery used before count on.
func TestAWaitForTheDatabaseDoesNotStartTheRetriesOver(t *testing.T) {
	fail := errors.New("fail")
	infra := errors.New("database away")
	mw := retryPlan{
		schedule:    backoffSchedule{Initial: time.Millisecond, Max: time.Millisecond},
		maxRetries:  3,
		shouldRetry: func(err error) bool { return !errors.Is(err, infra) },
		sleep:       func(context.Context, time.Duration) bool { return true },
		uniform:     func() float64 { return 0.5 },
		logger:      slog.New(slog.DiscardHandler),
	}.middleware()
	results := []error{fail, fail, infra, fail, fail, fail}
	calls := 0
	h := mw(func(*message.Message) ([]*message.Message, error) {
		err := results[calls]
		calls++
		return nil, err
	})
	msg := message.NewMessage("1", nil)
	if _, err := h(msg); !errors.Is(err, infra) || calls != 3 {
		t.Fatalf("first entry: %v after %d calls, want the database's failure after 3", err, calls)
	}
	if _, err := h(msg); !errors.Is(err, fail) || calls != 5 {
		t.Fatalf("after the wait: %v after %d calls in all, want the failure given up on after 5 (1 call + 3 retries + the database's)", err, calls)
	}
}
