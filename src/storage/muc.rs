//! Persistent multi-user chat rooms (XEP-0045): configuration, subject,
//! affiliations (with the nick each affiliated user last used) and the
//! room's vCard (XEP-0486). The room's live state is owned by the chat
//! service's task; this is only what must outlive a restart. A room is
//! written whole once, when it first becomes persistent; after that each
//! change writes only its own rows ([`RoomDelta`]), so one new member of
//! a 10,000-member room is one upsert, not 10,000 inserts.

use super::{StorageError, Store};

/// A persistent room as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredRoom {
    /// The room's name (the node of its JID).
    pub room: String,
    /// The configuration, one `var=value` a line.
    pub config: String,
    pub subject: String,
    /// The nick that set the subject ('' = the room itself).
    pub subject_by: String,
    /// (bare JID, affiliation, reason).
    pub affiliations: Vec<(String, String, String)>,
    /// (bare JID, nick) of affiliated users who entered the room.
    pub nicks: Vec<(String, String)>,
    /// The room's vCard, serialized ('' = none).
    pub vcard: String,
}

/// One affiliation row as it is now: `None` = the user has none (the row
/// goes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffiliationRow {
    pub jid: String,
    /// (affiliation, reason, nick).
    pub now: Option<(String, String, String)>,
}

/// What changed in a stored room since it was last written.
#[derive(Debug, Clone, Default)]
pub struct RoomDelta {
    /// The room's row (configuration, subject, subject's author).
    pub row: Option<(String, String, String)>,
    pub affiliations: Vec<AffiliationRow>,
    /// The vCard: `Some("")` removes it.
    pub vcard: Option<String>,
}

impl RoomDelta {
    pub fn is_empty(&self) -> bool {
        self.row.is_none() && self.affiliations.is_empty() && self.vcard.is_none()
    }
}

const UPSERT_ROOM: &str = "INSERT INTO muc_rooms (service, room, config, subject, subject_by) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (service, room) DO UPDATE SET \
     config = excluded.config, subject = excluded.subject, subject_by = excluded.subject_by";
const UPSERT_AFF: &str =
    "INSERT INTO muc_affiliations (service, room, jid, affiliation, reason, nick) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (service, room, jid) DO UPDATE SET \
     affiliation = excluded.affiliation, reason = excluded.reason, nick = excluded.nick";
const DELETE_AFF: &str =
    "DELETE FROM muc_affiliations WHERE service = $1 AND room = $2 AND jid = $3";
const UPSERT_VCARD: &str = "INSERT INTO muc_vcards (service, room, vcard) VALUES ($1, $2, $3) \
     ON CONFLICT (service, room) DO UPDATE SET vcard = excluded.vcard";
const DELETE_VCARD: &str = "DELETE FROM muc_vcards WHERE service = $1 AND room = $2";
/// Raises the room's fencing number to the writer's, or returns no row
/// when the stored one is larger: the writer's lease is stale.
const RAISE_FENCE: &str = "INSERT INTO muc_fences (service, room, fence) VALUES ($1, $2, $3) \
     ON CONFLICT (service, room) DO UPDATE SET fence = excluded.fence \
     WHERE muc_fences.fence <= excluded.fence RETURNING fence";

/// The first statement of a room's write transaction in cluster mode
/// (`fence` is the writer's lease number; `None` on a single server):
/// a writer whose lease another node has replaced is refused, and the
/// transaction rolled back with nothing written.
macro_rules! check_fence {
    ($tx:expr, $service:expr, $room:expr, $fence:expr) => {
        if let Some(fence) = $fence {
            let raised: Option<(i64,)> = sqlx::query_as(RAISE_FENCE)
                .bind($service)
                .bind($room)
                .bind(fence)
                .fetch_optional(&mut *$tx)
                .await?;
            if raised.is_none() {
                return Err(StorageError::Fenced(format!(
                    "room {}@{}: lease {fence} is stale",
                    $room, $service
                )));
            }
        }
    };
}

impl Store {
    /// Every persistent room of a service, with its affiliations, nicks
    /// and vCard.
    pub async fn muc_rooms(&self, service: &str) -> Result<Vec<StoredRoom>, StorageError> {
        self.load_rooms(service, "").await
    }

    /// One persistent room, if stored (a cluster node loads a room when
    /// it takes it over).
    pub async fn muc_room(
        &self,
        service: &str,
        room: &str,
    ) -> Result<Option<StoredRoom>, StorageError> {
        if room.is_empty() {
            return Ok(None);
        }
        Ok(self.load_rooms(service, room).await?.pop())
    }

    /// The room's fencing number as last written (0: never written in
    /// cluster mode). A new lease must be larger.
    pub async fn muc_fence(&self, service: &str, room: &str) -> Result<i64, StorageError> {
        const FENCE: &str = "SELECT fence FROM muc_fences WHERE service = $1 AND room = $2";
        let row: Option<(i64,)> = on_pool!(self, pool => sqlx::query_as(FENCE)
            .bind(service)
            .bind(room)
            .fetch_optional(pool)
            .await?);
        Ok(row.map(|r| r.0).unwrap_or(0))
    }

    /// The rooms of `service`: all of them when `only` is empty, else
    /// that one.
    async fn load_rooms(&self, service: &str, only: &str) -> Result<Vec<StoredRoom>, StorageError> {
        const ROOMS: &str = "SELECT room, config, subject, subject_by FROM muc_rooms \
             WHERE service = $1 AND ($2 = '' OR room = $2) ORDER BY room";
        const AFFS: &str = "SELECT room, jid, affiliation, reason, nick FROM muc_affiliations \
             WHERE service = $1 AND ($2 = '' OR room = $2) ORDER BY room, jid";
        const VCARDS: &str =
            "SELECT room, vcard FROM muc_vcards WHERE service = $1 AND ($2 = '' OR room = $2)";
        let rooms: Vec<(String, String, String, String)> = on_pool!(self, pool => sqlx::query_as(ROOMS)
            .bind(service)
            .bind(only)
            .fetch_all(pool)
            .await?);
        let affs: Vec<(String, String, String, String, String)> = on_pool!(self, pool => sqlx::query_as(AFFS)
            .bind(service)
            .bind(only)
            .fetch_all(pool)
            .await?);
        let vcards: Vec<(String, String)> = on_pool!(self, pool => sqlx::query_as(VCARDS)
            .bind(service)
            .bind(only)
            .fetch_all(pool)
            .await?);
        let mut out: Vec<StoredRoom> = rooms
            .into_iter()
            .map(|(room, config, subject, subject_by)| StoredRoom {
                room,
                config,
                subject,
                subject_by,
                ..StoredRoom::default()
            })
            .collect();
        let find = |out: &[StoredRoom], room: &str| {
            out.binary_search_by(|r| r.room.as_str().cmp(room)).ok()
        };
        for (room, jid, aff, reason, nick) in affs {
            if let Some(i) = find(&out, &room) {
                if !nick.is_empty() {
                    out[i].nicks.push((jid.clone(), nick));
                }
                out[i].affiliations.push((jid, aff, reason));
            }
        }
        for (room, vcard) in vcards {
            if let Some(i) = find(&out, &room) {
                out[i].vcard = vcard;
            }
        }
        Ok(out)
    }

    /// Writes a room whole (configuration, subject, affiliations, vCard)
    /// in one transaction, replacing what was stored: for a room that
    /// has just become persistent. `fence`: the writer's lease (cluster).
    pub async fn muc_save_room(
        &self,
        service: &str,
        room: &StoredRoom,
        fence: Option<i64>,
    ) -> Result<(), StorageError> {
        const CLEAR: &str = "DELETE FROM muc_affiliations WHERE service = $1 AND room = $2";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            check_fence!(tx, service, &room.room, fence);
            sqlx::query(UPSERT_ROOM)
                .bind(service)
                .bind(&room.room)
                .bind(&room.config)
                .bind(&room.subject)
                .bind(&room.subject_by)
                .execute(&mut *tx)
                .await?;
            sqlx::query(CLEAR)
                .bind(service)
                .bind(&room.room)
                .execute(&mut *tx)
                .await?;
            for (jid, aff, reason) in &room.affiliations {
                let nick = room
                    .nicks
                    .iter()
                    .find(|(j, _)| j == jid)
                    .map(|(_, n)| n.as_str())
                    .unwrap_or("");
                sqlx::query(UPSERT_AFF)
                    .bind(service)
                    .bind(&room.room)
                    .bind(jid)
                    .bind(aff)
                    .bind(reason)
                    .bind(nick)
                    .execute(&mut *tx)
                    .await?;
            }
            let vcard_sql = if room.vcard.is_empty() { DELETE_VCARD } else { UPSERT_VCARD };
            let mut q = sqlx::query(vcard_sql).bind(service).bind(&room.room);
            if !room.vcard.is_empty() {
                q = q.bind(&room.vcard);
            }
            q.execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Writes what changed in a stored room, in one transaction: the
    /// room's row, one upsert or delete per changed affiliation, the
    /// vCard. `fence`: the writer's lease (cluster).
    pub async fn muc_save_delta(
        &self,
        service: &str,
        room: &str,
        delta: &RoomDelta,
        fence: Option<i64>,
    ) -> Result<(), StorageError> {
        if delta.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            check_fence!(tx, service, room, fence);
            if let Some((config, subject, subject_by)) = &delta.row {
                sqlx::query(UPSERT_ROOM)
                    .bind(service)
                    .bind(room)
                    .bind(config)
                    .bind(subject)
                    .bind(subject_by)
                    .execute(&mut *tx)
                    .await?;
            }
            for a in &delta.affiliations {
                match &a.now {
                    Some((aff, reason, nick)) => {
                        sqlx::query(UPSERT_AFF)
                            .bind(service)
                            .bind(room)
                            .bind(&a.jid)
                            .bind(aff)
                            .bind(reason)
                            .bind(nick)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None => {
                        sqlx::query(DELETE_AFF)
                            .bind(service)
                            .bind(room)
                            .bind(&a.jid)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            match delta.vcard.as_deref() {
                None => {}
                Some("") => {
                    sqlx::query(DELETE_VCARD).bind(service).bind(room).execute(&mut *tx).await?;
                }
                Some(v) => {
                    sqlx::query(UPSERT_VCARD)
                        .bind(service)
                        .bind(room)
                        .bind(v)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Forgets a room (destroyed, or no longer persistent); its fencing
    /// number stays. `fence`: the writer's lease (cluster).
    pub async fn muc_delete_room(
        &self,
        service: &str,
        room: &str,
        fence: Option<i64>,
    ) -> Result<(), StorageError> {
        const ROOM: &str = "DELETE FROM muc_rooms WHERE service = $1 AND room = $2";
        const AFFS: &str = "DELETE FROM muc_affiliations WHERE service = $1 AND room = $2";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            check_fence!(tx, service, room, fence);
            sqlx::query(ROOM).bind(service).bind(room).execute(&mut *tx).await?;
            sqlx::query(AFFS).bind(service).bind(room).execute(&mut *tx).await?;
            sqlx::query(DELETE_VCARD).bind(service).bind(room).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The secret stored under `name`, made from `fresh` the first time
    /// (whoever stores first wins; every caller gets that one).
    pub async fn server_secret(&self, name: &str, fresh: &str) -> Result<String, StorageError> {
        const INSERT: &str =
            "INSERT INTO server_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
        const SELECT: &str = "SELECT secret FROM server_secrets WHERE name = $1";
        let secret: (String,) = on_pool!(self, pool => {
            sqlx::query(INSERT).bind(name).bind(fresh).execute(pool).await?;
            sqlx::query_as(SELECT).bind(name).fetch_one(pool).await?
        });
        Ok(secret.0)
    }
}
