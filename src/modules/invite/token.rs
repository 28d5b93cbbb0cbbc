//! Invitation tokens and the addresses that carry them: the random token,
//! the hash it is stored under, the `xmpp:` URI (XEP-0401 §5.1, XEP-0379
//! §3) and the landing page's URL.

use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};

use crate::storage::InviteRecord;

/// 32 alphanumeric characters: about 190 bits, and nothing that needs
/// escaping in a URI (XEP-0401 asks for an alphanumeric string).
pub fn generate() -> String {
    Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32)
}

/// The key a token is stored and looked up by.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Could `s` be a token we issued? Checked before any lookup, so junk
/// from the network never reaches the database.
pub fn well_formed(s: &str) -> bool {
    (16..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The `xmpp:` URI of an invitation: an account invite (no inviter, or
/// the admin flag: XEP-0401 "Account Creation") names the host
/// (`?register`), a contact invite the inviter (`?roster`, with `ibr=y`
/// when the invitee may create an account here).
pub fn uri(invite: &InviteRecord, token: &str) -> String {
    // An account invitation that names the account carries it (§4.2).
    let account = match &invite.username {
        Some(name) => format!("{name}@{}", invite.domain),
        None => invite.domain.clone(),
    };
    match &invite.inviter {
        _ if invite.admin => format!("xmpp:{account}?register;preauth={token}"),
        None => format!("xmpp:{account}?register;preauth={token}"),
        Some(inviter) if invite.may_create_account => {
            format!("xmpp:{inviter}?roster;preauth={token};ibr=y")
        }
        Some(inviter) => format!("xmpp:{inviter}?roster;preauth={token}"),
    }
}

/// The landing page on the HTTP listener at `base`.
pub fn landing_url(base: &str, token: &str) -> String {
    format!("{}/invite/{token}", base.trim_end_matches('/'))
}

/// A duration such as `7d`, `12h`, `30m`, `90s` or plain seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = digits.parse().ok()?;
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return None,
    };
    n.checked_mul(factor).filter(|&d| d > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_well_formed() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(well_formed(&a));
        assert!(!well_formed("short"));
        assert!(!well_formed("has/slash-and-is-long-enough-0123"));
        assert_eq!(hash("x").len(), 64);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Some(604_800));
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("2h"), Some(7200));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("3y"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn uris_follow_xep_0401() {
        let mut r = InviteRecord {
            token_hash: String::new(),
            domain: "example.com".into(),
            inviter: None,
            may_create_account: true,
            admin: false,
            expires: None,
            uses: 0,
            max_uses: 1,
            created: 0,
            username: None,
        };
        assert_eq!(uri(&r, "T"), "xmpp:example.com?register;preauth=T");
        r.username = Some("juliet".into());
        assert_eq!(uri(&r, "T"), "xmpp:juliet@example.com?register;preauth=T");
        r.username = None;
        r.inviter = Some("romeo@example.com".into());
        assert_eq!(
            uri(&r, "T"),
            "xmpp:romeo@example.com?roster;preauth=T;ibr=y"
        );
        assert_eq!(landing_url("https://x/", "T"), "https://x/invite/T");
        r.admin = true;
        assert_eq!(uri(&r, "T"), "xmpp:example.com?register;preauth=T");
    }
}
