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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::Jid;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::s2s_links::{AuthMethod, Direction};
use super::transport::Transport;
use super::xmlstream::{End, XmlStream};
use crate::router;
use crate::server::Server;
use crate::stanza::{error_reply, StanzaErrorCondition};
use crate::stream::s2s::{self as rules, NS_DIALBACK, NS_SASL, NS_TLS};
use crate::xml::{Element, StreamEvent, NS_SERVER, NS_STREAMS};

/// The prefix every s2s stream header declares.
pub const DB_PREFIX: &[(&str, &str)] = &[("db", NS_DIALBACK)];

/// Most stanzas written in one batch.
const BATCH: usize = 64;

/// (local domain, remote domain): outgoing streams are per pair, so each
/// is authenticated by dialback for exactly one sending domain.
type Pair = (String, String);

/// An outgoing stream: its id (so a late end cannot remove its successor)
/// and its queue.
type Outgoing = (u64, mpsc::Sender<Element>);

/// The outgoing streams, by domain pair.
#[derive(Debug, Default)]
pub struct S2sOut {
    streams: Mutex<HashMap<Pair, Outgoing>>,
    next_id: AtomicU64,
    by_external: AtomicU64,
    by_dialback: AtomicU64,
}

impl S2sOut {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Pair, Outgoing>> {
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

    /// Number of outgoing streams open or being opened.
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
        // Only a domain we are authoritative for can be vouched for by dialback.
        if !server.is_local_domain(&local) || !server.config.s2s.enabled() {
            bounce(server, &stanza, StanzaErrorCondition::RemoteServerNotFound);
            return;
        }
        let key = (local, remote);
        let mut map = self.lock();
        let mut stanza = stanza;
        if let Some((_, tx)) = map.get(&key) {
            match tx.try_send(stanza) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(s)) => {
                    drop(map);
                    bounce(server, &s, StanzaErrorCondition::ResourceConstraint);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(s)) => {
                    stanza = s;
                    map.remove(&key);
                }
            }
        }
        let Some(me) = server.arc() else {
            return;
        };
        let (tx, rx) = mpsc::channel(server.config.s2s.max_queue);
        let _ = tx.try_send(stanza);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key.clone(), (id, tx));
        drop(map);
        tokio::spawn(run(me, key, id, rx));
    }

    /// Forgets the stream `id` of a pair (if it is still the current one),
    /// so the next stanza opens a new stream.
    fn forget(&self, key: &Pair, id: u64) {
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
async fn run(server: Arc<Server>, key: Pair, id: u64, mut rx: mpsc::Receiver<Element>) {
    let (local, remote) = (&key.0, &key.1);
    let cfg = &server.config.s2s;
    let made = tokio::time::timeout(
        Duration::from_secs(cfg.connect_timeout),
        authenticate(&server, local, remote),
    )
    .await;
    let stream = match made {
        Ok(Ok(s)) => s,
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
    let (stream, method) = stream;
    tracing::info!(
        local,
        remote,
        method = method.as_str(),
        "s2s stream authenticated"
    );
    let link = server
        .s2s_links
        .open(id, Direction::Outbound, stream.transport.peer_addr(), local);
    link.authenticated(remote, method);
    link.update(|l| l.tls = stream.transport.is_tls());
    let end = session(&server, stream, &mut rx).await;
    drop(link);
    tracing::info!(local, remote, end = %end, "s2s stream closed");
    server.s2s.forget(&key, id);
    rx.close();
    // Stanzas that raced with the close: a new stream takes them, unless
    // the server is stopping.
    while let Ok(el) = rx.try_recv() {
        if server.shutdown.is_cancelled() {
            bounce(&server, &el, StanzaErrorCondition::RemoteServerTimeout);
        } else {
            server.s2s.send(&server, el);
        }
    }
}

/// Bounces everything queued for a stream that could not be made.
fn fail(
    server: &Server,
    key: &Pair,
    id: u64,
    mut rx: mpsc::Receiver<Element>,
    cond: StanzaErrorCondition,
) {
    server.s2s.forget(key, id);
    rx.close();
    while let Ok(el) = rx.try_recv() {
        bounce(server, &el, cond);
    }
}

/// Writes queued stanzas until the stream goes idle, fails, or the server
/// shuts down.
async fn session(server: &Server, mut stream: XmlStream, rx: &mut mpsc::Receiver<Element>) -> End {
    let idle = Duration::from_secs(server.config.s2s.idle_timeout);
    loop {
        if let Err(end) = stream.flush().await {
            return end;
        }
        tokio::select! {
            biased;
            _ = server.shutdown.cancelled() => {
                let _ = stream.close_stream().await;
                stream.shutdown().await;
                return End::PeerClosed;
            }
            msg = rx.recv() => {
                let Some(el) = msg else { return End::PeerClosed };
                stream.write_raw(&rules::to_server_bytes(&el));
                for _ in 0..BATCH {
                    match rx.try_recv() {
                        Ok(el) => stream.write_raw(&rules::to_server_bytes(&el)),
                        Err(_) => break,
                    }
                }
            }
            ev = stream.next_event() => match ev {
                // The receiving server has nothing to say on this stream
                // but dialback answers and errors.
                Ok(StreamEvent::Stanza(el)) if el.is("error", NS_STREAMS) => {
                    return End::Io(format!("stream error from peer: {:?}", el.children().next().map(|c| c.name().to_string())));
                }
                Ok(StreamEvent::Stanza(_)) => {}
                Ok(StreamEvent::End) | Ok(StreamEvent::Header(_)) => {
                    let end = stream.close_stream().await;
                    stream.shutdown().await;
                    return end;
                }
                Err(end) => return end,
            },
            _ = tokio::time::sleep(idle) => {
                let _ = stream.close_stream().await;
                stream.shutdown().await;
                return End::Io("idle".into());
            }
        }
    }
}

/// Opens the stream and authenticates `local` to `remote`: SASL EXTERNAL
/// when offered (our certificate for `local` was presented in the TLS
/// handshake), else — or if it fails — dialback.
async fn authenticate(
    server: &Server,
    local: &str,
    remote: &str,
) -> Result<(XmlStream, AuthMethod), Failure> {
    let (mut stream, stream_id, features, cert_trusted) = open(server, local, remote).await?;
    let external_offered = features
        .get_child("mechanisms", NS_SASL)
        .is_some_and(|m| m.children().any(|c| c.text().trim() == "EXTERNAL"));
    // EXTERNAL only with a receiving server whose certificate we could
    // validate (XEP-0178); an untrusted one is left to dialback.
    if server.config.s2s.sasl_external && cert_trusted && external_offered {
        if sasl_external(&mut stream, local, remote).await? {
            server.s2s.by_external.fetch_add(1, Ordering::Relaxed);
            return Ok((stream, AuthMethod::External));
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
                        Ok((stream, AuthMethod::Dialback))
                    }
                    t => Err(Failure::NotFound(format!("dialback answered {t:?}"))),
                };
            }
            StreamEvent::Stanza(el) if el.is("error", NS_STREAMS) => {
                return Err(Failure::NotFound(stream_error_name(&el)));
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

/// Asks `originating`'s authoritative server whether `key` is the key it
/// sent to us (`receiving`) on the stream `stream_id` (XEP-0220 §2.1.2).
/// Any failure counts as "invalid".
pub async fn verify(
    server: &Server,
    receiving: &str,
    originating: &str,
    stream_id: &str,
    key: &str,
) -> bool {
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
        let valid = loop {
            match stream.next_event().await.map_err(lost)? {
                StreamEvent::Stanza(el)
                    if el.is("verify", NS_DIALBACK) && el.attr("id") == Some(stream_id) =>
                {
                    break el.attr("type") == Some("valid");
                }
                StreamEvent::Stanza(_) => {}
                _ => return Err(Failure::NotFound("closed before answering".into())),
            }
        };
        let _ = stream.close_stream().await;
        stream.shutdown().await;
        Ok(valid)
    };
    let timeout = Duration::from_secs(server.config.s2s.connect_timeout);
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(valid)) => valid,
        Ok(Err(Failure::NotFound(why))) => {
            tracing::info!(originating, why, "dialback verification failed");
            false
        }
        Err(_) => {
            tracing::info!(originating, "dialback verification timed out");
            false
        }
    }
}

fn lost(end: End) -> Failure {
    Failure::NotFound(end.to_string())
}

fn stream_error_name(el: &Element) -> String {
    let cond = el
        .children()
        .map(|c| c.name().to_string())
        .find(|n| n != "text")
        .unwrap_or_default();
    format!("stream error {cond}")
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
    let cfg = &server.config.s2s;
    let transport = connect(server, local, remote).await?;
    if let Transport::Plain(tcp) = &transport {
        let _ = tcp.set_nodelay(true);
    }
    let limits = server.config.limits.parser();
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
                return Err(Failure::NotFound(stream_error_name(&el)))
            }
            _ => return Err(Failure::NotFound("no stream features".into())),
        };
        if stream.transport.is_tls() {
            let trusted = stream
                .transport
                .tls_client_session()
                .and_then(|t| t.peer_certificates())
                .is_some_and(|c| super::tls::peer_cert_valid_for(c, &server.s2s_roots, remote));
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
    use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
    let servers = &server.config.s2s.nameservers;
    if servers.is_empty() {
        return hickory_resolver::TokioAsyncResolver::tokio_from_system_conf()
            .map_err(|e| Failure::NotFound(format!("resolver: {e}")));
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
    if let Some(hp) = server.config.s2s.hosts.get(domain) {
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
