//! External components (XEP-0114): the configured domains with their
//! secrets, and the queue of the one connection currently serving each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::Instant;

use bytes::Bytes;

use crate::queue::{QueueError, QueueSender};
use crate::sessions::{DeliveryError, Outbound};

/// The connection serving a component domain.
#[derive(Debug)]
struct Connected {
    /// Unique per connection, so a late disconnect of a refused or old
    /// connection cannot remove the one that serves the domain.
    session_id: u64,
    tx: QueueSender<Outbound>,
    peer: Option<SocketAddr>,
    since: Instant,
}

/// A configured component as `ctl components list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentStatus {
    pub domain: String,
    /// The connection serving it, if any: its id, peer address and how
    /// many seconds ago it authenticated.
    pub connection: Option<(u64, Option<SocketAddr>, u64)>,
}

/// Configured component domains and which of them are connected.
#[derive(Debug, Default)]
pub struct ComponentRegistry {
    /// Normalised domain → shared secret.
    secrets: HashMap<String, String>,
    connected: RwLock<HashMap<String, Connected>>,
    /// The components other nodes of a cluster serve (`crate::cluster`),
    /// set once at start; None on a single server.
    remote: std::sync::OnceLock<std::sync::Arc<dyn RemoteComponents>>,
}

/// Components connected to other nodes of a cluster: a stanza for one is
/// handed to its node; this node's connections and disconnections are
/// told to the others.
pub trait RemoteComponents: Send + Sync + std::fmt::Debug {
    /// A component connected to this node (`up`) or left it.
    fn local_changed(&self, domain: &str, up: bool);
    /// Queues `data` (written for a component stream) for the component
    /// `domain` on the node serving it; None when no node serves it.
    fn forward(&self, domain: &str, data: &Bytes) -> Option<Result<(), DeliveryError>>;
}

/// Why a component could not be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyConnected;

impl ComponentRegistry {
    /// From (normalised domain, secret) pairs.
    pub fn new(components: Vec<(String, String)>) -> Self {
        ComponentRegistry {
            secrets: components.into_iter().collect(),
            connected: RwLock::new(HashMap::new()),
            remote: std::sync::OnceLock::new(),
        }
    }

    /// Lets the registry reach components other nodes serve (once, at
    /// start; a second call is ignored).
    pub fn attach_remote(&self, remote: std::sync::Arc<dyn RemoteComponents>) {
        let _ = self.remote.set(remote);
    }

    /// Tells the other nodes of a cluster which components connected here
    /// (all of them again, after the cluster lost what it knew).
    pub fn connected_domains(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Is `domain` (normalised) a configured component?
    pub fn is_component(&self, domain: &str) -> bool {
        self.secrets.contains_key(domain)
    }

    /// The shared secret of a configured component.
    pub fn secret(&self, domain: &str) -> Option<&str> {
        self.secrets.get(domain).map(String::as_str)
    }

    /// Every configured component domain, sorted (for disco#items).
    pub fn domains(&self) -> Vec<&str> {
        let mut d: Vec<&str> = self.secrets.keys().map(String::as_str).collect();
        d.sort_unstable();
        d
    }

    /// Attaches the connection `session_id` (from `peer`) to `domain`. A
    /// domain already served is refused: the connection that works keeps
    /// working, and a second instance started by mistake fails loudly
    /// instead of taking over (and then being taken over back) in a loop.
    pub fn attach(
        &self,
        domain: &str,
        session_id: u64,
        peer: Option<SocketAddr>,
        tx: QueueSender<Outbound>,
    ) -> Result<(), AlreadyConnected> {
        let mut map = self.write();
        if map.contains_key(domain) {
            return Err(AlreadyConnected);
        }
        map.insert(
            domain.to_string(),
            Connected {
                session_id,
                tx,
                peer,
                since: Instant::now(),
            },
        );
        if let Some(remote) = self.remote.get() {
            remote.local_changed(domain, true);
        }
        Ok(())
    }

    /// Every configured component, sorted by domain, with the connection
    /// serving it.
    pub fn status(&self) -> Vec<ComponentStatus> {
        let map = self.read();
        self.domains()
            .into_iter()
            .map(|d| ComponentStatus {
                domain: d.to_string(),
                connection: map
                    .get(d)
                    .map(|c| (c.session_id, c.peer, c.since.elapsed().as_secs())),
            })
            .collect()
    }

    /// Detaches `domain` if it is still served by `session_id`.
    pub fn detach(&self, domain: &str, session_id: u64) {
        let mut map = self.write();
        if map.get(domain).is_some_and(|c| c.session_id == session_id) {
            map.remove(domain);
            if let Some(remote) = self.remote.get() {
                remote.local_changed(domain, false);
            }
        }
    }

    /// Queues `data` for the component's connection to this node only
    /// (what another node of a cluster forwarded here).
    pub fn send_here(&self, domain: &str, data: Bytes) -> Result<(), DeliveryError> {
        let map = self.read();
        let c = map.get(domain).ok_or(DeliveryError::Offline)?;
        queue_to(c, data)
    }

    /// Is a connection serving `domain` now?
    pub fn is_connected(&self, domain: &str) -> bool {
        self.read().contains_key(domain)
    }

    /// Number of connected components.
    pub fn count(&self) -> usize {
        self.read().len()
    }

    /// Queues a stanza already serialized for a component stream: to the
    /// connection here, else to the node of a cluster serving it.
    pub fn send(&self, domain: &str, data: Bytes) -> Result<(), DeliveryError> {
        {
            let map = self.read();
            if let Some(c) = map.get(domain) {
                return queue_to(c, data);
            }
        }
        match self.remote.get().and_then(|r| r.forward(domain, &data)) {
            Some(result) => result,
            None => Err(DeliveryError::Offline),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Connected>> {
        // Every update is a single map operation, so poisoning carries no
        // information.
        self.connected.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Connected>> {
        self.connected.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Queues `data` for a component's connection.
fn queue_to(c: &Connected, data: Bytes) -> Result<(), DeliveryError> {
    c.tx.try_send(Outbound::Stanza(crate::sessions::OutStanza::serialized(
        data,
    )))
    .map_err(|e| match e {
        QueueError::Full => DeliveryError::QueueFull,
        QueueError::Closed => DeliveryError::Offline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connection_per_domain() {
        let reg = ComponentRegistry::new(vec![("bot.x".into(), "s".into())]);
        assert!(reg.is_component("bot.x"));
        assert_eq!(reg.secret("bot.x"), Some("s"));
        assert_eq!(reg.send("bot.x", Bytes::new()), Err(DeliveryError::Offline));
        let (tx1, rx1) = crate::queue::queue(4, usize::MAX);
        let (tx2, _rx2) = crate::queue::queue(4, usize::MAX);
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        reg.attach("bot.x", 1, Some(peer), tx1).unwrap();
        assert_eq!(reg.attach("bot.x", 2, None, tx2), Err(AlreadyConnected));
        reg.detach("bot.x", 2);
        assert!(reg.is_connected("bot.x"));
        let status = reg.status();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].domain, "bot.x");
        assert_eq!(status[0].connection, Some((1, Some(peer), 0)));
        reg.send("bot.x", Bytes::from_static(b"<m/>")).unwrap();
        assert!(matches!(rx1.try_recv(), Some(Outbound::Stanza(_))));
        reg.detach("bot.x", 1);
        assert_eq!(reg.count(), 0);
        assert_eq!(reg.status()[0].connection, None);
    }
}
