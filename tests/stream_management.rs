//! Stream management (XEP-0198) over real sockets: acknowledgements,
//! resumption from a new connection (after a drop, and taking over a
//! half-dead one), expiry into offline storage, and a resumption racing a
//! new login of the same resource. Counter wrapping is a unit test of
//! `stream::sm` (it needs 2^32 stanzas otherwise).

mod common;

use common::*;
use waxwing::sasl::ScramHash;
use waxwing::xml::{Element, NS_CLIENT};

const NS_SM: &str = "urn:xmpp:sm:3";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_DELAY: &str = "urn:xmpp:delay";

/// A client session with stream management on: counts the stanzas it
/// handles (its `h`) and keeps the bodies of the messages it got.
struct SmClient {
    c: Client,
    /// Stanzas handled since `<enabled/>`.
    h: u32,
    id: String,
    bodies: Vec<String>,
}

impl SmClient {
    /// Logs in, binds `resource`, enables resumable stream management.
    async fn login(server: &TestServer, user: &str, resource: &str) -> SmClient {
        let mut c =
            Client::login_without_presence(server.plain_addr, user, "pw", Some(resource)).await;
        c.send_str("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            .await;
        let enabled = c.next_element().await;
        assert!(enabled.is("enabled", NS_SM), "{}", show(&enabled));
        assert_eq!(enabled.attr("resume"), Some("true"));
        let id = enabled.attr("id").expect("resumption id").to_string();
        SmClient {
            c,
            h: 0,
            id,
            bodies: Vec::new(),
        }
    }

    /// Reads until `n` messages arrived, counting every stanza; the
    /// server's `<r/>` requests are left unanswered (a client that lost
    /// its network answers nothing).
    async fn read_messages(&mut self, n: usize) {
        let want = self.bodies.len() + n;
        while self.bodies.len() < want {
            let e = self.c.next_element().await;
            if e.ns() == NS_SM {
                assert!(e.is("r", NS_SM), "{}", show(&e));
                continue;
            }
            self.h += 1;
            if e.is("message", NS_CLIENT) {
                let body = e.get_child("body", NS_CLIENT).map(|b| b.text());
                self.bodies.push(body.unwrap_or_default());
            }
        }
    }
}

/// A fresh connection authenticated as `user`, at the point where it
/// would bind (or resume).
async fn authenticated(server: &TestServer, user: &str) -> Client {
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    let outcome = c.scram(ScramHash::Sha256, user, "pw", false).await;
    assert!(outcome.is("success", NS_SASL), "{}", show(&outcome));
    c.open_stream().await;
    let features = c.next_element().await;
    assert!(
        features.get_child("sm", NS_SM).is_some(),
        "sm offered after authentication: {}",
        show(&features)
    );
    c
}

/// The echo of a session's own initial presence (RFC 6121 §4.2.2).
fn own_presence(e: &Element) -> bool {
    e.is("presence", NS_CLIENT) && e.attr("type").is_none()
}

fn chat(to: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat' id='{body}'><body>{body}</body></message>")
}

fn numbered(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// The contact sends `range` to `to` and makes sure the server routed them
/// (a ping round trip after them).
async fn send_numbered(from: &mut Client, to: &str, range: std::ops::RangeInclusive<u32>) {
    for b in numbered(range) {
        from.send_str(&chat(to, &b)).await;
    }
    from.barrier().await;
}

/// The socket drops (no `</stream:stream>`) while a contact sends 50
/// messages; a new connection resumes, telling the server it handled 20
/// of the 25 it had read, and gets messages 21–50, each exactly once, in
/// order, without binding again.
#[tokio::test]
async fn dropped_connection_resumes_with_every_message_once() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = SmClient::login(&server, "alice", "phone").await;
    let mut bob = Client::login(server.plain_addr, "bob", "pw", Some("b")).await;
    let to = "alice@localhost/phone";
    send_numbered(&mut bob, to, 1..=25).await;
    alice.read_messages(25).await;
    assert_eq!(alice.bodies, numbered(1..=25));
    let id = alice.id.clone();
    // The client crashed having handled only 20 of those 25.
    let handled = alice.h - 5;
    drop(alice);
    send_numbered(&mut bob, to, 26..=50).await;

    let mut c = authenticated(&server, "alice").await;
    c.send_str(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='{handled}'/>"
    ))
    .await;
    let resumed = c.next_element().await;
    assert!(resumed.is("resumed", NS_SM), "{}", show(&resumed));
    assert_eq!(resumed.attr("previd"), Some(id.as_str()));
    // Nothing was sent by the client since enable.
    assert_eq!(resumed.attr("h"), Some("0"));
    let mut again = SmClient {
        c,
        h: handled,
        id,
        bodies: Vec::new(),
    };
    again.read_messages(30).await;
    assert_eq!(again.bodies, numbered(21..=50));
    // And nothing more: no second copy of any of them (ack requests
    // aside, which follow whatever the server writes).
    let since = again.c.mark();
    again.c.send_str("<a xmlns='urn:xmpp:sm:3' h='50'/>").await;
    again.c.barrier().await;
    let stray: Vec<String> = again.c.received[since..]
        .iter()
        .filter(|e| !e.is("r", NS_SM))
        .map(show)
        .collect();
    assert!(stray.is_empty(), "after resumption: {stray:?}");
    // The resumed session is the same resource, still bound: bob reaches it.
    bob.send_str(&chat(to, "after")).await;
    again.read_messages(1).await;
    assert_eq!(again.bodies.last().map(String::as_str), Some("after"));
}

/// A resumption while the old connection still looks alive (it stopped
/// reading, no FIN): the old one lets go, and the messages written to it
/// but never acknowledged come again on the new one.
#[tokio::test]
async fn resumption_takes_over_a_half_dead_connection() {
    let server = TestServer::start().await;
    server.add_user("carol", "pw").await;
    server.add_user("dave", "pw").await;
    let old = SmClient::login(&server, "carol", "laptop").await;
    let mut dave = Client::login(server.plain_addr, "dave", "pw", None).await;
    send_numbered(&mut dave, "carol@localhost/laptop", 1..=5).await;
    let mut c = authenticated(&server, "carol").await;
    c.send_str(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{}' h='0'/>",
        old.id
    ))
    .await;
    let resumed = c.next_element().await;
    assert!(resumed.is("resumed", NS_SM), "{}", show(&resumed));
    let mut again = SmClient {
        c,
        h: 0,
        id: old.id.clone(),
        bodies: Vec::new(),
    };
    again.read_messages(5).await;
    assert_eq!(again.bodies, numbered(1..=5));
    // The old socket is closed by the server.
    let mut old = old;
    old.c.expect_closed().await;
}

/// Nobody resumes: after `max_resume` the session ends, and what it never
/// acknowledged is in offline storage with a delay stamp, handed over at
/// the next login, once. On SQLite and PostgreSQL.
async fn expiry_stores_unacknowledged_messages(server: TestServer, user: &str, contact: &str) {
    server.add_user(user, "pw").await;
    server.add_user(contact, "pw").await;
    let mut sm = SmClient::login(&server, user, "tablet").await;
    let mut other = Client::login(server.plain_addr, contact, "pw", None).await;
    let to = format!("{user}@localhost/tablet");
    send_numbered(&mut other, &to, 1..=3).await;
    sm.read_messages(3).await;
    // It acknowledges the first only, then its network goes.
    sm.c.send_str("<a xmlns='urn:xmpp:sm:3' h='1'/>").await;
    sm.c.barrier().await;
    drop(sm);
    let store = server.store().clone();
    eventually("the expired session's messages are stored", || {
        let store = store.clone();
        let user = user.to_string();
        async move { store.offline_count("localhost", &user).await.unwrap() == 2 }
    })
    .await;
    let mut back = Client::login_without_presence(server.plain_addr, user, "pw", None).await;
    let since = back.mark();
    back.send_str("<presence/>").await;
    let is = |body: &'static str| {
        move |e: &Element| {
            e.is("message", NS_CLIENT)
                && e.get_child("body", NS_CLIENT).map(|b| b.text()).as_deref() == Some(body)
                && e.get_child("delay", NS_DELAY).is_some()
        }
    };
    let (m2, m3) = (is("m2"), is("m3"));
    back.expect_only(
        since,
        &[
            Expect("its own presence", &own_presence),
            Expect("m2, delay-stamped", &m2),
            Expect("m3, delay-stamped", &m3),
        ],
    )
    .await;
}

#[tokio::test]
async fn expiry_stores_unacknowledged_messages_on_sqlite() {
    let server = TestServer::start_with(|c| c.stream_management.max_resume = 1).await;
    expiry_stores_unacknowledged_messages(server, "erin", "frank").await;
}

#[tokio::test]
async fn expiry_stores_unacknowledged_messages_on_postgres() {
    let url = std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let server = TestServer::start_with(|c| {
        c.stream_management.max_resume = 1;
        c.database.url = url;
    })
    .await;
    let suffix = std::process::id();
    expiry_stores_unacknowledged_messages(
        server,
        &format!("smexp{suffix}"),
        &format!("smcon{suffix}"),
    )
    .await;
}

/// A new login binds the same resource while the old session waits for
/// resumption: the new login wins, a later resumption of the old session
/// fails with item-not-found, and the message that waited in the old
/// session reaches the new one exactly once.
#[tokio::test]
async fn new_login_of_the_same_resource_beats_a_late_resumption() {
    let server = TestServer::start().await;
    server.add_user("gina", "pw").await;
    server.add_user("hank", "pw").await;
    let old = SmClient::login(&server, "gina", "desk").await;
    let id = old.id.clone();
    drop(old);
    let mut hank = Client::login(server.plain_addr, "hank", "pw", None).await;
    // Whether the drop was noticed yet or not, this waits in the session.
    send_numbered(&mut hank, "gina@localhost/desk", 1..=1).await;
    let mut fresh = Client::login(server.plain_addr, "gina", "pw", Some("desk")).await;
    let since = fresh.mark();
    let mut late = authenticated(&server, "gina").await;
    late.send_str(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let failed = late.next_element().await;
    assert!(failed.is("failed", NS_SM), "{}", show(&failed));
    assert!(
        failed
            .get_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
            .is_some(),
        "{}",
        show(&failed)
    );
    // The failed resumer may still bind a session of its own.
    late.bind(Some("other")).await;
    let m1 = |e: &Element| {
        e.is("message", NS_CLIENT)
            && e.get_child("body", NS_CLIENT).map(|b| b.text()).as_deref() == Some("m1")
    };
    fresh
        .expect_only(
            since,
            &[
                Expect("its own presence", &own_presence),
                Expect("m1 once", &m1),
            ],
        )
        .await;
}

/// Protocol details: `<r/>` is answered with the count of stanzas
/// handled; an unknown previd fails with item-not-found and the stream
/// stays usable; `<enable/>` before binding fails; an ack beyond what was
/// sent ends the stream with undefined-condition.
#[tokio::test]
async fn acks_and_failures() {
    let server = TestServer::start().await;
    server.add_user("ivy", "pw").await;
    let mut c = authenticated(&server, "ivy").await;
    c.send_str("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let f = c.next_element().await;
    assert!(f.is("failed", NS_SM), "{}", show(&f));
    assert!(f
        .get_child("unexpected-request", "urn:ietf:params:xml:ns:xmpp-stanzas")
        .is_some());
    c.send_str("<resume xmlns='urn:xmpp:sm:3' previd='nosuchid' h='0'/>")
        .await;
    let f = c.next_element().await;
    assert!(f.is("failed", NS_SM), "{}", show(&f));
    assert!(f
        .get_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
        .is_some());
    c.bind(Some("r")).await;
    c.send_str("<enable xmlns='urn:xmpp:sm:3'/>").await;
    let enabled = c.next_element().await;
    assert!(enabled.is("enabled", NS_SM), "{}", show(&enabled));
    // Not resumable unless asked: no id.
    assert_eq!(enabled.attr("id"), None);
    // Three stanzas handled: two pings and a presence.
    for i in 0..2 {
        let r = c
            .iq(
                &format!(
                    "<iq type='get' id='p{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
                ),
                &format!("p{i}"),
            )
            .await;
        assert_eq!(r.attr("type"), Some("result"));
    }
    c.send_str("<presence type='unavailable'/><r xmlns='urn:xmpp:sm:3'/>")
        .await;
    let a = loop {
        let e = c.next_element().await;
        if e.is("a", NS_SM) {
            break e;
        }
    };
    assert_eq!(a.attr("h"), Some("3"));
    // The server sent two results; acknowledging 99 is a lie.
    c.send_str("<a xmlns='urn:xmpp:sm:3' h='99'/>").await;
    assert_eq!(c.expect_stream_error().await, "undefined-condition");
    still_serves_user(&server, "ivy").await;
}

/// With stream management on, offline messages handed over at initial
/// presence stay stored until the client acknowledges them: a client that
/// never does (its network goes, nobody resumes) finds them again at the
/// next login, once each; one that acks them has them deleted.
#[tokio::test]
async fn offline_messages_are_deleted_only_once_acknowledged() {
    let server = TestServer::start_with(|c| c.stream_management.max_resume = 1).await;
    server.add_user("jill", "pw").await;
    server.add_user("ken", "pw").await;
    let mut ken = Client::login(server.plain_addr, "ken", "pw", None).await;
    send_numbered(&mut ken, "jill@localhost", 1..=3).await;
    let store = server.store().clone();
    assert_eq!(store.offline_count("localhost", "jill").await.unwrap(), 3);

    let mut first = SmClient::login(&server, "jill", "phone").await;
    first.c.send_str("<presence/>").await;
    first.read_messages(3).await;
    assert_eq!(first.bodies, numbered(1..=3));
    // Read, but never acknowledged: still stored.
    first.c.barrier().await;
    assert_eq!(store.offline_count("localhost", "jill").await.unwrap(), 3);
    drop(first);

    // The session expires; the rows were not stored a second time.
    let s = server.server().clone();
    eventually("the unacknowledged session ended", || {
        let s = s.clone();
        async move { s.sessions.count() == 1 }
    })
    .await;
    assert_eq!(store.offline_count("localhost", "jill").await.unwrap(), 3);

    let mut second = SmClient::login(&server, "jill", "phone").await;
    let since = second.c.mark();
    second.c.send_str("<presence/>").await;
    second.read_messages(3).await;
    assert_eq!(second.bodies, numbered(1..=3));
    second
        .c
        .send_str(&format!("<a xmlns='urn:xmpp:sm:3' h='{}'/>", second.h))
        .await;
    second.c.barrier().await;
    let again: Vec<String> = second.c.received[since..]
        .iter()
        .filter(|e| e.is("message", NS_CLIENT))
        .map(show)
        .collect();
    assert_eq!(again.len(), 3, "each once: {again:?}");
    eventually("acknowledged rows are deleted", || {
        let store = store.clone();
        async move { store.offline_count("localhost", "jill").await.unwrap() == 0 }
    })
    .await;
}

/// One account may keep only `max_parked_per_account` sessions waiting:
/// parking one more ends the oldest, whose message goes to offline
/// storage; the newer one still resumes.
#[tokio::test]
async fn an_account_cannot_pile_up_waiting_sessions() {
    let server = TestServer::start_with(|c| c.stream_management.max_parked_per_account = 1).await;
    server.add_user("lou", "pw").await;
    server.add_user("max", "pw").await;
    let a = SmClient::login(&server, "lou", "a").await;
    let b = SmClient::login(&server, "lou", "b").await;
    let (id_a, id_b) = (a.id.clone(), b.id.clone());
    let mut max = Client::login(server.plain_addr, "max", "pw", None).await;
    drop(a);
    let s = server.server().clone();
    let parked = move || {
        let s = s.clone();
        async move {
            s.features
                .get::<waxwing::modules::stream_management::StreamManagementFeature>()
                .map(|f| f.parked())
        }
    };
    eventually("a waits for resumption", || {
        let p = parked();
        async move { p.await == Some(1) }
    })
    .await;
    send_numbered(&mut max, "lou@localhost/a", 1..=1).await;
    drop(b);
    let store = server.store().clone();
    eventually(
        "the oldest waiting session ended into offline storage",
        || {
            let store = store.clone();
            async move { store.offline_count("localhost", "lou").await.unwrap() == 1 }
        },
    )
    .await;
    let mut late = authenticated(&server, "lou").await;
    late.send_str(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id_a}' h='0'/>"
    ))
    .await;
    let failed = late.next_element().await;
    assert!(failed.is("failed", NS_SM), "{}", show(&failed));
    let mut c = authenticated(&server, "lou").await;
    c.send_str(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id_b}' h='0'/>"
    ))
    .await;
    let resumed = c.next_element().await;
    assert!(resumed.is("resumed", NS_SM), "{}", show(&resumed));
}

/// A client that leaves more than `max_unacked` stanzas unacknowledged has
/// its stream closed (policy-violation); its session waits and resumes
/// with them.
#[tokio::test]
async fn too_many_unacknowledged_stanzas_close_the_stream_and_the_session_waits() {
    let server = TestServer::start_with(|c| c.stream_management.max_unacked = 3).await;
    server.add_user("quinn", "pw").await;
    server.add_user("rosa", "pw").await;
    let mut q = SmClient::login(&server, "quinn", "q").await;
    let mut rosa = Client::login(server.plain_addr, "rosa", "pw", None).await;
    send_numbered(&mut rosa, "quinn@localhost/q", 1..=4).await;
    assert_eq!(q.c.expect_stream_error().await, "policy-violation");
    let id = q.id.clone();
    let mut c = authenticated(&server, "quinn").await;
    c.send_str(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let resumed = c.next_element().await;
    assert!(resumed.is("resumed", NS_SM), "{}", show(&resumed));
    let mut again = SmClient {
        c,
        h: 0,
        id,
        bodies: Vec::new(),
    };
    again.read_messages(4).await;
    assert_eq!(again.bodies, numbered(1..=4));
}

/// The database's write lock, held by a connection of the test's own: the
/// archive writer's commits wait for it (SQLite's busy timeout).
/// Messages in `user`'s archive.
async fn archived(server: &TestServer, user: &str) -> i64 {
    let owner = waxwing::storage::ArchiveOwner {
        kind: waxwing::storage::ArchiveKind::User,
        domain: "localhost".into(),
        username: user.into(),
    };
    let all = waxwing::storage::ArchiveFilter::default();
    server.store().archive_count(&owner, &all).await.unwrap()
}

/// A client that asks for an ack and closes its stream in the same write
/// gets the answer before the server's end of the stream, and the answer
/// counts only stanzas whose archive rows are committed (the answer may be
/// owed while the archive writer commits; it is never dropped).
#[tokio::test]
async fn an_ack_asked_just_before_closing_is_answered_after_the_archive_commit() {
    let server = TestServer::start().await;
    server.add_user("kim", "pw").await;
    server.add_user("lee", "pw").await;
    let mut k = SmClient::login(&server, "kim", "r").await;
    // Online, so the messages are delivered, not stored offline (which
    // would wait for the lock below before `<r/>` is even read).
    let _l = SmClient::login(&server, "lee", "r").await;
    // Another connection holds the database's write lock, so the archive
    // writer's commit waits (SQLite's busy timeout) and the answer to
    // `<r/>` is owed when the stream's end arrives.
    let lock = db::WriteLock::take(&server).await;
    let mut out = String::new();
    for b in numbered(1..=20) {
        out.push_str(&chat("lee@localhost", &b));
    }
    out.push_str("<r xmlns='urn:xmpp:sm:3'/></stream:stream>");
    k.c.send_str(&out).await;
    // Time for the server to read it all (not needed for the answer to
    // be right, only for the end to arrive while the answer is owed).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    lock.release().await;
    let a = loop {
        let e = k.c.next_element().await;
        if e.is("a", NS_SM) {
            break e;
        }
    };
    assert_eq!(a.attr("h"), Some("20"));
    // Acknowledged, so archived for both sides by now.
    for u in ["kim", "lee"] {
        assert_eq!(archived(&server, u).await, 20, "{u}");
    }
    k.c.expect_closed().await;
    still_serves_user(&server, "lee").await;
}

/// `<resumed h/>` acknowledges what the session handled, so it too waits
/// for the archive to have committed those stanzas: with the database's
/// write lock held by another connection, no `<resumed/>` comes; once the
/// lock goes, it comes and the archive already holds every message.
#[tokio::test]
async fn resumed_waits_for_the_archive_to_commit_what_it_acknowledges() {
    let server = TestServer::start().await;
    server.add_user("kim", "pw").await;
    server.add_user("lee", "pw").await;
    let mut kim = SmClient::login(&server, "kim", "r").await;
    let _lee = SmClient::login(&server, "lee", "r").await;
    // The new connection logs in first (a login writes to the database).
    let mut c = authenticated(&server, "kim").await;
    let lock = db::WriteLock::take(&server).await;
    for b in numbered(1..=20) {
        // To the bound resource: delivered, not stored offline (which
        // would wait for the lock itself).
        kim.c.send_str(&chat("lee@localhost/r", &b)).await;
    }
    // Handled (the archive writer is what waits for the lock).
    kim.c.barrier().await;
    let id = kim.id.clone();
    drop(kim);
    c.send_str(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let early = tokio::time::timeout(std::time::Duration::from_millis(700), c.next_element()).await;
    assert!(
        early.is_err(),
        "<resumed/> before the archive committed: {:?}",
        early.map(|e| show(&e))
    );
    lock.release().await;
    let resumed = c.next_element().await;
    assert!(resumed.is("resumed", NS_SM), "{}", show(&resumed));
    assert_eq!(archived(&server, "kim").await, 20);
}
