-- +goose Up
-- See the PostgreSQL migration of the same number. SQLite cannot change a
-- primary key in place, so the table is rebuilt.
CREATE TABLE eventfn_inbox_new (
    handler      TEXT NOT NULL,
    source       TEXT NOT NULL DEFAULT '',
    event_id     TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    processed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (handler, source, event_id)
);
INSERT INTO eventfn_inbox_new (handler, source, event_id, event_type, processed_at)
    SELECT handler, '', event_id, event_type, processed_at FROM eventfn_inbox;
DROP TABLE eventfn_inbox;
ALTER TABLE eventfn_inbox_new RENAME TO eventfn_inbox;

-- +goose Down
CREATE TABLE eventfn_inbox_old (
    handler      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    processed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (handler, event_id)
);
INSERT OR IGNORE INTO eventfn_inbox_old (handler, event_id, event_type, processed_at)
    SELECT handler, event_id, event_type, processed_at FROM eventfn_inbox;
DROP TABLE eventfn_inbox;
ALTER TABLE eventfn_inbox_old RENAME TO eventfn_inbox;
