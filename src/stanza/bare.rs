//! A JID's bare form, made cheaply.
//!
//! Why not `jid`'s own `to_bare()`: it builds the new string with
//! `format!("{node}@{domain}")`, and the formatting machinery made it the
//! most expensive step of routing a chat message: three calls per archived
//! message cost more than building its `<stanza-id/>` (perf, issue #11).
//! A clone of the JID's string cut at its `/` is one allocation and one
//! copy, and needs no new parse: the parts are those already checked.

use jid::{BareJid, Jid};

/// The bare JID (localpart and domain) of a JID.
pub trait Bare {
    /// As a JID of its own.
    fn bare(&self) -> BareJid;
    /// As text, borrowed from the JID: for a look-up, no copy at all.
    fn bare_str(&self) -> &str;
}

impl Bare for Jid {
    fn bare(&self) -> BareJid {
        self.clone().into_bare()
    }

    fn bare_str(&self) -> &str {
        let s = self.as_str();
        match self.resource() {
            Some(res) => &s[..s.len() - res.as_str().len() - 1],
            None => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Bare;
    use jid::{BareJid, FullJid, Jid};

    #[test]
    fn the_bare_form_is_the_one_jid_gives() {
        for s in [
            "juliet@capulet.lit/balcony",
            "juliet@capulet.lit",
            "capulet.lit/balcony",
            "capulet.lit",
            "Juliet@Capulet.lit/Balcony/with/slashes",
        ] {
            let jid = Jid::new(s).unwrap();
            assert_eq!(jid.bare(), jid.to_bare(), "{s}");
            assert_eq!(jid.bare().as_str(), jid.to_bare().as_str(), "{s}");
            assert_eq!(jid.bare_str(), jid.to_bare().as_str(), "{s}");
        }
        let full = FullJid::new("romeo@montague.lit/orchard").unwrap();
        assert_eq!(full.bare(), BareJid::new("romeo@montague.lit").unwrap());
        let bare = BareJid::new("romeo@montague.lit").unwrap();
        assert_eq!(bare.bare(), bare);
    }
}
