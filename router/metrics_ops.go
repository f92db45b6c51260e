package router

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/runtime"
)

// HeaderChainStarted carries, on every event of a chain, when the chain's
// first event was created (RFC 3339 with nanoseconds, UTC). It is set on the
// first event and copied to every event emitted while handling one, as
// ce_correlationid is, so that a handler can tell how long the chain has been
// running without looking anything up.
const HeaderChainStarted = "eventfn_chain_started"

// Dead-letter classes of eventfn_dead_letters_total.
const (
	classMalformed = "malformed" // the record cannot be read as an event
	classPermanent = "permanent" // the handler (or Validate) refused it for good
	classExhausted = "exhausted" // it failed every retry
	classTimeout   = "timeout"   // its last attempt ran out of time
)

// metaDeadLetterClass carries the class of a failure from the middleware that
// sees the final error to the dead-letter publisher, which counts it once the
// dead letter is written; it never reaches the wire.
const metaDeadLetterClass = "eventfn_dead_letter_class"

// opsMetrics are the operational metrics of issue 9: how long handlers take,
// how long chains take, what waits for a retry, why events are dead-lettered,
// how far consumers are behind and how old the oldest unforwarded event is.
type opsMetrics struct {
	handlerDuration *prometheus.HistogramVec
	chainLatency    *prometheus.HistogramVec
	retrying        *prometheus.GaugeVec
	unavailable     *prometheus.GaugeVec
	deadLetters     *prometheus.CounterVec
	deleted         *prometheus.CounterVec
	lag             *lagCollector
}

func newOpsMetrics(reg prometheus.Registerer, outbox *Outbox) (*opsMetrics, error) {
	m := &opsMetrics{
		handlerDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "eventfn", Name: "handler_duration_seconds",
			Help: "Duration of one handler call, transaction included, by result: ok, error, permanent, unavailable, infrastructure, duplicate.",
			// Handlers are database work plus an outside call or two:
			// milliseconds usually, up to their timeout (30 s by default).
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"handler", "result"}),
		chainLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "eventfn", Name: "chain_latency_seconds",
			Help: "Time from the first event of a chain (correlation id) to the handling of a later event, by the type its handler handles.",
			// A chain crosses the outbox relay and Kafka at every step, and
			// retries add seconds to minutes.
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"event_type"}),
		retrying: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "eventfn", Name: "retries_in_progress",
			Help: "Events between a failed attempt and their next one.",
		}, []string{"handler"}),
		unavailable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "eventfn", Name: "dependency_waits_in_progress",
			Help: "Events whose last attempt found a dependency of the handler unavailable (runtime.Unavailable), waiting to be tried again without using their retries.",
		}, []string{"handler"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "eventfn", Name: "dead_letters_total",
			Help: "Dead letters written, by class: malformed, permanent, exhausted, timeout.",
		}, []string{"handler", "class"}),
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "eventfn", Name: "consumer_records_deleted_total",
			Help: "Records Kafka deleted (the topic's retention, kafka-delete-records) before the handler's group consumed them: lost to the handler.",
		}, []string{"handler"}),
		lag: &lagCollector{desc: prometheus.NewDesc("eventfn_consumer_lag",
			"Records of a handler's partition not yet handled: the partition's high watermark minus the next offset to finish.",
			[]string{"handler", "partition"}, nil)},
	}
	oldest := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "eventfn", Name: "outbox_oldest_pending_seconds",
		Help: "Age of the oldest outbox row not yet forwarded to Kafka; 0 when none, -1 if the query failed.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s, err := outbox.Stats(ctx)
		if err != nil {
			return -1
		}
		return pendingAge(s.OldestPending, time.Now())
	})
	for _, c := range []prometheus.Collector{m.handlerDuration, m.chainLatency, m.retrying, m.unavailable, m.deadLetters, m.deleted, m.lag, oldest} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metric: %w", err)
		}
	}
	return m, nil
}

// deletedCounter counts, in c, the records a handler's group found deleted
// before it consumed them (dispatch.Config.Deleted).
func deletedCounter(c prometheus.Counter) func(topic string, partition int32, from, to int64) {
	return func(_ string, _ int32, from, to int64) { c.Add(float64(to - from)) }
}

// pendingAge is how long ago oldest was, 0 for none; a clock that went
// backwards (or a database clock ahead of ours) gives 0 rather than a
// negative age.
func pendingAge(oldest, now time.Time) float64 {
	if oldest.IsZero() {
		return 0
	}
	return max(now.Sub(oldest).Seconds(), 0)
}

// handlerResult names the outcome of one handler call as
// eventfn_handler_attempts_total does, with duplicates apart.
func handlerResult(err error, duplicate bool) string {
	switch {
	case err == nil && duplicate:
		return "duplicate"
	case err == nil:
		return "ok"
	case isInfra(err):
		return "infrastructure"
	case runtime.IsPermanent(err):
		return "permanent"
	case runtime.IsUnavailable(err):
		return "unavailable"
	default:
		return "error"
	}
}

// observeCall records a handler call that began at start; a handled event
// (not a duplicate, not a failure) also records its chain's latency, by
// eventType, the type the handler handles. Not by the event's ce_type: a
// producer chooses that, and each one it chose made a series of its own.
func (m *opsMetrics) observeCall(handler, eventType string, msg *message.Message, start time.Time, err error, duplicate bool) {
	now := time.Now()
	m.handlerDuration.WithLabelValues(handler, handlerResult(err, duplicate)).Observe(now.Sub(start).Seconds())
	if err != nil || duplicate {
		return
	}
	if started, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(HeaderChainStarted)); err == nil {
		m.chainLatency.WithLabelValues(eventType).Observe(max(now.Sub(started).Seconds(), 0))
	}
}

// chainStarted gives an event that arrived without a chain start (from a
// producer other than eventfn, or from before the header) one: its ce_time,
// else now, when it arrived. Like correlationID, it makes the event the first
// of its own chain.
func chainStarted(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if _, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(HeaderChainStarted)); err != nil {
			start := time.Now()
			if t, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(HeaderTime)); err == nil {
				start = t
			}
			msg.Metadata.Set(HeaderChainStarted, start.UTC().Format(time.RFC3339Nano))
		}
		return h(msg)
	}
}

// deadLetterClass classifies the final error of an event that is to be
// dead-lettered. A timeout counts as such even when it was the last of
// several retries: the fix (a longer timeout, a faster dependency) differs
// from that of an error the handler returned.
func deadLetterClass(err error) string {
	switch {
	case runtime.IsMalformed(err):
		return classMalformed
	case errors.Is(err, context.DeadlineExceeded):
		return classTimeout
	case runtime.IsPermanent(err):
		return classPermanent
	default:
		return classExhausted
	}
}

// classifyDeadLetter sits just inside the dead-letter middleware and marks a
// failed message with the class of its final error, for deadLetterPublisher.
func classifyDeadLetter(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err != nil {
			msg.Metadata.Set(metaDeadLetterClass, deadLetterClass(err))
		} else {
			delete(msg.Metadata, metaDeadLetterClass)
		}
		return out, err
	}
}

// takeDeadLetterClass removes the class mark from msg and returns it
// (exhausted if unmarked, the class of a plain failure).
func takeDeadLetterClass(msg *message.Message) string {
	class := msg.Metadata.Get(metaDeadLetterClass)
	delete(msg.Metadata, metaDeadLetterClass)
	if class == "" {
		return classExhausted
	}
	return class
}

// partitionLag is one partition's lag, as a dispatch subscriber reports it.
type partitionLag = map[int32]int64

// lagCollector reads each handler's consumer lag from its subscriber when
// scraped, so that a revoked partition's series goes with it.
type lagCollector struct {
	desc    *prometheus.Desc
	sources []lagSource
}

type lagSource struct {
	handler string
	lag     func() partitionLag
}

// add registers the lag of one handler's subscriber; buildHandlers calls it
// before the router runs, so no scrape races it.
func (c *lagCollector) add(handler string, lag func() partitionLag) {
	c.sources = append(c.sources, lagSource{handler: handler, lag: lag})
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.sources {
		for p, n := range s.lag() {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), s.handler, strconv.Itoa(int(p)))
		}
	}
}

// handlerOps are the per-handler metrics the middleware chain keeps.
type handlerOps struct {
	// retrying counts the handler's events waiting for their next attempt.
	retrying prometheus.Gauge
	// unavailable counts the handler's events waiting out an unavailable
	// dependency.
	unavailable prometheus.Gauge
	// deadLetters counts the handler's dead letters by class.
	deadLetters *prometheus.CounterVec
}

// forHandler curries the ops metrics for one handler. Every class starts at
// 0: increase() in an alert does not see the first dead letter of a series
// that appears with it.
func (m *opsMetrics) forHandler(name string) handlerOps {
	ops := handlerOps{
		retrying:    m.retrying.WithLabelValues(name),
		unavailable: m.unavailable.WithLabelValues(name),
		deadLetters: m.deadLetters.MustCurryWith(prometheus.Labels{"handler": name}),
	}
	for _, c := range []string{classMalformed, classPermanent, classExhausted, classTimeout} {
		ops.deadLetters.WithLabelValues(c)
	}
	return ops
}
