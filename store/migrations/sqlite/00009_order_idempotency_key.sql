-- +goose Up
-- See the PostgreSQL migration of the same number.
ALTER TABLE orders ADD COLUMN idempotency_key TEXT;
ALTER TABLE orders ADD COLUMN request_digest TEXT;
CREATE UNIQUE INDEX orders_idempotency_key ON orders (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- +goose Down
DROP INDEX orders_idempotency_key;
ALTER TABLE orders DROP COLUMN request_digest;
ALTER TABLE orders DROP COLUMN idempotency_key;
