//! One external component connection (XEP-0114), from accept to close: the
//! stream header and handshake (rules in `stream::component`), then the
//! session, which hands the component's stanzas to the router and writes
//! what the router queues for the component's domain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::timeout;

use super::transport::{ReadOutcome, Transport};
use super::ConnectionSlot;
use crate::queue::QueueReceiver;
use crate::router;
use crate::server::Server;
use crate::sessions::Outbound;
use crate::stanza::{stream_error, StreamErrorCondition};
use crate::stream::component::{self as rules, NS_COMPONENT};
use crate::xml::{self, ParseError, ParserLimits, StreamEvent, StreamParser};

/// Why a connection ended; logged once at the end.
#[derive(Debug)]
enum End {
    PeerClosed,
    StreamError(StreamErrorCondition),
    Io(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerClosed => write!(f, "closed by peer"),
            End::StreamError(c) => write!(f, "stream error {}", c.wire_name()),
            End::Io(e) => write!(f, "i/o: {e}"),
        }
    }
}

type Flow<T> = Result<T, End>;

/// Runs a component connection to its end.
pub async fn run(server: Arc<Server>, tcp: TcpStream, peer: SocketAddr, _slot: ConnectionSlot) {
    let started = Instant::now();
    let id = server.next_id();
    let limits = ParserLimits {
        max_stanza_bytes: server.config.limits.max_stanza_size,
        max_depth: server.config.limits.max_depth,
    };
    let mut conn = Connection {
        server: server.clone(),
        transport: Transport::Plain(tcp),
        parser: StreamParser::new(limits),
        out: Vec::new(),
        header_sent: false,
        domain: None,
        id,
        unread: false,
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
    transport: Transport,
    parser: StreamParser,
    out: Vec<u8>,
    header_sent: bool,
    /// The component domain, once the header named a configured one.
    domain: Option<String>,
    id: u64,
    unread: bool,
}

impl Connection {
    async fn run(&mut self) -> End {
        let cfg = &self.server.config.component_listener;
        let login_timeout = Duration::from_secs(cfg.login_timeout);
        let negotiated = match timeout(login_timeout, self.negotiate()).await {
            Ok(r) => r,
            Err(_) => Err(self
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
        let _ = self.flush().await;
        self.transport.shutdown().await;
        end
    }

    /// Header and handshake; returns the domain and its queue.
    async fn negotiate(&mut self) -> Flow<(String, QueueReceiver<Outbound>)> {
        let header = match self.next_event().await? {
            StreamEvent::Header(h) => h,
            StreamEvent::End => return Err(self.close_stream().await),
            StreamEvent::Stanza(_) => {
                return Err(self
                    .close_with(StreamErrorCondition::NotWellFormed, None)
                    .await)
            }
        };
        let components = &self.server.components;
        let domain = match rules::check_header(&header, |d| components.is_component(d)) {
            Ok(d) => d,
            Err(cond) => return Err(self.close_with(cond, None).await),
        };
        self.domain = Some(domain.clone());
        let stream_id = random_id();
        self.send_header(&stream_id);
        self.flush().await?;
        let handshake = match self.next_event().await? {
            StreamEvent::Stanza(el) => el,
            StreamEvent::End => return Err(self.close_stream().await),
            StreamEvent::Header(_) => {
                return Err(self
                    .close_with(StreamErrorCondition::NotWellFormed, None)
                    .await)
            }
        };
        let secret = self.server.components.secret(&domain).unwrap_or_default();
        if let Err(cond) = rules::check_handshake(&handshake, &stream_id, secret) {
            return Err(self.close_with(cond, None).await);
        }
        let (tx, rx) = crate::queue::queue(self.server.config.limits.session_queue);
        if self.server.components.attach(&domain, self.id, tx).is_err() {
            return Err(self
                .close_with(
                    StreamErrorCondition::Conflict,
                    Some("this component is already connected"),
                )
                .await);
        }
        self.out.extend_from_slice(b"<handshake/>");
        self.flush().await?;
        tracing::info!(conn = self.id, domain, "component authenticated");
        Ok((domain, rx))
    }

    async fn session(&mut self, domain: &str, rx: &QueueReceiver<Outbound>) -> End {
        let idle = Duration::from_secs(self.server.config.component_listener.idle_timeout);
        let mut last_read = Instant::now();
        loop {
            loop {
                match self.parser.next_event() {
                    Ok(None) => break,
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        let el = rules::into_client(el);
                        if let Err(cond) =
                            router::route_from_component(&self.server, domain, el).await
                        {
                            return self.close_with(cond, None).await;
                        }
                    }
                    Ok(Some(StreamEvent::End)) => return self.close_stream().await,
                    Ok(Some(StreamEvent::Header(_))) => {
                        return self
                            .close_with(StreamErrorCondition::NotWellFormed, None)
                            .await
                    }
                    Err(e) => return self.close_parse_error(e).await,
                }
            }
            self.parser.shrink();
            if let Err(e) = self.flush().await {
                return e;
            }
            if self.unread {
                if self.server.shutdown.is_cancelled() {
                    return self
                        .close_with(StreamErrorCondition::SystemShutdown, None)
                        .await;
                }
                if let Some(cond) = self.drain_queue(rx) {
                    return self.close_with(cond, None).await;
                }
                match self.read_into_parser() {
                    Ok(ReadOutcome::Data) => last_read = Instant::now(),
                    Ok(ReadOutcome::Drained) => {}
                    Ok(ReadOutcome::Closed) => return End::PeerClosed,
                    Err(e) => return End::Io(e.to_string()),
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = self.server.shutdown.cancelled() => {
                    return self.close_with(StreamErrorCondition::SystemShutdown, None).await;
                }
                msg = rx.recv() => {
                    if let Some(cond) = self.queue_outbound(msg) {
                        return self.close_with(cond, None).await;
                    }
                    if let Some(cond) = self.drain_queue(rx) {
                        return self.close_with(cond, None).await;
                    }
                }
                r = self.transport.readable() => {
                    if let Err(e) = r {
                        return End::Io(e.to_string());
                    }
                    match self.read_into_parser() {
                        Ok(ReadOutcome::Data) => last_read = Instant::now(),
                        Ok(ReadOutcome::Drained) => {}
                        Ok(ReadOutcome::Closed) => return End::PeerClosed,
                        Err(e) => return End::Io(e.to_string()),
                    }
                }
                _ = tokio::time::sleep_until((last_read + idle).into()) => {
                    return self.close_with(StreamErrorCondition::ConnectionTimeout, None).await;
                }
            }
        }
    }

    /// Moves already-queued stanzas into the write buffer (bounded, so one
    /// write stays bounded).
    fn drain_queue(&mut self, rx: &QueueReceiver<Outbound>) -> Option<StreamErrorCondition> {
        while self.out.len() < 64 * 1024 {
            match rx.try_recv() {
                Some(msg) => {
                    if let Some(cond) = self.queue_outbound(msg) {
                        return Some(cond);
                    }
                }
                None => break,
            }
        }
        None
    }

    fn queue_outbound(&mut self, msg: Outbound) -> Option<StreamErrorCondition> {
        match msg {
            Outbound::Stanza(bytes) => {
                self.out.extend_from_slice(&bytes);
                None
            }
            Outbound::Close(cond) => Some(cond),
        }
    }

    // ---- I/O helpers ---------------------------------------------------

    async fn next_event(&mut self) -> Flow<StreamEvent> {
        loop {
            match self.parser.next_event() {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(self.close_parse_error(e).await),
            }
            if !self.unread {
                self.transport
                    .readable()
                    .await
                    .map_err(|e| End::Io(e.to_string()))?;
            }
            match self.read_into_parser() {
                Ok(ReadOutcome::Data | ReadOutcome::Drained) => {}
                Ok(ReadOutcome::Closed) => return Err(End::PeerClosed),
                Err(e) => return Err(End::Io(e.to_string())),
            }
        }
    }

    fn read_into_parser(&mut self) -> std::io::Result<ReadOutcome> {
        let parser = &mut self.parser;
        let outcome = self.transport.read_some(|chunk| parser.feed(chunk));
        self.unread = matches!(outcome, Ok(ReadOutcome::Data));
        outcome
    }

    async fn flush(&mut self) -> Flow<()> {
        if !self.out.is_empty() {
            let r = self.transport.write_all(&self.out).await;
            self.out = Vec::new();
            r.map_err(|e| End::Io(e.to_string()))?;
        } else {
            self.transport
                .flush()
                .await
                .map_err(|e| End::Io(e.to_string()))?;
        }
        Ok(())
    }

    /// Our header: `from` is the component's domain (XEP-0114 §3), or the
    /// first host when the stream is refused before one was named.
    fn send_header(&mut self, stream_id: &str) {
        let from = match &self.domain {
            Some(d) => d.clone(),
            None => self
                .server
                .config
                .domains()
                .first()
                .cloned()
                .unwrap_or_default(),
        };
        xml::write_stream_header(
            &mut self.out,
            NS_COMPONENT,
            &[],
            &[("from", &from), ("id", stream_id)],
        );
        self.header_sent = true;
    }

    async fn close_parse_error(&mut self, e: ParseError) -> End {
        let cond = match e {
            ParseError::NotWellFormed(_) => StreamErrorCondition::NotWellFormed,
            ParseError::RestrictedXml(_) => StreamErrorCondition::RestrictedXml,
            ParseError::PolicyViolation(_) => StreamErrorCondition::PolicyViolation,
        };
        tracing::debug!(conn = self.id, error = ?e, "component parse error");
        self.close_with(cond, None).await
    }

    /// Sends a stream error and closes the stream, opening ours first if
    /// needed (XEP-0114 §3 follows RFC 6120 §4.9.1.1).
    async fn close_with(&mut self, cond: StreamErrorCondition, text: Option<&str>) -> End {
        if !self.header_sent {
            self.send_header(&random_id());
        }
        stream_error(cond, text).write_to(&mut self.out, NS_COMPONENT);
        self.out.extend_from_slice(b"</stream:stream>");
        let _ = self.flush().await;
        End::StreamError(cond)
    }

    async fn close_stream(&mut self) -> End {
        if self.header_sent {
            self.out.extend_from_slice(b"</stream:stream>");
        }
        let _ = self.flush().await;
        End::PeerClosed
    }
}

/// A random stream id: 16 lowercase alphanumerics.
fn random_id() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}
