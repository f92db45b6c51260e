package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// sessionProbeRounds is how many times checkSessions crosses two
// connections' session settings. One round catches a pooler that hands both
// the same server session; more catch one that rotates its server sessions.
const sessionProbeRounds = 3

// sessionProbeTimeout bounds the check: a pooler with no session to spare
// queues the second connection's first statement (PgBouncer for two
// minutes by default).
const sessionProbeTimeout = 15 * time.Second

// sessionProbeSetting is a custom setting (a name with a dot needs no
// declaration) that only checkSessions writes.
const sessionProbeSetting = "eventfn.session_probe"

// checkSessions refuses a PostgreSQL URL that does not give each connection
// a server session of its own for its lifetime: a pooler in transaction or
// statement mode (PgBouncer's pool_mode=transaction, say) hands a client
// connection a different server session at every transaction, shared with
// other clients. eventfn keeps state in sessions: the relay's lease is a
// session advisory lock, its wake-up a LISTEN, and pgx prepares statements
// per session. Through such a pooler two replicas both led the relay and
// sent rows twice, the lock stayed with a pooled session after both had
// exited, and handler transactions failed with "prepared statement does not
// exist", which dead-lettered good events. So the start refuses, and says so.
//
// Two connections each write a value of their own into a session setting,
// one after the other, and read it back: with a session each, both read
// their own; a pooler that shares or swaps sessions makes one read the
// other's value, or none.
func checkSessions(ctx context.Context, db *DB, url string) error {
	if db.Driver != Postgres {
		return nil
	}
	refuse := func(detail string) error {
		return fmt.Errorf("PostgreSQL database %s: %s, so a connection does not keep its own server session, as behind a pooler in transaction or statement mode (PgBouncer's pool_mode=transaction, say). eventfn keeps state in sessions (the relay's lease is a session advisory lock, its wake-up a LISTEN, statements are prepared per session): point database.url at PostgreSQL itself or at a pool in session mode", db.Where, detail)
	}
	ctx, cancel := context.WithTimeout(ctx, sessionProbeTimeout)
	defer cancel()
	connectErr := func(err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("check the sessions of PostgreSQL database %s: it gave no second session within %s, and the check needs two at once (a pool of one session, or a connection limit of one?): %w", db.Where, sessionProbeTimeout, err)
		}
		return fmt.Errorf("check the sessions of PostgreSQL database %s: connect: %w", db.Where, err)
	}
	// Two sessions at once and no more: one of db's, which its Ping left
	// idle, and one of a pool of its own (two of db's would wait for each
	// other forever under max_open_conns 1). A third, with db's idle one
	// beside the probe's two, failed start-up under a role's connection
	// limit of 2, which worked before.
	own, err := db.Conn(ctx)
	if err != nil {
		return connectErr(err)
	}
	defer func() {
		// The probe's setting is nothing to the work that takes this
		// connection next; taken away all the same.
		_, _ = own.ExecContext(context.Background(), `RESET `+sessionProbeSetting)
		_ = own.Close()
	}()
	pool, err := sql.Open("pgx", url)
	if err != nil {
		return fmt.Errorf("check the sessions of PostgreSQL database %s: %w", db.Where, err)
	}
	defer pool.Close()
	other, err := pool.Conn(ctx)
	if err != nil {
		return connectErr(err)
	}
	defer other.Close()
	conns := [2]*sql.Conn{own, other}
	probeErr := func(err error) error {
		if ctx.Err() != nil {
			// A pooler with no session to spare takes the second
			// connection and queues its first statement.
			return connectErr(err)
		}
		if pooledStatementError(err) {
			return refuse(fmt.Sprintf("a prepared statement vanished between two statements (%v)", err))
		}
		return fmt.Errorf("check the sessions of PostgreSQL database %s: %w", db.Where, err)
	}
	for round := range sessionProbeRounds {
		var want [2]string
		for i, c := range conns {
			want[i] = randomToken()
			if _, err := c.ExecContext(ctx, `SELECT set_config($1, $2, false)`, sessionProbeSetting, want[i]); err != nil {
				return probeErr(err)
			}
		}
		for i, c := range conns {
			var got sql.NullString
			if err := c.QueryRowContext(ctx, `SELECT current_setting($1, true)`, sessionProbeSetting).Scan(&got); err != nil {
				return probeErr(err)
			}
			if got.String != want[i] {
				return refuse(fmt.Sprintf("a session setting one connection made was gone or another's at its next statement (round %d of %d)", round+1, sessionProbeRounds))
			}
		}
	}
	return nil
}

// pooledStatementError says err is PostgreSQL's answer to a prepared
// statement the session does not have (26000) or has already (42P05): what a
// pooler that swaps sessions under pgx's prepared statements gives.
func pooledStatementError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "26000" || pe.Code == "42P05")
}

func randomToken() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
