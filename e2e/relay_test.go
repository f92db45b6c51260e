package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
)

// TestAnIdleTransactionElsewhereDoesNotStallOrders: on PostgreSQL the relay
// once waited for the oldest open transaction of the whole server, so one
// idle session anywhere kept every new order "placed" for as long as it
// stayed open. Orders must complete while it stays open.
func TestAnIdleTransactionElsewhereDoesNotStallOrders(t *testing.T) {
	t.Parallel()
	base := testenv.RequirePostgres(t)
	e := newEngines(t)
	a := startApp(t, e.config(t, nil))

	other, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx := context.Background()
	idle, err := other.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = idle.Rollback() }()
	if _, err := idle.ExecContext(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}

	var ids []string
	for i := range 5 {
		ids = append(ids, a.placeOrder(t, fmt.Sprintf("idle%d@example.com", i)))
	}
	// Well under the minute the transaction stays open: with the old relay
	// the orders stayed placed until it ended.
	a.waitEmailed(t, ids, 20*time.Second)
	if err := idle.Rollback(); err != nil {
		t.Fatal(err)
	}
}

// TestADeletedTopicHoldsBackOnlyItsOwnEvents: with email.sent deleted under
// a running eventfn (and not created again), the relay cannot forward the
// events send-confirmation emits. They once held every other event behind
// them: once a batch's worth (5 here) led the outbox, no order was charged
// any more. Now new orders are still charged and confirmed while the
// email.sent events wait; /readyz names the topic; once it exists again,
// every order reaches emailed. On real Kafka the topic stays away until the
// test creates it; before, 14 of the 16 confirmations were sent in 60 s, the
// payment.confirmed events of two orders stuck behind email.sent's. The
// embedded broker creates a topic a client asks metadata for
// (kfake.AllowAutoTopicCreation and Sarama's default), so there the topic
// comes back by itself soon after, and the test checks only that nothing is
// lost or doubled.
func TestADeletedTopicHoldsBackOnlyItsOwnEvents(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, func(c *configs.Config) { c.Relay.BatchSize = 5 })
	a := startApp(t, cfg)
	first := a.placeOrder(t, "before@example.com")
	a.waitEmailed(t, []string{first}, 30*time.Second)

	cl, err := kgo.NewClient(kgo.SeedBrokers(cfg.Kafka.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	admin := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	emailSent := cfg.Kafka.Topic("email.sent")
	if _, err := admin.DeleteTopics(ctx, emailSent); err != nil {
		t.Fatal(err)
	}

	var ids []string
	for i := range 15 {
		ids = append(ids, a.placeOrder(t, fmt.Sprintf("held%d@example.com", i)))
	}
	eventually(t, 60*time.Second, "every order charged and its confirmation sent", func() (bool, string) {
		var behind []string
		for _, id := range ids {
			if s := a.orderStatus(t, id); s != "paid" {
				behind = append(behind, id+"="+s)
			}
		}
		return len(behind) == 0 && a.Mailer.Count() == 1+len(ids), fmt.Sprintf("%d emails; not paid: %v", a.Mailer.Count(), behind)
	})
	eventually(t, 30*time.Second, "/readyz naming the deleted topic", func() (bool, string) {
		status, body := a.readyz()
		return status == http.StatusServiceUnavailable && strings.Contains(body, emailSent), fmt.Sprintf("%d %s", status, body)
	})

	testenv.CreateTopicAgain(ctx, t, admin, emailSent, int32(cfg.Kafka.Partitions))
	a.waitEmailed(t, append(ids, first), 60*time.Second)
	if n := a.Mailer.Count(); n != 1+len(ids) {
		t.Errorf("%d confirmations sent for %d orders", n, 1+len(ids))
	}
}
