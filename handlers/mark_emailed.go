package handlers

import (
	"context"
	"fmt"

	"github.com/eventfn/eventfn/runtime"
)

// MarkOrderEmailed closes the flow: the order's confirmation is out.
func MarkOrderEmailed() runtime.Handler {
	return runtime.NewHandler("mark-order-emailed",
		func(ctx context.Context, tx runtime.Tx, ev EmailSent) error {
			if _, err := tx.ExecContext(ctx,
				`UPDATE orders SET status = 'emailed', updated_at = CURRENT_TIMESTAMP WHERE id = $1`,
				ev.OrderID); err != nil {
				return fmt.Errorf("mark order %s emailed: %w", ev.OrderID, err)
			}
			return nil
		},
	)
}
