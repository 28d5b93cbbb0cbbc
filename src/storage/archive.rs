//! The archive table: stanzas kept per owner in time order (XEP-0313 user
//! archives today). Ids are time-ordered strings (`modules::mam::id`), so
//! every range — by time, after or before an id — is a range of the
//! (owner, id) index.
//!
//! Owners are rows of `archive_owners`: an integer `owner_id` and the
//! owner's row count. Archive rows carry only that integer, so the two
//! per-owner indexes stay narrow. Writing is what costs under load: every
//! row adds an entry at its owner's place in each index, so a commit
//! writes about one page per index per owner it touches, whatever the
//! number of rows. The archive writer therefore commits large batches, on
//! a connection of its own ([`ArchiveConn`]) whose page cache stays valid
//! from one commit to the next (a pooled SQLite connection drops its whole
//! cache whenever another connection wrote since its last use).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{
    ConnectOptions, Connection, PgConnection, Postgres, QueryBuilder, Sqlite, SqliteConnection,
};

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

/// Rows per multi-row statement on SQLite, largest first: a batch is cut
/// into statements of these sizes only, so each connection prepares at
/// most four shapes of each statement and reuses them (sqlx caches
/// prepared statements by their text). 256 rows × 7 values is far below
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

/// The owner condition of every query: the owner's integer id, looked up
/// once per statement from its (kind, domain, username) ($1–$3).
const OWNER_IS: &str = "owner_id = (SELECT owner_id FROM archive_owners \
     WHERE kind = $1 AND domain = $2 AND username = $3)";

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

/// A bound value of a query built at run time.
enum Bind<'a> {
    Text(&'a str),
    Int(i64),
}

/// The WHERE clause of `filter` for `owner`, with `$n` placeholders from
/// 1, and the values to bind in order.
fn where_clause<'a>(owner: &'a ArchiveOwner, filter: &'a ArchiveFilter) -> (String, Vec<Bind<'a>>) {
    let mut sql = String::from(OWNER_IS);
    let mut binds = vec![
        Bind::Int(owner.kind as i64),
        Bind::Text(&owner.domain),
        Bind::Text(&owner.username),
    ];
    let mut push = |cond: &str, b: Bind<'a>, binds: &mut Vec<Bind<'a>>| {
        binds.push(b);
        sql.push_str(&format!(" AND {cond} ${}", binds.len()));
    };
    if let Some(p) = &filter.peer {
        push("peer =", Bind::Text(p), &mut binds);
    }
    if let Some(r) = &filter.resource {
        push("resource =", Bind::Text(r), &mut binds);
    }
    if let Some(v) = &filter.id_from {
        push("id >=", Bind::Text(v), &mut binds);
    }
    if let Some(v) = &filter.id_until {
        push("id <", Bind::Text(v), &mut binds);
    }
    if let Some(v) = &filter.after {
        push("id >", Bind::Text(v), &mut binds);
    }
    if let Some(v) = &filter.before {
        push("id <", Bind::Text(v), &mut binds);
    }
    if !filter.ids.is_empty() {
        let mut list = Vec::new();
        for id in &filter.ids {
            binds.push(Bind::Text(id));
            list.push(format!("${}", binds.len()));
        }
        sql.push_str(&format!(" AND id IN ({})", list.join(", ")));
    }
    (sql, binds)
}

/// Binds `binds` in order on a query of either dialect.
macro_rules! bind_all {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                Bind::Text(s) => q.bind(*s),
                Bind::Int(i) => q.bind(*i),
            };
        }
        q
    }};
}

/// The owners of a batch, each once with how many rows it adds, and for
/// each row the index of its owner in that list.
pub(super) struct Owners<'a> {
    pub(super) list: Vec<(&'a ArchiveOwner, i64)>,
    pub(super) of_row: Vec<usize>,
}

impl<'a> Owners<'a> {
    pub(super) fn of(rows: &'a [ArchiveRow]) -> Owners<'a> {
        let mut index: HashMap<&ArchiveOwner, usize> = HashMap::new();
        let mut list: Vec<(&ArchiveOwner, i64)> = Vec::new();
        let mut of_row = Vec::with_capacity(rows.len());
        for r in rows {
            let i = *index.entry(&r.owner).or_insert_with(|| {
                list.push((&r.owner, 0));
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
            .map(|(i, (o, _))| ((o.kind as i16, o.domain.as_str(), o.username.as_str()), i))
            .collect()
    }
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

/// Inserts `rows` and counts them, in one transaction, on SQLite.
async fn insert_sqlite(
    conn: &mut SqliteConnection,
    rows: &[ArchiveRow],
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
                .push_bind(&owner.domain)
                .push_bind(&owner.username)
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
    let numbered: Vec<(i64, &ArchiveRow)> = rows
        .iter()
        .zip(&owners.of_row)
        .map(|(r, &i)| (ids[i], r))
        .collect();
    for chunk in chunked(&numbered) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO archive (owner_id, id, ts, peer, resource, outgoing, payload) ",
        );
        qb.push_values(chunk, |mut b, (owner_id, r)| {
            b.push_bind(*owner_id)
                .push_bind(&r.id)
                .push_bind(r.ts)
                .push_bind(&r.peer)
                .push_bind(&r.resource)
                .push_bind(r.outgoing)
                .push_bind(&*r.payload);
        });
        qb.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Inserts `rows` and counts them, in one transaction, on PostgreSQL:
/// two statements whatever the batch (arrays unnested), each prepared once
/// per connection.
async fn insert_postgres(conn: &mut PgConnection, rows: &[ArchiveRow]) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    const OWNERS: &str = "INSERT INTO archive_owners (kind, domain, username, n) \
         SELECT * FROM UNNEST($1::int2[], $2::text[], $3::text[], $4::int8[])";
    const ROWS: &str = "INSERT INTO archive (owner_id, id, ts, peer, resource, outgoing, payload) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::bool[], $7::text[])";
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
                .map(|(o, _)| o.domain.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            owners
                .list
                .iter()
                .map(|(o, _)| o.username.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(owners.list.iter().map(|(_, n)| *n).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
    let ids = take_ids(&owners, returned)?;
    sqlx::query(ROWS)
        .bind(owners.of_row.iter().map(|&i| ids[i]).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.ts).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.peer.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.resource.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.outgoing).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| &*r.payload).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
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
    /// Inserts `rows[range]` in one transaction (the archive writer's
    /// batch, shared so that it can move to a blocking thread and back).
    pub async fn insert(
        &mut self,
        rows: &Arc<Vec<ArchiveRow>>,
        range: Range<usize>,
    ) -> Result<(), StorageError> {
        match self {
            ArchiveConn::Sqlite(slot) => {
                let mut conn = slot
                    .take()
                    .ok_or_else(|| StorageError::Invalid("archive connection lost".into()))?;
                let rows = Arc::clone(rows);
                // SQLite blocks: off the async workers, one hand-over a batch.
                let (conn, r) = tokio::task::spawn_blocking(move || {
                    let r = conn.insert(&rows[range]);
                    (conn, r)
                })
                .await
                .map_err(|e| StorageError::Invalid(format!("archive writer thread: {e}")))?;
                *slot = Some(conn);
                r
            }
            ArchiveConn::SqliteSqlx(c) => insert_sqlite(c, &rows[range]).await,
            ArchiveConn::Postgres(c) => insert_postgres(c, &rows[range]).await,
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

    /// Up to `limit` rows matching `filter`, oldest first, or newest first
    /// when `newest_first`.
    pub async fn archive_page(
        &self,
        owner: &ArchiveOwner,
        filter: &ArchiveFilter,
        newest_first: bool,
        limit: u32,
    ) -> Result<Vec<ArchivedItem>, StorageError> {
        let (cond, binds) = where_clause(owner, filter);
        let order = if newest_first { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT id, ts, payload FROM archive WHERE {cond} ORDER BY id {order} LIMIT {limit}"
        );
        Ok(on_pool!(self, pool => {
            bind_all!(sqlx::query_as::<_, ArchivedItem>(&sql), &binds)
                .fetch_all(pool)
                .await?
        }))
    }

    /// The id of the `offset`th row (from 0, oldest first) matching
    /// `filter`, else the newest matching id (the offset is past the end),
    /// else None (nothing matches). Reads ids only: the (owner, id) index
    /// answers it without touching a payload.
    pub async fn archive_id_at(
        &self,
        owner: &ArchiveOwner,
        filter: &ArchiveFilter,
        offset: u32,
    ) -> Result<Option<String>, StorageError> {
        let (cond, binds) = where_clause(owner, filter);
        let at =
            format!("SELECT id FROM archive WHERE {cond} ORDER BY id ASC LIMIT 1 OFFSET {offset}");
        let found: Option<(String,)> = on_pool!(self, pool => {
            bind_all!(sqlx::query_as(&at), &binds).fetch_optional(pool).await?
        });
        if found.is_some() {
            return Ok(found.map(|(id,)| id));
        }
        let newest = format!("SELECT id FROM archive WHERE {cond} ORDER BY id DESC LIMIT 1");
        let last: Option<(String,)> = on_pool!(self, pool => {
            bind_all!(sqlx::query_as(&newest), &binds).fetch_optional(pool).await?
        });
        Ok(last.map(|(id,)| id))
    }

    /// How many rows match `filter`.
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
        let (cond, binds) = where_clause(owner, filter);
        let sql = format!("SELECT COUNT(*) FROM archive WHERE {cond}");
        let (n,): (i64,) = on_pool!(self, pool => {
            bind_all!(sqlx::query_as(&sql), &binds).fetch_one(pool).await?
        });
        Ok(n)
    }

    /// Does `owner`'s archive hold `id`?
    pub async fn archive_has(&self, owner: &ArchiveOwner, id: &str) -> Result<bool, StorageError> {
        let sql = format!("SELECT COUNT(*) FROM archive WHERE {OWNER_IS} AND id = $4");
        let (n,): (i64,) = on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(owner.kind as i64)
                .bind(&owner.domain)
                .bind(&owner.username)
                .bind(id)
                .fetch_one(pool)
                .await?
        });
        Ok(n > 0)
    }

    /// Replaces the payload of `owner`'s row `id` (a retracted message
    /// becomes its tombstone, XEP-0425 §4), keeping its place, time and
    /// peer; returns whether there was such a row.
    pub async fn archive_replace(
        &self,
        owner: &ArchiveOwner,
        id: &str,
        payload: &str,
    ) -> Result<bool, StorageError> {
        let sql = format!("UPDATE archive SET payload = $5 WHERE {OWNER_IS} AND id = $4");
        let n = on_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(owner.kind as i64)
                .bind(&owner.domain)
                .bind(&owner.username)
                .bind(id)
                .bind(payload)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Deletes every row stored before `ts` (microseconds), whoever owns
    /// it; returns how many. Ids are time-ordered, so each owner's old
    /// rows are the start of its (owner, id) range: owners are found by
    /// their oldest id, then emptied one at a time, each in a transaction
    /// with its count.
    pub async fn archive_expire(&self, ts: i64) -> Result<u64, StorageError> {
        let bound = crate::modules::mam::id::time_prefix(ts);
        const OWNERS: &str = "SELECT o.kind, o.domain, o.username FROM archive_owners o \
             WHERE o.n > 0 AND (SELECT MIN(a.id) FROM archive a WHERE a.owner_id = o.owner_id) < $1";
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
            removed += self.archive_delete(&owner, Some(&bound), Some(ts)).await?;
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
        self.archive_delete(owner, before, None).await
    }

    /// Deletes `owner`'s rows below an id and/or a time, and takes them
    /// off its count, in one transaction.
    async fn archive_delete(
        &self,
        owner: &ArchiveOwner,
        before: Option<&str>,
        older_than: Option<i64>,
    ) -> Result<u64, StorageError> {
        let filter = ArchiveFilter {
            before: before.map(str::to_string),
            ..Default::default()
        };
        let (mut cond, mut binds) = where_clause(owner, &filter);
        if let Some(ts) = older_than {
            binds.push(Bind::Int(ts));
            cond.push_str(&format!(" AND ts < ${}", binds.len()));
        }
        let sql = format!("DELETE FROM archive WHERE {cond}");
        const COUNT_SUB: &str = "UPDATE archive_owners SET n = n - $4 WHERE kind = $1 AND domain = $2 AND username = $3";
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                let n = bind_all!(sqlx::query(&sql), &binds)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(COUNT_SUB)
                    .bind(owner.kind as i16)
                    .bind(&owner.domain)
                    .bind(&owner.username)
                    .bind(n as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                n
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
        // The id of the oldest row kept; everything before it goes.
        let filter = ArchiveFilter::default();
        let (cond, binds) = where_clause(owner, &filter);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX).max(1);
        let sql = format!(
            "SELECT id FROM archive WHERE {cond} ORDER BY id DESC LIMIT 1 OFFSET {}",
            keep - 1
        );
        let oldest_kept: Option<(String,)> = on_pool!(self, pool => {
            bind_all!(sqlx::query_as(&sql), &binds).fetch_optional(pool).await?
        });
        match oldest_kept {
            Some((id,)) => self.archive_purge(owner, Some(&id)).await,
            None => Ok(0),
        }
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
