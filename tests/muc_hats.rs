//! Hats (XEP-0317) over real sockets: the owner's don/doff commands
//! (XEP-0050), the `<hats/>` in the wearer's presence for everyone, the
//! refusals, and hats kept by a persistent room across a restart.

mod common;
mod muc_transcript;

use common::*;
use muc_transcript::*;
use waxwing::config::Config;
use waxwing::xml::Element;

const NS_HATS: &str = "urn:xmpp:hats:0";
const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const DON: &str = "urn:xmpp:hats:commands:don";
const DOFF: &str = "urn:xmpp:hats:commands:doff";

/// Runs a hats command with a submitted form; the answer.
async fn hat_command(c: &mut Client, room: &str, node: &str, jid: &str, uri: &str) -> Element {
    let id = next_id("hat");
    c.iq(
        &format!(
            "<iq type='set' id='{id}' to='{}'><command xmlns='{NS_COMMANDS}' node='{node}' action='execute'><x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:hats:commands</value></field><field var='accountjid'><value>{jid}</value></field><field var='hat'><value>{uri}</value></field><field var='title'><value>Teacher</value></field></x></command></iq>",
            room_jid(room)
        ),
        &id,
    )
    .await
}

/// The hats of a presence as (uri, title).
fn hats(p: &Element) -> Vec<(String, String)> {
    p.get_child("hats", NS_HATS)
        .map(|h| {
            h.children()
                .map(|hat| {
                    (
                        hat.attr("uri").unwrap_or_default().to_string(),
                        hat.attr("title").unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const TEACHER: &str = "http://example.edu/hats#Teacher";

#[tokio::test]
async fn owners_put_hats_on_and_take_them_off() {
    let server = TestServer::start().await;
    let [mut alice, mut bob, mut carol] = users(&server, ["alice", "bob", "carol"]).await;
    open_room(&mut alice, "class", &mut [&mut bob]).await;

    let info = query(&mut bob, &room_jid("class"), "get", NS_INFO, "").await;
    assert!(show(&info).contains(NS_HATS), "{}", show(&info));
    // The owner sees both commands; bob none.
    let id = next_id("items");
    let list = alice
        .iq(
            &format!("<iq type='get' id='{id}' to='{}'><query xmlns='{NS_ITEMS}' node='{NS_COMMANDS}'/></iq>", room_jid("class")),
            &id,
        )
        .await;
    let nodes: Vec<&str> = child(&list, "query", NS_ITEMS)
        .children()
        .filter_map(|i| i.attr("node"))
        .collect();
    assert_eq!(nodes, vec![DON, DOFF]);

    // Executed without a form: the form.
    let id = next_id("form");
    let form = alice
        .iq(
            &format!("<iq type='set' id='{id}' to='{}'><command xmlns='{NS_COMMANDS}' node='{DON}' action='execute'/></iq>", room_jid("class")),
            &id,
        )
        .await;
    let cmd = child(&form, "command", NS_COMMANDS);
    assert_eq!(cmd.attr("status"), Some("executing"), "{}", show(&form));
    assert!(cmd.attr("sessionid").is_some());
    let x = child(cmd, "x", NS_DATA);
    assert!(x.children().any(|f| f.attr("var") == Some("accountjid")));

    // Bob is no owner.
    let r = hat_command(&mut bob, "class", DON, "bob@localhost", TEACHER).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    let r = hat_command(&mut alice, "class", DON, "bob@localhost", TEACHER).await;
    assert_eq!(
        child(&r, "command", NS_COMMANDS).attr("status"),
        Some("completed"),
        "{}",
        show(&r)
    );
    // Everyone sees bob's hat.
    let p = presence_of(&mut bob, "class", "bob").await;
    assert_eq!(hats(&p), vec![(TEACHER.to_string(), "Teacher".to_string())]);
    // A joiner too.
    let j = join_room(&mut carol, "class", "carol").await;
    let bobs = j
        .others
        .iter()
        .find(|p| p.attr("from") == Some(&format!("{}/bob", room_jid("class"))))
        .expect("bob's presence");
    assert_eq!(hats(bobs).len(), 1, "{}", show(bobs));
    assert!(hats(&j.own).is_empty());

    // Off again.
    let r = hat_command(&mut alice, "class", DOFF, "bob@localhost", TEACHER).await;
    assert_eq!(
        child(&r, "command", NS_COMMANDS).attr("status"),
        Some("completed")
    );
    let p = presence_of(&mut carol, "class", "bob").await;
    assert!(hats(&p).is_empty(), "{}", show(&p));
    let r = hat_command(&mut alice, "class", DOFF, "bob@localhost", TEACHER).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
    // A form without a JID is a bad request.
    let r = hat_command(&mut alice, "class", DON, "", TEACHER).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
}

#[tokio::test]
async fn hats_are_bounded_per_room() {
    let server = TestServer::start_with(|c: &mut Config| c.muc.max_hats = 2).await;
    let [mut alice] = users(&server, ["alice"]).await;
    instant_room(&mut alice, "few").await;
    for i in 0..2 {
        let r = hat_command(&mut alice, "few", DON, &format!("u{i}@localhost"), TEACHER).await;
        assert!(stanza_error(&r).is_none(), "{}", show(&r));
    }
    let r = hat_command(&mut alice, "few", DON, "u9@localhost", TEACHER).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("resource-constraint"));
}

#[tokio::test]
async fn a_persistent_room_keeps_its_hats_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/hats.db", dir.path().display());
    let start = |url: String| async move {
        TestServer::start_with(move |c: &mut Config| c.database.url = url).await
    };
    let mut server = start(url.clone()).await;
    let [mut alice, bob] = users(&server, ["alice", "bob"]).await;
    configured_room(
        &mut alice,
        "kept",
        &[("muc#roomconfig_persistentroom", "1")],
    )
    .await;
    let r = hat_command(&mut alice, "kept", DON, "bob@localhost", TEACHER).await;
    assert!(stanza_error(&r).is_none(), "{}", show(&r));
    sync(&mut alice).await;
    drop((alice, bob));
    server.stop().await;

    let server = start(url).await;
    let mut bob = Client::login(server.plain_addr, "bob", "pw", Some("r")).await;
    let j = join_room(&mut bob, "kept", "bob").await;
    assert_eq!(
        hats(&j.own),
        vec![(TEACHER.to_string(), "Teacher".to_string())],
        "{}",
        show(&j.own)
    );
}
