//! The bytes a recipient gets, made from the bytes the archive keeps.
//!
//! Why (issue #11): an archived chat message was serialized twice on the
//! routing thread, once for the archive (`xml_for_storage`: the root
//! carries `xmlns='jabber:client'`) and once more for the recipient's
//! stream (`OutStanza::new`: `jabber:client` is the stream's default, so
//! the root has no `xmlns`), each time walking and escaping the whole
//! tree. The two differ only in that root `xmlns` and in the
//! `<stanza-id/>` appended after the archive's copy was taken; the
//! children are written alike, since both see `jabber:client` as their
//! default namespace. So the recipient's bytes are the archive's with the
//! `xmlns` cut out and the `<stanza-id/>` written in before the end tag.

use bytes::Bytes;

use crate::xml::{Element, NS_CLIENT};

/// How the archive's serialization of a `jabber:client` message begins.
const STORED_START: &[u8] = b"<message xmlns='jabber:client'";
const END: &[u8] = b"</message>";

/// `stanza` as `OutStanza::new` would write it once `added` (if any) is
/// appended to it, from `stored`: `stanza` as `xml_for_storage` wrote it
/// before. None when `stanza` is not a plain `jabber:client` message with
/// children (the router then serializes it as usual).
pub fn from_stored(stored: &str, stanza: &Element, added: Option<&Element>) -> Option<Bytes> {
    if stanza.ns() != NS_CLIENT || stanza.name() != "message" {
        return None;
    }
    let stored = stored.as_bytes();
    let rest = stored.strip_prefix(STORED_START)?;
    // The start tag goes on with an attribute or ends; anything else
    // means the `xmlns` written was not the one expected.
    if !matches!(rest.first(), Some(b' ' | b'>')) {
        return None;
    }
    let inner = rest.strip_suffix(END)?;
    let mut out = Vec::with_capacity(b"<message".len() + inner.len() + tail_len(added));
    out.extend_from_slice(b"<message");
    Some(finish(out, inner, added))
}

/// Bytes after the children: `added` and the end tag.
fn tail_len(added: Option<&Element>) -> usize {
    added.map_or(0, |a| a.written_len_hint(NS_CLIENT)) + END.len()
}

/// `out` (a start tag) with the children's bytes `inner`, `added` and the
/// end tag.
fn finish(mut out: Vec<u8>, inner: &[u8], added: Option<&Element>) -> Bytes {
    out.extend_from_slice(inner);
    if let Some(a) = added {
        a.write_to(&mut out, NS_CLIENT);
    }
    out.extend_from_slice(END);
    Bytes::from(out)
}

/// `stanza` as `OutStanza::new` would write it once `added` (if any) is
/// appended to it, from `kept`: `stanza` as the archive keeps it without
/// its envelope (`envelope.rs`), whose start tag is `start_tag` bytes
/// long. The start tag is written again, whole, from the stanza; the rest
/// is copied. None when `stanza` has no children (nothing to insert into).
pub fn from_kept(
    kept: &str,
    start_tag: usize,
    stanza: &Element,
    added: Option<&Element>,
) -> Option<Bytes> {
    if stanza.ns() != NS_CLIENT || stanza.name() != "message" || stanza.nodes().is_empty() {
        return None;
    }
    let inner = kept.as_bytes().get(start_tag..)?.strip_suffix(END)?;
    // The whole start tag is at most a few attributes longer than the kept one.
    let mut out = Vec::with_capacity(start_tag + 64 + inner.len() + tail_len(added));
    stanza.write_start_tag(&mut out, NS_CLIENT);
    Some(finish(out, inner, added))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::mam::eligible::stanza_id;

    use crate::modules::parsed as parse;

    /// What the router would have written, for each kind of message.
    #[test]
    fn the_recipients_bytes_are_what_the_router_would_write() {
        for xml in [
            "<message to='juliet@capulet.lit/balcony' type='chat' id='a1'><body>Art thou not Romeo?</body></message>",
            "<message to='juliet@capulet.lit' from='romeo@montague.lit/orchard'><body>a &amp; b &lt; c \"d\" 'e'</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            "<message><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2'>AAAA</key></header><payload>BBBB</payload></encrypted><store xmlns='urn:xmpp:hints'/></message>",
            "<message to='a@b' id='x&apos;y'><body xml:lang='en'>\n tabs\tand\rreturns </body><thread>t1</thread></message>",
        ] {
            let stanza = parse(xml);
            let stored = crate::modules::xml_for_storage([&stanza]);
            let sid = stanza_id("juliet@capulet.lit", "1k1wagssh7z0yf6d4ab");
            let made = from_stored(&stored, &stanza, Some(&sid)).expect(xml);
            let mut stamped = stanza.clone();
            stamped.append_child(sid);
            assert_eq!(made, Bytes::from(stamped.to_bytes(NS_CLIENT)), "{xml}");

            let made = from_stored(&stored, &stanza, None).expect(xml);
            assert_eq!(made, Bytes::from(stanza.to_bytes(NS_CLIENT)), "{xml}");
        }
    }

    /// From a message kept without its envelope: the same bytes.
    #[test]
    fn the_recipients_bytes_from_a_message_without_its_envelope() {
        for xml in [
            "<message to='juliet@capulet.lit/balcony' type='chat' id='a1' from='romeo@montague.lit/orchard'><body>Art thou not Romeo?</body></message>",
            "<message to='juliet@capulet.lit' from='romeo@montague.lit/orchard' xml:lang='en'><body>a &amp; b &lt; c</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
        ] {
            let stanza = parse(xml);
            let w = super::super::envelope::write(
                &stanza,
                "romeo@montague.lit",
                "orchard",
                "juliet@capulet.lit",
                super::super::resource_of(stanza.attr("to").unwrap()).as_ref(),
            );
            let cut = w.cut.expect(xml);
            let sid = stanza_id("juliet@capulet.lit", "1k1wagssh7z0yf6d4ab");
            let made = from_kept(&w.payload, cut.start_tag, &stanza, Some(&sid)).expect(xml);
            let mut stamped = stanza.clone();
            stamped.append_child(sid);
            assert_eq!(made, Bytes::from(stamped.to_bytes(NS_CLIENT)), "{xml}");
            let made = from_kept(&w.payload, cut.start_tag, &stanza, None).expect(xml);
            assert_eq!(made, Bytes::from(stanza.to_bytes(NS_CLIENT)), "{xml}");
        }
        // A wrong start tag length, or no children: left to the router.
        let stanza = parse("<message to='a@b' from='c@d'><body>x</body></message>");
        let w = super::super::envelope::write(&stanza, "c@d", "", "a@b", "");
        assert_eq!(
            from_kept(&w.payload, w.payload.len() + 1, &stanza, None),
            None
        );
        let empty = parse("<message to='a@b' from='c@d'/>");
        let w = super::super::envelope::write(&empty, "c@d", "", "a@b", "");
        assert_eq!(
            from_kept(&w.payload, w.cut.unwrap().start_tag, &empty, None),
            None
        );
    }

    #[test]
    fn anything_else_is_left_to_the_router() {
        // No children: written `<message …/>`, nothing to insert into.
        let empty = parse("<message to='a@b'/>");
        let stored = crate::modules::xml_for_storage([&empty]);
        assert_eq!(from_stored(&stored, &empty, None), None);
        // Not jabber:client (from a server-to-server stream).
        let s2s = Element::new("message", "jabber:server")
            .with_child(Element::new("body", "jabber:server").with_text("hi"));
        let stored = crate::modules::xml_for_storage([&s2s]);
        assert_eq!(from_stored(&stored, &s2s, None), None);
        // Bytes that are not this message's storage form.
        let m = parse("<message><body>hi</body></message>");
        assert_eq!(
            from_stored("<message><body>hi</body></message>", &m, None),
            None
        );
        assert_eq!(
            from_stored(
                "<message xmlns='jabber:clientx'><body>hi</body></message>",
                &m,
                None
            ),
            None
        );
    }
}
