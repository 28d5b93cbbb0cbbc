//! SCRAM (RFC 5802) with SHA-1, SHA-256 (RFC 7677) and SHA-512, with and
//! without channel binding (`-PLUS`, RFC 5929 / RFC 9266).
//!
//! The server never sees or stores the password: it keeps
//! [`ScramCredentials`] (salt, iteration count, StoredKey, ServerKey) per
//! account and per hash. One [`ScramServer`] drives one authentication attempt:
//!
//! ```text
//! client-first  --> handle_client_first  (returns username/authzid for the lookup)
//!               <-- server_first(account, creds)
//! client-final  --> handle_client_final  (returns server-final "v=...")
//! ```
//!
//! [`ScramClient`] is the mirror image, used by the load tool and the tests.
//!
//! All parsing is strict (attribute order, character sets, canonical base64)
//! and total: any byte string yields a value or a [`SaslError`], never a panic.
//! Syntax errors are [`SaslError::MalformedRequest`]; anything that amounts to
//! "wrong credentials or wrong channel" is [`SaslError::NotAuthorized`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::{saslprep, ChannelBindingData, ChannelBindingType, SaslError};

/// Standard base64 that rejects missing padding and non-zero trailing bits, so
/// that every accepted value has exactly one spelling (the `c=` check compares
/// encoded strings).
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Highest iteration count the client accepts; a hostile server could
/// otherwise make the client burn CPU for minutes.
pub const MAX_CLIENT_ITERATIONS: u32 = 1_000_000;

/// Iteration count shown to clients for unknown users unless overridden with
/// [`ScramServer::with_unknown_user_iterations`]. Match it to the count used
/// for real accounts so that it does not reveal which users exist.
pub const DEFAULT_UNKNOWN_USER_ITERATIONS: u32 = 4096;

/// Random bytes in a nonce (base64-encoded to 32 printable characters).
const NONCE_BYTES: usize = 24;
/// Salt length used by [`ScramCredentials::generate`] and for unknown users.
const SALT_BYTES: usize = 16;

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-1 (RFC 5802).
    Sha1,
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
    /// SCRAM-SHA-512 (same construction with SHA-512).
    Sha512,
}

impl ScramHash {
    /// All hashes, strongest first (the usual advertisement order).
    pub const ALL: [ScramHash; 3] = [ScramHash::Sha512, ScramHash::Sha256, ScramHash::Sha1];

    /// The mechanism name without channel binding, e.g. `"SCRAM-SHA-1"`.
    pub fn name(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
            ScramHash::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism name with channel binding, e.g. `"SCRAM-SHA-1-PLUS"`.
    pub fn plus_name(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1-PLUS",
            ScramHash::Sha256 => "SCRAM-SHA-256-PLUS",
            ScramHash::Sha512 => "SCRAM-SHA-512-PLUS",
        }
    }

    /// Parses a mechanism name into `(hash, plus)`; `None` if it is not SCRAM.
    pub fn from_mechanism(name: &str) -> Option<(ScramHash, bool)> {
        Self::ALL.into_iter().find_map(|h| {
            if name == h.name() {
                Some((h, false))
            } else if name == h.plus_name() {
                Some((h, true))
            } else {
                None
            }
        })
    }

    /// Output length of the hash in bytes (20, 32 or 64).
    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
            ScramHash::Sha512 => 64,
        }
    }

    /// `SaltedPassword := Hi(Normalize(password), salt, i)`: the expensive step.
    ///
    /// Normalize is [`saslprep`]; a password that SASLprep rejects is used
    /// as-is rather than refused (as PostgreSQL does), since client and server
    /// both go through this function and so agree either way.
    pub fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        let password = saslprep(password).unwrap_or(Cow::Borrowed(password));
        let mut out = vec![0u8; self.output_len()];
        let p = password.as_bytes();
        match self {
            ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(p, salt, iterations, &mut out),
            ScramHash::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(p, salt, iterations, &mut out),
            ScramHash::Sha512 => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(p, salt, iterations, &mut out),
        }
        out
    }

    pub(crate) fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => sha1::Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            ScramHash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        macro_rules! mac {
            ($d:ty) => {{
                let mut mac = <Hmac<$d> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }};
        }
        match self {
            ScramHash::Sha1 => mac!(sha1::Sha1),
            ScramHash::Sha256 => mac!(sha2::Sha256),
            ScramHash::Sha512 => mac!(sha2::Sha512),
        }
    }

    /// `(ClientKey, StoredKey, ServerKey)` from a salted password.
    fn keys(self, salted_password: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let client_key = self.hmac(salted_password, b"Client Key");
        let stored_key = self.hash(&client_key);
        let server_key = self.hmac(salted_password, b"Server Key");
        (client_key, stored_key, server_key)
    }
}

/// What the server stores per account per hash — never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// Hash these credentials are for.
    pub hash: ScramHash,
    /// The salt (raw bytes, base64-encoded on the wire).
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl ScramCredentials {
    /// Derives credentials from a password with a given salt and iteration
    /// count. `iterations` should be at least 4096; clients reject 0 and
    /// anything above [`MAX_CLIENT_ITERATIONS`].
    pub fn derive(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = hash.salted_password(password, salt, iterations);
        Self::from_salted_password(hash, &salted, salt, iterations)
    }

    /// Derives credentials with a fresh random 16-byte salt.
    pub fn generate(hash: ScramHash, password: &str, iterations: u32) -> Self {
        let mut salt = vec![0u8; SALT_BYTES];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::derive(hash, password, &salt, iterations)
    }

    /// Builds credentials from an already computed salted password.
    pub fn from_salted_password(
        hash: ScramHash,
        salted_password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Self {
        let (_, stored_key, server_key) = hash.keys(salted_password);
        ScramCredentials {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key,
        }
    }

    /// Stand-in credentials for an account that does not exist, so that
    /// answering for it looks and costs the same as for a real one: the salt
    /// and keys are derived from `account` (the prepared name the lookup
    /// used) with a process-wide random key, so the same name always gets the
    /// same salt and nobody can recompute it to spot a fake. No password
    /// matches the keys.
    pub fn unknown_user(hash: ScramHash, account: &str, iterations: u32) -> Self {
        let fake = |purpose: &str| {
            let mut input = format!("{purpose}\0{}\0", hash.name()).into_bytes();
            input.extend_from_slice(account.as_bytes());
            hash.hmac(fake_user_secret(), &input)
        };
        let mut salt = fake("salt");
        salt.truncate(SALT_BYTES);
        ScramCredentials {
            hash,
            salt,
            iterations,
            stored_key: fake("stored"),
            server_key: fake("server"),
        }
    }

    /// Checks a cleartext password (e.g. from PLAIN) against these credentials,
    /// comparing in constant time. Costs one full PBKDF2 run.
    pub fn verify_password(&self, password: &str) -> bool {
        let salted = self
            .hash
            .salted_password(password, &self.salt, self.iterations);
        let (_, stored_key, server_key) = self.hash.keys(&salted);
        // Both keys, each in constant time, and no early exit between them.
        let stored_ok = stored_key.ct_eq(&self.stored_key);
        let server_ok = server_key.ct_eq(&self.server_key);
        (stored_ok & server_ok).into()
    }
}

// Hand-written so that logging credentials does not leak the keys (ServerKey
// lets its holder impersonate the server; StoredKey enables offline attacks).
impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("hash", &self.hash)
            .field("salt", &B64.encode(&self.salt))
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// The identities named in a client-first-message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The username with `=2C`/`=3D` decoded, not otherwise normalised: the
    /// caller applies its own username preparation before the lookup.
    pub username: String,
    /// The authorization identity, if the client asked to act as someone else.
    pub authzid: Option<String>,
}

/// Where a [`ScramServer`] is in the exchange. Every error moves it to `Done`,
/// so a failed exchange cannot be continued.
enum ServerState {
    AwaitingClientFirst,
    ClientFirstReceived(ReceivedFirst),
    AwaitingClientFinal(AwaitingFinal),
    Done,
}

struct ReceivedFirst {
    client_nonce: String,
    client_first_bare: String,
    /// The `c=` value the client must send: base64(gs2-header + cb-data).
    expected_cbind: String,
}

struct AwaitingFinal {
    nonce: String,
    expected_cbind: String,
    /// `client-first-message-bare + "," + server-first-message + ","`.
    auth_message_prefix: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    /// False for unknown users: the exchange runs to the end and then fails.
    known_user: bool,
}

/// Server side of one SCRAM authentication attempt.
pub struct ScramServer {
    hash: ScramHash,
    plus: bool,
    server_offers_plus: bool,
    cb: ChannelBindingData,
    unknown_user_iterations: u32,
    fixed_nonce: Option<String>,
    /// XEP-0474: the `h` attribute of the server-first-message.
    downgrade_hash: Option<String>,
    state: ServerState,
}

impl ScramServer {
    /// Starts an exchange.
    ///
    /// `plus` is whether the client chose the `-PLUS` variant;
    /// `server_offers_plus` whether any `-PLUS` mechanism was advertised on
    /// this stream (a client sending gs2 flag `y` while we offered `-PLUS`
    /// indicates a downgrade attack and is refused); `cb` is what the TLS
    /// layer can provide for channel binding.
    pub fn new(
        hash: ScramHash,
        plus: bool,
        server_offers_plus: bool,
        cb: ChannelBindingData,
    ) -> Self {
        ScramServer {
            hash,
            plus,
            server_offers_plus,
            cb,
            unknown_user_iterations: DEFAULT_UNKNOWN_USER_ITERATIONS,
            fixed_nonce: None,
            downgrade_hash: None,
            state: ServerState::AwaitingClientFirst,
        }
    }

    /// Sets the iteration count announced for unknown users; use the count
    /// real accounts have so that it gives nothing away.
    pub fn with_unknown_user_iterations(mut self, iterations: u32) -> Self {
        self.unknown_user_iterations = iterations;
        self
    }

    /// Adds XEP-0474's downgrade protection hash (`h=`) to the
    /// server-first-message, where the client's proof covers it.
    pub fn with_downgrade_hash(mut self, hash: String) -> Self {
        self.downgrade_hash = Some(hash);
        self
    }

    /// Test-only: fixes the server part of the nonce (a fixed nonce would
    /// allow replaying a recorded exchange).
    #[cfg(test)]
    pub(crate) fn with_nonce(mut self, server_nonce: &str) -> Self {
        self.fixed_nonce = Some(server_nonce.to_owned());
        self
    }

    /// The hash of this exchange.
    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// Whether this is the `-PLUS` variant.
    pub fn is_plus(&self) -> bool {
        self.plus
    }

    /// Parses the client-first-message (already base64-decoded) and checks the
    /// GS2 header against the chosen mechanism. Returns the username and authzid
    /// to look up / authorize.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<ClientFirst, SaslError> {
        let ServerState::AwaitingClientFirst =
            std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(SaslError::MalformedRequest);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
        let parsed = parse_client_first(msg)?;

        let cb_data: &[u8] = match (parsed.cbind, self.plus) {
            (Gs2Flag::Binding(name), true) => ChannelBindingType::from_wire_name(name)
                .and_then(|ty| self.cb.get(ty))
                .ok_or(SaslError::NotAuthorized)?,
            // The client picked -PLUS but does not bind, or binds without -PLUS.
            (Gs2Flag::Binding(_), false) | (_, true) => return Err(SaslError::MalformedRequest),
            // 'y' = "I support binding but thought you did not": we did offer
            // it, so something between us stripped -PLUS from the list.
            (Gs2Flag::SupportedNotUsed, false) if self.server_offers_plus => {
                return Err(SaslError::NotAuthorized)
            }
            (Gs2Flag::SupportedNotUsed | Gs2Flag::NotSupported, false) => &[],
        };
        let mut cbind_input = parsed.gs2_header.as_bytes().to_vec();
        cbind_input.extend_from_slice(cb_data);

        let result = ClientFirst {
            username: parsed.username,
            authzid: parsed.authzid,
        };
        self.state = ServerState::ClientFirstReceived(ReceivedFirst {
            client_nonce: parsed.nonce.to_owned(),
            client_first_bare: parsed.bare.to_owned(),
            expected_cbind: B64.encode(cbind_input),
        });
        Ok(result)
    }

    /// Produces the server-first-message.
    ///
    /// `account` is the name the account was looked up by — after the
    /// caller's username preparation, so "Juliet" and "juliet" give the same
    /// (the raw name only when it cannot be prepared). Pass the account's
    /// credentials for this hash, or `None` when the user does not exist (or
    /// has no credentials for this hash): the exchange then continues with
    /// [`ScramCredentials::unknown_user`] for `account` — a fake salt stable
    /// across attempts, exactly as a real account's is stable under every
    /// spelling that prepares to its name — and fails with
    /// [`SaslError::NotAuthorized`] in
    /// [`handle_client_final`](Self::handle_client_final), so that a client
    /// cannot tell unknown users from wrong passwords. Credentials for another
    /// hash are treated like `None`.
    ///
    /// Returns an empty message (and fails the exchange) if called out of order.
    pub fn server_first(&mut self, account: &str, creds: Option<&ScramCredentials>) -> Vec<u8> {
        let ServerState::ClientFirstReceived(first) =
            std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Vec::new();
        };
        let server_nonce = self.fixed_nonce.clone().unwrap_or_else(generate_nonce);
        let nonce = format!("{}{}", first.client_nonce, server_nonce);

        let (salt, iterations, stored_key, server_key, known_user) = match creds {
            Some(c) if c.hash == self.hash => (
                Cow::Borrowed(c.salt.as_slice()),
                c.iterations,
                c.stored_key.clone(),
                c.server_key.clone(),
                true,
            ),
            _ => {
                // Fake keys keep the final step's work identical to a real
                // user's; `known_user = false` guarantees the failure.
                let fake = ScramCredentials::unknown_user(
                    self.hash,
                    account,
                    self.unknown_user_iterations,
                );
                (
                    Cow::Owned(fake.salt),
                    fake.iterations,
                    fake.stored_key,
                    fake.server_key,
                    false,
                )
            }
        };

        let mut server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        if let Some(h) = &self.downgrade_hash {
            server_first.push_str(",h=");
            server_first.push_str(h);
        }
        self.state = ServerState::AwaitingClientFinal(AwaitingFinal {
            nonce,
            expected_cbind: first.expected_cbind,
            auth_message_prefix: format!("{},{server_first},", first.client_first_bare),
            stored_key,
            server_key,
            known_user,
        });
        server_first.into_bytes()
    }

    /// Verifies the client-final-message (already base64-decoded): channel
    /// binding, nonce and proof (in constant time). Returns the
    /// server-final-message (`v=...`) to send with `<success/>`.
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let ServerState::AwaitingClientFinal(st) =
            std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(SaslError::MalformedRequest);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
        let parsed = parse_client_final(msg)?;

        if B64.decode(parsed.cbind).is_err() {
            return Err(SaslError::MalformedRequest);
        }
        if !bool::from(parsed.cbind.as_bytes().ct_eq(st.expected_cbind.as_bytes())) {
            return Err(SaslError::NotAuthorized);
        }
        if parsed.nonce != st.nonce {
            return Err(SaslError::NotAuthorized);
        }
        let proof = B64
            .decode(parsed.proof)
            .map_err(|_| SaslError::MalformedRequest)?;
        if proof.len() != self.hash.output_len() {
            return Err(SaslError::MalformedRequest);
        }

        let auth_message = format!("{}{}", st.auth_message_prefix, parsed.without_proof);
        let client_signature = self.hash.hmac(&st.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        let proof_ok: bool = self.hash.hash(&client_key).ct_eq(&st.stored_key).into();
        if !(proof_ok && st.known_user) {
            return Err(SaslError::NotAuthorized);
        }

        let server_signature = self.hash.hmac(&st.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.state {
            ServerState::AwaitingClientFirst => "awaiting-client-first",
            ServerState::ClientFirstReceived(_) => "client-first-received",
            ServerState::AwaitingClientFinal(_) => "awaiting-client-final",
            ServerState::Done => "done",
        };
        f.debug_struct("ScramServer")
            .field("hash", &self.hash)
            .field("plus", &self.plus)
            .field("stage", &stage)
            .finish_non_exhaustive()
    }
}

/// Cache of salted passwords for clients that log in many times with the same
/// password (the load tool): PBKDF2 is by design the expensive step.
///
/// Keyed by (hash, password, salt, iterations). Thread-safe; share it with
/// `Arc` and attach it with [`ScramClient::with_cache`]. It holds passwords in
/// memory, so use it only in tools, never in the server.
#[derive(Default)]
pub struct SaltedPasswordCache {
    map: Mutex<HashMap<CacheKey, Vec<u8>>>,
}

/// (hash, password, salt, iterations).
type CacheKey = (ScramHash, String, Vec<u8>, u32);

impl SaltedPasswordCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the cached salted password, computing and storing it on a miss.
    pub fn get_or_derive(
        &self,
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Vec<u8> {
        let key = (hash, password.to_owned(), salt.to_vec(), iterations);
        if let Some(v) = self.lock().get(&key) {
            return v.clone();
        }
        // Computed without holding the lock so that concurrent logins with
        // other parameters are not serialised behind PBKDF2; a concurrent miss
        // on the same key just computes the same value twice.
        let salted = hash.salted_password(password, salt, iterations);
        self.lock().insert(key, salted.clone());
        salted
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, Vec<u8>>> {
        // A panic elsewhere cannot leave the map half-updated, so poisoning is harmless.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for SaltedPasswordCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaltedPasswordCache")
            .field("len", &self.len())
            .finish()
    }
}

enum ClientState {
    Initial,
    FirstSent { client_first_bare: String },
    FinalSent { server_signature: Vec<u8> },
    Done,
}

/// Client side of one SCRAM authentication attempt.
pub struct ScramClient {
    hash: ScramHash,
    username: String,
    password: String,
    authzid: Option<String>,
    cb: Option<(ChannelBindingType, Vec<u8>)>,
    claims_binding_support: bool,
    client_nonce: String,
    cache: Option<Arc<SaltedPasswordCache>>,
    salted_password: Option<Vec<u8>>,
    state: ClientState,
}

impl ScramClient {
    /// Starts an exchange. `cb = Some((type, data))` selects the `-PLUS`
    /// variant with that channel binding.
    pub fn new(
        hash: ScramHash,
        username: &str,
        password: &str,
        cb: Option<(ChannelBindingType, Vec<u8>)>,
    ) -> Self {
        Self::with_nonce(hash, username, password, cb, &generate_nonce())
    }

    /// Like [`new`](Self::new) with a fixed client nonce, for tests. The nonce
    /// must be printable ASCII without `,`; a fixed nonce in real use would
    /// weaken replay protection.
    pub fn with_nonce(
        hash: ScramHash,
        username: &str,
        password: &str,
        cb: Option<(ChannelBindingType, Vec<u8>)>,
        nonce: &str,
    ) -> Self {
        ScramClient {
            hash,
            username: username.to_owned(),
            password: password.to_owned(),
            authzid: None,
            cb,
            claims_binding_support: false,
            client_nonce: nonce.to_owned(),
            cache: None,
            salted_password: None,
            state: ClientState::Initial,
        }
    }

    /// Asks to act as `authzid` (sent as `a=` in the GS2 header).
    pub fn with_authzid(mut self, authzid: &str) -> Self {
        self.authzid = Some(authzid.to_owned());
        self
    }

    /// Without channel binding, sends GS2 flag `y` ("I could bind but you did
    /// not offer -PLUS") instead of `n`. Ignored when binding.
    pub fn with_binding_support_claimed(mut self) -> Self {
        self.claims_binding_support = true;
        self
    }

    /// Uses `cache` for the salted password instead of always running PBKDF2.
    pub fn with_cache(mut self, cache: Arc<SaltedPasswordCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The salted password computed by [`handle_server_first`](Self::handle_server_first),
    /// for callers that cache it themselves.
    pub fn salted_password(&self) -> Option<&[u8]> {
        self.salted_password.as_deref()
    }

    fn gs2_header(&self) -> String {
        let flag = match &self.cb {
            Some((ty, _)) => format!("p={}", ty.wire_name()),
            None if self.claims_binding_support => "y".to_owned(),
            None => "n".to_owned(),
        };
        match &self.authzid {
            Some(a) => format!("{flag},a={},", encode_saslname(a)),
            None => format!("{flag},,"),
        }
    }

    /// The client-first-message (to be base64-encoded into `<auth/>`).
    /// Calling it again restarts the exchange.
    pub fn client_first(&mut self) -> Vec<u8> {
        let bare = format!(
            "n={},r={}",
            encode_saslname(&self.username),
            self.client_nonce
        );
        let msg = format!("{}{bare}", self.gs2_header());
        self.state = ClientState::FirstSent {
            client_first_bare: bare,
        };
        msg.into_bytes()
    }

    /// Parses the server-first-message and returns the client-final-message.
    pub fn handle_server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        let ClientState::FirstSent { client_first_bare } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(SaslError::MalformedRequest);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
        let sf = parse_server_first(msg)?;
        // The server must extend our nonce, not replace or merely echo it.
        if !sf.nonce.starts_with(&self.client_nonce) || sf.nonce.len() == self.client_nonce.len() {
            return Err(SaslError::NotAuthorized);
        }

        let salted = match &self.cache {
            Some(cache) => cache.get_or_derive(self.hash, &self.password, &sf.salt, sf.iterations),
            None => self
                .hash
                .salted_password(&self.password, &sf.salt, sf.iterations),
        };
        let (client_key, stored_key, server_key) = self.hash.keys(&salted);
        self.salted_password = Some(salted);

        let mut cbind_input = self.gs2_header().into_bytes();
        if let Some((_, data)) = &self.cb {
            cbind_input.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={}", B64.encode(cbind_input), sf.nonce);
        let auth_message = format!("{client_first_bare},{msg},{without_proof}");
        let client_signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof = xor(&client_key, &client_signature);
        let server_signature = self.hash.hmac(&server_key, auth_message.as_bytes());

        self.state = ClientState::FinalSent { server_signature };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message (from `<success/>`): the server proves
    /// it knows the ServerKey. An `e=` error from the server is NotAuthorized.
    pub fn verify_server_final(&mut self, msg: &[u8]) -> Result<(), SaslError> {
        let ClientState::FinalSent { server_signature } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(SaslError::MalformedRequest);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| SaslError::MalformedRequest)?;
        let mut parts = msg.split(',');
        let first = parts.next().unwrap_or_default();
        if attr(first, b'e').is_some() {
            return Err(SaslError::NotAuthorized);
        }
        let verifier = attr(first, b'v').ok_or(SaslError::MalformedRequest)?;
        check_extensions(parts)?;
        let verifier = B64
            .decode(verifier)
            .map_err(|_| SaslError::MalformedRequest)?;
        if bool::from(verifier.ct_eq(&server_signature)) {
            Ok(())
        } else {
            Err(SaslError::NotAuthorized)
        }
    }
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .field("username", &self.username)
            .field("plus", &self.cb.is_some())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Parsing helpers (RFC 5802 §7 grammar).
// ---------------------------------------------------------------------------

/// The GS2 channel binding flag.
enum Gs2Flag<'a> {
    /// `n`: client does not support channel binding.
    NotSupported,
    /// `y`: client supports it but believes the server does not.
    SupportedNotUsed,
    /// `p=cb-name`: client binds to this type.
    Binding(&'a str),
}

struct ParsedClientFirst<'a> {
    cbind: Gs2Flag<'a>,
    gs2_header: &'a str,
    authzid: Option<String>,
    bare: &'a str,
    username: String,
    nonce: &'a str,
}

fn parse_client_first(msg: &str) -> Result<ParsedClientFirst<'_>, SaslError> {
    let mut it = msg.splitn(3, ',');
    let (Some(flag), Some(authzid), Some(bare)) = (it.next(), it.next(), it.next()) else {
        return Err(SaslError::MalformedRequest);
    };
    let cbind = match flag {
        "n" => Gs2Flag::NotSupported,
        "y" => Gs2Flag::SupportedNotUsed,
        _ => match attr(flag, b'p') {
            Some(name) if is_cb_name(name) => Gs2Flag::Binding(name),
            _ => return Err(SaslError::MalformedRequest),
        },
    };
    let authzid = match authzid {
        "" => None,
        a => Some(decode_saslname(
            attr(a, b'a').ok_or(SaslError::MalformedRequest)?,
        )?),
    };
    let gs2_header = &msg[..msg.len() - bare.len()];

    let mut parts = bare.split(',');
    // A leading "m=" (reserved-mext) is a mandatory extension we do not know,
    // which RFC 5802 §5.1 says must fail; it also fails the "n=" match here.
    let username = parts
        .next()
        .and_then(|p| attr(p, b'n'))
        .ok_or(SaslError::MalformedRequest)?;
    let username = decode_saslname(username)?;
    let nonce = parts
        .next()
        .and_then(|p| attr(p, b'r'))
        .filter(|n| is_printable(n))
        .ok_or(SaslError::MalformedRequest)?;
    check_extensions(parts)?;
    Ok(ParsedClientFirst {
        cbind,
        gs2_header,
        authzid,
        bare,
        username,
        nonce,
    })
}

struct ParsedClientFinal<'a> {
    cbind: &'a str,
    nonce: &'a str,
    without_proof: &'a str,
    proof: &'a str,
}

fn parse_client_final(msg: &str) -> Result<ParsedClientFinal<'_>, SaslError> {
    let (without_proof, last) = msg.rsplit_once(',').ok_or(SaslError::MalformedRequest)?;
    let proof = attr(last, b'p').ok_or(SaslError::MalformedRequest)?;
    let mut parts = without_proof.split(',');
    let cbind = parts
        .next()
        .and_then(|p| attr(p, b'c'))
        .ok_or(SaslError::MalformedRequest)?;
    let nonce = parts
        .next()
        .and_then(|p| attr(p, b'r'))
        .filter(|n| is_printable(n))
        .ok_or(SaslError::MalformedRequest)?;
    check_extensions(parts)?;
    Ok(ParsedClientFinal {
        cbind,
        nonce,
        without_proof,
        proof,
    })
}

struct ParsedServerFirst<'a> {
    nonce: &'a str,
    salt: Vec<u8>,
    iterations: u32,
}

fn parse_server_first(msg: &str) -> Result<ParsedServerFirst<'_>, SaslError> {
    let mut parts = msg.split(',');
    // As in client-first, a leading "m=" fails the "r=" match.
    let nonce = parts
        .next()
        .and_then(|p| attr(p, b'r'))
        .filter(|n| is_printable(n))
        .ok_or(SaslError::MalformedRequest)?;
    let salt = parts
        .next()
        .and_then(|p| attr(p, b's'))
        .and_then(|s| B64.decode(s).ok())
        .filter(|s| !s.is_empty())
        .ok_or(SaslError::MalformedRequest)?;
    let iterations = parts
        .next()
        .and_then(|p| attr(p, b'i'))
        // u32::from_str accepts a leading '+', which the grammar does not.
        .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|i| i.parse::<u32>().ok())
        .filter(|i| (1..=MAX_CLIENT_ITERATIONS).contains(i))
        .ok_or(SaslError::MalformedRequest)?;
    check_extensions(parts)?;
    Ok(ParsedServerFirst {
        nonce,
        salt,
        iterations,
    })
}

/// The value of attribute `name` if `part` is `name=value`.
fn attr(part: &str, name: u8) -> Option<&str> {
    match part.as_bytes() {
        // Both leading bytes are ASCII, so slicing at 2 is on a char boundary.
        [n, b'=', ..] if *n == name => Some(&part[2..]),
        _ => None,
    }
}

/// Optional extensions (`ALPHA "=" 1*value-char`) are ignored as RFC 5802 §7
/// requires, but they must be well formed, must not repeat an attribute this
/// RFC defines, and `m=` (mandatory extension) always fails.
fn check_extensions<'a>(parts: impl Iterator<Item = &'a str>) -> Result<(), SaslError> {
    for part in parts {
        match part.as_bytes() {
            [name, b'=', value @ ..]
                if name.is_ascii_alphabetic()
                    && !b"acemnprsiv".contains(name)
                    && !value.is_empty()
                    && !value.contains(&0) => {}
            _ => return Err(SaslError::MalformedRequest),
        }
    }
    Ok(())
}

/// `printable = %x21-2B / %x2D-7E`, at least one.
fn is_printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// `cb-name = 1*(ALPHA / DIGIT / "." / "-")`.
fn is_cb_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// Decodes a `saslname`: `=2C` is `,` and `=3D` is `=`; any other `=`, an
/// empty name or a NUL is an error. (`,` cannot occur: it splits attributes.)
fn decode_saslname(s: &str) -> Result<String, SaslError> {
    if s.is_empty() || s.contains('\0') {
        return Err(SaslError::MalformedRequest);
    }
    let mut pieces = s.split('=');
    let mut out = String::from(pieces.next().unwrap_or_default());
    for piece in pieces {
        if let Some(rest) = piece.strip_prefix("2C") {
            out.push(',');
            out.push_str(rest);
        } else if let Some(rest) = piece.strip_prefix("3D") {
            out.push('=');
            out.push_str(rest);
        } else {
            return Err(SaslError::MalformedRequest);
        }
    }
    Ok(out)
}

fn encode_saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

fn generate_nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    // Standard base64 is printable and has no ',', as the nonce grammar needs.
    B64.encode(bytes)
}

/// Process-wide random key for unknown users' fake salts: stable for the
/// process lifetime (so probing the same name twice shows the same salt) and
/// unpredictable (so the salt cannot be recomputed to detect fakes).
fn fake_user_secret() -> &'static [u8] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        key
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn b64(s: &str) -> Vec<u8> {
        B64.decode(s).unwrap()
    }

    fn exporter_cb() -> ChannelBindingData {
        ChannelBindingData {
            available: vec![
                (ChannelBindingType::TlsExporter, vec![0x42; 32]),
                (ChannelBindingType::TlsServerEndPoint, vec![0x17; 32]),
            ],
        }
    }

    /// Runs a whole exchange; `creds = None` simulates an unknown user.
    fn run(
        client: &mut ScramClient,
        server: &mut ScramServer,
        creds: Option<&ScramCredentials>,
    ) -> Result<ClientFirst, SaslError> {
        let first = server.handle_client_first(&client.client_first())?;
        let server_first = server.server_first("user", creds);
        let client_final = client.handle_server_first(&server_first)?;
        let server_final = server.handle_client_final(&client_final)?;
        client.verify_server_final(&server_final)?;
        Ok(first)
    }

    // RFC 5802 §5.
    const SHA1_CLIENT_FIRST: &str = "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL";
    const SHA1_SERVER_FIRST: &str =
        "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
    const SHA1_CLIENT_FINAL: &str =
        "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=";
    const SHA1_SERVER_FINAL: &str = "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=";

    // RFC 7677 §3.
    const SHA256_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SHA256_SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
         s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const SHA256_CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
         p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SHA256_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn check_rfc_server(hash: ScramHash, salt: &str, server_nonce: &str, msgs: [&str; 4]) {
        let creds = ScramCredentials::derive(hash, "pencil", &b64(salt), 4096);
        let mut server = ScramServer::new(hash, false, false, ChannelBindingData::none())
            .with_nonce(server_nonce);
        let first = server.handle_client_first(msgs[0].as_bytes()).unwrap();
        assert_eq!(
            first,
            ClientFirst {
                username: "user".into(),
                authzid: None
            }
        );
        assert_eq!(
            server.server_first("user", Some(&creds)),
            msgs[1].as_bytes()
        );
        assert_eq!(
            server.handle_client_final(msgs[2].as_bytes()).unwrap(),
            msgs[3].as_bytes()
        );
    }

    fn check_rfc_client(hash: ScramHash, client_nonce: &str, msgs: [&str; 4]) {
        let mut client = ScramClient::with_nonce(hash, "user", "pencil", None, client_nonce);
        assert_eq!(client.client_first(), msgs[0].as_bytes());
        assert_eq!(
            client.handle_server_first(msgs[1].as_bytes()).unwrap(),
            msgs[2].as_bytes()
        );
        client.verify_server_final(msgs[3].as_bytes()).unwrap();
    }

    #[test]
    fn rfc5802_sha1_server() {
        check_rfc_server(
            ScramHash::Sha1,
            "QSXCR+Q6sek8bf92",
            "3rfcNHYJY1ZVvWVs7j",
            [
                SHA1_CLIENT_FIRST,
                SHA1_SERVER_FIRST,
                SHA1_CLIENT_FINAL,
                SHA1_SERVER_FINAL,
            ],
        );
    }

    #[test]
    fn rfc5802_sha1_client() {
        check_rfc_client(
            ScramHash::Sha1,
            "fyko+d2lbbFgONRv9qkxdawL",
            [
                SHA1_CLIENT_FIRST,
                SHA1_SERVER_FIRST,
                SHA1_CLIENT_FINAL,
                SHA1_SERVER_FINAL,
            ],
        );
    }

    #[test]
    fn rfc7677_sha256_server() {
        check_rfc_server(
            ScramHash::Sha256,
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            [
                SHA256_CLIENT_FIRST,
                SHA256_SERVER_FIRST,
                SHA256_CLIENT_FINAL,
                SHA256_SERVER_FINAL,
            ],
        );
    }

    #[test]
    fn rfc7677_sha256_client() {
        check_rfc_client(
            ScramHash::Sha256,
            "rOprNGfwEbeRWgbNEkqO",
            [
                SHA256_CLIENT_FIRST,
                SHA256_SERVER_FIRST,
                SHA256_CLIENT_FINAL,
                SHA256_SERVER_FINAL,
            ],
        );
    }

    #[test]
    fn rfc5802_wrong_proof_rejected() {
        let creds =
            ScramCredentials::derive(ScramHash::Sha1, "pencil", &b64("QSXCR+Q6sek8bf92"), 4096);
        let mut server =
            ScramServer::new(ScramHash::Sha1, false, false, ChannelBindingData::none())
                .with_nonce("3rfcNHYJY1ZVvWVs7j");
        server
            .handle_client_first(SHA1_CLIENT_FIRST.as_bytes())
            .unwrap();
        server.server_first("user", Some(&creds));
        let tampered = SHA1_CLIENT_FINAL.replace("p=v0X8", "p=v0X9");
        assert_eq!(
            server.handle_client_final(tampered.as_bytes()),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn round_trip_all_hashes() {
        for hash in ScramHash::ALL {
            let creds = ScramCredentials::generate(hash, "correct horse", 4096);
            let mut client = ScramClient::new(hash, "alice", "correct horse", None);
            let mut server = ScramServer::new(hash, false, false, ChannelBindingData::none());
            let first = run(&mut client, &mut server, Some(&creds)).unwrap();
            assert_eq!(first.username, "alice");
            assert_eq!(
                client.salted_password().map(<[u8]>::len),
                Some(hash.output_len())
            );
        }
    }

    #[test]
    fn sha512_round_trip() {
        let creds = ScramCredentials::generate(ScramHash::Sha512, "pencil", 4096);
        assert_eq!(creds.stored_key.len(), 64);
        let mut client = ScramClient::new(ScramHash::Sha512, "user", "pencil", None);
        let mut server =
            ScramServer::new(ScramHash::Sha512, false, false, ChannelBindingData::none());
        run(&mut client, &mut server, Some(&creds)).unwrap();
    }

    #[test]
    fn plus_round_trip() {
        for (ty, data) in exporter_cb().available {
            let creds = ScramCredentials::generate(ScramHash::Sha256, "pencil", 4096);
            let mut client = ScramClient::new(
                ScramHash::Sha256,
                "user",
                "pencil",
                Some((ty, data.clone())),
            );
            let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_cb());
            let cf = client.client_first();
            assert!(cf.starts_with(format!("p={},,", ty.wire_name()).as_bytes()));
            server.handle_client_first(&cf).unwrap();
            let cfinal = client
                .handle_server_first(&server.server_first("user", Some(&creds)))
                .unwrap();
            let mut expected_c = format!("p={},,", ty.wire_name()).into_bytes();
            expected_c.extend_from_slice(&data);
            assert!(cfinal.starts_with(format!("c={},", B64.encode(expected_c)).as_bytes()));
            let sfinal = server.handle_client_final(&cfinal).unwrap();
            client.verify_server_final(&sfinal).unwrap();
        }
    }

    #[test]
    fn plus_wrong_cb_data_fails() {
        let creds = ScramCredentials::generate(ScramHash::Sha256, "pencil", 4096);
        let mut client = ScramClient::new(
            ScramHash::Sha256,
            "user",
            "pencil",
            Some((ChannelBindingType::TlsExporter, vec![0x43; 32])),
        );
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_cb());
        assert_eq!(
            run(&mut client, &mut server, Some(&creds)),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn plus_unavailable_type_fails() {
        let mut client = ScramClient::new(
            ScramHash::Sha256,
            "user",
            "pencil",
            Some((ChannelBindingType::TlsUnique, vec![1; 12])),
        );
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_cb());
        assert_eq!(
            server.handle_client_first(&client.client_first()),
            Err(SaslError::NotAuthorized)
        );
        let mut server = ScramServer::new(ScramHash::Sha256, true, true, exporter_cb());
        assert_eq!(
            server.handle_client_first(b"p=tls-bogus,,n=user,r=abc"),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn gs2_flag_must_match_mechanism() {
        let cases: [(&str, bool, bool); 4] = [
            ("n,,n=user,r=abc", true, true), // -PLUS chosen, no binding
            ("y,,n=user,r=abc", true, true), // -PLUS chosen, no binding
            ("p=tls-exporter,,n=user,r=abc", false, true), // binding without -PLUS
            ("p=tls-exporter,,n=user,r=abc", false, false),
        ];
        for (msg, plus, offers) in cases {
            let mut server = ScramServer::new(ScramHash::Sha256, plus, offers, exporter_cb());
            assert_eq!(
                server.handle_client_first(msg.as_bytes()),
                Err(SaslError::MalformedRequest),
                "{msg}"
            );
        }
    }

    #[test]
    fn downgrade_detected() {
        let creds = ScramCredentials::generate(ScramHash::Sha256, "pencil", 4096);
        let mut client = ScramClient::new(ScramHash::Sha256, "user", "pencil", None)
            .with_binding_support_claimed();
        assert!(client.client_first().starts_with(b"y,,"));
        let mut server = ScramServer::new(ScramHash::Sha256, false, true, exporter_cb());
        assert_eq!(
            run(&mut client, &mut server, Some(&creds)),
            Err(SaslError::NotAuthorized)
        );

        // 'y' is fine when the server really did not offer -PLUS; c= is then base64("y,,").
        let mut client = ScramClient::new(ScramHash::Sha256, "user", "pencil", None)
            .with_binding_support_claimed();
        let mut server =
            ScramServer::new(ScramHash::Sha256, false, false, ChannelBindingData::none());
        run(&mut client, &mut server, Some(&creds)).unwrap();
    }

    #[test]
    fn gs2_header_tampering_detected() {
        // The client says 'y' in the final c= but 'n' in client-first.
        let creds = ScramCredentials::generate(ScramHash::Sha1, "pencil", 4096);
        let mut server =
            ScramServer::new(ScramHash::Sha1, false, false, ChannelBindingData::none())
                .with_nonce("S");
        server.handle_client_first(b"n,,n=user,r=C").unwrap();
        let sf = server.server_first("user", Some(&creds));
        let mut client = ScramClient::with_nonce(ScramHash::Sha1, "user", "pencil", None, "C")
            .with_binding_support_claimed();
        client.client_first();
        let cfinal = client.handle_server_first(&sf).unwrap();
        assert_eq!(
            server.handle_client_final(&cfinal),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn wrong_password_fails() {
        let creds = ScramCredentials::generate(ScramHash::Sha256, "pencil", 4096);
        let mut client = ScramClient::new(ScramHash::Sha256, "user", "crayon", None);
        let mut server =
            ScramServer::new(ScramHash::Sha256, false, false, ChannelBindingData::none());
        assert_eq!(
            run(&mut client, &mut server, Some(&creds)),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn unknown_user_fails_at_the_end() {
        let mut server =
            ScramServer::new(ScramHash::Sha256, false, false, ChannelBindingData::none())
                .with_unknown_user_iterations(5000);
        let mut client = ScramClient::new(ScramHash::Sha256, "nobody", "pencil", None);
        server.handle_client_first(&client.client_first()).unwrap();
        let sf = server.server_first("user", None);
        let sf_str = String::from_utf8(sf.clone()).unwrap();
        assert!(sf_str.ends_with(",i=5000"), "{sf_str}");
        let parsed = parse_server_first(&sf_str).unwrap();
        assert_eq!(parsed.salt.len(), SALT_BYTES);
        // The client cannot tell: it happily produces a final message.
        let cfinal = client.handle_server_first(&sf).unwrap();
        assert_eq!(
            server.handle_client_final(&cfinal),
            Err(SaslError::NotAuthorized)
        );

        // Same username → same salt; different username → different salt.
        let salt_for = |name: &str| {
            let mut s =
                ScramServer::new(ScramHash::Sha256, false, false, ChannelBindingData::none());
            s.handle_client_first(format!("n,,n={name},r=abc").as_bytes())
                .unwrap();
            let sf = String::from_utf8(s.server_first(name, None)).unwrap();
            parse_server_first(&sf).unwrap().salt
        };
        assert_eq!(salt_for("nobody"), salt_for("nobody"));
        assert_ne!(salt_for("nobody"), salt_for("somebody"));
    }

    #[test]
    fn credentials_for_other_hash_are_refused() {
        let creds = ScramCredentials::generate(ScramHash::Sha1, "pencil", 4096);
        let mut client = ScramClient::new(ScramHash::Sha256, "user", "pencil", None);
        let mut server =
            ScramServer::new(ScramHash::Sha256, false, false, ChannelBindingData::none());
        assert_eq!(
            run(&mut client, &mut server, Some(&creds)),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn usernames_and_authzid_escaping() {
        let creds = ScramCredentials::generate(ScramHash::Sha1, "pencil", 4096);
        let mut client = ScramClient::new(ScramHash::Sha1, "a,b=c", "pencil", None)
            .with_authzid("admin=1,x@example.org");
        let cf = client.client_first();
        assert!(cf.starts_with(b"n,a=admin=3D1=2Cx@example.org,n=a=2Cb=3Dc,r="));
        let mut server =
            ScramServer::new(ScramHash::Sha1, false, false, ChannelBindingData::none());
        server.handle_client_first(&cf).unwrap();
        let cfinal = client
            .handle_server_first(&server.server_first("user", Some(&creds)))
            .unwrap();
        client
            .verify_server_final(&server.handle_client_final(&cfinal).unwrap())
            .unwrap();

        let mut server =
            ScramServer::new(ScramHash::Sha1, false, false, ChannelBindingData::none());
        let first = server.handle_client_first(&cf).unwrap();
        assert_eq!(first.username, "a,b=c");
        assert_eq!(first.authzid.as_deref(), Some("admin=1,x@example.org"));

        for bad in ["=2", "a=", "a=2c", "a=3d", "a=41", "=", "a=2", ""] {
            assert_eq!(
                decode_saslname(bad),
                Err(SaslError::MalformedRequest),
                "{bad}"
            );
        }
        assert_eq!(decode_saslname("=2C=3D").unwrap(), ",=");
        assert_eq!(decode_saslname("jürgen").unwrap(), "jürgen");
    }

    #[test]
    fn client_first_rejects() {
        let bad: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"nonsense",
            b"n,,n=user",
            b"n,,r=abc,n=user",       // wrong order
            b"n,,n=user,r=",          // empty nonce
            b"n,,n=,r=abc",           // empty username
            b"n,,n=us=er,r=abc",      // bad escape
            b"n,,m=ext,n=user,r=abc", // mandatory extension
            b"n,,n=user,r=abc,m=ext", // mandatory extension at the end
            b"n,,n=user,r=abc,r=def", // repeated attribute
            b"n,,n=user,r=abc,x",     // malformed extension
            b"n,,n=user,r=abc,x=",    // empty extension value
            b"n,,n=user,r=a\x01bc",   // non-printable nonce
            b"n,,n=user,r=a\x7fbc",
            b"n,,n=user,r=ab\xc3\xa9", // non-ASCII nonce
            b"n,,n=us\xffer,r=abc",    // invalid UTF-8
            b"x,,n=user,r=abc",        // bad flag
            b"p=,,n=user,r=abc",       // empty cb-name
            b"n,b=x,n=user,r=abc",     // not an authzid
            b"n,a=,n=user,r=abc",      // empty authzid
            b"n,,n=us\0er,r=abc",      // NUL
            b",,n=user,r=abc",
        ];
        for msg in bad {
            let mut server =
                ScramServer::new(ScramHash::Sha1, false, false, ChannelBindingData::none());
            assert!(
                server.handle_client_first(msg).is_err(),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
        // Unknown optional extensions are ignored (RFC 5802 §7).
        let mut server =
            ScramServer::new(ScramHash::Sha1, false, false, ChannelBindingData::none());
        server.handle_client_first(b"n,,n=user,r=abc,x=y").unwrap();
    }

    /// A server that has sent server-first for nonce "Cabc"+"S" with `creds`.
    fn server_awaiting_final(creds: &ScramCredentials) -> ScramServer {
        let mut server =
            ScramServer::new(creds.hash, false, false, ChannelBindingData::none()).with_nonce("S");
        server.handle_client_first(b"n,,n=user,r=Cabc").unwrap();
        server.server_first("user", Some(creds));
        server
    }

    #[test]
    fn client_final_rejects() {
        let creds = ScramCredentials::generate(ScramHash::Sha1, "pencil", 4096);
        let proof = B64.encode([0u8; 20]);
        let malformed: Vec<String> = vec![
            String::new(),
            "garbage".into(),
            "c=biws".into(),
            format!("c=biws,p={proof}"),
            format!("r=CabcS,c=biws,p={proof}"), // wrong order
            format!("c=biws,r=CabcS,p={proof},x=y"), // proof not last
            format!("c=b!ws,r=CabcS,p={proof}"), // bad base64 in c=
            format!("c=biw,r=CabcS,p={proof}"),  // non-canonical base64
            "c=biws,r=CabcS,p=AAAA".into(),      // short proof
            "c=biws,r=CabcS,p=!!!!".into(),      // bad base64 proof
            format!("c=biws,r=Cabc\x01S,p={proof}"), // non-printable nonce
            format!("c=biws,r=CabcS,m=x,p={proof}"), // mandatory extension
            format!("c=biws,r=CabcS,,p={proof}"), // empty attribute
        ];
        for msg in &malformed {
            let mut server = server_awaiting_final(&creds);
            assert_eq!(
                server.handle_client_final(msg.as_bytes()),
                Err(SaslError::MalformedRequest),
                "{msg}"
            );
        }
        let unauthorized: Vec<String> = vec![
            format!("c=biws,r=CabcX,p={proof}"), // wrong nonce
            format!("c=biws,r=Cabc,p={proof}"),  // client nonce only
            format!("c=eSws,r=CabcS,p={proof}"), // c= for 'y' instead of 'n'
            format!("c=biws,r=CabcS,p={proof}"), // wrong proof
        ];
        for msg in &unauthorized {
            let mut server = server_awaiting_final(&creds);
            assert_eq!(
                server.handle_client_final(msg.as_bytes()),
                Err(SaslError::NotAuthorized),
                "{msg}"
            );
        }
        let mut server = server_awaiting_final(&creds);
        assert!(server.handle_client_final(b"c=biws,r=Cabc\xff,p=").is_err());
    }

    #[test]
    fn server_out_of_order_calls_fail() {
        let creds = ScramCredentials::generate(ScramHash::Sha1, "pencil", 4096);
        let mut server =
            ScramServer::new(ScramHash::Sha1, false, false, ChannelBindingData::none());
        assert!(server.server_first("user", Some(&creds)).is_empty());
        assert!(server.handle_client_final(b"c=biws,r=a,p=b").is_err());

        // A successful exchange cannot be replayed on the same object.
        let mut client = ScramClient::new(ScramHash::Sha1, "user", "pencil", None);
        let mut server =
            ScramServer::new(ScramHash::Sha1, false, false, ChannelBindingData::none());
        let cf = client.client_first();
        server.handle_client_first(&cf).unwrap();
        let cfinal = client
            .handle_server_first(&server.server_first("user", Some(&creds)))
            .unwrap();
        server.handle_client_final(&cfinal).unwrap();
        assert!(server.handle_client_final(&cfinal).is_err());
        assert!(server.handle_client_first(&cf).is_err());

        // A failed client-first ends the exchange.
        let mut server =
            ScramServer::new(ScramHash::Sha1, false, false, ChannelBindingData::none());
        assert!(server.handle_client_first(b"junk").is_err());
        assert!(server.handle_client_first(&cf).is_err());
    }

    #[test]
    fn server_first_rejects() {
        let bad: &[&[u8]] = &[
            b"",
            b",,,",
            b"r=abcS",
            b"r=abcS,s=QSXCR+Q6sek8bf92",
            b"r=abcS,s=QSXCR+Q6sek8bf92,i=0", // zero iterations
            b"r=abcS,s=QSXCR+Q6sek8bf92,i=1000001", // too many
            b"r=abcS,s=QSXCR+Q6sek8bf92,i=99999999999",
            b"r=abcS,s=QSXCR+Q6sek8bf92,i=+4096",
            b"r=abcS,s=QSXCR+Q6sek8bf92,i=-1",
            b"r=abcS,s=QSXCR+Q6sek8bf92,i=",
            b"r=abcS,s=QSXCR+Q6sek8bf92,i=4096,m=x",
            b"m=x,r=abcS,s=QSXCR+Q6sek8bf92,i=4096",
            b"r=abcS,i=4096,s=QSXCR+Q6sek8bf92",  // wrong order
            b"r=abcS,s=,i=4096",                  // empty salt
            b"r=abcS,s=QSXCR+Q6sek8bf9,i=4096",   // bad base64
            b"r=abcS,s=QSXCR+Q6sek8bf92,i=4096,", // trailing comma
            b"r=xyzS,s=QSXCR+Q6sek8bf92,i=4096",  // not our nonce
            b"r=abc,s=QSXCR+Q6sek8bf92,i=4096",   // nonce not extended
            b"r=ab,s=QSXCR+Q6sek8bf92,i=4096",
            b"r=abc\x01,s=QSXCR+Q6sek8bf92,i=4096",
            b"r=abc\xff,s=QSXCR+Q6sek8bf92,i=4096",
            b"e=other-error",
        ];
        for msg in bad {
            let mut client =
                ScramClient::with_nonce(ScramHash::Sha1, "user", "pencil", None, "abc");
            client.client_first();
            assert!(
                client.handle_server_first(msg).is_err(),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
        // Optional extensions are ignored.
        let mut client = ScramClient::with_nonce(ScramHash::Sha1, "user", "pencil", None, "abc");
        client.client_first();
        client
            .handle_server_first(b"r=abcS,s=QSXCR+Q6sek8bf92,i=1,x=y")
            .unwrap();
    }

    #[test]
    fn server_final_rejects() {
        let run_to_final = || {
            let mut client = ScramClient::with_nonce(
                ScramHash::Sha1,
                "user",
                "pencil",
                None,
                "fyko+d2lbbFgONRv9qkxdawL",
            );
            client.client_first();
            client
                .handle_server_first(SHA1_SERVER_FIRST.as_bytes())
                .unwrap();
            client
        };
        for bad in [
            "",
            "v=",
            "e=invalid-proof",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ",
            "v=AAAApqV8S7suAoZWja4dJRkFsKQ=",
            "x=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=,m=x",
        ] {
            let mut client = run_to_final();
            assert!(client.verify_server_final(bad.as_bytes()).is_err(), "{bad}");
        }
        let mut client = run_to_final();
        assert_eq!(
            client.verify_server_final(b"e=invalid-proof"),
            Err(SaslError::NotAuthorized)
        );
        let mut client = run_to_final();
        client
            .verify_server_final(SHA1_SERVER_FINAL.as_bytes())
            .unwrap();
        // ...and only once.
        assert!(client
            .verify_server_final(SHA1_SERVER_FINAL.as_bytes())
            .is_err());
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5802);
        let creds = ScramCredentials::derive(ScramHash::Sha1, "pencil", b"salt", 1);
        let seeds = [
            SHA1_CLIENT_FIRST,
            SHA1_SERVER_FIRST,
            SHA1_CLIENT_FINAL,
            SHA1_SERVER_FINAL,
            "p=tls-exporter,a=x=2Cy,n=u=3D,r=abc,x=y",
        ];
        let alphabet = b",=nrcpsivmaey0123456789+/\0\xff\xc3 -";
        for i in 0..4000 {
            let mut msg = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let pos = rng.gen_range(0..=msg.len());
                match rng.gen_range(0..3) {
                    0 if pos < msg.len() => {
                        msg.remove(pos);
                    }
                    1 if pos < msg.len() => msg[pos] = alphabet[rng.gen_range(0..alphabet.len())],
                    _ => msg.insert(pos, alphabet[rng.gen_range(0..alphabet.len())]),
                }
            }
            let mut server = ScramServer::new(ScramHash::Sha1, i % 2 == 0, true, exporter_cb());
            let _ = server.handle_client_first(&msg);
            let _ = server.server_first("user", Some(&creds));
            let _ = server.handle_client_final(&msg);

            let mut server = server_awaiting_final(&creds);
            let _ = server.handle_client_final(&msg);

            let mut client =
                ScramClient::with_nonce(ScramHash::Sha1, "user", "pencil", None, "fyko");
            client.client_first();
            let _ = client.handle_server_first(&msg);
            let _ = client.verify_server_final(&msg);
        }
    }

    #[test]
    fn salted_password_cache_reused() {
        let cache = Arc::new(SaltedPasswordCache::new());
        let creds = ScramCredentials::generate(ScramHash::Sha256, "pencil", 4096);
        for _ in 0..3 {
            let mut client = ScramClient::new(ScramHash::Sha256, "user", "pencil", None)
                .with_cache(cache.clone());
            let mut server =
                ScramServer::new(ScramHash::Sha256, false, false, ChannelBindingData::none());
            run(&mut client, &mut server, Some(&creds)).unwrap();
        }
        assert_eq!(cache.len(), 1);
        let mut client =
            ScramClient::new(ScramHash::Sha256, "user", "wrong", None).with_cache(cache.clone());
        let mut server =
            ScramServer::new(ScramHash::Sha256, false, false, ChannelBindingData::none());
        assert_eq!(
            run(&mut client, &mut server, Some(&creds)),
            Err(SaslError::NotAuthorized)
        );
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn credentials_helpers() {
        let creds =
            ScramCredentials::derive(ScramHash::Sha1, "pencil", &b64("QSXCR+Q6sek8bf92"), 4096);
        assert!(creds.verify_password("pencil"));
        assert!(!creds.verify_password("pencil "));
        let debug = format!("{creds:?}");
        assert!(debug.contains("QSXCR+Q6sek8bf92"));
        assert!(!debug.contains(&format!("{:?}", creds.stored_key)));

        let sp = ScramHash::Sha1.salted_password("pencil", &creds.salt, 4096);
        assert_eq!(
            ScramCredentials::from_salted_password(ScramHash::Sha1, &sp, &creds.salt, 4096),
            creds
        );
        // SASLprep mapping applies: non-ASCII space is a space.
        assert_eq!(
            ScramHash::Sha1.salted_password("a\u{00A0}b", b"s", 1),
            ScramHash::Sha1.salted_password("a b", b"s", 1)
        );
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(ScramHash::Sha1.name(), "SCRAM-SHA-1");
        assert_eq!(ScramHash::Sha512.plus_name(), "SCRAM-SHA-512-PLUS");
        assert_eq!(
            ScramHash::from_mechanism("SCRAM-SHA-256-PLUS"),
            Some((ScramHash::Sha256, true))
        );
        assert_eq!(
            ScramHash::from_mechanism("SCRAM-SHA-1"),
            Some((ScramHash::Sha1, false))
        );
        assert_eq!(ScramHash::from_mechanism("PLAIN"), None);
        let nonce = generate_nonce();
        assert!(is_printable(&nonce) && nonce.len() == 32);
    }
}
