//! The legacy session establishment IQ (RFC 3921 §3), still sent by old
//! clients: accepted as a no-op, since binding already established the
//! session. Advertised as optional in stream features (RFC 6121 bis).

use super::{IqOutcome, IqRequest, Module};
use crate::stanza::StanzaErrorCondition;

pub const NS: &str = "urn:ietf:params:xml:ns:xmpp-session";

pub const MODULE: Module = Module {
    xep: 0,
    namespaces: &[NS],
    features: &[],
    handle: |req| super::ready(answer(req)),
};

fn answer(req: &IqRequest<'_>) -> IqOutcome {
    if !req.is_set || req.payload.name() != "session" {
        return Err(StanzaErrorCondition::BadRequest.into());
    }
    Ok(None)
}
