//! Account credentials: turning a password into what is stored (SCRAM
//! salted keys for SHA-1/256/512, and an argon2id hash only when the
//! operator asks for one), and checking a PLAIN password against it.
//!
//! PLAIN checks the password against the stored SCRAM-SHA-256 keys (one
//! PBKDF2 run with the stored salt and iteration count, then StoredKey and
//! ServerKey compared in constant time); see ARCHITECTURE.md for why this and
//! not a second, costlier argon2 hash. Every derivation here is CPU-heavy:
//! callers run it through [`crate::hashing::HashingPool`].

use argon2::password_hash::{rand_core::OsRng, Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use jid::BareJid;

use crate::hashing::argon2_blocks;
use crate::sasl::{ScramCredentials, ScramHash};
use crate::storage::{AccountRecord, ScramRecord, StorageError, Store};

/// The SCRAM hash functions every account has keys for.
pub const SCRAM_HASHES: [ScramHash; 3] = [ScramHash::Sha1, ScramHash::Sha256, ScramHash::Sha512];

/// The stored SCRAM keys PLAIN checks a password against, in order of
/// preference: SHA-256 first (what most SCRAM clients use too, and the
/// cheapest of the strong ones per iteration), the others for accounts
/// imported without it.
const PLAIN_HASHES: [ScramHash; 3] = [ScramHash::Sha256, ScramHash::Sha512, ScramHash::Sha1];

/// How passwords are hashed, from `[limits]`.
#[derive(Debug, Clone)]
pub struct PasswordHashing {
    /// PBKDF2 iterations of new SCRAM keys.
    pub scram_iterations: u32,
    /// Set: new and changed passwords also get an argon2id hash with these
    /// parameters, and PLAIN checks a stored argon2 hash when there is one.
    pub argon2: Option<Params>,
}

impl PasswordHashing {
    /// SCRAM keys only (the default).
    pub fn scram_only(scram_iterations: u32) -> PasswordHashing {
        PasswordHashing {
            scram_iterations,
            argon2: None,
        }
    }
}

/// The storage name of a SCRAM hash.
pub fn mechanism_key(hash: ScramHash) -> &'static str {
    match hash {
        ScramHash::Sha1 => "SHA-1",
        ScramHash::Sha256 => "SHA-256",
        ScramHash::Sha512 => "SHA-512",
    }
}

/// Derives the SCRAM credentials of a password (no argon2 hash). CPU-heavy:
/// call it off the async runtime.
pub fn derive_record(
    jid: &BareJid,
    password: &str,
    iterations: u32,
) -> Result<AccountRecord, String> {
    derive_record_with(
        jid,
        password,
        &PasswordHashing::scram_only(iterations),
        &mut Vec::new(),
    )
}

/// Derives every stored credential of a password as `hashing` asks;
/// `memory` is a reusable argon2 buffer. CPU-heavy (PBKDF2, maybe argon2).
pub fn derive_record_with(
    jid: &BareJid,
    password: &str,
    hashing: &PasswordHashing,
    memory: &mut Vec<Block>,
) -> Result<AccountRecord, String> {
    let username = jid
        .node()
        .ok_or("an account JID needs a local part")?
        .as_str()
        .to_string();
    let argon2 = match &hashing.argon2 {
        // The column is NOT NULL in existing databases: "" means "none".
        None => String::new(),
        Some(params) => argon2_phc(password, params, memory)?,
    };
    let scram = SCRAM_HASHES
        .iter()
        .map(|&h| {
            let c = ScramCredentials::generate(h, password, hashing.scram_iterations);
            ScramRecord {
                mechanism: mechanism_key(h).to_string(),
                salt: c.salt,
                iterations: c.iterations,
                stored_key: c.stored_key,
                server_key: c.server_key,
            }
        })
        .collect();
    Ok(AccountRecord {
        domain: jid.domain().as_str().to_string(),
        username,
        argon2,
        scram,
    })
}

/// An argon2id PHC string for `password` with a fresh salt, computed in
/// `memory` (grown if needed, kept for the next call).
pub fn argon2_phc(
    password: &str,
    params: &Params,
    memory: &mut Vec<Block>,
) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|e| e.to_string())?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    argon
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_raw,
            &mut out,
            argon2_blocks(memory, params.block_count()),
        )
        .map_err(|e| e.to_string())?;
    let output = Output::new(&out).map_err(|e| e.to_string())?;
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${}${}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        salt.as_str(),
        output
    ))
}

/// Checks a password against a stored argon2 PHC string, computing in
/// `memory`. False for anything unparsable.
pub fn verify_argon2(phc: &str, password: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) =
        (Algorithm::try_from(hash.algorithm), Params::try_from(&hash))
    else {
        return false;
    };
    let version = hash
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or(Version::V0x13);
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_raw) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    if argon
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_raw,
            &mut out,
            argon2_blocks(memory, params.block_count()),
        )
        .is_err()
    {
        return false;
    }
    // Output's equality is constant-time.
    Output::new(&out).is_ok_and(|o| o == expected)
}

/// What a PLAIN password is checked against.
#[derive(Debug, Clone)]
pub enum PlainCheck {
    /// The account's SCRAM keys (the usual case).
    Scram(ScramCredentials),
    /// The account's argon2 hash (only when argon2 is configured).
    Argon2(String),
    /// No such account: the same derivation runs against stand-in
    /// credentials, so that the answer takes as long as for a real account,
    /// and then fails.
    Unknown {
        fake: ScramCredentials,
        argon2: Option<Params>,
    },
}

impl PlainCheck {
    /// Runs the check (one PBKDF2 or argon2 derivation). CPU-heavy.
    pub fn verify(&self, password: &str, memory: &mut Vec<Block>) -> bool {
        match self {
            PlainCheck::Scram(c) => c.verify_password(password),
            PlainCheck::Argon2(phc) => verify_argon2(phc, password, memory),
            PlainCheck::Unknown { fake, argon2 } => {
                match argon2 {
                    Some(params) => {
                        let _ = argon2_phc(password, params, memory);
                    }
                    None => {
                        let _ = fake.verify_password(password);
                    }
                }
                false
            }
        }
    }
}

/// Loads what PLAIN checks `username`'s password against: the argon2 hash
/// when argon2 is configured and the account has one, else its strongest
/// preferred SCRAM keys, else stand-in credentials for the prepared name.
pub async fn plain_check(
    store: &Store,
    domain: &str,
    username: &str,
    hashing: &PasswordHashing,
) -> Result<PlainCheck, StorageError> {
    let unknown = || PlainCheck::Unknown {
        fake: ScramCredentials::unknown_user(PLAIN_HASHES[0], username, hashing.scram_iterations),
        argon2: hashing.argon2.clone(),
    };
    let Some(argon2) = store.argon2_hash(domain, username).await? else {
        return Ok(unknown());
    };
    if hashing.argon2.is_some() && !argon2.is_empty() {
        return Ok(PlainCheck::Argon2(argon2));
    }
    for hash in PLAIN_HASHES {
        if let Some(c) = scram_credentials(store, domain, username, hash).await? {
            return Ok(PlainCheck::Scram(c));
        }
    }
    Ok(unknown())
}

/// The hashes of [`SCRAM_HASHES`] an account has no keys for: accounts
/// imported from a server that kept SHA-1 keys only (Prosody 0.12,
/// ejabberd) until their next PLAIN login.
pub async fn missing_hashes(
    store: &Store,
    domain: &str,
    username: &str,
) -> Result<Vec<ScramHash>, StorageError> {
    let have = store.scram_mechanisms(domain, username).await?;
    Ok(SCRAM_HASHES
        .into_iter()
        .filter(|h| !have.iter().any(|m| m == mechanism_key(*h)))
        .collect())
}

/// SCRAM keys of `password` for `hashes`. CPU-heavy (one PBKDF2 each).
pub fn derive_scram(hashes: &[ScramHash], password: &str, iterations: u32) -> Vec<ScramRecord> {
    hashes
        .iter()
        .map(|&h| {
            let c = ScramCredentials::generate(h, password, iterations);
            ScramRecord {
                mechanism: mechanism_key(h).to_string(),
                salt: c.salt,
                iterations: c.iterations,
                stored_key: c.stored_key,
                server_key: c.server_key,
            }
        })
        .collect()
}

/// Loads the SCRAM credentials of an account for one hash.
pub async fn scram_credentials(
    store: &Store,
    domain: &str,
    username: &str,
    hash: ScramHash,
) -> Result<Option<ScramCredentials>, StorageError> {
    Ok(store
        .scram_credentials(domain, username, mechanism_key(hash))
        .await?
        .map(|r| ScramCredentials {
            hash,
            salt: r.salt,
            iterations: r.iterations,
            stored_key: r.stored_key,
            server_key: r.server_key,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::PasswordVerifier;

    fn small_params() -> Params {
        Params::new(64, 1, 1, None).unwrap()
    }

    fn jid() -> BareJid {
        BareJid::new("juliet@example.org").unwrap()
    }

    #[test]
    fn scram_only_record_has_no_argon2_and_plain_verifies_against_scram() {
        let rec = derive_record(&jid(), "pässwörd", 4096).unwrap();
        assert_eq!(rec.argon2, "");
        assert_eq!(rec.scram.len(), 3);
        let s = rec.scram.iter().find(|s| s.mechanism == "SHA-256").unwrap();
        let check = PlainCheck::Scram(ScramCredentials {
            hash: ScramHash::Sha256,
            salt: s.salt.clone(),
            iterations: s.iterations,
            stored_key: s.stored_key.clone(),
            server_key: s.server_key.clone(),
        });
        let mut mem = Vec::new();
        assert!(check.verify("pässwörd", &mut mem));
        assert!(!check.verify("password", &mut mem));
        assert!(!check.verify("pässwörd ", &mut mem));
    }

    #[test]
    fn scram_check_compares_both_keys() {
        let mut c = ScramCredentials::generate(ScramHash::Sha256, "pencil", 4096);
        assert!(c.verify_password("pencil"));
        // A row whose ServerKey does not match the password is refused even
        // though its StoredKey does.
        c.server_key[0] ^= 1;
        assert!(!c.verify_password("pencil"));
    }

    #[test]
    fn argon2_hashes_are_standard_phc_and_verify_with_reused_memory() {
        let params = small_params();
        let hashing = PasswordHashing {
            scram_iterations: 4096,
            argon2: Some(params),
        };
        let mut mem = Vec::new();
        let rec = derive_record_with(&jid(), "secret", &hashing, &mut mem).unwrap();
        assert!(rec.argon2.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        // The standard verifier accepts what we wrote...
        let parsed = PasswordHash::new(&rec.argon2).unwrap();
        assert!(Argon2::default()
            .verify_password(b"secret", &parsed)
            .is_ok());
        // ...and we accept what the standard hasher wrote (old rows).
        let old = {
            use argon2::PasswordHasher;
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(b"old secret", &salt)
                .unwrap()
                .to_string()
        };
        let ptr = mem.as_ptr();
        assert!(verify_argon2(&rec.argon2, "secret", &mut mem));
        assert_eq!(mem.as_ptr(), ptr, "a buffer large enough is reused");
        assert!(!verify_argon2(&rec.argon2, "Secret", &mut mem));
        assert!(verify_argon2(&old, "old secret", &mut mem));
        assert!(!verify_argon2(&old, "old secreT", &mut mem));
        assert!(!verify_argon2("not a phc", "x", &mut mem));
    }

    #[test]
    fn unknown_accounts_never_verify() {
        let check = PlainCheck::Unknown {
            fake: ScramCredentials::unknown_user(ScramHash::Sha256, "nobody", 4096),
            argon2: None,
        };
        assert!(!check.verify("anything", &mut Vec::new()));
        let check = PlainCheck::Unknown {
            fake: ScramCredentials::unknown_user(ScramHash::Sha256, "nobody", 4096),
            argon2: Some(small_params()),
        };
        let mut mem = Vec::new();
        assert!(!check.verify("anything", &mut mem));
        assert_eq!(mem.len(), 64, "the argon2 derivation ran");
    }

    #[test]
    fn unknown_user_credentials_depend_on_the_prepared_name_only() {
        let a = ScramCredentials::unknown_user(ScramHash::Sha256, "nobody", 4096);
        let b = ScramCredentials::unknown_user(ScramHash::Sha256, "nobody", 4096);
        let c = ScramCredentials::unknown_user(ScramHash::Sha256, "somebody", 4096);
        assert_eq!(a.salt, b.salt);
        assert_ne!(a.salt, c.salt);
        assert_eq!(a.iterations, 4096);
    }
}
