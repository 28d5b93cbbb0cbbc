-- An account invitation may name the account (XEP-0401 §4.2, "Account
-- Creation" rule): the name is reserved for that token until the
-- invitation is used or expires, and only the token may register it.
ALTER TABLE invites ADD COLUMN username TEXT;
CREATE INDEX invites_username ON invites (domain, username);
