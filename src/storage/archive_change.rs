//! Changing what the archive holds: a retraction's tombstone, purges,
//! trims to a quota, retention, and reading a whole archive out for an
//! export. A change to existing blocks takes the owner's row first
//! (`LOCK_OWNER`), so two changes of one block cannot interleave.

use super::archive::{ArchiveFilter, ArchiveKind, ArchiveOwner};
use super::archive_block::{self as block, RowView};
use super::archive_query::{bind_vals, Sql, StoredBlock, Val, Want, BLOCK_COLUMNS};
use super::{StorageError, Store};

impl Store {
    /// Replaces the payload of `owner`'s row `id` (a retracted message
    /// becomes its tombstone, XEP-0425 §4), keeping its place, time and
    /// peer; returns whether there was such a row. The owner's row is
    /// locked first, so two changes to one block cannot interleave.
    pub async fn archive_replace(
        &self,
        owner: &ArchiveOwner,
        id: &str,
        payload: &str,
    ) -> Result<bool, StorageError> {
        let Some(owner_id) = self.archive_owner_id(owner).await? else {
            return Ok(false);
        };
        let mut sql = Sql::of_owner(BLOCK_COLUMNS, owner_id);
        sql.and_text("first_id", ">=", &block::floor_for(id))
            .and_text("first_id", "<=", id)
            .and_text("last_id", ">=", id);
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                sqlx::query(LOCK_OWNER)
                    .bind(owner_id)
                    .execute(&mut *tx)
                    .await?;
                let blocks: Vec<StoredBlock> = bind_vals!(sqlx::query_as(&sql.text), &sql.vals)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut replaced = false;
                for b in blocks {
                    let mut rows = block::decode(&b.rows)?;
                    let Some(r) = rows.iter_mut().find(|r| r.id == id) else {
                        continue;
                    };
                    r.payload = payload;
                    r.own_resource = None;
                    sqlx::query(
                        "UPDATE archive_blocks SET rows = $3 WHERE owner_id = $1 AND first_id = $2",
                    )
                    .bind(owner_id)
                    .bind(&b.first_id)
                    .bind(block::encode(&rows))
                    .execute(&mut *tx)
                    .await?;
                    replaced = true;
                    break;
                }
                tx.commit().await?;
                replaced
            }};
        }
        Ok(on_pool!(self, pool => run!(pool)))
    }

    /// Deletes every row stored before `ts` (microseconds), whoever owns
    /// it; returns how many. Ids are time-ordered, so each owner's old
    /// rows are the start of its range: owners are found by their oldest
    /// block, then emptied one at a time, each in a transaction with its
    /// count.
    pub async fn archive_expire(&self, ts: i64) -> Result<u64, StorageError> {
        let bound = crate::modules::mam::id::time_prefix(ts);
        const OWNERS: &str = "SELECT o.kind, o.domain, o.username FROM archive_owners o \
             WHERE o.n > 0 AND (SELECT MIN(b.first_id) FROM archive_blocks b WHERE b.owner_id = o.owner_id) < $1";
        let owners: Vec<(i16, String, String)> = on_pool!(self, pool => {
            sqlx::query_as(OWNERS).bind(&bound).fetch_all(pool).await?
        });
        let mut removed = 0;
        for (kind, domain, username) in owners {
            let owner = ArchiveOwner {
                kind: match kind {
                    0 => ArchiveKind::User,
                    1 => ArchiveKind::Room,
                    // A kind this version does not know: not its to expire.
                    _ => continue,
                },
                domain,
                username,
            };
            removed += self.archive_delete(&owner, Some(&bound)).await?;
        }
        Ok(removed)
    }

    /// Deletes `owner`'s rows with ids below `before` (all of them when
    /// None); returns how many.
    pub async fn archive_purge(
        &self,
        owner: &ArchiveOwner,
        before: Option<&str>,
    ) -> Result<u64, StorageError> {
        self.archive_delete(owner, before).await
    }

    /// Deletes `owner`'s rows below an id (all when None) and takes them off
    /// its count, in one transaction: the blocks wholly below go, a block
    /// across the bound is written again with what it keeps.
    async fn archive_delete(
        &self,
        owner: &ArchiveOwner,
        before: Option<&str>,
    ) -> Result<u64, StorageError> {
        let Some(owner_id) = self.archive_owner_id(owner).await? else {
            return Ok(0);
        };
        let mut below = Sql::of_owner(
            "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM archive_blocks WHERE owner_id = $1",
            owner_id,
        );
        let mut gone = Sql::of_owner("DELETE FROM archive_blocks WHERE owner_id = $1", owner_id);
        let mut across = Sql::of_owner(BLOCK_COLUMNS, owner_id);
        if let Some(b) = before {
            for sql in [&mut below, &mut gone] {
                sql.and_text("first_id", "<", b).and_text("last_id", "<", b);
            }
            across
                .and_text("first_id", ">=", &block::floor_for(b))
                .and_text("first_id", "<", b)
                .and_text("last_id", ">=", b);
        }
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                sqlx::query(LOCK_OWNER).bind(owner_id).execute(&mut *tx).await?;
                let (mut removed,): (i64,) = bind_vals!(sqlx::query_as(&below.text), &below.vals)
                    .fetch_one(&mut *tx)
                    .await?;
                bind_vals!(sqlx::query(&gone.text), &gone.vals)
                    .execute(&mut *tx)
                    .await?;
                if let Some(bound) = before {
                    let blocks: Vec<StoredBlock> =
                        bind_vals!(sqlx::query_as(&across.text), &across.vals)
                            .fetch_all(&mut *tx)
                            .await?;
                    for b in blocks {
                        let rows = block::decode(&b.rows)?;
                        let kept: Vec<RowView<'_>> =
                            rows.iter().copied().filter(|r| r.id >= bound).collect();
                        removed += (rows.len() - kept.len()) as i64;
                        match kept.first() {
                            Some(first) => {
                                sqlx::query(
                                    "UPDATE archive_blocks SET first_id = $3, n = $4, rows = $5 \
                                     WHERE owner_id = $1 AND first_id = $2",
                                )
                                .bind(owner_id)
                                .bind(&b.first_id)
                                .bind(first.id)
                                .bind(kept.len() as i64)
                                .bind(block::encode(&kept))
                                .execute(&mut *tx)
                                .await?;
                            }
                            None => {
                                sqlx::query(
                                    "DELETE FROM archive_blocks WHERE owner_id = $1 AND first_id = $2",
                                )
                                .bind(owner_id)
                                .bind(&b.first_id)
                                .execute(&mut *tx)
                                .await?;
                            }
                        }
                    }
                }
                sqlx::query("UPDATE archive_owners SET n = n - $2 WHERE owner_id = $1")
                    .bind(owner_id)
                    .bind(removed)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                removed as u64
            }};
        }
        Ok(on_pool!(self, pool => run!(pool)))
    }

    /// Owners of `kind` with more than `max` rows, and their counts.
    pub async fn archive_over_quota(
        &self,
        kind: ArchiveKind,
        max: u64,
    ) -> Result<Vec<(String, String, i64)>, StorageError> {
        const Q: &str = "SELECT domain, username, n FROM archive_owners WHERE kind = $1 AND n > $2";
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        Ok(on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(kind as i16)
                .bind(max)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Keeps only `owner`'s newest `keep` rows; returns how many went.
    pub async fn archive_trim(&self, owner: &ArchiveOwner, keep: u64) -> Result<u64, StorageError> {
        let Some(owner_id) = self.archive_owner_id(owner).await? else {
            return Ok(0);
        };
        let keep = usize::try_from(keep).unwrap_or(usize::MAX).max(1);
        // The oldest row kept; everything before it goes.
        let newest = self
            .archive_collect(owner_id, &ArchiveFilter::default(), true, keep, Want::Ids)
            .await?;
        match newest.get(keep - 1) {
            Some(oldest_kept) => self.archive_purge(owner, Some(&oldest_kept.id)).await,
            None => Ok(0),
        }
    }

    /// Every stanza of `owner`'s archive with its peer, oldest first (the
    /// account export).
    pub(super) async fn archive_all(
        &self,
        owner: &ArchiveOwner,
    ) -> Result<Vec<(String, ArchivedStanza)>, StorageError> {
        let Some(owner_id) = self.archive_owner_id(owner).await? else {
            return Ok(Vec::new());
        };
        const Q: &str =
            "SELECT peer, rows FROM archive_blocks WHERE owner_id = $1 ORDER BY first_id";
        let blocks: Vec<(String, Vec<u8>)> = on_pool!(self, pool => {
            sqlx::query_as(Q).bind(owner_id).fetch_all(pool).await?
        });
        let mut all = Vec::new();
        for (peer, bytes) in &blocks {
            for r in block::decode(bytes)? {
                all.push((
                    peer.clone(),
                    ArchivedStanza {
                        id: r.id.to_string(),
                        ts: r.ts,
                        resource: r.resource.to_string(),
                        outgoing: r.outgoing,
                        payload: r.stanza(&owner.username, &owner.domain, peer).into_owned(),
                    },
                ));
            }
        }
        all.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        Ok(all)
    }
}

/// Takes the owner's row lock (PostgreSQL) or the write lock (SQLite)
/// before a change to existing blocks.
const LOCK_OWNER: &str = "UPDATE archive_owners SET n = n WHERE owner_id = $1";

/// A stanza of an archive, whole (export).
#[derive(Debug, Clone)]
pub(super) struct ArchivedStanza {
    pub id: String,
    pub ts: i64,
    pub resource: String,
    pub outgoing: bool,
    pub payload: String,
}
