// Package sqlpubsubtest builds watermill-sql Pub/Subs for Watermill's
// conformance suite, one configuration for every adapter eventfn checks.
package sqlpubsubtest

import (
	"database/sql"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
)

// Options are what differs between adapters.
type Options struct {
	Schema  wsql.SchemaAdapter
	Offsets wsql.OffsetsAdapter
	// AckDeadline, when not zero, replaces watermill-sql's 30 s default.
	AckDeadline time.Duration
	// InitializeOnSubscribe makes every Subscribe create the tables; otherwise
	// the publisher creates them on first publish.
	InitializeOnSubscribe bool
}

// Constructor returns the suite's consumer-group constructor over db.
func Constructor(db *sql.DB, o Options) func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
	return func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		logger := watermill.NopLogger{}
		pub, err := wsql.NewPublisher(db, wsql.PublisherConfig{SchemaAdapter: o.Schema, AutoInitializeSchema: true}, logger)
		if err != nil {
			t.Fatal(err)
		}
		var deadline *time.Duration
		if o.AckDeadline > 0 {
			deadline = &o.AckDeadline
		}
		sub, err := wsql.NewSubscriber(db, wsql.SubscriberConfig{
			ConsumerGroup:    group,
			AckDeadline:      deadline,
			PollInterval:     10 * time.Millisecond,
			ResendInterval:   10 * time.Millisecond,
			RetryInterval:    10 * time.Millisecond,
			SchemaAdapter:    o.Schema,
			OffsetsAdapter:   o.Offsets,
			InitializeSchema: o.InitializeOnSubscribe,
		}, logger)
		if err != nil {
			t.Fatal(err)
		}
		return pub, sub
	}
}
