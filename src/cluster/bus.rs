//! What a cluster needs from the shared engine, as three small traits:
//! membership (liveness), the session directory, and the bus (change
//! events and one inbox per node). `redis.rs` implements them on Redis;
//! another engine (NATS) would implement the same three.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use jid::FullJid;

use crate::sessions::{Kept, ResourceState};

/// What the shared engine said when it failed (logged, then retried).
pub type BusResult<T> = Result<T, String>;

/// A change to the sessions of one node, written to the directory and
/// announced on the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `jid` is bound on `node`, in `state`.
    Bound {
        node: String,
        jid: FullJid,
        state: ResourceState,
        /// A new binding (not a presence or roster change of one): it
        /// takes the full JID from any other node (newest wins). Not
        /// carried on the bus: only the directory write needs it.
        claim: bool,
    },
    /// `jid` is no longer bound on `node`; `last_local` when `node` holds
    /// no other resource of its bare JID.
    Unbound {
        node: String,
        jid: FullJid,
        last_local: bool,
    },
    /// Every session of `node` is gone (it left, or died and was reaped).
    NodeDown { node: String },
    /// Not a session change, only announced: a node committed `what`
    /// (an offline message, a pending subscription request) to storage
    /// for `user`'s next available session while it knew of no resource
    /// to take it. A session of `user` that became available on another
    /// node just before may have read that storage before the commit
    /// (the storing node's replica did not show it yet); its node hands
    /// it over again (`Event::KeptForLater`).
    KeptForLater { user: String, what: Kept },
    /// `node` serves the external component `domain` now (`up`), or no
    /// longer.
    Component {
        node: String,
        domain: String,
        up: bool,
    },
}

/// What the directory did with one change (`SessionDirectory::apply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Written (an `Unbound`, `NodeDown` or `KeptForLater` is always
    /// reported so).
    Written,
    /// A `Bound` that took the full JID from another node: (that node,
    /// the id there of the session that must now be replaced).
    Displaced(String, u64),
    /// A `Bound` update (not a claim) of a full JID another node has
    /// claimed since: not written, the session here is being replaced.
    Stale,
}

/// What an inbox entry carries for its full JID.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// A stanza, serialized once by the sending node (`jabber:client`).
    Stanza(Bytes),
    /// The sending node bound a new session of the full JID: the
    /// receiving node's one with this session id is replaced (newest
    /// wins, as on one node); one bound there again since is not.
    Replaced(u64),
    /// An answer (result or error) to an IQ the receiving node sent; the
    /// entry's `to` is who answered (any JID), for its IQ tracker.
    Answer(Bytes),
    /// A request for a stream-managed session a client resumes on the
    /// sending node (`cluster::takeover`); `to` is the account.
    TakeOver(Bytes),
    /// The answer to a `TakeOver`: the session, or that it is not here.
    HandedOver(Bytes),
    /// A stanza for the external component `to` (a domain) connected to
    /// the receiving node, written for its stream.
    Component(Bytes),
    /// A stanza for the chat room `to` (a bare JID) whose lease the
    /// receiving node holds, as its sender's node received it.
    Room(Bytes),
    /// A stanza serialized without `to` (a room's broadcast), for the full
    /// JID `to`: the receiving node puts `to="…"` in at byte `at`. Records
    /// of one entry that share the bytes carry them once (`codec::pack`);
    /// the reader gets a `Stanza`.
    Unaddressed { stanza: Bytes, at: u32 },
}

impl Delivery {
    /// The stanza bytes it holds (what the outbox's byte bound counts).
    pub fn stanza_len(&self) -> usize {
        match self {
            Delivery::Stanza(b) | Delivery::Component(b) | Delivery::Room(b) => b.len(),
            Delivery::Unaddressed { stanza, .. } => stanza.len(),
            _ => 0,
        }
    }
}

/// One entry waiting in a node's inbox.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    /// The engine's id of the entry (acknowledged by it).
    pub id: String,
    /// The full JID it is for.
    pub to: String,
    pub delivery: Delivery,
}

/// A node as `ctl cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: String,
    /// Its liveness key is there.
    pub alive: bool,
    /// Sessions it held at its last refresh.
    pub sessions: usize,
    /// Chat rooms whose lease names it.
    pub rooms: usize,
}

/// Which nodes exist and which are alive (a liveness key with a TTL).
pub trait Membership: Send + Sync {
    /// Registers `node` (or refreshes it) as alive for `ttl_ms`; whether
    /// it was registered and alive before.
    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        ttl_ms: u64,
        sessions: usize,
    ) -> BoxFuture<'a, BusResult<bool>>;
    /// Is `node`'s liveness key there?
    fn is_alive<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<bool>>;
    /// Every registered node, alive or not.
    fn members(&self) -> BoxFuture<'_, BusResult<Vec<NodeStatus>>>;
    /// Takes a lock named `name` for `ttl_ms` unless someone holds it.
    fn try_lock<'a>(&'a self, name: &'a str, ttl_ms: u64) -> BoxFuture<'a, BusResult<bool>>;
    /// Removes `node` from the cluster (its liveness key and its entry).
    fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<()>>;
}

/// Which node holds which full JID, written by the owning node only.
pub trait SessionDirectory: Send + Sync {
    /// Writes `Bound`/`Unbound` changes (others are ignored), each
    /// atomically: a `Bound` claim takes the full JID from whichever node
    /// held it (reported as `Displaced`), a `Bound` update is written only
    /// while the full JID is this node's or nobody's (else `Stale`). One
    /// answer per change, in order.
    fn apply<'a>(&'a self, changes: &'a [Change]) -> BoxFuture<'a, BusResult<Vec<Applied>>>;
    /// Every session of every node, to rebuild a replica.
    fn snapshot(&self) -> BoxFuture<'_, BusResult<Vec<(String, FullJid, ResourceState)>>>;
    /// Removes and returns every session `node` held (a dead node's).
    fn take_node<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, BusResult<Vec<(FullJid, ResourceState)>>>;
}

/// Change events to every node, and one inbox of stanzas per node.
pub trait Bus: Send + Sync {
    /// Announces changes to every node.
    fn publish<'a>(&'a self, changes: &'a [Change]) -> BoxFuture<'a, BusResult<()>>;
    /// The changes announced from now on; the stream ends when the
    /// connection is lost (what was announced meanwhile is lost too, so
    /// the caller rebuilds from the directory).
    fn subscribe(&self) -> BoxFuture<'_, BusResult<BoxStream<'static, Change>>>;
    /// Appends entries to nodes' inboxes: (node, full JID, delivery). Each
    /// append is atomic with the target's liveness: an entry for a node
    /// whose liveness key is gone (dead, reaped or leaving: its inbox may
    /// be drained already) is not appended. One answer per entry, in
    /// order: appended or not.
    fn send<'a>(
        &'a self,
        batch: &'a [(String, String, Delivery)],
    ) -> BoxFuture<'a, BusResult<Vec<bool>>>;
    /// Makes `node`'s inbox ready to read (what it left unread included).
    fn open_inbox<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<()>>;
    /// Acknowledges `done` (entries of the previous read, handled), then
    /// waits up to `block_ms` for new entries of `node`'s inbox — one
    /// round trip for both.
    fn receive<'a>(
        &'a self,
        node: &'a str,
        done: &'a [String],
        max: usize,
        block_ms: u64,
    ) -> BoxFuture<'a, BusResult<Vec<InboxEntry>>>;
    /// Done with these entries (queued locally or re-routed).
    fn ack<'a>(&'a self, node: &'a str, ids: &'a [String]) -> BoxFuture<'a, BusResult<()>>;
    /// Entries of `node`'s inbox not yet acknowledged, after `after` (an
    /// entry id; None from the start): a dead node's leftovers.
    fn unacked<'a>(
        &'a self,
        node: &'a str,
        after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, BusResult<Vec<InboxEntry>>>;
    /// Deletes `node`'s inbox.
    fn drop_inbox<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<()>>;
}

/// Which node serves which external component (XEP-0114), written by
/// that node; announced on the bus as `Change::Component`.
pub trait ComponentDirectory: Send + Sync {
    /// Records that `node` serves `domain` (`up`), or no longer (removed
    /// only while it names `node`), and announces it.
    fn set_component<'a>(
        &'a self,
        node: &'a str,
        domain: &'a str,
        up: bool,
    ) -> BoxFuture<'a, BusResult<()>>;
    /// Every component served, and its node.
    fn components(&self) -> BoxFuture<'_, BusResult<Vec<(String, String)>>>;
    /// Forgets what `node` served (a dead node's, or this node's earlier run).
    fn drop_node_components<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<()>>;
}

/// Which node holds each chat room's lease (issue #16): a room is served
/// by one node at a time, for as long as that node is alive.
pub trait RoomDirectory: Send + Sync {
    /// The room's lease: its holder and fencing number. When no live node
    /// holds it (or `node` itself is named: it lost the room's state), it
    /// is given to `node` with a new fencing number, larger than any
    /// given before and than `at_least` (the number PostgreSQL last saw,
    /// in case Redis forgot).
    fn claim_room<'a>(
        &'a self,
        room: &'a str,
        node: &'a str,
        at_least: u64,
    ) -> BoxFuture<'a, BusResult<(String, u64)>>;
    /// How many rooms each node holds a lease of (`ctl cluster status`).
    fn room_counts(&self) -> BoxFuture<'_, BusResult<std::collections::HashMap<String, usize>>>;
    /// Writes the occupant records of rooms `node` holds, in order.
    fn write_room_records<'a>(
        &'a self,
        node: &'a str,
        batch: &'a [RoomRecords],
    ) -> BoxFuture<'a, BusResult<()>>;
    /// The rooms `node` took leases of (and did not forget since), and
    /// forgets the list: the reaper of a dead node hands them to its own
    /// chat service.
    fn take_node_rooms<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<Vec<String>>>;
    /// A room's records.
    fn room_records<'a>(&'a self, room: &'a str) -> BoxFuture<'a, BusResult<Vec<(String, Bytes)>>>;
    /// The rooms listed (public and unlocked) on every node: (room, name).
    fn room_list(&self) -> BoxFuture<'_, BusResult<Vec<(String, String)>>>;
}

/// What changed in one room's records.
#[derive(Debug, Clone, Default)]
pub struct RoomRecords {
    pub room: String,
    /// (field, the record now, or None to delete it).
    pub changes: Vec<(String, Option<Bytes>)>,
    /// The room is forgotten: every record goes first, and the lease
    /// while it is still this node's with this fencing number.
    pub gone: Option<u64>,
    /// The room's line in the cluster's room list (`p:roomlist`):
    /// `Some(Some(name))` listed, `Some(None)` not listed, None unchanged.
    pub listing: Option<Option<String>>,
}

/// Everything a cluster node needs from the shared engine.
pub trait Engine: Membership + SessionDirectory + Bus + ComponentDirectory + RoomDirectory {}

impl<T: Membership + SessionDirectory + Bus + ComponentDirectory + RoomDirectory> Engine for T {}
