//! Remote disabling (XEP-0357 §8): an app server that no longer wants a
//! registration's notifications takes the user's publish affiliation away
//! and tells the user's bare JID, in a message carrying
//! `<pubsub node><affiliation jid affiliation='none'/></pubsub>` (the
//! XEP's example) or the XEP-0060 `pubsub#event` form of an affiliation
//! change. The server then forgets that registration — only when the
//! message comes from the app server the registration names and names
//! the registration's node, so nobody else can switch a user's push off.
//! Such a message is the server's business and goes no further; one
//! that does not match a registration is routed like any other.

use crate::stanza::bare::Bare;
use jid::{BareJid, Jid};

use crate::server::Server;
use crate::xml::Element;

const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";

/// The node and affiliated JID of an affiliation change to none (or
/// outcast) in `message`, if it carries one.
pub fn affiliation_removed(message: &Element) -> Option<(&str, &str)> {
    if message.name() != "message" || message.attr("type") == Some("error") {
        return None;
    }
    let (node, affiliation) = if let Some(p) = message.get_child("pubsub", NS_PUBSUB) {
        (p.attr("node")?, p.get_child("affiliation", NS_PUBSUB)?)
    } else {
        let a = message
            .get_child("event", NS_EVENT)?
            .get_child("affiliations", NS_EVENT)?;
        (a.attr("node")?, a.get_child("affiliation", NS_EVENT)?)
    };
    match affiliation.attr("affiliation") {
        Some("none" | "outcast") => Some((node, affiliation.attr("jid")?)),
        _ => None,
    }
}

/// Removes `user`'s registration at `from` for `node` if `from` is its app
/// server and `jid` the user; true if one was removed.
pub async fn disable(server: &Server, from: &Jid, user: &BareJid, node: &str, jid: &str) -> bool {
    if Jid::new(jid).map(|j| j.bare()).ok().as_ref() != Some(user) {
        return false;
    }
    let (domain, username) = (
        user.domain().as_str(),
        user.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    let registrations = match server.store.push_registrations(domain, username).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "push registrations");
            return false;
        }
    };
    // The sender is the registered service itself (a component or a
    // remote server can only send from its own domain).
    let Some(reg) = registrations.iter().find(|r| {
        r.node == node && (r.service == from.as_str() || r.service == from.bare().as_str())
    }) else {
        return false;
    };
    match server
        .store
        .push_disable(domain, username, &reg.service, Some(node))
        .await
    {
        Ok(n) => {
            // The node is the app server's secret: only the service is logged.
            tracing::info!(account = %user, service = %reg.service, removed = n,
                "push registration disabled by its app server");
            n > 0
        }
        Err(e) => {
            tracing::error!(error = %e, "push registrations");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::modules::parsed as parse;

    #[test]
    fn both_forms_are_read() {
        let m = parse(
            "<message xmlns='jabber:client'><pubsub xmlns='http://jabber.org/protocol/pubsub' \
             node='n1'><affiliation jid='u@example.com' affiliation='none'/></pubsub></message>",
        );
        assert_eq!(affiliation_removed(&m), Some(("n1", "u@example.com")));
        let m = parse(
            "<message xmlns='jabber:client'><event xmlns='http://jabber.org/protocol/pubsub#event'>\
             <affiliations node='n2'><affiliation jid='u@example.com' affiliation='outcast'/>\
             </affiliations></event></message>",
        );
        assert_eq!(affiliation_removed(&m), Some(("n2", "u@example.com")));
        let m = parse(
            "<message xmlns='jabber:client'><pubsub xmlns='http://jabber.org/protocol/pubsub' \
             node='n1'><affiliation jid='u@example.com' affiliation='publisher'/></pubsub></message>",
        );
        assert_eq!(affiliation_removed(&m), None);
    }
}
