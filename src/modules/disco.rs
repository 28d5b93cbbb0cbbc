//! Service Discovery (XEP-0030): the server's identity and features; an
//! account's identity and features for its owner and its contacts; an
//! account's PEP nodes (`pep::disco`) for whoever may see them.

use crate::stanza::bare::Bare;
use jid::{BareJid, Jid};

use super::{IqOutcome, IqRequest, IqTarget, Module};
use crate::server::Server;
use crate::stanza::StanzaErrorCondition;
use crate::xml::Element;

pub const NS_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub const MODULE: Module = Module {
    xep: 30,
    namespaces: &[NS_INFO, NS_ITEMS],
    features: &[NS_INFO, NS_ITEMS],
    handle: |req| Box::pin(answer(req)),
};

/// The account a disco query at a bare JID is about.
fn account_of(req: &IqRequest<'_>) -> Option<BareJid> {
    match req.iq.attr("to") {
        Some(to) => Jid::new(to).ok().map(|j| j.bare()),
        None => Some(req.from.bare()),
    }
}

async fn answer(req: &IqRequest<'_>) -> IqOutcome {
    if req.is_set {
        return Err(StanzaErrorCondition::NotAllowed.into());
    }
    // The PEP service at the account (XEP-0163 §8), when PEP runs.
    let pep = req.server.features.get::<super::pep::Pep>().is_some();
    if let (true, IqTarget::Account { own }) = (pep, req.target) {
        let account = account_of(req).ok_or(StanzaErrorCondition::JidMalformed)?;
        match (
            req.payload.name(),
            req.payload.ns(),
            req.payload.attr("node"),
        ) {
            ("query", NS_INFO, Some(node)) => {
                return super::pep::disco::node_info(req.server, &account, req.from, own, node)
                    .await
            }
            ("query", NS_ITEMS, None) => {
                return super::pep::disco::items(req.server, &account, req.from, own).await
            }
            _ => {}
        }
    }
    // The server's ad-hoc command list and its commands (XEP-0050 §2.2, §2.3).
    if let (Some(node), IqTarget::Server) = (req.payload.attr("node"), req.target) {
        if req.server.features.get::<super::adhoc::AdHoc>().is_some() {
            let to = req.iq.attr("to").unwrap_or(req.from.domain().as_str());
            if node == super::adhoc::NS_COMMANDS && req.payload.is("query", NS_ITEMS) {
                return Ok(Some(super::adhoc::command_items(req.server, to, req.from)));
            }
            if req.payload.is("query", NS_INFO) {
                if let Some(q) = super::adhoc::command_info(req.server, node, req.from) {
                    return Ok(Some(q));
                }
            }
        }
    }
    // The one node answered is the server's capabilities node (XEP-0115
    // §6.2: `node#ver` has the server's own info); any other is absent.
    if let Some(node) = req.payload.attr("node") {
        let caps = req.server.features.get::<super::caps::Caps>();
        let ours = caps.is_some_and(|c| c.node(req.server) == node);
        if !(ours && req.payload.is("query", NS_INFO) && req.target == IqTarget::Server) {
            return Err(StanzaErrorCondition::ItemNotFound.into());
        }
        let mut q = server_info(req.server);
        q.set_attr("node", node);
        return Ok(Some(q));
    }
    match (req.payload.name(), req.payload.ns(), req.target) {
        ("query", NS_INFO, IqTarget::Server) => Ok(Some(server_info(req.server))),
        ("query", NS_INFO, IqTarget::Account { own }) => {
            // A contact (the account shares presence with it) learns what
            // the account offers, PEP above all (XEP-0163 §8.2); anyone
            // else gets the answer a missing account gets.
            if !own {
                let account = account_of(req).ok_or(StanzaErrorCondition::JidMalformed)?;
                let contact =
                    super::roster::is_subscribed_from(req.server, &account, &req.from.bare())
                        .await
                        .map_err(|e| {
                            tracing::error!(error = %e, "roster");
                            StanzaErrorCondition::InternalServerError
                        })?;
                if !contact {
                    return Err(StanzaErrorCondition::ServiceUnavailable.into());
                }
            }
            let mut q =
                Element::new("query", NS_INFO).with_child(identity("account", "registered", None));
            for (category, kind) in req.server.features.account_identities() {
                q.append_child(identity(category, kind, None));
            }
            for f in req.server.features.account_disco() {
                q.append_child(Element::new("feature", NS_INFO).with_attr("var", f));
            }
            Ok(Some(q))
        }
        ("query", NS_ITEMS, IqTarget::Server) => Ok(Some(server_items(req.server))),
        ("query", NS_ITEMS, IqTarget::Account { own: true }) => {
            Ok(Some(Element::new("query", NS_ITEMS)))
        }
        ("query", _, IqTarget::Account { own: false }) => {
            Err(StanzaErrorCondition::ServiceUnavailable.into())
        }
        _ => Err(StanzaErrorCondition::BadRequest.into()),
    }
}

fn identity(category: &str, kind: &str, name: Option<&str>) -> Element {
    let mut e = Element::new("identity", NS_INFO)
        .with_attr("category", category)
        .with_attr("type", kind);
    if let Some(n) = name {
        e.set_attr("name", n);
    }
    e
}

/// The server's disco#items answer: the in-process services (a chat
/// service) and the external components (XEP-0114), so clients can find
/// the rooms, bots and gateways it offers, connected or not.
fn server_items(server: &Server) -> Element {
    let mut q = Element::new("query", NS_ITEMS);
    for (domain, _) in server.features.service_domains(&server.config()) {
        q.append_child(Element::new("item", NS_ITEMS).with_attr("jid", domain));
    }
    for domain in server.components.domains() {
        q.append_child(Element::new("item", NS_ITEMS).with_attr("jid", domain));
    }
    q
}

/// The server's disco#info answer: identity, every module's features, and
/// the contact addresses form (XEP-0157, as XEP-0128 extended information).
pub fn server_info(server: &Server) -> Element {
    let mut q =
        Element::new("query", NS_INFO).with_child(identity("server", "im", Some("Waxwing")));
    for f in server.features.server_disco() {
        q.append_child(Element::new("feature", NS_INFO).with_attr("var", f));
    }
    if let Some(form) = super::contact::server_info_form(&server.config().contact) {
        q.append_child(form);
    }
    q
}
