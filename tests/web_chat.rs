//! The bundled web chat at `/chat/` (`[http] chat_dir`): the directory's
//! files served as they are, its HTML pages with the server's endpoints
//! filled in, nothing outside the directory reachable.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One GET on a new connection: status line and headers, and the body.
async fn get(addr: SocketAddr, path: &str, host: &str) -> (String, Vec<u8>) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    (
        String::from_utf8_lossy(&raw[..split]).to_string(),
        raw[split + 4..].to_vec(),
    )
}

fn status(head: &str) -> u16 {
    head[9..12].parse().unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn the_chat_directory_is_served_with_endpoints_filled_in() {
    let root = tempfile::tempdir().unwrap();
    let chat = root.path().join("chat");
    std::fs::create_dir_all(chat.join("dist")).unwrap();
    std::fs::write(
        chat.join("index.html"),
        "<p>{{domain}}|{{websocket_url}}|{{bosh_url}}</p>",
    )
    .unwrap();
    std::fs::write(chat.join("dist/app.js"), "console.log('hi');").unwrap();
    std::fs::write(root.path().join("secret.html"), "secret").unwrap();
    std::fs::write(root.path().join("secret.txt"), "secret").unwrap();
    // Bigger than a page may be to be filled in.
    std::fs::write(
        chat.join("huge.html"),
        vec![b'x'; waxwing::web::chat::MAX_PAGE as usize + 1],
    )
    .unwrap();
    let dir = chat.to_str().unwrap().to_string();
    let port = free_port();
    let ts = TestServer::start_with(move |c| {
        c.http.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
        c.http.chat_dir = dir;
    })
    .await;
    let http = ts.running.as_ref().unwrap().web.http[0];
    let host = format!("localhost:{port}");

    let (head, _) = get(http, "/chat", &host).await;
    assert_eq!(status(&head), 308, "{head}");
    assert_eq!(header(&head, "location"), Some("/chat/"));

    let (head, body) = get(http, "/chat/", &host).await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("<p>localhost|ws://{host}/xmpp-websocket|http://{host}/http-bind</p>")
    );
    // The same page under index.html.
    let (head, _) = get(http, "/chat/index.html", &host).await;
    assert_eq!(status(&head), 200, "{head}");

    let (head, body) = get(http, "/chat/dist/app.js", &host).await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(body, b"console.log('hi');");
    assert!(
        header(&head, "content-type")
            .unwrap()
            .contains("javascript"),
        "{head}"
    );

    // Nothing outside the directory, however the path is spelled.
    for path in [
        "/chat/../secret.html",
        "/chat/%2e%2e/secret.html",
        "/chat/..%2fsecret.html",
        "/chat/%2e%2e/secret.txt",
        "/chat/dist/../../secret.txt",
        "/chat/missing.html",
    ] {
        let (head, body) = get(http, path, &host).await;
        assert!(
            [400, 404].contains(&status(&head)),
            "{path}: {head} {}",
            String::from_utf8_lossy(&body)
        );
        assert!(!String::from_utf8_lossy(&body).contains("secret"), "{path}");
    }
    // A page too big to fill in is refused, not read whole.
    let (head, _) = get(http, "/chat/huge.html", &host).await;
    assert_eq!(status(&head), 500, "{head}");
    // A Host header that could break out of the page is not used.
    let (head, _) = get(http, "/chat/", "x'onload='alert(1)").await;
    assert_eq!(status(&head), 400, "{head}");

    // The server is unharmed: XMPP still works.
    ts.add_user("alice", "pw").await;
    let mut c = Client::login(ts.plain_addr, "alice", "pw", Some("r")).await;
    let pong = c
        .iq(
            "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
}

#[tokio::test]
async fn without_a_chat_dir_there_is_no_chat() {
    let port = free_port();
    let ts = TestServer::start_with(move |c| {
        c.http.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    })
    .await;
    let http = ts.running.as_ref().unwrap().web.http[0];
    let (head, _) = get(http, "/chat/", "localhost").await;
    assert_eq!(status(&head), 404, "{head}");
}
