//! Helpers shared by the fuzz targets: feeding a [`StreamParser`] the way a
//! connection does, and the round-trip oracle (an element written by the
//! writer and parsed again must come back equal).
//!
//! Everything here panics on a broken invariant: a panic is what libFuzzer
//! reports as a finding.

use waxwing::xml::{
    write_stream_header, Element, ParseError, ParserLimits, StreamEvent, StreamParser, NS_STREAMS,
};

/// Everything one parse produced: the events in order and the error that
/// ended it, if any.
#[derive(Debug, Default)]
pub struct Parsed {
    pub events: Vec<StreamEvent>,
    pub error: Option<ParseError>,
}

/// Feeds `chunks` one after another, draining every complete event after
/// each, as the connection drivers do after every read.
pub fn parse_chunks<'a>(
    limits: ParserLimits,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    shrink_between: bool,
) -> Parsed {
    let mut parser = StreamParser::new(limits);
    let mut out = Parsed::default();
    for chunk in chunks {
        parser.feed(chunk);
        loop {
            match parser.next_event() {
                Ok(Some(ev)) => out.events.push(ev),
                Ok(None) => break,
                Err(e) => {
                    // A dead parser must stay dead with the same error.
                    assert_eq!(parser.next_event(), Err(e.clone()), "dead parser revived");
                    out.error = Some(e);
                    return out;
                }
            }
        }
        if shrink_between {
            parser.shrink();
        }
    }
    out
}

/// Splits `data` into pieces whose sizes cycle through `sizes` (each at
/// least 1).
pub fn chunked<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let (head, tail) = rest.split_at(n.min(rest.len()));
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// A client's writes: the input split at NUL bytes (which XML never
/// contains), each piece fed as one read.
pub fn writes(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == 0)
}

/// Does `el` or any descendant have namespace `ns`?
pub fn contains_ns(el: &Element, ns: &str) -> bool {
    let mut stack = vec![el];
    while let Some(e) = stack.pop() {
        if e.ns() == ns {
            return true;
        }
        stack.extend(e.children());
    }
    false
}

/// Number of elements in the tree (iterative: trees built by hand may be
/// deep).
pub fn element_count(el: &Element) -> usize {
    let mut n = 0;
    let mut stack = vec![el];
    while let Some(e) = stack.pop() {
        n += 1;
        stack.extend(e.children());
    }
    n
}

/// Parses `bytes` as the only element of a fresh stream whose header
/// declares `default_ns` and `prefixes`, with generous size limits (the
/// written form may be longer than what was received: escaping).
pub fn parse_written(
    bytes: &[u8],
    default_ns: &str,
    prefixes: &[(&str, &str)],
    max_depth: usize,
) -> Result<Element, String> {
    let mut input = Vec::with_capacity(bytes.len() + 256);
    write_stream_header(&mut input, default_ns, prefixes, &[]);
    input.extend_from_slice(bytes);
    let limits = ParserLimits {
        // The header counts against this limit too, and may be long.
        max_stanza_bytes: input.len() + 1024,
        max_depth,
        ..ParserLimits::default()
    };
    let parsed = parse_chunks(limits, [input.as_slice()], false);
    if let Some(e) = parsed.error {
        return Err(format!("re-parse failed: {e}"));
    }
    let mut events = parsed.events.into_iter();
    match (events.next(), events.next(), events.next()) {
        (Some(StreamEvent::Header(_)), Some(StreamEvent::Stanza(el)), None) => Ok(el),
        other => Err(format!("re-parse gave {other:?}")),
    }
}

/// The round-trip oracle: `el`, received where `default_ns` was the
/// default namespace, written back and parsed again, is the same tree.
pub fn assert_roundtrip(el: &Element, default_ns: &str, max_depth: usize) {
    let bytes = el.to_bytes(default_ns);
    match parse_written(&bytes, default_ns, &[], max_depth) {
        Ok(back) => assert_eq!(
            &back,
            el,
            "round trip changed the element; written as {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(e) => panic!(
            "{e}; element {el:?} written as {:?}",
            String::from_utf8_lossy(&bytes)
        ),
    }
}

/// Writes `el` with `prefix` bound to its namespace by the stream header
/// (dialback's `db:`) and checks it parses back equal.
pub fn assert_prefixed_roundtrip(el: &Element, default_ns: &str, prefix: &str) {
    let mut bytes = Vec::new();
    el.write_prefixed_to(&mut bytes, default_ns, prefix);
    let back = parse_written(&bytes, default_ns, &[(prefix, el.ns())], 64)
        .unwrap_or_else(|e| panic!("{e}; written as {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(&back, el);
}

/// True for a stream header whose element is `stream:stream` in the
/// streams namespace, the only kind the writer produces.
pub fn is_stream_element(name: &str, ns: &str) -> bool {
    name == "stream" && ns == NS_STREAMS
}
