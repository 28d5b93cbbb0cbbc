-- Push notification registrations (XEP-0357): each app server (its JID and
-- node) an account asked us to publish to, with the publish-options form
-- the client gave (its secrets; never logged), serialized as XML.
CREATE TABLE push_registrations (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    service  TEXT NOT NULL, -- the app server's JID
    node     TEXT NOT NULL,
    options  TEXT,          -- <x xmlns='jabber:x:data'/> publish options, if any
    PRIMARY KEY (domain, username, service, node)
);
