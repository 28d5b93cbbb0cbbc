//! The archive: stanzas kept per owner in time order (XEP-0313 user and
//! room archives). Ids are time-ordered strings (`modules::mam::id`), so
//! every range (by time, after or before an id) is a range of ids.
//!
//! Owners are rows of `archive_owners`: an integer `owner_id` and the
//! owner's stanza count. Stanzas are stored in blocks (`archive_block`):
//! one row of `archive_blocks` per owner, peer and batch of the writer,
//! indexed by (owner, first id) and (owner, peer, first id) with each
//! block's last id and count beside. This file has the archive's types and
//! the writing side; `archive_query` reads, `archive_change` purges,
//! trims and rewrites. The archive writer commits its batches on a
//! connection of its own ([`ArchiveConn`]) whose page cache stays valid
//! from one commit to the next (a pooled SQLite connection drops its whole
//! cache whenever another connection wrote since its last use).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{
    ConnectOptions, Connection, PgConnection, Postgres, QueryBuilder, Sqlite, SqliteConnection,
};

use super::archive_batch::{ArchiveBatch, RowRef};
use super::archive_block::{self as block, BlockInput, NewBlock};
use super::archive_sqlite::SqliteArchiveConn;
use super::{StorageError, Store, SQLITE_BUSY_TIMEOUT};

/// Whose archive a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum ArchiveKind {
    /// A user's messages (XEP-0313).
    User = 0,
    /// A chat room's group chat (XEP-0313 on the room JID, XEP-0045):
    /// `domain` is the service, `username` the room's name.
    Room = 1,
}

/// The owner of an archive: a kind and an address split as accounts are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArchiveOwner {
    pub kind: ArchiveKind,
    pub domain: String,
    pub username: String,
}

/// One archived stanza.
#[derive(Debug, Clone)]
pub struct ArchiveRow {
    pub owner: ArchiveOwner,
    pub id: String,
    /// Microseconds since the Unix epoch.
    pub ts: i64,
    pub peer: String,
    pub resource: String,
    pub outgoing: bool,
    /// The stanza serialized; shared by the rows of one message (the
    /// sender's and the recipient's hold the same stanza).
    pub payload: Arc<str>,
}

/// An archived stanza as a query returns it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ArchivedItem {
    pub id: String,
    pub ts: i64,
    pub payload: String,
}

/// What selects the rows of a query (XEP-0313 form fields). Id bounds
/// are exclusive; the time bounds are already turned into id bounds by
/// the caller (`id_from` inclusive, `id_until` exclusive).
#[derive(Debug, Clone, Default)]
pub struct ArchiveFilter {
    pub peer: Option<String>,
    pub resource: Option<String>,
    pub id_from: Option<String>,
    pub id_until: Option<String>,
    pub after: Option<String>,
    pub before: Option<String>,
    pub ids: Vec<String>,
}

/// Blocks per multi-row statement on SQLite, largest first: a batch is cut
/// into statements of these sizes only, so each connection prepares at
/// most four shapes of each statement and reuses them (sqlx caches
/// prepared statements by their text). 256 × 6 values is far below
/// SQLite's parameter limit.
const CHUNKS: [usize; 4] = [256, 32, 4, 1];

/// Cuts `items` into slices of the `CHUNKS` sizes, largest first.
fn chunked<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = CHUNKS.iter().copied().find(|&c| c <= items.len())?;
        let (head, tail) = items.split_at(size);
        items = tail;
        Some(head)
    })
}

impl ArchiveFilter {
    /// Does it select the whole archive?
    pub(super) fn is_everything(&self) -> bool {
        self.peer.is_none()
            && self.resource.is_none()
            && self.id_from.is_none()
            && self.id_until.is_none()
            && self.after.is_none()
            && self.before.is_none()
            && self.ids.is_empty()
    }
}

/// An owner as a batch names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct OwnerKey<'a> {
    pub(super) kind: ArchiveKind,
    pub(super) domain: &'a str,
    pub(super) username: &'a str,
}

/// The owners of a batch, each once with how many rows it adds, and for
/// each row the index of its owner in that list.
pub(super) struct Owners<'a> {
    pub(super) list: Vec<(OwnerKey<'a>, i64)>,
    pub(super) of_row: Vec<usize>,
}

impl<'a> Owners<'a> {
    pub(super) fn of(rows: &[RowRef<'a>]) -> Owners<'a> {
        Owners::grouped(rows, &mut String::new()).0
    }

    /// The owners of `rows`, and each row's group (its owner and peer),
    /// numbered in order of first appearance, with one look-up per row. Why
    /// not a map keyed by the rows' own strings: those lie in the batch,
    /// megabytes long, and comparing a row with its group's first row read
    /// memory long out of the cache; here each key is copied once, into
    /// `key` and then the map, and a row's look-up compares it with that
    /// copy (the archive writer, issue #11).
    pub(super) fn grouped(rows: &[RowRef<'a>], key: &mut String) -> (Owners<'a>, Vec<u32>) {
        let mut groups: HashMap<String, u32, foldhash::fast::RandomState> =
            HashMap::with_hasher(Default::default());
        let mut owner_of_group: Vec<usize> = Vec::new();
        let mut owners: HashMap<OwnerKey<'a>, usize, foldhash::fast::RandomState> =
            HashMap::with_hasher(Default::default());
        let mut list: Vec<(OwnerKey<'a>, i64)> = Vec::new();
        let mut of_row = Vec::with_capacity(rows.len());
        let mut group_of_row = Vec::with_capacity(rows.len());
        for r in rows {
            // Kind, then three strings each ended by a NUL, which no JID
            // part holds: distinct rows give distinct keys.
            key.clear();
            key.push(char::from(b'0' + r.kind as u8));
            for part in [r.domain, r.username, r.peer] {
                key.push_str(part);
                key.push('\0');
            }
            let g = match groups.get(key.as_str()) {
                Some(&g) => g,
                None => {
                    let owner = OwnerKey {
                        kind: r.kind,
                        domain: r.domain,
                        username: r.username,
                    };
                    let i = *owners.entry(owner).or_insert_with(|| {
                        list.push((owner, 0));
                        list.len() - 1
                    });
                    let g = owner_of_group.len() as u32;
                    owner_of_group.push(i);
                    groups.insert(key.clone(), g);
                    g
                }
            };
            let i = owner_of_group[g as usize];
            list[i].1 += 1;
            of_row.push(i);
            group_of_row.push(g);
        }
        (Owners { list, of_row }, group_of_row)
    }

    /// Where each owner stands in `list`, by the key the database returns.
    fn positions(&self) -> HashMap<(i16, &str, &str), usize> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, (o, _))| ((o.kind as i16, o.domain, o.username), i))
            .collect()
    }
}

/// The blocks of a batch, once its owners have ids (`ids[i]` for the
/// owner at `owners.list[i]`).
pub(super) fn blocks_of<'a>(
    rows: &[RowRef<'a>],
    encoded: Option<&[&'a [u8]]>,
    owners: &Owners<'_>,
    ids: &[i64],
) -> Vec<NewBlock<'a>> {
    let mut inputs = Vec::new();
    block_inputs(rows, encoded, owners, ids, &mut inputs);
    block::build(&inputs)
}

/// What [`block::build`] takes for each row of a batch, into `inputs`
/// (emptied first).
pub(super) fn block_inputs<'a>(
    rows: &[RowRef<'a>],
    encoded: Option<&[&'a [u8]]>,
    owners: &Owners<'_>,
    ids: &[i64],
    inputs: &mut Vec<BlockInput<'a>>,
) {
    inputs.clear();
    inputs.extend(
        rows.iter()
            .zip(&owners.of_row)
            .enumerate()
            .map(|(k, (r, &i))| BlockInput {
                owner_id: ids[i],
                peer: r.peer,
                row: r.view(),
                encoded: encoded.and_then(|e| e.get(k).copied()),
            }),
    );
}

/// Adds each owner's rows to its count (creating the owner), returning
/// (owner_id, kind, domain, username) per owner.
const OWNERS_UPSERT_TAIL: &str = " ON CONFLICT (kind, domain, username) \
     DO UPDATE SET n = archive_owners.n + excluded.n \
     RETURNING owner_id, kind, domain, username";

/// Fills `ids` (one per owner of `owners.list`) from the upsert's rows.
fn take_ids(
    owners: &Owners<'_>,
    returned: Vec<(i64, i16, String, String)>,
) -> Result<Vec<i64>, StorageError> {
    let positions = owners.positions();
    let mut ids = vec![-1; owners.list.len()];
    for (id, kind, domain, username) in &returned {
        if let Some(&i) = positions.get(&(*kind, domain.as_str(), username.as_str())) {
            ids[i] = *id;
        }
    }
    if ids.contains(&-1) {
        return Err(StorageError::Invalid("archive owner without an id".into()));
    }
    Ok(ids)
}

/// Inserts blocks on SQLite through sqlx (multi-row statements). With
/// `if_new`, a block whose owner already has one with its first id is
/// left out: SQLite has no unique index on (owner_id, first_id) to
/// conflict on (its migration 20261206100009 says why), and its single
/// writer makes the check and the insert one step.
pub(super) async fn insert_blocks_sqlite(
    conn: &mut SqliteConnection,
    blocks: &[NewBlock<'_>],
    if_new: bool,
) -> Result<(), StorageError> {
    for chunk in chunked(blocks) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO archive_blocks (owner_id, peer, first_id, last_id, n, rows) ",
        );
        if if_new {
            qb.push("SELECT * FROM (");
        }
        qb.push_values(chunk, |mut b, blk| {
            b.push_bind(blk.owner_id)
                .push_bind(blk.peer)
                .push_bind(blk.first_id)
                .push_bind(blk.last_id)
                .push_bind(blk.n)
                .push_bind(&blk.rows[..]);
        });
        if if_new {
            qb.push(
                ") AS v WHERE NOT EXISTS (SELECT 1 FROM archive_blocks b \
                 WHERE b.owner_id = v.column1 AND b.first_id = v.column3)",
            );
        }
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Inserts blocks on PostgreSQL: one statement, arrays unnested.
pub(super) async fn insert_blocks_postgres(
    conn: &mut PgConnection,
    blocks: &[NewBlock<'_>],
    if_new: bool,
) -> Result<(), StorageError> {
    const BLOCKS: &str = "INSERT INTO archive_blocks (owner_id, peer, first_id, last_id, n, rows) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::bytea[])";
    let sql = if if_new {
        format!("{BLOCKS} ON CONFLICT (owner_id, first_id) DO NOTHING")
    } else {
        BLOCKS.to_string()
    };
    sqlx::query(&sql)
        .bind(blocks.iter().map(|b| b.owner_id).collect::<Vec<_>>())
        .bind(blocks.iter().map(|b| b.peer).collect::<Vec<_>>())
        .bind(blocks.iter().map(|b| b.first_id).collect::<Vec<_>>())
        .bind(blocks.iter().map(|b| b.last_id).collect::<Vec<_>>())
        .bind(blocks.iter().map(|b| b.n).collect::<Vec<_>>())
        .bind(blocks.iter().map(|b| &b.rows[..]).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Inserts `rows` and counts them, in one transaction, on SQLite.
async fn insert_sqlite(
    conn: &mut SqliteConnection,
    rows: &[RowRef<'_>],
) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let owners = Owners::of(rows);
    let mut tx = conn.begin().await?;
    let mut returned = Vec::with_capacity(owners.list.len());
    for chunk in chunked(&owners.list) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO archive_owners (kind, domain, username, n) ");
        qb.push_values(chunk, |mut b, (owner, added)| {
            b.push_bind(owner.kind as i16)
                .push_bind(owner.domain)
                .push_bind(owner.username)
                .push_bind(*added);
        });
        qb.push(OWNERS_UPSERT_TAIL);
        returned.extend(
            qb.build_query_as::<(i64, i16, String, String)>()
                .fetch_all(&mut *tx)
                .await?,
        );
    }
    let ids = take_ids(&owners, returned)?;
    let blocks = blocks_of(rows, None, &owners, &ids);
    insert_blocks_sqlite(&mut tx, &blocks, false).await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts `rows` and counts them, in one transaction, on PostgreSQL:
/// two statements whatever the batch (arrays unnested), each prepared once
/// per connection.
async fn insert_postgres(conn: &mut PgConnection, rows: &[RowRef<'_>]) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    const OWNERS: &str = "INSERT INTO archive_owners (kind, domain, username, n) \
         SELECT * FROM UNNEST($1::int2[], $2::text[], $3::text[], $4::int8[])";
    let owners = Owners::of(rows);
    let mut tx = conn.begin().await?;
    let sql = format!("{OWNERS}{OWNERS_UPSERT_TAIL}");
    let returned: Vec<(i64, i16, String, String)> = sqlx::query_as(&sql)
        .bind(
            owners
                .list
                .iter()
                .map(|(o, _)| o.kind as i16)
                .collect::<Vec<_>>(),
        )
        .bind(
            owners
                .list
                .iter()
                .map(|(o, _)| o.domain)
                .collect::<Vec<_>>(),
        )
        .bind(
            owners
                .list
                .iter()
                .map(|(o, _)| o.username)
                .collect::<Vec<_>>(),
        )
        .bind(owners.list.iter().map(|(_, n)| *n).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
    let ids = take_ids(&owners, returned)?;
    let blocks = blocks_of(rows, None, &owners, &ids);
    insert_blocks_postgres(&mut tx, &blocks, false).await?;
    tx.commit().await?;
    Ok(())
}

/// A connection of the archive writer's own (see the module's comment).
#[derive(Debug)]
pub enum ArchiveConn {
    /// On SQLite, driven through the C API (`archive_sqlite`); None while
    /// a batch runs on a blocking thread, or after that thread panicked.
    Sqlite(Option<Box<SqliteArchiveConn>>),
    /// A pooled store opened in memory: the writer's own file cannot be
    /// opened beside it, so sqlx's own connection.
    SqliteSqlx(SqliteConnection),
    Postgres(PgConnection),
}

impl ArchiveConn {
    /// Inserts the rows `range` of `batch` in one transaction (the
    /// archive writer's batch, shared so that it can move to a blocking
    /// thread and back).
    pub async fn insert(
        &mut self,
        batch: &Arc<ArchiveBatch>,
        range: Range<usize>,
    ) -> Result<(), StorageError> {
        match self {
            ArchiveConn::Sqlite(slot) => {
                let mut conn = slot
                    .take()
                    .ok_or_else(|| StorageError::Invalid("archive connection lost".into()))?;
                let batch = Arc::clone(batch);
                // SQLite blocks: off the async workers, one hand-over a batch.
                let (conn, r) = tokio::task::spawn_blocking(move || {
                    let r = conn.insert_batch(&batch, range);
                    (conn, r)
                })
                .await
                .map_err(|e| StorageError::Invalid(format!("archive writer thread: {e}")))?;
                *slot = Some(conn);
                r
            }
            ArchiveConn::SqliteSqlx(c) => {
                let rows = batch.decode()?;
                insert_sqlite(c, rows.get(range).unwrap_or_default()).await
            }
            ArchiveConn::Postgres(c) => {
                let rows = batch.decode()?;
                insert_postgres(c, rows.get(range).unwrap_or_default()).await
            }
        }
    }

    /// Closes the connection (errors are of no use at this point).
    pub async fn close(self) {
        let _ = match self {
            // Dropping it finalizes the statements and closes the handle.
            ArchiveConn::Sqlite(_) => Ok(()),
            ArchiveConn::SqliteSqlx(c) => c.close().await,
            ArchiveConn::Postgres(c) => c.close().await,
        };
    }
}

/// Which pooled connection an insert without a writer runs on.
enum Pooled {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Store {
    /// Opens a connection for the archive writer, outside the pool, with
    /// the pool's options; on SQLite with a page cache of `cache_kib` and
    /// `synchronous` FULL or NORMAL as the pool's.
    pub async fn archive_conn(
        &self,
        cache_kib: u64,
        synchronous_full: bool,
        checkpoint_pages: u32,
    ) -> Result<ArchiveConn, StorageError> {
        Ok(match self {
            Store::Sqlite(pool) => {
                let opts = pool.connect_options();
                let path = opts.get_filename().to_path_buf();
                // An in-memory database (`sqlite::memory:`, tests) exists in
                // this process's pool only: no file to open beside it.
                let in_memory =
                    path.as_os_str() == ":memory:" || path.to_string_lossy().starts_with("file:");
                if in_memory {
                    let opts = (*opts)
                        .clone()
                        .pragma("cache_size", format!("-{}", cache_kib.max(1)));
                    ArchiveConn::SqliteSqlx(opts.connect().await?)
                } else {
                    let conn = tokio::task::spawn_blocking(move || {
                        let busy_ms = SQLITE_BUSY_TIMEOUT
                            .as_millis()
                            .try_into()
                            .unwrap_or(u32::MAX);
                        SqliteArchiveConn::open(
                            &path,
                            synchronous_full,
                            cache_kib,
                            busy_ms,
                            checkpoint_pages,
                        )
                    })
                    .await
                    .map_err(|e| StorageError::Invalid(format!("archive writer thread: {e}")))??;
                    ArchiveConn::Sqlite(Some(Box::new(conn)))
                }
            }
            Store::Postgres(pool) => ArchiveConn::Postgres(pool.connect_options().connect().await?),
        })
    }

    /// Inserts rows in one transaction, on a pooled connection.
    pub async fn archive_insert(&self, rows: &[ArchiveRow]) -> Result<(), StorageError> {
        let refs: Vec<RowRef<'_>> = rows.iter().map(RowRef::from).collect();
        self.archive_insert_refs(&refs).await
    }

    /// Inserts a batch's rows in one transaction, on a pooled connection.
    pub async fn archive_insert_batch(&self, batch: &ArchiveBatch) -> Result<(), StorageError> {
        self.archive_insert_refs(&batch.decode()?).await
    }

    /// Inserts rows in one transaction, on a pooled connection.
    pub async fn archive_insert_refs(&self, rows: &[RowRef<'_>]) -> Result<(), StorageError> {
        if rows.is_empty() {
            return Ok(());
        }
        let conn = match self {
            Store::Sqlite(p) => Pooled::Sqlite(p.acquire().await?),
            Store::Postgres(p) => Pooled::Postgres(p.acquire().await?),
        };
        match conn {
            Pooled::Sqlite(mut c) => insert_sqlite(&mut c, rows).await,
            Pooled::Postgres(mut c) => insert_postgres(&mut c, rows).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{chunked, insert_blocks_sqlite, NewBlock, OwnerKey, Owners, RowRef};
    use crate::storage::ArchiveKind;
    use crate::storage::Store;

    #[test]
    fn batches_are_cut_into_few_statement_shapes() {
        for n in [0usize, 1, 3, 4, 5, 31, 32, 33, 255, 256, 257, 1000, 4096] {
            let items: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = chunked(&items).collect();
            assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), n);
            assert!(chunks.iter().all(|c| [256, 32, 4, 1].contains(&c.len())));
            assert_eq!(chunks.concat(), items);
        }
    }

    /// One look-up per row gives each owner once with its rows, and one
    /// group per (owner, peer), numbered in order of first appearance.
    #[test]
    fn rows_are_grouped_by_owner_and_peer() {
        let row = |username, peer| RowRef {
            kind: ArchiveKind::User,
            domain: "d",
            username,
            peer,
            id: "i",
            ts: 0,
            resource: "",
            outgoing: false,
            payload: "",
            own_resource: None,
        };
        let rows = [
            row("ann", "bob@d"),
            row("bob", "ann@d"),
            row("ann", "bob@d"),
            row("ann", "cy@d"),
            RowRef {
                kind: ArchiveKind::Room,
                ..row("ann", "bob@d")
            },
            // Parts that run together differently are other keys.
            row("an", "nbob@d"),
        ];
        let (owners, groups) = Owners::grouped(&rows, &mut String::new());
        let owner = |kind, username| OwnerKey {
            kind,
            domain: "d",
            username,
        };
        assert_eq!(
            owners.list,
            [
                (owner(ArchiveKind::User, "ann"), 3),
                (owner(ArchiveKind::User, "bob"), 1),
                (owner(ArchiveKind::Room, "ann"), 1),
                (owner(ArchiveKind::User, "an"), 1),
            ]
        );
        assert_eq!(owners.of_row, [0, 1, 0, 0, 2, 3]);
        assert_eq!(groups, [0, 1, 0, 2, 3, 4]);
    }

    /// What the conversion of an old archive relies on: with `if_new`, a
    /// block whose owner has one with that first id already is left out
    /// (SQLite has no unique index to conflict on), the others go in.
    #[tokio::test]
    async fn an_insert_if_new_leaves_out_blocks_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/a.db", dir.path().display()), 1)
            .await
            .unwrap();
        let Store::Sqlite(pool) = &store else {
            unreachable!()
        };
        let block = |owner_id, first_id| NewBlock {
            owner_id,
            peer: "p@d",
            first_id,
            last_id: first_id,
            n: 1,
            rows: vec![1],
        };
        let mut conn = pool.acquire().await.unwrap();
        insert_blocks_sqlite(&mut conn, &[block(1, "a"), block(2, "a")], false)
            .await
            .unwrap();
        insert_blocks_sqlite(
            &mut conn,
            &[block(1, "a"), block(2, "b"), block(3, "a"), block(2, "a")],
            true,
        )
        .await
        .unwrap();
        let mut have: Vec<(i64, String)> =
            sqlx::query_as("SELECT owner_id, first_id FROM archive_blocks")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        have.sort();
        let want = [(1, "a"), (2, "a"), (2, "b"), (3, "a")];
        assert_eq!(
            have,
            want.map(|(o, f)| (o, f.to_string())).to_vec(),
            "each (owner, first id) once"
        );
    }
}
