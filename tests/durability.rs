//! Durability across a crash: the real `waxwing` binary is killed with
//! SIGKILL (no shutdown, no WAL checkpoint) after the server has taken
//! responsibility for something, then restarted on the same config and
//! SQLite file. What it accepted must still be there — offline messages
//! (in order, each once, with XEP-0203 delay) and a pending subscription
//! request (RFC 6121 §3.1.3).
//!
//! "Taken responsibility" is observed on the wire: the server stores an
//! offline message or a subscription request before it handles the sender's
//! next stanza, so once a ping sent after them is answered, they are
//! committed.

mod common;

use common::process::Waxwing;
use common::{Client, DOMAIN};
use waxwing::xml::{Element, NS_CLIENT};

const NS_DELAY: &str = "urn:xmpp:delay";
const NS_ROSTER: &str = "jabber:iq:roster";
const ALICE: (&str, &str) = ("alice", "alice-Pa55-wörd");
const BOB: (&str, &str) = ("bob", "bob secret, with = and ,");

/// Sends a ping to the server and reads up to its result, returning what
/// came before it.
async fn ping(c: &mut Client, id: &str) -> Vec<Element> {
    c.send_str(&format!(
        "<iq type='get' id='{id}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let mut before = Vec::new();
    loop {
        let e = c.next_element().await;
        if e.is("iq", NS_CLIENT) && e.attr("id") == Some(id) {
            assert_eq!(e.attr("type"), Some("result"), "{e:?}");
            return before;
        }
        before.push(e);
    }
}

fn messages(stanzas: &[Element]) -> Vec<&Element> {
    stanzas.iter().filter(|e| e.name() == "message").collect()
}

const COUNT: usize = 50;

#[tokio::test]
async fn offline_messages_survive_kill_9() {
    let mut w = Waxwing::new(&[ALICE, BOB]);
    w.start();

    let mut alice = Client::login(w.c2s, ALICE.0, ALICE.1, Some("sender")).await;
    for i in 0..COUNT {
        alice
            .send_str(&format!(
                "<message to='bob@{DOMAIN}' type='chat' id='m{i}'><body>durable {i} &amp; ü</body></message>"
            ))
            .await;
    }
    let before = ping(&mut alice, "stored").await;
    assert!(
        messages(&before).is_empty(),
        "alice got message replies: {before:?}"
    );

    w.kill_9();
    drop(alice);
    w.start();

    let mut bob = Client::login(w.c2s, BOB.0, BOB.1, Some("phone")).await;
    let mut got = Vec::new();
    while got.len() < COUNT {
        let e = bob.next_element().await;
        if e.name() == "message" {
            got.push(e);
        }
    }
    // Nothing more: bob's ping is answered after anything already queued.
    let extra = ping(&mut bob, "after").await;
    assert!(
        messages(&extra).is_empty(),
        "more than {COUNT} messages (duplicates?): {extra:?}"
    );

    let bodies: Vec<String> = got
        .iter()
        .map(|m| {
            m.get_child("body", NS_CLIENT)
                .map(|b| b.text())
                .unwrap_or_default()
        })
        .collect();
    let expected: Vec<String> = (0..COUNT).map(|i| format!("durable {i} & ü")).collect();
    assert_eq!(bodies, expected, "lost, duplicated or reordered");
    let mut last_stamp = String::new();
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.attr("id"), Some(format!("m{i}").as_str()), "{m:?}");
        assert_eq!(m.attr("type"), Some("chat"), "{m:?}");
        assert_eq!(m.attr("from"), Some("alice@localhost/sender"), "{m:?}");
        assert!(
            m.attr("to").is_some_and(|t| t.starts_with("bob@localhost")),
            "{m:?}"
        );
        let delays: Vec<&Element> = m.children().filter(|c| c.is("delay", NS_DELAY)).collect();
        assert_eq!(delays.len(), 1, "one XEP-0203 delay: {m:?}");
        assert_eq!(delays[0].attr("from"), Some(DOMAIN), "{m:?}");
        let stamp = delays[0].attr("stamp").expect("stamp").to_string();
        // XEP-0082 UTC: YYYY-MM-DDThh:mm:ss[.sss]Z; in this format string
        // order is time order.
        assert!(
            stamp.len() >= 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "stamp {stamp:?}"
        );
        assert!(
            stamp >= last_stamp,
            "stamps go back: {last_stamp} then {stamp}"
        );
        last_stamp = stamp;
    }
    drop(bob);

    // Delivered once: the next session gets none of them again.
    let mut bob = Client::login(w.c2s, BOB.0, BOB.1, Some("laptop")).await;
    let again = ping(&mut bob, "again").await;
    assert!(messages(&again).is_empty(), "delivered twice: {again:?}");
}

/// The contacts in a roster result: jid → (subscription, ask).
fn roster(result: &Element) -> Vec<(String, String, Option<String>)> {
    assert_eq!(result.attr("type"), Some("result"), "{result:?}");
    result
        .get_child("query", NS_ROSTER)
        .expect("query")
        .children()
        .filter(|c| c.is("item", NS_ROSTER))
        .map(|i| {
            (
                i.attr("jid").unwrap_or_default().to_string(),
                i.attr("subscription").unwrap_or_default().to_string(),
                i.attr("ask").map(String::from),
            )
        })
        .collect()
}

const ROSTER_GET: &str = "<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>";

#[tokio::test]
async fn pending_subscription_request_survives_kill_9() {
    let mut w = Waxwing::new(&[ALICE, BOB]);
    w.start();

    let mut alice = Client::login(w.c2s, ALICE.0, ALICE.1, Some("sender")).await;
    alice
        .send_str(&format!(
            "<presence to='bob@{DOMAIN}' type='subscribe' id='sub1'/>"
        ))
        .await;
    let before = ping(&mut alice, "stored").await;
    assert!(
        !before.iter().any(|e| e.attr("type") == Some("error")),
        "{before:?}"
    );

    w.kill_9();
    drop(alice);
    w.start();

    // Bob gets the request when he sends initial presence.
    let mut bob = Client::login(w.c2s, BOB.0, BOB.1, Some("phone")).await;
    let seen = ping(&mut bob, "after").await;
    let requests: Vec<&Element> = seen
        .iter()
        .filter(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .collect();
    assert_eq!(requests.len(), 1, "one subscription request: {seen:?}");
    assert_eq!(
        requests[0].attr("from"),
        Some("alice@localhost"),
        "{seen:?}"
    );

    // Alice's side survived too: bob is in her roster, ask=subscribe.
    let mut alice = Client::login(w.c2s, ALICE.0, ALICE.1, Some("again")).await;
    let items = roster(&alice.iq(ROSTER_GET, "r1").await);
    assert_eq!(
        items,
        vec![(
            format!("bob@{DOMAIN}"),
            "none".to_string(),
            Some("subscribe".to_string())
        )]
    );

    // And the request can still be approved.
    bob.send_str(&format!(
        "<presence to='alice@{DOMAIN}' type='subscribed'/>"
    ))
    .await;
    loop {
        let e = alice.next_element().await;
        if e.name() == "presence" && e.attr("type") == Some("subscribed") {
            assert_eq!(e.attr("from"), Some("bob@localhost"), "{e:?}");
            break;
        }
    }
    let items = roster(
        &alice
            .iq(ROSTER_GET.replace("r1", "r2").as_str(), "r2")
            .await,
    );
    assert_eq!(
        items,
        vec![(format!("bob@{DOMAIN}"), "to".to_string(), None)]
    );
    let items = roster(&bob.iq(ROSTER_GET, "r1").await);
    assert_eq!(
        items,
        vec![(format!("alice@{DOMAIN}"), "from".to_string(), None)]
    );
}
