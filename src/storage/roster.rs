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
    /// Pending-in: the contact's subscribe request, kept to re-deliver at login.
    pub pending_in: Option<String>,
    /// Pre-approved subscription request (RFC 6121 §3.4).
    pub approved: bool,
    /// False when the row only carries a request from someone not in the roster.
    pub in_roster: bool,
    pub groups: Vec<String>,
}

type RosterRow = (
    String,
    Option<String>,
    String,
    bool,
    Option<String>,
    bool,
    bool,
    String,
);

fn from_row(r: RosterRow) -> RosterRecord {
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

const COLUMNS: &str =
    "contact, name, subscription, ask_out, pending_in, approved, in_roster, groups";

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
    /// Every roster row of a user (including request-only rows).
    pub async fn roster_items(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Vec<RosterRecord>, StorageError> {
        let q = format!("SELECT {COLUMNS} FROM roster_items WHERE domain = $1 AND username = $2 ORDER BY contact");
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
                    "INSERT INTO roster_items (domain, username, contact, name, subscription, ask_out, pending_in, approved, in_roster, groups) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (domain, username, contact) DO UPDATE SET name = excluded.name, \
                     subscription = excluded.subscription, ask_out = excluded.ask_out, pending_in = excluded.pending_in, \
                     approved = excluded.approved, in_roster = excluded.in_roster, groups = excluded.groups",
                )
                .bind(domain)
                .bind(username)
                .bind(&item.contact)
                .bind(&item.name)
                .bind(&item.subscription)
                .bind(item.ask_out)
                .bind(&item.pending_in)
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
