//! Which node serves a room, in a cluster (issue #16). A room's state
//! lives on one node at a time: the holder of its lease, which the
//! cluster keeps in Redis ([`RoomPlacement`], implemented by
//! `cluster::Cluster`). A stanza for a room reaches whichever node its
//! sender is attached to; the service there serves it when it holds the
//! lease, else hands it to the holder's inbox. A room nobody holds (new,
//! or its node died) is claimed by the first node that gets a stanza for
//! it, which loads it from the database.
//!
//! Each lease carries a fencing number, larger for every new lease; every
//! write of the room's rows carries it, and PostgreSQL refuses one below
//! the largest it has seen (`storage::muc`): a node paused past its
//! liveness, whose rooms were taken over meanwhile, cannot overwrite
//! what the new holder wrote. A refused write makes the node forget the
//! room.
//!
//! On a single server there is no placement: every room is served here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::room::Room;

use bytes::Bytes;
use futures_util::future::BoxFuture;

/// What the cluster offers the chat service.
pub trait RoomPlacement: Send + Sync {
    /// The room's lease: its holder's node and fencing number. Given to
    /// this node when no live node holds it, with a number larger than
    /// `at_least` (what the database last saw).
    fn claim<'a>(
        &'a self,
        room: &'a str,
        at_least: u64,
    ) -> BoxFuture<'a, Result<(String, u64), String>>;
    /// This node's id.
    fn node_id(&self) -> &str;
    /// Queues `stanza` (serialized, `jabber:client`) for the room's
    /// holder `node`; false when it could not be queued (the bus's
    /// outbox is full).
    fn hand_to(&self, node: &str, room: &str, stanza: Bytes) -> bool;
    /// Changes whenever this node learns that a node is gone: the holders
    /// it remembered may be dead.
    fn departures(&self) -> u64;
    /// Changes whenever this node fenced itself (it could not refresh
    /// its liveness for a whole TTL): its leases may have been taken.
    fn fences(&self) -> u64;
    /// Queues, in order, the records of a room's occupants that changed
    /// (`occupancy`: nick → the record, None when it left); `gone`
    /// (the fencing number of this node's lease) forgets the room: its
    /// records go, and its lease while it is still that one; `listing`
    /// changes the room's line in the cluster's room list (Some(None):
    /// removed).
    fn record(
        &self,
        room: &str,
        changes: Vec<(String, Option<Bytes>)>,
        gone: Option<u64>,
        listing: Option<Option<String>>,
    );
    /// The rooms listed on every node: (room JID, name).
    fn room_list(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, String>>;
    /// A room's records, for the node taking it over.
    fn records<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<(String, Bytes)>, String>>;
    /// Whether another live node holds this session.
    fn session_alive(&self, jid: &jid::FullJid) -> bool;
}

/// Where a room's stanza is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Here; `true` when the lease was taken just now (the room is to be
    /// loaded from the database).
    Here(bool),
    /// On that node.
    Elsewhere(Arc<str>),
}

/// The service's view of room leases.
pub struct Placement {
    remote: Arc<dyn RoomPlacement>,
    /// Rooms whose lease this node holds, with their fencing number.
    held: HashMap<String, u64>,
    /// Holders of other rooms, as last claimed; forgotten when a node
    /// goes (`departures`).
    elsewhere: HashMap<String, Arc<str>>,
    departures: u64,
    fences: u64,
    /// Held rooms whose occupants were all recorded once.
    recorded: HashSet<String>,
    /// Held rooms as this node last put them in the cluster's room
    /// list (name), so an unchanged room costs no write.
    listed: HashMap<String, String>,
    /// The cluster's room list as last read, and when.
    room_list: Option<(std::time::Instant, RoomList)>,
}

impl Placement {
    pub fn new(remote: Arc<dyn RoomPlacement>) -> Placement {
        Placement {
            departures: remote.departures(),
            fences: remote.fences(),
            remote,
            held: HashMap::new(),
            elsewhere: HashMap::new(),
            recorded: HashSet::new(),
            listed: HashMap::new(),
            room_list: None,
        }
    }

    /// The rooms this node must drop because it fenced itself since the
    /// last look (another node may hold them now); forgets their leases.
    pub fn lost(&mut self) -> Vec<String> {
        let fences = self.remote.fences();
        if fences == self.fences {
            return Vec::new();
        }
        self.fences = fences;
        self.elsewhere.clear();
        self.recorded.clear();
        self.listed.clear();
        self.held.drain().map(|(room, _)| room).collect()
    }

    /// Where `room` is served; claims it when no live node holds it.
    /// `at_least` is asked only then (the database's fencing number).
    pub async fn place<F>(&mut self, room: &str, at_least: F) -> Result<Place, String>
    where
        F: std::future::Future<Output = u64>,
    {
        if self.held.contains_key(room) {
            return Ok(Place::Here(false));
        }
        let departures = self.remote.departures();
        if departures != self.departures {
            self.departures = departures;
            self.elsewhere.clear();
        }
        if let Some(node) = self.elsewhere.get(room) {
            return Ok(Place::Elsewhere(node.clone()));
        }
        let at_least = at_least.await;
        let (node, fence) = self.remote.claim(room, at_least).await?;
        if node == self.remote.node_id() {
            self.held.insert(room.to_string(), fence);
            return Ok(Place::Here(true));
        }
        let node: Arc<str> = node.into();
        // Bounded by the rooms this node hears of; a burst of names nobody
        // uses again is forgotten whole rather than kept.
        if self.elsewhere.len() >= MAX_REMEMBERED {
            self.elsewhere.clear();
        }
        self.elsewhere.insert(room.to_string(), node.clone());
        Ok(Place::Elsewhere(node))
    }

    /// The fencing number of a room held here (writes carry it).
    pub fn fence(&self, room: &str) -> Option<i64> {
        self.held.get(room).map(|f| *f as i64)
    }

    /// Forgets a room held here: destroyed, left empty, or refused by the
    /// fencing check (another node holds it now).
    pub fn release(&mut self, room: &str) {
        self.held.remove(room);
        self.recorded.remove(room);
        self.listed.remove(room);
    }

    /// Records what a stanza changed in a room held here: its occupants
    /// announced (`touched`), and a temporary room's configuration and
    /// affiliations when they changed (a persistent one's are in the
    /// database).
    pub fn record_changes(&mut self, room: &Room, mut touched: HashSet<String>) {
        let key = room.jid.as_str();
        if !self.held.contains_key(key) || room.locked {
            return;
        }
        // The first record of a room (just unlocked, or taken over) has
        // every occupant: those who entered while it was locked too.
        if !self.recorded.contains(key) {
            self.recorded.insert(key.to_string());
            touched.extend(room.occupants.keys().cloned());
        }
        // A temporary room's own record goes with any change to it, so
        // the first one after it is unlocked writes it.
        let own_changed = room.dirty || !room.pending.is_empty() || !touched.is_empty();
        let mut changes = super::occupancy::changes(room, touched);
        if !room.config.persistent && own_changed {
            let own = super::occupancy::encode_room(&room.to_stored());
            changes.push((super::occupancy::ROOM_FIELD.to_string(), Some(own)));
        }
        let listing = self.listing_change(room);
        if !changes.is_empty() || listing.is_some() {
            self.remote.record(key, changes, None, listing);
        }
    }

    /// The room's line in the cluster's room list, if it changed since
    /// this node last wrote it.
    fn listing_change(&mut self, room: &Room) -> Option<Option<String>> {
        // Every stanza of a held room asks: compared before anything is
        // copied.
        let key = room.jid.as_str();
        let listed = super::room_list::is_listed(room);
        let name = room.config.name.as_str();
        let unchanged = match self.listed.get(key) {
            Some(n) => listed && n == name,
            None => !listed,
        };
        if unchanged {
            return None;
        }
        if listed {
            self.listed.insert(key.to_string(), name.to_string());
            Some(Some(name.to_string()))
        } else {
            self.listed.remove(key);
            Some(None)
        }
    }

    /// Forgets a room held here (destroyed, left empty, or never made: a
    /// stanza for a name nobody uses): its records, its line in the room
    /// list and its lease go, so what Redis keeps follows the rooms that
    /// exist, not every name anyone sent a stanza to.
    pub fn forget(&mut self, room: &str) {
        if let Some(fence) = self.held.get(room) {
            self.remote
                .record(room, Vec::new(), Some(*fence), Some(None));
        }
        self.release(room);
    }

    /// The rooms listed on every node: (room JID, name). Read from Redis
    /// at most once a second (a flood of disco#items requests costs one
    /// read of the whole list per second, not one per request).
    pub async fn room_list(&mut self) -> Result<RoomList, String> {
        if let Some((at, list)) = &self.room_list {
            if at.elapsed() < std::time::Duration::from_secs(1) {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(self.remote.room_list().await?);
        self.room_list = Some((std::time::Instant::now(), list.clone()));
        Ok(list)
    }

    /// A room's records (the node taking it over reads them).
    pub async fn records(&self, room: &str) -> Result<Vec<(String, Bytes)>, String> {
        self.remote.records(room).await
    }

    /// Whether another live node holds the session.
    pub fn session_alive(&self, jid: &jid::FullJid) -> bool {
        self.remote.session_alive(jid)
    }

    /// Hands a stanza to the node serving its room.
    pub fn hand_to(&self, node: &str, room: &str, stanza: Bytes) -> bool {
        self.remote.hand_to(node, room, stanza)
    }
}

/// The cluster's room list: (room JID, name).
pub type RoomList = Arc<Vec<(String, String)>>;

/// Holders of other nodes' rooms remembered at most.
const MAX_REMEMBERED: usize = 100_000;
