//! HTTP File Upload (XEP-0363) slots: who asked for what, for quotas,
//! the upload's checks and the clean-up.

use super::{StorageError, Store};

/// One slot.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UploadSlot {
    pub token: String,
    pub domain: String,
    pub username: String,
    pub filename: String,
    pub size: i64,
    pub content_type: String,
    pub created: i64,
    pub done: bool,
}

impl Store {
    /// Stores `slot` if the owner's slots (uploaded or still open) plus
    /// this one stay within `quota` bytes, in one statement. Whether it
    /// was stored.
    pub async fn upload_slot_add(
        &self,
        slot: &UploadSlot,
        quota: i64,
    ) -> Result<bool, StorageError> {
        const Q: &str = "INSERT INTO uploads \
             (token, domain, username, filename, size, content_type, created, done) \
             SELECT $1, $2, $3, $4, $5, $6, $7, FALSE WHERE \
               (SELECT COALESCE(SUM(size), 0) FROM uploads WHERE domain = $2 AND username = $3) + $5 <= $8";
        let n = on_pool!(self, pool => sqlx::query(Q)
            .bind(&slot.token)
            .bind(&slot.domain)
            .bind(&slot.username)
            .bind(&slot.filename)
            .bind(slot.size)
            .bind(&slot.content_type)
            .bind(slot.created)
            .bind(quota)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n > 0)
    }

    pub async fn upload_slot(&self, token: &str) -> Result<Option<UploadSlot>, StorageError> {
        const Q: &str =
            "SELECT token, domain, username, filename, size, content_type, created, done \
             FROM uploads WHERE token = $1";
        Ok(on_pool!(self, pool => sqlx::query_as(Q).bind(token).fetch_optional(pool).await?))
    }

    /// Marks the slot's file as uploaded (once: false if it already was).
    pub async fn upload_done(&self, token: &str) -> Result<bool, StorageError> {
        const Q: &str = "UPDATE uploads SET done = TRUE WHERE token = $1 AND NOT done";
        let n =
            on_pool!(self, pool => sqlx::query(Q).bind(token).execute(pool).await?.rows_affected());
        Ok(n > 0)
    }

    /// Slots created before `before` (unix seconds), only those never
    /// uploaded to with `open_only`, at most `limit`.
    pub async fn upload_expired(
        &self,
        before: i64,
        open_only: bool,
        limit: i64,
    ) -> Result<Vec<String>, StorageError> {
        const Q: &str = "SELECT token FROM uploads WHERE created < $1 AND (NOT done OR NOT $2) \
             ORDER BY created LIMIT $3";
        let rows: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(Q)
            .bind(before)
            .bind(open_only)
            .bind(limit)
            .fetch_all(pool)
            .await?);
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }

    pub async fn upload_forget(&self, token: &str) -> Result<(), StorageError> {
        const Q: &str = "DELETE FROM uploads WHERE token = $1";
        on_pool!(self, pool => sqlx::query(Q).bind(token).execute(pool).await?.rows_affected());
        Ok(())
    }
}
