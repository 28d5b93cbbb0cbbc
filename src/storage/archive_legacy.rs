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

const READ: &str = "SELECT owner_id, id, ts, peer, resource, outgoing, payload \
     FROM archive_legacy ORDER BY owner_id, id LIMIT $1";
const DONE: &str = "DELETE FROM archive_legacy WHERE owner_id < $1 OR (owner_id = $1 AND id <= $2)";

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
        let mut moved = 0u64;
        loop {
            macro_rules! chunk {
                ($pool:expr, $insert:ident) => {{
                    let mut conn = $pool.acquire().await?;
                    let mut tx = conn.begin().await?;
                    let rows: Vec<LegacyRow> =
                        sqlx::query_as(READ).bind(CHUNK).fetch_all(&mut *tx).await?;
                    if let Some((owner, id, ..)) = rows.last() {
                        let blocks = block::build(&inputs(&rows));
                        // A second process converting at once: its blocks win.
                        $insert(&mut tx, &blocks, true).await?;
                        sqlx::query(DONE)
                            .bind(*owner)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    rows.len()
                }};
            }
            let n = match self {
                Store::Sqlite(p) => chunk!(p, insert_blocks_sqlite),
                Store::Postgres(p) => chunk!(p, insert_blocks_postgres),
            };
            moved += n as u64;
            if (n as i64) < CHUNK {
                break;
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
