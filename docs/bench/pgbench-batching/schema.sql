DROP TABLE IF EXISTS inbox, payments, outbox;
CREATE TABLE inbox (handler text, source text, event_id text, event_type text, processed_at timestamptz DEFAULT now(), PRIMARY KEY (handler, source, event_id));
CREATE TABLE payments (order_id text PRIMARY KEY, amount_cents bigint, payment_id text);
CREATE TABLE outbox (id bigserial PRIMARY KEY, topic text, key bytea, headers jsonb, payload bytea, created_at timestamptz DEFAULT now());
