//! One external component connection (XEP-0114), from accept to close: the
//! stream header and handshake (rules in `stream::component`), then the
//! session, which hands the component's stanzas to the router and writes
//! what the router queues for the component's domain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::timeout;

use super::transport::Transport;
use super::xmlstream::{random_id, End, Flow, Queued, XmlStream};
use super::ConnectionSlot;
use crate::metrics::StreamKind;
use crate::queue::QueueReceiver;
use crate::router;
use crate::server::Server;
use crate::sessions::Outbound;
use crate::stanza::StreamErrorCondition;
use crate::stream::component::{self as rules, NS_COMPONENT};
use crate::throttle;
use crate::xml::StreamEvent;

/// Runs a component connection to its end.
pub async fn run(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, _slot: ConnectionSlot) {
    let started = Instant::now();
    let id = server.next_id();
    let limits = server.config().limits.stream();
    // Until the header names a component, errors come from the first host.
    let host = server.first_domain();
    let mut conn = Connection {
        server: server.clone(),
        stream: XmlStream::new(Transport::Plain(tcp), limits, NS_COMPONENT, None, host),
        domain: None,
        id,
        peer,
    };
    tracing::info!(conn = id, %peer, "component connection opened");
    let end = conn.run().await;
    tracing::info!(
        conn = id,
        %peer,
        domain = conn.domain.as_deref().unwrap_or_default(),
        duration_ms = started.elapsed().as_millis() as u64,
        end = %end,
        "component connection closed"
    );
}

struct Connection {
    server: Arc<Server>,
    stream: XmlStream,
    /// The component domain, once the header named a configured one.
    domain: Option<String>,
    id: u64,
    peer: SocketAddr,
}

impl Connection {
    async fn run(&mut self) -> End {
        let cfg = &self.server.config().component_listener;
        let login_timeout = Duration::from_secs(cfg.login_timeout);
        let negotiated = match timeout(login_timeout, self.negotiate()).await {
            Ok(r) => r,
            Err(_) => Err(self
                .stream
                .close_with(
                    StreamErrorCondition::ConnectionTimeout,
                    Some("handshake took too long"),
                )
                .await),
        };
        let end = match negotiated {
            Ok((domain, rx)) => {
                let end = self.session(&domain, &rx).await;
                self.server.components.detach(&domain, self.id);
                // What was queued but not written is lost with the
                // connection, as with a remote server that goes away.
                let lost = rx.close_and_drain().len();
                if lost > 0 {
                    tracing::debug!(conn = self.id, lost, "component stanzas not written");
                }
                end
            }
            Err(end) => end,
        };
        self.stream.shutdown().await;
        end
    }

    /// Header and handshake; returns the domain and its queue.
    async fn negotiate(&mut self) -> Flow<(String, QueueReceiver<Outbound>)> {
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
        let components = &self.server.components;
        let domain = match rules::check_header(&header, |d| components.is_component(d)) {
            Ok(d) => d,
            Err(cond) => return Err(self.stream.close_with(cond, None).await),
        };
        self.domain = Some(domain.clone());
        self.stream.local_domain = domain.clone();
        // XEP-0114 §3: `from` is the component's domain.
        let stream_id = random_id();
        self.stream
            .send_header(&[("from", &domain), ("id", &stream_id)]);
        self.stream.flush().await?;
        let handshake = match self.stream.next_event().await? {
            StreamEvent::Stanza(el) => el,
            StreamEvent::End => return Err(self.stream.close_stream().await),
            StreamEvent::Header(_) => {
                return Err(self
                    .stream
                    .close_with(StreamErrorCondition::NotWellFormed, None)
                    .await)
            }
        };
        // The handshake is a guess at the shared secret: counted per source
        // before it is checked (parallel connections cannot all slip under
        // the limit), given back only when it proves the secret.
        let server = self.server.clone();
        let source = throttle::source_key(self.peer.ip(), server.config().limits.auth_ipv6_prefix);
        let Some(attempt) = server.component_failures_by_ip.try_reserve(&source) else {
            tracing::info!(conn = self.id, peer = %self.peer, "component handshake refused: too many failures");
            return Err(self
                .stream
                .close_with(
                    StreamErrorCondition::PolicyViolation,
                    Some("too many failed handshakes from your address; try again later"),
                )
                .await);
        };
        let secret = self.server.components.secret(&domain).unwrap_or_default();
        if let Err(cond) = rules::check_handshake(&handshake, &stream_id, secret) {
            return Err(self.stream.close_with(cond, None).await);
        }
        server.component_failures_by_ip.refund(&source, attempt);
        let (tx, rx) = crate::queue::queue(
            self.server.config().limits.session_queue,
            self.server.config().limits.session_queue_bytes,
        );
        if self
            .server
            .components
            .attach(&domain, self.id, Some(self.peer), tx)
            .is_err()
        {
            return Err(self
                .stream
                .close_with(
                    StreamErrorCondition::Conflict,
                    Some("this component is already connected"),
                )
                .await);
        }
        self.stream.write_raw(b"<handshake/>");
        self.stream.flush().await?;
        tracing::info!(conn = self.id, domain, "component authenticated");
        Ok((domain, rx))
    }

    async fn session(&mut self, domain: &str, rx: &QueueReceiver<Outbound>) -> End {
        let idle = Duration::from_secs(self.server.config().component_listener.idle_timeout);
        loop {
            loop {
                match self.stream.parser.next_event() {
                    Ok(None) => break,
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        let el = rules::into_client(el);
                        (self.server.metrics.stanzas).received(StreamKind::Component, el.name());
                        if let Err(cond) =
                            router::route_from_component(&self.server, domain, el).await
                        {
                            return self.stream.close_with(cond, None).await;
                        }
                    }
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
            let stanzas = &self.server.metrics.stanzas;
            let mut write = |item: Outbound, out: &mut Vec<u8>| {
                if let Outbound::Stanza(st) = &item {
                    stanzas.sent_serialized(StreamKind::Component, st.bytes());
                }
                item.write_to(out)
            };
            let pumped = (self.stream)
                .pump_with(rx, &mut write, Some(&self.server.shutdown), idle)
                .await;
            if let Err(end) = pumped {
                return end;
            }
        }
    }
}
