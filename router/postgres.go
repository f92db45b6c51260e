package router

import (
	"fmt"
	"strings"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
)

// schemaLockKey is the PostgreSQL advisory lock that serialises creating
// watermill-sql tables.
const schemaLockKey = 7262651

// PostgresSchema is watermill-sql's PostgreSQL schema adapter with table
// creation serialised. PostgreSQL's CREATE TABLE IF NOT EXISTS fails with a
// unique violation on pg_class when two sessions create the same table at once,
// as several eventfn replicas starting together would.
type PostgresSchema struct {
	*wsql.DefaultPostgreSQLSchema
}

// SchemaInitializingQueries creates the message table under the lock.
func (s PostgresSchema) SchemaInitializingQueries(topic string) []wsql.Query {
	return serialized(s.DefaultPostgreSQLSchema.SchemaInitializingQueries(topic))
}

// PostgresOffsets is watermill-sql's PostgreSQL offsets adapter with table
// creation serialised, for the reason PostgresSchema gives.
type PostgresOffsets struct {
	wsql.DefaultPostgreSQLOffsetsAdapter
}

// SchemaInitializingQueries creates the offsets table under the lock.
func (o PostgresOffsets) SchemaInitializingQueries(topic string) []wsql.Query {
	return serialized(o.DefaultPostgreSQLOffsetsAdapter.SchemaInitializingQueries(topic))
}

// serialized runs each argument-free statement in a DO block that first takes a
// transaction-scoped advisory lock; watermill-sql runs each statement on its
// own, so a session lock would not cover them.
func serialized(qs []wsql.Query) []wsql.Query {
	out := make([]wsql.Query, len(qs))
	for i, q := range qs {
		if len(q.Args) > 0 {
			out[i] = q
			continue
		}
		literal := "'" + strings.ReplaceAll(q.Query, "'", "''") + "'"
		out[i] = wsql.Query{Query: fmt.Sprintf("DO $eventfn$ BEGIN PERFORM pg_advisory_xact_lock(%d); EXECUTE %s; END $eventfn$",
			schemaLockKey, literal)}
	}
	return out
}
