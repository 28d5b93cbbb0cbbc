-- The archive in blocks (issue #11): the stanzas one owner exchanged with
-- one peer that the archive writer commits together become one row of
-- `archive_blocks` (src/storage/archive_block.rs has the encoding), so a
-- busy archive costs the writer a table row and three index entries per
-- block instead of per stanza.
--
-- The rows of the old shape are kept as `archive_legacy`; the server turns
-- them into blocks when it opens the database (Store::open), then drops
-- that table. Owners and their counts (`archive_owners`) are unchanged.
ALTER TABLE archive RENAME TO archive_legacy;
DROP INDEX archive_peer;

CREATE TABLE archive_blocks (
    owner_id INTEGER NOT NULL, -- archive_owners.owner_id
    peer     TEXT    NOT NULL, -- the other side's bare JID (a room: the occupant's room JID)
    first_id TEXT    NOT NULL, -- the block's oldest stanza-id
    last_id  TEXT    NOT NULL, -- its newest
    n        INTEGER NOT NULL, -- its stanzas
    rows     BLOB    NOT NULL  -- the stanzas, encoded (archive_block.rs)
);
-- A block by its owner and first id.
CREATE UNIQUE INDEX archive_blocks_key ON archive_blocks (owner_id, first_id);
-- Ranges and counts over an owner's archive, read from the index alone.
CREATE INDEX archive_blocks_span ON archive_blocks (owner_id, first_id, last_id, n);
-- Queries `with` one peer.
CREATE INDEX archive_blocks_peer ON archive_blocks (owner_id, peer, first_id, last_id, n);
