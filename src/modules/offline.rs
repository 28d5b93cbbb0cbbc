//! Offline messages (XEP-0160): a message no resource can take is committed
//! to storage (with a XEP-0203 delay stamp) before anything else happens,
//! and handed to the user's first session that sends initial presence, in
//! order; rows are deleted only once the session has them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jid::{BareJid, FullJid};
use tokio::sync::OwnedMutexGuard;

use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::storage::StorageError;
use crate::xml::{Element, NS_CLIENT};

pub const NS_DELAY: &str = "urn:xmpp:delay";

/// The offline-storage feature: keeps undeliverable messages
/// (`Undeliverable`) and hands them over at initial presence
/// (`SessionAvailable`).
#[derive(Debug, Default)]
pub struct Offline {
    locks: OfflineLocks,
}

impl Feature for Offline {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn xeps(&self) -> &'static [u16] {
        &[160]
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &["msgoffline"],
            account: &[],
        }
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        // Late: storage is the last resort for a message (push and archive
        // hooks, when they come, run before it).
        &[
            (EventKind::Undeliverable, 100),
            (EventKind::SessionAvailable, 0),
        ]
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            match event {
                Event::Undeliverable {
                    to,
                    stanza,
                    refusal,
                    ..
                } => match self.store(server, to, stanza).await {
                    Ok(()) => Verdict::Stop,
                    Err(NotStored::Storage(e)) => {
                        tracing::error!(error = %e, "storing an offline message");
                        **refusal = Some(StanzaErrorCondition::InternalServerError.into());
                        Verdict::Stop
                    }
                    Err(NotStored::NoAccount | NotStored::QuotaFull) => {
                        **refusal =
                            Some(StanzaError::from(StanzaErrorCondition::ServiceUnavailable));
                        Verdict::Stop
                    }
                },
                Event::SessionAvailable { jid, initial: true } => {
                    if let Err(e) = self.deliver(server, jid).await {
                        tracing::error!(error = %e, "offline hand-over");
                    }
                    Verdict::Continue
                }
                _ => Verdict::Continue,
            }
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

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

impl Offline {
    /// Stores a message for `to`, stamped with XEP-0203 delay.
    async fn store(
        &self,
        server: &Server,
        to: &BareJid,
        message: &Element,
    ) -> Result<(), NotStored> {
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
        // A message re-routed from a session that never got it is stamped
        // already, with the time it first arrived.
        if stamped.get_child("delay", NS_DELAY).is_none() {
            stamped.append_child(
                Element::new("delay", NS_DELAY)
                    .with_attr("from", domain)
                    .with_attr("stamp", super::time::utc_now()),
            );
        }
        let xml = String::from_utf8_lossy(&stamped.to_bytes(NS_CLIENT)).into_owned();
        // Under the user's lock, so a hand-over cannot run between the routing
        // decision ("nobody available") and the push: if a resource became
        // available meanwhile and already fetched its queue, this message
        // would otherwise wait for the next login.
        let _guard = self.locks.lock(to).await;
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
        if let Some(full) = server
            .sessions
            .message_targets(to, "chat")
            .into_iter()
            .next()
        {
            if let Err(e) = deliver_locked(server, &full).await {
                tracing::error!(error = %e, "offline hand-over");
            }
        }
        Ok(())
    }

    /// Hands every waiting message to the session `to`, oldest first, deleting
    /// each batch once queued. Stops (keeping the rest) if the session's queue
    /// is full or gone.
    async fn deliver(&self, server: &Server, to: &FullJid) -> Result<(), StorageError> {
        let _guard = self.locks.lock(&to.to_bare()).await;
        deliver_locked(server, to).await
    }
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
                .send_to_full(
                    to,
                    crate::sessions::OutStanza::serialized(bytes::Bytes::from(xml.clone())),
                )
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
