-- Which message of the day each account has been sent (XEP-0133 set-motd):
-- a user gets the text once per change, at the first login after it, not
-- at every login (as ejabberd does). `digest` names the text (hex of the
-- first 16 bytes of its SHA-256), so setting the same text again is no
-- change; deleting the message forgets the host's rows. One row per
-- account at most (it goes with the account).
CREATE TABLE motd_seen (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    digest   TEXT NOT NULL,
    PRIMARY KEY (domain, username)
);
