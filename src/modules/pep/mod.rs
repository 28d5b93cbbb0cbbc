//! Personal Eventing Protocol (XEP-0163): every account's bare JID is a
//! publish-subscribe service (the engine in `crate::pubsub`) that the
//! account owns. Notifications go to the owner's resources and to
//! contacts with a presence subscription whose capabilities ask for the
//! node (`+notify`, learned in [`caps`]), and to explicit subscribers;
//! a contact whose resource becomes available gets the last items.

pub mod caps;
pub mod disco;
mod notify;

use crate::stanza::bare::Bare;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jid::{BareJid, FullJid, Jid};

use super::roster;
use crate::feature::iq::{IqFuture, IqRequest, IqTarget};
use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::pubsub::{self, Change, Limits, Requester, Service};
use crate::router::Origin;
use crate::server::Server;
use crate::stanza::StanzaErrorCondition;
use crate::xml::Element;
use caps::{Announced, ContactCaps};

/// What PEP advertises on the account (XEP-0060 §10 features; what
/// Conversations, Monal and Gajim look for).
pub const ACCOUNT_FEATURES: &[&str] = &[
    "http://jabber.org/protocol/pubsub",
    "http://jabber.org/protocol/pubsub#access-open",
    "http://jabber.org/protocol/pubsub#access-presence",
    "http://jabber.org/protocol/pubsub#access-roster",
    "http://jabber.org/protocol/pubsub#access-whitelist",
    "http://jabber.org/protocol/pubsub#auto-create",
    "http://jabber.org/protocol/pubsub#auto-subscribe",
    "http://jabber.org/protocol/pubsub#config-node",
    "http://jabber.org/protocol/pubsub#config-node-max",
    "http://jabber.org/protocol/pubsub#create-and-configure",
    "http://jabber.org/protocol/pubsub#create-nodes",
    "http://jabber.org/protocol/pubsub#delete-items",
    "http://jabber.org/protocol/pubsub#delete-nodes",
    "http://jabber.org/protocol/pubsub#filtered-notifications",
    "http://jabber.org/protocol/pubsub#item-ids",
    "http://jabber.org/protocol/pubsub#last-published",
    "http://jabber.org/protocol/pubsub#manage-subscriptions",
    "http://jabber.org/protocol/pubsub#member-affiliation",
    "http://jabber.org/protocol/pubsub#modify-affiliations",
    "http://jabber.org/protocol/pubsub#multi-items",
    "http://jabber.org/protocol/pubsub#outcast-affiliation",
    "http://jabber.org/protocol/pubsub#persistent-items",
    "http://jabber.org/protocol/pubsub#presence-notifications",
    "http://jabber.org/protocol/pubsub#publish",
    "http://jabber.org/protocol/pubsub#publish-options",
    "http://jabber.org/protocol/pubsub#publisher-affiliation",
    "http://jabber.org/protocol/pubsub#purge-nodes",
    "http://jabber.org/protocol/pubsub#retract-items",
    "http://jabber.org/protocol/pubsub#retrieve-affiliations",
    "http://jabber.org/protocol/pubsub#retrieve-default",
    "http://jabber.org/protocol/pubsub#retrieve-items",
    "http://jabber.org/protocol/pubsub#retrieve-subscriptions",
    "http://jabber.org/protocol/pubsub#subscribe",
];

/// The PEP feature: the IQs, and the capabilities it learns from presence.
#[derive(Debug, Default)]
pub struct Pep {
    caps: ContactCaps,
    /// Changes of a request whose result is not queued yet, by requester
    /// and IQ id: their notifications follow the result (`IqSetDone`), as
    /// in XEP-0060's examples. An entry lives for one request.
    answered: std::sync::Mutex<Answered>,
}

/// (requester, IQ id) → the service's owner and what the request changed.
type Answered = HashMap<(String, String), (BareJid, Vec<Change>)>;

impl Pep {
    fn lock_answered(&self) -> std::sync::MutexGuard<'_, Answered> {
        // One insert or remove at a time: poisoning cannot leave it half done.
        self.answered.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_answered(&self, from: &Jid, iq: &Element) -> bool {
        let key = (
            from.to_string(),
            iq.attr("id").unwrap_or_default().to_owned(),
        );
        self.lock_answered().contains_key(&key)
    }

    /// The capabilities learned from contacts' presence.
    pub fn caps(&self) -> &ContactCaps {
        &self.caps
    }
}

/// The PEP service of `owner`, with the configured limits.
pub fn service<'a>(server: &'a Server, owner: &'a BareJid) -> Service<'a> {
    let c = &server.config().pep;
    Service {
        store: &server.store,
        domain: owner.domain().as_str(),
        username: owner.node().map(|n| n.as_str()).unwrap_or_default(),
        limits: Limits {
            max_nodes: c.max_nodes,
            max_items: c.max_items,
            max_item_bytes: c.max_item_bytes,
            max_items_page: c.max_items_page,
            max_subscribers: c.max_subscribers,
            max_depth: server.config().limits.max_depth,
        },
    }
}

impl Feature for Pep {
    fn name(&self) -> &'static str {
        "pep"
    }

    // `[pep] enabled = false`: no PEP identity or features anywhere, and
    // the pubsub IQs find no handler (service-unavailable).
    fn enabled(&self, config: &crate::config::Config) -> bool {
        config.pep.enabled
    }

    fn xeps(&self) -> &[u16] {
        // XEP-0223: private storage is a whitelist node with persist_items,
        // which publish-options can ask for.
        &[60, 163, 223]
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &[],
            account: ACCOUNT_FEATURES,
        }
    }

    fn account_identity(&self) -> Option<(&'static str, &'static str)> {
        Some(("pubsub", "pep"))
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[pubsub::NS, pubsub::NS_OWNER]
    }

    fn handle_iq<'a>(&'a self, req: &'a IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(handle_iq(req))
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        // Before the presence feature, which takes the stanza.
        &[
            (EventKind::Presence, -10),
            (EventKind::SessionEnded, 10),
            (EventKind::IqSetDone, 0),
        ]
    }

    fn on_event_now(&self, server: &Server, event: &mut Event<'_>) -> Option<Verdict> {
        match event {
            Event::Presence { origin, to, stanza } => {
                self.presence(server, *origin, *to, stanza);
            }
            Event::SessionEnded { jid, .. } => self.caps.forget(jid),
            Event::IqSetDone { payload, .. } if subscription_of(payload).is_some() => return None,
            Event::IqSetDone { from, iq, .. } if self.has_answered(from, iq) => return None,
            _ => {}
        }
        Some(Verdict::Continue)
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            if let Event::IqSetDone {
                from, iq, payload, ..
            } = event
            {
                let key = (
                    from.to_string(),
                    iq.attr("id").unwrap_or_default().to_owned(),
                );
                let answered = self.lock_answered().remove(&key);
                if let Some((owner, changes)) = answered {
                    for change in &changes {
                        notify::change(server, &owner, change).await;
                    }
                }
                let owner = match iq.attr("to") {
                    Some(to) => Jid::new(to).ok().map(|j| j.bare()),
                    None => Some(from.bare()),
                };
                if let (Some(owner), Some((node, jid))) = (owner, subscription_of(payload)) {
                    notify::subscribed(server, &owner, node, &jid).await;
                }
            }
            Verdict::Continue
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Pep {
    /// Notes the capabilities in an available presence, forgets them on
    /// unavailable, and starts what follows (a disco#info query, sending
    /// last items) on a task of its own.
    fn presence(&self, server: &Server, origin: Origin<'_>, to: Option<&Jid>, stanza: &Element) {
        if !server.config().pep.enabled {
            return;
        }
        // A local user's broadcast, or a remote contact's presence to a
        // local user: the sender's resource.
        let (from, owner) = match (origin, to) {
            (Origin::Session(full), None) => (full.clone(), None),
            (Origin::Remote { from }, Some(to)) => match from.clone().try_into_full() {
                Ok(full) if to.node().is_some() => (full, Some(to.bare())),
                _ => return,
            },
            _ => return,
        };
        match stanza.attr("type") {
            None => {}
            Some("unavailable") => {
                self.caps.forget(&from);
                return;
            }
            Some(_) => return,
        }
        self.note_caps(server, from, owner, stanza, false);
    }

    /// Notes the capabilities an available presence of `from` announces
    /// (`owner`: the local user a remote resource's presence was sent to),
    /// and starts what follows: a disco#info query for a new `ver`, the
    /// last items `from` has not had yet. `at_publish`: noted as `owner`
    /// publishes (`notify`), whose notification reaches `from` by itself
    /// when its `ver` is known here; only a `ver` learned afterwards sends
    /// `owner`'s last items.
    pub(crate) fn note_caps(
        &self,
        server: &Server,
        from: FullJid,
        owner: Option<BareJid>,
        stanza: &Element,
        at_publish: bool,
    ) {
        let Some(c) = stanza.get_child("c", super::caps::NS) else {
            return;
        };
        let (Some("sha-1"), Some(node), Some(ver)) =
            (c.attr("hash"), c.attr("node"), c.attr("ver"))
        else {
            return;
        };
        let c = &server.config().pep;
        let announced = self
            .caps
            .announce(&from, ver, c.max_caps_resources, c.max_caps_queries);
        let Some(server) = server.arc() else {
            return;
        };
        let (node, ver) = (node.to_owned(), ver.to_owned());
        match announced {
            Announced::Full | Announced::Asking => {}
            Announced::Same | Announced::Known(_) if at_publish => {}
            // Unchanged caps: only a remote resource's presence reaching
            // another local user of ours is news (that user's items).
            Announced::Same => {
                if let Some(owner) = owner {
                    tokio::spawn(async move {
                        notify::last_items_to(&server, &from, &[owner]).await;
                    });
                }
            }
            Announced::Known(_) => {
                tokio::spawn(async move {
                    notify::last_items_on_presence(&server, &from, owner).await;
                });
            }
            Announced::Ask => {
                tokio::spawn(async move {
                    // Asked from our domain: the local user's, whichever
                    // side the resource is on.
                    let ours = match &owner {
                        Some(o) => o.domain().to_string(),
                        None => from.domain().to_string(),
                    };
                    learn(&server, &ours, &from, &node, &ver).await;
                    notify::last_items_on_presence(&server, &from, owner).await;
                });
            }
        }
    }
}

/// The node and JID of a `<pubsub><subscribe/></pubsub>` request.
fn subscription_of(payload: &Element) -> Option<(&str, Jid)> {
    if !payload.is("pubsub", pubsub::NS) {
        return None;
    }
    let s = payload.get_child("subscribe", pubsub::NS)?;
    Some((s.attr("node")?, Jid::new(s.attr("jid")?).ok()?))
}

/// Asks `jid` (from our domain `ours`) what `node#ver` stands for (XEP-0115 §6.2) and caches the
/// answer if its hash is `ver`.
async fn learn(server: &Server, ours: &str, jid: &FullJid, node: &str, ver: &str) {
    let Some(pep) = server.features.get::<Pep>() else {
        return;
    };
    let iq = Element::new("iq", crate::xml::NS_CLIENT)
        .with_attr("type", "get")
        .with_attr("to", jid.as_str())
        .with_child(
            Element::new("query", super::disco::NS_INFO).with_attr("node", format!("{node}#{ver}")),
        );
    let timeout = Duration::from_secs(server.config().pep.caps_query_timeout);
    let features = match server.iq_tracker.request(server, ours, iq, timeout).await {
        Ok(answer) => answer
            .get_child("query", super::disco::NS_INFO)
            .filter(|q| super::caps::verification_string(q) == ver)
            .map(|q| {
                q.children()
                    .filter(|c| c.is("feature", super::disco::NS_INFO))
                    .filter_map(|f| f.attr("var"))
                    .map(str::to_owned)
                    .collect::<HashSet<String>>()
            }),
        Err(_) => None,
    };
    if features.is_none() {
        tracing::debug!(%jid, ver, "capabilities not learned");
    }
    pep.caps
        .learned(ver, features, server.config().pep.caps_cache);
}

/// What the owner's roster says of a requester, for the access models.
pub struct Asker {
    pub owner: bool,
    /// The owner shares presence with it (subscription from or both).
    pub subscribed: bool,
    /// Its groups in the owner's roster.
    pub groups: Vec<String>,
}

impl Asker {
    /// Reads `requester`'s row in `owner`'s roster (none for the owner).
    pub async fn of(
        server: &Server,
        owner: &BareJid,
        requester: &BareJid,
        is_owner: bool,
    ) -> Result<Asker, crate::stanza::StanzaError> {
        if is_owner {
            return Ok(Asker {
                owner: true,
                subscribed: true,
                groups: Vec::new(),
            });
        }
        let item = roster::item(server, owner, requester).await.map_err(|e| {
            tracing::error!(error = %e, "roster");
            crate::stanza::StanzaError::from(StanzaErrorCondition::InternalServerError)
        })?;
        Ok(match item {
            Some(i) => Asker {
                owner: false,
                subscribed: i.from(),
                groups: i.record.groups,
            },
            None => Asker {
                owner: false,
                subscribed: false,
                groups: Vec::new(),
            },
        })
    }

    /// The engine's view of it, asking as `jid`.
    pub fn requester<'a>(&'a self, jid: &'a Jid) -> Requester<'a> {
        Requester {
            jid,
            owner: self.owner,
            presence_subscribed: self.subscribed,
            groups: &self.groups,
        }
    }
}

/// The account an IQ is for: its `to`, or the sender's own without one.
fn owner_of(req: &IqRequest<'_>) -> Option<BareJid> {
    match req.iq.attr("to") {
        Some(to) => Jid::new(to).ok().map(|j| j.bare()),
        None => Some(req.from.bare()),
    }
}

async fn handle_iq(req: &IqRequest<'_>) -> crate::feature::iq::IqOutcome {
    let server = req.server;
    if !server.config().pep.enabled || req.target == IqTarget::Server {
        return Err(StanzaErrorCondition::ServiceUnavailable.into());
    }
    let Some(owner) = owner_of(req) else {
        return Err(StanzaErrorCondition::JidMalformed.into());
    };
    let is_owner = req.target == IqTarget::Account { own: true };
    let asker = Asker::of(server, &owner, &req.from.bare(), is_owner).await?;
    let who = asker.requester(req.from);
    let mut changes = Vec::new();
    let answer = service(server, &owner)
        .handle(&who, req.payload, req.is_set, &mut changes)
        .await;
    if answer.is_ok() && !changes.is_empty() {
        match server.features.get::<Pep>() {
            // Sent once the result is queued (Event::IqSetDone).
            Some(pep) => {
                let key = (
                    req.from.to_string(),
                    req.iq.attr("id").unwrap_or_default().to_owned(),
                );
                pep.lock_answered().insert(key, (owner, changes));
            }
            None => {
                for change in &changes {
                    notify::change(server, &owner, change).await;
                }
            }
        }
    }
    answer
}

/// The changes' notifications, for an embedder publishing on a user's
/// behalf (avatar conversion, bookmarks).
pub async fn publish_changes(server: &Server, owner: &BareJid, changes: &[Change]) {
    for change in changes {
        notify::change(server, owner, change).await;
    }
}
