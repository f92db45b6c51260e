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
//   - 53000, 53100, 53200, 53300: the server is short of a resource: disk,
//     memory (out of shared memory: also its lock table, filled by another
//     session's locks, when every write and new connection fails so while
//     reads go on), connections;
//   - 25006: a write in a read-only transaction. eventfn never asks for one,
//     so the server made it so: a standby (a failover that pointed the
//     connection at a replica, or has not promoted one yet), or
//     default_transaction_read_only turned on, as managed services do when
//     the disk fills. (A handler that makes its own transaction read-only
//     the router tells apart: it asks the server.)
//
// Not here, though in class 53: 53400, a configured limit one statement ran
// into (a sort past temp_file_limit): it fails the same however long it
// waits, so it is retried and dead-lettered, never waited for without end.
// A transaction too large for the disk or memory left waits as for the
// server short of them: from here the two look the same, and a server
// short of them is the likelier and the worse to dead-letter for. A
// conflict with another session (a lock, a deadlock) is not here either:
// the server serves, and the router waits that out on its own terms.
var pgUnavailableCodes = []string{"08", "57P01", "57P02", "57P03", "57P05", "53000", "53100", "53200", "53300", "25006"}

// sqliteUnavailableCodes are SQLite's primary result codes that say the file
// cannot take this write now: another connection holds the lock past the
// busy timeout (BUSY), the file cannot be written (READONLY: its
// permissions, it was moved, or the writer connection was set query_only),
// the disk failed (IOERR) or is full (FULL).
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

// StatementTimedOut reports whether err says PostgreSQL cancelled a statement
// (57014, query_canceled): its statement_timeout, as a role's or database's
// setting can make it, or a cancel request from someone else. Unlike the
// failures Unavailable names, a smaller statement may get through: a caller
// whose statements grow with a batch (the relay's reads and marks) can go on
// with smaller batches. A caller's own context cancels a statement the same
// way; that caller checks its context first.
func StatementTimedOut(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "57014"
}

// UniqueViolation reports whether err says a write broke a unique index or
// primary key: PostgreSQL's 23505 (unique_violation), SQLite's
// SQLITE_CONSTRAINT_UNIQUE or SQLITE_CONSTRAINT_PRIMARYKEY. The row it
// collided with is committed (PostgreSQL waits for the other writer's
// transaction to end before it says so), so a caller can read it.
func UniqueViolation(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		code := se.Code()
		return code == sqliteConstraintUnique || code == sqliteConstraintPrimaryKey
	}
	return false
}

// SQLite's extended result codes for a unique index and a primary key that a
// write would break.
const (
	sqliteConstraintUnique     = 2067
	sqliteConstraintPrimaryKey = 1555
)
