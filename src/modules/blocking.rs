//! Blocking Command (XEP-0191): the user's blocklist (get, block, unblock,
//! unblock all, pushes to the resources that asked for it), and the filter
//! the router applies to every stanza between a user and a JID they blocked.
//!
//! Blocklists are kept in memory ([`BlocklistCache`], loaded lazily from the
//! per-user key-value store under `blocklist`), because the filter runs for
//! every routed stanza: for a user who blocks nobody the check is one hash
//! look-up and never touches the database.

use crate::stanza::bare::Bare;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use jid::{FullJid, Jid};

use super::holders::Holders;
use super::{IqFuture, IqOutcome, IqRequest, IqTarget};
use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::routes::Route;
use crate::server::Server;
use crate::stanza::{StanzaErrorCondition, StanzaKind};
use crate::storage::StorageError;
use crate::xml::{Element, NS_CLIENT};

/// Namespace of the blocking protocol and its disco feature.
pub const NS: &str = "urn:xmpp:blocking";

/// Namespace of XEP-0191's application error.
pub const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";

/// Key of the blocklist in the per-user key-value store.
const STORE_KEY: &str = "blocklist";

/// Most JIDs one user may block: the list lives in memory while the user is
/// active, so it is bounded like everything else a client can grow.
pub const MAX_BLOCKLIST_ITEMS: usize = 10_000;

/// Most users whose blocklist is held in memory; beyond it an arbitrary
/// entry is dropped (and reloaded from the store when next needed).
const CACHE_CAPACITY: usize = 200_000;

/// The blocking feature: its blocklist cache, the IQs, and the filter on
/// every routed stanza (a `PreRoute` subscriber).
#[derive(Debug, Default)]
pub struct Blocking {
    cache: BlocklistCache,
}

impl Feature for Blocking {
    fn name(&self) -> &'static str {
        "blocking"
    }

    fn xeps(&self) -> &'static [u16] {
        &[191]
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &[NS],
            account: &[],
        }
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    fn handle_iq<'a>(&'a self, req: &'a IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(answer(&self.cache, req))
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        // Early: a blocked stanza must not reach any later filter or store.
        &[(EventKind::PreRoute, -100), (EventKind::AccountDeleted, 0)]
    }

    fn on_event_now(&self, server: &Server, event: &mut Event<'_>) -> Option<Verdict> {
        // The common case: both parties' lists are in memory (most users
        // block nobody, and an empty list is cached too).
        let Event::PreRoute {
            origin,
            kind,
            to,
            stanza,
        } = event
        else {
            return None;
        };
        let local = origin.session().is_some();
        match filter_cached(
            &self.cache,
            server,
            origin.sender(),
            local,
            to,
            *kind,
            stanza,
        )? {
            Filter::Pass => Some(Verdict::Continue),
            Filter::Drop => Some(Verdict::Stop),
            // Answers are rare: the async path builds them.
            Filter::Bounce(_) => None,
        }
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            match event {
                Event::PreRoute {
                    origin,
                    kind,
                    to,
                    stanza,
                } => {
                    let local = origin.session().is_some();
                    match filter(
                        &self.cache,
                        server,
                        origin.sender(),
                        local,
                        to,
                        *kind,
                        stanza,
                    )
                    .await
                    {
                        Filter::Pass => Verdict::Continue,
                        Filter::Drop => Verdict::Stop,
                        Filter::Bounce(why) => {
                            if let Some(reply) = bounce_reply(stanza, why) {
                                crate::router::deliver_reply(server, *origin, &reply);
                            }
                            Verdict::Stop
                        }
                    }
                }
                // A later account of the same name must not inherit the list.
                Event::AccountDeleted { user } => {
                    self.cache.forget(&Jid::from((*user).clone()));
                    Verdict::Continue
                }
                _ => Verdict::Continue,
            }
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The running server's blocklist cache (None if blocking is not registered).
fn cache_of(server: &Server) -> Option<&BlocklistCache> {
    server.features.get::<Blocking>().map(|b| &b.cache)
}

/// What the router does with a stanza after the blocklist check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// Route it as usual.
    Pass,
    /// Drop it silently.
    Drop,
    /// Answer the sender with this error reply instead of routing
    /// (built by the blocking module, so it can carry XEP-0191's
    /// `<blocked xmlns='urn:xmpp:blocking:errors'/>`).
    Bounce(BounceKind),
}

/// The two error answers XEP-0191 §3.3 prescribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceKind {
    /// The sender blocked the recipient: not-acceptable + <blocked/>.
    SenderBlocks,
    /// The recipient blocked the sender: service-unavailable.
    RecipientBlocks,
}

/// One user's blocked JIDs, in normalised form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocklist {
    items: HashSet<String>,
}

impl Blocklist {
    /// Reads the stored form (one JID a line); lines that are not JIDs are
    /// skipped, so one bad line cannot lock a user out of their list.
    pub fn from_stored(stored: &str) -> Blocklist {
        let items = stored
            .lines()
            .filter_map(|l| Jid::new(l.trim()).ok())
            .map(Jid::into_inner)
            .collect();
        Blocklist { items }
    }

    /// The stored form: sorted, one JID a line.
    pub fn to_stored(&self) -> String {
        self.sorted().join("\n")
    }

    /// The blocked JIDs, sorted.
    pub fn sorted(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.items.iter().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds a JID; true if it was not there.
    pub fn insert(&mut self, jid: &Jid) -> bool {
        self.items.insert(jid.as_str().to_string())
    }

    /// Removes a JID; true if it was there.
    pub fn remove(&mut self, jid: &Jid) -> bool {
        self.items.remove(jid.as_str())
    }

    /// Does an item match `jid`? The rules of XEP-0191 §6 (those of
    /// XEP-0016): a full-JID item matches only that JID, a bare-JID item
    /// any of its resources, a domain/resource item only that JID, and a
    /// domain item the domain and every JID at it. Allocation-free.
    pub fn blocks(&self, jid: &Jid) -> bool {
        if self.items.is_empty() {
            return false;
        }
        let s = jid.as_str();
        // The item equal to the JID itself, whichever of the four forms it is.
        if self.items.contains(s) {
            return true;
        }
        if let (Some(_), Some(res)) = (jid.node(), jid.resource()) {
            if self.items.contains(&s[..s.len() - res.as_str().len() - 1]) {
                return true;
            }
        }
        (jid.node().is_some() || jid.resource().is_some())
            && self.items.contains(jid.domain().as_str())
    }
}

/// Blocklists of recently active users, and which resources asked for theirs.
#[derive(Debug, Default)]
pub struct BlocklistCache {
    /// By bare JID. An empty list is cached too: that is what makes the
    /// common case free of database reads.
    lists: RwLock<HashMap<String, Arc<Blocklist>>>,
    /// Bumped by every change, so a load that raced with a change does not
    /// put the older list back into the cache.
    generation: AtomicU64,
    /// Full JIDs that requested the blocklist (XEP-0191 §3.3: they get
    /// pushes), by bare JID. Unbound ones are pruned whenever the user's
    /// entry is touched.
    interested: Mutex<HashMap<String, Vec<FullJid>>>,
    /// Serialises changes, so two resources blocking at once cannot lose
    /// one another's update. Changes are rare; reads never take it.
    changes: tokio::sync::Mutex<()>,
    /// Which users have a list stored at all (most have none): a user
    /// known to have none gets the empty list without a database read.
    holders: ListHolders,
}

/// The [`Holders`] of stored blocklists.
#[derive(Debug)]
struct ListHolders(Holders);

impl Default for ListHolders {
    fn default() -> ListHolders {
        ListHolders(Holders::new(STORE_KEY))
    }
}

impl BlocklistCache {
    /// Does `owner` (a local bare JID) block `other`? Loads `owner`'s list on
    /// first need; a storage failure is logged and counts as "not blocked",
    /// since refusing all traffic for an unreadable list would be worse.
    pub async fn blocks(&self, server: &Server, owner: &Jid, other: &Jid) -> bool {
        if let Some(hit) = self.cached(owner.bare_str(), other) {
            return hit;
        }
        match self.load(server, owner).await {
            Ok(list) => list.blocks(other),
            Err(e) => {
                tracing::warn!(user = %owner.bare_str(), "cannot read blocklist: {e}");
                false
            }
        }
    }

    fn cached(&self, owner_bare: &str, other: &Jid) -> Option<bool> {
        self.read_lists().get(owner_bare).map(|l| l.blocks(other))
    }

    /// `owner`'s list, from memory or from the store.
    pub async fn load(&self, server: &Server, owner: &Jid) -> Result<Arc<Blocklist>, StorageError> {
        let bare = owner.bare_str();
        if let Some(l) = self.read_lists().get(bare) {
            return Ok(l.clone());
        }
        let Some(node) = owner.node() else {
            return Ok(Arc::default());
        };
        let seen = self.generation.load(Ordering::Acquire);
        let stored = if self.holders.0.may_have(server, bare).await {
            server
                .store
                .user_data_get(owner.domain().as_str(), node.as_str(), STORE_KEY)
                .await?
        } else {
            None
        };
        let list = Arc::new(
            stored
                .map(|s| Blocklist::from_stored(&s))
                .unwrap_or_default(),
        );
        let mut lists = self.write_lists();
        if self.generation.load(Ordering::Acquire) == seen {
            if lists.len() >= CACHE_CAPACITY && !lists.contains_key(bare) {
                if let Some(k) = lists.keys().next().cloned() {
                    lists.remove(&k);
                }
            }
            lists
                .entry(bare.to_string())
                .or_insert_with(|| list.clone());
        }
        Ok(list)
    }

    /// Stores `list` as `owner`'s and makes it the one the filter sees.
    async fn save(
        &self,
        server: &Server,
        owner: &Jid,
        list: Blocklist,
    ) -> Result<(), StorageError> {
        let (domain, node) = (
            owner.domain().as_str(),
            owner.node().map_or("", |n| n.as_str()),
        );
        if list.is_empty() {
            server
                .store
                .user_data_delete(domain, node, STORE_KEY)
                .await?;
            self.holders.0.removed(owner.bare_str());
        } else {
            server
                .store
                .user_data_put(domain, node, STORE_KEY, &list.to_stored())
                .await?;
            self.holders.0.added(owner.bare_str());
        }
        let mut lists = self.write_lists();
        self.generation.fetch_add(1, Ordering::AcqRel);
        lists.insert(owner.bare_str().to_string(), Arc::new(list));
        Ok(())
    }

    /// Drops `owner`'s list from memory: for when the account is deleted
    /// in-process, so a new account of the same name starts with none.
    pub fn forget(&self, owner: &Jid) {
        let mut lists = self.write_lists();
        self.generation.fetch_add(1, Ordering::AcqRel);
        lists.remove(owner.bare_str());
        self.holders.0.removed(owner.bare_str());
    }

    /// Records that `resource` requested the blocklist.
    fn add_interested(&self, server: &Server, resource: &FullJid) {
        let mut map = self.interested.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(resource.bare_str().to_string()).or_default();
        list.retain(|r| r != resource && server.sessions.is_bound(r));
        list.push(resource.clone());
    }

    /// The bound resources of `owner` that requested the blocklist.
    fn interested(&self, server: &Server, owner: &Jid) -> Vec<FullJid> {
        let mut map = self.interested.lock().unwrap_or_else(|e| e.into_inner());
        let bare = owner.bare_str();
        let Some(list) = map.get_mut(bare) else {
            return Vec::new();
        };
        list.retain(|r| server.sessions.is_bound(r));
        let out = list.clone();
        if list.is_empty() {
            map.remove(bare);
        }
        out
    }

    fn read_lists(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Blocklist>>> {
        // Every update is a single map operation: a panic elsewhere cannot
        // leave the map half-changed, so poisoning is ignored.
        self.lists.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_lists(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Blocklist>>> {
        self.lists.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks a stanza from `origin` to `to` against both parties' blocklists:
/// the sender's when `origin_is_local` (a local user, not a component), the
/// recipient's when it is a local user. Loads lists that are not in memory.
async fn filter(
    cache: &BlocklistCache,
    server: &Server,
    origin: &Jid,
    origin_is_local: bool,
    to: &Jid,
    kind: StanzaKind,
    stanza: &Element,
) -> Filter {
    let sender = if origin_is_local {
        cache.blocks(server, origin, to).await
    } else {
        false
    };
    let recipient = to.node().is_some()
        && server.route(to.domain().as_str()) == Route::Host
        && cache.blocks(server, to, origin).await;
    let decided = decide(
        server,
        origin,
        origin_is_local,
        to,
        kind,
        stanza,
        || Some(sender),
        || Some(recipient),
    );
    decided.unwrap_or(Filter::Pass)
}

/// [`filter`] from the lists in memory alone; None when one must be loaded.
fn filter_cached(
    cache: &BlocklistCache,
    server: &Server,
    origin: &Jid,
    origin_is_local: bool,
    to: &Jid,
    kind: StanzaKind,
    stanza: &Element,
) -> Option<Filter> {
    decide(
        server,
        origin,
        origin_is_local,
        to,
        kind,
        stanza,
        || cache.cached(origin.bare_str(), to),
        || cache.cached(to.bare_str(), origin),
    )
}

/// The rule, given how to ask whether the sender blocks the recipient and
/// whether the recipient blocks the sender (each asked only when it
/// matters; None: unknown yet).
#[allow(clippy::too_many_arguments)]
fn decide(
    server: &Server,
    origin: &Jid,
    origin_is_local: bool,
    to: &Jid,
    kind: StanzaKind,
    stanza: &Element,
    sender_blocks: impl FnOnce() -> Option<bool>,
    recipient_blocks: impl FnOnce() -> Option<bool>,
) -> Option<Filter> {
    // XEP-0191 §5: a user's own resources are never blocked from one another.
    if origin.bare_str() == to.bare_str() {
        return Some(Filter::Pass);
    }
    let to_local = server.route(to.domain().as_str()) == Route::Host;
    // The user's own server stays reachable even when its domain is blocked:
    // it is what serves the session (and the blocklist itself).
    let to_server = to_local && to.node().is_none();
    // Only a local user has a blocklist here; a component's is its own business.
    if origin_is_local && !to_server && sender_blocks()? {
        return Some(outbound(kind, stanza));
    }
    if to_local && to.node().is_some() && recipient_blocks()? {
        return Some(inbound(kind, stanza));
    }
    Some(Filter::Pass)
}

/// Is `other` blocked by local user `owner`? For modules that deliver on a
/// user's behalf (presence broadcast, offline delivery) outside the router.
pub async fn is_blocked(server: &Server, owner: &Jid, other: &Jid) -> bool {
    match cache_of(server) {
        Some(cache) => {
            owner.bare_str() != other.bare_str() && cache.blocks(server, owner, other).await
        }
        None => false,
    }
}

/// XEP-0191 §3.3: the user sends to a JID they blocked — refuse with
/// not-acceptable + <blocked/>, except for what is never answered.
fn outbound(kind: StanzaKind, stanza: &Element) -> Filter {
    match (kind, stanza.attr("type")) {
        (_, Some("error")) | (StanzaKind::Iq, Some("result")) => Filter::Drop,
        _ => Filter::Bounce(BounceKind::SenderBlocks),
    }
}

/// XEP-0191 §3.3: a blocked JID sends to the user — the user must look
/// offline: presence dropped without answer, messages and IQ get/set
/// answered with service-unavailable, IQ results and errors dropped.
fn inbound(kind: StanzaKind, stanza: &Element) -> Filter {
    match (kind, stanza.attr("type")) {
        (StanzaKind::Presence, _) | (_, Some("error")) => Filter::Drop,
        (StanzaKind::Iq, Some("get" | "set")) => Filter::Bounce(BounceKind::RecipientBlocks),
        (StanzaKind::Iq, _) => Filter::Drop,
        (StanzaKind::Message, _) => Filter::Bounce(BounceKind::RecipientBlocks),
    }
}

/// The error reply for a bounced stanza (None for errors, which are never answered).
fn bounce_reply(stanza: &Element, kind: BounceKind) -> Option<Element> {
    use crate::stanza::error_reply;
    match kind {
        BounceKind::RecipientBlocks => {
            error_reply(stanza, StanzaErrorCondition::ServiceUnavailable, None)
        }
        BounceKind::SenderBlocks => {
            let mut reply = error_reply(stanza, StanzaErrorCondition::NotAcceptable, None)?;
            if let Some(err) = reply.get_child_mut("error", stanza.ns()) {
                err.append_child(Element::new("blocked", NS_BLOCKING_ERRORS));
            }
            Some(reply)
        }
    }
}

async fn answer(cache: &BlocklistCache, req: &IqRequest<'_>) -> IqOutcome {
    // The blocklist is the account's own business (XEP-0191 §3: IQs with
    // no 'to'); nobody else may read or change it.
    if req.target != (IqTarget::Account { own: true }) {
        return Err(StanzaErrorCondition::ServiceUnavailable.into());
    }
    match (req.payload.name(), req.is_set) {
        ("blocklist", false) => get(cache, req).await,
        ("block", true) => block(cache, req).await,
        ("unblock", true) => unblock(cache, req).await,
        _ => Err(StanzaErrorCondition::BadRequest.into()),
    }
}

fn internal(e: StorageError) -> StanzaErrorCondition {
    tracing::error!("blocklist storage: {e}");
    StanzaErrorCondition::InternalServerError
}

async fn get(cache: &BlocklistCache, req: &IqRequest<'_>) -> IqOutcome {
    let list = cache.load(req.server, req.from).await.map_err(internal)?;
    if let Ok(session) = req.from.try_as_full() {
        cache.add_interested(req.server, session);
    }
    Ok(Some(with_items(
        Element::new("blocklist", NS),
        list.sorted(),
    )))
}

fn with_items<'a>(mut el: Element, jids: impl IntoIterator<Item = &'a str>) -> Element {
    for j in jids {
        el.append_child(Element::new("item", NS).with_attr("jid", j));
    }
    el
}

/// The JIDs of the `<item/>`s of a block or unblock command.
fn items(payload: &Element) -> Result<Vec<Jid>, StanzaErrorCondition> {
    payload
        .children()
        .filter(|c| c.is("item", NS))
        .map(|item| {
            let raw = item.attr("jid").ok_or(StanzaErrorCondition::BadRequest)?;
            Jid::new(raw).map_err(|_| StanzaErrorCondition::JidMalformed)
        })
        .collect()
}

async fn block(cache: &BlocklistCache, req: &IqRequest<'_>) -> IqOutcome {
    let jids = items(req.payload)?;
    if jids.is_empty() {
        return Err(StanzaErrorCondition::BadRequest.into());
    }
    let (server, owner): (&Server, &Jid) = (req.server, req.from);
    let added = {
        let _change = cache.changes.lock().await;
        let mut list = (*cache.load(server, owner).await.map_err(internal)?).clone();
        let added: Vec<&Jid> = jids.iter().filter(|j| list.insert(j)).collect();
        if list.len() > MAX_BLOCKLIST_ITEMS {
            return Err(StanzaErrorCondition::PolicyViolation.into());
        }
        if !added.is_empty() {
            cache.save(server, owner, list).await.map_err(internal)?;
        }
        added
    };
    let push = with_items(Element::new("block", NS), jids.iter().map(|j| j.as_str()));
    push_to_interested(cache, server, owner, push);
    for jid in added {
        presence_after_change(server, owner, jid, true).await;
    }
    Ok(None)
}

async fn unblock(cache: &BlocklistCache, req: &IqRequest<'_>) -> IqOutcome {
    let jids = items(req.payload)?;
    let (server, owner): (&Server, &Jid) = (req.server, req.from);
    let removed: Vec<Jid> = {
        let _change = cache.changes.lock().await;
        let list = cache.load(server, owner).await.map_err(internal)?;
        let removed: Vec<Jid> = if jids.is_empty() {
            // An empty <unblock/> unblocks everyone (XEP-0191 §3.5).
            list.sorted()
                .into_iter()
                .filter_map(|j| Jid::new(j).ok())
                .collect()
        } else {
            jids.iter()
                .filter(|j| list.items.contains(j.as_str()))
                .cloned()
                .collect()
        };
        if !removed.is_empty() {
            let mut list = (*list).clone();
            for j in &removed {
                list.remove(j);
            }
            cache.save(server, owner, list).await.map_err(internal)?;
        }
        removed
    };
    let push = with_items(Element::new("unblock", NS), jids.iter().map(|j| j.as_str()));
    push_to_interested(cache, server, owner, push);
    for jid in &removed {
        presence_after_change(server, owner, jid, false).await;
    }
    Ok(None)
}

/// XEP-0191 §3.3–§3.5: every resource that requested the blocklist learns
/// of the change with an IQ set.
fn push_to_interested(cache: &BlocklistCache, server: &Server, owner: &Jid, payload: Element) {
    for resource in cache.interested(server, owner) {
        let iq = Element::new("iq", NS_CLIENT)
            .with_attr("to", resource.as_str())
            .with_attr("type", "set")
            .with_attr("id", format!("block-push-{}", server.next_id()))
            .with_child(payload.clone());
        // A resource too slow to take the push is already being pushed back on.
        let _ = crate::router::deliver_local(server, &resource, &iq);
    }
}

/// XEP-0191 §3.3/§3.4: a newly blocked JID gets unavailable presence from
/// the user's available resources, so the user appears offline to it; an
/// unblocked one gets the user's current presence again. Either only when
/// the roster lets it see the user's presence. Only local users can be
/// reached until federation arrives, and a domain item is not taken as
/// "every user at that domain".
async fn presence_after_change(server: &Server, owner: &Jid, jid: &Jid, blocked: bool) {
    if jid.node().is_none() || server.route(jid.domain().as_str()) != Route::Host {
        return;
    }
    let (user, contact) = (owner.bare(), jid.bare());
    match super::roster::is_subscribed_from(server, &user, &contact).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::error!(error = %e, "roster storage");
            return;
        }
    }
    match (jid.clone().try_into_full(), blocked) {
        (Err(_), true) => super::presence::send_unavailable_to(server, &user, &contact),
        (Err(_), false) => super::presence::send_current_presence(server, &user, &contact),
        // A single blocked resource: only it stops seeing the user.
        (Ok(full), true) => {
            for (from, _) in server.sessions.available_resources(&user) {
                let presence = Element::new("presence", NS_CLIENT)
                    .with_attr("from", from.as_str())
                    .with_attr("to", full.as_str())
                    .with_attr("type", "unavailable");
                let _ = crate::router::deliver_local(server, &full, &presence);
            }
        }
        // The other resources of the contact kept seeing the user's
        // presence; the unblocked one catches up with the next broadcast.
        (Ok(_), false) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Blocklist {
        let mut l = Blocklist::default();
        for i in items {
            l.insert(&Jid::new(i).unwrap());
        }
        l
    }

    fn blocks(l: &Blocklist, jid: &str) -> bool {
        l.blocks(&Jid::new(jid).unwrap())
    }

    #[test]
    fn full_jid_item_matches_only_that_resource() {
        let l = list(&["romeo@montague.lit/orchard"]);
        assert!(blocks(&l, "romeo@montague.lit/orchard"));
        assert!(!blocks(&l, "romeo@montague.lit/garden"));
        assert!(!blocks(&l, "romeo@montague.lit"));
        assert!(!blocks(&l, "montague.lit"));
    }

    #[test]
    fn bare_jid_item_matches_any_resource() {
        let l = list(&["romeo@montague.lit"]);
        assert!(blocks(&l, "romeo@montague.lit"));
        assert!(blocks(&l, "romeo@montague.lit/orchard"));
        assert!(!blocks(&l, "benvolio@montague.lit/orchard"));
        assert!(!blocks(&l, "montague.lit"));
        assert!(!blocks(&l, "montague.lit/orchard"));
    }

    #[test]
    fn domain_resource_item_matches_only_that_jid() {
        let l = list(&["montague.lit/chat"]);
        assert!(blocks(&l, "montague.lit/chat"));
        assert!(!blocks(&l, "montague.lit"));
        assert!(!blocks(&l, "montague.lit/other"));
        assert!(!blocks(&l, "romeo@montague.lit/chat"));
    }

    #[test]
    fn domain_item_matches_everything_at_the_domain() {
        let l = list(&["montague.lit"]);
        for j in [
            "montague.lit",
            "montague.lit/chat",
            "romeo@montague.lit",
            "romeo@montague.lit/orchard",
        ] {
            assert!(blocks(&l, j), "{j}");
        }
        assert!(!blocks(&l, "capulet.lit"));
        assert!(!blocks(&l, "romeo@sub.montague.lit"));
    }

    #[test]
    fn matching_uses_normalised_jids() {
        let l = list(&["Romeo@Montague.LIT"]);
        assert!(blocks(&l, "romeo@montague.lit/Orchard"));
        assert!(!Blocklist::default().blocks(&Jid::new("a@b").unwrap()));
    }

    #[test]
    fn stored_form_round_trips_and_skips_garbage() {
        let l = list(&["b@x", "a@x/r", "x"]);
        let s = l.to_stored();
        assert_eq!(s, "a@x/r\nb@x\nx");
        assert_eq!(Blocklist::from_stored(&s), l);
        assert_eq!(Blocklist::from_stored("a@x\n@@bad\n\n").len(), 1);
    }

    #[test]
    fn verdicts_follow_the_direction() {
        let el = |name: &str, t: Option<&str>| {
            let mut e = Element::new(name, NS_CLIENT);
            if let Some(t) = t {
                e.set_attr("type", t);
            }
            e
        };
        use StanzaKind::*;
        assert_eq!(
            outbound(Message, &el("message", Some("chat"))),
            Filter::Bounce(BounceKind::SenderBlocks)
        );
        assert_eq!(
            outbound(Message, &el("message", Some("error"))),
            Filter::Drop
        );
        assert_eq!(outbound(Iq, &el("iq", Some("result"))), Filter::Drop);
        assert_eq!(inbound(Presence, &el("presence", None)), Filter::Drop);
        assert_eq!(
            inbound(Presence, &el("presence", Some("subscribe"))),
            Filter::Drop
        );
        assert_eq!(
            inbound(Message, &el("message", None)),
            Filter::Bounce(BounceKind::RecipientBlocks)
        );
        assert_eq!(
            inbound(Iq, &el("iq", Some("get"))),
            Filter::Bounce(BounceKind::RecipientBlocks)
        );
        assert_eq!(inbound(Iq, &el("iq", Some("result"))), Filter::Drop);
    }

    #[test]
    fn blocked_error_carries_the_application_condition() {
        let m = Element::new("message", NS_CLIENT)
            .with_attr("from", "a@x/r")
            .with_attr("to", "b@x");
        let r = bounce_reply(&m, BounceKind::SenderBlocks).unwrap();
        let e = r.get_child("error", NS_CLIENT).unwrap();
        assert!(e.get_child("blocked", NS_BLOCKING_ERRORS).is_some());
        assert!(e
            .get_child("not-acceptable", crate::stanza::NS_STANZA_ERRORS)
            .is_some());
    }
}
