//! Sockets: listeners and their accept loops, per-IP and global connection
//! caps, and the transport (plain TCP or TLS) a stream runs over.

pub mod c2s;
pub mod component;
pub mod handshakes;
pub mod s2s_caps;
pub mod s2s_in;
pub mod s2s_links;
pub mod s2s_out;
pub mod s2s_receive;
pub mod tls;
pub mod tls_set;
mod transport;
mod write_buffers;
mod xmlstream;
pub use xmlstream::StreamLimits;

pub use transport::Transport;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::server::Server;

/// Caps on simultaneous connections, globally and per remote IP.
#[derive(Debug)]
pub struct ConnectionLimits {
    /// The caps; changed by a configuration reload (connections already
    /// open above a lowered cap stay).
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Held while a connection is open; releases its slot when dropped.
pub struct ConnectionSlot {
    server: Arc<Server>,
    ip: IpAddr,
    /// Counted against the s2s caps (else the c2s ones).
    s2s: bool,
}

impl ConnectionSlot {
    /// A client connection's slot from `ip`, for a listener of another
    /// transport (the web ones) counted against the same c2s caps: None
    /// when they are full.
    pub fn admit_client(server: &Arc<Server>, ip: IpAddr) -> Option<ConnectionSlot> {
        ConnectionLimits::admit(server, ip, false)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let limits = if self.s2s {
            &self.server.s2s_connections
        } else {
            &self.server.connections
        };
        let mut map = limits.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnectionLimits {
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
            by_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Takes new caps (a configuration reload).
    pub fn set_caps(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, AtomicOrdering::Relaxed);
        self.max_per_ip.store(max_per_ip, AtomicOrdering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.by_ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of open connections.
    pub fn open(&self) -> usize {
        self.lock().values().sum()
    }

    /// Takes a slot for a connection from `ip`, if the caps allow: the s2s
    /// caps for a server's connection, else the c2s ones.
    fn admit(server: &Arc<Server>, ip: IpAddr, s2s: bool) -> Option<ConnectionSlot> {
        let limits = if s2s {
            &server.s2s_connections
        } else {
            &server.connections
        };
        let mut map = limits.lock();
        let total: usize = map.values().sum();
        let here = map.entry(ip).or_insert(0);
        if total >= limits.max_total.load(AtomicOrdering::Relaxed)
            || *here >= limits.max_per_ip.load(AtomicOrdering::Relaxed)
        {
            if *here == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *here += 1;
        Some(ConnectionSlot {
            server: server.clone(),
            ip,
            s2s,
        })
    }
}

/// What a listener's connections speak.
#[derive(Clone, Copy, Debug)]
enum Role {
    C2s { direct_tls: bool },
    Component,
    S2s { direct_tls: bool },
}

/// Accepts client connections until shutdown, one task per connection.
pub async fn accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    direct_tls: bool,
    tracker: TaskTracker,
) {
    accept(server, listener, Role::C2s { direct_tls }, tracker).await
}

/// Accepts external component connections (XEP-0114) until shutdown. They
/// count against the same connection caps as clients.
pub async fn component_accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    tracker: TaskTracker,
) {
    accept(server, listener, Role::Component, tracker).await
}

/// Accepts incoming server-to-server streams (with `direct_tls`, TLS from
/// the first byte, XEP-0368) until shutdown, under the `[s2s]` caps.
pub async fn s2s_accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    direct_tls: bool,
    tracker: TaskTracker,
) {
    accept(server, listener, Role::S2s { direct_tls }, tracker).await
}

async fn accept(server: Arc<Server>, listener: TcpListener, role: Role, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = server.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let s2s = matches!(role, Role::S2s { .. });
        let Some(slot) = ConnectionLimits::admit(&server, peer.ip(), s2s) else {
            tracing::debug!(%peer, "connection refused: connection limit reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        match role {
            Role::C2s { direct_tls } => {
                tracker.spawn(c2s::run(server.clone(), tcp, peer, direct_tls, slot));
            }
            Role::Component => {
                tracker.spawn(component::run(server.clone(), tcp, peer, slot));
            }
            Role::S2s { direct_tls } => {
                tracker.spawn(s2s_in::run(server.clone(), tcp, peer, direct_tls, slot));
            }
        }
    }
}
