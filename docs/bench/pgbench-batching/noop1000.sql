\set r random(1, 1000000000)
INSERT INTO inbox (handler, source, event_id, event_type) SELECT 'noop', 'test', :client_id || '-' || :r || '-' || g || '-' || random(), 'x' FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING;
