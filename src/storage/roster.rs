//! Roster rows (RFC 6121 §2–3) and the per-user roster version (XEP-0237).

use super::{StorageError, Store};

/// One roster row as stored. `subscription` is "none", "to", "from" or "both".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterRecord {
    /// The contact's bare JID.
    pub contact: String,
    pub name: Option<String>,
    pub subscription: String,
    /// Pending-out: the user asked to subscribe to the contact.
    pub ask_out: bool,
    /// Pending-in: the contact asked to subscribe and the user has not
    /// answered. What re-delivering the request needs is kept apart
    /// ([`SubscriptionRequest`]) and only read at login.
    pub pending_in: bool,
    /// Pre-approved subscription request (RFC 6121 §3.4).
    pub approved: bool,
    /// False when the row only carries a request from someone not in the roster.
    pub in_roster: bool,
    pub groups: Vec<String>,
}

/// What is kept of a pending inbound subscription request to deliver it
/// again when the user next logs in: the XEP-0172 nick and the status text,
/// each already length-capped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionRequest {
    pub nick: Option<String>,
    pub status: Option<String>,
}

/// A pending request as stored, for re-delivery at login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRequest {
    /// The requester's bare JID.
    pub contact: String,
    pub request: SubscriptionRequest,
    /// The whole stanza, for rows written before requests were stored in
    /// short form; the caller converts them.
    pub legacy_stanza: Option<String>,
}

pub(super) type RosterRow = (
    String,
    Option<String>,
    String,
    bool,
    bool,
    bool,
    bool,
    String,
);

pub(super) fn from_row(r: RosterRow) -> RosterRecord {
    RosterRecord {
        contact: r.0,
        name: r.1,
        subscription: r.2,
        ask_out: r.3,
        pending_in: r.4,
        approved: r.5,
        in_roster: r.6,
        groups: r
            .7
            .split('\n')
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect(),
    }
}

/// The request's own texts are not among them: the presence broadcast reads
/// every row of a roster, and has no use for them.
pub(super) const COLUMNS: &str =
    "contact, name, subscription, ask_out, pending, approved, in_roster, groups";

/// Bumps a user's roster version inside a transaction and returns it.
macro_rules! bump_version {
    ($tx:expr, $domain:expr, $username:expr) => {{
        let (v,): (i64,) = sqlx::query_as(
            "INSERT INTO roster_versions (domain, username, version) VALUES ($1, $2, 1) \
             ON CONFLICT (domain, username) DO UPDATE SET version = roster_versions.version + 1 \
             RETURNING version",
        )
        .bind($domain)
        .bind($username)
        .fetch_one(&mut *$tx)
        .await?;
        v
    }};
}

impl Store {
    /// Every row of a user's roster. Rows that only carry a request from
    /// someone outside the roster are left out: the roster result and the
    /// presence broadcast never need them, and their number is the one a
    /// stranger can raise.
    pub async fn roster_items(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Vec<RosterRecord>, StorageError> {
        let q = format!("SELECT {COLUMNS} FROM roster_items WHERE domain = $1 AND username = $2 AND in_roster ORDER BY contact");
        let rows: Vec<RosterRow> = on_pool!(self, pool => {
            sqlx::query_as(&q)
                .bind(domain)
                .bind(username)
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// One roster row.
    pub async fn roster_item(
        &self,
        domain: &str,
        username: &str,
        contact: &str,
    ) -> Result<Option<RosterRecord>, StorageError> {
        let q = format!("SELECT {COLUMNS} FROM roster_items WHERE domain = $1 AND username = $2 AND contact = $3");
        let row: Option<RosterRow> = on_pool!(self, pool => {
            sqlx::query_as(&q)
                .bind(domain)
                .bind(username)
                .bind(contact)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(from_row))
    }

    /// Inserts or replaces a roster row; returns the new roster version.
    /// A pending request's texts stay while the row is still pending-in
    /// and go when it no longer is.
    pub async fn roster_put(
        &self,
        domain: &str,
        username: &str,
        item: &RosterRecord,
    ) -> Result<i64, StorageError> {
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                sqlx::query(
                    "INSERT INTO roster_items (domain, username, contact, name, subscription, ask_out, pending, approved, in_roster, groups) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (domain, username, contact) DO UPDATE SET name = excluded.name, \
                     subscription = excluded.subscription, ask_out = excluded.ask_out, pending = excluded.pending, \
                     pending_nick = CASE WHEN excluded.pending THEN roster_items.pending_nick END, \
                     pending_status = CASE WHEN excluded.pending THEN roster_items.pending_status END, \
                     pending_in = CASE WHEN excluded.pending THEN roster_items.pending_in END, \
                     approved = excluded.approved, in_roster = excluded.in_roster, groups = excluded.groups",
                )
                .bind(domain)
                .bind(username)
                .bind(&item.contact)
                .bind(&item.name)
                .bind(&item.subscription)
                .bind(item.ask_out)
                .bind(item.pending_in)
                .bind(item.approved)
                .bind(item.in_roster)
                .bind(item.groups.join("\n"))
                .execute(&mut *tx)
                .await?;
                let v = bump_version!(tx, domain, username);
                tx.commit().await?;
                Ok(v)
            }};
        }
        on_pool!(self, pool => run!(pool))
    }

    /// Records a new pending inbound request from `item.contact` (the row
    /// as the state machine left it, `pending_in` set) with its texts,
    /// unless the user already has `max_pending` other requests waiting.
    /// Returns the new roster version, or None when refused.
    pub async fn roster_put_request(
        &self,
        domain: &str,
        username: &str,
        item: &RosterRecord,
        request: &SubscriptionRequest,
        max_pending: u32,
    ) -> Result<Option<i64>, StorageError> {
        // One statement checks and writes, so two requests racing each
        // other overshoot the cap at most by the number in flight.
        const Q: &str = "INSERT INTO roster_items (domain, username, contact, name, subscription, ask_out, pending, \
             approved, in_roster, groups, pending_nick, pending_status) \
             SELECT $1, $2, $3, $4, $5, $6, TRUE, $7, $8, $9, $10, $11 \
             WHERE (SELECT COUNT(*) FROM roster_items WHERE domain = $1 AND username = $2 AND pending AND contact <> $3) < $12 \
             ON CONFLICT (domain, username, contact) DO UPDATE SET name = excluded.name, \
             subscription = excluded.subscription, ask_out = excluded.ask_out, pending = TRUE, \
             pending_nick = excluded.pending_nick, pending_status = excluded.pending_status, pending_in = NULL, \
             approved = excluded.approved, in_roster = excluded.in_roster, groups = excluded.groups";
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                let n = sqlx::query(Q)
                    .bind(domain)
                    .bind(username)
                    .bind(&item.contact)
                    .bind(&item.name)
                    .bind(&item.subscription)
                    .bind(item.ask_out)
                    .bind(item.approved)
                    .bind(item.in_roster)
                    .bind(item.groups.join("\n"))
                    .bind(&request.nick)
                    .bind(&request.status)
                    .bind(i64::from(max_pending))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    return Ok(None);
                }
                let v = bump_version!(tx, domain, username);
                tx.commit().await?;
                Ok(Some(v))
            }};
        }
        on_pool!(self, pool => run!(pool))
    }

    /// The user's pending inbound requests, for re-delivery at login.
    pub async fn roster_pending_requests(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Vec<PendingRequest>, StorageError> {
        const Q: &str =
            "SELECT contact, pending_nick, pending_status, pending_in FROM roster_items \
             WHERE domain = $1 AND username = $2 AND pending ORDER BY contact";
        type Row = (String, Option<String>, Option<String>, Option<String>);
        let rows: Vec<Row> = on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(domain)
                .bind(username)
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(contact, nick, status, legacy)| PendingRequest {
                contact,
                request: SubscriptionRequest { nick, status },
                legacy_stanza: legacy,
            })
            .collect())
    }

    /// Replaces a request stored as a whole stanza (before the short form
    /// existed) by its short form.
    pub async fn roster_request_convert(
        &self,
        domain: &str,
        username: &str,
        contact: &str,
        request: &SubscriptionRequest,
    ) -> Result<(), StorageError> {
        const Q: &str =
            "UPDATE roster_items SET pending_nick = $4, pending_status = $5, pending_in = NULL \
             WHERE domain = $1 AND username = $2 AND contact = $3 AND pending";
        on_pool!(self, pool => {
            sqlx::query(Q)
                .bind(domain)
                .bind(username)
                .bind(contact)
                .bind(&request.nick)
                .bind(&request.status)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// How many items the user's roster holds (request-only rows aside).
    pub async fn roster_count(&self, domain: &str, username: &str) -> Result<i64, StorageError> {
        const Q: &str =
            "SELECT COUNT(*) FROM roster_items WHERE domain = $1 AND username = $2 AND in_roster";
        let (n,): (i64,) = on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(domain)
                .bind(username)
                .fetch_one(pool)
                .await?
        });
        Ok(n)
    }

    /// How many inbound requests wait for the user's answer.
    pub async fn roster_pending_count(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<i64, StorageError> {
        const Q: &str =
            "SELECT COUNT(*) FROM roster_items WHERE domain = $1 AND username = $2 AND pending";
        let (n,): (i64,) = on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(domain)
                .bind(username)
                .fetch_one(pool)
                .await?
        });
        Ok(n)
    }

    /// Deletes a roster row; returns the new roster version.
    pub async fn roster_remove(
        &self,
        domain: &str,
        username: &str,
        contact: &str,
    ) -> Result<i64, StorageError> {
        macro_rules! run {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                sqlx::query(
                    "DELETE FROM roster_items WHERE domain = $1 AND username = $2 AND contact = $3",
                )
                .bind(domain)
                .bind(username)
                .bind(contact)
                .execute(&mut *tx)
                .await?;
                let v = bump_version!(tx, domain, username);
                tx.commit().await?;
                Ok(v)
            }};
        }
        on_pool!(self, pool => run!(pool))
    }

    /// The current roster version (0 for a roster never changed).
    pub async fn roster_version(&self, domain: &str, username: &str) -> Result<i64, StorageError> {
        const Q: &str = "SELECT version FROM roster_versions WHERE domain = $1 AND username = $2";
        let row: Option<(i64,)> = on_pool!(self, pool => {
            sqlx::query_as(Q)
                .bind(domain)
                .bind(username)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|r| r.0).unwrap_or(0))
    }
}
