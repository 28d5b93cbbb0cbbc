//! The routing decision for stanzas sent by local clients: validate and
//! stamp addresses, then hand each stanza to a module (server or account
//! IQs), to local sessions (RFC 6121 §8.5 rules), or bounce it.

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
use crate::xml::{Element, NS_CLIENT};

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

    let to = match stanza.attr("to") {
        None => None,
        Some(raw) => match Jid::new(raw) {
            Ok(j) => Some(j),
            Err(_) => {
                bounce(server, origin, &stanza, StanzaErrorCondition::JidMalformed);
                return Ok(());
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
        return Ok(());
    };

    match blocking::filter(server, origin, &to, kind, &stanza).await {
        Verdict::Pass => {}
        Verdict::Drop => return Ok(()),
        Verdict::Bounce(why) => {
            if let Some(reply) = blocking::bounce_reply(&stanza, why) {
                deliver_reply(server, origin, &reply);
            }
            return Ok(());
        }
    }

    if !server.is_local_domain(to.domain().as_str()) {
        // Federation arrives with s2s; until then no other domain is reachable.
        bounce(
            server,
            origin,
            &stanza,
            StanzaErrorCondition::RemoteServerNotFound,
        );
        return Ok(());
    }

    if kind == StanzaKind::Presence {
        presence::from_client(server, origin, Some(to), stanza).await;
        return Ok(());
    }
    if to.node().is_none() {
        to_server(server, origin, kind, &stanza).await;
        return Ok(());
    }
    match to.try_into_full() {
        Ok(full) => to_full(server, origin, kind, &full, stanza).await,
        Err(bare) => to_bare(server, origin, kind, &bare, stanza).await,
    }
    Ok(())
}

/// A stanza without `to`: RFC 6120 §10.3 — the server handles it on behalf
/// of the sender's account.
async fn handle_addressed_to_self(
    server: &Server,
    origin: &FullJid,
    kind: StanzaKind,
    stanza: &Element,
) {
    match kind {
        StanzaKind::Iq => answer_iq(server, origin, stanza, IqTarget::Account { own: true }).await,
        StanzaKind::Presence => presence::from_client(server, origin, None, stanza.clone()).await,
        StanzaKind::Message => {
            let bare = origin.to_bare();
            to_bare(server, origin, kind, &bare, stanza.clone()).await
        }
    }
}

async fn to_server(server: &Server, origin: &FullJid, kind: StanzaKind, stanza: &Element) {
    match kind {
        StanzaKind::Iq => answer_iq(server, origin, stanza, IqTarget::Server).await,
        // Messages and presence to the server itself have no recipient.
        StanzaKind::Message | StanzaKind::Presence => {}
    }
}

async fn to_bare(
    server: &Server,
    origin: &FullJid,
    kind: StanzaKind,
    to: &BareJid,
    stanza: Element,
) {
    match kind {
        StanzaKind::Iq => {
            let own = origin.to_bare() == *to;
            answer_iq(server, origin, &stanza, IqTarget::Account { own }).await;
        }
        // Presence never reaches here: the presence module routes it.
        StanzaKind::Presence => {}
        StanzaKind::Message => message_to_bare(server, origin, to, &stanza).await,
    }
}

/// RFC 6121 §8.5.2: pick the resources that get a message sent to a bare JID.
async fn message_to_bare(server: &Server, origin: &FullJid, to: &BareJid, stanza: &Element) {
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
    origin: &FullJid,
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
async fn answer_iq(server: &Server, origin: &FullJid, iq: &Element, target: IqTarget) {
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
    let req = IqRequest {
        server,
        iq,
        payload,
        from: origin,
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

/// Sends `stanza`'s error reply to its local sender.
fn bounce(server: &Server, origin: &FullJid, stanza: &Element, cond: StanzaErrorCondition) {
    if let Some(reply) = error_reply(stanza, cond, None) {
        deliver_reply(server, origin, &reply);
    }
}

fn deliver_reply(server: &Server, origin: &FullJid, reply: &Element) {
    // The sender's own queue being full means it is not reading; dropping
    // the reply there is the backpressure the queue limit exists for.
    let _ = deliver_local(server, origin, reply);
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
