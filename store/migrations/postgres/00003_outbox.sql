-- +goose Up
-- The transactional outbox. A handler's transaction inserts the events it emits
-- here; the relay produces pending rows to Kafka in batches, in id order, and
-- marks each one forwarded or parked. Rows are tracked one by one (state), not
-- by a high-water mark, so a transaction that commits late never holds back the
-- rows behind it, and no reader waits for the oldest open transaction of the
-- server (watermill-sql's pg_snapshot_xmin scheme, which this table replaces).
CREATE TABLE eventfn_outbox (
    id            BIGSERIAL PRIMARY KEY,
    topic         TEXT NOT NULL,
    key           BYTEA,
    headers       TEXT NOT NULL,
    payload       BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- 0 pending, 1 forwarded, 2 parked (can never be produced; see parked_reason)
    state         SMALLINT NOT NULL DEFAULT 0,
    done_at       TIMESTAMPTZ,
    parked_reason TEXT
);

-- The relay's read: pending rows in id order. Partial, so it stays as small as
-- the backlog however many forwarded rows the table keeps.
CREATE INDEX eventfn_outbox_pending ON eventfn_outbox (id) WHERE state = 0;

-- +goose Down
DROP TABLE eventfn_outbox;
