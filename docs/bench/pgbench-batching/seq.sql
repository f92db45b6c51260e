\set r random(1, 1000000000)
BEGIN;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-' || random(), 999, 'pay');
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
COMMIT;
