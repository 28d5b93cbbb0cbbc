//! Outgoing server-to-server streams: one per (local domain, remote
//! domain) pair, opened on demand. Stanzas queue (bounded) while the stream
//! is resolved, connected, secured (direct TLS, XEP-0368, or STARTTLS) and
//! authenticated (SASL EXTERNAL, XEP-0178, or dialback, XEP-0220); they are
//! written once the peer says `valid`. If the
//! stream cannot be made, every queued stanza bounces to its local sender
//! (`remote-server-not-found`, or `remote-server-timeout` when
//! `connect_timeout` ran out). Idle streams close and reopen on demand.
//! Also here: the dialback verification an incoming stream asks of the
//! originating domain's authoritative server (`verify`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::Jid;
use tokio::net::TcpStream;

use super::s2s_links::{AuthMethod, Direction};
use super::s2s_receive::{stream_error_name, Receiving};
use super::transport::Transport;
use super::xmlstream::{End, IdleRule, Queued, XmlStream};
use crate::queue::{queue, QueueError, QueueReceiver, QueueSender, Weigh};
use crate::router;
use crate::server::Server;
use crate::stanza::{error_reply, StanzaErrorCondition, StreamErrorCondition};
use crate::stream::s2s::{self as rules, NS_BIDI, NS_BIDI_FEATURE, NS_DIALBACK, NS_SASL, NS_TLS};
use crate::xml::{Element, Node, StreamEvent, NS_CLIENT, NS_SERVER, NS_STREAMS};

/// The prefix every s2s stream header declares.
pub const DB_PREFIX: &[(&str, &str)] = &[("db", NS_DIALBACK)];

/// (local domain, remote domain): outgoing streams are per pair, so each
/// is authenticated by dialback for exactly one sending domain.
type Pair = (String, String);

/// What waits in an s2s stream's queue: a stanza (in `jabber:client`, as
/// the router has it; it takes `jabber:server` as it is written), or a
/// dialback answer that became ready after a verification.
#[derive(Debug)]
pub enum ToPeer {
    Stanza(Element),
    Dialback(Element),
}

impl Weigh for ToPeer {
    fn weight(&self) -> usize {
        match self {
            ToPeer::Stanza(el) | ToPeer::Dialback(el) => element_weight(el),
        }
    }
}

/// Roughly the bytes an element holds: its names, attributes and text,
/// and its children's — what a queue of them can be made to hold.
fn element_weight(el: &Element) -> usize {
    let attrs: usize = el.attrs().map(|(k, v)| k.len() + v.len()).sum();
    let nodes: usize = el
        .nodes()
        .iter()
        .map(|n| match n {
            Node::Element(child) => element_weight(child),
            Node::Text(t) => t.len(),
        })
        .sum();
    // A fixed part for the element's own allocations.
    64 + el.name().len() + el.ns().len() + attrs + nodes
}

impl Queued for ToPeer {
    fn write_to(self, out: &mut Vec<u8>) -> Option<StreamErrorCondition> {
        match self {
            ToPeer::Stanza(mut el) => {
                el.move_namespace(NS_CLIENT, NS_SERVER);
                el.write_to(out, NS_SERVER);
            }
            ToPeer::Dialback(el) => el.write_prefixed_to(out, NS_SERVER, "db"),
        }
        None
    }
}

/// Writes a queued item onto an s2s stream, counting stanzas for the
/// metrics (both directions' streams write through here).
pub(crate) fn write_counted(
    server: &crate::server::Server,
    item: ToPeer,
    out: &mut Vec<u8>,
) -> Option<StreamErrorCondition> {
    if let ToPeer::Stanza(el) = &item {
        (server.metrics.stanzas).sent(crate::metrics::StreamKind::S2s, el.name());
    }
    item.write_to(out)
}

/// The route for a domain pair: an id (so a late end cannot remove its
/// successor) and the queue of the stream that carries it — an outgoing
/// stream of ours, or an incoming bidirectional one (XEP-0288).
type Route = (u64, QueueSender<ToPeer>);

/// The outgoing streams, by domain pair.
#[derive(Debug, Default)]
pub struct S2sOut {
    streams: Mutex<HashMap<Pair, Route>>,
    next_id: AtomicU64,
    by_external: AtomicU64,
    by_dialback: AtomicU64,
    /// Outgoing streams of ours running (not the bidi routes of incoming
    /// ones), capped by `[s2s] max_outgoing`.
    outgoing: Arc<AtomicUsize>,
    /// Dialback verifications in flight (`[s2s] max_verifications*`).
    pub verifications: super::s2s_caps::Verifications,
}

/// An outgoing stream's place in the `max_outgoing` count, freed however
/// the stream task ends.
struct OutgoingSlot(Arc<AtomicUsize>);

impl Drop for OutgoingSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl S2sOut {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Pair, Route>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many outgoing streams authenticated with SASL EXTERNAL and with
    /// dialback since start.
    pub fn authenticated(&self) -> (u64, u64) {
        (
            self.by_external.load(Ordering::Relaxed),
            self.by_dialback.load(Ordering::Relaxed),
        )
    }

    /// Outgoing streams of ours open or being opened.
    pub fn outgoing(&self) -> usize {
        self.outgoing.load(Ordering::Acquire)
    }

    /// Number of routes (outgoing streams and incoming bidi ones).
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Sends a `jabber:client` stanza from a local address to another
    /// server, opening the stream for the domain pair if needed. What
    /// cannot be sent bounces to the sender.
    pub fn send(&self, server: &Server, stanza: Element) {
        let pair = (
            stanza.attr("from").and_then(|f| Jid::new(f).ok()),
            stanza.attr("to").and_then(|t| Jid::new(t).ok()),
        );
        let (Some(from), Some(to)) = pair else {
            return;
        };
        let local = from.domain().to_string();
        let remote = to.domain().to_string();
        // Only a domain we are authoritative for (a host, or a component's)
        // can be vouched for by dialback.
        if !server.is_served_here(&local) || !server.config().s2s.enabled() {
            bounce(server, &stanza, StanzaErrorCondition::RemoteServerNotFound);
            return;
        }
        let key = (local, remote);
        let mut map = self.lock();
        let mut stanza = ToPeer::Stanza(stanza);
        if let Some((_, tx)) = map.get(&key) {
            match tx.try_send_back(stanza) {
                Ok(()) => return,
                Err((QueueError::Full, s)) => {
                    drop(map);
                    if let ToPeer::Stanza(s) = s {
                        bounce(server, &s, StanzaErrorCondition::ResourceConstraint);
                    }
                    return;
                }
                Err((QueueError::Closed, s)) => {
                    stanza = s;
                    map.remove(&key);
                }
            }
        }
        let Some(me) = server.arc() else {
            return;
        };
        // Under the map's lock, so two senders cannot both take the last
        // place. Pairs with a stream already are not affected.
        if self.outgoing.load(Ordering::Acquire) >= server.config().s2s.max_outgoing {
            drop(map);
            tracing::warn!(local = key.0, remote = key.1, "s2s max_outgoing reached");
            if let ToPeer::Stanza(s) = stanza {
                bounce(server, &s, StanzaErrorCondition::ResourceConstraint);
            }
            return;
        }
        self.outgoing.fetch_add(1, Ordering::AcqRel);
        let slot = OutgoingSlot(self.outgoing.clone());
        let (tx, rx) = queue(
            server.config().s2s.max_queue,
            server.config().s2s.max_queue_bytes,
        );
        let _ = tx.try_send(stanza);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key.clone(), (id, tx.clone()));
        drop(map);
        tokio::spawn(run(me, key, id, tx, rx, slot));
    }

    /// Lets an incoming bidirectional stream (XEP-0288) carry our stanzas
    /// for `key`, unless a stream for the pair exists already. Returns the
    /// route's id (for `forget`) when it was attached.
    pub fn attach(&self, key: Pair, tx: &QueueSender<ToPeer>) -> Option<u64> {
        let mut map = self.lock();
        if map.contains_key(&key) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key, (id, tx.clone()));
        Some(id)
    }

    /// Forgets the stream `id` of a pair (if it is still the current one),
    /// so the next stanza opens a new stream.
    pub fn forget(&self, key: &Pair, id: u64) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|(i, _)| *i == id) {
            map.remove(key);
        }
    }
}

/// Sends a local sender the error reply for a stanza that could not go out.
fn bounce(server: &Server, stanza: &Element, cond: StanzaErrorCondition) {
    if let Some(reply) = error_reply(stanza, cond, None) {
        router::deliver_bounce(server, &reply);
    }
}

/// Why an outgoing stream could not be made (a timeout is the caller's).
enum Failure {
    NotFound(String),
}

/// One outgoing stream from its making to its end.
async fn run(
    server: Arc<Server>,
    key: Pair,
    id: u64,
    tx: QueueSender<ToPeer>,
    rx: QueueReceiver<ToPeer>,
    slot: OutgoingSlot,
) {
    let (local, remote) = (&key.0, &key.1);
    let cfg = &server.config().s2s;
    let made = tokio::time::timeout(
        Duration::from_secs(cfg.connect_timeout),
        authenticate(&server, local, remote),
    )
    .await;
    let made = match made {
        Ok(Ok(made)) => made,
        Ok(Err(Failure::NotFound(why))) => {
            tracing::info!(local, remote, why, "s2s stream failed");
            fail(
                &server,
                &key,
                id,
                rx,
                StanzaErrorCondition::RemoteServerNotFound,
            );
            return;
        }
        Err(_) => {
            tracing::info!(local, remote, "s2s stream timed out");
            fail(
                &server,
                &key,
                id,
                rx,
                StanzaErrorCondition::RemoteServerTimeout,
            );
            return;
        }
    };
    tracing::info!(
        local,
        remote,
        method = made.method.as_str(),
        bidi = made.bidi,
        "s2s stream authenticated"
    );
    let mut stream = made.stream;
    let link = server
        .s2s_links
        .open(id, Direction::Outbound, stream.transport.peer_addr(), local);
    link.update(|l| {
        l.tls = stream.transport.is_tls();
        l.bidi = made.bidi;
    });
    link.authenticated(remote, made.method);
    let peer_ip = stream.transport.peer_addr().map(|a| a.ip());
    // Only a bidirectional stream carries the peer's own requests
    // (XEP-0288); on ours alone a db:result from it is refused.
    let mut receiving = Receiving::new(made.stream_id, link, tx, None, peer_ip, made.bidi);
    if made.bidi {
        // XEP-0288 §2: the receiving server may now send us stanzas from the
        // domain we authenticated to, on this stream.
        receiving.authenticate(&server, local, remote.clone(), made.method);
    }
    let end = session(&server, &mut stream, &rx, &mut receiving).await;
    tracing::info!(local, remote, end = %end, "s2s stream closed");
    server.s2s.forget(&key, id);
    // Our place first, so the stream that takes the leftovers can have it.
    drop(slot);
    requeue(&server, rx.close_and_drain());
}

/// Stanzas left in the queue of a stream that ended: a new stream takes
/// them, unless the server is stopping.
pub fn requeue(server: &Server, left: Vec<ToPeer>) {
    for item in left {
        let ToPeer::Stanza(el) = item else { continue };
        if server.shutdown.is_cancelled() {
            bounce(server, &el, StanzaErrorCondition::RemoteServerTimeout);
        } else {
            server.s2s.send(server, el);
        }
    }
}

/// Bounces everything queued for a stream that could not be made.
fn fail(
    server: &Server,
    key: &Pair,
    id: u64,
    rx: QueueReceiver<ToPeer>,
    cond: StanzaErrorCondition,
) {
    server.s2s.forget(key, id);
    for item in rx.close_and_drain() {
        if let ToPeer::Stanza(el) = item {
            bounce(server, &el, cond);
        }
    }
}

/// Runs a negotiated s2s stream: writes what is queued for the peer,
/// handles what the peer sends (`receiving`), until it closes, fails, goes
/// unused for `idle_timeout`, or the server shuts down. Incoming streams
/// end here too.
pub async fn session(
    server: &Server,
    stream: &mut XmlStream,
    rx: &QueueReceiver<ToPeer>,
    receiving: &mut Receiving,
) -> End {
    let idle = Duration::from_secs(server.config().s2s.idle_timeout);
    loop {
        loop {
            match stream.parser.next_event() {
                Ok(None) => break,
                Ok(Some(StreamEvent::Stanza(el))) => {
                    if let Err(end) = receiving.element(server, stream, el).await {
                        return end;
                    }
                }
                Ok(Some(StreamEvent::End)) => {
                    let end = stream.close_stream().await;
                    stream.shutdown().await;
                    return end;
                }
                Ok(Some(StreamEvent::Header(_))) => {
                    return stream
                        .close_with(StreamErrorCondition::NotWellFormed, None)
                        .await
                }
                Err(e) => return stream.close_parse_error(e).await,
            }
        }
        let mut write = |item, out: &mut Vec<u8>| write_counted(server, item, out);
        if let Err(end) = stream
            .pump_with(rx, &mut write, Some(&server.shutdown), idle)
            .await
        {
            return end;
        }
    }
}

/// An outgoing stream, negotiated.
struct Made {
    stream: XmlStream,
    /// The receiving server's stream id.
    stream_id: String,
    method: AuthMethod,
    /// The peer agreed to send its stanzas on it too (XEP-0288).
    bidi: bool,
}

/// Opens the stream and authenticates `local` to `remote`: bidi asked for
/// when offered (XEP-0288, before authentication), then SASL EXTERNAL when
/// offered (our certificate for `local` was presented in the TLS
/// handshake), else — or if it fails — dialback.
async fn authenticate(server: &Server, local: &str, remote: &str) -> Result<Made, Failure> {
    let (stream, stream_id, features, cert_trusted) = open(server, local, remote).await?;
    let mut stream = stream.with_idle_rule(IdleRule::Unused);
    let bidi = server.config().s2s.bidi && features.get_child("bidi", NS_BIDI_FEATURE).is_some();
    if bidi {
        stream.write(&Element::new("bidi", NS_BIDI));
    }
    let external_offered = features
        .get_child("mechanisms", NS_SASL)
        .is_some_and(|m| m.children().any(|c| c.text().trim() == "EXTERNAL"));
    // EXTERNAL only with a receiving server whose certificate we could
    // validate (XEP-0178); an untrusted one is left to dialback.
    if server.config().s2s.sasl_external && cert_trusted && external_offered {
        if sasl_external(&mut stream, local, remote).await? {
            server.s2s.by_external.fetch_add(1, Ordering::Relaxed);
            return Ok(Made {
                stream,
                stream_id,
                method: AuthMethod::External,
                bidi,
            });
        }
        tracing::info!(local, remote, "SASL EXTERNAL refused; trying dialback");
    }
    let key = rules::dialback_key(&server.dialback_secret, remote, local, &stream_id);
    stream.write(&rules::dialback("result", local, remote, None, Ok(&key)));
    stream.flush().await.map_err(lost)?;
    loop {
        match stream.next_event().await.map_err(lost)? {
            StreamEvent::Stanza(el) if el.is("result", NS_DIALBACK) => {
                return match el.attr("type") {
                    Some("valid") => {
                        server.s2s.by_dialback.fetch_add(1, Ordering::Relaxed);
                        Ok(Made {
                            stream,
                            stream_id,
                            method: AuthMethod::Dialback,
                            bidi,
                        })
                    }
                    Some("error") => Err(Failure::NotFound(format!(
                        "dialback error {}",
                        el.get_child("error", NS_SERVER)
                            .map(stream_error_name)
                            .unwrap_or_default()
                    ))),
                    t => Err(Failure::NotFound(format!("dialback answered {t:?}"))),
                };
            }
            StreamEvent::Stanza(el) if el.is("error", NS_STREAMS) => {
                return Err(Failure::NotFound(format!(
                    "stream error {}",
                    stream_error_name(&el)
                )));
            }
            StreamEvent::Stanza(_) => {}
            StreamEvent::Header(_) | StreamEvent::End => {
                return Err(Failure::NotFound("stream closed during dialback".into()))
            }
        }
    }
}

/// SASL EXTERNAL (XEP-0178 §2): authorization identity = our domain; on
/// success the stream restarts. Ok(false) when the peer refuses.
async fn sasl_external(stream: &mut XmlStream, local: &str, remote: &str) -> Result<bool, Failure> {
    use base64::Engine;
    let authzid = base64::engine::general_purpose::STANDARD.encode(local);
    stream.write(
        &Element::new("auth", NS_SASL)
            .with_attr("mechanism", "EXTERNAL")
            .with_text(authzid),
    );
    stream.flush().await.map_err(lost)?;
    match stream.next_event().await.map_err(lost)? {
        StreamEvent::Stanza(el) if el.is("success", NS_SASL) => {}
        StreamEvent::Stanza(el) if el.is("failure", NS_SASL) => return Ok(false),
        _ => return Err(Failure::NotFound("no answer to SASL EXTERNAL".into())),
    }
    stream.restart();
    stream.send_header(&[("from", local), ("to", remote)]);
    stream.flush().await.map_err(lost)?;
    match stream.next_event().await.map_err(lost)? {
        StreamEvent::Header(h) => {
            rules::check_response_header(&h)
                .map_err(|c| Failure::NotFound(format!("bad stream header: {}", c.wire_name())))?;
        }
        _ => return Err(Failure::NotFound("no stream header after SASL".into())),
    }
    match stream.next_event().await.map_err(lost)? {
        StreamEvent::Stanza(el) if el.is("features", NS_STREAMS) => Ok(true),
        _ => Err(Failure::NotFound("no stream features after SASL".into())),
    }
}

/// What the originating domain's authoritative server said of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    /// It could not be reached (or answered with an error).
    Unreachable,
    /// It did not answer within `connect_timeout`.
    TimedOut,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unreachable => "unreachable",
            Verdict::TimedOut => "timed out",
        }
    }
}

/// Asks `originating`'s authoritative server whether `key` is the key it
/// sent to us (`receiving`) on the stream `stream_id` (XEP-0220 §2.1.2).
pub async fn verify(
    server: &Server,
    receiving: &str,
    originating: &str,
    stream_id: &str,
    key: &str,
) -> Verdict {
    let ask = async {
        let (mut stream, _, _, _) = open(server, receiving, originating).await?;
        stream.write(&rules::dialback(
            "verify",
            receiving,
            originating,
            Some(stream_id),
            Ok(key),
        ));
        stream.flush().await.map_err(lost)?;
        let verdict = loop {
            match stream.next_event().await.map_err(lost)? {
                StreamEvent::Stanza(el)
                    if el.is("verify", NS_DIALBACK) && el.attr("id") == Some(stream_id) =>
                {
                    break match el.attr("type") {
                        Some("valid") => Verdict::Valid,
                        Some("error") => Verdict::Unreachable,
                        _ => Verdict::Invalid,
                    };
                }
                StreamEvent::Stanza(_) => {}
                _ => return Err(Failure::NotFound("closed before answering".into())),
            }
        };
        let _ = stream.close_stream().await;
        stream.shutdown().await;
        Ok(verdict)
    };
    let timeout = Duration::from_secs(server.config().s2s.connect_timeout);
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(Failure::NotFound(why))) => {
            tracing::info!(originating, why, "dialback verification failed");
            Verdict::Unreachable
        }
        Err(_) => {
            tracing::info!(originating, "dialback verification timed out");
            Verdict::TimedOut
        }
    }
}

fn lost(end: End) -> Failure {
    Failure::NotFound(end.to_string())
}

/// Resolves, connects, opens the stream and secures it with STARTTLS (when
/// offered; required when `require_encryption`). Returns the stream, ready
/// for authentication, the id the receiving server gave it, its features,
/// and whether the receiving server's certificate is valid for `remote`
/// (chains to our roots and names it; false without TLS). An invalid
/// certificate does not stop the stream: it is encrypted all the same, and
/// dialback authenticates it (XEP-0220, XEP-0178).
async fn open(
    server: &Server,
    local: &str,
    remote: &str,
) -> Result<(XmlStream, String, Element, bool), Failure> {
    let cfg = &server.config().s2s;
    let transport = connect(server, local, remote).await?;
    if let Transport::Plain(tcp) = &transport {
        let _ = tcp.set_nodelay(true);
    }
    let limits = server.config().limits.stream();
    let mut stream = XmlStream::new(transport, limits, NS_SERVER, Some("1.0"), local.to_string())
        .with_prefixes(DB_PREFIX);
    if stream.transport.is_tls() {
        // Direct TLS: the handshake may have pulled the peer's first bytes
        // into rustls already, where socket readiness cannot see them.
        stream.restart();
    }
    loop {
        stream.send_header(&[("from", local), ("to", remote)]);
        stream.flush().await.map_err(lost)?;
        let id = match stream.next_event().await.map_err(lost)? {
            StreamEvent::Header(h) => rules::check_response_header(&h)
                .map_err(|c| Failure::NotFound(format!("bad stream header: {}", c.wire_name())))?,
            _ => return Err(Failure::NotFound("no stream header".into())),
        };
        let features = match stream.next_event().await.map_err(lost)? {
            StreamEvent::Stanza(el) if el.is("features", NS_STREAMS) => el,
            StreamEvent::Stanza(el) if el.is("error", NS_STREAMS) => {
                return Err(Failure::NotFound(format!(
                    "stream error {}",
                    stream_error_name(&el)
                )))
            }
            _ => return Err(Failure::NotFound("no stream features".into())),
        };
        if stream.transport.is_tls() {
            let trusted = stream
                .transport
                .tls_client_session()
                .and_then(|t| t.peer_certificates())
                .is_some_and(|c| {
                    super::tls::peer_cert_valid_for(c, &server.tls().s2s_roots, remote)
                });
            return Ok((stream, id, features, trusted));
        }
        if features.get_child("starttls", NS_TLS).is_none() {
            if cfg.require_encryption {
                return Err(Failure::NotFound("the peer offers no STARTTLS".into()));
            }
            return Ok((stream, id, features, false));
        }
        stream.write(&Element::new("starttls", NS_TLS));
        stream.flush().await.map_err(lost)?;
        match stream.next_event().await.map_err(lost)? {
            StreamEvent::Stanza(el) if el.is("proceed", NS_TLS) => {}
            _ => return Err(Failure::NotFound("STARTTLS refused".into())),
        }
        let name = rustls_pki_types::ServerName::try_from(remote.to_string())
            .map_err(|e| Failure::NotFound(e.to_string()))?;
        let tls = server
            .s2s_client_tls(local)
            .ok_or_else(|| Failure::NotFound(format!("{local} is not served here")))?;
        stream
            .transport
            .upgrade_client(tls, name)
            .await
            .map_err(|e| Failure::NotFound(format!("TLS: {e}")))?;
        stream.restart();
    }
}

/// The resolver of s2s lookups: `[s2s] nameservers` (UDP and TCP each),
/// else the system's configuration.
fn resolver(server: &Server) -> Result<hickory_resolver::TokioAsyncResolver, Failure> {
    resolver_for(&server.config().s2s.nameservers).map_err(Failure::NotFound)
}

/// The resolver for `nameservers` (else the system's), shared with `ctl
/// check` so it looks records up exactly where federation does.
pub fn resolver_for(
    servers: &[std::net::SocketAddr],
) -> Result<hickory_resolver::TokioAsyncResolver, String> {
    use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
    if servers.is_empty() {
        return hickory_resolver::TokioAsyncResolver::tokio_from_system_conf()
            .map_err(|e| format!("resolver: {e}"));
    }
    let mut config = ResolverConfig::new();
    for addr in servers {
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            config.add_name_server(NameServerConfig::new(*addr, protocol));
        }
    }
    Ok(hickory_resolver::TokioAsyncResolver::tokio(
        config,
        ResolverOpts::default(),
    ))
}

/// The SRV targets of `service` for `domain`, best first; Err when the
/// records say the service is not offered (a lone ".", RFC 2782).
async fn srv_targets(
    resolver: &hickory_resolver::TokioAsyncResolver,
    service: &str,
    domain: &str,
) -> Result<Vec<(String, u16)>, ()> {
    let Ok(srv) = resolver.srv_lookup(format!("{service}.{domain}.")).await else {
        return Ok(Vec::new());
    };
    let mut records: Vec<_> = srv.iter().cloned().collect();
    records.sort_by_key(|r| (r.priority(), std::cmp::Reverse(r.weight())));
    let mut targets = Vec::new();
    for r in records {
        let target = r.target().to_utf8();
        let target = target.trim_end_matches('.');
        if target.is_empty() {
            return Err(());
        }
        targets.push((target.to_string(), r.port()));
    }
    Ok(targets)
}

/// Connects to `domain`'s server for `local`: the `[s2s.hosts]` override
/// ("tls://host:port" meaning direct TLS), else the SRV records
/// `_xmpps-server._tcp.<domain>` with direct TLS (XEP-0368), then
/// `_xmpp-server._tcp.<domain>`, else the domain's A/AAAA records on port
/// 5269 (RFC 6120 §3.2); the last two are left plain for STARTTLS.
async fn connect(server: &Server, local: &str, domain: &str) -> Result<Transport, Failure> {
    if let Some(hp) = server.config().s2s.hosts.get(domain) {
        let (hp, tls) = match hp.strip_prefix("tls://") {
            Some(rest) => (rest, true),
            None => (hp.as_str(), false),
        };
        let tcp = TcpStream::connect(hp)
            .await
            .map_err(|e| Failure::NotFound(format!("{hp}: {e}")))?;
        return if tls {
            direct_tls(server, local, domain, tcp).await
        } else {
            Ok(Transport::Plain(tcp))
        };
    }
    let resolver = resolver(server)?;
    let mut targets: Vec<(String, u16, bool)> = Vec::new();
    // A lone "." for _xmpps-server only says there is no direct TLS.
    if let Ok(t) = srv_targets(&resolver, "_xmpps-server._tcp", domain).await {
        targets.extend(t.into_iter().map(|(h, p)| (h, p, true)));
    }
    match srv_targets(&resolver, "_xmpp-server._tcp", domain).await {
        Ok(t) => targets.extend(t.into_iter().map(|(h, p)| (h, p, false))),
        Err(()) if targets.is_empty() => {
            return Err(Failure::NotFound("SRV says no XMPP service".into()))
        }
        Err(()) => {}
    }
    if targets.is_empty() {
        targets.push((domain.to_string(), rules::DEFAULT_PORT, false));
    }
    let mut last = String::from("no address");
    for (host, port, tls) in targets {
        let ips = match resolver.lookup_ip(format!("{host}.")).await {
            Ok(ips) => ips,
            Err(e) => {
                last = format!("{host}: {e}");
                continue;
            }
        };
        for ip in ips.iter() {
            let tcp = match TcpStream::connect((ip, port)).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    last = format!("{ip}:{port}: {e}");
                    continue;
                }
            };
            if !tls {
                return Ok(Transport::Plain(tcp));
            }
            match direct_tls(server, local, domain, tcp).await {
                Ok(t) => return Ok(t),
                Err(Failure::NotFound(why)) => last = format!("{ip}:{port}: {why}"),
            }
        }
    }
    Err(Failure::NotFound(last))
}

/// The TLS handshake of a direct-TLS stream (XEP-0368): SNI `domain`, ALPN
/// "xmpp-server", our certificate for `local`.
async fn direct_tls(
    server: &Server,
    local: &str,
    domain: &str,
    tcp: TcpStream,
) -> Result<Transport, Failure> {
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(domain.to_string())
        .map_err(|e| Failure::NotFound(e.to_string()))?;
    let tls = server
        .s2s_client_tls(local)
        .ok_or_else(|| Failure::NotFound(format!("{local} is not served here")))?;
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![super::tls::ALPN_XMPP_SERVER.to_vec()];
    let mut transport = Transport::Plain(tcp);
    transport
        .upgrade_client(Arc::new(tls), name)
        .await
        .map_err(|e| Failure::NotFound(format!("direct TLS: {e}")))?;
    Ok(transport)
}
