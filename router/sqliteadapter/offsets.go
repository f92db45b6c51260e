package sqliteadapter

import (
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
)

// Offsets is a watermill-sql OffsetsAdapter for SQLite: one row per consumer group
// holding the last acknowledged offset.
type Offsets struct {
	// TableName names the offsets table of a topic; default "watermill_offsets_<topic>".
	TableName func(topic string) string
}

var _ wsql.OffsetsAdapter = Offsets{}

// OffsetsTable is the quoted name of topic's offsets table.
func (o Offsets) OffsetsTable(topic string) string {
	if o.TableName != nil {
		return quote(o.TableName(topic))
	}
	return quote("watermill_offsets_" + topic)
}

// SchemaInitializingQueries creates the offsets table.
func (o Offsets) SchemaInitializingQueries(topic string) []wsql.Query {
	return []wsql.Query{{Query: `CREATE TABLE IF NOT EXISTS ` + o.OffsetsTable(topic) + ` (
		consumer_group TEXT PRIMARY KEY,
		offset_acked   INTEGER NOT NULL DEFAULT 0
	)`}}
}

// NextOffsetQuery selects the consumer group's acked offset.
func (o Offsets) NextOffsetQuery(topic, consumerGroup string) wsql.Query {
	return wsql.Query{
		Query: `SELECT offset_acked FROM ` + o.OffsetsTable(topic) + ` WHERE consumer_group = ?`,
		Args:  []any{consumerGroup},
	}
}

// AckMessageQuery moves the consumer group's offset to row.
func (o Offsets) AckMessageQuery(topic string, row wsql.Row, consumerGroup string) wsql.Query {
	return wsql.Query{
		Query: `INSERT INTO ` + o.OffsetsTable(topic) + ` (consumer_group, offset_acked) VALUES (?, ?)
			ON CONFLICT (consumer_group) DO UPDATE SET offset_acked = excluded.offset_acked`,
		Args: []any{consumerGroup, row.Offset},
	}
}

// ConsumedMessageQuery is not needed: acking inside the read transaction is enough.
func (o Offsets) ConsumedMessageQuery(topic string, row wsql.Row, consumerGroup string, consumerULID []byte) wsql.Query {
	return wsql.Query{}
}

// BeforeSubscribingQueries is empty: a group without a row starts at offset 0
// (SelectQuery's COALESCE) and its first ack inserts the row. Subscribing then
// needs no write transaction, so it never waits for SQLite's one write lock
// while another subscriber holds it for an unacknowledged message.
func (o Offsets) BeforeSubscribingQueries(topic string, consumerGroup string) []wsql.Query {
	return nil
}
