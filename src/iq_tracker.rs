//! IQs the server itself sends (pings, capability queries, …) and the
//! answers it waits for. A request gets a fresh id; the result or error
//! that comes back from the addressee, and only from it, wakes the waiter;
//! one that never comes times out. The number waiting is bounded.
//!
//! In a cluster the id also names the sending node (`wx<n>-<node>`): the
//! answer comes back to the node the addressee is attached to, which may
//! be another one, and that node hands it to the one that waits for it.

use crate::stanza::bare::Bare;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use jid::Jid;
use tokio::sync::oneshot;

use crate::server::Server;
use crate::xml::Element;

/// Most IQs the server waits on at once; beyond it a request fails at once.
pub const MAX_PENDING: usize = 10_000;

/// Why no result came.
#[derive(Debug)]
pub enum IqFailure {
    /// The addressee answered with an error (the whole `<iq type='error'>`).
    Error(Element),
    /// Nothing came back in time.
    Timeout,
    /// The request could not be sent (no such session, full queue,
    /// unreachable domain), or too many requests are waiting.
    NotSent,
}

struct Pending {
    to: Jid,
    tx: oneshot::Sender<Element>,
}

/// The server's outstanding IQs, by id.
#[derive(Default)]
pub struct IqTracker {
    pending: Mutex<HashMap<String, Pending>>,
    next: AtomicU64,
}

impl IqTracker {
    /// Sends `iq` (a get or set with its `to` and payload; `from` and `id`
    /// are set here, from the server's domain `from`) and waits for the
    /// answer at most `timeout`.
    pub async fn request(
        &self,
        server: &Server,
        from: &str,
        mut iq: Element,
        timeout: Duration,
    ) -> Result<Element, IqFailure> {
        let to = iq
            .attr("to")
            .and_then(|t| Jid::new(t).ok())
            .ok_or(IqFailure::NotSent)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = match server.sessions.cluster_node() {
            Some(node) => format!("wx{n}-{node}"),
            None => format!("wx{n}"),
        };
        iq.set_attr("id", &id);
        iq.set_attr("from", from);
        let (tx, rx) = oneshot::channel();
        {
            let mut map = self.lock();
            if map.len() >= MAX_PENDING {
                return Err(IqFailure::NotSent);
            }
            map.insert(id.clone(), Pending { to: to.clone(), tx });
        }
        // Removes the entry however this future ends (answer, timeout,
        // the caller dropping it).
        let _forget = Forget {
            tracker: self,
            id: &id,
        };
        if crate::router::deliver(server, &iq, &to).is_err() {
            return Err(IqFailure::NotSent);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) if answer.attr("type") == Some("result") => Ok(answer),
            Ok(Ok(answer)) => Err(IqFailure::Error(answer)),
            Ok(Err(_)) | Err(_) => Err(IqFailure::Timeout),
        }
    }

    /// Takes a result or error addressed to the server; true if it
    /// answered a waiting request. Answers from anyone but the addressee
    /// are ignored (RFC 6120 §8.2.3: the reply comes from the `to`).
    /// One whose id names another node of the cluster is handed to that
    /// node (which checks it the same way).
    pub fn answer(&self, server: &Server, from: &Jid, iq: &Element) -> bool {
        let Some(id) = iq.attr("id") else {
            return false;
        };
        if let (Some(node), Some(me)) = (sender_node(id), server.sessions.cluster_node()) {
            if node != me {
                return server.sessions.answer_elsewhere(node, from, iq);
            }
        }
        let mut map = self.lock();
        match map.get(id) {
            Some(p) if &p.to == from || (p.to.resource().is_none() && p.to == from.bare()) => {}
            _ => return false,
        }
        match map.remove(id) {
            Some(p) => p.tx.send(iq.clone()).is_ok(),
            None => false,
        }
    }

    /// How many requests are waiting.
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // Each update is one map operation: poisoning cannot leave it half done.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The node an id of ours names (`wx<n>-<node>`), if any.
fn sender_node(id: &str) -> Option<&str> {
    let (n, node) = id.strip_prefix("wx")?.split_once('-')?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !node.is_empty()).then_some(node)
}

struct Forget<'a> {
    tracker: &'a IqTracker,
    id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.tracker.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_name_their_node() {
        assert_eq!(super::sender_node("wx12-n1"), Some("n1"));
        assert_eq!(super::sender_node("wx12-node-a"), Some("node-a"));
        assert_eq!(super::sender_node("wx12"), None);
        assert_eq!(super::sender_node("wx-n1"), None);
        assert_eq!(super::sender_node("wxa-n1"), None);
        assert_eq!(super::sender_node("x12-n1"), None);
    }
}
