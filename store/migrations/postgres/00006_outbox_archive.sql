-- +goose Up
-- Forwarded outbox rows moved out of eventfn_outbox by retention when
-- retention.outbox_archive is on; eventfn never reads them again.
CREATE TABLE eventfn_outbox_archive (
    id            BIGINT PRIMARY KEY,
    topic         TEXT NOT NULL,
    key           BYTEA,
    headers       TEXT NOT NULL,
    payload       BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    done_at       TIMESTAMPTZ,
    archived_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE eventfn_outbox_archive;
