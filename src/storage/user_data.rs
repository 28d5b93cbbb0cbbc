//! Per-user key-value documents (the "keyval" storage shape): one text
//! value per (account, key). Keys are namespaced by feature, e.g. `vcard`,
//! `private:jabber:iq:private/storage:bookmarks`, `blocklist`.

use super::{StorageError, Store};

impl Store {
    /// The value stored under `key` for an account.
    pub async fn user_data_get(
        &self,
        domain: &str,
        username: &str,
        key: &str,
    ) -> Result<Option<String>, StorageError> {
        const Q: &str =
            "SELECT value FROM user_data WHERE domain = $1 AND username = $2 AND key = $3";
        let row: Option<(String,)> = on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(domain)
                .bind(username)
                .bind(key)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|r| r.0))
    }

    /// Stores `value` under `key`, replacing what was there.
    pub async fn user_data_put(
        &self,
        domain: &str,
        username: &str,
        key: &str,
        value: &str,
    ) -> Result<(), StorageError> {
        const Q: &str =
            "INSERT INTO user_data (domain, username, key, value) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (domain, username, key) DO UPDATE SET value = excluded.value";
        on_pool!(self, pool => {
            sqlx::query(Q)
                .bind(domain)
                .bind(username)
                .bind(key)
                .bind(value)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Removes `key`; returns whether it existed.
    pub async fn user_data_delete(
        &self,
        domain: &str,
        username: &str,
        key: &str,
    ) -> Result<bool, StorageError> {
        const Q: &str = "DELETE FROM user_data WHERE domain = $1 AND username = $2 AND key = $3";
        let r = on_pool!(self, pool => sqlx::query(Q)
                .bind(domain)
                .bind(username)
                .bind(key)
                .execute(pool)
                .await?
                .rows_affected());
        Ok(r > 0)
    }
}

impl Store {
    /// The size in bytes (key and value together, as UTF-8) of each of an
    /// account's documents whose key starts with `prefix` (which must hold
    /// no LIKE wildcard), for quotas over one feature's documents.
    pub async fn user_data_sizes(
        &self,
        domain: &str,
        username: &str,
        prefix: &str,
    ) -> Result<Vec<(String, i64)>, StorageError> {
        const SQLITE: &str = "SELECT key, length(CAST(key AS BLOB)) + length(CAST(value AS BLOB)) \
             FROM user_data WHERE domain = $1 AND username = $2 AND key LIKE $3";
        const POSTGRES: &str =
            "SELECT key, CAST(octet_length(key) + octet_length(value) AS BIGINT) \
             FROM user_data WHERE domain = $1 AND username = $2 AND key LIKE $3";
        let pattern = format!("{prefix}%");
        Ok(match self {
            Store::Sqlite(p) => {
                sqlx::query_as(SQLITE)
                    .bind(domain)
                    .bind(username)
                    .bind(&pattern)
                    .fetch_all(p)
                    .await?
            }
            Store::Postgres(p) => {
                sqlx::query_as(POSTGRES)
                    .bind(domain)
                    .bind(username)
                    .bind(&pattern)
                    .fetch_all(p)
                    .await?
            }
        })
    }

    /// The value under `key` for each of `usernames` of one domain that has
    /// one, in one round trip (e.g. the last logout of every offline contact).
    pub async fn user_data_get_many(
        &self,
        domain: &str,
        usernames: &[&str],
        key: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        if usernames.is_empty() {
            return Ok(Vec::new());
        }
        macro_rules! run {
            ($db:ty, $pool:expr) => {{
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT username, value FROM user_data WHERE domain = ",
                );
                q.push_bind(domain)
                    .push(" AND key = ")
                    .push_bind(key)
                    .push(" AND username IN (");
                let mut list = q.separated(", ");
                for u in usernames {
                    list.push_bind(*u);
                }
                q.push(")");
                q.build_query_as::<(String, String)>()
                    .fetch_all($pool)
                    .await?
            }};
        }
        Ok(match self {
            Store::Sqlite(p) => run!(sqlx::Sqlite, p),
            Store::Postgres(p) => run!(sqlx::Postgres, p),
        })
    }

    /// The accounts (domain, username) that have a value under `key`. One
    /// scan of the table (it is keyed by account first): for a feature to
    /// learn at start which accounts have a document at all.
    pub async fn user_data_holders(
        &self,
        key: &str,
    ) -> Result<Vec<(String, String)>, StorageError> {
        const Q: &str = "SELECT domain, username FROM user_data WHERE key = $1";
        Ok(on_pool!(self, pool => sqlx::query_as(Q).bind(key).fetch_all(pool).await?))
    }
}
