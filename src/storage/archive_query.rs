//! Reading the archive's blocks (`archive_block`): pages, counts, look-ups
//! by id. Every query names one owner, whose integer id is looked up
//! first; the blocks it reads are a range of the (owner, first id) or
//! (owner, peer, first id) index, from the floor the block span sets for
//! the filter's lower bound (see `archive_block`).

use std::collections::HashSet;

use super::archive::{ArchiveFilter, ArchiveOwner, ArchivedItem};
use super::archive_block::{self as block, RowView};
use super::{StorageError, Store};

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
pub(super) enum Val {
    Text(String),
    Int(i64),
}

/// A query built at run time, with `$n` placeholders from 1.
pub(super) struct Sql {
    pub(super) text: String,
    pub(super) vals: Vec<Val>,
}

impl Sql {
    /// `head` ends in a condition on `owner_id = $1`.
    pub(super) fn of_owner(head: &str, owner_id: i64) -> Sql {
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

    pub(super) fn and_text(&mut self, col: &str, op: &str, v: &str) -> &mut Sql {
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
pub(super) use bind_vals;

/// A block as queries read it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct StoredBlock {
    pub(super) first_id: String,
    /// Whom the block's stanzas were exchanged with: what a stanza kept
    /// without its envelope needs back.
    pub(super) peer: String,
    pub(super) rows: Vec<u8>,
}

pub(super) const BLOCK_COLUMNS: &str =
    "SELECT first_id, peer, rows FROM archive_blocks WHERE owner_id = $1";

/// What a query returns of each stanza it finds.
#[derive(Debug, Clone, Copy)]
pub(super) enum Want<'o> {
    Ids,
    /// The stanzas too, of this owner's archive.
    Stanzas(&'o ArchiveOwner),
}

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

impl Store {
    /// The integer id of `owner` and its stanza count, None while it has
    /// never archived.
    async fn archive_owner_row(
        &self,
        owner: &ArchiveOwner,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        const Q: &str = "SELECT owner_id, n FROM archive_owners \
             WHERE kind = $1 AND domain = $2 AND username = $3";
        Ok(on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(owner.kind as i16)
                .bind(&owner.domain)
                .bind(&owner.username)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// The integer id of `owner`, None while it has never archived.
    pub(super) async fn archive_owner_id(
        &self,
        owner: &ArchiveOwner,
    ) -> Result<Option<i64>, StorageError> {
        Ok(self.archive_owner_row(owner).await?.map(|(id, _)| id))
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
        want: Want<'_>,
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
                    items.push(item(&r, &b.peer, want));
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
    pub(super) async fn archive_collect(
        &self,
        owner_id: i64,
        filter: &ArchiveFilter,
        newest_first: bool,
        limit: usize,
        want: Want<'_>,
    ) -> Result<Vec<ArchivedItem>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut items = if !filter.ids.is_empty() {
            self.archive_by_ids(owner_id, filter, want).await?
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
                        items.push(item(&r, &b.peer, want));
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
        self.archive_collect(
            owner_id,
            filter,
            newest_first,
            limit as usize,
            Want::Stanzas(owner),
        )
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
            .archive_collect(owner_id, filter, false, want, Want::Ids)
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
        let Some((owner_id, n)) = self.archive_owner_row(owner).await? else {
            return Ok(0);
        };
        if filter.is_everything() {
            // Kept with the blocks: one look-up, however large the archive.
            return Ok(n);
        }
        if !filter.ids.is_empty() {
            return Ok(self
                .archive_by_ids(owner_id, filter, Want::Ids)
                .await?
                .len() as i64);
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
}

/// A query's item from a stanza of a block.
fn item(r: &RowView<'_>, peer: &str, want: Want<'_>) -> ArchivedItem {
    ArchivedItem {
        id: r.id.to_string(),
        ts: r.ts,
        payload: match want {
            Want::Stanzas(o) => r.stanza(&o.username, &o.domain, peer).into_owned(),
            Want::Ids => String::new(),
        },
    }
}
