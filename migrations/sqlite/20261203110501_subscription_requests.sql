-- Pending inbound subscription requests keep only what re-delivering them
-- needs (issue 8, item 5): the requester's nick (XEP-0172) and status text,
-- each length-capped by the server, instead of the whole stanza.
-- `pending` replaces "pending_in IS NOT NULL" as the pending-in flag; rows
-- written before this migration keep their stored stanza in `pending_in`
-- and are converted to the short form the first time they are re-delivered.
ALTER TABLE roster_items ADD COLUMN pending BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE roster_items ADD COLUMN pending_nick TEXT;
ALTER TABLE roster_items ADD COLUMN pending_status TEXT;
UPDATE roster_items SET pending = TRUE WHERE pending_in IS NOT NULL;
