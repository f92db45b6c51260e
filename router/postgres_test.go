package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/eventfn/eventfn/internal/sqlpubsubtest"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/store"
)

// TestPostgresPubSubConformance runs Watermill's Pub/Sub conformance suite on the
// PostgreSQL adapters eventfn's outbox uses, against EVENTFN_TEST_DATABASE_URL.
func TestPostgresPubSubConformance(t *testing.T) {
	t.Parallel()
	url := testenv.PostgresSchema(t, testenv.RequirePostgres(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// No pool cap: the suite runs 50 subscribers of one group, each holding a
	// connection while it waits for the group's row lock; a capped pool starves
	// the next Subscribe, the test never starts reading, and each lock holder
	// then waits out its ack deadline in turn.
	db, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	schema := router.PostgresSchema{DefaultPostgreSQLSchema: &wsql.DefaultPostgreSQLSchema{
		GeneratePayloadType: func(string) string { return "BYTEA" }, // the suite's payloads are not JSON
	}}
	withGroup := sqlpubsubtest.Constructor(db.DB, sqlpubsubtest.Options{
		Schema:                schema,
		Offsets:               router.PostgresOffsets{},
		InitializeOnSubscribe: true,
	})
	// These are the features watermill-sql claims for its pgx-driven PostgreSQL
	// adapter: exactly-once delivery is not among them. eventfn's inbox makes a
	// redelivered outbox row harmless.
	features := tests.Features{ConsumerGroups: true, GuaranteedOrder: true, Persistent: true}
	tests.TestPubSub(t, features, func(t *testing.T) (message.Publisher, message.Subscriber) {
		return withGroup(t, "test")
	}, withGroup)
}

func TestSchemaCreationIsSerialized(t *testing.T) {
	qs := router.PostgresSchema{DefaultPostgreSQLSchema: &wsql.DefaultPostgreSQLSchema{}}.SchemaInitializingQueries("order.placed")
	if len(qs) == 0 {
		t.Fatal("no schema queries")
	}
	for _, q := range qs {
		if !strings.HasPrefix(q.Query, "DO $eventfn$ BEGIN PERFORM pg_advisory_xact_lock(") || !strings.Contains(q.Query, `"watermill_order.placed"`) {
			t.Errorf("not serialised: %s", q.Query)
		}
	}
}
