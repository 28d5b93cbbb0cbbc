//! Cluster mode (issue #16, first slice): several `waxwing serve` nodes
//! serve the same domains over one PostgreSQL store, with Redis (behind
//! the traits of `bus`) for liveness, the session directory and the bus.
//!
//! The core sees the cluster in one place: the session registry
//! (`sessions::RemoteSessions`, implemented by [`Cluster`]), which reports
//! local session changes, merges remote resources into the bare-JID rule
//! and forwards stanzas for remote full JIDs. The rest lives here, one
//! job per file: `writer` (changes → directory and bus), `follow` (bus →
//! replica), `outbox` (stanzas → other nodes' inboxes), `inbox` (own
//! inbox → local sessions), `liveness` (heartbeat, dead-node detection),
//! `reap` (a dead or departing node's sessions and inbox).

pub mod bus;
pub mod codec;
mod follow;
mod inbox;
mod liveness;
mod outbox;
pub mod reap;
pub mod redis;
pub mod replica;
mod rooms;
mod takeover;
mod writer;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use jid::FullJid;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterConfig;
use crate::server::Server;
use crate::sessions::{DeliveryError, Kept, OutStanza, RemoteSessions, ResourceState};
use bus::{Change, Engine, NodeStatus};
use replica::Replica;

/// Local session changes waiting to be written; beyond this the writer
/// is told to write every local session again instead (`resync`).
const CHANGE_QUEUE: usize = 65_536;

/// What the directory writer is handed.
enum WriterMsg {
    Change(Change),
    /// Answered once everything before it is written.
    Flush(oneshot::Sender<()>),
    /// Wakes the writer to look at `resync`.
    Nudge,
}

/// What the outbox is handed.
enum OutMsg {
    /// (node, full JID, what for it).
    Entry(Arc<str>, String, bus::Delivery),
    /// Entries queued together (`grouped`): in one batch, hence one inbox
    /// entry per target node.
    Group(Vec<(Arc<str>, String, bus::Delivery)>),
    Flush(oneshot::Sender<()>),
}

/// This node's part in the cluster.
pub struct Cluster {
    /// This node's id.
    pub node: String,
    ttl: Duration,
    engine: Arc<dyn Engine>,
    replica: Replica,
    writer: mpsc::Sender<WriterMsg>,
    outbox: mpsc::Sender<OutMsg>,
    /// Bytes of stanzas in the outbox, bounded by `outbox_max_bytes`
    /// (the entry count alone would let it hold `inbox_max` big stanzas).
    outbox_bytes: Arc<std::sync::atomic::AtomicUsize>,
    outbox_max_bytes: usize,
    /// Set when a change could not be queued, or Redis lost this node's
    /// entries: the writer then writes every local session again.
    resync: AtomicBool,
    /// Set while this node could not refresh its liveness key for longer
    /// than the TTL (`liveness`): others may have reaped it, so it has
    /// closed its sessions and does not read its inbox.
    fenced: AtomicBool,
    /// Counts the fences (`liveness`): the chat service drops the rooms
    /// it held before one, since others may hold them now.
    fence_count: std::sync::atomic::AtomicU64,
    /// Wakes the inbox reader when the node is no longer fenced.
    unfenced: tokio::sync::Notify,
    /// The sessions (ids) the last fence closed: never written to the
    /// directory again, even if one is still ending when Redis answers.
    fenced_sessions: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// Stops the reading tasks (inbox, bus, liveness) at leave, and the
    /// writers' retries.
    stop: CancellationToken,
    /// The reading tasks, awaited at leave before the inbox is drained.
    tasks: TaskTracker,
    /// What waits to be handed over again to users' local sessions
    /// (`follow`): one pending hand-over per user and kind.
    handovers: std::sync::Mutex<std::collections::HashSet<(String, Kept)>>,
    /// Stream-managed sessions this node asked other nodes for.
    takeovers: takeover::TakeOvers,
    /// Rooms' occupant records for Redis (`rooms::write_records`).
    room_records: mpsc::Sender<rooms::RecordMsg>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish()
    }
}

impl Cluster {
    /// Joins the cluster: connects to Redis, cleans up what an earlier run
    /// of this node left, loads the other nodes' sessions, registers, and
    /// starts the node's tasks. Fails when Redis cannot be reached or a
    /// live node already has this id.
    pub async fn join(
        server: &Arc<Server>,
        config: &ClusterConfig,
    ) -> Result<Arc<Cluster>, String> {
        let engine: Arc<dyn Engine> = Arc::new(
            redis::RedisCluster::connect(&config.redis, &config.key_prefix, config.inbox_max)
                .await?,
        );
        Cluster::join_with(server, config, engine).await
    }

    /// Joins through any engine (Redis, or another implementing `bus`).
    pub async fn join_with(
        server: &Arc<Server>,
        config: &ClusterConfig,
        engine: Arc<dyn Engine>,
    ) -> Result<Arc<Cluster>, String> {
        let node = config.node_id.clone();
        let ttl = Duration::from_millis(config.liveness_ttl_ms);
        if engine.is_alive(&node).await? {
            return Err(format!(
                "[cluster] node_id '{node}' is in use by a live node (or one that died less than \
                 {} ms ago)",
                config.liveness_ttl_ms
            ));
        }
        let (writer_tx, writer_rx) = mpsc::channel(CHANGE_QUEUE);
        let (outbox_tx, outbox_rx) = mpsc::channel(config.inbox_max);
        let (records_tx, records_rx) = mpsc::channel(CHANGE_QUEUE);
        let cluster = Arc::new(Cluster {
            node: node.clone(),
            ttl,
            engine,
            replica: Replica::new(&node),
            writer: writer_tx,
            outbox: outbox_tx,
            outbox_bytes: Default::default(),
            outbox_max_bytes: config.outbox_max_bytes,
            resync: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            fence_count: Default::default(),
            unfenced: tokio::sync::Notify::new(),
            fenced_sessions: Default::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            handovers: Default::default(),
            takeovers: Default::default(),
            room_records: records_tx,
        });
        // Subscribed before the snapshot is read, so no change falls
        // between them.
        let events = cluster.engine.subscribe().await?;
        cluster
            .replica
            .replace_all(cluster.engine.snapshot().await?);
        server.sessions.attach_remote(cluster.clone());
        cluster
            .replica
            .replace_components(cluster.engine.components().await?);
        server.components.attach_remote(cluster.clone());
        // The two writers run as long as the process (sessions ending at
        // shutdown still send through them); `leave` flushes them.
        tokio::spawn(writer::run(server.clone(), cluster.clone(), writer_rx));
        tokio::spawn(outbox::run(server.clone(), cluster.clone(), outbox_rx));
        tokio::spawn(rooms::write_records(cluster.clone(), records_rx));
        cluster
            .tasks
            .spawn(follow::run(server.clone(), cluster.clone(), events));
        // A previous run that was killed left its sessions and inbox:
        // its users' contacts (on every node, hence after the replica is
        // loaded) hear they are gone, its stanzas are re-routed.
        reap::reap_own(server, &cluster).await?;
        cluster.engine.open_inbox(&node).await?;
        cluster
            .engine
            .heartbeat(&node, ttl.as_millis() as u64, 0)
            .await?;
        cluster
            .tasks
            .spawn(inbox::run(server.clone(), cluster.clone()));
        cluster
            .tasks
            .spawn(liveness::run(server.clone(), cluster.clone()));
        tracing::info!(node = %node, "joined the cluster");
        Ok(cluster)
    }

    /// Leaves cleanly (shutdown, after the local sessions ended): what
    /// was queued for Redis is written, the node is removed so others
    /// stop routing here, and stanzas left in its inbox are re-routed.
    pub async fn leave(&self, server: &Server) {
        self.stop.cancel();
        // The rooms' records first: the next holders read them.
        let records = self.flush_records().await;
        for flushed in [
            records,
            self.flush_writer().await,
            self.flush_outbox().await,
        ] {
            if !flushed {
                tracing::warn!("cluster: not everything reached Redis before leaving");
            }
        }
        let down = [Change::NodeDown {
            node: self.node.clone(),
        }];
        if let Err(e) = self.engine.forget(&self.node).await {
            tracing::warn!(error = %e, "cluster: could not unregister");
        }
        if let Err(e) = self.engine.publish(&down).await {
            tracing::warn!(error = %e, "cluster: could not announce leaving");
        }
        // The reading tasks end at `stop`; the inbox is drained after.
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        if let Err(e) = reap::drain_inbox(server, self, &self.node).await {
            tracing::warn!(error = %e, "cluster: inbox not drained");
        }
        if let Err(e) = self.engine.take_node(&self.node).await {
            tracing::warn!(error = %e, "cluster: directory entries left");
        }
        tracing::info!(node = %self.node, "left the cluster");
    }

    async fn flush_writer(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(WriterMsg::Flush(tx)).await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(5), rx).await,
            Ok(Ok(()))
        )
    }

    async fn flush_records(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .room_records
            .send(rooms::RecordMsg::Flush(tx))
            .await
            .is_err()
        {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(5), rx).await,
            Ok(Ok(()))
        )
    }

    async fn flush_outbox(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.outbox.send(OutMsg::Flush(tx)).await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(5), rx).await,
            Ok(Ok(()))
        )
    }

    /// Every node with its liveness and session count (`ctl cluster
    /// status`); this node's count is the live one.
    pub async fn status(&self, server: &Server) -> Result<Vec<NodeStatus>, String> {
        let mut nodes = self.engine.members().await?;
        match nodes.iter_mut().find(|n| n.node == self.node) {
            Some(me) => me.sessions = server.sessions.count(),
            None => nodes.push(NodeStatus {
                node: self.node.clone(),
                alive: false,
                sessions: server.sessions.count(),
                rooms: 0,
            }),
        }
        let rooms = self.engine.room_counts().await?;
        for n in &mut nodes {
            n.rooms = rooms.get(&n.node).copied().unwrap_or(0);
        }
        Ok(nodes)
    }

    /// The engine (for the tasks of this module).
    fn engine(&self) -> &dyn Engine {
        &*self.engine
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Tells `node` that its session of `jid` is replaced by a newer one
    /// here (an inbox entry: it closes it with `conflict`).
    fn replace_on(&self, node: &str, jid: &FullJid, session: u64) {
        if !self.send_entry(node, jid.to_string(), bus::Delivery::Replaced(session)) {
            tracing::warn!(%jid, node, "cluster: the replaced session on another node was not told");
        }
    }

    /// Is the local session of `jid` one to write to the directory: bound
    /// (not ended since its change was queued) and not closed by a fence?
    fn writable(&self, server: &Server, jid: &FullJid) -> bool {
        server.sessions.session_id(jid).is_some_and(|id| {
            !self
                .fenced_sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id)
        })
    }

    fn handovers(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, Kept)>> {
        self.handovers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the writer to write every local session again.
    fn request_resync(&self) {
        self.resync.store(true, Ordering::Relaxed);
        let _ = self.writer.try_send(WriterMsg::Nudge);
    }
}

impl RemoteSessions for Cluster {
    fn local_changed(&self, jid: &FullJid, state: Option<&ResourceState>, last_local: bool) {
        let change = match state {
            Some(state) => Change::Bound {
                node: self.node.clone(),
                jid: jid.clone(),
                state: state.clone(),
                claim: false,
            },
            None => Change::Unbound {
                node: self.node.clone(),
                jid: jid.clone(),
                last_local,
            },
        };
        if self.writer.try_send(WriterMsg::Change(change)).is_err() {
            // Too many changes waiting (Redis slow or away): rather than
            // grow, the writer will write the whole local state again.
            self.resync.store(true, Ordering::Relaxed);
        }
    }

    fn bound_here(&self, jid: &FullJid, state: &ResourceState) {
        // Newest wins across nodes as on one. The claim is decided in
        // the directory, atomically (`SessionDirectory::apply`): two binds
        // racing on two nodes, before either replica knows of the other,
        // are ordered there and the writer tells the loser's node. This
        // replica forgets the remote one at once.
        self.replica.take(jid);
        let change = Change::Bound {
            node: self.node.clone(),
            jid: jid.clone(),
            state: state.clone(),
            claim: true,
        };
        if self.writer.try_send(WriterMsg::Change(change)).is_err() {
            // The resync writes it as an update: a session of this full
            // JID on another node is then not told (logged).
            tracing::warn!(%jid, "cluster: change queue full; a claim is written as an update");
            self.resync.store(true, Ordering::Relaxed);
        }
    }

    fn for_each(&self, bare: &str, f: &mut dyn FnMut(&str, &ResourceState)) {
        self.replica.for_each(bare, f)
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn answer_elsewhere(&self, node: &str, from: &jid::Jid, iq: &crate::xml::Element) -> bool {
        // An id naming a node that is not alive (or none: forged) appends
        // nothing (`Bus::send`); one naming a live node is checked there
        // against the addressee like any answer.
        let bytes = OutStanza::new(iq.clone()).bytes().clone();
        self.send_entry(node, from.to_string(), bus::Delivery::Answer(bytes))
    }

    fn take_over<'a>(
        &'a self,
        owner: &'a jid::BareJid,
        previd: &'a str,
        h: u32,
    ) -> BoxFuture<'a, Option<bytes::Bytes>> {
        Box::pin(self.take_over_session(owner, previd, h))
    }

    fn kept_for_later<'a>(&'a self, user: &'a jid::BareJid, what: Kept) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let notice = [Change::KeptForLater {
                user: user.to_string(),
                what,
            }];
            // Bounded: the sender's routing waits for it. Lost (Redis
            // away), what was kept waits for the user's next login.
            match tokio::time::timeout(self.ttl, self.engine.publish(&notice)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%user, error = %e, "cluster: kept-for-later notice not announced")
                }
                Err(_) => {
                    tracing::warn!(%user, "cluster: kept-for-later notice not announced in time")
                }
            }
        })
    }

    fn forward(&self, to: &FullJid, stanza: &Arc<OutStanza>) -> Option<Result<(), DeliveryError>> {
        let node = self.replica.node_of(to)?;
        // A message read from offline storage stays there until its
        // reader acknowledges it, which only this node would see: it is
        // not handed to another node (that node's own login reads it).
        if stanza.stored_id().is_some() {
            return Some(Err(DeliveryError::Offline));
        }
        self.forward_delivery(node, to, bus::Delivery::Stanza(stanza.bytes().clone()))
    }

    fn forward_unaddressed(
        &self,
        to: &FullJid,
        stanza: &bytes::Bytes,
        at: usize,
    ) -> Option<Result<(), DeliveryError>> {
        let node = self.replica.node_of(to)?;
        let delivery = bus::Delivery::Unaddressed {
            stanza: stanza.clone(),
            at: at as u32,
        };
        self.forward_delivery(node, to, delivery)
    }
}

impl Cluster {
    /// Queues a stanza for a session on `node` (held inside `grouped`),
    /// counted against the outbox's byte bound.
    fn forward_delivery(
        &self,
        node: Arc<str>,
        to: &FullJid,
        delivery: bus::Delivery,
    ) -> Option<Result<(), DeliveryError>> {
        let size = delivery.stanza_len();
        if !self.reserve(size) {
            return Some(Err(DeliveryError::QueueFull));
        }
        // Inside `grouped`: held, and sent with the rest of the fan-out.
        let held = HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            let held = h.get_or_insert_with(|| Held {
                outbox: self.outbox.clone(),
                bytes: self.outbox_bytes.clone(),
                entries: Vec::new(),
            });
            held.entries
                .push((node.clone(), to.to_string(), delivery.clone()));
        });
        if held.is_ok() {
            return Some(Ok(()));
        }
        let msg = OutMsg::Entry(node, to.to_string(), delivery);
        Some(self.outbox.try_send(msg).map_err(|e| {
            self.outbox_bytes.fetch_sub(size, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => DeliveryError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => DeliveryError::Offline,
            }
        }))
    }
}

impl crate::components::RemoteComponents for Cluster {
    fn local_changed(&self, domain: &str, up: bool) {
        // Written from a task of its own (the caller holds the registry's
        // lock); a component that connects and leaves faster than Redis
        // answers may be announced out of order, and is put right by its
        // next connection.
        let (engine, node, domain) = (self.engine.clone(), self.node.clone(), domain.to_string());
        tokio::spawn(async move {
            if let Err(e) = engine.set_component(&node, &domain, up).await {
                tracing::warn!(%domain, up, error = %e, "cluster: component change not written");
            }
        });
    }

    fn forward(&self, domain: &str, data: &bytes::Bytes) -> Option<Result<(), DeliveryError>> {
        let node = self.replica.component_node(domain)?;
        // Counted like stanzas for sessions: a flood of big stanzas for a
        // component elsewhere is bounded by bytes, not only by entries.
        if !self.reserve(data.len()) {
            return Some(Err(DeliveryError::QueueFull));
        }
        let entry = OutMsg::Entry(
            node,
            domain.to_string(),
            bus::Delivery::Component(data.clone()),
        );
        Some(self.outbox.try_send(entry).map_err(|e| {
            self.outbox_bytes.fetch_sub(data.len(), Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => DeliveryError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => DeliveryError::Offline,
            }
        }))
    }
}

impl Cluster {
    /// Counts `size` bytes of a stanza against the outbox's bound
    /// (`outbox_max_bytes`); false, with nothing counted, when it would
    /// pass it. The outbox gives them back once the stanza is appended.
    fn reserve(&self, size: usize) -> bool {
        let held = self.outbox_bytes.fetch_add(size, Ordering::Relaxed);
        if held + size > self.outbox_max_bytes {
            self.outbox_bytes.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues one entry for `node` (not counted against the stanza bytes:
    /// replacements, IQ answers and take-overs are few — one handed-over
    /// session per resumption, bounded by that session's own limits).
    fn send_entry(&self, node: &str, to: String, delivery: bus::Delivery) -> bool {
        self.outbox
            .try_send(OutMsg::Entry(node.into(), to, delivery))
            .is_ok()
    }
}

/// Stanzas forwarded inside [`grouped`], held until it ends, with the
/// outbox they go to.
struct Held {
    outbox: mpsc::Sender<OutMsg>,
    /// The cluster's count of stanza bytes in the outbox, which these
    /// entries are counted in already.
    bytes: Arc<std::sync::atomic::AtomicUsize>,
    entries: Vec<(Arc<str>, String, bus::Delivery)>,
}

tokio::task_local! {
    static HELD: std::cell::RefCell<Option<Held>>;
}

/// Runs `f` (one fan-out: a presence broadcast) holding back what it
/// forwards to other nodes, then hands it all to the outbox at once: one
/// batch, so one inbox entry per target node carrying every recipient
/// there, instead of one append per contact resource. Without a cluster,
/// or outside a task, it only runs `f`.
pub async fn grouped<T>(f: impl std::future::Future<Output = T>) -> T {
    let (out, held) = HELD
        .scope(std::cell::RefCell::new(None), async {
            let out = f.await;
            (out, HELD.with(|h| h.borrow_mut().take()))
        })
        .await;
    send_held(held);
    out
}

/// [`grouped`] for a fan-out that does not wait (a room's stanza): what
/// it forwards leaves when `f` returns, not after whatever its caller
/// awaits next (a database write).
pub fn grouped_now<T>(f: impl FnOnce() -> T) -> T {
    let (out, held) = HELD.sync_scope(std::cell::RefCell::new(None), || {
        let out = f();
        (out, HELD.with(|h| h.borrow_mut().take()))
    });
    send_held(held);
    out
}

/// Hands what a fan-out held back to the outbox, as one batch.
fn send_held(held: Option<Held>) {
    if let Some(held) = held {
        if !held.entries.is_empty() {
            let count = held.entries.len();
            let size: usize = held.entries.iter().map(|(_, _, d)| d.stanza_len()).sum();
            if held.outbox.try_send(OutMsg::Group(held.entries)).is_err() {
                held.bytes.fetch_sub(size, Ordering::Relaxed);
                // As a forward to a full queue: presence is not retried.
                tracing::warn!(count, "cluster: outbox full; a grouped fan-out dropped");
            }
        }
    }
}

/// Waits before trying Redis again after a failure: 200 ms doubling to
/// 2 s, or until `stop`. Returns false once stopped.
async fn backoff(stop: &CancellationToken, attempt: &mut u32) -> bool {
    let delay = Duration::from_millis((200u64 << (*attempt).min(4)).min(2_000));
    *attempt += 1;
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
