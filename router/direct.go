package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/tracing"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// Direct calls handlers without Kafka, through the code a delivered event
// goes through: the handler's retries on its policy's schedule, its timeout,
// panic recovery, and the one transaction that claims the event in the inbox,
// runs the handler and writes what it emits to the outbox. What a broker
// would add (ordering per key, dead-letter records) is the caller's: the
// eventfntest kit builds on it.
type Direct struct {
	outbox  *Outbox
	table   *relay.Table
	metrics *metrics
	logger  *slog.Logger
}

// NewDirect builds a Direct on db, migrated already.
func NewDirect(db *store.DB, cfg configs.Config, logger *slog.Logger) (*Direct, error) {
	outbox := NewOutbox(db, cfg, watermill.NopLogger{})
	m, err := newMetrics(prometheus.NewRegistry(), outbox)
	if err != nil {
		return nil, err
	}
	return &Direct{outbox: outbox, table: outbox.table, metrics: m, logger: logger}, nil
}

// DirectEvent is an event as a delivery carries it.
type DirectEvent struct {
	ID, Type, Source, Key, CorrelationID string
	Time                                 time.Time
	Payload                              []byte
}

// DirectResult is what one delivery came to.
type DirectResult struct {
	// Err is the final error: nil, permanent, the last failure once the
	// retries ran out, or a dependency's unavailability that lasted
	// DirectMaxWaits tries (runtime.IsUnavailable says which). The
	// transaction of a failed attempt rolled back.
	Err error
	// Attempts is how many times the handler was called.
	Attempts int
	// Duplicate says the inbox had the event: the handler was not called.
	Duplicate bool
	// Emitted are the outbox rows the delivery committed, in order.
	Emitted []relay.Row
}

// DirectMaxWaits is how many waits in a row Deliver allows a call whose
// dependency is unavailable (so DirectMaxWaits+1 calls) before it returns
// that failure, where the runtime would go on waiting.
const DirectMaxWaits = 100

// Sleeper waits d between retries; a test clock advances instead.
type Sleeper func(ctx context.Context, d time.Duration) bool

// Deliver delivers ev to h once, with h's policy (defaults filled in): a
// failed call is retried after the policy's backoff, which sleep spends.
func (d *Direct) Deliver(ctx context.Context, h runtime.Handler, ev DirectEvent, sleep Sleeper) DirectResult {
	p := h.Policy().WithDefaults()
	before, err := d.lastOutboxID(ctx)
	if err != nil {
		return DirectResult{Err: err}
	}
	var res DirectResult
	inv := &invoker{handler: h, outbox: d.outbox, logger: d.logger, metrics: d.metrics, tracer: tracing.Tracer(nil),
		onDuplicate: func() { res.Duplicate = true }, committer: newCommitter(d.outbox.db, 1, 1, nil)}
	counted := func(next message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			res.Attempts++
			return next(msg)
		}
	}
	chain := message.HandlerFunc(func(msg *message.Message) ([]*message.Message, error) { return nil, inv.handle(msg) })
	// Innermost last, as the runtime's middlewares: retry, timeout, recovery.
	retry := retryPlan{
		schedule:   backoffSchedule{Initial: p.InitialBackoff, Max: p.MaxBackoff},
		maxRetries: p.MaxRetries,
		shouldRetry: func(err error) bool {
			// Not once the caller gave up; a handler's own error that wraps
			// context.Canceled is retried, as in the runtime.
			return usesRetry(err) && ctx.Err() == nil
		},
		sleep:   sleep,
		waitOut: sleep,
		// The runtime waits out an unavailable dependency for as long as it
		// takes; a test whose fake stays down would never return.
		maxWaits: DirectMaxWaits,
		uniform:  func() float64 { return 0.5 },
		logger:   d.logger,
	}.middleware()
	for _, mw := range []message.HandlerMiddleware{middleware.Recoverer, middleware.Timeout(p.Timeout), counted, retry} {
		chain = mw(chain)
	}
	msg := message.NewMessage(ev.ID, ev.Payload)
	msg.SetContext(ctx)
	msg.Metadata.Set(HeaderType, ev.Type)
	msg.Metadata.Set(HeaderSource, ev.Source)
	msg.Metadata.Set(HeaderSpecVersion, "1.0")
	msg.Metadata.Set(HeaderCorrelationID, ev.CorrelationID)
	msg.Metadata.Set(HeaderTime, ev.Time.UTC().Format(time.RFC3339Nano))
	if ev.Key != "" {
		msg.Metadata.Set(metaKey, ev.Key)
	}
	_, res.Err = chain(msg)
	rows, err := d.table.Pending(ctx, before, relay.Limit{Rows: 1 << 20})
	if err != nil {
		res.Err = errors.Join(res.Err, err)
	}
	res.Emitted = rows
	return res
}

// lastOutboxID is the highest outbox row id, 0 for none.
func (d *Direct) lastOutboxID(ctx context.Context) (int64, error) {
	var id *int64
	if err := d.outbox.db.Read.QueryRowContext(ctx, `SELECT MAX(id) FROM eventfn_outbox`).Scan(&id); err != nil {
		return 0, fmt.Errorf("read the outbox: %w", err)
	}
	if id == nil {
		return 0, nil
	}
	return *id, nil
}
