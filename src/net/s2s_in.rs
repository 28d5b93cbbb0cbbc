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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::s2s_links::{AuthMethod, Direction};
use super::s2s_out::{requeue, ToPeer, DB_PREFIX};
use super::s2s_receive::{BidiRoutes, Receiving};
use super::transport::Transport;
use super::xmlstream::{random_id, End, IdleRule, XmlStream};
use super::ConnectionSlot;
use crate::queue::{queue, QueueReceiver};
use crate::server::Server;
use crate::stanza::StreamErrorCondition;
use crate::stream::check_restart_domain;
use crate::stream::s2s::{self as rules, NS_BIDI, NS_SASL, NS_TLS};
use crate::xml::{Element, StreamEvent, NS_SERVER};

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
    let limits = server.config().limits.stream();
    let host = server.first_domain();
    let link = server
        .s2s_links
        .open(id, Direction::Inbound, Some(peer), "");
    let (to_peer, queued) = queue(
        server.config().s2s.max_queue,
        server.config().s2s.max_queue_bytes,
    );
    let mut conn = Connection {
        server: server.clone(),
        stream: XmlStream::new(Transport::Plain(tcp), limits, NS_SERVER, Some("1.0"), host)
            .with_prefixes(DB_PREFIX)
            .with_idle_rule(IdleRule::Unused),
        receiving: Receiving::new(
            String::new(),
            link,
            to_peer.clone(),
            Some(BidiRoutes::new(to_peer)),
            Some(peer.ip()),
            true,
        ),
        peer: None,
        addressed: None,
        sasl_done: false,
        queued,
    };
    // Until the peer authenticates a first domain it costs us a slot and
    // buys nothing: it gets a fixed time, which whitespace keepalives (or
    // anything else it sends) do not extend.
    conn.stream.set_deadline(Some(
        started + Duration::from_secs(server.config().s2s.auth_timeout),
    ));
    tracing::info!(conn = id, %peer, direct_tls, "s2s connection opened");
    let end = if direct_tls {
        let handshake = tokio::time::timeout(
            Duration::from_secs(server.config().s2s.connect_timeout),
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
    if let Some(routes) = conn.receiving.routes() {
        routes.forget_all(&server);
    }
    requeue(&server, conn.queued.close_and_drain());
    let domains = conn.receiving.authenticated();
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
    /// Dialback, authenticated domains and stanzas from the peer; its
    /// stream id is that of our current header.
    receiving: Receiving,
    /// The domain the peer's current stream header names in `from`.
    peer: Option<String>,
    /// The local domain the connection's first header named: restarts
    /// (STARTTLS, SASL) must name it again, as on c2s
    /// (`stream::c2s::check_restart_domain`).
    addressed: Option<String>,
    /// SASL EXTERNAL succeeded (it is not offered again).
    sasl_done: bool,
    /// What is queued for the peer: dialback answers that became ready,
    /// and our stanzas once the stream is bidirectional (XEP-0288).
    queued: QueueReceiver<ToPeer>,
}

/// What handling one element leads to.
enum Next {
    Continue,
    /// STARTTLS done: the peer opens a new stream.
    Restart,
}

impl Connection {
    async fn run(&mut self) -> End {
        let idle = Duration::from_secs(self.server.config().s2s.idle_timeout);
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
                if self.stream.deadline().is_some() && self.receiving.is_authenticated() {
                    self.stream.set_deadline(None);
                }
                let server = &self.server;
                let mut write =
                    |item, out: &mut Vec<u8>| super::s2s_out::write_counted(server, item, out);
                let pumped = (self.stream)
                    .pump_with(&self.queued, &mut write, Some(&server.shutdown), idle)
                    .await;
                if let Err(end) = pumped {
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
        let local = match rules::check_header(&header, |d| server.is_served_here(d)) {
            Ok(d) => d,
            Err(cond) => return Err(self.stream.close_with(cond, None).await),
        };
        match &self.addressed {
            None => self.addressed = Some(local.clone()),
            Some(first) => {
                if let Err(cond) = check_restart_domain(first, &local) {
                    return Err(self
                        .stream
                        .close_with(
                            cond,
                            Some("the stream must keep addressing the same domain"),
                        )
                        .await);
                }
            }
        }
        self.stream.local_domain = local.clone();
        let tls = self.stream.transport.is_tls();
        self.receiving.link().update(|l| {
            l.local = local.clone();
            l.tls = tls;
        });
        self.receiving.stream_id = random_id();
        let mut attrs: Vec<(&str, &str)> =
            vec![("from", &local), ("id", &self.receiving.stream_id)];
        self.peer = header.from.as_deref().and_then(rules::domain_of);
        if let Some(p) = &self.peer {
            attrs.push(("to", p));
        }
        self.stream.send_header(&attrs);
        if header.version.as_deref() == Some("1.0") {
            let external = self.server.config().s2s.sasl_external
                && !self.sasl_done
                && self
                    .peer
                    .as_deref()
                    .is_some_and(|p| self.peer_cert_valid_for(p));
            let cfg = &self.server.config().s2s;
            self.stream.write(&rules::features(rules::Offer {
                tls_available: true,
                is_tls: self.stream.transport.is_tls(),
                require_encryption: cfg.require_encryption,
                external,
                bidi: cfg.bidi && !self.receiving.routes().is_some_and(|r| r.enabled()),
            }));
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
        chain.is_some_and(|c| {
            super::tls::peer_cert_valid_for(c, &self.server.tls().s2s_roots, domain)
        })
    }

    /// `<auth mechanism='EXTERNAL'>` (XEP-0178 §2): the domain asked for
    /// must be the one the certificate names; success restarts the stream.
    async fn sasl_external(&mut self, el: &Element) -> Result<Next, End> {
        let wanted = rules::external_identity(&el.text(), self.peer.as_deref());
        let ok = self.server.config().s2s.sasl_external
            && !self.sasl_done
            && el.attr("mechanism") == Some("EXTERNAL")
            && wanted
                .as_deref()
                .is_some_and(|d| !self.server.is_served_here(d) && self.peer_cert_valid_for(d));
        match wanted {
            Some(domain) if ok => {
                tracing::info!(domain, "s2s peer authenticated with SASL EXTERNAL");
                // XEP-0288 §2: with SASL we may send from the stream's `to`.
                let local = self.stream.local_domain.clone();
                let server = self.server.clone();
                self.receiving
                    .authenticate(&server, &local, domain, AuthMethod::External);
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
            self.server.config().s2s.require_encryption && !self.stream.transport.is_tls();
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
            // The handshake counts against the authentication deadline:
            // a peer stalling it would otherwise hold the slot for ever.
            let deadline = self.stream.deadline();
            let upgrade = self.stream.transport.upgrade(config);
            let handshake = match deadline {
                Some(at) => tokio::time::timeout_at(at.into(), upgrade).await,
                None => Ok(upgrade.await),
            };
            match handshake {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(End::Io(format!("TLS handshake: {e}"))),
                Err(_) => return Err(End::Io("TLS handshake past the deadline".into())),
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
        if el.is("bidi", NS_BIDI) {
            if self.server.config().s2s.bidi {
                let server = self.server.clone();
                self.receiving
                    .enable_bidi(&server, &self.stream.local_domain);
            }
            return Ok(Next::Continue);
        }
        let server = self.server.clone();
        self.receiving
            .element(&server, &mut self.stream, el)
            .await?;
        Ok(Next::Continue)
    }
}
