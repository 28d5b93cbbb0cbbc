//! Blocking Command (XEP-0191): the user's blocklist, and the filter the
//! router applies to every stanza between a user and a JID they blocked.
//!
//! NOTE: being implemented — `filter` passes everything until then.

use jid::{FullJid, Jid};

use crate::server::Server;
use crate::stanza::StanzaKind;
use crate::xml::Element;

/// What the router does with a stanza after the blocklist check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Route it as usual.
    Pass,
    /// Drop it silently.
    Drop,
    /// Answer the sender with this error reply instead of routing
    /// (built by the blocking module, so it can carry XEP-0191's
    /// `<blocked xmlns='urn:xmpp:blocking:errors'/>`).
    Bounce(BounceKind),
}

/// The two error answers XEP-0191 §3.5 and §3.6 prescribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceKind {
    /// The sender blocked the recipient: not-acceptable + <blocked/>.
    SenderBlocks,
    /// The recipient blocked the sender: service-unavailable.
    RecipientBlocks,
}

/// Checks a stanza from local user `origin` to `to` against both parties'
/// blocklists (the recipient's only when it is local).
pub async fn filter(
    _server: &Server,
    _origin: &FullJid,
    _to: &Jid,
    _kind: StanzaKind,
    _stanza: &Element,
) -> Verdict {
    Verdict::Pass
}

/// Namespace of XEP-0191's application error.
pub const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";

/// The error reply for a bounced stanza (None for errors, which are never answered).
pub fn bounce_reply(stanza: &Element, kind: BounceKind) -> Option<Element> {
    use crate::stanza::{error_reply, StanzaErrorCondition};
    match kind {
        BounceKind::RecipientBlocks => {
            error_reply(stanza, StanzaErrorCondition::ServiceUnavailable, None)
        }
        BounceKind::SenderBlocks => {
            let mut reply = error_reply(stanza, StanzaErrorCondition::NotAcceptable, None)?;
            if let Some(err) = reply.get_child_mut("error", stanza.ns()) {
                err.append_child(Element::new("blocked", NS_BLOCKING_ERRORS));
            }
            Some(reply)
        }
    }
}
