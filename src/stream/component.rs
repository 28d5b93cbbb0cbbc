//! External component streams (XEP-0114, "Jabber Component Protocol"),
//! without I/O: the header check, the handshake digest and its
//! constant-time comparison, the `from` rule for stanzas a component sends,
//! and moving stanzas between the component and client namespaces.

use jid::Jid;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use crate::stanza::StreamErrorCondition;
use crate::xml::{Element, StreamHeader, NS_CLIENT, NS_STREAMS};

/// The default namespace of a component stream, and so of its stanzas.
pub const NS_COMPONENT: &str = "jabber:component:accept";

/// XEPs implemented by the component stream itself.
pub const XEPS: &[u16] = &[114];

/// Validates a component's stream header (XEP-0114 §3) and returns the
/// normalised component domain it names. `is_component` says whether a
/// domain is a configured component.
pub fn check_header(
    h: &StreamHeader,
    is_component: impl Fn(&str) -> bool,
) -> Result<String, StreamErrorCondition> {
    if h.name != "stream" || h.ns != NS_STREAMS {
        return Err(StreamErrorCondition::InvalidNamespace);
    }
    if h.default_ns.as_deref() != Some(NS_COMPONENT) {
        return Err(StreamErrorCondition::InvalidNamespace);
    }
    // The component names itself in `to`; without it there is no secret
    // to check the handshake against.
    let domain =
        h.to.as_deref()
            .and_then(|to| jid::BareJid::new(to).ok())
            .filter(|j| j.node().is_none())
            .map(|j| j.to_string())
            .ok_or(StreamErrorCondition::HostUnknown)?;
    if is_component(&domain) {
        Ok(domain)
    } else {
        Err(StreamErrorCondition::HostUnknown)
    }
}

/// The handshake value a component proves it knows `secret` with: the
/// lowercase hex SHA-1 of the stream id followed by the secret (XEP-0114 §3).
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the component's `<handshake/>`. Anything else in its place, or a
/// wrong digest, is `not-authorized`. The digest comparison takes the same
/// time wherever the first difference is, so the response time reveals
/// nothing about the expected value.
pub fn check_handshake(
    el: &Element,
    stream_id: &str,
    secret: &str,
) -> Result<(), StreamErrorCondition> {
    if !el.is("handshake", NS_COMPONENT) {
        return Err(StreamErrorCondition::NotAuthorized);
    }
    let expected = handshake_digest(stream_id, secret);
    // Some libraries send uppercase hex; the value is the same.
    let given = el.text().trim().to_ascii_lowercase();
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(StreamErrorCondition::NotAuthorized)
    }
}

/// The `from` of a stanza sent by the component serving `domain`: it must
/// be present and within that domain (XEP-0114 §3, RFC 6120 §8.1.2.1);
/// anything else is `invalid-from`. Returns it normalised.
pub fn check_from(stanza: &Element, domain: &str) -> Result<Jid, StreamErrorCondition> {
    let from = stanza
        .attr("from")
        .and_then(|f| Jid::new(f).ok())
        .ok_or(StreamErrorCondition::InvalidFrom)?;
    if from.domain().as_str() == domain {
        Ok(from)
    } else {
        Err(StreamErrorCondition::InvalidFrom)
    }
}

/// A stanza read from a component, as the rest of the server (which speaks
/// `jabber:client`) sees it.
pub fn into_client(mut stanza: Element) -> Element {
    stanza.move_namespace(NS_COMPONENT, NS_CLIENT);
    stanza
}

/// Serializes a `jabber:client` stanza for a component stream, whose
/// default namespace is `jabber:component:accept`.
pub fn to_component_bytes(stanza: &Element) -> Vec<u8> {
    let mut s = stanza.clone();
    s.move_namespace(NS_CLIENT, NS_COMPONENT);
    s.to_bytes(NS_COMPONENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse_header as header;

    const STREAMS: &str = "xmlns:stream='http://etherx.jabber.org/streams'";

    #[test]
    fn header_rules() {
        let known = |d: &str| d == "bot.localhost";
        let ok = header(&format!(
            "<stream:stream xmlns='jabber:component:accept' {STREAMS} to='Bot.Localhost'>"
        ));
        assert_eq!(check_header(&ok, known).unwrap(), "bot.localhost");
        let unknown = header(&format!(
            "<stream:stream xmlns='jabber:component:accept' {STREAMS} to='other.localhost'>"
        ));
        assert_eq!(
            check_header(&unknown, known),
            Err(StreamErrorCondition::HostUnknown)
        );
        let no_to = header(&format!(
            "<stream:stream xmlns='jabber:component:accept' {STREAMS}>"
        ));
        assert_eq!(
            check_header(&no_to, known),
            Err(StreamErrorCondition::HostUnknown)
        );
        let client = header(&format!(
            "<stream:stream xmlns='jabber:client' {STREAMS} to='bot.localhost'>"
        ));
        assert_eq!(
            check_header(&client, known),
            Err(StreamErrorCondition::InvalidNamespace)
        );
    }

    #[test]
    fn handshake_is_hex_sha1_of_id_then_secret() {
        // FIPS 180 test vector: SHA-1("abc").
        assert_eq!(
            handshake_digest("a", "bc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let d = handshake_digest("id", "secret");
        assert_eq!(d.len(), 40);
        let good = Element::new("handshake", NS_COMPONENT).with_text(d.to_uppercase());
        assert_eq!(check_handshake(&good, "id", "secret"), Ok(()));
        let bad = Element::new("handshake", NS_COMPONENT).with_text(d.clone());
        assert_eq!(
            check_handshake(&bad, "id", "other"),
            Err(StreamErrorCondition::NotAuthorized)
        );
        let short = Element::new("handshake", NS_COMPONENT).with_text(&d[..39]);
        assert!(check_handshake(&short, "id", "secret").is_err());
        let wrong_ns = Element::new("handshake", NS_CLIENT).with_text(d);
        assert!(check_handshake(&wrong_ns, "id", "secret").is_err());
    }

    #[test]
    fn from_must_be_within_the_component_domain() {
        let m = |from: Option<&str>| {
            let mut e = Element::new("message", NS_CLIENT);
            if let Some(f) = from {
                e.set_attr("from", f);
            }
            check_from(&e, "bot.localhost")
        };
        assert_eq!(
            m(Some("Echo@Bot.localhost/r")).unwrap().as_str(),
            "echo@bot.localhost/r"
        );
        assert!(m(Some("bot.localhost")).is_ok());
        assert_eq!(m(None), Err(StreamErrorCondition::InvalidFrom));
        assert_eq!(
            m(Some("alice@localhost")),
            Err(StreamErrorCondition::InvalidFrom)
        );
        assert_eq!(m(Some("@@")), Err(StreamErrorCondition::InvalidFrom));
    }

    #[test]
    fn stanzas_change_namespace_both_ways() {
        let from_component = Element::new("message", NS_COMPONENT)
            .with_child(Element::new("body", NS_COMPONENT).with_text("hi"));
        let client = into_client(from_component);
        assert!(client.is("message", NS_CLIENT));
        assert!(client.get_child("body", NS_CLIENT).is_some());
        let bytes = String::from_utf8(to_component_bytes(&client)).unwrap();
        assert_eq!(bytes, "<message><body>hi</body></message>");
    }
}
