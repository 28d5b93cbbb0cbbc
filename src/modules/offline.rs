//! Offline messages (XEP-0160): a message no resource can take is committed
//! to storage (with a XEP-0203 delay stamp) before anything else happens,
//! and handed to the user's first session that sends initial presence, in
//! order; rows are deleted only once the session has them.

use crate::stanza::bare::Bare;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jid::{BareJid, FullJid};
use tokio::sync::OwnedMutexGuard;

use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::metrics::StorageOp;
use crate::server::Server;
use crate::sessions::{Kept, OutStanza};
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
    /// Rows handed to a session that acknowledges delivery (stream
    /// management) and not acknowledged yet: per user, that session and
    /// the last row it got. They stay stored until acknowledged, and no
    /// other session is handed them meanwhile.
    in_flight: Mutex<HashMap<BareJid, (FullJid, i64)>>,
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
            (EventKind::Acknowledged, 0),
            (EventKind::SessionEnded, 0),
            (EventKind::KeptForLater, 0),
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
                Event::Acknowledged {
                    jid,
                    stored_through,
                } => {
                    self.acknowledged(server, jid, *stored_through).await;
                    Verdict::Continue
                }
                Event::SessionEnded { jid, .. } => {
                    self.session_ended(server, jid).await;
                    Verdict::Continue
                }
                Event::KeptForLater {
                    user,
                    what: Kept::Message,
                } => {
                    if let Some(taker) = local_taker(server, user) {
                        if let Err(e) = self.deliver(server, &taker).await {
                            tracing::error!(error = %e, "offline hand-over");
                        }
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

/// The local session that takes `user`'s offline queue now, if one does:
/// the top-priority resources by the bare-JID rule, the first of them by
/// JID (so in a cluster every node picks the same one, and at most the
/// node holding it hands the queue over), when that one is here.
fn local_taker(server: &Server, user: &BareJid) -> Option<FullJid> {
    server
        .sessions
        .message_targets(user, "chat")
        .into_iter()
        .min_by(|a, b| a.as_str().cmp(b.as_str()))
        .filter(|taker| server.sessions.is_bound(taker))
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
        let guard = self.locks.lock(to).await;
        let push = server.store.offline_push(
            domain,
            user,
            &xml,
            server.config().limits.max_offline_messages,
            server.config().limits.max_offline_bytes as u64,
        );
        match server
            .metrics
            .storage
            .time(StorageOp::OfflinePush, push)
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(NotStored::QuotaFull),
            Err(e) => return Err(NotStored::Storage(e)),
        }
        // A resource that came online while the message was being routed gets
        // it now, as the bare-JID rules would have given it (the top priority,
        // not negative).
        if let Some(full) = local_taker(server, to) {
            if let Err(e) = self.deliver_locked(server, &full).await {
                tracing::error!(error = %e, "offline hand-over");
            }
            return Ok(());
        }
        drop(guard);
        // One on another node of a cluster is that node's to serve: its
        // session may have read the queue before this commit, while this
        // node did not know of it yet (on a single server, nothing).
        server
            .sessions
            .announce_kept_for_later(to, Kept::Message)
            .await;
        Ok(())
    }

    /// Hands every waiting message to the session `to`, oldest first.
    /// Stops (keeping the rest) if the session's queue is full or gone.
    async fn deliver(&self, server: &Server, to: &FullJid) -> Result<(), StorageError> {
        let _guard = self.locks.lock(&to.bare()).await;
        self.deliver_locked(server, to).await
    }

    /// The hand-over itself, under the user's lock. Rows go to a session
    /// that acknowledges delivery as stored stanzas, deleted when it acks
    /// them (`acknowledged`); to any other, they are deleted once queued.
    async fn deliver_locked(&self, server: &Server, to: &FullJid) -> Result<(), StorageError> {
        let (domain, user) = (
            to.domain().as_str(),
            to.node().map(|n| n.as_str()).unwrap_or_default(),
        );
        let bare = to.bare();
        let acks = server.sessions.acknowledges_delivery(to);
        // Rows in flight to another live session are its, until it acks
        // them or ends.
        let mut after = match self.flight().get(&bare) {
            Some((owner, last)) if owner != to && server.sessions.is_bound(owner) => *last,
            _ => 0,
        };
        loop {
            let fetch = server
                .store
                .offline_fetch(domain, user, after, DELIVERY_BATCH);
            let batch = (server.metrics.storage)
                .time(StorageOp::OfflineFetch, fetch)
                .await?;
            if batch.is_empty() {
                return Ok(());
            }
            let mut last_handed = None;
            for (id, xml) in &batch {
                let bytes = bytes::Bytes::from(xml.clone());
                let st = if acks {
                    OutStanza::stored(bytes, *id)
                } else {
                    OutStanza::serialized(bytes)
                };
                if server.sessions.send_to_full(to, st).is_err() {
                    break;
                }
                last_handed = Some(*id);
            }
            let Some(id) = last_handed else {
                return Ok(());
            };
            if acks {
                self.flight().insert(bare.clone(), (to.clone(), id));
            } else {
                server
                    .store
                    .offline_delete_through(domain, user, id)
                    .await?;
            }
            if Some(id) != batch.last().map(|b| b.0) || batch.len() < DELIVERY_BATCH as usize {
                return Ok(());
            }
            after = id;
        }
    }

    /// The session acknowledged stored rows up to `through`: delete them.
    async fn acknowledged(&self, server: &Server, jid: &FullJid, through: i64) {
        let bare = jid.bare();
        let (domain, user) = (
            jid.domain().as_str(),
            jid.node().map(|n| n.as_str()).unwrap_or_default(),
        );
        if let Err(e) = server
            .store
            .offline_delete_through(domain, user, through)
            .await
        {
            tracing::error!(error = %e, "deleting acknowledged offline messages");
            return;
        }
        let mut flight = self.flight();
        if flight
            .get(&bare)
            .is_some_and(|(owner, last)| owner == jid && *last <= through)
        {
            flight.remove(&bare);
        }
    }

    /// A session that had stored rows in flight ended without acking them
    /// all: they are free again, and go to another available resource now
    /// (or wait for the next login).
    async fn session_ended(&self, server: &Server, jid: &FullJid) {
        let bare = jid.bare();
        let was_owner = {
            let mut flight = self.flight();
            let owned = flight.get(&bare).is_some_and(|(owner, _)| owner == jid);
            if owned {
                flight.remove(&bare);
            }
            owned
        };
        if !was_owner {
            return;
        }
        match local_taker(server, &bare) {
            Some(next) => {
                if let Err(e) = self.deliver(server, &next).await {
                    tracing::error!(error = %e, "offline hand-over");
                }
            }
            // A resource on another node of a cluster reads the rows
            // itself, told as for a message kept now.
            None => {
                server
                    .sessions
                    .announce_kept_for_later(&bare, Kept::Message)
                    .await
            }
        }
    }

    fn flight(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, (FullJid, i64)>> {
        // One map operation at a time: poisoning cannot leave it half done.
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}
