//! Sends stanzas for sessions on other nodes to those nodes' inboxes, in
//! batches, in the order they were routed.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::bus::Delivery;
use super::{Cluster, OutMsg};

/// Stanzas appended per round trip at most.
const BATCH: usize = 256;

pub(super) async fn run(cluster: Arc<Cluster>, mut rx: mpsc::Receiver<OutMsg>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                OutMsg::Entry(node, to, delivery) => batch.push((node.to_string(), to, delivery)),
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
            loop {
                match cluster.engine().send(&batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, stanzas = batch.len(), "cluster: inbox append failed; retrying");
                        if !super::backoff(&cluster.stop, &mut attempt).await {
                            tracing::error!(
                                stanzas = batch.len(),
                                "cluster: stanzas for other nodes dropped at leave"
                            );
                            break;
                        }
                    }
                }
            }
            let sent: usize = batch
                .iter()
                .map(|(_, _, d)| match d {
                    Delivery::Stanza(b) => b.len(),
                    Delivery::Replaced => 0,
                })
                .sum();
            cluster
                .outbox_bytes
                .fetch_sub(sent, std::sync::atomic::Ordering::Relaxed);
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}
