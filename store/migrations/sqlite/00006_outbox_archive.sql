-- +goose Up
-- See the PostgreSQL migration of the same number.
CREATE TABLE eventfn_outbox_archive (
    id            INTEGER PRIMARY KEY,
    topic         TEXT NOT NULL,
    key           BLOB,
    headers       TEXT NOT NULL,
    payload       BLOB NOT NULL,
    created_at    TEXT NOT NULL,
    done_at       TEXT,
    archived_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- +goose Down
DROP TABLE eventfn_outbox_archive;
