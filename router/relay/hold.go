package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/eventfn/eventfn/internal/outage"
)

// A topic the relay cannot produce to now (deleted, one this client may not
// write to, a partition without a leader) is held: its failed rows, and every
// row of it read after, are moved aside (Source.Hold), out of the rows the
// relay reads. They are tried again on their own, oldest first, with a
// backoff per topic, and the topic is let go once none of its rows is held.
//
// Before, such rows stayed pending and were retried in id order with the
// rest: every batch waited for their failure, and once a batch's worth of
// them had gathered at the head of the outbox, no row of any topic went out
// again. Order is kept where Kafka keeps it, within a topic: a held topic's
// rows go only from here, in id order, until none is left.
//
// Only Run's goroutine calls these methods, but for err (Healthy), which
// takes mu.
type holds struct {
	topics map[string]*hold
	// loaded says topics is what the table holds: it is read again when
	// this relay leads again, as another replica's relay may have held or
	// let go topics meanwhile.
	loaded bool
	// probing is the retry of held rows in flight, if any.
	probing *probe

	report *outage.Reporter
	mu     sync.Mutex
	names  []string // the held topics, for err
}

// none says that no topic is held and no retry of held rows is in flight.
func (h *holds) none() bool { return len(h.topics) == 0 && h.probing == nil }

// hold is one held topic.
type hold struct {
	backoff time.Duration
	next    time.Time // when its rows are tried again
}

// probe is one retry of held rows: the oldest held rows of every topic due,
// handed to the producer together.
type probe struct {
	rows  []Row
	spans []trace.Span
	// full says which topics had more held rows than were read.
	full map[string]bool
	// done is closed once errs has every row's produce error.
	done chan struct{}
	errs []error
}

func newHolds(reportInterval time.Duration, logger *slog.Logger) holds {
	return holds{topics: map[string]*hold{},
		report: outage.New("outbox relay cannot produce to a topic; its events wait in the outbox and are retried with backoff, other topics' go on",
			"outbox relay produces to every topic again", reportInterval, logger)}
}

// hold holds topic after err, or keeps it held; it reports whether the topic
// was not held before.
func (h *holds) hold(topic string, err error, backoff time.Duration) bool {
	h.report.Failed(err, "topic", topic)
	if _, ok := h.topics[topic]; ok {
		return false
	}
	h.topics[topic] = &hold{backoff: backoff, next: time.Now().Add(backoff)}
	return true
}

// hold moves the rows with ids aside (Source.Hold), fenced by the lease: a
// relay that lost its lease without knowing yet (its check is a second old)
// moved rows aside after the new leader had read which topics are held, and
// the new leader never sent them, while it sent the newer rows of their
// keys (found by a fresh-eyed attack, 1 to 2 in 6 hand-overs on PostgreSQL).
// On PostgreSQL the statement runs in the lock's own session, so it commits
// only while the lock is held: before the next leader takes it and reads.
func (r *Relay) hold(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	return r.lease.Fenced(ctx, func(ctx context.Context, exec Execer) error {
		return r.source.Hold(ctx, exec, ids)
	})
}

// split parts rows into those to send and the ids of those of held topics.
func (h *holds) split(rows []Row) (send []Row, held []int64) {
	if len(h.topics) == 0 {
		return rows, nil
	}
	send = rows[:0:0]
	for _, row := range rows {
		if _, ok := h.topics[row.Topic]; ok {
			held = append(held, row.ID)
		} else {
			send = append(send, row)
		}
	}
	return send, held
}

// err says which topics are held, since when and why; nil if none.
func (h *holds) err() error {
	err := h.report.Err()
	if err == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return fmt.Errorf("held topics %s: %w", strings.Join(h.names, ", "), err)
}

// holdsChanged publishes the held topics to Healthy and the metrics, and
// reports the end of the outage once none is held.
func (r *Relay) holdsChanged() {
	h := &r.holds
	names := make([]string, 0, len(h.topics))
	for topic := range h.topics {
		names = append(names, topic)
	}
	slices.Sort(names)
	h.mu.Lock()
	h.names = names
	h.mu.Unlock()
	r.metrics.heldTopics.Set(float64(len(names)))
	if len(names) == 0 {
		h.report.Succeeded()
	}
	r.setHealthy()
}

// setHealthy sets the health gauge from both reports.
func (r *Relay) setHealthy() {
	if r.outage.Err() == nil && r.holds.report.Err() == nil {
		r.metrics.healthy.Set(1)
	} else {
		r.metrics.healthy.Set(0)
	}
}

// probe settles a retry of held rows that has ended, and starts the next one
// when a held topic is due. It first reads which topics the table holds, when
// this relay leads anew. It never waits for the producer.
func (r *Relay) probe(ctx context.Context) error {
	h := &r.holds
	if h.loaded && len(h.topics) == 0 && h.probing == nil {
		return nil
	}
	if !h.loaded {
		topics, err := r.source.HeldTopics(ctx)
		if err != nil {
			return err
		}
		clear(h.topics)
		for _, topic := range topics {
			h.topics[topic] = &hold{backoff: r.cfg.MinBackoff}
		}
		if len(topics) > 0 {
			r.logger.InfoContext(ctx, "outbox relay: topics held by an earlier relay; their events are retried first", "topics", topics)
			for _, topic := range topics {
				h.report.Failed(errors.New("held by an earlier relay"), "topic", topic)
			}
		}
		h.loaded = true
		r.holdsChanged()
	}
	if p := h.probing; p != nil {
		select {
		case <-p.done:
		default:
			return nil
		}
		h.probing = nil
		if err := r.settleProbe(ctx, p); err != nil {
			return err
		}
	}
	if !r.lease.Leading() {
		return nil
	}
	now := time.Now()
	var rows []Row
	full := map[string]bool{}
	for topic, held := range h.topics {
		// One probe takes a batch's rows and bytes at most, as a batch
		// does: with every broker away and many topics held, a probe of
		// BatchSize rows per topic outgrew the client's buffer (10,000
		// records), and handing it over blocked the relay's loop. A topic
		// left out stays due, for the next probe.
		limit := Limit{Rows: r.limit - len(rows), Bytes: r.cfg.BatchBytes - storedBytes(rows)}
		if limit.Rows <= 0 || limit.Bytes <= 0 {
			break
		}
		if now.Before(held.next) {
			continue
		}
		read, err := r.source.HeldRows(ctx, topic, limit)
		if err != nil {
			return err
		}
		if len(read) == 0 {
			// Its last rows went with the last probe, or were parked.
			delete(h.topics, topic)
			r.holdsChanged()
			continue
		}
		full[topic] = limit.Full(read)
		rows = append(rows, read...)
	}
	if len(rows) == 0 {
		return nil
	}
	p := &probe{rows: rows, full: full, done: make(chan struct{}), spans: make([]trace.Span, len(rows))}
	recs := make([]Record, len(rows))
	for i, row := range rows {
		recs[i] = row.Record
		p.spans[i] = r.traceSend(ctx, &recs[i])
	}
	sent := r.sink.Send(ctx, recs)
	go func() {
		p.errs = sent.Wait()
		close(p.done)
	}()
	h.probing = p
	return nil
}

// settleProbe settles the rows of an ended probe. A topic whose rows all went
// is tried again at once while it has more held rows, and let go when it has
// none; one whose rows failed again waits twice as long as before, up to
// MaxBackoff.
func (r *Relay) settleProbe(ctx context.Context, p *probe) error {
	failed, err := r.settle(ctx, p.rows, p.errs, p.spans, true)
	if err != nil {
		return err
	}
	h := &r.holds
	now := time.Now()
	for topic := range p.full {
		held, ok := h.topics[topic]
		if !ok {
			continue
		}
		if i := slices.IndexFunc(failed, func(f topicFailure) bool { return f.topic == topic }); i >= 0 {
			r.metrics.errors.Inc()
			h.report.Failed(failed[i].err, "topic", topic)
			held.backoff = min(2*held.backoff, r.cfg.MaxBackoff)
			held.next = now.Add(held.backoff)
			continue
		}
		// Tried again at once; the next probe lets it go if no row of it
		// is held any more (rows read after this probe began may be).
		held.backoff, held.next = r.cfg.MinBackoff, now
	}
	return nil
}

// probed is closed when the probe in flight ends; nil if none is.
func (h *holds) probed() <-chan struct{} {
	if h.probing == nil {
		return nil
	}
	return h.probing.done
}

// untilDue is how long until a held topic is due to be tried again, when no
// probe is in flight; limit if none is due sooner.
func (h *holds) untilDue(limit time.Duration) time.Duration {
	if h.probing != nil {
		return limit
	}
	now := time.Now()
	for _, held := range h.topics {
		limit = min(limit, max(held.next.Sub(now), 0))
	}
	return limit
}
