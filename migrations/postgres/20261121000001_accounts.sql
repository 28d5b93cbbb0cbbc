-- Accounts: one row per user per domain. The password itself is never stored:
-- `argon2` is a PHC string used to check SASL PLAIN, and each SCRAM hash has
-- its salted keys in `scram_credentials`.
CREATE TABLE accounts (
    domain     TEXT    NOT NULL,
    username   TEXT    NOT NULL,
    argon2     TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (domain, username)
);

CREATE TABLE scram_credentials (
    domain     TEXT    NOT NULL,
    username   TEXT    NOT NULL,
    mechanism  TEXT    NOT NULL, -- 'SHA-1', 'SHA-256', 'SHA-512'
    salt       BYTEA   NOT NULL,
    iterations INTEGER NOT NULL,
    stored_key BYTEA   NOT NULL,
    server_key BYTEA   NOT NULL,
    PRIMARY KEY (domain, username, mechanism),
    FOREIGN KEY (domain, username) REFERENCES accounts (domain, username) ON DELETE CASCADE
);
