//! Presence (RFC 6121 §4): initial presence (probes, broadcast, presence
//! to the user's own resources, waiting subscription requests and offline
//! messages), updates, directed presence, subscription stanzas between
//! users, and the unavailable broadcast when a session ends for any reason.

use crate::stanza::bare::Bare;
use jid::{BareJid, FullJid, Jid};

use super::blocking;
use super::roster::{self, Inbound, SubscriptionKind};
use crate::feature::{Event, EventKind, Feature, HookFuture, Verdict};
use crate::router::{deliver, deliver_local, Origin};
use crate::routes::Route;
use crate::server::Server;
use crate::sessions::{Departed, Kept};
use crate::stanza::{error_reply, StanzaErrorCondition};
use crate::storage::StorageError;
use crate::xml::{Element, NS_CLIENT};

/// The presence feature (RFC 6121 §4, with the roster's subscription
/// states): takes every routed presence stanza, and broadcasts
/// unavailable when a session ends.
#[derive(Debug, Default)]
pub struct Presence;

impl Feature for Presence {
    fn name(&self) -> &'static str {
        "presence"
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[
            (EventKind::Presence, 0),
            (EventKind::SessionEnded, 0),
            (EventKind::KeptForLater, 0),
        ]
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            match event {
                Event::Presence { origin, to, stanza } => {
                    let to = to.cloned();
                    match (origin, to) {
                        (Origin::Session(session), to) => {
                            from_client(server, session, to, (*stanza).clone()).await
                        }
                        (Origin::Component { from, .. } | Origin::Remote { from }, Some(to)) => {
                            from_remote(server, from, to, (*stanza).clone()).await
                        }
                        _ => {}
                    }
                    Verdict::Stop
                }
                Event::SessionEnded { jid, departed } => {
                    session_ended(server, jid, departed).await;
                    Verdict::Continue
                }
                Event::KeptForLater {
                    user,
                    what: Kept::SubscriptionRequest,
                } => {
                    if let Err(e) = pending_again(server, user).await {
                        tracing::error!(error = %e, "presence storage");
                    }
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

/// A presence stanza sent by the local session `origin` (its `from` already
/// stamped with the full JID, `to` normalised).
async fn from_client(server: &Server, origin: &FullJid, to: Option<Jid>, stanza: Element) {
    let kind = stanza.attr("type").map(str::to_owned);
    let result = match (to, kind.as_deref()) {
        (None, None) => available(server, origin, stanza).await,
        (None, Some("unavailable")) => unavailable(server, origin, stanza).await,
        // A broadcast subscription or probe has no addressee: ignore it.
        (None, Some(_)) => Ok(()),
        (Some(to), Some(t)) if SubscriptionKind::from_type(Some(t)).is_some() => {
            let Some(kind) = SubscriptionKind::from_type(Some(t)) else {
                return;
            };
            subscription_from_client(server, origin, to.bare(), kind, stanza).await
        }
        // RFC 6121 §4.3: probes are the server's business.
        (Some(_), Some("probe")) => Ok(()),
        (Some(to), _) => {
            directed(server, origin, to, stanza);
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "presence storage");
    }
}

/// A presence stanza from a sender that is not a local user (an external
/// component, or a remote server over s2s) to a local JID, its `from`
/// checked and `to` normalised: the recipient's side of the subscription
/// state machine, probes answered from the recipient's roster, and
/// everything else delivered like directed presence.
async fn from_remote(server: &Server, from: &Jid, to: Jid, mut stanza: Element) {
    let (user, contact) = (to.bare(), from.bare());
    if user.node().is_none() {
        // Presence to the server itself has no recipient.
        return;
    }
    let result = match stanza.attr("type") {
        Some("probe") => {
            // RFC 6121 §4.3.2: only a contact the user shares presence with.
            match roster::is_subscribed_from(server, &user, &contact).await {
                Ok(true) => {
                    send_current_presence(server, &user, &contact);
                    Ok(())
                }
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            }
        }
        t => match SubscriptionKind::from_type(t) {
            Some(kind) => {
                // §3.1.3: subscription stanzas carry bare JIDs.
                stanza.set_attr("from", contact.as_str());
                stanza.set_attr("to", user.as_str());
                subscription_to_local(server, &contact, &user, kind, stanza).await
            }
            None => {
                deliver_to_jid(server, &to, &stanza);
                Ok(())
            }
        },
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "presence storage");
    }
}

/// A subscription stanza from `contact` (local, remote or a component)
/// arriving for local user `user`.
async fn subscription_to_local(
    server: &Server,
    contact: &BareJid,
    user: &BareJid,
    kind: SubscriptionKind,
    stanza: Element,
) -> Result<(), StorageError> {
    let (d, u) = (
        user.domain().as_str(),
        user.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    if !server.store.account_exists(d, u).await? {
        return Ok(());
    }
    match roster::inbound(server, user, contact, kind, &stanza).await? {
        Inbound::Deliver => {
            send_to_resources(server, user, &stanza);
            if kind == SubscriptionKind::Subscribe {
                // Kept for the user's next initial presence, which may
                // have come already on another node of a cluster that this
                // one does not know of yet. A single server has no one to
                // tell: the resource list is not even looked at then.
                if server.sessions.cluster_node().is_some()
                    && server.sessions.available_resources(user).is_empty()
                {
                    server
                        .sessions
                        .announce_kept_for_later(user, Kept::SubscriptionRequest)
                        .await;
                }
                let mut event = Event::SubscriptionRequest { user, contact };
                server.features.fire(server, &mut event).await;
            }
        }
        Inbound::Drop => {}
        Inbound::Refuse(cond) => {
            // Back to the requester, wherever it lives (a remote one over
            // s2s), so it knows the request was not kept.
            if let Some(reply) = error_reply(&stanza, cond, None) {
                send_to_resources(server, contact, &reply);
            }
        }
        Inbound::AutoApprove => {
            // Pre-approved (§3.4): answer for the user, then show presence.
            let reply = Element::new("presence", NS_CLIENT)
                .with_attr("from", user.as_str())
                .with_attr("to", contact.as_str())
                .with_attr("type", "subscribed");
            if server.route(contact.domain().as_str()) == Route::Host {
                // The approval reaches a local contact as if the user had
                // sent it: the contact's side of the state machine runs here.
                if let Inbound::Deliver =
                    roster::inbound(server, contact, user, SubscriptionKind::Subscribed, &reply)
                        .await?
                {
                    send_to_resources(server, contact, &reply);
                }
            } else {
                // A remote server or a component runs its own side.
                send_to_resources(server, contact, &reply);
            }
            send_current_presence(server, user, contact);
        }
    }
    Ok(())
}

/// Broadcast available presence: initial presence does the work of §4.2,
/// later ones only the broadcast (§4.4).
async fn available(server: &Server, origin: &FullJid, stanza: Element) -> Result<(), StorageError> {
    let priority = stanza
        .get_child("priority", NS_CLIENT)
        .and_then(|p| p.text().trim().parse::<i8>().ok())
        .unwrap_or(0);
    let mut kept = stanza.clone();
    kept.remove_attr("to");
    let id = session_id(server, origin);
    let was_available = server
        .sessions
        .set_presence(origin, id, Some(kept.clone()), priority);
    let user = origin.bare();
    let items = roster::items(server, &user).await?;
    broadcast(server, origin, &items, &kept).await;
    if !was_available {
        // Probes: the contacts the user is subscribed to, answered locally
        // with each available resource's presence, or — for a contact with
        // none — the last unavailable presence, stamped (§4.3.2).
        let mut offline_contacts = Vec::new();
        for item in items.iter().filter(|i| i.to()) {
            if let Ok(contact) = BareJid::new(&item.record.contact) {
                if !may_exchange(server, &user, &contact).await {
                    continue;
                }
                if server.route(contact.domain().as_str()) == Route::Remote {
                    // The contact's server answers for it (§4.3.1).
                    let probe = Element::new("presence", NS_CLIENT)
                        .with_attr("from", user.as_str())
                        .with_attr("to", contact.as_str())
                        .with_attr("type", "probe");
                    server.s2s.send(server, probe);
                    continue;
                }
                let presences = server.sessions.presences(&contact);
                if presences.is_empty() {
                    offline_contacts.push(contact);
                }
                for (full, presence) in presences {
                    let _ = deliver_local(
                        server,
                        origin,
                        &addressed(&presence, &full, origin.as_str()),
                    );
                }
            }
        }
        last_unavailable(server, origin, &offline_contacts).await?;
        // The user's other resources, seen from the new one.
        for (full, presence) in server.sessions.presences(&user) {
            if &full != origin {
                let _ = deliver_local(
                    server,
                    origin,
                    &addressed(&presence, &full, origin.as_str()),
                );
            }
        }
        // Subscription requests that arrived while the user was away
        // (§3.1.3); read here only, never by the broadcasts.
        for request in roster::pending_requests(server, &user).await? {
            let _ = deliver_local(server, origin, &request);
        }
    }
    server
        .features
        .fire(
            server,
            &mut Event::SessionAvailable {
                jid: origin,
                initial: !was_available,
            },
        )
        .await;
    Ok(())
}

/// Another node of a cluster kept a subscription request for `user`
/// while it knew of no available resource: the local available ones,
/// whose initial presence may have read the pending requests before it
/// was stored, get them again (a request seen twice is only asked again).
async fn pending_again(server: &Server, user: &BareJid) -> Result<(), StorageError> {
    let resources = server.sessions.local_presences(user);
    if resources.is_empty() {
        return Ok(());
    }
    let requests = roster::pending_requests(server, user).await?;
    for (full, _) in &resources {
        for request in &requests {
            let _ = deliver_local(server, full, request);
        }
    }
    Ok(())
}

/// Sends `origin` the last unavailable presence of each local contact that
/// has logged out before, with a XEP-0203 delay saying when.
async fn last_unavailable(
    server: &Server,
    origin: &FullJid,
    contacts: &[BareJid],
) -> Result<(), StorageError> {
    let mut by_domain: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    for c in contacts {
        if let (Some(node), Route::Host) = (c.node(), server.route(c.domain().as_str())) {
            by_domain
                .entry(c.domain().as_str())
                .or_default()
                .push(node.as_str());
        }
    }
    for (domain, users) in by_domain {
        for (user, value) in server
            .store
            .user_data_get_many(domain, &users, super::last::KEY)
            .await?
        {
            let Some(stamp) = value.parse::<i64>().ok().and_then(super::time::xep0082) else {
                continue;
            };
            let p = Element::new("presence", NS_CLIENT)
                .with_attr("from", format!("{user}@{domain}"))
                .with_attr("to", origin.as_str())
                .with_attr("type", "unavailable")
                .with_child(
                    Element::new("delay", super::offline::NS_DELAY)
                        .with_attr("from", domain)
                        .with_attr("stamp", stamp),
                );
            let _ = deliver_local(server, origin, &p);
        }
    }
    Ok(())
}

/// Explicit unavailable: broadcast it, and end directed presences.
async fn unavailable(
    server: &Server,
    origin: &FullJid,
    stanza: Element,
) -> Result<(), StorageError> {
    let id = session_id(server, origin);
    if !server.sessions.set_presence(origin, id, None, 0) {
        // Never available: there is nothing to retract.
        return Ok(());
    }
    let mut kept = stanza;
    kept.remove_attr("to");
    let items = roster::items(server, &origin.bare()).await?;
    broadcast(server, origin, &items, &kept).await;
    for to in server.sessions.take_directed(origin) {
        if let Ok(j) = Jid::new(&to) {
            deliver_to_jid(server, &j, &addressed(&kept, origin, &to));
        }
    }
    Ok(())
}

/// Sends `presence` from `origin` to every contact subscribed to the user and
/// to the user's own available resources; contacts either side has blocked
/// get nothing (XEP-0191 §3.3).
/// In a cluster, what goes to other nodes leaves as one bus entry per
/// node (`cluster::grouped`).
async fn broadcast(server: &Server, origin: &FullJid, items: &[roster::Item], presence: &Element) {
    let user = origin.bare();
    crate::cluster::grouped(async {
        for item in items.iter().filter(|i| i.from()) {
            if let Ok(contact) = BareJid::new(&item.record.contact) {
                if may_exchange(server, &user, &contact).await {
                    send_to_resources(
                        server,
                        &contact,
                        &addressed(presence, origin, contact.as_str()),
                    );
                }
            }
        }
        send_to_resources(server, &user, &addressed(presence, origin, user.as_str()));
    })
    .await
}

/// Neither side has blocked the other.
async fn may_exchange(server: &Server, a: &BareJid, b: &BareJid) -> bool {
    let (a, b) = (Jid::from(a.clone()), Jid::from(b.clone()));
    !blocking::is_blocked(server, &a, &b).await && !blocking::is_blocked(server, &b, &a).await
}

/// Delivers a presence to `to` wherever it lives (each available resource
/// of a local bare JID, a component, another server).
fn send_to_resources(server: &Server, to: &BareJid, stanza: &Element) {
    let _ = deliver(server, stanza, &Jid::from(to.clone()));
}

fn deliver_to_jid(server: &Server, to: &Jid, stanza: &Element) {
    let _ = deliver(server, stanza, to);
}

/// `presence` with `from` and `to` set.
fn addressed(presence: &Element, from: &FullJid, to: &str) -> Element {
    let mut p = presence.clone();
    p.set_attr("from", from.as_str());
    p.set_attr("to", to);
    p
}

/// Directed presence (§4.6): route it, and remember available ones so the
/// recipient hears of the session's end. A session that already has
/// `max_directed_presences` recipients gets its new one refused rather than
/// an old one forgotten: a forgotten recipient (a chat room, say) would
/// never hear that the session ended, which is worse than an error the
/// client sees at once.
fn directed(server: &Server, origin: &FullJid, to: Jid, stanza: Element) {
    let available = stanza.attr("type").is_none();
    if matches!(stanza.attr("type"), None | Some("unavailable")) {
        let max = server.config().limits.max_directed_presences;
        if server
            .sessions
            .note_directed(origin, to.as_str(), available, max)
            .is_err()
        {
            if let Some(reply) =
                error_reply(&stanza, StanzaErrorCondition::ResourceConstraint, None)
            {
                let _ = deliver_local(server, origin, &reply);
            }
            return;
        }
    }
    deliver_to_jid(server, &to, &stanza);
}

/// A subscription stanza from a local user: the user's side, then the
/// contact's (both local until federation arrives).
async fn subscription_from_client(
    server: &Server,
    origin: &FullJid,
    contact: BareJid,
    kind: SubscriptionKind,
    mut stanza: Element,
) -> Result<(), StorageError> {
    let user = origin.bare();
    if contact == user {
        return Ok(());
    }
    // §3.1.2: subscription stanzas carry the bare JID.
    stanza.set_attr("from", user.as_str());
    stanza.set_attr("to", contact.as_str());
    let out = roster::outbound(server, &user, &contact, kind).await?;
    if let Some(cond) = out.refused {
        if let Some(reply) = error_reply(&stanza, cond, None) {
            let _ = deliver_local(server, origin, &addressed_to(reply, origin));
        }
        return Ok(());
    }
    finish_outbound(server, &user, &contact, kind, stanza, out).await
}

/// An error reply for the session that sent the stanza (whose `from` was
/// rewritten to the bare JID on the way).
fn addressed_to(mut reply: Element, origin: &FullJid) -> Element {
    reply.set_attr("to", origin.as_str());
    reply
}

/// Routes an outbound subscription stanza if the state machine says so,
/// then sends the presence that follows from it — in that order, so the
/// contact learns of the approval before seeing the presence.
pub async fn finish_outbound(
    server: &Server,
    user: &BareJid,
    contact: &BareJid,
    kind: SubscriptionKind,
    stanza: Element,
    out: roster::Outbound,
) -> Result<(), StorageError> {
    if out.route {
        route_subscription(server, user, contact, kind, stanza).await?;
    }
    match out.then {
        Some(roster::FollowUp::CurrentPresence) => send_current_presence(server, user, contact),
        Some(roster::FollowUp::Unavailable) => send_unavailable_to(server, user, contact),
        None => {}
    }
    Ok(())
}

/// Hands a subscription stanza from `user` to the contact's server: a
/// component, another server over s2s, or this one.
pub async fn route_subscription(
    server: &Server,
    user: &BareJid,
    contact: &BareJid,
    kind: SubscriptionKind,
    stanza: Element,
) -> Result<(), StorageError> {
    match server.route(contact.domain().as_str()) {
        Route::Host => {}
        // The contact's server, component or service runs its side of the
        // state machine.
        _ => {
            if let Err(e) = deliver(server, &stanza, &Jid::from(contact.clone())) {
                if let Some(reply) = error_reply(&stanza, e.condition(), None) {
                    send_to_resources(server, user, &reply);
                }
            }
            return Ok(());
        }
    }
    subscription_to_local(server, user, contact, kind, stanza).await
}

/// Sends the user's current presence (each available resource) to a contact
/// that may now see it (§3.1.5).
pub fn send_current_presence(server: &Server, user: &BareJid, contact: &BareJid) {
    for (full, presence) in server.sessions.presences(user) {
        send_to_resources(
            server,
            contact,
            &addressed(&presence, &full, contact.as_str()),
        );
    }
}

/// Sends unavailable from each of the user's available resources to a
/// contact that may no longer see them (§3.2.3).
pub fn send_unavailable_to(server: &Server, user: &BareJid, contact: &BareJid) {
    for (full, _) in server.sessions.presences(user) {
        let p = Element::new("presence", NS_CLIENT).with_attr("type", "unavailable");
        send_to_resources(server, contact, &addressed(&p, &full, contact.as_str()));
    }
}

/// A session ended (clean close, error, timeout, kill) and was unbound:
/// if it was available, broadcast unavailable (§4.5.2).
async fn session_ended(server: &Server, jid: &FullJid, departed: &Departed) {
    let user = jid.bare();
    if departed.presence.is_some() {
        let p = Element::new("presence", NS_CLIENT).with_attr("type", "unavailable");
        match roster::items(server, &user).await {
            Ok(items) => broadcast(server, jid, &items, &p).await,
            Err(e) => tracing::error!(error = %e, "presence storage"),
        }
        for to in &departed.directed {
            if let Ok(j) = Jid::new(to) {
                deliver_to_jid(server, &j, &addressed(&p, jid, to));
            }
        }
    }
}

fn session_id(server: &Server, jid: &FullJid) -> u64 {
    server.sessions.session_id(jid).unwrap_or(0)
}
