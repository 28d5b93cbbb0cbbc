//! The archive after a crash: the real `waxwing` binary is killed with
//! SIGKILL once the sender's messages are acknowledged (XEP-0198 `<a/>`)
//! and the recipient has read them, then restarted on the same SQLite
//! file. Every one of them must be in both archives, and the recipient's
//! archive ids must be the stanza-ids it was given.
//!
//! The harness (`common::process::Waxwing`) is shared with tests/durability.rs.

mod common;

use common::process::Waxwing;
use common::{Client, DOMAIN};
use waxwing::xml::NS_CLIENT;

const NS_SM: &str = "urn:xmpp:sm:3";
const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_SID: &str = "urn:xmpp:sid:0";
const ALICE: (&str, &str) = ("alice", "alice secret");
const BOB: (&str, &str) = ("bob", "bob secret");
const COUNT: usize = 300;

/// The archive ids and bodies of `c`'s whole archive, oldest first.
async fn archive(c: &mut Client) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let set = if after.is_empty() {
            "<max>250</max>".to_string()
        } else {
            format!("<max>250</max><after>{after}</after>")
        };
        c.send_str(&format!(
            "<iq type='set' id='q'><query xmlns='{NS_MAM}'><set xmlns='http://jabber.org/protocol/rsm'>{set}</set></query></iq>"
        ))
        .await;
        loop {
            let e = c.next_element().await;
            if e.is("iq", NS_CLIENT) && e.attr("id") == Some("q") {
                assert_eq!(e.attr("type"), Some("result"), "{e:?}");
                let fin = e.get_child("fin", NS_MAM).unwrap();
                if fin.attr("complete") == Some("true") {
                    return out;
                }
                break;
            }
            if let Some(r) = e.get_child("result", NS_MAM) {
                let id = r.attr("id").unwrap().to_string();
                let body = r
                    .get_child("forwarded", "urn:xmpp:forward:0")
                    .and_then(|f| f.get_child("message", NS_CLIENT))
                    .and_then(|m| m.get_child("body", NS_CLIENT))
                    .map(|b| b.text())
                    .unwrap_or_default();
                after = id.clone();
                out.push((id, body));
            }
        }
    }
}

#[tokio::test]
async fn acknowledged_and_received_messages_survive_kill_9() {
    let mut w = Waxwing::new(&[ALICE, BOB]);
    w.start();
    let mut bob = Client::login(w.c2s, BOB.0, BOB.1, Some("phone")).await;
    let mut alice = Client::login(w.c2s, ALICE.0, ALICE.1, Some("laptop")).await;
    alice.send_str(&format!("<enable xmlns='{NS_SM}'/>")).await;
    loop {
        let e = alice.next_element().await;
        if e.is("enabled", NS_SM) {
            break;
        }
    }
    // One burst, so many messages share the writer's batches.
    let mut burst = String::new();
    for i in 0..COUNT {
        burst.push_str(&format!(
            "<message type='chat' to='{}@{DOMAIN}' id='k{i}'><body>kept {i}</body></message>",
            BOB.0
        ));
    }
    burst.push_str(&format!("<r xmlns='{NS_SM}'/>"));
    alice.send_str(&burst).await;
    // The server acknowledges every message to its sender…
    loop {
        let e = alice.next_element().await;
        if e.is("a", NS_SM) {
            let h: usize = e.attr("h").unwrap().parse().unwrap();
            if h >= COUNT {
                break;
            }
        }
    }
    // …and the recipient has read every one, with its archive id.
    let mut delivered = Vec::new();
    while delivered.len() < COUNT {
        let e = bob.next_element().await;
        if e.is("message", NS_CLIENT) {
            let ids: Vec<String> = e
                .children()
                .filter(|c| c.is("stanza-id", NS_SID))
                .map(|c| c.attr("id").unwrap().to_string())
                .collect();
            assert_eq!(ids.len(), 1, "{e:?}");
            delivered.push((
                ids[0].clone(),
                e.get_child("body", NS_CLIENT).unwrap().text(),
            ));
        }
    }
    w.kill_9();
    drop((alice, bob));

    w.start();
    let expected: Vec<String> = (0..COUNT).map(|i| format!("kept {i}")).collect();
    let mut bob = Client::login(w.c2s, BOB.0, BOB.1, Some("phone")).await;
    let bobs = archive(&mut bob).await;
    assert_eq!(bobs, delivered);
    let mut alice = Client::login(w.c2s, ALICE.0, ALICE.1, Some("laptop")).await;
    let alices: Vec<String> = archive(&mut alice)
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(alices, expected);

    // `ctl archive purge` beside the running server: nothing before 2000,
    // then everything.
    let alice_jid = format!("{}@{DOMAIN}", ALICE.0);
    w.ctl(&["archive", "purge", &alice_jid, "--before", "2000-01-01"]);
    assert_eq!(archive(&mut alice).await.len(), COUNT);
    w.ctl(&["archive", "purge", &alice_jid]);
    assert!(archive(&mut alice).await.is_empty());
    assert_eq!(archive(&mut bob).await.len(), COUNT);
}
