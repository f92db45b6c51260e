package ingress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Readiness keeps the last answer of a readiness check, refreshed in the
// background. GET /readyz reads it: the check pings the database and Kafka,
// and when every request ran it, any caller could make eventfn send requests
// to its broker and database at will, as fast as it could send them.
type Readiness struct {
	check    ReadyFunc
	interval time.Duration
	timeout  time.Duration
	logger   *slog.Logger
	now      func() time.Time

	mu      sync.Mutex
	err     error
	checked time.Time // zero until the first check ends
}

// firstRecheck is the wait after the first check that fails: while the
// process starts (or after readiness is lost) the check runs again soon,
// doubling up to the interval, so that becoming ready shows within a few
// tens of milliseconds rather than a whole interval later.
const firstRecheck = 25 * time.Millisecond

// errNotChecked is the answer before the first check has ended.
var errNotChecked = errors.New("readiness not checked yet")

// NewReadiness returns a Readiness that runs check every interval, each run
// bounded by timeout, once Run is called.
func NewReadiness(check ReadyFunc, interval, timeout time.Duration, logger *slog.Logger) *Readiness {
	return &Readiness{check: check, interval: interval, timeout: timeout, logger: logger, now: time.Now}
}

// Run refreshes the answer until ctx ends: every interval while ready, sooner
// while not (see firstRecheck). Callers never wait for it.
func (r *Readiness) Run(ctx context.Context) {
	wasReady := false
	var wait time.Duration
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		err := r.refresh(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			if !wasReady {
				r.logger.InfoContext(ctx, "ready")
			}
			wait = r.interval
		case wasReady:
			// Starting up is not news; losing readiness after it is.
			r.logger.WarnContext(ctx, "not ready", "reason", err)
			wait = firstRecheck
		default:
			wait = min(max(wait*2, firstRecheck), r.interval)
		}
		wasReady = err == nil
		timer.Reset(wait)
	}
}

// refresh runs the check once and keeps its answer.
func (r *Readiness) refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	err := r.check(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err, r.checked = err, r.now()
	return err
}

// Ready is the last answer, or why there is none that can be trusted. It
// does no I/O. An answer older than a few intervals is not trusted: the
// checker has stopped (the process is shutting down), and the last "ready"
// may no longer hold.
func (r *Readiness) Ready(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.checked.IsZero() {
		return errNotChecked
	}
	if age := r.now().Sub(r.checked); age > r.staleAfter() {
		return fmt.Errorf("readiness last checked %s ago", age.Round(time.Second))
	}
	return r.err
}

// staleAfter is how old an answer may be: three missed refreshes, each of
// which may run until its timeout.
func (r *Readiness) staleAfter() time.Duration { return 3 * (r.interval + r.timeout) }
