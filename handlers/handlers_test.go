package handlers_test

import (
	"context"
	"fmt"
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

// downFor is a gateway that cannot be reached for its first calls.
type downFor struct {
	calls int
	next  handlers.PaymentGateway
}

func (g *downFor) Charge(ctx context.Context, req handlers.ChargeRequest) (handlers.Receipt, error) {
	if g.calls > 0 {
		g.calls--
		return handlers.Receipt{}, fmt.Errorf("dial gateway: %w", handlers.ErrUnavailable)
	}
	return g.next.Charge(ctx, req)
}

// TestChargePaymentWaitsForAGatewayThatIsDown: a gateway that cannot be
// reached is not the order's fault; the order waits for it far past its
// retries, on the policy's backoff, and is charged once when it is back.
func TestChargePaymentWaitsForAGatewayThatIsDown(t *testing.T) {
	env := eventfntest.New(t)
	gateway := fakes.NewPaymentGateway(0, 0, quiet())
	start := env.Clock.Now()
	res := env.Call(t, handlers.ChargePayment(&downFor{calls: 20, next: gateway}), placeOrder(t, env, "o-6"))
	if res.Err != nil || res.Attempts != 21 || len(res.Emitted) != 1 {
		t.Fatalf("err %v after %d attempts, %d emitted; want success on the 21st, past the 5 retries", res.Err, res.Attempts, len(res.Emitted))
	}
	// 100 ms doubling to 5 s: 6.3 s for the first six waits, then 14 of 5 s.
	if waited := env.Clock.Now().Sub(start); waited != 76300*time.Millisecond {
		t.Errorf("waited %s on the clock, want 1m16.3s", waited)
	}
	if s := orderStatus(t, env, "o-6"); s != "paid" {
		t.Errorf("order status %q, want paid", s)
	}
	if n := gateway.Charges(); n != 1 {
		t.Errorf("%d charges, want 1", n)
	}
}

// TestADependencyThatStaysDownIsNoDeadLetter: while the gateway or the mail
// server stays down, the call fails as unavailable and writes nothing; the
// runtime would go on waiting (the kit stops after eventfntest.MaxWaits tries),
// and never dead-letter the event for it. Once the service is back, the
// event goes through once.
func TestADependencyThatStaysDownIsNoDeadLetter(t *testing.T) {
	env := eventfntest.New(t)
	gateway := fakes.NewPaymentGateway(0, 0, quiet())
	gateway.SetUnavailable(true)
	placed := eventfntest.EventOf(t, placeOrder(t, env, "o-7"))
	res := env.Deliver(t, handlers.ChargePayment(gateway), placed)
	if !runtime.IsUnavailable(res.Err) || res.DeadLettered() || res.Attempts != eventfntest.MaxWaits+1 || len(res.Emitted) != 0 {
		t.Fatalf("err %v (dead-lettered %v) after %d attempts, %d emitted; want unavailable, not dead-lettered, after %d tries",
			res.Err, res.DeadLettered(), res.Attempts, len(res.Emitted), eventfntest.MaxWaits+1)
	}
	if s := orderStatus(t, env, "o-7"); s != "placed" || gateway.Charges() != 0 {
		t.Errorf("order status %q, %d charges while the gateway was down", s, gateway.Charges())
	}
	gateway.SetUnavailable(false)
	if res := env.Deliver(t, handlers.ChargePayment(gateway), placed); res.Err != nil || len(res.Emitted) != 1 {
		t.Fatalf("once the gateway is back: %+v", res)
	}

	mailer := fakes.NewLogMailer(quiet())
	mailer.SetUnavailable(true)
	confirmed := eventfntest.EventOf(t, handlers.PaymentConfirmed{OrderID: "o-7", PaymentID: "p-7", AmountCents: 2599, CustomerEmail: "o-7@example.com"})
	res = env.Deliver(t, handlers.SendConfirmation(mailer), confirmed)
	if !runtime.IsUnavailable(res.Err) || res.DeadLettered() || len(res.Emitted) != 0 {
		t.Fatalf("mail server down: err %v, dead-lettered %v, %d emitted", res.Err, res.DeadLettered(), len(res.Emitted))
	}
	if n := env.QueryInt(t, `SELECT count(*) FROM emails WHERE order_id = 'o-7'`); n != 0 || mailer.Count() != 0 {
		t.Errorf("%d email rows, %d sent while the mail server was down", n, mailer.Count())
	}
	mailer.SetUnavailable(false)
	if res := env.Deliver(t, handlers.SendConfirmation(mailer), confirmed); res.Err != nil || len(res.Emitted) != 1 || mailer.Count() != 1 {
		t.Fatalf("once the mail server is back: %+v, %d sent", res, mailer.Count())
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
