-- Rosters (RFC 6121 §2) with subscription state (§3). A row with
-- in_roster = false only carries a pending inbound subscription request
-- from someone the user has not added.
CREATE TABLE roster_items (
    domain       TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    contact      TEXT    NOT NULL, -- bare JID
    name         TEXT,
    subscription TEXT    NOT NULL DEFAULT 'none', -- none | to | from | both
    ask_out      BOOLEAN NOT NULL DEFAULT FALSE,  -- pending-out
    pending_in   TEXT,                            -- the stored subscribe stanza (pending-in)
    approved     BOOLEAN NOT NULL DEFAULT FALSE,  -- pre-approved (§3.4)
    in_roster    BOOLEAN NOT NULL DEFAULT TRUE,
    groups       TEXT    NOT NULL DEFAULT '',     -- newline-separated
    PRIMARY KEY (domain, username, contact)
);

-- XEP-0237 roster version: bumped on every change of a user's roster.
CREATE TABLE roster_versions (
    domain   TEXT   NOT NULL,
    username TEXT   NOT NULL,
    version  BIGINT NOT NULL,
    PRIMARY KEY (domain, username)
);

-- Messages waiting for their user (XEP-0160), in arrival order.
CREATE TABLE offline_messages (
    id       BIGSERIAL PRIMARY KEY,
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    stanza   TEXT NOT NULL
);
CREATE INDEX offline_messages_user ON offline_messages (domain, username, id);
