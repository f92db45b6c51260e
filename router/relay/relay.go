// Package relay forwards eventfn's transactional outbox to Kafka.
//
// It reads up to BatchSize pending rows in id order, produces them together
// (pipelined, acks=all, idempotent: one key's records keep their order), waits
// for every ack, and marks the batch forwarded in one statement. A row that can
// never be produced (too large for the broker, say) is parked with its reason,
// and the rows behind it go on. A row that fails to produce for now holds its
// topic: the topic's rows wait aside and are retried in order with a capped
// backoff, while other topics' rows go on (see hold.go).
//
// A commit in this process wakes the relay at once (Nudge); commits of other
// processes wake it through PostgreSQL's LISTEN/NOTIFY (Listen, Notifier),
// and an idle relay also polls every PollInterval, for what a notification
// missed. A backlog is drained with no sleep between batches. Only one relay of all replicas on one database
// forwards at a time (a PostgreSQL advisory lock): that keeps one key's events
// in order across replicas, and a replica that dies hands over in seconds.
package relay

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventfn/eventfn/internal/outage"
	"github.com/eventfn/eventfn/internal/tracing"
	"github.com/eventfn/eventfn/store"
)

// Config configures a Relay.
type Config struct {
	// BatchSize is the most rows one batch reads and produces.
	BatchSize int
	// BatchBytes bounds the bytes of one batch's rows as stored (keys,
	// headers and payloads; one row larger than it goes alone): the relay
	// holds up to three batches while it drains a backlog, and a backlog of
	// large rows held BatchSize times the largest record the broker takes,
	// three times over.
	BatchBytes int
	// PollInterval is how often an idle relay looks for rows written by other
	// processes; rows this process writes wake it at once.
	PollInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait after a failed batch; it doubles
	// from the one to the other while the failure lasts.
	MinBackoff, MaxBackoff time.Duration
	// OutageReportInterval is how often a lasting outage is summarised in the log.
	OutageReportInterval time.Duration
	// LateCommitWait bounds how long a row whose transaction committed after
	// a higher id's waits while batches stream (see Run).
	LateCommitWait time.Duration
	// Tracer makes one span per record sent, a child of the span that emitted
	// it; nil traces nothing.
	Tracer trace.Tracer
	// RegrowAfter is how long batches stay at a limit the relay shrank them
	// to (see shrink) before it doubles it again, up to BatchSize.
	RegrowAfter time.Duration
	// LostLease is called when this relay finds pending rows but no longer
	// holds the lease: another replica's relay leads, and must hear of rows
	// this process committed while it believed it led itself (its commits
	// nudged only it). nil calls nothing.
	LostLease func()
}

func (c *Config) setDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = 500
	}
	if c.BatchBytes <= 0 {
		c.BatchBytes = DefaultBatchBytes
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
	if c.LateCommitWait <= 0 {
		c.LateCommitWait = 100 * time.Millisecond
	}
	if c.RegrowAfter <= 0 {
		c.RegrowAfter = time.Minute
	}
	if c.Tracer == nil {
		c.Tracer = tracing.Tracer(nil)
	}
}

// DefaultBatchBytes is Config.BatchBytes when it is not set.
const DefaultBatchBytes = 16 << 20

// Source is where the relay reads and marks rows: the outbox table.
type Source interface {
	Pending(ctx context.Context, after int64, limit Limit) ([]Row, error)
	MarkForwarded(ctx context.Context, ids []int64) error
	Park(ctx context.Context, id int64, reason string) error
	// Hold, HeldTopics and HeldRows keep the rows of topics the relay
	// cannot produce to now aside (see Table.Hold). Hold runs its
	// statement on exec, Lease.Fenced's connection, or on the source's own
	// when exec is nil.
	Hold(ctx context.Context, exec Execer, ids []int64) error
	HeldTopics(ctx context.Context) ([]string, error)
	HeldRows(ctx context.Context, topic string, limit Limit) ([]Row, error)
}

// Sink produces batches: Send hands a batch over in order, all in flight
// together; one partition's records land in the order handed over, across
// calls too.
type Sink interface {
	Send(ctx context.Context, recs []Record) Sent
}

// Sent is a batch handed to a Sink.
type Sent interface {
	// Wait waits for every ack and returns one error (or nil) per record,
	// in order.
	Wait() []error
	// Failed reports at once, without waiting, whether the client has
	// failed a record of the batch already.
	Failed() bool
}

// Lease decides which relay of several replicas forwards. Acquire blocks until
// this relay holds the lease or ctx ends, calling standby (when not nil) once
// it finds another relay holding it; Held reports, cheaply, whether it still
// does.
type Lease interface {
	Acquire(ctx context.Context, standby func()) error
	Held(ctx context.Context) bool
	Release()
	// Leading reports, at once and without a round trip, whether this relay
	// held the lease when it last knew.
	Leading() bool
	// Fenced runs stmt so that it takes effect only while this relay holds
	// the lease, and fails with errLeaseLost when it does not; stmt gets
	// the connection to run on, nil for any.
	Fenced(ctx context.Context, stmt func(ctx context.Context, exec Execer) error) error
}

// Execer runs a statement: a connection or a pool.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
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
	outage  *outage.Reporter
	// unmarked are rows on Kafka whose mark failed (a database that takes
	// reads but no writes, read-only after a failover, say). They are
	// marked before anything is read again: read again, they were sent
	// again, the same batch once per retry for as long as the mark failed.
	// Only Run's goroutine touches it.
	unmarked []int64
	// holds are the topics the relay cannot produce to now (see hold.go).
	holds holds
	// refusedBatches are the topics that refused a record batch as too
	// large, each warned of once (see alone). Only Run's goroutine touches it.
	refusedBatches map[string]struct{}
	// ahead is a read started before it was needed (see prefetch); nil for
	// none. Only Run's goroutine touches it.
	ahead *prefetched
	// behind is the mark of an acked batch, running while the relay goes
	// on with the next (see markBehind); nil for none. Only Run's
	// goroutine touches it.
	behind *marking
	// limit is the most rows a batch reads and marks now: BatchSize, or
	// less after the database cancelled a statement at its
	// statement_timeout (see shrink). limitSince is when it last changed.
	// Only Run's goroutine touches them.
	limit      int
	limitSince time.Time
}

// New builds a relay; Run starts it.
func New(cfg Config, source Source, sink Sink, lease Lease, m *Metrics, logger *slog.Logger) *Relay {
	cfg.setDefaults()
	m.batchLimit.Set(float64(cfg.BatchSize))
	return &Relay{cfg: cfg, source: source, sink: sink, lease: lease, metrics: m, logger: logger, nudges: make(chan struct{}, 1),
		outage: outage.New("outbox relay cannot forward; retrying with backoff, events stay in the outbox",
			"outbox relay forwarding again", cfg.OutageReportInterval, logger),
		holds: newHolds(cfg.OutageReportInterval, logger), refusedBatches: map[string]struct{}{}, limit: cfg.BatchSize}
}

// Nudge wakes an idle relay: rows were committed. It never blocks; nudges made
// while the relay is busy collapse into one more read.
func (r *Relay) Nudge() {
	select {
	case r.nudges <- struct{}{}:
	default:
	}
}

// Leading says whether this relay forwards: a commit in this process then
// nudges it, and otherwise notifies the leader of another process.
func (r *Relay) Leading() bool { return r.lease.Leading() }

// Healthy reports nil, or why the relay cannot forward now and since when:
// the database, or the topics it cannot produce to.
func (r *Relay) Healthy() error {
	return errors.Join(r.outage.Err(), r.holds.err())
}

// batch is a batch of rows handed to the producer and not yet marked.
type batch struct {
	rows  []Row
	sent  Sent
	start time.Time
	spans []trace.Span
	errs  []error // the acks, once waited for
	// full says the read that gave rows was full: rows above it are likely
	// pending, however many of its rows were held rather than sent.
	full bool
}

// acks waits for b's acks, once: one error (or nil) per row.
func (b *batch) acks() []error {
	if b.errs == nil {
		b.errs = b.sent.Wait()
	}
	return b.errs
}

// Run forwards until ctx ends. It returns nil then: stopping is not a failure,
// and rows not yet forwarded stay pending for the next start.
//
// Two batches are in flight at most: while one waits for its acks, the next is
// read (rows above the last id handed over) and handed to the producer, so the
// database and the broker work at the same time. The producer keeps each
// partition's records in the order they were handed over, so this keeps one
// key's order. Once nothing is in flight, reads start again from the lowest
// pending id, which picks up rows whose transaction committed late.
//
// Under steady load a batch is always in flight, so reads would never start
// from the lowest id again: a row whose transaction took its id before a
// higher one's and committed after it waited until the load paused (up to
// 20 s at 650 orders/s). So once reads have gone on ahead for
// LateCommitWait, the relay lets the batch in flight finish and reads from
// the lowest pending id: one pause in the pipeline per LateCommitWait, and
// only while it streams.
func (r *Relay) Run(ctx context.Context) error {
	defer r.lease.Release()
	defer r.dropPrefetch()
	// Marks behind run on a context of their own: their rows are on Kafka,
	// and a stop that cut a mark short sent them again after the restart.
	// A stop gives them stopGrace, counted from the stop for all of them (a
	// mark begun after the stop, the batch acked meanwhile, once got a
	// grace of its own and made it twice as long).
	markCtx, cancelMarks := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelMarks()
	defer context.AfterFunc(ctx, func() { time.AfterFunc(stopGrace, cancelMarks) })()
	// Rows on Kafka whose mark failed (a mark cut short by the stop
	// itself, a mark the database refused or cancelled) are marked once
	// more, within the same grace: they went again after the restart, and
	// a stop while cancelled marks were redone in smaller statements left
	// up to three batches of them (found by a fresh-eyed attack). A mark
	// that fails now leaves its rows pending, sent again after the restart
	// (the inbox absorbs them).
	defer func() {
		_ = r.awaitMark()
		_ = r.markUnmarked(markCtx)
	}()
	backoff := r.cfg.MinBackoff
	var inFlight *batch
	// owed says a nudge was taken for a read ahead: the relay then reads
	// from the lowest pending id once nothing is in flight, as that nudge
	// would have made it. A read ahead starts above the batch in flight, and
	// on PostgreSQL a transaction that took a lower id can commit after a
	// higher one: without this its row waited for the poll.
	var owed bool
	// fromLowest is when the last read from the lowest pending id began.
	fromLowest := time.Now()
	fail := func(err error) {
		if r.shrink(err) {
			// Tried again at once, with smaller batches.
			return
		}
		r.failed(err)
		sleep(ctx, backoff)
		backoff = min(2*backoff, r.cfg.MaxBackoff)
	}
	for ctx.Err() == nil {
		if inFlight == nil {
			// The next read starts from the lowest pending id: it must not
			// meet rows whose mark is still running. Every path that leaves
			// nothing in flight has waited for the mark already (complete
			// does, and a mark behind starts only with a batch in flight);
			// this keeps the rule where the read is. Reads ahead of a batch
			// in flight start above every row marked behind.
			if err := r.awaitMark(); err != nil {
				if ctx.Err() == nil {
					fail(err)
				}
				continue
			}
		}
		// Before the lease: rows this relay put on Kafka are marked even
		// when another replica leads now, which spares it sending them too.
		if err := r.markUnmarked(ctx); err != nil {
			if ctx.Err() == nil {
				fail(err)
			}
			continue
		}
		if !r.lease.Leading() {
			// Another replica may have held or released topics meanwhile,
			// and forwarded the rows a prefetch read.
			r.holds.loaded = false
			r.dropPrefetch()
		}
		if err := r.lease.Acquire(ctx, r.standingBy); err != nil {
			if ctx.Err() == nil {
				fail(err)
			}
			continue
		}
		if err := r.probe(ctx); err != nil {
			if ctx.Err() == nil {
				fail(err)
			}
			continue
		}
		var after int64
		prev := inFlight
		readAhead := true
		if prev != nil {
			after = prev.rows[len(prev.rows)-1].ID
			var nudged bool
			readAhead, nudged = r.moreLikely(prev)
			owed = owed || nudged
			if prev.sent.Failed() || readAhead && time.Since(fromLowest) >= r.cfg.LateCommitWait {
				// Let prev finish, then read from the lowest pending id.
				readAhead, owed = false, true
			}
		} else {
			// A read from the lowest pending id covers every commit so far.
			owed = false
		}
		var next *batch
		var err error
		if readAhead {
			next, err = r.send(ctx, after, prev)
			owed = owed || next == nil && prev != nil && prev.sent.Failed()
		}
		// Another replica leads now (this one's lock session ended: a
		// restart of PostgreSQL, say). Not a failure of the relay: it was
		// logged as an outage that lasted, with /readyz at 503, until this
		// replica led again.
		lost := errors.Is(err, errLeaseLost)
		if lost {
			err = nil
		}
		if prev == nil {
			// Reads go on ahead from here. Timed from the read's end: timed
			// from its start, a read slower than LateCommitWait (a loaded
			// database) left no time to read ahead at all, and the relay
			// forwarded one batch at a time just when the database was slow.
			fromLowest = time.Now()
		}
		var doneErr error
		if prev != nil {
			if next != nil && slices.ContainsFunc(prev.acks(), batchTooLarge) {
				// prev's rows go again one at a time (see alone); next's
				// records, those of the refused partition above all, end
				// first, or they would share a record batch.
				next.acks()
			}
			var held bool
			if next != nil && r.holds.none() && !slices.ContainsFunc(prev.acks(), isError) {
				// Every record acked, and a batch follows: prev's mark runs
				// while that one is acked.
				doneErr = r.awaitMark()
				r.markBehind(markCtx, prev)
			} else {
				held, doneErr = r.complete(ctx, prev, true)
			}
			if held && next != nil && doneErr == nil && err == nil {
				// next went to the producer before prev's topic was held:
				// it is settled before the held rows are tried again, so
				// that no row is in flight twice.
				_, doneErr = r.complete(ctx, next, true)
				// A full read gave next: rows above it are likely pending,
				// and waiting for the poll stalled a backlog at each topic
				// held (found by a fresh-eyed attack).
				owed = owed || next.full
				next = nil
			}
		}
		inFlight = next
		if ctx.Err() != nil {
			// Whatever is still in flight stays pending and goes again after
			// the restart (the inbox absorbs a record that did get through).
			return nil
		}
		if err = errors.Join(err, doneErr); err != nil {
			// Finish what is in flight: its records may be on Kafka already,
			// and marking them spares sending them twice. Its rows that
			// failed stay pending, not held: the batch before may have left
			// rows of their topic pending (its hold failed), and held rows
			// go before pending ones, so a key's later rows went first
			// (found by a fresh-eyed attack). Read again from the lowest
			// id, they keep their order.
			if inFlight != nil {
				_, doneErr := r.complete(ctx, inFlight, false)
				err = errors.Join(err, doneErr)
				inFlight = nil
			}
			if ctx.Err() == nil {
				fail(err)
			}
			continue
		}
		if lost {
			if r.cfg.LostLease != nil {
				r.cfg.LostLease()
			}
			continue
		}
		if prev != nil || next == nil {
			// A batch was acked and marked, or nothing is left to forward:
			// the relay works. A batch merely handed to the producer proves
			// nothing; counting it as a recovery made a broker outage log
			// its start again after every retry.
			r.recovered()
			r.regrow()
			backoff = r.cfg.MinBackoff
		}
		if inFlight == nil && !owed {
			r.idle(ctx)
		}
	}
	return nil
}

// standingBy is called when another replica's relay holds the lease and
// this one starts to wait for it: the database answers, and a standby is
// healthy. A failure before (the database away, at a restart) was otherwise
// reported until this replica led again, with /readyz at 503 meanwhile.
func (r *Relay) standingBy() {
	// What a prefetch read, the relay that leads now forwards.
	r.dropPrefetch()
	r.logger.Info("another replica's relay forwards the outbox; this one waits to take over")
	r.recovered()
}

// moreLikely says whether rows above the batch in flight are likely pending,
// so that reading them while it waits for its acks pays: the read that gave
// the batch was full (a backlog; counted before the rows of held topics
// were taken out, or a backlog of mostly held rows drained one batch per
// poll, found by a fresh-eyed attack), or a commit nudged the relay since
// it read the batch; nudged says the nudge was taken. Otherwise the read nearly always finds nothing:
// below a backlog every batch was followed by one such empty read, a third
// of the relay's statements at 100 orders/s. Rows that other processes
// commit do not nudge; the poll finds them, as when idle.
func (r *Relay) moreLikely(inFlight *batch) (readAhead, nudged bool) {
	if inFlight.full {
		return true, false
	}
	select {
	case <-r.nudges:
		return true, true
	default:
		return false, false
	}
}

// errLeaseLost says that the relay found rows to send but another replica's
// relay holds the lease now.
var errLeaseLost = errors.New("lost the relay lease to another replica")

// send reads up to BatchSize pending rows above after and hands them to the
// producer; nil when there are none, or when a record of inFlight (nil for
// none) has failed by then.
//
// The rows of held topics are not sent but held (moved aside), behind the
// rows of their topic that wait already.
//
// A failed record of inFlight is tried again once inFlight is settled (its
// topic held, or the record produced again alone). Rows of its partition
// handed over before then could land first: franz-go fails a partition's
// buffered records together, but not those handed over after it failed
// them. So the rows read stay pending, for the next read.
func (r *Relay) send(ctx context.Context, after int64, inFlight *batch) (*batch, error) {
	var rows []Row
	var read []Row
	for {
		var err error
		read, err = r.pending(ctx, after)
		if err != nil || len(read) == 0 {
			return nil, err
		}
		if !r.lease.Held(ctx) {
			return nil, errLeaseLost
		}
		var held []int64
		rows, held = r.holds.split(read)
		if err := r.hold(ctx, held); err != nil {
			return nil, err
		}
		if len(rows) > 0 {
			break
		}
		if !r.readLimit().Full(read) {
			return nil, nil
		}
		after = read[len(read)-1].ID
	}
	if inFlight != nil && inFlight.sent.Failed() {
		return nil, nil
	}
	full := r.readLimit().Full(read)
	if full {
		// A backlog: the next read will likely find a full batch too.
		r.prefetch(ctx, read[len(read)-1].ID)
	}
	recs := make([]Record, len(rows))
	spans := make([]trace.Span, len(rows))
	for i, row := range rows {
		recs[i] = row.Record
		spans[i] = r.traceSend(ctx, &recs[i])
	}
	return &batch{rows: rows, sent: r.sink.Send(ctx, recs), start: time.Now(), spans: spans, full: full}, nil
}

// prefetched is a read of the pending rows above an id, started before the
// relay asked for them.
type prefetched struct {
	after int64
	limit Limit
	done  chan struct{}
	rows  []Row
	err   error
}

// prefetch starts reading the pending rows above after, for the next send.
// The read then runs while the batch before it is acked and marked, not
// after: draining a backlog, the relay read, handed over and marked one
// batch after another, and a read took as long as a mark (0.55 of a raw
// read-and-mark, 2026-12-04; docs/BENCHMARKS.md).
//
// The rows it reads cannot go stale before the next send: rows above after
// are touched by nothing this relay does meanwhile (settling marks, parks
// and holds rows of the batches before; holds and probes concern held rows,
// which a read does not return), and another replica's relay does not lead
// while this one holds the lease, which send checks after the read as it
// always did. A lease lost (and maybe taken again) drops the prefetch: the
// replica that led meanwhile forwarded those rows (found by a fresh-eyed
// attack: a lease lost and regained within LateCommitWait sent them
// twice). A send that asks for other rows drops it too.
func (r *Relay) prefetch(ctx context.Context, after int64) {
	p := &prefetched{after: after, limit: r.readLimit(), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.rows, p.err = r.source.Pending(ctx, after, p.limit)
	}()
	r.ahead = p
}

// pending reads the pending rows above after that readLimit takes: those
// prefetched, when the prefetch read from after with the same limit, or else
// a read of its own.
func (r *Relay) pending(ctx context.Context, after int64) ([]Row, error) {
	if p := r.dropPrefetch(); p != nil && p.after == after && p.limit == r.readLimit() {
		return p.rows, p.err
	}
	return r.source.Pending(ctx, after, r.readLimit())
}

// readLimit is what one read takes now: limit rows, BatchBytes bytes.
func (r *Relay) readLimit() Limit { return Limit{Rows: r.limit, Bytes: r.cfg.BatchBytes} }

// dropPrefetch waits for the prefetch started, if any, and returns it; the
// relay has none after. Waiting keeps one read of the relay's at a time.
func (r *Relay) dropPrefetch() *prefetched {
	p := r.ahead
	if p == nil {
		return nil
	}
	r.ahead = nil
	<-p.done
	return p
}

// marking is the mark of an acked batch's rows, running.
type marking struct {
	ids  []int64
	done chan marked
}

// marked is how a mark ended: the ids it did not mark (nil for none), and
// why.
type marked struct {
	rest []int64
	err  error
}

// markBehind settles b, whose every record was acked, while the relay goes
// on: its rows are marked forwarded in a goroutine of their own, so that the
// database marks one batch while the relay hands the next to the producer
// and waits for its acks (awaitMark ends it). Draining a backlog, the mark
// was half of each batch's time after the reads were prefetched
// (2026-12-04; docs/BENCHMARKS.md). ctx is Run's context for marks.
func (r *Relay) markBehind(ctx context.Context, b *batch) {
	for _, span := range b.spans {
		span.End()
	}
	r.metrics.batchSeconds.Observe(time.Since(b.start).Seconds())
	m := &marking{ids: make([]int64, len(b.rows)), done: make(chan marked, 1)}
	for i, row := range b.rows {
		m.ids[i] = row.ID
	}
	limit := r.limit
	go func() {
		rest, err := markForwarded(ctx, r.source, m.ids, limit)
		m.done <- marked{rest, err}
	}()
	r.behind = m
}

// stopGrace is how long a mark behind may go on once the relay is stopped.
const stopGrace = 2 * time.Second

// awaitMark waits for the mark started by markBehind, if any. Rows whose
// mark failed join unmarked: they are on Kafka, and are marked before
// anything is read again.
func (r *Relay) awaitMark() error {
	m := r.behind
	if m == nil {
		return nil
	}
	r.behind = nil
	done := <-m.done
	r.metrics.forwarded.Add(float64(len(m.ids) - len(done.rest)))
	r.unmarked = append(r.unmarked, done.rest...)
	return done.err
}

// markForwarded marks ids forwarded, at most limit in one statement, and
// returns the ids it did not mark: those of the statement that failed, and
// after. A statement_timeout that cancels a batch's mark may let a smaller
// one through (see shrink); a rows' mark of its own would not.
func markForwarded(ctx context.Context, source Source, ids []int64, limit int) (rest []int64, err error) {
	for len(ids) > 0 {
		n := min(limit, len(ids))
		if err := source.MarkForwarded(ctx, ids[:n]); err != nil {
			return ids, err
		}
		ids = ids[n:]
	}
	return nil, nil
}

func isError(err error) bool { return err != nil }

// complete waits for b's acks and settles its rows (see settle), after the
// mark behind it, if any, has ended. held says that a topic was held by it,
// one the relay could produce to until now. A failure of the database is
// returned; a row that failed to produce is not a failure of the batch, as
// its topic is held (when hold says so; else the row stays pending) and
// tried again on its own.
func (r *Relay) complete(ctx context.Context, b *batch, hold bool) (held bool, err error) {
	markErr := r.awaitMark()
	failed, err := r.settle(ctx, b.rows, b.acks(), b.spans, false)
	if err = errors.Join(markErr, err); err != nil {
		return false, err
	}
	r.metrics.batchSeconds.Observe(time.Since(b.start).Seconds())
	if len(failed) == 0 || !hold {
		return false, nil
	}
	var ids []int64
	for _, f := range failed {
		ids = append(ids, f.ids...)
	}
	if err := r.hold(ctx, ids); err != nil {
		if errors.Is(err, errLeaseLost) {
			// The rows stay pending, for the relay that leads now.
			return false, nil
		}
		return false, fmt.Errorf("%w (after %v)", err, failed[0].err)
	}
	r.metrics.errors.Inc()
	for _, f := range failed {
		held = r.holds.hold(f.topic, f.err, r.cfg.MinBackoff) || held
	}
	r.holdsChanged()
	return held, nil
}

// topicFailure is the rows of one topic that failed to produce for now.
type topicFailure struct {
	topic string
	ids   []int64
	err   error // the first row's
}

// settle ends the spans of rows, parks those that can never be produced and
// marks the produced ones forwarded in one statement; errs has each row's
// produce error. It returns the rows that failed for now, by topic, in the
// order of their first row. The error is the database's, or ctx's when it
// ended the wait: the rows stay as they are, and are sent again.
func (r *Relay) settle(ctx context.Context, rows []Row, errs []error, spans []trace.Span, probed bool) ([]topicFailure, error) {
	for i, span := range spans {
		if errs[i] != nil {
			span.RecordError(errs[i])
			span.SetStatus(codes.Error, "produce failed")
		}
		span.End()
	}
	errs = r.alone(ctx, rows, errs, probed)
	forwarded := make([]int64, 0, len(rows))
	var failed []topicFailure
	var dbErr error
	for i, err := range errs {
		row := rows[i]
		switch {
		case err == nil:
			forwarded = append(forwarded, row.ID)
		case Unproducible(err):
			reason := fmt.Sprintf("cannot be produced to %s: %v", row.Topic, err)
			if perr := r.source.Park(ctx, row.ID, reason); perr != nil {
				dbErr = errors.Join(dbErr, perr)
				continue
			}
			r.metrics.parked.Inc()
			r.logger.ErrorContext(ctx, "outbox row parked: it can never be produced; the rows behind it go on",
				"row", row.ID, "topic", row.Topic, "bytes", row.Size(), "reason", reason)
		default:
			j := slices.IndexFunc(failed, func(f topicFailure) bool { return f.topic == row.Topic })
			if j < 0 {
				failed = append(failed, topicFailure{topic: row.Topic, err: fmt.Errorf("produce to %s: %w", row.Topic, err)})
				j = len(failed) - 1
			}
			failed[j].ids = append(failed[j].ids, row.ID)
		}
	}
	// Produced rows are marked even when others failed: they are on Kafka, and
	// marking them keeps the next attempt from sending them twice.
	rest, err := markForwarded(ctx, r.source, forwarded, r.limit)
	r.metrics.forwarded.Add(float64(len(forwarded) - len(rest)))
	r.unmarked = append(r.unmarked, rest...)
	dbErr = errors.Join(dbErr, err)
	if dbErr == nil && len(failed) > 0 && ctx.Err() != nil {
		// The wait ended with ctx (a stop): the rows stay pending as they
		// are, and their topic is not held for it.
		dbErr = context.Cause(ctx)
	}
	return failed, dbErr
}

// alone produces again, one at a time and in order, the rows that failed
// because a topic refused their record batch as too large, and returns errs
// with their new results. A topic whose max.message.bytes is below
// kafka.max_message_bytes refuses a batch larger than its limit, of rows
// each well under it; Kafka fails every record of that batch, and franz-go
// every record of the partition buffered behind them. All of them were
// parked, as if each could never be produced. Alone, a row is refused only
// when it is over the topic's limit itself.
//
// Once a row of a topic fails alone for another reason (the broker went
// away), the topic's rows after it keep their batch's error unsent: sent
// alone, they could land before it. So do the rows of a topic held now,
// unless they are the probe's (probed): held by the batch before this one,
// whose rows went alone first, they would land before its held rows (found
// by a fresh-eyed attack: a key's rows 10–19 before its rows 0–9).
//
// A relay that lost its lease sends nothing alone: the rows stay pending
// for the one that leads now.
func (r *Relay) alone(ctx context.Context, rows []Row, errs []error, probed bool) []error {
	var stopped map[string]error // topics whose rows are not sent alone any more
	for i, err := range errs {
		if !batchTooLarge(err) {
			continue
		}
		if ctx.Err() != nil {
			// Not parked for a stop: the row stays pending as it is.
			errs[i] = context.Cause(ctx)
			continue
		}
		row := rows[i]
		if serr, ok := stopped[row.Topic]; ok {
			errs[i] = serr
			continue
		}
		if _, held := r.holds.topics[row.Topic]; held && !probed {
			errs[i] = fmt.Errorf("%w (after %v)", errHeldBehind, err)
			continue
		}
		if !r.lease.Held(ctx) {
			errs[i] = fmt.Errorf("%w (after %v)", errLeaseLost, err)
			continue
		}
		if _, warned := r.refusedBatches[row.Topic]; !warned {
			r.refusedBatches[row.Topic] = struct{}{}
			r.logger.WarnContext(ctx, "a topic refused a record batch as too large: its max.message.bytes is below kafka.max_message_bytes (or its compression.type makes batches larger); the refused rows go again one at a time, and its batches are cut to its limit from now on; set kafka.max_message_bytes to at most the topic's limit, or raise the topic's",
				"topic", row.Topic, "err", err)
		}
		errs[i] = r.sink.Send(ctx, []Record{row.Record}).Wait()[0]
		if errs[i] != nil && !Unproducible(errs[i]) {
			if stopped == nil {
				stopped = map[string]error{}
			}
			stopped[row.Topic] = errs[i]
		}
	}
	return errs
}

// errHeldBehind fails a row that waits behind the held rows of its topic.
var errHeldBehind = errors.New("its topic is held: the row waits behind the topic's held rows")

// batchTooLarge says that the broker refused err's record batch as too large
// (the batch, not necessarily its every record), or that the record waited
// behind one that may be too large.
func batchTooLarge(err error) bool {
	return errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) || errors.Is(err, ErrBehindTooLarge)
}

// markUnmarked marks the rows whose mark failed after they were produced.
func (r *Relay) markUnmarked(ctx context.Context) error {
	if len(r.unmarked) == 0 {
		return nil
	}
	rest, err := markForwarded(ctx, r.source, r.unmarked, r.limit)
	r.metrics.forwarded.Add(float64(len(r.unmarked) - len(rest)))
	r.unmarked = rest
	if err != nil {
		return fmt.Errorf("mark rows already on Kafka: %w", err)
	}
	return nil
}

// shrink halves the batch limit when err says that the database cancelled
// a statement at its statement_timeout (a role's or database's setting,
// set for the application's queries), and reports whether it did: the
// relay then tries again at once. A batch's read and mark take time in
// proportion to its rows, and the relay retried the same batch, cancelled
// each time, without end: nothing was forwarded until the setting changed.
// At one row a timeout is a failure like any other, retried with backoff.
// The limit grows back by regrow.
func (r *Relay) shrink(err error) bool {
	if r.limit <= 1 || !store.StatementTimedOut(err) {
		return false
	}
	r.limit = max(1, r.limit/2)
	r.limitSince = time.Now()
	r.metrics.errors.Inc()
	r.metrics.batchLimit.Set(float64(r.limit))
	r.logger.Warn("the database cancelled a relay statement at its statement_timeout; the relay goes on at once with batches half as large, and doubles them again after regrow_after without one; raise the role's statement_timeout, or lower relay.batch_size",
		"batch_limit", r.limit, "relay.batch_size", r.cfg.BatchSize, "regrow_after", r.cfg.RegrowAfter, "err", err)
	return true
}

// regrow doubles a shrunk batch limit, up to BatchSize, once RegrowAfter
// has passed without a statement cancelled: the timeout may have been the
// load of the moment, or the setting changed. If it was not, one statement
// a RegrowAfter is cancelled, and the limit halved again.
func (r *Relay) regrow() {
	if r.limit >= r.cfg.BatchSize || time.Since(r.limitSince) < r.cfg.RegrowAfter {
		return
	}
	r.limit = min(2*r.limit, r.cfg.BatchSize)
	r.limitSince = time.Now()
	r.metrics.batchLimit.Set(float64(r.limit))
	if r.limit == r.cfg.BatchSize {
		r.logger.Info("relay batches are back to relay.batch_size", "relay.batch_size", r.cfg.BatchSize)
	}
}

// failed records a failure; an outage is logged when it starts and then
// summarised at most every OutageReportInterval, not once per attempt.
func (r *Relay) failed(err error) {
	r.metrics.errors.Inc()
	if r.outage.Failed(err) {
		r.setHealthy()
	}
}

func (r *Relay) recovered() {
	if r.outage.Succeeded() {
		r.setHealthy()
	}
}

// idle waits for a nudge, the poll interval, the end of the retry of held
// rows in flight or the time to start the next, or the end of ctx.
func (r *Relay) idle(ctx context.Context) {
	t := time.NewTimer(r.holds.untilDue(r.cfg.PollInterval))
	defer t.Stop()
	select {
	case <-r.nudges:
	case <-t.C:
	case <-r.holds.probed():
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
	heldTopics   prometheus.Gauge
	batchLimit   prometheus.Gauge
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
		heldTopics: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventfn_relay_held_topics", Help: "Topics the relay cannot produce to now; their events wait in the outbox, other topics' go on.",
		}),
		batchLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eventfn_relay_batch_limit", Help: "The most outbox rows one relay batch reads and marks now: relay.batch_size, or less while the database cancels larger batches' statements at its statement_timeout.",
		}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "eventfn_relay_batch_seconds", Help: "Time to produce one batch and receive every ack.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	m.healthy.Set(1)
	for _, c := range []prometheus.Collector{m.forwarded, m.parked, m.errors, m.healthy, m.heldTopics, m.batchLimit, m.batchSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register relay metrics: %w", err)
		}
	}
	return m, nil
}

// traceSend starts the span of sending rec, a child of the span that emitted
// it, and puts the new span in rec's headers for the handler that reads it.
// When nothing records (tracing is off), the headers are left as they are.
func (r *Relay) traceSend(ctx context.Context, rec *Record) trace.Span {
	_, span := r.cfg.Tracer.Start(tracing.Extract(ctx, rec.Headers), "send "+rec.Topic,
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"), attribute.String("messaging.destination.name", rec.Topic),
			attribute.String("messaging.operation.type", "send"), attribute.String("messaging.message.id", rec.Headers["ce_id"])))
	if span.IsRecording() {
		headers := make(map[string]string, len(rec.Headers)+2)
		for k, v := range rec.Headers {
			headers[k] = v
		}
		tracing.Inject(trace.ContextWithSpan(ctx, span), headers)
		rec.Headers = headers
	}
	return span
}
