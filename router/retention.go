package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/store"
)

// retentionPause separates two DELETE batches of one sweep, so a sweep with
// much to do leaves the database to the handlers between batches.
const retentionPause = 50 * time.Millisecond

// cleaner deletes, in small batches, the forwarded outbox rows older than
// retention.outbox and the inbox rows older than retention.inbox. Every
// replica runs one; two deleting the same rows do no harm.
type cleaner struct {
	cfg     configs.Retention
	db      *store.DB
	outbox  *relay.Table
	deleted *prometheus.CounterVec
	errors  prometheus.Counter
	logger  *slog.Logger
	// limit is the most rows one DELETE removes now: retention.batch_size,
	// or less after the database cancelled one at its statement_timeout.
	// Only run's goroutine touches it.
	limit int
}

func newCleaner(cfg configs.Retention, db *store.DB, outbox *relay.Table, reg prometheus.Registerer, logger *slog.Logger) (*cleaner, error) {
	c := &cleaner{cfg: cfg, db: db, outbox: outbox, logger: logger, limit: cfg.BatchSize,
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "eventfn", Name: "retention_deleted_rows_total",
			Help: "Rows removed by retention: table is outbox (deleted or archived) or inbox.",
		}, []string{"table"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "eventfn", Name: "retention_errors_total",
			Help: "Retention sweeps that failed; the next sweep tries again.",
		}),
	}
	for _, m := range []prometheus.Collector{c.deleted, c.errors} {
		if err := reg.Register(m); err != nil {
			return nil, fmt.Errorf("register retention metric: %w", err)
		}
	}
	// Both series exist from the start, at 0, so that rate() and alerts see
	// the first deleted row rather than a series appearing.
	c.deleted.WithLabelValues("outbox")
	c.deleted.WithLabelValues("inbox")
	return c, nil
}

// run sweeps every retention.interval until ctx ends.
func (c *cleaner) run(ctx context.Context) {
	if c.cfg.Outbox == 0 && c.cfg.Inbox == 0 {
		return
	}
	tick := time.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := c.sweep(ctx); err != nil && ctx.Err() == nil {
			c.errors.Inc()
			// A database outage is reported by the relay and the handlers;
			// retention only waits for the next sweep.
			c.logger.Warn("retention sweep failed; the next one tries again", "err", err)
		}
	}
}

// sweep removes everything that is due, a batch at a time.
func (c *cleaner) sweep(ctx context.Context) error {
	var errs []error
	if c.cfg.Outbox > 0 {
		errs = append(errs, c.batches(ctx, "outbox", func(ctx context.Context) (int, error) {
			return c.outbox.DeleteForwarded(ctx, c.cfg.Outbox, c.limit, c.cfg.OutboxArchive)
		}))
	}
	if c.cfg.Inbox > 0 {
		errs = append(errs, c.batches(ctx, "inbox", c.deleteInbox))
	}
	return errors.Join(errs...)
}

// batches deletes with del, a batch of up to c.limit rows at a time, until
// a batch finds fewer. A batch the database cancels at its
// statement_timeout is tried again at once with half as many rows: a
// DELETE's time grows with its rows, and a sweep that failed so failed
// every interval, while the table grew. A sweep that met no cancel doubles
// the limit back, up to retention.batch_size.
func (c *cleaner) batches(ctx context.Context, table string, del func(context.Context) (int, error)) error {
	cancelled := false
	for {
		n, err := del(ctx)
		c.deleted.WithLabelValues(table).Add(float64(n))
		if err != nil && c.limit > 1 && ctx.Err() == nil && store.StatementTimedOut(err) {
			cancelled = true
			c.limit = max(1, c.limit/2)
			c.logger.Warn("the database cancelled a retention DELETE at its statement_timeout; trying again with batches half as large; raise the role's statement_timeout, or lower retention.batch_size",
				"table", table, "batch_limit", c.limit, "retention.batch_size", c.cfg.BatchSize, "err", err)
			continue
		}
		if err != nil {
			return err
		}
		if n < c.limit {
			if !cancelled {
				c.limit = min(2*c.limit, c.cfg.BatchSize)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(retentionPause):
		}
	}
}

// deleteInbox deletes up to one batch of inbox rows older than
// retention.inbox. Rows are found by their physical address (ctid, rowid):
// inbox rows are written in time order, so the oldest come first in a scan
// and no index on processed_at is needed on the handler path.
func (c *cleaner) deleteInbox(ctx context.Context) (int, error) {
	var q string
	var cutoff any
	if c.db.Driver == store.SQLite {
		// processed_at is CURRENT_TIMESTAMP text, 'YYYY-MM-DD HH:MM:SS' UTC.
		q = `DELETE FROM eventfn_inbox WHERE rowid IN (SELECT rowid FROM eventfn_inbox WHERE processed_at < datetime('now', $1) LIMIT $2)`
		cutoff = fmt.Sprintf("-%.3f seconds", c.cfg.Inbox.Seconds())
	} else {
		q = `DELETE FROM eventfn_inbox WHERE ctid = ANY (ARRAY(SELECT ctid FROM eventfn_inbox WHERE processed_at < now() - $1 * interval '1 microsecond' LIMIT $2))`
		cutoff = c.cfg.Inbox.Microseconds()
	}
	res, err := c.db.ExecContext(ctx, q, cutoff, c.limit)
	if err != nil {
		return 0, fmt.Errorf("delete inbox rows older than %s: %w", c.cfg.Inbox, err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}
