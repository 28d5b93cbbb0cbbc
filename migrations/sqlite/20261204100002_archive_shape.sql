-- The archive reshaped for cheap writes (issue #11). Each archived message
-- is two rows at saturation; every index entry a row adds lands at its
-- owner's place in the index, so what a commit writes is, per index, about
-- one page per owner it touches. This migration makes those entries small
-- and fewer:
--
-- * owners get an integer id (`archive_owners.owner_id`), so index entries hold
--   a small integer instead of (kind, domain, username) text; the owner's
--   row count lives on the same row (it was `archive_counts`);
-- * the (ts) index goes: retention deletes per owner by id range (ids are
--   time-ordered), so nothing needs the rows of every owner by time.
--
-- Existing rows are kept, in id order.
CREATE TABLE archive_owners (
    owner_id INTEGER PRIMARY KEY,
    kind     INTEGER NOT NULL,
    domain   TEXT    NOT NULL,
    username TEXT    NOT NULL,
    n        BIGINT  NOT NULL DEFAULT 0 -- rows in this owner's archive
);
CREATE UNIQUE INDEX archive_owners_key ON archive_owners (kind, domain, username);

INSERT INTO archive_owners (kind, domain, username, n)
    SELECT kind, domain, username, COUNT(*) FROM archive
    GROUP BY kind, domain, username ORDER BY kind, domain, username;

CREATE TABLE archive_new (
    owner_id INTEGER NOT NULL, -- archive_owners.owner_id
    id       TEXT    NOT NULL, -- the stanza-id, time-ordered
    ts       BIGINT  NOT NULL, -- microseconds since the Unix epoch
    peer     TEXT    NOT NULL, -- the other side's bare JID (a room: the occupant's room JID)
    resource TEXT    NOT NULL DEFAULT '', -- the other side's resource or nick
    outgoing BOOLEAN NOT NULL, -- sent by the owner
    payload  TEXT    NOT NULL  -- the stanza as received, serialized
);
INSERT INTO archive_new (owner_id, id, ts, peer, resource, outgoing, payload)
    SELECT o.owner_id, a.id, a.ts, a.peer, a.resource, a.outgoing, a.payload
    FROM archive a JOIN archive_owners o
      ON o.kind = a.kind AND o.domain = a.domain AND o.username = a.username
    ORDER BY a.id;
DROP TABLE archive;
DROP TABLE archive_counts;
ALTER TABLE archive_new RENAME TO archive;
-- The owner+id look-up and the owner+time range at once.
CREATE UNIQUE INDEX archive_owner_id ON archive (owner_id, id);
-- Queries `with` one peer.
CREATE INDEX archive_peer ON archive (owner_id, peer, id);
