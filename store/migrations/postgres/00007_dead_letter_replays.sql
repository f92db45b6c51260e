-- +goose Up
-- Dead letters `eventfn dlq replay` sent back, so a second replay of the same
-- selection sends nothing unless asked to. The key is the dead letter's place
-- in the dead-letter topic, which only eventfn sees.
CREATE TABLE eventfn_dead_letter_replays (
    dlq_topic     TEXT NOT NULL,
    dlq_partition INTEGER NOT NULL,
    dlq_offset    BIGINT NOT NULL,
    handler       TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    replayed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    times         INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);

-- +goose Down
DROP TABLE eventfn_dead_letter_replays;
