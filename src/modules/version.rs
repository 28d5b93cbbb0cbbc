//! Software Version (XEP-0092), answered for the server only: an account's
//! version belongs to its clients.

use super::{IqOutcome, IqRequest, IqTarget, Module};
use crate::stanza::StanzaErrorCondition;
use crate::xml::Element;

pub const NS: &str = "jabber:iq:version";

pub const MODULE: Module = Module {
    xep: 92,
    namespaces: &[NS],
    features: &[NS],
    handle,
};

fn handle(req: &IqRequest<'_>) -> IqOutcome {
    if req.target != IqTarget::Server {
        return Err(StanzaErrorCondition::ServiceUnavailable);
    }
    if req.is_set {
        return Err(StanzaErrorCondition::NotAllowed);
    }
    Ok(Some(
        Element::new("query", NS)
            .with_child(Element::new("name", NS).with_text("Waxwing"))
            .with_child(Element::new("version", NS).with_text(env!("CARGO_PKG_VERSION"))),
    ))
}
