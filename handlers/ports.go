package handlers

import (
	"context"
	"errors"
)

// ErrUnavailable is what an error of a PaymentGateway or a Mailer wraps when
// the service cannot serve now: it is down, overloaded, or did not answer
// in time. Trying again later may succeed, so the handlers pass it on as
// runtime.Unavailable: the event waits for the service rather than using up
// its retries and going to the dead-letter topic.
var ErrUnavailable = errors.New("service unavailable")

// PaymentGateway charges customers. Charges with the same IdempotencyKey are
// charged once, as real gateways promise: a handler retried after the gateway
// answered but before its transaction committed does not charge twice, nor
// one retried after a charge whose answer never came (ErrUnavailable).
type PaymentGateway interface {
	Charge(ctx context.Context, req ChargeRequest) (Receipt, error)
}

// ChargeRequest asks for one payment.
type ChargeRequest struct {
	IdempotencyKey string
	OrderID        string
	AmountCents    int64
}

// Receipt is the gateway's answer to a successful charge.
type Receipt struct {
	PaymentID string
}

// Mailer sends email.
type Mailer interface {
	Send(ctx context.Context, email Email) error
}

// Email is one message to one recipient.
type Email struct {
	To      string
	Subject string
	Body    string
}
