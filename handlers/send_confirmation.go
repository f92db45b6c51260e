package handlers

import (
	"context"
	"errors"
	"fmt"

	"github.com/eventfn/eventfn/runtime"
)

// SendConfirmation emails the customer once their payment is confirmed.
func SendConfirmation(mailer Mailer) runtime.Handler {
	return runtime.NewHandler("send-confirmation",
		func(ctx context.Context, tx runtime.Tx, ev PaymentConfirmed) error {
			email := Email{
				To:      ev.CustomerEmail,
				Subject: "Your order " + ev.OrderID + " is confirmed",
				Body:    fmt.Sprintf("We received your payment of %d.%02d (payment %s).", ev.AmountCents/100, ev.AmountCents%100, ev.PaymentID),
			}
			// Record first: if the order's confirmation was already recorded (a
			// second payment.confirmed for it), there is nothing to send. If the
			// send fails, the transaction rolls the record back and the call is retried.
			res, err := tx.ExecContext(ctx,
				`INSERT INTO emails (order_id, recipient, subject, body) VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING`,
				ev.OrderID, email.To, email.Subject, email.Body)
			if err != nil {
				return fmt.Errorf("record email of order %s: %w", ev.OrderID, err)
			}
			if n, err := res.RowsAffected(); err != nil || n == 0 {
				return err
			}
			if err := mailer.Send(ctx, email); err != nil {
				err = fmt.Errorf("email %s about order %s: %w", email.To, ev.OrderID, err)
				if errors.Is(err, ErrUnavailable) {
					// The mail server is down or slow: the email waits for it.
					return runtime.Unavailable(err)
				}
				return err
			}
			return tx.Emit(ctx, EmailSent{OrderID: ev.OrderID, Recipient: email.To})
		},
		runtime.Emits(EmailSent{}),
	)
}
