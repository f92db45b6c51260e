package ingress

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Backpressure holds new orders at the door while the handlers are too far
// behind. Past what the chain can handle, every order taken costs the CPU and
// the database the chain needs: with nothing holding them, a closed loop of
// 32 clients had orders taken at twice the rate their chains completed, and
// the chains completed fewer than an open loop near capacity sustains
// (docs/BENCHMARKS.md, "Broker requests, and overload"). Held, an order
// waits for the backlog to fall below the limit; one that waits out the hold
// is answered 503 with Retry-After and is not stored, so the client knows to
// send it again.
type Backpressure struct {
	backlog func() int64
	limit   int64
	wait    time.Duration
	held    *prometheus.CounterVec
}

// backlogPoll is how often a held order looks at the backlog again: often
// enough that an order is let in within a fraction of a handler call's time
// of room appearing, and cheap (the backlog is a sum over a few partitions).
const backlogPoll = 5 * time.Millisecond

// NewBackpressure holds orders while backlog reports limit or more events not
// handled, for up to wait each. A limit of 0 never holds. The outcomes of
// held orders are counted in reg as eventfn_http_orders_held_total.
func NewBackpressure(backlog func() int64, limit int64, wait time.Duration, reg prometheus.Registerer) (*Backpressure, error) {
	held := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "eventfn", Name: "http_orders_held_total",
		Help: "Orders held at POST /orders because the handlers were behind (http.max_backlog), by outcome: admitted, rejected (503), abandoned (the client gave up).",
	}, []string{"outcome"})
	for _, o := range []string{"admitted", "rejected", "abandoned"} {
		held.WithLabelValues(o)
	}
	if err := reg.Register(held); err != nil {
		return nil, fmt.Errorf("register eventfn_http_orders_held_total: %w", err)
	}
	return &Backpressure{backlog: backlog, limit: limit, wait: wait, held: held}, nil
}

// WithBackpressure holds orders while the handlers are behind (see
// Backpressure); nil holds none.
func WithBackpressure(b *Backpressure) ServerOption {
	return func(s *Server) { s.backpressure = b }
}

// behindError is the answer to an order held for the whole wait.
type behindError struct {
	backlog, limit int64
	wait           time.Duration
}

func (e behindError) Error() string {
	return fmt.Sprintf("the handlers are behind: %d events waiting (http.max_backlog %d) for %s; the order was not stored, send it again later",
		e.backlog, e.limit, e.wait)
}

// behind reports whether the handlers' backlog is at the limit now: a new
// order would be held.
func (b *Backpressure) behind() bool {
	return b != nil && b.limit > 0 && b.backlog() >= b.limit
}

// admit returns nil when an order may go in: at once while the backlog is
// below the limit, else when it falls below within the wait. It returns a
// behindError when it does not, and ctx's error when the client gives up.
func (b *Backpressure) admit(ctx context.Context) error {
	if !b.behind() {
		return nil
	}
	deadline := time.NewTimer(b.wait)
	defer deadline.Stop()
	tick := time.NewTicker(backlogPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			b.held.WithLabelValues("abandoned").Inc()
			return ctx.Err()
		case <-deadline.C:
			if n := b.backlog(); n >= b.limit {
				b.held.WithLabelValues("rejected").Inc()
				return behindError{backlog: n, limit: b.limit, wait: b.wait}
			}
			b.held.WithLabelValues("admitted").Inc()
			return nil
		case <-tick.C:
			if b.backlog() < b.limit {
				b.held.WithLabelValues("admitted").Inc()
				return nil
			}
		}
	}
}
