//! The server-to-server connections this server holds right now, as an
//! operator sees them (`waxwing ctl s2s list`): which way each was opened,
//! the peer's address, our domain and the remote domains it carries, how
//! the remote was authenticated, whether it is bidirectional (XEP-0288).
//! Each connection task registers itself and keeps its entry current; the
//! entry goes when the task's `LinkGuard` is dropped, however it ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A peer connected to one of our s2s listeners.
    Inbound,
    /// We connected to the peer.
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "in",
            Direction::Outbound => "out",
        }
    }
}

/// How the remote side of a connection proved its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Not yet (still negotiating).
    None,
    /// SASL EXTERNAL with a certificate (XEP-0178).
    External,
    /// Server Dialback (XEP-0220).
    Dialback,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::None => "none",
            AuthMethod::External => "external",
            AuthMethod::Dialback => "dialback",
        }
    }
}

/// One connection as listed.
#[derive(Debug, Clone)]
pub struct Link {
    pub direction: Direction,
    pub peer: Option<SocketAddr>,
    /// Our domain on this stream (the header's `to` inbound, `from` outbound).
    pub local: String,
    /// Remote domains authenticated on it (outbound: the one we connected to).
    pub remote: Vec<String>,
    pub auth: AuthMethod,
    pub tls: bool,
    /// Stanzas flow both ways on it (XEP-0288).
    pub bidi: bool,
    pub opened: SystemTime,
    opened_at: Instant,
}

impl Link {
    /// Seconds since the connection was opened.
    pub fn age_secs(&self) -> u64 {
        self.opened_at.elapsed().as_secs()
    }
}

/// The registry of live s2s connections, by connection id.
#[derive(Debug, Default)]
pub struct S2sLinks {
    links: Mutex<BTreeMap<u64, Link>>,
}

impl S2sLinks {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Link>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers connection `id`; it is listed until the guard is dropped.
    pub fn open(
        self: &Arc<Self>,
        id: u64,
        direction: Direction,
        peer: Option<SocketAddr>,
        local: &str,
    ) -> LinkGuard {
        self.lock().insert(
            id,
            Link {
                direction,
                peer,
                local: local.to_string(),
                remote: Vec::new(),
                auth: AuthMethod::None,
                tls: false,
                bidi: false,
                opened: SystemTime::now(),
                opened_at: Instant::now(),
            },
        );
        LinkGuard {
            links: self.clone(),
            id,
        }
    }

    /// The live connections, oldest first.
    pub fn list(&self) -> Vec<Link> {
        self.lock().values().cloned().collect()
    }

    /// Number of live connections.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Live connections (inbound, outbound): what `ctl stats` and the
    /// metrics report, counted without copying the list.
    pub fn count_by_direction(&self) -> (usize, usize) {
        let links = self.lock();
        let inbound = links
            .values()
            .filter(|l| l.direction == Direction::Inbound)
            .count();
        (inbound, links.len() - inbound)
    }
}

/// A connection's entry in `S2sLinks`: updated as negotiation goes on,
/// removed on drop.
#[derive(Debug)]
pub struct LinkGuard {
    links: Arc<S2sLinks>,
    id: u64,
}

impl LinkGuard {
    /// Changes this connection's entry.
    pub fn update(&self, f: impl FnOnce(&mut Link)) {
        if let Some(link) = self.links.lock().get_mut(&self.id) {
            f(link);
        }
    }

    /// Records a remote domain authenticated by `auth`.
    pub fn authenticated(&self, domain: &str, auth: AuthMethod) {
        self.update(|l| {
            if !l.remote.iter().any(|d| d == domain) {
                l.remote.push(domain.to_string());
            }
            l.auth = auth;
        });
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.links.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_as_long_as_their_guard() {
        let links = Arc::new(S2sLinks::default());
        let a = links.open(1, Direction::Inbound, None, "a.test");
        let b = links.open(2, Direction::Outbound, None, "a.test");
        a.authenticated("b.test", AuthMethod::Dialback);
        a.authenticated("b.test", AuthMethod::Dialback);
        b.update(|l| l.bidi = true);
        let list = links.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].remote, vec!["b.test".to_string()]);
        assert_eq!(list[0].auth, AuthMethod::Dialback);
        assert!(list[1].bidi);
        drop(a);
        assert_eq!(links.count(), 1);
        drop(b);
        assert_eq!(links.count(), 0);
    }
}
