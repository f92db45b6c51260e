-- +goose Up
-- State 3, held: a pending row of a topic the relay cannot produce to now (a
-- topic deleted, or one this client may not write to). The relay moves such
-- rows out of the pending index, so that they hold back only their own
-- topic, and retries them from here, in id order, per topic.
CREATE INDEX eventfn_outbox_held ON eventfn_outbox (topic, id) WHERE state = 3;

-- +goose Down
UPDATE eventfn_outbox SET state = 0 WHERE state = 3;
DROP INDEX eventfn_outbox_held;
