//! The bound client session as its connection drives it: stanzas read go
//! to the router, queued stanzas pass the features' outbound filters (client
//! state) and are written, and stream management (XEP-0198) counts both
//! ways. When the connection ends, a resumable session is parked for its
//! client to resume from a new connection; any other ends for good, and
//! what it never got is re-routed.

use crate::stanza::bare::Bare;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use jid::FullJid;
use tokio_util::sync::CancellationToken;

use super::transport::ElementSink;
use super::{ClientStream, Connection};
use crate::feature::Event;
use crate::feature::Verdict;
use crate::metrics::StreamKind;
use crate::modules::sm_handover;
use crate::modules::stream_management::{
    end_for_good, take_back, NotResumed, Parked, ResumeError, StreamManagementFeature,
};
use crate::net::xmlstream::{random_id, End};
use crate::queue::QueueReceiver;
use crate::router;
use crate::sessions::{AcknowledgesDelivery, OutStanza, Outbound, SessionExtensions};
use crate::stanza::{StanzaKind, StreamErrorCondition, NS_STANZA_ERRORS};
use crate::stream::sm::{parse_h, StreamManagement, NS_SM};
use crate::xml::{Element, StreamEvent, NS_CLIENT};

/// A session's state while a connection drives it.
pub(super) struct Attached {
    pub jid: FullJid,
    /// The id it is bound under in the registry (the first connection's).
    pub session_id: u64,
    pub rx: QueueReceiver<Outbound>,
    /// Cancelled when a resumption elsewhere takes the session over.
    pub takeover: CancellationToken,
    /// The client closed its stream itself: the session ends.
    pub closed_by_client: bool,
    /// What writes to the client (apart, so the queue can be read while
    /// it is borrowed).
    pub w: Writer,
    /// Acks the client asked for before the features had stored what
    /// they cover; answered once they have, the stream read meanwhile.
    pub owed: Option<Box<OwedAcks>>,
}

/// Answers to `<r/>` waiting for the features' durable storage
/// ([`Features::flushed`](crate::feature::Features::flushed)). Waiting
/// inline would stop reading the stream for a whole archive commit at
/// every `<r/>`: the sender's next stanzas, and the stanzas queued for
/// it, would stall behind it.
pub(super) struct OwedAcks {
    /// `<a h/>` values, oldest first (at most [`MAX_OWED_ACKS`]).
    h: Vec<u32>,
    /// Done once everything handled before the last `<r/>` is stored.
    flushed: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Writes the owed answers, oldest first.
fn write_acks<S: ClientStream>(stream: &mut S, owed: Option<Box<OwedAcks>>) {
    for h in owed.map(|o| o.h).unwrap_or_default() {
        stream.write(&Element::new("a", NS_SM).with_attr("h", h.to_string()));
    }
}

/// Answers kept per session while storage catches up: a client asking
/// more often before the first is answered gets one answer, with the
/// latest count, for the surplus (h is cumulative, XEP-0198 §4).
const MAX_OWED_ACKS: usize = 16;

/// Unacknowledged stanzas that make stream management ask for an ack at
/// once.
const ACK_REQUEST_EVERY: usize = 32;
/// How long fewer than that wait before an ack is asked for anyway.
const ACK_REQUEST_DELAY: Duration = Duration::from_millis(500);
const ACK_REQUEST: &[u8] = b"<r xmlns='urn:xmpp:sm:3'/>";

/// The outbound half of an attached session.
pub(super) struct Writer {
    /// Since when a tail of fewer than `ACK_REQUEST_EVERY` stanzas waits
    /// for an ack request.
    pub tail_since: Option<Instant>,
    pub extensions: SessionExtensions,
    pub sm: Option<StreamManagement>,
    /// The stream ended so that a resumable session waits (a drop, not a
    /// protocol error or a close).
    pub park: bool,
    /// Scratch space for what the outbound filters let through.
    pub filtered: Vec<Arc<OutStanza>>,
}

/// `<failed xmlns='urn:xmpp:sm:3'>` with a stanza error condition.
fn failed(condition: &str, h: Option<u32>) -> Element {
    let mut f = Element::new("failed", NS_SM).with_child(Element::new(condition, NS_STANZA_ERRORS));
    if let Some(h) = h {
        f.set_attr("h", h.to_string());
    }
    f
}

impl Attached {
    pub fn new(
        jid: FullJid,
        session_id: u64,
        rx: QueueReceiver<Outbound>,
        extensions: SessionExtensions,
    ) -> Attached {
        Attached {
            jid,
            session_id,
            rx,
            takeover: CancellationToken::new(),
            closed_by_client: false,
            owed: None,
            w: Writer {
                tail_since: None,
                extensions,
                sm: None,
                park: false,
                filtered: Vec::new(),
            },
        }
    }
}

impl Writer {
    /// Writes one queued item: through the features' outbound filters,
    /// counted by stream management. Returns a condition to close with.
    fn write_item(
        &mut self,
        server: &crate::server::Server,
        item: Outbound,
        out: &mut impl ElementSink,
    ) -> Option<StreamErrorCondition> {
        let st = match item {
            Outbound::Stanza(st) => st,
            Outbound::Close(cond) => {
                // Closed from the server's side (replaced, account gone):
                // the session ends, it does not wait for resumption.
                self.park = false;
                return Some(cond);
            }
        };
        if !server.features.wants(crate::feature::EventKind::Outbound) {
            return self.write_now(server, std::iter::once(st), out);
        }
        // A buffer kept across writes: the filters' output is mostly the
        // one stanza, and allocating for it per write is measurable.
        let mut now = std::mem::take(&mut self.filtered);
        {
            let mut ext = self.extensions.lock().unwrap_or_else(|e| e.into_inner());
            server.features.outbound(&mut ext, st, &mut now);
        }
        let cond = self.write_now(server, now.drain(..), out);
        self.filtered = now;
        cond
    }

    /// Writes stanzas past the filters, counting them.
    fn write_now(
        &mut self,
        server: &crate::server::Server,
        stanzas: impl IntoIterator<Item = Arc<OutStanza>>,
        out: &mut impl ElementSink,
    ) -> Option<StreamErrorCondition> {
        let counted = &server.metrics.stanzas;
        let Some(sm) = &mut self.sm else {
            for st in stanzas {
                counted.sent_serialized(StreamKind::C2s, st.bytes());
                out.element(st.bytes());
            }
            return None;
        };
        for st in stanzas {
            counted.sent_serialized(StreamKind::C2s, st.bytes());
            out.element(st.bytes());
            sm.sent_one(&st);
        }
        let config = server.config_now();
        let (max, max_bytes) = (
            config.stream_management.max_unacked,
            config.limits.session_queue_bytes,
        );
        drop(config);
        if sm.unacked_len() > max || sm.unacked_weight() > max_bytes {
            // A client that stops acknowledging is treated as gone: its
            // session waits for a resumption, holding what it did not ack.
            self.park = true;
            return Some(StreamErrorCondition::PolicyViolation);
        }
        // Ask for an ack once enough is waiting for one; a smaller tail is
        // asked for by the timer (`ack_due`), so a busy stream does not
        // pay an extra round trip per write.
        if !sm.request_pending && sm.unacked_len() >= ACK_REQUEST_EVERY {
            out.element(ACK_REQUEST);
            sm.request_pending = true;
        }
        None
    }

    /// When stream management should next ask for an ack of a tail of
    /// unacknowledged stanzas (None: nothing to ask).
    fn ack_due(&mut self) -> Option<Instant> {
        let sm = self.sm.as_mut()?;
        if sm.request_pending || sm.unacked_len() == 0 {
            self.tail_since = None;
            return None;
        }
        Some(*self.tail_since.get_or_insert_with(Instant::now) + ACK_REQUEST_DELAY)
    }
}

impl<S: ClientStream> Connection<S> {
    /// Runs a bound session until its connection ends.
    pub(super) async fn session(&mut self, a: &mut Attached) -> End {
        let idle = Duration::from_secs(self.server.config().c2s.idle_timeout);
        let server = self.server.clone();
        // Shutdown reaches a bound session through its queue
        // (`SessionRegistry::close_all`); one bound after that ran finds
        // the token cancelled here.
        if server.shutdown.is_cancelled() {
            return self
                .stream
                .close_with(StreamErrorCondition::SystemShutdown, None)
                .await;
        }
        loop {
            // Handle every complete stanza already buffered.
            loop {
                match self.stream.next_buffered() {
                    Ok(None) => break,
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        if let Err(cond) = self.handle_element(a, el).await {
                            return self.stream.close_with(cond, None).await;
                        }
                    }
                    Ok(Some(StreamEvent::End)) => {
                        a.closed_by_client = true;
                        // A client that asked for an ack and closed still
                        // gets its answer before our end of the stream.
                        self.pay_owed_acks(a).await;
                        return self.stream.close_stream().await;
                    }
                    Ok(Some(StreamEvent::Header(_))) => {
                        return self
                            .stream
                            .close_with(StreamErrorCondition::NotWellFormed, None)
                            .await
                    }
                    Err(e) => return self.stream.close_parse_error(e).await,
                }
            }
            // A tail of unacknowledged stanzas gets its ack request when due.
            if let Some(at) = a.w.ack_due() {
                if Instant::now() >= at {
                    if let Some(sm) = &mut a.w.sm {
                        self.stream.write_raw(ACK_REQUEST);
                        sm.request_pending = true;
                    }
                    a.w.tail_since = None;
                } else {
                    self.stream.wake_at(at);
                }
            }
            let pumped = {
                let w = &mut a.w;
                let mut write = |item: Outbound, out: &mut S::Out| w.write_item(&server, item, out);
                let owed = &mut a.owed;
                tokio::select! {
                    biased;
                    _ = a.takeover.cancelled() => None,
                    _ = async { owed.as_mut().expect("guarded").flushed.as_mut().await },
                        if owed.is_some() =>
                    {
                        write_acks(&mut self.stream, owed.take());
                        Some(Ok(()))
                    }
                    r = self.stream.pump_with(&a.rx, &mut write, &server.shutdown, idle) => Some(r),
                }
            };
            match pumped {
                // Resumed elsewhere: let go of the session at once.
                None => {
                    a.w.park = true;
                    return End::Io("session resumed on another connection".into());
                }
                Some(Err(end)) => {
                    if matches!(
                        end,
                        End::Io(_)
                            | End::WriteTimeout
                            | End::PeerClosed
                            | End::StreamError(StreamErrorCondition::ConnectionTimeout)
                    ) {
                        a.w.park = true;
                    }
                    return end;
                }
                Some(Ok(())) => {}
            }
        }
    }

    /// A top-level element of the bound session: a stanza goes to the
    /// router; stream management's are answered here; anything else
    /// (client state) goes to the feature that takes it, else the stream
    /// ends.
    async fn handle_element(
        &mut self,
        a: &mut Attached,
        el: Element,
    ) -> Result<(), StreamErrorCondition> {
        if StanzaKind::of(&el, NS_CLIENT).is_some() {
            (self.server.metrics.stanzas).received(StreamKind::C2s, el.name());
            // Boxed: routing's state (the largest of a bound session's) is
            // needed only while a stanza is routed; inline, every idle
            // session's task would keep room for it (~1.7 KB) for its life.
            Box::pin(router::route_from_client(&self.server, &a.jid, el)).await?;
            if let Some(sm) = &mut a.w.sm {
                sm.handled_one();
            }
            return Ok(());
        }
        if el.ns() == NS_SM {
            if el.name() == "r" && self.owe_ack(a) {
                return Ok(());
            }
            if let Some(stored_through) = self.stream_management(a, &el)? {
                let mut event = Event::Acknowledged {
                    jid: &a.jid,
                    stored_through,
                };
                self.server.features.fire(&self.server, &mut event).await;
            }
            return Ok(());
        }
        let mut replies = Vec::new();
        let mut release = Vec::new();
        let mut event = Event::SessionElement {
            jid: &a.jid,
            element: &el,
            replies: &mut replies,
            release: &mut release,
        };
        if self.server.features.fire(&self.server, &mut event).await != Verdict::Stop {
            return Err(StreamErrorCondition::UnsupportedStanzaType);
        }
        for r in &replies {
            self.stream.write(r);
        }
        let mut out = S::Out::default();
        let cond = a.w.write_now(&self.server, release, &mut out);
        self.stream.write_out(out);
        cond.map_or(Ok(()), Err)
    }

    /// An ack says the stanzas were handled, so what features keep of them
    /// (the archive) must be stored first: when it is not yet, the answer
    /// to this `<r/>` is owed (true) and written when it is.
    fn owe_ack(&mut self, a: &mut Attached) -> bool {
        let Some(sm) = &a.w.sm else { return false };
        let h = sm.handled();
        if let Some(owed) = &mut a.owed {
            // The new wait covers the earlier ones too.
            owed.flushed = self.flushed();
            if owed.h.len() < MAX_OWED_ACKS {
                owed.h.push(h);
            } else if let Some(last) = owed.h.last_mut() {
                *last = h;
            }
            return true;
        }
        let mut flushed = self.flushed();
        if (&mut flushed).now_or_never().is_some() {
            return false;
        }
        a.owed = Some(Box::new(OwedAcks {
            h: vec![h],
            flushed,
        }));
        true
    }

    /// Waits for what the owed acks cover to be stored, and writes them.
    async fn pay_owed_acks(&mut self, a: &mut Attached) {
        if let Some(owed) = &mut a.owed {
            owed.flushed.as_mut().await;
        }
        write_acks(&mut self.stream, a.owed.take());
    }

    /// The features' durable storage of what was handed to them so far.
    fn flushed(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let server = self.server.clone();
        Box::pin(async move { server.features.flushed().await })
    }

    /// `<enable/>`, `<r/>`, `<a/>` on a bound stream (XEP-0198 §3, §4).
    /// Returns the last offline-storage row an ack covered.
    fn stream_management(
        &mut self,
        a: &mut Attached,
        el: &Element,
    ) -> Result<Option<i64>, StreamErrorCondition> {
        let config = &self.server.config().stream_management;
        let feature = self.server.features.get::<StreamManagementFeature>();
        match (el.name(), &mut a.w.sm) {
            (_, _) if !config.enabled || feature.is_none() => {
                Err(StreamErrorCondition::UnsupportedStanzaType)
            }
            ("enable", Some(_)) | ("resume", _) => {
                self.stream.write(&failed("unexpected-request", None));
                Ok(None)
            }
            ("enable", None) => {
                let resumable = matches!(el.attr("resume"), Some("true" | "1"));
                let max = el
                    .attr("max")
                    .and_then(|m| m.parse::<u64>().ok())
                    .filter(|m| *m > 0)
                    .map_or(config.max_resume, |m| m.min(config.max_resume));
                let id = random_id();
                let mut enabled = Element::new("enabled", NS_SM);
                if resumable {
                    enabled.set_attr("id", &id);
                    enabled.set_attr("resume", "true");
                    enabled.set_attr("max", max.to_string());
                    if !config.location.is_empty() {
                        enabled.set_attr("location", &config.location);
                    }
                    if let Some(f) = feature {
                        f.attach(&id, a.jid.bare(), a.takeover.clone());
                    }
                }
                a.w.sm = Some(StreamManagement::new(id, resumable, max));
                // From now on a stanza is delivered when acknowledged.
                a.w.extensions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(AcknowledgesDelivery);
                self.stream.write(&enabled);
                Ok(None)
            }
            ("r", Some(sm)) => {
                self.stream.write(&sm.answer());
                Ok(None)
            }
            ("a", Some(sm)) => {
                let Some(h) = parse_h(el) else {
                    return Err(StreamErrorCondition::InvalidXml);
                };
                sm.request_pending = false;
                let stored = match sm.acknowledge(h) {
                    Ok(stored) => stored,
                    Err(too_high) => {
                        tracing::info!(conn = self.id, jid = %a.jid, h = too_high.h,
                            sent = too_high.sent, "stream management: ack beyond what was sent");
                        return Err(StreamErrorCondition::UndefinedCondition);
                    }
                };
                if sm.unacked_len() >= ACK_REQUEST_EVERY {
                    // More went out since the request this answers.
                    self.stream.write_raw(ACK_REQUEST);
                    sm.request_pending = true;
                }
                Ok(stored)
            }
            // `<r/>` or `<a/>` before `<enable/>`.
            _ => Err(StreamErrorCondition::UnsupportedStanzaType),
        }
    }

    /// `<resume/>` after authentication, instead of binding (§5): takes the
    /// parked session back, answers `<resumed/>` and writes again what the
    /// client did not acknowledge. `inline`: the SASL2 `<success/>` the
    /// `<resumed/>` goes into. The `<failed/>` to answer when it cannot.
    pub(super) async fn resume(
        &mut self,
        el: &Element,
        owner: &jid::BareJid,
        inline: Option<Element>,
    ) -> Result<Result<Attached, Element>, End> {
        let feature = match self.server.features.get::<StreamManagementFeature>() {
            Some(f) if self.server.config().stream_management.enabled => f,
            _ => return Ok(Err(failed("feature-not-implemented", None))),
        };
        let (Some(previd), Some(h)) = (el.attr("previd"), parse_h(el)) else {
            return Ok(Err(failed("bad-request", None)));
        };
        let parked = match feature.resume(owner, previd).await {
            Ok(p) => p,
            // Another node of a cluster may hold it (modules::sm_handover).
            Err(ResumeError::NotFound) => {
                match sm_handover::take_over(&self.server, owner, previd, h, self.id).await {
                    Some(p) => p,
                    None => return Ok(Err(failed("item-not-found", None))),
                }
            }
        };
        let Parked {
            jid,
            session_id,
            rx,
            mut sm,
        } = match take_back(&self.server, parked, h).await {
            Ok(p) => p,
            Err(NotResumed::Gone) => return Ok(Err(failed("item-not-found", None))),
            Err(NotResumed::TooHigh) => {
                return Err(self
                    .stream
                    .close_with(
                        StreamErrorCondition::UndefinedCondition,
                        Some("acknowledged more than was sent"),
                    )
                    .await)
            }
        };
        let extensions = self.server.sessions.extensions(&jid).unwrap_or_default();
        let resumed = Element::new("resumed", NS_SM)
            .with_attr("previd", &sm.id)
            .with_attr("h", sm.handled().to_string());
        match inline {
            Some(mut success) => {
                // XEP-0388 §2.5.3: after a resumption the identifier is
                // the session's full JID, not the account's.
                let ns = crate::stream::sasl2::NS_SASL2;
                if let Some(a) = success.get_child_mut("authorization-identifier", ns) {
                    *a = Element::new("authorization-identifier", ns).with_text(jid.as_str());
                }
                success.append_child(resumed);
                self.stream.write(&success);
            }
            None => self.stream.write(&resumed),
        }
        // What the client did not acknowledge, again; it stays counted
        // and unacknowledged until it is.
        for bytes in sm.unacked() {
            self.stream.write_raw(bytes);
        }
        sm.request_pending = sm.unacked_len() > 0;
        if sm.request_pending {
            self.stream.write_raw(ACK_REQUEST);
        }
        tracing::info!(conn = self.id, peer = %self.peer, jid = %jid,
            resent = sm.unacked_len(), "c2s session resumed");
        let mut a = Attached::new(jid, session_id, rx, extensions);
        feature.attach(&sm.id, owner.clone(), a.takeover.clone());
        a.w.sm = Some(sm);
        // Features whose state is per stream start afresh; what they held
        // is written next, counted like any stanza. Past the unacked cap
        // the stream is not closed here (the session is not driven yet):
        // the next write closes it, as it would anyway.
        let mut release = Vec::new();
        let mut event = Event::SessionResumed {
            jid: &a.jid,
            release: &mut release,
        };
        self.server.features.fire(&self.server, &mut event).await;
        if !release.is_empty() {
            let mut out = S::Out::default();
            if a.w.write_now(&self.server, release, &mut out).is_some() {
                a.w.park = false;
            }
            self.stream.write_out(out);
        }
        self.stream.flush().await?;
        Ok(Ok(a))
    }

    /// After the connection ended: park a resumable session, or end it and
    /// re-route what it never got.
    pub(super) async fn finish(&mut self, mut a: Attached) {
        let server = self.server.clone();
        let resumable = a.w.sm.as_ref().is_some_and(|sm| sm.resumable);
        let feature = server.features.get::<StreamManagementFeature>();
        if resumable && a.w.park && !a.closed_by_client && !server.shutdown.is_cancelled() {
            if let (Some(f), Some(sm)) = (feature, a.w.sm.take()) {
                tracing::info!(conn = self.id, jid = %a.jid, "c2s session waits for resumption");
                f.park(
                    &server,
                    Parked {
                        jid: a.jid,
                        session_id: a.session_id,
                        rx: a.rx,
                        sm,
                    },
                );
                return;
            }
        }
        let mut sm = a.w.sm.take();
        if let (Some(f), Some(sm)) = (feature, &sm) {
            f.forget(&sm.id);
        }
        let unacked = sm.as_mut().map(|s| s.take_unacked()).unwrap_or_default();
        end_for_good(&server, &a.jid, a.session_id, &a.rx, unacked).await;
    }
}
