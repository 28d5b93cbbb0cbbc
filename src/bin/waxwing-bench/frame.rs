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
