//! The archive: stanzas kept per owner in time order (XEP-0313 user and
//! room archives). Ids are time-ordered strings (`modules::mam::id`), so
//! every range (by time, after or before an id) is a range of ids.
//!
//! Owners are rows of `archive_owners`: an integer `owner_id` and the
//! owner's stanza count. Stanzas are stored in blocks (`archive_block`):
//! one row of `archive_blocks` per owner, peer and batch of the writer,
//! indexed by (owner, first id) and (owner, peer, first id) with each
//! block's last id and count beside, so a count over a range reads the
//! indexes and decodes only the blocks across its ends, and a page reads
//! the few blocks at its end of the range. The archive writer commits its
//! batches on a connection of its own ([`ArchiveConn`]) whose page cache
//! stays valid from one commit to the next (a pooled SQLite connection
//! drops its whole cache whenever another connection wrote since its last
//! use).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{
    ConnectOptions, Connection, PgConnection, Postgres, QueryBuilder, Sqlite, SqliteConnection,
};

use super::archive_batch::{ArchiveBatch, RowRef};
use super::archive_block::{self as block, BlockInput, NewBlock, RowView};
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
    fn is_everything(&self) -> bool {
        self.peer.is_none()
            && self.resource.is_none()
            && self.id_from.is_none()
            && self.id_until.is_none()
            && self.after.is_none()
            && self.before.is_none()
            && self.ids.is_empty()
    }
}

/// The id range a filter selects: a lower bound (inclusive or not) and an
/// exclusive upper bound.
#[derive(Debug, Clone, Default)]
struct Bounds {
    lo: Option<(String, bool)>,
    hi: Option<String>,
}

impl Bounds {
    fn of(f: &ArchiveFilter) -> Bounds {
        // The tighter of `id_from` (inclusive) and `after` (exclusive).
        let lo = match (&f.id_from, &f.after) {
            (Some(from), Some(after)) if from > after => Some((from.clone(), true)),
            (_, Some(after)) => Some((after.clone(), false)),
            (Some(from), None) => Some((from.clone(), true)),
            (None, None) => None,
        };
        let hi = match (&f.id_until, &f.before) {
            (Some(a), Some(b)) => Some(a.min(b).clone()),
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        Bounds { lo, hi }
    }

    fn above_lo(&self, id: &str) -> bool {
        match &self.lo {
            Some((lo, true)) => id >= lo.as_str(),
            Some((lo, false)) => id > lo.as_str(),
            None => true,
        }
    }

    fn below_hi(&self, id: &str) -> bool {
        self.hi.as_deref().is_none_or(|hi| id < hi)
    }

    fn contains(&self, id: &str) -> bool {
        self.above_lo(id) && self.below_hi(id)
    }

    /// The lowest first id of a block that may hold an id in range.
    fn floor(&self) -> Option<String> {
        self.lo.as_ref().map(|(lo, _)| block::floor_for(lo))
    }

    /// The SQL condition "`col` satisfies the lower bound".
    fn lo_op(&self) -> &'static str {
        match &self.lo {
            Some((_, true)) => ">=",
            _ => ">",
        }
    }
}

/// What a stanza of a selected block must also match: the id range, the
/// resource, the listed ids.
struct Matcher<'f> {
    bounds: Bounds,
    resource: Option<&'f str>,
    ids: Option<HashSet<&'f str>>,
}

impl<'f> Matcher<'f> {
    fn of(f: &'f ArchiveFilter) -> Matcher<'f> {
        Matcher {
            bounds: Bounds::of(f),
            resource: f.resource.as_deref(),
            ids: (!f.ids.is_empty()).then(|| f.ids.iter().map(String::as_str).collect()),
        }
    }

    fn matches(&self, r: &RowView<'_>) -> bool {
        self.bounds.contains(r.id)
            && self.resource.is_none_or(|res| r.resource == res)
            && self.ids.as_ref().is_none_or(|ids| ids.contains(r.id))
    }
}

/// A value bound to a query built at run time.
enum Val {
    Text(String),
    Int(i64),
}

/// A query built at run time, with `$n` placeholders from 1.
struct Sql {
    text: String,
    vals: Vec<Val>,
}

impl Sql {
    /// `head` ends in a condition on `owner_id = $1`.
    fn of_owner(head: &str, owner_id: i64) -> Sql {
        Sql {
            text: head.to_string(),
            vals: vec![Val::Int(owner_id)],
        }
    }

    /// Appends ` AND {col} {op} $n` binding `v`.
    fn and(&mut self, col: &str, op: &str, v: Val) -> &mut Sql {
        self.vals.push(v);
        self.text
            .push_str(&format!(" AND {col} {op} ${}", self.vals.len()));
        self
    }

    fn and_text(&mut self, col: &str, op: &str, v: &str) -> &mut Sql {
        self.and(col, op, Val::Text(v.to_string()))
    }

    fn tail(&mut self, s: &str) -> &mut Sql {
        self.text.push_str(s);
        self
    }
}

/// Binds `vals` in order on a query of either dialect.
macro_rules! bind_vals {
    ($q:expr, $vals:expr) => {{
        let mut q = $q;
        for v in $vals {
            q = match v {
                Val::Text(s) => q.bind(s.as_str()),
                Val::Int(i) => q.bind(*i),
            };
        }
        q
    }};
}

/// A block as queries read it.
#[derive(Debug, sqlx::FromRow)]
struct StoredBlock {
    first_id: String,
    rows: Vec<u8>,
}

const BLOCK_COLUMNS: &str = "SELECT first_id, rows FROM archive_blocks WHERE owner_id = $1";

/// The blocks of one owner (and peer) whose first ids lie in
/// `[from, below)`, read in first-id order a few at a time, so a query that
/// needs the newest page of a large archive reads only its end.
struct Scan<'s> {
    store: &'s Store,
    owner_id: i64,
    peer: Option<String>,
    from: Option<String>,
    below: Option<String>,
    newest_first: bool,
    /// The first id of the last block read.
    cursor: Option<String>,
    chunk: i64,
    ready: std::vec::IntoIter<StoredBlock>,
    exhausted: bool,
}

/// Blocks per read of a scan, first and at most (doubling between).
const SCAN_FIRST: i64 = 4;
const SCAN_MOST: i64 = 32;

impl<'s> Scan<'s> {
    fn new(
        store: &'s Store,
        owner_id: i64,
        peer: Option<&str>,
        bounds: &Bounds,
        newest_first: bool,
    ) -> Scan<'s> {
        Scan {
            store,
            owner_id,
            peer: peer.map(str::to_string),
            from: bounds.floor(),
            below: bounds.hi.clone(),
            newest_first,
            cursor: None,
            chunk: SCAN_FIRST,
            ready: Vec::new().into_iter(),
            exhausted: false,
        }
    }

    async fn next(&mut self) -> Result<Option<StoredBlock>, StorageError> {
        loop {
            if let Some(b) = self.ready.next() {
                return Ok(Some(b));
            }
            if self.exhausted {
                return Ok(None);
            }
            let mut sql = Sql::of_owner(BLOCK_COLUMNS, self.owner_id);
            if let Some(p) = &self.peer {
                sql.and_text("peer", "=", p);
            }
            if let Some(f) = &self.from {
                sql.and_text("first_id", ">=", f);
            }
            if let Some(b) = &self.below {
                sql.and_text("first_id", "<", b);
            }
            if let Some(c) = &self.cursor {
                sql.and_text("first_id", if self.newest_first { "<" } else { ">" }, c);
            }
            let order = if self.newest_first { "DESC" } else { "ASC" };
            sql.tail(&format!(" ORDER BY first_id {order} LIMIT {}", self.chunk));
            let got = self.store.fetch_blocks(&sql).await?;
            self.exhausted = (got.len() as i64) < self.chunk;
            self.chunk = (self.chunk * 2).min(SCAN_MOST);
            if let Some(last) = got.last() {
                self.cursor = Some(last.first_id.clone());
            }
            self.ready = got.into_iter();
        }
    }
}

/// Orders items oldest first, or newest first.
fn sort_items(items: &mut [ArchivedItem], newest_first: bool) {
    if newest_first {
        items.sort_unstable_by(|a, b| b.id.cmp(&a.id));
    } else {
        items.sort_unstable_by(|a, b| a.id.cmp(&b.id));
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
        let mut index: HashMap<OwnerKey<'a>, usize, foldhash::fast::RandomState> =
            HashMap::with_hasher(Default::default());
        let mut list: Vec<(OwnerKey<'a>, i64)> = Vec::new();
        let mut of_row = Vec::with_capacity(rows.len());
        for r in rows {
            let key = OwnerKey {
                kind: r.kind,
                domain: r.domain,
                username: r.username,
            };
            let i = *index.entry(key).or_insert_with(|| {
                list.push((key, 0));
                list.len() - 1
            });
            list[i].1 += 1;
            of_row.push(i);
        }
        Owners { list, of_row }
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
    let inputs: Vec<BlockInput<'a>> = rows
        .iter()
        .zip(&owners.of_row)
        .enumerate()
        .map(|(k, (r, &i))| BlockInput {
            owner_id: ids[i],
            peer: r.peer,
            row: r.view(),
            encoded: encoded.and_then(|e| e.get(k).copied()),
        })
        .collect();
    block::build(&inputs)
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

/// Inserts blocks on SQLite through sqlx (multi-row statements).
pub(super) async fn insert_blocks_sqlite(
    conn: &mut SqliteConnection,
    blocks: &[NewBlock<'_>],
    if_new: bool,
) -> Result<(), StorageError> {
    for chunk in chunked(blocks) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO archive_blocks (owner_id, peer, first_id, last_id, n, rows) ",
        );
        qb.push_values(chunk, |mut b, blk| {
            b.push_bind(blk.owner_id)
                .push_bind(blk.peer)
                .push_bind(blk.first_id)
                .push_bind(blk.last_id)
                .push_bind(blk.n)
                .push_bind(&blk.rows[..]);
        });
        if if_new {
            qb.push(" ON CONFLICT (owner_id, first_id) DO NOTHING");
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
                    let r = batch.decode_encoded().and_then(|(rows, encoded)| {
                        conn.insert(
                            rows.get(range.clone()).unwrap_or_default(),
                            encoded.get(range).unwrap_or_default(),
                        )
                    });
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

    /// The integer id of `owner`, None while it has never archived.
    async fn archive_owner_id(&self, owner: &ArchiveOwner) -> Result<Option<i64>, StorageError> {
        const Q: &str =
            "SELECT owner_id FROM archive_owners WHERE kind = $1 AND domain = $2 AND username = $3";
        let id: Option<(i64,)> = on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(owner.kind as i16)
                .bind(&owner.domain)
                .bind(&owner.username)
                .fetch_optional(pool)
                .await?
        });
        Ok(id.map(|(id,)| id))
    }

    async fn fetch_blocks(&self, sql: &Sql) -> Result<Vec<StoredBlock>, StorageError> {
        Ok(on_pool!(self, pool => {
            bind_vals!(sqlx::query_as::<_, StoredBlock>(&sql.text), &sql.vals)
                .fetch_all(pool)
                .await?
        }))
    }

    /// The blocks of `owner_id` that may hold `id`: first id at most `id`,
    /// last id at least, first id no lower than the span allows.
    async fn blocks_holding(
        &self,
        owner_id: i64,
        id: &str,
    ) -> Result<Vec<StoredBlock>, StorageError> {
        let mut sql = Sql::of_owner(BLOCK_COLUMNS, owner_id);
        sql.and_text("first_id", ">=", &block::floor_for(id))
            .and_text("first_id", "<=", id)
            .and_text("last_id", ">=", id);
        self.fetch_blocks(&sql).await
    }

    /// The stanzas named by `filter.ids` that match the rest of `filter`.
    async fn archive_by_ids(
        &self,
        owner_id: i64,
        filter: &ArchiveFilter,
        payloads: bool,
    ) -> Result<Vec<ArchivedItem>, StorageError> {
        let matcher = Matcher::of(filter);
        let mut wanted: Vec<&str> = filter.ids.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut items = Vec::new();
        for id in wanted {
            let mut sql = Sql::of_owner(BLOCK_COLUMNS, owner_id);
            if let Some(p) = &filter.peer {
                sql.and_text("peer", "=", p);
            }
            sql.and_text("first_id", ">=", &block::floor_for(id))
                .and_text("first_id", "<=", id)
                .and_text("last_id", ">=", id);
            for b in self.fetch_blocks(&sql).await? {
                if let Some(r) = block::decode(&b.rows)?
                    .into_iter()
                    .find(|r| r.id == id && matcher.matches(r))
                {
                    items.push(item(&r, payloads));
                    break;
                }
            }
        }
        Ok(items)
    }

    /// Up to `limit` stanzas matching `filter`, oldest first or newest
    /// first; without their payloads unless `payloads`. Reads blocks in
    /// first-id order from the filter's floor and stops once no block left
    /// can hold a stanza that would make the page.
    async fn archive_collect(
        &self,
        owner_id: i64,
        filter: &ArchiveFilter,
        newest_first: bool,
        limit: usize,
        payloads: bool,
    ) -> Result<Vec<ArchivedItem>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut items = if !filter.ids.is_empty() {
            self.archive_by_ids(owner_id, filter, payloads).await?
        } else {
            let matcher = Matcher::of(filter);
            let mut scan = Scan::new(
                self,
                owner_id,
                filter.peer.as_deref(),
                &matcher.bounds,
                newest_first,
            );
            let mut items: Vec<ArchivedItem> = Vec::new();
            while let Some(b) = scan.next().await? {
                if items.len() >= limit {
                    sort_items(&mut items, newest_first);
                    items.truncate(limit);
                    let last_kept = items[limit - 1].id.as_str();
                    // Blocks still to come start at or before (newest
                    // first) or at or after (oldest first) this one.
                    let done = if newest_first {
                        block::ceiling_for(&b.first_id).is_some_and(|c| c.as_str() <= last_kept)
                    } else {
                        b.first_id.as_str() > last_kept
                    };
                    if done {
                        break;
                    }
                }
                for r in block::decode(&b.rows)? {
                    if matcher.matches(&r) {
                        items.push(item(&r, payloads));
                    }
                }
            }
            items
        };
        sort_items(&mut items, newest_first);
        items.truncate(limit);
        Ok(items)
    }

    /// Up to `limit` rows matching `filter`, oldest first, or newest first
    /// when `newest_first`.
    pub async fn archive_page(
        &self,
        owner: &ArchiveOwner,
        filter: &ArchiveFilter,
        newest_first: bool,
        limit: u32,
    ) -> Result<Vec<ArchivedItem>, StorageError> {
        let Some(owner_id) = self.archive_owner_id(owner).await? else {
            return Ok(Vec::new());
        };
        self.archive_collect(owner_id, filter, newest_first, limit as usize, true)
            .await
    }

    /// The id of the `offset`th row (from 0, oldest first) matching
    /// `filter`, else the newest matching id (the offset is past the end),
    /// else None (nothing matches). Decodes ids only, not payloads; the
    /// caller bounds the offset (`[mam] max_index`).
    pub async fn archive_id_at(
        &self,
        owner: &ArchiveOwner,
        filter: &ArchiveFilter,
        offset: u32,
    ) -> Result<Option<String>, StorageError> {
        let Some(owner_id) = self.archive_owner_id(owner).await? else {
            return Ok(None);
        };
        let want = offset as usize + 1;
        // The last of the first `want`: the one at the offset, or the newest
        // of fewer.
        let mut ids = self
            .archive_collect(owner_id, filter, false, want, false)
            .await?;
        Ok(ids.pop().map(|i| i.id))
    }

    /// How many rows match `filter`: the blocks wholly inside the filter's
    /// range by their counts (the indexes hold them), the blocks across
    /// its two ends decoded.
    pub async fn archive_count(
        &self,
        owner: &ArchiveOwner,
        filter: &ArchiveFilter,
    ) -> Result<i64, StorageError> {
        if filter.is_everything() {
            // Kept with the rows: one look-up, however large the archive.
            const Q: &str =
                "SELECT n FROM archive_owners WHERE kind = $1 AND domain = $2 AND username = $3";
            let n: Option<(i64,)> = on_pool!(self, pool => {
                sqlx::query_as(Q)
                    .bind(owner.kind as i16)
                    .bind(&owner.domain)
                    .bind(&owner.username)
                    .fetch_optional(pool)
                    .await?
            });
            return Ok(n.map_or(0, |(n,)| n));
        }
        let Some(owner_id) = self.archive_owner_id(owner).await? else {
            return Ok(0);
        };
        if !filter.ids.is_empty() {
            return Ok(self.archive_by_ids(owner_id, filter, false).await?.len() as i64);
        }
        let matcher = Matcher::of(filter);
        if filter.resource.is_some() {
            // Resources are inside the blocks: count them there.
            let mut scan = Scan::new(
                self,
                owner_id,
                filter.peer.as_deref(),
                &matcher.bounds,
                false,
            );
            let mut n = 0;
            while let Some(b) = scan.next().await? {
                n += block::decode(&b.rows)?
                    .iter()
                    .filter(|r| matcher.matches(r))
                    .count() as i64;
            }
            return Ok(n);
        }
        let bounds = &matcher.bounds;
        let with_peer = |sql: &mut Sql| {
            if let Some(p) = &filter.peer {
                sql.and_text("peer", "=", p);
            }
        };
        // Wholly inside: the first id above the lower bound, the last below
        // the upper.
        let mut inside = Sql::of_owner(
            "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM archive_blocks WHERE owner_id = $1",
            owner_id,
        );
        with_peer(&mut inside);
        if let Some((lo, _)) = &bounds.lo {
            inside.and_text("first_id", bounds.lo_op(), lo);
        }
        if let Some(hi) = &bounds.hi {
            inside.and_text("last_id", "<", hi);
        }
        let (mut n,): (i64,) = on_pool!(self, pool => {
            bind_vals!(sqlx::query_as(&inside.text), &inside.vals).fetch_one(pool).await?
        });
        let mut edges = Vec::new();
        // Across the lower end: starting below it, from the floor.
        if let Some((lo, inclusive)) = &bounds.lo {
            let mut sql = Sql::of_owner(BLOCK_COLUMNS, owner_id);
            with_peer(&mut sql);
            sql.and_text("first_id", ">=", &block::floor_for(lo))
                .and_text("first_id", if *inclusive { "<" } else { "<=" }, lo);
            edges.push(sql);
        }
        // Across the upper end: starting above the lower bound, below the
        // upper, ending at or past it.
        if let Some(hi) = &bounds.hi {
            let mut sql = Sql::of_owner(BLOCK_COLUMNS, owner_id);
            with_peer(&mut sql);
            if let Some((lo, _)) = &bounds.lo {
                sql.and_text("first_id", bounds.lo_op(), lo);
            }
            sql.and_text("first_id", ">=", &block::floor_for(hi))
                .and_text("first_id", "<", hi)
                .and_text("last_id", ">=", hi);
            edges.push(sql);
        }
        for sql in edges {
            for b in self.fetch_blocks(&sql).await? {
                n += block::decode(&b.rows)?
                    .iter()
                    .filter(|r| matcher.matches(r))
                    .count() as i64;
            }
        }
        Ok(n)
    }

    /// Does `owner`'s archive hold `id`?
    pub async fn archive_has(&self, owner: &ArchiveOwner, id: &str) -> Result<bool, StorageError> {
        let Some(owner_id) = self.archive_owner_id(owner).await? else {
            return Ok(false);
        };
        for b in self.blocks_holding(owner_id, id).await? {
            if block::decode(&b.rows)?.iter().any(|r| r.id == id) {
                return Ok(true);
            }
        }
        Ok(false)
    }

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
            .archive_collect(owner_id, &ArchiveFilter::default(), true, keep, false)
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
                        payload: r.payload.to_string(),
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

/// A query's item from a stanza of a block.
fn item(r: &RowView<'_>, payload: bool) -> ArchivedItem {
    ArchivedItem {
        id: r.id.to_string(),
        ts: r.ts,
        payload: if payload {
            r.payload.to_string()
        } else {
            String::new()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::chunked;

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
}
