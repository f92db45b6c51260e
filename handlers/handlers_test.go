package handlers_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/eventfn/eventfn/eventfntest"
	"github.com/eventfn/eventfn/fakes"
	"github.com/eventfn/eventfn/handlers"
	"github.com/eventfn/eventfn/runtime"
)

// placeOrder stores the order row the reference flow's ingress writes, and
// returns its order.placed event.
func placeOrder(t *testing.T, env *eventfntest.Env, id string) handlers.OrderPlaced {
	t.Helper()
	if _, err := env.DB.ExecContext(context.Background(),
		`INSERT INTO orders (id, customer_email, total_cents, status) VALUES ($1, $2, $3, 'placed')`, id, id+"@example.com", 2599); err != nil {
		t.Fatal(err)
	}
	return handlers.OrderPlaced{OrderID: id, CustomerEmail: id + "@example.com", TotalCents: 2599,
		Items: []handlers.OrderItem{{SKU: "tea", Quantity: 1, PriceCents: 2599}}}
}

func orderStatus(t *testing.T, env *eventfntest.Env, id string) string {
	t.Helper()
	var s string
	if err := env.DB.QueryRowContext(context.Background(), `SELECT status FROM orders WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestChargePaymentChargesOnceAndConfirms(t *testing.T) {
	env := eventfntest.New(t)
	gateway := fakes.NewPaymentGateway(0, 0, quiet())
	h := handlers.ChargePayment(gateway)
	placed := eventfntest.EventOf(t, placeOrder(t, env, "o-1"))

	res := env.Deliver(t, h, placed)
	if res.Err != nil || len(res.Emitted) != 1 {
		t.Fatalf("err %v, emitted %v", res.Err, res.Emitted)
	}
	confirmed := eventfntest.Decode[handlers.PaymentConfirmed](t, res.Emitted[0])
	if confirmed.OrderID != "o-1" || confirmed.AmountCents != 2599 || confirmed.CustomerEmail != "o-1@example.com" || confirmed.PaymentID == "" {
		t.Errorf("payment.confirmed %+v", confirmed)
	}
	if res.Emitted[0].Key != "o-1" || res.Emitted[0].CorrelationID != placed.CorrelationID {
		t.Errorf("emitted key %q correlation %q; want the order id and the chain's correlation id", res.Emitted[0].Key, res.Emitted[0].CorrelationID)
	}
	if s := orderStatus(t, env, "o-1"); s != "paid" {
		t.Errorf("order status %q, want paid", s)
	}

	// Kafka delivers the same event again: the inbox has it.
	again := env.Deliver(t, h, placed)
	if !again.Duplicate || again.Err != nil || len(again.Emitted) != 0 {
		t.Errorf("redelivery: %+v", again)
	}
	if n := gateway.Attempts("order-o-1"); n != 1 {
		t.Errorf("the gateway was called %d times, want 1", n)
	}
}

func TestChargePaymentRetriesOnItsPolicyAndRollsBackFailedAttempts(t *testing.T) {
	env := eventfntest.New(t)
	h := handlers.ChargePayment(fakes.NewPaymentGateway(2, 0, quiet()))
	start := env.Clock.Now()
	res := env.Call(t, h, placeOrder(t, env, "o-2"))
	if res.Err != nil || res.Attempts != 3 || len(res.Emitted) != 1 {
		t.Fatalf("err %v after %d attempts, %d emitted; want success on the third", res.Err, res.Attempts, len(res.Emitted))
	}
	// The default policy waits 100 ms, then 200 ms: on the fake clock, at once.
	if waited := env.Clock.Now().Sub(start); waited != 300*time.Millisecond {
		t.Errorf("retries waited %s on the clock, want 300ms", waited)
	}
	if n := env.QueryInt(t, `SELECT count(*) FROM payments WHERE order_id = 'o-2'`); n != 1 {
		t.Errorf("%d payment rows, want 1", n)
	}
}

func TestChargePaymentGivesUpAfterItsRetries(t *testing.T) {
	env := eventfntest.New(t)
	res := env.Call(t, handlers.ChargePayment(fakes.NewPaymentGateway(1000, 0, quiet())), placeOrder(t, env, "o-3"))
	if !res.DeadLettered() || res.Attempts != 6 || len(res.Emitted) != 0 {
		t.Fatalf("err %v after %d attempts, %d emitted; want dead-lettered after 1 + 5 retries, nothing emitted", res.Err, res.Attempts, len(res.Emitted))
	}
	if s := orderStatus(t, env, "o-3"); s != "placed" {
		t.Errorf("order status %q: a failed attempt's writes were kept", s)
	}
}

func TestSendConfirmationEmailsOnce(t *testing.T) {
	env := eventfntest.New(t)
	mailer := fakes.NewLogMailer(quiet())
	ev := eventfntest.EventOf(t, handlers.PaymentConfirmed{OrderID: "o-4", PaymentID: "p-1", AmountCents: 1250, CustomerEmail: "c@example.com"})
	res := env.Deliver(t, handlers.SendConfirmation(mailer), ev)
	if res.Err != nil || len(res.Emitted) != 1 {
		t.Fatalf("%+v", res)
	}
	if sent := eventfntest.Decode[handlers.EmailSent](t, res.Emitted[0]); sent.Recipient != "c@example.com" {
		t.Errorf("email.sent %+v", sent)
	}
	env.Deliver(t, handlers.SendConfirmation(mailer), ev)
	if n := len(mailer.Sent()); n != 1 {
		t.Errorf("%d emails sent for one confirmation delivered twice", n)
	}
}

func TestABadPayloadIsPermanent(t *testing.T) {
	env := eventfntest.New(t)
	ev := eventfntest.EventOf(t, handlers.OrderPlaced{OrderID: "o-5"}) // no email, no total
	res := env.Deliver(t, handlers.ChargePayment(fakes.NewPaymentGateway(0, 0, quiet())), ev)
	if !runtime.IsPermanent(res.Err) || res.Attempts != 1 {
		t.Fatalf("err %v after %d attempts; want a permanent error at once", res.Err, res.Attempts)
	}
}

// TestTheOrderChain runs the whole reference chain in one test, with no
// broker: order.placed → charge-payment → payment.confirmed →
// send-confirmation → email.sent → mark-order-emailed.
func TestTheOrderChain(t *testing.T) {
	env := eventfntest.New(t)
	mailer := fakes.NewLogMailer(quiet())
	scenario := env.Scenario(handlers.Registry(fakes.NewPaymentGateway(1, 0, quiet()), mailer)...)
	log := scenario.Run(t, placeOrder(t, env, "o-6"), placeOrder(t, env, "o-7"))

	if failed := log.Failed(); len(failed) != 0 {
		t.Fatalf("dead-lettered: %+v", failed)
	}
	want := []string{"order.placed", "order.placed", "payment.confirmed", "payment.confirmed", "email.sent", "email.sent"}
	if got := log.Types(); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
	for _, id := range []string{"o-6", "o-7"} {
		if s := orderStatus(t, env, id); s != "emailed" {
			t.Errorf("order %s is %s, want emailed", id, s)
		}
		var keys []string
		for _, ev := range log.Events {
			if ev.Key == id {
				keys = append(keys, ev.Type)
			}
		}
		if !slices.Equal(keys, []string{"order.placed", "payment.confirmed", "email.sent"}) {
			t.Errorf("order %s's events in order: %v", id, keys)
		}
	}
	if n := len(mailer.Sent()); n != 2 {
		t.Errorf("%d emails, want 2", n)
	}
	if n := env.QueryInt(t, `SELECT count(*) FROM eventfn_inbox`); n != 6 {
		t.Errorf("%d inbox rows, want one per handler and event: 6", n)
	}
}
