-- +goose Up
-- CloudEvents makes an event unique by source and id together, not by id
-- alone: two producers may both send id "1". Rows written before this
-- migration did not record the source; they keep source '' and still match a
-- redelivery of their event by id (see claimInbox).
ALTER TABLE eventfn_inbox ADD COLUMN source TEXT NOT NULL DEFAULT '';
ALTER TABLE eventfn_inbox DROP CONSTRAINT eventfn_inbox_pkey;
ALTER TABLE eventfn_inbox ADD PRIMARY KEY (handler, source, event_id);

-- +goose Down
DELETE FROM eventfn_inbox a USING eventfn_inbox b
 WHERE a.handler = b.handler AND a.event_id = b.event_id AND a.source > b.source;
ALTER TABLE eventfn_inbox DROP CONSTRAINT eventfn_inbox_pkey;
ALTER TABLE eventfn_inbox DROP COLUMN source;
ALTER TABLE eventfn_inbox ADD PRIMARY KEY (handler, event_id);
