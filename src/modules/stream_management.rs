//! Stream Management (XEP-0198), the session side: the stream feature, and
//! the sessions whose connection went away waiting to be resumed.
//!
//! The counting lives in `stream::sm` (sans I/O) and runs in the client
//! driver (`net::c2s`), which owns a session while a connection is
//! attached. When the connection drops, the driver *parks* the session
//! here: its queue keeps receiving stanzas (the resource stays bound, so
//! routing does not change), and its unacknowledged stanzas wait with it.
//! A new connection that authenticates as the same account and sends
//! `<resume previd=…>` takes it back; if none does within the resumption
//! time the session ends as any other does, and what it never delivered
//! is re-routed (other resources, else offline storage).
//!
//! A resumption may arrive while the old connection still looks alive (a
//! half-dead TCP stream): the old driver is told to let go (its takeover
//! token) and parks the session at once; the resumer waits for that.

use crate::stanza::bare::Bare;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::{BareJid, FullJid};
use tokio_util::sync::CancellationToken;

use crate::feature::{Event, EventKind, Feature, StreamPhase, Verdict};
use crate::queue::QueueReceiver;
use crate::server::Server;
use crate::sessions::{OutStanza, Outbound};
use crate::stream::sm::{StreamManagement, NS_SM};
use crate::xml::Element;

/// How long a resumer waits for the old connection to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Marks a session (in its extensions) whose connection is gone while it
/// waits for resumption: stanzas still reach its queue, but nobody reads
/// them yet (push notifications look for this).
#[derive(Debug)]
pub struct AwaitingResumption;

/// A session without a connection, waiting to be resumed.
pub struct Parked {
    pub jid: FullJid,
    /// The id its resource is bound under in the session registry.
    pub session_id: u64,
    /// Its queue, still filled by the router.
    pub rx: QueueReceiver<Outbound>,
    pub sm: StreamManagement,
}

enum Slot {
    /// A connection holds the session; cancelling the token asks it to
    /// park the session.
    Attached {
        owner: BareJid,
        takeover: CancellationToken,
    },
    Parked {
        owner: BareJid,
        session: Box<Parked>,
        /// Which parking this is, so an old expiry timer cannot end a
        /// session that was resumed and parked again.
        generation: u64,
    },
}

/// Why a resumption failed (`<failed><item-not-found/>` either way).
#[derive(Debug, PartialEq, Eq)]
pub enum ResumeError {
    /// No such id, expired, another account's, or replaced.
    NotFound,
}

/// The stream management feature and its resumable sessions.
#[derive(Default)]
pub struct StreamManagementFeature {
    slots: Mutex<HashMap<String, Slot>>,
    parked_changed: tokio::sync::Notify,
    generation: std::sync::atomic::AtomicU64,
}

impl Feature for StreamManagementFeature {
    fn name(&self) -> &'static str {
        "stream-management"
    }

    fn xeps(&self) -> &'static [u16] {
        &[198]
    }

    fn stream_feature(&self, server: &Server, phase: StreamPhase) -> Option<Element> {
        (phase == StreamPhase::Authenticated && server.config().stream_management.enabled)
            .then(|| Element::new("sm", NS_SM))
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        // First: a resumed session is attached again before anyone looks.
        &[(EventKind::SessionResumed, i32::MIN)]
    }

    fn on_event_now(&self, server: &Server, event: &mut Event<'_>) -> Option<Verdict> {
        if let Event::SessionResumed { jid, .. } = event {
            if let Some(ext) = server.sessions.extensions(jid) {
                ext.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove::<AwaitingResumption>();
            }
        }
        Some(Verdict::Continue)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl StreamManagementFeature {
    /// Records a resumable session as held by a connection.
    pub fn attach(&self, id: &str, owner: BareJid, takeover: CancellationToken) {
        self.lock()
            .insert(id.to_string(), Slot::Attached { owner, takeover });
    }

    /// The session ended for good (or was never resumable): forget it.
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Parks a session whose connection went away, and starts its expiry.
    pub fn park(&self, server: &Arc<Server>, session: Parked) {
        let id = session.sm.id.clone();
        let wait = Duration::from_secs(session.sm.max_secs);
        let owner = session.jid.bare();
        // Only this session's entry: the resource may be bound anew already.
        let ours = server.sessions.session_id(&session.jid) == Some(session.session_id);
        if let Some(ext) = server.sessions.extensions(&session.jid).filter(|_| ours) {
            ext.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(AwaitingResumption);
        }
        // Told from a task: parking happens where nothing may wait.
        if server.features.wants(EventKind::SessionParked) {
            let jid = session.jid.clone();
            let unacknowledged: Vec<Arc<OutStanza>> = session.sm.unacked_stanzas();
            let server = server.clone();
            server.background.clone().spawn(async move {
                let mut event = Event::SessionParked {
                    jid: &jid,
                    unacknowledged: &unacknowledged,
                };
                server.features.fire(&server, &mut event).await;
            });
        }
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(
            id.clone(),
            Slot::Parked {
                owner,
                session: Box::new(session),
                generation,
            },
        );
        self.parked_changed.notify_waiters();
        self.limit_parked(server, &id);
        let server = server.clone();
        let tasks = server.background.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A shutdown ends parked sessions too: their undelivered
                // messages go to offline storage while the store is open.
                _ = server.shutdown.cancelled() => {}
            }
            let Some(sm) = server.features.get::<StreamManagementFeature>() else {
                return;
            };
            let expired = {
                let mut slots = sm.lock();
                match slots.get(&id) {
                    Some(Slot::Parked { generation: g, .. }) if *g == generation => {
                        match slots.remove(&id) {
                            Some(Slot::Parked { session, .. }) => Some(session),
                            _ => None,
                        }
                    }
                    _ => None,
                }
            };
            if let Some(session) = expired {
                tracing::info!(jid = %session.jid, "stream management: resumption time over");
                end_parked(&server, *session).await;
            }
        });
    }

    /// An account may have at most `max_parked_per_account` sessions
    /// waiting: beyond that the oldest ends now (a client that drops and
    /// reconnects with a new resource again and again cannot pile them up).
    fn limit_parked(&self, server: &Arc<Server>, newest: &str) {
        let max = server.config().stream_management.max_parked_per_account;
        let oldest = {
            let mut slots = self.lock();
            let owner = match slots.get(newest) {
                Some(Slot::Parked { owner, .. }) => owner.clone(),
                _ => return,
            };
            let mut mine: Vec<(u64, String)> = slots
                .iter()
                .filter_map(|(id, s)| match s {
                    Slot::Parked {
                        owner: o,
                        generation,
                        ..
                    } if *o == owner => Some((*generation, id.clone())),
                    _ => None,
                })
                .collect();
            if mine.len() <= max {
                return;
            }
            mine.sort();
            match slots.remove(&mine[0].1) {
                Some(Slot::Parked { session, .. }) => session,
                _ => return,
            }
        };
        tracing::info!(jid = %oldest.jid, "stream management: too many sessions waiting; oldest ended");
        let server = server.clone();
        server
            .background
            .clone()
            .spawn(async move { end_parked(&server, *oldest).await });
    }

    /// Takes the session `previd` back for a connection authenticated as
    /// `owner`, telling a connection that still holds it to let go.
    pub async fn resume(&self, owner: &BareJid, previd: &str) -> Result<Parked, ResumeError> {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            let notified = self.parked_changed.notified();
            {
                let mut slots = self.lock();
                match slots.get(previd) {
                    None => return Err(ResumeError::NotFound),
                    Some(Slot::Attached { owner: o, .. } | Slot::Parked { owner: o, .. })
                        if o != owner =>
                    {
                        return Err(ResumeError::NotFound)
                    }
                    Some(Slot::Attached { takeover, .. }) => takeover.cancel(),
                    Some(Slot::Parked { .. }) => match slots.remove(previd) {
                        Some(Slot::Parked { session, .. }) => return Ok(*session),
                        _ => return Err(ResumeError::NotFound),
                    },
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ResumeError::NotFound);
            }
        }
    }

    /// Takes out the session of `jid` waiting for resumption, if one does
    /// (a revoked client's: it must not be resumed).
    pub fn take_parked(&self, jid: &FullJid) -> Option<Parked> {
        let mut slots = self.lock();
        let id = slots.iter().find_map(|(id, s)| match s {
            Slot::Parked { session, .. } if session.jid == *jid => Some(id.clone()),
            _ => None,
        })?;
        match slots.remove(&id) {
            Some(Slot::Parked { session, .. }) => Some(*session),
            _ => None,
        }
    }

    /// Sessions waiting for resumption.
    pub fn parked(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| matches!(s, Slot::Parked { .. }))
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // Each change is one map operation: poisoning cannot leave it half done.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ends a parked session that will not be resumed.
pub async fn end_parked(server: &Server, mut session: Parked) {
    let unacked = session.sm.take_unacked();
    end_for_good(
        server,
        &session.jid,
        session.session_id,
        &session.rx,
        unacked,
    )
    .await;
}

/// Ends a session for good: unbinds it (presence unavailable and the
/// rest, through `SessionEnded`), then re-routes what it never
/// acknowledged and what was still queued for it, in order.
pub async fn end_for_good(
    server: &Server,
    jid: &FullJid,
    session_id: u64,
    rx: &QueueReceiver<Outbound>,
    unacked: Vec<Arc<OutStanza>>,
) {
    crate::sessions::end_session(server, jid, session_id).await;
    let queued = close_and_drain(rx);
    let undelivered: Vec<Arc<OutStanza>> = unacked.into_iter().chain(queued).collect();
    for st in &undelivered {
        crate::router::reroute_one(server, jid, st).await;
    }
}

/// Closes a session's queue and returns the stanzas still in it, in order.
pub fn close_and_drain(rx: &QueueReceiver<Outbound>) -> Vec<Arc<OutStanza>> {
    rx.close_and_drain()
        .into_iter()
        .filter_map(|item| match item {
            Outbound::Stanza(st) => Some(st),
            Outbound::Close(_) => None,
        })
        .collect()
}

/// Why a parked session taken for a resumption cannot be resumed (it was
/// ended by [`take_back`]).
#[derive(Debug, PartialEq, Eq)]
pub enum NotResumed {
    /// A new login of the same resource replaced it meanwhile, or its
    /// client was revoked (`<failed><item-not-found/>`).
    Gone,
    /// The client's `h` is beyond what was sent (§4: a stream error).
    TooHigh,
}

/// Checks a parked session taken for a resumption (here, or for another
/// node: `sm_handover`) and applies the client's `h`: what it
/// acknowledges is forgotten, offline-storage rows among it may go
/// (`Event::Acknowledged`), and what features keep of what the session
/// handled (the archive) is stored before the `h` reported back. A session
/// that cannot be resumed is ended, its stanzas re-routed.
pub async fn take_back(server: &Server, parked: Parked, h: u32) -> Result<Parked, NotResumed> {
    // A new login of the same resource replaced the session meanwhile: it
    // is over, and its stanzas go where that login can get them.
    if server.sessions.session_id(&parked.jid) != Some(parked.session_id) {
        end_parked(server, parked).await;
        return Err(NotResumed::Gone);
    }
    // Its client was revoked (perhaps by `ctl` while the server could not
    // be told): the session ends instead.
    if !crate::modules::clients::may_resume(server, &parked.jid).await {
        tracing::info!(jid = %parked.jid, "stream management: resumption refused, the client was revoked");
        end_parked(server, parked).await;
        return Err(NotResumed::Gone);
    }
    let mut parked = parked;
    match parked.sm.acknowledge(h) {
        Ok(Some(stored_through)) => {
            let mut event = Event::Acknowledged {
                jid: &parked.jid,
                stored_through,
            };
            server.features.fire(server, &mut event).await;
        }
        Ok(None) => {}
        Err(_) => {
            let unacked = parked.sm.take_unacked();
            end_for_good(server, &parked.jid, parked.session_id, &parked.rx, unacked).await;
            return Err(NotResumed::TooHigh);
        }
    }
    server.features.flushed().await;
    Ok(parked)
}
