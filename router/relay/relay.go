// Package relay forwards eventfn's transactional outbox to Kafka.
//
// It reads up to BatchSize pending rows in id order, produces them together
// (pipelined, acks=all, idempotent: one key's records keep their order), waits
// for every ack, and marks the batch forwarded in one statement. A row that can
// never be produced (too large for the broker, say) is parked with its reason,
// and the rows behind it go on. A failed produce leaves the rows pending, and
// the relay retries them in order with a capped backoff.
//
// A commit in this process wakes the relay at once (Nudge); commits of other
// processes are found by polling every PollInterval. A backlog is drained with
// no sleep between batches. Only one relay of all replicas on one database
// forwards at a time (a PostgreSQL advisory lock): that keeps one key's events
// in order across replicas, and a replica that dies hands over in seconds.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Relay.
type Config struct {
	// BatchSize is the most rows one batch reads and produces.
	BatchSize int
	// PollInterval is how often an idle relay looks for rows written by other
	// processes; rows this process writes wake it at once.
	PollInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait after a failed batch; it doubles
	// from the one to the other while the failure lasts.
	MinBackoff, MaxBackoff time.Duration
	// OutageReportInterval is how often a lasting outage is summarised in the log.
	OutageReportInterval time.Duration
}

func (c *Config) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 10 * time.Millisecond
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Second
	}
	if c.OutageReportInterval <= 0 {
		c.OutageReportInterval = 30 * time.Second
	}
}

// Source is where the relay reads and marks rows: the outbox table.
type Source interface {
	Pending(ctx context.Context, limit int) ([]Row, error)
	MarkForwarded(ctx context.Context, ids []int64) error
	Park(ctx context.Context, id int64, reason string) error
}

// Sink produces a batch and reports one error per record.
type Sink interface {
	Produce(ctx context.Context, recs []Record) []error
}

// Lease decides which relay of several replicas forwards. Acquire blocks until
// this relay holds the lease or ctx ends; Held reports, cheaply, whether it still
// does.
type Lease interface {
	Acquire(ctx context.Context) error
	Held(ctx context.Context) bool
	Release()
}

// Relay forwards the outbox to Kafka.
type Relay struct {
	cfg     Config
	source  Source
	sink    Sink
	lease   Lease
	logger  *slog.Logger
	metrics *Metrics
	nudges  chan struct{}
	// down is when the current outage began (unix nanoseconds), 0 when healthy.
	down atomic.Int64
	// lastErr is the latest error of the current outage.
	lastErr atomic.Pointer[error]
}

// New builds a relay; Run starts it.
func New(cfg Config, source Source, sink Sink, lease Lease, m *Metrics, logger *slog.Logger) *Relay {
	cfg.setDefaults()
	return &Relay{cfg: cfg, source: source, sink: sink, lease: lease, metrics: m, logger: logger, nudges: make(chan struct{}, 1)}
}

// Nudge wakes an idle relay: rows were committed. It never blocks; nudges made
// while the relay is busy collapse into one more read.
func (r *Relay) Nudge() {
	select {
	case r.nudges <- struct{}{}:
	default:
	}
}

// Healthy reports nil, or why the relay cannot forward now and since when.
func (r *Relay) Healthy() error {
	since := r.down.Load()
	if since == 0 {
		return nil
	}
	var last error
	if p := r.lastErr.Load(); p != nil {
		last = *p
	}
	return fmt.Errorf("outbox relay failing since %s: %w", time.Unix(0, since).UTC().Format(time.RFC3339), last)
}

// Run forwards until ctx ends. It returns nil then: stopping is not a failure,
// and rows not yet forwarded stay pending for the next start.
func (r *Relay) Run(ctx context.Context) error {
	defer r.lease.Release()
	backoff := r.cfg.MinBackoff
	nextReport := time.Time{}
	for ctx.Err() == nil {
		if err := r.lease.Acquire(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.failed(err, &nextReport)
			sleep(ctx, backoff)
			backoff = min(2*backoff, r.cfg.MaxBackoff)
			continue
		}
		n, err := r.forward(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.failed(err, &nextReport)
			sleep(ctx, backoff)
			backoff = min(2*backoff, r.cfg.MaxBackoff)
			continue
		}
		r.recovered()
		backoff = r.cfg.MinBackoff
		if n > 0 {
			// More may have been committed while this batch was in flight:
			// look again at once, and sleep only when a read finds nothing.
			continue
		}
		r.idle(ctx)
	}
	return nil
}

// forward moves one batch and returns how many rows it took off the pending list.
func (r *Relay) forward(ctx context.Context) (int, error) {
	rows, err := r.source.Pending(ctx, r.cfg.BatchSize)
	if err != nil {
		return 0, err
	}
	if len(rows) == 0 {
		return 0, nil
	}
	if !r.lease.Held(ctx) {
		return 0, errors.New("lost the relay lease to another replica")
	}
	recs := make([]Record, len(rows))
	for i, row := range rows {
		recs[i] = row.Record
	}
	start := time.Now()
	errs := r.sink.Produce(ctx, recs)
	forwarded := make([]int64, 0, len(rows))
	var transient error
	for i, err := range errs {
		row := rows[i]
		switch {
		case err == nil:
			forwarded = append(forwarded, row.ID)
		case Unproducible(err) || row.Headers[headerDecodeError] != "":
			reason := fmt.Sprintf("cannot be produced to %s: %v", row.Topic, err)
			if perr := r.source.Park(ctx, row.ID, reason); perr != nil {
				transient = errors.Join(transient, perr)
				continue
			}
			r.metrics.parked.Inc()
			r.logger.ErrorContext(ctx, "outbox row parked: it can never be produced; the rows behind it go on",
				"row", row.ID, "topic", row.Topic, "bytes", row.Size(), "reason", reason)
		default:
			if transient == nil {
				transient = fmt.Errorf("produce to %s: %w", row.Topic, err)
			}
		}
	}
	// Produced rows are marked even when others failed: they are on Kafka, and
	// marking them keeps the next attempt from sending them twice.
	if err := r.source.MarkForwarded(ctx, forwarded); err != nil {
		return 0, errors.Join(err, transient)
	}
	r.metrics.forwarded.Add(float64(len(forwarded)))
	r.metrics.batchSeconds.Observe(time.Since(start).Seconds())
	if transient != nil {
		return 0, transient
	}
	return len(rows), nil
}

// failed records a failure; an outage is logged when it starts and then
// summarised at most every OutageReportInterval, not once per attempt.
func (r *Relay) failed(err error, nextReport *time.Time) {
	r.metrics.errors.Inc()
	r.lastErr.Store(&err)
	now := time.Now()
	if r.down.CompareAndSwap(0, now.UnixNano()) {
		r.metrics.healthy.Set(0)
		r.logger.Error("outbox relay cannot forward; retrying with backoff, events stay in the outbox", "err", err)
		*nextReport = now.Add(r.cfg.OutageReportInterval)
		return
	}
	if now.After(*nextReport) {
		r.logger.Warn("outbox relay still cannot forward", "since", time.Unix(0, r.down.Load()).UTC(), "err", err)
		*nextReport = now.Add(r.cfg.OutageReportInterval)
	}
}

func (r *Relay) recovered() {
	if since := r.down.Swap(0); since != 0 {
		r.metrics.healthy.Set(1)
		r.logger.Info("outbox relay forwarding again", "after", time.Since(time.Unix(0, since)).Round(time.Millisecond))
	}
}

// idle waits for a nudge, the poll interval or the end of ctx.
func (r *Relay) idle(ctx context.Context) {
	t := time.NewTimer(r.cfg.PollInterval)
	defer t.Stop()
	select {
	case <-r.nudges:
	case <-t.C:
	case <-ctx.Done():
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Metrics are the relay's Prometheus metrics.
type Metrics struct {
	forwarded    prometheus.Counter
	parked       prometheus.Counter
	errors       prometheus.Counter
	healthy      prometheus.Gauge
	batchSeconds prometheus.Histogram
}

// NewMetrics registers the relay's metrics in reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventfn_relay_forwarded_total", Help: "Outbox rows produced to Kafka and marked forwarded.",
		}),
		parked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventfn_outbox_parked_total", Help: "Outbox rows moved aside because they can never be produced.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eventfn_relay_errors_total", Help: "Relay batches that failed (broker or database away); they are retried.",
		}),
		healthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventfn_relay_healthy", Help: "1 while the relay forwards normally, 0 during an outage.",
		}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "eventfn_relay_batch_seconds", Help: "Time to produce one batch and receive every ack.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	m.healthy.Set(1)
	for _, c := range []prometheus.Collector{m.forwarded, m.parked, m.errors, m.healthy, m.batchSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register relay metrics: %w", err)
		}
	}
	return m, nil
}
