//! Incremental token boundary scanner: owns the receive buffer and finds where
//! complete XML tokens (text, tags, CDATA sections, processing instructions) end.
//!
//! Bytes can arrive in arbitrary pieces, so the scanner remembers how far it has looked
//! and in which lexical state it stopped (inside a quoted attribute value, inside a
//! CDATA section, …). Every byte is examined once, which keeps parsing O(n) however
//! the input is chunked. It also rejects, as early as possible, what can be decided from
//! single bytes: control characters, comments, DTDs, and tokens that outgrow the size
//! budget the parser gives it. Everything else (names, attributes, entities, UTF-8) is
//! checked by the parser once a token is complete.

use super::parser::ParseError;

/// What kind of markup a complete token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TokenKind {
    /// Character data up to (not including) the next `<`.
    Text,
    /// `<name …>` or `<name …/>`.
    StartTag,
    /// `</name>`.
    EndTag,
    /// `<![CDATA[…]]>`.
    CData,
    /// `<?target …?>`.
    Pi,
}

/// A complete token: `buf[start..end]`, delimiters included.
#[derive(Clone, Copy, Debug)]
pub(super) struct Token {
    pub(super) kind: TokenKind,
    pub(super) start: usize,
    pub(super) end: usize,
}

/// Where the scanner stopped inside the current token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// At the first byte of a token.
    Start,
    /// In character data.
    Text,
    /// Just after `<`.
    AfterLt,
    /// In a start or end tag; `quote` is the open quote byte or 0.
    Tag { quote: u8 },
    /// After `<!`, matching `<![CDATA[`; `matched` bytes of it seen so far.
    Bang { matched: u8 },
    /// In a CDATA section; `brackets` is how many `]` were just seen (at most 2).
    CData { brackets: u8 },
    /// In a processing instruction; `question` is whether the last byte was `?`.
    Pi { question: bool },
}

const CDATA_OPEN: &[u8] = b"<![CDATA[";

/// The receive buffer plus the resumable scanning state.
#[derive(Debug)]
pub(super) struct Scanner {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte, which is where the current token begins.
    pos: usize,
    /// Next byte to examine; `pos..scan` was already looked at.
    scan: usize,
    lex: Lex,
}

/// XML 1.0 `Char` excludes C0 controls other than tab, newline and carriage return.
#[inline]
fn is_forbidden_control(b: u8) -> bool {
    b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')
}

#[inline]
pub(super) fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn control_error(b: u8) -> ParseError {
    ParseError::NotWellFormed(format!("character 0x{b:02x} is not allowed in XML"))
}

impl Scanner {
    pub(super) fn new() -> Self {
        Scanner {
            buf: Vec::new(),
            pos: 0,
            scan: 0,
            lex: Lex::Start,
        }
    }

    /// Append received bytes, first dropping consumed ones so the buffer holds at most
    /// one partial token plus what was just received.
    pub(super) fn feed(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
        } else {
            // Only the unfinished token moves, and it moves once: afterwards it starts
            // at 0 and stays there until it completes.
            self.buf.drain(..self.pos);
        }
        self.scan -= self.pos;
        self.pos = 0;
    }

    /// Bytes received and not yet consumed as part of a complete token.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Forget all bytes and state.
    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.scan = 0;
        self.lex = Lex::Start;
    }

    /// Give back memory: drop the allocation when nothing is buffered, else trim it.
    pub(super) fn shrink(&mut self) {
        self.compact();
        if self.buf.is_empty() {
            self.buf = Vec::new();
        } else {
            self.buf.shrink_to_fit();
        }
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The bytes of a token just returned by [`next_token`](Self::next_token); valid
    /// until the next `feed`.
    pub(super) fn bytes(&self, tok: &Token) -> &[u8] {
        &self.buf[tok.start..tok.end]
    }

    /// Find the next complete token, or `Ok(None)` if more bytes are needed.
    ///
    /// `text_allowed` is false outside stanzas: there whitespace is skipped (and
    /// consumed at once, so keepalives never accumulate) and other text is an error.
    /// `budget` is how many bytes the token may span; more is a policy violation,
    /// reported while the token is still arriving.
    pub(super) fn next_token(
        &mut self,
        text_allowed: bool,
        budget: usize,
    ) -> Result<Option<Token>, ParseError> {
        let buf = self.buf.as_slice();
        let len = buf.len();
        let mut i = self.scan;
        loop {
            match self.lex {
                Lex::Start => {
                    if !text_allowed {
                        while i < len && is_xml_space(buf[i]) {
                            i += 1;
                        }
                        self.pos = i;
                    }
                    let Some(&b) = buf.get(i) else {
                        break;
                    };
                    if b == b'<' {
                        self.lex = Lex::AfterLt;
                        i += 1;
                    } else if text_allowed {
                        self.lex = Lex::Text;
                    } else if is_forbidden_control(b) {
                        return Err(control_error(b));
                    } else {
                        return Err(ParseError::NotWellFormed(
                            "character data outside of a stanza".into(),
                        ));
                    }
                }
                Lex::Text => {
                    match buf[i..]
                        .iter()
                        .position(|&b| b == b'<' || is_forbidden_control(b))
                    {
                        Some(off) => {
                            let end = i + off;
                            if buf[end] != b'<' {
                                return Err(control_error(buf[end]));
                            }
                            // The `<` belongs to the next token.
                            return self.finish(TokenKind::Text, end, budget);
                        }
                        None => {
                            i = len;
                            break;
                        }
                    }
                }
                Lex::AfterLt => {
                    let Some(&b) = buf.get(i) else {
                        break;
                    };
                    i += 1;
                    self.lex = match b {
                        b'!' => Lex::Bang { matched: 2 },
                        b'?' => Lex::Pi { question: false },
                        _ if is_forbidden_control(b) => return Err(control_error(b)),
                        // `</`, or a name; the parser validates which.
                        _ => Lex::Tag { quote: 0 },
                    };
                }
                Lex::Tag { quote } => {
                    let found = if quote == 0 {
                        buf[i..].iter().position(|&b| {
                            matches!(b, b'>' | b'<' | b'\'' | b'"') || is_forbidden_control(b)
                        })
                    } else {
                        buf[i..]
                            .iter()
                            .position(|&b| b == quote || b == b'<' || is_forbidden_control(b))
                    };
                    let Some(off) = found else {
                        i = len;
                        break;
                    };
                    let at = i + off;
                    i = at + 1;
                    match buf[at] {
                        b'>' => {
                            let kind = if buf.get(self.pos + 1) == Some(&b'/') {
                                TokenKind::EndTag
                            } else {
                                TokenKind::StartTag
                            };
                            return self.finish(kind, i, budget);
                        }
                        b'<' => {
                            return Err(ParseError::NotWellFormed(
                                "'<' inside a tag (unclosed tag or quote?)".into(),
                            ))
                        }
                        q @ (b'\'' | b'"') => {
                            self.lex = Lex::Tag {
                                quote: if quote == 0 { q } else { 0 },
                            }
                        }
                        b => return Err(control_error(b)),
                    }
                }
                Lex::Bang { matched } => {
                    let Some(&b) = buf.get(i) else {
                        break;
                    };
                    if b != CDATA_OPEN[usize::from(matched)] {
                        return Err(ParseError::RestrictedXml(
                            match (matched, b) {
                                (2, b'-') => "comments are not allowed",
                                (2, b'D') => "document type declarations are not allowed",
                                _ => "markup declarations are not allowed",
                            }
                            .into(),
                        ));
                    }
                    i += 1;
                    let matched = matched + 1;
                    self.lex = if usize::from(matched) == CDATA_OPEN.len() {
                        Lex::CData { brackets: 0 }
                    } else {
                        Lex::Bang { matched }
                    };
                }
                Lex::CData { mut brackets } => {
                    while i < len {
                        let b = buf[i];
                        i += 1;
                        match b {
                            b']' => brackets = (brackets + 1).min(2),
                            b'>' if brackets == 2 => {
                                return self.finish(TokenKind::CData, i, budget);
                            }
                            _ if is_forbidden_control(b) => return Err(control_error(b)),
                            _ => brackets = 0,
                        }
                    }
                    self.lex = Lex::CData { brackets };
                    break;
                }
                Lex::Pi { mut question } => {
                    while i < len {
                        let b = buf[i];
                        i += 1;
                        match b {
                            b'>' if question => return self.finish(TokenKind::Pi, i, budget),
                            b'?' => question = true,
                            _ if is_forbidden_control(b) => return Err(control_error(b)),
                            _ => question = false,
                        }
                    }
                    self.lex = Lex::Pi { question };
                    break;
                }
            }
        }
        // Out of bytes in the middle of a token.
        self.scan = i;
        if self.scan - self.pos > budget {
            return Err(too_big());
        }
        Ok(None)
    }

    /// The token starting at `pos` ends at `end`: hand it out and start the next one.
    fn finish(
        &mut self,
        kind: TokenKind,
        end: usize,
        budget: usize,
    ) -> Result<Option<Token>, ParseError> {
        let start = self.pos;
        if end - start > budget {
            return Err(too_big());
        }
        self.pos = end;
        self.scan = end;
        self.lex = Lex::Start;
        Ok(Some(Token { kind, start, end }))
    }
}

fn too_big() -> ParseError {
    ParseError::PolicyViolation("element exceeds the maximum stanza size".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(input: &[u8], text_allowed: bool) -> Result<Vec<(TokenKind, Vec<u8>)>, ParseError> {
        let mut s = Scanner::new();
        let mut out = Vec::new();
        for &b in input {
            s.feed(&[b]);
            while let Some(t) = s.next_token(text_allowed, usize::MAX)? {
                out.push((t.kind, s.bytes(&t).to_vec()));
            }
        }
        Ok(out)
    }

    #[test]
    fn finds_boundaries_byte_by_byte() {
        let got = tokens(
            b"<a x='>\"' y=\"'>\">t&amp;>x<![CDATA[ <]] ]]]><?p ?><b/></a><",
            true,
        )
        .unwrap_or_default();
        let kinds: Vec<TokenKind> = got.iter().map(|t| t.0).collect();
        use TokenKind::*;
        assert_eq!(kinds, [StartTag, Text, CData, Pi, StartTag, EndTag]);
        assert_eq!(got[0].1, b"<a x='>\"' y=\"'>\">");
        assert_eq!(got[1].1, b"t&amp;>x");
        assert_eq!(got[2].1, b"<![CDATA[ <]] ]]]>");
    }

    #[test]
    fn skips_whitespace_where_text_is_not_allowed() {
        let got = tokens(b" \n\t<a>", false).unwrap_or_default();
        assert_eq!(got.len(), 1);
        assert!(tokens(b" x", false).is_err());
    }

    #[test]
    fn rejects_early() {
        assert!(matches!(
            tokens(b"<!-- c -->", true),
            Err(ParseError::RestrictedXml(_))
        ));
        assert!(matches!(
            tokens(b"<!DOCTYPE x>", true),
            Err(ParseError::RestrictedXml(_))
        ));
        assert!(matches!(
            tokens(b"<a b='<'>", true),
            Err(ParseError::NotWellFormed(_))
        ));
        assert!(matches!(
            tokens(b"\x16\x03\x01", false),
            Err(ParseError::NotWellFormed(_))
        ));
        assert!(matches!(
            tokens(b"ab\x00", true),
            Err(ParseError::NotWellFormed(_))
        ));
    }

    #[test]
    fn budget_applies_to_unfinished_tokens() {
        let mut s = Scanner::new();
        s.feed(b"<a attr='0123456789");
        assert!(matches!(
            s.next_token(true, 10),
            Err(ParseError::PolicyViolation(_))
        ));
    }
}
