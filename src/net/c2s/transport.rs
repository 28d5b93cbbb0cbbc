//! What the client driver needs from the connection under it. Negotiation
//! (`super::Connection::negotiate`) and the attached session
//! (`super::session`) are written against [`ClientStream`] only, so a
//! transport that frames XMPP differently — WebSocket (RFC 7395: one
//! element per message, `<open/>`/`<close/>` instead of the stream
//! header) or BOSH (XEP-0206: elements wrapped in HTTP bodies) — plugs
//! into the same negotiation, session core and stream management by
//! implementing this trait; nothing above it changes.
//!
//! TCP (STARTTLS or direct TLS) is [`XmlStream`]'s implementation.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::net::xmlstream::XmlStream;
use crate::queue::{QueueReceiver, Weigh};
use crate::stanza::StreamErrorCondition;
use crate::xml::{Element, ParseError, StreamEvent};

pub use crate::net::xmlstream::{End, Flow};

/// Where the session puts serialized top-level elements on their way out,
/// one call per element, so a transport that frames each element apart
/// (a WebSocket message per stanza, RFC 7395 §3.3.3) can keep them apart;
/// a byte stream just appends.
pub trait ElementSink {
    fn element(&mut self, bytes: &[u8]);
}

impl ElementSink for Vec<u8> {
    fn element(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A client's XML stream as the driver sees it: events in (the stream
/// opening, top-level elements, its close), elements out, and what the
/// security layer under it offers.
pub trait ClientStream: Send {
    /// The transport's name in the metrics (`waxwing_c2s_sessions`'s
    /// `transport` label): "tcp", "websocket", "bosh".
    const TRANSPORT: &'static str;

    /// What queued stanzas are serialized into (see [`ElementSink`]).
    type Out: ElementSink + Default + Send;

    /// The next event, reading from the peer as needed; a parse error
    /// closes the stream with its condition.
    fn next_event(&mut self) -> impl Future<Output = Flow<StreamEvent>> + Send;

    /// An event already read and parsed, without waiting (None: the
    /// buffered input is used up).
    fn next_buffered(&mut self) -> Result<Option<StreamEvent>, ParseError>;

    /// Buffers an element for writing (serialized for this transport).
    fn write(&mut self, el: &Element);

    /// Buffers one top-level element already serialized in `jabber:client`.
    fn write_raw(&mut self, data: &[u8]);

    /// Buffers elements serialized into an [`ElementSink`] of this stream.
    fn write_out(&mut self, out: Self::Out);

    /// Buffers our opening of the stream with these attributes.
    fn send_header(&mut self, attrs: &[(&str, &str)]);

    /// Forgets the current stream (after TLS or SASL): the peer opens a
    /// new one next.
    fn restart(&mut self);

    /// Writes what is buffered.
    fn flush(&mut self) -> impl Future<Output = Flow<()>> + Send;

    /// Sends a stream error and closes the stream.
    fn close_with(
        &mut self,
        cond: StreamErrorCondition,
        text: Option<&str>,
    ) -> impl Future<Output = End> + Send;

    /// Closes with the stream error a parse error deserves.
    fn close_parse_error(&mut self, e: ParseError) -> impl Future<Output = End> + Send;

    /// Answers the peer's close of the stream with ours.
    fn close_stream(&mut self) -> impl Future<Output = End> + Send;

    /// Flushes and ends the connection.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;

    /// In a bound session: flushes, then waits for the next thing to do —
    /// input (parsed, for `next_buffered`), items queued for the peer
    /// (passed to `write` to be serialized into the output), shutdown,
    /// idleness, or the wake-up asked for with `wake_at`.
    fn pump_with<T: Weigh + Send>(
        &mut self,
        rx: &QueueReceiver<T>,
        write: &mut (impl FnMut(T, &mut Self::Out) -> Option<StreamErrorCondition> + Send),
        shutdown: &CancellationToken,
        idle: Duration,
    ) -> impl Future<Output = Flow<()>> + Send;

    /// Asks the next `pump_with` to return at `at` if nothing else
    /// happened by then (stream management's delayed ack request).
    fn wake_at(&mut self, at: Instant);

    /// Is the stream encrypted (TLS under it, or an HTTPS connection)?
    fn is_secure(&self) -> bool;

    /// The TLS session the client authenticated over, for channel binding
    /// (None where there is none, or where the transport cannot tell).
    fn tls_session(&self) -> Option<&rustls::ServerConnection>;

    /// Runs a TLS handshake on the connection (STARTTLS, direct TLS). A
    /// transport whose security is set up below XMPP refuses.
    fn start_tls(
        &mut self,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl ClientStream for XmlStream {
    const TRANSPORT: &'static str = "tcp";
    type Out = Vec<u8>;

    async fn next_event(&mut self) -> Flow<StreamEvent> {
        XmlStream::next_event(self).await
    }

    fn next_buffered(&mut self) -> Result<Option<StreamEvent>, ParseError> {
        self.parser.next_event()
    }

    fn write(&mut self, el: &Element) {
        XmlStream::write(self, el)
    }

    fn write_raw(&mut self, data: &[u8]) {
        XmlStream::write_raw(self, data)
    }

    fn write_out(&mut self, out: Vec<u8>) {
        XmlStream::write_raw(self, &out)
    }

    fn send_header(&mut self, attrs: &[(&str, &str)]) {
        XmlStream::send_header(self, attrs)
    }

    fn restart(&mut self) {
        XmlStream::restart(self)
    }

    async fn flush(&mut self) -> Flow<()> {
        XmlStream::flush(self).await
    }

    async fn close_with(&mut self, cond: StreamErrorCondition, text: Option<&str>) -> End {
        XmlStream::close_with(self, cond, text).await
    }

    async fn close_parse_error(&mut self, e: ParseError) -> End {
        XmlStream::close_parse_error(self, e).await
    }

    async fn close_stream(&mut self) -> End {
        XmlStream::close_stream(self).await
    }

    async fn shutdown(&mut self) {
        XmlStream::shutdown(self).await
    }

    async fn pump_with<T: Weigh + Send>(
        &mut self,
        rx: &QueueReceiver<T>,
        write: &mut (impl FnMut(T, &mut Vec<u8>) -> Option<StreamErrorCondition> + Send),
        _shutdown: &CancellationToken,
        idle: Duration,
    ) -> Flow<()> {
        // Not polled here: a bound session over TCP hears shutdown through
        // its queue (`SessionRegistry::close_all`), so its wake-ups do not
        // all take the shared token's locks.
        XmlStream::pump_with(self, rx, write, None, idle).await
    }

    fn wake_at(&mut self, at: Instant) {
        self.wake_at = Some(at);
    }

    fn is_secure(&self) -> bool {
        self.transport.is_tls()
    }

    fn tls_session(&self) -> Option<&rustls::ServerConnection> {
        self.transport.tls_session()
    }

    async fn start_tls(
        &mut self,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> std::io::Result<()> {
        self.transport.upgrade(config).await
    }
}
