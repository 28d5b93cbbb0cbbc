//! Persistent multi-user chat rooms (XEP-0045): configuration, subject and
//! affiliations. The room's live state is owned by the chat service's
//! task; this is only what must outlive a restart, written whole when it
//! changes (a room's rows are few, and changes are admin actions).

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
}

impl Store {
    /// Every persistent room of a service, with its affiliations.
    pub async fn muc_rooms(&self, service: &str) -> Result<Vec<StoredRoom>, StorageError> {
        const ROOMS: &str = "SELECT room, config, subject, subject_by FROM muc_rooms \
             WHERE service = $1 ORDER BY room";
        const AFFS: &str = "SELECT room, jid, affiliation, reason FROM muc_affiliations \
             WHERE service = $1 ORDER BY room, jid";
        let rooms: Vec<(String, String, String, String)> = on_pool!(self, pool => sqlx::query_as(ROOMS)
            .bind(service)
            .fetch_all(pool)
            .await?);
        let affs: Vec<(String, String, String, String)> = on_pool!(self, pool => sqlx::query_as(AFFS)
            .bind(service)
            .fetch_all(pool)
            .await?);
        let mut out: Vec<StoredRoom> = rooms
            .into_iter()
            .map(|(room, config, subject, subject_by)| StoredRoom {
                room,
                config,
                subject,
                subject_by,
                affiliations: Vec::new(),
            })
            .collect();
        for (room, jid, aff, reason) in affs {
            if let Ok(i) = out.binary_search_by(|r| r.room.as_str().cmp(room.as_str())) {
                out[i].affiliations.push((jid, aff, reason));
            }
        }
        Ok(out)
    }

    /// Writes a room whole (configuration, subject, affiliations) in one
    /// transaction, replacing what was stored.
    pub async fn muc_save_room(
        &self,
        service: &str,
        room: &StoredRoom,
    ) -> Result<(), StorageError> {
        const UPSERT: &str = "INSERT INTO muc_rooms (service, room, config, subject, subject_by) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (service, room) DO UPDATE SET \
             config = excluded.config, subject = excluded.subject, subject_by = excluded.subject_by";
        const CLEAR: &str = "DELETE FROM muc_affiliations WHERE service = $1 AND room = $2";
        const AFF: &str = "INSERT INTO muc_affiliations (service, room, jid, affiliation, reason) \
             VALUES ($1, $2, $3, $4, $5)";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(UPSERT)
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
                sqlx::query(AFF)
                    .bind(service)
                    .bind(&room.room)
                    .bind(jid)
                    .bind(aff)
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Forgets a room (destroyed, or no longer persistent).
    pub async fn muc_delete_room(&self, service: &str, room: &str) -> Result<(), StorageError> {
        const ROOM: &str = "DELETE FROM muc_rooms WHERE service = $1 AND room = $2";
        const AFFS: &str = "DELETE FROM muc_affiliations WHERE service = $1 AND room = $2";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(ROOM).bind(service).bind(room).execute(&mut *tx).await?;
            sqlx::query(AFFS).bind(service).bind(room).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }
}
