// Package fakes stands in for the outside services of the reference flow: a
// payment gateway and a mailer. They behave like the real kind (idempotency
// keys, failures, latency) so the flow can be run and tested without them.
// Their memory is bounded, so the default binary can take traffic for as
// long as it runs.
package fakes

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/eventfn/eventfn/handlers"
)

// keptKeys is how many idempotency keys the gateway remembers. A real
// gateway forgets them too (after a day, typically); here the oldest go
// first. Before the bound, the fake kept every key, about 250 bytes an
// order: a gigabyte an hour at 700 orders/s.
const keptKeys = 100_000

// PaymentGateway is an in-memory payment gateway.
type PaymentGateway struct {
	failAttempts int
	delay        time.Duration
	logger       *slog.Logger
	maxKeys      int
	down         atomic.Bool

	mu       sync.Mutex
	attempts map[string]int
	receipts map[string]handlers.Receipt
	order    []string // keys, oldest first: order[head:] are remembered
	head     int
	charges  int
}

// NewPaymentGateway returns a gateway whose first failAttempts charges of each
// idempotency key fail (plain errors, which use up the handler's retries),
// and which takes delay per charge. It remembers the
// last 100,000 keys.
func NewPaymentGateway(failAttempts int, delay time.Duration, logger *slog.Logger) *PaymentGateway {
	return &PaymentGateway{
		failAttempts: failAttempts,
		delay:        delay,
		logger:       logger,
		maxKeys:      keptKeys,
		attempts:     map[string]int{},
		receipts:     map[string]handlers.Receipt{},
	}
}

// SetUnavailable takes the gateway down (true) or brings it back: while it
// is down every charge fails with handlers.ErrUnavailable and charges
// nothing, as a gateway that cannot be reached.
func (g *PaymentGateway) SetUnavailable(down bool) { g.down.Store(down) }

// Charge charges once per idempotency key; a repeated key returns the first
// receipt. A charge that takes longer than ctx allows fails with
// handlers.ErrUnavailable, as a gateway that did not answer in time.
func (g *PaymentGateway) Charge(ctx context.Context, req handlers.ChargeRequest) (handlers.Receipt, error) {
	if g.delay > 0 {
		t := time.NewTimer(g.delay)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return handlers.Receipt{}, fmt.Errorf("payment gateway did not answer: %w: %w", handlers.ErrUnavailable, ctx.Err())
		case <-t.C:
		}
	}
	if g.down.Load() {
		return handlers.Receipt{}, fmt.Errorf("payment gateway: %w (fake outage)", handlers.ErrUnavailable)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, known := g.attempts[req.IdempotencyKey]; !known {
		g.remember(req.IdempotencyKey)
	}
	g.attempts[req.IdempotencyKey]++
	if n := g.attempts[req.IdempotencyKey]; n <= g.failAttempts {
		return handlers.Receipt{}, fmt.Errorf("payment gateway failed the charge (fake failure %d of %d)", n, g.failAttempts)
	}
	if r, ok := g.receipts[req.IdempotencyKey]; ok {
		return r, nil
	}
	r := handlers.Receipt{PaymentID: "pay_" + uuid.NewString()}
	g.receipts[req.IdempotencyKey] = r
	g.charges++
	g.logger.Info("payment charged", "order_id", req.OrderID, "amount_cents", req.AmountCents, "payment_id", r.PaymentID)
	return r, nil
}

// remember adds a new key and forgets the oldest beyond maxKeys. The slice
// of keys is compacted when its forgotten front is as long as the rest.
func (g *PaymentGateway) remember(key string) {
	g.order = append(g.order, key)
	for len(g.order)-g.head > g.maxKeys {
		old := g.order[g.head]
		g.order[g.head] = ""
		g.head++
		delete(g.attempts, old)
		delete(g.receipts, old)
	}
	if g.head > 0 && g.head >= len(g.order)-g.head {
		g.order = append([]string(nil), g.order[g.head:]...)
		g.head = 0
	}
}

// Attempts reports how often key was charged, failures included; 0 for a
// key the gateway has forgotten.
func (g *PaymentGateway) Attempts(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.attempts[key]
}

// Charges reports how many distinct charges succeeded.
func (g *PaymentGateway) Charges() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.charges
}
