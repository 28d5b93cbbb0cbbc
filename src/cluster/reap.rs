//! Cleans up after a node that is gone (dead, or this node's own earlier
//! run): one survivor, under a lock, removes its sessions from the
//! directory, tells their contacts they are unavailable (the same
//! `SessionEnded` event a local session's end fires, so presence, last
//! activity and the rest do what they do on any logout), re-routes what
//! its inbox still held, and takes over the chat rooms it held.

use crate::stanza::bare::Bare;
use jid::BareJid;

use super::bus::{BusResult, Change};
use super::Cluster;
use crate::feature::Event;
use crate::server::Server;
use crate::sessions::Departed;

/// Inbox entries re-routed per round trip.
const BATCH: usize = 256;

/// Reaps `node` if no other survivor is doing it and it is still dead.
pub async fn reap(server: &Server, cluster: &Cluster, node: &str) -> BusResult<()> {
    cluster.replica.drop_node(node);
    let engine = cluster.engine();
    // Held for a TTL: if this node dies while reaping, another takes over
    // (the dead node stays a member until its reaping is complete).
    if !engine
        .try_lock(&format!("reap:{node}"), cluster.ttl_ms())
        .await?
    {
        return Ok(());
    }
    if engine.is_alive(node).await? {
        return Ok(());
    }
    reap_locked(server, cluster, node).await
}

/// At join, what an earlier run of this node left. A survivor may be
/// reaping it right now: the lock is waited for (at most its TTL), or a
/// reaper still at work could take the new run's sessions for the old
/// one's. Holding the lock through the join also keeps survivors from
/// reaping the new run before its first heartbeat.
pub async fn reap_own(server: &Server, cluster: &Cluster) -> BusResult<()> {
    let engine = cluster.engine();
    let lock = format!("reap:{}", cluster.node);
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(cluster.ttl_ms() + 1_000);
    while !engine.try_lock(&lock, cluster.ttl_ms()).await? {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the lock {lock} is still held after its TTL (another node with this id?)"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    reap_locked(server, cluster, &cluster.node).await
}

async fn reap_locked(server: &Server, cluster: &Cluster, node: &str) -> BusResult<()> {
    let engine = cluster.engine();
    let sessions = engine.take_node(node).await?;
    engine.drop_node_components(node).await?;
    engine
        .publish(&[Change::NodeDown {
            node: node.to_string(),
        }])
        .await?;
    if !sessions.is_empty() {
        tracing::info!(
            node,
            sessions = sessions.len(),
            "cluster: reaping a dead node's sessions"
        );
    }
    for (jid, state) in &sessions {
        let bare: BareJid = jid.bare();
        let departed = Departed {
            presence: state.presence.clone(),
            // Directed presences are known only to the node that died.
            directed: Vec::new(),
            last_resource: server.sessions.available_resources(&bare).is_empty(),
        };
        let mut event = Event::SessionEnded {
            jid,
            departed: &departed,
        };
        server.features.fire(server, &mut event).await;
    }
    drain_inbox(server, cluster, node).await?;
    super::rooms::adopt_rooms_of(server, cluster, node).await;
    if node != cluster.node {
        engine.forget(node).await?;
    }
    Ok(())
}

/// Re-routes every entry left in `node`'s inbox, then deletes it.
pub async fn drain_inbox(server: &Server, cluster: &Cluster, node: &str) -> BusResult<()> {
    let engine = cluster.engine();
    let mut after: Option<String> = None;
    let mut count = 0usize;
    loop {
        let entries = engine.unacked(node, after.as_deref(), BATCH).await?;
        let Some(last) = entries.last() else {
            break;
        };
        after = Some(last.id.clone());
        count += entries.len();
        for entry in entries {
            // A replacement for a session of the gone node: nothing to do
            // (and here, the session it names may be the new one).
            // An answer to an IQ of the gone node: nobody waits for it.
            // A stanza for a room it held: the chat service here serves
            // it (taking the room over) or hands it to the new holder.
            if matches!(
                entry.delivery,
                super::bus::Delivery::Stanza(_) | super::bus::Delivery::Room(_)
            ) {
                super::inbox::deliver(server, entry).await;
            }
        }
    }
    if count > 0 {
        tracing::info!(
            node,
            stanzas = count,
            "cluster: re-routed an inbox's leftovers"
        );
    } else {
        tracing::debug!(node, "cluster: nothing left in the inbox");
    }
    engine.drop_inbox(node).await
}
