//! Network resource attacks (audit item 6, and item 8's dialback point):
//! a client that stops reading, queues filled with large stanzas, an
//! unauthenticated s2s stream kept alive with whitespace, a flood of
//! `db:result` requests making us dial out, and a `db:result` request on
//! our own outgoing stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;
use crate::rss_kib;
use waxwing::xml::{Element, ParserLimits, StreamEvent, StreamParser, NS_CLIENT};

const NS_DIALBACK: &str = "jabber:server:dialback";
/// A message's payload: 64 KiB of text directly inside it, not in a
/// child element, so that the error a bounce carries back (the original's
/// child elements) stays small and the flooder's own stream never fills.
const PAYLOAD: usize = 64 * 1024;

async fn server_with(tweak: impl FnOnce(&mut waxwing::config::Config)) -> TestServer {
    let ts = TestServer::start_with(tweak).await;
    for u in ["canary", "victim", "flooder"] {
        ts.add_user(u, "pw").await;
    }
    ts
}

/// Sends `count` large messages to `to`, then a ping to the server, and
/// reads up to its answer: returns the stanza error conditions of the
/// bounces that came back meanwhile (routing is in order, so every bounce
/// comes before the pong).
async fn flood(flooder: &mut Client, to: &str, count: usize) -> Vec<String> {
    let pad = "x".repeat(PAYLOAD);
    for i in 0..count {
        flooder
            .send_str(&format!(
                "<message to='{to}' type='headline' id='f{i}'>{pad}<body>{i}</body></message>"
            ))
            .await;
    }
    flooder
        .send_str("<iq type='get' id='done' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    let mut errors = Vec::new();
    loop {
        let e = flooder.next_element().await;
        if e.is("iq", NS_CLIENT) && e.attr("id") == Some("done") {
            return errors;
        }
        if e.name() == "message" && e.attr("type") == Some("error") {
            errors.push(stanza_error(&e).unwrap_or_default());
        }
    }
}

/// Waits (bounded) until `pred` holds, checking every few milliseconds.
async fn eventually(what: &str, pred: impl Fn() -> bool) {
    let waited = tokio::time::timeout(TIMEOUT, async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// A client that stops reading while another floods it is disconnected
/// once a write to it has waited `write_timeout`; the flood costs bounded
/// memory and everyone else goes on being served.
#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let ts = server_with(|c| {
        c.limits.write_timeout = 1;
    })
    .await;
    let mut victim = Client::login(ts.plain_addr, "victim", "pw", Some("r")).await;
    // The victim's login is all read; from here on it reads nothing.
    let pong = victim
        .iq(
            "<iq type='get' id='v' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "v",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    let victim_jid = jid::FullJid::new("victim@localhost/r").unwrap();
    let mut flooder = Client::login(ts.plain_addr, "flooder", "pw", Some("f")).await;
    let before = rss_kib();
    let started = Instant::now();
    // 24 MiB: far more than the socket buffers take.
    flood(&mut flooder, "victim@localhost/r", 384).await;
    let server = ts.server().clone();
    eventually("the victim's session to end", || {
        !server.sessions.is_bound(&victim_jid)
    })
    .await;
    let took = started.elapsed();
    // Reading now finds what the kernel had buffered, then the end.
    victim.expect_closed().await;
    let grown = rss_kib().saturating_sub(before);
    eprintln!("victim cut off after {took:?}; RSS grew by {grown} KiB");
    // The session queue holds at most session_queue_bytes (2 MiB); without
    // a write timeout and a byte bound the flood stays queued (~20 MiB).
    assert!(grown < 12 * 1024, "RSS grew by {grown} KiB");
    still_serves(&ts).await;
    // The flooder itself was never held up.
    let pong = flooder
        .iq(
            "<iq type='get' id='again' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "again",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
}

/// A session's queue is bounded by bytes, not only by count: with room for
/// 100,000 stanzas but 256 KiB, large stanzas for a session that does not
/// read bounce with `resource-constraint` once it is full.
#[tokio::test]
async fn a_queue_full_of_bytes_bounces_with_resource_constraint() {
    let ts = server_with(|c| {
        c.limits.session_queue = 100_000;
        c.limits.session_queue_bytes = 256 * 1024;
        // Long enough not to end the session during the test.
        c.limits.write_timeout = 120;
    })
    .await;
    let _victim = Client::login(ts.plain_addr, "victim", "pw", Some("r")).await;
    let mut flooder = Client::login(ts.plain_addr, "flooder", "pw", Some("f")).await;
    let before = rss_kib();
    let errors = flood(&mut flooder, "victim@localhost/r", 384).await;
    let grown = rss_kib().saturating_sub(before);
    eprintln!("{} bounces; RSS grew by {grown} KiB", errors.len());
    assert!(!errors.is_empty(), "nothing bounced: the queue took it all");
    assert!(
        errors.iter().all(|e| e == "resource-constraint"),
        "{errors:?}"
    );
    assert!(grown < 12 * 1024, "RSS grew by {grown} KiB");
    still_serves(&ts).await;
}

const S2S_OPEN: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' from='peer.test' to='localhost' version='1.0'>";

/// An incoming s2s stream that authenticates nothing is closed with
/// `connection-timeout` at `auth_timeout`, however busy it keeps the
/// socket with whitespace.
#[tokio::test]
async fn an_unauthenticated_s2s_stream_sending_whitespace_times_out() {
    let ts = server_with(|c| {
        c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        c.s2s.auth_timeout = 1;
        // Idle closing is not what ends it here.
        c.s2s.idle_timeout = 600;
    })
    .await;
    let s2s = ts.running.as_ref().unwrap().s2s_addrs[0];
    let started = Instant::now();
    let mut peer = Client::connect(s2s).await;
    peer.send_str(S2S_OPEN).await;
    let features = peer.next_element().await;
    assert!(features.is("features", "http://etherx.jabber.org/streams"));
    // A keepalive every 50 ms until the server says something (bounded).
    let said = loop {
        assert!(
            started.elapsed() < TIMEOUT,
            "the whitespace kept the stream open"
        );
        if peer.send(b" ").await.is_err() {
            panic!("closed without a stream error");
        }
        if let Ok(ev) = tokio::time::timeout(Duration::from_millis(50), peer.next_event()).await {
            break ev;
        }
    };
    let Some(StreamEvent::Stanza(error)) = said else {
        panic!("expected a stream error, got {said:?}");
    };
    assert!(
        error.is("error", "http://etherx.jabber.org/streams"),
        "{error:?}"
    );
    assert!(
        error
            .get_child("connection-timeout", NS_STREAM_ERRORS)
            .is_some(),
        "{error:?}"
    );
    peer.expect_closed().await;
    eprintln!("closed after {:?}", started.elapsed());
    still_serves(&ts).await;
}

/// The far end of a connection our server opened: raw bytes out, parsed
/// events in.
struct Accepted {
    tcp: TcpStream,
    parser: StreamParser,
}

impl Accepted {
    fn new(tcp: TcpStream) -> Self {
        Accepted {
            tcp,
            parser: StreamParser::new(ParserLimits::default()),
        }
    }

    async fn send(&mut self, data: &str) {
        self.tcp.write_all(data.as_bytes()).await.unwrap();
    }

    /// The next event, None at the end of the connection.
    async fn next_event(&mut self) -> Option<StreamEvent> {
        let mut buf = [0u8; 8192];
        tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Ok(Some(ev)) = self.parser.next_event() {
                    return Some(ev);
                }
                match self.tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.parser.feed(&buf[..n]),
                }
            }
        })
        .await
        .expect("timed out waiting for our server")
    }

    async fn next_element(&mut self) -> Element {
        loop {
            match self.next_event().await {
                Some(StreamEvent::Stanza(e)) => return e,
                Some(StreamEvent::Header(_)) => continue,
                other => panic!("expected an element, got {other:?}"),
            }
        }
    }

    /// Reads our server's header and answers as `domain`'s server, with
    /// dialback (and its errors) as the only feature: no STARTTLS, no bidi.
    async fn accept_stream(&mut self, domain: &str) {
        match self.next_event().await {
            Some(StreamEvent::Header(_)) => {}
            other => panic!("expected a header, got {other:?}"),
        }
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='{NS_DIALBACK}' xmlns:stream='http://etherx.jabber.org/streams' from='{domain}' to='localhost' id='fake-{domain}' version='1.0'><stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>"
        ))
        .await;
    }
}

/// The dialback answer's error condition, or its type when not an error.
fn dialback_outcome(answer: &Element) -> String {
    assert!(answer.is("result", NS_DIALBACK), "{answer:?}");
    match answer.attr("type") {
        Some("error") => answer
            .get_child("error", "jabber:server")
            .and_then(|e| e.children().find(|c| c.ns() == NS_STANZAS))
            .map(|c| c.name().to_string())
            .unwrap_or_default(),
        t => t.unwrap_or_default().to_string(),
    }
}

/// An unauthenticated peer that sends `db:result` for many domains, over
/// more than one connection, cannot make us open more verification
/// connections than the cap (here 3 per asking IP): the others get a
/// `resource-constraint` dialback error at once, and a pair verified
/// before keeps carrying stanzas meanwhile.
#[tokio::test]
async fn db_result_floods_cannot_open_more_verifications_than_the_cap() {
    const CAP: usize = 3;
    const PER_CONNECTION: usize = 20;
    let authority = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth_addr = authority.local_addr().unwrap();
    let ts = server_with(|c| {
        c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        c.s2s.require_encryption = false;
        // The silent verifications end in remote-server-timeout then.
        c.s2s.connect_timeout = 2;
        c.s2s.max_verifications_per_ip = CAP;
        for i in 0..2 * PER_CONNECTION {
            c.s2s
                .hosts
                .insert(format!("d{i}.test"), auth_addr.to_string());
        }
        c.s2s
            .hosts
            .insert("good.test".into(), auth_addr.to_string());
    })
    .await;
    // Every connection our server opens lands here and is counted; the
    // verification for good.test is answered valid, the others never.
    let dialled = Arc::new(AtomicUsize::new(0));
    let counter = dialled.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = authority.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut them = Accepted::new(tcp);
                let header = match them.next_event().await {
                    Some(StreamEvent::Header(h)) => h,
                    _ => return,
                };
                let domain = header.to.unwrap_or_default();
                them.send(&format!(
                    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='{NS_DIALBACK}' xmlns:stream='http://etherx.jabber.org/streams' from='{domain}' id='auth' version='1.0'><stream:features/>"
                ))
                .await;
                while let Some(ev) = them.next_event().await {
                    let StreamEvent::Stanza(v) = ev else { continue };
                    if v.is("verify", NS_DIALBACK) && domain == "good.test" {
                        let id = v.attr("id").unwrap_or_default().to_string();
                        them.send(&format!(
                            "<db:verify from='good.test' to='localhost' id='{id}' type='valid'/>"
                        ))
                        .await;
                    }
                }
            });
        }
    });
    let s2s = ts.running.as_ref().unwrap().s2s_addrs[0];
    let mut canary = Client::login(ts.plain_addr, "canary", "pw", Some("c")).await;

    // One stream verifies good.test properly first.
    let mut first = Client::connect(s2s).await;
    first.send_str(S2S_OPEN).await;
    first.next_element().await;
    first
        .send_str("<db:result from='good.test' to='localhost'>key</db:result>")
        .await;
    assert_eq!(dialback_outcome(&first.next_element().await), "valid");
    assert_eq!(dialled.load(Ordering::SeqCst), 1);

    // Then the flood, over two connections.
    let mut second = Client::connect(s2s).await;
    second.send_str(S2S_OPEN).await;
    second.next_element().await;
    for (n, c) in [&mut first, &mut second].into_iter().enumerate() {
        let mut flood = String::new();
        for i in 0..PER_CONNECTION {
            let d = n * PER_CONNECTION + i;
            flood.push_str(&format!(
                "<db:result from='d{d}.test' to='localhost'>k</db:result>"
            ));
        }
        c.send_str(&flood).await;
    }
    // The verified pair still carries stanzas while verifications hang.
    first
        .send_str("<message from='x@good.test' to='canary@localhost/c' type='chat'><body>still here</body></message>")
        .await;
    let m = canary.next_named("message").await;
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "still here");

    let mut outcomes = Vec::new();
    for c in [&mut first, &mut second] {
        for _ in 0..PER_CONNECTION {
            outcomes.push(dialback_outcome(&c.next_element().await));
        }
    }
    let refused = outcomes
        .iter()
        .filter(|o| *o == "resource-constraint")
        .count();
    let dialled = dialled.load(Ordering::SeqCst);
    eprintln!("{refused} refused; {dialled} connections dialled; {outcomes:?}");
    // Every verification that was let through has answered by now, so
    // no further connection can come.
    assert_eq!(dialled, 1 + CAP, "verification connections opened");
    assert_eq!(refused, 2 * PER_CONNECTION - CAP);
    still_serves(&ts).await;
}

/// A `db:result` request arriving on our own outgoing, one-way stream is
/// refused with a dialback error (only bidirectional streams carry the
/// peer's requests, XEP-0288), nothing is verified, and the stream keeps
/// carrying our stanzas.
#[tokio::test]
async fn db_result_on_our_outgoing_stream_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ts = server_with(|c| {
        c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        c.s2s.require_encryption = false;
        c.s2s.connect_timeout = 2;
        c.s2s.hosts.insert("fake.test".into(), addr.to_string());
        // Were it verified, evil.test's server would be asked here.
        c.s2s.hosts.insert("evil.test".into(), addr.to_string());
    })
    .await;
    let mut canary = Client::login(ts.plain_addr, "canary", "pw", Some("c")).await;
    canary
        .send_str("<message to='u@fake.test' type='chat'><body>one</body></message>")
        .await;
    let (tcp, _) = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut fake = Accepted::new(tcp);
    fake.accept_stream("fake.test").await;
    let request = fake.next_element().await;
    assert!(request.is("result", NS_DIALBACK), "{request:?}");
    fake.send("<db:result from='fake.test' to='localhost' type='valid'/>")
        .await;
    let m = fake.next_element().await;
    assert_eq!(m.get_child("body", "jabber:server").unwrap().text(), "one");

    // The peer now asks, on our stream, to send as evil.test.
    fake.send("<db:result from='evil.test' to='localhost'>key</db:result>")
        .await;
    let answer = fake.next_element().await;
    assert_eq!(answer.attr("from"), Some("localhost"));
    assert_eq!(answer.attr("to"), Some("evil.test"));
    assert_eq!(dialback_outcome(&answer), "not-allowed");

    // Our stream goes on.
    canary
        .send_str("<message to='u@fake.test' type='chat'><body>two</body></message>")
        .await;
    let m = fake.next_element().await;
    assert_eq!(m.get_child("body", "jabber:server").unwrap().text(), "two");
    still_serves(&ts).await;
}

/// Outgoing s2s streams are capped (`max_outgoing`): with the only place
/// taken by a stream still being made, a stanza needing a new one bounces
/// at once with `resource-constraint`, while the pair that has its stream
/// keeps queueing.
#[tokio::test]
async fn outgoing_streams_beyond_the_cap_bounce_with_resource_constraint() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let ts = server_with(|c| {
        c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        c.s2s.max_outgoing = 1;
        for d in ["one.test", "two.test"] {
            c.s2s.hosts.insert(d.into(), addr.to_string());
        }
    })
    .await;
    let mut canary = Client::login(ts.plain_addr, "canary", "pw", Some("c")).await;
    canary
        .send_str("<message to='u@one.test' id='m1' type='chat'><body>1</body></message>")
        .await;
    // one.test's stream is being made (and never will be: nobody answers).
    let (_held, _) = tokio::time::timeout(TIMEOUT, silent.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ts.server().s2s.outgoing(), 1);
    canary
        .send_str("<message to='u@two.test' id='m2' type='chat'><body>2</body></message>")
        .await;
    let bounce = canary.next_named("message").await;
    assert_eq!(bounce.attr("id"), Some("m2"), "{bounce:?}");
    assert_eq!(
        stanza_error(&bounce).as_deref(),
        Some("resource-constraint")
    );
    // one.test's pair has its stream: more for it queues, nothing bounces.
    canary
        .send_str("<message to='u@one.test' id='m3' type='chat'><body>3</body></message>")
        .await;
    canary
        .send_str("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    loop {
        let e = canary.next_element().await;
        assert!(e.name() != "message", "{e:?}");
        if e.attr("id") == Some("p") {
            assert_eq!(e.attr("type"), Some("result"));
            break;
        }
    }
    still_serves(&ts).await;
}

/// An s2s queue is bounded by bytes too (`max_queue_bytes`): while the
/// stream is being made, a second large stanza for the pair bounces with
/// `resource-constraint` though the count bound is far away.
#[tokio::test]
async fn an_s2s_queue_full_of_bytes_bounces_with_resource_constraint() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let ts = server_with(|c| {
        c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        c.s2s.max_queue = 1000;
        c.s2s.max_queue_bytes = 64 * 1024;
        c.s2s.hosts.insert("one.test".into(), addr.to_string());
    })
    .await;
    let mut canary = Client::login(ts.plain_addr, "canary", "pw", Some("c")).await;
    let body = "y".repeat(48 * 1024);
    for id in ["m1", "m2"] {
        canary
            .send_str(&format!(
                "<message to='u@one.test' id='{id}' type='chat'><body>{body}</body></message>"
            ))
            .await;
    }
    let bounce = canary.next_named("message").await;
    assert_eq!(bounce.attr("id"), Some("m2"), "{bounce:?}");
    assert_eq!(
        stanza_error(&bounce).as_deref(),
        Some("resource-constraint")
    );
    still_serves(&ts).await;
}

/// The write timeout is the shared stream I/O's, so a component that
/// stops reading is cut off like a client: its domain is free again and
/// the server goes on serving.
#[tokio::test]
async fn a_component_that_stops_reading_is_disconnected_after_the_write_timeout() {
    const BOT: &str = "bot.localhost";
    let ts = server_with(|c| {
        c.limits.write_timeout = 1;
        c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.component.push(waxwing::config::ComponentConfig {
            domain: BOT.into(),
            secret: "s3cret".into(),
        });
    })
    .await;
    let addr = ts.running.as_ref().unwrap().component_addrs[0];
    let mut bot = Client::component(addr, BOT, "s3cret").await;
    assert!(ts.server().components.is_connected(BOT));
    let mut flooder = Client::login(ts.plain_addr, "flooder", "pw", Some("f")).await;
    flood(&mut flooder, "x@bot.localhost", 384).await;
    let server = ts.server().clone();
    eventually("the component to be detached", || {
        !server.components.is_connected(BOT)
    })
    .await;
    bot.expect_closed().await;
    still_serves(&ts).await;
}
