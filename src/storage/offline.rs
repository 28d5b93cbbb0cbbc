//! Offline messages (XEP-0160): committed before the sender hears anything,
//! read back in arrival order, deleted once handed to a session.

use super::{StorageError, Store};

impl Store {
    /// Stores a serialized message for an offline user unless they already
    /// have `quota` messages waiting, or the waiting messages and this one
    /// would exceed `max_bytes` (as UTF-8); returns whether it was stored.
    pub async fn offline_push(
        &self,
        domain: &str,
        username: &str,
        stanza: &str,
        quota: u32,
        max_bytes: u64,
    ) -> Result<bool, StorageError> {
        // One statement checks and inserts, so no other writer slips in
        // between on SQLite; on PostgreSQL concurrent senders overshoot by
        // at most the messages in flight.
        const SQLITE: &str = "INSERT INTO offline_messages (domain, username, stanza) \
             SELECT $1, $2, $3 WHERE (SELECT COUNT(*) FROM offline_messages WHERE domain = $1 AND username = $2) < $4 \
             AND (SELECT COALESCE(SUM(length(CAST(stanza AS BLOB))), 0) FROM offline_messages \
                  WHERE domain = $1 AND username = $2) + length(CAST($3 AS BLOB)) <= $5";
        const POSTGRES: &str = "INSERT INTO offline_messages (domain, username, stanza) \
             SELECT $1, $2, $3 WHERE (SELECT COUNT(*) FROM offline_messages WHERE domain = $1 AND username = $2) < $4 \
             AND (SELECT COALESCE(SUM(octet_length(stanza)), 0) FROM offline_messages \
                  WHERE domain = $1 AND username = $2) + octet_length($3) <= $5";
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let n = match self {
            Store::Sqlite(p) => sqlx::query(SQLITE)
                .bind(domain)
                .bind(username)
                .bind(stanza)
                .bind(quota as i64)
                .bind(max_bytes)
                .execute(p)
                .await?
                .rows_affected(),
            Store::Postgres(p) => sqlx::query(POSTGRES)
                .bind(domain)
                .bind(username)
                .bind(stanza)
                .bind(quota as i64)
                .bind(max_bytes)
                .execute(p)
                .await?
                .rows_affected(),
        };
        Ok(n > 0)
    }

    /// Up to `limit` waiting messages, oldest first, with their ids.
    pub async fn offline_fetch(
        &self,
        domain: &str,
        username: &str,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StorageError> {
        const Q: &str = "SELECT id, stanza FROM offline_messages WHERE domain = $1 AND username = $2 AND id > $3 ORDER BY id LIMIT $4";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(domain)
                .bind(username)
                .bind(after_id)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Deletes the waiting messages up to and including `last_id`.
    pub async fn offline_delete_through(
        &self,
        domain: &str,
        username: &str,
        last_id: i64,
    ) -> Result<(), StorageError> {
        const Q: &str =
            "DELETE FROM offline_messages WHERE domain = $1 AND username = $2 AND id <= $3";
        on_pool!(self, pool => {
            sqlx::query(Q)
                .bind(domain)
                .bind(username)
                .bind(last_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// How many messages wait for a user.
    pub async fn offline_count(&self, domain: &str, username: &str) -> Result<i64, StorageError> {
        const Q: &str = "SELECT COUNT(*) FROM offline_messages WHERE domain = $1 AND username = $2";
        let (n,): (i64,) = on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(domain)
                .bind(username)
                .fetch_one(pool)
                .await?
        });
        Ok(n)
    }
}
