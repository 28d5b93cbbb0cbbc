//! Writes local session changes to the directory and announces them on
//! the bus, in batches, in the order they happened.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::bus::{Applied, Change};
use super::{Cluster, WriterMsg};
use crate::server::Server;

/// Changes written per round trip at most.
const BATCH: usize = 256;

pub(super) async fn run(
    server: Arc<Server>,
    cluster: Arc<Cluster>,
    mut rx: mpsc::Receiver<WriterMsg>,
) {
    let mut changes = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                WriterMsg::Change(c) => changes.push(c),
                WriterMsg::Flush(done) => flushes.push(done),
                WriterMsg::Nudge => {}
            }
            next = if changes.len() < BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if cluster.resync.swap(false, Ordering::Relaxed) {
            // Whatever was lost, the registry has the truth now.
            changes.clear();
            changes.extend(
                server
                    .sessions
                    .local_states()
                    .into_iter()
                    .map(|(jid, state)| Change::Bound {
                        node: cluster.node.clone(),
                        jid,
                        state,
                        claim: false,
                    }),
            );
            tracing::info!(
                sessions = changes.len(),
                "cluster: writing every local session again"
            );
            // And the components connected here.
            for domain in server.components.connected_domains() {
                if let Err(e) = cluster
                    .engine()
                    .set_component(&cluster.node, &domain, true)
                    .await
                {
                    tracing::warn!(%domain, error = %e, "cluster: component not written again");
                }
            }
        }
        if !changes.is_empty() {
            write(&server, &cluster, &changes).await;
            changes.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes until Redis takes it (or the node is leaving and gives up),
/// then announces what was written and has the sessions that a claim
/// displaced on other nodes replaced.
async fn write(server: &Server, cluster: &Cluster, changes: &[Change]) {
    let mut attempt = 0;
    for chunk in changes.chunks(BATCH) {
        loop {
            // A session that ended since its change was queued (while
            // Redis was away, or closed by self-fencing) is not written:
            // it would come back into the directory with nobody to end it.
            let chunk: Vec<Change> = chunk
                .iter()
                .filter(|c| match c {
                    Change::Bound { jid, .. } => cluster.writable(server, jid),
                    _ => true,
                })
                .cloned()
                .collect();
            let engine = cluster.engine();
            let result = match engine.apply(&chunk).await {
                Ok(applied) => {
                    let mut written = Vec::with_capacity(chunk.len());
                    for (change, applied) in chunk.into_iter().zip(applied) {
                        match applied {
                            Applied::Written => written.push(change),
                            // Replaced by a newer session elsewhere; its
                            // replacement is on its way here.
                            Applied::Stale => {}
                            Applied::Displaced(node, session) => {
                                if let Change::Bound { jid, .. } = &change {
                                    cluster.replace_on(&node, jid, session);
                                }
                                written.push(change);
                            }
                        }
                    }
                    engine.publish(&written).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: session directory not written; retrying");
                    if !super::backoff(&cluster.stop, &mut attempt).await {
                        return;
                    }
                }
            }
        }
    }
}
