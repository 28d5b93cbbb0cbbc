//! XMPP Ping (XEP-0199): the server and accounts answer pings.

use super::{IqOutcome, IqRequest, Module};

pub const NS: &str = "urn:xmpp:ping";

pub const MODULE: Module = Module {
    xep: 199,
    namespaces: &[NS],
    features: &[NS],
    handle: |req| super::ready(answer(req)),
};

fn answer(req: &IqRequest<'_>) -> IqOutcome {
    if req.is_set || req.payload.name() != "ping" {
        return Err(crate::stanza::StanzaErrorCondition::BadRequest.into());
    }
    Ok(None)
}
