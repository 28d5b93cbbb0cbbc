//! What an s2s stream does with what the peer sends once negotiation is
//! over, whichever side opened it: an incoming stream always, an outgoing
//! one when it is bidirectional (XEP-0288). Dialback requests are answered
//! (`db:result`: the peer asks to send as a domain, checked with that
//! domain's authoritative server; `db:verify`: the peer asks whether we
//! sent a key), and stanzas are routed if their `from` is a domain this
//! stream authenticated and their `to` one of ours (else the stream ends
//! with `invalid-from` / `host-unknown`).
//!
//! A `db:result` is verified by a task of its own, so the stream goes on
//! carrying the stanzas of the pairs already verified meanwhile (XEP-0220
//! §2.2.1); the answer reaches the peer through the connection's queue,
//! after the domain was recorded as authenticated. Each verification
//! holds a place among the server's (`S2sOut::verifications`: in all, per
//! asking IP, per originating domain) besides the per-stream cap, so no
//! number of connections makes us open unbounded outgoing ones.
//!
//! Only streams that carry the peer's requests — incoming ones, and our
//! outgoing ones once bidirectional — take `db:result`: on our own
//! outgoing stream the stream id the key is bound to was chosen by the
//! peer, which weakens the replay protection of XEP-0220, and a
//! non-bidi peer has no business asking there.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::s2s_links::{AuthMethod, LinkGuard};
use super::s2s_out::{self, ToPeer, Verdict};
use super::xmlstream::{End, XmlStream};
use crate::queue::QueueSender;
use crate::router;
use crate::server::Server;
use crate::stanza::{StanzaErrorCondition, StreamErrorCondition};
use crate::stream::s2s::{self as rules, NS_DIALBACK};
use crate::xml::{Element, NS_STREAMS};

/// Dialback verifications one stream may have running at once; more get
/// a `resource-constraint` dialback error.
const MAX_PENDING_VERIFICATIONS: usize = 16;

/// (local domain, remote domain).
type Pair = (String, String);

/// An incoming stream's bidirectional routes (XEP-0288): once the peer
/// asked for bidi, each pair it authenticates becomes our route to it,
/// unless another stream carries that pair already.
pub struct BidiRoutes {
    enabled: AtomicBool,
    to_peer: QueueSender<ToPeer>,
    attached: Mutex<Vec<(Pair, u64)>>,
}

impl BidiRoutes {
    pub fn new(to_peer: QueueSender<ToPeer>) -> Self {
        BidiRoutes {
            enabled: AtomicBool::new(false),
            to_peer,
            attached: Mutex::new(Vec::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    fn attached(&self) -> MutexGuard<'_, Vec<(Pair, u64)>> {
        self.attached.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attach(&self, server: &Server, local: &str, remote: &str) {
        if !self.enabled() {
            return;
        }
        let pair = (local.to_string(), remote.to_string());
        if let Some(route) = server.s2s.attach(pair.clone(), &self.to_peer) {
            tracing::info!(local, remote, "s2s bidi route");
            self.attached().push((pair, route));
        }
    }

    /// Forgets every route of this stream (it is ending).
    pub fn forget_all(&self, server: &Server) {
        for (pair, route) in self.attached().drain(..) {
            server.s2s.forget(&pair, route);
        }
    }
}

/// What a stream authenticated, shared with its running verifications.
struct Authenticated {
    domains: Mutex<HashSet<String>>,
    /// This connection's entry in the list `ctl s2s list` shows.
    link: LinkGuard,
    routes: Option<BidiRoutes>,
    pending: AtomicUsize,
}

impl Authenticated {
    fn domains(&self) -> MutexGuard<'_, HashSet<String>> {
        self.domains.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, server: &Server, local: &str, remote: String, method: AuthMethod) {
        self.link.authenticated(&remote, method);
        if let Some(routes) = &self.routes {
            routes.attach(server, local, &remote);
        }
        self.domains().insert(remote);
    }
}

/// The receiving half of one s2s stream.
pub struct Receiving {
    /// The id dialback keys on this stream are computed with: ours on an
    /// incoming stream, the peer's on an outgoing one.
    pub stream_id: String,
    shared: Arc<Authenticated>,
    /// This connection's queue, for answers that are ready later.
    answers: QueueSender<ToPeer>,
    /// The peer's address, for the per-IP verification cap.
    peer_ip: Option<IpAddr>,
    /// The peer may make dialback requests (`db:result`) on this stream.
    takes_requests: bool,
}

impl Receiving {
    /// `routes`: on an incoming stream, where bidi routes are kept;
    /// `takes_requests`: the peer may ask for dialback here (incoming or
    /// bidirectional streams).
    pub fn new(
        stream_id: String,
        link: LinkGuard,
        answers: QueueSender<ToPeer>,
        routes: Option<BidiRoutes>,
        peer_ip: Option<IpAddr>,
        takes_requests: bool,
    ) -> Self {
        Receiving {
            stream_id,
            shared: Arc::new(Authenticated {
                domains: Mutex::new(HashSet::new()),
                link,
                routes,
                pending: AtomicUsize::new(0),
            }),
            answers,
            peer_ip,
            takes_requests,
        }
    }

    pub fn link(&self) -> &LinkGuard {
        &self.shared.link
    }

    pub fn routes(&self) -> Option<&BidiRoutes> {
        self.shared.routes.as_ref()
    }

    /// Records `remote` as authenticated on this stream for `local`.
    pub fn authenticate(&self, server: &Server, local: &str, remote: String, method: AuthMethod) {
        self.shared.add(server, local, remote, method);
    }

    /// Has any remote domain been authenticated on this stream?
    pub fn is_authenticated(&self) -> bool {
        !self.shared.domains().is_empty()
    }

    /// The remote domains authenticated so far, sorted.
    pub fn authenticated(&self) -> Vec<String> {
        let mut d: Vec<String> = self.shared.domains().iter().cloned().collect();
        d.sort_unstable();
        d
    }

    /// Turns bidi on for this incoming stream (the peer sent `<bidi/>`);
    /// domains authenticated before it get their routes now.
    pub fn enable_bidi(&self, server: &Server, local: &str) {
        let Some(routes) = &self.shared.routes else {
            return;
        };
        routes.enabled.store(true, Ordering::Release);
        self.shared.link.update(|l| l.bidi = true);
        for remote in self.authenticated() {
            routes.attach(server, local, &remote);
        }
    }

    /// Handles one element of a negotiated stream.
    pub async fn element(
        &mut self,
        server: &Server,
        stream: &mut XmlStream,
        el: Element,
    ) -> Result<(), End> {
        if el.is("result", NS_DIALBACK) && el.attr("type").is_none() {
            return self.dialback_result(server, stream, &el).await;
        }
        if el.is("verify", NS_DIALBACK) && el.attr("type").is_none() {
            dialback_verify(server, stream, &el);
            return Ok(());
        }
        if el.is("error", NS_STREAMS) {
            tracing::info!(
                condition = stream_error_name(&el),
                "s2s stream error from peer"
            );
            return Err(stream.close_stream().await);
        }
        if el.ns() == NS_DIALBACK || el.ns() == NS_STREAMS {
            // Dialback answers to requests we never made, features again:
            // nothing to do.
            return Ok(());
        }
        let checked = {
            let domains = self.shared.domains();
            rules::check_addresses(&el, &domains, |d| server.is_served_here(d))
        };
        let (from, to) = match checked {
            Ok(a) => a,
            Err(cond) => return Err(stream.close_with(cond, None).await),
        };
        let el = rules::into_client(el);
        (server.metrics.stanzas).received(crate::metrics::StreamKind::S2s, el.name());
        if let Err(cond) = router::route_from_remote(server, &from, to, el).await {
            return Err(stream.close_with(cond, None).await);
        }
        Ok(())
    }

    /// `<db:result from to>key</db:result>`: the peer asks to send as
    /// `from`; a task asks `from`'s authoritative server whether it sent
    /// `key`. Problems that concern only this domain pair are dialback
    /// errors (XEP-0220 §2.4), which leave the stream and its other pairs
    /// alone.
    async fn dialback_result(
        &mut self,
        server: &Server,
        stream: &mut XmlStream,
        el: &Element,
    ) -> Result<(), End> {
        let from = el.attr("from").and_then(rules::domain_of);
        let to = el.attr("to").and_then(rules::domain_of);
        let (Some(from), Some(to)) = (from, to) else {
            return Err(stream
                .close_with(StreamErrorCondition::ImproperAddressing, None)
                .await);
        };
        let refuse = |cond| rules::dialback_error("result", &to, &from, None, cond);
        if !self.takes_requests {
            // Our outgoing, one-way stream: the peer is the receiving
            // server here and asks nothing of us. A dialback error rather
            // than a stream error leaves our own verified pair on the
            // stream alone (XEP-0220 §2.4 prefers them).
            tracing::info!(from, to, "db:result on our outgoing stream refused");
            stream.write(&refuse(StanzaErrorCondition::NotAllowed));
            return Ok(());
        }
        if !server.is_served_here(&to) {
            stream.write(&refuse(StanzaErrorCondition::ItemNotFound));
            return Ok(());
        }
        let Some(server) = server.arc() else {
            return Ok(());
        };
        let shared = self.shared.clone();
        if shared.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_VERIFICATIONS {
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            stream.write(&refuse(StanzaErrorCondition::ResourceConstraint));
            return Ok(());
        }
        // Our own domains are answered without asking anyone, so only a
        // real verification takes a place among the server's.
        let slot = if server.is_served_here(&from) {
            None
        } else {
            let cfg = &server.config().s2s;
            match server.s2s.verifications.try_start(cfg, self.peer_ip, &from) {
                Some(slot) => Some(slot),
                None => {
                    shared.pending.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!(from, to, peer = ?self.peer_ip, "dialback verification cap reached");
                    stream.write(&refuse(StanzaErrorCondition::ResourceConstraint));
                    return Ok(());
                }
            }
        };
        let answers = self.answers.clone();
        let (stream_id, key) = (self.stream_id.clone(), el.text().trim().to_string());
        tokio::spawn(async move {
            let verdict = if slot.is_none() {
                // Nobody else speaks for our own domains.
                Verdict::Invalid
            } else {
                s2s_out::verify(&server, &to, &from, &stream_id, &key).await
            };
            drop(slot);
            tracing::info!(from, to, answer = verdict.as_str(), "dialback result");
            let answer = match verdict {
                Verdict::Valid => {
                    // Recorded before the peer can read `valid` and send.
                    shared.add(&server, &to, from.clone(), AuthMethod::Dialback);
                    rules::dialback("result", &to, &from, None, Err("valid"))
                }
                Verdict::Invalid => rules::dialback("result", &to, &from, None, Err("invalid")),
                Verdict::Unreachable => rules::dialback_error(
                    "result",
                    &to,
                    &from,
                    None,
                    StanzaErrorCondition::RemoteServerNotFound,
                ),
                Verdict::TimedOut => rules::dialback_error(
                    "result",
                    &to,
                    &from,
                    None,
                    StanzaErrorCondition::RemoteServerTimeout,
                ),
            };
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            // Past a queue full of stanzas (at most MAX_PENDING_VERIFICATIONS
            // answers are ever in flight); the stream may have ended
            // meanwhile: then nobody is waiting.
            let _ = answers.send_beyond_capacity(ToPeer::Dialback(answer));
        });
        Ok(())
    }
}

/// `<db:verify from to id>key</db:verify>`: another server asks whether
/// we (`to`) sent `key` to it (`from`) on its stream `id`.
pub fn dialback_verify(server: &Server, stream: &mut XmlStream, el: &Element) {
    let from = el
        .attr("from")
        .and_then(rules::domain_of)
        .unwrap_or_default();
    let to = el.attr("to").and_then(rules::domain_of).unwrap_or_default();
    let id = el.attr("id").unwrap_or_default();
    if !server.is_served_here(&to) {
        stream.write(&rules::dialback_error(
            "verify",
            &to,
            &from,
            Some(id),
            StanzaErrorCondition::ItemNotFound,
        ));
        return;
    }
    let valid = rules::key_matches(
        &el.text(),
        &rules::dialback_key(&server.dialback_secret, &from, &to, id),
    );
    let answer = if valid { "valid" } else { "invalid" };
    stream.write(&rules::dialback(
        "verify",
        &to,
        &from,
        Some(id),
        Err(answer),
    ));
}

/// The condition a stream error element carries, for logs.
pub fn stream_error_name(el: &Element) -> String {
    el.children()
        .map(|c| c.name().to_string())
        .find(|n| n != "text")
        .unwrap_or_default()
}
