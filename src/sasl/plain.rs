//! The PLAIN mechanism (RFC 4616).
//!
//! The message is `[authzid] NUL authcid NUL passwd`. Only parsing lives here;
//! the password is checked by the caller, typically against stored SCRAM
//! credentials with [`super::ScramCredentials::verify_password`]. PLAIN sends
//! the password in the clear, so the caller must only offer it over TLS.

use std::fmt;

use super::SaslError;

/// The fields of a PLAIN message.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The identity to act as, if the client asked for one (an empty authzid is `None`).
    pub authzid: Option<String>,
    /// The authentication identity (username), not normalised.
    pub authcid: String,
    /// The password, as sent.
    pub password: String,
}

// Hand-written so that logging a PlainCredentials never leaks the password.
impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainCredentials")
            .field("authzid", &self.authzid)
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parses a PLAIN message (already base64-decoded).
///
/// Fails with [`SaslError::MalformedRequest`] unless the message has exactly
/// two NUL separators, valid UTF-8 and a non-empty authcid and password.
pub fn parse_plain(msg: &[u8]) -> Result<PlainCredentials, SaslError> {
    let mut parts = msg.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MalformedRequest);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::MalformedRequest);
    }
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| SaslError::MalformedRequest)
    };
    Ok(PlainCredentials {
        authzid: if authzid.is_empty() {
            None
        } else {
            Some(utf8(authzid)?)
        },
        authcid: utf8(authcid)?,
        password: utf8(password)?,
    })
}

/// Builds a PLAIN message (client side, before base64 encoding).
pub fn build_plain(authzid: Option<&str>, authcid: &str, password: &str) -> Vec<u8> {
    let authzid = authzid.unwrap_or("");
    let mut msg = Vec::with_capacity(authzid.len() + authcid.len() + password.len() + 2);
    msg.extend_from_slice(authzid.as_bytes());
    msg.push(0);
    msg.extend_from_slice(authcid.as_bytes());
    msg.push(0);
    msg.extend_from_slice(password.as_bytes());
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4616_examples() {
        // RFC 4616 §4.
        let c = parse_plain(b"\0tim\0tanstaaftanstaaf").unwrap();
        assert_eq!(c.authzid, None);
        assert_eq!(c.authcid, "tim");
        assert_eq!(c.password, "tanstaaftanstaaf");

        let c = parse_plain(b"Ursel\0Kurt\0xipj3plmq").unwrap();
        assert_eq!(c.authzid.as_deref(), Some("Ursel"));
        assert_eq!(c.authcid, "Kurt");
        assert_eq!(c.password, "xipj3plmq");
    }

    #[test]
    fn utf8_fields() {
        let c = parse_plain("\0jürgen\0pässwörd".as_bytes()).unwrap();
        assert_eq!(c.authcid, "jürgen");
        assert_eq!(c.password, "pässwörd");
    }

    #[test]
    fn rejects_malformed() {
        let bad: &[&[u8]] = &[
            b"",
            b"\0",
            b"\0\0",
            b"user",
            b"\0user",
            b"\0user\0",
            b"\0\0password",
            b"a\0b\0c\0d",
            b"\0user\0pass\0",
            b"\0us\xffer\0pass",
            b"\0user\0pa\xc3",
            b"\xff\0user\0pass",
        ];
        for msg in bad {
            assert_eq!(
                parse_plain(msg),
                Err(SaslError::MalformedRequest),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn build_round_trip() {
        let msg = build_plain(Some("admin"), "kurt", "secret");
        assert_eq!(msg, b"admin\0kurt\0secret");
        let c = parse_plain(&msg).unwrap();
        assert_eq!(c.authzid.as_deref(), Some("admin"));
        assert_eq!(build_plain(None, "a", "b"), b"\0a\0b");
        assert!(!format!("{c:?}").contains("secret"));
    }
}
