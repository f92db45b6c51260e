package router

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// Write runs stmts in order and emits events in one transaction; see
// runtime.Transactor. The events are encoded and checked before anything is
// sent, so an event that could never be produced writes nothing.
//
// On PostgreSQL everything goes in one pipeline: BEGIN, the statements, the
// outbox rows and COMMIT, one round trip where Transact takes one per
// statement and two more. A statement that fails makes PostgreSQL skip the
// rest of the pipeline, COMMIT included, and the transaction is rolled back.
func (o *Outbox) Write(ctx context.Context, stmts []runtime.Statement, events ...runtime.Event) error {
	h, err := o.outsideHandle(ctx, nil)
	if err != nil {
		return err
	}
	if err := h.Emit(ctx, events...); err != nil {
		return err
	}
	if o.db.Driver == store.Postgres {
		err = o.writePipelined(ctx, stmts, h.staged)
	} else {
		_, err = o.writes.run(ctx, nil, func(ctx context.Context, tx sqlExecutor) (toCommit, error) {
			for i, st := range stmts {
				var err error
				if st.Returning != nil {
					// No row leaves Returning as it was, as on PostgreSQL.
					// Its Scanners under a recover, as sqlTx's Valuers
					// (panicsafe.go): a panic in Row.Scan deadlocks there.
					err = scanGuarded(tx.QueryRowContext(ctx, st.Query, st.Args...).Scan, st.Returning)
					if errors.Is(err, sql.ErrNoRows) {
						err = nil
					}
				} else {
					_, err = tx.ExecContext(ctx, st.Query, st.Args...)
				}
				if err != nil {
					return toCommit{}, statementError(i, len(stmts), err)
				}
			}
			return toCommit{rows: h.staged}, nil
		})
	}
	if err == nil && len(h.staged) > 0 {
		o.wake.nudge()
	}
	return err
}

func (o *Outbox) writePipelined(ctx context.Context, stmts []runtime.Statement, rows []relay.Record) error {
	// A pooled connection whose session the server had ended (a restart
	// of PostgreSQL ends every one, and they wait in the pool until used)
	// fails the write's first result: nothing of it ran, so it goes again.
	// The failed connection leaves the pool, so the pool's size bounds the
	// tries. Each such connection failed one order with a 500 after a
	// restart: 22 to 34 in the fault suite once nothing else (a relay
	// polling every 5 ms) used them up first.
	tries := o.db.Stats().MaxOpenConnections + 1
	if tries == 1 {
		tries = 17 // an unbounded pool: as many as the default's
	}
	for {
		err := o.writePipelinedOnce(ctx, stmts, rows)
		var ended *sessionEndedFirst
		if tries--; tries == 0 || !errors.As(err, &ended) || ctx.Err() != nil {
			return err
		}
	}
}

// sessionEndedFirst is a pipeline whose first result was the server ending
// the session (SQLSTATE class 57, operator intervention): the server sends
// results in order, so none of the pipeline's statements ran, its COMMIT
// included.
type sessionEndedFirst struct{ err error }

func (e *sessionEndedFirst) Error() string { return e.err.Error() }
func (e *sessionEndedFirst) Unwrap() error { return e.err }

func sessionEnded(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "57P0") && pe.Severity == "FATAL"
}

func (o *Outbox) writePipelinedOnce(ctx context.Context, stmts []runtime.Statement, rows []relay.Record) error {
	t, err := openPipelined(ctx, o.db)
	if err != nil {
		return err
	}
	defer t.conn.Close()
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	for _, st := range stmts {
		b.Queue(st.Query, st.Args...)
	}
	for _, r := range rows {
		query, args, err := relay.InsertStatement(r)
		if err != nil {
			return fmt.Errorf("write %s to the outbox: %w", r.Headers[HeaderType], err)
		}
		b.Queue(query, args...)
	}
	b.Queue("COMMIT")
	return t.raw(func(pc *pgx.Conn) error {
		err := sendWrite(ctx, pc, b, stmts, rows)
		if err != nil {
			// The transaction failed, or may still be open: end it before
			// the connection goes back to the pool.
			_ = endTransaction(pc)
			if ctx.Err() != nil && !runtime.IsPermanent(err) {
				// Once sent, the pipeline runs to its COMMIT on the server
				// whatever happens to the client: the outcome is unknown.
				err = fmt.Errorf("the context ended while the transaction was in flight; it may have committed: %w", err)
			}
			if store.Unavailable(err) && !isInfra(err) {
				err = infraError{err}
			}
		}
		return err
	})
}

// sendWrite sends b (BEGIN, stmts, the outbox rows, COMMIT) and reads its
// results in order; the first error is the one that counts, the ones after
// it say only that the pipeline was skipped.
func sendWrite(ctx context.Context, pc *pgx.Conn, b *pgx.Batch, stmts []runtime.Statement, rows []relay.Record) error {
	br := pc.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		// pgx prepares statements it has not seen before it sends the
		// batch; a statement PostgreSQL cannot parse fails here, before
		// BEGIN, and is the statement's fault, not the database's.
		ended := sessionEnded(err)
		err = fmt.Errorf("prepare or begin the transaction: %w", err)
		if store.Unavailable(err) {
			err = infraError{err}
		}
		if ended {
			err = &sessionEndedFirst{err}
		}
		return err
	}
	// The server runs the whole pipeline whatever is read here, so a
	// RETURNING row is kept raw and scanned into its targets only after
	// COMMIT's answer: a target that does not fit then says the transaction
	// committed (pgx's own Scan would have ended the batch's results
	// before COMMIT's was read).
	type pendingRow struct {
		stmt   int
		fields []pgconn.FieldDescription
		raw    [][]byte
	}
	var returned []pendingRow
	for i, st := range stmts {
		if st.Returning == nil {
			if _, err := br.Exec(); err != nil {
				return statementError(i, len(stmts), err)
			}
			continue
		}
		rs, err := br.Query()
		if err == nil {
			if rs.Next() {
				row := pendingRow{stmt: i, fields: slices.Clone(rs.FieldDescriptions())}
				for _, v := range rs.RawValues() {
					row.raw = append(row.raw, bytes.Clone(v)) // nil stays nil: NULL
				}
				returned = append(returned, row)
			}
			rs.Close()
			err = rs.Err()
		}
		if err != nil {
			return statementError(i, len(stmts), err)
		}
	}
	if err := readCommit(br, toCommit{rows: rows}); err != nil {
		return err
	}
	for _, row := range returned {
		if err := scanRow(pc.TypeMap(), row.fields, row.raw, stmts[row.stmt].Returning); err != nil {
			// Not to be retried: it committed, and a retry would write it twice.
			return runtime.Permanent(fmt.Errorf("the transaction committed, but the row of its statement %d of %d could not be read: %w", row.stmt+1, len(stmts), err))
		}
	}
	return nil
}

// scanRow scans one row's raw values into dst, as pgx's Rows.Scan does.
func scanRow(m *pgtype.Map, fields []pgconn.FieldDescription, raw [][]byte, dst []any) error {
	if len(dst) != len(raw) {
		return fmt.Errorf("%d targets for a row of %d columns", len(dst), len(raw))
	}
	for i, d := range dst {
		if err := m.Scan(fields[i].DataTypeOID, fields[i].Format, raw[i], d); err != nil {
			return fmt.Errorf("column %s: %w", fields[i].Name, err)
		}
	}
	return nil
}

func statementError(i, n int, err error) error {
	return fmt.Errorf("statement %d of %d: %w", i+1, n, err)
}
