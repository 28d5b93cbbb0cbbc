-- Archives of stanzas in one shape for every kind of owner: a user's
-- messages (XEP-0313, kind 0) now; a room's history or a PubSub node's
-- items later, with a kind of their own. The owner is (domain, username)
-- so deleting an account empties it like every per-user table.
--
-- `id` is the stanza-id (XEP-0359): a fixed-width time prefix then random
-- characters, so ordering by id is ordering by time. The unique index
-- (owner, id) is therefore the owner+time index and the owner+id look-up
-- at once; it is kept apart from the rows (a rowid table) so that counting
-- a range walks small index entries, not the stored stanzas.
CREATE TABLE archive (
    kind     INTEGER NOT NULL,
    domain   TEXT    NOT NULL,
    username TEXT    NOT NULL,
    id       TEXT    NOT NULL,
    ts       BIGINT  NOT NULL, -- microseconds since the Unix epoch
    peer     TEXT    NOT NULL, -- the other side's bare JID (a room: the occupant's room JID)
    resource TEXT    NOT NULL DEFAULT '', -- the other side's resource or nick
    outgoing BOOLEAN NOT NULL, -- sent by the owner
    payload  TEXT    NOT NULL -- the stanza as received, serialized
);
CREATE UNIQUE INDEX archive_owner_id ON archive (kind, domain, username, id);
-- Queries `with` one peer.
CREATE INDEX archive_peer ON archive (kind, domain, username, peer, id);
-- Retention: what is older than the cut-off, whoever owns it.
CREATE INDEX archive_ts ON archive (ts);

-- Rows per owner, kept in the same transactions as the rows, so the size
-- of a whole archive (XEP-0059 <count/> of an unfiltered query) is one
-- look-up however large it grows.
CREATE TABLE archive_counts (
    kind     INTEGER NOT NULL,
    domain   TEXT    NOT NULL,
    username TEXT    NOT NULL,
    n        BIGINT  NOT NULL,
    PRIMARY KEY (kind, domain, username)
);
