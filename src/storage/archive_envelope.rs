//! An archived chat message kept without its envelope: the root's
//! `xmlns='jabber:client'`, `from` and `to`, which the row names already.
//!
//! Why (issue #11): a message between two local users is stored twice,
//! in the sender's archive and in the recipient's, and every byte of it
//! is written to SQLite's WAL and written again by the checkpoint. Its
//! root start tag repeats what the archive row holds: the owner's and the
//! peer's bare JIDs (the block's owner and peer) and the peer's resource
//! (the row's `resource`). Only the owner's own resource is not in the
//! row. For a chat message with a short body the envelope is a third of
//! the stored bytes; measured, the archive's server time per message
//! falls by about 4.6 ns for each byte a row saves.
//!
//! So a row may keep the stanza with the envelope cut out and the owner's
//! resource beside it ([`split`]); reading it puts the envelope back
//! ([`restore`]). A stanza is split only when putting it back gives the
//! same XML: a `jabber:client` `<message/>` whose `from` and `to` are
//! exactly the JIDs the row names, written without character references
//! (so the text compared is the text restored). Anything else is kept
//! whole. The restored root lists `xmlns`, `from` and `to` first; the
//! order of attributes carries no meaning in XML.

use std::borrow::Cow;
use std::ops::Range;

/// How the archive's serialization of a `jabber:client` message begins.
const START: &str = "<message xmlns='jabber:client'";
/// The start of a message without its `xmlns`.
const NAME: &str = "<message";

/// A stanza without its envelope: the pieces of its text that stay, in
/// order, and the owner's resource ("" when the owner's side was a bare
/// JID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split<'a> {
    pub own_resource: &'a str,
    pieces: [&'a str; 4],
}

impl<'a> Split<'a> {
    /// The text kept, in pieces.
    pub fn pieces(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.pieces.iter().copied()
    }

    /// The length of the text kept.
    pub fn kept_len(&self) -> usize {
        self.pieces.iter().map(|p| p.len()).sum()
    }
}

/// Who the row is about: the owner's bare JID in its two parts, the
/// peer's bare JID, the peer's resource ("" for none), and whether the
/// owner sent the message.
#[derive(Debug, Clone, Copy)]
pub struct Sides<'a> {
    pub username: &'a str,
    pub domain: &'a str,
    pub peer: &'a str,
    pub peer_resource: &'a str,
    pub outgoing: bool,
}

/// Where `byte` first is in `hay`.
fn position(hay: &[u8], byte: u8) -> Option<usize> {
    hay.iter().position(|&c| c == byte)
}

/// `value` is `bare` or `bare/resource` with `resource` as given.
fn is_peer(value: &str, peer: &str, resource: &str) -> bool {
    match value.strip_prefix(peer) {
        Some("") => resource.is_empty(),
        Some(rest) => !resource.is_empty() && rest.strip_prefix('/') == Some(resource),
        None => false,
    }
}

/// The owner's resource if `value` is the owner's bare JID ("") or one of
/// its full JIDs.
fn own_resource<'a>(value: &'a str, username: &str, domain: &str) -> Option<&'a str> {
    let rest = value
        .strip_prefix(username)?
        .strip_prefix('@')?
        .strip_prefix(domain)?;
    match rest {
        "" => Some(""),
        r => r.strip_prefix('/').filter(|r| !r.is_empty()),
    }
}

/// Where a stored message's envelope lies: the spans of its root's `from`
/// and `to` attributes (each with the space before it) and their values.
/// Found once per message; each of its rows then checks its own sides
/// ([`Envelope::split`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    payload: &'a str,
    from: (Range<usize>, &'a str),
    to: (Range<usize>, &'a str),
}

/// The envelope of `payload`, if it is a `jabber:client` message whose
/// root has one `from` and one `to`, written without character
/// references.
pub fn parse(payload: &str) -> Option<Envelope<'_>> {
    let b = payload.as_bytes();
    let mut at = START.len();
    if !payload.starts_with(START) {
        return None;
    }
    // The attributes that follow: ` name='value'` each, values with no
    // quote (the writer escapes it), until the tag ends.
    let (mut from, mut to) = (None, None);
    loop {
        match b.get(at)? {
            b'>' | b'/' => break,
            b' ' => {}
            _ => return None,
        }
        let start = at;
        // Byte searches: attribute names and values are short, and
        // `str::find` with a char spent more in its set-up than in the
        // search (`perf`).
        let eq = at + position(&b[at..], b'=')?;
        let name = &payload[at + 1..eq];
        if b.get(eq + 1) != Some(&b'\'')
            || name.is_empty()
            || name.bytes().any(|c| matches!(c, b' ' | b'>' | b'\''))
        {
            return None;
        }
        let value_start = eq + 2;
        let value_end = value_start + position(&b[value_start..], b'\'')?;
        at = value_end + 1;
        let slot = match name {
            "from" => &mut from,
            "to" => &mut to,
            "xmlns" => return None,
            _ => continue,
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some((start..at, &payload[value_start..value_end]));
    }
    let (from, to) = (from?, to?);
    if from.1.as_bytes().contains(&b'&') || to.1.as_bytes().contains(&b'&') {
        return None;
    }
    Some(Envelope { payload, from, to })
}

impl<'a> Envelope<'a> {
    /// The message without its envelope, for the row of `sides`, when
    /// [`restore`] gives it back.
    pub fn split(&self, sides: &Sides<'_>) -> Option<Split<'a>> {
        if sides.username.is_empty() || sides.domain.is_empty() || sides.peer.is_empty() {
            return None;
        }
        let (own, peer) = if sides.outgoing {
            (self.from.1, self.to.1)
        } else {
            (self.to.1, self.from.1)
        };
        if !is_peer(peer, sides.peer, sides.peer_resource) {
            return None;
        }
        let own_resource = own_resource(own, sides.username, sides.domain)?;
        let (first, second) = if self.from.0.start < self.to.0.start {
            (&self.from.0, &self.to.0)
        } else {
            (&self.to.0, &self.from.0)
        };
        let p = self.payload;
        Some(Split {
            own_resource,
            pieces: [
                NAME,
                &p[START.len()..first.start],
                &p[first.end..second.start],
                &p[second.end..],
            ],
        })
    }
}

/// `payload` without its envelope, when [`restore`] gives it back.
#[cfg(test)]
pub fn split<'a>(payload: &'a str, sides: &Sides<'_>) -> Option<Split<'a>> {
    parse(payload)?.split(sides)
}

/// The stanza a row without its envelope holds: `kept` (the text [`split`]
/// kept, starting `<message`) with the envelope of `sides` and
/// `own_resource` put back. None if `kept` is not such a text.
pub fn restore(kept: &str, own_resource: &str, sides: &Sides<'_>) -> Option<String> {
    let rest = kept.strip_prefix(NAME)?;
    let jid = |out: &mut String, bare_parts: [&str; 3], resource: &str| {
        for p in bare_parts {
            out.push_str(p);
        }
        if !resource.is_empty() {
            out.push('/');
            out.push_str(resource);
        }
    };
    let owner = [sides.username, "@", sides.domain];
    let peer = [sides.peer, "", ""];
    let (from, to) = if sides.outgoing {
        ((owner, own_resource), (peer, sides.peer_resource))
    } else {
        ((peer, sides.peer_resource), (owner, own_resource))
    };
    let mut out = String::with_capacity(kept.len() + 96);
    out.push_str(START);
    out.push_str(" from='");
    jid(&mut out, from.0, from.1);
    out.push_str("' to='");
    jid(&mut out, to.0, to.1);
    out.push('\'');
    out.push_str(rest);
    Some(out)
}

/// The stanza of a row: `stored` itself, or with its envelope put back
/// when the row holds `own_resource` (a corrupt row restores to nothing).
pub fn stanza<'a>(stored: &'a str, own_resource: Option<&str>, sides: &Sides<'_>) -> Cow<'a, str> {
    match own_resource {
        None => Cow::Borrowed(stored),
        Some(r) => Cow::Owned(restore(stored, r, sides).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROMEO: &str = "romeo@montague.lit";

    /// Juliet's archive, with Romeo.
    fn sides(peer_resource: &'static str, outgoing: bool) -> Sides<'static> {
        Sides {
            username: "juliet",
            domain: "capulet.lit",
            peer: ROMEO,
            peer_resource,
            outgoing,
        }
    }

    fn kept(s: &Split<'_>) -> String {
        s.pieces().collect()
    }

    /// The attributes of the root start tag, sorted: the restored stanza
    /// must carry the same, whatever their order.
    fn root_attributes(xml: &str) -> Vec<(String, String)> {
        let root = crate::modules::xml_from_storage(xml, 16).unwrap().remove(0);
        let mut attrs: Vec<(String, String)> = root
            .attrs()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attrs.push(("{ns}".into(), root.ns().to_string()));
        attrs.sort();
        attrs
    }

    #[test]
    fn a_chat_message_loses_its_envelope_and_gets_it_back() {
        for (xml, s) in [
            // Received from Romeo's orchard resource on Juliet's balcony.
            (
                "<message xmlns='jabber:client' type='chat' to='juliet@capulet.lit/balcony' id='a1' from='romeo@montague.lit/orchard'><body>Art thou not Romeo?</body></message>",
                sides("orchard", false),
            ),
            // Sent by Juliet to Romeo's bare JID.
            (
                "<message xmlns='jabber:client' from='juliet@capulet.lit/balcony' to='romeo@montague.lit'><body>a &amp; b</body></message>",
                sides("", true),
            ),
            // Sent to a bare JID, from Romeo's; the root empty.
            (
                "<message xmlns='jabber:client' to='juliet@capulet.lit' from='romeo@montague.lit/a/b c'/>",
                sides("a/b c", false),
            ),
        ] {
            let split = split(xml, &s).expect(xml);
            let kept = kept(&split);
            assert!(kept.starts_with("<message"), "{kept}");
            assert!(!kept.contains("from=") && !kept.contains("to=") && !kept.contains("xmlns"));
            assert_eq!(kept.len(), split.kept_len());
            let back = restore(&kept, split.own_resource, &s).unwrap();
            assert_eq!(root_attributes(&back), root_attributes(xml), "{back}");
            // Only the root's attributes moved.
            let body = |x: &str| x[x.find('>').unwrap()..].to_string();
            assert_eq!(body(&back), body(xml));
            assert_eq!(stanza(&kept, Some(split.own_resource), &s), back);
        }
        assert_eq!(stanza("<m/>", None, &sides("", false)), "<m/>");
    }

    #[test]
    fn what_the_row_does_not_name_is_kept_whole() {
        let to_j = "to='juliet@capulet.lit/balcony'";
        for (xml, s) in [
            // The peer's resource is not the row's.
            (format!("<message xmlns='jabber:client' {to_j} from='romeo@montague.lit/orchard'/>"), sides("garden", false)),
            (format!("<message xmlns='jabber:client' {to_j} from='romeo@montague.lit/orchard'/>"), sides("", false)),
            (format!("<message xmlns='jabber:client' {to_j} from='romeo@montague.lit'/>"), sides("orchard", false)),
            // Another peer, or another owner.
            (format!("<message xmlns='jabber:client' {to_j} from='tybalt@capulet.lit/x'/>"), sides("x", false)),
            ("<message xmlns='jabber:client' to='nurse@capulet.lit/x' from='romeo@montague.lit/orchard'/>".into(), sides("orchard", false)),
            ("<message xmlns='jabber:client' to='juliet@capulet.litx' from='romeo@montague.lit/orchard'/>".into(), sides("orchard", false)),
            // An empty resource is no JID.
            ("<message xmlns='jabber:client' to='juliet@capulet.lit/' from='romeo@montague.lit/orchard'/>".into(), sides("orchard", false)),
            // The direction is the row's.
            (format!("<message xmlns='jabber:client' {to_j} from='romeo@montague.lit/orchard'/>"), sides("orchard", true)),
            // Character references: the text is not the JID.
            ("<message xmlns='jabber:client' to='juliet@capulet.lit/a&amp;b' from='romeo@montague.lit/orchard'/>".into(), sides("orchard", false)),
            // No `from`, two `to`s, another namespace, another stanza,
            // double quotes, a second xmlns, a broken tag.
            (format!("<message xmlns='jabber:client' {to_j}/>"), sides("", false)),
            (format!("<message xmlns='jabber:client' {to_j} {to_j} from='romeo@montague.lit'/>"), sides("", false)),
            (format!("<message xmlns='jabber:server' {to_j} from='romeo@montague.lit'/>"), sides("", false)),
            (format!("<presence xmlns='jabber:client' {to_j} from='romeo@montague.lit'/>"), sides("", false)),
            (format!("<message xmlns='jabber:client' {to_j} from=\"romeo@montague.lit\"/>"), sides("", false)),
            (format!("<message xmlns='jabber:client' xmlns='x' {to_j} from='romeo@montague.lit'/>"), sides("", false)),
            (format!("<message xmlns='jabber:client' {to_j} from='romeo@montague.lit"), sides("", false)),
            (format!("<message xmlns='jabber:client'{to_j} from='romeo@montague.lit'/>"), sides("", false)),
        ] {
            assert_eq!(split(&xml, &s), None, "{xml}");
        }
        assert_eq!(restore("<presence/>", "", &sides("", false)), None);
    }
}
