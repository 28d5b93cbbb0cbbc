//! BOSH (XEP-0124/XEP-0206) through the real HTTP listener, with a small
//! HTTP/1.1 client on plain TCP sockets (one connection per request, as a
//! browser's pool may do): session creation, SASL PLAIN and SCRAM, the
//! restart, bind, chat and presence with a TCP user, the rid window and
//! retransmission, hold and wait, inactivity, pause-free termination,
//! oversized bodies and stanzas, and stream management across sessions.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use waxwing::config::Config;
use waxwing::modules::stream_management::StreamManagementFeature;
use waxwing::sasl::{ScramClient, ScramHash};
use waxwing::xml::{Element, NS_CLIENT, NS_STREAMS};

const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const NS_SM: &str = "urn:xmpp:sm:3";

async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
        tweak(c)
    })
    .await
}

fn http_addr(ts: &TestServer) -> SocketAddr {
    ts.running.as_ref().unwrap().web.http[0]
}

/// An HTTP response: status, headers (lower-cased), body.
struct Http {
    status: u16,
    headers: String,
    body: String,
}

/// One request on a connection of its own.
async fn http(addr: SocketAddr, method: &str, body: &str) -> Http {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    exchange(tcp, method, body).await
}

/// One request over HTTPS (the server's development certificate is not
/// checked: what is under test is the server).
async fn https(addr: SocketAddr, method: &str, body: &str) -> Http {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(insecure_client_config());
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    exchange(tls, method, body).await
}

async fn exchange<S>(mut s: S, method: &str, body: &str) -> Http
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(
        format!(
            "{method} /http-bind HTTP/1.1\r\nHost: localhost\r\nOrigin: http://elsewhere.example\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    // A TLS peer may end without close_notify: what was read counts.
    let _ = tokio::time::timeout(Duration::from_secs(70), s.read_to_end(&mut out))
        .await
        .expect("a response");
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let status = head[9..12].parse().unwrap();
    Http {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// A response's `<body/>` (200 and text/xml, or the test fails).
fn parse_body(r: &Http) -> Element {
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.contains("content-type: text/xml; charset=utf-8"),
        "{}",
        r.headers
    );
    assert!(r.headers.contains("access-control-allow-origin: *"));
    match standalone(&r.body).as_slice() {
        [e] if e.is("body", NS_HTTPBIND) => e.clone(),
        other => panic!("not one body: {} element(s) in {}", other.len(), r.body),
    }
}

fn condition(b: &Element) -> Option<&str> {
    assert_eq!(b.attr("type"), Some("terminate"), "{}", show(b));
    b.attr("condition")
}

/// A BOSH client: keeps the requests it sent in order and collects the
/// elements their responses carry.
struct Bosh {
    addr: SocketAddr,
    sid: String,
    rid: u64,
    pending: VecDeque<JoinHandle<Http>>,
    inbox: VecDeque<Element>,
}

impl Bosh {
    /// Creates a session (hold 1, the given wait); returns the client and
    /// the creation response.
    async fn create(addr: SocketAddr, wait: u64) -> (Bosh, Element) {
        Self::create_with(addr, &format!("wait='{wait}' hold='1'")).await
    }

    async fn create_with(addr: SocketAddr, attrs: &str) -> (Bosh, Element) {
        let rid = 1_000_000 + rand_rid();
        let r = http(
            addr,
            "POST",
            &format!(
                "<body rid='{rid}' to='localhost' {attrs} ver='1.11' xml:lang='en' xmpp:version='1.0' \
                 xmlns='{NS_HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'/>"
            ),
        )
        .await;
        let b = parse_body(&r);
        let sid = b.attr("sid").expect("a sid").to_string();
        let c = Bosh {
            addr,
            sid,
            rid,
            pending: VecDeque::new(),
            inbox: VecDeque::new(),
        };
        (c, b)
    }

    fn wrap(&self, rid: u64, attrs: &str, payload: &str) -> String {
        format!(
            "<body rid='{rid}' sid='{}' {attrs} xmlns='{NS_HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'>{payload}</body>",
            self.sid
        )
    }

    /// Sends a request without waiting for its response (at most two in
    /// flight: hold + 1).
    async fn send_attrs(&mut self, attrs: &str, payload: &str) {
        while self.pending.len() >= 2 {
            self.take_oldest().await;
        }
        self.rid += 1;
        let (addr, body) = (self.addr, self.wrap(self.rid, attrs, payload));
        self.pending
            .push_back(tokio::spawn(async move { http(addr, "POST", &body).await }));
    }

    async fn send(&mut self, payload: &str) {
        self.send_attrs("", payload).await
    }

    /// The oldest outstanding response's body.
    async fn next_body(&mut self) -> Element {
        let h = self.pending.pop_front().expect("a request in flight");
        let r = tokio::time::timeout(Duration::from_secs(70), h)
            .await
            .expect("answered")
            .unwrap();
        parse_body(&r)
    }

    async fn take_oldest(&mut self) {
        let b = self.next_body().await;
        assert_ne!(b.attr("type"), Some("terminate"), "{}", show(&b));
        self.inbox.extend(b.children().cloned());
    }

    /// The next element from the server, polling as a client does.
    async fn next(&mut self) -> Element {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(e) = self.inbox.pop_front() {
                return e;
            }
            assert!(Instant::now() < deadline, "nothing came within {TIMEOUT:?}");
            if self.pending.is_empty() {
                self.send("").await;
            }
            self.take_oldest().await;
        }
    }

    async fn next_named(&mut self, name: &str) -> Element {
        loop {
            let e = self.next().await;
            if e.name() == name {
                return e;
            }
        }
    }

    /// The features after a restart.
    async fn restart(&mut self) -> Element {
        self.send_attrs("to='localhost' xml:lang='en' xmpp:restart='true'", "")
            .await;
        let f = self.next().await;
        assert!(f.is("features", NS_STREAMS), "{}", show(&f));
        f
    }

    async fn bind(&mut self, resource: &str) -> String {
        self.restart().await;
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let r = self.next().await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
        r.get_child("bind", NS_BIND)
            .and_then(|b| b.children().find(|c| c.name() == "jid"))
            .map(|j| j.text())
            .expect("a bound JID")
    }

    /// Creates a session, logs in with PLAIN and binds.
    async fn login(addr: SocketAddr, user: &str, resource: &str, wait: u64) -> (Bosh, String) {
        let (mut c, created) = Self::create(addr, wait).await;
        assert!(created.get_child("features", NS_STREAMS).is_some());
        let auth = b64(format!("\0{user}\0pw").as_bytes());
        c.send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{auth}</auth>"
        ))
        .await;
        let s = c.next().await;
        assert!(s.is("success", NS_SASL), "{}", show(&s));
        let jid = c.bind(resource).await;
        (c, jid)
    }
}

/// The next presence from `from` (the client's own is skipped).
async fn presence_from(c: &mut Client, from: &str) -> Element {
    loop {
        let p = c.next_named("presence").await;
        if p.attr("from") == Some(from) {
            return p;
        }
    }
}

fn rand_rid() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn body_text(e: &Element) -> String {
    e.get_child("body", NS_CLIENT)
        .map(|b| b.text())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_bosh_user_logs_in_and_chats_with_a_tcp_user() {
    let ts = server_with(|_| {}).await;
    ts.add_user("webby", "pw").await;
    ts.add_user("tcpy", "pw").await;
    let addr = http_addr(&ts);

    // CORS preflight from a page on another origin.
    let pre = http(addr, "OPTIONS", "").await;
    assert_eq!(pre.status, 204);
    assert!(pre.headers.contains("access-control-allow-origin: *"));
    assert!(pre
        .headers
        .contains("access-control-allow-methods: post, options"));

    // The creation response: the session's terms and the features.
    let (mut c, created) = Bosh::create(addr, 30).await;
    assert_eq!(c.sid.len(), 32, "{}", show(&created));
    assert!(c.sid.bytes().all(|b| b.is_ascii_hexdigit()));
    for (k, v) in [
        ("wait", "30"),
        ("hold", "1"),
        ("requests", "2"),
        ("inactivity", "60"),
        ("maxpause", "120"),
        ("polling", "2"),
        ("ver", "1.11"),
        ("from", "localhost"),
        ("xmpp:version", "1.0"),
    ] {
        assert_eq!(created.attr(k), Some(v), "{k}: {}", show(&created));
    }
    assert!(created.attr("authid").is_some());
    let features = created.get_child("features", NS_STREAMS).expect("features");
    let mechs = features.get_child("mechanisms", NS_SASL).unwrap();
    assert!(mechs.children().any(|m| m.text() == "PLAIN"));
    assert!(features
        .get_child("starttls", "urn:ietf:params:xml:ns:xmpp-tls")
        .is_none());

    // PLAIN, restart, bind.
    let auth = b64(b"\0webby\0pw");
    c.send(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{auth}</auth>"
    ))
    .await;
    assert!(c.next().await.is("success", NS_SASL));
    let jid = c.bind("browser").await;
    assert_eq!(jid, "webby@localhost/browser");

    let mut tcp = Client::login(ts.plain_addr, "tcpy", "pw", Some("desk")).await;
    // Available, and directed presence seen by the TCP user.
    c.send("<presence xmlns='jabber:client'/><presence xmlns='jabber:client' to='tcpy@localhost/desk'/>")
        .await;
    let p = presence_from(&mut tcp, "webby@localhost/browser").await;
    assert_eq!(p.attr("type"), None);

    // TCP → BOSH: carried by the held request.
    tcp.send_str("<message to='webby@localhost/browser' type='chat' id='m1'><body>hello browser</body></message>")
        .await;
    let m = c.next_named("message").await;
    assert_eq!(body_text(&m), "hello browser");
    assert_eq!(m.attr("from"), Some("tcpy@localhost/desk"));

    // BOSH → TCP.
    c.send("<message xmlns='jabber:client' to='tcpy@localhost/desk' type='chat' id='m2'><body>hello desk</body></message>")
        .await;
    let m = tcp.next_named("message").await;
    assert_eq!(body_text(&m), "hello desk");
    assert_eq!(m.attr("from"), Some("webby@localhost/browser"));

    // An IQ round trip.
    c.send("<iq xmlns='jabber:client' type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let r = c.next_named("iq").await;
    assert_eq!(r.attr("id"), Some("p1"));
    assert_eq!(r.attr("type"), Some("result"));

    // The client terminates (XEP-0124 §11) with its unavailable presence:
    // answered with a terminate; the TCP user sees it go.
    while !c.pending.is_empty() {
        c.take_oldest().await;
    }
    c.send_attrs(
        "type='terminate'",
        "<presence xmlns='jabber:client' type='unavailable'/>",
    )
    .await;
    let end = c.next_body().await;
    assert_eq!(condition(&end), None, "{}", show(&end));
    let gone = presence_from(&mut tcp, "webby@localhost/browser").await;
    assert_eq!(gone.attr("type"), Some("unavailable"), "{}", show(&gone));
    eventually("the BOSH session is gone", || async {
        ts.server().sessions.count() == 1
    })
    .await;
    // The sid is no more.
    c.send("").await;
    assert_eq!(condition(&c.next_body().await), Some("item-not-found"));
}

#[tokio::test]
async fn scram_over_bosh() {
    let ts = server_with(|_| {}).await;
    ts.add_user("scrammy", "pw").await;
    let (mut c, created) = Bosh::create(http_addr(&ts), 30).await;
    let mechs = created
        .get_child("features", NS_STREAMS)
        .and_then(|f| f.get_child("mechanisms", NS_SASL))
        .unwrap();
    assert!(
        !mechs.children().any(|m| m.text().ends_with("-PLUS")),
        "no channel binding over BOSH: {}",
        show(mechs)
    );
    let mut scram = ScramClient::new(ScramHash::Sha256, "scrammy", "pw", None);
    c.send(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{}</auth>",
        b64(&scram.client_first())
    ))
    .await;
    let challenge = c.next().await;
    assert!(challenge.is("challenge", NS_SASL), "{}", show(&challenge));
    let fin = scram
        .handle_server_first(&unb64(&challenge.text()))
        .unwrap();
    c.send(&format!(
        "<response xmlns='{NS_SASL}'>{}</response>",
        b64(&fin)
    ))
    .await;
    let ok = c.next().await;
    assert!(ok.is("success", NS_SASL), "{}", show(&ok));
    scram.verify_server_final(&unb64(&ok.text())).unwrap();
    assert_eq!(c.bind("r").await, "scrammy@localhost/r");
}

#[tokio::test]
async fn rids_in_order_retransmission_and_the_window() {
    let ts = server_with(|_| {}).await;
    ts.add_user("ridley", "pw").await;
    let addr = http_addr(&ts);
    let (mut c, _) = Bosh::login(addr, "ridley", "r", 30).await;
    while !c.pending.is_empty() {
        c.take_oldest().await;
    }

    // Two requests out of order: rid+2 waits for rid+1, and the IQs are
    // answered in rid order.
    let (r1, r2) = (c.rid + 1, c.rid + 2);
    let ping = |id: &str| {
        format!("<iq xmlns='jabber:client' type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    };
    let second = c.wrap(r2, "", &ping("second"));
    // rid+2 sent twice: the server keeps the newer copy waiting for rid+1
    // and answers the older at once with a recoverable error (§14.3) —
    // which also tells us rid+2 is there before rid+1 is sent.
    let (s1, s2) = (second.clone(), second);
    let mut a = tokio::spawn(async move { http(addr, "POST", &s1).await });
    let mut b = tokio::spawn(async move { http(addr, "POST", &s2).await });
    let (older, late) = tokio::select! {
        r = &mut a => (r.unwrap(), b),
        r = &mut b => (r.unwrap(), a),
    };
    assert_eq!(
        parse_body(&older).attr("type"),
        Some("error"),
        "{}",
        older.body
    );
    assert!(!late.is_finished(), "rid+2 waits for rid+1");
    let first_body = c.wrap(r1, "", &ping("first"));
    let first = http(addr, "POST", &first_body).await;
    let first_el = parse_body(&first);
    let late = late.await.unwrap();
    let late_el = parse_body(&late);
    // The answers come in rid order, whichever response carries them
    // (the first may go out empty when the second is held past hold).
    let all: Vec<String> = first_el
        .children()
        .chain(late_el.children())
        .filter_map(|e| e.attr("id").map(String::from))
        .collect();
    assert_eq!(all, ["first", "second"]);
    c.rid = r2;

    // A retransmission of an answered rid: the identical response.
    let again = http(addr, "POST", &first_body).await;
    assert_eq!(again.body, first.body);

    // A rid replayed beyond the kept responses: item-not-found, and the
    // session is over.
    let old = c.wrap(r1 - 5, "", "");
    assert_eq!(
        condition(&parse_body(&http(addr, "POST", &old).await)),
        Some("item-not-found")
    );
    let after = c.wrap(r2 + 1, "", "");
    assert_eq!(
        condition(&parse_body(&http(addr, "POST", &after).await)),
        Some("item-not-found")
    );

    // A rid beyond the window (requests = 2) on a fresh session.
    let (c, _) = Bosh::create(addr, 30).await;
    let far = c.wrap(c.rid + 3, "", "");
    assert_eq!(
        condition(&parse_body(&http(addr, "POST", &far).await)),
        Some("item-not-found")
    );
    // …which ended it.
    let next = c.wrap(c.rid + 1, "", "");
    assert_eq!(
        condition(&parse_body(&http(addr, "POST", &next).await)),
        Some("item-not-found")
    );

    // An unknown sid; a body that is not a wrapper.
    let unknown =
        format!("<body rid='5' sid='00000000000000000000000000000000' xmlns='{NS_HTTPBIND}'/>");
    assert_eq!(
        condition(&parse_body(&http(addr, "POST", &unknown).await)),
        Some("item-not-found")
    );
    assert_eq!(
        condition(&parse_body(&http(addr, "POST", "<html/>").await)),
        Some("bad-request")
    );
    still_serves_user(&ts, "ridley").await;
}

#[tokio::test]
async fn hold_and_wait() {
    let ts = server_with(|c| c.http.bosh_max_wait = 30).await;
    ts.add_user("holder", "pw").await;
    ts.add_user("sender", "pw").await;
    let addr = http_addr(&ts);

    // A client asking a longer wait gets the cap.
    let (_, created) = Bosh::create(addr, 600).await;
    assert_eq!(created.attr("wait"), Some("30"));

    let (mut c, _) = Bosh::login(addr, "holder", "r", 30).await;
    while !c.pending.is_empty() {
        c.take_oldest().await;
    }
    // A held request is answered as soon as a stanza comes, well before
    // its wait.
    c.send("").await;
    let mut tcp = Client::login(ts.plain_addr, "sender", "pw", Some("d")).await;
    let started = Instant::now();
    tcp.send_str("<message to='holder@localhost/r' id='h'><body>now</body></message>")
        .await;
    let b = c.next_body().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let m = b
        .children()
        .find(|e| e.name() == "message")
        .expect("the message");
    assert_eq!(body_text(m), "now");

    // With two held (hold = 1), the second answers the first at once.
    c.send("").await;
    let started = Instant::now();
    c.send("").await;
    let first = c.next_body().await;
    assert_eq!(first.children().count(), 0, "{}", show(&first));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not before its wait"
    );

    // A session with wait = 1: its held request comes back empty.
    let (mut short, _) = Bosh::login(addr, "holder", "short", 1).await;
    while !short.pending.is_empty() {
        short.take_oldest().await;
    }
    short.send("").await;
    let started = Instant::now();
    let empty = short.next_body().await;
    assert_eq!(empty.children().count(), 0, "{}", show(&empty));
    assert_eq!(empty.attr("type"), None);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // A polling session (hold = 0): two empty polls inside `polling`
    // seconds, the first answered empty, break the rules.
    let (mut poll, created) = Bosh::create_with(addr, "wait='10' hold='0'").await;
    assert_eq!(created.attr("requests"), Some("1"));
    let body = poll.wrap(poll.rid + 1, "", "");
    let _ = parse_body(&http(addr, "POST", &body).await);
    poll.rid += 1;
    let body = poll.wrap(poll.rid + 1, "", "");
    let r = parse_body(&http(addr, "POST", &body).await);
    assert_eq!(condition(&r), Some("policy-violation"));
}

#[tokio::test]
async fn inactivity_ends_the_session_as_a_dropped_connection() {
    let ts = server_with(|c| c.http.bosh_inactivity = 2).await;
    ts.add_user("sleepy", "pw").await;
    ts.add_user("watcher", "pw").await;
    let addr = http_addr(&ts);
    let mut tcp = Client::login(ts.plain_addr, "watcher", "pw", Some("d")).await;
    let (mut c, _) = Bosh::login(addr, "sleepy", "r", 1).await;
    assert_eq!(Bosh::create(addr, 1).await.1.attr("inactivity"), Some("2"));
    c.send("<presence xmlns='jabber:client'/><presence xmlns='jabber:client' to='watcher@localhost/d'/>")
        .await;
    let p = presence_from(&mut tcp, "sleepy@localhost/r").await;
    assert_eq!(p.attr("type"), None);
    // The client goes quiet: after its last request's wait and the
    // inactivity time, the session ends as a dropped connection does.
    while !c.pending.is_empty() {
        c.take_oldest().await;
    }
    let started = Instant::now();
    let gone = presence_from(&mut tcp, "sleepy@localhost/r").await;
    assert_eq!(gone.attr("type"), Some("unavailable"), "{}", show(&gone));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    c.send("").await;
    assert_eq!(condition(&c.next_body().await), Some("item-not-found"));
}

#[tokio::test]
async fn oversized_bodies_and_stanzas() {
    let ts = server_with(|c| c.http.bosh_max_body_bytes = 64 * 1024).await;
    ts.add_user("big", "pw").await;
    ts.add_user("canary", "pw").await;
    let addr = http_addr(&ts);
    let (bystander, _) = Bosh::login(addr, "canary", "bystander", 30).await;

    // A body over bosh_max_body_bytes: policy-violation, session over.
    let (mut c, _) = Bosh::login(addr, "big", "a", 30).await;
    while !c.pending.is_empty() {
        c.take_oldest().await;
    }
    let huge = "x".repeat(100 * 1024);
    c.send(&format!(
        "<message xmlns='jabber:client' to='canary@localhost'><body>{huge}</body></message>"
    ))
    .await;
    assert_eq!(condition(&c.next_body().await), Some("policy-violation"));
    c.send("").await;
    assert_eq!(condition(&c.next_body().await), Some("item-not-found"));

    // Within the body bound but a stanza over max_stanza_size: the stream
    // error TCP would get, inside a remote-stream-error terminate.
    let ts2 = server_with(|c| {
        c.limits.max_stanza_size = 16 * 1024;
        c.http.bosh_max_body_bytes = 64 * 1024;
    })
    .await;
    ts2.add_user("big", "pw").await;
    ts2.add_user("canary", "pw").await;
    let (mut c, _) = Bosh::login(http_addr(&ts2), "big", "b", 30).await;
    while !c.pending.is_empty() {
        c.take_oldest().await;
    }
    let big = "x".repeat(20 * 1024);
    c.send(&format!(
        "<message xmlns='jabber:client' to='canary@localhost'><body>{big}</body></message>"
    ))
    .await;
    let t = c.next_body().await;
    assert_eq!(condition(&t), Some("remote-stream-error"), "{}", show(&t));
    let e = t.get_child("error", NS_STREAMS).expect("the stream error");
    assert!(
        e.get_child("policy-violation", NS_STREAM_ERRORS).is_some(),
        "{}",
        show(e)
    );

    // Half an element: not-well-formed.
    let (mut c, _) = Bosh::login(http_addr(&ts2), "big", "c", 30).await;
    while !c.pending.is_empty() {
        c.take_oldest().await;
    }
    c.send("<message xmlns='jabber:client'><body>").await;
    let t = c.next_body().await;
    assert_eq!(condition(&t), Some("remote-stream-error"), "{}", show(&t));
    assert!(t
        .get_child("error", NS_STREAMS)
        .and_then(|e| e.get_child("not-well-formed", NS_STREAM_ERRORS))
        .is_some());

    // Everyone else unharmed.
    still_serves(&ts).await;
    still_serves(&ts2).await;
    let mut bystander = bystander;
    bystander
        .send("<iq xmlns='jabber:client' type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    assert_eq!(
        bystander.next_named("iq").await.attr("type"),
        Some("result")
    );
}

#[tokio::test]
async fn stream_management_resumes_after_inactivity() {
    let ts = server_with(|c| c.http.bosh_inactivity = 1).await;
    ts.add_user("roamer", "pw").await;
    ts.add_user("sender", "pw").await;
    let addr = http_addr(&ts);
    let (mut c, _) = Bosh::login(addr, "roamer", "phone", 1).await;
    c.send(&format!("<enable xmlns='{NS_SM}' resume='true'/>"))
        .await;
    let enabled = c.next_named("enabled").await;
    let id = enabled.attr("id").unwrap().to_string();
    c.send("<presence xmlns='jabber:client'/>").await;
    while !c.pending.is_empty() {
        c.take_oldest().await;
    }
    // Quiet: the session ends by inactivity and waits for resumption.
    eventually("the BOSH session waits for resumption", || async {
        ts.server()
            .features
            .get::<StreamManagementFeature>()
            .map_or(0, |f| f.parked())
            == 1
    })
    .await;
    let mut tcp = Client::login(ts.plain_addr, "sender", "pw", Some("desk")).await;
    tcp.send_str(
        "<message to='roamer@localhost/phone' type='chat' id='x'><body>while away</body></message>",
    )
    .await;
    tcp.barrier().await;

    // A new BOSH session resumes it: the message arrives.
    let (mut again, _) = Bosh::create(addr, 1).await;
    again
        .send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>",
            b64(b"\0roamer\0pw")
        ))
        .await;
    assert!(again.next().await.is("success", NS_SASL));
    again.restart().await;
    again
        .send(&format!("<resume xmlns='{NS_SM}' previd='{id}' h='0'/>"))
        .await;
    let resumed = again.next_named("resumed").await;
    assert_eq!(resumed.attr("previd"), Some(id.as_str()));
    let m = again.next_named("message").await;
    assert_eq!(body_text(&m), "while away");
}

#[tokio::test]
async fn host_meta_lists_bosh() {
    let ts = server_with(|_| {}).await;
    let addr = http_addr(&ts);
    let host = format!("localhost:{}", addr.port());
    for path in ["/.well-known/host-meta", "/.well-known/host-meta.json"] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        assert!(out.contains("urn:xmpp:alt-connections:xbosh"), "{out}");
        assert!(out.contains(&format!("http://{host}/http-bind")), "{out}");
        assert!(out.contains("urn:xmpp:alt-connections:websocket"), "{out}");
    }
}

#[tokio::test]
async fn server_shutdown_ends_bosh_sessions_at_once() {
    let mut ts = server_with(|_| {}).await;
    ts.add_user("held", "pw").await;
    ts.add_user("idle", "pw").await;
    let addr = http_addr(&ts);
    // One session with a request held, one with none.
    let (mut held, _) = Bosh::login(addr, "held", "r", 60).await;
    while !held.pending.is_empty() {
        held.take_oldest().await;
    }
    held.send("").await;
    let (mut idle, _) = Bosh::login(addr, "idle", "r", 60).await;
    idle.send("<presence xmlns='jabber:client'/>").await;
    while !idle.pending.is_empty() {
        idle.take_oldest().await;
    }
    let started = Instant::now();
    let stop = ts.stop();
    let (_, t) = tokio::join!(stop, held.next_body());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(condition(&t), Some("remote-stream-error"), "{}", show(&t));
    assert!(t
        .get_child("error", NS_STREAMS)
        .and_then(|e| e.get_child("system-shutdown", NS_STREAM_ERRORS))
        .is_some());
}

#[tokio::test]
async fn encryption_is_the_http_connections() {
    let ts = server_with(|c| {
        c.http.plain_is_secure = "never".into();
        c.http.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
    })
    .await;
    ts.add_user("secure", "pw").await;
    let create = |rid: u64| {
        format!(
            "<body rid='{rid}' to='localhost' wait='5' hold='1' ver='1.11' xmpp:version='1.0' \
             xmlns='{NS_HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'/>"
        )
    };
    // Plain HTTP that does not count as encrypted: no SASL offered.
    let plain = parse_body(&http(http_addr(&ts), "POST", &create(10)).await);
    let f = plain.get_child("features", NS_STREAMS).expect("features");
    assert!(f.get_child("mechanisms", NS_SASL).is_none(), "{}", show(f));

    // HTTPS: SASL offered, and a login goes through.
    let addr = ts.running.as_ref().unwrap().web.https[0];
    let secure = parse_body(&https(addr, "POST", &create(20)).await);
    let sid = secure.attr("sid").unwrap().to_string();
    let mechs = secure
        .get_child("features", NS_STREAMS)
        .and_then(|f| f.get_child("mechanisms", NS_SASL))
        .expect("SASL over HTTPS");
    assert!(mechs.children().any(|m| m.text() == "PLAIN"));
    let auth = b64(b"\0secure\0pw");
    let r = parse_body(
        &https(
            addr,
            "POST",
            &format!(
                "<body rid='21' sid='{sid}' xmlns='{NS_HTTPBIND}'><auth xmlns='{NS_SASL}' mechanism='PLAIN'>{auth}</auth></body>"
            ),
        )
        .await,
    );
    assert!(r.get_child("success", NS_SASL).is_some(), "{}", show(&r));
}

#[tokio::test]
async fn pause_answers_at_once_and_sets_the_next_gap() {
    let ts = server_with(|c| c.http.bosh_max_pause = 5).await;
    ts.add_user("pauser", "pw").await;
    ts.add_user("watcher", "pw").await;
    let addr = http_addr(&ts);
    let mut tcp = Client::login(ts.plain_addr, "watcher", "pw", Some("d")).await;
    let (mut c, _) = Bosh::login(addr, "pauser", "r", 30).await;
    c.send("<presence xmlns='jabber:client'/><presence xmlns='jabber:client' to='watcher@localhost/d'/>")
        .await;
    presence_from(&mut tcp, "pauser@localhost/r").await;
    while !c.pending.is_empty() {
        c.take_oldest().await;
    }
    // Held requests and the pause itself are answered at once (their
    // wait is 30 s); the session then lives for the pause (1 s here,
    // not the 60 s inactivity) and ends as a dropped connection.
    c.send("").await;
    let started = Instant::now();
    c.send_attrs("pause='1'", "").await;
    c.take_oldest().await;
    c.take_oldest().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let gone = presence_from(&mut tcp, "pauser@localhost/r").await;
    assert_eq!(gone.attr("type"), Some("unavailable"), "{}", show(&gone));
    assert!(started.elapsed() < Duration::from_secs(20));

    // A pause over maxpause breaks the rules.
    let (mut c, _) = Bosh::login(addr, "pauser", "s", 30).await;
    while !c.pending.is_empty() {
        c.take_oldest().await;
    }
    c.send_attrs("pause='6'", "").await;
    assert_eq!(condition(&c.next_body().await), Some("policy-violation"));
}

#[tokio::test]
async fn sessions_count_against_the_c2s_caps() {
    let ts = server_with(|c| c.c2s.max_connections_per_ip = 2).await;
    let addr = http_addr(&ts);
    let (_a, _) = Bosh::create(addr, 5).await;
    let (_b, _) = Bosh::create(addr, 5).await;
    // A third session from the same address: refused, as a third TCP
    // connection would be.
    let third = parse_body(
        &http(
            addr,
            "POST",
            &format!(
                "<body rid='7' to='localhost' wait='5' hold='1' xmpp:version='1.0' \
                 xmlns='{NS_HTTPBIND}' xmlns:xmpp='urn:xmpp:xbosh'/>"
            ),
        )
        .await,
    );
    assert_eq!(condition(&third), Some("remote-connection-failed"));
    // Neither can TCP get in now; the listener itself goes on.
    let mut tcp = Client::connect(ts.plain_addr).await;
    tcp.expect_closed().await;
}

#[tokio::test]
async fn a_body_cannot_smuggle_a_second_body_or_the_stream_end() {
    let ts = server_with(|_| {}).await;
    ts.add_user("sly", "pw").await;
    ts.add_user("canary", "pw").await;
    let addr = http_addr(&ts);
    for payload in [
        "<presence xmlns='jabber:client'/></body><body xmlns='http://jabber.org/protocol/httpbind'><presence xmlns='jabber:client'/>",
        "</stream:stream>",
        "<!-- a comment -->",
    ] {
        let (mut c, _) = Bosh::login(addr, "sly", "r", 30).await;
        while !c.pending.is_empty() {
            c.take_oldest().await;
        }
        c.send(payload).await;
        let t = c.next_body().await;
        assert_eq!(condition(&t), Some("remote-stream-error"), "{payload}: {}", show(&t));
        c.send("").await;
        assert_eq!(condition(&c.next_body().await), Some("item-not-found"));
    }
    still_serves(&ts).await;
}
