//! The chat service's side of the cluster (`modules::muc::placement`):
//! room leases in Redis (`RoomDirectory`), and a room's stanzas handed
//! to the node holding its lease through that node's inbox (field `m`),
//! counted against the outbox's byte bound like any stanza.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::bus::{Delivery, RoomRecords};
use super::{Cluster, OutMsg};
use crate::modules::muc::placement::RoomPlacement;
use crate::server::Server;

impl RoomPlacement for Cluster {
    fn claim<'a>(
        &'a self,
        room: &'a str,
        at_least: u64,
    ) -> BoxFuture<'a, Result<(String, u64), String>> {
        self.engine.claim_room(room, &self.node, at_least)
    }

    fn node_id(&self) -> &str {
        &self.node
    }

    fn hand_to(&self, node: &str, room: &str, stanza: Bytes) -> bool {
        let size = stanza.len();
        if !self.reserve(size) {
            return false;
        }
        let entry = OutMsg::Entry(node.into(), room.to_string(), Delivery::Room(stanza));
        if self.outbox.try_send(entry).is_err() {
            self.outbox_bytes.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn departures(&self) -> u64 {
        self.replica.departures()
    }

    fn fences(&self) -> u64 {
        self.fence_count.load(Ordering::Acquire)
    }

    fn record(
        &self,
        room: &str,
        changes: Vec<(String, Option<Bytes>)>,
        gone: Option<u64>,
        listing: Option<Option<String>>,
    ) {
        let records = RoomRecords {
            room: room.to_string(),
            changes,
            gone,
            listing,
        };
        if self
            .room_records
            .try_send(RecordMsg::Write(records))
            .is_err()
        {
            // Redis slow or away for long: a node taking the room over
            // would find an older list (occupants that left reappear
            // until their next stanza fails; new ones are missing).
            tracing::warn!(
                room,
                "cluster: room records queue full; a change not recorded"
            );
        }
    }

    fn records<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<(String, Bytes)>, String>> {
        self.engine.room_records(room)
    }

    fn room_list(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, String>> {
        self.engine.room_list()
    }

    fn session_alive(&self, jid: &jid::FullJid) -> bool {
        self.replica.node_of(jid).is_some()
    }
}

/// Writes rooms' occupant records in the order they were queued, in
/// pipelined batches; retried with a back-off while Redis is away.
pub(super) async fn write_records(
    cluster: std::sync::Arc<Cluster>,
    mut rx: tokio::sync::mpsc::Receiver<RecordMsg>,
) {
    let mut batch = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                RecordMsg::Write(r) => batch.push(r),
                RecordMsg::Flush(done) => flushes.push(done),
            }
            next = if batch.len() < 256 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let mut attempt = 0;
        while !batch.is_empty() {
            match cluster
                .engine
                .write_room_records(&cluster.node, &batch)
                .await
            {
                Ok(()) => batch.clear(),
                Err(e) => {
                    tracing::warn!(error = %e, rooms = batch.len(), "cluster: room records not written; retrying");
                    if !super::backoff(&cluster.stop, &mut attempt).await {
                        return;
                    }
                }
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// What the room records writer is handed.
pub(super) enum RecordMsg {
    Write(RoomRecords),
    /// Answered once everything before it is written (at leave).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A stanza for a room, from the inbox (its sender's node thought this
/// node held the room) or handed back by the outbox (the holder was not
/// alive): given to the local chat service, which serves it if it holds
/// the lease or can take it, else hands it on to the holder.
pub(super) fn to_room_service(server: &Server, room: &str, bytes: Bytes) {
    let stanza = crate::sessions::OutStanza::serialized(bytes);
    let (Some(element), Ok(to)) = (stanza.element(), jid::BareJid::new(room)) else {
        tracing::warn!(room, "cluster: unreadable stanza for a room dropped");
        return;
    };
    let crate::routes::Route::Service(i) = server.route(to.domain().as_str()) else {
        tracing::warn!(
            room,
            "cluster: a stanza for a room of a service not served here dropped"
        );
        return;
    };
    if let Err(e) = server.features.deliver_to_service(i, server, element) {
        // The service's queue is full: as for a stanza from a local
        // session, the sender hears of it.
        tracing::debug!(room, error = ?e, "cluster: a stanza for a room not queued");
        let error: crate::stanza::StanzaError =
            crate::stanza::StanzaErrorCondition::ResourceConstraint.into();
        if let Some(reply) = error.reply_to(element) {
            crate::router::deliver_bounce(server, &reply);
        }
    }
}

/// The reaper's part for rooms: every room the dead `node` held is handed
/// to this node's chat service, which takes it over now (its dead
/// occupants leave within the liveness TTL, not at the room's next
/// stanza). All go to the reaper's node; rooms spread again as nodes
/// restart and take new ones.
pub(super) async fn adopt_rooms_of(server: &Server, cluster: &Cluster, node: &str) {
    let rooms = match cluster.engine.take_node_rooms(node).await {
        Ok(r) => r,
        Err(e) => {
            // Each is taken over at its next stanza instead.
            tracing::warn!(node, error = %e, "cluster: a dead node's rooms not listed");
            return;
        }
    };
    let Some(muc) = server.features.get::<crate::modules::muc::Muc>() else {
        return;
    };
    if !rooms.is_empty() {
        tracing::info!(
            node,
            rooms = rooms.len(),
            "cluster: taking over a dead node's rooms"
        );
    }
    for room in rooms {
        if let Err(e) = muc.control.adopt(room).await {
            tracing::warn!(node, error = %e, "cluster: a dead node's room not taken over");
            return;
        }
    }
}
