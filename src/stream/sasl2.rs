//! SASL2 (XEP-0388), Bind 2 (XEP-0386) and FAST (XEP-0484) rules without
//! I/O: the `<authentication/>` stream feature, parsing `<authenticate/>`
//! with what it carries inline, the resource a device binds, XEP-0474's
//! downgrade protection hash, and the `<success/>`/`<failure/>` answers.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::sasl::{SaslError, ScramHash};
use crate::stream::c2s::NS_SASL;
use crate::xml::Element;

pub const NS_SASL2: &str = "urn:xmpp:sasl:2";
pub const NS_BIND2: &str = "urn:xmpp:bind:0";
pub const NS_FAST: &str = "urn:xmpp:fast:0";
pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
pub const NS_CSI: &str = "urn:xmpp:csi:0";
pub const NS_SM: &str = crate::stream::sm::NS_SM;

/// XEPs implemented by the SASL2 negotiation.
pub const XEPS: &[u16] = &[388, 386, 484, 474, 480];

/// Longest user-agent id accepted (a UUID is 36); longer is a bad request.
pub const MAX_CLIENT_ID: usize = 128;
/// Software and device names are cut to this many characters.
pub const MAX_UA_TEXT: usize = 128;
/// A Bind 2 tag is cut to this many characters.
pub const MAX_TAG: usize = 32;

/// `<user-agent/>`: who is logging in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserAgent {
    pub id: Option<String>,
    pub software: String,
    pub device: String,
}

/// `<bind xmlns='urn:xmpp:bind:0'/>` and what it asks to enable.
#[derive(Debug, Clone, Default)]
pub struct BindRequest {
    pub tag: Option<String>,
    pub carbons: bool,
    /// `<enable xmlns='urn:xmpp:sm:3'/>`, as sent.
    pub sm_enable: Option<Element>,
    pub inactive: bool,
}

/// `<fast/>` on a token login.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastUse {
    pub count: Option<i64>,
    pub invalidate: bool,
}

/// A parsed `<authenticate/>`.
#[derive(Debug, Clone)]
pub struct Authenticate {
    pub mechanism: String,
    /// None: no initial response (the mechanism's first challenge asks).
    pub initial_response: Option<Vec<u8>>,
    pub user_agent: UserAgent,
    pub bind: Option<BindRequest>,
    /// `<request-token mechanism=…/>`.
    pub request_token: Option<String>,
    pub fast: Option<FastUse>,
    /// `<resume xmlns='urn:xmpp:sm:3'/>`, inline (XEP-0198 §"SASL2").
    pub resume: Option<Element>,
    /// XEP-0480 upgrades asked for: known task names, each once.
    pub upgrades: Vec<ScramHash>,
}

fn cut(s: &str, max: usize) -> String {
    s.trim().chars().take(max).collect()
}

fn is_true(v: Option<&str>) -> bool {
    matches!(v, Some("true" | "1"))
}

/// Decodes base64 element text (no "=" special case in SASL2).
pub fn decode(text: &str) -> Result<Vec<u8>, SaslError> {
    let t: String = text.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .map_err(|_| SaslError::IncorrectEncoding)
}

pub fn encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Parses `<authenticate/>`.
pub fn parse_authenticate(el: &Element) -> Result<Authenticate, SaslError> {
    let mechanism = el
        .attr("mechanism")
        .filter(|m| !m.is_empty())
        .ok_or(SaslError::InvalidMechanism)?
        .to_owned();
    let initial_response = match el.get_child("initial-response", NS_SASL2) {
        Some(r) => Some(decode(&r.text())?),
        None => None,
    };
    let mut user_agent = UserAgent::default();
    if let Some(ua) = el.get_child("user-agent", NS_SASL2) {
        if let Some(id) = ua.attr("id") {
            if id.is_empty() || id.len() > MAX_CLIENT_ID || id.chars().any(char::is_control) {
                return Err(SaslError::MalformedRequest);
            }
            user_agent.id = Some(id.to_owned());
        }
        if let Some(s) = ua.get_child("software", NS_SASL2) {
            user_agent.software = cut(&s.text(), MAX_UA_TEXT);
        }
        if let Some(d) = ua.get_child("device", NS_SASL2) {
            user_agent.device = cut(&d.text(), MAX_UA_TEXT);
        }
    }
    let bind = el.get_child("bind", NS_BIND2).map(|b| BindRequest {
        tag: b
            .get_child("tag", NS_BIND2)
            .map(|t| cut(&t.text(), MAX_TAG))
            .filter(|t| !t.is_empty()),
        carbons: b.get_child("enable", NS_CARBONS).is_some(),
        sm_enable: b.get_child("enable", NS_SM).cloned(),
        inactive: b.get_child("inactive", NS_CSI).is_some(),
    });
    let request_token = el
        .get_child("request-token", NS_FAST)
        .map(|r| r.attr("mechanism").unwrap_or("").to_owned());
    let fast = match el.get_child("fast", NS_FAST) {
        None => None,
        Some(f) => Some(FastUse {
            count: match f.attr("count") {
                None => None,
                Some(c) => Some(c.parse::<u32>().map_err(|_| SaslError::MalformedRequest)? as i64),
            },
            invalidate: is_true(f.attr("invalidate")),
        }),
    };
    Ok(Authenticate {
        mechanism,
        initial_response,
        user_agent,
        bind,
        request_token,
        fast,
        resume: el.get_child("resume", NS_SM).cloned(),
        upgrades: crate::stream::sasl_upgrade::requested(el),
    })
}

/// The resource a Bind 2 request binds (§4): the client's tag, a dot, and
/// a suffix derived from the account and the user-agent id, so that a
/// device reconnecting gets its resource back (and replaces its old
/// session) while two devices never share one. Without an id, random.
pub fn bound_resource(tag: Option<&str>, account: &str, client_id: Option<&str>) -> String {
    let suffix = match client_id {
        Some(id) => {
            let h = Sha256::new()
                .chain_update(account.as_bytes())
                .chain_update([0])
                .chain_update(id.as_bytes())
                .finalize();
            h[..6].iter().map(|b| format!("{b:02x}")).collect()
        }
        None => format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
    };
    let tag = tag
        .filter(|t| jid::ResourcePart::new(t).is_ok() && !t.contains('/'))
        .unwrap_or("waxwing");
    format!("{tag}.{suffix}")
}

/// XEP-0474 §2.1: the hash over the advertised mechanisms and, when
/// XEP-0440 advertised them, channel-binding types, each list sorted by
/// octets, joined by 0x1E, the two lists separated by 0x1F; hashed with the
/// SCRAM mechanism's own hash, in base64. Only the `<mechanism/>` list of
/// the profile in use counts: FAST's HT mechanisms are not in it.
pub fn downgrade_hash(hash: ScramHash, mechanisms: &[&str], cb_types: Option<&[&str]>) -> String {
    let mut mechs = mechanisms.to_vec();
    mechs.sort_unstable();
    let mut s = mechs.join("\u{1e}");
    if let Some(cb) = cb_types {
        let mut cb = cb.to_vec();
        cb.sort_unstable();
        s.push('\u{1f}');
        s.push_str(&cb.join("\u{1e}"));
    }
    encode(&hash.hash(s.as_bytes()))
}

/// The `<authentication/>` stream feature; `upgrades`: the SCRAM hashes
/// XEP-0480 tasks are offered for.
pub fn authentication_feature(
    mechanisms: &[&str],
    fast: &[&str],
    sm: bool,
    upgrades: &[ScramHash],
) -> Element {
    let mut a = Element::new("authentication", NS_SASL2);
    for m in mechanisms {
        a.append_child(Element::new("mechanism", NS_SASL2).with_text(*m));
    }
    let mut inline = Element::new("inline", NS_SASL2);
    let mut bind_inline = Element::new("inline", NS_BIND2);
    bind_inline.append_child(Element::new("feature", NS_BIND2).with_attr("var", NS_CARBONS));
    bind_inline.append_child(Element::new("feature", NS_BIND2).with_attr("var", NS_CSI));
    if sm {
        bind_inline.append_child(Element::new("feature", NS_BIND2).with_attr("var", NS_SM));
    }
    inline.append_child(Element::new("bind", NS_BIND2).with_child(bind_inline));
    if !fast.is_empty() {
        let mut f = Element::new("fast", NS_FAST);
        for m in fast {
            f.append_child(Element::new("mechanism", NS_FAST).with_text(*m));
        }
        inline.append_child(f);
    }
    if sm {
        inline.append_child(Element::new("sm", NS_SM));
    }
    a.append_child(inline);
    for u in crate::stream::sasl_upgrade::advertised(upgrades) {
        a.append_child(u);
    }
    a
}

/// `<failure/>` with the RFC 6120 condition and a text.
pub fn failure(e: &SaslError, text: Option<&str>) -> Element {
    let mut f = Element::new("failure", NS_SASL2).with_child(Element::new(e.condition(), NS_SASL));
    if let Some(t) = text {
        f.append_child(Element::new("text", NS_SASL2).with_text(t));
    }
    f
}

/// `<success/>` before what is inlined into it.
pub fn success(additional_data: Option<&[u8]>, authorization_identifier: &str) -> Element {
    let mut s = Element::new("success", NS_SASL2);
    if let Some(d) = additional_data {
        s.append_child(Element::new("additional-data", NS_SASL2).with_text(encode(d)));
    }
    s.append_child(
        Element::new("authorization-identifier", NS_SASL2).with_text(authorization_identifier),
    );
    s
}

/// A human text for a failure condition.
pub fn failure_text(e: &SaslError) -> &'static str {
    match e {
        SaslError::NotAuthorized => "authentication failed",
        SaslError::InvalidMechanism => "mechanism not offered",
        SaslError::MalformedRequest => "malformed request",
        SaslError::IncorrectEncoding => "invalid base64",
        SaslError::TemporaryAuthFailure => "try again later",
        SaslError::EncryptionRequired => "TLS is required",
        SaslError::Aborted => "aborted",
        SaslError::InvalidAuthzid => "authorization identity refused",
        _ => "authentication failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XEP-0474 §2.3's example: SHA-1 over
    /// 'SCRAM-SHA-1\x1eSCRAM-SHA-1-PLUS\x1ftls-exporter\x1etls-server-end-point'.
    #[test]
    fn downgrade_hash_matches_the_xep_example() {
        let h = downgrade_hash(
            ScramHash::Sha1,
            &["SCRAM-SHA-1-PLUS", "SCRAM-SHA-1"],
            Some(&["tls-server-end-point", "tls-exporter"]),
        );
        assert_eq!(h, "G6k/rBLDqgOhRRaCuuatSDFkJ08=");
    }

    #[test]
    fn downgrade_hash_without_xep_0440_has_no_separator() {
        let with = downgrade_hash(ScramHash::Sha256, &["SCRAM-SHA-256"], Some(&[]));
        let without = downgrade_hash(ScramHash::Sha256, &["SCRAM-SHA-256"], None);
        assert_ne!(with, without);
        assert_eq!(
            without,
            encode(&Sha256::digest(b"SCRAM-SHA-256")),
            "one mechanism, nothing else"
        );
    }

    #[test]
    fn a_device_gets_its_resource_back() {
        let a = bound_resource(Some("Conv"), "a@x", Some("dev-1"));
        assert_eq!(a, bound_resource(Some("Conv"), "a@x", Some("dev-1")));
        assert_ne!(a, bound_resource(Some("Conv"), "a@x", Some("dev-2")));
        assert!(a.starts_with("Conv."));
        assert!(bound_resource(Some("a/b"), "a@x", None).starts_with("waxwing."));
    }

    #[test]
    fn authenticate_is_parsed_with_its_inline_requests() {
        let el = crate::modules::xml_from_storage(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='PLAIN'>\
             <initial-response>AGEAYg==</initial-response>\
             <user-agent id='d4565fa7'><software>Awesome</software><device>Phone</device></user-agent>\
             <bind xmlns='urn:xmpp:bind:0'><tag>Aw</tag><enable xmlns='urn:xmpp:carbons:2'/>\
             <enable xmlns='urn:xmpp:sm:3' resume='true'/><inactive xmlns='urn:xmpp:csi:0'/></bind>\
             <request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>\
             <fast xmlns='urn:xmpp:fast:0' count='3' invalidate='1'/></authenticate>",
            16,
        )
        .unwrap()
        .remove(0);
        let a = parse_authenticate(&el).unwrap();
        assert_eq!(a.mechanism, "PLAIN");
        assert_eq!(a.initial_response.as_deref(), Some(&b"\0a\0b"[..]));
        assert_eq!(a.user_agent.id.as_deref(), Some("d4565fa7"));
        assert_eq!(a.user_agent.device, "Phone");
        let b = a.bind.unwrap();
        assert!(b.carbons && b.inactive && b.sm_enable.is_some());
        assert_eq!(b.tag.as_deref(), Some("Aw"));
        assert_eq!(a.request_token.as_deref(), Some("HT-SHA-256-NONE"));
        assert_eq!(
            a.fast,
            Some(FastUse {
                count: Some(3),
                invalidate: true
            })
        );
    }
}
