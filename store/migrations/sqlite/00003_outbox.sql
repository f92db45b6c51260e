-- +goose Up
-- The transactional outbox; see the PostgreSQL migration of the same number.
CREATE TABLE eventfn_outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    topic         TEXT NOT NULL,
    key           BLOB,
    headers       TEXT NOT NULL,
    payload       BLOB NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- 0 pending, 1 forwarded, 2 parked (can never be produced; see parked_reason)
    state         INTEGER NOT NULL DEFAULT 0,
    done_at       TEXT,
    parked_reason TEXT
);

CREATE INDEX eventfn_outbox_pending ON eventfn_outbox (id) WHERE state = 0;

-- +goose Down
DROP TABLE eventfn_outbox;
