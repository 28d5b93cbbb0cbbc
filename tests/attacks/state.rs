//! Per-user state that others can make grow (issue 8, items 5 and 6):
//! subscription requests from many remote senders, directed presence to
//! many addresses, private XML, offline messages and roster items. Each
//! case checks the protocol answer beyond the cap, what is kept, and that
//! the victim and other users are still served.

use waxwing::config::{ComponentConfig, Config};
use waxwing::xml::{Element, NS_CLIENT};

use crate::common::*;
use crate::rss_kib;

/// An external component: the simplest source of many distinct remote
/// senders, since it may use any address of its own domain as `from`.
const BOT: &str = "bot.localhost";
const SECRET: &str = "s3cret";
const NS_NICK: &str = "http://jabber.org/protocol/nick";

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn start_with_component(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.component.push(ComponentConfig {
            domain: BOT.into(),
            secret: SECRET.into(),
        });
        tweak(c);
    })
    .await
}

async fn component(ts: &TestServer) -> Client {
    let addr = ts.running.as_ref().unwrap().component_addrs[0];
    Client::component(addr, BOT, SECRET).await
}

/// The stanza error condition of `e`, in whatever namespace the stream
/// uses (a component reads `jabber:component:accept`).
fn condition(e: &Element) -> Option<String> {
    e.children()
        .find(|c| c.name() == "error")?
        .children()
        .find(|c| c.ns() == NS_STANZAS)
        .map(|c| c.name().to_string())
}

/// Many remote senders each send `victim` one subscribe request carrying
/// ~64 KiB of payload. Only `cap` are kept, in short form; the rest are
/// answered with `resource-constraint`; the victim still logs in and gets
/// the kept requests, small.
async fn subscribe_flood(server: &TestServer, victim: &str, canary: &str) {
    const SENDERS: usize = 60;
    const CAP: usize = 20;
    let junk = "j".repeat(64 * 1024);
    let status = "s".repeat(4096);
    let rss_before = rss_kib();
    let mut bot = component(server).await;
    for i in 0..SENDERS {
        bot.send_str(&format!(
            "<presence from='u{i}@{BOT}' to='{victim}@localhost' type='subscribe'>\
             <status>{status}</status><nick xmlns='{NS_NICK}'>Sender {i}</nick>\
             <junk xmlns='urn:example:junk'>{junk}</junk></presence>"
        ))
        .await;
    }
    // The requests beyond the cap come back to their senders, in order.
    for i in CAP..SENDERS {
        let e = bot.next_named("presence").await;
        assert_eq!(e.attr("type"), Some("error"), "{e:?}");
        assert_eq!(e.attr("to"), Some(format!("u{i}@{BOT}").as_str()));
        assert_eq!(e.attr("from"), Some(format!("{victim}@localhost").as_str()));
        assert_eq!(condition(&e).as_deref(), Some("resource-constraint"));
        assert_eq!(
            e.children()
                .find(|c| c.name() == "error")
                .and_then(|c| c.attr("type")),
            Some("wait")
        );
    }
    let store = server.store();
    assert_eq!(
        store
            .roster_pending_count("localhost", victim)
            .await
            .unwrap(),
        CAP as i64
    );
    // Nothing joined the roster, and what is kept is the short form.
    assert!(store
        .roster_items("localhost", victim)
        .await
        .unwrap()
        .is_empty());
    let kept = store
        .roster_pending_requests("localhost", victim)
        .await
        .unwrap();
    assert_eq!(kept.len(), CAP);
    let limit = server.server().config().limits.max_subscription_text;
    for r in &kept {
        assert!(r.legacy_stanza.is_none());
        assert!(r.request.status.as_ref().is_some_and(|s| s.len() <= limit));
    }

    // The victim logs in with a normal presence broadcast and gets each
    // kept request once, without the junk.
    let mut v = Client::login(server.plain_addr, victim, "pw", Some("r")).await;
    let mut requests = 0;
    while requests < CAP {
        let p = v.next_named("presence").await;
        if p.attr("type") != Some("subscribe") {
            continue;
        }
        requests += 1;
        assert!(p.get_child("junk", "urn:example:junk").is_none(), "{p:?}");
        assert!(p.get_child("nick", NS_NICK).is_some(), "{p:?}");
        let s = p.get_child("status", NS_CLIENT).map(|s| s.text());
        assert_eq!(s.map(|s| s.len()), Some(limit));
    }
    let pong = v
        .iq(
            "<iq type='get' id='v1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "v1",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    // A sender already waiting is not refused again, and its repeated
    // request is not stored twice.
    bot.send_str(&format!(
        "<presence from='u0@{BOT}' to='{victim}@localhost' type='subscribe'/>"
    ))
    .await;
    still_serves_user(server, canary).await;
    assert_eq!(
        store
            .roster_pending_count("localhost", victim)
            .await
            .unwrap(),
        CAP as i64
    );
    // 60 × 68 KiB of requests went through this process; what stays is
    // small (generous: the TLS and test clients share the process).
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}

#[tokio::test]
async fn subscribe_flood_from_many_senders_stays_within_the_cap() {
    let server = start_with_component(|c| c.limits.max_pending_subscriptions = 20).await;
    server.add_user("victim", "pw").await;
    server.add_user("canary", "pw").await;
    subscribe_flood(&server, "victim", "canary").await;
}

#[tokio::test]
async fn subscribe_flood_stays_within_the_cap_on_postgres() {
    let url = postgres_url();
    let server = start_with_component(move |c| {
        c.database.url = url;
        c.limits.max_pending_subscriptions = 20;
    })
    .await;
    let tag = rand::random::<u32>();
    let (victim, canary) = (format!("victim{tag}"), format!("canary{tag}"));
    server.add_user(&victim, "pw").await;
    server.add_user(&canary, "pw").await;
    subscribe_flood(&server, &victim, &canary).await;
    for u in [&victim, &canary] {
        server.store().delete_account("localhost", u).await.unwrap();
    }
}

/// A database from before the short form: its migrations up to then are
/// applied, a request is stored whole as that version did, then today's
/// server opens it. The request is still delivered at login, in short
/// form, and converted.
#[tokio::test]
async fn request_stored_whole_before_is_delivered_and_converted() {
    const SHORT_FORM: &str = "20261203110501";
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    for f in std::fs::read_dir("migrations/sqlite").unwrap() {
        let f = f.unwrap();
        if f.file_name().to_string_lossy().as_ref() < SHORT_FORM {
            std::fs::copy(f.path(), old.join(f.file_name())).unwrap();
        }
    }
    let db = dir.path().join("old.db");
    let url = format!("sqlite://{}", db.display());
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(
            url.parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true),
        )
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let legacy = format!(
        "<presence xmlns='jabber:client' from='old@remote.example' type='subscribe'>\
         <status>hello</status><nick xmlns='{NS_NICK}'>Old</nick><junk xmlns='urn:x'>{}</junk></presence>",
        "j".repeat(10_000)
    );
    sqlx::query(
        "INSERT INTO roster_items (domain, username, contact, pending_in, in_roster) \
         VALUES ('localhost', 'victim', 'old@remote.example', $1, FALSE)",
    )
    .bind(&legacy)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let server = TestServer::start_with(move |c| c.database.url = url).await;
    server.add_user("victim", "pw").await;
    assert_eq!(
        server
            .store()
            .roster_pending_count("localhost", "victim")
            .await
            .unwrap(),
        1,
        "the migration marks the old request pending"
    );
    let mut v = Client::login(server.plain_addr, "victim", "pw", Some("r")).await;
    let p = loop {
        let p = v.next_named("presence").await;
        if p.attr("type") == Some("subscribe") {
            break p;
        }
    };
    assert_eq!(p.attr("from"), Some("old@remote.example"));
    assert_eq!(
        p.get_child("status", NS_CLIENT)
            .map(|s| s.text())
            .as_deref(),
        Some("hello")
    );
    assert!(p.get_child("junk", "urn:x").is_none());
    let kept = server
        .store()
        .roster_pending_requests("localhost", "victim")
        .await
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].legacy_stanza.is_none(), "converted");
    assert_eq!(kept[0].request.nick.as_deref(), Some("Old"));
}

/// Directed presence to many addresses: the session keeps at most the cap
/// (each of which will hear of its end); the rest are refused at once.
#[tokio::test]
async fn directed_presence_to_many_addresses_stays_bounded() {
    const CAP: usize = 50;
    const TARGETS: usize = 2_000;
    let server = TestServer::start_with(|c| c.limits.max_directed_presences = CAP).await;
    for u in ["user", "watcher", "canary"] {
        server.add_user(u, "pw").await;
    }
    let mut watcher = Client::login(server.plain_addr, "watcher", "pw", Some("w")).await;
    let mut c = Client::login(server.plain_addr, "user", "pw", Some("r")).await;
    // The watcher is the first recipient, so it is among those kept.
    c.send_str("<presence to='watcher@localhost/w'/>").await;
    let long = "n".repeat(1000);
    let rss_before = rss_kib();
    let mut batch = String::new();
    for i in 1..TARGETS {
        batch.push_str(&format!("<presence to='{long}{i}@localhost'/>"));
        if i % 100 == 0 {
            c.send_str(&batch).await;
            batch.clear();
        }
    }
    c.send_str(&batch).await;
    let mut refused = 0;
    while refused < TARGETS - CAP {
        let e = c.next_named("presence").await;
        if e.attr("type") == Some("error") {
            assert_eq!(stanza_error(&e).as_deref(), Some("resource-constraint"));
            refused += 1;
        }
    }
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    // Unavailable to a kept recipient frees its place, for one more.
    c.send_str(&format!(
        "<presence to='{long}1@localhost' type='unavailable'/>\
         <presence to='{long}x@localhost'/><presence to='{long}y@localhost'/>\
         <iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let mut errors = Vec::new();
    loop {
        let e = c.next_element().await;
        if e.name() == "presence" && e.attr("type") == Some("error") {
            errors.push(e.attr("from").unwrap_or_default().to_string());
        } else if e.attr("id") == Some("after") {
            break;
        }
    }
    assert_eq!(errors, [format!("{long}y@localhost")]);
    still_serves_user(&server, "canary").await;
    // The session ends: the watcher hears of it.
    drop(c);
    loop {
        let p = watcher.next_named("presence").await;
        if p.attr("from") == Some("user@localhost/r") && p.attr("type") == Some("unavailable") {
            break;
        }
    }
}

fn private_set(id: &str, ns: &str, len: usize) -> String {
    format!(
        "<iq type='set' id='{id}'><query xmlns='jabber:iq:private'>\
         <data xmlns='{ns}'>{}</data></query></iq>",
        "p".repeat(len)
    )
}

/// Private XML storage (XEP-0049): a document over its own cap is
/// not-acceptable; documents over the account's total are
/// resource-constraint; replacing one within the total still works.
#[tokio::test]
async fn private_xml_quota_is_answered() {
    private_xml_quota(None).await;
}

#[tokio::test]
async fn private_xml_quota_is_answered_on_postgres() {
    private_xml_quota(Some(postgres_url())).await;
}

/// A server on SQLite, or on PostgreSQL at `db` (then with user names
/// no other run shares), and those names.
async fn server_on(
    db: Option<String>,
    users: &[&str],
    tweak: impl FnOnce(&mut Config),
) -> (TestServer, Vec<String>) {
    let tag = if db.is_some() {
        rand::random::<u32>().to_string()
    } else {
        String::new()
    };
    let server = TestServer::start_with(|c| {
        if let Some(url) = db {
            c.database.url = url;
        }
        tweak(c);
    })
    .await;
    let mut names = Vec::new();
    for u in users {
        let name = format!("{u}{tag}");
        server.add_user(&name, "pw").await;
        names.push(name);
    }
    (server, names)
}

async fn private_xml_quota(db: Option<String>) {
    let (server, names) = server_on(db, &["user", "canary"], |c| {
        c.limits.max_private_document = 2048;
        c.limits.max_private_bytes = 4096;
    })
    .await;
    let (user, canary) = (&names[0], &names[1]);
    let mut c = Client::login(server.plain_addr, user, "pw", None).await;
    let r = c.iq(&private_set("big", "urn:a", 3000), "big").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"), "{r:?}");
    for (i, ns) in ["urn:a", "urn:b"].iter().enumerate() {
        let id = format!("ok{i}");
        let r = c.iq(&private_set(&id, ns, 1500), &id).await;
        assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    }
    let r = c.iq(&private_set("full", "urn:c", 1500), "full").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("resource-constraint"),
        "{r:?}"
    );
    // Replacing a stored document counts its new size, not both.
    let r = c.iq(&private_set("again", "urn:a", 1800), "again").await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let got = c
        .iq(
            "<iq type='get' id='g'><query xmlns='jabber:iq:private'><data xmlns='urn:c'/></query></iq>",
            "g",
        )
        .await;
    let data = got
        .get_child("query", "jabber:iq:private")
        .and_then(|q| q.get_child("data", "urn:c"))
        .map(|d| d.text());
    assert_eq!(data.as_deref(), Some(""), "urn:c was not stored");
    still_serves_user(&server, canary).await;
    for u in &names {
        server.store().delete_account("localhost", u).await.unwrap();
    }
}

/// Offline storage bounded in bytes as well as in count: the message that
/// would pass the bytes bound bounces with service-unavailable.
#[tokio::test]
async fn offline_bytes_quota_bounces_the_message() {
    offline_bytes_quota(None).await;
}

#[tokio::test]
async fn offline_bytes_quota_bounces_the_message_on_postgres() {
    offline_bytes_quota(Some(postgres_url())).await;
}

async fn offline_bytes_quota(db: Option<String>) {
    let (server, names) = server_on(db, &["sender", "away", "canary"], |c| {
        c.limits.max_offline_bytes = 8192
    })
    .await;
    let (sender, away, canary) = (&names[0], &names[1], &names[2]);
    let mut s = Client::login(server.plain_addr, sender, "pw", None).await;
    let body = "m".repeat(2000);
    let mut stored = 0;
    let bounced = loop {
        let id = format!("m{stored}");
        s.send_str(&format!(
            "<message to='{away}@localhost' type='chat' id='{id}'><body>{body}</body></message>"
        ))
        .await;
        // A ping after each message: its answer means the message was
        // routed (the router handles a session's stanzas in order).
        let pid = format!("p{stored}");
        let mut bounce = None;
        s.send_str(&format!(
            "<iq type='get' id='{pid}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        loop {
            let e = s.next_element().await;
            if e.name() == "message" && e.attr("type") == Some("error") {
                bounce = Some(e);
            } else if e.name() == "iq" && e.attr("id") == Some(pid.as_str()) {
                break;
            }
        }
        if let Some(e) = bounce {
            break e;
        }
        stored += 1;
        assert!(stored < 10, "8 KiB of 2 KB messages never filled");
    };
    assert_eq!(
        stanza_error(&bounced).as_deref(),
        Some("service-unavailable")
    );
    assert_eq!(
        stored, 3,
        "three 2 KB messages with their stamps fit in 8 KiB"
    );
    assert_eq!(
        server
            .store()
            .offline_count("localhost", away)
            .await
            .unwrap(),
        3
    );
    still_serves_user(&server, canary).await;
    for u in &names {
        server.store().delete_account("localhost", u).await.unwrap();
    }
}

/// Roster items capped per user: a roster set or an outbound subscription
/// that would add one more is refused; changing an existing item is not.
#[tokio::test]
async fn roster_size_quota_is_answered() {
    let server = TestServer::start_with(|c| c.limits.max_roster_items = 3).await;
    server.add_user("user", "pw").await;
    server.add_user("canary", "pw").await;
    let mut c = Client::login(server.plain_addr, "user", "pw", None).await;
    let set = |id: &str, jid: &str| {
        format!(
            "<iq type='set' id='{id}'><query xmlns='jabber:iq:roster'><item jid='{jid}' name='x'/></query></iq>"
        )
    };
    for i in 0..3 {
        let id = format!("s{i}");
        let r = c.iq(&set(&id, &format!("c{i}@example.net")), &id).await;
        assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    }
    let r = c.iq(&set("s3", "c3@example.net"), "s3").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("resource-constraint"),
        "{r:?}"
    );
    // An item already there may still change.
    let r = c.iq(&set("s0b", "c0@example.net"), "s0b").await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    // Subscribing to a new contact would add an item too.
    c.send_str("<presence to='c4@localhost' type='subscribe' id='sub'/>")
        .await;
    let e = loop {
        let e = c.next_named("presence").await;
        if e.attr("id") == Some("sub") {
            break e;
        }
    };
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(stanza_error(&e).as_deref(), Some("resource-constraint"));
    assert_eq!(
        server
            .store()
            .roster_count("localhost", "user")
            .await
            .unwrap(),
        3
    );
    still_serves_user(&server, "canary").await;
}

/// A request beyond the cap from a user of another server: the error goes
/// back to the sender over s2s (two in-process servers, dialback).
#[tokio::test]
async fn refused_request_goes_back_to_a_remote_sender_over_s2s() {
    use std::net::SocketAddr;
    use waxwing::config::HostConfig;
    const A: &str = "a.test";
    const B: &str = "b.test";
    let certs = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let start = |domain: &'static str, port: u16, peer: &'static str, peer_port: u16| {
        let dir = cert_dir(&certs, domain);
        TestServer::start_with(move |c| {
            c.host = vec![HostConfig {
                domain: domain.into(),
                cert: None,
                key: None,
                allow_registration: false,
            }];
            c.tls.dev_cert_dir = dir;
            c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
            c.s2s.sasl_external = false;
            c.s2s.connect_timeout = 2;
            c.s2s
                .hosts
                .insert(peer.into(), format!("127.0.0.1:{peer_port}"));
            c.limits.max_pending_subscriptions = 1;
        })
    };
    let a = start(A, pa, B, pb).await;
    let b = start(B, pb, A, pa).await;
    a.add_user_at(A, "victim", "pw").await;
    for u in ["first", "second"] {
        b.add_user_at(B, u, "pw").await;
    }
    let mut victim = Client::login_at(a.plain_addr, A, "victim", "pw", None).await;
    victim.send_str("<presence/>").await;
    let mut first = Client::login_at(b.plain_addr, B, "first", "pw", None).await;
    let mut second = Client::login_at(b.plain_addr, B, "second", "pw", None).await;
    first
        .send_str("<presence to='victim@a.test' type='subscribe'/>")
        .await;
    // The first request is kept (the cap is one) and reaches the victim.
    loop {
        let p = victim.next_named("presence").await;
        if p.attr("type") == Some("subscribe") {
            assert_eq!(p.attr("from"), Some("first@b.test"));
            break;
        }
    }
    // Available, since a presence error for a bare JID goes to the
    // available resources.
    second.send_str("<presence/>").await;
    second
        .send_str("<presence to='victim@a.test' type='subscribe' id='s2'/>")
        .await;
    let e = loop {
        let e = second.next_named("presence").await;
        if e.attr("type") == Some("error") {
            break e;
        }
    };
    assert_eq!(e.attr("from"), Some("victim@a.test"));
    assert_eq!(stanza_error(&e).as_deref(), Some("resource-constraint"));
    assert_eq!(
        a.store().roster_pending_count(A, "victim").await.unwrap(),
        1
    );
}
