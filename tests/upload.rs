//! HTTP File Upload (XEP-0363) end to end over real sockets: a slot from
//! `upload.localhost`, the PUT and the GET on the HTTP listener, and what
//! must be refused: too large, over quota, forged or expired signatures,
//! more bytes than promised, a second PUT, names that try to leave the
//! directory.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waxwing::xml::Element;

const NS: &str = "urn:xmpp:http:upload:0";

struct Setup {
    ts: TestServer,
    http: SocketAddr,
    files: tempfile::TempDir,
}

async fn setup(tweak: impl FnOnce(&mut waxwing::config::Config) + Send + 'static) -> Setup {
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().to_str().unwrap().to_string();
    let port = free_port();
    let ts = TestServer::start_with(move |c| {
        c.http.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
        c.upload.dir = dir;
        c.upload.max_file_size = 8 * 1024 * 1024;
        tweak(c);
    })
    .await;
    let http = ts.running.as_ref().unwrap().web.http[0];
    Setup { ts, http, files }
}

struct HttpResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 exchange on a new connection.
async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> HttpResponse {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and close) before taking the whole body.
    let _ = tcp.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    HttpResponse {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    }
}

/// Path and query of a URL on our listener.
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").unwrap().1;
    &rest[rest.find('/').unwrap()..]
}

async fn put(addr: SocketAddr, url: &str, ctype: &str, body: &[u8], length: usize) -> HttpResponse {
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
        path_of(url)
    );
    http(addr, &head, body).await
}

async fn get(addr: SocketAddr, url: &str) -> HttpResponse {
    http(
        addr,
        &format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            path_of(url)
        ),
        b"",
    )
    .await
}

async fn request_slot(c: &mut Client, name: &str, size: usize, ctype: &str) -> Element {
    c.iq(
        &format!(
            "<iq type='get' id='s' to='upload.localhost'><request xmlns='{NS}' filename='{name}' size='{size}' content-type='{ctype}'/></iq>"
        ),
        "s",
    )
    .await
}

fn urls(slot: &Element) -> (String, String) {
    let s = slot.get_child("slot", NS).expect("a slot");
    (
        s.get_child("put", NS)
            .unwrap()
            .attr("url")
            .unwrap()
            .to_string(),
        s.get_child("get", NS)
            .unwrap()
            .attr("url")
            .unwrap()
            .to_string(),
    )
}

#[tokio::test]
async fn a_file_goes_up_and_comes_back() {
    let s = setup(|_| {}).await;
    s.ts.add_user("sharer", "pw").await;
    let mut c = Client::login(s.ts.plain_addr, "sharer", "pw", Some("r")).await;

    // Discovery: the service is listed, with its maximum.
    let items = c
        .iq("<iq type='get' id='i' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>", "i")
        .await;
    assert!(
        show(&items).contains("jid='upload.localhost'"),
        "{}",
        show(&items)
    );
    let info = c
        .iq("<iq type='get' id='d' to='upload.localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", "d")
        .await;
    let text = show(&info);
    assert!(text.contains(&format!("var='{NS}'")), "{text}");
    assert!(text.contains("<value>8388608</value>"), "{text}");

    // 3 MiB: more than any in-memory default, streamed both ways.
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let slot = request_slot(&mut c, "holiday photo.jpg", data.len(), "image/jpeg").await;
    let (put_url, get_url) = urls(&slot);
    assert!(get_url.ends_with("/holiday%20photo.jpg"), "{get_url}");
    assert!(
        get_url.starts_with(&format!("http://{}/upload/", s.http)),
        "{get_url}"
    );

    // CORS preflight, as a browser sends before the PUT.
    let pre = http(
        s.http,
        &format!("OPTIONS {} HTTP/1.1\r\nHost: x\r\nOrigin: https://web.example\r\nAccess-Control-Request-Method: PUT\r\nConnection: close\r\n\r\n", path_of(&put_url)),
        b"",
    )
    .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert!(pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("PUT"));

    // A forged signature, and the wrong type: refused.
    let forged = put_url.replace("&s=", "&s=0");
    assert_eq!(
        put(s.http, &forged, "image/jpeg", &data, data.len())
            .await
            .status,
        403
    );
    assert_eq!(
        put(s.http, &put_url, "text/html", &data, data.len())
            .await
            .status,
        400
    );
    // More than the slot said: 413 before a byte is stored.
    assert_eq!(
        put(s.http, &put_url, "image/jpeg", &data, data.len() + 1)
            .await
            .status,
        413
    );

    let up = put(s.http, &put_url, "image/jpeg", &data, data.len()).await;
    assert_eq!(up.status, 201, "{}", up.head);
    assert_eq!(
        up.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    // Once only.
    assert_eq!(
        put(s.http, &put_url, "image/jpeg", &data, data.len())
            .await
            .status,
        409
    );

    let down = get(s.http, &get_url).await;
    assert_eq!(down.status, 200, "{}", down.head);
    assert!(down.body == data, "the same bytes back");
    assert_eq!(down.header("content-type").as_deref(), Some("image/jpeg"));
    assert_eq!(
        down.header("content-disposition").as_deref(),
        Some("inline; filename*=UTF-8''holiday%20photo.jpg")
    );
    assert_eq!(
        down.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(
        down.header("access-control-allow-origin").as_deref(),
        Some("*")
    );

    // On disk: one file named by its token, nothing named by the client.
    let names: Vec<String> = std::fs::read_dir(s.files.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].len() == 32 && names[0].bytes().all(|b| b.is_ascii_hexdigit()));

    // A page that would run script downloads as an attachment instead.
    let html = b"<script>alert(1)</script>";
    let slot = request_slot(&mut c, "page.html", html.len(), "text/html").await;
    let (p, g) = urls(&slot);
    assert_eq!(
        put(s.http, &p, "text/html", html, html.len()).await.status,
        201
    );
    let r = get(s.http, &g).await;
    assert!(r
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    assert!(r
        .header("content-security-policy")
        .unwrap()
        .contains("sandbox"));
}

#[tokio::test]
async fn what_is_refused() {
    let s = setup(|c| c.upload.quota_per_user = 1000).await;
    s.ts.add_user("greedy", "pw").await;
    let mut c = Client::login(s.ts.plain_addr, "greedy", "pw", Some("r")).await;

    // Larger than max_file_size: not-acceptable with the maximum.
    let big = request_slot(
        &mut c,
        "big.bin",
        9 * 1024 * 1024,
        "application/octet-stream",
    )
    .await;
    assert_eq!(
        stanza_error(&big).as_deref(),
        Some("not-acceptable"),
        "{}",
        show(&big)
    );
    assert!(
        show(&big).contains("<max-file-size>8388608</max-file-size>"),
        "{}",
        show(&big)
    );
    // Bad sizes and names.
    for (name, size) in [
        ("a.txt", "0"),
        ("a.txt", "-5"),
        ("a.txt", "lots"),
        ("/", "10"),
    ] {
        let r = c
            .iq(&format!("<iq type='get' id='b' to='upload.localhost'><request xmlns='{NS}' filename='{name}' size='{size}'/></iq>"), "b")
            .await;
        assert_eq!(
            stanza_error(&r).as_deref(),
            Some("bad-request"),
            "{name} {size}"
        );
    }
    // The quota counts open slots: 600 fits, 600 more does not.
    let first = request_slot(&mut c, "one.bin", 600, "application/octet-stream").await;
    assert!(first.get_child("slot", NS).is_some(), "{}", show(&first));
    let second = request_slot(&mut c, "two.bin", 600, "application/octet-stream").await;
    assert_eq!(
        stanza_error(&second).as_deref(),
        Some("resource-constraint")
    );

    // A client's path never leaves the directory: its last component is
    // the name, and only tokens name files.
    let (put_url, get_url) = urls(&first);
    let sneaky = request_slot(&mut c, "..%2F..%2Fetc%2Fpasswd", 10, "text/plain").await;
    if let Some(slot) = sneaky.get_child("slot", NS) {
        let g = slot.get_child("get", NS).unwrap().attr("url").unwrap();
        assert!(!g.contains("/../"), "{g}");
    }
    for path in [
        "/upload/../../etc/passwd",
        "/upload/..%2F..%2Fetc/passwd",
        "/upload/notatoken/x",
    ] {
        let r = http(
            s.http,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        )
        .await;
        assert_eq!(r.status, 404, "{path}");
    }
    // Nothing is served before the upload.
    assert_eq!(get(s.http, &get_url).await.status, 404);

    // A correctly signed URL past its expiry: 403.
    let key =
        s.ts.store()
            .server_secret("upload-hmac", "unused")
            .await
            .unwrap();
    let path = path_of(&put_url);
    let token = path.split('/').nth(2).unwrap();
    let sig = waxwing::modules::upload::sign(
        key.as_bytes(),
        token,
        "one.bin",
        600,
        "application/octet-stream",
        1000,
    );
    let expired = format!("http://x/upload/{token}/one.bin?e=1000&s={sig}");
    assert_eq!(
        put(s.http, &expired, "application/octet-stream", &[0; 600], 600)
            .await
            .status,
        403
    );
    // The real one still works; fewer bytes than promised are refused.
    let short = put(s.http, &put_url, "application/octet-stream", &[0; 10], 10).await;
    assert_eq!(short.status, 400);
    assert_eq!(
        put(s.http, &put_url, "application/octet-stream", &[1; 600], 600)
            .await
            .status,
        201
    );
}

/// What the upload URL self-check ended with (polled until it is not
/// pending).
async fn self_check_outcome(ts: &TestServer) -> waxwing::web::self_check::UrlCheck {
    use waxwing::web::self_check::UrlCheck;
    let upload = ts
        .server()
        .features
        .get::<waxwing::modules::upload::Upload>()
        .expect("the upload feature runs");
    eventually("the upload URL self-check finishes", || async {
        upload.self_check().result() != UrlCheck::Pending
    })
    .await;
    upload.self_check().result()
}

/// One line of `ctl stats`.
fn stat(ts: &TestServer, key: &str) -> Option<String> {
    waxwing::admin::answer(ts.server(), waxwing::admin::Request::Stats)
        .into_iter()
        .find(|row| row[0] == key)
        .map(|row| row[1].clone())
}

#[tokio::test]
async fn the_upload_url_self_check_passes_when_the_url_reaches_us() {
    let s = setup(|_| {}).await;
    assert_eq!(
        self_check_outcome(&s.ts).await,
        waxwing::web::self_check::UrlCheck::Passed
    );
    // ctl stats shows it.
    assert_eq!(stat(&s.ts, "upload_url_check").as_deref(), Some("ok"));
}

#[tokio::test]
async fn the_upload_url_self_check_names_what_is_wrong() {
    use waxwing::web::self_check::UrlCheck;
    // Nothing listens where public_url points.
    let closed = free_port();
    let s = setup(move |c| {
        c.http.public_url = format!("http://127.0.0.1:{closed}");
        c.upload.self_check_for = 0;
    })
    .await;
    match self_check_outcome(&s.ts).await {
        UrlCheck::Failed(why) => assert!(why.contains("cannot connect"), "{why}"),
        other => panic!("{other:?}"),
    }
    let shown = stat(&s.ts, "upload_url_check").unwrap();
    assert!(shown.starts_with("failed: cannot connect"), "{shown}");

    // Something else answers there, 200 to anything (a catch-all page).
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = other.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                    .await;
            });
        }
    });
    let s = setup(move |c| {
        c.http.public_url = format!("http://{other_addr}");
        c.upload.self_check_for = 0;
    })
    .await;
    match self_check_outcome(&s.ts).await {
        UrlCheck::Failed(why) => assert!(why.contains("something other"), "{why}"),
        other => panic!("{other:?}"),
    }

    // Our listener, but over HTTPS with the self-signed development
    // certificate: clients would refuse it, and so does the check.
    let port = free_port();
    let s = setup(move |c| {
        c.http.listen_tls = vec![format!("127.0.0.1:{port}").parse().unwrap()];
        c.http.public_url = format!("https://localhost:{port}");
        c.upload.self_check_for = 0;
    })
    .await;
    match self_check_outcome(&s.ts).await {
        UrlCheck::Failed(why) => assert!(why.contains("TLS with localhost failed"), "{why}"),
        other => panic!("{other:?}"),
    }
}
