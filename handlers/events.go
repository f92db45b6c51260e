package handlers

import (
	"errors"
	"fmt"
	"net/mail"
)

// OrderItem is one line of an order.
type OrderItem struct {
	SKU        string `json:"sku"`
	Quantity   int64  `json:"quantity"`
	PriceCents int64  `json:"price_cents"`
}

// OrderPlaced says a customer placed an order. Its key is the order id, so all
// events of one order stay on one partition, in order.
type OrderPlaced struct {
	OrderID       string      `json:"order_id" jsonschema:"minLength=1"`
	CustomerEmail string      `json:"customer_email" jsonschema:"format=email"`
	Items         []OrderItem `json:"items"`
	TotalCents    int64       `json:"total_cents" jsonschema:"minimum=0"`
}

func (OrderPlaced) EventType() string  { return "order.placed" }
func (e OrderPlaced) EventKey() string { return e.OrderID }

// Validate checks the fields a payment needs.
func (e OrderPlaced) Validate() error {
	var errs []error
	if e.OrderID == "" {
		errs = append(errs, errors.New("order_id is required"))
	}
	if _, err := mail.ParseAddress(e.CustomerEmail); err != nil {
		errs = append(errs, fmt.Errorf("customer_email %q is not an email address", e.CustomerEmail))
	}
	if e.TotalCents < 0 {
		errs = append(errs, errors.New("total_cents must not be negative"))
	}
	return errors.Join(errs...)
}

// PaymentConfirmed says an order's payment went through.
type PaymentConfirmed struct {
	OrderID       string `json:"order_id" jsonschema:"minLength=1"`
	PaymentID     string `json:"payment_id" jsonschema:"minLength=1"`
	AmountCents   int64  `json:"amount_cents"`
	CustomerEmail string `json:"customer_email" jsonschema:"format=email"`
}

func (PaymentConfirmed) EventType() string  { return "payment.confirmed" }
func (e PaymentConfirmed) EventKey() string { return e.OrderID }

// Validate checks the fields the confirmation email needs.
func (e PaymentConfirmed) Validate() error {
	var errs []error
	if e.OrderID == "" {
		errs = append(errs, errors.New("order_id is required"))
	}
	if e.PaymentID == "" {
		errs = append(errs, errors.New("payment_id is required"))
	}
	if _, err := mail.ParseAddress(e.CustomerEmail); err != nil {
		errs = append(errs, fmt.Errorf("customer_email %q is not an email address", e.CustomerEmail))
	}
	return errors.Join(errs...)
}

// EmailSent says the order confirmation went out.
type EmailSent struct {
	OrderID   string `json:"order_id" jsonschema:"minLength=1"`
	Recipient string `json:"recipient"`
}

func (EmailSent) EventType() string  { return "email.sent" }
func (e EmailSent) EventKey() string { return e.OrderID }

// Validate checks that the event names an order.
func (e EmailSent) Validate() error {
	if e.OrderID == "" {
		return errors.New("order_id is required")
	}
	return nil
}
