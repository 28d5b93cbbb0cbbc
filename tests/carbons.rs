//! Message Carbons (XEP-0280) over real sockets: three resources of one
//! account with carbons on and off, received copies for messages to the
//! bare and to a full JID, sent copies, the hints that suppress copies,
//! messages that are not copied, and copies never copied again. Every
//! "no copy" claim is checked with the strict helpers: each client must
//! have received exactly what is listed, nothing else.

mod common;

use common::*;
use waxwing::config::ComponentConfig;
use waxwing::xml::{Element, NS_CLIENT};

const NS_CARBONS: &str = "urn:xmpp:carbons:2";
const NS_FORWARD: &str = "urn:xmpp:forward:0";
const ALICE: &str = "alice@localhost";
const BOT: &str = "bot.localhost";

/// The message forwarded inside a carbon copy of `dir` ("sent" or
/// "received") addressed to `to`, if `e` is one.
fn forwarded<'a>(e: &'a Element, dir: &str, to: &str) -> Option<&'a Element> {
    if !e.is("message", NS_CLIENT) || e.attr("from") != Some(ALICE) || e.attr("to") != Some(to) {
        return None;
    }
    e.get_child(dir, NS_CARBONS)?
        .get_child("forwarded", NS_FORWARD)?
        .get_child("message", NS_CLIENT)
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", NS_CLIENT).map(|b| b.text())
}

/// A plain message (not a copy) with this body.
fn plain(e: &Element, text: &str) -> bool {
    e.is("message", NS_CLIENT)
        && e.get_child("sent", NS_CARBONS).is_none()
        && e.get_child("received", NS_CARBONS).is_none()
        && body(e).as_deref() == Some(text)
}

/// A carbon copy of `dir` for `to` of a message with this body.
fn carbon(e: &Element, dir: &str, to: &str, text: &str) -> bool {
    forwarded(e, dir, to).is_some_and(|m| body(m).as_deref() == Some(text))
}

/// Three resources of alice (one, two: carbons on; three: off) and bob.
/// `one` is available with priority 5, so a message to the bare JID goes
/// to it alone; two and three never sent presence.
struct World {
    ts: TestServer,
    one: Client,
    two: Client,
    three: Client,
    bob: Client,
}

const ONE: &str = "alice@localhost/one";
const TWO: &str = "alice@localhost/two";
const THREE: &str = "alice@localhost/three";

async fn enable(c: &mut Client, on: bool) {
    let what = if on { "enable" } else { "disable" };
    let r = c
        .iq(
            &format!("<iq type='set' id='c-{what}'><{what} xmlns='{NS_CARBONS}'/></iq>"),
            &format!("c-{what}"),
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
}

async fn world_with(tweak: impl FnOnce(&mut waxwing::config::Config)) -> World {
    let ts = TestServer::start_with(tweak).await;
    ts.add_user("alice", "pw").await;
    ts.add_user("bob", "pw").await;
    let login =
        |r: &'static str| Client::login_without_presence(ts.plain_addr, "alice", "pw", Some(r));
    let mut one = login("one").await;
    let mut two = login("two").await;
    let mut three = login("three").await;
    enable(&mut one, true).await;
    enable(&mut two, true).await;
    one.send_str("<presence><priority>5</priority></presence>")
        .await;
    let mut bob = Client::login(ts.plain_addr, "bob", "pw", Some("b")).await;
    for c in [&mut one, &mut two, &mut three, &mut bob] {
        c.barrier().await;
    }
    World {
        ts,
        one,
        two,
        three,
        bob,
    }
}

async fn world() -> World {
    world_with(|_| {}).await
}

impl World {
    /// Marks every client.
    fn mark(&mut self) -> [usize; 4] {
        [
            self.one.mark(),
            self.two.mark(),
            self.three.mark(),
            self.bob.mark(),
        ]
    }
}

#[tokio::test]
async fn enable_and_disable_are_per_resource_and_repeatable() {
    let mut w = world().await;
    let info = w
        .one
        .iq(
            "<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d1",
        )
        .await;
    let q = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(
        q.children().any(|f| f.attr("var") == Some(NS_CARBONS)),
        "{}",
        show(&info)
    );
    // Repeated requests are answered with a result (§10.1).
    enable(&mut w.one, true).await;
    enable(&mut w.three, false).await;
    enable(&mut w.three, false).await;
    // A get, an unknown element, and another account's carbons are refused.
    let r = w
        .one
        .iq(
            &format!("<iq type='get' id='g'><enable xmlns='{NS_CARBONS}'/></iq>"),
            "g",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
    let r = w
        .one
        .iq(
            &format!("<iq type='set' id='u'><toggle xmlns='{NS_CARBONS}'/></iq>"),
            "u",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
    let r = w
        .one
        .iq(
            &format!(
                "<iq type='set' id='o' to='bob@localhost'><enable xmlns='{NS_CARBONS}'/></iq>"
            ),
            "o",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"));
    // Addressed to the own bare JID is the same as no address.
    let r = w
        .three
        .iq(
            &format!("<iq type='set' id='b' to='{ALICE}'><enable xmlns='{NS_CARBONS}'/></iq>"),
            "b",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
    // Three now gets copies; disabling again stops them.
    let m = w.mark();
    w.bob
        .send_str("<message type='chat' to='alice@localhost/two'><body>x1</body></message>")
        .await;
    w.bob.barrier().await;
    w.three
        .expect_only(
            m[2],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", THREE, "x1")
            })],
        )
        .await;
    w.one
        .expect_only(
            m[0],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", ONE, "x1")
            })],
        )
        .await;
    w.two
        .expect_only(m[1], &[Expect("the message", &|e| plain(e, "x1"))])
        .await;
    w.bob.expect_nothing(m[3]).await;
    enable(&mut w.three, false).await;
    let m = w.mark();
    w.bob
        .send_str("<message type='chat' to='alice@localhost/two'><body>x2</body></message>")
        .await;
    w.bob.barrier().await;
    w.three.expect_nothing(m[2]).await;
    w.one
        .expect_only(
            m[0],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", ONE, "x2")
            })],
        )
        .await;
    w.two
        .expect_only(m[1], &[Expect("the message", &|e| plain(e, "x2"))])
        .await;
    w.bob.expect_nothing(m[3]).await;
}

#[tokio::test]
async fn received_copies_for_bare_and_full_jids() {
    let mut w = world().await;

    // To the bare JID: one (top priority) gets it; two, carbons on, a
    // copy; three, carbons off, nothing.
    let m = w.mark();
    w.bob
        .send_str("<message type='chat' to='alice@localhost'><body>bare</body></message>")
        .await;
    w.bob.barrier().await;
    let got = w
        .one
        .expect_only(m[0], &[Expect("the message", &|e| plain(e, "bare"))])
        .await;
    assert_eq!(got[0].attr("from"), Some("bob@localhost/b"));
    let got = w
        .two
        .expect_only(
            m[1],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", TWO, "bare")
            })],
        )
        .await;
    // The copy keeps the type and forwards the original as it was routed.
    assert_eq!(got[0].attr("type"), Some("chat"));
    let inner = forwarded(&got[0], "received", TWO).unwrap();
    assert_eq!(inner.attr("from"), Some("bob@localhost/b"));
    assert_eq!(inner.attr("to"), Some(ALICE));
    w.three.expect_nothing(m[2]).await;
    w.bob.expect_nothing(m[3]).await;

    // To the full JID of the resource without carbons: both others copy.
    let m = w.mark();
    w.bob
        .send_str("<message type='chat' to='alice@localhost/three'><body>full</body></message>")
        .await;
    w.bob.barrier().await;
    w.three
        .expect_only(m[2], &[Expect("the message", &|e| plain(e, "full"))])
        .await;
    w.one
        .expect_only(
            m[0],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", ONE, "full")
            })],
        )
        .await;
    w.two
        .expect_only(
            m[1],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", TWO, "full")
            })],
        )
        .await;
    w.bob.expect_nothing(m[3]).await;

    // To the full JID of a resource with carbons: no copy for it.
    let m = w.mark();
    w.bob
        .send_str("<message type='chat' to='alice@localhost/two'><body>two</body></message>")
        .await;
    w.bob.barrier().await;
    w.two
        .expect_only(m[1], &[Expect("the message", &|e| plain(e, "two"))])
        .await;
    w.one
        .expect_only(
            m[0],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", ONE, "two")
            })],
        )
        .await;
    w.three.expect_nothing(m[2]).await;
    w.bob.expect_nothing(m[3]).await;
}

#[tokio::test]
async fn sent_copies_go_to_the_other_enabled_resources() {
    let mut w = world().await;
    // From a resource with carbons on: the other enabled one copies.
    let m = w.mark();
    w.one
        .send_str("<message type='chat' to='bob@localhost'><body>s1</body></message>")
        .await;
    w.one.barrier().await;
    w.bob
        .expect_only(m[3], &[Expect("the message", &|e| plain(e, "s1"))])
        .await;
    let got = w
        .two
        .expect_only(
            m[1],
            &[Expect("a sent copy", &|e| carbon(e, "sent", TWO, "s1"))],
        )
        .await;
    let inner = forwarded(&got[0], "sent", TWO).unwrap();
    assert_eq!(inner.attr("from"), Some(ONE));
    assert_eq!(inner.attr("to"), Some("bob@localhost"));
    w.one.expect_nothing(m[0]).await;
    w.three.expect_nothing(m[2]).await;

    // From the resource with carbons off: both others copy (§8,
    // irrespective of the sender's own setting).
    let m = w.mark();
    w.three
        .send_str("<message to='bob@localhost/b'><body>s2</body></message>")
        .await;
    w.three.barrier().await;
    w.bob
        .expect_only(m[3], &[Expect("the message", &|e| plain(e, "s2"))])
        .await;
    w.one
        .expect_only(
            m[0],
            &[Expect("a sent copy", &|e| carbon(e, "sent", ONE, "s2"))],
        )
        .await;
    w.two
        .expect_only(
            m[1],
            &[Expect("a sent copy", &|e| carbon(e, "sent", TWO, "s2"))],
        )
        .await;
    w.three.expect_nothing(m[2]).await;

    // To a contact who is offline (stored): still copied.
    w.bob.send_str("</stream:stream>").await;
    w.bob.expect_closed().await;
    eventually("bob is gone", || async {
        !w.ts
            .server()
            .sessions
            .is_bound(&jid::FullJid::new("bob@localhost/b").unwrap())
    })
    .await;
    let m = w.mark();
    w.one
        .send_str("<message type='chat' to='bob@localhost'><body>s3</body></message>")
        .await;
    w.one.barrier().await;
    w.two
        .expect_only(
            m[1],
            &[Expect("a sent copy", &|e| carbon(e, "sent", TWO, "s3"))],
        )
        .await;
    w.three.expect_nothing(m[2]).await;
    w.one.expect_nothing(m[0]).await;
}

#[tokio::test]
async fn messages_within_the_account_reach_each_resource_once() {
    let mut w = world().await;
    // one → three (full): three has it, two a received copy, the sender
    // nothing (no sent copy on top).
    let m = w.mark();
    w.one
        .send_str("<message type='chat' to='alice@localhost/three'><body>self</body></message>")
        .await;
    w.one.barrier().await;
    w.three
        .expect_only(m[2], &[Expect("the message", &|e| plain(e, "self"))])
        .await;
    w.two
        .expect_only(
            m[1],
            &[Expect("one copy", &|e| carbon(e, "received", TWO, "self"))],
        )
        .await;
    w.one.expect_nothing(m[0]).await;
    w.bob.expect_nothing(m[3]).await;
}

#[tokio::test]
async fn private_and_no_copy_suppress_copies() {
    let mut w = world().await;
    let hints = [
        format!("<private xmlns='{NS_CARBONS}'/>"),
        "<no-copy xmlns='urn:xmpp:hints'/>".to_string(),
    ];
    for (i, hint) in hints.iter().enumerate() {
        // Sent: the contact gets it, no resource a copy.
        let text = format!("sent-{i}");
        let m = w.mark();
        w.three
            .send_str(&format!(
                "<message type='chat' to='bob@localhost'><body>{text}</body>{hint}</message>"
            ))
            .await;
        w.three.barrier().await;
        w.bob
            .expect_only(m[3], &[Expect("the message", &|e| plain(e, &text))])
            .await;
        w.one.expect_nothing(m[0]).await;
        w.two.expect_nothing(m[1]).await;
        w.three.expect_nothing(m[2]).await;

        // Received: only the addressed resource has it.
        let text = format!("received-{i}");
        let m = w.mark();
        w.bob
            .send_str(&format!(
                "<message type='chat' to='alice@localhost/three'><body>{text}</body>{hint}</message>"
            ))
            .await;
        w.bob.barrier().await;
        w.three
            .expect_only(m[2], &[Expect("the message", &|e| plain(e, &text))])
            .await;
        w.one.expect_nothing(m[0]).await;
        w.two.expect_nothing(m[1]).await;
        w.bob.expect_nothing(m[3]).await;
    }
}

#[tokio::test]
async fn ineligible_messages_and_copies_are_not_copied() {
    let mut w = world().await;
    let to3 = "to='alice@localhost/three'";
    let not_copied = [
        format!("<message type='headline' {to3}><body>h</body></message>"),
        format!("<message type='groupchat' {to3}><body>g</body></message>"),
        format!("<message {to3}><x xmlns='urn:example:other'/></message>"),
        // A private message from a room occupant (a full JID).
        format!("<message type='chat' {to3}><body>pm</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>"),
        // An error from a full JID that echoes nothing eligible.
        format!("<message type='error' {to3}><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"),
        // Something dressed as a copy is not copied again.
        format!("<message type='chat' {to3}><received xmlns='{NS_CARBONS}'><forwarded xmlns='{NS_FORWARD}'><message xmlns='jabber:client' type='chat'><body>f</body></message></forwarded></received></message>"),
        format!("<message type='chat' {to3}><sent xmlns='{NS_CARBONS}'/><body>s</body></message>"),
    ];
    for xml in &not_copied {
        let m = w.mark();
        w.bob.send_str(xml).await;
        w.bob.barrier().await;
        let got = w
            .three
            .expect_only(
                m[2],
                &[Expect("the message", &|e| e.is("message", NS_CLIENT))],
            )
            .await;
        assert_eq!(got[0].attr("from"), Some("bob@localhost/b"), "{xml}");
        w.one.expect_nothing(m[0]).await;
        w.two.expect_nothing(m[1]).await;
        w.bob.expect_nothing(m[3]).await;
    }
    // A client sending something dressed as a copy gets no sent copy.
    let m = w.mark();
    w.three
        .send_str(&format!(
            "<message type='chat' to='bob@localhost'><sent xmlns='{NS_CARBONS}'/><body>f2</body></message>"
        ))
        .await;
    w.three.barrier().await;
    w.bob
        .expect_only(
            m[3],
            &[Expect("the message", &|e| body(e).as_deref() == Some("f2"))],
        )
        .await;
    w.one.expect_nothing(m[0]).await;
    w.two.expect_nothing(m[1]).await;
    w.three.expect_nothing(m[2]).await;

    // Eligible without being chat: a normal message with a body, a
    // receipt, and a private message the user sends to an occupant.
    let m = w.mark();
    w.bob
        .send_str(&format!("<message {to3}><body>n</body></message>"))
        .await;
    w.bob
        .send_str(&format!(
            "<message {to3}><received xmlns='urn:xmpp:receipts' id='r1'/></message>"
        ))
        .await;
    w.bob.barrier().await;
    let is_receipt = |e: &Element, to: &str| {
        forwarded(e, "received", to)
            .is_some_and(|m| m.get_child("received", "urn:xmpp:receipts").is_some())
    };
    w.one
        .expect_only(
            m[0],
            &[
                Expect("copy of the normal message", &|e| {
                    carbon(e, "received", ONE, "n")
                }),
                Expect("copy of the receipt", &|e| is_receipt(e, ONE)),
            ],
        )
        .await;
    w.two
        .expect_only(
            m[1],
            &[
                Expect("copy of the normal message", &|e| {
                    carbon(e, "received", TWO, "n")
                }),
                Expect("copy of the receipt", &|e| is_receipt(e, TWO)),
            ],
        )
        .await;
    w.three
        .expect_only(
            m[2],
            &[
                Expect("the normal message", &|e| plain(e, "n")),
                Expect("the receipt", &|e| {
                    e.get_child("received", "urn:xmpp:receipts").is_some()
                }),
            ],
        )
        .await;
    w.bob.expect_nothing(m[3]).await;
    let m = w.mark();
    w.three
        .send_str("<message type='chat' to='bob@localhost/b'><body>pm-out</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>")
        .await;
    w.three.barrier().await;
    w.one
        .expect_only(
            m[0],
            &[Expect("a sent copy", &|e| carbon(e, "sent", ONE, "pm-out"))],
        )
        .await;
    w.two
        .expect_only(
            m[1],
            &[Expect("a sent copy", &|e| carbon(e, "sent", TWO, "pm-out"))],
        )
        .await;
    w.three.expect_nothing(m[2]).await;
    w.bob
        .expect_only(m[3], &[Expect("the message", &|e| plain(e, "pm-out"))])
        .await;
}

#[tokio::test]
async fn a_new_binding_starts_with_carbons_off() {
    let mut w = world().await;
    w.two.send_str("</stream:stream>").await;
    w.two.expect_closed().await;
    let mut two = Client::login_without_presence(w.ts.plain_addr, "alice", "pw", Some("two")).await;
    two.barrier().await;
    let m2 = two.mark();
    let m = w.mark();
    w.bob
        .send_str("<message type='chat' to='alice@localhost/three'><body>after</body></message>")
        .await;
    w.bob.barrier().await;
    two.expect_nothing(m2).await;
    w.three
        .expect_only(m[2], &[Expect("the message", &|e| plain(e, "after"))])
        .await;
    w.bob.expect_nothing(m[3]).await;
    w.one
        .expect_only(
            m[0],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", ONE, "after")
            })],
        )
        .await;
}

#[tokio::test]
async fn messages_from_outside_the_server_are_copied() {
    let mut w = world_with(|c| {
        c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.component.push(ComponentConfig {
            domain: BOT.into(),
            secret: "s3cret".into(),
        });
    })
    .await;
    let addr = w.ts.running.as_ref().unwrap().component_addrs[0];
    let mut bot = Client::component(addr, BOT, "s3cret").await;
    let m = w.mark();
    bot.send_str(
        "<message xmlns='jabber:component:accept' type='chat' from='echo@bot.localhost/x' to='alice@localhost/three'><body>remote</body></message>",
    )
    .await;
    // A round trip on the component's stream: the server routed the
    // message (and queued its copies) before it answers.
    bot.send_str(
        "<iq xmlns='jabber:component:accept' type='get' id='p1' from='echo@bot.localhost/x' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
    )
    .await;
    loop {
        let e = bot.next_named("iq").await;
        if e.attr("id") == Some("p1") {
            assert_eq!(e.attr("type"), Some("result"), "{}", show(&e));
            break;
        }
    }
    w.one
        .expect_only(
            m[0],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", ONE, "remote")
            })],
        )
        .await;
    w.two
        .expect_only(
            m[1],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", TWO, "remote")
            })],
        )
        .await;
    w.three
        .expect_only(m[2], &[Expect("the message", &|e| plain(e, "remote"))])
        .await;
    w.bob.expect_nothing(m[3]).await;
}

/// A message to the bare JID that no resource takes (none available) is
/// stored offline, and the carbons-enabled resources still get a copy.
#[tokio::test]
async fn a_message_no_resource_takes_is_still_copied() {
    let mut w = world().await;
    w.one.send_str("<presence type='unavailable'/>").await;
    w.one.barrier().await;
    let m = w.mark();
    w.bob
        .send_str("<message type='chat' to='alice@localhost'><body>kept</body></message>")
        .await;
    w.bob.barrier().await;
    w.one
        .expect_only(
            m[0],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", ONE, "kept")
            })],
        )
        .await;
    w.two
        .expect_only(
            m[1],
            &[Expect("a received copy", &|e| {
                carbon(e, "received", TWO, "kept")
            })],
        )
        .await;
    w.three.expect_nothing(m[2]).await;
    w.bob.expect_nothing(m[3]).await;
    // It was stored too: the next initial presence gets it.
    w.three.send_str("<presence/>").await;
    let got = w.three.next_named("message").await;
    assert!(plain(&got, "kept"), "{}", show(&got));
}
