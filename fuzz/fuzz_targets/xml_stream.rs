//! The XML stream parser, fed in chunks as a socket delivers them.
//!
//! Input: 4 control bytes, then the stream bytes.
//! - byte 0: bits 0-1 pick the limits (default, shallow, small stanzas,
//!   both); bit 2 feeds one byte at a time; bit 3 calls `shrink` after
//!   every read.
//! - bytes 1-3: chunk sizes (1..=64, cycled) when not byte-at-a-time; they
//!   also tune the small limits.
//!
//! Oracles:
//! - no panic, and memory/time within libFuzzer's limits;
//! - the events and the error are the same however the input is chunked
//!   (compared with one feed of everything), except that a token both too
//!   long and malformed may be refused for either fault;
//! - a dead parser keeps returning its error;
//! - every stanza, written back with the writer, parses to an equal tree;
//!   every `stream:stream` header, written back, parses to an equal header.
//! - with WAXWING_FUZZ_AMPLIFICATION=1 (off by default, see FUZZING.md):
//!   the written form of a stanza is at most 8 times the bytes received.
#![no_main]

use std::mem::discriminant;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use waxwing::xml::{ParseError, ParserLimits, StreamEvent, StreamHeader};
use waxwing_fuzz::{assert_roundtrip, chunked, is_stream_element, parse_chunks};

fn amplification_check() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("WAXWING_FUZZ_AMPLIFICATION").is_some_and(|v| v == "1"))
}

fuzz_target!(|data: &[u8]| {
    let Some((ctl, stream)) = data.split_first_chunk::<4>() else {
        return;
    };
    let [flags, a, b, c] = *ctl;
    let defaults = ParserLimits::default();
    let limits = match flags & 3 {
        0 => defaults,
        1 => ParserLimits {
            max_depth: usize::from(a % 8) + 1,
            ..defaults
        },
        2 => ParserLimits {
            max_stanza_bytes: 32 + usize::from(b) * 4,
            ..defaults
        },
        _ => ParserLimits {
            max_depth: usize::from(a % 8) + 1,
            max_stanza_bytes: 32 + usize::from(b) * 4,
            ..defaults
        },
    };
    let sizes: Vec<usize> = if flags & 4 != 0 {
        vec![1]
    } else {
        [a, b, c].iter().map(|&s| usize::from(s % 64) + 1).collect()
    };
    let shrink = flags & 8 != 0;

    let whole = parse_chunks(limits, [stream], false);
    let pieces = parse_chunks(limits, chunked(stream, &sizes), shrink);
    assert_eq!(
        whole.events, pieces.events,
        "events depend on how the input was chunked"
    );
    // The same error, except that a token both too long and malformed may
    // be refused for its size while it is still arriving (chunked) or for
    // the fault that comes first (whole): both are right.
    let size = |e: &Option<ParseError>| matches!(e, Some(ParseError::PolicyViolation(_)));
    assert!(
        whole.error.as_ref().map(discriminant) == pieces.error.as_ref().map(discriminant)
            || (whole.error.is_some()
                && pieces.error.is_some()
                && (size(&whole.error) || size(&pieces.error))),
        "error depends on chunking: {:?} vs {:?}",
        whole.error,
        pieces.error
    );

    let mut header: Option<StreamHeader> = None;
    for ev in &whole.events {
        match ev {
            StreamEvent::Header(h) => {
                check_header_roundtrip(h, limits);
                header = Some(h.clone());
            }
            StreamEvent::Stanza(el) => {
                let default_ns = header
                    .as_ref()
                    .and_then(|h| h.default_ns.as_deref())
                    .unwrap_or("");
                assert_roundtrip(el, default_ns, limits.max_depth);
                if amplification_check() {
                    let written = el.to_bytes(default_ns).len();
                    assert!(
                        written <= 8 * stream.len() + 64,
                        "{} bytes received became {written} bytes written",
                        stream.len()
                    );
                }
            }
            StreamEvent::End => {}
        }
    }
});

/// A well-behaved header written back parses to the same header: same
/// addresses, version, language, default namespace and extra prefixes.
fn check_header_roundtrip(h: &StreamHeader, limits: ParserLimits) {
    if !is_stream_element(&h.name, &h.ns) || h.prefixes.iter().any(|(p, _)| p == "stream") {
        return;
    }
    let mut bytes = Vec::new();
    h.write_to(&mut bytes);
    let limits = ParserLimits {
        max_stanza_bytes: bytes.len() + 1024,
        ..limits
    };
    let parsed = parse_chunks(limits, [bytes.as_slice()], false);
    // `xmlns=''` (no default namespace) is what writing no declaration
    // means too: the writer leaves it out, so both read as "none".
    let mut expected = h.clone();
    if expected.default_ns.as_deref() == Some("") {
        expected.default_ns = None;
    }
    match parsed.events.first() {
        Some(StreamEvent::Header(back)) => assert_eq!(
            back,
            &expected,
            "header round trip; written as {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        other => panic!(
            "written header did not parse: {other:?} {:?}; written as {:?}",
            parsed.error,
            String::from_utf8_lossy(&bytes)
        ),
    }
}
