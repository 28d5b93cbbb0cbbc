//! Finds where each top-level element of a stream ends, from its bytes
//! alone, so that a reader can recognise the bulk traffic of a run (group
//! chat deliveries) without building an element for each.
//!
//! Why: the tool runs on the same two cores as the server it measures. At
//! group chat saturation it spent about as much CPU parsing each delivery
//! into an `Element` (names, namespaces, attribute maps, allocations) as the
//! server spent producing it, so the machine, not the server, set the
//! ceiling. Framing is a single pass over the bytes with a depth counter;
//! anything the framer does not handle (processing instructions, comments,
//! CDATA, text at the top level) ends fast mode and the rest of the stream
//! goes to the full parser, which keeps every check.

use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Readers frame the stream once their parser stands between stanzas;
/// `--parse-every-delivery` clears it (every stanza through the parser).
pub static FAST: AtomicBool = AtomicBool::new(true);

/// The framer met markup it leaves to the full parser.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsupported;

/// Inside a tag: what has been seen of it so far.
#[derive(Clone, Copy)]
struct Tag {
    /// Only the `<` so far.
    first: bool,
    /// `</…>`.
    end: bool,
    /// The open quote of an attribute value, or 0.
    quote: u8,
    /// The byte before the current one (`/` before `>` closes an empty element).
    prev: u8,
}

/// The receive buffer and the resumable framing state. Feed it bytes that
/// start at a top-level boundary (after the stream header and after any
/// complete stanza).
pub struct Framer {
    buf: Vec<u8>,
    /// Start of the element being framed.
    start: usize,
    /// How far the bytes were examined.
    pos: usize,
    depth: u32,
    tag: Option<Tag>,
}

impl Default for Framer {
    fn default() -> Self {
        Framer {
            buf: Vec::with_capacity(16384),
            start: 0,
            pos: 0,
            depth: 0,
            tag: None,
        }
    }
}

impl Framer {
    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The bytes of a frame returned by [`next`](Self::next); valid until
    /// the next `feed`.
    pub fn bytes(&self, r: Range<usize>) -> &[u8] {
        &self.buf[r]
    }

    /// What is buffered and not framed yet (for the full parser when fast
    /// mode ends).
    pub fn rest(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The next complete top-level element (or the stream's end tag), if
    /// its last byte has arrived.
    pub fn next(&mut self) -> Option<Result<Range<usize>, Unsupported>> {
        while self.pos < self.buf.len() {
            // Most bytes are text or attribute values, which change nothing
            // until the byte that ends them: jump there (SIMD search) and
            // let the byte-wise step below handle that byte. A delivery is
            // framed in a few searches instead of a step per byte.
            if !self.skip() {
                return None;
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            let Some(tag) = &mut self.tag else {
                if b == b'<' {
                    self.tag = Some(Tag {
                        first: true,
                        end: false,
                        quote: 0,
                        prev: b'<',
                    });
                } else if self.depth == 0 {
                    if !matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                        return Some(Err(Unsupported));
                    }
                    // Whitespace between stanzas is nobody's.
                    self.start = self.pos;
                }
                continue;
            };
            if tag.quote != 0 {
                if b == tag.quote {
                    tag.quote = 0;
                }
            } else if tag.first && matches!(b, b'?' | b'!') {
                return Some(Err(Unsupported));
            } else if tag.first && b == b'/' {
                tag.end = true;
            } else if b == b'\'' || b == b'"' {
                tag.quote = b;
            } else if b == b'>' {
                let (end, empty) = (tag.end, tag.prev == b'/');
                self.tag = None;
                if end {
                    // At depth 0 this is the stream's own end tag: a frame
                    // of its own, for the parser to report.
                    self.depth = self.depth.saturating_sub(1);
                } else if !empty {
                    self.depth += 1;
                }
                if self.depth == 0 {
                    let frame = self.start..self.pos;
                    self.start = self.pos;
                    return Some(Ok(frame));
                }
                continue;
            }
            tag.first = false;
            tag.prev = b;
        }
        None
    }
}

impl Framer {
    /// Moves `pos` to the next byte that can change the framing state,
    /// keeping `prev` as the byte-wise walk would have left it. False when
    /// no such byte is buffered yet (everything up to the end is skipped).
    fn skip(&mut self) -> bool {
        let rest = &self.buf[self.pos..];
        let found = match &mut self.tag {
            // Text inside an element: only `<` matters.
            None if self.depth > 0 => memchr::memchr(b'<', rest),
            // Between stanzas every byte is checked (whitespace only).
            None => Some(0),
            // Inside an attribute value: only its closing quote.
            Some(tag) if tag.quote != 0 => memchr::memchr(tag.quote, rest),
            // The byte after `<` decides `<?`, `<!`, `</`.
            Some(tag) if tag.first => Some(0),
            // In a tag: a quote or `>`; `>` needs the byte before it (`/>`).
            Some(tag) => {
                let at = memchr::memchr3(b'\'', b'"', b'>', rest);
                if let Some(i) = at.filter(|&i| i > 0) {
                    tag.prev = rest[i - 1];
                }
                at
            }
        };
        match found {
            Some(i) => {
                self.pos += i;
                true
            }
            None => {
                if let Some(tag) = &mut self.tag {
                    if tag.quote == 0 && !tag.first {
                        if let Some(&last) = rest.last() {
                            tag.prev = last;
                        }
                    }
                }
                self.pos = self.buf.len();
                false
            }
        }
    }
}

/// The start tag of `frame` (from after the name to before `>` or `/>`)
/// when the frame is an element named `name`.
pub fn start_tag<'a>(frame: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = frame.strip_prefix(b"<")?.strip_prefix(name)?;
    if !matches!(
        rest.first(),
        Some(b' ' | b'\t' | b'\r' | b'\n' | b'>' | b'/')
    ) {
        return None;
    }
    let mut quote = 0u8;
    for (i, &c) in rest.iter().enumerate() {
        if quote != 0 {
            if c == quote {
                quote = 0;
            }
        } else if c == b'\'' || c == b'"' {
            quote = c;
        } else if c == b'>' {
            let tag = &rest[..i];
            return Some(tag.strip_suffix(b"/").unwrap_or(tag));
        }
    }
    None
}

/// The raw value of attribute `key` in a start tag from [`start_tag`].
/// None when it is absent, when the tag is not the plain `key='value'`
/// shape this reads, or when the value holds a reference (`&`): the caller
/// leaves such a stanza to the parser.
pub fn attr<'a>(tag: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut rest = tag;
    loop {
        rest = rest.trim_ascii_start();
        if rest.is_empty() {
            return None;
        }
        let eq = rest.iter().position(|&c| c == b'=')?;
        let name = rest[..eq].trim_ascii_end();
        let after = rest[eq + 1..].trim_ascii_start();
        let quote = *after.first()?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let len = after[1..].iter().position(|&c| c == quote)?;
        let value = &after[1..1 + len];
        if name == key {
            return (!value.contains(&b'&')).then_some(value);
        }
        rest = &after[len + 2..];
    }
}

/// A needle searched for in every delivery (`NEEDLE.find(hay)`), with its
/// searcher built once: `memmem::find` builds one per call, which was 2–3%
/// of the tool's CPU at group chat's paced rates.
pub type Needle = LazyLock<Finder<'static>>;

/// `<body>`.
pub static BODY_OPEN: Needle = LazyLock::new(|| Finder::new(b"<body>"));
/// `</body>`.
pub static BODY_CLOSE: Needle = LazyLock::new(|| Finder::new(b"</body>"));
/// The namespace of carbon copies (XEP-0280).
pub static CARBONS_NS: Needle = LazyLock::new(|| Finder::new(b"urn:xmpp:carbons"));

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]]) -> Vec<Result<String, Unsupported>> {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c);
            while let Some(r) = f.next() {
                let stop = r.is_err();
                out.push(r.map(|r| String::from_utf8_lossy(f.bytes(r)).into_owned()));
                if stop {
                    return out;
                }
            }
        }
        out
    }

    #[test]
    fn frames_nested_empty_and_quoted() {
        let xml = b"<message to='a' x=\"b>c\"><body>hi / there</body><x a='/>'/></message> \n\
                    <presence/><iq id='1'><q xmlns='q'/></iq></stream:stream>";
        let got = frames(&[xml]);
        assert_eq!(
            got,
            vec![
                Ok("<message to='a' x=\"b>c\"><body>hi / there</body><x a='/>'/></message>".into()),
                Ok("<presence/>".into()),
                Ok("<iq id='1'><q xmlns='q'/></iq>".into()),
                Ok("</stream:stream>".into()),
            ]
        );
    }

    #[test]
    fn frames_quoted_and_empty_split_anywhere_in_two_or_three() {
        // Cuts inside attribute values, text, before `/>` and between
        // `/` and `>`: the skipping scan must keep its state across feeds.
        let xml: &[u8] = b"<m t='a>b' u=\"c'd\"><b>x / y &gt; z</b><e a='/>'/></m><p/>";
        let want = vec![
            Ok("<m t='a>b' u=\"c'd\"><b>x / y &gt; z</b><e a='/>'/></m>".to_string()),
            Ok("<p/>".to_string()),
        ];
        for i in 1..xml.len() {
            assert_eq!(frames(&[&xml[..i], &xml[i..]]), want, "{i}");
            for j in i + 1..xml.len() {
                assert_eq!(frames(&[&xml[..i], &xml[i..j], &xml[j..]]), want, "{i} {j}");
            }
        }
    }

    #[test]
    fn frames_split_anywhere() {
        let xml: &[u8] = b"<a b='1'><c/>t</a><d/>";
        for cut in 1..xml.len() {
            let got = frames(&[&xml[..cut], &xml[cut..]]);
            assert_eq!(
                got,
                vec![Ok("<a b='1'><c/>t</a>".into()), Ok("<d/>".into())],
                "{cut}"
            );
        }
    }

    #[test]
    fn reads_start_tags_and_attributes() {
        let m = b"<message from='r@c/n' type=\"groupchat\" id = 'a>b'><body>x</body></message>";
        let tag = start_tag(m, b"message").unwrap();
        assert_eq!(attr(tag, b"type"), Some(&b"groupchat"[..]));
        assert_eq!(attr(tag, b"id"), Some(&b"a>b"[..]));
        assert_eq!(attr(tag, b"from"), Some(&b"r@c/n"[..]));
        assert_eq!(attr(tag, b"to"), None);
        assert!(start_tag(m, b"mess").is_none());
        assert!(start_tag(b"<presence/>", b"message").is_none());
        assert_eq!(start_tag(b"<presence/>", b"presence"), Some(&b""[..]));
        // A value with a reference is left to the parser; so is a broken tag.
        let tag = start_tag(b"<message id='a&amp;b' type='chat'/>", b"message").unwrap();
        assert_eq!(attr(tag, b"id"), None);
        assert_eq!(attr(tag, b"type"), Some(&b"chat"[..]));
        assert_eq!(attr(b" id=unquoted", b"id"), None);
        // A name inside another attribute's value is not an attribute.
        let tag = start_tag(b"<message to=\"x id='1'\" id='2'/>", b"message").unwrap();
        assert_eq!(attr(tag, b"id"), Some(&b"2"[..]));
    }

    #[test]
    fn leaves_the_rest_to_the_parser() {
        assert_eq!(
            frames(&[b"<a/><?pi?>"]),
            vec![Ok("<a/>".into()), Err(Unsupported)]
        );
        assert_eq!(frames(&[b"<a><!--c--></a>"]), vec![Err(Unsupported)]);
        assert_eq!(frames(&[b"text"]), vec![Err(Unsupported)]);
        let mut f = Framer::default();
        f.feed(b"<a/><![CDATA[x]]>");
        assert!(matches!(f.next(), Some(Ok(_))));
        assert_eq!(f.next(), Some(Err(Unsupported)));
        assert_eq!(f.rest(), b"<![CDATA[x]]>");
    }
}
