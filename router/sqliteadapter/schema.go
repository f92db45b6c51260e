// Package sqliteadapter lets watermill-sql v3 keep a topic in SQLite: a
// SchemaAdapter for the message table and an OffsetsAdapter for consumer-group
// offsets. watermill-sql ships adapters for MySQL and PostgreSQL only, and the
// separate watermill-sqlite module is not available, so eventfn carries this one;
// Watermill's Pub/Sub conformance suite checks it (see pubsub_test.go).
//
// Why it is correct without PostgreSQL's transaction-id tricks: SQLite has one
// writer at a time and eventfn opens every transaction IMMEDIATE, so offsets are
// assigned and committed in the same order and a reader never sees offset N+1
// before N. The subscriber's read-and-ack transaction holds the write lock, which
// also makes two subscribers of one consumer group take turns.
package sqliteadapter

import (
	stdsql "database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
)

// AckDeadline is the subscriber ack deadline to use with these adapters. A
// watermill-sql subscriber keeps its transaction, and so SQLite's one write lock,
// until its consumer acks; watermill-sql's default of 30 s would let one slow or
// stalled consumer (a relay whose Kafka is down) hold up every other writer, an
// HTTP request storing an order included. After the deadline the message is
// released and delivered again later.
const AckDeadline = 2 * time.Second

// Schema is a watermill-sql SchemaAdapter for SQLite.
type Schema struct {
	// TableName names the message table of a topic; default "watermill_<topic>".
	TableName func(topic string) string
	// BatchSize is how many messages one poll reads at most; default 100.
	BatchSize int
}

var _ wsql.SchemaAdapter = Schema{}

// MessagesTable is the quoted name of topic's message table.
func (s Schema) MessagesTable(topic string) string {
	if s.TableName != nil {
		return quote(s.TableName(topic))
	}
	return quote("watermill_" + topic)
}

// SchemaInitializingQueries creates the message table.
func (s Schema) SchemaInitializingQueries(topic string) []wsql.Query {
	return []wsql.Query{{Query: `CREATE TABLE IF NOT EXISTS ` + s.MessagesTable(topic) + ` (
		"offset"   INTEGER PRIMARY KEY AUTOINCREMENT,
		uuid       TEXT NOT NULL,
		created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
		payload    BLOB,
		metadata   TEXT
	)`}}
}

// InsertQuery inserts msgs in one statement, so they get consecutive offsets.
func (s Schema) InsertQuery(topic string, msgs message.Messages) (wsql.Query, error) {
	if len(msgs) == 0 {
		return wsql.Query{}, fmt.Errorf("insert into %s: no messages", topic)
	}
	args := make([]any, 0, 3*len(msgs))
	for _, msg := range msgs {
		metadata, err := json.Marshal(msg.Metadata)
		if err != nil {
			return wsql.Query{}, fmt.Errorf("marshal metadata of message %s: %w", msg.UUID, err)
		}
		args = append(args, msg.UUID, []byte(msg.Payload), string(metadata))
	}
	values := strings.TrimSuffix(strings.Repeat("(?,?,?),", len(msgs)), ",")
	return wsql.Query{
		Query: `INSERT INTO ` + s.MessagesTable(topic) + ` (uuid, payload, metadata) VALUES ` + values,
		Args:  args,
	}, nil
}

// SelectQuery reads the next batch after the consumer group's acked offset.
func (s Schema) SelectQuery(topic string, consumerGroup string, offsets wsql.OffsetsAdapter) wsql.Query {
	next := offsets.NextOffsetQuery(topic, consumerGroup)
	batch := s.BatchSize
	if batch <= 0 {
		batch = 100
	}
	return wsql.Query{
		Query: `SELECT "offset", uuid, payload, metadata FROM ` + s.MessagesTable(topic) +
			` WHERE "offset" > COALESCE((` + next.Query + `), 0) ORDER BY "offset" ASC LIMIT ` + fmt.Sprint(batch),
		Args: next.Args,
	}
}

// UnmarshalMessage turns a row of SelectQuery into a message.
func (s Schema) UnmarshalMessage(row wsql.Scanner) (wsql.Row, error) {
	var r wsql.Row
	var metadata stdsql.NullString
	if err := row.Scan(&r.Offset, &r.UUID, &r.Payload, &metadata); err != nil {
		return wsql.Row{}, fmt.Errorf("scan message row: %w", err)
	}
	msg := message.NewMessage(string(r.UUID), r.Payload)
	if metadata.Valid && metadata.String != "" {
		r.Metadata = []byte(metadata.String)
		if err := json.Unmarshal(r.Metadata, &msg.Metadata); err != nil {
			return wsql.Row{}, fmt.Errorf("unmarshal metadata of message at offset %d: %w", r.Offset, err)
		}
	}
	r.Msg = msg
	return r, nil
}

// SubscribeIsolationLevel is the default: SQLite transactions are serializable.
func (s Schema) SubscribeIsolationLevel() stdsql.IsolationLevel { return stdsql.LevelDefault }

func quote(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}
