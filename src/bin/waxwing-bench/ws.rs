//! XMPP over WebSocket (RFC 7395) for the benchmark: a byte stream the rest
//! of the tool can treat like the TLS stream of a TCP session.
//!
//! The tool writes one stanza per write and parses a stream, so this
//! adapter maps between the two framings at their edges: a write is one
//! text message; the tool's stream header goes out as `<open/>` and its
//! `</stream:stream>` as `<close/>`; the server's `<open/>` comes in as a
//! stream header and its `<close/>` as the end of the stream. Everything
//! else passes through unchanged, so the parser sees what it would see on
//! TCP and the chat code needs no second implementation.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
/// What the server's `<open/>` becomes for the stream parser.
const STREAM_HEADER: &[u8] = b"<stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// Where the WebSocket endpoint is (the TLS connection goes to
/// `Target::ws_addr` with the target's server name).
#[derive(Clone, Debug)]
pub struct WsTarget {
    pub addr: std::net::SocketAddr,
    pub path: String,
}

/// One XMPP-over-WebSocket connection over TLS (wss).
pub struct WsIo {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    /// The domain the `<open/>` is addressed to.
    domain: String,
    /// The current incoming message, as the parser should see it.
    inbuf: Vec<u8>,
    inpos: usize,
}

impl WsIo {
    /// The WebSocket handshake with the `xmpp` subprotocol over `tls`.
    pub async fn handshake(
        tls: TlsStream<TcpStream>,
        domain: &str,
        port: u16,
        path: &str,
    ) -> Result<WsIo, String> {
        let mut req = format!("wss://{domain}:{port}{path}")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "xmpp".parse().expect("a valid header value"),
        );
        let (ws, resp) = tokio_tungstenite::client_async(req, tls)
            .await
            .map_err(|e| format!("websocket handshake: {e}"))?;
        if resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            != Some("xmpp")
        {
            return Err("the server did not select the 'xmpp' subprotocol".into());
        }
        Ok(WsIo {
            ws,
            domain: domain.to_owned(),
            inbuf: Vec::new(),
            inpos: 0,
        })
    }

    /// The TLS connection under the WebSocket.
    pub fn tls(&self) -> &TlsStream<TcpStream> {
        self.ws.get_ref()
    }

    /// One outgoing message for one write of the tool.
    fn outgoing(&self, buf: &[u8]) -> String {
        let text = String::from_utf8_lossy(buf);
        let t = text.trim_start();
        if t.starts_with("<?xml") || t.starts_with("<stream:stream") {
            format!(
                "<open xmlns='{NS_FRAMING}' to='{}' version='1.0' xml:lang='en'/>",
                self.domain
            )
        } else if t.starts_with("</stream:stream") {
            format!("<close xmlns='{NS_FRAMING}'/>")
        } else {
            text.into_owned()
        }
    }
}

/// What the parser reads for one incoming message.
fn incoming(text: &str) -> Vec<u8> {
    let t = text.trim_start();
    if t.starts_with("<open") {
        STREAM_HEADER.to_vec()
    } else if t.starts_with("<close") {
        b"</stream:stream>".to_vec()
    } else {
        text.as_bytes().to_vec()
    }
}

impl AsyncRead for WsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.inpos < self.inbuf.len() {
                let n = buf.remaining().min(self.inbuf.len() - self.inpos);
                let start = self.inpos;
                buf.put_slice(&self.inbuf[start..start + n]);
                self.inpos += n;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Text(t))) => {
                    self.inbuf = incoming(t.as_str());
                    self.inpos = 0;
                }
                // Pings are answered by the library on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Binary(_))) => {
                    return Poll::Ready(Err(io::Error::other("binary WebSocket message")))
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io::Error::other)?;
        let msg = Message::text(self.outgoing(buf));
        Pin::new(&mut self.ws)
            .start_send(msg)
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}

/// A client connection: TLS under XMPP's own stream (TCP), or a WebSocket
/// over TLS. The TCP stream stays inline, as it was before WebSocket
/// sessions existed, so TCP runs measure what they always measured.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    Tls(TlsStream<TcpStream>),
    Ws(Box<WsIo>),
}

impl Conn {
    /// The TLS connection, for what the handshake was (resumed or full).
    pub fn tls(&self) -> &TlsStream<TcpStream> {
        match self {
            Conn::Tls(t) => t,
            Conn::Ws(w) => w.tls(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(t) => Pin::new(t).poll_read(cx, buf),
            Conn::Ws(w) => Pin::new(w.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tls(t) => Pin::new(t).poll_write(cx, buf),
            Conn::Ws(w) => Pin::new(w.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(t) => Pin::new(t).poll_flush(cx),
            Conn::Ws(w) => Pin::new(w.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tls(t) => Pin::new(t).poll_shutdown(cx),
            Conn::Ws(w) => Pin::new(w.as_mut()).poll_shutdown(cx),
        }
    }
}
