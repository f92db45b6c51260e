package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/wiring"
)

// startTracedApp runs the app with an in-memory span exporter.
func startTracedApp(t *testing.T, cfg configs.Config) (*app, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	a := startAppBuiltBy(t, cfg, func(ctx context.Context, base wiring.BaseConfig, logger *slog.Logger) (*wiring.App, func(), error) {
		return wiring.BuildAppTraced(ctx, base, logger, tp)
	})
	return a, exp
}

// chainSpans waits until the trace holds the spans named, and returns them
// in that order; each must be the parent of the next.
func chainSpans(t *testing.T, exp *tracetest.InMemoryExporter, traceID trace.TraceID, names []string) []tracetest.SpanStub {
	t.Helper()
	var chain []tracetest.SpanStub
	eventually(t, 60*time.Second, "every span of the chain exported", func() (bool, string) {
		byName := map[string]tracetest.SpanStub{}
		var seen []string
		for _, s := range exp.GetSpans() {
			if s.SpanContext.TraceID() == traceID {
				byName[s.Name] = s
				seen = append(seen, s.Name)
			}
		}
		chain = chain[:0]
		for _, n := range names {
			s, ok := byName[n]
			if !ok {
				return false, fmt.Sprintf("no span %q yet; the trace has %v", n, seen)
			}
			chain = append(chain, s)
		}
		return true, ""
	})
	for i := 1; i < len(chain); i++ {
		if got, want := chain[i].Parent.SpanID(), chain[i-1].SpanContext.SpanID(); got != want {
			t.Errorf("span %q has parent %s, want %q (%s)", chain[i].Name, got, chain[i-1].Name, want)
		}
	}
	return chain
}

// TestOneTracePerChain: an order's chain is one trace. POST /orders is its
// root; the relay's send of each event is a child of the span that emitted
// it, and each handler call a child of that send: POST → send order.placed →
// charge-payment → send payment.confirmed → send-confirmation → send
// email.sent → mark-order-emailed. The context travels in the outbox rows and
// in the Kafka headers as ce_traceparent.
func TestOneTracePerChain(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	a, exp := startTracedApp(t, cfg)
	id := a.placeOrder(t, "traced@example.com")
	a.waitEmailed(t, []string{id}, 60*time.Second)

	var root tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		for _, kv := range s.Attributes {
			if kv.Key == "eventfn.order_id" && kv.Value.AsString() == id {
				root = s
			}
		}
	}
	if root.Name != "POST /orders" || root.Parent.IsValid() {
		t.Fatalf("no root span POST /orders for order %s (got %q, parent %v)", id, root.Name, root.Parent)
	}
	topic := cfg.Kafka.Topic
	chain := chainSpans(t, exp, root.SpanContext.TraceID(), []string{
		"POST /orders",
		"send " + topic("order.placed"), "charge-payment process order.placed",
		"send " + topic("payment.confirmed"), "send-confirmation process payment.confirmed",
		"send " + topic("email.sent"), "mark-order-emailed process email.sent",
	})
	for _, s := range chain[1:] {
		want := trace.SpanKindProducer
		if strings.Contains(s.Name, " process ") {
			want = trace.SpanKindConsumer
		}
		if s.SpanKind != want {
			t.Errorf("span %q is %s, want %s", s.Name, s.SpanKind, want)
		}
	}
	// The record on Kafka carries the relay's span in the CloudEvents
	// extension's header.
	for _, m := range readAll(t, kafkaClient(t, cfg), topic("payment.confirmed"), 1, 30*time.Second, nil) {
		tp := header(m, "ce_traceparent")
		if !strings.HasPrefix(tp, "00-"+root.SpanContext.TraceID().String()+"-") {
			t.Errorf("payment.confirmed carries ce_traceparent %q, want one of trace %s", tp, root.SpanContext.TraceID())
		}
	}
}

// TestAnotherProducersTracedEventJoinsItsTrace: an order.placed produced by
// another service, with the traceparent header its OpenTelemetry Kafka
// instrumentation writes, is handled in that trace, and the chain it starts
// continues it.
func TestAnotherProducersTracedEventJoinsItsTrace(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	a, exp := startTracedApp(t, cfg)
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	parent, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	orderID := "ext-" + uuid.NewString()
	produce(t, kafkaClient(t, cfg), cfg.Kafka.Topic("order.placed"), []byte(orderID),
		[]byte(`{"order_id":"`+orderID+`","customer_email":"ext@example.com","total_cents":700}`),
		map[string]string{
			"ce_id": uuid.NewString(), "ce_type": "order.placed", "ce_source": "other-service", "ce_specversion": "1.0",
			"content-type": "application/json",
			"traceparent":  "00-" + traceID.String() + "-" + parent.String() + "-01",
		})
	chain := chainSpans(t, exp, traceID, []string{
		"charge-payment process order.placed", "send " + cfg.Kafka.Topic("payment.confirmed"), "send-confirmation process payment.confirmed",
	})
	if got := chain[0].Parent.SpanID(); got != parent {
		t.Errorf("charge-payment's span has parent %s, want the producer's %s", got, parent)
	}
	if !chain[0].Parent.IsRemote() {
		t.Error("the producer's span is not marked remote")
	}
	found := false
	for _, kv := range chain[0].Attributes {
		if kv == attribute.String("cloudevents.event_source", "other-service") {
			found = true
		}
	}
	if !found {
		t.Errorf("charge-payment's span lacks the event source: %v", chain[0].Attributes)
	}
	_ = a
}
