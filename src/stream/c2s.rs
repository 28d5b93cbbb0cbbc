//! Client-to-server stream negotiation rules (RFC 6120 §4–§7), without I/O:
//! header validation, the features offered in each phase, the SASL
//! mechanisms on offer, and which element is allowed in which phase
//! (including XEP-0077 in-band registration before authentication).

use std::collections::HashSet;

use crate::sasl::ScramHash;
use crate::stanza::{StanzaErrorCondition, StreamErrorCondition};
use crate::xml::{Element, StreamHeader, NS_CLIENT, NS_STREAMS};

pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// XEP-0440: SASL channel-binding type capability.
pub const NS_SASL_CB: &str = "urn:xmpp:sasl-cb:0";
/// XEP-0077: the in-band registration payload namespace.
pub const NS_REGISTER: &str = "jabber:iq:register";
/// XEP-0077 §8: the in-band registration stream feature.
pub const NS_REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";

/// XEPs implemented by c2s stream negotiation itself (not by a module):
/// direct TLS (XEP-0368) and channel-binding capability (XEP-0440).
pub const XEPS: &[u16] = &[368, 440];

/// Where a c2s stream is in its negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before authentication; `tls` once STARTTLS or direct TLS is up.
    Unauthenticated { tls: bool },
    /// SASL succeeded for `username@domain`; waiting for resource binding.
    /// The domain is the one fixed at SASL success: binding never takes it
    /// from a later stream header.
    Authenticated {
        tls: bool,
        username: String,
        domain: String,
    },
}

/// A SASL mechanism this server implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Scram { hash: ScramHash, plus: bool },
    Plain,
}

impl Mechanism {
    /// The IANA mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Scram { hash, plus: false } => hash.name(),
            Mechanism::Scram { hash, plus: true } => hash.plus_name(),
            Mechanism::Plain => "PLAIN",
        }
    }

    /// The mechanism named `name` among `offered`.
    pub fn find(offered: &[Mechanism], name: &str) -> Option<Mechanism> {
        offered.iter().copied().find(|m| m.name() == name)
    }
}

/// The mechanisms offered on a stream, strongest first. -PLUS variants need
/// channel-binding data (so TLS); PLAIN is only ever offered over TLS.
pub fn offered_mechanisms(
    tls: bool,
    has_channel_binding: bool,
    allow_plain: bool,
) -> Vec<Mechanism> {
    let hashes = [ScramHash::Sha512, ScramHash::Sha256, ScramHash::Sha1];
    let mut out = Vec::new();
    if tls && has_channel_binding {
        out.extend(
            hashes
                .iter()
                .map(|&hash| Mechanism::Scram { hash, plus: true }),
        );
    }
    out.extend(
        hashes
            .iter()
            .map(|&hash| Mechanism::Scram { hash, plus: false }),
    );
    if tls && allow_plain {
        out.push(Mechanism::Plain);
    }
    out
}

/// Validates a client's stream header (RFC 6120 §4.7, §4.9.3) and returns
/// the served domain it addresses.
pub fn check_header(
    h: &StreamHeader,
    domains: &HashSet<String>,
    default_domain: &str,
) -> Result<String, StreamErrorCondition> {
    if h.name != "stream" || h.ns != NS_STREAMS {
        return Err(StreamErrorCondition::InvalidNamespace);
    }
    if h.default_ns.as_deref() != Some(NS_CLIENT) {
        return Err(StreamErrorCondition::InvalidNamespace);
    }
    // A missing version means a pre-RFC 3920 "0.9" stream, which we do not
    // speak; any 1.x is fine (RFC 6120 §4.7.5).
    match h.version.as_deref().map(|v| v.split_once('.')) {
        Some(Some((major, minor)))
            if major == "1" && !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return Err(StreamErrorCondition::UnsupportedVersion),
    }
    match h.to.as_deref() {
        None => Ok(default_domain.to_string()),
        Some(to) => {
            let domain = jid::BareJid::new(to)
                .ok()
                .filter(|j| j.node().is_none())
                .map(|j| j.to_string())
                .ok_or(StreamErrorCondition::HostUnknown)?;
            if domains.contains(&domain) {
                Ok(domain)
            } else {
                Err(StreamErrorCondition::HostUnknown)
            }
        }
    }
}

/// Features before authentication: STARTTLS until TLS is up (required when
/// `require_tls`), the SASL mechanisms once they may be used, and in-band
/// registration when the host allows it — only over TLS, as the password
/// travels in the clear inside the stream (XEP-0077 §14).
pub fn features_unauthenticated(
    tls: bool,
    require_tls: bool,
    mechanisms: &[Mechanism],
    channel_bindings: &[&str],
    registration: bool,
) -> Element {
    let mut f = Element::new("features", NS_STREAMS);
    if !tls {
        let mut st = Element::new("starttls", NS_TLS);
        if require_tls {
            st.append_child(Element::new("required", NS_TLS));
        }
        f.append_child(st);
        if require_tls {
            // RFC 6120 §5.3.1: when TLS is mandatory only STARTTLS is offered.
            return f;
        }
    }
    let mut mechs = Element::new("mechanisms", NS_SASL);
    for m in mechanisms {
        mechs.append_child(Element::new("mechanism", NS_SASL).with_text(m.name()));
    }
    f.append_child(mechs);
    if !channel_bindings.is_empty() {
        let mut cb = Element::new("sasl-channel-binding", NS_SASL_CB);
        for t in channel_bindings {
            cb.append_child(Element::new("channel-binding", NS_SASL_CB).with_attr("type", *t));
        }
        f.append_child(cb);
    }
    if tls && registration {
        f.append_child(Element::new("register", NS_REGISTER_FEATURE));
    }
    f
}

/// Features after authentication: resource binding, and the legacy session
/// marked optional so old clients may still send it (RFC 6121 bis).
pub fn features_authenticated() -> Element {
    Element::new("features", NS_STREAMS)
        .with_child(Element::new("bind", NS_BIND))
        // XEP-0237 roster versioning and RFC 6121 §3.4 pre-approval.
        .with_child(Element::new("ver", "urn:xmpp:features:rosterver"))
        .with_child(Element::new("sub", "urn:xmpp:features:pre-approval"))
        .with_child(
            Element::new("session", NS_SESSION).with_child(Element::new("optional", NS_SESSION)),
        )
}

/// What a top-level element means before the session is bound.
#[derive(Debug, PartialEq, Eq)]
pub enum Negotiation {
    StartTls,
    Auth,
    /// An XEP-0077 registration IQ (get or set) on a TLS stream whose host
    /// allows registration.
    Register,
    /// An IQ that gets a stanza error instead of ending the stream: a
    /// registration request where registration is off (XEP-0077 §3.1:
    /// service-unavailable).
    RefuseIq(StanzaErrorCondition),
    Bind,
}

/// XEP-0379/XEP-0445: the pre-authentication token element.
pub const NS_PARS: &str = "urn:xmpp:pars:0";

/// Is `el` an IQ set presenting an invitation token before registration
/// (XEP-0445's `<preauth/>`)?
fn is_preauth_iq(el: &Element) -> bool {
    el.is("iq", NS_CLIENT)
        && el.attr("type") == Some("set")
        && el.get_child("preauth", NS_PARS).is_some()
}

/// Is `el` an IQ get/set whose payload is `jabber:iq:register`?
fn is_register_iq(el: &Element) -> bool {
    el.is("iq", NS_CLIENT)
        && matches!(el.attr("type"), Some("get" | "set"))
        && el.get_child("query", NS_REGISTER).is_some()
}

/// Classifies an element received during negotiation, or names the stream
/// error it deserves. `registration`: the stream's host allows in-band
/// registration.
pub fn classify(
    el: &Element,
    phase: &Phase,
    registration: bool,
) -> Result<Negotiation, StreamErrorCondition> {
    match phase {
        Phase::Unauthenticated { tls } => {
            if *tls && is_preauth_iq(el) {
                // Answered by the invitations feature, whether or not open
                // registration is on (nobody answering: service-unavailable).
                Ok(Negotiation::Register)
            } else if *tls && is_register_iq(el) {
                Ok(if registration {
                    Negotiation::Register
                } else {
                    Negotiation::RefuseIq(StanzaErrorCondition::ServiceUnavailable)
                })
            } else if el.is("starttls", NS_TLS) {
                if *tls {
                    // A second STARTTLS is a protocol violation.
                    Err(StreamErrorCondition::PolicyViolation)
                } else {
                    Ok(Negotiation::StartTls)
                }
            } else if el.is("auth", NS_SASL) {
                Ok(Negotiation::Auth)
            } else {
                Err(StreamErrorCondition::NotAuthorized)
            }
        }
        Phase::Authenticated { .. } => {
            let is_bind = el.is("iq", NS_CLIENT)
                && el.attr("type") == Some("set")
                && el.get_child("bind", NS_BIND).is_some();
            if is_bind {
                Ok(Negotiation::Bind)
            } else {
                Err(StreamErrorCondition::NotAuthorized)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(to: Option<&str>, version: Option<&str>, default_ns: &str) -> StreamHeader {
        StreamHeader {
            name: "stream".into(),
            ns: NS_STREAMS.into(),
            default_ns: Some(default_ns.into()),
            to: to.map(Into::into),
            from: None,
            id: None,
            version: version.map(Into::into),
            lang: None,
            prefixes: vec![],
        }
    }

    #[test]
    fn header_checks() {
        let domains: HashSet<String> = ["example.org".to_string()].into();
        let ok = header(Some("Example.ORG"), Some("1.0"), NS_CLIENT);
        assert_eq!(
            check_header(&ok, &domains, "example.org").unwrap(),
            "example.org"
        );
        let unknown = header(Some("other.org"), Some("1.0"), NS_CLIENT);
        assert_eq!(
            check_header(&unknown, &domains, "example.org"),
            Err(StreamErrorCondition::HostUnknown)
        );
        for v in [None, Some("0.9"), Some("2.0"), Some("1.")] {
            assert_eq!(
                check_header(
                    &header(Some("example.org"), v, NS_CLIENT),
                    &domains,
                    "example.org"
                ),
                Err(StreamErrorCondition::UnsupportedVersion),
                "{v:?}"
            );
        }
        assert_eq!(
            check_header(
                &header(Some("example.org"), Some("1.0"), "jabber:server"),
                &domains,
                "x"
            ),
            Err(StreamErrorCondition::InvalidNamespace)
        );
        let mut wrong_stream_ns = header(Some("example.org"), Some("1.0"), NS_CLIENT);
        wrong_stream_ns.ns = "urn:wrong".into();
        assert_eq!(
            check_header(&wrong_stream_ns, &domains, "x"),
            Err(StreamErrorCondition::InvalidNamespace)
        );
    }

    #[test]
    fn mechanisms_offered_by_transport() {
        let names = |v: Vec<Mechanism>| v.into_iter().map(Mechanism::name).collect::<Vec<_>>();
        assert_eq!(
            names(offered_mechanisms(true, true, true)),
            [
                "SCRAM-SHA-512-PLUS",
                "SCRAM-SHA-256-PLUS",
                "SCRAM-SHA-1-PLUS",
                "SCRAM-SHA-512",
                "SCRAM-SHA-256",
                "SCRAM-SHA-1",
                "PLAIN"
            ]
        );
        assert_eq!(
            names(offered_mechanisms(false, false, true)),
            ["SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1"]
        );
    }

    #[test]
    fn only_starttls_before_tls_when_required() {
        let f = features_unauthenticated(
            false,
            true,
            &offered_mechanisms(false, false, true),
            &[],
            true,
        );
        assert!(f
            .get_child("starttls", NS_TLS)
            .unwrap()
            .get_child("required", NS_TLS)
            .is_some());
        assert!(f.get_child("mechanisms", NS_SASL).is_none());
        assert!(f.get_child("register", NS_REGISTER_FEATURE).is_none());
    }

    #[test]
    fn registration_is_offered_only_over_tls_when_allowed() {
        let mechs = offered_mechanisms(true, false, true);
        let with = |tls, allowed| {
            features_unauthenticated(tls, false, &mechs, &[], allowed)
                .get_child("register", NS_REGISTER_FEATURE)
                .is_some()
        };
        assert!(with(true, true));
        assert!(!with(true, false));
        assert!(!with(false, true));
    }

    #[test]
    fn an_invitation_token_is_heard_over_tls_even_where_registration_is_off() {
        let preauth = Element::new("iq", NS_CLIENT)
            .with_attr("type", "set")
            .with_child(Element::new("preauth", NS_PARS).with_attr("token", "t"));
        let tls = Phase::Unauthenticated { tls: true };
        assert_eq!(classify(&preauth, &tls, false), Ok(Negotiation::Register));
        assert_eq!(
            classify(&preauth, &Phase::Unauthenticated { tls: false }, false),
            Err(StreamErrorCondition::NotAuthorized)
        );
    }

    #[test]
    fn register_iq_before_auth() {
        let get = Element::new("iq", NS_CLIENT)
            .with_attr("type", "get")
            .with_child(Element::new("query", NS_REGISTER));
        let tls = Phase::Unauthenticated { tls: true };
        assert_eq!(classify(&get, &tls, true), Ok(Negotiation::Register));
        assert_eq!(
            classify(&get, &tls, false),
            Ok(Negotiation::RefuseIq(
                StanzaErrorCondition::ServiceUnavailable
            ))
        );
        // Never before TLS: the password would cross the wire in the clear.
        assert_eq!(
            classify(&get, &Phase::Unauthenticated { tls: false }, true),
            Err(StreamErrorCondition::NotAuthorized)
        );
        // Any other IQ is still a stanza before authentication.
        let ping = Element::new("iq", NS_CLIENT)
            .with_attr("type", "get")
            .with_child(Element::new("ping", "urn:xmpp:ping"));
        assert_eq!(
            classify(&ping, &tls, true),
            Err(StreamErrorCondition::NotAuthorized)
        );
        // After authentication registration is an ordinary module IQ, not
        // part of negotiation.
        let authed = Phase::Authenticated {
            tls: true,
            username: "a".into(),
            domain: "example.org".into(),
        };
        assert_eq!(
            classify(&get, &authed, true),
            Err(StreamErrorCondition::NotAuthorized)
        );
    }

    #[test]
    fn stanzas_before_auth_are_not_authorized() {
        let msg = Element::new("message", NS_CLIENT);
        let phase = Phase::Unauthenticated { tls: true };
        assert_eq!(
            classify(&msg, &phase, false),
            Err(StreamErrorCondition::NotAuthorized)
        );
        let st = Element::new("starttls", NS_TLS);
        assert_eq!(
            classify(&st, &phase, false),
            Err(StreamErrorCondition::PolicyViolation)
        );
        let bind = Element::new("iq", NS_CLIENT)
            .with_attr("type", "set")
            .with_child(Element::new("bind", NS_BIND));
        let authed = Phase::Authenticated {
            tls: true,
            username: "a".into(),
            domain: "example.org".into(),
        };
        assert_eq!(classify(&bind, &authed, false), Ok(Negotiation::Bind));
        assert_eq!(
            classify(&msg, &authed, false),
            Err(StreamErrorCondition::NotAuthorized)
        );
    }
}
