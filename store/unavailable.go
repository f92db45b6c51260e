package store

import (
	"database/sql"
	"database/sql/driver"
	"errors"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
)

// pgUnavailableCodes are PostgreSQL error codes (and classes, by their first
// two characters) that say the server cannot serve this work now:
//
//   - 08: the connection failed or was lost;
//   - 57P01, 57P02, 57P03, 57P05: the server shuts down, crashed, is not
//     taking connections yet, or ended an idle session;
//   - 53: the server is short of a resource: connections (53300), memory
//     (53200: also a lock table filled by another session's locks), disk
//     (53100), a configured limit (53400);
//   - 25006: a write in a read-only transaction. eventfn never asks for one,
//     so the server made it so: a standby (a failover that pointed the
//     connection at a replica, or has not promoted one yet), or
//     default_transaction_read_only turned on, as managed services do when
//     the disk fills.
//
// Some of these one transaction can also cause alone, and then it fails so
// however long it waits (pgOneTransactionCodes). A conflict with another
// session (a lock, a deadlock) is not here: the server serves, and the
// router waits that out on its own terms.
var pgUnavailableCodes = []string{"08", "57P01", "57P02", "57P03", "57P05", "53", "25006"}

// pgOneTransactionCodes are the pgUnavailableCodes one transaction can cause
// alone: memory or a configured limit it ran short of itself (a query too
// large for memory, a sort past temp_file_limit). Not 53300 (a connection
// refused is never one transaction's) nor 53100: a full disk is the server's
// to fix, and an event that needs more disk than is left waits for it. A
// 25006 the router asks the server about instead.
var pgOneTransactionCodes = []string{"53000", "53200", "53400"}

// sqliteUnavailableCodes are SQLite's primary result codes that say the file
// cannot take this write now: another connection holds the lock past the
// busy timeout (BUSY), the file cannot be written (READONLY: its
// permissions, or it was moved), the disk failed (IOERR) or is full (FULL).
var sqliteUnavailableCodes = []int{5, 8, 10, 13}

// sqliteOneTransactionCodes are the sqliteUnavailableCodes one transaction
// can cause alone: a connection the handler set query_only (READONLY), an
// I/O error of its own temporary files (IOERR). Not FULL, as 53100 above.
var sqliteOneTransactionCodes = []int{8, 10}

// OneTransactionMayCause reports whether err, which Unavailable reports as
// the database unable to serve, may instead be of one transaction's own
// making, which fails the same way however long it waits. Which it is shows
// in the other writes: while they commit, it is the transaction's.
func OneTransactionMayCause(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return slices.Contains(pgOneTransactionCodes, pe.Code)
	}
	var se *sqlite.Error
	return errors.As(err, &se) && slices.Contains(sqliteOneTransactionCodes, se.Code()&0xff)
}

// Unavailable reports whether err says the database cannot serve now, rather
// than that the statement or its data is wrong: no connection, a connection
// lost, the server shutting down, overloaded, out of disk or read-only,
// SQLite's file locked past its busy timeout, full or failing. Work that
// failed so goes through unchanged once the database is back, so it waits
// (a handler's event) or is answered 503 (an order), never dead-lettered;
// unless OneTransactionMayCause says it may be the work's own, and the
// other writes, committing meanwhile, show that it is.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) {
		return true
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		for _, c := range pgUnavailableCodes {
			if strings.HasPrefix(pe.Code, c) {
				return true
			}
		}
		return false
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return slices.Contains(sqliteUnavailableCodes, se.Code()&0xff)
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	// Some paths report the failure as text only (an error rebuilt with
	// %v, say).
	msg := err.Error()
	return strings.Contains(msg, "SQLITE_BUSY") || strings.Contains(msg, "database is locked") ||
		strings.Contains(msg, "conn closed") || strings.Contains(msg, "failed to connect")
}
