//! Writing one imported account (XEP-0227, `waxwing ctl import`) in one
//! transaction, and reading one back for `ctl export`.
//!
//! Every kind of data is compared with what is stored before it is
//! written, so that importing the same file twice writes nothing the
//! second time (no duplicate offline message, roster row or PEP item) and
//! the report can say what was created, changed or already there. A dry
//! run goes through the same statements and rolls back.

use std::collections::BTreeSet;

use super::archive::{insert_blocks_postgres, insert_blocks_sqlite};
use super::archive_block::{self as block, BlockInput, RowView};
use super::roster::{from_row, RosterRow, COLUMNS};
use super::{ScramRecord, StorageError, Store};
use crate::migrate::pie::{ArchivedMessage, PieUser};
use crate::modules::time::unix_now as now;
use crate::storage::SubscriptionRequest;

/// How many items of one kind an import created, changed or found as they were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub created: u64,
    pub changed: u64,
    pub unchanged: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.created += other.created;
        self.changed += other.changed;
        self.unchanged += other.unchanged;
    }
}

/// What importing one or more accounts did (or would do), by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub accounts: Tally,
    pub roster: Tally,
    pub vcards: Tally,
    pub private: Tally,
    pub offline: Tally,
    pub pep_nodes: Tally,
    pub pep_items: Tally,
    pub blocklist: Tally,
    pub archive: Tally,
}

impl ImportCounts {
    pub fn add(&mut self, o: &ImportCounts) {
        self.accounts.add(o.accounts);
        self.roster.add(o.roster);
        self.vcards.add(o.vcards);
        self.private.add(o.private);
        self.offline.add(o.offline);
        self.pep_nodes.add(o.pep_nodes);
        self.pep_items.add(o.pep_items);
        self.blocklist.add(o.blocklist);
        self.archive.add(o.archive);
    }

    /// (kind, tally) in report order.
    pub fn kinds(&self) -> [(&'static str, Tally); 9] {
        [
            ("accounts", self.accounts),
            ("roster items", self.roster),
            ("vCards", self.vcards),
            ("private XML documents", self.private),
            ("offline messages", self.offline),
            ("PEP nodes", self.pep_nodes),
            ("PEP items", self.pep_items),
            ("blocked JIDs", self.blocklist),
            ("archived messages", self.archive),
        ]
    }
}

/// An imported account ready to be written: what the file carried, the
/// SCRAM keys to store if the account is new (derived from a clear-text
/// password, or the file's own), and the archive ids to use.
pub struct ImportUser<'a> {
    pub user: &'a PieUser,
    pub scram: &'a [ScramRecord],
    /// One id per `user.archive` message, time-ordered as Waxwing's are.
    pub archive_ids: &'a [String],
}

/// Compares and writes a user-data document; the macro body is the same
/// for both pools.
macro_rules! put_doc {
    ($tx:expr, $d:expr, $u:expr, $key:expr, $value:expr, $tally:expr) => {{
        let old: Option<(String,)> = sqlx::query_as(
            "SELECT value FROM user_data WHERE domain = $1 AND username = $2 AND key = $3",
        )
        .bind($d)
        .bind($u)
        .bind($key)
        .fetch_optional(&mut *$tx)
        .await?;
        match old {
            Some((v,)) if v == *$value => $tally.unchanged += 1,
            old => {
                sqlx::query(
                    "INSERT INTO user_data (domain, username, key, value) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (domain, username, key) DO UPDATE SET value = excluded.value",
                )
                .bind($d)
                .bind($u)
                .bind($key)
                .bind($value)
                .execute(&mut *$tx)
                .await?;
                if old.is_some() {
                    $tally.changed += 1
                } else {
                    $tally.created += 1
                }
            }
        }
    }};
}

impl Store {
    /// Writes one account and everything imported with it in one
    /// transaction (rolled back instead when `dry_run`); returns what was
    /// (or would be) created, changed or already there. An existing
    /// account keeps its credentials: the import only adds what is missing
    /// and brings the rest to what the file says.
    pub async fn import_user(
        &self,
        rec: &ImportUser<'_>,
        dry_run: bool,
    ) -> Result<ImportCounts, StorageError> {
        let u = rec.user;
        let (d, n) = (u.host.as_str(), u.name.as_str());
        let own = format!("{n}@{d}");
        let mut c = ImportCounts::default();
        macro_rules! run {
            ($pool:expr, $iter:ty, $insert:ident) => {{
                let mut tx = $pool.begin().await?;
                // The account.
                let exists: Option<(String,)> =
                    sqlx::query_as("SELECT argon2 FROM accounts WHERE domain = $1 AND username = $2")
                        .bind(d)
                        .bind(n)
                        .fetch_optional(&mut *tx)
                        .await?;
                if exists.is_some() {
                    c.accounts.unchanged += 1;
                } else {
                    sqlx::query(
                        "INSERT INTO accounts (domain, username, argon2, created_at) VALUES ($1, $2, '', $3)",
                    )
                    .bind(d)
                    .bind(n)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                    for s in rec.scram {
                        sqlx::query("INSERT INTO scram_credentials (domain, username, mechanism, salt, iterations, stored_key, server_key) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                            .bind(d)
                            .bind(n)
                            .bind(&s.mechanism)
                            .bind(&s.salt)
                            .bind(s.iterations as $iter)
                            .bind(&s.stored_key)
                            .bind(&s.server_key)
                            .execute(&mut *tx)
                            .await?;
                    }
                    c.accounts.created += 1;
                }

                // The roster: each row compared, the version bumped once.
                let q = format!("SELECT {COLUMNS}, pending_nick, pending_status FROM roster_items WHERE domain = $1 AND username = $2 AND contact = $3");
                for r in &u.roster {
                    let req = u
                        .requests
                        .iter()
                        .find(|(who, _)| *who == r.contact)
                        .map(|(_, req)| req.clone())
                        .unwrap_or_default();
                    let old: Option<(String, Option<String>, String, bool, bool, bool, bool, String, Option<String>, Option<String>)> =
                        sqlx::query_as(&q).bind(d).bind(n).bind(&r.contact).fetch_optional(&mut *tx).await?;
                    let same = old.as_ref().is_some_and(|o| {
                        let row: RosterRow = (o.0.clone(), o.1.clone(), o.2.clone(), o.3, o.4, o.5, o.6, o.7.clone());
                        from_row(row) == *r
                            && SubscriptionRequest { nick: o.8.clone(), status: o.9.clone() } == req
                    });
                    if same {
                        c.roster.unchanged += 1;
                        continue;
                    }
                    sqlx::query(
                        "INSERT INTO roster_items (domain, username, contact, name, subscription, ask_out, pending, approved, in_roster, groups, pending_nick, pending_status) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                         ON CONFLICT (domain, username, contact) DO UPDATE SET name = excluded.name, \
                         subscription = excluded.subscription, ask_out = excluded.ask_out, pending = excluded.pending, \
                         approved = excluded.approved, in_roster = excluded.in_roster, groups = excluded.groups, \
                         pending_nick = excluded.pending_nick, pending_status = excluded.pending_status, pending_in = NULL",
                    )
                    .bind(d)
                    .bind(n)
                    .bind(&r.contact)
                    .bind(&r.name)
                    .bind(&r.subscription)
                    .bind(r.ask_out)
                    .bind(r.pending_in)
                    .bind(r.approved)
                    .bind(r.in_roster)
                    .bind(r.groups.join("\n"))
                    .bind(&req.nick)
                    .bind(&req.status)
                    .execute(&mut *tx)
                    .await?;
                    if old.is_some() {
                        c.roster.changed += 1;
                    } else {
                        c.roster.created += 1;
                    }
                }
                if c.roster.created + c.roster.changed > 0 {
                    sqlx::query(
                        "INSERT INTO roster_versions (domain, username, version) VALUES ($1, $2, 1) \
                         ON CONFLICT (domain, username) DO UPDATE SET version = roster_versions.version + 1",
                    )
                    .bind(d)
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
                }

                // vCard and private XML: documents of the key-value store.
                if let Some(v) = &u.vcard {
                    put_doc!(tx, d, n, "vcard", v, c.vcards);
                }
                for (ns, xml) in &u.private {
                    let key = crate::modules::private::key(ns);
                    put_doc!(tx, d, n, &key, xml, c.private);
                }

                // Offline messages: the same stanza is not stored twice.
                for m in &u.offline {
                    let (k,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM offline_messages WHERE domain = $1 AND username = $2 AND stanza = $3",
                    )
                    .bind(d)
                    .bind(n)
                    .bind(m)
                    .fetch_one(&mut *tx)
                    .await?;
                    if k > 0 {
                        c.offline.unchanged += 1;
                        continue;
                    }
                    sqlx::query("INSERT INTO offline_messages (domain, username, stanza) VALUES ($1, $2, $3)")
                        .bind(d)
                        .bind(n)
                        .bind(m)
                        .execute(&mut *tx)
                        .await?;
                    c.offline.created += 1;
                }

                // PEP nodes, their items, affiliations and subscriptions.
                for node in &u.pep {
                    let old: Option<(String,)> = sqlx::query_as(
                        "SELECT config FROM pubsub_nodes WHERE domain = $1 AND username = $2 AND node = $3",
                    )
                    .bind(d)
                    .bind(n)
                    .bind(&node.node)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let config = node
                        .config
                        .clone()
                        .unwrap_or_else(|| crate::pubsub::config::NodeConfig::default().to_text());
                    match old {
                        None => {
                            sqlx::query("INSERT INTO pubsub_nodes (domain, username, node, config) VALUES ($1, $2, $3, $4)")
                                .bind(d)
                                .bind(n)
                                .bind(&node.node)
                                .bind(&config)
                                .execute(&mut *tx)
                                .await?;
                            c.pep_nodes.created += 1;
                        }
                        Some((old,)) if node.config.is_some() && old != config => {
                            sqlx::query("UPDATE pubsub_nodes SET config = $4 WHERE domain = $1 AND username = $2 AND node = $3")
                                .bind(d)
                                .bind(n)
                                .bind(&node.node)
                                .bind(&config)
                                .execute(&mut *tx)
                                .await?;
                            c.pep_nodes.changed += 1;
                        }
                        Some(_) => c.pep_nodes.unchanged += 1,
                    }
                    for (id, payload) in &node.items {
                        let old: Option<(String, String)> = sqlx::query_as(
                            "SELECT publisher, payload FROM pubsub_items WHERE domain = $1 AND username = $2 AND node = $3 AND item_id = $4",
                        )
                        .bind(d)
                        .bind(n)
                        .bind(&node.node)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if old.as_ref().is_some_and(|(_, p)| p == payload) {
                            c.pep_items.unchanged += 1;
                            continue;
                        }
                        sqlx::query("DELETE FROM pubsub_items WHERE domain = $1 AND username = $2 AND node = $3 AND item_id = $4")
                            .bind(d)
                            .bind(n)
                            .bind(&node.node)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("INSERT INTO pubsub_items (domain, username, node, item_id, publisher, payload) VALUES ($1, $2, $3, $4, $5, $6)")
                            .bind(d)
                            .bind(n)
                            .bind(&node.node)
                            .bind(id)
                            .bind(&own)
                            .bind(payload)
                            .execute(&mut *tx)
                            .await?;
                        if old.is_some() {
                            c.pep_items.changed += 1;
                        } else {
                            c.pep_items.created += 1;
                        }
                    }
                    for (jid, aff) in &node.affiliations {
                        sqlx::query("INSERT INTO pubsub_affiliations (domain, username, node, jid, affiliation) VALUES ($1, $2, $3, $4, $5) \
                                     ON CONFLICT (domain, username, node, jid) DO UPDATE SET affiliation = excluded.affiliation")
                            .bind(d)
                            .bind(n)
                            .bind(&node.node)
                            .bind(jid)
                            .bind(aff)
                            .execute(&mut *tx)
                            .await?;
                    }
                    for jid in &node.subscriptions {
                        sqlx::query("INSERT INTO pubsub_subscriptions (domain, username, node, jid) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                            .bind(d)
                            .bind(n)
                            .bind(&node.node)
                            .bind(jid)
                            .execute(&mut *tx)
                            .await?;
                    }
                }

                // The blocklist: the union of what is stored and what is imported.
                if !u.blocklist.is_empty() {
                    let old: Option<(String,)> = sqlx::query_as(
                        "SELECT value FROM user_data WHERE domain = $1 AND username = $2 AND key = 'blocklist'",
                    )
                    .bind(d)
                    .bind(n)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let mut set: BTreeSet<String> = old
                        .as_ref()
                        .map(|(v,)| v.lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
                        .unwrap_or_default();
                    for j in &u.blocklist {
                        if set.insert(j.clone()) {
                            c.blocklist.created += 1;
                        } else {
                            c.blocklist.unchanged += 1;
                        }
                    }
                    if c.blocklist.created > 0 {
                        let value = set.into_iter().collect::<Vec<_>>().join("\n");
                        sqlx::query(
                            "INSERT INTO user_data (domain, username, key, value) VALUES ($1, $2, 'blocklist', $3) \
                             ON CONFLICT (domain, username, key) DO UPDATE SET value = excluded.value",
                        )
                        .bind(d)
                        .bind(n)
                        .bind(value)
                        .execute(&mut *tx)
                        .await?;
                    }
                }

                // The archive: rows keyed by their (deterministic) ids.
                if !u.archive.is_empty() {
                    sqlx::query("INSERT INTO archive_owners (kind, domain, username, n) VALUES ($1, $2, $3, 0) ON CONFLICT (kind, domain, username) DO NOTHING")
                        .bind(super::ArchiveKind::User as i16)
                        .bind(d)
                        .bind(n)
                        .execute(&mut *tx)
                        .await?;
                    let (owner,): (i64,) = sqlx::query_as(
                        "SELECT owner_id FROM archive_owners WHERE kind = $1 AND domain = $2 AND username = $3",
                    )
                    .bind(super::ArchiveKind::User as i16)
                    .bind(d)
                    .bind(n)
                    .fetch_one(&mut *tx)
                    .await?;
                    let mut fresh: Vec<BlockInput<'_>> = Vec::new();
                    for (m, id) in u.archive.iter().zip(rec.archive_ids) {
                        let m: &ArchivedMessage = m;
                        let holding: Vec<(Vec<u8>,)> = sqlx::query_as(
                            "SELECT rows FROM archive_blocks WHERE owner_id = $1 \
                             AND first_id >= $2 AND first_id <= $3 AND last_id >= $3",
                        )
                        .bind(owner)
                        .bind(block::floor_for(id))
                        .bind(id)
                        .fetch_all(&mut *tx)
                        .await?;
                        let mut known = false;
                        for (bytes,) in &holding {
                            known |= block::decode(bytes)?.iter().any(|r| r.id == id);
                        }
                        if known || fresh.iter().any(|f| f.row.id == id) {
                            c.archive.unchanged += 1;
                            continue;
                        }
                        fresh.push(BlockInput {
                            owner_id: owner,
                            peer: &m.peer,
                            row: RowView {
                                id,
                                ts: m.ts,
                                resource: &m.resource,
                                outgoing: m.outgoing,
                                payload: &m.payload,
                                own_resource: None,
                            },
                            encoded: None,
                        });
                    }
                    let added = fresh.len() as i64;
                    let blocks = block::build(&fresh);
                    $insert(&mut tx, &blocks, false).await?;
                    c.archive.created += added as u64;
                    if added > 0 {
                        sqlx::query("UPDATE archive_owners SET n = n + $2 WHERE owner_id = $1")
                            .bind(owner)
                            .bind(added)
                            .execute(&mut *tx)
                            .await?;
                    }
                }

                if dry_run {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                }
            }};
        }
        match self {
            Store::Sqlite(pool) => run!(pool, i64, insert_blocks_sqlite),
            Store::Postgres(pool) => run!(pool, i32, insert_blocks_postgres),
        }
        Ok(c)
    }

    /// Everything of one account that `ctl export` writes (the PIE shape),
    /// or None if there is no such account.
    pub async fn export_user(
        &self,
        domain: &str,
        username: &str,
    ) -> Result<Option<PieUser>, StorageError> {
        if !self.account_exists(domain, username).await? {
            return Ok(None);
        }
        let mut u = PieUser {
            host: domain.to_string(),
            name: username.to_string(),
            ..PieUser::default()
        };
        for mech in ["SHA-1", "SHA-256", "SHA-512"] {
            if let Some(s) = self.scram_credentials(domain, username, mech).await? {
                u.scram.push(s);
            }
        }
        let q = format!(
            "SELECT {COLUMNS}, pending_nick, pending_status FROM roster_items \
             WHERE domain = $1 AND username = $2 ORDER BY contact"
        );
        type Row = (
            String,
            Option<String>,
            String,
            bool,
            bool,
            bool,
            bool,
            String,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = on_pool!(self, pool => {
            sqlx::query_as(&q).bind(domain).bind(username).fetch_all(pool).await?
        });
        for o in rows {
            let rec = from_row((o.0, o.1, o.2, o.3, o.4, o.5, o.6, o.7));
            if rec.pending_in {
                u.requests.push((
                    rec.contact.clone(),
                    SubscriptionRequest {
                        nick: o.8,
                        status: o.9,
                    },
                ));
            }
            u.roster.push(rec);
        }
        u.vcard = self.user_data_get(domain, username, "vcard").await?;
        let docs: Vec<(String, String)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT key, value FROM user_data WHERE domain = $1 AND username = $2 AND key LIKE 'private:%' ORDER BY key")
                .bind(domain).bind(username).fetch_all(pool).await?
        });
        u.private = docs
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches("private:").to_string(), v))
            .collect();
        let offline: Vec<(String,)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT stanza FROM offline_messages WHERE domain = $1 AND username = $2 ORDER BY id")
                .bind(domain).bind(username).fetch_all(pool).await?
        });
        u.offline = offline.into_iter().map(|(s,)| s).collect();
        for (node, config) in self.pubsub_nodes(domain, username).await? {
            let items: Vec<(String, String)> = on_pool!(self, pool => {
                sqlx::query_as("SELECT item_id, payload FROM pubsub_items WHERE domain = $1 AND username = $2 AND node = $3 ORDER BY id")
                    .bind(domain).bind(username).bind(&node).fetch_all(pool).await?
            });
            let affiliations: Vec<(String, String)> = on_pool!(self, pool => {
                sqlx::query_as("SELECT jid, affiliation FROM pubsub_affiliations WHERE domain = $1 AND username = $2 AND node = $3 ORDER BY jid")
                    .bind(domain).bind(username).bind(&node).fetch_all(pool).await?
            });
            let subscriptions: Vec<(String,)> = on_pool!(self, pool => {
                sqlx::query_as("SELECT jid FROM pubsub_subscriptions WHERE domain = $1 AND username = $2 AND node = $3 ORDER BY jid")
                    .bind(domain).bind(username).bind(&node).fetch_all(pool).await?
            });
            u.pep.push(crate::migrate::pie::PepNode {
                node,
                config: Some(config),
                items,
                affiliations,
                subscriptions: subscriptions.into_iter().map(|(j,)| j).collect(),
            });
        }
        if let Some(b) = self.user_data_get(domain, username, "blocklist").await? {
            u.blocklist = b
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
        }
        let owner = super::ArchiveOwner {
            kind: super::ArchiveKind::User,
            domain: domain.to_string(),
            username: username.to_string(),
        };
        u.archive = self
            .archive_all(&owner)
            .await?
            .into_iter()
            .map(|(peer, a)| ArchivedMessage {
                id: a.id,
                ts: a.ts,
                peer,
                resource: a.resource,
                outgoing: a.outgoing,
                payload: a.payload,
            })
            .collect();
        Ok(Some(u))
    }
}
