package router

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/runtime"
)

// backoffSchedule is the wait before each retry of a handler: Initial before
// the first, doubling before each next one up to Max, each spread by up to
// ±Jitter of itself so that events failing together do not retry in step.
// (Watermill's retry middleware asks its backoff for the next interval once
// more per failure than it waits, so its waits quadrupled.)
type backoffSchedule struct {
	Initial, Max time.Duration
	Jitter       float64
}

// base is the wait before retry n (1 for the first retry), before jitter.
func (s backoffSchedule) base(n int) time.Duration {
	d := s.Initial
	for i := 1; i < n && d < s.Max; i++ {
		d *= 2
	}
	return min(d, s.Max)
}

// wait is base(n) spread by jitter; u is uniform in [0, 1).
func (s backoffSchedule) wait(n int, u float64) time.Duration {
	b := float64(s.base(n))
	return time.Duration(b * (1 + s.Jitter*(2*u-1)))
}

// retrying retries a failed call up to p.MaxRetries times on the schedule,
// unless shouldRetry says the failure is not for retrying (a permanent error,
// an infrastructure failure, a shutdown). Each try starts from the message's
// original context, since inner middlewares (the timeout) replace it.
//
// waiting counts the events sleeping before their next try
// (eventfn_retries_in_progress).
func retrying(p runtime.Policy, shouldRetry func(error) bool, waiting prometheus.Gauge, logger *slog.Logger) message.HandlerMiddleware {
	sleep := func(ctx context.Context, d time.Duration) bool {
		waiting.Inc()
		defer waiting.Dec()
		return sleepCtx(ctx, d)
	}
	return retryingWith(backoffSchedule{Initial: p.InitialBackoff, Max: p.MaxBackoff, Jitter: 0.2}, p.MaxRetries, shouldRetry, sleep, rand.Float64, logger)
}

func retryingWith(s backoffSchedule, maxRetries int, shouldRetry func(error) bool,
	sleep func(context.Context, time.Duration) bool, uniform func() float64, logger *slog.Logger) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			for retry := 1; ; retry++ {
				msg.SetContext(ctx)
				out, err := h(msg)
				if err == nil || retry > maxRetries || !shouldRetry(err) {
					return out, err
				}
				wait := s.wait(retry, uniform())
				logger.Debug("retrying the event", "event_id", msg.UUID, "retry", retry, "of", maxRetries, "wait", wait)
				if !sleep(ctx, wait) {
					return out, err
				}
			}
		}
	}
}

// sleepCtx waits d or until ctx ends, and reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
