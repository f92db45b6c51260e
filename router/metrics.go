package router

import (
	"context"
	"fmt"
	"time"

	wmetrics "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are eventfn's own counters; Watermill's router metrics (handler
// execution time, messages published and received) come from its
// components/metrics and share the registry.
type metrics struct {
	attempts     *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	duplicates   *prometheus.CounterVec
	batchCalls   *prometheus.HistogramVec
	builder      wmetrics.PrometheusMetricsBuilder
	ops          *opsMetrics
}

func newMetrics(reg prometheus.Registerer, outbox *Outbox) (*metrics, error) {
	m := &metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "eventfn", Name: "handler_attempts_total",
			Help: "Handler calls by result: ok, error (retried or dead-lettered), permanent, unavailable (a dependency; retried without using retries), infrastructure.",
		}, []string{"handler", "result"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "eventfn", Name: "dead_lettered_total",
			Help: "Events moved to the dead-letter topic.",
		}, []string{"handler"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "eventfn", Name: "inbox_duplicates_total",
			Help: "Redelivered events acknowledged without running the handler.",
		}, []string{"handler"}),
		batchCalls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "eventfn", Name: "handler_transaction_calls",
			Help:    "Handler calls that shared one transaction (group commit; 1 when calls do not queue up).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64},
		}, []string{"handler"}),
		builder: wmetrics.NewPrometheusMetricsBuilder(reg, "eventfn", "watermill"),
	}
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "eventfn", Name: "outbox_pending",
		Help: "Committed outbox rows the relay has not forwarded to Kafka yet.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := outbox.Pending(ctx)
		if err != nil {
			return -1
		}
		return float64(n)
	})
	for _, c := range []prometheus.Collector{m.attempts, m.deadLettered, m.duplicates, m.batchCalls, pending} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metric: %w", err)
		}
	}
	ops, err := newOpsMetrics(reg, outbox)
	if err != nil {
		return nil, err
	}
	m.ops = ops
	return m, nil
}

// instrument adds Watermill's router metrics to r.
func (m *metrics) instrument(r *message.Router) { m.builder.AddPrometheusRouterMetrics(r) }
