//! The archive table: stanzas kept per owner in time order (XEP-0313 user
//! archives today). Ids are time-ordered strings, so every range — by
//! time, after or before an id — is a range of the primary key.

use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::{StorageError, Store};

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
    pub payload: String,
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

/// Rows per INSERT statement (9 parameters each: far below SQLite's and
/// PostgreSQL's parameter limits).
const ROWS_PER_STATEMENT: usize = 500;

/// Adds $4 to an owner's row count.
/// How the rows' counts are added to `archive_counts` (after a multi-row
/// VALUES with one row per owner).
const COUNT_ADD_CONFLICT: &str =
    " ON CONFLICT (kind, domain, username) DO UPDATE SET n = archive_counts.n + excluded.n";

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
    let mut sql = String::from("kind = $1 AND domain = $2 AND username = $3");
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

impl Store {
    /// Inserts rows in one transaction (the archive writer's batch).
    pub async fn archive_insert(&self, rows: &[ArchiveRow]) -> Result<(), StorageError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut added: Vec<(&ArchiveOwner, i64)> = Vec::new();
        for r in rows {
            match added.iter_mut().find(|(o, _)| *o == &r.owner) {
                Some((_, n)) => *n += 1,
                None => added.push((&r.owner, 1)),
            }
        }
        macro_rules! run {
            ($pool:expr, $db:ty) => {{
                let mut tx = $pool.begin().await?;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                        "INSERT INTO archive (kind, domain, username, id, ts, peer, resource, outgoing, payload) ",
                    );
                    qb.push_values(chunk, |mut b, r| {
                        b.push_bind(r.owner.kind as i16)
                            .push_bind(&r.owner.domain)
                            .push_bind(&r.owner.username)
                            .push_bind(&r.id)
                            .push_bind(r.ts)
                            .push_bind(&r.peer)
                            .push_bind(&r.resource)
                            .push_bind(r.outgoing)
                            .push_bind(&r.payload);
                    });
                    qb.build().execute(&mut *tx).await?;
                }
                // One statement for every owner's count: a batch spans
                // hundreds of owners, and a statement each cost more than
                // the rows themselves.
                for chunk in added.chunks(ROWS_PER_STATEMENT) {
                    let mut qb: QueryBuilder<$db> =
                        QueryBuilder::new("INSERT INTO archive_counts (kind, domain, username, n) ");
                    qb.push_values(chunk, |mut b, (owner, added)| {
                        b.push_bind(owner.kind as i16)
                            .push_bind(&owner.domain)
                            .push_bind(&owner.username)
                            .push_bind(*added);
                    });
                    qb.push(COUNT_ADD_CONFLICT);
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }};
        }
        match self {
            Store::Sqlite(p) => run!(p, Sqlite),
            Store::Postgres(p) => run!(p, Postgres),
        }
        Ok(())
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

    /// How many rows match `filter`.
    pub async fn archive_count(
        &self,
        owner: &ArchiveOwner,
        filter: &ArchiveFilter,
    ) -> Result<i64, StorageError> {
        if filter.is_everything() {
            // Kept with the rows: one look-up, however large the archive.
            const Q: &str =
                "SELECT n FROM archive_counts WHERE kind = $1 AND domain = $2 AND username = $3";
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
        const Q: &str = "SELECT COUNT(*) FROM archive WHERE kind = $1 AND domain = $2 AND username = $3 AND id = $4";
        let (n,): (i64,) = on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(owner.kind as i16)
                .bind(&owner.domain)
                .bind(&owner.username)
                .bind(id)
                .fetch_one(pool)
                .await?
        });
        Ok(n > 0)
    }

    /// Deletes every row stored before `ts` (microseconds), whoever owns
    /// it; returns how many. One owner at a time, each in a transaction
    /// with its count.
    pub async fn archive_expire(&self, ts: i64) -> Result<u64, StorageError> {
        const OWNERS: &str = "SELECT DISTINCT kind, domain, username FROM archive WHERE ts < $1";
        let owners: Vec<(i16, String, String)> = on_pool!(self, pool => {
            sqlx::query_as(OWNERS).bind(ts).fetch_all(pool).await?
        });
        let mut removed = 0;
        for (kind, domain, username) in owners {
            let owner = ArchiveOwner {
                kind: match kind {
                    0 => ArchiveKind::User,
                    // A kind this version does not know: not its to expire.
                    _ => continue,
                },
                domain,
                username,
            };
            removed += self.archive_delete(&owner, None, Some(ts)).await?;
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
        const COUNT_SUB: &str = "UPDATE archive_counts SET n = n - $4 WHERE kind = $1 AND domain = $2 AND username = $3";
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
        const Q: &str = "SELECT domain, username, n FROM archive_counts WHERE kind = $1 AND n > $2";
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
