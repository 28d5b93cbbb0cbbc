//! Whole-store figures for the metrics: how many messages wait offline and
//! how many the archives hold. Each is one query over a whole table or
//! its per-owner counts, so callers cache them (`metrics::storage`).

use super::{StorageError, Store};

impl Store {
    /// Offline messages stored for all users.
    pub async fn offline_total(&self) -> Result<i64, StorageError> {
        const Q: &str = "SELECT COUNT(*) FROM offline_messages";
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as(Q).fetch_one(pool).await?);
        Ok(n)
    }

    /// Archived messages of all archives (user and room), from the counts
    /// kept beside the rows: one row per archive read, not one per message.
    pub async fn archive_total(&self) -> Result<i64, StorageError> {
        const Q: &str = "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM archive_owners";
        let (n,): (i64,) = on_pool!(self, pool => sqlx::query_as(Q).fetch_one(pool).await?);
        Ok(n)
    }
}
