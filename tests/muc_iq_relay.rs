//! IQs to an occupant through the room (XEP-0045 §17.4): a vCard request
//! answered by the occupant's server, a request answered by the
//! occupant's client, neither side learning the other's real JID; an
//! absent nick is item-not-found, and requests awaiting answers are
//! bounded per room (`[muc] max_relayed_iqs`).

mod common;
mod muc_transcript;

use common::*;
use muc_transcript::*;
use waxwing::config::Config;
use waxwing::xml::Element;

fn occupant(room: &str, nick: &str) -> String {
    format!("{}/{nick}", room_jid(room))
}

/// The next IQ request `c` receives.
async fn next_request(c: &mut Client) -> Element {
    loop {
        let e = c.next_named("iq").await;
        if matches!(e.attr("type"), Some("get" | "set")) {
            return e;
        }
    }
}

#[tokio::test]
async fn a_vcard_request_to_an_occupant_is_answered_by_its_server() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    let r = bob
        .iq(
            "<iq type='set' id='v'><vCard xmlns='vcard-temp'><FN>Bob Builder</FN></vCard></iq>",
            "v",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    open_room(&mut alice, "cards", &mut [&mut bob]).await;

    let r = alice
        .iq(
            &format!(
                "<iq type='get' id='card1' to='{}'><vCard xmlns='vcard-temp'/></iq>",
                occupant("cards", "bob")
            ),
            "card1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    assert_eq!(r.attr("from"), Some(occupant("cards", "bob").as_str()));
    assert_eq!(r.attr("to"), alice.jid.as_deref());
    let card = child(&r, "vCard", "vcard-temp");
    assert_eq!(child(card, "FN", "vcard-temp").text(), "Bob Builder");
}

#[tokio::test]
async fn a_request_reaches_the_occupants_client_and_its_answer_comes_back() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    open_room(&mut alice, "relay", &mut [&mut bob]).await;

    alice
        .send_str(&format!(
            "<iq type='get' id='ver1' to='{}'><query xmlns='jabber:iq:version'/></iq>",
            occupant("relay", "bob")
        ))
        .await;
    let req = next_request(&mut bob).await;
    // Bob sees alice's occupant JID only.
    assert_eq!(req.attr("from"), Some(occupant("relay", "owner").as_str()));
    assert!(!show(&req).contains("alice@"), "{}", show(&req));
    assert!(req.get_child("query", "jabber:iq:version").is_some());
    let relay_id = req.attr("id").unwrap().to_string();

    // Someone else cannot answer in bob's place.
    let [mut carol] = users(&server, ["carol"]).await;
    join_room(&mut carol, "relay", "carol").await;
    carol
        .send_str(&format!(
            "<iq type='result' id='{relay_id}' to='{}'><query xmlns='jabber:iq:version'><name>forged</name></query></iq>",
            occupant("relay", "owner")
        ))
        .await;
    sync(&mut carol).await;

    bob.send_str(&format!(
        "<iq type='result' id='{relay_id}' to='{}'><query xmlns='jabber:iq:version'><name>BobClient</name></query></iq>",
        occupant("relay", "owner")
    ))
    .await;
    let answer = loop {
        let e = alice.next_named("iq").await;
        if e.attr("id") == Some("ver1") {
            break e;
        }
    };
    assert_eq!(answer.attr("type"), Some("result"), "{}", show(&answer));
    assert_eq!(answer.attr("from"), Some(occupant("relay", "bob").as_str()));
    assert_eq!(
        child(
            child(&answer, "query", "jabber:iq:version"),
            "name",
            "jabber:iq:version"
        )
        .text(),
        "BobClient"
    );
    assert!(!show(&answer).contains("bob@"), "{}", show(&answer));

    // An error answer goes back as well.
    alice
        .send_str(&format!(
            "<iq type='get' id='ver2' to='{}'><query xmlns='jabber:iq:version'/></iq>",
            occupant("relay", "bob")
        ))
        .await;
    let req = next_request(&mut bob).await;
    bob.send_str(&format!(
        "<iq type='error' id='{}' to='{}'><query xmlns='jabber:iq:version'/><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        req.attr("id").unwrap(),
        occupant("relay", "owner")
    ))
    .await;
    let answer = loop {
        let e = alice.next_named("iq").await;
        if e.attr("id") == Some("ver2") {
            break e;
        }
    };
    assert_eq!(
        stanza_error(&answer).as_deref(),
        Some("service-unavailable")
    );
}

#[tokio::test]
async fn an_absent_nick_and_a_full_relay_are_refused() {
    let server = TestServer::start_with(|c: &mut Config| c.muc.max_relayed_iqs = 2).await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    open_room(&mut alice, "busy", &mut [&mut bob]).await;

    let ask = |id: &str, nick: &str| {
        format!(
            "<iq type='get' id='{id}' to='{}'><query xmlns='jabber:iq:version'/></iq>",
            occupant("busy", nick)
        )
    };
    let r = alice.iq(&ask("nobody", "nobody"), "nobody").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));

    // Bob does not answer: two requests wait, the third is refused.
    for id in ["w1", "w2"] {
        alice.send_str(&ask(id, "bob")).await;
        next_request(&mut bob).await;
    }
    let r = alice.iq(&ask("w3", "bob"), "w3").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("resource-constraint"));

    // Not in the room: not-acceptable.
    let [mut carol] = users(&server, ["carol"]).await;
    let r = carol.iq(&ask("c1", "bob"), "c1").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"));
}
