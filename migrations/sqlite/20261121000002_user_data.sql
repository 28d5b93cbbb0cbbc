-- Small per-user documents keyed by name: vCard, private XML, blocklist,
-- last activity… One table for every "key-value per user" feature, so a
-- feature that stores one document per user needs no schema change.
CREATE TABLE user_data (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (domain, username, key)
);
