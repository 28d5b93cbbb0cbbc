//! The I/O half every XML stream the server accepts shares (c2s and
//! components and s2s): reading into the parser without holding a
//! buffer while idle, batched writes, stream headers and closing (RFC 6120
//! §4.4, §4.9.1.1), and the wait-for-work step of a bound stream.

use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::transport::{ReadOutcome, Transport};
use crate::queue::{QueueReceiver, Weigh};
use crate::sessions::Outbound;
use crate::stanza::{stream_error, StreamErrorCondition};
use crate::xml::{self, Element, ParseError, ParserLimits, StreamEvent, StreamParser};

/// Why a connection ended; logged once at the end.
#[derive(Debug)]
pub enum End {
    /// The peer closed its stream or the socket.
    PeerClosed,
    /// We sent a stream error.
    StreamError(StreamErrorCondition),
    /// The socket failed (reset, TLS failure, write error).
    Io(String),
    /// Unused for the idle time (s2s), closed cleanly.
    Idle,
    /// The peer did not read what we wrote within the write timeout.
    WriteTimeout,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerClosed => write!(f, "closed by peer"),
            End::StreamError(c) => write!(f, "stream error {}", c.wire_name()),
            End::Io(e) => write!(f, "i/o: {e}"),
            End::Idle => write!(f, "idle"),
            End::WriteTimeout => write!(f, "write timed out (peer not reading)"),
        }
    }
}

/// A step that may end the connection.
pub type Flow<T> = Result<T, End>;

/// What a connection's queue carries, as it goes onto the stream.
pub trait Queued: Weigh {
    /// Appends the item's bytes to `out`, or returns the condition the
    /// stream is to be closed with.
    fn write_to(self, out: &mut Vec<u8>) -> Option<StreamErrorCondition>;
}

impl Weigh for Outbound {
    fn weight(&self) -> usize {
        match self {
            Outbound::Stanza(st) => st.weight(),
            Outbound::Close(_) => 0,
        }
    }
}

impl Queued for Outbound {
    fn write_to(self, out: &mut Vec<u8>) -> Option<StreamErrorCondition> {
        match self {
            Outbound::Stanza(st) => {
                out.extend_from_slice(st.bytes());
                None
            }
            Outbound::Close(cond) => Some(cond),
        }
    }
}

/// When a bound stream counts as idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleRule {
    /// The peer has sent nothing for the idle time: it may be gone, so the
    /// stream ends with `connection-timeout` (client and component streams).
    SilentPeer,
    /// Nothing went either way for the idle time: the stream is not needed
    /// now and closes cleanly, to be reopened on demand (s2s).
    Unused,
}

/// Most bytes batched into one write.
const MAX_BATCH: usize = 64 * 1024;

/// What a stream's I/O is bounded by (`Limits::stream`).
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub parser: ParserLimits,
    /// Longest one write (or flush, or shutdown) may wait for the peer.
    pub write_timeout: Duration,
}

/// One accepted XML stream's transport, parser and write buffer.
pub struct XmlStream {
    pub transport: Transport,
    pub parser: StreamParser,
    /// Bytes waiting to be written, batched so a burst costs one write.
    out: Vec<u8>,
    header_sent: bool,
    /// The last read returned data, so more may be readable without
    /// waiting (the socket's readiness was not consumed).
    unread: bool,
    /// The stream's default namespace (jabber:client, jabber:component:accept).
    ns: &'static str,
    /// `version` of our header, when the stream kind has one.
    version: Option<&'static str>,
    /// `from` of the header sent when closing a stream we never opened.
    pub local_domain: String,
    /// Last read (`SilentPeer`) or last read or queued write (`Unused`).
    last_activity: Instant,
    idle_rule: IdleRule,
    /// Prefixes declared on our stream header (`db` on s2s streams).
    prefixes: &'static [(&'static str, &'static str)],
    write_timeout: Duration,
    /// A write failed or timed out: later ones would only wait again (the
    /// TLS layer keeps what it could not send), so they fail at once.
    write_failed: bool,
    /// When set, the stream closes with `connection-timeout` at this
    /// instant whatever the peer sends (whitespace included): the
    /// pre-authentication deadline of incoming s2s streams.
    deadline: Option<Instant>,
    /// When set, `pump` returns at that time even with nothing to do, so a
    /// driver can act on a timer of its own. Cleared by each `pump`.
    pub wake_at: Option<Instant>,
    /// The one timer `pump` waits on, kept from one wait to the next and
    /// moved, not made anew: a new one was put into the runtime's timer
    /// wheel and taken out again at every wake-up (each under the wheel's
    /// lock), while moving a timer later, as activity moves idleness
    /// later, is a store. Made at the first wait.
    timer: Option<Pin<Box<Sleep>>>,
}

impl XmlStream {
    pub fn new(
        transport: Transport,
        limits: StreamLimits,
        ns: &'static str,
        version: Option<&'static str>,
        local_domain: String,
    ) -> Self {
        XmlStream {
            transport,
            parser: StreamParser::new(limits.parser),
            out: Vec::new(),
            header_sent: false,
            unread: false,
            ns,
            version,
            local_domain,
            last_activity: Instant::now(),
            idle_rule: IdleRule::SilentPeer,
            prefixes: &[],
            write_timeout: limits.write_timeout,
            write_failed: false,
            deadline: None,
            wake_at: None,
            timer: None,
        }
    }

    /// Sets (or, with None, lifts) the instant the stream is closed at
    /// with `connection-timeout`, read or not.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Resolves at the deadline; never without one.
    async fn deadline_passed(deadline: Option<Instant>) {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    }

    /// The deadline set by `set_deadline`.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    async fn deadline_end(&mut self) -> End {
        self.deadline = None;
        self.close_with(StreamErrorCondition::ConnectionTimeout, None)
            .await
    }

    /// Declares these prefixes on every header we send.
    pub fn with_prefixes(mut self, prefixes: &'static [(&'static str, &'static str)]) -> Self {
        self.prefixes = prefixes;
        self
    }

    /// Sets when the stream counts as idle in `pump`.
    pub fn with_idle_rule(mut self, rule: IdleRule) -> Self {
        self.idle_rule = rule;
        self
    }

    /// A spare buffer to write into, when the stream holds none (it gave
    /// its own back at the last flush).
    fn out_ready(&mut self) {
        if self.out.capacity() == 0 {
            self.out = super::write_buffers::take();
        }
    }

    /// Queues an element for the next flush; one in a namespace the
    /// header binds to a prefix is written with it.
    pub fn write(&mut self, el: &Element) {
        self.out_ready();
        match self.prefixes.iter().find(|(_, ns)| *ns == el.ns()) {
            Some((prefix, _)) => el.write_prefixed_to(&mut self.out, self.ns, prefix),
            None => el.write_to(&mut self.out, self.ns),
        }
    }

    /// Queues bytes already serialized for this stream.
    pub fn write_raw(&mut self, data: &[u8]) {
        self.out_ready();
        self.out.extend_from_slice(data);
    }

    /// Queues our stream header with these attributes (plus `version`).
    pub fn send_header(&mut self, attrs: &[(&str, &str)]) {
        let mut all: Vec<(&str, &str)> = attrs.to_vec();
        if let Some(v) = self.version {
            if !all.iter().any(|(k, _)| *k == "version") {
                all.push(("version", v));
            }
        }
        xml::write_stream_header(&mut self.out, self.ns, self.prefixes, &all);
        self.header_sent = true;
    }

    /// Forgets the current stream: the peer's next bytes are a new header.
    pub fn restart(&mut self) {
        self.parser.reset();
        self.header_sent = false;
        // A TLS handshake may have pulled the peer's first bytes into
        // rustls already, where socket readiness cannot see them.
        self.unread = true;
    }

    /// Next parser event, reading from the socket as needed; a parse error
    /// closes the stream with its condition.
    pub async fn next_event(&mut self) -> Flow<StreamEvent> {
        loop {
            match self.parser.next_event() {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(self.close_parse_error(e).await),
            }
            // Checked here too: a peer that keeps the socket readable never
            // lets the wait below run.
            if self.deadline.is_some_and(|at| Instant::now() >= at) {
                return Err(self.deadline_end().await);
            }
            if !self.unread {
                let deadline = self.deadline;
                tokio::select! {
                    r = self.transport.readable() => r.map_err(|e| End::Io(e.to_string()))?,
                    _ = Self::deadline_passed(deadline) => return Err(self.deadline_end().await),
                }
            }
            self.read_into_parser()?;
        }
    }

    /// Reads one chunk into the parser, remembering whether more may wait.
    fn read_into_parser(&mut self) -> Flow<()> {
        let parser = &mut self.parser;
        let outcome = self.transport.read_some(|chunk| parser.feed(chunk));
        self.unread = matches!(outcome, Ok(ReadOutcome::Data));
        match outcome {
            Ok(ReadOutcome::Data) => {
                self.last_activity = Instant::now();
                Ok(())
            }
            Ok(ReadOutcome::Drained) => Ok(()),
            Ok(ReadOutcome::Closed) => Err(End::PeerClosed),
            Err(e) => Err(End::Io(e.to_string())),
        }
    }

    /// Writes what is buffered (and any TLS records rustls made on its own).
    /// A peer that does not take it within the write timeout is cut off.
    pub async fn flush(&mut self) -> Flow<()> {
        if self.write_failed {
            self.out = Vec::new();
            return Err(End::Io("an earlier write failed".into()));
        }
        let limit = self.write_timeout;
        let r = if !self.out.is_empty() {
            let r = tokio::time::timeout(limit, self.transport.write_all(&self.out)).await;
            // Give the buffer back: most streams sit idle between writes,
            // and an idle stream should own no write buffer. The thread
            // keeps it for the next stream that writes.
            super::write_buffers::give(std::mem::take(&mut self.out));
            r
        } else {
            tokio::time::timeout(limit, self.transport.flush()).await
        };
        let end = match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => End::Io(e.to_string()),
            Err(_) => End::WriteTimeout,
        };
        self.write_failed = true;
        Err(end)
    }

    /// Closes with the stream error a parse error deserves.
    pub async fn close_parse_error(&mut self, e: ParseError) -> End {
        let cond = match e {
            ParseError::NotWellFormed(_) => StreamErrorCondition::NotWellFormed,
            ParseError::RestrictedXml(_) => StreamErrorCondition::RestrictedXml,
            ParseError::PolicyViolation(_) => StreamErrorCondition::PolicyViolation,
        };
        tracing::debug!(error = ?e, "stream parse error");
        self.close_with(cond, None).await
    }

    /// Sends a stream error and closes the stream (RFC 6120 §4.9.1.1),
    /// opening our stream first if we had not yet.
    pub async fn close_with(&mut self, cond: StreamErrorCondition, text: Option<&str>) -> End {
        if !self.header_sent {
            let (from, id) = (self.local_domain.clone(), random_id());
            self.send_header(&[("from", &from), ("id", &id)]);
        }
        stream_error(cond, text).write_to(&mut self.out, self.ns);
        self.out.extend_from_slice(b"</stream:stream>");
        let _ = self.flush().await;
        End::StreamError(cond)
    }

    /// Answers the peer's `</stream:stream>` with ours.
    pub async fn close_stream(&mut self) -> End {
        if self.header_sent {
            self.out.extend_from_slice(b"</stream:stream>");
        }
        let _ = self.flush().await;
        End::PeerClosed
    }

    /// Flushes and shuts the socket down (TLS close_notify included).
    pub async fn shutdown(&mut self) {
        if self.flush().await.is_ok() {
            // TLS close_notify is a write too: bounded like the others.
            let _ = tokio::time::timeout(self.write_timeout, self.transport.shutdown()).await;
        }
    }

    /// Moves already-queued stanzas into the write buffer (bounded, so one
    /// write stays bounded); returns a condition to close with if asked.
    pub fn drain_queue<T: Queued>(
        &mut self,
        rx: &QueueReceiver<T>,
    ) -> Option<StreamErrorCondition> {
        self.drain_queue_with(rx, &mut |item: T, out: &mut Vec<u8>| item.write_to(out))
    }

    /// [`XmlStream::drain_queue`] with a writer of one's own (the client
    /// driver counts and filters what it writes).
    pub fn drain_queue_with<T: Weigh>(
        &mut self,
        rx: &QueueReceiver<T>,
        write: &mut impl FnMut(T, &mut Vec<u8>) -> Option<StreamErrorCondition>,
    ) -> Option<StreamErrorCondition> {
        self.out_ready();
        while self.out.len() < MAX_BATCH {
            if let Some(cond) = write(rx.try_recv()?, &mut self.out) {
                return Some(cond);
            }
        }
        None
    }

    /// In a bound stream, after the buffered events were handled: flushes,
    /// then waits for the next thing to do — bytes from the peer (fed to
    /// the parser), stanzas queued for the peer (buffered for writing),
    /// shutdown (`system-shutdown`) or idleness by the stream's `IdleRule`.
    pub async fn pump<T: Queued>(
        &mut self,
        rx: &QueueReceiver<T>,
        shutdown: &CancellationToken,
        idle: Duration,
    ) -> Flow<()> {
        self.pump_with(
            rx,
            &mut |item: T, out: &mut Vec<u8>| item.write_to(out),
            Some(shutdown),
            idle,
        )
        .await
    }

    /// [`XmlStream::pump`] with a writer of one's own for queued items.
    /// Without `shutdown`, shutdown must come through `rx` (a bound client
    /// session: `SessionRegistry::close_all`); with it, the token is polled
    /// at each wake-up.
    pub async fn pump_with<T: Weigh>(
        &mut self,
        rx: &QueueReceiver<T>,
        write: &mut impl FnMut(T, &mut Vec<u8>) -> Option<StreamErrorCondition>,
        shutdown: Option<&CancellationToken>,
        idle: Duration,
    ) -> Flow<()> {
        self.parser.shrink();
        self.flush().await?;
        if self.unread {
            // The socket may hold more: read on without waiting, but let
            // queued outbound stanzas and shutdown through between chunks.
            if shutdown.is_some_and(|s| s.is_cancelled()) {
                return Err(self
                    .close_with(StreamErrorCondition::SystemShutdown, None)
                    .await);
            }
            // A peer that never stops sending (whitespace) must not
            // outrun its deadline either.
            if self.deadline.is_some_and(|at| Instant::now() >= at) {
                return Err(self.deadline_end().await);
            }
            if let Some(cond) = self.drain_queue_with(rx, write) {
                return Err(self.close_with(cond, None).await);
            }
            return self.read_into_parser();
        }
        // One timer for the three things that can come due (the deadline,
        // the driver's wake-up, idleness), not a timer each: an idle
        // stream keeps it for its whole life, and a `Sleep` weighs as much
        // as the rest of this wait's state together.
        let idle_at = self.last_activity + idle;
        let wake_at = self.wake_at.take();
        let timer_at: tokio::time::Instant = [self.deadline, wake_at]
            .into_iter()
            .flatten()
            .fold(idle_at, Instant::min)
            .into();
        let timer =
            (self.timer).get_or_insert_with(|| Box::pin(tokio::time::sleep_until(timer_at)));
        if timer.deadline() != timer_at {
            timer.as_mut().reset(timer_at);
        }
        tokio::select! {
            biased;
            _ = cancelled(shutdown), if shutdown.is_some() => {
                Err(self.close_with(StreamErrorCondition::SystemShutdown, None).await)
            }
            msg = rx.recv() => {
                if self.idle_rule == IdleRule::Unused {
                    self.last_activity = Instant::now();
                }
                // Batch whatever else is already queued into the same write.
                self.out_ready();
                match write(msg, &mut self.out).or_else(|| self.drain_queue_with(rx, write)) {
                    Some(cond) => Err(self.close_with(cond, None).await),
                    None => Ok(()),
                }
            }
            r = self.transport.readable() => {
                r.map_err(|e| End::Io(e.to_string()))?;
                self.read_into_parser()
            }
            _ = timer.as_mut() => {
                let now = Instant::now();
                if self.deadline.is_some_and(|at| now >= at) {
                    return Err(self.deadline_end().await);
                }
                if now < idle_at {
                    // The driver's wake-up (stream management's ack
                    // request): nothing to do here, the driver looks after it.
                    return Ok(());
                }
                match self.idle_rule {
                    IdleRule::SilentPeer => {
                        Err(self.close_with(StreamErrorCondition::ConnectionTimeout, None).await)
                    }
                    IdleRule::Unused => {
                        let _ = self.close_stream().await;
                        self.shutdown().await;
                        Err(End::Idle)
                    }
                }
            }
        }
    }
}

/// Resolves once `token` is cancelled; never without one.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

/// A random stream id or resource: 16 lowercase alphanumerics.
pub fn random_id() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}
