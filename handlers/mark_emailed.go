package handlers

import (
	"context"

	"github.com/eventfn/eventfn/runtime"
)

// MarkOrderEmailed closes the flow: the order's confirmation is out.
func MarkOrderEmailed() runtime.Handler {
	return runtime.NewHandler("mark-order-emailed",
		func(ctx context.Context, tx runtime.Tx, ev EmailSent) error {
			// Queued: it runs with the commit, in the same round trip.
			return tx.Queue(ctx, runtime.Statement{
				Query: `UPDATE orders SET status = 'emailed', updated_at = CURRENT_TIMESTAMP WHERE id = $1`,
				Args:  []any{ev.OrderID},
			})
		},
	)
}
