//! SASL Upgrade Tasks (XEP-0480) for SCRAM, without I/O: the `<upgrade/>`
//! names advertised in `<authentication/>` and asked for in
//! `<authenticate/>`, the `<continue/>` that starts a task, the salt the
//! server hands out and the SaltedPassword the client sends back.
//!
//! Why: accounts imported from Prosody carry SCRAM-SHA-1 keys only, and a
//! one-way hash cannot be turned into another one. A client that just
//! proved it knows the password can compute SaltedPassword for the missing
//! hash with a salt and iteration count we choose; StoredKey and ServerKey
//! follow from it (RFC 5802 §3), and the account can use that mechanism
//! from then on.

use crate::sasl::{SaslError, ScramHash};
use crate::stream::sasl2::{decode, encode, NS_SASL2};
use crate::xml::Element;

pub const NS_UPGRADE: &str = "urn:xmpp:sasl:upgrade:0";
pub const NS_SCRAM_UPGRADE: &str = "urn:xmpp:scram-upgrade:0";

/// Task names are the mechanism names with this prefix, never `-PLUS`
/// (§2.1: channel binding has nothing to do with the stored keys).
const PREFIX: &str = "UPGR-";

/// The task name that upgrades an account to `hash`.
pub fn task_name(hash: ScramHash) -> String {
    format!("{PREFIX}{}", hash.name())
}

/// The hash a task name upgrades to; None for a name we do not offer.
pub fn task_hash(name: &str) -> Option<ScramHash> {
    let mech = name.strip_prefix(PREFIX)?;
    ScramHash::ALL.into_iter().find(|h| h.name() == mech)
}

/// The `<upgrade/>` elements for `<authentication/>`, one per hash.
pub fn advertised(hashes: &[ScramHash]) -> impl Iterator<Item = Element> + '_ {
    hashes
        .iter()
        .map(|h| Element::new("upgrade", NS_UPGRADE).with_text(task_name(*h)))
}

/// The upgrades `<authenticate/>` asks for, in the client's order: names
/// we know, each once. Unknown names are ignored (the client may know
/// tasks we do not); the result holds at most one entry per SCRAM hash,
/// however many elements were sent.
pub fn requested(authenticate: &Element) -> Vec<ScramHash> {
    let mut out: Vec<ScramHash> = Vec::new();
    for u in authenticate
        .children()
        .filter(|c| c.is("upgrade", NS_UPGRADE))
    {
        if let Some(h) = task_hash(u.text().trim()) {
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    out
}

/// `<continue/>` naming the one task to run next; `additional_data` is
/// the mechanism's final message (SCRAM's server signature), carried by
/// the first `<continue/>` of an authentication since `<success/>` comes
/// only after the tasks.
pub fn continue_with(task: ScramHash, additional_data: Option<&[u8]>) -> Element {
    let mut c = Element::new("continue", NS_SASL2);
    if let Some(d) = additional_data {
        c.append_child(Element::new("additional-data", NS_SASL2).with_text(encode(d)));
    }
    c.append_child(
        Element::new("tasks", NS_SASL2)
            .with_child(Element::new("task", NS_SASL2).with_text(task_name(task))),
    );
    c.append_child(Element::new("text", NS_SASL2).with_text(format!(
        "upgrade to {} as requested by the client",
        task.name()
    )));
    c
}

/// Checks the client's `<next task=…/>` starting `task`.
pub fn check_next(el: &Element, task: ScramHash) -> Result<(), SaslError> {
    if !el.is("next", NS_SASL2) {
        return Err(SaslError::MalformedRequest);
    }
    match el.attr("task").and_then(task_hash) {
        Some(h) if h == task => Ok(()),
        _ => Err(SaslError::MalformedRequest),
    }
}

/// The server's `<task-data/>`: the salt (base64) and iteration count the
/// client derives SaltedPassword with (§3, "iterations" as of 0.2.0).
pub fn salt_data(salt: &[u8], iterations: u32) -> Element {
    Element::new("task-data", NS_SASL2).with_child(
        Element::new("salt", NS_SCRAM_UPGRADE)
            .with_attr("iterations", iterations.to_string())
            .with_text(encode(salt)),
    )
}

/// The SaltedPassword in the client's `<task-data><hash/></task-data>`:
/// exactly as long as `hash`'s output, or the request is malformed.
pub fn salted_password(el: &Element, hash: ScramHash) -> Result<Vec<u8>, SaslError> {
    if !el.is("task-data", NS_SASL2) {
        return Err(SaslError::MalformedRequest);
    }
    let text = el
        .get_child("hash", NS_SCRAM_UPGRADE)
        .ok_or(SaslError::MalformedRequest)?
        .text();
    // Base64 of 64 bytes is 88 characters; refuse longer before decoding
    // (some slack for the whitespace the XEP's examples wrap it in).
    if text.len() > 4 * hash.output_len().div_ceil(3) + 64 {
        return Err(SaslError::MalformedRequest);
    }
    let salted = decode(&text)?;
    if salted.len() != hash.output_len() {
        return Err(SaslError::MalformedRequest);
    }
    Ok(salted)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::modules::parsed as parse;

    #[test]
    fn task_names_round_trip_and_refuse_plus() {
        for h in ScramHash::ALL {
            assert_eq!(task_hash(&task_name(h)), Some(h));
        }
        assert_eq!(task_name(ScramHash::Sha256), "UPGR-SCRAM-SHA-256");
        assert_eq!(task_hash("UPGR-SCRAM-SHA-256-PLUS"), None);
        assert_eq!(task_hash("SCRAM-SHA-256"), None);
        assert_eq!(task_hash("UPGR-BLOOP2"), None);
    }

    #[test]
    fn requested_upgrades_are_known_and_unique() {
        let el = parse(
            "<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-1'>\
             <upgrade xmlns='urn:xmpp:sasl:upgrade:0'>UPGR-SCRAM-SHA-256</upgrade>\
             <upgrade xmlns='urn:xmpp:sasl:upgrade:0'>UPGR-BLOOP2</upgrade>\
             <upgrade xmlns='urn:xmpp:sasl:upgrade:0'> UPGR-SCRAM-SHA-256 </upgrade>\
             <upgrade xmlns='urn:xmpp:sasl:upgrade:0'>UPGR-SCRAM-SHA-512</upgrade>\
             <upgrade>UPGR-SCRAM-SHA-1</upgrade></authenticate>",
        );
        assert_eq!(requested(&el), [ScramHash::Sha256, ScramHash::Sha512]);
    }

    #[test]
    fn the_hash_must_have_the_hash_functions_length() {
        let good = encode(&[7u8; 32]);
        let el = parse(&format!(
            "<task-data xmlns='urn:xmpp:sasl:2'><hash xmlns='urn:xmpp:scram-upgrade:0'>\n  {good}\n</hash></task-data>"
        ));
        assert_eq!(salted_password(&el, ScramHash::Sha256).unwrap(), [7u8; 32]);
        assert_eq!(
            salted_password(&el, ScramHash::Sha512),
            Err(SaslError::MalformedRequest)
        );
        let bad = parse(
            "<task-data xmlns='urn:xmpp:sasl:2'><hash xmlns='urn:xmpp:scram-upgrade:0'>!!</hash></task-data>",
        );
        assert_eq!(
            salted_password(&bad, ScramHash::Sha256),
            Err(SaslError::IncorrectEncoding)
        );
        let none = parse("<task-data xmlns='urn:xmpp:sasl:2'/>");
        assert!(salted_password(&none, ScramHash::Sha256).is_err());
    }

    #[test]
    fn next_must_name_the_task_continued() {
        let next = parse("<next xmlns='urn:xmpp:sasl:2' task='UPGR-SCRAM-SHA-256'/>");
        assert!(check_next(&next, ScramHash::Sha256).is_ok());
        assert!(check_next(&next, ScramHash::Sha512).is_err());
        let c = continue_with(ScramHash::Sha512, Some(b"v=x"));
        assert_eq!(
            c.get_child("tasks", NS_SASL2)
                .and_then(|t| t.get_child("task", NS_SASL2))
                .map(|t| t.text())
                .as_deref(),
            Some("UPGR-SCRAM-SHA-512")
        );
        let s = salt_data(b"salt", 4096);
        let salt = s.get_child("salt", NS_SCRAM_UPGRADE).unwrap();
        assert_eq!(salt.attr("iterations"), Some("4096"));
        assert_eq!(decode(&salt.text()).unwrap(), b"salt");
    }
}
