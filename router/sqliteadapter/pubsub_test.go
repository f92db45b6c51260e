package sqliteadapter_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/eventfn/eventfn/internal/sqlpubsubtest"
	"github.com/eventfn/eventfn/router/sqliteadapter"
	"github.com/eventfn/eventfn/store"
)

// features are what the watermill-sql adapters promise, and what eventfn's
// outbox relies on: per-group delivery, no duplicates, order, persistence.
var features = tests.Features{
	ConsumerGroups:      true,
	ExactlyOnceDelivery: true,
	GuaranteedOrder:     true,
	Persistent:          true,
}

// TestSQLitePubSubConformance runs every test of Watermill's conformance suite,
// each on a database file of its own. SQLite has one writer for the whole file
// and watermill-sql's subscriber keeps its transaction open until the consumer
// acks, so unrelated tests sharing a file would wait on each other's locks; the
// contract each test checks is unchanged.
func TestSQLitePubSubConformance(t *testing.T) {
	t.Parallel()
	suite := []struct {
		name string
		run  func(t *testing.T, tctx tests.TestContext, ctor tests.PubSubConstructor)
	}{
		{"PublishSubscribe", tests.TestPublishSubscribe},
		{"ConcurrentSubscribe", tests.TestConcurrentSubscribe},
		{"ConcurrentSubscribeMultipleTopics", tests.TestConcurrentSubscribeMultipleTopics},
		{"ResendOnError", tests.TestResendOnError},
		{"NoAck", tests.TestNoAck},
		{"ContinueAfterSubscribeClose", tests.TestContinueAfterSubscribeClose},
		{"ConcurrentClose", tests.TestConcurrentClose},
		{"ContinueAfterErrors", tests.TestContinueAfterErrors},
		{"PublishSubscribeInOrder", tests.TestPublishSubscribeInOrder},
		{"PublisherClose", tests.TestPublisherClose},
		{"Topic", tests.TestTopic},
		{"MessageCtx", tests.TestMessageCtx},
		{"SubscribeCtx", tests.TestSubscribeCtx},
		{"NewSubscriberReceivesOldMessages", tests.TestNewSubscriberReceivesOldMessages},
	}
	for _, tc := range suite {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			withGroup := sqlitePubSub(t)
			tc.run(t, tests.TestContext{TestID: tests.NewTestID(), Features: features}, func(t *testing.T) (message.Publisher, message.Subscriber) {
				return withGroup(t, "test")
			})
		})
	}
	t.Run("ConsumerGroups", func(t *testing.T) {
		t.Parallel()
		tests.TestConsumerGroups(t, tests.TestContext{TestID: tests.NewTestID(), Features: features}, sqlitePubSub(t))
	})
}

// sqlitePubSub opens a fresh database and returns a constructor of Pub/Subs on it.
func sqlitePubSub(t *testing.T) tests.ConsumerGroupPubSubConstructor {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := store.Open(ctx, store.Config{Driver: store.SQLite, SQLitePath: filepath.Join(t.TempDir(), "pubsub.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	// The publisher creates the tables (as eventfn does once at start), not each
	// Subscribe: the schema transaction would queue for SQLite's write lock
	// behind a subscriber that holds it while its consumer has not yet acked.
	return sqlpubsubtest.Constructor(db.DB, sqlpubsubtest.Options{
		Schema:      sqliteadapter.Schema{},
		Offsets:     sqliteadapter.Offsets{},
		AckDeadline: sqliteadapter.AckDeadline,
	})
}

// TestSchemaNamesAreQuoted guards against topics with characters SQL would misread.
func TestSchemaNamesAreQuoted(t *testing.T) {
	cases := []struct{ topic, table string }{
		{"order.placed", `"watermill_order.placed"`},
		{`we"ird`, `"watermill_we""ird"`},
	}
	for _, c := range cases {
		if got := (sqliteadapter.Schema{}).MessagesTable(c.topic); got != c.table {
			t.Errorf("MessagesTable(%q) = %s, want %s", c.topic, got, c.table)
		}
	}
	if got := (sqliteadapter.Offsets{}).OffsetsTable("a-b"); got != `"watermill_offsets_a-b"` {
		t.Errorf("OffsetsTable = %s", got)
	}
}
