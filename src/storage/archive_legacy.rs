//! Turning an archive of the row-per-stanza shape into blocks: the
//! migration `20261206100008_archive_blocks` renames the old table to
//! `archive_legacy`; opening the store converts its rows here, a chunk per
//! transaction (each chunk's blocks in, its rows out, so a stop half-way
//! resumes where it was), then drops the table. Counts do not change: the
//! owners' rows already count these stanzas.

use sqlx::Connection;

use super::archive::{insert_blocks_postgres, insert_blocks_sqlite};
use super::archive_block::{self as block, BlockInput, RowView};
use super::{StorageError, Store};

/// Old rows per transaction.
const CHUNK: i64 = 20_000;

/// An old row: owner id, id, time, peer, resource, outgoing, payload.
type LegacyRow = (i64, String, i64, String, String, bool, String);

/// The next chunk after the last one converted ((-1, '') at first), in
/// the order of the old (owner_id, id) index.
const READ: &str = "SELECT owner_id, id, ts, peer, resource, outgoing, payload \
     FROM archive_legacy WHERE (owner_id, id) > ($1, $2) ORDER BY owner_id, id LIMIT $3";
/// The chunk's rows, by the same index.
const DONE: &str =
    "DELETE FROM archive_legacy WHERE (owner_id, id) > ($1, $2) AND (owner_id, id) <= ($3, $4)";

fn inputs(rows: &[LegacyRow]) -> Vec<BlockInput<'_>> {
    rows.iter()
        .map(
            |(owner_id, id, ts, peer, resource, outgoing, payload)| BlockInput {
                owner_id: *owner_id,
                peer,
                row: RowView {
                    id,
                    ts: *ts,
                    resource,
                    outgoing: *outgoing,
                    payload,
                    own_resource: None,
                },
                encoded: None,
            },
        )
        .collect()
}

impl Store {
    /// Converts what `archive_legacy` holds, if the table is there; returns
    /// how many stanzas moved.
    pub(super) async fn convert_legacy_archive(&self) -> Result<u64, StorageError> {
        self.convert_legacy_archive_by(CHUNK).await
    }

    async fn convert_legacy_archive_by(&self, chunk: i64) -> Result<u64, StorageError> {
        let exists: Option<(i64,)> =
            match self {
                Store::Sqlite(p) => sqlx::query_as(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'archive_legacy'",
                )
                .fetch_optional(p)
                .await?,
                Store::Postgres(p) => {
                    sqlx::query_as("SELECT 1::int8 WHERE to_regclass('archive_legacy') IS NOT NULL")
                        .fetch_optional(p)
                        .await?
                }
            };
        if exists.is_none() {
            return Ok(0);
        }
        tracing::info!("converting the archive to blocks (once, after an upgrade)");
        let mut moved = 0u64;
        // The last (owner_id, id) converted.
        let mut after: (i64, String) = (-1, String::new());
        loop {
            macro_rules! chunk {
                ($pool:expr, $insert:ident) => {{
                    let mut conn = $pool.acquire().await?;
                    let mut tx = conn.begin().await?;
                    let rows: Vec<LegacyRow> = sqlx::query_as(READ)
                        .bind(after.0)
                        .bind(&after.1)
                        .bind(chunk)
                        .fetch_all(&mut *tx)
                        .await?;
                    if let Some((owner, id, ..)) = rows.last() {
                        let blocks = block::build(&inputs(&rows));
                        // A second process converting at once: its blocks win.
                        $insert(&mut tx, &blocks, true).await?;
                        sqlx::query(DONE)
                            .bind(after.0)
                            .bind(&after.1)
                            .bind(*owner)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    if let Some((owner, id, ..)) = rows.last() {
                        after = (*owner, id.clone());
                    }
                    rows.len()
                }};
            }
            let n = match self {
                Store::Sqlite(p) => chunk!(p, insert_blocks_sqlite),
                Store::Postgres(p) => chunk!(p, insert_blocks_postgres),
            };
            moved += n as u64;
            if (n as i64) < chunk {
                break;
            }
            if moved % 1_000_000 < chunk as u64 {
                tracing::info!(stanzas = moved, "archive conversion going on");
            }
        }
        on_pool!(self, pool => {
            sqlx::query("DROP TABLE IF EXISTS archive_legacy").execute(pool).await?;
        });
        if moved > 0 {
            tracing::info!(stanzas = moved, "archive converted to blocks");
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::{ArchiveFilter, ArchiveKind, ArchiveOwner, Store};

    /// Old rows in several chunks (7 rows each, 3 owners, 50 rows) all
    /// become blocks, and the table goes.
    #[tokio::test]
    async fn old_rows_are_converted_chunk_by_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/old.db", dir.path().display()), 2)
            .await
            .unwrap();
        let Store::Sqlite(pool) = &store else {
            unreachable!()
        };
        sqlx::query(
            "CREATE TABLE archive_legacy (owner_id INTEGER NOT NULL, id TEXT NOT NULL, \
             ts BIGINT NOT NULL, peer TEXT NOT NULL, resource TEXT NOT NULL DEFAULT '', \
             outgoing BOOLEAN NOT NULL, payload TEXT NOT NULL)",
        )
        .execute(pool)
        .await
        .unwrap();
        for o in 1..=3i64 {
            sqlx::query(
                "INSERT INTO archive_owners (owner_id, kind, domain, username, n) VALUES ($1, 0, 'd', $2, 0)",
            )
            .bind(o)
            .bind(format!("u{o}"))
            .execute(pool)
            .await
            .unwrap();
        }
        for i in 0..50i64 {
            let owner = 1 + i % 3;
            sqlx::query("INSERT INTO archive_legacy VALUES ($1, $2, $3, 'p@d', 'r', false, $4)")
                .bind(owner)
                .bind(format!(
                    "{}{i:02}xxxxxx",
                    crate::modules::mam::id::time_prefix(i * 1_000_000)
                ))
                .bind(i * 1_000_000)
                .bind(format!("<m n='{i}'/>"))
                .execute(pool)
                .await
                .unwrap();
            sqlx::query("UPDATE archive_owners SET n = n + 1 WHERE owner_id = $1")
                .bind(owner)
                .execute(pool)
                .await
                .unwrap();
        }
        assert_eq!(store.convert_legacy_archive_by(7).await.unwrap(), 50);
        let left: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'archive_legacy'",
        )
        .fetch_optional(pool)
        .await
        .unwrap();
        assert!(left.is_none(), "the old table is dropped");
        for o in 1..=3i64 {
            let owner = ArchiveOwner {
                kind: ArchiveKind::User,
                domain: "d".into(),
                username: format!("u{o}"),
            };
            let all = store
                .archive_page(&owner, &ArchiveFilter::default(), false, 100)
                .await
                .unwrap();
            let want: Vec<String> = (0..50)
                .filter(|i| 1 + i % 3 == o)
                .map(|i| format!("<m n='{i}'/>"))
                .collect();
            assert_eq!(
                all.iter().map(|i| i.payload.clone()).collect::<Vec<_>>(),
                want
            );
        }
    }
}
