//! XMPP over WebSocket (RFC 7395) through the real HTTP listener, with a
//! real WebSocket client (tokio-tungstenite): the `xmpp` subprotocol,
//! `<open/>`/`<close/>`, SASL, bind, chat with a TCP user both ways,
//! stream management resumed on a new WebSocket, the framing errors, and
//! connection discovery (XEP-0156).

mod common;

use std::net::SocketAddr;

use common::ws::{body, Ws, NS_FRAMING};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const NS_SM: &str = "urn:xmpp:sm:3";

async fn server() -> TestServer {
    TestServer::start_with(|c| c.http.listen = vec!["127.0.0.1:0".parse().unwrap()]).await
}

fn http_addr(ts: &TestServer) -> SocketAddr {
    ts.running.as_ref().unwrap().web.http[0]
}

#[tokio::test]
async fn a_websocket_user_chats_with_a_tcp_user() {
    let ts = server().await;
    ts.add_user("webby", "pw").await;
    ts.add_user("tcpy", "pw").await;
    let mut ws = Ws::connect(http_addr(&ts)).await;
    let jid = ws.login("webby", "pw", "browser").await;
    assert_eq!(jid, "webby@localhost/browser");
    ws.send("<presence xmlns='jabber:client'/>").await;
    let mut tcp = Client::login(ts.plain_addr, "tcpy", "pw", Some("desk")).await;

    tcp.send_str("<message to='webby@localhost/browser' type='chat' id='m1'><body>hello browser</body></message>")
        .await;
    let m = ws.next_message().await;
    assert_eq!(body(&m), "hello browser");
    assert_eq!(m.attr("from"), Some("tcpy@localhost/desk"));

    ws.send("<message xmlns='jabber:client' to='tcpy@localhost/desk' type='chat' id='m2'><body>hello desk</body></message>")
        .await;
    let m = tcp.next_named("message").await;
    assert_eq!(body(&m), "hello desk");
    assert_eq!(m.attr("from"), Some("webby@localhost/browser"));

    // An IQ round trip (XEP-0199 ping to the server).
    ws.send("<iq xmlns='jabber:client' type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    loop {
        let r = ws.next().await;
        if r.attr("id") == Some("p1") {
            assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
            break;
        }
    }

    // `<close/>` ends it: the server answers with its own and closes.
    ws.send(&format!("<close xmlns='{NS_FRAMING}'/>")).await;
    ws.expect_closed().await;
    eventually("the session is gone", || async {
        ts.server().sessions.count() == 1
    })
    .await;
}

#[tokio::test]
async fn stream_management_resumes_on_a_new_websocket() {
    let ts = server().await;
    ts.add_user("roamer", "pw").await;
    ts.add_user("sender", "pw").await;
    let mut ws = Ws::connect(http_addr(&ts)).await;
    ws.login("roamer", "pw", "phone").await;
    ws.send(&format!("<enable xmlns='{NS_SM}' resume='true'/>"))
        .await;
    let enabled = ws.next().await;
    assert!(enabled.is("enabled", NS_SM), "{}", show(&enabled));
    let id = enabled.attr("id").unwrap().to_string();
    ws.send("<presence xmlns='jabber:client'/>").await;

    // The WebSocket goes away without <close/>: the session waits.
    drop(ws);
    let mut tcp = Client::login(ts.plain_addr, "sender", "pw", Some("desk")).await;
    tcp.send_str(
        "<message to='roamer@localhost/phone' type='chat' id='x'><body>while away</body></message>",
    )
    .await;
    tcp.barrier().await;

    let mut again = Ws::connect(http_addr(&ts)).await;
    again.open().await;
    let auth = b64(b"\0roamer\0pw");
    again
        .send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{auth}</auth>"
        ))
        .await;
    assert!(again.next().await.is("success", NS_SASL));
    again.open().await;
    again
        .send(&format!("<resume xmlns='{NS_SM}' previd='{id}' h='0'/>"))
        .await;
    let resumed = again.next().await;
    assert!(resumed.is("resumed", NS_SM), "{}", show(&resumed));
    let m = again.next_message().await;
    assert_eq!(body(&m), "while away");
}

#[tokio::test]
async fn framing_errors_close_the_stream_and_nothing_else() {
    let ts = server().await;
    ts.add_user("ok", "pw").await;
    let mut bystander = Client::login(ts.plain_addr, "ok", "pw", Some("r")).await;

    // Two elements in one message.
    let mut ws = Ws::connect(http_addr(&ts)).await;
    ws.open().await;
    ws.send("<presence xmlns='jabber:client'/><presence xmlns='jabber:client'/>")
        .await;
    ws.expect_stream_error("not-well-formed").await;

    // Half an element.
    let mut ws = Ws::connect(http_addr(&ts)).await;
    ws.open().await;
    ws.send("<message xmlns='jabber:client'><body>").await;
    ws.expect_stream_error("not-well-formed").await;

    // A message over max_stanza_size: policy-violation.
    let mut ws = Ws::connect(http_addr(&ts)).await;
    ws.open().await;
    let big = "x".repeat(ts.server().config().limits.max_stanza_size + 1);
    ws.send(&format!(
        "<message xmlns='jabber:client'><body>{big}</body></message>"
    ))
    .await;
    ws.expect_stream_error("policy-violation").await;

    // Far over it: the library refuses the message and the socket ends.
    let mut ws = Ws::connect(http_addr(&ts)).await;
    ws.open().await;
    let huge = "x".repeat(4 * ts.server().config().limits.max_stanza_size);
    let _ = ws.socket.send(Message::text(huge)).await;
    loop {
        match ws.socket.next().await {
            None | Some(Err(_)) => break,
            Some(Ok(Message::Close(frame))) => {
                if let Some(f) = frame {
                    assert_eq!(u16::from(f.code), 1009, "message too big");
                }
                break;
            }
            Some(Ok(_)) => {}
        }
    }

    // Without the xmpp subprotocol: refused before any XMPP.
    let req = format!("ws://{}/xmpp-websocket", http_addr(&ts))
        .into_client_request()
        .unwrap();
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");

    // The bystander on TCP never noticed.
    bystander.barrier().await;
    still_serves_user(&ts, "ok").await;
}

/// Raw HTTP/1.1 GET; the whole response as text.
async fn get(addr: SocketAddr, path: &str, host: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn host_meta_lists_the_websocket_endpoint() {
    let ts = server().await;
    let addr = http_addr(&ts);
    let host = format!("localhost:{}", addr.port());
    let xrd = get(addr, "/.well-known/host-meta", &host).await;
    assert!(xrd.starts_with("HTTP/1.1 200"), "{xrd}");
    assert!(xrd
        .to_ascii_lowercase()
        .contains("access-control-allow-origin: *"));
    assert!(
        xrd.contains(&format!(
            "<Link rel='urn:xmpp:alt-connections:websocket' href='ws://{host}/xmpp-websocket'/>"
        )),
        "{xrd}"
    );
    let json = get(addr, "/.well-known/host-meta.json", &host).await;
    assert!(json
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    assert!(
        json.contains(&format!(
            "{{\"rel\":\"urn:xmpp:alt-connections:websocket\",\"href\":\"ws://{host}/xmpp-websocket\"}}"
        )),
        "{json}"
    );
    // A Host header that could break out of the document: no link.
    let odd = get(addr, "/.well-known/host-meta", "x'/><evil").await;
    assert!(!odd.contains("evil"), "{odd}");

    // Oversized request headers: refused, and the listener goes on.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let junk = "a".repeat(64 * 1024);
    let _ = tcp
        .write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Junk: {junk}\r\n\r\n").as_bytes())
        .await;
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
    let again = get(addr, "/.well-known/host-meta", &host).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}
