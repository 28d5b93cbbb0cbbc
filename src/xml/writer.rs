//! Serialization: escaping, [`Element::write_to`], and stream open/close tags.
//!
//! Output is canonical for the parser in `parser.rs`: elements are written unprefixed
//! with an `xmlns` only where the namespace changes, stream-namespace elements use the
//! `stream:` prefix the stream header declares, attribute values use single quotes.
//! Writing never recurses, so a hand-built tree of any depth is safe to write.

use super::element::{Element, Node};
use super::parser::StreamHeader;
use super::NS_STREAMS;
use smallvec::SmallVec;

/// How deep a tree's walk goes before its stack moves to the heap.
const WALK_DEPTH: usize = 16;

/// Append `s` escaped for character data: `&`, `<`, `>` (so `]]>` cannot appear) and
/// `\r` (as `&#xD;`, which a parser's line-end normalization would otherwise turn into `\n`).
pub fn escape_text(s: &str, out: &mut Vec<u8>) {
    escape_with(s, out, &TEXT);
}

/// Append `s` escaped for an attribute value in either quote style. Tab, newline and
/// carriage return become character references because attribute-value normalization
/// would otherwise turn them into spaces.
pub fn escape_attr(s: &str, out: &mut Vec<u8>) {
    escape_with(s, out, &ATTR);
}

/// A serialized stanza without `to`, with `to="…"` put in at byte `at`
/// (just after the element's name): a room's broadcast is serialized once
/// and addressed per recipient this way. Exactly the size it ends up (a
/// JID rarely needs escaping), so `Bytes` takes the buffer as it is.
pub fn with_to(stanza: &[u8], at: usize, to: &str) -> Vec<u8> {
    let at = at.min(stanza.len());
    let mut out = Vec::with_capacity(stanza.len() + to.len() + 6);
    out.extend_from_slice(&stanza[..at]);
    out.extend_from_slice(b" to=\"");
    escape_attr(to, &mut out);
    out.push(b'"');
    out.extend_from_slice(&stanza[at..]);
    out
}

/// Whether [`escape_attr`] writes `s` as it is.
pub fn attr_needs_no_escaping(s: &str) -> bool {
    s.bytes().all(|b| !ATTR.special[b as usize])
}

/// What one context escapes: its replacements, and a table marking their
/// bytes, made from them. The scan for the next byte to replace is a load
/// and a test per byte, where a `match` per byte cost about twenty
/// instructions (a room's fan-out escapes each recipient's JID once per
/// delivery; callgrind put it at a tenth of a delivery's instructions).
struct Escapes {
    replacements: &'static [(u8, &'static [u8])],
    special: [bool; 256],
}

impl Escapes {
    const fn new(replacements: &'static [(u8, &'static [u8])]) -> Escapes {
        let mut special = [false; 256];
        let mut i = 0;
        while i < replacements.len() {
            special[replacements[i].0 as usize] = true;
            i += 1;
        }
        Escapes {
            replacements,
            special,
        }
    }

    /// What `b`, a marked byte, is written as.
    fn replacement(&self, b: u8) -> &'static [u8] {
        self.replacements
            .iter()
            .find(|(c, _)| *c == b)
            .map_or(&[][..], |(_, r)| *r)
    }
}

const TEXT: Escapes = Escapes::new(&[
    (b'&', b"&amp;"),
    (b'<', b"&lt;"),
    (b'>', b"&gt;"),
    (b'\r', b"&#xD;"),
]);

const ATTR: Escapes = Escapes::new(&[
    (b'&', b"&amp;"),
    (b'<', b"&lt;"),
    (b'>', b"&gt;"),
    (b'\'', b"&apos;"),
    (b'"', b"&quot;"),
    (b'\t', b"&#x9;"),
    (b'\n', b"&#xA;"),
    (b'\r', b"&#xD;"),
]);

/// Copy unescaped runs in one go; most text needs no escaping at all.
#[inline]
fn escape_with(s: &str, out: &mut Vec<u8>, escapes: &Escapes) {
    let bytes = s.as_bytes();
    let mut start = 0;
    while let Some(skip) = bytes[start..]
        .iter()
        .position(|&b| escapes.special[b as usize])
    {
        let i = start + skip;
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escapes.replacement(bytes[i]));
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Write `<?xml version='1.0'?><stream:stream xmlns='{default_ns}'
/// xmlns:stream='http://etherx.jabber.org/streams' xmlns:p='…'… k='v'…>`.
///
/// `default_ns` is omitted when empty; `extra_prefixes` are (prefix, uri) pairs such as
/// `("db", "jabber:server:dialback")`; `attrs` are (qualified name, value) pairs such as
/// `("to", "example.com")`, `("xml:lang", "en")`, written in the given order.
pub fn write_stream_header(
    out: &mut Vec<u8>,
    default_ns: &str,
    extra_prefixes: &[(&str, &str)],
    attrs: &[(&str, &str)],
) {
    out.extend_from_slice(b"<?xml version='1.0'?><stream:stream");
    if !default_ns.is_empty() {
        write_attr(out, "xmlns", default_ns);
    }
    write_attr(out, "xmlns:stream", NS_STREAMS);
    for (prefix, uri) in extra_prefixes {
        out.extend_from_slice(b" xmlns:");
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(b"='");
        escape_attr(uri, out);
        out.push(b'\'');
    }
    for (k, v) in attrs {
        write_attr(out, k, v);
    }
    out.push(b'>');
}

/// Write the stream close tag `</stream:stream>`.
pub fn write_stream_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"</stream:stream>");
}

impl StreamHeader {
    /// Write this header as an opening stream tag with [`write_stream_header`]: `default_ns`,
    /// `prefixes`, then `to`, `from`, `id`, `version`, `xml:lang` where present. `name` and
    /// `ns` are not used: the written element is always `stream:stream` in [`NS_STREAMS`].
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let prefixes: Vec<(&str, &str)> = self
            .prefixes
            .iter()
            .filter(|(p, _)| p != "stream")
            .map(|(p, u)| (p.as_str(), u.as_str()))
            .collect();
        let mut attrs: Vec<(&str, &str)> = Vec::with_capacity(5);
        for (k, v) in [
            ("to", &self.to),
            ("from", &self.from),
            ("id", &self.id),
            ("version", &self.version),
            ("xml:lang", &self.lang),
        ] {
            if let Some(v) = v {
                attrs.push((k, v));
            }
        }
        write_stream_header(
            out,
            self.default_ns.as_deref().unwrap_or(""),
            &prefixes,
            &attrs,
        );
    }
}

fn write_attr(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"='");
    escape_attr(value, out);
    out.push(b'\'');
}

/// The prefix an element is written with: `stream:` for the stream
/// namespace (bound by every stream header), else `root_prefix` when the
/// caller says the element's namespace is bound to it; None: unprefixed.
fn prefix_of<'a>(e: &Element, root_prefix: Option<&'a str>) -> Option<&'a str> {
    if &*e.ns == NS_STREAMS {
        Some("stream")
    } else {
        root_prefix
    }
}

/// Write the start tag of `e` where `scope_ns` is the default namespace in effect.
/// Returns the default namespace its children see.
fn write_start<'a>(
    e: &'a Element,
    scope_ns: &'a str,
    prefix: Option<&str>,
    omit: &[&str],
    out: &mut Vec<u8>,
) -> &'a str {
    out.push(b'<');
    // A prefixed element's namespace is declared by the stream header, and
    // it does not change the default namespace for its children.
    let child_ns = if let Some(p) = prefix {
        out.extend_from_slice(p.as_bytes());
        out.push(b':');
        out.extend_from_slice(e.name.as_bytes());
        scope_ns
    } else {
        out.extend_from_slice(e.name.as_bytes());
        if &*e.ns != scope_ns {
            write_attr(out, "xmlns", &e.ns);
        }
        &e.ns
    };
    for (k, v) in &e.attrs {
        // `xmlns` is the element's namespace, written above; a stray one set by hand
        // would make a duplicate attribute.
        if k != "xmlns" && !omit.contains(&&**k) {
            write_attr(out, k, v);
        }
    }
    if e.children.is_empty() {
        out.extend_from_slice(b"/>");
    } else {
        out.push(b'>');
    }
    child_ns
}

fn write_end(e: &Element, prefix: Option<&str>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"</");
    if let Some(p) = prefix {
        out.extend_from_slice(p.as_bytes());
        out.push(b':');
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(b'>');
}

impl Element {
    /// Serialize. `parent_ns` is the namespace in scope where this element is written
    /// (e.g. "jabber:client" for stanzas on a c2s stream); an `xmlns='…'` declaration is
    /// written only when `self.ns` differs from it, and children likewise inherit.
    /// Elements in [`NS_STREAMS`] are written with the `stream:` prefix and no `xmlns`
    /// (the stream header declares it). An attribute named exactly `xmlns` is skipped.
    pub fn write_to(&self, out: &mut Vec<u8>, parent_ns: &str) {
        self.write_tree(out, parent_ns, None, &[]);
    }

    /// Serialize as [`write_to`](Self::write_to), without the attributes
    /// of this element (not its children) named in `omit`; returns the
    /// length of its start tag. What the archive keeps of a message
    /// without its envelope (`modules::mam::envelope`).
    pub fn write_omitting(&self, out: &mut Vec<u8>, parent_ns: &str, omit: &[&str]) -> usize {
        self.write_tree(out, parent_ns, None, omit)
    }

    /// Write this element's start tag alone (`<name …>`, or `<name …/>`
    /// without children), as [`write_to`](Self::write_to) begins.
    pub fn write_start_tag(&self, out: &mut Vec<u8>, parent_ns: &str) {
        write_start(self, parent_ns, prefix_of(self, None), &[], out);
    }

    /// Serialize as [`write_to`](Self::write_to), but this element (not its
    /// children) with `prefix`, which the stream header binds to its
    /// namespace: dialback elements are written `<db:result/>`, as some
    /// servers (ejabberd) recognise them only by that name.
    pub fn write_prefixed_to(&self, out: &mut Vec<u8>, parent_ns: &str, prefix: &str) {
        self.write_tree(out, parent_ns, Some(prefix), &[]);
    }

    /// Writes the tree; returns the length of the root's start tag.
    fn write_tree(
        &self,
        out: &mut Vec<u8>,
        parent_ns: &str,
        root_prefix: Option<&str>,
        omit: &[&str],
    ) -> usize {
        let root_prefix = prefix_of(self, root_prefix);
        let start = out.len();
        let child_ns = write_start(self, parent_ns, root_prefix, omit, out);
        let start_tag = out.len() - start;
        if self.children.is_empty() {
            return start_tag;
        }
        // An explicit stack instead of recursion: depth is bounded for parsed trees,
        // but not for trees built in code. Stanzas are shallow: it stays on
        // the thread's stack (no allocation per stanza written).
        let mut stack: SmallVec<[(&Element, usize, &str); WALK_DEPTH]> = SmallVec::new();
        stack.push((self, 0, child_ns));
        while let Some(top) = stack.last_mut() {
            let (el, next, scope) = (top.0, top.1, top.2);
            match el.children.get(next) {
                Some(Node::Text(t)) => {
                    top.1 += 1;
                    escape_text(t, out);
                }
                Some(Node::Element(child)) => {
                    top.1 += 1;
                    let inner = write_start(child, scope, prefix_of(child, None), &[], out);
                    if !child.children.is_empty() {
                        stack.push((child, 0, inner));
                    }
                }
                None => {
                    let prefix = if stack.len() == 1 {
                        root_prefix
                    } else {
                        prefix_of(el, None)
                    };
                    write_end(el, prefix, out);
                    stack.pop();
                }
            }
        }
        start_tag
    }

    /// Serialize into a new buffer; see [`write_to`](Self::write_to).
    pub fn to_bytes(&self, parent_ns: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.written_len_hint(parent_ns));
        self.write_to(&mut out, parent_ns);
        out
    }

    /// About how many bytes [`write_to`](Self::write_to) writes with
    /// `parent_ns` in scope: what a buffer for it should start with, so it
    /// is allocated once instead of grown (each growth is a `realloc`,
    /// which takes glibc's arena lock; with two routing threads freeing
    /// each other's stanzas that lock is contended, issue #11). Counts
    /// names, attributes, text and namespace declarations, plus a
    /// sixteenth for escaping; not exact.
    pub fn written_len_hint(&self, parent_ns: &str) -> usize {
        let mut n = 0;
        // Each element with the namespace it is written in.
        let mut stack: SmallVec<[(&Element, &str); WALK_DEPTH]> = SmallVec::new();
        stack.push((self, parent_ns));
        while let Some((el, parent_ns)) = stack.pop() {
            // `<name` `>` `</name>`, ` xmlns='ns'` where it changes, each
            // ` key='value'`.
            n += 2 * el.name.len() + 5;
            if *el.ns != *parent_ns {
                n += el.ns.len() + 9;
            }
            for (k, v) in &el.attrs {
                n += k.len() + v.len() + 4;
            }
            for child in &el.children {
                match child {
                    Node::Text(t) => n += t.len(),
                    Node::Element(e) => stack.push((e, &el.ns)),
                }
            }
        }
        n + n / 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{NS_CLIENT, NS_SERVER};

    fn s(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap_or_default()
    }

    #[test]
    fn escapes() {
        let mut out = Vec::new();
        escape_text("a<b>&c]]>\r\n\t'\"", &mut out);
        assert_eq!(s(out), "a&lt;b&gt;&amp;c]]&gt;&#xD;\n\t'\"");
        let mut out = Vec::new();
        escape_attr("a<b>&c'\"\t\n\r", &mut out);
        assert_eq!(s(out), "a&lt;b&gt;&amp;c&apos;&quot;&#x9;&#xA;&#xD;");
    }

    #[test]
    fn exactly_the_special_characters_are_replaced() {
        for b in 0u8..128 {
            let c = (b as char).to_string();
            let (mut text, mut attr) = (Vec::new(), Vec::new());
            escape_text(&c, &mut text);
            escape_attr(&c, &mut attr);
            assert_eq!(
                text != c.as_bytes(),
                b"&<>\r".contains(&b),
                "text, byte {b}"
            );
            assert_eq!(
                attr != c.as_bytes(),
                b"&<>'\"\t\n\r".contains(&b),
                "attr, byte {b}"
            );
            assert_eq!(attr_needs_no_escaping(&c), attr == c.as_bytes(), "byte {b}");
        }
        let mut out = Vec::new();
        escape_attr("\u{e9}t\u{e9} & caf\u{e9}", &mut out);
        assert_eq!(s(out), "\u{e9}t\u{e9} &amp; caf\u{e9}");
    }

    #[test]
    fn namespaces_written_only_on_change() {
        let msg = Element::new("message", NS_CLIENT)
            .with_attr("to", "juliet@capulet.lit")
            .with_child(Element::new("body", NS_CLIENT).with_text("a & b"))
            .with_child(
                Element::new("x", "urn:x")
                    .with_child(Element::new("y", "urn:x"))
                    .with_child(Element::new("z", "")),
            );
        assert_eq!(
            s(msg.to_bytes(NS_CLIENT)),
            "<message to='juliet@capulet.lit'><body>a &amp; b</body>\
             <x xmlns='urn:x'><y/><z xmlns=''/></x></message>"
        );
        assert_eq!(
            s(Element::new("message", NS_CLIENT).to_bytes(NS_SERVER)),
            "<message xmlns='jabber:client'/>"
        );
    }

    #[test]
    fn stream_namespace_uses_prefix() {
        let features = Element::new("features", NS_STREAMS)
            .with_child(Element::new("bind", "urn:ietf:params:xml:ns:xmpp-bind"))
            .with_child(Element::new("ver", NS_CLIENT));
        assert_eq!(
            s(features.to_bytes(NS_CLIENT)),
            "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><ver/></stream:features>"
        );
    }

    #[test]
    fn root_element_can_take_a_declared_prefix() {
        let db = Element::new("result", "jabber:server:dialback")
            .with_attr("type", "error")
            .with_child(
                Element::new("error", NS_SERVER)
                    .with_child(Element::new("x", "urn:x").with_child(Element::new("y", "urn:x"))),
            );
        let mut out = Vec::new();
        db.write_prefixed_to(&mut out, NS_SERVER, "db");
        assert_eq!(
            s(out),
            "<db:result type='error'><error><x xmlns='urn:x'><y/></x></error></db:result>"
        );
    }

    #[test]
    fn stream_header() {
        let mut out = Vec::new();
        write_stream_header(
            &mut out,
            NS_SERVER,
            &[("db", "jabber:server:dialback")],
            &[("from", "a.example"), ("version", "1.0")],
        );
        assert_eq!(
            s(out),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
             xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
             from='a.example' version='1.0'>"
        );
        let h = StreamHeader {
            default_ns: Some(NS_CLIENT.into()),
            id: Some("abc".into()),
            lang: Some("en".into()),
            ..StreamHeader::default()
        };
        let mut out = Vec::new();
        h.write_to(&mut out);
        write_stream_end(&mut out);
        assert_eq!(
            s(out),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' id='abc' xml:lang='en'></stream:stream>"
        );
    }

    #[test]
    fn the_length_hint_covers_what_a_stanza_writes() {
        let message = Element::new("message", NS_CLIENT)
            .with_attr("from", "juliet@example.com/balcony")
            .with_attr("to", "romeo@example.net")
            .with_attr("type", "chat")
            .with_child(Element::new("body", NS_CLIENT).with_text("Wherefore art thou?"))
            .with_child(
                Element::new("stanza-id", "urn:xmpp:sid:0")
                    .with_attr("by", "romeo@example.net")
                    .with_attr("id", "1k1vpjzkw8cbgmdv5pe"),
            );
        let iq = Element::new("iq", NS_CLIENT)
            .with_attr("type", "result")
            .with_child(
                Element::new("query", "jabber:iq:roster").with_child(
                    Element::new("item", "jabber:iq:roster")
                        .with_attr("jid", "nurse@example.com")
                        .with_child(
                            Element::new("group", "jabber:iq:roster").with_text("Servants"),
                        ),
                ),
            );
        for (el, scope) in [(&message, NS_CLIENT), (&message, ""), (&iq, NS_CLIENT)] {
            let written = el.to_bytes(scope).len();
            let hint = el.written_len_hint(scope);
            // Enough for the buffer to be allocated once, not far more.
            assert!(hint >= written, "hint {hint} < {written}");
            assert!(hint <= written + written / 4, "hint {hint} for {written}");
        }
    }

    #[test]
    fn deep_hand_built_tree_writes_without_recursion() {
        let mut e = Element::new("d", "urn:d");
        for _ in 0..100_000 {
            e = Element::new("d", "urn:d").with_child(e);
        }
        let out = e.to_bytes("");
        // outermost open + close, 99,999 `<d>…</d>` in between, innermost `<d/>`
        assert_eq!(out.len(), "<d xmlns='urn:d'>".len() + 4 + 99_999 * 7 + 4);
        // Dropping is recursive; take the tree apart iteratively for this test.
        let mut cur = Some(e);
        while let Some(mut el) = cur {
            cur = match el.nodes_mut().pop() {
                Some(Node::Element(c)) => Some(c),
                _ => None,
            };
        }
    }
}
