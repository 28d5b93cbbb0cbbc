//! The client driver runs over any transport that implements
//! `net::c2s::ClientStream`: here a framed one written in this test, where
//! each top-level element travels alone in a length-prefixed frame and the
//! stream opens and closes with RFC 7395's `<open/>` and `<close/>` — the
//! shape of XMPP over WebSocket, without the HTTP upgrade. The same
//! negotiation (SASL, bind), stream management and routing serve it, and
//! its user talks with a user connected over TCP.

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;
use waxwing::net::c2s::transport::{ClientStream, ElementSink, End, Flow};
use waxwing::net::ConnectionSlot;
use waxwing::queue::{QueueReceiver, Weigh};
use waxwing::stanza::{stream_error, StreamErrorCondition};
use waxwing::xml::{Element, ParseError, StreamEvent, StreamHeader, NS_CLIENT};

const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const MAX_FRAME: usize = 64 * 1024;

/// Frames, one element each, on their way out.
#[derive(Default)]
struct Frames(Vec<Vec<u8>>);

impl ElementSink for Frames {
    fn element(&mut self, bytes: &[u8]) {
        self.0.push(bytes.to_vec());
    }
}

/// The server's end of the framed transport.
struct Framed {
    io: DuplexStream,
    input: Vec<u8>,
    events: VecDeque<Result<StreamEvent, ParseError>>,
    out: Vec<Vec<u8>>,
    wake_at: Option<Instant>,
}

impl Framed {
    fn new(io: DuplexStream) -> Framed {
        Framed {
            io,
            input: Vec::new(),
            events: VecDeque::new(),
            out: Vec::new(),
            wake_at: None,
        }
    }

    /// Reads what is available (cancel-safe: bytes land in `input`) and
    /// turns the complete frames into events.
    async fn fill(&mut self) -> Flow<()> {
        let n = self
            .io
            .read_buf(&mut self.input)
            .await
            .map_err(|e| End::Io(e.to_string()))?;
        if n == 0 {
            return Err(End::PeerClosed);
        }
        while self.input.len() >= 4 {
            let len = u32::from_be_bytes(self.input[..4].try_into().unwrap()) as usize;
            if len > MAX_FRAME {
                self.events
                    .push_back(Err(ParseError::PolicyViolation("frame too large".into())));
                break;
            }
            if self.input.len() < 4 + len {
                break;
            }
            let frame: Vec<u8> = self.input.drain(..4 + len).skip(4).collect();
            self.events.push_back(event_of(&frame));
        }
        Ok(())
    }
}

/// One frame as a stream event: `<open/>` is the stream header, `<close/>`
/// its end, anything else one element.
fn event_of(frame: &[u8]) -> Result<StreamEvent, ParseError> {
    let bad = || ParseError::NotWellFormed("bad frame".into());
    let text = std::str::from_utf8(frame).map_err(|_| bad())?;
    let mut els = waxwing::modules::xml_from_storage(text, 16).ok_or_else(bad)?;
    if els.len() != 1 {
        return Err(bad());
    }
    let el = els.remove(0);
    if el.ns() == NS_FRAMING && el.name() == "open" {
        return Ok(StreamEvent::Header(StreamHeader {
            name: "stream".into(),
            ns: waxwing::xml::NS_STREAMS.into(),
            default_ns: Some(NS_CLIENT.into()),
            to: el.attr("to").map(String::from),
            from: el.attr("from").map(String::from),
            id: None,
            version: el.attr("version").map(String::from),
            lang: None,
            prefixes: Vec::new(),
        }));
    }
    if el.ns() == NS_FRAMING && el.name() == "close" {
        return Ok(StreamEvent::End);
    }
    Ok(StreamEvent::Stanza(el))
}

impl ClientStream for Framed {
    const TRANSPORT: &'static str = "test-framed";
    type Out = Frames;

    async fn next_event(&mut self) -> Flow<StreamEvent> {
        loop {
            match self.events.pop_front() {
                Some(Ok(ev)) => return Ok(ev),
                Some(Err(e)) => return Err(self.close_parse_error(e).await),
                None => self.fill().await?,
            }
        }
    }

    fn next_buffered(&mut self) -> Result<Option<StreamEvent>, ParseError> {
        self.events.pop_front().transpose()
    }

    fn write(&mut self, el: &Element) {
        self.out.push(el.to_bytes(NS_CLIENT));
    }

    fn write_raw(&mut self, data: &[u8]) {
        self.out.push(data.to_vec());
    }

    fn write_out(&mut self, out: Frames) {
        self.out.extend(out.0);
    }

    fn send_header(&mut self, attrs: &[(&str, &str)]) {
        let mut open = Element::new("open", NS_FRAMING).with_attr("version", "1.0");
        for (k, v) in attrs {
            open.set_attr(*k, *v);
        }
        self.write(&open);
    }

    fn restart(&mut self) {}

    async fn flush(&mut self) -> Flow<()> {
        let mut bytes = Vec::new();
        for frame in self.out.drain(..) {
            bytes.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&frame);
        }
        self.io
            .write_all(&bytes)
            .await
            .map_err(|e| End::Io(e.to_string()))
    }

    async fn close_with(&mut self, cond: StreamErrorCondition, text: Option<&str>) -> End {
        self.write(&stream_error(cond, text));
        self.write(&Element::new("close", NS_FRAMING));
        let _ = self.flush().await;
        End::StreamError(cond)
    }

    async fn close_parse_error(&mut self, _e: ParseError) -> End {
        self.close_with(StreamErrorCondition::NotWellFormed, None)
            .await
    }

    async fn close_stream(&mut self) -> End {
        self.write(&Element::new("close", NS_FRAMING));
        let _ = self.flush().await;
        End::PeerClosed
    }

    async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }

    async fn pump_with<T: Weigh + Send>(
        &mut self,
        rx: &QueueReceiver<T>,
        write: &mut (impl FnMut(T, &mut Frames) -> Option<StreamErrorCondition> + Send),
        shutdown: &CancellationToken,
        idle: Duration,
    ) -> Flow<()> {
        self.flush().await?;
        if !self.events.is_empty() {
            return Ok(());
        }
        let wake = self.wake_at.take();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                Err(self.close_with(StreamErrorCondition::SystemShutdown, None).await)
            }
            item = rx.recv() => {
                let mut frames = Frames::default();
                let mut cond = write(item, &mut frames);
                while cond.is_none() {
                    match rx.try_recv() {
                        Some(item) => cond = write(item, &mut frames),
                        None => break,
                    }
                }
                self.out.extend(frames.0);
                match cond {
                    Some(c) => Err(self.close_with(c, None).await),
                    None => Ok(()),
                }
            }
            r = self.fill() => r,
            _ = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => Ok(()),
            _ = tokio::time::sleep(idle) => {
                Err(self.close_with(StreamErrorCondition::ConnectionTimeout, None).await)
            }
        }
    }

    fn wake_at(&mut self, at: Instant) {
        self.wake_at = Some(at);
    }

    fn is_secure(&self) -> bool {
        // As a WebSocket over HTTPS is: secured below XMPP.
        true
    }

    fn tls_session(&self) -> Option<&rustls::ServerConnection> {
        None
    }

    async fn start_tls(
        &mut self,
        _config: std::sync::Arc<rustls::ServerConfig>,
    ) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// The client's end: frames in and out.
struct FramedClient {
    io: DuplexStream,
}

impl FramedClient {
    async fn send(&mut self, xml: &str) {
        let mut bytes = (xml.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(xml.as_bytes());
        self.io.write_all(&bytes).await.unwrap();
    }

    /// The next frame, which must hold exactly one element.
    async fn recv(&mut self) -> Element {
        let read = async {
            let mut len = [0u8; 4];
            self.io.read_exact(&mut len).await.unwrap();
            let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
            self.io.read_exact(&mut frame).await.unwrap();
            String::from_utf8(frame).unwrap()
        };
        let text = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a frame within 10 s");
        let mut els = waxwing::modules::xml_from_storage(&text, 16).expect("well-formed frame");
        assert_eq!(els.len(), 1, "one element per frame, got {text}");
        els.remove(0)
    }

    /// Frames until one named `name` (skipping stream management's ack
    /// requests, which the server may send at any time, and presence).
    async fn recv_named(&mut self, name: &str) -> Element {
        loop {
            let el = self.recv().await;
            if el.name() == name {
                return el;
            }
            assert!(
                matches!(el.name(), "r" | "presence"),
                "unexpected frame {}",
                show(&el)
            );
        }
    }
}

#[tokio::test]
async fn negotiation_session_and_stream_management_over_another_transport() {
    let server = TestServer::start_with(|c| c.c2s.allow_plain = true).await;
    server.add_user("alice", "alice-pw").await;
    server.add_user("bob", "bob-pw").await;

    let (client_end, server_end) = tokio::io::duplex(256 * 1024);
    let slot = ConnectionSlot::admit_client(server.server(), "127.0.0.1".parse().unwrap())
        .expect("a connection slot");
    let driver = tokio::spawn(waxwing::net::c2s::serve(
        server.server().clone(),
        Framed::new(server_end),
        "127.0.0.1:1".parse().unwrap(),
        false,
        slot,
    ));
    let mut alice = FramedClient { io: client_end };
    let open = format!("<open xmlns='{NS_FRAMING}' to='{DOMAIN}' version='1.0'/>");

    // Before authentication: the transport counts as secure, so PLAIN is
    // offered as it is over TLS.
    alice.send(&open).await;
    assert_eq!(alice.recv().await.name(), "open");
    let features = alice.recv().await;
    assert_eq!(features.name(), "features");
    let mechanisms = show(&features);
    assert!(mechanisms.contains(">PLAIN<"), "{mechanisms}");
    let creds = base64::engine::general_purpose::STANDARD.encode(b"\0alice\0alice-pw");
    alice
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"
        ))
        .await;
    assert_eq!(alice.recv().await.name(), "success");

    // The stream restarts with a new <open/>; bind and stream management
    // are offered and work as over TCP.
    alice.send(&open).await;
    assert_eq!(alice.recv().await.name(), "open");
    let features = show(&alice.recv().await);
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{features}"
    );
    assert!(features.contains("urn:xmpp:sm:3"), "{features}");
    alice
        .send(
            "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>framed</resource></bind></iq>",
        )
        .await;
    let bound = alice.recv_named("iq").await;
    assert_eq!(bound.attr("type"), Some("result"), "{}", show(&bound));
    assert!(show(&bound).contains("alice@localhost/framed"));
    alice.send("<enable xmlns='urn:xmpp:sm:3'/>").await;
    assert_eq!(alice.recv_named("enabled").await.ns(), "urn:xmpp:sm:3");
    alice.send("<presence/>").await;

    // A user over TCP writes three messages: each arrives in a frame of
    // its own.
    let mut bob = Client::login(server.plain_addr, "bob", "bob-pw", Some("tcp")).await;
    for i in 0..3 {
        bob.send_str(&format!(
            "<message to='alice@localhost/framed' type='chat' id='m{i}'><body>hi {i}</body></message>"
        ))
        .await;
    }
    for i in 0..3 {
        let m = alice.recv_named("message").await;
        assert_eq!(m.attr("id"), Some(format!("m{i}").as_str()));
    }

    // Stream management counts what came over this transport: the
    // presence and the two stanzas below.
    alice
        .send("<message to='bob@localhost/tcp' type='chat' id='back'><body>hello</body></message>")
        .await;
    alice
        .send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(alice.recv_named("iq").await.attr("id"), Some("p1"));
    alice.send("<r xmlns='urn:xmpp:sm:3'/>").await;
    let a = alice.recv_named("a").await;
    assert_eq!(a.attr("h"), Some("3"), "{}", show(&a));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "bob never got the reply");
        let el = bob.next_element().await;
        if el.name() == "message" && el.attr("id") == Some("back") {
            break;
        }
    }

    // <close/> ends the stream: the server answers with its own and the
    // driver returns.
    alice.send(&format!("<close xmlns='{NS_FRAMING}'/>")).await;
    assert_eq!(alice.recv_named("close").await.ns(), NS_FRAMING);
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the driver ends after the close")
        .unwrap();
    assert!(!server
        .server()
        .sessions
        .is_bound(&jid::FullJid::new("alice@localhost/framed").unwrap()));
}
