//! Voice requests in a moderated room (XEP-0045 §7.13, §8.6): the
//! visitor's request, the approval form every moderator gets, the grant
//! that makes the visitor a participant, and the refusals.

mod common;
mod muc_transcript;

use common::*;
use muc_transcript::*;
use waxwing::xml::Element;

const FORM: &str = "http://jabber.org/protocol/muc#request";

fn request(room: &str) -> String {
    format!(
        "<message to='{}'><x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'><value>{FORM}</value></field><field var='muc#role' type='list-single'><value>participant</value></field></x></message>",
        room_jid(room)
    )
}

fn approval(room: &str, nick: &str, allow: bool) -> String {
    format!(
        "<message to='{}'><x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'><value>{FORM}</value></field><field var='muc#role'><value>participant</value></field><field var='muc#roomnick'><value>{nick}</value></field><field var='muc#request_allow'><value>{allow}</value></field></x></message>",
        room_jid(room)
    )
}

fn value(form: &Element, var: &str) -> Option<String> {
    form.children()
        .find(|f| f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text())
}

/// The next voice approval form the room sends `c`.
async fn approval_form(c: &mut Client, room: &str) -> Element {
    loop {
        let e = c.next_named("message").await;
        if e.attr("from") == Some(room_jid(room).as_str()) {
            if let Some(x) = e.get_child("x", NS_DATA) {
                return x.clone();
            }
        }
    }
}

#[tokio::test]
async fn a_visitor_asks_for_voice_and_a_moderator_grants_it() {
    let server = TestServer::start().await;
    let [mut alice, mut bob, mut carol] = users(&server, ["alice", "bob", "carol"]).await;
    configured_room(
        &mut alice,
        "stage",
        &[("muc#roomconfig_moderatedroom", "1")],
    )
    .await;
    // Bob is a member, so a participant.
    let r = admin_set(
        &mut alice,
        "stage",
        "<item jid='bob@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    join_room(&mut bob, "stage", "bob").await;
    let j = join_room(&mut carol, "stage", "carol").await;
    assert_eq!(item(&j.own).attr("role"), Some("visitor"));
    sync(&mut alice).await;

    // A participant has voice already.
    bob.send_str(&request("stage")).await;
    assert_eq!(message_error(&mut bob, "stage").await, "not-acceptable");

    carol.send_str(&request("stage")).await;
    let form = approval_form(&mut alice, "stage").await;
    assert_eq!(form.attr("type"), Some("form"));
    assert_eq!(value(&form, "FORM_TYPE").as_deref(), Some(FORM));
    assert_eq!(value(&form, "muc#roomnick").as_deref(), Some("carol"));
    assert_eq!(
        value(&form, "muc#jid").as_deref(),
        Some("carol@localhost/r")
    );
    assert_eq!(value(&form, "muc#request_allow").as_deref(), Some("false"));
    // Asked again before an answer: the moderators are not told twice.
    let since = alice.mark();
    carol.send_str(&request("stage")).await;
    sync(&mut carol).await;
    sync(&mut alice).await;
    alice.expect_nothing(since).await;

    // Bob is no moderator: he cannot approve.
    bob.send_str(&approval("stage", "carol", true)).await;
    assert_eq!(message_error(&mut bob, "stage").await, "forbidden");

    alice.send_str(&approval("stage", "carol", true)).await;
    let p = presence_of(&mut carol, "stage", "carol").await;
    assert_eq!(item(&p).attr("role"), Some("participant"), "{}", show(&p));
    let seen = presence_of(&mut bob, "stage", "carol").await;
    assert_eq!(item(&seen).attr("role"), Some("participant"));
    say(&mut carol, "stage", "thank you").await;
    assert_eq!(
        groupchat(&mut bob, "stage")
            .await
            .get_child("body", waxwing::xml::NS_CLIENT)
            .unwrap()
            .text(),
        "thank you"
    );
}

#[tokio::test]
async fn a_denied_request_leaves_the_visitor_silent() {
    let server = TestServer::start().await;
    let [mut alice, mut carol] = users(&server, ["alice", "carol"]).await;
    configured_room(
        &mut alice,
        "quiet",
        &[("muc#roomconfig_moderatedroom", "1")],
    )
    .await;
    join_room(&mut carol, "quiet", "carol").await;
    carol.send_str(&request("quiet")).await;
    approval_form(&mut alice, "quiet").await;
    alice.send_str(&approval("quiet", "carol", false)).await;
    sync(&mut alice).await;
    say(&mut carol, "quiet", "hello?").await;
    assert_eq!(message_error(&mut carol, "quiet").await, "forbidden");
    // Answered, so she may ask again.
    carol.send_str(&request("quiet")).await;
    let form = approval_form(&mut alice, "quiet").await;
    assert_eq!(value(&form, "muc#roomnick").as_deref(), Some("carol"));
}
