-- Persistent multi-user chat rooms (XEP-0045): a room's configuration
-- (the muc#roomconfig form as 'var=value' lines) and subject, keyed by
-- the service's domain and the room's name. Temporary rooms never reach
-- the database.
CREATE TABLE muc_rooms (
    service    TEXT NOT NULL,
    room       TEXT NOT NULL,
    config     TEXT NOT NULL,
    subject    TEXT NOT NULL DEFAULT '',
    subject_by TEXT NOT NULL DEFAULT '', -- the nick that set it ('' = the room)
    PRIMARY KEY (service, room)
);

-- Affiliations of a persistent room: one row per bare JID (owner, admin,
-- member, outcast), with the reason an admin gave.
CREATE TABLE muc_affiliations (
    service     TEXT NOT NULL,
    room        TEXT NOT NULL,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (service, room, jid)
);
