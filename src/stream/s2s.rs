//! Server-to-server streams (RFC 6120 with XEP-0220 dialback), without
//! I/O: the incoming header check, the features each side offers, the
//! dialback key (XEP-0185), the address rules for stanzas a peer sends, and
//! moving stanzas between `jabber:server` and `jabber:client`.

use std::collections::HashSet;

use hmac::{Hmac, Mac};
use jid::Jid;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::stanza::{StanzaErrorCondition, StreamErrorCondition, NS_STANZA_ERRORS};
use crate::xml::{Element, StreamHeader, NS_CLIENT, NS_SERVER, NS_STREAMS};

pub use crate::stream::c2s::{NS_SASL, NS_TLS};

/// The dialback namespace (XEP-0220), bound to the `db` prefix on s2s streams.
pub const NS_DIALBACK: &str = "jabber:server:dialback";
/// The stream feature announcing dialback (XEP-0220 §2.4).
pub const NS_DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";

/// The stream feature offering bidirectional streams (XEP-0288).
pub const NS_BIDI_FEATURE: &str = "urn:xmpp:features:bidi";
/// The element asking for a bidirectional stream (XEP-0288).
pub const NS_BIDI: &str = "urn:xmpp:bidi";

/// XEPs implemented by s2s streams: dialback and its key generation,
/// SASL EXTERNAL with certificates, direct TLS, bidirectional streams.
pub const XEPS: &[u16] = &[220, 185, 178, 368, 288];

/// Port of `_xmpp-server._tcp` when DNS has no SRV record (RFC 6120 §3.2.2).
pub const DEFAULT_PORT: u16 = 5269;

/// Checks a peer's stream header on an incoming s2s stream and returns the
/// local domain it is addressed to (`to`), normalised.
pub fn check_header(
    h: &StreamHeader,
    is_local: impl Fn(&str) -> bool,
) -> Result<String, StreamErrorCondition> {
    if h.name != "stream" || h.ns != NS_STREAMS {
        return Err(StreamErrorCondition::InvalidNamespace);
    }
    if h.default_ns.as_deref() != Some(NS_SERVER) {
        return Err(StreamErrorCondition::InvalidNamespace);
    }
    let to =
        h.to.as_deref()
            .and_then(domain_of)
            .ok_or(StreamErrorCondition::HostUnknown)?;
    if is_local(&to) {
        Ok(to)
    } else {
        Err(StreamErrorCondition::HostUnknown)
    }
}

/// Checks the header a receiving server answers our outgoing stream with.
pub fn check_response_header(h: &StreamHeader) -> Result<String, StreamErrorCondition> {
    if h.name != "stream" || h.ns != NS_STREAMS || h.default_ns.as_deref() != Some(NS_SERVER) {
        return Err(StreamErrorCondition::InvalidNamespace);
    }
    h.id.clone().ok_or(StreamErrorCondition::InvalidXml)
}

/// A normalised bare domain, or None if `s` is not one.
pub fn domain_of(s: &str) -> Option<String> {
    jid::BareJid::new(s)
        .ok()
        .filter(|j| j.node().is_none())
        .map(|j| j.to_string())
}

/// What an incoming stream may offer in its features.
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    /// STARTTLS can be offered (a certificate is configured).
    pub tls_available: bool,
    /// The stream runs over TLS already.
    pub is_tls: bool,
    pub require_encryption: bool,
    /// SASL EXTERNAL: the peer's certificate is valid for the domain it claims.
    pub external: bool,
    /// Bidirectional streams (XEP-0288) are enabled.
    pub bidi: bool,
}

/// The features of an incoming stream: STARTTLS until TLS is up (marked
/// required when encryption is required), SASL EXTERNAL when the peer's
/// certificate is valid for the domain it claims (XEP-0178), dialback (with
/// dialback errors) and bidi once they may be used — bidi only after TLS
/// when TLS is required (XEP-0288 §2).
pub fn features(o: Offer) -> Element {
    let mut f = Element::new("features", NS_STREAMS);
    if o.is_tls && o.external {
        f = f.with_child(
            Element::new("mechanisms", NS_SASL)
                .with_child(Element::new("mechanism", NS_SASL).with_text("EXTERNAL")),
        );
    }
    if !o.is_tls && o.tls_available {
        let mut st = Element::new("starttls", NS_TLS);
        if o.require_encryption {
            st = st.with_child(Element::new("required", NS_TLS));
        }
        f = f.with_child(st);
    }
    if o.is_tls || !o.require_encryption {
        f = f.with_child(
            Element::new("dialback", NS_DIALBACK_FEATURE)
                .with_child(Element::new("errors", NS_DIALBACK_FEATURE)),
        );
        if o.bidi {
            f = f.with_child(Element::new("bidi", NS_BIDI_FEATURE));
        }
    }
    f
}

/// The dialback key (XEP-0185 §3): HMAC-SHA256 keyed with the hex SHA-256
/// of the secret, over "receiving originating stream-id", in lowercase hex.
pub fn dialback_key(secret: &str, receiving: &str, originating: &str, stream_id: &str) -> String {
    let key = hex(&Sha256::digest(secret.as_bytes()));
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(format!("{receiving} {originating} {stream_id}").as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// The domain a peer asks to authenticate as with SASL EXTERNAL: the
/// authorization identity (base64; `=` is empty), else the stream's `from`.
pub fn external_identity(auth_text: &str, stream_from: Option<&str>) -> Option<String> {
    use base64::Engine;
    let text = auth_text.trim();
    if text.is_empty() || text == "=" {
        return stream_from.and_then(domain_of);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    domain_of(std::str::from_utf8(&raw).ok()?)
}

/// Compares a dialback key the peer sent with the expected one in constant time.
pub fn key_matches(given: &str, expected: &str) -> bool {
    let given = given.trim().to_ascii_lowercase();
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The addresses of a stanza a peer sent on an incoming stream: `from` must
/// be within a domain the stream authenticated (`invalid-from`), `to` at one
/// of our domains (`host-unknown`; `improper-addressing` when missing).
/// Returns (from, to) normalised.
pub fn check_addresses(
    stanza: &Element,
    authenticated: &HashSet<String>,
    is_local: impl Fn(&str) -> bool,
) -> Result<(Jid, Jid), StreamErrorCondition> {
    let from = stanza
        .attr("from")
        .and_then(|f| Jid::new(f).ok())
        .ok_or(StreamErrorCondition::InvalidFrom)?;
    if !authenticated.contains(from.domain().as_str()) {
        return Err(StreamErrorCondition::InvalidFrom);
    }
    let to = stanza
        .attr("to")
        .ok_or(StreamErrorCondition::ImproperAddressing)
        .and_then(|t| Jid::new(t).map_err(|_| StreamErrorCondition::HostUnknown))?;
    if !is_local(to.domain().as_str()) {
        return Err(StreamErrorCondition::HostUnknown);
    }
    Ok((from, to))
}

/// A stanza read from a peer server, as the rest of the server (which
/// speaks `jabber:client`) sees it.
pub fn into_client(mut stanza: Element) -> Element {
    stanza.move_namespace(NS_SERVER, NS_CLIENT);
    stanza
}

/// Serializes a `jabber:client` stanza for an s2s stream.
pub fn to_server_bytes(stanza: &Element) -> Vec<u8> {
    let mut s = stanza.clone();
    s.move_namespace(NS_CLIENT, NS_SERVER);
    s.to_bytes(NS_SERVER)
}

/// `<db:result/>` or `<db:verify/>` (`name`) with `from`, `to` and either a
/// key (a request) or a type (an answer); `id` for verify.
pub fn dialback(
    name: &str,
    from: &str,
    to: &str,
    id: Option<&str>,
    key_or_type: Result<&str, &str>,
) -> Element {
    let mut e = Element::new(name, NS_DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to);
    if let Some(id) = id {
        e.set_attr("id", id);
    }
    match key_or_type {
        Ok(key) => e.with_text(key),
        Err(t) => e.with_attr("type", t),
    }
}

/// A dialback error (XEP-0220 §2.4): `<db:result/>` or `<db:verify/>` of
/// type `error` with a stanza error condition; it concerns one domain pair
/// and does not end the stream.
pub fn dialback_error(
    name: &str,
    from: &str,
    to: &str,
    id: Option<&str>,
    cond: StanzaErrorCondition,
) -> Element {
    let error = Element::new("error", NS_SERVER)
        .with_attr("type", cond.error_type())
        .with_child(Element::new(cond.wire_name(), NS_STANZA_ERRORS));
    dialback(name, from, to, id, Err("error")).with_child(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_header as header;

    const STREAMS: &str = "xmlns:stream='http://etherx.jabber.org/streams'";

    #[test]
    fn header_rules() {
        let local = |d: &str| d == "a.test";
        let ok = header(&format!(
            "<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' {STREAMS} from='b.test' to='A.test' version='1.0'>"
        ));
        assert_eq!(check_header(&ok, local).unwrap(), "a.test");
        let other = header(&format!(
            "<stream:stream xmlns='jabber:server' {STREAMS} to='c.test'>"
        ));
        assert_eq!(
            check_header(&other, local),
            Err(StreamErrorCondition::HostUnknown)
        );
        let client = header(&format!(
            "<stream:stream xmlns='jabber:client' {STREAMS} to='a.test'>"
        ));
        assert_eq!(
            check_header(&client, local),
            Err(StreamErrorCondition::InvalidNamespace)
        );
    }

    #[test]
    fn dialback_key_follows_xep_0185() {
        // XEP-0220 §2.1.1 example: receiving montague.example, originating
        // capulet.example, stream id D60000229F.
        assert_eq!(
            dialback_key(
                "s3cr3tf0rd14lb4ck",
                "montague.example",
                "capulet.example",
                "D60000229F"
            ),
            "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3"
        );
        let k = dialback_key("s", "a", "b", "id");
        assert!(key_matches(&k.to_uppercase(), &k));
        assert!(!key_matches(&k[..63], &k));
        assert_ne!(k, dialback_key("s", "b", "a", "id"));
    }

    #[test]
    fn features_depend_on_tls() {
        let offer = |is_tls, require_encryption, external, bidi| {
            features(Offer {
                tls_available: true,
                is_tls,
                require_encryption,
                external,
                bidi,
            })
        };
        let f = offer(false, true, true, true);
        assert!(f.get_child("starttls", NS_TLS).is_some());
        assert!(f.get_child("dialback", NS_DIALBACK_FEATURE).is_none());
        assert!(f.get_child("mechanisms", NS_SASL).is_none());
        // XEP-0288 §2: bidi only once TLS is done when it is required.
        assert!(f.get_child("bidi", NS_BIDI_FEATURE).is_none());
        let f = offer(true, true, false, true);
        assert!(f.get_child("starttls", NS_TLS).is_none());
        let db = f.get_child("dialback", NS_DIALBACK_FEATURE).unwrap();
        assert!(db.get_child("errors", NS_DIALBACK_FEATURE).is_some());
        assert!(f.get_child("mechanisms", NS_SASL).is_none());
        assert!(f.get_child("bidi", NS_BIDI_FEATURE).is_some());
        let f = offer(true, true, true, false);
        assert!(f.get_child("mechanisms", NS_SASL).is_some());
        assert!(f.get_child("bidi", NS_BIDI_FEATURE).is_none());
        let f = offer(false, false, false, false);
        assert!(f.get_child("dialback", NS_DIALBACK_FEATURE).is_some());
    }

    #[test]
    fn dialback_errors_carry_a_stanza_condition() {
        let e = dialback_error(
            "result",
            "a.test",
            "b.test",
            None,
            StanzaErrorCondition::ItemNotFound,
        );
        assert_eq!(e.attr("type"), Some("error"));
        let err = e.get_child("error", NS_SERVER).unwrap();
        assert_eq!(err.attr("type"), Some("cancel"));
        assert!(err.get_child("item-not-found", NS_STANZA_ERRORS).is_some());
        let wire = String::from_utf8(e.to_bytes(NS_SERVER)).unwrap();
        assert!(
            wire.contains("<error xmlns='jabber:server' type='cancel'><item-not-found"),
            "{wire}"
        );
    }

    #[test]
    fn external_identity_is_authzid_or_stream_from() {
        assert_eq!(
            external_identity("=", Some("B.test")).as_deref(),
            Some("b.test")
        );
        assert_eq!(external_identity("", None), None);
        // base64("b.test")
        assert_eq!(
            external_identity("Yi50ZXN0", Some("c.test")).as_deref(),
            Some("b.test")
        );
        assert_eq!(external_identity("!!", Some("b.test")), None);
    }

    #[test]
    fn addresses_must_match_the_authenticated_domains() {
        let authed: HashSet<String> = ["b.test".to_string()].into();
        let local = |d: &str| d == "a.test";
        let m = |from: &str, to: Option<&str>| {
            let mut e = Element::new("message", NS_CLIENT).with_attr("from", from);
            if let Some(t) = to {
                e.set_attr("to", t);
            }
            check_addresses(&e, &authed, local).map(|(f, t)| (f.to_string(), t.to_string()))
        };
        assert_eq!(
            m("bob@B.test/r", Some("alice@a.test")).unwrap(),
            ("bob@b.test/r".into(), "alice@a.test".into())
        );
        assert_eq!(
            m("eve@c.test", Some("alice@a.test")),
            Err(StreamErrorCondition::InvalidFrom)
        );
        assert_eq!(
            m("bob@b.test", Some("x@c.test")),
            Err(StreamErrorCondition::HostUnknown)
        );
        assert_eq!(
            m("bob@b.test", None),
            Err(StreamErrorCondition::ImproperAddressing)
        );
    }

    #[test]
    fn stanzas_change_namespace_both_ways() {
        let wire = Element::new("message", NS_SERVER)
            .with_child(Element::new("body", NS_SERVER).with_text("hi"));
        let client = into_client(wire);
        assert!(client.get_child("body", NS_CLIENT).is_some());
        let bytes = String::from_utf8(to_server_bytes(&client)).unwrap();
        assert_eq!(bytes, "<message><body>hi</body></message>");
        let db = String::from_utf8(
            dialback("result", "a.test", "b.test", None, Err("valid")).to_bytes(NS_SERVER),
        )
        .unwrap();
        assert!(db.contains("jabber:server:dialback"), "{db}");
    }
}
