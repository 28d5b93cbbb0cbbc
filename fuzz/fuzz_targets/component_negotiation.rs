//! External component streams (`waxwing::stream::component`, XEP-0114),
//! driven as `src/net/component.rs` drives them: header, `<handshake/>`,
//! then stanzas under the `from` rule, moved between
//! `jabber:component:accept` and `jabber:client`.
//!
//! Input: the component's writes separated by NUL bytes. The component
//! bot.a.test has the secret "hunter2"; the stream id is "comp-fuzz-id",
//! so a handshake of `sha1("comp-fuzz-id" + "hunter2")` succeeds (a seed
//! carries it).
//!
//! Oracles: no panic; the header names a configured component, normalised;
//! the handshake succeeds exactly for the digest (any case, surrounding
//! whitespace); a stanza passes only with a `from` in the component's
//! domain; stanzas moved into the server and back out are the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxwing::stream::component::{
    check_from, check_handshake, check_header, handshake_digest, into_client, to_component_bytes,
    NS_COMPONENT,
};
use waxwing::xml::{Element, ParserLimits, StreamEvent, StreamParser, NS_CLIENT};
use waxwing_fuzz::{assert_roundtrip, contains_ns, parse_written, writes};

const SECRET: &str = "hunter2";
const STREAM_ID: &str = "comp-fuzz-id";

fn is_component(d: &str) -> bool {
    d == "bot.a.test"
}

fuzz_target!(|data: &[u8]| {
    let mut parser = StreamParser::new(ParserLimits::default());
    let mut domain: Option<String> = None;
    let mut authenticated = false;
    for write in writes(data) {
        parser.feed(write);
        loop {
            let ev = match parser.next_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(_) => return,
            };
            match ev {
                StreamEvent::Header(h) => {
                    if domain.is_some() {
                        // A second header without a restart cannot parse;
                        // the driver never restarts a component stream.
                        unreachable!("second header on one stream");
                    }
                    let Ok(d) = check_header(&h, is_component) else {
                        return;
                    };
                    assert!(is_component(&d));
                    domain = Some(d);
                }
                StreamEvent::End => return,
                StreamEvent::Stanza(el) => {
                    let Some(d) = &domain else {
                        unreachable!("stanza before the header");
                    };
                    if !authenticated {
                        let ok = check_handshake(&el, STREAM_ID, SECRET).is_ok();
                        let expected = handshake_digest(STREAM_ID, SECRET);
                        let agrees = el.is("handshake", NS_COMPONENT)
                            && el.text().trim().eq_ignore_ascii_case(&expected);
                        assert_eq!(ok, agrees, "handshake check");
                        if !ok {
                            return;
                        }
                        authenticated = true;
                        continue;
                    }
                    if stanza(&el, d).is_err() {
                        return;
                    }
                }
            }
        }
    }
});

fn stanza(el: &Element, domain: &str) -> Result<(), ()> {
    let from = check_from(el, domain).map_err(|_| ())?;
    assert_eq!(from.domain().as_str(), domain);
    let inside = into_client(el.clone());
    assert!(!contains_ns(&inside, NS_COMPONENT));
    assert_roundtrip(&inside, NS_CLIENT, 64);
    let bytes = to_component_bytes(&inside);
    let back = parse_written(&bytes, NS_COMPONENT, &[], 64)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&bytes)));
    if !contains_ns(el, NS_CLIENT) {
        assert_eq!(&back, el, "component namespace round trip");
    }
    Ok(())
}
