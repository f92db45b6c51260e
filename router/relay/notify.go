package relay

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/eventfn/eventfn/store"
)

// Commits in other processes (the other replicas, `eventfn dlq replay`) wake
// the leading relay through PostgreSQL's LISTEN/NOTIFY; a commit in the
// leader's own process nudges it directly. Before, the leader found other
// processes' rows only by polling every relay.poll_interval: at 10 ms that
// cost an idle eventfn about 6 % of a core and PostgreSQL 2 %, and rows from
// another replica waited for the next look.
//
// The notification is sent after the commit, as a statement of its own,
// never inside the transaction that wrote the rows: PostgreSQL serialises
// the commits of transactions that notify (one lock on the notification
// queue, held through the commit's WAL flush), which would have made every
// replica's commits wait for each other. A statement with no writes takes
// that lock without a WAL flush. Bursts collapse into one notification, as
// nudges do. The channel is named after the schema, as the lease is.

// notifyChannelSQL is the channel of the outbox of the connection's schema.
const notifyChannelSQL = `'eventfn_outbox_' || hashtext(current_schema())::text`

// Notifier tells the leading relay of another process that rows were
// committed. Notify never blocks; Run sends.
type Notifier struct {
	db      *store.DB
	pending chan struct{}
}

// NewNotifier returns db's notifier: nil on SQLite, whose one process runs
// the only relay.
func NewNotifier(db *store.DB) *Notifier {
	if db.Driver != store.Postgres {
		return nil
	}
	return &Notifier{db: db, pending: make(chan struct{}, 1)}
}

// Notify asks Run to send a notification. Calls made while one is being
// sent collapse into one more.
func (n *Notifier) Notify() {
	if n == nil {
		return
	}
	select {
	case n.pending <- struct{}{}:
	default:
	}
}

// notifyTimeout bounds one notification: a database that does not answer
// holds only this goroutine, and the relay's poll finds the rows anyway.
const notifyTimeout = 5 * time.Second

// Run sends the notifications asked for until ctx ends, and then the one
// still owed, if any, so that a replica's last commits before its shutdown
// are not left to the poll.
func (n *Notifier) Run(ctx context.Context, logger *slog.Logger) {
	send := func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, notifyTimeout)
		defer cancel()
		if err := Notify(ctx, n.db); err != nil && ctx.Err() == nil {
			// Not an outage of its own: the leader's poll finds the rows,
			// and a database that is away shows in the relay and /readyz.
			logger.DebugContext(ctx, "outbox notification not sent; the relay's poll finds the rows", "error", err)
		}
	}
	for {
		select {
		case <-n.pending:
			send(ctx)
		case <-ctx.Done():
			select {
			case <-n.pending:
				send(context.WithoutCancel(ctx))
			default:
			}
			return
		}
	}
}

// Notify tells the leading relay, in whichever process, that outbox rows
// were committed; on SQLite it does nothing. A process without a relay of
// its own (`eventfn dlq replay`) calls it once its rows committed.
func Notify(ctx context.Context, db *store.DB) error {
	if db.Driver != store.Postgres {
		return nil
	}
	if _, err := db.ExecContext(ctx, `SELECT pg_notify(`+notifyChannelSQL+`, '')`); err != nil {
		return fmt.Errorf("notify the relay: %w", err)
	}
	return nil
}

// listenRetry is the wait before listening again after the connection failed.
const listenRetry = time.Second

// Listen calls wake whenever another process notifies that it committed
// outbox rows, until ctx ends; on SQLite it returns at once. It listens on
// a connection of its own, outside db's pool, so that it never takes a
// connection the handlers need. After each (re)connection it calls wake
// once: notifications sent while it was not listening are lost.
func Listen(ctx context.Context, db *store.DB, wake func(), logger *slog.Logger) {
	if db.Driver != store.Postgres {
		return
	}
	for ctx.Err() == nil {
		err := listen(ctx, db.DB, wake)
		if ctx.Err() != nil {
			return
		}
		logger.DebugContext(ctx, "outbox notifications: listening again after an error; the relay polls meanwhile", "error", err, "in", listenRetry)
		t := time.NewTimer(listenRetry)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
}

func listen(ctx context.Context, pool *sql.DB, wake func()) error {
	cfg, err := connConfig(ctx, pool)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	var channel string
	if err := conn.QueryRow(ctx, `SELECT `+notifyChannelSQL).Scan(&channel); err != nil {
		return fmt.Errorf("name the channel: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen on %s: %w", channel, err)
	}
	wake()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return fmt.Errorf("wait for notifications on %s: %w", channel, err)
		}
		wake()
	}
}

// connConfig is the configuration of the pool's connections (address, TLS,
// credentials, search_path), for a connection of the listener's own.
func connConfig(ctx context.Context, pool *sql.DB) (*pgx.ConnConfig, error) {
	conn, err := pool.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()
	var cfg *pgx.ConnConfig
	err = conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("the driver connection is a %T, not pgx's", dc)
		}
		cfg = c.Conn().Config().Copy()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return cfg, nil
}
