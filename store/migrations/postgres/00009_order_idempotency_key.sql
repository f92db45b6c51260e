-- +goose Up
-- An order request's Idempotency-Key, and a digest of the request it came
-- with: a client that sends the same request again with the same key (its
-- answer was lost) gets the order stored the first time, not a second one.
-- Orders without a key leave both NULL and stay out of the index.
ALTER TABLE orders ADD COLUMN idempotency_key TEXT;
ALTER TABLE orders ADD COLUMN request_digest TEXT;
CREATE UNIQUE INDEX orders_idempotency_key ON orders (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- +goose Down
DROP INDEX orders_idempotency_key;
ALTER TABLE orders DROP COLUMN request_digest;
ALTER TABLE orders DROP COLUMN idempotency_key;
