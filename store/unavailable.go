package store

import (
	"database/sql"
	"database/sql/driver"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
)

// pgUnavailableCodes are PostgreSQL error codes (and classes, by their first
// two characters) that say the server cannot serve this work now, whatever
// the work is:
//
//   - 08: the connection failed or was lost;
//   - 57P01, 57P02, 57P03, 57P05: the server shuts down, crashed, is not
//     taking connections yet, or ended an idle session;
//   - 53000, 53100, 53300: the server is short of resources, out of disk,
//     or of connections;
//   - 25006: a write in a read-only transaction. eventfn never asks for one,
//     so the server made it so: a standby (a failover that pointed the
//     connection at a replica, or has not promoted one yet), or
//     default_transaction_read_only turned on, as managed services do when
//     the disk fills. The work goes through once the server takes writes.
//     (A handler that makes its own transaction read-only is the router's
//     to tell apart: it asks the server.)
//
// Not here, though in class 53: 53200 (out of memory) and 53400 (a limit
// such as temp_file_limit) are one statement's, which fails again however
// long it waits; it is retried and dead-lettered, never waited for without
// end. A conflict with another session (a lock, a deadlock) is not here
// either: the server serves, the router waits that out on its own terms.
var pgUnavailableCodes = []string{"08", "57P01", "57P02", "57P03", "57P05", "53000", "53100", "53300", "25006"}

// sqliteUnavailableCodes are SQLite's primary result codes that say the file
// cannot take this write now, whatever it is: another connection holds the
// lock past the busy timeout (BUSY), the file cannot be written
// (READONLY: its permissions, or it was moved), the disk failed (IOERR) or
// is full (FULL).
var sqliteUnavailableCodes = []int{5, 8, 10, 13}

// Unavailable reports whether err says the database cannot serve now, rather
// than that the statement or its data is wrong: no connection, a connection
// lost, the server shutting down, overloaded, out of disk or read-only,
// SQLite's file locked past its busy timeout, full or failing. Work that
// failed so goes through unchanged once the database is back, so it waits
// (a handler's event) or is answered 503 (an order), never dead-lettered.
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
		for _, c := range sqliteUnavailableCodes {
			if se.Code()&0xff == c {
				return true
			}
		}
		return false
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
