//! The routing decision for stanzas sent by local clients, external
//! components (XEP-0114) and remote servers (s2s): validate and stamp
//! addresses, then hand each stanza to a module (server or account IQs),
//! to local sessions (RFC 6121 §8.5 rules), to a component, to another
//! server (s2s), or bounce it. Every origin shares one path; only the
//! `from` check and where errors go back differ.

use crate::stanza::bare::Bare;
use bytes::Bytes;
use jid::{BareJid, FullJid, Jid};

use crate::feature::{Event, EventKind, Verdict};
use crate::modules::{self, IqRequest, IqTarget};
use crate::routes::Route;
use crate::server::Server;
use crate::sessions::{DeliveryError, OutStanza};
use crate::stanza::{
    error_reply, iq_result, StanzaError, StanzaErrorCondition, StanzaKind, StreamErrorCondition,
};
use crate::stream::component::{self as component_rules};
use crate::xml::{Element, NS_CLIENT};

/// Where a stanza entered the server; errors about it go back there.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// A local session, by its bound full JID.
    Session(&'a FullJid),
    /// A connected external component: its domain, and the address within
    /// it the stanza came from.
    Component { domain: &'a str, from: &'a Jid },
    /// A remote server, over an incoming s2s stream that authenticated the
    /// sender's domain; errors go back over s2s.
    Remote { from: &'a Jid },
}

impl Origin<'_> {
    /// The sender's address.
    pub fn sender(&self) -> &Jid {
        match self {
            Origin::Session(full) => full,
            Origin::Component { from, .. } | Origin::Remote { from } => from,
        }
    }

    /// The local session, if the stanza came from one.
    pub fn session(&self) -> Option<&FullJid> {
        match self {
            Origin::Session(full) => Some(full),
            Origin::Component { .. } | Origin::Remote { .. } => None,
        }
    }
}

/// Namespaces a component may query the server with: the public services,
/// which do not act on an account. Everything else needs a local user.
const COMPONENT_SERVER_QUERIES: &[&str] = &[
    modules::disco::NS_INFO,
    modules::disco::NS_ITEMS,
    "urn:xmpp:ping",
    "jabber:iq:version",
    "urn:xmpp:time",
    "jabber:iq:last",
    "vcard-temp",
    // A contact's PEP items (OMEMO bundles) from another server; the
    // engine checks the node's access model against the requester.
    crate::pubsub::NS,
];

/// Routes one stanza received from the session bound to `origin`.
/// An `Err` is a stream-level fault of the sender (the stream must end).
pub async fn route_from_client(
    server: &Server,
    origin: &FullJid,
    mut stanza: Element,
) -> Result<(), StreamErrorCondition> {
    let kind =
        StanzaKind::of(&stanza, NS_CLIENT).ok_or(StreamErrorCondition::UnsupportedStanzaType)?;

    // RFC 6120 §8.1.2.1: a client may only claim its own full or bare JID.
    if let Some(from) = stanza.attr("from") {
        let ok = match Jid::new(from).map(Jid::try_into_full) {
            Ok(Ok(f)) => &f == origin,
            Ok(Err(b)) => b == origin.bare(),
            Err(_) => false,
        };
        if !ok {
            return Err(StreamErrorCondition::InvalidFrom);
        }
    }
    stanza.set_attr("from", origin.as_str());
    route(server, Origin::Session(origin), kind, stanza).await;
    Ok(())
}

/// Routes one stanza received from the component serving `domain`, already
/// moved into `jabber:client`. An `Err` ends the component's stream.
pub async fn route_from_component(
    server: &Server,
    domain: &str,
    mut stanza: Element,
) -> Result<(), StreamErrorCondition> {
    let kind =
        StanzaKind::of(&stanza, NS_CLIENT).ok_or(StreamErrorCondition::UnsupportedStanzaType)?;
    // XEP-0114 §3: any address at the component's domain, and only those.
    let from = component_rules::check_from(&stanza, domain)?;
    stanza.set_attr("from", from.as_str());
    route(
        server,
        Origin::Component {
            domain,
            from: &from,
        },
        kind,
        stanza,
    )
    .await;
    Ok(())
}

/// Routes one stanza received over an incoming s2s stream, already moved
/// into `jabber:client`, its `from` checked against the stream's
/// authenticated domains and its `to` at one of ours (`stream::s2s`).
/// An `Err` ends the s2s stream.
pub async fn route_from_remote(
    server: &Server,
    from: &Jid,
    to: Jid,
    mut stanza: Element,
) -> Result<(), StreamErrorCondition> {
    let kind =
        StanzaKind::of(&stanza, NS_CLIENT).ok_or(StreamErrorCondition::UnsupportedStanzaType)?;
    stanza.set_attr("from", from.as_str());
    stanza.set_attr("to", to.as_str());
    route(server, Origin::Remote { from }, kind, stanza).await;
    Ok(())
}

/// The routing shared by every origin; `from` is already checked and stamped.
async fn route(server: &Server, origin: Origin<'_>, kind: StanzaKind, mut stanza: Element) {
    let to = match stanza.attr("to") {
        None => None,
        Some(raw) => match Jid::new(raw) {
            Ok(j) => Some(j),
            Err(_) => {
                bounce(server, origin, &stanza, StanzaErrorCondition::JidMalformed);
                return;
            }
        },
    };
    if let Some(j) = &to {
        // Route and deliver with the normalised form, so every recipient
        // sees one spelling of an address (most already are: no copy then).
        if stanza.attr("to") != Some(j.as_str()) {
            stanza.set_attr("to", j.as_str());
        }
    }

    let Some(to) = to else {
        handle_addressed_to_self(server, origin, kind, &mut stanza).await;
        return;
    };

    if server.features.wants(EventKind::PreRoute) {
        let mut event = Event::PreRoute {
            origin,
            kind,
            to: &to,
            stanza: &stanza,
        };
        if server.features.fire(server, &mut event).await == Verdict::Stop {
            return;
        }
    }

    let route = server.route(to.domain().as_str());
    // Without s2s no other domain is reachable; remote servers are not
    // relayed to third domains.
    let relay = route == Route::Remote && matches!(origin, Origin::Remote { .. });
    if route == Route::Unreachable || relay {
        bounce(
            server,
            origin,
            &stanza,
            StanzaErrorCondition::RemoteServerNotFound,
        );
        return;
    }
    // A user's presence goes through the presence feature wherever it is
    // addressed (it keeps the roster and directed-presence state and sends
    // it on); presence from elsewhere only when it is for one of our users.
    if kind == StanzaKind::Presence
        && (origin.session().is_some() || route == Route::Host)
        && presence_event(server, origin, Some(&to), &mut stanza).await
    {
        return;
    }
    if route != Route::Host {
        match deliver(server, &stanza, &to) {
            Ok(()) => message_sent(server, origin, kind, &to, &stanza).await,
            Err(e) => bounce(server, origin, &stanza, e.condition()),
        }
        return;
    }

    if kind == StanzaKind::Presence {
        // No presence feature: nothing keeps presence state, so nothing is
        // delivered either.
        return;
    }
    if to.node().is_none() {
        to_server(server, origin, kind, &stanza).await;
        return;
    }
    let mut serialized = None;
    if kind == StanzaKind::Message && server.features.wants(EventKind::LocalDelivery) {
        serialized = local_delivery(server, origin, &to.bare(), &mut stanza).await;
    }
    match to.try_into_full() {
        Ok(full) => to_full(server, origin, kind, &full, stanza, serialized).await,
        Err(bare) => to_bare(server, origin, kind, &bare, stanza).await,
    }
}

/// Hands a presence stanza to the presence feature; false if none took it.
async fn presence_event(
    server: &Server,
    origin: Origin<'_>,
    to: Option<&Jid>,
    stanza: &mut Element,
) -> bool {
    let mut event = Event::Presence { origin, to, stanza };
    server.features.fire(server, &mut event).await == Verdict::Stop
}

/// Lets the features change a message for a local account before any
/// resource or storage gets it (the archive's stanza-id); free when none
/// listens. Returns the message serialized for its recipient if a feature
/// had those bytes at hand.
async fn local_delivery(
    server: &Server,
    origin: Origin<'_>,
    to: &BareJid,
    stanza: &mut Element,
) -> Option<Bytes> {
    let mut serialized = None;
    if server.features.wants(EventKind::LocalDelivery) {
        let mut event = Event::LocalDelivery {
            origin,
            to,
            stanza,
            serialized: &mut serialized,
        };
        server.features.fire(server, &mut event).await;
    }
    serialized
}

/// The stanza to queue for a session, with the bytes a feature already
/// made of it (`Event::LocalDelivery`) when there are some.
fn out_stanza(stanza: Element, serialized: Option<Bytes>) -> std::sync::Arc<OutStanza> {
    match serialized {
        Some(bytes) => {
            debug_assert_eq!(
                bytes,
                Bytes::from(stanza.to_bytes(crate::xml::NS_CLIENT)),
                "a feature's bytes for a stanza are not the stanza's"
            );
            OutStanza::with_bytes(stanza, bytes)
        }
        None => OutStanza::new(stanza),
    }
}

/// Tells the features a local user's message went out (carbons, archive).
async fn message_sent(
    server: &Server,
    origin: Origin<'_>,
    kind: StanzaKind,
    to: &Jid,
    stanza: &Element,
) {
    if kind != StanzaKind::Message || !server.features.wants(EventKind::MessageSent) {
        return;
    }
    if let Origin::Session(from) = origin {
        let mut event = Event::MessageSent { from, to, stanza };
        server.features.fire(server, &mut event).await;
    }
}

/// Queues a stanza for `to` wherever it lives: the one delivery function
/// below the router and the features. A local bare JID gets the RFC 6121
/// §8.5.2 choice of resources ([`crate::sessions::SessionRegistry::targets`]);
/// nothing is stored and no event is fired here.
pub fn deliver(server: &Server, stanza: &Element, to: &Jid) -> Result<(), DeliveryError> {
    let domain = to.domain().as_str();
    match server.route(domain) {
        Route::Host => match to.try_as_full() {
            Ok(full) => server
                .sessions
                .send_to_full(full, OutStanza::new(stanza.clone())),
            Err(_) => {
                let bare = to.bare();
                let targets = server.sessions.targets(&bare, stanza);
                if targets.is_empty() {
                    return Err(DeliveryError::Offline);
                }
                let data = OutStanza::new(stanza.clone());
                let mut result = Err(DeliveryError::QueueFull);
                for t in &targets {
                    if server.sessions.send_to_full(t, data.clone()).is_ok() {
                        result = Ok(());
                    }
                }
                result
            }
        },
        Route::Service(i) => server.features.deliver_to_service(i, server, stanza),
        Route::Component => deliver_to_component(server, domain, stanza),
        Route::Remote => {
            server.s2s.send(server, stanza.clone());
            Ok(())
        }
        Route::Unreachable => Err(DeliveryError::Unreachable),
    }
}

/// Queues a `jabber:client` stanza for the component serving `domain`,
/// written in the component stream's namespace.
pub fn deliver_to_component(
    server: &Server,
    domain: &str,
    stanza: &Element,
) -> Result<(), DeliveryError> {
    server.components.send(
        domain,
        Bytes::from(component_rules::to_component_bytes(stanza)),
    )
}

/// A stanza without `to`: RFC 6120 §10.3 — the server handles it on behalf
/// of the sender's account.
/// A component has no account: its stanzas without `to` are for the
/// server itself.
async fn handle_addressed_to_self(
    server: &Server,
    origin: Origin<'_>,
    kind: StanzaKind,
    stanza: &mut Element,
) {
    let Origin::Session(session) = origin else {
        to_server(server, origin, kind, stanza).await;
        return;
    };
    match kind {
        StanzaKind::Iq => answer_iq(server, origin, stanza, IqTarget::Account { own: true }).await,
        StanzaKind::Presence => {
            presence_event(server, origin, None, stanza).await;
        }
        StanzaKind::Message => {
            let bare = session.bare();
            let mut stanza = stanza.clone();
            local_delivery(server, origin, &bare, &mut stanza).await;
            to_bare(server, origin, kind, &bare, stanza).await
        }
    }
}

async fn to_server(server: &Server, origin: Origin<'_>, kind: StanzaKind, stanza: &Element) {
    match kind {
        StanzaKind::Iq => answer_iq(server, origin, stanza, IqTarget::Server).await,
        // Messages and presence to the server itself have no recipient.
        StanzaKind::Message | StanzaKind::Presence => {}
    }
}

async fn to_bare(
    server: &Server,
    origin: Origin<'_>,
    kind: StanzaKind,
    to: &BareJid,
    stanza: Element,
) {
    match kind {
        StanzaKind::Iq => {
            let own = origin.session().is_some_and(|s| s.bare() == *to);
            answer_iq(server, origin, &stanza, IqTarget::Account { own }).await;
        }
        // Presence never reaches here: the presence feature routes it.
        StanzaKind::Presence => {}
        StanzaKind::Message => message_to_bare(server, origin, to, &stanza).await,
    }
}

/// A message for a local bare JID (or a full JID whose resource is gone):
/// the resources RFC 6121 §8.5.2 picks, else the features that keep
/// undeliverable messages (offline storage).
async fn message_to_bare(server: &Server, origin: Origin<'_>, to: &BareJid, stanza: &Element) {
    let kind = stanza.attr("type").unwrap_or("normal");
    match kind {
        "error" => return,
        "groupchat" => {
            bounce(
                server,
                origin,
                stanza,
                StanzaErrorCondition::ServiceUnavailable,
            );
            return;
        }
        _ => {}
    }
    let targets = server.sessions.targets(to, stanza);
    if targets.is_empty() {
        // XEP-0160: chat and normal messages wait in storage; headlines
        // are dropped (RFC 6121 §8.5.2.1.2).
        if kind != "headline" {
            undeliverable(server, origin, to, stanza).await;
        }
        return;
    }
    let data = OutStanza::new(stanza.clone());
    let delivered: Vec<FullJid> = targets
        .into_iter()
        .filter(|t| server.sessions.send_to_full(t, data.clone()).is_ok())
        .collect();
    if delivered.is_empty() {
        if kind != "headline" {
            bounce(
                server,
                origin,
                stanza,
                StanzaErrorCondition::ResourceConstraint,
            );
        }
        return;
    }
    delivered_to_local(server, origin, to, to, &delivered, stanza).await;
}

/// Tells the features a message reached a local account's resources
/// (carbons' received copies), then that its sender sent it.
async fn delivered_to_local(
    server: &Server,
    origin: Origin<'_>,
    account: &BareJid,
    to: &Jid,
    resources: &[FullJid],
    stanza: &Element,
) {
    if server.features.wants(EventKind::MessageDelivered) {
        let mut event = Event::MessageDelivered {
            account,
            resources,
            stanza,
        };
        server.features.fire(server, &mut event).await;
    }
    if server.features.wants(EventKind::MessageSent) && origin.session().is_some() {
        message_sent(server, origin, StanzaKind::Message, to, stanza).await;
    }
}

/// A message for a local account that no resource takes: the features
/// that keep such messages decide; if none does, the sender is told.
async fn undeliverable(server: &Server, origin: Origin<'_>, to: &BareJid, stanza: &Element) {
    let mut refusal = None;
    let mut event = Event::Undeliverable {
        origin,
        to,
        stanza,
        refusal: &mut refusal,
    };
    let kept = server.features.fire(server, &mut event).await == Verdict::Stop;
    unreached(server, origin, to, stanza, kept && refusal.is_none()).await;
    match refusal {
        Some(e) => bounce_with(server, origin, stanza, &e),
        None if kept => {
            message_sent(
                server,
                origin,
                StanzaKind::Message,
                &Jid::from(to.clone()),
                stanza,
            )
            .await
        }
        None => bounce(
            server,
            origin,
            stanza,
            StanzaErrorCondition::ServiceUnavailable,
        ),
    }
}

/// Tells the features what became of a message no resource of `to` took.
async fn unreached(
    server: &Server,
    origin: Origin<'_>,
    to: &BareJid,
    stanza: &Element,
    stored: bool,
) {
    if server.features.wants(EventKind::Unreached) {
        let mut event = Event::Unreached {
            origin,
            to,
            stanza,
            stored,
        };
        server.features.fire(server, &mut event).await;
    }
}

async fn to_full(
    server: &Server,
    origin: Origin<'_>,
    kind: StanzaKind,
    to: &FullJid,
    stanza: Element,
    serialized: Option<Bytes>,
) {
    let data = out_stanza(stanza, serialized);
    let sent = server.sessions.send_to_full(to, data.clone());
    let Some(stanza) = data.element() else {
        return;
    };
    match sent {
        Ok(()) => {
            if kind == StanzaKind::Message {
                let account = to.bare();
                let resources = std::slice::from_ref(to);
                delivered_to_local(server, origin, &account, to, resources, stanza).await;
            }
        }
        Err(DeliveryError::QueueFull) => bounce(
            server,
            origin,
            stanza,
            StanzaErrorCondition::ResourceConstraint,
        ),
        // RFC 6121 §8.5.3.2: no such resource.
        Err(DeliveryError::Offline | DeliveryError::Unreachable) => match kind {
            StanzaKind::Message => match stanza.attr("type").unwrap_or("normal") {
                "chat" | "normal" => message_to_bare(server, origin, &to.bare(), stanza).await,
                "groupchat" => {
                    bounce(
                        server,
                        origin,
                        stanza,
                        StanzaErrorCondition::ServiceUnavailable,
                    );
                    // The room learns the occupant is gone; the user's
                    // phone may still want to hear of it (push).
                    unreached(server, origin, &to.bare(), stanza, false).await;
                }
                _ => {}
            },
            StanzaKind::Presence => {}
            StanzaKind::Iq => {
                if matches!(stanza.attr("type"), Some("get") | Some("set")) {
                    bounce(
                        server,
                        origin,
                        stanza,
                        StanzaErrorCondition::ServiceUnavailable,
                    )
                }
            }
        },
    }
}

/// Answers an IQ get/set with a feature; results and errors addressed to
/// the server go to the IQ tracker (answers to IQs the server sent).
async fn answer_iq(server: &Server, origin: Origin<'_>, iq: &Element, target: IqTarget) {
    let is_set = match iq.attr("type") {
        Some("get") => false,
        Some("set") => true,
        Some("result") | Some("error") => {
            if target == IqTarget::Server {
                server.iq_tracker.answer(server, origin.sender(), iq);
            }
            return;
        }
        _ => {
            bounce(server, origin, iq, StanzaErrorCondition::BadRequest);
            return;
        }
    };
    // RFC 6120 §8.2.3: a get or set has exactly one payload child.
    let mut children = iq.children();
    let (Some(payload), None) = (children.next(), children.next()) else {
        bounce(server, origin, iq, StanzaErrorCondition::BadRequest);
        return;
    };
    if origin.session().is_none() && !COMPONENT_SERVER_QUERIES.contains(&payload.ns()) {
        bounce(server, origin, iq, StanzaErrorCondition::ServiceUnavailable);
        return;
    }
    let end_session = std::sync::OnceLock::new();
    let req = IqRequest {
        server,
        iq,
        payload,
        from: origin.sender(),
        target,
        is_set,
        end_session: &end_session,
    };
    let outcome = modules::dispatch(&req).await;
    let done = outcome.is_ok();
    let reply = match outcome {
        Ok(payload) => Some(iq_result(iq, payload)),
        Err(e) => e.reply_to(iq),
    };
    if let Some(reply) = reply {
        deliver_reply(server, origin, &reply);
    }
    if done && is_set && server.features.wants(EventKind::IqSetDone) {
        let mut event = Event::IqSetDone {
            from: origin.sender(),
            target,
            iq,
            payload,
        };
        server.features.fire(server, &mut event).await;
    }
    if let (Some(cond), Some(session)) = (end_session.get(), origin.session()) {
        // Queued behind the reply, so the client reads the answer first.
        server.sessions.close(session, *cond);
    }
}

/// Sends `stanza`'s error reply back where it came from.
fn bounce(server: &Server, origin: Origin<'_>, stanza: &Element, cond: StanzaErrorCondition) {
    if let Some(reply) = error_reply(stanza, cond, None) {
        deliver_reply(server, origin, &reply);
    }
}

/// Sends `stanza`'s error reply, with text or application condition.
fn bounce_with(server: &Server, origin: Origin<'_>, stanza: &Element, error: &StanzaError) {
    if let Some(reply) = error.reply_to(stanza) {
        deliver_reply(server, origin, &reply);
    }
}

/// Sends a reply (an error, an IQ result) back to where a stanza came from.
pub fn deliver_reply(server: &Server, origin: Origin<'_>, reply: &Element) {
    // The sender's own queue being full means it is not reading; dropping
    // the reply there is the backpressure the queue limit exists for.
    let _ = match origin {
        Origin::Session(full) => deliver_local(server, full, reply),
        // An in-process service (the chat rooms relaying an occupant's
        // vCard request) routes like a component but has no stream: its
        // replies go by their address.
        Origin::Component { domain, .. } if server.route(domain) != Route::Component => {
            deliver_bounce(server, reply);
            Ok(())
        }
        Origin::Component { domain, .. } => deliver_to_component(server, domain, reply),
        Origin::Remote { .. } => {
            server.s2s.send(server, reply.clone());
            Ok(())
        }
    };
}

/// Delivers an error reply about a stanza a local sender could not get out
/// (s2s failures): to the full JID that sent it, or to each available
/// resource of a bare one (subscription stanzas carry bare JIDs).
pub fn deliver_bounce(server: &Server, reply: &Element) {
    if let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) {
        let _ = deliver(server, reply, &to);
    }
}

/// Re-routes one stanza that was queued for the session `gone` but never
/// written (RFC 6121 §8.5.3.2.1 for what was addressed to the full JID):
/// a chat or normal message goes to the user's other resources or to the
/// features that keep undeliverable messages; anything else is dropped, as
/// it would be for a resource that is not there.
pub async fn reroute_one(server: &Server, gone: &FullJid, queued: &OutStanza) {
    // Read from offline storage and never acknowledged: it is still there.
    if queued.stored_id().is_some() {
        return;
    }
    let Some(stanza) = queued.element() else {
        return;
    };
    let is_chat_or_normal = matches!(stanza.attr("type"), None | Some("chat") | Some("normal"));
    if stanza.name() != "message" || !is_chat_or_normal {
        return;
    }
    // It arrives later than it was sent: say when it came (XEP-0203), once.
    let mut stanza = stanza.clone();
    if stanza
        .get_child("delay", modules::offline::NS_DELAY)
        .is_none()
    {
        let stamp = modules::time::xep0082(queued.queued_at() as i64).unwrap_or_default();
        stanza.append_child(
            Element::new("delay", modules::offline::NS_DELAY)
                .with_attr("from", gone.domain().as_str())
                .with_attr("stamp", stamp),
        );
    }
    // The session is unbound by now: a resource of the same name bound
    // since is a new session, which may take it.
    let bare = gone.bare();
    let data = OutStanza::new(stanza);
    let Some(stanza) = data.element() else {
        return;
    };
    let delivered = server
        .sessions
        .targets(&bare, stanza)
        .iter()
        .any(|t| server.sessions.send_to_full(t, data.clone()).is_ok());
    if !delivered {
        let mut refusal = None;
        // The sender was told nothing failed when the stanza was queued;
        // there is nobody to bounce to now, so a refusal is only logged.
        let mut event = Event::Undeliverable {
            origin: Origin::Session(gone),
            to: &bare,
            stanza,
            refusal: &mut refusal,
        };
        server.features.fire(server, &mut event).await;
        if let Some(e) = refusal {
            tracing::warn!(condition = ?e.condition, "undelivered message could not be kept");
        }
    }
}

/// Queues a stanza (typically one the server generated) for a local full JID.
pub fn deliver_local(server: &Server, to: &FullJid, stanza: &Element) -> Result<(), DeliveryError> {
    server
        .sessions
        .send_to_full(to, OutStanza::new(stanza.clone()))
}
