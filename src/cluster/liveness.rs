//! Keeps this node's liveness key fresh (every third of the TTL) and
//! watches the others': a registered node whose key expired is dead, and
//! is reaped (`reap`).
//!
//! Self-fencing: a node that could not refresh its key for a whole TTL
//! (Redis paused or unreachable from here, this process paused) must
//! assume the key expired and another node reaped it — its sessions were
//! announced gone and taken out of the directory, its inbox re-routed.
//! Serving on would let its users' sessions live where nobody routes
//! to them, so it closes them (`fence`), stops delivering from its inbox,
//! and when Redis answers again it joins empty instead of writing the old
//! sessions back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Cluster;
use crate::server::Server;
use crate::stanza::StreamErrorCondition;

pub(super) async fn run(server: Arc<Server>, cluster: Arc<Cluster>) {
    let ttl = Duration::from_millis(cluster.ttl_ms());
    let period = Duration::from_millis((cluster.ttl_ms() / 3).max(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The key set by a refresh sent at `t` expires no earlier than
    // `t + ttl` (Redis starts the TTL when it runs the command, after it
    // was sent), so fencing at `t + ttl` comes before any survivor can
    // see the key gone. Join wrote the first one just before this task.
    let mut fence_at = Instant::now() + ttl;
    loop {
        let fenced = cluster.fenced.load(Ordering::Acquire);
        tokio::select! {
            _ = cluster.stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(fence_at), if !fenced => {
                fence(&server, &cluster);
                continue;
            }
        }
        let engine = cluster.engine();
        let sent = Instant::now();
        let refreshed = tokio::select! {
            r = engine.heartbeat(&cluster.node, cluster.ttl_ms(), server.sessions.count()) => r,
            // A refresh that hangs (Redis paused, packets dropped) must
            // not hold the fence back until the client's own timeout.
            _ = tokio::time::sleep_until(fence_at), if !fenced => {
                fence(&server, &cluster);
                continue;
            }
        };
        match refreshed {
            Ok(was_alive) if fenced => {
                // Joins again empty: its closed sessions are not written
                // back (the writer skips sessions that are gone), the
                // inbox is made again if it was reaped, and the replica
                // is read again (it missed what happened meanwhile).
                tracing::warn!(node = %cluster.node, was_alive, "cluster: Redis answers again; joining again without the fenced sessions");
                if let Err(e) = engine.open_inbox(&cluster.node).await {
                    tracing::warn!(error = %e, "cluster: inbox not made");
                }
                match engine.snapshot().await {
                    Ok(all) => cluster.replica.replace_all(all),
                    Err(e) => tracing::warn!(error = %e, "cluster: directory not readable"),
                }
                // Sessions bound since the fence (clients reconnecting
                // here) are this node's to announce.
                cluster.request_resync();
                cluster.fenced.store(false, Ordering::Release);
                cluster.unfenced.notify_waiters();
            }
            Ok(true) => {}
            Ok(false) => {
                // Refreshed within the TTL, yet the key was gone: Redis
                // lost it (restarted empty), nobody reaped this node. Its
                // sessions are written again and its inbox made again.
                tracing::warn!(node = %cluster.node, "cluster: this node's registration was lost; registering again");
                if let Err(e) = engine.open_inbox(&cluster.node).await {
                    tracing::warn!(error = %e, "cluster: inbox not made");
                }
                cluster.request_resync();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: liveness not refreshed");
                continue;
            }
        }
        fence_at = sent + ttl;
        let members = match engine.members().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: members not readable");
                continue;
            }
        };
        // Only members whose key expired are dropped and reaped: a node
        // missing from the members altogether has left (its `D` reached
        // us, or the replica was reloaded since), or is registering again
        // after Redis lost everything, and its sessions are on their way.
        for dead in members
            .iter()
            .filter(|m| !m.alive && m.node != cluster.node)
        {
            if let Err(e) = super::reap::reap(&server, &cluster, &dead.node).await {
                tracing::warn!(node = %dead.node, error = %e, "cluster: dead node not cleaned up");
            }
        }
    }
}

/// Closes every local session: this node may have been reaped, its users
/// told they went offline and their stanzas sent elsewhere. The stream
/// error is `system-shutdown` — for these streams this node is going
/// away, and clients reconnect (to any node); `reset` would promise new
/// stream features after a reconnect to the same server, which is not
/// what happened. Each session then ends as on any close (its unacked
/// stanzas to offline storage, unavailable to its contacts once the bus
/// answers — a repeat of the reaper's, harmless).
fn fence(server: &Server, cluster: &Cluster) {
    cluster.fenced.store(true, Ordering::Release);
    cluster.fence_count.fetch_add(1, Ordering::AcqRel);
    let sessions = server.sessions.all();
    tracing::error!(
        node = %cluster.node,
        sessions = sessions.len(),
        "cluster: liveness not refreshed for a whole TTL; fencing: closing every session"
    );
    let mut closed = cluster
        .fenced_sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    closed.clear();
    for jid in &sessions {
        closed.extend(server.sessions.session_id(jid));
        server
            .sessions
            .close(jid, StreamErrorCondition::SystemShutdown);
    }
}
