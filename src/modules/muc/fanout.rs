//! A stanza the room sends to many occupants, serialized once: only the
//! `to` differs between recipients, so it is spliced into the shared
//! bytes for local sessions instead of building one element per
//! occupant. Recipients elsewhere (s2s, components) get an element, as
//! `router::deliver` needs one.

use bytes::Bytes;
use jid::{FullJid, Jid};

use crate::routes::Route;
use crate::server::Server;
use crate::sessions::{DeliveryError, OutStanza};
use crate::xml::{escape_attr, Element, NS_CLIENT};

/// A stanza without `to`, ready to go to any number of occupants.
#[derive(Debug, Clone)]
pub struct Prepared {
    bytes: Bytes,
    /// Where the element's name ends in `bytes`: `to` goes there.
    name_end: usize,
    /// The element, when the room has it at hand (live broadcasts);
    /// history keeps only the bytes and parses them for the rare remote
    /// recipient.
    element: Option<Element>,
}

impl Prepared {
    /// Serializes `element` (which has no `to`) once.
    pub fn new(element: Element) -> Prepared {
        let bytes = Bytes::from(element.to_bytes(NS_CLIENT));
        let name_end = 1 + element.name().len();
        Prepared {
            bytes,
            name_end,
            element: Some(element),
        }
    }

    /// The same stanza keeping only its bytes (what history stores).
    pub fn bytes_only(&self) -> Prepared {
        Prepared {
            bytes: self.bytes.clone(),
            name_end: self.name_end,
            element: None,
        }
    }

    /// The element, when kept.
    pub fn element_ref(&self) -> Option<&Element> {
        self.element.as_ref()
    }

    /// Its serialized size, for history's `maxchars`.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty (never, for a stanza).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The stanza as an element (parsed from the bytes if not kept).
    pub fn element(&self) -> Option<Element> {
        match &self.element {
            Some(e) => Some(e.clone()),
            None => OutStanza::serialized(self.bytes.clone()).element().cloned(),
        }
    }

    /// Queues it for `to`.
    pub fn send(&self, server: &Server, to: &FullJid) -> Result<(), DeliveryError> {
        if server.route(to.domain().as_str()) == Route::Host {
            let mut out = Vec::with_capacity(self.bytes.len() + to.as_str().len() + 8);
            out.extend_from_slice(&self.bytes[..self.name_end]);
            out.extend_from_slice(b" to=\"");
            escape_attr(to.as_str(), &mut out);
            out.push(b'"');
            out.extend_from_slice(&self.bytes[self.name_end..]);
            return server
                .sessions
                .send_to_full(to, OutStanza::serialized(Bytes::from(out)));
        }
        let Some(mut e) = self.element() else {
            return Err(DeliveryError::Offline);
        };
        e.set_attr("to", to.as_str());
        crate::router::deliver(server, &e, &Jid::from(to.clone()))
    }
}

/// Sends a one-off stanza (an error, an IQ answer, a stanza for one
/// recipient) to any address.
pub fn send_one(server: &Server, mut stanza: Element, to: &Jid) {
    stanza.set_attr("to", to.as_str());
    let _ = crate::router::deliver(server, &stanza, to);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipient_is_spliced_after_the_name() {
        let e = Element::new("message", NS_CLIENT)
            .with_attr("from", "r@c/n")
            .with_attr("type", "groupchat")
            .with_child(Element::new("body", NS_CLIENT).with_text("hi"));
        let p = Prepared::new(e.clone());
        let mut out = Vec::new();
        out.extend_from_slice(&p.bytes[..p.name_end]);
        out.extend_from_slice(b" to=\"a@b/c\"");
        out.extend_from_slice(&p.bytes[p.name_end..]);
        let parsed = OutStanza::serialized(Bytes::from(out));
        let got = parsed.element().expect("one stanza");
        assert_eq!(got.attr("to"), Some("a@b/c"));
        assert_eq!(got.attr("from"), e.attr("from"));
        assert_eq!(got.children().next(), e.children().next());
    }
}
