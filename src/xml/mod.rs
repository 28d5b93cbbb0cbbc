//! The XML layer: bytes in, [`StreamEvent`]s out, and [`Element`]s back to bytes.
//!
//! XMPP speaks one long XML document per stream direction (RFC 6120 §4): an opening
//! `<stream:stream>` tag, then top-level elements (stanzas, features, SASL, …), then
//! `</stream:stream>`. This module owns everything about that document and nothing about
//! what the elements mean:
//!
//! - `scanner` finds where complete tokens end in an incrementally fed buffer,
//! - `parser` turns those tokens into stream events and element trees, resolving
//!   namespaces and enforcing RFC 6120 §11 restricted XML plus the [`ParserLimits`]
//!   (size, depth, counts, lengths, and the memory a stanza's tree may take),
//! - `scope` tracks namespace declarations in force and holds each URI once,
//! - `element` is the tree type the rest of the server works with,
//! - `writer` escapes and serializes elements and stream headers.
//!
//! It is sans-I/O: no sockets, no clocks.
//!
//! Parsed trees are never deeper than [`ParserLimits::max_depth`], which is what keeps
//! the (recursive) derived `Drop`, `Clone` and `PartialEq` of [`Element`] safe; keep
//! that limit modest. Writing is iterative and safe at any depth.

mod element;
mod parser;
mod scanner;
mod scope;
mod writer;

#[cfg(test)]
mod tests;

pub use element::{Element, Node};
pub use parser::{ParseError, ParserLimits, StreamEvent, StreamHeader, StreamParser};
pub use writer::{
    attr_needs_no_escaping, escape_attr, escape_text, with_to, write_stream_end,
    write_stream_header,
};

/// Heap bytes one allocation of `bytes` really takes, for the parser's memory
/// budget: a general-purpose allocator (glibc's, for one) adds an 8-byte header,
/// rounds to 16 and never hands out less than 32. Nothing is allocated for 0.
fn heap_cost(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes.saturating_add(8).saturating_add(15) & !15).max(32)
    }
}

/// The stream header `xml` opens with, for the header-rule tests of the
/// stream kinds.
#[cfg(test)]
pub fn parse_header(xml: &str) -> StreamHeader {
    let mut p = StreamParser::new(ParserLimits::default());
    p.feed(xml.as_bytes());
    match p.next_event() {
        Ok(Some(StreamEvent::Header(h))) => h,
        other => panic!("{other:?}"),
    }
}

/// Namespace of the stream wrapper elements (`<stream:stream>`, `<stream:features>`, `<stream:error>`).
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
/// Default namespace of client-to-server streams.
pub const NS_CLIENT: &str = "jabber:client";
/// Default namespace of server-to-server streams.
pub const NS_SERVER: &str = "jabber:server";
/// Namespace bound to the reserved `xml:` prefix (XML Namespaces §3).
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";
