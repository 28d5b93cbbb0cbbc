//! The `<body/>` wrapper of XEP-0124: reading a request's attributes and
//! finding its payload, writing a response around ours.
//!
//! Only the wrapper is read here (with quick-xml, attributes only); the
//! payload between its tags is handed as bytes to the c2s stream parser,
//! so the stanzas in it meet the same limits as on TCP.

use std::ops::Range;

use quick_xml::events::Event;

use crate::xml::escape_attr;

pub const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
/// XEP-0206's attributes (`xmpp:version`, `xmpp:restart`).
pub const NS_XBOSH: &str = "urn:xmpp:xbosh";

/// Highest `rid` a client may use (2^53 - 1, XEP-0124 §13.1).
pub const MAX_RID: u64 = (1 << 53) - 1;

/// A request's wrapper: its attributes and where its payload is.
#[derive(Debug)]
pub struct Wrapper {
    /// Unprefixed attributes under their name; XEP-0206's under
    /// `xmpp:NAME` whatever prefix the client bound to urn:xmpp:xbosh;
    /// `xml:lang` as such.
    attrs: Vec<(String, String)>,
    /// The bytes between `<body …>` and `</body>` (empty for `<body/>`).
    pub payload: Range<usize>,
}

impl Wrapper {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request id, when it is a number in range.
    pub fn rid(&self) -> Option<u64> {
        self.attr("rid")?
            .parse::<u64>()
            .ok()
            .filter(|r| *r <= MAX_RID)
    }

    /// A number-valued attribute (`wait`, `hold`, `pause`).
    pub fn number(&self, name: &str) -> Option<u64> {
        self.attr(name)?.trim().parse().ok()
    }

    pub fn is_terminate(&self) -> bool {
        self.attr("type") == Some("terminate")
    }

    pub fn is_restart(&self) -> bool {
        matches!(self.attr("xmpp:restart"), Some("true" | "1"))
    }
}

/// Why a request body is not a wrapper we can read (→ `bad-request`).
pub type BadRequest = &'static str;

/// Reads the wrapper of one request body.
pub fn parse(bytes: &[u8]) -> Result<Wrapper, BadRequest> {
    let mut reader = quick_xml::Reader::from_reader(bytes);
    loop {
        let start = reader.buffer_position() as usize;
        let event = reader.read_event().map_err(|_| "not well-formed")?;
        let (tag, empty) = match event {
            Event::Decl(_) => continue,
            Event::Text(t) if t.iter().all(u8::is_ascii_whitespace) => continue,
            Event::Start(tag) => (tag, false),
            Event::Empty(tag) => (tag, true),
            _ => return Err("a request is one <body/> element"),
        };
        let qname = tag.name().as_ref().to_vec();
        let (prefix, local) = match qname.iter().position(|&b| b == b':') {
            Some(i) => (&qname[..i], &qname[i + 1..]),
            None => (&qname[..0], &qname[..]),
        };
        if local != b"body" {
            return Err("a request is one <body/> element");
        }
        let mut raw = Vec::new();
        for a in tag.attributes().with_checks(true) {
            let a = a.map_err(|_| "bad attribute")?;
            let value = a.unescape_value().map_err(|_| "bad attribute value")?;
            raw.push((a.key.as_ref().to_vec(), value.into_owned()));
        }
        let declared = |p: &[u8]| -> Option<&str> {
            let key: Vec<u8> = if p.is_empty() {
                b"xmlns".to_vec()
            } else {
                [b"xmlns:".as_slice(), p].concat()
            };
            raw.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
        };
        if declared(prefix) != Some(NS_HTTPBIND) {
            return Err("<body/> is in http://jabber.org/protocol/httpbind");
        }
        let mut attrs = Vec::new();
        for (k, v) in &raw {
            if k.starts_with(b"xmlns") {
                continue;
            }
            let name = match k.iter().position(|&b| b == b':') {
                None => String::from_utf8_lossy(k).into_owned(),
                Some(i) if &k[..i] == b"xml" => String::from_utf8_lossy(k).into_owned(),
                Some(i) if declared(&k[..i]) == Some(NS_XBOSH) => {
                    format!("xmpp:{}", String::from_utf8_lossy(&k[i + 1..]))
                }
                // Another extension's attribute: not ours to read.
                Some(_) => continue,
            };
            attrs.push((name, v.clone()));
        }
        let open_end = reader.buffer_position() as usize;
        let _ = start;
        let payload = if empty {
            if !bytes[open_end..].iter().all(u8::is_ascii_whitespace) {
                return Err("content after <body/>");
            }
            open_end..open_end
        } else {
            open_end..closing_tag(bytes, open_end, &qname)?
        };
        return Ok(Wrapper { attrs, payload });
    }
}

/// Where the wrapper's end tag starts: the body ends with `</body>` (the
/// name as opened), whitespace after it allowed. What lies between is
/// checked by the stream parser, which refuses a stray end tag.
fn closing_tag(bytes: &[u8], from: usize, qname: &[u8]) -> Result<usize, BadRequest> {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map(|i| i + 1)
        .unwrap_or(0);
    let tail = &bytes[from..end];
    if !tail.ends_with(b">") {
        return Err("no </body>");
    }
    let open = tail
        .windows(2)
        .rposition(|w| w == b"</")
        .ok_or("no </body>")?;
    let name = &tail[open + 2..tail.len() - 1];
    let name_end = name
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map(|i| i + 1)
        .unwrap_or(0);
    if &name[..name_end] != qname {
        return Err("no </body>");
    }
    Ok(from + open)
}

/// A response `<body/>`: these attributes, and the payload (top-level
/// elements that declare their own namespaces).
pub fn response(attrs: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 128);
    out.extend_from_slice(b"<body xmlns='");
    out.extend_from_slice(NS_HTTPBIND.as_bytes());
    out.push(b'\'');
    for (k, v) in attrs {
        out.push(b' ');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"='");
        escape_attr(v, &mut out);
        out.push(b'\'');
    }
    if payload.is_empty() {
        out.extend_from_slice(b"/>");
    } else {
        out.push(b'>');
        out.extend_from_slice(payload);
        out.extend_from_slice(b"</body>");
    }
    out
}

/// A terminal binding error (XEP-0124 §17.2), or with None the plain
/// end of the session.
pub fn terminate(condition: Option<&str>) -> Vec<u8> {
    match condition {
        Some(c) => response(&[("type", "terminate"), ("condition", c)], b""),
        None => response(&[("type", "terminate")], b""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload<'a>(b: &'a [u8], w: &Wrapper) -> &'a [u8] {
        &b[w.payload.clone()]
    }

    #[test]
    fn reads_attributes_and_payload() {
        let b = b"<?xml version='1.0'?>\n<body rid='42' sid='s' xmlns='http://jabber.org/protocol/httpbind' xmlns:x='urn:xmpp:xbosh' x:restart='true' xml:lang='en'><presence xmlns='jabber:client'/></body>\r\n";
        let w = parse(b).unwrap();
        assert_eq!(w.rid(), Some(42));
        assert_eq!(w.attr("sid"), Some("s"));
        assert!(w.is_restart());
        assert_eq!(w.attr("xml:lang"), Some("en"));
        assert_eq!(payload(b, &w), b"<presence xmlns='jabber:client'/>");
    }

    #[test]
    fn empty_and_prefixed_bodies() {
        let b = b"<body rid='1' xmlns='http://jabber.org/protocol/httpbind'/>";
        let w = parse(b).unwrap();
        assert!(w.payload.is_empty());
        let b = b"<h:body rid='1' xmlns:h='http://jabber.org/protocol/httpbind'><a/></h:body >";
        let w = parse(b).unwrap();
        assert_eq!(payload(b, &w), b"<a/>");
    }

    #[test]
    fn refuses_what_is_not_a_wrapper() {
        assert!(parse(b"<body rid='1'/>").is_err());
        assert!(parse(b"<html xmlns='http://jabber.org/protocol/httpbind'/>").is_err());
        assert!(parse(b"<body xmlns='http://jabber.org/protocol/httpbind'><a/>").is_err());
        assert!(parse(b"<body xmlns='http://jabber.org/protocol/httpbind'><a/></bodyx>").is_err());
        assert!(parse(b"<body xmlns='http://jabber.org/protocol/httpbind'/><x/>").is_err());
        assert!(parse(b"").is_err());
        assert!(
            parse(b"<body rid='1' rid='2' xmlns='http://jabber.org/protocol/httpbind'/>").is_err()
        );
        let w =
            parse(b"<body rid='9007199254740992' xmlns='http://jabber.org/protocol/httpbind'/>")
                .unwrap();
        assert_eq!(w.rid(), None);
    }

    #[test]
    fn writes_responses() {
        assert_eq!(
            terminate(Some("item-not-found")),
            b"<body xmlns='http://jabber.org/protocol/httpbind' type='terminate' condition='item-not-found'/>"
        );
        assert_eq!(
            response(&[("a", "x'y")], b"<p/>"),
            b"<body xmlns='http://jabber.org/protocol/httpbind' a='x&apos;y'><p/></body>"
        );
    }
}
