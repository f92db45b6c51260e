package e2e

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// TestADependencyOutageDeadLettersNoOrder: the payment gateway goes down,
// and while it comes back the mail server goes down too, each for several
// times the handlers' whole retry budget (1 call + 5 retries: about 3 s).
// Before, every order of the outage was dead-lettered after its retries.
// Now orders are accepted throughout, /readyz stays ready (the API does
// not need the gateway), the waiting events are counted, and once the
// services are back every order is charged once, emailed once, and nothing
// is dead-lettered.
func TestADependencyOutageDeadLettersNoOrder(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	a := startApp(t, cfg)
	ids := []string{a.placeOrder(t, "before-outage@example.com")}
	a.waitEmailed(t, ids, 60*time.Second)

	a.Payments.SetUnavailable(true)
	gatewayBack := time.Now().Add(12 * time.Second)
	mailerDown := time.Now().Add(6 * time.Second)
	mailerBack := time.Now().Add(18 * time.Second)
	for i := 0; time.Now().Before(gatewayBack); i++ {
		id, status, body := a.tryPlaceOrder(fmt.Sprintf("outage-%d@example.com", i))
		if status != http.StatusCreated {
			t.Fatalf("order during the gateway's outage: %d %s", status, body)
		}
		ids = append(ids, id)
		if time.Now().After(mailerDown) {
			a.Mailer.SetUnavailable(true)
		}
		a.get(t, "/readyz")                // fails the test unless 200
		time.Sleep(250 * time.Millisecond) // the pace of the orders, not synchronisation
	}
	eventually(t, 30*time.Second, "a charge to wait for the gateway", func() (bool, string) {
		n := dependencyWaits(t, a, "charge-payment")
		return n > 0, fmt.Sprintf("%v charges wait", n)
	})
	if s := a.orderStatus(t, ids[1]); s != "placed" {
		t.Fatalf("order %s is %q while the gateway was down", ids[1], s)
	}
	a.Payments.SetUnavailable(false)
	eventually(t, 60*time.Second, "an email to wait for the mail server", func() (bool, string) {
		n := dependencyWaits(t, a, "send-confirmation")
		return n > 0, fmt.Sprintf("%v emails wait", n)
	})
	time.Sleep(time.Until(mailerBack)) // the outage's length, not synchronisation
	a.get(t, "/readyz")
	a.Mailer.SetUnavailable(false)

	a.waitEmailed(t, ids, 120*time.Second)
	if got := a.Payments.Charges(); got != len(ids) {
		t.Errorf("%d charges for %d orders", got, len(ids))
	}
	if got := count(t, cfg, `SELECT COUNT(*) FROM emails`); got != len(ids) || a.Mailer.Count() != len(ids) {
		t.Errorf("%d email rows and %d emails sent for %d orders", got, a.Mailer.Count(), len(ids))
	}
	for _, h := range []string{"charge-payment", "send-confirmation"} {
		if n := dependencyWaits(t, a, h); n != 0 {
			t.Errorf("%v events of %s still counted as waiting", n, h)
		}
	}
	client := kafkaClient(t, cfg)
	dlq := cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic)
	partitions, err := client.Partitions(dlq)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range partitions {
		if end, err := client.GetOffset(dlq, p, sarama.OffsetNewest); err != nil || end != 0 {
			t.Fatalf("dead-letter partition %d ends at %d (%v): the outage dead-lettered good events", p, end, err)
		}
	}
	t.Logf("%d orders through a gateway outage of 12 s and a mail server outage of 12 s", len(ids))
}

// dependencyWaits reads eventfn_dependency_waits_in_progress of handler
// from /metrics.
func dependencyWaits(t *testing.T, a *app, handler string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^eventfn_dependency_waits_in_progress\{handler="` + regexp.QuoteMeta(handler) + `"\} (\S+)$`)
	m := re.FindStringSubmatch(a.get(t, "/metrics"))
	if m == nil {
		t.Fatalf("/metrics has no eventfn_dependency_waits_in_progress for %s", handler)
	}
	n, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
