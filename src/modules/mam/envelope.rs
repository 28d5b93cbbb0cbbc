//! An archived chat message written without its envelope, for both
//! archives at once.
//!
//! The archive may keep a user's message without the root's
//! `xmlns='jabber:client'`, `from` and `to`: the row names them already
//! but for the owner's own resource, which it keeps beside the payload
//! (`storage/archive_envelope.rs` has the format, and puts the envelope
//! back when a row is read). Why (issue #11): every stored byte is written
//! to SQLite's WAL and written again by the checkpoint, twice per message
//! (sender's and recipient's archive), and the envelope is a third of a
//! short chat message.
//!
//! The cut is made here, while the message is serialized, since here the
//! `from` and `to` are at hand as values: no search of the written text.
//! It is made only when putting the envelope back gives the same message:
//! `from` and `to` are exactly the sender's and the recipient's bare JIDs,
//! each bare or with the resource the rows record, and hold no character
//! the writer would escape (the envelope is put back as it is).

use crate::xml::{attr_needs_no_escaping, Element, NS_CLIENT};

/// The root attributes a kept message is written without (`xmlns` is left
/// out by writing it in `jabber:client`'s scope).
const ENVELOPE: [&str; 2] = ["from", "to"];

/// A message as the archive keeps it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Written<'s> {
    pub payload: String,
    /// Set when `payload` is the message without its envelope.
    pub cut: Option<Cut<'s>>,
}

/// What a message written without its envelope needs beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cut<'s> {
    /// The resource of its `from` ("" for a bare JID): the recipient's
    /// row's peer resource, the sender's row's own.
    pub from_resource: &'s str,
    /// The resource of its `to`, the other way round.
    pub to_resource: &'s str,
    /// The length of the payload's start tag.
    pub start_tag: usize,
}

/// `jid`'s resource ("" for none) when it is `bare` or `bare/resource`.
fn resource_after<'a>(jid: &'a str, bare: &str) -> Option<&'a str> {
    match jid.strip_prefix(bare)? {
        "" => Some(""),
        rest => rest.strip_prefix('/').filter(|r| !r.is_empty()),
    }
}

/// `stanza` as the archive of `sender` and of `recipient` (bare JIDs)
/// keeps it. `from_resource` and `to_resource` are the resources the
/// rows record for its `from` and `to` ("" for none): the envelope is cut
/// only when its JIDs are made of exactly these.
pub(super) fn write<'s>(
    stanza: &'s Element,
    sender: &str,
    from_resource: &str,
    recipient: &str,
    to_resource: &str,
) -> Written<'s> {
    let cut = (stanza.ns() == NS_CLIENT
        && stanza.name() == "message"
        && !sender.is_empty()
        && !recipient.is_empty())
    .then(|| {
        let (from, to) = (stanza.attr("from")?, stanza.attr("to")?);
        let from_res = resource_after(from, sender).filter(|r| *r == from_resource)?;
        let to_res = resource_after(to, recipient).filter(|r| *r == to_resource)?;
        (attr_needs_no_escaping(from) && attr_needs_no_escaping(to)).then_some((from_res, to_res))
    })
    .flatten();
    let Some((from_resource, to_resource)) = cut else {
        return Written {
            payload: crate::modules::xml_for_storage([stanza]),
            cut: None,
        };
    };
    let mut out = Vec::with_capacity(stanza.written_len_hint(NS_CLIENT));
    let start_tag = stanza.write_omitting(&mut out, NS_CLIENT, &ENVELOPE);
    Written {
        // The writer writes UTF-8 (an element's text is Rust strings).
        payload: String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        cut: Some(Cut {
            from_resource,
            to_resource,
            start_tag,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::RowView;

    use crate::modules::parsed as parse;

    /// The same element, whatever the order of the root's attributes.
    fn same(a: &Element, b: &Element) -> bool {
        let attrs = |e: &Element| {
            let mut v: Vec<(String, String)> = e
                .attrs()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            v.sort();
            v
        };
        a.name() == b.name() && a.ns() == b.ns() && attrs(a) == attrs(b) && a.nodes() == b.nodes()
    }

    /// Each row's stanza, as reading puts it back: the sender's row
    /// (outgoing, peer the recipient) and the recipient's.
    fn read_back(w: &Written<'_>, sender: &str, recipient: &str) -> [Element; 2] {
        let cut = w.cut.unwrap();
        let row = |outgoing, resource, own| RowView {
            id: "i",
            ts: 0,
            resource,
            outgoing,
            payload: &w.payload,
            own_resource: Some(own),
        };
        let split = |jid: &str| {
            let (u, d) = jid.split_once('@').unwrap();
            (u.to_string(), d.to_string())
        };
        let (su, sd) = split(sender);
        let (ru, rd) = split(recipient);
        let sent = row(true, cut.to_resource, cut.from_resource);
        let received = row(false, cut.from_resource, cut.to_resource);
        [
            parse(&sent.stanza(&su, &sd, recipient)),
            parse(&received.stanza(&ru, &rd, sender)),
        ]
    }

    #[test]
    fn a_chat_message_is_kept_without_its_envelope_and_read_back_whole() {
        let (romeo, juliet) = ("romeo@montague.lit", "juliet@capulet.lit");
        for (xml, from_res, to_res) in [
            (
                "<message type='chat' to='juliet@capulet.lit/balcony' id='a1' from='romeo@montague.lit/orchard'><body>Art thou not Romeo?</body></message>",
                "orchard",
                "balcony",
            ),
            (
                "<message from='romeo@montague.lit/a/b c' to='juliet@capulet.lit' xml:lang='en'><body>a &amp; b</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
                "a/b c",
                "",
            ),
            (
                "<message to='juliet@capulet.lit' from='romeo@montague.lit'/>",
                "",
                "",
            ),
        ] {
            let stanza = parse(xml);
            let w = write(&stanza, romeo, from_res, juliet, to_res);
            let cut = w.cut.expect(xml);
            assert_eq!((cut.from_resource, cut.to_resource), (from_res, to_res));
            assert!(w.payload.starts_with("<message"), "{}", w.payload);
            for gone in ["from=", "to=", "xmlns='jabber:client'"] {
                assert!(!w.payload[..cut.start_tag].contains(gone), "{}", w.payload);
            }
            let full = crate::modules::xml_for_storage([&stanza]);
            assert!(w.payload.len() < full.len());
            // The start tag's length is the start tag's.
            let tag_end = w.payload.find('>').unwrap() + 1;
            assert_eq!(cut.start_tag, tag_end, "{}", w.payload);
            for back in read_back(&w, romeo, juliet) {
                assert!(same(&back, &stanza), "{xml}: {back:?}");
            }
        }
    }

    #[test]
    fn a_message_the_rows_do_not_name_is_kept_whole() {
        let (romeo, juliet) = ("romeo@montague.lit", "juliet@capulet.lit");
        let to_j = "to='juliet@capulet.lit/balcony'";
        for (xml, from_res, to_res) in [
            // The resources the rows record are not the stanza's.
            (format!("<message {to_j} from='romeo@montague.lit/orchard'><body/></message>"), "garden", "balcony"),
            (format!("<message {to_j} from='romeo@montague.lit/orchard'><body/></message>"), "orchard", ""),
            (format!("<message {to_j} from='romeo@montague.lit'><body/></message>"), "orchard", "balcony"),
            // Someone else's JIDs.
            (format!("<message {to_j} from='tybalt@capulet.lit/orchard'><body/></message>"), "orchard", "balcony"),
            ("<message to='juliet@capulet.litx/balcony' from='romeo@montague.lit/orchard'><body/></message>".into(), "orchard", "balcony"),
            // An empty resource is no JID.
            (format!("<message {to_j} from='romeo@montague.lit/'><body/></message>"), "", "balcony"),
            // A character the writer escapes.
            ("<message to='juliet@capulet.lit/a&amp;b' from='romeo@montague.lit/orchard'><body/></message>".into(), "orchard", "a&b"),
            // No `from`; another stanza.
            (format!("<message {to_j}><body/></message>"), "", "balcony"),
            (format!("<presence {to_j} from='romeo@montague.lit/orchard'/>"), "orchard", "balcony"),
        ] {
            let stanza = parse(&xml);
            let w = write(&stanza, romeo, from_res, juliet, to_res);
            assert_eq!(w.cut, None, "{xml}");
            assert_eq!(w.payload, crate::modules::xml_for_storage([&stanza]));
        }
        // Not jabber:client (from a server-to-server stream).
        let s2s = Element::new("message", "jabber:server")
            .with_attr("from", romeo)
            .with_attr("to", juliet);
        assert_eq!(write(&s2s, romeo, "", juliet, "").cut, None);
    }
}
