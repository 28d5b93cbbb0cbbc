//! IQs the server itself sends (pings, capability queries, …) and the
//! answers it waits for. A request gets a fresh id; the result or error
//! that comes back from the addressee, and only from it, wakes the waiter;
//! one that never comes times out. The number waiting is bounded.

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
        let id = format!("wx{}", self.next.fetch_add(1, Ordering::Relaxed));
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
    pub fn answer(&self, from: &Jid, iq: &Element) -> bool {
        let Some(id) = iq.attr("id") else {
            return false;
        };
        let mut map = self.lock();
        match map.get(id) {
            Some(p) if &p.to == from || (p.to.resource().is_none() && p.to == from.to_bare()) => {}
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

struct Forget<'a> {
    tracker: &'a IqTracker,
    id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.tracker.lock().remove(self.id);
    }
}
