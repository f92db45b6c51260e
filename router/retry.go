package router

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/internal/outage"
	"github.com/eventfn/eventfn/router/dispatch"
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
// Every wait ends early when the delivery's partition goes to another
// member or the process stops (dispatch.Pause): the event is left for
// redelivery.
//
// ops.retrying counts the events sleeping before their next retry
// (eventfn_retries_in_progress); deps follows the handler's dependency.
func retrying(p runtime.Policy, shouldRetry func(error) bool, ops handlerOps, deps *dependencyWatch, logger *slog.Logger) message.HandlerMiddleware {
	return retryPlan{
		schedule:    backoffSchedule{Initial: p.InitialBackoff, Max: p.MaxBackoff, Jitter: 0.2},
		maxRetries:  p.MaxRetries,
		shouldRetry: shouldRetry,
		sleep: func(ctx context.Context, d time.Duration) bool {
			ops.retrying.Inc()
			defer ops.retrying.Dec()
			return dispatch.Pause(ctx, d)
		},
		waitOut: dispatch.Pause,
		deps:    deps,
		uniform: rand.Float64,
		logger:  logger,
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
	// unavailable; each reports whether d passed (false: the wait was cut
	// short, and the event is left for redelivery).
	sleep, waitOut func(context.Context, time.Duration) bool
	// maxWaits, when above 0, gives up on an event after that many waits
	// for a dependency in a row. The runtime sets none; the test kit, whose
	// clock does not pass by itself, does.
	maxWaits int
	// deps, when set, follows the handler's dependency: what waits for it,
	// and its outage in the log.
	deps    *dependencyWatch
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
			// waiting says the event is counted among those waiting for
			// the dependency, from its first such failure until a call
			// gets past it or the event is given up or left.
			waiting := false
			stopWaiting := func(err error) {
				if waiting {
					waiting = false
					p.deps.leave(err == nil || (!runtime.IsUnavailable(err) && !isInfra(err)))
				}
			}
			for {
				msg.SetContext(ctx)
				out, err := h(msg)
				unavailable := err != nil && runtime.IsUnavailable(err)
				if !unavailable {
					stopWaiting(err)
				}
				if err == nil {
					return out, nil
				}
				if !p.shouldRetry(err) {
					stopWaiting(err)
					return out, err
				}
				if unavailable {
					waits++
					if p.maxWaits > 0 && waits > p.maxWaits {
						stopWaiting(err)
						return out, err
					}
					if !waiting {
						waiting = true
						p.deps.enter()
					}
					p.deps.failed(err, msg.UUID)
					wait := p.schedule.wait(waits, p.uniform())
					p.logger.Debug("a dependency is unavailable; the event waits without using its retries", "event_id", msg.UUID, "try", waits, "wait", wait)
					if !p.waitOut(ctx, wait) {
						stopWaiting(err)
						return out, leftForRedelivery{err}
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
					return out, leftForRedelivery{err}
				}
				retry++
			}
		}
	}
}

// leftForRedelivery is the failure of an event whose retries or waits were
// cut short: its partition went to another member, the process stops, or
// its context ended. It is not the event's fault and it is never
// dead-lettered: Kafka delivers it again, to the partition's owner.
type leftForRedelivery struct{ err error }

func (e leftForRedelivery) Error() string { return e.err.Error() + " (left for redelivery)" }
func (e leftForRedelivery) Unwrap() error { return e.err }

// isLeftForRedelivery reports whether err is, or wraps, a leftForRedelivery.
func isLeftForRedelivery(err error) bool {
	var l leftForRedelivery
	return errors.As(err, &l)
}

// dependencyWatch follows a handler's dependency: it counts the events
// waiting for it (eventfn_dependency_waits_in_progress), each from its
// first failure until it gets past it, and reports the outage once, not
// per call. The outage ends when no event waits and none has failed so for
// quiet: a dependency that fails every other call is one lasting outage,
// summarised every 30 s, not an ERROR and an INFO line per failure.
type dependencyWatch struct {
	report  *outage.Reporter
	waiting prometheus.Gauge
	quiet   time.Duration

	mu          sync.Mutex
	waiters     int
	lastFailure time.Time
	settle      *time.Timer
}

// newDependencyWatch follows the dependencies of a handler whose longest
// wait is maxBackoff: the outage is over once twice that passed quietly.
func newDependencyWatch(waiting prometheus.Gauge, maxBackoff time.Duration, logger *slog.Logger) *dependencyWatch {
	return &dependencyWatch{
		report: outage.New("a dependency of the handler is unavailable (or a lock it needs is held elsewhere); its events wait and are tried again without using their retries",
			"the handler's dependency answers again", outageReportInterval, logger),
		waiting: waiting,
		quiet:   2 * maxBackoff,
	}
}

// enter counts an event that began to wait.
func (w *dependencyWatch) enter() {
	if w == nil {
		return
	}
	w.waiting.Inc()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waiters++
	if w.settle != nil {
		w.settle.Stop()
		w.settle = nil
	}
}

// failed reports one failure of the dependency.
func (w *dependencyWatch) failed(err error, eventID string) {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.lastFailure = time.Now()
	w.mu.Unlock()
	w.report.Failed(err, "event_id", eventID)
}

// leave counts an event that stopped waiting; answered says the dependency
// let it past (not a shutdown, a revoked partition or the database away).
// When the last one leaves so, the outage ends after quiet with no failure.
func (w *dependencyWatch) leave(answered bool) {
	if w == nil {
		return
	}
	w.waiting.Dec()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waiters--
	if w.waiters > 0 || !answered {
		return
	}
	if w.settle != nil {
		w.settle.Stop()
	}
	w.settle = time.AfterFunc(w.quiet, func() {
		w.mu.Lock()
		over := w.waiters == 0 && time.Since(w.lastFailure) >= w.quiet
		w.mu.Unlock()
		if over {
			w.report.Succeeded()
		}
	})
}

// retriesUsed is how many retries msg's delivery has used up so far.
func retriesUsed(msg *message.Message) int {
	n, _ := strconv.Atoi(msg.Metadata.Get(metaRetries))
	return max(n, 0)
}
