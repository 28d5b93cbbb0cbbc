//! Keeps the replica of remote sessions: applies the changes announced on
//! the bus; when the subscription is lost, subscribes again and reloads
//! the whole directory (what was announced meanwhile is not replayed).
//! What another node kept for later (an offline message, a pending
//! subscription request) for a user with a session here is handed over
//! again.

use std::sync::Arc;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::bus::Change;
use super::Cluster;
use crate::feature::Event;
use crate::server::Server;
use crate::sessions::Kept;

pub(super) async fn run(
    server: Arc<Server>,
    cluster: Arc<Cluster>,
    first: BoxStream<'static, Change>,
) {
    let mut events = Some(first);
    let mut attempt = 0;
    loop {
        if let Some(mut stream) = events.take() {
            loop {
                tokio::select! {
                    _ = cluster.stop.cancelled() => return,
                    next = stream.next() => match next {
                        Some(Change::KeptForLater { user, what }) => {
                            attempt = 0;
                            kept_for_later(&server, &cluster, user, what);
                        }
                        Some(change) => {
                            attempt = 0;
                            cluster.replica.apply(change);
                        }
                        None => break,
                    },
                }
            }
            tracing::warn!("cluster: bus subscription lost; resubscribing");
        }
        if !super::backoff(&cluster.stop, &mut attempt).await {
            return;
        }
        let engine = cluster.engine();
        match engine.subscribe().await {
            Ok(stream) => match engine.snapshot().await {
                Ok(all) => {
                    cluster.replica.replace_all(all);
                    match engine.components().await {
                        Ok(c) => cluster.replica.replace_components(c),
                        Err(e) => tracing::warn!(error = %e, "cluster: components not readable"),
                    }
                    events = Some(stream);
                    tracing::info!("cluster: bus subscription back; replica reloaded");
                }
                Err(e) => tracing::warn!(error = %e, "cluster: directory not readable"),
            },
            Err(e) => tracing::warn!(error = %e, "cluster: cannot subscribe to the bus"),
        }
    }
}

/// Another node kept `what` for `user` without knowing of a resource to
/// take it. A local session of `user` may have read that storage just
/// before the commit: it is handed over again, on a task of its own
/// (storage round trips must not hold the replica back). At most one
/// such task waits per user and kind: a notice arriving while one waits
/// is covered by its reading, which comes after that notice's commit.
fn kept_for_later(server: &Arc<Server>, cluster: &Arc<Cluster>, user: String, what: Kept) {
    let Ok(bare) = jid::BareJid::new(&user) else {
        return;
    };
    if !server.sessions.has_available(&bare) {
        return;
    }
    let key = (user, what);
    if !cluster.handovers().insert(key.clone()) {
        return;
    }
    let (server, cluster) = (server.clone(), cluster.clone());
    tokio::spawn(async move {
        // Out of the set before the queue is read: a notice from now on
        // gets a reading of its own.
        cluster.handovers().remove(&key);
        let mut event = Event::KeptForLater { user: &bare, what };
        server.features.fire(&server, &mut event).await;
    });
}
