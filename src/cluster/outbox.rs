//! Sends stanzas for sessions on other nodes to those nodes' inboxes, in
//! batches, in the order they were routed; what a node that is no longer
//! alive was not given is re-routed here.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use jid::FullJid;

use super::bus::Delivery;
use super::{Cluster, OutMsg};
use crate::server::Server;
use crate::sessions::OutStanza;

/// Stanzas appended per round trip at most.
const BATCH: usize = 256;

pub(super) async fn run(
    server: Arc<Server>,
    cluster: Arc<Cluster>,
    mut rx: mpsc::Receiver<OutMsg>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                OutMsg::Entry(node, to, delivery) => batch.push((node.to_string(), to, delivery)),
                OutMsg::Group(entries) => batch.extend(
                    entries
                        .into_iter()
                        .map(|(node, to, delivery)| (node.to_string(), to, delivery)),
                ),
                OutMsg::Flush(done) => flushes.push(done),
            }
            next = if batch.len() < BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !batch.is_empty() {
            let mut attempt = 0;
            let appended = loop {
                match cluster.engine().send(&batch).await {
                    Ok(appended) => break appended,
                    Err(e) => {
                        tracing::warn!(error = %e, stanzas = batch.len(), "cluster: inbox append failed; retrying");
                        if !super::backoff(&cluster.stop, &mut attempt).await {
                            tracing::error!(
                                stanzas = batch.len(),
                                "cluster: stanzas for other nodes dropped at leave"
                            );
                            break Vec::new();
                        }
                    }
                }
            };
            let sent: usize = batch.iter().map(|(_, _, d)| d.stanza_len()).sum();
            cluster
                .outbox_bytes
                .fetch_sub(sent, std::sync::atomic::Ordering::Relaxed);
            let mut gone: Vec<String> = Vec::new();
            for ((node, to, delivery), ok) in batch.drain(..).zip(appended) {
                if ok {
                    continue;
                }
                // Its sessions are forgotten here at once (once per
                // batch: that walks the whole replica), so the stanza
                // is not routed to it again.
                if !gone.contains(&node) {
                    let dropped = cluster.replica.drop_node(&node);
                    tracing::debug!(%node, dropped, "cluster: a node that is not alive was routed to");
                    gone.push(node);
                }
                if let Delivery::TakeOver(request) = &delivery {
                    cluster.take_over_not_delivered(request);
                }
                not_alive(&server, &to, delivery).await;
            }
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// The target node was not alive when its entry was to be appended: it
/// died (its inbox may be drained already) or left, and this node's
/// replica did not know yet. The stanza is re-routed as for a session
/// that ended (other resources, else offline storage). A replacement for
/// a session of a dead node has nothing left to replace, an answer to
/// an IQ of a dead node nobody waiting for it. A stanza for a room goes
/// back to the local chat service.
async fn not_alive(server: &Server, to: &str, delivery: Delivery) {
    let bytes = match delivery {
        Delivery::Stanza(bytes) => bytes,
        Delivery::Unaddressed { stanza, at } => {
            Bytes::from(crate::xml::with_to(&stanza, at as usize, to))
        }
        // The room's holder died: the service claims the room (or finds
        // its new holder) and serves the stanza.
        Delivery::Room(bytes) => return super::rooms::to_room_service(server, to, bytes),
        _ => return,
    };
    let Ok(to) = FullJid::new(to) else {
        return;
    };
    crate::router::reroute_one(server, &to, &OutStanza::serialized(bytes)).await;
}
