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

/// Every private XML document is stored under this prefix and its namespace.
const KEY_PREFIX: &str = "private:";

/// The per-user store key of the document in `ns` (bookmark conversion
/// writes `storage:bookmarks` there too).
pub fn key(ns: &str) -> String {
    format!("{KEY_PREFIX}{ns}")
}

/// Whether `documents` (key, serialized XML) may replace what is stored
/// (`stored`: key, bytes of key and value) within the quotas: a document
/// larger than `max_document` is `not-acceptable` (it can never be stored,
/// so the client must change it); an account whose documents would exceed
/// `max_total` in all is `resource-constraint` (the same document fits once
/// others are removed or shrunk).
fn check_quota(
    stored: &[(String, i64)],
    documents: &[(String, String)],
    max_document: usize,
    max_total: usize,
) -> Result<(), StanzaErrorCondition> {
    if documents.iter().any(|(_, xml)| xml.len() > max_document) {
        return Err(StanzaErrorCondition::NotAcceptable);
    }
    let kept: u64 = stored
        .iter()
        .filter(|(k, _)| !documents.iter().any(|(d, _)| d == k))
        .map(|(_, n)| u64::try_from(*n).unwrap_or(0))
        .sum();
    let new: u64 = documents
        .iter()
        .map(|(k, xml)| (k.len() + xml.len()) as u64)
        .sum();
    if kept + new > max_total as u64 {
        return Err(StanzaErrorCondition::ResourceConstraint);
    }
    Ok(())
}

fn internal(e: StorageError) -> StanzaErrorCondition {
    tracing::error!("private XML storage: {e}");
    StanzaErrorCondition::InternalServerError
}

async fn answer(req: &IqRequest<'_>) -> IqOutcome {
    if !req.payload.is("query", NS) {
        return Err(StanzaErrorCondition::BadRequest.into());
    }
    // XEP-0049 §2.3: another user's data is forbidden (preferred over
    // service-unavailable); so is addressing the server.
    if req.target != (IqTarget::Account { own: true }) {
        return Err(StanzaErrorCondition::Forbidden.into());
    }
    let children: Vec<&Element> = req.payload.children().collect();
    // XEP-0049 §2.3: at least one child with a namespace of its own
    // (bad-format is a stream condition, so not-acceptable it is).
    if children.is_empty() || children.iter().any(|c| reserved(c.ns())) {
        return Err(StanzaErrorCondition::NotAcceptable.into());
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
        let documents: Vec<(String, String)> = namespaces
            .into_iter()
            .map(|ns| {
                let xml = super::xml_for_storage(children.iter().copied().filter(|c| c.ns() == ns));
                (key(ns), xml)
            })
            .collect();
        let limits = &req.server.config().limits;
        let stored = store
            .user_data_sizes(domain, user, KEY_PREFIX)
            .await
            .map_err(internal)?;
        check_quota(
            &stored,
            &documents,
            limits.max_private_document,
            limits.max_private_bytes,
        )?;
        // Concurrent sets from several resources of one account may each
        // pass the check before the others write: the overshoot is bounded
        // by one stanza per resource.
        for (key, xml) in &documents {
            store
                .user_data_put(domain, user, key, xml)
                .await
                .map_err(internal)?;
        }
        return Ok(None);
    }
    // XEP-0049 §2.3: a get asks for one namespace.
    let ns = children[0].ns();
    if children.iter().any(|c| c.ns() != ns) {
        return Err(StanzaErrorCondition::BadRequest.into());
    }
    let mut query = Element::new("query", NS);
    match store
        .user_data_get(domain, user, &key(ns))
        .await
        .map_err(internal)?
    {
        Some(xml) => {
            let stored = super::xml_from_storage(&xml, req.server.config().limits.max_depth)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(ns: &str, len: usize) -> (String, String) {
        (key(ns), "x".repeat(len))
    }

    #[test]
    fn quota_counts_what_stays_plus_what_replaces() {
        // "private:a" is 9 bytes of key.
        let stored = vec![(key("a"), 9 + 50), (key("b"), 9 + 30)];
        // Replacing a's 50 bytes by 60: 39 + 69 = 108.
        assert_eq!(check_quota(&stored, &[doc("a", 60)], 100, 108), Ok(()));
        assert_eq!(
            check_quota(&stored, &[doc("a", 61)], 100, 108),
            Err(StanzaErrorCondition::ResourceConstraint)
        );
        // A new namespace adds to both.
        assert_eq!(
            check_quota(&stored, &[doc("c", 2)], 100, 108),
            Err(StanzaErrorCondition::ResourceConstraint)
        );
        assert_eq!(check_quota(&stored, &[doc("c", 2)], 100, 108 + 10), Ok(()));
        // One document over its own cap, whatever the room left.
        assert_eq!(
            check_quota(&[], &[doc("a", 101)], 100, 1 << 20),
            Err(StanzaErrorCondition::NotAcceptable)
        );
    }
}
