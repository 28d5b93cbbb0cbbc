//! IM core over real sockets: roster, subscriptions, presence, offline
//! messages, last activity.

mod common;

use common::*;
use waxwing::xml::{Element, NS_CLIENT};

const NS_ROSTER: &str = "jabber:iq:roster";

fn roster_item<'a>(q: &'a Element, jid: &str) -> Option<&'a Element> {
    q.children().find(|i| i.attr("jid") == Some(jid))
}

/// Logs in and fetches the roster (becoming interested in pushes).
async fn online(server: &TestServer, user: &str, resource: &str) -> Client {
    let mut c = Client::login_without_presence(server.plain_addr, user, "pw", Some(resource)).await;
    let r = c
        .iq(
            "<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>",
            "r0",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{r:?}");
    c.send_str("<presence/>").await;
    c
}

/// Next roster push, acknowledged as RFC 6121 §2.1.6 asks.
async fn next_push(c: &mut Client) -> Element {
    loop {
        let e = c.next_named("iq").await;
        if e.attr("type") == Some("set") && e.get_child("query", NS_ROSTER).is_some() {
            let id = e.attr("id").unwrap_or_default().to_string();
            c.send_str(&format!("<iq type='result' id='{id}'/>")).await;
            return e
                .get_child("query", NS_ROSTER)
                .unwrap()
                .children()
                .next()
                .unwrap()
                .clone();
        }
    }
}

/// Something a client waits for, in whatever order it comes.
enum Want<'a> {
    Push(&'a str),
    Presence(Option<&'a str>, &'a str),
}

/// Reads until every wanted push and presence has been seen.
async fn expect_all(c: &mut Client, mut wants: Vec<Want<'_>>) {
    while !wants.is_empty() {
        let e = c.next_element().await;
        let found = wants.iter().position(|w| match w {
            Want::Push(sub) => {
                e.name() == "iq"
                    && e.attr("type") == Some("set")
                    && e.get_child("query", NS_ROSTER)
                        .and_then(|q| q.children().next())
                        .is_some_and(|i| i.attr("subscription") == Some(*sub))
            }
            Want::Presence(t, from) => {
                e.name() == "presence"
                    && e.attr("type") == *t
                    && e.attr("from").is_some_and(|f| f.starts_with(from))
            }
        });
        if e.name() == "iq" && e.attr("type") == Some("set") {
            let id = e.attr("id").unwrap_or_default().to_string();
            c.send_str(&format!("<iq type='result' id='{id}'/>")).await;
        }
        if let Some(i) = found {
            wants.remove(i);
        }
    }
}

async fn next_presence_of(c: &mut Client, type_: Option<&str>, from_prefix: &str) -> Element {
    loop {
        let p = c.next_named("presence").await;
        if p.attr("type") == type_ && p.attr("from").is_some_and(|f| f.starts_with(from_prefix)) {
            return p;
        }
    }
}

#[tokio::test]
async fn roster_set_push_get_version_remove() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let mut a1 = online(&server, "alice", "one").await;
    let mut a2 = online(&server, "alice", "two").await;
    // The setting resource gets its result and the push, in either order.
    a1.send_str("<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='Bob@localhost' name='Bobby'><group>Friends</group><group>Work</group></item></query></iq>").await;
    let (mut result, mut pushed) = (false, false);
    while !(result && pushed) {
        let e = a1.next_named("iq").await;
        if e.attr("id") == Some("s1") {
            assert_eq!(e.attr("type"), Some("result"));
            result = true;
        } else if e.attr("type") == Some("set") {
            pushed = true;
        }
    }
    for c in [&mut a2] {
        let item = next_push(c).await;
        assert_eq!(item.attr("jid"), Some("bob@localhost"));
        assert_eq!(item.attr("subscription"), Some("none"));
        assert_eq!(item.attr("name"), Some("Bobby"));
        assert_eq!(item.children().count(), 2);
    }
    let full = a1
        .iq(
            "<iq type='get' id='g1'><query xmlns='jabber:iq:roster'/></iq>",
            "g1",
        )
        .await;
    let q = full.get_child("query", NS_ROSTER).unwrap();
    let ver = q.attr("ver").expect("roster versioning").to_string();
    assert!(roster_item(q, "bob@localhost").is_some());
    // XEP-0237: a current client gets an empty result.
    let same = a1
        .iq(
            &format!("<iq type='get' id='g2'><query xmlns='jabber:iq:roster' ver='{ver}'/></iq>"),
            "g2",
        )
        .await;
    assert_eq!(same.attr("type"), Some("result"));
    assert!(same.get_child("query", NS_ROSTER).is_none());
    // Duplicate groups are refused.
    let bad = a1
        .iq("<iq type='set' id='s2'><query xmlns='jabber:iq:roster'><item jid='x@localhost'><group>A</group><group>A</group></item></query></iq>", "s2")
        .await;
    assert_eq!(stanza_error(&bad).as_deref(), Some("bad-request"));
    let rm = a1
        .iq("<iq type='set' id='s3'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' subscription='remove'/></query></iq>", "s3")
        .await;
    assert_eq!(rm.attr("type"), Some("result"));
    assert_eq!(
        next_push(&mut a2).await.attr("subscription"),
        Some("remove")
    );
}

#[tokio::test]
async fn mutual_subscription_ends_in_both_with_presence_both_ways() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("bob", "pw").await;
    let mut alice = online(&server, "alice", "a").await;
    let mut bob = online(&server, "bob", "b").await;

    alice.send_str("<presence to='bob@localhost' type='subscribe'><status>hi, it's alice</status></presence>").await;
    let push = next_push(&mut alice).await;
    assert_eq!(
        (push.attr("subscription"), push.attr("ask")),
        (Some("none"), Some("subscribe"))
    );
    let req = next_presence_of(&mut bob, Some("subscribe"), "alice@localhost").await;
    assert_eq!(
        req.attr("from"),
        Some("alice@localhost"),
        "subscription stanzas carry the bare JID"
    );

    bob.send_str("<presence to='alice@localhost' type='subscribed'/>")
        .await;
    expect_all(&mut bob, vec![Want::Push("from")]).await;
    // Alice learns of the approval, gets the push, and then sees bob.
    expect_all(
        &mut alice,
        vec![
            Want::Push("to"),
            Want::Presence(Some("subscribed"), "bob@localhost"),
            Want::Presence(None, "bob@localhost/b"),
        ],
    )
    .await;

    bob.send_str("<presence to='alice@localhost' type='subscribe'/>")
        .await;
    next_presence_of(&mut alice, Some("subscribe"), "bob@localhost").await;
    alice
        .send_str("<presence to='bob@localhost' type='subscribed'/>")
        .await;
    expect_all(&mut alice, vec![Want::Push("both")]).await;
    expect_all(
        &mut bob,
        vec![
            Want::Push("both"),
            Want::Presence(None, "alice@localhost/a"),
        ],
    )
    .await;
    // show/status changes reach the other side.
    bob.send_str("<presence><show>away</show><status>lunch</status></presence>")
        .await;
    let p = next_presence_of(&mut alice, None, "bob@localhost/b").await;
    let p = if p.get_child("show", NS_CLIENT).is_none() {
        next_presence_of(&mut alice, None, "bob@localhost/b").await
    } else {
        p
    };
    assert_eq!(p.get_child("show", NS_CLIENT).unwrap().text(), "away");
    assert_eq!(p.get_child("status", NS_CLIENT).unwrap().text(), "lunch");
    // A session that ends without a word is announced unavailable.
    drop(bob);
    let gone = next_presence_of(&mut alice, Some("unavailable"), "bob@localhost/b").await;
    assert_eq!(gone.attr("to"), Some("alice@localhost"));
}

#[tokio::test]
async fn pending_requests_wait_for_login_and_initial_presence_probes() {
    let server = TestServer::start().await;
    server.add_user("carol", "pw").await;
    server.add_user("dave", "pw").await;
    let mut dave = online(&server, "dave", "d").await;
    dave.send_str("<presence to='carol@localhost' type='subscribe'/>")
        .await;
    next_push(&mut dave).await;
    // Carol was offline; the request reaches her at initial presence.
    let mut carol = online(&server, "carol", "c").await;
    next_presence_of(&mut carol, Some("subscribe"), "dave@localhost").await;
    carol
        .send_str("<presence to='dave@localhost' type='subscribed'/>")
        .await;
    next_presence_of(&mut dave, None, "carol@localhost/c").await;
    // A second resource of dave probes carol at its initial presence.
    let mut dave2 = online(&server, "dave", "d2").await;
    next_presence_of(&mut dave2, None, "carol@localhost/c").await;
    // …and sees dave's other resource (presence to self-resources).
    let mut dave3 = online(&server, "dave", "d3").await;
    next_presence_of(&mut dave3, None, "dave@localhost/d").await;
}

#[tokio::test]
async fn directed_presence_is_ended_at_logout() {
    let server = TestServer::start().await;
    server.add_user("erin", "pw").await;
    server.add_user("finn", "pw").await;
    let mut finn = online(&server, "finn", "f").await;
    let mut erin = online(&server, "erin", "e").await;
    erin.send_str("<presence to='finn@localhost/f'><status>just you</status></presence>")
        .await;
    next_presence_of(&mut finn, None, "erin@localhost/e").await;
    erin.send_str("</stream:stream>").await;
    next_presence_of(&mut finn, Some("unavailable"), "erin@localhost/e").await;
}

#[tokio::test]
async fn offline_messages_are_stored_and_delivered_in_order_with_delay() {
    let server = TestServer::start_with(|c| c.limits.max_offline_messages = 3).await;
    server.add_user("gus", "pw").await;
    server.add_user("hal", "pw").await;
    let mut gus = online(&server, "gus", "g").await;
    for i in 0..3 {
        gus.send_str(&format!(
            "<message to='hal@localhost' type='chat' id='o{i}'><body>msg {i}</body></message>"
        ))
        .await;
    }
    // The quota is 3: the fourth bounces.
    gus.send_str(
        "<message to='hal@localhost' type='chat' id='o3'><body>one too many</body></message>",
    )
    .await;
    let e = gus.next_named("message").await;
    assert_eq!(
        (e.attr("id"), stanza_error(&e).as_deref()),
        (Some("o3"), Some("service-unavailable"))
    );
    // Headlines are not stored; messages to nobody bounce.
    gus.send_str("<message to='hal@localhost' type='headline' id='h'><body>x</body></message>")
        .await;
    gus.send_str("<message to='nobody@localhost' id='n'><body>x</body></message>")
        .await;
    let e = gus.next_named("message").await;
    assert_eq!(
        (e.attr("id"), stanza_error(&e).as_deref()),
        (Some("n"), Some("service-unavailable"))
    );

    // Binding alone delivers nothing: initial presence does.
    let mut hal = Client::login_without_presence(server.plain_addr, "hal", "pw", None).await;
    let mark = hal.mark();
    hal.send_str("<presence/>").await;
    let got = hal
        .expect_only(
            mark,
            &[
                Expect("offline message o0", &|e| e.attr("id") == Some("o0")),
                Expect("offline message o1", &|e| e.attr("id") == Some("o1")),
                Expect("offline message o2", &|e| e.attr("id") == Some("o2")),
                // RFC 6121 §4.2.2: initial presence goes to the own resources too.
                Expect("hal's own presence", &|e| {
                    e.is("presence", NS_CLIENT)
                        && e.attr("from").is_some_and(|f| f.starts_with("hal@"))
                }),
            ],
        )
        .await;
    // Only the stored ones (not the headline), in order.
    let messages = got.iter().filter(|e| e.name() == "message");
    for (i, m) in messages.enumerate() {
        assert_eq!(m.attr("id"), Some(format!("o{i}").as_str()));
        assert_eq!(m.attr("from"), Some("gus@localhost/g"));
        let delay = m
            .get_child("delay", "urn:xmpp:delay")
            .expect("XEP-0203 stamp");
        assert!(delay.attr("stamp").unwrap().ends_with('Z'));
    }
    // Delivered once, then gone.
    assert_eq!(
        server
            .store()
            .offline_count("localhost", "hal")
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn messages_to_only_negative_priority_resources_go_offline() {
    let server = TestServer::start().await;
    server.add_user("ian", "pw").await;
    server.add_user("jo", "pw").await;
    let mut ian = online(&server, "ian", "i").await;
    let mut jo = Client::login_without_presence(server.plain_addr, "jo", "pw", Some("bot")).await;
    jo.send_str("<presence><priority>-5</priority></presence>")
        .await;
    jo.iq(
        "<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        "sync",
    )
    .await;
    ian.send_str("<message to='jo@localhost' type='chat' id='neg'><body>stored</body></message>")
        .await;
    ian.iq(
        "<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        "sync",
    )
    .await;
    assert_eq!(
        server
            .store()
            .offline_count("localhost", "jo")
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn last_activity_for_server_and_subscribed_contacts() {
    let server = TestServer::start().await;
    server.add_user("kai", "pw").await;
    server.add_user("lou", "pw").await;
    let mut kai = online(&server, "kai", "k").await;
    let up = kai
        .iq(
            "<iq type='get' id='l0' to='localhost'><query xmlns='jabber:iq:last'/></iq>",
            "l0",
        )
        .await;
    assert!(up
        .get_child("query", "jabber:iq:last")
        .unwrap()
        .attr("seconds")
        .is_some());
    // Not subscribed: forbidden.
    let no = kai
        .iq(
            "<iq type='get' id='l1' to='lou@localhost'><query xmlns='jabber:iq:last'/></iq>",
            "l1",
        )
        .await;
    assert_eq!(stanza_error(&no).as_deref(), Some("forbidden"));
    // Subscribe, then lou logs out: kai gets a number.
    let mut lou = online(&server, "lou", "l").await;
    kai.send_str("<presence to='lou@localhost' type='subscribe'/>")
        .await;
    next_presence_of(&mut lou, Some("subscribe"), "kai@localhost").await;
    lou.send_str("<presence to='kai@localhost' type='subscribed'/>")
        .await;
    next_presence_of(&mut kai, None, "lou@localhost/l").await;
    lou.send_str("</stream:stream>").await;
    next_presence_of(&mut kai, Some("unavailable"), "lou@localhost/l").await;
    // Lou's logout is recorded when his session ends; wait for it.
    eventually("lou's logout is recorded", || async {
        server
            .store()
            .user_data_get("localhost", "lou", "last_logout")
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let yes = kai
        .iq(
            "<iq type='get' id='l2' to='lou@localhost'><query xmlns='jabber:iq:last'/></iq>",
            "l2",
        )
        .await;
    let secs: u64 = yes
        .get_child("query", "jabber:iq:last")
        .unwrap()
        .attr("seconds")
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs < 5);
}

#[tokio::test]
async fn roster_and_offline_work_on_postgres() {
    let url = std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let server = TestServer::start_with(move |c| c.database.url = url).await;
    let tag = format!("{}", rand::random::<u32>());
    let (a, b) = (format!("pa{tag}"), format!("pb{tag}"));
    server.add_user(&a, "pw").await;
    server.add_user(&b, "pw").await;
    let mut ca = online(&server, &a, "r").await;
    ca.send_str(&format!("<presence to='{b}@localhost' type='subscribe'/>"))
        .await;
    assert_eq!(next_push(&mut ca).await.attr("ask"), Some("subscribe"));
    ca.send_str(&format!(
        "<message to='{b}@localhost' type='chat' id='pg'><body>later</body></message>"
    ))
    .await;
    // Stored before b comes online: otherwise it may arrive live, ahead of
    // the stored subscription request that `next_presence_of` waits for
    // (and skips everything else until).
    ca.barrier().await;
    let mut cb = online(&server, &b, "r").await;
    next_presence_of(&mut cb, Some("subscribe"), &format!("{a}@localhost")).await;
    let m = cb.next_named("message").await;
    assert_eq!(m.attr("id"), Some("pg"));
    for u in [&a, &b] {
        server.store().delete_account("localhost", u).await.unwrap();
    }
}

#[tokio::test]
async fn blocked_contacts_exchange_no_presence() {
    let server = TestServer::start().await;
    server.add_user("mia", "pw").await;
    server.add_user("ned", "pw").await;
    let mut mia = online(&server, "mia", "m").await;
    let mut ned = online(&server, "ned", "n").await;
    for (a, b, ca, cb) in [("mia", "ned", &mut mia, &mut ned)] {
        ca.send_str(&format!("<presence to='{b}@localhost' type='subscribe'/>"))
            .await;
        next_presence_of(cb, Some("subscribe"), &format!("{a}@localhost")).await;
        cb.send_str(&format!("<presence to='{a}@localhost' type='subscribed'/>"))
            .await;
        next_presence_of(ca, None, &format!("{b}@localhost/")).await;
    }
    let r = mia
        .iq("<iq type='set' id='b1'><block xmlns='urn:xmpp:blocking'><item jid='ned@localhost'/></block></iq>", "b1")
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    mia.barrier().await;
    let mark = mia.mark();
    // Ned's presence changes no longer reach mia.
    ned.send_str("<presence><show>dnd</show></presence>").await;
    // Ned's session handled the presence before it answers this.
    ned.barrier().await;
    mia.expect_nothing(mark).await;
}

#[tokio::test]
async fn probe_of_an_offline_contact_answers_its_last_unavailable_with_delay() {
    let server = TestServer::start().await;
    server.add_user("olga", "pw").await;
    server.add_user("pete", "pw").await;
    let mut olga = online(&server, "olga", "o").await;
    let mut pete = online(&server, "pete", "p").await;
    olga.send_str("<presence to='pete@localhost' type='subscribe'/>")
        .await;
    next_presence_of(&mut pete, Some("subscribe"), "olga@localhost").await;
    pete.send_str("<presence to='olga@localhost' type='subscribed'/>")
        .await;
    next_presence_of(&mut olga, None, "pete@localhost/p").await;
    pete.send_str("</stream:stream>").await;
    next_presence_of(&mut olga, Some("unavailable"), "pete@localhost/p").await;
    // Pete's logout is recorded when his session ends; wait for it.
    eventually("pete's logout is recorded", || async {
        server
            .store()
            .user_data_get("localhost", "pete", "last_logout")
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let mut olga2 = online(&server, "olga", "o2").await;
    let p = next_presence_of(&mut olga2, Some("unavailable"), "pete@localhost").await;
    assert_eq!(p.attr("from"), Some("pete@localhost"));
    let stamp = p
        .get_child("delay", "urn:xmpp:delay")
        .expect("delay")
        .attr("stamp")
        .unwrap()
        .to_string();
    assert!(stamp.ends_with('Z') && stamp.len() == 20, "{stamp}");
}

/// A message routed to offline storage while its recipient was coming
/// online (the race a busy database widens) is handed to the resource that
/// is now available, instead of waiting for the next login.
#[tokio::test]
async fn message_stored_after_the_hand_over_reaches_the_new_session() {
    let server = TestServer::start().await;
    server.add_user("bob", "pw").await;
    // bob is online and has had his (empty) offline queue handed over.
    let mut bob = online(&server, "bob", "r").await;
    let ping = bob
        .iq(
            "<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "sync",
        )
        .await;
    assert_eq!(ping.attr("type"), Some("result"));
    // The router decided "nobody available" a moment earlier and stores now.
    let message = Element::new("message", NS_CLIENT)
        .with_attr("from", "alice@localhost/x")
        .with_attr("to", "bob@localhost")
        .with_attr("type", "chat")
        .with_attr("id", "late")
        .with_child(Element::new("body", NS_CLIENT).with_text("late"));
    let bare = jid::BareJid::new("bob@localhost").unwrap();
    let alice = jid::FullJid::new("alice@localhost/x").unwrap();
    let srv = server.server();
    let mut refusal = None;
    let mut event = waxwing::feature::Event::Undeliverable {
        origin: waxwing::router::Origin::Session(&alice),
        to: &bare,
        stanza: &message,
        refusal: &mut refusal,
    };
    let verdict = srv.features.fire(srv, &mut event).await;
    assert_eq!(verdict, waxwing::feature::Verdict::Stop);
    assert!(refusal.is_none());
    let m = bob.next_named("message").await;
    assert_eq!(m.attr("id"), Some("late"));
    assert_eq!(
        server
            .store()
            .offline_count("localhost", "bob")
            .await
            .unwrap(),
        0
    );
}
