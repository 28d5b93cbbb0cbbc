-- Clients an account has logged in with (XEP-0388 user-agent id), with
-- their FAST token (XEP-0484): the token itself is never stored, only its
-- SHA-256 (see src/sasl/fast.rs). A token waiting to replace the current
-- one ("next_*") keeps the current one valid until it is first used.
CREATE TABLE clients (
    domain TEXT NOT NULL,
    username TEXT NOT NULL,
    client_id TEXT NOT NULL,
    software TEXT NOT NULL DEFAULT '',
    device TEXT NOT NULL DEFAULT '',
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    last_auth TEXT NOT NULL DEFAULT '',
    resource TEXT,
    token_hash BYTEA,
    token_mechanism TEXT,
    token_expiry BIGINT,
    token_count BIGINT NOT NULL DEFAULT 0,
    next_hash BYTEA,
    next_mechanism TEXT,
    next_expiry BIGINT,
    PRIMARY KEY (domain, username, client_id)
);
