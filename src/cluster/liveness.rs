//! Keeps this node's liveness key fresh (every third of the TTL) and
//! watches the others': a registered node whose key expired is dead, and
//! is reaped (`reap`).

use std::sync::Arc;
use std::time::Duration;

use super::Cluster;
use crate::server::Server;

pub(super) async fn run(server: Arc<Server>, cluster: Arc<Cluster>) {
    let period = Duration::from_millis((cluster.ttl_ms() / 3).max(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cluster.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let engine = cluster.engine();
        match engine
            .heartbeat(&cluster.node, cluster.ttl_ms(), server.sessions.count())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Redis restarted empty, or this node was too slow to
                // refresh and others reaped it: its sessions are written
                // again and its inbox made again.
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
