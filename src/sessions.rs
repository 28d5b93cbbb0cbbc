//! The registry of bound resources: which full JIDs are online on this
//! server, their presence priority, and the queue that reaches each one.

use std::collections::HashMap;
use std::sync::RwLock;

use bytes::Bytes;
use jid::{BareJid, FullJid};
use tokio::sync::mpsc;

use crate::stanza::StreamErrorCondition;

/// What the router hands to a session's connection task.
#[derive(Debug)]
pub enum Outbound {
    /// A serialized stanza, ready to write (`jabber:client` as default namespace).
    Stanza(Bytes),
    /// End the stream with this condition (e.g. `conflict` when replaced).
    Close(StreamErrorCondition),
}

/// Why a stanza could not be queued for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryError {
    /// No such resource is bound.
    Offline,
    /// The session's queue is full: it reads slower than it is written to.
    QueueFull,
}

/// One bound resource.
#[derive(Debug)]
struct BoundResource {
    resource: String,
    /// Unique per connection, so a late unbind of a replaced session cannot
    /// remove its successor.
    session_id: u64,
    tx: mpsc::Sender<Outbound>,
    /// Set once the session has sent available presence (RFC 6121 §4.2).
    available: bool,
    priority: i8,
}

/// All bound resources, by bare JID.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    by_bare: RwLock<HashMap<BareJid, Vec<BoundResource>>>,
}

impl SessionRegistry {
    /// Binds `jid` to a session. If that full JID was already bound, the old
    /// session is told to close with `conflict` (newest wins, as Prosody
    /// and ejabberd do by default).
    pub fn bind(&self, jid: &FullJid, session_id: u64, tx: mpsc::Sender<Outbound>) {
        let resource = jid.resource().as_str().to_string();
        let old = {
            let mut map = self.write();
            let list = map.entry(jid.to_bare()).or_default();
            let old = list
                .iter()
                .position(|r| r.resource == resource)
                .map(|i| list.swap_remove(i));
            list.push(BoundResource {
                resource,
                session_id,
                tx,
                available: false,
                priority: 0,
            });
            old
        };
        if let Some(old) = old {
            // The old session may be stuck with a full queue; closing it must
            // not wait on it, so a full queue is left to its own timeout.
            let _ = old
                .tx
                .try_send(Outbound::Close(StreamErrorCondition::Conflict));
        }
    }

    /// Removes a binding, if it still belongs to `session_id`.
    pub fn unbind(&self, jid: &FullJid, session_id: u64) {
        let bare = jid.to_bare();
        let mut map = self.write();
        if let Some(list) = map.get_mut(&bare) {
            list.retain(|r| r.session_id != session_id);
            if list.is_empty() {
                map.remove(&bare);
            }
        }
    }

    /// Records the session's presence availability and priority.
    pub fn set_presence(&self, jid: &FullJid, session_id: u64, available: bool, priority: i8) {
        let mut map = self.write();
        if let Some(r) = map
            .get_mut(&jid.to_bare())
            .and_then(|l| l.iter_mut().find(|r| r.session_id == session_id))
        {
            r.available = available;
            r.priority = priority;
        }
    }

    /// Queues a stanza for one full JID.
    pub fn send_to_full(&self, jid: &FullJid, data: Bytes) -> Result<(), DeliveryError> {
        let map = self.read();
        let r = map
            .get(&jid.to_bare())
            .and_then(|l| l.iter().find(|r| r.resource == jid.resource().as_str()))
            .ok_or(DeliveryError::Offline)?;
        queue(&r.tx, data)
    }

    /// Is this full JID bound?
    pub fn is_bound(&self, jid: &FullJid) -> bool {
        self.read()
            .get(&jid.to_bare())
            .is_some_and(|l| l.iter().any(|r| r.resource == jid.resource().as_str()))
    }

    /// Full JIDs of the available resources of `bare`, with their priority.
    pub fn available_resources(&self, bare: &BareJid) -> Vec<(FullJid, i8)> {
        let map = self.read();
        map.get(bare)
            .map(|l| {
                l.iter()
                    .filter(|r| r.available)
                    .filter_map(|r| {
                        bare.with_resource_str(&r.resource)
                            .ok()
                            .map(|f| (f, r.priority))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every bound full JID (for `ctl` and shutdown).
    pub fn all(&self) -> Vec<FullJid> {
        let map = self.read();
        map.iter()
            .flat_map(|(bare, l)| {
                l.iter()
                    .filter_map(move |r| bare.with_resource_str(&r.resource).ok())
            })
            .collect()
    }

    /// Number of bound resources.
    pub fn count(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<BareJid, Vec<BoundResource>>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single Vec operation), so poisoning is ignored.
        self.by_bare.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<BareJid, Vec<BoundResource>>> {
        self.by_bare.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn queue(tx: &mpsc::Sender<Outbound>, data: Bytes) -> Result<(), DeliveryError> {
    tx.try_send(Outbound::Stanza(data)).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => DeliveryError::QueueFull,
        mpsc::error::TrySendError::Closed(_) => DeliveryError::Offline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_binding_wins_and_old_unbind_is_harmless() {
        let reg = SessionRegistry::default();
        let jid = FullJid::new("a@x/r").unwrap();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        reg.bind(&jid, 1, tx1);
        reg.bind(&jid, 2, tx2);
        assert!(matches!(
            rx1.try_recv(),
            Ok(Outbound::Close(StreamErrorCondition::Conflict))
        ));
        reg.unbind(&jid, 1);
        assert!(reg.is_bound(&jid));
        reg.send_to_full(&jid, Bytes::from_static(b"<x/>")).unwrap();
        assert!(matches!(rx2.try_recv(), Ok(Outbound::Stanza(_))));
        reg.unbind(&jid, 2);
        assert_eq!(reg.count(), 0);
    }

    #[test]
    fn full_queue_is_reported() {
        let reg = SessionRegistry::default();
        let jid = FullJid::new("a@x/r").unwrap();
        let (tx, _rx) = mpsc::channel(1);
        reg.bind(&jid, 1, tx);
        reg.send_to_full(&jid, Bytes::new()).unwrap();
        assert_eq!(
            reg.send_to_full(&jid, Bytes::new()),
            Err(DeliveryError::QueueFull)
        );
    }
}
