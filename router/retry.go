package router

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/internal/outage"
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
// an infrastructure failure, a shutdown), and waits out a dependency that is
// unavailable on the same schedule, as long as it takes (see retryPlan).
//
// ops.retrying counts the events sleeping before their next retry
// (eventfn_retries_in_progress), ops.unavailable those waiting out a
// dependency (eventfn_dependency_waits_in_progress); report hears of the
// handler's dependency failing and answering again.
func retrying(p runtime.Policy, shouldRetry func(error) bool, ops handlerOps, report *outage.Reporter, logger *slog.Logger) message.HandlerMiddleware {
	counted := func(g prometheus.Gauge) func(context.Context, time.Duration) bool {
		return func(ctx context.Context, d time.Duration) bool {
			g.Inc()
			defer g.Dec()
			return sleepCtx(ctx, d)
		}
	}
	return retryPlan{
		schedule:    backoffSchedule{Initial: p.InitialBackoff, Max: p.MaxBackoff, Jitter: 0.2},
		maxRetries:  p.MaxRetries,
		shouldRetry: shouldRetry,
		sleep:       counted(ops.retrying),
		waitOut:     counted(ops.unavailable),
		report:      report,
		uniform:     rand.Float64,
		logger:      logger,
	}.middleware()
}

// retryPlan is how a handler's failed calls are tried again.
//
// A failure marked runtime.Unavailable (a dependency of the handler is down,
// not the event at fault) does not use up the retries: the call is tried
// again after the schedule's wait for the how-manieth such failure in a row,
// for as long as it keeps failing so, and the event is never given up on
// for it. A plain failure uses up one retry; the two counts are apart, so a
// dependency that comes and goes neither ends an event early nor lets a
// failing one go on without end.
type retryPlan struct {
	schedule   backoffSchedule
	maxRetries int
	// shouldRetry says whether a failure is tried again at all (by either count).
	shouldRetry func(error) bool
	// sleep waits before a retry, waitOut before a try while a dependency is
	// unavailable; each reports whether d passed (false: the context ended).
	sleep, waitOut func(context.Context, time.Duration) bool
	// maxWaits, when above 0, gives up on an event after that many
	// unavailable failures in a row. The runtime sets none; the test kit,
	// whose clock does not pass by itself, does.
	maxWaits int
	// report, when set, logs the handler's dependency failing and answering
	// again, at a bounded rate.
	report  *outage.Reporter
	uniform func() float64
	logger  *slog.Logger
}

// middleware tries each call as the plan says. Each try starts from the
// message's original context, since inner middlewares (the timeout) replace
// it.
func (p retryPlan) middleware() message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			ctx := msg.Context()
			retry, waits := retriesUsed(msg)+1, 0
			for {
				msg.SetContext(ctx)
				out, err := h(msg)
				if err == nil {
					if waits > 0 && p.report != nil {
						p.report.Succeeded()
					}
					return out, nil
				}
				if !p.shouldRetry(err) {
					return out, err
				}
				if runtime.IsUnavailable(err) {
					waits++
					if p.maxWaits > 0 && waits > p.maxWaits {
						return out, err
					}
					if p.report != nil {
						p.report.Failed(err, "event_id", msg.UUID)
					}
					wait := p.schedule.wait(waits, p.uniform())
					p.logger.Debug("a dependency is unavailable; the event waits without using its retries", "event_id", msg.UUID, "try", waits, "wait", wait)
					if !p.waitOut(ctx, wait) {
						return out, err
					}
					continue
				}
				waits = 0
				if retry > p.maxRetries {
					return out, err
				}
				msg.Metadata.Set(metaRetries, strconv.Itoa(retry))
				wait := p.schedule.wait(retry, p.uniform())
				p.logger.Debug("retrying the event", "event_id", msg.UUID, "retry", retry, "of", p.maxRetries, "wait", wait)
				if !p.sleep(ctx, wait) {
					return out, err
				}
				retry++
			}
		}
	}
}

// retriesUsed is how many retries msg's delivery has used up so far.
func retriesUsed(msg *message.Message) int {
	n, _ := strconv.Atoi(msg.Metadata.Get(metaRetries))
	return max(n, 0)
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
