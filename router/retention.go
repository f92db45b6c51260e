package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
	// targets are the tables swept: the outbox, the inbox, or both. Only
	// run's goroutine touches them.
	targets []*sweepTarget
	// regrowAfter is how long a table's DELETEs stay at a limit halved for
	// a cancel before it doubles again.
	regrowAfter time.Duration
}

// sweepTarget is a table retention deletes from, a batch at a time.
type sweepTarget struct {
	table string
	del   func(ctx context.Context, limit int) (int, error)
	// limit is the most rows one DELETE removes now: retention.batch_size,
	// or less after the database cancelled one at its statement_timeout;
	// changed is when it last changed. Each table has its own: a limit the
	// outbox needs was doubled by the inbox's quick sweep, and every sweep
	// had one outbox DELETE cancelled (found by a fresh-eyed attack).
	limit   int
	changed time.Time
}

func newCleaner(cfg configs.Retention, db *store.DB, outbox *relay.Table, reg prometheus.Registerer, logger *slog.Logger) (*cleaner, error) {
	c := &cleaner{cfg: cfg, db: db, outbox: outbox, logger: logger, regrowAfter: time.Minute,
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
	if cfg.Outbox > 0 {
		c.targets = append(c.targets, &sweepTarget{table: "outbox", limit: cfg.BatchSize, del: func(ctx context.Context, limit int) (int, error) {
			return c.outbox.DeleteForwarded(ctx, c.cfg.Outbox, limit, c.cfg.OutboxArchive)
		}})
	}
	if cfg.Inbox > 0 {
		c.targets = append(c.targets, &sweepTarget{table: "inbox", limit: cfg.BatchSize, del: c.deleteInbox})
	}
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

// sweep removes everything that is due, a batch at a time, taking the
// tables in turn: one table's DELETEs, however many, do not keep the
// other's waiting (with rows falling due faster than one table's batches
// remove them, the inbox was never reached).
func (c *cleaner) sweep(ctx context.Context) error {
	var errs []error
	due := slices.Clone(c.targets)
	for len(due) > 0 {
		var more []*sweepTarget
		for _, t := range due {
			n, limit, err := c.batch(ctx, t)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if n >= limit {
				more = append(more, t)
			}
		}
		due = more
		if len(due) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return errors.Join(errs...)
		case <-time.After(retentionPause):
		}
	}
	return errors.Join(errs...)
}

// batch deletes one batch of t's, of up to t.limit rows, and returns how
// many it deleted and the limit it asked for. A DELETE the database cancels
// at its statement_timeout is tried again at once with half as many rows
// (down to one): its time grows with its rows, and a sweep that failed so
// failed every interval, while the table grew. The limit doubles back, up
// to retention.batch_size, once regrowAfter has passed without a cancel.
func (c *cleaner) batch(ctx context.Context, t *sweepTarget) (n, limit int, err error) {
	for {
		limit = t.limit
		n, err = t.del(ctx, limit)
		c.deleted.WithLabelValues(t.table).Add(float64(n))
		if err == nil {
			if t.limit < c.cfg.BatchSize && time.Since(t.changed) >= c.regrowAfter {
				t.limit, t.changed = min(2*t.limit, c.cfg.BatchSize), time.Now()
			}
			return n, limit, nil
		}
		if t.limit <= 1 || ctx.Err() != nil || !store.StatementTimedOut(err) {
			return n, limit, err
		}
		t.limit, t.changed = max(1, t.limit/2), time.Now()
		c.logger.Warn("the database cancelled a retention DELETE at its statement_timeout; trying again with batches half as large; raise the role's statement_timeout, or lower retention.batch_size",
			"table", t.table, "batch_limit", t.limit, "retention.batch_size", c.cfg.BatchSize, "err", err)
	}
}

// deleteInbox deletes up to one batch of inbox rows older than
// retention.inbox. Rows are found by their physical address (ctid, rowid):
// inbox rows are written in time order, so the oldest come first in a scan
// and no index on processed_at is needed on the handler path.
func (c *cleaner) deleteInbox(ctx context.Context, limit int) (int, error) {
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
	res, err := c.db.ExecContext(ctx, q, cutoff, limit)
	if err != nil {
		return 0, fmt.Errorf("delete inbox rows older than %s: %w", c.cfg.Inbox, err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}
