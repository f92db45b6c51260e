package handlers

import "context"

// PaymentGateway charges customers. Charges with the same IdempotencyKey are
// charged once, as real gateways promise: a handler retried after the gateway
// answered but before its transaction committed does not charge twice.
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
