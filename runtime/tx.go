package runtime

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Tx is the handle a handler gets: the SQL transaction it runs in and the outbox.
//
// Queries use PostgreSQL-style placeholders ($1, $2, ...), which both PostgreSQL and
// SQLite accept, so one handler runs unchanged on either database.
//
// A statement whose context ends while it runs (a timeout or cancellation of
// the handler's own) stops, and ends the transaction on either database
// (PostgreSQL loses the connection; SQLite rolls an interrupted write back):
// the call's later statements are refused, and the call fails even if the
// handler goes on and returns nil. A statement whose context had ended
// before it began is refused with that context's error, and sends nothing.
type Tx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) Row
	// Emit writes events to the outbox in this transaction. They reach Kafka only
	// if the transaction commits. A handler may emit only the event types it
	// declared with Emits. An event Emit refuses as a mistake of the code (an
	// undeclared type, one not encodable as JSON) fails the call with a
	// permanent error even if the handler ignores it and returns nil: the
	// call's writes never commit without its events. An event larger than
	// kafka.max_message_bytes is refused with an error that wraps
	// ErrEventTooLarge, which depends on the data, not the code: the handler
	// may emit something smaller instead (a reference to the data). Should it
	// ignore that error, the call commits without the event and the runtime
	// logs a warning.
	Emit(ctx context.Context, events ...Event) error
	// Queue adds statements whose results the handler does not need. They
	// run in this transaction when the handler returns nil, in order, after
	// every statement it ran itself and before its events are written; on
	// PostgreSQL they travel with the commit, so they cost no round trip of
	// their own. One that fails rolls the whole call back and fails it with
	// its error, as if the handler had returned it. A statement the handler
	// runs itself after Queue (ExecContext, QueryContext, QueryRowContext)
	// first runs what is queued, so statements always run in the order they
	// were issued. A queued Statement may not set Returning.
	Queue(ctx context.Context, stmts ...Statement) error
}

// Rows is the result of a Tx's QueryContext: database/sql's *sql.Rows,
// whose Scan fails the call cleanly when a sql.Scanner panics. (database/sql
// keeps the rows' lock when one does, and the transaction could then never
// end.) Close it, as a *sql.Rows; what is left open closes when the call ends.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close() error
	Columns() ([]string, error)
}

// Row is the result of a Tx's QueryRowContext: database/sql's *sql.Row, with
// Scan guarded as Rows' is. Its Scan reports sql.ErrNoRows when the query
// returned no row, and any error of the query itself.
type Row interface {
	Scan(dest ...any) error
	Err() error
}

// Transactor runs a function in one transaction with an outbox, outside any
// handler: an HTTP endpoint that writes an order and emits order.placed uses it.
type Transactor interface {
	Transact(ctx context.Context, fn func(ctx context.Context, tx Tx) error) error
	// Write runs stmts in order and emits events in one transaction: all of
	// it commits, or none. It is Transact for writes that do not depend on
	// one another's results. On PostgreSQL it takes one round trip (BEGIN,
	// the statements, the outbox rows and COMMIT sent together) where
	// Transact takes one per statement and two more.
	Write(ctx context.Context, stmts []Statement, events ...Event) error
}

// Statement is one SQL statement of a Transactor's Write or a Tx's Queue:
// one, since PostgreSQL prepares it, and a prepared statement cannot hold
// several. Args are read when it runs. When Returning is not nil, the row
// the statement returns (an INSERT ... RETURNING, say) is scanned into it;
// a statement that returns none leaves it as it was. On PostgreSQL the row
// is read after the commit: a Returning that does not fit it is a
// permanent error of a transaction that committed.
type Statement struct {
	Query     string
	Args      []any
	Returning []any
}

// MaxCorrelationIDBytes bounds a correlation id: it travels in a header of
// every event of its chain.
const MaxCorrelationIDBytes = 256

// ValidateCorrelationID refuses a correlation id too long to travel in every
// event of a chain, or one that is not printable UTF-8 text: it is stored as
// text and shown by the CLI, and a byte the database would replace or refuse
// would silently cut a chain in two.
func ValidateCorrelationID(id string) error {
	if len(id) > MaxCorrelationIDBytes {
		return fmt.Errorf("correlation id of %d bytes: at most %d are allowed", len(id), MaxCorrelationIDBytes)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("correlation id %q is not valid UTF-8", id)
	}
	if i := strings.IndexFunc(id, unicode.IsControl); i >= 0 {
		return fmt.Errorf("correlation id %q holds a control character at byte %d", id, i)
	}
	return nil
}
