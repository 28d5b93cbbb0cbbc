//! A WebSocket client speaking XMPP over WebSocket (RFC 7395), for the
//! tests of the web transport and of web sessions in a cluster.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use waxwing::xml::Element;

use super::{b64, show, standalone};

pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking RFC 7395.
pub struct Ws {
    pub socket: Socket,
}

impl Ws {
    pub async fn connect(addr: SocketAddr) -> Ws {
        let mut req = format!("ws://{addr}/xmpp-websocket")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("xmpp"));
        let (socket, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(
            resp.headers().get("Sec-WebSocket-Protocol").unwrap(),
            "xmpp"
        );
        Ws { socket }
    }

    pub async fn send(&mut self, xml: &str) {
        self.socket.send(Message::text(xml)).await.unwrap();
    }

    /// The next message, which must be exactly one element that declares
    /// its own namespaces (it is parsed with nothing around it).
    pub async fn next(&mut self) -> Element {
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), self.socket.next())
                .await
                .expect("a message within 10 s")
                .expect("the socket is open")
                .expect("no WebSocket error");
            match m {
                Message::Text(t) => {
                    let mut els = standalone(t.as_str());
                    assert_eq!(els.len(), 1, "one element per message: {t}");
                    return els.remove(0);
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// After an error: the `<close/>` and the WebSocket's own close.
    pub async fn expect_closed(&mut self) {
        let close = self.next().await;
        assert!(close.is("close", NS_FRAMING), "{}", show(&close));
        match self.socket.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
            Some(Ok(m)) => panic!("after <close/>: {m:?}"),
        }
    }

    /// A stream error with `condition`, then the close.
    pub async fn expect_stream_error(&mut self, condition: &str) {
        let e = self.next().await;
        assert!(
            e.get_child(condition, "urn:ietf:params:xml:ns:xmpp-streams")
                .is_some(),
            "{}",
            show(&e)
        );
        self.expect_closed().await;
    }

    /// `<open/>`, answered with `<open/>` and the features.
    pub async fn open(&mut self) -> Element {
        self.send(&format!(
            "<open xmlns='{NS_FRAMING}' to='localhost' version='1.0'/>"
        ))
        .await;
        let open = self.next().await;
        assert!(open.is("open", NS_FRAMING), "{}", show(&open));
        assert_eq!(open.attr("from"), Some("localhost"));
        assert!(open.attr("id").is_some());
        let features = self.next().await;
        assert!(
            features.is("features", waxwing::xml::NS_STREAMS),
            "{}",
            show(&features)
        );
        features
    }

    /// PLAIN, a new `<open/>`, and bind: the full JID.
    pub async fn login(&mut self, user: &str, pass: &str, resource: &str) -> String {
        let features = self.open().await;
        let mechs = features
            .get_child("mechanisms", NS_SASL)
            .expect("SASL offered over a loopback WebSocket");
        assert!(
            mechs.children().any(|m| m.text() == "PLAIN"),
            "{}",
            show(&features)
        );
        assert!(
            features
                .get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
                .is_none(),
            "no STARTTLS inside a WebSocket: {}",
            show(&features)
        );
        let auth = b64(format!("\0{user}\0{pass}").as_bytes());
        self.send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{auth}</auth>"
        ))
        .await;
        let success = self.next().await;
        assert!(success.is("success", NS_SASL), "{}", show(&success));
        let features = self.open().await;
        assert!(features
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .is_some());
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let r = self.next().await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
        r.get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.children().find(|c| c.name() == "jid"))
            .map(|j| j.text())
            .expect("a bound JID")
    }

    /// The next `<message/>` (skipping presence and SM requests).
    pub async fn next_message(&mut self) -> Element {
        loop {
            let e = self.next().await;
            if e.is("message", waxwing::xml::NS_CLIENT) {
                return e;
            }
        }
    }
}

pub fn body(e: &Element) -> String {
    e.children()
        .find(|c| c.name() == "body")
        .map(|b| b.text())
        .unwrap_or_default()
}
