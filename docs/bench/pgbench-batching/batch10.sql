\set r random(1, 1000000000)
\startpipeline
BEGIN;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-0-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-1-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-2-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-3-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-4-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-5-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-6-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-7-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-8-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('charge-payment', 'test', :client_id || '-' || :r || '-9-' || random(), 'order.placed') ON CONFLICT DO NOTHING;
\endpipeline
\startpipeline
SAVEPOINT s0;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-0-' || random(), 999, 'pay');
RELEASE SAVEPOINT s0;
SAVEPOINT s1;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-1-' || random(), 999, 'pay');
RELEASE SAVEPOINT s1;
SAVEPOINT s2;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-2-' || random(), 999, 'pay');
RELEASE SAVEPOINT s2;
SAVEPOINT s3;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-3-' || random(), 999, 'pay');
RELEASE SAVEPOINT s3;
SAVEPOINT s4;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-4-' || random(), 999, 'pay');
RELEASE SAVEPOINT s4;
SAVEPOINT s5;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-5-' || random(), 999, 'pay');
RELEASE SAVEPOINT s5;
SAVEPOINT s6;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-6-' || random(), 999, 'pay');
RELEASE SAVEPOINT s6;
SAVEPOINT s7;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-7-' || random(), 999, 'pay');
RELEASE SAVEPOINT s7;
SAVEPOINT s8;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-8-' || random(), 999, 'pay');
RELEASE SAVEPOINT s8;
SAVEPOINT s9;
INSERT INTO payments (order_id, amount_cents, payment_id) VALUES (:client_id || '-' || :r || '-9-' || random(), 999, 'pay');
RELEASE SAVEPOINT s9;
\endpipeline
\startpipeline
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
INSERT INTO outbox (topic, key, headers, payload) VALUES ('payment.confirmed', 'k', '{"ce_id":"x","ce_type":"payment.confirmed"}', 'payload-of-a-hundred-bytes-roughly-payload-of-a-hundred-bytes-roughly');
COMMIT;
\endpipeline
