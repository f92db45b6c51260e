// Package fakes stands in for the outside services of the reference flow: a
// payment gateway and a mailer. They behave like the real kind (idempotency
// keys, failures, latency) so the flow can be run and tested without them.
package fakes

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/eventfn/eventfn/handlers"
)

// PaymentGateway is an in-memory payment gateway.
type PaymentGateway struct {
	failAttempts int
	delay        time.Duration
	logger       *slog.Logger

	mu       sync.Mutex
	attempts map[string]int
	receipts map[string]handlers.Receipt
}

// NewPaymentGateway returns a gateway whose first failAttempts charges of each
// idempotency key fail, and which takes delay per charge.
func NewPaymentGateway(failAttempts int, delay time.Duration, logger *slog.Logger) *PaymentGateway {
	return &PaymentGateway{
		failAttempts: failAttempts,
		delay:        delay,
		logger:       logger,
		attempts:     map[string]int{},
		receipts:     map[string]handlers.Receipt{},
	}
}

// Charge charges once per idempotency key; a repeated key returns the first receipt.
func (g *PaymentGateway) Charge(ctx context.Context, req handlers.ChargeRequest) (handlers.Receipt, error) {
	if g.delay > 0 {
		t := time.NewTimer(g.delay)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return handlers.Receipt{}, fmt.Errorf("payment gateway: %w", ctx.Err())
		case <-t.C:
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.attempts[req.IdempotencyKey]++
	if n := g.attempts[req.IdempotencyKey]; n <= g.failAttempts {
		return handlers.Receipt{}, fmt.Errorf("payment gateway unavailable (fake failure %d of %d)", n, g.failAttempts)
	}
	if r, ok := g.receipts[req.IdempotencyKey]; ok {
		return r, nil
	}
	r := handlers.Receipt{PaymentID: "pay_" + uuid.NewString()}
	g.receipts[req.IdempotencyKey] = r
	g.logger.Info("payment charged", "order_id", req.OrderID, "amount_cents", req.AmountCents, "payment_id", r.PaymentID)
	return r, nil
}

// Attempts reports how often key was charged, failures included.
func (g *PaymentGateway) Attempts(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.attempts[key]
}

// Charges reports how many distinct charges succeeded.
func (g *PaymentGateway) Charges() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.receipts)
}
