//! Server features, one module per XEP. Each module names the disco features
//! it adds and answers the IQs of its namespace; `dispatch` routes an IQ
//! addressed to the server or to an account to the module that owns the
//! payload's namespace.

pub mod adhoc;
pub mod avatar;
pub mod blocking;
pub mod bookmarks;
pub mod caps;
pub mod carbons;
pub mod clients;
pub mod contact;
pub mod csi;
pub mod disco;
pub mod extdisco;
pub mod holders;
pub mod invite;
pub mod last;
pub mod mam;
pub mod muc;
pub mod offline;
pub mod pep;
pub mod ping;
pub mod presence;
pub mod private;
pub mod push;
pub mod register;
pub mod roster;
pub mod session;
pub mod sm_handover;
pub mod stream_management;
pub mod time;
pub mod upload;
pub mod vcard;
pub mod vcard_update;
pub mod version;

use std::sync::Arc;

use smallvec::SmallVec;

pub use crate::feature::iq::{ready, IqFuture, IqOutcome, IqRequest, IqTarget};
use crate::feature::{Disco, Feature};
use crate::stanza::StanzaErrorCondition;
use crate::xml::Element;

/// A feature that only answers IQs and adds disco features: declared as
/// a constant, registered like any other [`Feature`].
pub struct Module {
    /// The XEP number (0 for an RFC feature), checked against xep/waxwing.doap.
    pub xep: u16,
    /// Namespaces of IQ payloads it answers.
    pub namespaces: &'static [&'static str],
    /// Features it adds to the server's disco#info.
    pub features: &'static [&'static str],
    pub handle: for<'a> fn(&'a IqRequest<'a>) -> IqFuture<'a>,
}

impl Feature for Module {
    fn name(&self) -> &'static str {
        self.namespaces
            .first()
            .or(self.features.first())
            .copied()
            .unwrap_or("module")
    }

    fn xeps(&self) -> &[u16] {
        std::slice::from_ref(&self.xep)
    }

    fn disco(&self) -> Disco {
        Disco {
            server: self.features,
            account: &[],
        }
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        self.namespaces
    }

    fn handle_iq<'a>(&'a self, req: &'a IqRequest<'a>) -> IqFuture<'a> {
        (self.handle)(req)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The features a server runs, in disco order. A new feature is one line here.
pub fn default_features() -> Vec<Arc<dyn Feature>> {
    vec![
        Arc::new(disco::MODULE),
        Arc::new(ping::MODULE),
        Arc::new(version::MODULE),
        Arc::new(time::MODULE),
        Arc::new(session::MODULE),
        Arc::new(roster::MODULE),
        Arc::new(presence::Presence),
        Arc::new(offline::Offline::default()),
        Arc::new(last::LastActivity),
        Arc::new(register::Registration::default()),
        Arc::new(invite::Invitations),
        Arc::new(invite::IbrToken),
        Arc::new(blocking::Blocking::default()),
        Arc::new(vcard::MODULE),
        Arc::new(private::MODULE),
        Arc::new(stream_management::StreamManagementFeature::default()),
        Arc::new(carbons::Carbons),
        Arc::new(caps::Caps::default()),
        Arc::new(csi::ClientStateIndication),
        Arc::new(push::Push::default()),
        Arc::new(clients::Clients),
        Arc::new(pep::Pep::default()),
        Arc::new(avatar::AvatarConversion),
        Arc::new(vcard_update::VcardUpdate::default()),
        Arc::new(bookmarks::BookmarksConversion),
        Arc::new(mam::Mam::default()),
        Arc::new(muc::Muc::default()),
        Arc::new(extdisco::ExternalServices),
        Arc::new(upload::Upload::default()),
        Arc::new(adhoc::AdHoc::default()),
    ]
}

/// XEPs implemented inside another module rather than as one of their own:
/// delayed delivery stamps (XEP-0203) on offline messages, and contact
/// addresses (XEP-0157) in the server's disco#info.
pub const IMPLIED_XEPS: &[u16] = &[203, 157];

/// XEP-0004 data forms, the payload several modules read or write.
pub const NS_DATA: &str = "jabber:x:data";

/// Answers an IQ get/set addressed to the server or an account, with the
/// feature that owns the payload's namespace.
pub async fn dispatch(req: &IqRequest<'_>) -> IqOutcome {
    match req.server.features.iq_handler(req.payload.ns()) {
        Some(f) => f.handle_iq(req).await,
        None => Err(StanzaErrorCondition::ServiceUnavailable.into()),
    }
}

/// Serializes XML payloads for the per-user key-value store (vCards,
/// private XML): each element carries its own `xmlns`, so the text reads
/// back the same wherever it is parsed.
pub fn xml_for_storage<'a>(elements: impl IntoIterator<Item = &'a Element>) -> String {
    // Sized once: no growing the buffer step by step.
    let elements: SmallVec<[&Element; 2]> = elements.into_iter().collect();
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.written_len_hint("")).sum());
    for e in elements {
        e.write_to(&mut out, "");
    }
    // The writer writes UTF-8 (an element's text is Rust strings): taken
    // as it is, not copied.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The one element of `xml`, parsed as [`xml_from_storage`] does: what
/// unit tests build their stanzas from.
#[cfg(test)]
pub fn parsed(xml: &str) -> crate::xml::Element {
    xml_from_storage(xml, 16).unwrap().remove(0)
}

/// Parses what [`xml_for_storage`] wrote. `max_depth` is the stanza depth
/// limit the payloads were accepted under; None if the text is not such
/// XML (the store was edited by hand, or is corrupt).
pub fn xml_from_storage(stored: &str, max_depth: usize) -> Option<Vec<Element>> {
    use crate::xml::{ParserLimits, StreamEvent, StreamParser};
    // What is stored passed the stream limits when it was received; only the
    // size and the depth (which keeps the tree's recursive drop safe) still apply.
    let max_stanza_bytes = stored.len().max(1024);
    let mut parser = StreamParser::new(ParserLimits {
        max_stanza_bytes,
        max_depth,
        max_elements: usize::MAX,
        max_attributes: usize::MAX,
        max_ns_declarations: usize::MAX,
        max_ns_in_scope: usize::MAX,
        max_name_bytes: usize::MAX,
        max_ns_uri_bytes: usize::MAX,
        max_stanza_memory: usize::MAX,
    });
    parser.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    parser.feed(stored.as_bytes());
    let mut out = Vec::new();
    loop {
        match parser.next_event() {
            Ok(Some(StreamEvent::Header(_))) => {}
            Ok(Some(StreamEvent::Stanza(e))) => out.push(e),
            Ok(Some(StreamEvent::End)) => return None,
            // Anything left over is a truncated element.
            Ok(None) => return (parser.buffered() == 0).then_some(out),
            Err(_) => return None,
        }
    }
}
