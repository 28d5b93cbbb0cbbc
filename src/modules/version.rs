//! Software Version (XEP-0092), answered for the server only: an account's
//! version belongs to its clients.

use super::{IqOutcome, IqRequest, Module};
use crate::xml::Element;

pub const NS: &str = "jabber:iq:version";

pub const MODULE: Module = Module {
    xep: 92,
    namespaces: &[NS],
    features: &[NS],
    handle: |req| super::ready(answer(req)),
};

fn answer(req: &IqRequest<'_>) -> IqOutcome {
    req.require_server_get()?;
    Ok(Some(
        Element::new("query", NS)
            .with_child(Element::new("name", NS).with_text("Waxwing"))
            .with_child(Element::new("version", NS).with_text(env!("CARGO_PKG_VERSION"))),
    ))
}
