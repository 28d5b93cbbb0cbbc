//! Moderated message retraction (XEP-0425) and occupants' own retractions
//! (XEP-0424) in a room, over real sockets: the moderator's IQ, the
//! broadcast every occupant gets, the history joiners no longer get, the
//! tombstone in the room's archive (SQLite and PostgreSQL), and the
//! refusals (not a moderator, an unknown id).

mod common;
mod muc_transcript;

use common::*;
use muc_transcript::*;
use waxwing::config::Config;
use waxwing::xml::{Element, NS_CLIENT};

const NS_MODERATE: &str = "urn:xmpp:message-moderate:1";
const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
const NS_SID: &str = "urn:xmpp:sid:0";
const NS_OID: &str = "urn:xmpp:occupant-id:0";
const NS_MAM: &str = "urn:xmpp:mam:2";

/// The room's stanza-id of a group chat message.
fn stanza_id(m: &Element) -> String {
    child(m, "stanza-id", NS_SID)
        .attr("id")
        .expect("an id")
        .to_string()
}

/// Next message from the room carrying a `<retract/>`.
async fn retraction(c: &mut Client, room: &str) -> Element {
    loop {
        let e = c.next_named("message").await;
        if e.attr("from")
            .is_some_and(|f| f.starts_with(&room_jid(room)))
            && e.get_child("retract", NS_RETRACT).is_some()
        {
            return e;
        }
    }
}

fn moderate(id: &str, reason: &str) -> String {
    format!("<moderate xmlns='{NS_MODERATE}' id='{id}'><retract xmlns='{NS_RETRACT}'/><reason>{reason}</reason></moderate>")
}

async fn moderate_iq(c: &mut Client, room: &str, payload: &str) -> Element {
    let id = next_id("mod");
    c.iq(
        &format!(
            "<iq type='set' id='{id}' to='{}'>{payload}</iq>",
            room_jid(room)
        ),
        &id,
    )
    .await
}

/// The room's archive as `c` reads it: (id, message) oldest first.
async fn archive(c: &mut Client, room: &str) -> Vec<(String, Element)> {
    let id = next_id("mam");
    c.send_str(&format!(
        "<iq type='set' id='{id}' to='{}'><query xmlns='{NS_MAM}' queryid='{id}'/></iq>",
        room_jid(room)
    ))
    .await;
    let mut out = Vec::new();
    loop {
        let e = c.next_element().await;
        if e.name() == "iq" && e.attr("id") == Some(id.as_str()) {
            assert_eq!(e.attr("type"), Some("result"), "{}", show(&e));
            return out;
        }
        if let Some(r) = e.get_child("result", NS_MAM) {
            let fwd = child(r, "forwarded", "urn:xmpp:forward:0");
            let m = child(fwd, "message", NS_CLIENT).clone();
            out.push((r.attr("id").unwrap().to_string(), m));
        }
    }
}

/// Alice (owner, moderator) retracts bob's message: everyone is told,
/// carol joining later gets no trace of it in the history, and the
/// archive holds a tombstone under the same id.
async fn a_moderator_retracts_a_message(url: Option<String>) {
    let server = TestServer::start_with(|c: &mut Config| {
        if let Some(u) = url {
            c.database.url = u;
        }
    })
    .await;
    for u in ["alice", "bob", "carol"] {
        let _ = server.store().delete_account("localhost", u).await;
    }
    let [mut alice, mut bob, mut carol] = users(&server, ["alice", "bob", "carol"]).await;
    let room = format!("spam{}", std::process::id());
    open_room(&mut alice, &room, &mut [&mut bob]).await;

    let info = query(&mut bob, &room_jid(&room), "get", NS_INFO, "").await;
    let vars: Vec<&str> = child(&info, "query", NS_INFO)
        .children()
        .filter_map(|f| f.attr("var"))
        .collect();
    assert!(vars.contains(&NS_MODERATE), "{}", show(&info));

    say(&mut bob, &room, "buy potions").await;
    let bad = groupchat(&mut alice, &room).await;
    let bad_id = stanza_id(&bad);
    say(&mut bob, &room, "sorry").await;
    groupchat(&mut alice, &room).await;
    sync(&mut bob).await;

    // Bob is no moderator: forbidden, and nothing happens.
    let r = moderate_iq(&mut bob, &room, &moderate(&bad_id, "mine")).await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("forbidden"),
        "{}",
        show(&r)
    );
    // An id the room never gave.
    let r = moderate_iq(&mut alice, &room, &moderate("no-such-id", "?")).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
    // No retract inside: a bad request.
    let r = moderate_iq(
        &mut alice,
        &room,
        &format!("<moderate xmlns='{NS_MODERATE}' id='{bad_id}'/>"),
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));

    // The room tells everyone, the moderator too, before it answers.
    let id = next_id("mod");
    let (r, before) = iq_keep(
        &mut alice,
        &format!(
            "<iq type='set' id='{id}' to='{}'>{}</iq>",
            room_jid(&room),
            moderate(&bad_id, "spam")
        ),
        &id,
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let seen_by_alice = before
        .into_iter()
        .find(|e| e.get_child("retract", NS_RETRACT).is_some())
        .expect("the moderator's copy");
    for m in [seen_by_alice, retraction(&mut bob, &room).await] {
        assert_eq!(m.attr("from"), Some(room_jid(&room).as_str()));
        assert_eq!(m.attr("type"), Some("groupchat"));
        let retract = child(&m, "retract", NS_RETRACT);
        assert_eq!(retract.attr("id"), Some(bad_id.as_str()));
        let by = child(retract, "moderated", NS_MODERATE);
        assert_eq!(
            by.attr("by"),
            Some(format!("{}/owner", room_jid(&room)).as_str())
        );
        assert!(by.get_child("occupant-id", NS_OID).is_some());
        assert_eq!(child(retract, "reason", NS_RETRACT).text(), "spam");
        // Older clients read the XEP-0422 form.
        let legacy = child(&m, "apply-to", "urn:xmpp:fasten:0");
        assert_eq!(legacy.attr("id"), Some(bad_id.as_str()));
        // The announcement is the room's own, with its own stanza-id.
        assert_ne!(stanza_id(&m), bad_id);
    }

    // A joiner's history has the apology only.
    let j = join_room(&mut carol, &room, "carol").await;
    let bodies: Vec<String> = j
        .history
        .iter()
        .filter_map(|m| Some(m.get_child("body", NS_CLIENT)?.text()))
        .collect();
    assert_eq!(bodies, vec!["sorry"]);

    // The archive keeps a tombstone in the message's place.
    let rows = archive(&mut carol, &room).await;
    let (_, stone) = rows
        .iter()
        .find(|(id, _)| id == &bad_id)
        .expect("the retracted message's row");
    assert!(
        stone.get_child("body", NS_CLIENT).is_none(),
        "{}",
        show(stone)
    );
    assert_eq!(
        stone.attr("from"),
        Some(format!("{}/bob", room_jid(&room)).as_str())
    );
    assert!(stone.get_child("occupant-id", NS_OID).is_some());
    let retracted = child(stone, "retracted", NS_RETRACT);
    assert!(retracted.attr("stamp").is_some());
    assert!(retracted.get_child("moderated", NS_MODERATE).is_some());
    assert_eq!(child(retracted, "reason", NS_RETRACT).text(), "spam");
    // The apology is untouched; the retraction itself is archived too.
    assert!(rows.iter().any(
        |(_, m)| m.get_child("body", NS_CLIENT).map(|b| b.text()).as_deref() == Some("sorry")
    ));
    assert!(rows.iter().any(|(_, m)| m
        .get_child("retract", NS_RETRACT)
        .is_some_and(|r| r.attr("id") == Some(bad_id.as_str()))));

    // Retracting it again: the id is still the room's (a tombstone), so
    // it is accepted; the earlier form of the request works as well.
    let r = moderate_iq(
        &mut alice,
        &room,
        &format!("<apply-to xmlns='urn:xmpp:fasten:0' id='{bad_id}'><moderate xmlns='urn:xmpp:message-moderate:0'><retract xmlns='urn:xmpp:message-retract:0'/></moderate></apply-to>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    assert_eq!(
        child(&retraction(&mut bob, &room).await, "retract", NS_RETRACT).attr("id"),
        Some(bad_id.as_str())
    );
}

#[tokio::test]
async fn a_moderator_retracts_a_message_on_sqlite() {
    a_moderator_retracts_a_message(None).await;
}

#[tokio::test]
async fn a_moderator_retracts_a_message_on_postgres() {
    a_moderator_retracts_a_message(Some(postgres_url())).await;
}

/// Without an archive, the history is what the room knows of.
#[tokio::test]
async fn without_an_archive_the_history_is_moderated() {
    let server = TestServer::start_with(|c: &mut Config| c.muc.archive = false).await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    open_room(&mut alice, "plain", &mut [&mut bob]).await;
    say(&mut bob, "plain", "oops").await;
    let id = stanza_id(&groupchat(&mut alice, "plain").await);
    let r = moderate_iq(&mut alice, "plain", &moderate(&id, "")).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    retraction(&mut bob, "plain").await;
    let r = moderate_iq(&mut alice, "plain", &moderate(&id, "")).await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("item-not-found"),
        "gone from the history, and there is no archive"
    );
}

/// XEP-0424: an occupant's retraction of its own message is group chat
/// like any other; a `<moderated/>` claim inside it is the room's to make.
#[tokio::test]
async fn an_occupants_own_retraction_passes_through() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    open_room(&mut alice, "own", &mut [&mut bob]).await;
    bob.send_str(&format!(
        "<message to='{}' type='groupchat' id='orig-1'><body>tpyo</body><origin-id xmlns='{NS_SID}' id='orig-1'/></message>",
        room_jid("own")
    ))
    .await;
    groupchat(&mut alice, "own").await;
    bob.send_str(&format!(
        "<message to='{}' type='groupchat' id='r-1'><retract xmlns='{NS_RETRACT}' id='orig-1'><moderated xmlns='{NS_MODERATE}' by='{}/owner'/></retract><fallback xmlns='urn:xmpp:fallback:0' for='{NS_RETRACT}'/><body>This person attempted to retract a previous message</body></message>",
        room_jid("own"),
        room_jid("own")
    ))
    .await;
    for c in [&mut alice, &mut bob] {
        let m = retraction(c, "own").await;
        assert_eq!(
            m.attr("from"),
            Some(format!("{}/bob", room_jid("own")).as_str())
        );
        let r = child(&m, "retract", NS_RETRACT);
        assert_eq!(r.attr("id"), Some("orig-1"));
        assert!(
            r.get_child("moderated", NS_MODERATE).is_none(),
            "forged: {}",
            show(&m)
        );
        assert!(m.get_child("occupant-id", NS_OID).is_some());
        assert!(m.get_child("stanza-id", NS_SID).is_some());
    }
}
