//! Reads this node's inbox: each stanza goes to its local session, or,
//! when that session is gone, by the re-routing rule (other resources,
//! else offline storage); it is acknowledged only after that.

use std::sync::Arc;

use jid::FullJid;

use super::bus::{Delivery, InboxEntry};
use super::Cluster;
use crate::feature::{Event, EventKind};
use crate::server::Server;
use crate::sessions::OutStanza;

/// Entries read per round trip at most.
const BATCH: usize = 256;
/// How long one read waits for new entries.
const BLOCK_MS: u64 = 2_000;

pub(super) async fn run(server: Arc<Server>, cluster: Arc<Cluster>) {
    let mut attempt = 0;
    // Entries handled and not yet deleted from the stream: deleted with
    // the next read (`Bus::receive`), or before leaving this loop.
    let mut done: Vec<String> = Vec::new();
    let settle = |done: Vec<String>| {
        let cluster = cluster.clone();
        async move {
            if !done.is_empty() {
                if let Err(e) = cluster.engine().ack(&cluster.node, &done).await {
                    // Left in the stream: a later drain (leave or reap)
                    // re-routes them again.
                    tracing::warn!(error = %e, "cluster: inbox not acknowledged");
                }
            }
        }
    };
    loop {
        // A fenced node may have been reaped: what others append now goes
        // to a new inbox once it joins again, and nothing is delivered to
        // the sessions it has closed.
        while cluster.fenced.load(std::sync::atomic::Ordering::Acquire) {
            settle(std::mem::take(&mut done)).await;
            let woken = cluster.unfenced.notified();
            if !cluster.fenced.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            tokio::select! {
                _ = cluster.stop.cancelled() => return,
                _ = woken => {}
            }
        }
        let read = tokio::select! {
            _ = cluster.stop.cancelled() => {
                settle(done).await;
                return;
            }
            r = cluster.engine().receive(&cluster.node, &done, BATCH, BLOCK_MS) => r,
        };
        if read.is_ok() {
            done.clear();
        }
        match read {
            Ok(entries) if cluster.fenced.load(std::sync::atomic::Ordering::Acquire) => {
                // Read just as the node fenced itself: left unacknowledged
                // in the stream, which the reaper re-routes.
                tracing::debug!(
                    entries = entries.len(),
                    "cluster: fenced; inbox entries left"
                );
            }
            Ok(entries) => {
                attempt = 0;
                let mut ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
                // A packed entry's records share its id.
                ids.dedup();
                for entry in entries {
                    match &entry.delivery {
                        Delivery::TakeOver(request) => {
                            super::takeover::on_request(&server, &cluster, request)
                        }
                        Delivery::HandedOver(answer) => cluster.handed_over(&server, answer),
                        Delivery::Component(data) => to_component(&server, &entry.to, data),
                        _ => deliver(&server, entry).await,
                    }
                }
                // Deleted with the next read, or at once if the node
                // fenced meanwhile (it stops reading).
                done = ids;
                if cluster.fenced.load(std::sync::atomic::Ordering::Acquire) {
                    settle(std::mem::take(&mut done)).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: inbox read failed");
                if e.contains("NOGROUP") {
                    // Redis lost the stream (restarted): make it again.
                    let _ = cluster.engine().open_inbox(&cluster.node).await;
                }
                if !super::backoff(&cluster.stop, &mut attempt).await {
                    return;
                }
            }
        }
    }
}

/// Queues one inbox entry's stanza for its local session, else re-routes
/// it as a stanza left by a session that ended (`router::reroute_one`);
/// replaces the local session a `Replaced` entry names.
pub async fn deliver(server: &Server, entry: InboxEntry) {
    match entry.delivery {
        Delivery::Answer(bytes) => return answer(server, &entry.to, &bytes),
        // Also from a drain (a dead node's inbox): the local service
        // serves it or hands it to the room's holder now.
        Delivery::Room(bytes) => return super::rooms::to_room_service(server, &entry.to, bytes),
        _ => {}
    }
    let Ok(to) = FullJid::new(&entry.to) else {
        tracing::warn!(to = %entry.to, "cluster: inbox entry without a full JID dropped");
        return;
    };
    let bytes = match entry.delivery {
        Delivery::Stanza(bytes) => bytes,
        Delivery::Replaced(session) => {
            server.sessions.replaced_elsewhere(&to, session);
            return;
        }
        // Not for a session; the reader handles them (`run`).
        Delivery::Answer(_)
        | Delivery::TakeOver(_)
        | Delivery::HandedOver(_)
        | Delivery::Component(_)
        | Delivery::Room(_)
        // Addressed as it was read (`codec::unpack`): never here.
        | Delivery::Unaddressed { .. } => return,
    };
    let data = OutStanza::serialized(bytes);
    if server.sessions.send_to_local(&to, data.clone()).is_err() {
        crate::router::reroute_one(server, &to, &data).await;
        return;
    }
    // Only messages matter to what listens (push); the routing node fired
    // everything else.
    if data.bytes().starts_with(b"<message") && server.features.wants(EventKind::ForwardedHere) {
        let mut event = Event::ForwardedHere {
            jid: &to,
            stanza: &data,
        };
        server.features.fire(server, &mut event).await;
    }
}

/// An answer another node received to an IQ this node sent.
fn answer(server: &Server, from: &str, bytes: &bytes::Bytes) {
    let data = OutStanza::serialized(bytes.clone());
    match (jid::Jid::new(from), data.element()) {
        (Ok(from), Some(iq)) => {
            if !server.iq_tracker.answer(server, &from, iq) {
                tracing::debug!(%from, "cluster: answer to an IQ nobody waits for");
            }
        }
        _ => tracing::warn!(from, "cluster: unreadable IQ answer dropped"),
    }
}

/// A stanza another node routed to a component connected here. Gone
/// meanwhile (it disconnected): dropped, as a stanza for a component that
/// is not connected is on a single server (the sender got no error then
/// either: the other node queued it in good faith).
fn to_component(server: &Server, domain: &str, data: &bytes::Bytes) {
    if let Err(e) = server.components.send_here(domain, data.clone()) {
        tracing::debug!(domain, error = ?e, "cluster: a stanza for a component dropped");
    }
}
