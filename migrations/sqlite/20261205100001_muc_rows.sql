-- Row-level persistence of chat rooms: a change writes only its rows.
--
-- The nick an affiliated user last entered the room with, so a mention
-- of an absent member can be recognised (push for mentions) and, later,
-- reserved. It lives on the affiliation's row: it is dropped with it.
ALTER TABLE muc_affiliations ADD COLUMN nick TEXT NOT NULL DEFAULT '';

-- A room's vCard (XEP-0486 room avatars), serialized; its own table so
-- that a change of configuration or subject never rewrites the image.
CREATE TABLE muc_vcards (
    service TEXT NOT NULL,
    room    TEXT NOT NULL,
    vcard   TEXT NOT NULL,
    PRIMARY KEY (service, room)
);

-- Secrets the server makes once and keeps (hex), by name: the chat
-- services key their XEP-0421 occupant ids with one, so the ids stay the
-- same across restarts without a configured dialback secret.
CREATE TABLE server_secrets (
    name   TEXT PRIMARY KEY,
    secret TEXT NOT NULL
);
