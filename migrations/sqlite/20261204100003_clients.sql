-- A random number chosen when a client's row is made: a session bound by
-- that client remembers it, and a resumption is refused when the row is
-- gone or was made anew (the client revoked meanwhile, even by a `ctl`
-- that could not tell the running server). first_seen, in seconds, cannot
-- tell a row revoked and made again within the same second.
ALTER TABLE clients ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
