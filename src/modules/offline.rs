//! Offline messages (XEP-0160): a message no resource can take is committed
//! to storage (with a XEP-0203 delay stamp) before anything else happens,
//! and handed to the user's first session that sends initial presence, in
//! order; rows are deleted only once the session has them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jid::{BareJid, FullJid};
use tokio::sync::OwnedMutexGuard;

use super::Module;
use crate::server::Server;
use crate::storage::StorageError;
use crate::xml::{Element, NS_CLIENT};

pub const NS_DELAY: &str = "urn:xmpp:delay";

pub const MODULE: Module = Module {
    xep: 160,
    namespaces: &[],
    features: &["msgoffline"],
    handle: |_| super::ready(Err(crate::stanza::StanzaErrorCondition::ServiceUnavailable)),
};

/// Messages handed to a session per storage round trip.
const DELIVERY_BATCH: u32 = 500;

/// One async lock per user with offline activity. Storing a message and
/// handing the queue to a session that just became available race otherwise:
/// a message committed right after the session read an empty queue would sit
/// there until the next login.
#[derive(Debug, Default)]
pub struct OfflineLocks {
    by_user: Mutex<HashMap<BareJid, Arc<tokio::sync::Mutex<()>>>>,
}

impl OfflineLocks {
    async fn lock(&self, user: &BareJid) -> OwnedMutexGuard<()> {
        let m = {
            let mut map = self.by_user.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() > 1024 {
                // Forget locks nobody holds or waits for.
                map.retain(|_, m| Arc::strong_count(m) > 1);
            }
            map.entry(user.clone()).or_default().clone()
        };
        m.lock_owned().await
    }
}

/// Why a message could not be stored.
#[derive(Debug)]
pub enum NotStored {
    /// No such account.
    NoAccount,
    /// The user's offline quota (messages or bytes) is full. Senders get
    /// `service-unavailable`, as when nothing can be stored (RFC 6121
    /// §8.5.2.1.1; Prosody answers so when storage refuses; ejabberd says
    /// `resource-constraint`, which also tells a stranger that the user is
    /// away and how busy their queue is).
    QuotaFull,
    Storage(StorageError),
}

/// Stores a message for `to`, stamped with XEP-0203 delay.
pub async fn store(server: &Server, to: &BareJid, message: &Element) -> Result<(), NotStored> {
    let (domain, user) = (
        to.domain().as_str(),
        to.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    match server.store.account_exists(domain, user).await {
        Ok(true) => {}
        Ok(false) => return Err(NotStored::NoAccount),
        Err(e) => return Err(NotStored::Storage(e)),
    }
    let mut stamped = message.clone();
    stamped.append_child(
        Element::new("delay", NS_DELAY)
            .with_attr("from", domain)
            .with_attr("stamp", super::time::utc_now()),
    );
    let xml = String::from_utf8_lossy(&stamped.to_bytes(NS_CLIENT)).into_owned();
    // Under the user's lock, so a hand-over cannot run between the routing
    // decision ("nobody available") and the push: if a resource became
    // available meanwhile and already fetched its queue, this message
    // would otherwise wait for the next login.
    let _guard = server.offline_locks.lock(to).await;
    match server
        .store
        .offline_push(
            domain,
            user,
            &xml,
            server.config.limits.max_offline_messages,
            server.config.limits.max_offline_bytes as u64,
        )
        .await
    {
        Ok(true) => {}
        Ok(false) => return Err(NotStored::QuotaFull),
        Err(e) => return Err(NotStored::Storage(e)),
    }
    // A resource that came online while the message was being routed gets
    // it now, as the bare-JID rules would have given it (the top priority,
    // not negative).
    let top = server
        .sessions
        .available_resources(to)
        .into_iter()
        .filter(|(_, p)| *p >= 0)
        .max_by_key(|(_, p)| *p);
    if let Some((full, _)) = top {
        if let Err(e) = deliver_locked(server, &full).await {
            tracing::error!(error = %e, "offline hand-over");
        }
    }
    Ok(())
}

/// Hands every waiting message to the session `to`, oldest first, deleting
/// each batch once queued. Stops (keeping the rest) if the session's queue
/// is full or gone.
pub async fn deliver(server: &Server, to: &FullJid) -> Result<(), StorageError> {
    let _guard = server.offline_locks.lock(&to.to_bare()).await;
    deliver_locked(server, to).await
}

async fn deliver_locked(server: &Server, to: &FullJid) -> Result<(), StorageError> {
    let (domain, user) = (
        to.domain().as_str(),
        to.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    loop {
        let batch = server
            .store
            .offline_fetch(domain, user, DELIVERY_BATCH)
            .await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut last_handed = None;
        for (id, xml) in &batch {
            if server
                .sessions
                .send_to_full(to, bytes::Bytes::from(xml.clone()))
                .is_err()
            {
                break;
            }
            last_handed = Some(*id);
        }
        match last_handed {
            Some(id) => {
                server
                    .store
                    .offline_delete_through(domain, user, id)
                    .await?
            }
            None => return Ok(()),
        }
        if last_handed != batch.last().map(|b| b.0) || batch.len() < DELIVERY_BATCH as usize {
            return Ok(());
        }
    }
}
