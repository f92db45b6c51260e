package fakes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/eventfn/eventfn/handlers"
)

// TestTheGatewayRemembersBoundedKeys: a repeated key within the bound gets
// its first receipt; past the bound the oldest keys are forgotten, so memory
// stays bounded however many orders go through.
func TestTheGatewayRemembersBoundedKeys(t *testing.T) {
	ctx := context.Background()
	g := NewPaymentGateway(0, 0, slog.New(slog.DiscardHandler))
	g.maxKeys = 10
	charge := func(i int) handlers.Receipt {
		t.Helper()
		r, err := g.Charge(ctx, handlers.ChargeRequest{IdempotencyKey: fmt.Sprintf("k-%d", i), OrderID: fmt.Sprint(i), AmountCents: 1})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	first := charge(0)
	for i := 1; i < 10; i++ {
		charge(i)
	}
	if again := charge(0); again != first {
		t.Fatalf("a repeated key within the bound got receipt %v, want the first %v", again, first)
	}
	for i := 10; i < 1000; i++ {
		charge(i)
	}
	if n := len(g.attempts); n != 10 || len(g.receipts) != 10 || len(g.order)-g.head != 10 {
		t.Fatalf("after 1000 keys the gateway holds %d attempts, %d receipts and %d keys, want 10 each", n, len(g.receipts), len(g.order)-g.head)
	}
	if cap(g.order) > 40 {
		t.Fatalf("the key list grew to capacity %d for a bound of 10", cap(g.order))
	}
	if g.Attempts("k-0") != 0 || g.Attempts("k-999") != 1 {
		t.Fatalf("attempts: oldest %d (want forgotten, 0), newest %d (want 1)", g.Attempts("k-0"), g.Attempts("k-999"))
	}
	if g.Charges() != 1000 {
		t.Fatalf("Charges() = %d, want 1000", g.Charges())
	}
}

// TestTheGatewayFailsEachKeysFirstAttempts: failAttempts counts per key.
func TestTheGatewayFailsEachKeysFirstAttempts(t *testing.T) {
	g := NewPaymentGateway(2, 0, slog.New(slog.DiscardHandler))
	req := handlers.ChargeRequest{IdempotencyKey: "k", OrderID: "o", AmountCents: 5}
	for i := 1; i <= 2; i++ {
		if _, err := g.Charge(context.Background(), req); err == nil {
			t.Fatalf("attempt %d succeeded, want a fake failure", i)
		}
	}
	if _, err := g.Charge(context.Background(), req); err != nil {
		t.Fatalf("third attempt: %v", err)
	}
	if g.Attempts("k") != 3 || g.Charges() != 1 {
		t.Fatalf("attempts %d, charges %d; want 3 and 1", g.Attempts("k"), g.Charges())
	}
}

// TestTheFakesSayWhenTheyAreUnavailable: a gateway or mailer taken down,
// and a charge that takes longer than its context allows, fail with
// handlers.ErrUnavailable and charge or send nothing; a fake failure is a
// plain error, which uses up the handler's retries.
func TestTheFakesSayWhenTheyAreUnavailable(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	req := handlers.ChargeRequest{IdempotencyKey: "k", OrderID: "o", AmountCents: 5}
	timedOut, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	down := NewPaymentGateway(0, 0, quiet)
	down.SetUnavailable(true)
	mailer := NewLogMailer(quiet)
	mailer.SetUnavailable(true)
	tests := []struct {
		name        string
		call        func() error
		unavailable bool
	}{
		{"gateway down", func() error { _, err := down.Charge(context.Background(), req); return err }, true},
		{"gateway slower than the call's timeout", func() error {
			_, err := NewPaymentGateway(0, time.Minute, quiet).Charge(timedOut, req)
			return err
		}, true},
		{"gateway's fake failure", func() error { _, err := NewPaymentGateway(1, 0, quiet).Charge(context.Background(), req); return err }, false},
		{"mailer down", func() error { return mailer.Send(context.Background(), handlers.Email{To: "a@example.com"}) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if err == nil || errors.Is(err, handlers.ErrUnavailable) != tt.unavailable {
				t.Fatalf("error %v; want one that wraps handlers.ErrUnavailable: %v", err, tt.unavailable)
			}
		})
	}
	if down.Charges() != 0 || down.Attempts("k") != 0 || mailer.Count() != 0 {
		t.Fatalf("while down: %d charges, %d attempts seen, %d emails sent; want none", down.Charges(), down.Attempts("k"), mailer.Count())
	}
	down.SetUnavailable(false)
	if _, err := down.Charge(context.Background(), req); err != nil || down.Charges() != 1 {
		t.Fatalf("back up: %v, %d charges", err, down.Charges())
	}
}

// TestTheMailerKeepsTheLastEmails: Sent holds the last keep emails, oldest
// first; Count counts them all.
func TestTheMailerKeepsTheLastEmails(t *testing.T) {
	for _, n := range []int{0, 2, 3, 7} {
		t.Run(fmt.Sprintf("%d sent", n), func(t *testing.T) {
			m := NewLogMailer(slog.New(slog.DiscardHandler))
			m.keep = 3
			for i := range n {
				if err := m.Send(context.Background(), handlers.Email{To: fmt.Sprint(i)}); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			for _, e := range m.Sent() {
				got = append(got, e.To)
			}
			var want []string
			for i := max(0, n-3); i < n; i++ {
				want = append(want, fmt.Sprint(i))
			}
			if fmt.Sprint(got) != fmt.Sprint(want) || m.Count() != n {
				t.Fatalf("Sent() = %v, Count() = %d; want %v and %d", got, m.Count(), want, n)
			}
		})
	}
}
