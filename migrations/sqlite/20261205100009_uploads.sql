-- HTTP File Upload (XEP-0363): one row per slot handed out. The file
-- itself is on disk under [upload] dir/<token>/; the row says whose it is
-- (for the per-user quota), what was promised (size, type) and when it
-- goes (expiry and clean-up). `done` is set when the PUT completed.
CREATE TABLE uploads (
    token        TEXT    NOT NULL PRIMARY KEY,
    domain       TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    filename     TEXT    NOT NULL,
    size         BIGINT  NOT NULL,
    content_type TEXT    NOT NULL,
    created      BIGINT  NOT NULL, -- unix seconds
    done         BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX uploads_owner ON uploads (domain, username);
CREATE INDEX uploads_created ON uploads (created);
