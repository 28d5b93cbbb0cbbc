//! Which messages an archive keeps (XEP-0313 §5.1.1, XEP-0334 hints) and
//! the stanza-id elements it adds and removes (XEP-0359).

use crate::xml::Element;

pub const NS_SID: &str = "urn:xmpp:sid:0";
const NS_HINTS: &str = "urn:xmpp:hints";
const NS_CARBONS: &str = "urn:xmpp:carbons:2";
const NS_MAM: &str = super::NS_MAM;

/// Should this message be archived? Chat and normal messages with
/// something to read later: a body, an encrypted payload (OMEMO, OpenPGP,
/// legacy PGP), a retraction, a reaction, or a `<store/>` hint. Not errors,
/// groupchat or headlines, not messages marked `<no-store/>` or
/// `<no-permanent-store/>`, not copies (carbons, archive results, which
/// only a forger would route to someone), and not messages carrying only
/// chat states, receipts or markers: those describe a conversation in the
/// moment, and history fetched later has no use for them.
pub fn archivable(stanza: &Element) -> bool {
    if stanza.name() != "message" {
        return false;
    }
    match stanza.attr("type").unwrap_or("normal") {
        "chat" | "normal" => {}
        _ => return false,
    }
    let mut keep = false;
    for c in stanza.children() {
        match (c.ns(), c.name()) {
            (NS_HINTS, "no-store" | "no-permanent-store") => return false,
            (NS_CARBONS, "sent" | "received") | (NS_MAM, "result") => return false,
            (NS_HINTS, "store") => keep = true,
            (crate::xml::NS_CLIENT, "body") => keep = true,
            ("eu.siacs.conversations.axolotl", "encrypted") => keep = true,
            (ns, "encrypted") if ns.starts_with("urn:xmpp:omemo:") => keep = true,
            ("urn:xmpp:openpgp:0", "openpgp") => keep = true,
            ("jabber:x:encrypted", "x") => keep = true,
            (ns, "retract") if ns.starts_with("urn:xmpp:message-retract:") => keep = true,
            ("urn:xmpp:reactions:0", "reactions") => keep = true,
            _ => {}
        }
    }
    keep
}

/// Removes every `<stanza-id/>` claiming to be by `by` (XEP-0359 §5: only
/// the archive `by` names may have put it there; a sender's would let it
/// choose the id a client trusts). `by` is compared as a JID, so another
/// spelling of the same address goes too. Returns whether any was there.
pub fn strip_stanza_ids(stanza: &mut Element, by: &str) -> bool {
    let claims_by = |e: &Element| match e.attr("by") {
        Some(b) if b == by => true,
        Some(b) => jid::Jid::new(b).is_ok_and(|j| j.as_str() == by),
        None => false,
    };
    let before = stanza.nodes().len();
    stanza.nodes_mut().retain(|n| match n {
        crate::xml::Node::Element(e) => !(e.is("stanza-id", NS_SID) && claims_by(e)),
        _ => true,
    });
    stanza.nodes().len() != before
}

/// The `<stanza-id/>` of archive `by`. Built for every archived message:
/// its namespace is one shared string, not a new copy each time.
pub fn stanza_id(by: &str, id: &str) -> Element {
    static NS: std::sync::LazyLock<std::sync::Arc<str>> =
        std::sync::LazyLock::new(|| std::sync::Arc::from(NS_SID));
    Element::new("stanza-id", std::sync::Arc::clone(&NS))
        .with_attr("by", by)
        .with_attr("id", id)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::modules::parsed as parse;

    #[test]
    fn the_rules() {
        let yes = [
            "<message type='chat'><body>hi</body></message>",
            "<message><body>hi</body></message>",
            "<message type='chat'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message>",
            "<message type='chat'><encrypted xmlns='urn:xmpp:omemo:2'/></message>",
            "<message type='chat'><store xmlns='urn:xmpp:hints'/><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        ];
        let no = [
            "<message type='groupchat'><body>hi</body></message>",
            "<message type='error'><body>hi</body></message>",
            "<message type='headline'><body>hi</body></message>",
            "<message type='chat'><body>hi</body><no-store xmlns='urn:xmpp:hints'/></message>",
            "<message type='chat'><body>hi</body><no-permanent-store xmlns='urn:xmpp:hints'/></message>",
            "<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message type='chat'><received xmlns='urn:xmpp:receipts' id='x'/></message>",
            "<message type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='x'/></message>",
            "<message><received xmlns='urn:xmpp:carbons:2'/><body>x</body></message>",
        ];
        for x in yes {
            assert!(archivable(&parse(x)), "{x}");
        }
        for x in no {
            assert!(!archivable(&parse(x)), "{x}");
        }
    }

    #[test]
    fn strips_only_ours() {
        let mut m = parse(
            "<message><stanza-id xmlns='urn:xmpp:sid:0' by='a@x' id='1'/><stanza-id xmlns='urn:xmpp:sid:0' by='A@X' id='3'/><stanza-id xmlns='urn:xmpp:sid:0' by='room@y' id='2'/><body>b</body></message>",
        );
        assert!(strip_stanza_ids(&mut m, "a@x"));
        assert_eq!(
            m.children().filter(|c| c.is("stanza-id", NS_SID)).count(),
            1
        );
        assert!(!strip_stanza_ids(&mut m, "a@x"));
    }
}
