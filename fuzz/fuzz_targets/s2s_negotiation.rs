//! Incoming server-to-server streams (`waxwing::stream::s2s`), driven the
//! way `src/net/s2s_in.rs` and `src/net/s2s_receive.rs` drive them, without
//! sockets: header check, features, STARTTLS, SASL EXTERNAL identity,
//! dialback `<db:result/>` and `<db:verify/>` with real keys, and the
//! address rules for stanzas once a domain is authenticated.
//!
//! Input: 1 control byte, then the peer's writes separated by NUL bytes.
//! - bit 0: TLS from the start; bit 1: TLS required; bit 2: bidi enabled;
//!   bit 3: the peer's certificate is valid for the domain it asks for.
//!
//! We serve a.test and b.test with dialback secret "s3cret" and stream id
//! "s2s-fuzz-id"; the remote servers (anything else) have the secret
//! "remote", so a `<db:result/>` whose key is
//! `dialback_key("remote", to, from, "s2s-fuzz-id")` is "verified" by the
//! simulated authoritative server and authenticates `from`.
//!
//! Oracles: no panic; domains returned are normalised (normalising again
//! changes nothing) and served here; the right dialback key matches and
//! any other does not; stanzas pass only from an authenticated domain to a
//! served one; dialback replies and stanzas moved between namespaces are
//! written and parse back equal.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use waxwing::stanza::StanzaErrorCondition;
use waxwing::stream::s2s::{
    check_addresses, check_header, dialback, dialback_error, dialback_key, domain_of,
    external_identity, features, into_client, key_matches, to_server_bytes, Offer, NS_BIDI,
    NS_DIALBACK, NS_SASL, NS_TLS,
};
use waxwing::xml::{
    Element, ParserLimits, StreamEvent, StreamParser, NS_CLIENT, NS_SERVER, NS_STREAMS,
};
use waxwing_fuzz::{
    assert_prefixed_roundtrip, assert_roundtrip, contains_ns, parse_written, writes,
};

const SECRET: &str = "s3cret";
const REMOTE_SECRET: &str = "remote";
const STREAM_ID: &str = "s2s-fuzz-id";

fn is_local(d: &str) -> bool {
    d == "a.test" || d == "b.test"
}

struct Peer {
    parser: StreamParser,
    tls: bool,
    require_tls: bool,
    bidi: bool,
    cert_valid: bool,
    sasl_done: bool,
    /// The stream header's `from`, normalised.
    peer: Option<String>,
    authenticated: HashSet<String>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut p = Peer {
        parser: StreamParser::new(ParserLimits::default()),
        tls: flags & 1 != 0,
        require_tls: flags & 2 != 0,
        bidi: flags & 4 != 0,
        cert_valid: flags & 8 != 0,
        sasl_done: false,
        peer: None,
        authenticated: HashSet::new(),
    };
    for write in writes(rest) {
        p.parser.feed(write);
        loop {
            match p.parser.next_event() {
                Ok(None) => break,
                Ok(Some(ev)) => {
                    if p.event(ev).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
});

fn assert_normalised(d: &str) {
    assert_eq!(
        domain_of(d).as_deref(),
        Some(d),
        "domain_of is not idempotent on {d:?}"
    );
}

impl Peer {
    fn event(&mut self, ev: StreamEvent) -> Result<(), ()> {
        match ev {
            StreamEvent::Header(h) => {
                let local = check_header(&h, is_local).map_err(|_| ())?;
                assert!(is_local(&local));
                assert_normalised(&local);
                self.peer = h.from.as_deref().and_then(domain_of);
                if let Some(p) = &self.peer {
                    assert_normalised(p);
                }
                if h.version.as_deref() == Some("1.0") {
                    let f = features(Offer {
                        tls_available: true,
                        is_tls: self.tls,
                        require_encryption: self.require_tls,
                        external: !self.sasl_done && self.cert_valid && self.peer.is_some(),
                        bidi: self.bidi,
                    });
                    assert_roundtrip(&f, NS_SERVER, 8);
                }
                Ok(())
            }
            StreamEvent::End => Err(()),
            StreamEvent::Stanza(el) => self.element(el),
        }
    }

    fn element(&mut self, el: Element) -> Result<(), ()> {
        if el.is("starttls", NS_TLS) {
            if self.tls {
                return Err(());
            }
            self.tls = true;
            self.parser.reset();
            return Ok(());
        }
        if self.require_tls && !self.tls {
            return Err(());
        }
        if el.is("auth", NS_SASL) {
            let wanted = external_identity(&el.text(), self.peer.as_deref());
            if let Some(w) = &wanted {
                assert_normalised(w);
            }
            let ok = !self.sasl_done
                && el.attr("mechanism") == Some("EXTERNAL")
                && self.cert_valid
                && wanted.as_deref().is_some_and(|d| !is_local(d));
            if let (true, Some(d)) = (ok, wanted) {
                self.authenticated.insert(d);
                self.sasl_done = true;
                self.parser.reset();
            }
            return Ok(());
        }
        if el.is("bidi", NS_BIDI) {
            return Ok(());
        }
        if el.is("result", NS_DIALBACK) && el.attr("type").is_none() {
            return self.dialback_result(&el);
        }
        if el.is("verify", NS_DIALBACK) && el.attr("type").is_none() {
            self.dialback_verify(&el);
            return Ok(());
        }
        if el.is("error", NS_STREAMS) {
            return Err(());
        }
        if el.ns() == NS_DIALBACK || el.ns() == NS_STREAMS {
            return Ok(());
        }
        let (from, to) = check_addresses(&el, &self.authenticated, is_local).map_err(|_| ())?;
        assert!(self.authenticated.contains(from.domain().as_str()));
        assert!(is_local(to.domain().as_str()));
        // Into the server (jabber:client) and back out to a peer: the same
        // stanza, unless it already carried jabber:client elements (which
        // the way out moves to jabber:server as well).
        let original = el.clone();
        let inside = into_client(el);
        assert!(!contains_ns(&inside, NS_SERVER));
        assert_roundtrip(&inside, NS_CLIENT, 64);
        let bytes = to_server_bytes(&inside);
        let back = parse_written(&bytes, NS_SERVER, &[], 64)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&bytes)));
        if !contains_ns(&original, NS_CLIENT) {
            assert_eq!(back, original, "s2s namespace round trip");
        }
        Ok(())
    }

    fn dialback_result(&mut self, el: &Element) -> Result<(), ()> {
        let from = el.attr("from").and_then(domain_of);
        let to = el.attr("to").and_then(domain_of);
        let (Some(from), Some(to)) = (from, to) else {
            return Err(());
        };
        let refuse = |cond| dialback_error("result", &to, &from, None, cond);
        if !is_local(&to) {
            assert_prefixed_roundtrip(&refuse(StanzaErrorCondition::ItemNotFound), NS_SERVER, "db");
            return Ok(());
        }
        let key = el.text().trim().to_string();
        // The simulated authoritative server for `from` checks the key it
        // would have generated; our own domains are never vouched for.
        let valid = !is_local(&from)
            && key_matches(&key, &dialback_key(REMOTE_SECRET, &to, &from, STREAM_ID));
        let answer = dialback(
            "result",
            &to,
            &from,
            None,
            Err(if valid { "valid" } else { "invalid" }),
        );
        assert_prefixed_roundtrip(&answer, NS_SERVER, "db");
        if valid {
            self.authenticated.insert(from);
        }
        Ok(())
    }

    fn dialback_verify(&mut self, el: &Element) {
        let from = el.attr("from").and_then(domain_of).unwrap_or_default();
        let to = el.attr("to").and_then(domain_of).unwrap_or_default();
        let id = el.attr("id").unwrap_or_default();
        if !is_local(&to) {
            let e = dialback_error(
                "verify",
                &to,
                &from,
                Some(id),
                StanzaErrorCondition::ItemNotFound,
            );
            assert_prefixed_roundtrip(&e, NS_SERVER, "db");
            return;
        }
        let expected = dialback_key(SECRET, &from, &to, id);
        // Lowercase hex of HMAC-SHA256.
        assert_eq!(expected.len(), 64);
        assert!(expected
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(key_matches(&expected, &expected));
        assert!(key_matches(
            &format!(" {} ", expected.to_ascii_uppercase()),
            &expected
        ));
        let given = el.text();
        let valid = key_matches(&given, &expected);
        assert_eq!(
            valid,
            given.trim().eq_ignore_ascii_case(&expected),
            "key_matches disagrees with a plain comparison"
        );
        let answer = dialback(
            "verify",
            &to,
            &from,
            Some(id),
            Err(if valid { "valid" } else { "invalid" }),
        );
        assert_prefixed_roundtrip(&answer, NS_SERVER, "db");
    }
}
