package router

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/runtime"
)

func watchedPlan(deps *dependencyWatch) message.HandlerMiddleware {
	return retryPlan{
		schedule:    backoffSchedule{Initial: time.Millisecond, Max: time.Millisecond},
		maxRetries:  3,
		shouldRetry: func(err error) bool { return !runtime.IsPermanent(err) },
		sleep:       func(context.Context, time.Duration) bool { return true },
		waitOut:     func(context.Context, time.Duration) bool { return true },
		deps:        deps,
		uniform:     func() float64 { return 0.5 },
		logger:      slog.New(slog.DiscardHandler),
	}.middleware()
}

// TestADependencyOutageIsReportedOnce: a gateway that fails one call in two
// is one outage in the log (it logged an ERROR and an INFO line per event);
// an outage whose last waiting event got past it with a plain failure and a
// retry ends too (it stayed "down" for good); the gauge counts each event
// from its first failure until it gets past it, its calls included (it read
// 0 during every call, for 30 s of every 35 with a slow gateway).
func TestADependencyOutageIsReportedOnce(t *testing.T) {
	down := runtime.Unavailable(errors.New("gateway answers 503"))
	declined := errors.New("card declined, try again")
	tests := []struct {
		name    string
		events  [][]error // per event, its calls' results
		quiet   time.Duration
		errors  int
		answers bool // the end is logged
	}{
		{"a flaky gateway, one outage", [][]error{{down, nil}, {down, nil}, {down, nil}, {nil}, {down, down, nil}, {down, nil}}, time.Minute, 1, false},
		{"an outage ends in a plain failure and a retry", [][]error{{down, declined, nil}}, 10 * time.Millisecond, 1, true},
		{"an outage ends", [][]error{{down, down, down, nil}}, 10 * time.Millisecond, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs testenv.LogBuffer
			gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "unavailable"})
			deps := newDependencyWatch(gauge, 0, slog.New(slog.NewTextHandler(&logs, nil)))
			deps.quiet = tt.quiet
			mw := watchedPlan(deps)
			for _, results := range tt.events {
				calls := 0
				var during []float64
				h := mw(func(*message.Message) ([]*message.Message, error) {
					during = append(during, testutil.ToFloat64(gauge))
					err := results[calls]
					calls++
					return nil, err
				})
				if _, err := h(message.NewMessage("e", nil)); err != nil {
					t.Fatal(err)
				}
				for i := 1; i < len(during); i++ {
					if errors.Is(results[i-1], down) && during[i] != 1 {
						t.Errorf("call %d, after the dependency failed: %v waiting, want 1", i+1, during[i])
					}
				}
				if g := testutil.ToFloat64(gauge); g != 0 {
					t.Fatalf("%v waiting after the event got through", g)
				}
			}
			if n := strings.Count(logs.String(), "level=ERROR"); n != tt.errors {
				t.Errorf("%d ERROR lines, want %d\n%s", n, tt.errors, logs.String())
			}
			if !tt.answers {
				if strings.Contains(logs.String(), "answers again") {
					t.Errorf("the outage ended while the dependency kept failing\n%s", logs.String())
				}
				return
			}
			deadline := time.Now().Add(10 * time.Second)
			for deps.report.Err() != nil || !strings.Contains(logs.String(), "answers again") {
				if time.Now().After(deadline) {
					t.Fatalf("the end of the outage was never logged\n%s", logs.String())
				}
				time.Sleep(5 * time.Millisecond) // polling interval
			}
		})
	}
}
