//! Room nicknames as the service enforces them (XEP-0045 §7.2.9, the
//! nickname profile of RFC 8266). The router already parsed the `to` as a
//! JID (the resource profile: width and compatibility mapping, NFKC,
//! forbidden characters refused as `jid-malformed`) and delivers the
//! normalised address, so the room cannot tell those mappings happened.
//! What the room maps itself is spaces — runs of white space become one
//! space, none at either end — and when that changes the nick the
//! occupant asked for, its self-presence carries 210.

use crate::xml::Element;

/// The nick as the room uses it.
pub fn enforce(nick: &str) -> String {
    let mut out = String::with_capacity(nick.len());
    for word in nick.split(char::is_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The nick exactly as the client wrote it in the presence's `to`
/// (before any normalisation): the text after the first '/', which
/// neither a local part nor a domain may contain.
pub fn requested(stanza: &Element) -> Option<&str> {
    stanza.attr("to")?.split_once('/').map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::enforce;

    #[test]
    fn spaces_are_collapsed_and_trimmed() {
        assert_eq!(enforce("  third   witch "), "third witch");
        assert_eq!(enforce("a\u{3000}b"), "a b");
        assert_eq!(enforce("plain"), "plain");
        assert_eq!(enforce("   "), "");
    }
}
