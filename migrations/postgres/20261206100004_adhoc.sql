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
