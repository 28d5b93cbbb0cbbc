//! Account rows: the argon2 hash for PLAIN and the SCRAM salted keys.

use super::{StorageError, Store};
use crate::modules::time::unix_now as now;

/// SCRAM keys for one hash function, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramRecord {
    /// "SHA-1", "SHA-256" or "SHA-512".
    pub mechanism: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// salt, iterations, stored_key, server_key as selected.
type ScramRow = (Vec<u8>, i64, Vec<u8>, Vec<u8>);

/// Everything stored about an account's credentials.
#[derive(Clone, Debug)]
pub struct AccountRecord {
    pub domain: String,
    pub username: String,
    pub argon2: String,
    pub scram: Vec<ScramRecord>,
}

/// Inserts every SCRAM record of `rec` inside transaction `tx`; the integer
/// type of `iterations` differs between SQLite (i64) and PostgreSQL (i32).
macro_rules! insert_scram {
    ($tx:expr, $rec:expr, $iter:ty) => {
        for s in &$rec.scram {
            sqlx::query("INSERT INTO scram_credentials (domain, username, mechanism, salt, iterations, stored_key, server_key) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(&$rec.domain)
                .bind(&$rec.username)
                .bind(&s.mechanism)
                .bind(&s.salt)
                .bind(s.iterations as $iter)
                .bind(&s.stored_key)
                .bind(&s.server_key)
                .execute(&mut *$tx)
                .await?;
        }
    };
}

impl Store {
    /// Creates an account; returns false if it already exists.
    pub async fn create_account(&self, rec: &AccountRecord) -> Result<bool, StorageError> {
        macro_rules! run {
            ($pool:expr, $iter:ty) => {{
                let mut tx = $pool.begin().await?;
                let r = sqlx::query(
                    "INSERT INTO accounts (domain, username, argon2, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(&rec.domain)
                .bind(&rec.username)
                .bind(&rec.argon2)
                .bind(now())
                .execute(&mut *tx)
                .await?;
                if r.rows_affected() == 0 {
                    return Ok(false);
                }
                insert_scram!(tx, rec, $iter);
                tx.commit().await?;
                Ok(true)
            }};
        }
        match self {
            Store::Sqlite(pool) => run!(pool, i64),
            Store::Postgres(pool) => run!(pool, i32),
        }
    }

    /// Replaces an account's credentials; returns false if there is no such account.
    pub async fn set_credentials(&self, rec: &AccountRecord) -> Result<bool, StorageError> {
        macro_rules! run {
            ($pool:expr, $iter:ty) => {{
                let mut tx = $pool.begin().await?;
                let r = sqlx::query(
                    "UPDATE accounts SET argon2 = $1 WHERE domain = $2 AND username = $3",
                )
                .bind(&rec.argon2)
                .bind(&rec.domain)
                .bind(&rec.username)
                .execute(&mut *tx)
                .await?;
                if r.rows_affected() == 0 {
                    return Ok(false);
                }
                sqlx::query("DELETE FROM scram_credentials WHERE domain = $1 AND username = $2")
                    .bind(&rec.domain)
                    .bind(&rec.username)
                    .execute(&mut *tx)
                    .await?;
                insert_scram!(tx, rec, $iter);
                // XEP-0484: a new password ends every FAST token issued
                // under the old one.
                sqlx::query(super::clients::REVOKE_TOKENS_SQL)
                    .bind(&rec.domain)
                    .bind(&rec.username)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }};
        }
        match self {
            Store::Sqlite(pool) => run!(pool, i64),
            Store::Postgres(pool) => run!(pool, i32),
        }
    }

    /// Deletes an account and everything stored for it (every table in
    /// `USER_TABLES`), in one transaction; returns false if absent.
    pub async fn delete_account(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                // Archive blocks name their owner by number: before the owners go.
                sqlx::query(
                    "DELETE FROM archive_blocks WHERE owner_id IN \
                     (SELECT owner_id FROM archive_owners WHERE domain = $1 AND username = $2)",
                )
                .bind(domain)
                .bind(username)
                .execute(&mut *tx)
                .await?;
                for table in Store::USER_TABLES {
                    sqlx::query(&format!(
                        "DELETE FROM {table} WHERE domain = $1 AND username = $2"
                    ))
                    .bind(domain)
                    .bind(username)
                    .execute(&mut *tx)
                    .await?;
                }
                // Invitations the account gave out die with it: someone who
                // later registers the same name must not inherit contacts.
                sqlx::query("DELETE FROM invites WHERE inviter = $1")
                    .bind(format!("{username}@{domain}"))
                    .execute(&mut *tx)
                    .await?;
                let r = sqlx::query("DELETE FROM accounts WHERE domain = $1 AND username = $2")
                    .bind(domain)
                    .bind(username)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(r.rows_affected() > 0)
            }};
        }
        on_pool!(self, pool => run!(pool))
    }

    /// Adds SCRAM keys an account lacks (an account imported with SHA-1
    /// keys only gains SHA-256/512 at its next PLAIN login); keys already
    /// there are kept. False if there is no such account.
    pub async fn add_scram_credentials(
        &self,
        domain: &str,
        username: &str,
        keys: &[ScramRecord],
    ) -> Result<bool, StorageError> {
        macro_rules! run {
            ($pool:expr, $iter:ty) => {{
                let mut tx = $pool.begin().await?;
                let exists: Option<(String,)> =
                    sqlx::query_as("SELECT argon2 FROM accounts WHERE domain = $1 AND username = $2")
                        .bind(domain)
                        .bind(username)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_none() {
                    return Ok(false);
                }
                for s in keys {
                    sqlx::query("INSERT INTO scram_credentials (domain, username, mechanism, salt, iterations, stored_key, server_key) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING")
                        .bind(domain)
                        .bind(username)
                        .bind(&s.mechanism)
                        .bind(&s.salt)
                        .bind(s.iterations as $iter)
                        .bind(&s.stored_key)
                        .bind(&s.server_key)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(true)
            }};
        }
        match self {
            Store::Sqlite(pool) => run!(pool, i64),
            Store::Postgres(pool) => run!(pool, i32),
        }
    }

    /// The SCRAM hashes ("SHA-1"…) an account has keys for.
    pub async fn scram_mechanisms(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Vec<String>, StorageError> {
        const Q: &str = "SELECT mechanism FROM scram_credentials WHERE domain = $1 AND username = $2 ORDER BY mechanism";
        let rows: Vec<(String,)> = on_pool!(self, pool => {
            sqlx::query_as(Q).bind(domain).bind(username).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(|(m,)| m).collect())
    }

    /// Does the account exist?
    pub async fn account_exists(&self, domain: &str, username: &str) -> Result<bool, StorageError> {
        Ok(self.argon2_hash(domain, username).await?.is_some())
    }

    /// The SCRAM keys of one account for one hash ("SHA-256"…), if any.
    pub async fn scram_credentials(
        &self,
        domain: &str,
        username: &str,
        mechanism: &str,
    ) -> Result<Option<ScramRecord>, StorageError> {
        const Q: &str = "SELECT salt, iterations, stored_key, server_key FROM scram_credentials WHERE domain = $1 AND username = $2 AND mechanism = $3";
        let row: Option<ScramRow> = match self {
            Store::Sqlite(pool) => {
                sqlx::query_as(Q)
                    .bind(domain)
                    .bind(username)
                    .bind(mechanism)
                    .fetch_optional(pool)
                    .await?
            }
            Store::Postgres(pool) => sqlx::query_as::<_, (Vec<u8>, i32, Vec<u8>, Vec<u8>)>(Q)
                .bind(domain)
                .bind(username)
                .bind(mechanism)
                .fetch_optional(pool)
                .await?
                .map(|(a, i, b, c)| (a, i as i64, b, c)),
        };
        Ok(
            row.map(|(salt, iterations, stored_key, server_key)| ScramRecord {
                mechanism: mechanism.to_string(),
                salt,
                iterations: iterations.clamp(0, u32::MAX as i64) as u32,
                stored_key,
                server_key,
            }),
        )
    }

    /// The argon2 PHC string of an account, if it exists.
    pub async fn argon2_hash(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Option<String>, StorageError> {
        const Q: &str = "SELECT argon2 FROM accounts WHERE domain = $1 AND username = $2";
        let row: Option<(String,)> = on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(domain)
                .bind(username)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|r| r.0))
    }

    /// Usernames of a domain (or of all domains, as "user@domain"), sorted.
    pub async fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>, StorageError> {
        const Q: &str = "SELECT username, domain FROM accounts WHERE ($1 = '' OR domain = $1) ORDER BY domain, username";
        let d = domain.unwrap_or("");
        let rows: Vec<(String, String)> =
            on_pool!(self, pool => sqlx::query_as(Q).bind(d).fetch_all(pool).await?);
        Ok(rows.into_iter().map(|(u, d)| format!("{u}@{d}")).collect())
    }
}
