package router

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/configs"
)

// Run outcomes, as the runs topic and `publish --wait` show them.
const (
	RunOK           = "ok"
	RunRetrying     = "retrying"
	RunDeadLettered = "dead-lettered"
	RunDuplicate    = "duplicate skipped"
	RunWaiting      = "waiting for the database"
	// RunUnavailable is a call that found a dependency of the handler
	// unavailable (runtime.Unavailable): it runs again, without end.
	RunUnavailable = "waiting for a dependency"
)

// HeaderCausationID names the event that caused an event: the one its
// handler was handling when it emitted it (a CloudEvents extension, like
// ce_correlationid). The first event of a chain has none.
const HeaderCausationID = "ce_causationid"

// RunRecord is one handler attempt, as the runs topic carries it: so a
// handler that emits nothing still shows that it ran.
type RunRecord struct {
	Handler    string    `json:"handler"`
	EventID    string    `json:"event_id"`
	EventType  string    `json:"event_type"`
	Attempt    int       `json:"attempt"`
	Outcome    string    `json:"outcome"`
	Start      time.Time `json:"start"`
	DurationMS float64   `json:"duration_ms"`
	Error      string    `json:"error,omitempty"`
}

// runLog sends a RunRecord per handler attempt to kafka.runs_topic, keyed by
// the correlation id so one chain's runs stay in order. It never holds up a
// handler: records go out in the background, batched, with leader acks, and
// when the client's buffer is full, or Kafka is away, they are dropped and
// counted. They are for people watching, not for correctness.
type runLog struct {
	client  *kgo.Client
	topic   string
	dropped prometheus.Counter
	logger  *slog.Logger
	// purging says a purge of the topic from the client is under way (see
	// record).
	purging atomic.Bool
}

// runsLinger is how long a run record may wait for others to share its
// produce request; `publish --wait` shows a run that much later.
const runsLinger = 50 * time.Millisecond

func newRunLog(k configs.Kafka, opts []kgo.Opt, reg prometheus.Registerer, logger *slog.Logger) (*runLog, error) {
	l := &runLog{logger: logger, dropped: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "eventfn", Name: "run_records_dropped_total",
		Help: "Handler run records not sent to kafka.runs_topic (buffer full or Kafka away); runs themselves are unaffected.",
	})}
	if err := reg.Register(l.dropped); err != nil {
		return nil, err
	}
	if k.RunsTopic == "" {
		return l, nil
	}
	l.topic = k.Topic(k.RunsTopic)
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(k.Brokers...),
		kgo.ClientID(k.ClientID + "-runs"),
		// Run records are for people watching, so they may wait to share a
		// request: under load every produce request costs the broker about
		// what a handler's fetch does, and a run record per handler attempt
		// at 5 ms was a seventh of the broker's requests at 450 orders/s.
		kgo.ProducerLinger(runsLinger),
		// Uncompressed: the broker decompresses a compressed batch to
		// validate it, and a batch of small JSON records gains little.
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.RequiredAcks(kgo.LeaderAck()),
		kgo.DisableIdempotentWrite(),
		kgo.MaxBufferedRecords(10000),
		kgo.RecordDeliveryTimeout(10 * time.Second),
	}, opts...)...)
	if err != nil {
		return nil, err
	}
	l.client = cl
	return l, nil
}

// record sends r without waiting.
func (l *runLog) record(correlationID string, r RunRecord) {
	if l.client == nil {
		return
	}
	value, err := json.Marshal(r)
	if err != nil {
		l.dropped.Inc()
		return
	}
	rec := &kgo.Record{Topic: l.topic, Key: []byte(correlationID), Value: value,
		Headers: []kgo.RecordHeader{{Key: HeaderCorrelationID, Value: []byte(correlationID)}}}
	l.client.TryProduce(context.Background(), rec, func(_ *kgo.Record, err error) {
		if err != nil {
			l.dropped.Inc()
			l.logger.Debug("run record not sent", "handler", r.Handler, "event_id", r.EventID, "err", err)
		}
		if errors.Is(err, kerr.UnknownTopicID) && l.purging.CompareAndSwap(false, true) {
			// The runs topic was deleted (and perhaps created again):
			// franz-go keeps its old id until the topic is purged from the
			// client, and dropped every run record until a restart. Not
			// here: a purge waits for the client's metadata loop, which
			// must not wait for a promise.
			go func() {
				defer l.purging.Store(false)
				l.client.PurgeTopicsFromProducing(l.topic)
			}()
		}
	})
}

// close flushes what is buffered, for a moment, and closes the client.
func (l *runLog) close() {
	if l.client == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = l.client.Flush(ctx)
	l.client.Close()
}
