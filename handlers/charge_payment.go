package handlers

import (
	"context"
	"errors"
	"fmt"

	"github.com/eventfn/eventfn/runtime"
)

// ChargePayment charges a placed order and confirms the payment.
func ChargePayment(gateway PaymentGateway) runtime.Handler {
	return runtime.NewHandler("charge-payment",
		func(ctx context.Context, tx runtime.Tx, ev OrderPlaced) error {
			receipt, err := gateway.Charge(ctx, ChargeRequest{
				IdempotencyKey: "order-" + ev.OrderID,
				OrderID:        ev.OrderID,
				AmountCents:    ev.TotalCents,
			})
			if err != nil {
				err = fmt.Errorf("charge order %s: %w", ev.OrderID, err)
				if errors.Is(err, ErrUnavailable) {
					// The gateway is down or slow, not the order at fault:
					// the order waits for it. The idempotency key makes a
					// charge that went through unanswered a no-op when tried
					// again.
					return runtime.Unavailable(err)
				}
				return err
			}
			res, err := tx.ExecContext(ctx,
				`INSERT INTO payments (order_id, payment_id, amount_cents) VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING`,
				ev.OrderID, receipt.PaymentID, ev.TotalCents)
			if err != nil {
				return fmt.Errorf("record payment of order %s: %w", ev.OrderID, err)
			}
			// The inbox stops redeliveries of one event; a second order.placed for
			// the same order (a new event id) finds the payment here. The gateway's
			// idempotency key made the charge itself a no-op.
			if n, err := res.RowsAffected(); err != nil || n == 0 {
				return err
			}
			// Nothing below needs the update's result: queued, it travels to the
			// database with the commit instead of taking a round trip of its own.
			if err := tx.Queue(ctx, runtime.Statement{
				Query: `UPDATE orders SET status = 'paid', updated_at = CURRENT_TIMESTAMP WHERE id = $1 AND status = 'placed'`,
				Args:  []any{ev.OrderID},
			}); err != nil {
				return fmt.Errorf("mark order %s paid: %w", ev.OrderID, err)
			}
			return tx.Emit(ctx, PaymentConfirmed{
				OrderID:       ev.OrderID,
				PaymentID:     receipt.PaymentID,
				AmountCents:   ev.TotalCents,
				CustomerEmail: ev.CustomerEmail,
			})
		},
		runtime.Emits(PaymentConfirmed{}),
	)
}
