//! One incoming server-to-server stream, from accept to close: on a
//! direct-TLS listener (XEP-0368) the TLS handshake first (certificate by
//! SNI), then the header
//! (addressed to one of our domains), STARTTLS, SASL EXTERNAL (XEP-0178)
//! for a peer whose certificate is trusted and names its domain, and
//! dialback (XEP-0220) — a
//! `db:result` is checked with the originating domain's authoritative
//! server (`s2s_out::verify`), a `db:verify` is answered by recomputing the
//! key — then the stanzas of the domains this stream authenticated, each
//! checked (`from` authenticated, `to` ours) and handed to the router.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::s2s_links::{AuthMethod, Direction, LinkGuard};
use super::s2s_out::{self, DB_PREFIX};
use super::transport::Transport;
use super::xmlstream::{random_id, End, XmlStream};
use super::ConnectionSlot;
use crate::router;
use crate::server::Server;
use crate::stanza::StreamErrorCondition;
use crate::stream::s2s::{self as rules, NS_DIALBACK, NS_SASL, NS_TLS};
use crate::xml::{Element, StreamEvent, NS_SERVER, NS_STREAMS};

/// Runs an incoming s2s connection to its end.
pub async fn run(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    _slot: ConnectionSlot,
) {
    let started = Instant::now();
    let id = server.next_id();
    let limits = server.config.limits.parser();
    let host = server.config.domains().first().cloned().unwrap_or_default();
    let mut conn = Connection {
        server: server.clone(),
        stream: XmlStream::new(Transport::Plain(tcp), limits, NS_SERVER, Some("1.0"), host)
            .with_prefixes(DB_PREFIX),
        stream_id: String::new(),
        authenticated: HashSet::new(),
        peer: None,
        sasl_done: false,
        link: server
            .s2s_links
            .open(id, Direction::Inbound, Some(peer), ""),
    };
    tracing::info!(conn = id, %peer, direct_tls, "s2s connection opened");
    let end = if direct_tls {
        let handshake = tokio::time::timeout(
            Duration::from_secs(server.config.s2s.connect_timeout),
            conn.stream
                .transport
                .upgrade(server.s2s_direct_tls_config()),
        )
        .await;
        match handshake {
            Ok(Ok(())) => {
                // The handshake may have pulled the peer's header into
                // rustls already.
                conn.stream.restart();
                conn.run().await
            }
            Ok(Err(e)) => End::Io(format!("TLS handshake: {e}")),
            Err(_) => End::Io("TLS handshake timed out".into()),
        }
    } else {
        conn.run().await
    };
    conn.stream.shutdown().await;
    let mut domains: Vec<&str> = conn.authenticated.iter().map(String::as_str).collect();
    domains.sort_unstable();
    tracing::info!(
        conn = id,
        %peer,
        domains = domains.join(" "),
        duration_ms = started.elapsed().as_millis() as u64,
        end = %end,
        "s2s connection closed"
    );
}

struct Connection {
    server: Arc<Server>,
    stream: XmlStream,
    /// The id of our stream header (the dialback keys' stream id).
    stream_id: String,
    /// Remote domains authenticated on this stream (dialback or SASL EXTERNAL).
    authenticated: HashSet<String>,
    /// The domain the peer's current stream header names in `from`.
    peer: Option<String>,
    /// SASL EXTERNAL succeeded (it is not offered again).
    sasl_done: bool,
    /// This connection's entry in the list `ctl s2s list` shows.
    link: LinkGuard,
}

/// What handling one element leads to.
enum Next {
    Continue,
    /// STARTTLS done: the peer opens a new stream.
    Restart,
}

impl Connection {
    async fn run(&mut self) -> End {
        let idle = Duration::from_secs(self.server.config.s2s.idle_timeout);
        // Nothing is ever queued for an incoming stream (we answer inline,
        // and send our stanzas on our own outgoing stream); the queue only
        // lets `pump` serve idle timeouts and shutdown.
        let (_keep, rx) = crate::queue::queue(1);
        loop {
            if let Err(end) = self.open().await {
                return end;
            }
            'stream: loop {
                loop {
                    match self.stream.parser.next_event() {
                        Ok(None) => break,
                        Ok(Some(StreamEvent::Stanza(el))) => match self.element(el).await {
                            Ok(Next::Continue) => {}
                            Ok(Next::Restart) => break 'stream,
                            Err(end) => return end,
                        },
                        Ok(Some(StreamEvent::End)) => return self.stream.close_stream().await,
                        Ok(Some(StreamEvent::Header(_))) => {
                            return self
                                .stream
                                .close_with(StreamErrorCondition::NotWellFormed, None)
                                .await
                        }
                        Err(e) => return self.stream.close_parse_error(e).await,
                    }
                }
                if let Err(end) = self.stream.pump(&rx, &self.server.shutdown, idle).await {
                    return end;
                }
            }
        }
    }

    /// Reads the peer's header and answers with ours and the features.
    async fn open(&mut self) -> Result<(), End> {
        let header = match self.stream.next_event().await? {
            StreamEvent::Header(h) => h,
            StreamEvent::End => return Err(self.stream.close_stream().await),
            StreamEvent::Stanza(_) => {
                return Err(self
                    .stream
                    .close_with(StreamErrorCondition::NotWellFormed, None)
                    .await)
            }
        };
        let server = &self.server;
        let local = match rules::check_header(&header, |d| server.is_local_domain(d)) {
            Ok(d) => d,
            Err(cond) => return Err(self.stream.close_with(cond, None).await),
        };
        self.stream.local_domain = local.clone();
        let tls = self.stream.transport.is_tls();
        self.link.update(|l| {
            l.local = local.clone();
            l.tls = tls;
        });
        self.stream_id = random_id();
        let mut attrs: Vec<(&str, &str)> = vec![("from", &local), ("id", &self.stream_id)];
        self.peer = header.from.as_deref().and_then(rules::domain_of);
        if let Some(p) = &self.peer {
            attrs.push(("to", p));
        }
        self.stream.send_header(&attrs);
        if header.version.as_deref() == Some("1.0") {
            let external = self.server.config.s2s.sasl_external
                && !self.sasl_done
                && self
                    .peer
                    .as_deref()
                    .is_some_and(|p| self.peer_cert_valid_for(p));
            self.stream.write(&rules::features(
                true,
                self.stream.transport.is_tls(),
                self.server.config.s2s.require_encryption,
                external,
            ));
        }
        self.stream.flush().await
    }

    /// The peer presented, in the TLS handshake, a certificate that we
    /// trust and that names `domain`.
    fn peer_cert_valid_for(&self, domain: &str) -> bool {
        let chain = self
            .stream
            .transport
            .tls_session()
            .and_then(|t| t.peer_certificates());
        chain.is_some_and(|c| super::tls::peer_cert_valid_for(c, &self.server.s2s_roots, domain))
    }

    /// `<auth mechanism='EXTERNAL'>` (XEP-0178 §2): the domain asked for
    /// must be the one the certificate names; success restarts the stream.
    async fn sasl_external(&mut self, el: &Element) -> Result<Next, End> {
        let wanted = rules::external_identity(&el.text(), self.peer.as_deref());
        let ok = self.server.config.s2s.sasl_external
            && !self.sasl_done
            && el.attr("mechanism") == Some("EXTERNAL")
            && wanted
                .as_deref()
                .is_some_and(|d| !self.server.is_local_domain(d) && self.peer_cert_valid_for(d));
        match wanted {
            Some(domain) if ok => {
                tracing::info!(domain, "s2s peer authenticated with SASL EXTERNAL");
                self.link.authenticated(&domain, AuthMethod::External);
                self.authenticated.insert(domain);
                self.sasl_done = true;
                self.stream.write(&Element::new("success", NS_SASL));
                self.stream.flush().await?;
                self.stream.restart();
                Ok(Next::Restart)
            }
            _ => {
                self.stream.write(
                    &Element::new("failure", NS_SASL)
                        .with_child(Element::new("not-authorized", NS_SASL)),
                );
                Ok(Next::Continue)
            }
        }
    }

    async fn element(&mut self, el: Element) -> Result<Next, End> {
        let require_tls =
            self.server.config.s2s.require_encryption && !self.stream.transport.is_tls();
        if el.is("starttls", NS_TLS) {
            if self.stream.transport.is_tls() {
                return Err(self
                    .stream
                    .close_with(StreamErrorCondition::PolicyViolation, None)
                    .await);
            }
            // The header named one of our domains: its certificate is
            // served when the peer sends no SNI (Prosody 0.12 sends none).
            let Some(config) = self.server.s2s_starttls_config(&self.stream.local_domain) else {
                return Err(self
                    .stream
                    .close_with(StreamErrorCondition::HostUnknown, None)
                    .await);
            };
            self.stream.write(&Element::new("proceed", NS_TLS));
            self.stream.flush().await?;
            if let Err(e) = self.stream.transport.upgrade(config).await {
                return Err(End::Io(format!("TLS handshake: {e}")));
            }
            self.stream.restart();
            return Ok(Next::Restart);
        }
        if require_tls {
            return Err(self
                .stream
                .close_with(
                    StreamErrorCondition::PolicyViolation,
                    Some("use STARTTLS first"),
                )
                .await);
        }
        if el.is("auth", NS_SASL) {
            return self.sasl_external(&el).await;
        }
        if el.is("result", NS_DIALBACK) && el.attr("type").is_none() {
            return self.dialback_result(&el).await.map(|()| Next::Continue);
        }
        if el.is("verify", NS_DIALBACK) && el.attr("type").is_none() {
            self.dialback_verify(&el);
            return Ok(Next::Continue);
        }
        if el.ns() == NS_DIALBACK || el.ns() == NS_STREAMS {
            // Dialback answers and stream errors have no place on a stream
            // we receive; a stream error ends it.
            if el.is("error", NS_STREAMS) {
                return Err(self.stream.close_stream().await);
            }
            return Ok(Next::Continue);
        }
        let server = &self.server;
        let (from, to) =
            match rules::check_addresses(&el, &self.authenticated, |d| server.is_local_domain(d)) {
                Ok(a) => a,
                Err(cond) => return Err(self.stream.close_with(cond, None).await),
            };
        let el = rules::into_client(el);
        if let Err(cond) = router::route_from_remote(&self.server, &from, to, el).await {
            return Err(self.stream.close_with(cond, None).await);
        }
        Ok(Next::Continue)
    }

    /// `<db:result from to>key</db:result>`: the peer asks to send as
    /// `from`; we ask `from`'s authoritative server whether it sent `key`.
    async fn dialback_result(&mut self, el: &Element) -> Result<(), End> {
        let from = el.attr("from").and_then(rules::domain_of);
        let to = el.attr("to").and_then(rules::domain_of);
        let (Some(from), Some(to)) = (from, to) else {
            return Err(self
                .stream
                .close_with(StreamErrorCondition::ImproperAddressing, None)
                .await);
        };
        if !self.server.is_local_domain(&to) {
            return Err(self
                .stream
                .close_with(StreamErrorCondition::HostUnknown, None)
                .await);
        }
        let key = el.text();
        let valid = if self.server.is_local_domain(&from) {
            // Nobody else speaks for our own domains.
            false
        } else {
            s2s_out::verify(&self.server, &to, &from, &self.stream_id, key.trim()).await
        };
        if valid {
            self.link.authenticated(&from, AuthMethod::Dialback);
            self.authenticated.insert(from.clone());
        }
        let answer = if valid { "valid" } else { "invalid" };
        tracing::info!(from, to, answer, "dialback result");
        self.stream
            .write(&rules::dialback("result", &to, &from, None, Err(answer)));
        Ok(())
    }

    /// `<db:verify from to id>key</db:verify>`: another server asks whether
    /// we (`to`) sent `key` to it (`from`) on its stream `id`.
    fn dialback_verify(&mut self, el: &Element) {
        let from = el
            .attr("from")
            .and_then(rules::domain_of)
            .unwrap_or_default();
        let to = el.attr("to").and_then(rules::domain_of).unwrap_or_default();
        let id = el.attr("id").unwrap_or_default();
        let valid = self.server.is_local_domain(&to)
            && rules::key_matches(
                &el.text(),
                &rules::dialback_key(&self.server.dialback_secret, &from, &to, id),
            );
        let answer = if valid { "valid" } else { "invalid" };
        self.stream.write(&rules::dialback(
            "verify",
            &to,
            &from,
            Some(id),
            Err(answer),
        ));
    }
}
