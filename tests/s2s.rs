//! Server-to-server streams between two in-process servers (`a.test` and
//! `b.test`, each with its own development certificate and trusting the
//! other's via `ca_file`, found through `[s2s.hosts]`): messages both ways,
//! a presence subscription across servers, an unreachable domain, and the
//! `from` rule on an incoming stream spoken by a raw client.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use waxwing::config::HostConfig;
use waxwing::stream::s2s::dialback_key;
use waxwing::xml::{Element, StreamEvent, NS_CLIENT};

const A: &str = "a.test";
const B: &str = "b.test";
const NOWHERE: &str = "nowhere.test";
/// Accepts connections and never answers.
const SILENT: &str = "silent.test";
/// B's dialback secret, known here so a raw client can pass as b.test.
const B_SECRET: &str = "b-secret-for-tests";
/// An external component of a.test's server, reachable from b.test.
const COMP: &str = "comp.a.test";
const COMP_SECRET: &str = "comp-secret";

/// Settings both servers of a pair share.
#[derive(Clone, Copy)]
struct Opts {
    /// `[s2s] idle_timeout`.
    idle: u64,
    /// `[s2s] sasl_external` (else dialback only).
    external: bool,
    /// `[s2s] bidi` of a.test and b.test (XEP-0288).
    bidi: (bool, bool),
}

struct Pair {
    a: TestServer,
    b: TestServer,
    _certs: tempfile::TempDir,
    _silent: std::net::TcpListener,
}

async fn start_one(
    domain: &str,
    port: u16,
    certs: PathBuf,
    peer_certs: PathBuf,
    hosts: Vec<(&str, u16)>,
    secret: &str,
    opts: Opts,
) -> TestServer {
    let ts = TestServer::start_with(|c| {
        c.host = vec![HostConfig {
            domain: domain.into(),
            cert: None,
            key: None,
            allow_registration: false,
        }];
        c.tls.dev_cert_dir = certs;
        c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        c.s2s.ca_file = peer_certs.join("dev-cert.pem").display().to_string();
        c.s2s.connect_timeout = 2;
        c.s2s.idle_timeout = opts.idle;
        c.s2s.sasl_external = opts.external;
        c.s2s.bidi = if domain == A {
            opts.bidi.0
        } else {
            opts.bidi.1
        };
        c.s2s.dialback_secret = secret.into();
        if domain == A {
            c.component_listener.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
            c.component.push(waxwing::config::ComponentConfig {
                domain: COMP.into(),
                secret: COMP_SECRET.into(),
            });
        }
        for (d, p) in hosts {
            c.s2s.hosts.insert(d.into(), format!("127.0.0.1:{p}"));
        }
    })
    .await;
    ts.add_user_at(domain, "user", "pw").await;
    ts
}

async fn pair() -> Pair {
    pair_with(true, 600, true).await
}

/// Two servers; unless `a_trusts_b`, a.test does not trust b.test's
/// certificate; s2s streams close after `idle` seconds of silence;
/// `external`: SASL EXTERNAL on (else dialback only).
async fn pair_with(a_trusts_b: bool, idle: u64, external: bool) -> Pair {
    // One stream each way, as without XEP-0288 (tested on its own below).
    pair_opts(
        a_trusts_b,
        Opts {
            idle,
            external,
            bidi: (false, false),
        },
    )
    .await
}

async fn pair_opts(a_trusts_b: bool, opts: Opts) -> Pair {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cb) = (cert_dir(&certs, A), cert_dir(&certs, B));
    let (pa, pb, closed) = (free_port(), free_port(), free_port());
    let a_trusted = if a_trusts_b { cb.clone() } else { ca.clone() };
    let a = start_one(
        A,
        pa,
        ca.clone(),
        a_trusted,
        vec![(B, pb), (NOWHERE, closed), (SILENT, silent_port)],
        "",
        opts,
    )
    .await;
    let b = start_one(B, pb, cb, ca, vec![(A, pa), (COMP, pa)], B_SECRET, opts).await;
    Pair {
        a,
        b,
        _certs: certs,
        _silent: silent,
    }
}

async fn online(ts: &TestServer, domain: &str) -> Client {
    let mut c = Client::login_at(ts.plain_addr, domain, "user", "pw", Some("r")).await;
    c.send_str("<presence/>").await;
    c
}

/// Reads until an element matches.
async fn wait_for(c: &mut Client, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
    loop {
        let e = c.next_element().await;
        if pred(&e) {
            return e;
        }
        eprintln!(
            "({what}) skipping {}",
            String::from_utf8_lossy(&e.to_bytes(NS_CLIENT))
        );
    }
}

#[tokio::test]
async fn messages_cross_both_ways_with_sasl_external() {
    let p = pair().await;
    messages_cross_both_ways(&p).await;
    // Both servers trust each other's certificate: no dialback needed.
    assert_eq!(p.a.server().s2s.authenticated(), (1, 0));
    assert_eq!(p.b.server().s2s.authenticated(), (1, 0));
}

#[tokio::test]
async fn messages_cross_both_ways_with_dialback() {
    let p = pair_with(true, 600, false).await;
    messages_cross_both_ways(&p).await;
    assert_eq!(p.a.server().s2s.authenticated(), (0, 1));
    assert_eq!(p.b.server().s2s.authenticated(), (0, 1));
}

async fn messages_cross_both_ways(p: &Pair) {
    let mut ua = online(&p.a, A).await;
    let mut ub = online(&p.b, B).await;
    ua.send_str("<message to='user@b.test' type='chat' id='m1'><body>hello b</body></message>")
        .await;
    let m = wait_for(&mut ub, "message at b", |e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("user@a.test/r"));
    assert_eq!(m.attr("to"), Some("user@b.test"));
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "hello b");
    ub.send_str("<message to='user@a.test/r' type='chat' id='m2'><body>hello a</body></message>")
        .await;
    let m = wait_for(&mut ua, "message at a", |e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("user@b.test/r"));
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "hello a");
    // A second message reuses the authenticated stream.
    ua.send_str("<message to='user@b.test/r' type='chat'><body>again</body></message>")
        .await;
    let m = wait_for(&mut ub, "second message", |e| e.name() == "message").await;
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "again");
    assert_eq!(p.a.server().s2s.count(), 1);
    // The metrics count each message once on each side of the hop.
    let s2s = |ts: &TestServer, direction| {
        let stanzas = &ts.server().metrics.stanzas;
        stanzas.get(direction, waxwing::metrics::StreamKind::S2s, "message")
    };
    assert_eq!((s2s(&p.a, "out"), s2s(&p.a, "in")), (2, 1));
    assert_eq!((s2s(&p.b, "out"), s2s(&p.b, "in")), (1, 2));
}

fn roster_subscription(iq: &Element, contact: &str) -> Option<String> {
    iq.get_child("query", "jabber:iq:roster")?
        .children()
        .find(|i| i.attr("jid") == Some(contact))?
        .attr("subscription")
        .map(str::to_string)
}

async fn roster_get(c: &mut Client, contact: &str) -> Option<String> {
    let r = c
        .iq(
            "<iq type='get' id='rg'><query xmlns='jabber:iq:roster'/></iq>",
            "rg",
        )
        .await;
    roster_subscription(&r, contact)
}

fn is_presence(e: &Element, from: &str, ty: Option<&str>) -> bool {
    e.name() == "presence" && e.attr("from") == Some(from) && e.attr("type") == ty
}

#[tokio::test]
async fn subscription_across_servers_ends_in_both() {
    // Dialback here; the EXTERNAL path is covered by the message test.
    let p = pair_with(true, 600, false).await;
    let mut ua = online(&p.a, A).await;
    let mut ub = online(&p.b, B).await;
    // Both ask for the roster so they get pushes.
    assert_eq!(roster_get(&mut ua, "user@b.test").await, None);
    assert_eq!(roster_get(&mut ub, "user@a.test").await, None);

    ua.send_str("<presence to='user@b.test' type='subscribe'/>")
        .await;
    wait_for(&mut ub, "subscribe at b", |e| {
        is_presence(e, "user@a.test", Some("subscribe"))
    })
    .await;
    ub.send_str("<presence to='user@a.test' type='subscribed'/>")
        .await;
    // A sees the approval, then B's presence.
    wait_for(&mut ua, "subscribed at a", |e| {
        is_presence(e, "user@b.test", Some("subscribed"))
    })
    .await;
    wait_for(&mut ua, "b's presence at a", |e| {
        is_presence(e, "user@b.test/r", None)
    })
    .await;

    ub.send_str("<presence to='user@a.test' type='subscribe'/>")
        .await;
    wait_for(&mut ua, "subscribe at a", |e| {
        is_presence(e, "user@b.test", Some("subscribe"))
    })
    .await;
    ua.send_str("<presence to='user@b.test' type='subscribed'/>")
        .await;
    wait_for(&mut ub, "a's presence at b", |e| {
        is_presence(e, "user@a.test/r", None)
    })
    .await;

    assert_eq!(
        roster_get(&mut ua, "user@b.test").await.as_deref(),
        Some("both")
    );
    assert_eq!(
        roster_get(&mut ub, "user@a.test").await.as_deref(),
        Some("both")
    );

    // Presence updates now travel both ways.
    ua.send_str("<presence><status>from a</status></presence>")
        .await;
    let pr = wait_for(&mut ub, "update at b", |e| {
        is_presence(e, "user@a.test/r", None)
    })
    .await;
    assert_eq!(pr.get_child("status", NS_CLIENT).unwrap().text(), "from a");
    ub.send_str("<presence><status>from b</status></presence>")
        .await;
    let pr = wait_for(&mut ua, "update at a", |e| {
        is_presence(e, "user@b.test/r", None)
    })
    .await;
    assert_eq!(pr.get_child("status", NS_CLIENT).unwrap().text(), "from b");
}

#[tokio::test]
async fn unreachable_domain_bounces_and_sender_keeps_working() {
    let p = pair().await;
    let mut ua = online(&p.a, A).await;
    ua.send_str("<message to='x@nowhere.test' type='chat' id='lost'><body>?</body></message>")
        .await;
    let err = wait_for(&mut ua, "bounce", |e| e.name() == "message").await;
    assert_eq!(err.attr("type"), Some("error"));
    assert_eq!(err.attr("id"), Some("lost"));
    assert_eq!(err.attr("from"), Some("x@nowhere.test"));
    assert_eq!(
        stanza_error(&err).as_deref(),
        Some("remote-server-not-found")
    );
    let pong = ua
        .iq(
            "<iq type='get' id='p1' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    // And federation with a reachable server still works.
    let mut ub = online(&p.b, B).await;
    ua.send_str("<message to='user@b.test' type='chat'><body>still here</body></message>")
        .await;
    let m = wait_for(&mut ub, "message at b", |e| e.name() == "message").await;
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "still here");
}

/// a.test cannot validate b.test's certificate: its streams to b.test
/// (the one carrying the message, and the dialback verification stream
/// when b.test connects back) are still encrypted, but authenticated by
/// dialback, not SASL EXTERNAL (XEP-0220, XEP-0178).
#[tokio::test]
async fn untrusted_peer_certificate_falls_back_to_dialback() {
    let p = pair_with(false, 600, true).await;
    let mut ua = online(&p.a, A).await;
    let mut ub = online(&p.b, B).await;
    ua.send_str("<message to='user@b.test' type='chat' id='m'><body>x</body></message>")
        .await;
    let m = wait_for(&mut ub, "message at b", |e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("user@a.test/r"));
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "x");
    ub.send_str("<message to='user@a.test/r' type='chat' id='n'><body>y</body></message>")
        .await;
    let m = wait_for(&mut ua, "message at a", |e| e.name() == "message").await;
    assert_eq!(m.attr("type"), Some("chat"), "not a bounce: {m:?}");
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "y");
    // a.test → b.test: b.test offered EXTERNAL (it trusts a.test), but
    // a.test, not trusting b.test's certificate, used dialback.
    assert_eq!(p.a.server().s2s.authenticated(), (0, 1));
    // b.test → a.test: a.test offers no EXTERNAL to a certificate it does
    // not trust; its dialback verification stream back to b.test succeeds.
    assert_eq!(p.b.server().s2s.authenticated(), (0, 1));
}

#[tokio::test]
async fn silent_server_bounces_with_timeout() {
    let p = pair().await;
    let mut ua = online(&p.a, A).await;
    ua.send_str("<message to='x@silent.test' type='chat' id='t1'><body>1</body></message>")
        .await;
    ua.send_str("<message to='y@silent.test' type='chat' id='t2'><body>2</body></message>")
        .await;
    for id in ["t1", "t2"] {
        let err = wait_for(&mut ua, "timeout bounce", |e| e.name() == "message").await;
        assert_eq!(err.attr("id"), Some(id));
        assert_eq!(stanza_error(&err).as_deref(), Some("remote-server-timeout"));
    }
    let pong = ua
        .iq(
            "<iq type='get' id='p2' to='a.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p2",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
}

#[tokio::test]
async fn idle_stream_closes_and_reopens_on_demand() {
    let p = pair_with(true, 1, true).await;
    let mut ua = online(&p.a, A).await;
    let mut ub = online(&p.b, B).await;
    ua.send_str("<message to='user@b.test' type='chat'><body>one</body></message>")
        .await;
    let m = wait_for(&mut ub, "first", |e| e.name() == "message").await;
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "one");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(p.a.server().s2s.count(), 0, "idle stream closed");
    ua.send_str("<message to='user@b.test' type='chat'><body>two</body></message>")
        .await;
    let m = wait_for(&mut ub, "second", |e| e.name() == "message").await;
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "two");
}

/// The s2s connections a server lists, as (direction, auth, bidi, remote domains).
fn links(ts: &TestServer) -> Vec<(&'static str, &'static str, bool, Vec<String>)> {
    ts.server()
        .s2s_links
        .list()
        .into_iter()
        .map(|l| (l.direction.as_str(), l.auth.as_str(), l.bidi, l.remote))
        .collect()
}

/// XEP-0288: when both servers allow it, a.test's outgoing stream carries
/// b.test's answers too — b.test opens no stream of its own.
async fn bidi_one_stream_both_ways(external: bool) {
    let opts = Opts {
        idle: 600,
        external,
        bidi: (true, true),
    };
    let p = pair_opts(true, opts).await;
    messages_cross_both_ways(&p).await;
    let auth = if external { "external" } else { "dialback" };
    assert_eq!(
        links(&p.a),
        vec![("out", auth, true, vec![B.to_string()])],
        "a.test holds one outgoing bidi stream"
    );
    assert_eq!(
        links(&p.b),
        vec![("in", auth, true, vec![A.to_string()])],
        "b.test answered on a.test's stream"
    );
    assert_eq!(
        p.b.server().s2s.authenticated(),
        (0, 0),
        "b.test opened no stream"
    );
    // b.test's route to a.test is the incoming stream; while it lives,
    // b.test keeps sending on it.
    assert_eq!(p.b.server().s2s.count(), 1);
}

#[tokio::test]
async fn bidi_stream_carries_both_ways_with_sasl_external() {
    bidi_one_stream_both_ways(true).await;
}

#[tokio::test]
async fn bidi_stream_carries_both_ways_with_dialback() {
    bidi_one_stream_both_ways(false).await;
}

#[tokio::test]
async fn without_bidi_on_one_side_each_server_opens_its_own_stream() {
    for bidi in [(true, false), (false, true)] {
        let opts = Opts {
            idle: 600,
            external: true,
            bidi,
        };
        let p = pair_opts(true, opts).await;
        messages_cross_both_ways(&p).await;
        let mut a = links(&p.a);
        a.sort();
        assert_eq!(
            a,
            vec![
                ("in", "external", false, vec![B.to_string()]),
                ("out", "external", false, vec![B.to_string()]),
            ],
            "bidi {bidi:?}"
        );
        assert_eq!(p.b.server().s2s.authenticated(), (1, 0), "bidi {bidi:?}");
    }
}

#[tokio::test]
async fn bidi_route_ends_with_its_stream_and_a_new_one_opens() {
    let opts = Opts {
        idle: 1,
        external: true,
        bidi: (true, true),
    };
    let p = pair_opts(true, opts).await;
    let mut ua = online(&p.a, A).await;
    let mut ub = online(&p.b, B).await;
    ua.send_str("<message to='user@b.test' type='chat'><body>one</body></message>")
        .await;
    wait_for(&mut ub, "first", |e| e.name() == "message").await;
    // The stream goes idle and closes on both sides; b.test's route goes
    // with it, so b.test's next message opens b.test's own stream.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(p.b.server().s2s.count(), 0, "bidi route removed");
    assert!(links(&p.b).is_empty());
    ub.send_str("<message to='user@a.test/r' type='chat'><body>two</body></message>")
        .await;
    let m = wait_for(&mut ua, "second", |e| e.name() == "message").await;
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "two");
    assert_eq!(p.b.server().s2s.authenticated(), (1, 0));
}

/// A component of a.test's server federates: a user of b.test reaches it,
/// and its answer reaches the user. Its domain is not named by a.test's
/// certificate, so both streams (b.test → comp.a.test and comp.a.test →
/// b.test) are authenticated by dialback, verified through a.test's server.
#[tokio::test]
async fn component_federates_both_ways() {
    let p = pair().await;
    let addr = p.a.running.as_ref().unwrap().component_addrs[0];
    let mut bot = Client::component(addr, COMP, COMP_SECRET).await;
    let mut ub = online(&p.b, B).await;
    ub.send_str("<message to='echo@comp.a.test' type='chat' id='c1'><body>ping</body></message>")
        .await;
    let m = wait_for(&mut bot, "message at the component", |e| {
        e.name() == "message"
    })
    .await;
    assert_eq!(m.attr("from"), Some("user@b.test/r"));
    assert_eq!(
        m.get_child("body", "jabber:component:accept")
            .unwrap()
            .text(),
        "ping"
    );
    bot.send_str("<message from='echo@comp.a.test' to='user@b.test/r' type='chat' id='c2'><body>pong</body></message>")
        .await;
    let m = wait_for(&mut ub, "answer from the component", |e| {
        e.name() == "message"
    })
    .await;
    assert_eq!(m.attr("from"), Some("echo@comp.a.test"));
    assert_eq!(m.attr("type"), Some("chat"), "not a bounce: {m:?}");
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "pong");
    // b.test authenticated to comp.a.test, and comp.a.test to b.test, by dialback.
    assert_eq!(p.a.server().s2s.authenticated(), (0, 1));
    let (_, b_dialback) = p.b.server().s2s.authenticated();
    assert_eq!(b_dialback, 1);
    // A component's stanza for a domain nobody serves bounces back to it.
    bot.send_str("<message from='echo@comp.a.test' to='x@nowhere.test' type='chat' id='c3'><body>?</body></message>")
        .await;
    let err = wait_for(&mut bot, "bounce", |e| e.name() == "message").await;
    assert_eq!(err.attr("id"), Some("c3"));
    assert_eq!(err.attr("type"), Some("error"));
}

/// A raw s2s client: stream to a.test claiming b.test, STARTTLS, and the
/// second stream's id.
async fn raw_s2s(addr: SocketAddr) -> (Client, String) {
    let open = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' from='b.test' to='a.test' version='1.0'>";
    let mut c = Client::connect(addr).await;
    c.send_str(open).await;
    let features = c.next_element().await;
    assert!(
        features.get_child("starttls", NS_TLS).is_some(),
        "{features:?}"
    );
    c.send_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert!(c.next_element().await.is("proceed", NS_TLS));
    c.tls_handshake_with(A).await.unwrap();
    c.send_str(open).await;
    let id = match c.next_event().await {
        Some(StreamEvent::Header(h)) => h.id.unwrap(),
        other => panic!("{other:?}"),
    };
    let features = c.next_element().await;
    assert!(
        features
            .get_child("dialback", "urn:xmpp:features:dialback")
            .is_some(),
        "{features:?}"
    );
    // No client certificate: no SASL EXTERNAL.
    assert!(features.get_child("mechanisms", NS_SASL).is_none());
    (c, id)
}

#[tokio::test]
async fn unauthenticated_and_spoofed_from_are_invalid_from_and_bad_keys_invalid() {
    let p = pair().await;
    let a_s2s = p.a.running.as_ref().unwrap().s2s_addrs[0];
    // The addressee is online, so a stanza let through would reach it.
    let mut user = online(&p.a, A).await;
    user.barrier().await;
    let mark = user.mark();

    // Stanzas before dialback.
    let (mut c, _) = raw_s2s(a_s2s).await;
    c.send_str("<message from='user@b.test' to='user@a.test/r'><body>x</body></message>")
        .await;
    assert_eq!(c.expect_stream_error().await, "invalid-from");

    // Dialback as b.test (with b.test's secret, so a.test's verification
    // with b.test succeeds), then a stanza from another domain.
    let (mut c, id) = raw_s2s(a_s2s).await;
    let key = dialback_key(B_SECRET, A, B, &id);
    c.send_str(&format!(
        "<db:result from='b.test' to='a.test'>{key}</db:result>"
    ))
    .await;
    let answer = c.next_element().await;
    assert!(answer.is("result", "jabber:server:dialback"), "{answer:?}");
    assert_eq!(answer.attr("type"), Some("valid"));
    c.send_str("<message from='eve@c.test' to='user@a.test/r'><body>spoof</body></message>")
        .await;
    assert_eq!(c.expect_stream_error().await, "invalid-from");
    // Each stream error went out after its stanza was handled: neither
    // stanza reached the user.
    user.expect_nothing(mark).await;

    // SASL EXTERNAL without a certificate fails; the stream stays usable.
    let (mut c, _) = raw_s2s(a_s2s).await;
    c.send_str(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>=</auth>"
    ))
    .await;
    let failure = c.next_element().await;
    assert!(failure.is("failure", NS_SASL), "{failure:?}");

    // A wrong key is refused.
    c.send_str("<db:result from='b.test' to='a.test'>00</db:result>")
        .await;
    let answer = c.next_element().await;
    assert_eq!(answer.attr("type"), Some("invalid"));

    // A domain a.test does not serve is a dialback error (XEP-0220 §2.4),
    // not the end of the stream: a valid request on it still succeeds.
    let (mut c, id) = raw_s2s(a_s2s).await;
    c.send_str("<db:result from='b.test' to='c.test'>00</db:result>")
        .await;
    let answer = c.next_element().await;
    assert_eq!(answer.attr("type"), Some("error"), "{answer:?}");
    let error = answer.get_child("error", "jabber:server").unwrap();
    assert!(error
        .get_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
        .is_some());
    let key = dialback_key(B_SECRET, A, B, &id);
    c.send_str(&format!(
        "<db:result from='b.test' to='a.test'>{key}</db:result>"
    ))
    .await;
    assert_eq!(c.next_element().await.attr("type"), Some("valid"));
}

/// Incoming s2s connections have caps of their own: with one s2s and one
/// client connection allowed per IP, a held s2s connection neither takes
/// the client's place nor lets a second s2s connection in.
#[tokio::test]
async fn s2s_connections_have_caps_of_their_own() {
    let ts = TestServer::start_with(|c| {
        c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
        c.s2s.max_connections_per_ip = 1;
        c.c2s.max_connections_per_ip = 1;
    })
    .await;
    ts.add_user("user", "pw").await;
    let s2s = ts.running.as_ref().unwrap().s2s_addrs[0];
    let open = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='b.test' to='localhost' version='1.0'>";
    let mut held = Client::connect(s2s).await;
    held.send_str(open).await;
    assert!(matches!(
        held.next_event().await,
        Some(StreamEvent::Header(_))
    ));
    // The s2s cap is reached: a second server connection is closed at once.
    let mut refused = Client::connect(s2s).await;
    refused.expect_closed().await;
    // The client cap is untouched by it.
    let mut c = Client::login(ts.plain_addr, "user", "pw", Some("r")).await;
    let pong = c
        .iq(
            "<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    // Once the first server connection goes, another is let in.
    drop(held);
    let mut again = None;
    for _ in 0..50 {
        let mut c = Client::connect(s2s).await;
        c.send_str(open).await;
        if let Some(StreamEvent::Header(_)) = c.next_event().await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "slot released");
}

/// Offline delivery works across servers as locally: a message from a.test
/// for b.test's user, who is offline, is stored by b.test and handed over,
/// with a delay stamp, when the user comes online.
#[tokio::test]
async fn message_to_an_offline_remote_user_waits_for_them() {
    let p = pair().await;
    let mut ua = online(&p.a, A).await;
    ua.send_str(
        "<message to='user@b.test' type='chat' id='off1'><body>while you were out</body></message>",
    )
    .await;
    // Stored at b.test before its user logs in (nothing bounces to a.test).
    let stored = async {
        loop {
            if p.b.store().offline_count(B, "user").await.unwrap() == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, stored)
        .await
        .expect("stored offline at b.test");
    let mut ub = online(&p.b, B).await;
    let m = wait_for(&mut ub, "offline message", |e| e.name() == "message").await;
    assert_eq!(m.attr("from"), Some("user@a.test/r"));
    assert_eq!(
        m.get_child("body", NS_CLIENT).unwrap().text(),
        "while you were out"
    );
    assert!(m.get_child("delay", "urn:xmpp:delay").is_some(), "{m:?}");
}

/// XEP-0220 §2.2.1: while one `db:result` is being verified (here with a
/// server that never answers), the stream goes on carrying the stanzas of
/// the pairs already verified; the slow one ends in a dialback error.
#[tokio::test]
async fn stanzas_flow_while_a_dialback_verification_is_pending() {
    let p = pair().await;
    let a_s2s = p.a.running.as_ref().unwrap().s2s_addrs[0];
    let mut ua = online(&p.a, A).await;
    let (mut c, id) = raw_s2s(a_s2s).await;
    let key = dialback_key(B_SECRET, A, B, &id);
    c.send_str(&format!(
        "<db:result from='b.test' to='a.test'>{key}</db:result>"
    ))
    .await;
    assert_eq!(c.next_element().await.attr("type"), Some("valid"));
    // silent.test's server accepts the connection and says nothing: its
    // verification runs until connect_timeout (2 s).
    let asked = std::time::Instant::now();
    c.send_str("<db:result from='silent.test' to='a.test'>00</db:result>")
        .await;
    c.send_str("<message from='user@b.test/r' to='user@a.test/r' type='chat'><body>meanwhile</body></message>")
        .await;
    let m = wait_for(&mut ua, "message during verification", |e| {
        e.name() == "message"
    })
    .await;
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "meanwhile");
    assert!(
        asked.elapsed() < std::time::Duration::from_millis(1500),
        "the message waited for the verification: {:?}",
        asked.elapsed()
    );
    let answer = c.next_element().await;
    assert!(answer.is("result", "jabber:server:dialback"), "{answer:?}");
    assert_eq!(answer.attr("type"), Some("error"), "{answer:?}");
    assert_eq!(answer.attr("from"), Some(A));
    assert_eq!(answer.attr("to"), Some(SILENT));
    let error = answer.get_child("error", "jabber:server").unwrap();
    assert!(error
        .get_child(
            "remote-server-timeout",
            "urn:ietf:params:xml:ns:xmpp-stanzas"
        )
        .is_some());
}
