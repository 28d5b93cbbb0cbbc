-- Accounts an administrator disabled (XEP-0133 disable-user, `ctl user
-- disable`): they cannot log in until enabled again. A table of its own
-- rather than a column, so enabling is a delete and the accounts table
-- the logins read stays as it is.
CREATE TABLE disabled_accounts (
    domain      TEXT   NOT NULL,
    username    TEXT   NOT NULL,
    disabled_at BIGINT NOT NULL, -- unix seconds
    PRIMARY KEY (domain, username)
);

-- The message of the day of each host (XEP-0133 set-motd), sent as a
-- headline to each session as it becomes available. At most one per host;
-- its length is bounded by [admin] max_announcement_bytes when set.
CREATE TABLE motd (
    domain TEXT NOT NULL PRIMARY KEY,
    text   TEXT NOT NULL
);
