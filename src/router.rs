//! The routing decision for stanzas sent by local clients, external
//! components (XEP-0114) and remote servers (s2s): validate and stamp
//! addresses, then hand each stanza to a module (server or account IQs),
//! to local sessions (RFC 6121 §8.5 rules), to a component, to another
//! server (s2s), or bounce it. Every origin shares one path; only the
//! `from` check and where errors go back differ.

use bytes::Bytes;
use jid::{BareJid, FullJid, Jid};

use crate::modules::blocking::{self, Verdict};
use crate::modules::offline::{self, NotStored};
use crate::modules::{self, presence, IqRequest, IqTarget};
use crate::server::Server;
use crate::sessions::DeliveryError;
use crate::stanza::{
    error_reply, iq_result, StanzaErrorCondition, StanzaKind, StreamErrorCondition,
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
    fn sender(&self) -> &Jid {
        match self {
            Origin::Session(full) => full,
            Origin::Component { from, .. } | Origin::Remote { from } => from,
        }
    }

    /// The local session, if the stanza came from one.
    fn session(&self) -> Option<&FullJid> {
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
            Ok(Err(b)) => b == origin.to_bare(),
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
        // sees one spelling of an address.
        stanza.set_attr("to", j.as_str());
    }

    let Some(to) = to else {
        handle_addressed_to_self(server, origin, kind, &stanza).await;
        return;
    };

    let sender_is_local = origin.session().is_some();
    match blocking::filter(server, origin.sender(), sender_is_local, &to, kind, &stanza).await {
        Verdict::Pass => {}
        Verdict::Drop => return,
        Verdict::Bounce(why) => {
            if let Some(reply) = blocking::bounce_reply(&stanza, why) {
                deliver_reply(server, origin, &reply);
            }
            return;
        }
    }

    let to_domain = to.domain().as_str();
    if server.components.is_component(to_domain) {
        match origin.session() {
            // A user's presence to a component goes through the presence
            // module, which keeps the roster and directed-presence state
            // and forwards it.
            Some(session) if kind == StanzaKind::Presence => {
                presence::from_client(server, session, Some(to), stanza).await
            }
            _ => to_component(server, origin, to_domain, &stanza),
        }
        return;
    }
    if !server.is_local_domain(to_domain) {
        match origin {
            // Presence goes through the presence module, which keeps
            // subscription and directed-presence state and sends it on.
            Origin::Session(session) if server.config.s2s.enabled() => {
                if kind == StanzaKind::Presence {
                    presence::from_client(server, session, Some(to), stanza).await
                } else {
                    server.s2s.send(server, stanza)
                }
                return;
            }
            // A component's stanzas federate like a user's (the component
            // keeps its own presence state).
            Origin::Component { .. } if server.config.s2s.enabled() => {
                server.s2s.send(server, stanza);
                return;
            }
            // Without s2s no other domain is reachable; remote servers are
            // not relayed to third domains.
            _ => {}
        }
        bounce(
            server,
            origin,
            &stanza,
            StanzaErrorCondition::RemoteServerNotFound,
        );
        return;
    }

    if kind == StanzaKind::Presence {
        match origin {
            Origin::Session(session) => {
                presence::from_client(server, session, Some(to), stanza).await
            }
            Origin::Component { from, .. } | Origin::Remote { from } => {
                presence::from_remote(server, from, to, stanza).await
            }
        }
        return;
    }
    if to.node().is_none() {
        to_server(server, origin, kind, &stanza).await;
        return;
    }
    match to.try_into_full() {
        Ok(full) => to_full(server, origin, kind, &full, stanza).await,
        Err(bare) => to_bare(server, origin, kind, &bare, stanza).await,
    }
}

/// Hands a stanza to the component serving `domain`; a configured component
/// that is not connected cannot be reached (service-unavailable).
fn to_component(server: &Server, origin: Origin<'_>, domain: &str, stanza: &Element) {
    match deliver_to_component(server, domain, stanza) {
        Ok(()) => {}
        Err(DeliveryError::Offline) => bounce(
            server,
            origin,
            stanza,
            StanzaErrorCondition::ServiceUnavailable,
        ),
        Err(DeliveryError::QueueFull) => bounce(
            server,
            origin,
            stanza,
            StanzaErrorCondition::ResourceConstraint,
        ),
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
    stanza: &Element,
) {
    let Origin::Session(session) = origin else {
        to_server(server, origin, kind, stanza).await;
        return;
    };
    match kind {
        StanzaKind::Iq => answer_iq(server, origin, stanza, IqTarget::Account { own: true }).await,
        StanzaKind::Presence => presence::from_client(server, session, None, stanza.clone()).await,
        StanzaKind::Message => {
            let bare = session.to_bare();
            to_bare(server, origin, kind, &bare, stanza.clone()).await
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
            let own = origin.session().is_some_and(|s| s.to_bare() == *to);
            answer_iq(server, origin, &stanza, IqTarget::Account { own }).await;
        }
        // Presence never reaches here: the presence module routes it.
        StanzaKind::Presence => {}
        StanzaKind::Message => message_to_bare(server, origin, to, &stanza).await,
    }
}

/// RFC 6121 §8.5.2: pick the resources that get a message sent to a bare JID.
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
    let resources: Vec<(FullJid, i8)> = server
        .sessions
        .available_resources(to)
        .into_iter()
        .filter(|(_, p)| *p >= 0)
        .collect();
    let targets: Vec<&FullJid> = if kind == "headline" {
        resources.iter().map(|(j, _)| j).collect()
    } else {
        let top = resources.iter().map(|(_, p)| *p).max();
        resources
            .iter()
            .filter(|(_, p)| Some(*p) == top)
            .map(|(j, _)| j)
            .collect()
    };
    if targets.is_empty() {
        // XEP-0160: chat and normal messages wait in storage; headlines
        // are dropped (RFC 6121 §8.5.2.1.2).
        if kind != "headline" {
            match offline::store(server, to, stanza).await {
                Ok(()) => {}
                Err(NotStored::Storage(e)) => {
                    tracing::error!(error = %e, "storing an offline message");
                    bounce(
                        server,
                        origin,
                        stanza,
                        StanzaErrorCondition::InternalServerError,
                    );
                }
                Err(NotStored::NoAccount | NotStored::QuotaFull) => bounce(
                    server,
                    origin,
                    stanza,
                    StanzaErrorCondition::ServiceUnavailable,
                ),
            }
        }
        return;
    }
    let data = serialize(stanza);
    let mut delivered = false;
    for t in targets {
        delivered |= server.sessions.send_to_full(t, data.clone()).is_ok();
    }
    if !delivered && kind != "headline" {
        bounce(
            server,
            origin,
            stanza,
            StanzaErrorCondition::ResourceConstraint,
        );
    }
}

async fn to_full(
    server: &Server,
    origin: Origin<'_>,
    kind: StanzaKind,
    to: &FullJid,
    stanza: Element,
) {
    let data = serialize(&stanza);
    match server.sessions.send_to_full(to, data) {
        Ok(()) => {}
        Err(DeliveryError::QueueFull) => bounce(
            server,
            origin,
            &stanza,
            StanzaErrorCondition::ResourceConstraint,
        ),
        // RFC 6121 §8.5.3.2: no such resource.
        Err(DeliveryError::Offline) => match kind {
            StanzaKind::Message => match stanza.attr("type").unwrap_or("normal") {
                "chat" | "normal" => message_to_bare(server, origin, &to.to_bare(), &stanza).await,
                "groupchat" => bounce(
                    server,
                    origin,
                    &stanza,
                    StanzaErrorCondition::ServiceUnavailable,
                ),
                _ => {}
            },
            StanzaKind::Presence => {}
            StanzaKind::Iq => {
                if matches!(stanza.attr("type"), Some("get") | Some("set")) {
                    bounce(
                        server,
                        origin,
                        &stanza,
                        StanzaErrorCondition::ServiceUnavailable,
                    )
                }
            }
        },
    }
}

/// Answers an IQ get/set with a module; results and errors addressed to the
/// server or an account are consumed (nothing waits for them).
async fn answer_iq(server: &Server, origin: Origin<'_>, iq: &Element, target: IqTarget) {
    let is_set = match iq.attr("type") {
        Some("get") => false,
        Some("set") => true,
        Some("result") | Some("error") => return,
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
    let req = IqRequest {
        server,
        iq,
        payload,
        from: origin.sender(),
        target,
        is_set,
    };
    let reply = match modules::dispatch(&req).await {
        Ok(payload) => iq_result(iq, payload),
        Err(cond) => match error_reply(iq, cond, None) {
            Some(r) => r,
            None => return,
        },
    };
    deliver_reply(server, origin, &reply);
}

/// Sends `stanza`'s error reply back where it came from.
fn bounce(server: &Server, origin: Origin<'_>, stanza: &Element, cond: StanzaErrorCondition) {
    if let Some(reply) = error_reply(stanza, cond, None) {
        deliver_reply(server, origin, &reply);
    }
}

fn deliver_reply(server: &Server, origin: Origin<'_>, reply: &Element) {
    // The sender's own queue being full means it is not reading; dropping
    // the reply there is the backpressure the queue limit exists for.
    let _ = match origin {
        Origin::Session(full) => deliver_local(server, full, reply),
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
    let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) else {
        return;
    };
    if server.components.is_component(to.domain().as_str()) {
        let _ = deliver_to_component(server, to.domain().as_str(), reply);
        return;
    }
    let data = serialize(reply);
    match to.try_into_full() {
        Ok(full) => {
            let _ = server.sessions.send_to_full(&full, data);
        }
        Err(bare) => {
            for (full, _) in server.sessions.available_resources(&bare) {
                let _ = server.sessions.send_to_full(&full, data.clone());
            }
        }
    }
}

/// Re-routes a serialized stanza that was queued for the session `gone` but
/// never written (RFC 6121 §8.5.3.2.1 for what was addressed to the full
/// JID): chat and normal messages go to the user's other resources or to
/// offline storage; anything else is dropped, as it would be for a
/// resource that is not there.
pub async fn reroute_undelivered(server: &Server, gone: &FullJid, data: &[u8]) {
    let mut parser = crate::xml::StreamParser::new(Default::default());
    parser.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    parser.feed(data);
    let mut stanzas = Vec::new();
    while let Ok(Some(ev)) = parser.next_event() {
        if let crate::xml::StreamEvent::Stanza(el) = ev {
            stanzas.push(el);
        }
    }
    for stanza in stanzas {
        let is_chat_or_normal = matches!(stanza.attr("type"), None | Some("chat") | Some("normal"));
        if stanza.name() != "message" || !is_chat_or_normal {
            continue;
        }
        let bare = gone.to_bare();
        let targets = server.sessions.available_resources(&bare);
        let best = targets
            .iter()
            .filter(|(_, p)| *p >= 0)
            .max_by_key(|(_, p)| *p);
        let delivered = match best {
            Some((full, _)) => deliver_local(server, full, &stanza).is_ok(),
            None => false,
        };
        if !delivered {
            if let Err(e) = offline::store(server, &bare, &stanza).await {
                tracing::warn!(error = ?e, "undelivered message could not be stored");
            }
        }
    }
}

/// Queues a stanza (typically one the server generated) for a local full JID.
pub fn deliver_local(server: &Server, to: &FullJid, stanza: &Element) -> Result<(), DeliveryError> {
    server.sessions.send_to_full(to, serialize(stanza))
}

/// Serializes once for every recipient (RFC 6120 jabber:client default namespace).
fn serialize(stanza: &Element) -> Bytes {
    Bytes::from(stanza.to_bytes(NS_CLIENT))
}
