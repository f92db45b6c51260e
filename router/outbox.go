package router

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router/sqliteadapter"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

const (
	// OutboxTopic is the watermill-sql topic of the outbox: the table
	// watermill_eventfn_outbox holds enveloped events until the relay forwards them.
	OutboxTopic = "eventfn_outbox"
	// RelayGroup is the relay's consumer group on the outbox.
	RelayGroup = "eventfn_relay"
)

// Outbox writes events into the outbox table inside a caller's transaction and
// knows the dialect of that table.
type Outbox struct {
	db      *store.DB
	kafka   configs.Kafka
	schema  wsql.SchemaAdapter
	offsets wsql.OffsetsAdapter
	// ackDeadline bounds how long the relay's read transaction waits for Kafka.
	ackDeadline time.Duration
	// wake lets a commit that emitted events start the relay's next poll at once.
	wake   *relayWake
	logger watermill.LoggerAdapter
}

// NewOutbox builds the outbox of db.
func NewOutbox(db *store.DB, cfg configs.Config, logger watermill.LoggerAdapter) *Outbox {
	o := &Outbox{db: db, kafka: cfg.Kafka, logger: logger, wake: newRelayWake(cfg.Relay.PollInterval)}
	switch db.Driver {
	case store.SQLite:
		o.schema = sqliteadapter.Schema{BatchSize: cfg.Relay.BatchSize}
		o.offsets = sqliteadapter.Offsets{}
		o.ackDeadline = sqliteadapter.AckDeadline
	default:
		o.schema = PostgresSchema{&wsql.DefaultPostgreSQLSchema{SubscribeBatchSize: cfg.Relay.BatchSize}}
		o.offsets = PostgresOffsets{}
		o.ackDeadline = 30 * time.Second
	}
	return o
}

// Initialize creates the outbox tables if they do not exist.
func (o *Outbox) Initialize(ctx context.Context) error {
	sub, err := o.subscriber(time.Second)
	if err != nil {
		return err
	}
	if err := sub.SubscribeInitialize(OutboxTopic); err != nil {
		return fmt.Errorf("create outbox tables: %w", err)
	}
	return nil
}

// subscriber reads the outbox as the relay's consumer group.
func (o *Outbox) subscriber(poll time.Duration) (*wsql.Subscriber, error) {
	sub, err := wsql.NewSubscriber(o.db.DB, wsql.SubscriberConfig{
		ConsumerGroup:  RelayGroup,
		AckDeadline:    &o.ackDeadline,
		PollInterval:   poll,
		ResendInterval: poll,
		RetryInterval:  100 * time.Millisecond,
		BackoffManager: o.wake,
		SchemaAdapter:  o.schema,
		OffsetsAdapter: o.offsets,
	}, o.logger)
	if err != nil {
		return nil, fmt.Errorf("outbox subscriber: %w", err)
	}
	return sub, nil
}

// Pending counts outbox rows the relay has not forwarded yet.
func (o *Outbox) Pending(ctx context.Context) (int64, error) {
	var q string
	switch o.db.Driver {
	case store.SQLite:
		q = `SELECT COUNT(*) FROM "watermill_` + OutboxTopic + `" WHERE "offset" > COALESCE(
			(SELECT offset_acked FROM "watermill_offsets_` + OutboxTopic + `" WHERE consumer_group = $1), 0)`
	default:
		q = `SELECT COUNT(*) FROM "watermill_` + OutboxTopic + `" m
			LEFT JOIN "watermill_offsets_` + OutboxTopic + `" o ON o.consumer_group = $1
			WHERE o.consumer_group IS NULL
			   OR (m.transaction_id, m."offset") > (o.last_processed_transaction_id, o.offset_acked)`
	}
	var n int64
	if err := o.db.Read.QueryRowContext(ctx, q, RelayGroup).Scan(&n); err != nil {
		return 0, fmt.Errorf("count pending outbox rows: %w", err)
	}
	return n, nil
}

// publisher writes enveloped events into the outbox through tx.
func (o *Outbox) publisher(tx *sql.Tx) (message.Publisher, error) {
	pub, err := wsql.NewPublisher(tx, wsql.PublisherConfig{SchemaAdapter: o.schema}, o.logger)
	if err != nil {
		return nil, fmt.Errorf("outbox publisher: %w", err)
	}
	return forwarder.NewPublisher(pub, forwarder.PublisherConfig{ForwarderTopic: OutboxTopic}), nil
}

// Transact runs fn in one transaction whose emitted events go to the outbox. It
// serves code outside handlers, such as the HTTP ingress; any event type may be
// emitted, and each call starts a new correlation id unless ctx carries one.
func (o *Outbox) Transact(ctx context.Context, fn func(ctx context.Context, tx runtime.Tx) error) error {
	meta, ok := runtime.MetadataFrom(ctx)
	if !ok || meta.CorrelationID == "" {
		meta.CorrelationID = uuid.NewString()
	}
	emitted := false
	err := inTx(ctx, o.db, func(ctx context.Context, tx *sql.Tx) error {
		h, err := o.handle(tx, meta, "eventfn/ingress", nil)
		if err != nil {
			return err
		}
		err = fn(ctx, h)
		emitted = h.emitted > 0
		return err
	})
	if err == nil && emitted {
		o.wake.nudge()
	}
	return err
}

// handle wraps tx as the runtime.Tx a handler sees. allowed, when not nil, limits
// the event types Emit accepts.
func (o *Outbox) handle(tx *sql.Tx, cause runtime.Metadata, source string, allowed func(string) bool) (*txHandle, error) {
	pub, err := o.publisher(tx)
	if err != nil {
		return nil, err
	}
	return &txHandle{Tx: tx, pub: pub, cause: cause, source: source, allowed: allowed, kafka: o.kafka}, nil
}

// txHandle is runtime.Tx: the SQL transaction plus an Emit that writes to the outbox.
type txHandle struct {
	*sql.Tx
	pub     message.Publisher
	cause   runtime.Metadata
	source  string
	allowed func(string) bool
	kafka   configs.Kafka
	emitted int
}

var _ runtime.Tx = (*txHandle)(nil)

// Emit writes events to the outbox in this transaction.
func (t *txHandle) Emit(ctx context.Context, events ...runtime.Event) error {
	for _, ev := range events {
		typ := ev.EventType()
		if err := runtime.ValidateEventType(typ); err != nil {
			return runtime.Permanent(err)
		}
		if t.allowed != nil && !t.allowed(typ) {
			return runtime.Permanent(fmt.Errorf("emit %s: the handler did not declare it; add runtime.Emits(%T{}) to its options", typ, ev))
		}
		payload, err := json.Marshal(ev)
		if err != nil {
			return runtime.Permanent(fmt.Errorf("encode %s as JSON: %w", typ, err))
		}
		msg := message.NewMessage(uuid.NewString(), payload)
		key := t.cause.Key
		if k, ok := ev.(runtime.Keyed); ok {
			key = k.EventKey()
		}
		msg.Metadata = message.Metadata{
			HeaderType:          typ,
			HeaderSource:        t.source,
			HeaderSpecVersion:   "1.0",
			HeaderTime:          time.Now().UTC().Format(time.RFC3339Nano),
			HeaderContentType:   "application/json",
			HeaderCorrelationID: t.cause.CorrelationID,
		}
		if key != "" {
			msg.Metadata[metaKey] = key
		}
		if err := t.pub.Publish(t.kafka.Topic(typ), msg); err != nil {
			return fmt.Errorf("write %s to the outbox: %w", typ, err)
		}
		t.emitted++
	}
	return nil
}

// inTx runs fn in a transaction on the writer pool, committing when fn returns nil.
func inTx(ctx context.Context, db *store.DB, fn func(ctx context.Context, tx *sql.Tx) error) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if err = fn(ctx, tx); err != nil {
		return err
	}
	if err = tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
