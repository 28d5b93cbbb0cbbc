//! XMPP over WebSocket (RFC 7395) at `/xmpp-websocket`: the `xmpp`
//! subprotocol, one top-level element per text message, `<open/>` and
//! `<close/>` (urn:ietf:params:xml:ns:xmpp-framing) instead of the stream
//! header and its end.
//!
//! [`WsStream`] is a [`ClientStream`]: the same negotiation, session core,
//! stream management and limits serve it as serve a TCP stream
//! (`net::c2s::serve`); only the framing lives here. Each message goes
//! through the same streaming parser as TCP, behind a stream header of
//! our own, so the parser's limits (size, depth, elements, attributes,
//! names) hold per message as they hold per stanza on TCP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::SinkExt;
use tokio_util::sync::CancellationToken;

use super::{ConnInfo, Web};
use crate::net::c2s::transport::{ClientStream, ElementSink, End, Flow};
use crate::net::ConnectionSlot;
use crate::queue::{QueueReceiver, Weigh};
use crate::stanza::{stream_error, StreamErrorCondition};
use crate::xml::{
    Element, ParseError, StreamEvent, StreamHeader, StreamParser, NS_CLIENT, NS_STREAMS,
};

pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// The WebSocket subprotocol (RFC 7395 §3.1).
pub const SUBPROTOCOL: &str = "xmpp";

/// What each message is parsed behind: declares what a stream header
/// would, so a stanza written without `xmlns` is still `jabber:client`.
const HEADER: &[u8] =
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// The library's read buffer per connection, kept for the connection's
/// life (its default, 128 KiB, made an idle WebSocket session eight times
/// the memory of a TCP one). A message larger than this still arrives:
/// the buffer grows for it.
const READ_BUFFER: usize = 512;
/// Bytes of messages gathered before a write to the connection (every
/// batch is flushed at its end anyway); its buffer keeps what it grew to.
const WRITE_BUFFER: usize = 4096;

/// The upgrade: a client slot (WebSocket sessions count against the same
/// `[c2s]` caps as TCP ones), the subprotocol, the message size bound,
/// then the c2s driver on the upgraded connection.
pub async fn upgrade(
    State(web): State<Arc<Web>>,
    Extension(conn): Extension<ConnInfo>,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = ws.protocols([SUBPROTOCOL]);
    if ws.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "XMPP over WebSocket needs the 'xmpp' subprotocol (RFC 7395)\n",
        )
            .into_response();
    }
    let server = web.server.clone();
    let Some(slot) = ConnectionSlot::admit_client(&server, conn.peer.ip()) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let max = server.config().limits.max_stanza_size;
    // The library refuses beyond this; up to it, a message over the stanza
    // size gets an XMPP stream error from us first (see `WsStream::fill`).
    let hard = max + 4096;
    let secure = conn.secure;
    let tracker = web.tracker.clone();
    ws.max_message_size(hard)
        .max_frame_size(hard)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            // The session gets a task of its own, its future stored inline
            // in that task as a TCP session's is (one allocation), and
            // axum's upgrade task ends here. Awaiting the session inside
            // axum's task instead costs a second task or a boxed future
            // per session for its whole life (~0.7 KiB of an idle one).
            let stream = WsStream::new(socket, &server, secure);
            tracker.spawn(crate::net::c2s::serve(
                server, stream, conn.peer, false, slot,
            ));
            std::future::ready(())
        })
}

/// Elements on their way out, one message each.
#[derive(Default)]
pub struct Messages(Vec<Vec<u8>>);

impl ElementSink for Messages {
    fn element(&mut self, bytes: &[u8]) {
        self.0.push(bytes.to_vec());
    }
}

/// The server's end of one XMPP-over-WebSocket connection.
pub struct WsStream {
    /// Behind a mutex only to make the stream `Sync` (the driver's futures
    /// hold `&self` across awaits; the upgraded socket is not `Sync`);
    /// reached through `get_mut`, so it is never locked.
    socket: std::sync::Mutex<WebSocket>,
    parser: StreamParser,
    max_message: usize,
    /// The event of the last message read, not yet taken (one message
    /// carries one element, and the next is read only once it is taken,
    /// so there is never more than one: no queue to keep allocated).
    event: Option<Result<StreamEvent, ParseError>>,
    out: Vec<Vec<u8>>,
    wake_at: Option<Instant>,
    write_timeout: Duration,
    secure: bool,
    /// Our `<close/>` went out: nothing more is written.
    closed: bool,
}

impl WsStream {
    pub fn new(socket: WebSocket, server: &crate::server::Server, secure: bool) -> WsStream {
        let limits = server.config().limits.stream();
        let mut s = WsStream {
            socket: std::sync::Mutex::new(socket),
            parser: StreamParser::new(limits.parser),
            max_message: server.config().limits.max_stanza_size,
            event: None,
            out: Vec::new(),
            wake_at: None,
            write_timeout: limits.write_timeout,
            secure,
            closed: false,
        };
        s.open_parser();
        s
    }

    fn socket(&mut self) -> &mut WebSocket {
        self.socket.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    fn set_event(&mut self, ev: Result<StreamEvent, ParseError>) {
        debug_assert!(self.event.is_none(), "one message, one event");
        self.event = Some(ev);
    }

    /// A fresh parse context: our header, and its event dropped.
    fn open_parser(&mut self) {
        self.parser.reset();
        self.parser.feed(HEADER);
        let _ = self.parser.next_event();
    }

    /// Reads one message (cancel-safe: the library buffers partial frames)
    /// and turns it into events.
    async fn fill(&mut self) -> Flow<()> {
        match self.socket().recv().await {
            None => Err(End::PeerClosed),
            Some(Err(e)) => {
                // Over the library's bound (or a broken frame): say why in
                // the close code where the socket still takes it.
                let _ = self.socket().send(close(close_code::SIZE, "")).await;
                Err(End::Io(e.to_string()))
            }
            Some(Ok(Message::Text(text))) => {
                self.message(text.as_bytes());
                Ok(())
            }
            Some(Ok(Message::Binary(_))) => {
                self.set_event(Err(ParseError::PolicyViolation(
                    "XMPP travels in text messages (RFC 7395 §3.3.3)".into(),
                )));
                Ok(())
            }
            Some(Ok(Message::Close(_))) => Err(End::PeerClosed),
            // Pings are answered by the library; pongs need nothing.
            Some(Ok(_)) => Ok(()),
        }
    }

    /// One message: exactly one element (RFC 7395 §3.3.3). Whitespace alone
    /// is ignored, as whitespace between stanzas is on TCP.
    fn message(&mut self, bytes: &[u8]) {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        if bytes.len() > self.max_message {
            self.set_event(Err(ParseError::PolicyViolation(
                "message larger than max_stanza_size".into(),
            )));
            return;
        }
        self.parser.feed(bytes);
        let mut found = None;
        let mut extra = false;
        loop {
            match self.parser.next_event() {
                Ok(Some(StreamEvent::Stanza(el))) if found.is_none() => found = Some(el),
                Ok(None) => break,
                Err(e) => {
                    self.set_event(Err(e));
                    return;
                }
                // A second element, or `</stream:stream>` in a message.
                Ok(Some(_)) => {
                    extra = true;
                    break;
                }
            }
        }
        match found {
            Some(el) if !extra && self.parser.buffered() == 0 => self.set_event(Ok(event_of(el))),
            _ => self.set_event(Err(ParseError::NotWellFormed(
                "a WebSocket message carries exactly one whole element (RFC 7395 §3.3.3)".into(),
            ))),
        }
    }

    /// Our `<close/>`, flushed, then the WebSocket's own close.
    async fn send_close(&mut self) {
        if self.closed {
            return;
        }
        self.write(&Element::new("close", NS_FRAMING));
        let _ = ClientStream::flush(self).await;
        self.closed = true;
        let timeout = self.write_timeout;
        let _ =
            tokio::time::timeout(timeout, self.socket().send(close(close_code::NORMAL, ""))).await;
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// `<open/>` is the stream header, `<close/>` its end, anything else a
/// top-level element of the stream.
fn event_of(el: Element) -> StreamEvent {
    if el.ns() == NS_FRAMING && el.name() == "open" {
        return StreamEvent::Header(StreamHeader {
            name: "stream".into(),
            ns: NS_STREAMS.into(),
            default_ns: Some(NS_CLIENT.into()),
            to: el.attr("to").map(String::from),
            from: el.attr("from").map(String::from),
            id: None,
            version: el.attr("version").map(String::from),
            lang: el.attr("xml:lang").map(String::from),
            prefixes: Vec::new(),
        });
    }
    if el.ns() == NS_FRAMING && el.name() == "close" {
        return StreamEvent::End;
    }
    StreamEvent::Stanza(el)
}

/// A top-level element as serialized for TCP (inside a stream whose
/// header declared `jabber:client` and the `stream` prefix) made a
/// document of its own, as each WebSocket message must be: the namespace
/// declaration the stream header gave goes onto the element itself.
pub fn standalone(bytes: &[u8]) -> Vec<u8> {
    let name_end = bytes
        .iter()
        .position(|&b| matches!(b, b' ' | b'>' | b'/'))
        .unwrap_or(bytes.len());
    let tag_end = bytes.iter().position(|&b| b == b'>').unwrap_or(bytes.len());
    let declaration: &[u8] = if bytes.starts_with(b"<stream:") {
        b" xmlns:stream='http://etherx.jabber.org/streams'"
    } else if contains(&bytes[..tag_end], b" xmlns='") || contains(&bytes[..tag_end], b" xmlns=\"")
    {
        return bytes.to_vec();
    } else {
        b" xmlns='jabber:client'"
    };
    let mut out = Vec::with_capacity(bytes.len() + declaration.len());
    out.extend_from_slice(&bytes[..name_end]);
    out.extend_from_slice(declaration);
    out.extend_from_slice(&bytes[name_end..]);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl ClientStream for WsStream {
    const TRANSPORT: &'static str = "websocket";
    type Out = Messages;

    async fn next_event(&mut self) -> Flow<StreamEvent> {
        loop {
            match self.event.take() {
                Some(Ok(ev)) => return Ok(ev),
                Some(Err(e)) => return Err(self.close_parse_error(e).await),
                None => self.fill().await?,
            }
        }
    }

    fn next_buffered(&mut self) -> Result<Option<StreamEvent>, ParseError> {
        self.event.take().transpose()
    }

    fn write(&mut self, el: &Element) {
        // Written outside any stream context: it declares its namespace.
        self.out.push(standalone(&el.to_bytes(NS_CLIENT)));
    }

    fn write_raw(&mut self, data: &[u8]) {
        self.out.push(standalone(data));
    }

    fn write_out(&mut self, out: Messages) {
        self.out.extend(out.0.iter().map(|m| standalone(m)));
    }

    fn send_header(&mut self, attrs: &[(&str, &str)]) {
        let mut open = Element::new("open", NS_FRAMING).with_attr("version", "1.0");
        for (k, v) in attrs {
            open.set_attr(*k, *v);
        }
        self.write(&open);
    }

    fn restart(&mut self) {
        // RFC 7395 §3.5: the client opens again with `<open/>`; the parse
        // context starts afresh as a new stream's would.
        self.open_parser();
    }

    async fn flush(&mut self) -> Flow<()> {
        if self.closed {
            self.out.clear();
            return Ok(());
        }
        if self.out.is_empty() {
            return Ok(());
        }
        let timeout = self.write_timeout;
        let out = std::mem::take(&mut self.out);
        let socket = self.socket();
        let send = async {
            for bytes in out {
                // Our serializer writes UTF-8 only; checked all the same,
                // since a text message must be.
                let text = String::from_utf8(bytes).map_err(|e| End::Io(e.to_string()))?;
                socket
                    .feed(Message::Text(Utf8Bytes::from(text)))
                    .await
                    .map_err(|e| End::Io(e.to_string()))?;
            }
            socket.flush().await.map_err(|e| End::Io(e.to_string()))
        };
        match tokio::time::timeout(timeout, send).await {
            Ok(r) => r,
            Err(_) => Err(End::WriteTimeout),
        }
    }

    async fn close_with(&mut self, cond: StreamErrorCondition, text: Option<&str>) -> End {
        if !self.closed {
            self.write(&stream_error(cond, text));
        }
        self.send_close().await;
        End::StreamError(cond)
    }

    async fn close_parse_error(&mut self, e: ParseError) -> End {
        let cond = match e {
            ParseError::NotWellFormed(_) => StreamErrorCondition::NotWellFormed,
            ParseError::RestrictedXml(_) => StreamErrorCondition::RestrictedXml,
            ParseError::PolicyViolation(_) => StreamErrorCondition::PolicyViolation,
        };
        tracing::debug!(error = ?e, "websocket parse error");
        self.close_with(cond, None).await
    }

    async fn close_stream(&mut self) -> End {
        self.send_close().await;
        End::PeerClosed
    }

    async fn shutdown(&mut self) {
        let _ = ClientStream::flush(self).await;
        let timeout = self.write_timeout;
        let _ = tokio::time::timeout(timeout, self.socket().close()).await;
    }

    async fn pump_with<T: Weigh + Send>(
        &mut self,
        rx: &QueueReceiver<T>,
        write: &mut (impl FnMut(T, &mut Messages) -> Option<StreamErrorCondition> + Send),
        shutdown: &CancellationToken,
        idle: Duration,
    ) -> Flow<()> {
        // Between messages nothing is buffered: the parser's receive
        // buffer goes (as on TCP), instead of keeping the largest
        // message's size for the session's life.
        self.parser.shrink();
        ClientStream::flush(self).await?;
        if self.event.is_some() {
            return Ok(());
        }
        // One timer for the driver's wake-up and idleness (as on TCP: each
        // `Sleep` would stay in every idle session's task).
        let idle_at = Instant::now() + idle;
        let timer_at = self.wake_at.take().map_or(idle_at, |at| at.min(idle_at));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                Err(self.close_with(StreamErrorCondition::SystemShutdown, None).await)
            }
            item = rx.recv() => {
                let mut messages = Messages::default();
                let mut cond = write(item, &mut messages);
                while cond.is_none() {
                    match rx.try_recv() {
                        Some(item) => cond = write(item, &mut messages),
                        None => break,
                    }
                }
                self.write_out(messages);
                match cond {
                    Some(c) => Err(self.close_with(c, None).await),
                    None => Ok(()),
                }
            }
            r = self.fill() => r,
            _ = tokio::time::sleep_until(timer_at.into()) => {
                if Instant::now() < idle_at {
                    // The driver's wake-up: the driver looks after it.
                    return Ok(());
                }
                Err(self.close_with(StreamErrorCondition::ConnectionTimeout, None).await)
            }
        }
    }

    fn wake_at(&mut self, at: Instant) {
        self.wake_at = Some(at);
    }

    fn is_secure(&self) -> bool {
        self.secure
    }

    fn tls_session(&self) -> Option<&rustls::ServerConnection> {
        // The TLS session belongs to the HTTP connection, which the
        // WebSocket does not expose: no channel binding (no -PLUS).
        None
    }

    async fn start_tls(&mut self, _config: Arc<rustls::ServerConfig>) -> std::io::Result<()> {
        // Security is the HTTP connection's (wss:), below XMPP.
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[cfg(test)]
mod tests {
    use super::standalone;

    fn s(b: &[u8]) -> String {
        String::from_utf8(standalone(b)).unwrap()
    }

    #[test]
    fn elements_declare_what_the_stream_header_declared() {
        assert_eq!(
            s(b"<message to='a@b'><body>x</body></message>"),
            "<message xmlns='jabber:client' to='a@b'><body>x</body></message>"
        );
        assert_eq!(s(b"<presence/>"), "<presence xmlns='jabber:client'/>");
        assert_eq!(
            s(b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"),
            "<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
        );
        // Already in a namespace of its own (SM, SASL): untouched.
        assert_eq!(
            s(b"<r xmlns='urn:xmpp:sm:3'/>"),
            "<r xmlns='urn:xmpp:sm:3'/>"
        );
        // An `xmlns` deeper down does not count for the top element.
        assert_eq!(
            s(b"<iq type='result' id='1'><query xmlns='jabber:iq:roster'/></iq>"),
            "<iq xmlns='jabber:client' type='result' id='1'><query xmlns='jabber:iq:roster'/></iq>"
        );
    }
}
