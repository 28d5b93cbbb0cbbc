//! What a persistent room writes, and when: a room that has just become
//! persistent (or was never written) is stored whole; after that only
//! what changed ([`Pending`] and `Room::dirty`) is written as a
//! [`RoomDelta`] — the room's row for its configuration or subject, one
//! row per changed affiliation, the vCard — so the cost of a change does
//! not grow with the room's member list.

use std::collections::HashSet;

use super::room::Room;
use crate::config::MucConfig;
use crate::server::Server;
use crate::storage::{AffiliationRow, RoomDelta, StoredRoom};

/// Rows of a stored room changed since its last write (besides its own
/// row, which `Room::dirty` stands for).
#[derive(Debug, Default)]
pub struct Pending {
    /// Bare JIDs whose affiliation (or remembered nick) changed.
    affiliations: HashSet<String>,
    /// The vCard changed.
    pub vcard: bool,
}

impl Pending {
    /// Notes that `jid`'s affiliation row changed.
    pub fn affiliation(&mut self, jid: &str) {
        if !self.affiliations.contains(jid) {
            self.affiliations.insert(jid.to_string());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.affiliations.is_empty() && !self.vcard
    }
}

/// A room read back from the database, with its nicks and vCard.
pub fn load(service: &str, stored: &StoredRoom, limits: &MucConfig) -> Option<Room> {
    let mut room = Room::from_stored(service, stored, limits)?;
    for (jid, nick) in &stored.nicks {
        if room.affiliations.contains_key(jid) {
            room.nicks.insert(jid, nick);
        }
    }
    if !stored.vcard.is_empty() {
        room.avatar = super::avatar::RoomAvatar::from_stored(&stored.vcard);
    }
    Some(room)
}

/// Everything the database keeps of the room.
fn whole(room: &Room) -> StoredRoom {
    let mut stored = room.to_stored();
    stored.nicks = room
        .nicks
        .iter()
        .map(|(j, n)| (j.clone(), n.clone()))
        .collect();
    stored.vcard = room
        .avatar
        .as_ref()
        .map(|a| a.vcard.clone())
        .unwrap_or_default();
    stored
}

/// What changed since the last write.
fn delta(room: &Room) -> RoomDelta {
    let row = room.dirty.then(|| {
        (
            room.stored_config(),
            room.subject.text.clone(),
            room.subject.by.clone(),
        )
    });
    let affiliations = room
        .pending
        .affiliations
        .iter()
        .map(|jid| AffiliationRow {
            jid: jid.clone(),
            now: room.affiliations.get(jid).map(|(a, reason)| {
                let nick = room.nicks.get(jid).unwrap_or_default().to_string();
                (a.as_str().to_string(), reason.clone(), nick)
            }),
        })
        .collect();
    let vcard = room.pending.vcard.then(|| {
        room.avatar
            .as_ref()
            .map(|a| a.vcard.clone())
            .unwrap_or_default()
    });
    RoomDelta {
        row,
        affiliations,
        vcard,
    }
}

/// Writes a persistent, configured room's changes: whole the first
/// time, then only what changed. On failure the changes stay pending
/// and go with the next write. `fence`: this node's lease on the room
/// (cluster); true when the write was refused because another node holds
/// a newer one.
pub async fn write(server: &Server, room: &mut Room, fence: Option<i64>) -> bool {
    let service = room.jid.domain().as_str().to_string();
    let name = room.jid.node().map(|n| n.to_string()).unwrap_or_default();
    let result = if !room.stored {
        server
            .store
            .muc_save_room(&service, &whole(room), fence)
            .await
    } else if room.dirty || !room.pending.is_empty() {
        server
            .store
            .muc_save_delta(&service, &name, &delta(room), fence)
            .await
    } else {
        return false;
    };
    match result {
        Ok(()) => {
            room.stored = true;
            room.dirty = false;
            room.pending = Pending::default();
            false
        }
        Err(crate::storage::StorageError::Fenced(_)) => true,
        Err(e) => {
            tracing::error!(error = %e, room = %room.jid, "muc: storing a room");
            false
        }
    }
}

/// Remembers the nick an affiliated user is in the room under, so a
/// mention finds them while they are away; a change is one row.
pub fn remember_nick(room: &mut Room, real: &str, nick: &str) {
    if !room.affiliations.contains_key(real) {
        return;
    }
    if room.nicks.get(real) != Some(nick) {
        room.nicks.insert(real, nick);
        room.pending.affiliation(real);
    }
}
