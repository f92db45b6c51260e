// Package outage reports a failing dependency the way an operator wants to read
// it: once when the failure starts, then a summary at a bounded rate while it
// lasts, and once when it ends. A broker or database that is away for a minute
// gives three lines, not one per attempt. One that flaps (fails again soon
// after each recovery) is one incident too, not an ERROR per relapse.
package outage

import (
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Reporter follows the state of one component. Its methods are safe for
// concurrent use.
type Reporter struct {
	what     string // "outbox relay cannot forward", say
	up       string // "outbox relay forwarding again", say
	logger   *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu       sync.Mutex
	since    time.Time // zero while healthy
	failures int       // in this outage
	reported int       // failures already summarised
	next     time.Time // when the next summary may be logged
	last     error
	// ended is when the last outage ended, and endedKey its attributes: an
	// outage of the same attributes (the same topic, say) that starts within
	// interval of it is a relapse.
	ended    time.Time
	endedKey string
	key      string // this outage's attributes
	// quietUntil is when the next relapse may be logged.
	quietUntil time.Time
	// logged says whether this outage was logged (its start or a summary),
	// and so its end is.
	logged bool
}

// New returns a Reporter whose outage is logged as what, its end as up; a
// lasting failure is summarised at most once per interval.
func New(what, up string, interval time.Duration, logger *slog.Logger) *Reporter {
	return &Reporter{what: what, up: up, logger: logger, interval: interval, now: time.Now}
}

// WithClock replaces the clock, for tests.
func (r *Reporter) WithClock(now func() time.Time) *Reporter {
	r.now = now
	return r
}

// Failed records a failure. It reports whether this failure began an outage:
// that one is logged at ERROR; later ones are summarised at WARN at most once
// per interval. An outage that begins within interval of the last one's end,
// with the same attrs (another topic is another outage), is a relapse of
// it: logged at WARN, at most once per interval, and its end only when its
// start was. A dependency that flapped under load logged an ERROR and an
// INFO per relapse.
func (r *Reporter) Failed(err error, attrs ...any) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	r.last = err
	r.failures++
	if r.since.IsZero() {
		r.since, r.failures, r.reported, r.next = now, 1, 1, now.Add(r.interval)
		r.key = fmt.Sprint(attrs...)
		relapse := !r.ended.IsZero() && now.Sub(r.ended) < r.interval && r.key == r.endedKey
		r.logged = !relapse || !now.Before(r.quietUntil)
		switch {
		case !relapse:
			r.logger.Error(r.what, append(attrs, "err", err)...)
		case r.logged:
			r.logger.Warn(r.what+" (again, soon after it recovered)", append(attrs, "recovered_for", now.Sub(r.ended).Round(time.Millisecond), "err", err)...)
		}
		if r.logged {
			r.quietUntil = now.Add(r.interval)
		}
		return true
	}
	if now.Before(r.next) {
		return false
	}
	r.logger.Warn(r.what+" (still failing)", append(attrs, "since", r.since.UTC(), "for", now.Sub(r.since).Round(time.Second),
		"failures", r.failures-r.reported, "err", err)...)
	r.reported, r.next, r.logged = r.failures, now.Add(r.interval), true
	return false
}

// Succeeded records a success. It reports whether this ended an outage; that
// is logged at INFO with how long it lasted.
func (r *Reporter) Succeeded(attrs ...any) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.since.IsZero() {
		return false
	}
	now := r.now()
	if r.logged {
		r.logger.Info(r.up, append(attrs, "after", now.Sub(r.since).Round(time.Millisecond), "failures", r.failures)...)
	}
	r.since, r.failures, r.reported, r.last, r.ended, r.endedKey = time.Time{}, 0, 0, nil, now, r.key
	return true
}

// Err is nil while healthy, or says since when the component fails and why.
func (r *Reporter) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.since.IsZero() {
		return nil
	}
	return fmt.Errorf("%s since %s: %w", r.what, r.since.UTC().Format(time.RFC3339), r.last)
}
