//! Client State Indication (XEP-0352) over real sockets: while a client is
//! inactive, presence updates and chat states wait (the newest per contact)
//! and go out, in order, just before the next stanza that matters, when the
//! client is active again, when the cap is reached, or when a resumed
//! stream starts; and the stream features that announce CSI and the
//! server's capabilities (XEP-0115).
//!
//! "Held, not delivered" is checked two ways: the session's state in the
//! server says how many stanzas it holds, and everything the client
//! received since its mark is compared, exactly and in order, with what
//! the flush must have written — a stanza written early would show up
//! there (before the flush, or twice).

mod common;

use common::*;
use jid::FullJid;
use waxwing::sasl::ScramHash;
use waxwing::xml::{Element, NS_CLIENT};

const PHONE: &str = "alice@localhost/phone";
const NS_CSI: &str = "urn:xmpp:csi:0";
const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

/// A short description of a stanza, to compare sequences.
fn label(e: &Element) -> String {
    let from = e.attr("from").unwrap_or("-");
    match e.name() {
        "presence" => {
            let what = e
                .get_child("show", NS_CLIENT)
                .map(|s| s.text())
                .or_else(|| e.attr("type").map(str::to_owned))
                .unwrap_or_else(|| "available".into());
            format!("presence {from} {what}")
        }
        "message" => {
            let what = e
                .get_child("body", NS_CLIENT)
                .map(|b| b.text())
                .or_else(|| e.children().next().map(|c| c.name().to_owned()))
                .unwrap_or_default();
            format!("message {from} {what}")
        }
        other => format!("{other} {from} {}", e.attr("type").unwrap_or("-")),
    }
}

/// After a barrier: everything received since `since` is exactly `want`,
/// in that order.
async fn expect_exactly(c: &mut Client, since: usize, want: &[&str]) {
    c.barrier().await;
    let got: Vec<String> = c.received[since..].iter().map(label).collect();
    assert_eq!(
        got,
        want,
        "received since the mark:{}",
        c.received[since..]
            .iter()
            .map(|e| format!("\n  {}", show(e)))
            .collect::<String>()
    );
}

fn phone() -> FullJid {
    FullJid::new(PHONE).unwrap()
}

/// (inactive, stanzas held) of the phone's session.
fn state(ts: &TestServer) -> (bool, usize) {
    waxwing::modules::csi::state_of(ts.server(), &phone()).expect("phone bound")
}

async fn held(ts: &TestServer, n: usize) {
    eventually(&format!("{n} stanzas held"), || async {
        state(ts) == (true, n)
    })
    .await
}

fn presence(show: Option<&str>) -> String {
    let show = show
        .map(|s| format!("<show>{s}</show>"))
        .unwrap_or_default();
    format!("<presence to='{PHONE}'>{show}</presence>")
}

fn chat_state(state: &str) -> String {
    format!("<message type='chat' to='{PHONE}'><{state} xmlns='{CHATSTATES}'/></message>")
}

fn chat(body: &str) -> String {
    format!("<message type='chat' to='{PHONE}'><body>{body}</body></message>")
}

/// alice's phone (available, then inactive), bob on two resources, carol.
struct World {
    ts: TestServer,
    phone: Client,
    bob1: Client,
    bob2: Client,
    carol: Client,
}

async fn world_with(tweak: impl FnOnce(&mut waxwing::config::Config)) -> World {
    let ts = TestServer::start_with(tweak).await;
    for u in ["alice", "bob", "carol"] {
        ts.add_user(u, "pw").await;
    }
    let mut phone = Client::login(ts.plain_addr, "alice", "pw", Some("phone")).await;
    let mut bob1 = Client::login(ts.plain_addr, "bob", "pw", Some("one")).await;
    let mut bob2 = Client::login(ts.plain_addr, "bob", "pw", Some("two")).await;
    let mut carol = Client::login(ts.plain_addr, "carol", "pw", Some("c")).await;
    for c in [&mut bob1, &mut bob2, &mut carol] {
        c.barrier().await;
    }
    phone
        .send_str(&format!("<inactive xmlns='{NS_CSI}'/>"))
        .await;
    // Its own presence echo and the pong go out at once (nothing held).
    phone.barrier().await;
    assert_eq!(state(&ts), (true, 0));
    World {
        ts,
        phone,
        bob1,
        bob2,
        carol,
    }
}

async fn world() -> World {
    world_with(|_| {}).await
}

#[tokio::test]
async fn updates_wait_newest_per_contact_until_a_message_flushes_them() {
    let mut w = world().await;
    let m = w.phone.mark();
    // Each sender's stanza is routed before the next sender's (separate
    // connections are handled concurrently), so the held order is known.
    w.bob1.send_str(&presence(Some("away"))).await;
    w.bob1.barrier().await;
    w.bob2.send_str(&presence(None)).await;
    w.bob2.barrier().await;
    w.carol.send_str(&presence(Some("xa"))).await;
    w.carol.barrier().await;
    // Newer from the same full JID and from the same contact replace.
    w.bob1.send_str(&presence(Some("dnd"))).await;
    w.bob1.send_str(&chat_state("composing")).await;
    w.bob1.barrier().await;
    w.bob2.send_str(&chat_state("paused")).await;
    w.bob2.barrier().await;
    w.carol.send_str(&chat_state("composing")).await;
    w.carol.barrier().await;
    held(&w.ts, 5).await;
    assert_eq!(w.phone.received.len(), m, "nothing read yet");

    w.bob1.send_str(&chat("hello")).await;
    w.bob1.barrier().await;
    expect_exactly(
        &mut w.phone,
        m,
        &[
            "presence bob@localhost/two available",
            "presence carol@localhost/c xa",
            "presence bob@localhost/one dnd",
            "message bob@localhost/two paused",
            "message carol@localhost/c composing",
            "message bob@localhost/one hello",
        ],
    )
    .await;
    assert_eq!(state(&w.ts), (true, 0));
}

#[tokio::test]
async fn active_releases_what_was_held_and_stops_holding() {
    let mut w = world().await;
    let m = w.phone.mark();
    w.bob1.send_str(&presence(Some("away"))).await;
    w.bob1.send_str(&chat_state("composing")).await;
    w.bob1.barrier().await;
    held(&w.ts, 2).await;
    w.phone
        .send_str(&format!("<active xmlns='{NS_CSI}'/>"))
        .await;
    expect_exactly(
        &mut w.phone,
        m,
        &[
            "presence bob@localhost/one away",
            "message bob@localhost/one composing",
        ],
    )
    .await;
    assert_eq!(state(&w.ts), (false, 0));
    // Active: updates go at once.
    let m = w.phone.mark();
    w.carol.send_str(&presence(Some("chat"))).await;
    w.carol.barrier().await;
    expect_exactly(&mut w.phone, m, &["presence carol@localhost/c chat"]).await;
    // Inactive again: held again.
    w.phone
        .send_str(&format!("<inactive xmlns='{NS_CSI}'/>"))
        .await;
    w.phone.barrier().await;
    let m = w.phone.mark();
    w.carol.send_str(&presence(Some("away"))).await;
    w.carol.barrier().await;
    held(&w.ts, 1).await;
    assert_eq!(w.phone.received.len(), m);
}

#[tokio::test]
async fn what_matters_goes_at_once_after_what_was_held() {
    let mut w = world().await;
    let urgent: &[(&str, String)] = &[
        (
            "message bob@localhost/one encrypted",
            format!("<message type='chat' to='{PHONE}'><encrypted xmlns='eu.siacs.conversations.axolotl'/><active xmlns='{CHATSTATES}'/></message>"),
        ),
        (
            "message bob@localhost/one encrypted",
            format!("<message type='chat' to='{PHONE}'><encrypted xmlns='urn:xmpp:omemo:2'/></message>"),
        ),
        (
            "message bob@localhost/one propose",
            format!("<message to='{PHONE}'><propose xmlns='urn:xmpp:jingle-message:0' id='call1'/></message>"),
        ),
        (
            "message bob@localhost/one active",
            format!("<message type='chat' to='{PHONE}'><active xmlns='{CHATSTATES}'/><request xmlns='urn:xmpp:receipts'/></message>"),
        ),
        (
            "message bob@localhost/one error",
            format!("<message type='error' to='{PHONE}'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"),
        ),
        (
            "iq bob@localhost/one get",
            format!("<iq type='get' id='v1' to='{PHONE}'><query xmlns='jabber:iq:version'/></iq>"),
        ),
        (
            "presence bob@localhost subscribe",
            "<presence type='subscribe' to='alice@localhost'/>".to_string(),
        ),
    ];
    for (i, (what, xml)) in urgent.iter().enumerate() {
        let m = w.phone.mark();
        let show = format!("s{i}");
        w.carol.send_str(&presence(Some(&show))).await;
        w.carol.barrier().await;
        held(&w.ts, 1).await;
        w.bob1.send_str(xml).await;
        w.bob1.barrier().await;
        let first = format!("presence carol@localhost/c {show}");
        expect_exactly(&mut w.phone, m, &[&first, what]).await;
        assert_eq!(state(&w.ts), (true, 0), "{what}");
    }
}

#[tokio::test]
async fn reaching_the_cap_sends_everything_held() {
    let mut w = world_with(|c| c.csi.max_held = 3).await;
    let m = w.phone.mark();
    // One sender after the other, so the held order is known.
    for c in [&mut w.bob1, &mut w.bob2, &mut w.carol] {
        c.send_str(&presence(Some("away"))).await;
        c.barrier().await;
    }
    held(&w.ts, 3).await;
    // A replacement takes no new place.
    w.carol.send_str(&presence(Some("dnd"))).await;
    w.carol.barrier().await;
    held(&w.ts, 3).await;
    assert_eq!(w.phone.received.len(), m);
    // A fourth contact's update would pass the cap: all four go.
    w.carol.send_str(&chat_state("composing")).await;
    w.carol.barrier().await;
    expect_exactly(
        &mut w.phone,
        m,
        &[
            "presence bob@localhost/one away",
            "presence bob@localhost/two away",
            "presence carol@localhost/c dnd",
            "message carol@localhost/c composing",
        ],
    )
    .await;
    assert_eq!(state(&w.ts), (true, 0));
}

#[tokio::test]
async fn an_unknown_csi_element_ends_the_stream() {
    let mut w = world().await;
    w.phone
        .send_str(&format!("<sleepy xmlns='{NS_CSI}'/>"))
        .await;
    assert_eq!(
        w.phone.expect_stream_error().await,
        "unsupported-stanza-type"
    );
}

/// A session resumed with stream management starts active (XEP-0352 §6):
/// what it held is written after `<resumed/>`.
#[tokio::test]
async fn a_resumed_stream_is_active_and_gets_what_was_held() {
    const NS_SM: &str = "urn:xmpp:sm:3";
    let ts = TestServer::start().await;
    ts.add_user("alice", "pw").await;
    ts.add_user("bob", "pw").await;
    let mut phone =
        Client::login_without_presence(ts.plain_addr, "alice", "pw", Some("phone")).await;
    phone
        .send_str("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = phone.next_element().await;
    assert!(enabled.is("enabled", NS_SM), "{}", show(&enabled));
    let id = enabled.attr("id").unwrap().to_string();
    phone
        .send_str(&format!(
            "<inactive xmlns='{NS_CSI}'/><iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    // The pong is the one stanza this stream handled.
    loop {
        let e = phone.next_element().await;
        if e.is("iq", NS_CLIENT) {
            break;
        }
    }
    let mut bob = Client::login(ts.plain_addr, "bob", "pw", Some("b")).await;
    bob.send_str(&presence(Some("away"))).await;
    bob.barrier().await;
    held(&ts, 1).await;
    drop(phone);

    let mut c = Client::connect(ts.plain_addr).await;
    c.starttls().await;
    let outcome = c.scram(ScramHash::Sha256, "alice", "pw", false).await;
    assert!(outcome.is("success", NS_SASL), "{}", show(&outcome));
    c.open_stream().await;
    c.next_element().await;
    c.send_str(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='1'/>"
    ))
    .await;
    let resumed = c.next_element().await;
    assert!(resumed.is("resumed", NS_SM), "{}", show(&resumed));
    let next = loop {
        let e = c.next_element().await;
        if !e.is("r", NS_SM) {
            break e;
        }
    };
    assert_eq!(label(&next), "presence bob@localhost/b away");
    assert_eq!(state(&ts), (false, 0));
    // Once: no second copy of it (ack requests aside).
    let since = c.mark();
    c.barrier().await;
    let stray: Vec<String> = c.received[since..]
        .iter()
        .filter(|e| !e.is("r", NS_SM))
        .map(show)
        .collect();
    assert!(stray.is_empty(), "after resumption: {stray:?}");
}

/// CSI after authentication only; the server's capabilities in both
/// phases, with a `ver` that matches its disco#info (XEP-0115 §5).
#[tokio::test]
async fn stream_features_offer_client_state_and_capabilities() {
    const NS_CAPS: &str = "http://jabber.org/protocol/caps";
    let ts = TestServer::start_with(|c| {
        c.contact.abuse = vec!["mailto:abuse@localhost".into()];
    })
    .await;
    ts.add_user("alice", "pw").await;
    let mut c = Client::connect(ts.plain_addr).await;
    let before = c.starttls().await;
    assert!(
        before.get_child("csi", NS_CSI).is_none(),
        "{}",
        show(&before)
    );
    let caps = before.get_child("c", NS_CAPS).expect("caps before auth");
    let ver = caps.attr("ver").unwrap().to_string();
    assert_eq!(caps.attr("hash"), Some("sha-1"));
    assert_eq!(caps.attr("node"), Some("https://waxwing.im"));
    let outcome = c.scram(ScramHash::Sha256, "alice", "pw", false).await;
    assert!(outcome.is("success", NS_SASL));
    c.open_stream().await;
    let after = c.next_element().await;
    assert!(after.get_child("csi", NS_CSI).is_some(), "{}", show(&after));
    let caps = after.get_child("c", NS_CAPS).expect("caps after auth");
    assert_eq!(caps.attr("ver"), Some(ver.as_str()));
    c.bind(Some("r")).await;
    let info = c
        .iq(
            "<iq type='get' id='i' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "i",
        )
        .await;
    let q = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    assert!(q.children().any(|f| f.attr("var") == Some(NS_CAPS)));
    // The contact form is part of the hash.
    assert!(waxwing::modules::caps::verification_input(q)
        .contains("abuse-addresses<mailto:abuse@localhost<"));
    assert_eq!(waxwing::modules::caps::verification_string(q), ver);
    // §6.2: the caps node answers with the same info; other nodes do not exist.
    let node = format!("https://waxwing.im#{ver}");
    let info = c
        .iq(
            &format!("<iq type='get' id='n' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info' node='{node}'/></iq>"),
            "n",
        )
        .await;
    let q = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .expect("info for the caps node");
    assert_eq!(q.attr("node"), Some(node.as_str()));
    assert_eq!(waxwing::modules::caps::verification_string(q), ver);
    let info = c
        .iq(
            "<iq type='get' id='x' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info' node='https://waxwing.im#other'/></iq>",
            "x",
        )
        .await;
    assert_eq!(stanza_error(&info).as_deref(), Some("item-not-found"));
}
