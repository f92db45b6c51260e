-- +goose Up
-- See the PostgreSQL migration of the same number.
CREATE TABLE eventfn_dead_letter_replays (
    dlq_topic     TEXT NOT NULL,
    dlq_partition INTEGER NOT NULL,
    dlq_offset    INTEGER NOT NULL,
    handler       TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    replayed_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    times         INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);

-- +goose Down
DROP TABLE eventfn_dead_letter_replays;
