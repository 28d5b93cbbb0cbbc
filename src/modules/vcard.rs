//! vcard-temp (XEP-0054): each account's vCard, which its owner stores and
//! reads, and which anyone may read at the account's bare JID (the server
//! answers on the account's behalf). Stored serialized under `vcard`.

use super::{IqOutcome, IqRequest, IqTarget, Module};
use crate::stanza::StanzaErrorCondition;
use crate::storage::StorageError;
use crate::xml::Element;

/// Namespace of the vCard element and the disco feature.
pub const NS: &str = "vcard-temp";

/// Key of the vCard in the per-user key-value store.
/// Where the vCard is kept in the per-user store (avatar conversion reads it too).
pub const STORE_KEY: &str = "vcard";

pub const MODULE: Module = Module {
    xep: 54,
    namespaces: &[NS],
    features: &[NS],
    handle: |req| Box::pin(answer(req)),
};

async fn answer(req: &IqRequest<'_>) -> IqOutcome {
    if !req.payload.is("vCard", NS) {
        return Err(StanzaErrorCondition::BadRequest.into());
    }
    match (req.target, req.is_set) {
        (IqTarget::Account { own: true }, false) => {
            let (domain, user) = own_account(req);
            // XEP-0054 §3.1: no vCard yet reads as an empty one.
            Ok(Some(
                stored(req, domain, user)
                    .await?
                    .unwrap_or_else(|| Element::new("vCard", NS)),
            ))
        }
        (IqTarget::Account { own: true }, true) => set(req).await,
        (IqTarget::Account { own: false }, false) => {
            // The router addressed the IQ to a local bare JID, normalised.
            let to = req
                .iq
                .attr("to")
                .and_then(|t| jid::BareJid::new(t).ok())
                .ok_or(StanzaErrorCondition::BadRequest)?;
            let user = to.node().map_or("", |n| n.as_str());
            // XEP-0054 §3.3 (1.3): no vCard and no such user give the same
            // answer, so accounts cannot be discovered this way.
            stored(req, to.domain().as_str(), user)
                .await?
                .map(Some)
                .ok_or(StanzaErrorCondition::ServiceUnavailable.into())
        }
        // XEP-0054 §3.2: nobody changes another entity's vCard.
        (_, true) => Err(StanzaErrorCondition::Forbidden.into()),
        // The server itself has no vCard.
        (IqTarget::Server, false) => Err(StanzaErrorCondition::ServiceUnavailable.into()),
    }
}

fn own_account<'a>(req: &'a IqRequest<'_>) -> (&'a str, &'a str) {
    (
        req.from.domain().as_str(),
        req.from.node().map_or("", |n| n.as_str()),
    )
}

fn internal(e: StorageError) -> StanzaErrorCondition {
    tracing::error!("vcard storage: {e}");
    StanzaErrorCondition::InternalServerError
}

/// The stored vCard of an account, if any.
async fn stored(
    req: &IqRequest<'_>,
    domain: &str,
    user: &str,
) -> Result<Option<Element>, StanzaErrorCondition> {
    let Some(xml) = req
        .server
        .store
        .user_data_get(domain, user, STORE_KEY)
        .await
        .map_err(internal)?
    else {
        return Ok(None);
    };
    match super::xml_from_storage(&xml, req.server.config().limits.max_depth)
        .and_then(|v| v.into_iter().next())
    {
        Some(v) => Ok(Some(v)),
        None => {
            tracing::error!(user, domain, "stored vCard is not readable XML");
            Err(StanzaErrorCondition::InternalServerError)
        }
    }
}

async fn set(req: &IqRequest<'_>) -> IqOutcome {
    let (domain, user) = own_account(req);
    let store = &req.server.store;
    // An empty <vCard/> clears it: there is nothing worth keeping.
    if req.payload.nodes().is_empty() && req.payload.attrs().next().is_none() {
        store
            .user_data_delete(domain, user, STORE_KEY)
            .await
            .map_err(internal)?;
        return Ok(None);
    }
    let xml = super::xml_for_storage([req.payload]);
    if xml.len() > req.server.config().limits.max_vcard_size {
        return Err(StanzaErrorCondition::NotAcceptable.into());
    }
    store
        .user_data_put(domain, user, STORE_KEY, &xml)
        .await
        .map_err(internal)?;
    Ok(None)
}
