//! Room semantics over real sockets: reserved rooms (XEP-0045 §10.1.3)
//! that stay locked until configured, who may create rooms (`[muc]
//! create`), nicknames the service modifies (210) and the reserved-nick
//! query (§7.12), and bad input — forbidden characters in nicks, huge
//! nicks and subjects, mistyped configuration forms, join floods, too
//! many rooms per user and too many affiliations — each answered with
//! its error while the server goes on serving.

mod common;
mod muc_transcript;

use common::*;
use muc_transcript::*;
use waxwing::config::Config;

/// The join's error condition, whatever the address it came back from
/// (a nick the server could not parse comes back from what was sent).
async fn any_join_error(c: &mut Client, to: &str) -> String {
    c.send_str(&format!(
        "<presence to='{to}'><x xmlns='{NS_MUC}'/></presence>"
    ))
    .await;
    loop {
        let e = c.next_named("presence").await;
        if e.attr("type") == Some("error") {
            return stanza_error(&e).unwrap();
        }
        assert_ne!(e.attr("type"), None, "expected a refusal, got {}", show(&e));
    }
}

#[tokio::test]
async fn a_reserved_room_stays_locked_until_its_owner_submits_the_form() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;

    let j = join_room(&mut alice, "plans", "owner").await;
    assert!(codes(&j.own).contains(&201), "{}", show(&j.own));
    // Locked: others cannot enter nor see it, it is not listed.
    assert_eq!(
        join_refused(&mut bob, "plans", "bob", "").await,
        "item-not-found"
    );
    let r = query(&mut bob, &room_jid("plans"), "get", NS_INFO, "").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
    let items = query(&mut bob, SERVICE, "get", NS_ITEMS, "").await;
    assert!(!show(&items).contains(&room_jid("plans")));
    let id = next_id("vc");
    let r = bob
        .iq(
            &format!(
                "<iq type='get' id='{id}' to='{}'><vCard xmlns='vcard-temp'/></iq>",
                room_jid("plans")
            ),
            &id,
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));

    // The owner reads the form and submits it with values.
    let form = query(&mut alice, &room_jid("plans"), "get", NS_OWNER, "").await;
    assert!(child(&form, "query", NS_OWNER)
        .get_child("x", NS_DATA)
        .is_some());
    let r = configure(
        &mut alice,
        "plans",
        &[
            ("muc#roomconfig_roomname", "Plans"),
            ("muc#roomconfig_roomdesc", "What we will do"),
        ],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));

    // Unlocked, with that configuration.
    let info = query(&mut bob, &room_jid("plans"), "get", NS_INFO, "").await;
    assert_eq!(
        child(child(&info, "query", NS_INFO), "identity", NS_INFO).attr("name"),
        Some("Plans")
    );
    join_room(&mut bob, "plans", "bob").await;
}

#[tokio::test]
async fn cancelling_the_first_configuration_destroys_the_room() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    join_room(&mut alice, "never", "owner").await;
    let r = query(
        &mut alice,
        &room_jid("never"),
        "set",
        NS_OWNER,
        &format!("<x xmlns='{NS_DATA}' type='cancel'/>"),
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = query(&mut bob, &room_jid("never"), "get", NS_INFO, "").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
    // The name is free: bob creates a room of his own under it.
    let j = join_room(&mut bob, "never", "bob").await;
    assert!(codes(&j.own).contains(&201));
}

#[tokio::test]
async fn only_admins_create_rooms_under_create_admins() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.muc.create = "admins".into();
        c.muc.admins = vec!["alice@localhost".into()];
    })
    .await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    assert_eq!(
        join_refused(&mut bob, "mine", "bob", "").await,
        "not-allowed"
    );
    instant_room(&mut alice, "theirs").await;
    // Joining an existing room is not creating one.
    join_room(&mut bob, "theirs", "bob").await;
}

#[tokio::test]
async fn a_list_of_creators_under_create_list() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.muc.create = "list".into();
        c.muc.creators = vec!["bob@localhost".into()];
        c.muc.admins = vec!["alice@localhost".into()];
    })
    .await;
    let [mut alice, mut bob, mut carol] = users(&server, ["alice", "bob", "carol"]).await;
    assert_eq!(
        join_refused(&mut carol, "c", "carol", "").await,
        "not-allowed"
    );
    instant_room(&mut bob, "b").await;
    instant_room(&mut alice, "a").await;
    join_room(&mut carol, "b", "carol").await;
}

#[test]
fn the_creation_policy_is_checked_when_the_configuration_is_read() {
    let c = Config::parse(
        "[muc]\ncreate = \"list\"\ncreators = [\"bob@example.org\"]\nadmins = [\"root@example.org\"]\n",
    )
    .unwrap();
    assert_eq!(c.muc.create, "list");
    assert_eq!(c.muc.creators, vec!["bob@example.org".to_string()]);
    let problems = Config::parse("[muc]\ncreate = \"everyone\"\nadmins = [\"a@b/c@@\", 3]\n")
        .expect_err("refused");
    let text: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
    assert!(text.iter().any(|m| m.contains("muc.create")), "{text:?}");
    assert_eq!(
        text.iter().filter(|m| m.contains("muc.admins")).count(),
        2,
        "{text:?}"
    );
}

#[tokio::test]
async fn a_nick_the_service_normalises_gets_210() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    // A nick taken as written has no 210.
    let j = instant_room(&mut alice, "names").await;
    assert!(!codes(&j.own).contains(&210));

    // Extra spaces are collapsed: bob is "third witch", and told so.
    bob.send_str(&format!(
        "<presence to='{}/  third   witch '><x xmlns='{NS_MUC}'/></presence>",
        room_jid("names")
    ))
    .await;
    let own = presence_of(&mut bob, "names", "third witch").await;
    assert!(codes(&own).contains(&110), "{}", show(&own));
    assert!(codes(&own).contains(&210), "{}", show(&own));
    // Others see the nick as the room knows it, without 210.
    let seen = presence_of(&mut alice, "names", "third witch").await;
    assert!(!codes(&seen).contains(&210));
    sync(&mut bob).await;

    // On a nick change too.
    bob.send_str(&format!("<presence to='{}/ bob'/>", room_jid("names")))
        .await;
    let back = presence_of(&mut bob, "names", "bob").await;
    assert!(codes(&back).contains(&210), "{}", show(&back));
}

#[tokio::test]
async fn the_reserved_nick_query_answers() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    open_room(&mut alice, "quiet", &mut [&mut bob]).await;
    // Nobody has a reserved nick (there is no room registration): an
    // empty answer for the node, inside the room or not.
    for c in [&mut alice, &mut bob] {
        let r = c
            .iq(
                &format!("<iq type='get' id='rn' to='{}'><query xmlns='{NS_INFO}' node='x-roomuser-item'/></iq>", room_jid("quiet")),
                "rn",
            )
            .await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
        let q = child(&r, "query", NS_INFO);
        assert_eq!(q.attr("node"), Some("x-roomuser-item"));
        assert_eq!(q.children().count(), 0, "{}", show(&r));
    }
}

#[tokio::test]
async fn bad_nicks_are_refused() {
    let server = TestServer::start().await;
    let [mut alice] = users(&server, ["alice"]).await;
    instant_room(&mut alice, "r").await;
    // Characters the nickname profile forbids: a direction mark, a
    // private-use character.
    for bad in ["a\u{200e}b", "x\u{e000}"] {
        let e = any_join_error(&mut alice, &format!("{}/{bad}", room_jid("r"))).await;
        assert_eq!(e, "jid-malformed", "{bad:?}");
    }
    // 10,000 characters: beyond what a JID's resource may hold.
    let e = any_join_error(
        &mut alice,
        &format!("{}/{}", room_jid("r"), "n".repeat(10_000)),
    )
    .await;
    assert_eq!(e, "jid-malformed");
    // Only spaces.
    let e = any_join_error(&mut alice, &format!("{}/   ", room_jid("r"))).await;
    assert_eq!(e, "jid-malformed");
    server.add_user("canary", "pw").await;
    still_serves(&server).await;
}

#[tokio::test]
async fn a_one_megabyte_subject_ends_the_stream_and_the_room_goes_on() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    open_room(&mut alice, "topic", &mut [&mut bob]).await;
    bob.send_str(&format!(
        "<message to='{}' type='groupchat'><subject>{}</subject></message>",
        room_jid("topic"),
        "x".repeat(1 << 20)
    ))
    .await;
    // Beyond the stanza size limit: the stream ends with policy-violation.
    assert_eq!(bob.expect_stream_error().await, "policy-violation");
    // Below it but above [muc] max_subject_bytes: not-acceptable.
    alice
        .send_str(&format!(
            "<message to='{}' type='groupchat'><subject>{}</subject></message>",
            room_jid("topic"),
            "y".repeat(10_000)
        ))
        .await;
    assert_eq!(message_error(&mut alice, "topic").await, "not-acceptable");
    say(&mut alice, "topic", "still here").await;
    groupchat(&mut alice, "topic").await;
}

#[tokio::test]
async fn a_configuration_form_with_wrong_types_changes_nothing() {
    let server = TestServer::start().await;
    let [mut alice] = users(&server, ["alice"]).await;
    instant_room(&mut alice, "typed").await;
    for (var, value) in [
        ("muc#roomconfig_maxusers", "-3"),
        ("muc#roomconfig_maxusers", "1e9"),
        ("muc#roomconfig_whois", "everybody"),
        ("muc#roomconfig_persistentroom", "yes please"),
        ("muc#maxhistoryfetch", "lots"),
        ("muc#roomconfig_allowpm", "strangers"),
    ] {
        let r = configure(
            &mut alice,
            "typed",
            &[("muc#roomconfig_roomname", "Changed"), (var, value)],
        )
        .await;
        assert_eq!(
            stanza_error(&r).as_deref(),
            Some("bad-request"),
            "{var}={value}: {}",
            show(&r)
        );
    }
    // The name in the same forms was not applied either.
    let info = query(&mut alice, &room_jid("typed"), "get", NS_INFO, "").await;
    assert_ne!(
        child(child(&info, "query", NS_INFO), "identity", NS_INFO).attr("name"),
        Some("Changed")
    );
    // A field far beyond [muc] max_field_bytes.
    let r = configure(
        &mut alice,
        "typed",
        &[("muc#roomconfig_roomdesc", &"d".repeat(100_000))],
    )
    .await;
    assert!(stanza_error(&r).is_some(), "{}", show(&r));
}

#[tokio::test]
async fn a_join_flood_meets_the_rooms_per_user_bound() {
    let server = TestServer::start_with(|c: &mut Config| c.muc.max_rooms_per_user = 5).await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    // 200 joins to 200 new rooms in one burst.
    let mut burst = String::new();
    for i in 0..200 {
        burst.push_str(&format!(
            "<presence to='{}/me'><x xmlns='{NS_MUC}'/></presence>",
            room_jid(&format!("flood{i}"))
        ));
    }
    alice.send_str(&burst).await;
    let (mut joined, mut refused) = (0, 0);
    while joined + refused < 200 {
        let e = alice.next_named("presence").await;
        match e.attr("type") {
            Some("error") => {
                assert_eq!(stanza_error(&e).as_deref(), Some("resource-constraint"));
                refused += 1;
            }
            None if codes(&e).contains(&110) => joined += 1,
            _ => {}
        }
    }
    assert_eq!((joined, refused), (5, 195));
    // The refused rooms were never kept: bob may create one of those names.
    let j = join_room(&mut bob, "flood199", "bob").await;
    assert!(codes(&j.own).contains(&201));
    server.add_user("canary", "pw").await;
    still_serves(&server).await;
}

#[tokio::test]
async fn the_affiliation_list_is_bounded() {
    let server = TestServer::start_with(|c: &mut Config| c.muc.max_affiliations = 5).await;
    let [mut alice] = users(&server, ["alice"]).await;
    instant_room(&mut alice, "big").await;
    // The owner is one; ten more at once is too many, and none is added.
    let items: String = (0..10)
        .map(|i| format!("<item jid='m{i}@localhost' affiliation='member'/>"))
        .collect();
    let r = admin_set(&mut alice, "big", &items).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("resource-constraint"));
    let list = query(
        &mut alice,
        &room_jid("big"),
        "get",
        NS_ADMIN,
        "<item affiliation='member'/>",
    )
    .await;
    assert_eq!(child(&list, "query", NS_ADMIN).children().count(), 0);
    // Four fit; the fifth does not.
    let items: String = (0..4)
        .map(|i| format!("<item jid='m{i}@localhost' affiliation='member'/>"))
        .collect();
    let r = admin_set(&mut alice, "big", &items).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = admin_set(
        &mut alice,
        "big",
        "<item jid='m9@localhost' affiliation='outcast'/>",
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("resource-constraint"));
    // Changing an existing one is no new entry.
    let r = admin_set(
        &mut alice,
        "big",
        "<item jid='m0@localhost' affiliation='outcast'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
}
