//! The registry of bound resources: which full JIDs are online on this
//! server, their presence priority, and the queue that reaches each one.

use crate::stanza::bare::Bare;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use jid::{BareJid, FullJid};

use crate::queue::{QueueError, QueueSender};
use crate::stanza::StreamErrorCondition;
use crate::xml::Element;

/// A stanza queued for a session (or a component): its bytes, serialized
/// once and shared by every recipient, and the element itself for the
/// features that look at what they hold (client state, stream
/// management's re-routing). A stanza read back from storage keeps only
/// its bytes and is parsed on the first look.
#[derive(Debug)]
pub struct OutStanza {
    bytes: Bytes,
    element: std::sync::OnceLock<Option<Element>>,
    /// When it was queued (unix seconds): the delay stamp it gets if it
    /// has to be re-routed later.
    queued_at: u64,
    /// The offline-storage row it was read from, which is deleted only
    /// once the client acknowledges it (stream management).
    stored_id: Option<i64>,
}

/// Marks a session whose client acknowledges what it receives (stream
/// management is on): for it, a stanza counts as delivered once acked.
#[derive(Debug, Default)]
pub struct AcknowledgesDelivery;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl OutStanza {
    /// Serializes `element` in `jabber:client`.
    pub fn new(element: Element) -> Arc<OutStanza> {
        let bytes = Bytes::from(element.to_bytes(crate::xml::NS_CLIENT));
        Arc::new(OutStanza {
            bytes,
            element: std::sync::OnceLock::from(Some(element)),
            queued_at: unix_now(),
            stored_id: None,
        })
    }

    /// `element` with its serialization in `jabber:client` made already
    /// (the caller vouches that they match).
    pub fn with_bytes(element: Element, bytes: Bytes) -> Arc<OutStanza> {
        Arc::new(OutStanza {
            bytes,
            element: std::sync::OnceLock::from(Some(element)),
            queued_at: unix_now(),
            stored_id: None,
        })
    }

    /// A stanza already serialized (`jabber:client` as default namespace).
    pub fn serialized(bytes: Bytes) -> Arc<OutStanza> {
        Arc::new(OutStanza {
            bytes,
            element: std::sync::OnceLock::new(),
            queued_at: unix_now(),
            stored_id: None,
        })
    }

    /// A stanza read from offline storage row `id`, serialized there.
    pub fn stored(bytes: Bytes, id: i64) -> Arc<OutStanza> {
        Arc::new(OutStanza {
            bytes,
            element: std::sync::OnceLock::new(),
            queued_at: unix_now(),
            stored_id: Some(id),
        })
    }

    /// A stanza kept as bytes (stream management's unacknowledged ones)
    /// made a stanza again, with when it was first queued.
    pub fn restored(bytes: Bytes, queued_at: u64, stored_id: Option<i64>) -> Arc<OutStanza> {
        Arc::new(OutStanza {
            bytes,
            element: std::sync::OnceLock::new(),
            queued_at,
            stored_id,
        })
    }

    /// The offline-storage row this stanza still lives in, if any.
    pub fn stored_id(&self) -> Option<i64> {
        self.stored_id
    }

    /// The bytes to write.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The stanza as an element (None if its bytes are not one stanza).
    pub fn element(&self) -> Option<&Element> {
        self.element
            .get_or_init(|| {
                crate::modules::xml_from_storage(
                    std::str::from_utf8(&self.bytes).ok()?,
                    crate::xml::ParserLimits::default().max_depth,
                )?
                .into_iter()
                .next()
            })
            .as_ref()
    }

    /// When it was queued, in unix seconds.
    pub fn queued_at(&self) -> u64 {
        self.queued_at
    }

    /// Roughly the memory it holds: the bytes, and about as much again for
    /// the element.
    pub fn weight(&self) -> usize {
        self.bytes.len() * 2
    }
}

/// What the router hands to a session's connection task.
#[derive(Debug)]
pub enum Outbound {
    /// A stanza to write.
    Stanza(Arc<OutStanza>),
    /// End the stream with this condition (e.g. `conflict` when replaced).
    Close(StreamErrorCondition),
}

/// Why a stanza could not be queued for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryError {
    /// No such resource is bound.
    Offline,
    /// The session's queue is full: it reads slower than it is written to.
    QueueFull,
    /// The domain cannot be reached (not ours, and federation is off).
    Unreachable,
}

impl DeliveryError {
    /// The stanza error a sender gets for it.
    pub fn condition(self) -> crate::stanza::StanzaErrorCondition {
        use crate::stanza::StanzaErrorCondition as C;
        match self {
            DeliveryError::Offline => C::ServiceUnavailable,
            DeliveryError::QueueFull => C::ResourceConstraint,
            DeliveryError::Unreachable => C::RemoteServerNotFound,
        }
    }
}

/// One bound resource.
#[derive(Debug)]
struct BoundResource {
    resource: String,
    /// Unique per connection, so a late unbind of a replaced session cannot
    /// remove its successor.
    session_id: u64,
    tx: QueueSender<Outbound>,
    /// The last available presence the session broadcast (without `to`);
    /// None until initial presence and after unavailable (RFC 6121 §4.2).
    presence: Option<Element>,
    priority: i8,
    /// Requested the roster, so it gets roster pushes (RFC 6121 §2.1.6).
    interested: bool,
    /// Has carbons on (XEP-0280; the carbons feature keeps the truth in
    /// the extensions, this copy is what other nodes of a cluster see).
    carbons: bool,
    /// JIDs this session sent directed available presence to, which get
    /// unavailable when it goes offline (RFC 6121 §4.6). Hashed and capped
    /// by the caller; a lock of its own, so noting one takes only the
    /// registry's read lock.
    directed: Mutex<HashSet<Box<str>>>,
    /// When the resource was bound (for `ctl sessions list`).
    bound_at: std::time::Instant,
    /// Features' data about this session (carbons on, client state, …),
    /// kept as long as the session, across connections.
    extensions: SessionExtensions,
}

impl BoundResource {
    /// Its routing state as other nodes see it.
    fn state(&self) -> ResourceState {
        ResourceState {
            presence: self.presence.clone(),
            priority: self.priority,
            interested: self.interested,
            carbons: self.carbons,
            session: self.session_id,
        }
    }
}

/// A session's extension data, shared by its connection's task and the
/// features acting on it from other tasks. Lock it briefly, never across
/// an await.
pub type SessionExtensions = Arc<Mutex<crate::feature::Extensions>>;

/// A bound resource as `ctl sessions list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub jid: FullJid,
    /// The connection's id (`conn` in the log).
    pub session_id: u64,
    /// Has sent available presence (and not unavailable since).
    pub available: bool,
    pub priority: i8,
    /// Seconds since the resource was bound.
    pub age_secs: u64,
}

/// What a session left behind when it was unbound.
#[derive(Debug, Default)]
pub struct Departed {
    /// Its last available presence, if it was available.
    pub presence: Option<Element>,
    pub directed: Vec<String>,
    /// True when no other resource of the user remains bound.
    pub last_resource: bool,
}

/// All bound resources, by bare JID.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    by_bare: RwLock<HashMap<Account, Vec<BoundResource>>>,
    /// The sessions other nodes of a cluster hold (`crate::cluster`), set
    /// once at start; None on a single server. The registry is the one
    /// place the router and every feature ask "who is online", so the
    /// cluster plugs in here and nowhere else on the routing path.
    remote: std::sync::OnceLock<Arc<dyn RemoteSessions>>,
}

/// A session's routing state as other nodes see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceState {
    /// Its last available presence; None until initial presence.
    pub presence: Option<Element>,
    pub priority: i8,
    /// Requested the roster (gets roster pushes).
    pub interested: bool,
    /// Has carbons on (gets carbon copies, XEP-0280).
    pub carbons: bool,
    /// The session's id on its node (0: unknown), so that a replacement
    /// names the one session it is for.
    pub session: u64,
}

/// What waits in storage for a user's next available session (the
/// initial presence reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kept {
    /// An offline message (XEP-0160).
    Message,
    /// A pending subscription request (RFC 6121 §3.1.3).
    SubscriptionRequest,
}

/// Sessions held elsewhere (the other nodes of a cluster), seen through
/// this registry: bare-JID delivery, probes and roster pushes include
/// them, and a stanza for one of them is forwarded to its node.
pub trait RemoteSessions: Send + Sync + std::fmt::Debug {
    /// A local session changed (`Some`: bound or updated; `None`:
    /// unbound, `last_local` when no local resource of its bare JID is
    /// left). Called under the registry's lock, so changes to one JID are
    /// reported in order; it must not block.
    fn local_changed(&self, jid: &FullJid, state: Option<&ResourceState>, last_local: bool);
    /// A new local session took `jid` (bind), in `state`: reported like
    /// `local_changed`, and a claim of the full JID across nodes (one of
    /// it on another node is replaced: newest wins).
    fn bound_here(&self, jid: &FullJid, state: &ResourceState);
    /// Calls `f` with each remote resource of `bare` and its state.
    fn for_each(&self, bare: &str, f: &mut dyn FnMut(&str, &ResourceState));
    /// Tells the other nodes that `what` was committed to storage for
    /// `user`'s next available session, here, while no resource was known
    /// to take it (a session that became available on another node may
    /// not be known here yet, and may have read that storage already).
    fn kept_for_later<'a>(
        &'a self,
        user: &'a BareJid,
        what: Kept,
    ) -> futures_util::future::BoxFuture<'a, ()>;
    /// Queues `stanza` for a remote full JID; None when no node holds it.
    fn forward(&self, to: &FullJid, stanza: &Arc<OutStanza>) -> Option<Result<(), DeliveryError>>;
    /// Queues a stanza serialized without `to` for a remote full JID (a
    /// room's broadcast): the node holding it puts `to` in at byte `at`,
    /// and recipients on one node share the bytes. None when no node
    /// holds it.
    fn forward_unaddressed(
        &self,
        to: &FullJid,
        stanza: &bytes::Bytes,
        at: usize,
    ) -> Option<Result<(), DeliveryError>>;
    /// This node's id (named in the ids of IQs the server sends).
    fn node(&self) -> &str;
    /// Hands an answer (from `from`) to an IQ that `node` sent to that
    /// node's IQ tracker; false when it cannot be queued.
    fn answer_elsewhere(&self, node: &str, from: &jid::Jid, iq: &Element) -> bool;
    /// Asks the nodes holding resources of `owner` to hand over the
    /// stream-managed session `previd` (a resumption arrived here); the
    /// session encoded by `modules::sm_handover`, or None.
    fn take_over<'a>(
        &'a self,
        owner: &'a BareJid,
        previd: &'a str,
        h: u32,
    ) -> futures_util::future::BoxFuture<'a, Option<bytes::Bytes>>;
}

/// The registry's key: a bare JID that can be looked up by its text, so a
/// full JID finds its account by slicing off the resource instead of
/// building a `BareJid` (an allocation per routed stanza).
#[derive(Debug)]
struct Account(BareJid);

impl std::hash::Hash for Account {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state)
    }
}

impl PartialEq for Account {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Account {}

impl std::borrow::Borrow<str> for Account {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl SessionRegistry {
    /// Lets the registry see and reach the sessions of other nodes (once,
    /// at start; a second call is ignored).
    pub fn attach_remote(&self, remote: Arc<dyn RemoteSessions>) {
        let _ = self.remote.set(remote);
    }

    fn remote(&self) -> Option<&Arc<dyn RemoteSessions>> {
        self.remote.get()
    }

    /// This node's id in a cluster (None on a single server).
    pub fn cluster_node(&self) -> Option<&str> {
        self.remote().map(|r| r.node())
    }

    /// Hands an answer to an IQ another node sent to that node (see
    /// `RemoteSessions::answer_elsewhere`); false on a single server.
    pub fn answer_elsewhere(&self, node: &str, from: &jid::Jid, iq: &Element) -> bool {
        self.remote()
            .is_some_and(|r| r.answer_elsewhere(node, from, iq))
    }

    /// See `RemoteSessions::kept_for_later`; nothing on a single server.
    pub async fn announce_kept_for_later(&self, user: &BareJid, what: Kept) {
        if let Some(remote) = self.remote() {
            remote.kept_for_later(user, what).await;
        }
    }

    /// Reports a local session's state to the cluster, if any.
    fn report(&self, jid: &FullJid, r: &BoundResource) {
        if let Some(remote) = self.remote() {
            remote.local_changed(jid, Some(&r.state()), false);
        }
    }

    /// Every local session's state (a cluster node writes them all again
    /// after Redis lost them).
    pub fn local_states(&self) -> Vec<(FullJid, ResourceState)> {
        let map = self.read();
        map.iter()
            .flat_map(|(Account(bare), l)| {
                l.iter().filter_map(move |r| {
                    Some((bare.with_resource_str(&r.resource).ok()?, r.state()))
                })
            })
            .collect()
    }

    /// Queues a stanza for one full JID held by this node only (what
    /// another node forwarded here must not be sent on again).
    pub fn send_to_local(&self, jid: &FullJid, data: Arc<OutStanza>) -> Result<(), DeliveryError> {
        let map = self.read();
        let r = map
            .get(jid.bare_str())
            .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
            .ok_or(DeliveryError::Offline)?;
        queue(&r.tx, data)
    }

    /// Binds `jid` to a session. If that full JID was already bound, the old
    /// session is told to close with `conflict` (newest wins, as Prosody
    /// and ejabberd do by default).
    pub fn bind(&self, jid: &FullJid, session_id: u64, tx: QueueSender<Outbound>) {
        self.bind_with(jid, session_id, tx, &ResourceState::default(), Vec::new());
    }

    /// Binds `jid` as [`bind`](Self::bind) does, with the state a session
    /// had on another node of a cluster that handed it over
    /// (`modules::sm_handover`): one claim carries it all.
    pub fn bind_with(
        &self,
        jid: &FullJid,
        session_id: u64,
        tx: QueueSender<Outbound>,
        state: &ResourceState,
        directed: Vec<String>,
    ) {
        let resource = jid.resource().as_str().to_string();
        let old = {
            let mut map = self.write();
            let list = map.entry(Account(jid.bare())).or_default();
            let old = list
                .iter()
                .position(|r| r.resource == resource)
                .map(|i| list.swap_remove(i));
            list.push(BoundResource {
                resource,
                session_id,
                tx,
                presence: state.presence.clone(),
                priority: state.priority,
                interested: state.interested,
                carbons: state.carbons,
                directed: Mutex::new(directed.into_iter().map(Box::from).collect()),
                bound_at: std::time::Instant::now(),
                extensions: SessionExtensions::default(),
            });
            if let (Some(r), Some(remote)) = (list.last(), self.remote()) {
                remote.bound_here(jid, &r.state());
            }
            old
        };
        if let Some(old) = old {
            // The old session may be stuck with a full queue; closing it must
            // not wait on it, so a full queue is left to its own timeout.
            let _ = old
                .tx
                .try_send(Outbound::Close(StreamErrorCondition::Conflict));
        }
    }

    /// Removes a binding, if it still belongs to `session_id`, and returns
    /// the presence state it leaves behind (None if it was not bound, or
    /// was replaced by a newer session).
    pub fn unbind(&self, jid: &FullJid, session_id: u64) -> Option<Departed> {
        let (gone, last_local) = self.take_binding(jid, session_id)?;
        // Resources on other nodes count: the user is still online there.
        let mut last_resource = last_local;
        if let Some(remote) = self.remote() {
            remote.for_each(jid.bare_str(), &mut |_, _| last_resource = false);
        }
        Some(Departed {
            presence: gone.presence,
            directed: into_list(
                gone.directed
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner()),
            ),
            last_resource,
        })
    }

    /// Removes the binding of `jid` if it still belongs to `session_id`,
    /// telling the other nodes of a cluster; the binding, and whether it
    /// was the account's last one here.
    fn take_binding(&self, jid: &FullJid, session_id: u64) -> Option<(BoundResource, bool)> {
        self.take_binding_where(jid, |r| r.session_id == session_id)
    }

    /// Removes the first binding of `jid`'s account that `which` picks,
    /// as [`take_binding`](Self::take_binding) does.
    fn take_binding_where(
        &self,
        jid: &FullJid,
        which: impl Fn(&BoundResource) -> bool,
    ) -> Option<(BoundResource, bool)> {
        let bare = jid.bare_str();
        let mut map = self.write();
        let list = map.get_mut(bare)?;
        let i = list.iter().position(which)?;
        let gone = list.swap_remove(i);
        let last_local = list.is_empty();
        if last_local {
            map.remove(bare);
        }
        if let Some(remote) = self.remote() {
            remote.local_changed(jid, None, last_local);
        }
        Some((gone, last_local))
    }

    /// Takes the session `session_id` of `jid` out of the registry to hand
    /// it to another node of a cluster (`modules::sm_handover`): unbound
    /// with no departure, as [`replaced_elsewhere`](Self::replaced_elsewhere)
    /// does (the user stays online, on that node), and nothing said to its
    /// queue, whose owner drains it. Returns its state and its
    /// directed-presence recipients.
    pub fn hand_over(
        &self,
        jid: &FullJid,
        session_id: u64,
    ) -> Option<(ResourceState, Vec<String>)> {
        let (gone, _) = self.take_binding(jid, session_id)?;
        let state = gone.state();
        let directed = into_list(
            gone.directed
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
        );
        Some((state, directed))
    }

    /// Asks the other nodes of a cluster for the stream-managed session
    /// `previd` of `owner`, for a resumption that arrived here; the
    /// client's `h` goes with the request. The session handed over,
    /// encoded (`modules::sm_handover`), or None: no cluster, no node
    /// holds it, or none answered in time.
    pub async fn take_over_elsewhere(
        &self,
        owner: &BareJid,
        previd: &str,
        h: u32,
    ) -> Option<bytes::Bytes> {
        self.remote()?.take_over(owner, previd, h).await
    }

    /// Records the session's broadcast presence: `Some` when available
    /// (with its priority), `None` after unavailable. Returns whether the
    /// session was available before (so the caller can tell initial presence).
    pub fn set_presence(
        &self,
        jid: &FullJid,
        session_id: u64,
        presence: Option<Element>,
        priority: i8,
    ) -> bool {
        let mut map = self.write();
        let Some(r) = map
            .get_mut(jid.bare_str())
            .and_then(|l| l.iter_mut().find(|r| r.session_id == session_id))
        else {
            return false;
        };
        let was = r.presence.is_some();
        r.presence = presence;
        r.priority = priority;
        self.report(jid, r);
        was
    }

    /// A session of `jid` was bound on another node of the cluster: the
    /// local one is replaced as a local bind replaces one (newest wins):
    /// unbound with no departure (no `SessionEnded`: the user is online
    /// there, and its end would broadcast unavailable), then told
    /// `conflict`. Only the session `session` (its id; 0: whichever is
    /// bound): one bound again here since is newer than the one replaced.
    pub fn replaced_elsewhere(&self, jid: &FullJid, session: u64) {
        let Some((old, _)) = self.take_binding_where(jid, |r| {
            r.resource == jid.resource().as_str() && (session == 0 || r.session_id == session)
        }) else {
            return;
        };
        let _ = old
            .tx
            .send_beyond_capacity(Outbound::Close(StreamErrorCondition::Conflict));
    }

    /// Records whether the session has carbons on (reported to the other
    /// nodes of a cluster, which copy to it).
    pub fn set_carbons(&self, jid: &FullJid, on: bool) {
        let mut map = self.write();
        if let Some(r) = map
            .get_mut(jid.bare_str())
            .and_then(|l| l.iter_mut().find(|r| r.resource == jid.resource().as_str()))
        {
            if r.carbons != on {
                r.carbons = on;
                self.report(jid, r);
            }
        }
    }

    /// Calls `f` with each resource of `bare` held by another node of the
    /// cluster, and its state (nothing on a single server).
    pub fn for_each_remote(&self, bare: &str, f: &mut dyn FnMut(&str, &ResourceState)) {
        if let Some(remote) = self.remote() {
            remote.for_each(bare, f);
        }
    }

    /// Marks the session as interested in roster pushes.
    pub fn set_interested(&self, jid: &FullJid) {
        let mut map = self.write();
        if let Some(r) = map
            .get_mut(jid.bare_str())
            .and_then(|l| l.iter_mut().find(|r| r.resource == jid.resource().as_str()))
        {
            if !r.interested {
                r.interested = true;
                self.report(jid, r);
            }
        }
    }

    /// Remembers a directed available presence (for unavailable at logout);
    /// `available = false` forgets it again. A new recipient beyond `max`
    /// is refused (nothing is recorded); one already noted always passes.
    pub fn note_directed(
        &self,
        jid: &FullJid,
        to: &str,
        available: bool,
        max: usize,
    ) -> Result<(), DirectedFull> {
        let map = self.read();
        let Some(r) = map
            .get(jid.bare_str())
            .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
        else {
            return Ok(());
        };
        let mut set = r.directed.lock().unwrap_or_else(|e| e.into_inner());
        if !available {
            set.remove(to);
        } else if !set.contains(to) {
            if set.len() >= max {
                return Err(DirectedFull);
            }
            set.insert(to.into());
        }
        Ok(())
    }

    /// Ends every session of `bare` with `cond`, except the one bound to
    /// `except` (which closes itself after its own reply).
    pub fn close_account(
        &self,
        bare: &BareJid,
        except: Option<&FullJid>,
        cond: StreamErrorCondition,
    ) {
        if let Some(list) = self.read().get(bare.as_str()) {
            for r in list
                .iter()
                .filter(|r| except.is_none_or(|e| e.resource().as_str() != r.resource))
            {
                let _ = r.tx.try_send(Outbound::Close(cond));
            }
        }
    }

    /// Forgets and returns the session's directed-presence recipients.
    pub fn take_directed(&self, jid: &FullJid) -> Vec<String> {
        let map = self.read();
        map.get(jid.bare_str())
            .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
            .map(|r| {
                let mut set = r.directed.lock().unwrap_or_else(|e| e.into_inner());
                into_list(std::mem::take(&mut *set))
            })
            .unwrap_or_default()
    }

    /// The extension data of the session bound to a full JID.
    pub fn extensions(&self, jid: &FullJid) -> Option<SessionExtensions> {
        self.read()
            .get(jid.bare_str())
            .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
            .map(|r| r.extensions.clone())
    }

    /// Runs `f` on the extension data of each bound resource of `bare`
    /// (its resource, and the data locked for the call). Cheap enough for
    /// every routed message: no JID is built and nothing is copied; `f`
    /// runs under the registry's read lock, so it must not call back into
    /// the registry.
    pub fn for_each_extensions(
        &self,
        bare: &str,
        mut f: impl FnMut(&str, &mut crate::feature::Extensions),
    ) {
        let map = self.read();
        for r in map.get(bare).into_iter().flatten() {
            f(
                &r.resource,
                &mut r.extensions.lock().unwrap_or_else(|e| e.into_inner()),
            );
        }
    }

    /// The connection id bound to a full JID.
    pub fn session_id(&self, jid: &FullJid) -> Option<u64> {
        self.read()
            .get(jid.bare_str())
            .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
            .map(|r| r.session_id)
    }

    /// Full JIDs of the user's resources that requested the roster.
    pub fn interested_resources(&self, bare: &BareJid) -> Vec<FullJid> {
        let mut out: Vec<FullJid> = self
            .read()
            .get(bare.as_str())
            .map(|l| {
                l.iter()
                    .filter(|r| r.interested)
                    .filter_map(|r| bare.with_resource_str(&r.resource).ok())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(remote) = self.remote() {
            remote.for_each(bare.as_str(), &mut |resource, state| {
                if state.interested {
                    out.extend(bare.with_resource_str(resource).ok());
                }
            });
        }
        out
    }

    /// The last presence of each available resource of `bare`.
    pub fn presences(&self, bare: &BareJid) -> Vec<(FullJid, Element)> {
        let mut out = self.local_presences(bare);
        out.extend(self.remote_presences(bare));
        out
    }

    /// The last presence of each available resource of `bare` held by
    /// another node of a cluster (none on a single server).
    pub fn remote_presences(&self, bare: &BareJid) -> Vec<(FullJid, Element)> {
        let mut out = Vec::new();
        if let Some(remote) = self.remote() {
            remote.for_each(bare.as_str(), &mut |resource, state| {
                if let (Some(p), Ok(full)) = (&state.presence, bare.with_resource_str(resource)) {
                    out.push((full, p.clone()));
                }
            });
        }
        out
    }

    /// The last presence of each available resource of `bare` held by
    /// this node (what only the node holding a session may re-send).
    pub fn local_presences(&self, bare: &BareJid) -> Vec<(FullJid, Element)> {
        self.read()
            .get(bare.as_str())
            .map(|l| {
                l.iter()
                    .filter_map(|r| {
                        let p = r.presence.clone()?;
                        Some((bare.with_resource_str(&r.resource).ok()?, p))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Queues a stanza for one full JID: its local session, else (in a
    /// cluster) the node that holds it.
    pub fn send_to_full(&self, jid: &FullJid, data: Arc<OutStanza>) -> Result<(), DeliveryError> {
        {
            let map = self.read();
            if let Some(r) = map
                .get(jid.bare_str())
                .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
            {
                return queue(&r.tx, data);
            }
        }
        match self.remote() {
            Some(remote) => remote
                .forward(jid, &data)
                .unwrap_or(Err(DeliveryError::Offline)),
            None => Err(DeliveryError::Offline),
        }
    }

    /// Queues a stanza serialized without `to` (`fanout::Prepared`): to a
    /// local session as `local()` makes it, to one on another node as it
    /// is, addressed there.
    pub fn send_unaddressed(
        &self,
        jid: &FullJid,
        stanza: &bytes::Bytes,
        at: usize,
        local: impl FnOnce() -> Arc<OutStanza>,
    ) -> Result<(), DeliveryError> {
        {
            let map = self.read();
            if let Some(r) = map
                .get(jid.bare_str())
                .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
            {
                return queue(&r.tx, local());
            }
        }
        match self.remote() {
            Some(remote) => remote
                .forward_unaddressed(jid, stanza, at)
                .unwrap_or(Err(DeliveryError::Offline)),
            None => Err(DeliveryError::Offline),
        }
    }

    /// Queues stanzas from the front of `batch` for one full JID while its
    /// queue takes them (one lock, one wake-up of its connection); how
    /// many were queued, the rest left in `batch`.
    pub fn send_batch_to_full(
        &self,
        jid: &FullJid,
        batch: &mut std::collections::VecDeque<Outbound>,
    ) -> Result<usize, DeliveryError> {
        let map = self.read();
        let r = map
            .get(jid.bare_str())
            .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
            .ok_or(DeliveryError::Offline)?;
        r.tx.try_send_from(batch)
            .map_err(|_| DeliveryError::Offline)
    }

    /// The queue of one full JID: for a sender with a long backlog for it
    /// (a big room's presences for a joiner) that waits for room in it.
    pub fn queue_of(&self, jid: &FullJid) -> Option<QueueSender<Outbound>> {
        let map = self.read();
        map.get(jid.bare_str())
            .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
            .map(|r| r.tx.clone())
    }

    /// Is this full JID bound?
    pub fn is_bound(&self, jid: &FullJid) -> bool {
        self.read()
            .get(jid.bare_str())
            .is_some_and(|l| l.iter().any(|r| r.resource == jid.resource().as_str()))
    }

    /// Has `bare` a resource that sent available presence? (What
    /// [`available_resources`](Self::available_resources) answers when not
    /// empty, without building the list.)
    pub fn has_available(&self, bare: &BareJid) -> bool {
        self.read()
            .get(bare.as_str())
            .is_some_and(|l| l.iter().any(|r| r.presence.is_some()))
    }

    /// Full JIDs of the available resources of `bare`, with their priority.
    pub fn available_resources(&self, bare: &BareJid) -> Vec<(FullJid, i8)> {
        let mut out: Vec<(FullJid, i8)> = self
            .read()
            .get(bare.as_str())
            .map(|l| {
                l.iter()
                    .filter(|r| r.presence.is_some())
                    .filter_map(|r| {
                        bare.with_resource_str(&r.resource)
                            .ok()
                            .map(|f| (f, r.priority))
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Other nodes' resources join before the one rule below picks
        // among them, so a bare JID gets the same choice on every node.
        if let Some(remote) = self.remote() {
            remote.for_each(bare.as_str(), &mut |resource, state| {
                if state.presence.is_some() {
                    if let Ok(full) = bare.with_resource_str(resource) {
                        out.push((full, state.priority));
                    }
                }
            });
        }
        out
    }

    /// RFC 6121 §8.5.2: the resources of `bare` that get `stanza` sent to
    /// the bare JID. The one rule for bare-JID delivery, used by the router
    /// and every feature.
    pub fn targets(&self, bare: &BareJid, stanza: &Element) -> Vec<FullJid> {
        match stanza.name() {
            // §8.5.2.1.1: every available resource.
            "presence" => self
                .available_resources(bare)
                .into_iter()
                .map(|(j, _)| j)
                .collect(),
            "message" => self.message_targets(bare, stanza.attr("type").unwrap_or("normal")),
            // An IQ to a bare JID is the server's to answer.
            _ => Vec::new(),
        }
    }

    /// §8.5.2.1.1–2: chat and normal messages go to the non-negative
    /// resources of the highest priority; headlines (and errors) to every
    /// non-negative one; groupchat to none.
    pub fn message_targets(&self, bare: &BareJid, kind: &str) -> Vec<FullJid> {
        let resources: Vec<(FullJid, i8)> = self
            .available_resources(bare)
            .into_iter()
            .filter(|(_, p)| *p >= 0)
            .collect();
        match kind {
            "chat" | "normal" => {
                let top = resources.iter().map(|(_, p)| *p).max();
                resources
                    .into_iter()
                    .filter(|(_, p)| Some(*p) == top)
                    .map(|(j, _)| j)
                    .collect()
            }
            "headline" | "error" => resources.into_iter().map(|(j, _)| j).collect(),
            _ => Vec::new(),
        }
    }

    /// Does the session's client acknowledge what it receives?
    pub fn acknowledges_delivery(&self, jid: &FullJid) -> bool {
        self.extensions(jid).is_some_and(|e| {
            e.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get::<AcknowledgesDelivery>()
                .is_some()
        })
    }

    /// Ends one session with a stream error, after what is already queued.
    pub fn close(&self, jid: &FullJid, cond: StreamErrorCondition) {
        let map = self.read();
        if let Some(r) = map
            .get(jid.bare_str())
            .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
        {
            let _ = r.tx.send_beyond_capacity(Outbound::Close(cond));
        }
    }

    /// Ends every bound session with `cond`, after what is already queued
    /// for it: how shutdown reaches bound client sessions, through their
    /// own queues, so their loops need not poll the server's shared
    /// shutdown token (a mutex every session's wake-up on every core
    /// touched) at each wake-up.
    pub fn close_all(&self, cond: StreamErrorCondition) {
        for r in self.read().values().flatten() {
            let _ = r.tx.send_beyond_capacity(Outbound::Close(cond));
        }
    }

    /// Every bound full JID (for `ctl` and shutdown).
    pub fn all(&self) -> Vec<FullJid> {
        let map = self.read();
        map.iter()
            .flat_map(|(Account(bare), l)| {
                l.iter()
                    .filter_map(move |r| bare.with_resource_str(&r.resource).ok())
            })
            .collect()
    }

    /// Every bound resource with its state, sorted by JID.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = {
            let map = self.read();
            map.iter()
                .flat_map(|(Account(bare), l)| {
                    l.iter().filter_map(move |r| {
                        Some(SessionInfo {
                            jid: bare.with_resource_str(&r.resource).ok()?,
                            session_id: r.session_id,
                            available: r.presence.is_some(),
                            priority: r.priority,
                            age_secs: r.bound_at.elapsed().as_secs(),
                        })
                    })
                })
                .collect()
        };
        out.sort_by(|a, b| a.jid.as_str().cmp(b.jid.as_str()));
        out
    }

    /// Number of bound resources.
    pub fn count(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Account, Vec<BoundResource>>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single Vec operation), so poisoning is ignored.
        self.by_bare.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Account, Vec<BoundResource>>> {
        self.by_bare.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ends a session: unbinds it and tells the features what it left
/// behind (`SessionEnded`: presence broadcasts unavailable, last activity
/// records the time). Nothing happens for a session already replaced.
pub async fn end_session(server: &crate::server::Server, jid: &FullJid, session_id: u64) {
    if let Some(departed) = server.sessions.unbind(jid, session_id) {
        let mut event = crate::feature::Event::SessionEnded {
            jid,
            departed: &departed,
        };
        server.features.fire(server, &mut event).await;
    }
}

/// A session already has directed presence out to as many recipients as
/// it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectedFull;

fn into_list(set: HashSet<Box<str>>) -> Vec<String> {
    set.into_iter().map(String::from).collect()
}

fn queue(tx: &QueueSender<Outbound>, data: Arc<OutStanza>) -> Result<(), DeliveryError> {
    tx.try_send(Outbound::Stanza(data)).map_err(|e| match e {
        QueueError::Full => DeliveryError::QueueFull,
        QueueError::Closed => DeliveryError::Offline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_binding_wins_and_old_unbind_is_harmless() {
        let reg = SessionRegistry::default();
        let jid = FullJid::new("a@x/r").unwrap();
        let (tx1, rx1) = crate::queue::queue(4, usize::MAX);
        let (tx2, rx2) = crate::queue::queue(4, usize::MAX);
        reg.bind(&jid, 1, tx1);
        reg.bind(&jid, 2, tx2);
        assert!(matches!(
            rx1.try_recv(),
            Some(Outbound::Close(StreamErrorCondition::Conflict))
        ));
        reg.unbind(&jid, 1);
        assert!(reg.is_bound(&jid));
        reg.send_to_full(&jid, OutStanza::serialized(Bytes::from_static(b"<x/>")))
            .unwrap();
        assert!(matches!(rx2.try_recv(), Some(Outbound::Stanza(_))));
        let list = reg.list();
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].session_id, list[0].available), (2, false));
        reg.unbind(&jid, 2);
        assert_eq!(reg.count(), 0);
        assert!(reg.list().is_empty());
    }

    /// A replacement from another node names the session it displaced:
    /// one bound here again since (newer than the other node's) stays.
    #[test]
    fn a_replacement_from_elsewhere_closes_only_the_session_it_names() {
        let reg = SessionRegistry::default();
        let jid = FullJid::new("a@x/r").unwrap();
        let (tx1, _rx1) = crate::queue::queue(4, usize::MAX);
        let (tx3, rx3) = crate::queue::queue(4, usize::MAX);
        reg.bind(&jid, 1, tx1);
        reg.bind(&jid, 3, tx3);
        // Displaced on the other node was session 1, replaced here since.
        reg.replaced_elsewhere(&jid, 1);
        assert_eq!(reg.session_id(&jid), Some(3));
        assert!(rx3.try_recv().is_none());
        // The one it names is closed with conflict.
        reg.replaced_elsewhere(&jid, 3);
        assert_eq!(reg.session_id(&jid), None);
        assert!(matches!(
            rx3.try_recv(),
            Some(Outbound::Close(StreamErrorCondition::Conflict))
        ));
    }

    #[test]
    fn directed_recipients_are_a_bounded_set() {
        let reg = SessionRegistry::default();
        let jid = FullJid::new("a@x/r").unwrap();
        let (tx, _rx) = crate::queue::queue(4, 1 << 20);
        reg.bind(&jid, 1, tx);
        assert_eq!(reg.note_directed(&jid, "b@x", true, 2), Ok(()));
        // The same recipient again takes no new place.
        assert_eq!(reg.note_directed(&jid, "b@x", true, 2), Ok(()));
        assert_eq!(reg.note_directed(&jid, "c@x", true, 2), Ok(()));
        assert_eq!(reg.note_directed(&jid, "d@x", true, 2), Err(DirectedFull));
        // Unavailable frees a place.
        assert_eq!(reg.note_directed(&jid, "b@x", false, 2), Ok(()));
        assert_eq!(reg.note_directed(&jid, "d@x", true, 2), Ok(()));
        let mut left = reg.take_directed(&jid);
        left.sort();
        assert_eq!(left, ["c@x", "d@x"]);
        assert!(reg.take_directed(&jid).is_empty());
        assert_eq!(reg.note_directed(&jid, "e@x", true, 2), Ok(()));
        assert_eq!(reg.unbind(&jid, 1).unwrap().directed, ["e@x"]);
    }

    #[test]
    fn full_queue_is_reported() {
        let reg = SessionRegistry::default();
        let jid = FullJid::new("a@x/r").unwrap();
        let (tx, _rx) = crate::queue::queue(1, usize::MAX);
        reg.bind(&jid, 1, tx);
        reg.send_to_full(&jid, OutStanza::serialized(Bytes::new()))
            .unwrap();
        assert_eq!(
            reg.send_to_full(&jid, OutStanza::serialized(Bytes::new())),
            Err(DeliveryError::QueueFull)
        );
    }
}
