//! Rows of the `clients` table: each client (XEP-0388 user-agent id) an
//! account logged in with, what it calls itself, when it was last seen, and
//! its FAST token (XEP-0484) as a SHA-256, current and waiting to replace it.

use super::{StorageError, Store};

/// Forgets every FAST token of one account (password changed); the
/// clients themselves stay listed.
pub(super) const REVOKE_TOKENS_SQL: &str = "UPDATE clients SET token_hash = NULL, \
     token_mechanism = NULL, token_expiry = NULL, token_count = 0, next_hash = NULL, \
     next_mechanism = NULL, next_expiry = NULL WHERE domain = $1 AND username = $2";

/// One stored FAST token: the SHA-256 of the secret, the mechanism it is
/// bound to, and when it expires (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastToken {
    pub hash: Vec<u8>,
    pub mechanism: String,
    pub expiry: i64,
}

/// One client of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRecord {
    pub client_id: String,
    pub software: String,
    pub device: String,
    pub first_seen: i64,
    pub last_seen: i64,
    /// "password" or "fast": how it last authenticated.
    pub last_auth: String,
    /// The resource its last session was bound to.
    pub resource: Option<String>,
    pub token: Option<FastToken>,
    /// Highest FAST `count` accepted for the current token.
    pub token_count: i64,
    /// A token issued and not yet used.
    pub next: Option<FastToken>,
    /// Random, chosen when the row was made (see `client_seen`).
    pub generation: i64,
}

type Row = (
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
    i64,
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
    i64,
);

const COLUMNS: &str = "client_id, software, device, first_seen, last_seen, last_auth, resource, \
     token_hash, token_mechanism, token_expiry, token_count, next_hash, next_mechanism, next_expiry, \
     generation";

fn token(
    hash: Option<Vec<u8>>,
    mechanism: Option<String>,
    expiry: Option<i64>,
) -> Option<FastToken> {
    Some(FastToken {
        hash: hash?,
        mechanism: mechanism?,
        expiry: expiry?,
    })
}

fn record(r: Row) -> ClientRecord {
    ClientRecord {
        client_id: r.0,
        software: r.1,
        device: r.2,
        first_seen: r.3,
        last_seen: r.4,
        last_auth: r.5,
        resource: r.6,
        token: token(r.7, r.8, r.9),
        token_count: r.10,
        next: token(r.11, r.12, r.13),
        generation: r.14,
    }
}

impl Store {
    /// Records a login by `client_id`, creating its row; past `max_clients`
    /// rows for the account, the least recently seen others are forgotten
    /// (with their tokens). Returns the row's `generation` (random, chosen
    /// when the row is made): a session bound by this login belongs to this
    /// row, and a row revoked and made anew is not its own.
    #[allow(clippy::too_many_arguments)]
    pub async fn client_seen(
        &self,
        domain: &str,
        username: &str,
        client_id: &str,
        software: &str,
        device: &str,
        auth: &str,
        now: i64,
        max_clients: usize,
    ) -> Result<i64, StorageError> {
        let generation = on_pool!(self, pool => {
            let (first_seen, generation): (i64, i64) = sqlx::query_as(
                "INSERT INTO clients (domain, username, client_id, software, device, first_seen, last_seen, last_auth, generation) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8) \
                 ON CONFLICT (domain, username, client_id) DO UPDATE SET software = $4, device = $5, \
                 last_seen = $6, last_auth = $7 RETURNING first_seen, generation",
            )
            .bind(domain)
            .bind(username)
            .bind(client_id)
            .bind(software)
            .bind(device)
            .bind(now)
            .bind(auth)
            .bind(rand::random::<i64>())
            .fetch_one(pool)
            .await?;
            // Only a new client can take the account past its quota: a
            // returning one skips the extra statement (and its commit).
            if first_seen == now {
                sqlx::query(
                    "DELETE FROM clients WHERE domain = $1 AND username = $2 AND client_id IN \
                     (SELECT client_id FROM clients WHERE domain = $1 AND username = $2 \
                      ORDER BY (client_id = $4) DESC, last_seen DESC, client_id LIMIT -1 OFFSET $3)"
                        .replace("LIMIT -1 OFFSET $3", self.offset_only())
                        .as_str(),
                )
                .bind(domain)
                .bind(username)
                .bind(max_clients as i64)
                .bind(client_id)
                .execute(pool)
                .await?;
            }
            generation
        });
        Ok(generation)
    }

    /// "Everything after the first $3 rows" in this dialect.
    fn offset_only(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "LIMIT -1 OFFSET $3",
            Store::Postgres(_) => "OFFSET $3",
        }
    }

    /// Notes the resource a client's session was bound to.
    pub async fn client_bound(
        &self,
        domain: &str,
        username: &str,
        client_id: &str,
        resource: &str,
    ) -> Result<(), StorageError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE clients SET resource = $4 WHERE domain = $1 AND username = $2 AND client_id = $3")
                .bind(domain)
                .bind(username)
                .bind(client_id)
                .bind(resource)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// One client of an account.
    pub async fn client(
        &self,
        domain: &str,
        username: &str,
        client_id: &str,
    ) -> Result<Option<ClientRecord>, StorageError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM clients WHERE domain = $1 AND username = $2 AND client_id = $3"
        );
        let row: Option<Row> = on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(domain).bind(username).bind(client_id).fetch_optional(pool).await?
        });
        Ok(row.map(record))
    }

    /// Every client of an account, most recently seen first.
    pub async fn clients(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Vec<ClientRecord>, StorageError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM clients WHERE domain = $1 AND username = $2 ORDER BY last_seen DESC, client_id"
        );
        let rows: Vec<Row> = on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(domain).bind(username).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(record).collect())
    }

    /// Stores a new token for a client as the one waiting to replace its
    /// current one (an earlier unused one is dropped). False: no such client.
    pub async fn issue_fast_token(
        &self,
        domain: &str,
        username: &str,
        client_id: &str,
        token: &FastToken,
    ) -> Result<bool, StorageError> {
        let r = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE clients SET next_hash = $4, next_mechanism = $5, next_expiry = $6 \
                 WHERE domain = $1 AND username = $2 AND client_id = $3",
            )
            .bind(domain)
            .bind(username)
            .bind(client_id)
            .bind(&token.hash)
            .bind(&token.mechanism)
            .bind(token.expiry)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(r > 0)
    }

    /// Records a use of a token (`hash`), and the login with it (last
    /// seen, user-agent texts: what `client_seen` records for a password
    /// login, in the same statement, so a FAST login commits once). With a
    /// `count`, only if it is above every count already used with that
    /// token (compared and written in one statement, so two racing replays
    /// cannot both pass). `next`: the token used is the one waiting, which
    /// becomes the current one, the older invalidated (XEP-0484 §3.3).
    /// Returns the row's `generation`; None: refused.
    #[allow(clippy::too_many_arguments)]
    pub async fn use_fast_token(
        &self,
        domain: &str,
        username: &str,
        client_id: &str,
        hash: &[u8],
        next: bool,
        count: Option<i64>,
        seen: (&str, &str, i64),
    ) -> Result<Option<i64>, StorageError> {
        let (set, cond) = match (next, count.is_some()) {
            (true, _) => (
                "token_hash = next_hash, token_mechanism = next_mechanism, \
                 token_expiry = next_expiry, token_count = COALESCE($5, 0), next_hash = NULL, \
                 next_mechanism = NULL, next_expiry = NULL",
                "next_hash = $4",
            ),
            (false, true) => ("token_count = $5", "token_hash = $4 AND token_count < $5"),
            (false, false) => (
                "token_count = token_count + 0 * COALESCE($5, 0)",
                "token_hash = $4",
            ),
        };
        let sql = format!(
            "UPDATE clients SET {set}, software = $6, device = $7, last_seen = $8, \
             last_auth = 'fast' WHERE domain = $1 AND username = $2 AND client_id = $3 AND {cond} \
             RETURNING generation"
        );
        let (software, device, now) = seen;
        let generation: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar(&sql)
                .bind(domain)
                .bind(username)
                .bind(client_id)
                .bind(hash)
                .bind(count)
                .bind(software)
                .bind(device)
                .bind(now)
                .fetch_optional(pool)
                .await?
        });
        Ok(generation)
    }

    /// Forgets a client's tokens (XEP-0484 invalidation).
    pub async fn revoke_fast_tokens(
        &self,
        domain: &str,
        username: &str,
        client_id: &str,
    ) -> Result<(), StorageError> {
        let sql = format!("{REVOKE_TOKENS_SQL} AND client_id = $3");
        on_pool!(self, pool => {
            sqlx::query(&sql).bind(domain).bind(username).bind(client_id).execute(pool).await?;
        });
        Ok(())
    }

    /// Forgets a client entirely (XEP-0494 revocation); returns its record
    /// as it was, None if there was no such client.
    pub async fn delete_client(
        &self,
        domain: &str,
        username: &str,
        client_id: &str,
    ) -> Result<Option<ClientRecord>, StorageError> {
        let old = self.client(domain, username, client_id).await?;
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM clients WHERE domain = $1 AND username = $2 AND client_id = $3")
                .bind(domain)
                .bind(username)
                .bind(client_id)
                .execute(pool)
                .await?;
        });
        Ok(old)
    }
}
