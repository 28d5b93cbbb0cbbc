-- Publish-subscribe (XEP-0060) nodes, as PEP (XEP-0163) keeps them per
-- account: (domain, username) is the service's owner (an empty username
-- would be a service on the domain itself).
CREATE TABLE pubsub_nodes (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    node     TEXT NOT NULL,
    config   TEXT NOT NULL, -- the node configuration, one 'var=value' a line
    PRIMARY KEY (domain, username, node)
);

-- Published items; id orders them (a re-published item id moves to the end).
CREATE TABLE pubsub_items (
    id        BIGSERIAL PRIMARY KEY,
    domain    TEXT NOT NULL,
    username  TEXT NOT NULL,
    node      TEXT NOT NULL,
    item_id   TEXT NOT NULL,
    publisher TEXT NOT NULL,
    payload   TEXT NOT NULL, -- the item's child elements as XML
    UNIQUE (domain, username, node, item_id)
);
CREATE INDEX pubsub_items_node ON pubsub_items (domain, username, node, id);

-- Explicit subscriptions (§6.1) and affiliations set by the owner (§8.9).
CREATE TABLE pubsub_subscriptions (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    node     TEXT NOT NULL,
    jid      TEXT NOT NULL,
    PRIMARY KEY (domain, username, node, jid)
);
CREATE TABLE pubsub_affiliations (
    domain      TEXT NOT NULL,
    username    TEXT NOT NULL,
    node        TEXT NOT NULL,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL, -- member | publisher | outcast
    PRIMARY KEY (domain, username, node, jid)
);
