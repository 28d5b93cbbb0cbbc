//! SASL authentication for Waxwing (RFC 6120 §6).
//!
//! This module is transport-agnostic: it consumes and produces the raw SASL
//! payloads (the caller base64-decodes `<auth/>`/`<response/>` contents and
//! base64-encodes `<challenge/>`/`<success/>` contents) and reports failures as
//! [`SaslError`], whose [`SaslError::condition`] is the RFC 6120 §6.5 element
//! name to put inside `<failure/>`.
//!
//! Mechanisms:
//! - SCRAM-SHA-1, SCRAM-SHA-256, SCRAM-SHA-512 and their `-PLUS` variants
//!   (RFC 5802, RFC 7677, channel binding per RFC 5929 / RFC 9266), server and
//!   client side: see [`ScramServer`], [`ScramClient`], [`ScramCredentials`].
//! - PLAIN (RFC 4616): see [`parse_plain`]; verify the password against stored
//!   SCRAM credentials with [`ScramCredentials::verify_password`].
//!
//! SCRAM is hand-written on top of the RustCrypto primitives because the
//! `sasl` crate is client-only and lacks SHA-512 and `-PLUS` server support.

use std::borrow::Cow;
use std::fmt;

pub mod fast;
mod plain;
mod scram;

pub use plain::{build_plain, parse_plain, PlainCredentials};
pub use scram::{
    ClientFirst, SaltedPasswordCache, ScramClient, ScramCredentials, ScramHash, ScramServer,
    DEFAULT_UNKNOWN_USER_ITERATIONS, MAX_CLIENT_ITERATIONS,
};

/// A SASL failure, one variant per RFC 6120 §6.5 defined condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// The receiving entity acknowledges that the client aborted the exchange.
    Aborted,
    /// The account is temporarily disabled.
    AccountDisabled,
    /// The credentials have expired.
    CredentialsExpired,
    /// The mechanism requires an encrypted stream.
    EncryptionRequired,
    /// The data could not be decoded (bad base64).
    IncorrectEncoding,
    /// The authzid is malformed or the authcid may not act as it.
    InvalidAuthzid,
    /// The client asked for a mechanism that is not offered.
    InvalidMechanism,
    /// The request is syntactically invalid.
    MalformedRequest,
    /// The mechanism is weaker than server policy allows for this account.
    MechanismTooWeak,
    /// Authentication failed (bad credentials, unknown user, failed channel binding...).
    NotAuthorized,
    /// A transient server-side error; the client may retry later.
    TemporaryAuthFailure,
}

impl SaslError {
    /// The RFC 6120 §6.5 condition element name, e.g. `"not-authorized"`.
    pub fn condition(&self) -> &'static str {
        match self {
            SaslError::Aborted => "aborted",
            SaslError::AccountDisabled => "account-disabled",
            SaslError::CredentialsExpired => "credentials-expired",
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::MalformedRequest => "malformed-request",
            SaslError::MechanismTooWeak => "mechanism-too-weak",
            SaslError::NotAuthorized => "not-authorized",
            SaslError::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SASL failure: {}", self.condition())
    }
}

impl std::error::Error for SaslError {}

/// A channel binding type (RFC 5929, RFC 9266).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelBindingType {
    /// `tls-exporter` (RFC 9266): 32 bytes exported with label
    /// `"EXPORTER-Channel-Binding"` and an empty context. The one to use with TLS 1.3.
    TlsExporter,
    /// `tls-server-end-point` (RFC 5929 §4): hash of the server certificate.
    TlsServerEndPoint,
    /// `tls-unique` (RFC 5929 §3): the first Finished message. Undefined for TLS 1.3.
    TlsUnique,
}

impl ChannelBindingType {
    /// All types, in our order of preference.
    pub const ALL: [ChannelBindingType; 3] = [
        ChannelBindingType::TlsExporter,
        ChannelBindingType::TlsServerEndPoint,
        ChannelBindingType::TlsUnique,
    ];

    /// The name used in the GS2 header and in XEP-0440 advertisements.
    pub fn wire_name(self) -> &'static str {
        match self {
            ChannelBindingType::TlsExporter => "tls-exporter",
            ChannelBindingType::TlsServerEndPoint => "tls-server-end-point",
            ChannelBindingType::TlsUnique => "tls-unique",
        }
    }

    /// Parses a wire name; case-sensitive, as the registered names are lowercase.
    pub fn from_wire_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.wire_name() == name)
    }
}

/// What the server knows of the TLS layer for channel binding.
///
/// `available` lists the types the server can provide together with their
/// data, e.g. `(TlsExporter, 32 exported bytes)`, `(TlsServerEndPoint, cert hash)`.
/// Empty when the stream is not TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelBindingData {
    /// Supported types and the binding data for this connection.
    pub available: Vec<(ChannelBindingType, Vec<u8>)>,
}

impl ChannelBindingData {
    /// No channel binding (plain-text stream).
    pub fn none() -> Self {
        Self::default()
    }

    /// The binding data for `ty`, if the server can provide it.
    pub fn get(&self, ty: ChannelBindingType) -> Option<&[u8]> {
        self.available
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, data)| data.as_slice())
    }

    /// Whether any channel binding type is available (i.e. `-PLUS` can be offered).
    pub fn is_empty(&self) -> bool {
        self.available.is_empty()
    }
}

/// SASLprep (RFC 4013), a documented subset.
///
/// What is implemented:
/// - pure-ASCII input is returned unchanged unless it contains a control
///   character (the common case costs one scan and no allocation);
/// - non-ASCII space characters (RFC 3454 C.1.2) are mapped to U+0020;
/// - "commonly mapped to nothing" characters (B.1, e.g. soft hyphen,
///   zero-width space, variation selectors) are removed;
/// - prohibited output is rejected: control characters (C.2.1, C.2.2),
///   private use (C.3), non-characters (C.4), characters inappropriate for
///   plain text (C.5 cannot occur in a Rust `str`, C.6), ideographic
///   description characters (C.7), display-property changers (C.8) and tagging
///   characters (C.9).
///
/// What is not: NFKC normalisation and the bidirectional check (both need
/// Unicode tables we do not carry), and the unassigned code point check
/// (RFC 4013 treats inputs as "queries", where unassigned code points are
/// allowed anyway). Because client and server use this same function, the
/// omissions only matter for interoperability with other implementations
/// when a password contains non-NFKC-normalised characters.
///
/// Returns [`SaslError::MalformedRequest`] on prohibited characters or when
/// the result is empty while the input was not.
pub fn saslprep(input: &str) -> Result<Cow<'_, str>, SaslError> {
    if input.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(Cow::Borrowed(input));
    }
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        if is_non_ascii_space(c) {
            out.push(' ');
        } else if is_mapped_to_nothing(c) {
            continue;
        } else if is_prohibited(c) {
            return Err(SaslError::MalformedRequest);
        } else {
            out.push(c);
        }
    }
    if out.is_empty() && !input.is_empty() {
        return Err(SaslError::MalformedRequest);
    }
    Ok(Cow::Owned(out))
}

/// RFC 3454 table C.1.2.
fn is_non_ascii_space(c: char) -> bool {
    matches!(
        c,
        '\u{00A0}' | '\u{1680}' | '\u{2000}'..='\u{200B}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

/// RFC 3454 table B.1.
fn is_mapped_to_nothing(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{1806}'
            | '\u{180B}'..='\u{180D}'
            | '\u{200C}'
            | '\u{200D}'
            | '\u{2060}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
    )
}

/// RFC 3454 tables C.2.1, C.2.2, C.3, C.4, C.6, C.7, C.8, C.9 (C.1.2 is mapped before).
fn is_prohibited(c: char) -> bool {
    let cp = c as u32;
    // Non-characters: U+FDD0..U+FDEF and the last two code points of every plane.
    let non_character = (0xFDD0..=0xFDEF).contains(&cp) || (cp & 0xFFFE) == 0xFFFE;
    non_character
        || c.is_control() // C.2.1 and the Cc part of C.2.2
        || matches!(
            c,
            // C.2.2 (non-Cc part)
            '\u{06DD}'
                | '\u{070F}'
                | '\u{180E}'
                | '\u{200C}'
                | '\u{200D}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{2060}'..='\u{2063}'
                | '\u{206A}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFC}'
                | '\u{1D173}'..='\u{1D17A}'
                // C.3 private use
                | '\u{E000}'..='\u{F8FF}'
                | '\u{F0000}'..='\u{FFFFD}'
                | '\u{100000}'..='\u{10FFFD}'
                // C.6 inappropriate for plain text
                | '\u{FFFD}'
                // C.7 ideographic description
                | '\u{2FF0}'..='\u{2FFB}'
                // C.8 change display properties / deprecated
                | '\u{0340}'
                | '\u{0341}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                // C.9 tagging
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        assert_eq!(SaslError::NotAuthorized.condition(), "not-authorized");
        assert_eq!(SaslError::MalformedRequest.condition(), "malformed-request");
        assert_eq!(
            SaslError::TemporaryAuthFailure.condition(),
            "temporary-auth-failure"
        );
        assert_eq!(
            SaslError::InvalidAuthzid.to_string(),
            "SASL failure: invalid-authzid"
        );
    }

    #[test]
    fn channel_binding_names() {
        for t in ChannelBindingType::ALL {
            assert_eq!(ChannelBindingType::from_wire_name(t.wire_name()), Some(t));
        }
        assert_eq!(ChannelBindingType::from_wire_name("TLS-UNIQUE"), None);
        let cb = ChannelBindingData {
            available: vec![(ChannelBindingType::TlsExporter, vec![1, 2])],
        };
        assert_eq!(cb.get(ChannelBindingType::TlsExporter), Some(&[1u8, 2][..]));
        assert_eq!(cb.get(ChannelBindingType::TlsUnique), None);
        assert!(ChannelBindingData::none().is_empty());
    }

    #[test]
    fn saslprep_subset() {
        // RFC 4013 §3 examples that do not need NFKC.
        assert_eq!(saslprep("I\u{00AD}X").unwrap(), "IX");
        assert_eq!(saslprep("user").unwrap(), "user");
        assert!(matches!(saslprep("user"), Ok(Cow::Borrowed(_))));
        assert!(saslprep("\u{0007}").is_err());
        assert_eq!(saslprep("a\u{00A0}b").unwrap(), "a b");
        assert_eq!(saslprep("pässwörd").unwrap(), "pässwörd");
        assert!(saslprep("a\u{E000}").is_err());
        assert!(saslprep("a\u{FFFF}").is_err());
        assert!(saslprep("a\u{202E}").is_err());
        assert!(saslprep("\u{00AD}").is_err());
        assert!(saslprep("tab\there").is_err());
    }
}
