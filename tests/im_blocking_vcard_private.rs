//! Blocking Command (XEP-0191), vcard-temp (XEP-0054) and Private XML
//! Storage (XEP-0049) over real sockets, on SQLite and PostgreSQL
//! (WAXWING_TEST_POSTGRES, default the local one).

mod common;

use common::*;
use waxwing::xml::{Element, NS_CLIENT};

const NS_BLOCKING: &str = "urn:xmpp:blocking";
const NS_BLOCKING_ERRORS: &str = "urn:xmpp:blocking:errors";
const NS_VCARD: &str = "vcard-temp";
const NS_PRIVATE: &str = "jabber:iq:private";

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn start_postgres() -> TestServer {
    TestServer::start_with(|c| c.database.url = postgres_url()).await
}

/// Usernames no other run uses, so runs against one PostgreSQL database
/// never collide: `names(["alice", "bob"])` → alice<tag>, bob<tag>.
fn names<const N: usize>(base: [&str; N]) -> [String; N] {
    use rand::Rng;
    let tag: u32 = rand::thread_rng().gen();
    base.map(|b| format!("{b}{tag}"))
}

async fn add_users(ts: &TestServer, users: &[&String]) {
    for u in users {
        ts.add_user(u, "pw").await;
    }
}

async fn remove_users(ts: &TestServer, users: &[&String]) {
    for u in users {
        ts.store().delete_account(DOMAIN, u).await.unwrap();
    }
}

async fn login(ts: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = Client::login(ts.plain_addr, user, "pw", Some(resource)).await;
    sync(&mut c).await;
    c
}

/// A round trip to the server: returns everything that arrived before the
/// answer. Once it returns, every stanza the server handled for this
/// session earlier has been delivered, and every stanza routed to it
/// earlier has been read.
async fn sync(c: &mut Client) -> Vec<Element> {
    iq_collect(
        c,
        "<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        "sync",
    )
    .await
    .1
}

/// Sends an IQ; returns its answer and whatever arrived before it.
async fn iq_collect(c: &mut Client, xml: &str, id: &str) -> (Element, Vec<Element>) {
    c.send_str(xml).await;
    let mut before = Vec::new();
    loop {
        let e = c.next_element().await;
        if e.is("iq", NS_CLIENT)
            && e.attr("id") == Some(id)
            && matches!(e.attr("type"), Some("result" | "error"))
        {
            return (e, before);
        }
        before.push(e);
    }
}

fn jids_of(list: &Element) -> Vec<String> {
    list.children()
        .filter(|i| i.is("item", NS_BLOCKING))
        .filter_map(|i| i.attr("jid").map(str::to_string))
        .collect()
}

async fn blocklist(c: &mut Client) -> Vec<String> {
    let r = c
        .iq(
            "<iq type='get' id='bl'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
            "bl",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    jids_of(r.get_child("blocklist", NS_BLOCKING).expect("blocklist"))
}

/// Sends a block (or unblock) command for `jids`; returns the answer and
/// what arrived before it (the push to this resource, when it is interested).
async fn command(c: &mut Client, verb: &str, jids: &[&str]) -> (Element, Vec<Element>) {
    let items: String = jids.iter().map(|j| format!("<item jid='{j}'/>")).collect();
    iq_collect(
        c,
        &format!("<iq type='set' id='cmd'><{verb} xmlns='urn:xmpp:blocking'>{items}</{verb}></iq>"),
        "cmd",
    )
    .await
}

async fn block(c: &mut Client, jids: &[&str]) -> Vec<Element> {
    let (r, before) = command(c, "block", jids).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    before
}

async fn unblock(c: &mut Client, jids: &[&str]) -> Vec<Element> {
    let (r, before) = command(c, "unblock", jids).await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    before
}

/// The blocking pushes among `elements`: (verb, item JIDs).
fn pushes(elements: &[Element]) -> Vec<(String, Vec<String>)> {
    elements
        .iter()
        .filter(|e| e.is("iq", NS_CLIENT) && e.attr("type") == Some("set"))
        .filter_map(|e| {
            let p = e.children().find(|p| p.ns() == NS_BLOCKING)?;
            Some((p.name().to_string(), jids_of(p)))
        })
        .collect()
}

fn chat(to: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat' id='c'><body>{body}</body></message>")
}

/// The whole blocking use case between two users, one of whom has two
/// resources (one interested in pushes, one not).
async fn blocking_scenario(ts: &TestServer) {
    let [a, b, c] = names(["alice", "bob", "carol"]);
    add_users(ts, &[&a, &b, &c]).await;
    let (a_bare, b_bare, c_bare) = (
        format!("{a}@{DOMAIN}"),
        format!("{b}@{DOMAIN}"),
        format!("{c}@{DOMAIN}"),
    );
    let b_full = format!("{b_bare}/r");
    let mut phone = login(ts, &a, "phone").await;
    let mut desk = login(ts, &a, "desk").await;
    let mut bob = login(ts, &b, "r").await;

    // §3.2: an empty list; the phone is now interested in pushes.
    assert!(blocklist(&mut phone).await.is_empty());

    // §3.3: block; the interested resource gets a push, the other none.
    let desk_mark = desk.mark();
    let before = block(&mut phone, &[&b_bare]).await;
    assert_eq!(
        pushes(&before),
        vec![("block".into(), vec![b_bare.clone()])]
    );
    let push = before.iter().find(|e| e.is("iq", NS_CLIENT)).unwrap();
    assert_eq!(push.attr("to"), Some(format!("{a_bare}/phone").as_str()));
    desk.expect_nothing(desk_mark).await;
    assert_eq!(blocklist(&mut desk).await, vec![b_bare.clone()]);
    assert_eq!(
        ts.store()
            .user_data_get(DOMAIN, &a, "blocklist")
            .await
            .unwrap()
            .as_deref(),
        Some(b_bare.as_str())
    );

    // Inbound message from the blocked JID: service-unavailable, not delivered.
    let (phone_mark, desk_mark) = (phone.mark(), desk.mark());
    for to in [a_bare.clone(), format!("{a_bare}/phone")] {
        bob.send_str(&chat(&to, "hello?")).await;
        let e = bob.next_named("message").await;
        assert_eq!(e.attr("type"), Some("error"), "{e:?}");
        assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
        assert!(e
            .get_child("error", NS_CLIENT)
            .unwrap()
            .get_child("blocked", NS_BLOCKING_ERRORS)
            .is_none());
    }
    // Inbound presence: dropped without any answer. Inbound IQ get: error.
    let bob_mark = bob.mark();
    bob.send_str(&format!("<presence to='{a_bare}/phone'/>"))
        .await;
    let (e, _) = iq_collect(
        &mut bob,
        &format!("<iq type='get' id='q' to='{a_bare}/phone'><ping xmlns='urn:xmpp:ping'/></iq>"),
        "q",
    )
    .await;
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
    // Bob got the IQ's error and nothing else (no error for the presence).
    bob.expect_only(
        bob_mark,
        &[Expect("the ping's error", &|e| e.attr("id") == Some("q"))],
    )
    .await;
    // Bob's session handled each stanza before answering the next: anything
    // delivered to alice's resources is in their queues by now.
    phone.expect_nothing(phone_mark).await;
    desk.expect_nothing(desk_mark).await;

    // Outbound to the blocked JID: not-acceptable with <blocked/>.
    let bob_mark = bob.mark();
    desk.send_str(&chat(&b_bare, "psst")).await;
    let e = desk.next_named("message").await;
    assert_eq!(e.attr("type"), Some("error"));
    assert_eq!(stanza_error(&e).as_deref(), Some("not-acceptable"));
    assert!(e
        .get_child("error", NS_CLIENT)
        .unwrap()
        .get_child("blocked", NS_BLOCKING_ERRORS)
        .is_some());
    bob.expect_nothing(bob_mark).await;

    // §3.4: unblock restores delivery, and is pushed.
    let before = unblock(&mut phone, &[&b_bare]).await;
    assert_eq!(
        pushes(&before),
        vec![("unblock".into(), vec![b_bare.clone()])]
    );
    bob.send_str(&chat(&a_bare, "there you are")).await;
    sync(&mut bob).await;
    let m = phone.next_named("message").await;
    assert_eq!(m.attr("from"), Some(b_full.as_str()));
    assert_ne!(m.attr("type"), Some("error"));

    // §3.5: unblock all, with an empty push.
    block(&mut phone, &[&b_bare, &c_bare]).await;
    assert_eq!(blocklist(&mut phone).await, {
        let mut v = vec![b_bare.clone(), c_bare.clone()];
        v.sort();
        v
    });
    let before = unblock(&mut phone, &[]).await;
    assert_eq!(pushes(&before), vec![("unblock".into(), vec![])]);
    assert!(blocklist(&mut phone).await.is_empty());
    assert!(ts
        .store()
        .user_data_get(DOMAIN, &a, "blocklist")
        .await
        .unwrap()
        .is_none());
    bob.send_str(&chat(&a_bare, "back again")).await;
    sync(&mut bob).await;
    let m = phone.next_named("message").await;
    assert_eq!(m.attr("from"), Some(b_full.as_str()));

    remove_users(ts, &[&a, &b, &c]).await;
}

#[tokio::test]
async fn blocking_on_sqlite() {
    let ts = TestServer::start().await;
    blocking_scenario(&ts).await;
}

#[tokio::test]
async fn blocking_on_postgres() {
    let ts = start_postgres().await;
    blocking_scenario(&ts).await;
}

#[tokio::test]
async fn block_command_errors() {
    let ts = TestServer::start().await;
    let [a, b] = names(["alice", "bob"]);
    add_users(&ts, &[&a, &b]).await;
    let mut alice = login(&ts, &a, "r").await;
    // §3.3: a block without items is a bad request.
    let (r, _) = command(&mut alice, "block", &[]).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
    let (r, _) = command(&mut alice, "block", &["@@not a jid"]).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("jid-malformed"));
    // The blocklist is nobody else's business.
    let r = alice
        .iq(
            &format!("<iq type='get' id='o' to='{b}@{DOMAIN}'><blocklist xmlns='urn:xmpp:blocking'/></iq>"),
            "o",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("service-unavailable"));
    // Wrong verb for the IQ type.
    let r = alice
        .iq(
            "<iq type='set' id='w'><blocklist xmlns='urn:xmpp:blocking'/></iq>",
            "w",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
    assert!(blocklist(&mut alice).await.is_empty());
}

#[tokio::test]
async fn domain_full_jid_and_own_domain_blocks() {
    let ts = TestServer::start().await;
    let [a, b] = names(["alice", "bob"]);
    add_users(&ts, &[&a, &b]).await;
    let (a_bare, b_bare) = (format!("{a}@{DOMAIN}"), format!("{b}@{DOMAIN}"));
    let mut alice = login(&ts, &a, "r").await;
    let mut bob_desk = login(&ts, &b, "desk").await;
    let mut bob_phone = login(&ts, &b, "phone").await;

    // A remote domain: anything at it is refused as blocked, before routing
    // would have said remote-server-not-found.
    block(&mut alice, &["Evil.Example"]).await;
    assert_eq!(
        blocklist(&mut alice).await,
        vec!["evil.example".to_string()]
    );
    alice.send_str(&chat("mallory@evil.example/x", "hi")).await;
    let e = alice.next_named("message").await;
    assert_eq!(stanza_error(&e).as_deref(), Some("not-acceptable"));
    unblock(&mut alice, &[]).await;

    // A full JID: only that resource is blocked.
    let desk = format!("{b_bare}/desk");
    block(&mut alice, &[&desk]).await;
    let mark = alice.mark();
    bob_desk.send_str(&chat(&a_bare, "from desk")).await;
    let e = bob_desk.next_named("message").await;
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
    bob_phone.send_str(&chat(&a_bare, "from phone")).await;
    sync(&mut bob_phone).await;
    let from_phone = format!("{b_bare}/phone");
    alice
        .expect_only(
            mark,
            &[Expect("the message from bob's phone", &|e| {
                e.is("message", NS_CLIENT) && e.attr("from") == Some(from_phone.as_str())
            })],
        )
        .await;
    unblock(&mut alice, &[]).await;

    // The own domain: every local user is blocked, but the server itself
    // stays reachable, as do the user's own resources.
    block(&mut alice, &[DOMAIN]).await;
    let (mark, desk_mark, phone_mark) = (alice.mark(), bob_desk.mark(), bob_phone.mark());
    bob_phone.send_str(&chat(&a_bare, "hi")).await;
    let e = bob_phone.next_named("message").await;
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
    alice.send_str(&chat(&b_bare, "hi")).await;
    let e = alice.next_named("message").await;
    assert_eq!(stanza_error(&e).as_deref(), Some("not-acceptable"));
    // Neither message got through: each side saw its own error only.
    alice
        .expect_only(
            mark,
            &[Expect("the not-acceptable error", &|e| {
                e.attr("type") == Some("error") && e.attr("from") == Some(b_bare.as_str())
            })],
        )
        .await;
    bob_desk.expect_nothing(desk_mark).await;
    bob_phone
        .expect_only(
            phone_mark,
            &[Expect("the service-unavailable error", &|e| {
                e.attr("type") == Some("error") && e.attr("from") == Some(a_bare.as_str())
            })],
        )
        .await;
    let r = alice
        .iq(
            "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    let mut alice2 = login(&ts, &a, "other").await;
    alice2
        .send_str(&chat(&format!("{a_bare}/r"), "note to self"))
        .await;
    sync(&mut alice2).await;
    let m = alice.next_named("message").await;
    assert_eq!(m.attr("from"), Some(format!("{a_bare}/other").as_str()));
    unblock(&mut alice, &[DOMAIN]).await;
    assert!(blocklist(&mut alice).await.is_empty());
}

#[tokio::test]
async fn blocklist_is_read_from_storage_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/keep.db", dir.path().display());
    let [a, b] = names(["alice", "bob"]);
    let (a_bare, b_bare) = (format!("{a}@{DOMAIN}"), format!("{b}@{DOMAIN}"));
    {
        let mut ts = TestServer::start_with(|c| c.database.url = url.clone()).await;
        add_users(&ts, &[&a, &b]).await;
        let mut alice = login(&ts, &a, "r").await;
        block(&mut alice, &[&b_bare]).await;
        ts.stop().await;
    }
    let ts = TestServer::start_with(|c| c.database.url = url.clone()).await;
    // Bob speaks first, so it is his message that loads alice's list.
    let mut bob = login(&ts, &b, "r").await;
    bob.send_str(&chat(&a_bare, "remember me?")).await;
    let e = bob.next_named("message").await;
    assert_eq!(stanza_error(&e).as_deref(), Some("service-unavailable"));
    let mut alice = login(&ts, &a, "r").await;
    assert_eq!(blocklist(&mut alice).await, vec![b_bare]);
}

#[tokio::test]
async fn blocking_a_subscriber_sends_unavailable_and_unblocking_presence() {
    let ts = TestServer::start().await;
    let [a, b] = names(["alice", "bob"]);
    add_users(&ts, &[&a, &b]).await;
    let (a_bare, b_bare) = (format!("{a}@{DOMAIN}"), format!("{b}@{DOMAIN}"));
    let mut alice = login(&ts, &a, "r").await;
    let mut bob = login(&ts, &b, "r").await;
    // Bob subscribes to alice's presence and she approves.
    bob.send_str(&format!("<presence to='{a_bare}' type='subscribe'/>"))
        .await;
    let req = alice.next_named("presence").await;
    assert_eq!(req.attr("type"), Some("subscribe"));
    alice
        .send_str(&format!("<presence to='{b_bare}' type='subscribed'/>"))
        .await;
    sync(&mut alice).await;
    sync(&mut bob).await;

    block(&mut alice, &[&b_bare]).await;
    let got = sync(&mut bob).await;
    let p = got
        .iter()
        .find(|e| e.is("presence", NS_CLIENT) && e.attr("from") == Some(&format!("{a_bare}/r")))
        .unwrap_or_else(|| panic!("unavailable presence from alice: {got:?}"));
    assert_eq!(p.attr("type"), Some("unavailable"));

    unblock(&mut alice, &[&b_bare]).await;
    let got = sync(&mut bob).await;
    let p = got
        .iter()
        .find(|e| e.is("presence", NS_CLIENT) && e.attr("from") == Some(&format!("{a_bare}/r")))
        .unwrap_or_else(|| panic!("presence from alice again: {got:?}"));
    assert_eq!(p.attr("type"), None);
}

async fn vcard_scenario(ts: &TestServer) {
    let [a, b, c] = names(["alice", "bob", "carol"]);
    add_users(ts, &[&a, &b, &c]).await;
    let a_bare = format!("{a}@{DOMAIN}");
    let mut alice = login(ts, &a, "r").await;
    let mut bob = login(ts, &b, "r").await;

    // None yet: an empty vCard.
    let r = alice
        .iq(
            "<iq type='get' id='v1'><vCard xmlns='vcard-temp'/></iq>",
            "v1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let v = r.get_child("vCard", NS_VCARD).expect("vCard");
    assert_eq!(v.children().count(), 0);

    let r = alice
        .iq(
            "<iq type='set' id='v2'><vCard xmlns='vcard-temp'><FN>Alice &amp; Co</FN><NICKNAME>al</NICKNAME><PHOTO><TYPE>image/png</TYPE><BINVAL>iVBORw0KGgo=</BINVAL></PHOTO></vCard></iq>",
            "v2",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    assert!(r.children().next().is_none());

    // Own, with and without 'to'.
    for to in ["", &format!(" to='{a_bare}'")] {
        let r = alice
            .iq(
                &format!("<iq type='get' id='v3'{to}><vCard xmlns='vcard-temp'/></iq>"),
                "v3",
            )
            .await;
        let v = r.get_child("vCard", NS_VCARD).expect("vCard");
        assert_eq!(v.get_child("FN", NS_VCARD).unwrap().text(), "Alice & Co");
        let photo = v.get_child("PHOTO", NS_VCARD).unwrap();
        assert_eq!(
            photo.get_child("BINVAL", NS_VCARD).unwrap().text(),
            "iVBORw0KGgo="
        );
    }

    // Someone else's: the server answers from the account's bare JID.
    let r = bob
        .iq(
            &format!("<iq type='get' id='v4' to='{a_bare}'><vCard xmlns='vcard-temp'/></iq>"),
            "v4",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    assert_eq!(r.attr("from"), Some(a_bare.as_str()));
    let v = r.get_child("vCard", NS_VCARD).unwrap();
    assert_eq!(v.get_child("NICKNAME", NS_VCARD).unwrap().text(), "al");

    // No vCard and no account answer alike (XEP-0054 1.3).
    for who in [format!("{c}@{DOMAIN}"), format!("nobody{c}@{DOMAIN}")] {
        let r = bob
            .iq(
                &format!("<iq type='get' id='v5' to='{who}'><vCard xmlns='vcard-temp'/></iq>"),
                "v5",
            )
            .await;
        assert_eq!(
            stanza_error(&r).as_deref(),
            Some("service-unavailable"),
            "{who}"
        );
    }

    // Nobody sets another's vCard.
    let r = bob
        .iq(
            &format!("<iq type='set' id='v6' to='{a_bare}'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>"),
            "v6",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    // What is stored is the vCard element itself.
    let stored = ts
        .store()
        .user_data_get(DOMAIN, &a, "vcard")
        .await
        .unwrap()
        .unwrap();
    assert!(stored.starts_with("<vCard xmlns='vcard-temp'>"), "{stored}");
    assert!(stored.contains("Alice &amp; Co"));

    // Beyond the size limit (64 KiB by default): refused, the old one stays.
    let big = "x".repeat(70 * 1024);
    let r = alice
        .iq(
            &format!(
                "<iq type='set' id='v7'><vCard xmlns='vcard-temp'><DESC>{big}</DESC></vCard></iq>"
            ),
            "v7",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"));
    let r = alice
        .iq(
            "<iq type='get' id='v8'><vCard xmlns='vcard-temp'/></iq>",
            "v8",
        )
        .await;
    let v = r.get_child("vCard", NS_VCARD).unwrap();
    assert!(v.get_child("DESC", NS_VCARD).is_none());
    assert_eq!(v.get_child("FN", NS_VCARD).unwrap().text(), "Alice & Co");

    // An empty vCard clears it.
    alice
        .iq(
            "<iq type='set' id='v9'><vCard xmlns='vcard-temp'/></iq>",
            "v9",
        )
        .await;
    assert!(ts
        .store()
        .user_data_get(DOMAIN, &a, "vcard")
        .await
        .unwrap()
        .is_none());

    remove_users(ts, &[&a, &b, &c]).await;
}

#[tokio::test]
async fn vcard_on_sqlite() {
    let ts = TestServer::start().await;
    vcard_scenario(&ts).await;
}

#[tokio::test]
async fn vcard_on_postgres() {
    let ts = start_postgres().await;
    vcard_scenario(&ts).await;
}

#[tokio::test]
async fn vcard_size_limit_is_configurable() {
    let ts = TestServer::start_with(|c| c.limits.max_vcard_size = 2048).await;
    let [a] = names(["alice"]);
    add_users(&ts, &[&a]).await;
    let mut alice = login(&ts, &a, "r").await;
    let fits = "x".repeat(1500);
    let r = alice
        .iq(
            &format!(
                "<iq type='set' id='s1'><vCard xmlns='vcard-temp'><DESC>{fits}</DESC></vCard></iq>"
            ),
            "s1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    let over = "x".repeat(2100);
    let r = alice
        .iq(
            &format!(
                "<iq type='set' id='s2'><vCard xmlns='vcard-temp'><DESC>{over}</DESC></vCard></iq>"
            ),
            "s2",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"));
}

#[tokio::test]
async fn blocked_requester_cannot_read_the_vcard() {
    let ts = TestServer::start().await;
    let [a, b] = names(["alice", "bob"]);
    add_users(&ts, &[&a, &b]).await;
    let mut alice = login(&ts, &a, "r").await;
    let mut bob = login(&ts, &b, "r").await;
    alice
        .iq(
            "<iq type='set' id='v'><vCard xmlns='vcard-temp'><FN>A</FN></vCard></iq>",
            "v",
        )
        .await;
    block(&mut alice, &[&format!("{b}@{DOMAIN}")]).await;
    let r = bob
        .iq(
            &format!("<iq type='get' id='g' to='{a}@{DOMAIN}'><vCard xmlns='vcard-temp'/></iq>"),
            "g",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("service-unavailable"));
}

fn private_iq(kind: &str, id: &str, to: Option<&str>, inner: &str) -> String {
    let to = to.map(|t| format!(" to='{t}'")).unwrap_or_default();
    format!("<iq type='{kind}' id='{id}'{to}><query xmlns='jabber:iq:private'>{inner}</query></iq>")
}

async fn private_scenario(ts: &TestServer) {
    let [a, b] = names(["alice", "bob"]);
    add_users(ts, &[&a, &b]).await;
    let a_bare = format!("{a}@{DOMAIN}");
    let mut alice = login(ts, &a, "r").await;
    let mut bob = login(ts, &b, "r").await;

    // Two namespaces in one set, one of them with two elements.
    let r = alice
        .iq(
            &private_iq(
                "set",
                "p1",
                None,
                "<storage xmlns='storage:bookmarks'><conference jid='room@muc.example' autojoin='true'><nick>al</nick></conference></storage>\
                 <prefs xmlns='urn:example:prefs'><theme>dark</theme></prefs><extra xmlns='urn:example:prefs' n='2'/>",
            ),
            "p1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");

    let r = alice
        .iq(
            &private_iq("get", "p2", None, "<storage xmlns='storage:bookmarks'/>"),
            "p2",
        )
        .await;
    let q = r.get_child("query", NS_PRIVATE).expect("query");
    let conf = q
        .get_child("storage", "storage:bookmarks")
        .and_then(|s| s.get_child("conference", "storage:bookmarks"))
        .expect("stored bookmark");
    assert_eq!(conf.attr("jid"), Some("room@muc.example"));
    assert_eq!(
        conf.get_child("nick", "storage:bookmarks").unwrap().text(),
        "al"
    );

    // The account's own bare JID is the same as no 'to'.
    let r = alice
        .iq(
            &private_iq(
                "get",
                "p3",
                Some(&a_bare),
                "<prefs xmlns='urn:example:prefs'/>",
            ),
            "p3",
        )
        .await;
    let q = r.get_child("query", NS_PRIVATE).expect("query");
    let got: Vec<&str> = q.children().map(|c| c.name()).collect();
    assert_eq!(got, vec!["prefs", "extra"]);
    assert_eq!(
        q.get_child("prefs", "urn:example:prefs")
            .and_then(|p| p.get_child("theme", "urn:example:prefs"))
            .map(|t| t.text())
            .as_deref(),
        Some("dark")
    );

    // Nothing stored: the request comes back empty.
    let r = alice
        .iq(
            &private_iq("get", "p4", None, "<notes xmlns='urn:example:none'/>"),
            "p4",
        )
        .await;
    let q = r.get_child("query", NS_PRIVATE).expect("query");
    let n = q.get_child("notes", "urn:example:none").expect("echoed");
    assert_eq!(n.children().count(), 0);

    // Replacing a namespace's document.
    alice
        .iq(
            &private_iq("set", "p5", None, "<storage xmlns='storage:bookmarks'/>"),
            "p5",
        )
        .await;
    let r = alice
        .iq(
            &private_iq("get", "p6", None, "<storage xmlns='storage:bookmarks'/>"),
            "p6",
        )
        .await;
    let s = r
        .get_child("query", NS_PRIVATE)
        .and_then(|q| q.get_child("storage", "storage:bookmarks"))
        .unwrap();
    assert_eq!(s.children().count(), 0);

    // Another user's data, for reading or writing: forbidden.
    for kind in ["get", "set"] {
        let r = bob
            .iq(
                &private_iq(
                    kind,
                    "p7",
                    Some(&a_bare),
                    "<prefs xmlns='urn:example:prefs'/>",
                ),
                "p7",
            )
            .await;
        assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"), "{kind}");
    }
    // The server's domain is not an account either.
    let r = alice
        .iq(
            &private_iq(
                "get",
                "p8",
                Some(DOMAIN),
                "<prefs xmlns='urn:example:prefs'/>",
            ),
            "p8",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    remove_users(ts, &[&a, &b]).await;
}

#[tokio::test]
async fn private_storage_on_sqlite() {
    let ts = TestServer::start().await;
    private_scenario(&ts).await;
}

#[tokio::test]
async fn private_storage_on_postgres() {
    let ts = start_postgres().await;
    private_scenario(&ts).await;
}

#[tokio::test]
async fn private_storage_refusals() {
    let ts = TestServer::start().await;
    let [a] = names(["alice"]);
    add_users(&ts, &[&a]).await;
    let mut alice = login(&ts, &a, "r").await;
    for (kind, inner, want) in [
        // XEP-0049 §2.3: at least one child.
        ("get", "", "not-acceptable"),
        ("set", "", "not-acceptable"),
        // Reserved namespaces (the child inherits jabber:iq:private here).
        ("set", "<foo/>", "not-acceptable"),
        ("set", "<x xmlns='jabber:client'/>", "not-acceptable"),
        ("get", "<x xmlns='jabber:server'/>", "not-acceptable"),
        (
            "set",
            "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>",
            "not-acceptable",
        ),
        (
            "set",
            "<ok xmlns='urn:example:ok'/><x xmlns='jabber:client'/>",
            "not-acceptable",
        ),
        // One namespace per get.
        (
            "get",
            "<a xmlns='urn:example:a'/><b xmlns='urn:example:b'/>",
            "bad-request",
        ),
    ] {
        let r = alice.iq(&private_iq(kind, "r", None, inner), "r").await;
        assert_eq!(stanza_error(&r).as_deref(), Some(want), "{kind} {inner}");
    }
    // A refused set stores nothing, not even its acceptable part.
    let r = alice
        .iq(
            &private_iq("get", "g", None, "<ok xmlns='urn:example:ok'/>"),
            "g",
        )
        .await;
    assert!(ts
        .store()
        .user_data_get(DOMAIN, &a, "private:urn:example:ok")
        .await
        .unwrap()
        .is_none());
    assert_eq!(r.attr("type"), Some("result"));
}

#[tokio::test]
async fn disco_advertises_blocking_and_vcard_but_no_private_feature() {
    let ts = TestServer::start().await;
    let [a] = names(["alice"]);
    add_users(&ts, &[&a]).await;
    let mut alice = login(&ts, &a, "r").await;
    let r = alice
        .iq(
            "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d",
        )
        .await;
    let features: Vec<String> = r
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap()
        .children()
        .filter_map(|f| f.attr("var").map(str::to_string))
        .collect();
    assert!(features.iter().any(|f| f == NS_BLOCKING), "{features:?}");
    assert!(features.iter().any(|f| f == NS_VCARD), "{features:?}");
    assert!(!features.iter().any(|f| f == NS_PRIVATE), "{features:?}");
}
