-- +goose Up
-- Parked rows are few; a partial index finds them without reading every
-- forwarded row (the outbox statistics and operators' queries count them).
CREATE INDEX eventfn_outbox_parked ON eventfn_outbox (id) WHERE state = 2;

-- +goose Down
DROP INDEX eventfn_outbox_parked;
