//! Account credentials: turning a password into what is stored (SCRAM
//! salted keys for SHA-1/256/512 and an argon2id hash for PLAIN), and
//! checking a PLAIN password against it.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use jid::BareJid;

use crate::sasl::{ScramCredentials, ScramHash};
use crate::storage::{AccountRecord, ScramRecord, StorageError, Store};

/// The SCRAM hash functions every account has keys for.
pub const SCRAM_HASHES: [ScramHash; 3] = [ScramHash::Sha1, ScramHash::Sha256, ScramHash::Sha512];

/// The storage name of a SCRAM hash.
pub fn mechanism_key(hash: ScramHash) -> &'static str {
    match hash {
        ScramHash::Sha1 => "SHA-1",
        ScramHash::Sha256 => "SHA-256",
        ScramHash::Sha512 => "SHA-512",
    }
}

/// Derives every stored credential from a password. CPU-heavy (PBKDF2 and
/// argon2): call it off the async runtime.
pub fn derive_record(
    jid: &BareJid,
    password: &str,
    iterations: u32,
) -> Result<AccountRecord, String> {
    let username = jid
        .node()
        .ok_or("an account JID needs a local part")?
        .as_str()
        .to_string();
    let salt = SaltString::generate(&mut OsRng);
    let argon2 = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?
        .to_string();
    let scram = SCRAM_HASHES
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
        .collect();
    Ok(AccountRecord {
        domain: jid.domain().as_str().to_string(),
        username,
        argon2,
        scram,
    })
}

/// Checks a password against a stored argon2 PHC string.
pub fn verify_argon2(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
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
