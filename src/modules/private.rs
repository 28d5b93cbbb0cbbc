//! Private XML Storage (XEP-0049): any XML a client keeps on its own
//! account, one document per namespace of the stored elements (stored under
//! `private:{namespace}`), readable and writable only by the account itself.
//! XEP-0049 defines no disco feature, so the module advertises none.

use super::{IqOutcome, IqRequest, IqTarget, Module};
use crate::stanza::StanzaErrorCondition;
use crate::storage::StorageError;
use crate::xml::{Element, NS_CLIENT, NS_SERVER};

pub const NS: &str = "jabber:iq:private";

pub const MODULE: Module = Module {
    xep: 49,
    namespaces: &[NS],
    features: &[],
    handle: |req| Box::pin(answer(req)),
};

/// Namespaces that cannot be stored: the stream's own, this protocol's,
/// and vcard-temp, whose data has its own home (XEP-0049 §2.3 lists them
/// among the reserved; "" is an element with no namespace at all).
fn reserved(ns: &str) -> bool {
    matches!(ns, "" | NS_CLIENT | NS_SERVER | NS | super::vcard::NS)
}

fn key(ns: &str) -> String {
    format!("private:{ns}")
}

fn internal(e: StorageError) -> StanzaErrorCondition {
    tracing::error!("private XML storage: {e}");
    StanzaErrorCondition::InternalServerError
}

async fn answer(req: &IqRequest<'_>) -> IqOutcome {
    if !req.payload.is("query", NS) {
        return Err(StanzaErrorCondition::BadRequest);
    }
    // XEP-0049 §2.3: another user's data is forbidden (preferred over
    // service-unavailable); so is addressing the server.
    if req.target != (IqTarget::Account { own: true }) {
        return Err(StanzaErrorCondition::Forbidden);
    }
    let children: Vec<&Element> = req.payload.children().collect();
    // XEP-0049 §2.3: at least one child with a namespace of its own
    // (bad-format is a stream condition, so not-acceptable it is).
    if children.is_empty() || children.iter().any(|c| reserved(c.ns())) {
        return Err(StanzaErrorCondition::NotAcceptable);
    }
    let (domain, user) = (
        req.from.domain().as_str(),
        req.from.node().map_or("", |n| n.as_str()),
    );
    let store = &req.server.store;
    if req.is_set {
        // Each namespace is its own document; an IQ may carry several, and
        // several elements of one namespace (XEP-0049 §2.3).
        let mut namespaces: Vec<&str> = children.iter().map(|c| c.ns()).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        for ns in namespaces {
            let xml = super::xml_for_storage(children.iter().copied().filter(|c| c.ns() == ns));
            store
                .user_data_put(domain, user, &key(ns), &xml)
                .await
                .map_err(internal)?;
        }
        return Ok(None);
    }
    // XEP-0049 §2.3: a get asks for one namespace.
    let ns = children[0].ns();
    if children.iter().any(|c| c.ns() != ns) {
        return Err(StanzaErrorCondition::BadRequest);
    }
    let mut query = Element::new("query", NS);
    match store
        .user_data_get(domain, user, &key(ns))
        .await
        .map_err(internal)?
    {
        Some(xml) => {
            let stored = super::xml_from_storage(&xml, req.server.config.limits.max_depth)
                .ok_or_else(|| {
                    tracing::error!(user, domain, ns, "stored private XML is not readable");
                    StanzaErrorCondition::InternalServerError
                })?;
            for e in stored {
                query.append_child(e);
            }
        }
        // Nothing stored: the request comes back as it was asked, empty,
        // which is what clients (bookmarks, preferences) expect.
        None => {
            for c in children {
                query.append_child(c.clone());
            }
        }
    }
    Ok(Some(query))
}
