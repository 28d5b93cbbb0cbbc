//! The HT-SHA-256-* token mechanisms FAST (XEP-0484) uses
//! (draft-schmaus-kitten-sasl-ht): the client proves it holds a token with
//! `HMAC-SHA-256(token, "Initiator" || cb-data)` in one message, the server
//! answers with `HMAC-SHA-256(token, "Responder" || cb-data)`. The suffix
//! names the channel binding folded in: NONE, UNIQ (tls-unique), ENDP
//! (tls-server-end-point), EXPR (tls-exporter).
//!
//! Tokens are never stored. A token is 128 characters, longer than
//! SHA-256's 64-byte HMAC block, and RFC 2104 keys an HMAC with such a key
//! by its SHA-256: HMAC(token, m) = HMAC(SHA-256(token), m). The store keeps
//! only that hash, from which the token cannot be recovered; the hash still
//! authenticates (any HMAC verifier must hold the key), so the table is as
//! sensitive as the password hashes beside it.

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{ChannelBindingData, ChannelBindingType, SaslError};

type HmacSha256 = Hmac<Sha256>;

/// Random bytes in a token: 96, so 128 base64 characters.
const TOKEN_BYTES: usize = 96;

/// One HT-SHA-256 variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastMechanism {
    None,
    Uniq,
    Endp,
    Expr,
}

impl FastMechanism {
    pub const ALL: [FastMechanism; 4] = [
        FastMechanism::Expr,
        FastMechanism::Endp,
        FastMechanism::Uniq,
        FastMechanism::None,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FastMechanism::None => "HT-SHA-256-NONE",
            FastMechanism::Uniq => "HT-SHA-256-UNIQ",
            FastMechanism::Endp => "HT-SHA-256-ENDP",
            FastMechanism::Expr => "HT-SHA-256-EXPR",
        }
    }

    pub fn from_name(name: &str) -> Option<FastMechanism> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The channel binding it folds in.
    pub fn binding(self) -> Option<ChannelBindingType> {
        match self {
            FastMechanism::None => None,
            FastMechanism::Uniq => Some(ChannelBindingType::TlsUnique),
            FastMechanism::Endp => Some(ChannelBindingType::TlsServerEndPoint),
            FastMechanism::Expr => Some(ChannelBindingType::TlsExporter),
        }
    }

    /// The variants usable on a stream with this channel-binding data:
    /// NONE always, the others when their binding is available.
    pub fn offered(cb: &ChannelBindingData) -> Vec<FastMechanism> {
        Self::ALL
            .into_iter()
            .filter(|m| m.binding().is_none_or(|t| cb.get(t).is_some()))
            .collect()
    }

    /// This stream's binding data for the variant (empty for NONE); None
    /// when the stream cannot provide it.
    pub fn cb_data(self, cb: &ChannelBindingData) -> Option<Vec<u8>> {
        match self.binding() {
            None => Some(Vec::new()),
            Some(t) => cb.get(t).map(<[u8]>::to_vec),
        }
    }
}

/// A fresh token.
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What is stored of a token, and the HMAC key equivalent to it.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The initial response, `authcid NUL initiator-hashed-token`.
pub struct HtResponse {
    pub authcid: String,
    pub proof: Vec<u8>,
}

pub fn parse_initial_response(data: &[u8]) -> Result<HtResponse, SaslError> {
    let nul = data
        .iter()
        .position(|&b| b == 0)
        .ok_or(SaslError::MalformedRequest)?;
    let authcid = std::str::from_utf8(&data[..nul]).map_err(|_| SaslError::MalformedRequest)?;
    let proof = &data[nul + 1..];
    if authcid.is_empty() || proof.len() != 32 {
        return Err(SaslError::MalformedRequest);
    }
    Ok(HtResponse {
        authcid: authcid.to_owned(),
        proof: proof.to_vec(),
    })
}

fn mac(key: &[u8], label: &[u8], cb_data: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(label);
    m.update(cb_data);
    m
}

/// Does `proof` show the token whose hash is `stored`? Constant time.
pub fn verify(stored: &[u8], cb_data: &[u8], proof: &[u8]) -> bool {
    mac(stored, b"Initiator", cb_data)
        .verify_slice(proof)
        .is_ok()
}

/// The server's answer, sent as the success's additional data.
pub fn responder(stored: &[u8], cb_data: &[u8]) -> Vec<u8> {
    mac(stored, b"Responder", cb_data)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// A client's initial response for `token` (tests and the benchmark).
pub fn client_response(authcid: &str, token: &str, cb_data: &[u8]) -> Vec<u8> {
    let mut out = authcid.as_bytes().to_vec();
    out.push(0);
    out.extend_from_slice(
        &mac(token.as_bytes(), b"Initiator", cb_data)
            .finalize()
            .into_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_hash_verifies_what_the_token_signed() {
        let token = new_token();
        assert!(token.len() > 64);
        let r = client_response("juliet", &token, b"cb");
        let parsed = parse_initial_response(&r).unwrap();
        assert_eq!(parsed.authcid, "juliet");
        assert!(verify(&token_hash(&token), b"cb", &parsed.proof));
        assert!(!verify(&token_hash(&token), b"other", &parsed.proof));
        assert!(!verify(&token_hash(&new_token()), b"cb", &parsed.proof));
    }

    #[test]
    fn bound_variants_are_offered_only_with_their_binding() {
        let none = ChannelBindingData::none();
        assert_eq!(FastMechanism::offered(&none), vec![FastMechanism::None]);
        let cb = ChannelBindingData {
            available: vec![(ChannelBindingType::TlsExporter, vec![1; 32])],
        };
        assert_eq!(
            FastMechanism::offered(&cb),
            vec![FastMechanism::Expr, FastMechanism::None]
        );
    }

    #[test]
    fn malformed_responses_are_refused() {
        assert!(parse_initial_response(b"juliet").is_err());
        assert!(parse_initial_response(b"\0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").is_err());
        assert!(parse_initial_response(b"juliet\0short").is_err());
    }
}
