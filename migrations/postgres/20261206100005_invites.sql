-- Invitations (XEP-0401, XEP-0379): one row per token handed out by
-- `ctl invite create` (or a user). Only the SHA-256 of the token is kept,
-- so a copy of the database does not let anyone register. `inviter` is the
-- bare JID whose roster the invitee joins (NULL: an admin's account
-- invite); `uses` counts redemptions up to `max_uses`.
CREATE TABLE invites (
    token_hash         TEXT    NOT NULL PRIMARY KEY,
    domain             TEXT    NOT NULL,
    inviter            TEXT,
    may_create_account BOOLEAN NOT NULL,
    admin              BOOLEAN NOT NULL DEFAULT FALSE,
    expires            BIGINT,           -- unix seconds; NULL: never
    uses               BIGINT  NOT NULL DEFAULT 0,
    max_uses           BIGINT  NOT NULL DEFAULT 1,
    created            BIGINT  NOT NULL  -- unix seconds
);
CREATE INDEX invites_domain ON invites (domain);
