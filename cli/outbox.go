package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/store"
)

// OutboxState is the transactional outbox as `eventfn outbox` shows it.
type OutboxState struct {
	Database string `json:"database"`
	// Pending rows are committed and not yet produced to Kafka.
	Pending int64 `json:"pending"`
	// OldestPendingAge is how long the oldest pending row has waited, in
	// seconds; 0 when none is pending.
	OldestPendingAge float64    `json:"oldest_pending_age_seconds"`
	OldestPendingAt  *time.Time `json:"oldest_pending_at"`
	// Held lists the topics the relay cannot produce to now, with how many
	// of the pending rows wait for each (counted in Pending too).
	Held []relay.HeldTopic `json:"held"`
	// Parked rows can never be produced (too large, undecodable); they stay
	// for an operator.
	Parked int64 `json:"parked"`
	// Forwarded rows were produced and wait for retention.outbox to remove
	// them.
	Forwarded        int64      `json:"forwarded"`
	RetentionSeconds float64    `json:"retention_outbox_seconds"`
	Relay            RelayState `json:"relay"`
}

// RelayState says who forwards the outbox.
type RelayState struct {
	// Mode is "single process" on SQLite, whose file one eventfn owns, or
	// "lease" on PostgreSQL, where the replicas take turns holding an
	// advisory lock.
	Mode string `json:"mode"`
	// Held says whether a session holds the lease (PostgreSQL).
	Held bool `json:"held"`
	// Holder is the lease holder's backend (PostgreSQL).
	Holder *LeaseHolder `json:"holder,omitempty"`
	// Waiting counts replicas standing by for the lease (PostgreSQL).
	Waiting int `json:"waiting"`
}

// LeaseHolder is the PostgreSQL session that holds the relay lease.
type LeaseHolder struct {
	PID         int64      `json:"pid"`
	Application string     `json:"application,omitempty"`
	ClientAddr  string     `json:"client_addr,omitempty"`
	Since       *time.Time `json:"backend_start,omitempty"`
}

func newOutboxCmd(g *globalFlags, stdout io.Writer, environ []string) *cobra.Command {
	f := &stateFlags{}
	cmd := &cobra.Command{
		Use:   "outbox",
		Short: "The outbox: pending rows and the oldest one's age, parked and forwarded rows, the relay",
		Long: `Show the transactional outbox of the configured database: rows waiting for the
relay (and how long the oldest has waited), and among them those held for a
topic the relay cannot produce to now, parked rows (never producible),
forwarded rows that retention.outbox has not removed yet, and who relays: on
PostgreSQL whether some session holds the relay's advisory lock and how many
replicas wait for it; on SQLite the one process that owns the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			cfg, db, err := openForDLQ(ctx, g, environ, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer db.Close()
			st, err := Outbox(ctx, db, time.Now())
			if err != nil {
				return err
			}
			st.RetentionSeconds = cfg.Retention.Outbox.Seconds()
			if f.asJSON {
				return writeJSON(stdout, st)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "database\t%s\n", st.Database)
			oldest := "-"
			if st.OldestPendingAt != nil {
				oldest = fmt.Sprintf("%s ago (%s)", time.Duration(st.OldestPendingAge*float64(time.Second)).Round(time.Millisecond), st.OldestPendingAt.Format(time.RFC3339))
			}
			fmt.Fprintf(tw, "pending\t%d\n", st.Pending)
			fmt.Fprintf(tw, "oldest pending\t%s\n", oldest)
			for _, h := range st.Held {
				fmt.Fprintf(tw, "held\t%d of them for %s (the relay cannot produce to it now; other topics' go on)\n", h.Rows, h.Topic)
			}
			fmt.Fprintf(tw, "parked\t%d\n", st.Parked)
			keep := "kept (retention.outbox 0)"
			if cfg.Retention.Outbox > 0 {
				keep = "removed after " + cfg.Retention.Outbox.String() + " (retention.outbox)"
			}
			fmt.Fprintf(tw, "forwarded\t%d, %s\n", st.Forwarded, keep)
			fmt.Fprintf(tw, "relay\t%s\n", relayText(st.Relay))
			return tw.Flush()
		},
	}
	f.register(cmd)
	return cmd
}

// Outbox reads the state of the outbox and its relay in db.
func Outbox(ctx context.Context, db *store.DB, now time.Time) (OutboxState, error) {
	st := OutboxState{Database: fmt.Sprintf("%s %s", db.Driver, db.Where)}
	stats, err := relay.NewTable(db).Stats(ctx)
	if err != nil {
		return st, err
	}
	st.Pending, st.Parked = stats.Pending, stats.Parked
	if stats.Held > 0 {
		if st.Held, err = relay.NewTable(db).HeldByTopic(ctx); err != nil {
			return st, err
		}
	}
	if !stats.OldestPending.IsZero() {
		at := stats.OldestPending.UTC()
		st.OldestPendingAt = &at
		st.OldestPendingAge = max(0, now.Sub(at).Seconds())
	}
	if err := db.Read.QueryRowContext(ctx, `SELECT COUNT(*) FROM eventfn_outbox WHERE state = 1`).Scan(&st.Forwarded); err != nil {
		return st, fmt.Errorf("count forwarded outbox rows: %w", err)
	}
	if db.Driver != store.Postgres {
		st.Relay = RelayState{Mode: "single process", Held: true}
		return st, nil
	}
	st.Relay, err = relayLease(ctx, db)
	return st, err
}

// relayLease finds the relay's advisory lock in pg_locks: granted to the
// replica that relays, waited for by the others. The lock's second key is an
// int4 hash that pg_locks shows as an unsigned oid.
func relayLease(ctx context.Context, db *store.DB) (RelayState, error) {
	rs := RelayState{Mode: "lease"}
	rows, err := db.Read.QueryContext(ctx, `SELECT l.pid, l.granted, COALESCE(a.application_name, ''),
			COALESCE(host(a.client_addr), ''), a.backend_start
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.objsubid = 2
			AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND l.classid::bigint = $1
			AND l.objid::bigint = (hashtext(current_schema())::bigint & 4294967295)`, relay.LeaseKey)
	if err != nil {
		return rs, fmt.Errorf("read the relay lease from pg_locks: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var h LeaseHolder
		var granted bool
		var since *time.Time
		if err := rows.Scan(&h.PID, &granted, &h.Application, &h.ClientAddr, &since); err != nil {
			return rs, fmt.Errorf("scan pg_locks: %w", err)
		}
		if !granted {
			rs.Waiting++
			continue
		}
		h.Since = since
		rs.Held, rs.Holder = true, &h
	}
	if err := rows.Err(); err != nil {
		return rs, fmt.Errorf("read the relay lease from pg_locks: %w", err)
	}
	return rs, nil
}

func relayText(r RelayState) string {
	if r.Mode == "single process" {
		return "single process (SQLite: the eventfn that owns the file relays)"
	}
	if !r.Held {
		return fmt.Sprintf("lease not held: no eventfn relays (%d waiting)", r.Waiting)
	}
	who := fmt.Sprintf("pid %d", r.Holder.PID)
	if r.Holder.ClientAddr != "" {
		who += " from " + r.Holder.ClientAddr
	}
	return fmt.Sprintf("lease held by %s; %d replica(s) waiting", who, r.Waiting)
}
