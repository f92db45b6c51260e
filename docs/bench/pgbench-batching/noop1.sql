\set r random(1, 1000000000)
BEGIN;
INSERT INTO inbox (handler, source, event_id, event_type) VALUES ('noop', 'test', :client_id || '-' || :r || '-' || random(), 'x') ON CONFLICT DO NOTHING;
COMMIT;
