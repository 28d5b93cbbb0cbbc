//! Multi-user chat (XEP-0045) over real sockets: the service's disco,
//! room creation and the instant room, joins with their status codes,
//! nick conflicts and changes, group chat with stanza and occupant ids,
//! private messages, the subject, several resources under one nick,
//! kick/ban/voice, member lists and members-only rooms, passwords,
//! moderated rooms, maximum occupants, destruction, history limits,
//! invitations, self-ping, the configured bounds, and persistent rooms
//! surviving a restart on SQLite and PostgreSQL.
//!
//! The room's task handles a client's stanzas in order, so a ping to the
//! service (`sync`) that comes back means everything the room sent that
//! client before has been read: tests never sleep.

mod common;
mod muc_transcript;

use common::*;
use muc_transcript::*;
use waxwing::config::Config;
use waxwing::xml::{Element, NS_CLIENT};

#[tokio::test]
async fn the_service_is_discoverable_and_the_server_does_not_claim_muc() {
    let server = TestServer::start().await;
    let [mut c] = users(&server, ["alice"]).await;
    let items = query(&mut c, DOMAIN, "get", NS_ITEMS, "").await;
    let q = items.get_child("query", NS_ITEMS).unwrap();
    assert!(
        q.children().any(|i| i.attr("jid") == Some(SERVICE)),
        "{}",
        show(&items)
    );
    let info = query(&mut c, SERVICE, "get", NS_INFO, "").await;
    let q = info.get_child("query", NS_INFO).unwrap();
    let id = q.get_child("identity", NS_INFO).unwrap();
    assert_eq!(
        (id.attr("category"), id.attr("type")),
        (Some("conference"), Some("text"))
    );
    let vars: Vec<&str> = q.children().filter_map(|f| f.attr("var")).collect();
    for f in [NS_MUC, "urn:xmpp:occupant-id:0", "urn:xmpp:sid:0"] {
        assert!(vars.contains(&f), "{f} missing: {}", show(&info));
    }
    let own = query(&mut c, DOMAIN, "get", NS_INFO, "").await;
    assert!(
        !own.get_child("query", NS_INFO)
            .unwrap()
            .children()
            .any(|f| f.attr("var") == Some(NS_MUC)),
        "the server's own domain is not a chat service"
    );
}

#[tokio::test]
async fn a_new_room_is_locked_until_its_owner_accepts_the_instant_configuration() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;

    let j = join_room(&mut alice, "lobby", "owner").await;
    let mut c = codes(&j.own);
    c.sort();
    assert_eq!(c, vec![110, 170, 201], "{}", show(&j.own));
    let it = item(&j.own);
    assert_eq!(
        (it.attr("affiliation"), it.attr("role")),
        (Some("owner"), Some("moderator"))
    );
    assert!(j.others.is_empty());
    assert_eq!(
        j.subject.get_child("subject", NS_CLIENT).unwrap().text(),
        ""
    );
    assert!(j
        .own
        .get_child("occupant-id", "urn:xmpp:occupant-id:0")
        .is_some());

    // Locked: nobody else enters, and the room is not listed.
    assert_eq!(
        join_refused(&mut bob, "lobby", "bob", "").await,
        "item-not-found"
    );

    // The owner gets the form, then accepts the defaults.
    let form = query(&mut alice, &room_jid("lobby"), "get", NS_OWNER, "").await;
    let x = form
        .get_child("query", NS_OWNER)
        .and_then(|q| q.get_child("x", NS_DATA))
        .unwrap_or_else(|| panic!("{}", show(&form)));
    assert!(x
        .children()
        .any(|f| f.attr("var") == Some("muc#roomconfig_whois")));
    // To others the locked room is not there at all.
    let r = query(&mut bob, &room_jid("lobby"), "get", NS_OWNER, "").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
    let r = configure(&mut alice, "lobby", &[]).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    // Unlocked, it is; its form is still the owner's only.
    let r = query(&mut bob, &room_jid("lobby"), "get", NS_OWNER, "").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    let since = alice.mark();
    let jb = join_room(&mut bob, "lobby", "bob").await;
    assert_eq!(codes(&jb.own), vec![110, 170]);
    assert_eq!(jb.others.len(), 1);
    // Semi-anonymous: a participant does not see the owner's JID.
    assert_eq!(item(&jb.others[0]).attr("jid"), None);
    assert_eq!(item(&jb.others[0]).attr("role"), Some("moderator"));
    // The moderator sees bob's.
    sync(&mut alice).await;
    let got = alice
        .expect_only(
            since,
            &[Expect("bob's presence with his JID", &|e: &Element| {
                e.attr("from") == Some(&format!("{}/bob", room_jid("lobby")))
                    && item(e).attr("jid") == Some("bob@localhost/r")
                    && codes(e).is_empty()
            })],
        )
        .await;
    assert_eq!(got.len(), 1);

    let items = query(&mut bob, SERVICE, "get", NS_ITEMS, "").await;
    assert!(items
        .get_child("query", NS_ITEMS)
        .unwrap()
        .children()
        .any(|i| i.attr("jid") == Some(room_jid("lobby").as_str())));
}

#[tokio::test]
async fn group_chat_reaches_everyone_with_stanza_and_occupant_ids() {
    let server = TestServer::start().await;
    let [mut alice, mut bob, mut carol] = users(&server, ["alice", "bob", "carol"]).await;
    open_room(&mut alice, "chat", &mut [&mut bob]).await;

    say(&mut bob, "chat", "hello").await;
    // A forged id for the room is dropped.
    let mut ids = Vec::new();
    for c in [&mut alice, &mut bob] {
        let m = groupchat(c, "chat").await;
        assert_eq!(
            m.attr("from"),
            Some(format!("{}/bob", room_jid("chat")).as_str())
        );
        assert_eq!(m.attr("type"), Some("groupchat"));
        assert_eq!(m.attr("to"), c.jid.as_deref());
        let sid = m
            .get_child("stanza-id", "urn:xmpp:sid:0")
            .expect("stanza-id");
        assert_eq!(sid.attr("by"), Some(room_jid("chat").as_str()));
        let oid = m
            .get_child("occupant-id", "urn:xmpp:occupant-id:0")
            .expect("occupant-id");
        ids.push((
            sid.attr("id").unwrap().to_string(),
            oid.attr("id").unwrap().to_string(),
        ));
    }
    assert_eq!(ids[0], ids[1], "one stanza, the same ids for everyone");

    // A forged occupant-id and stanza-id are replaced by the room's.
    bob
        .send_str(&format!(
            "<message to='{}' type='groupchat'><body>x</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='fake'/><stanza-id xmlns='urn:xmpp:sid:0' by='{}' id='fake'/></message>",
            room_jid("chat"),
            room_jid("chat")
        ))
        .await;
    let m = groupchat(&mut alice, "chat").await;
    let oids: Vec<&str> = m
        .children()
        .filter(|c| c.is("occupant-id", "urn:xmpp:occupant-id:0"))
        .filter_map(|c| c.attr("id"))
        .collect();
    assert_eq!(oids, vec![ids[0].1.as_str()]);
    assert_eq!(
        m.children()
            .filter(|c| c.attr("id") == Some("fake"))
            .count(),
        0
    );

    // Someone outside cannot write to the room.
    say(&mut carol, "chat", "intruder").await;
    assert_eq!(message_error(&mut carol, "chat").await, "not-acceptable");
}

#[tokio::test]
async fn nick_conflicts_get_409_and_nick_changes_303() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    instant_room(&mut alice, "names").await;
    assert_eq!(
        join_refused(&mut bob, "names", "owner", "").await,
        "conflict"
    );
    join_room(&mut bob, "names", "bob").await;
    sync(&mut alice).await;
    let since = alice.mark();

    bob.send_str(&format!("<presence to='{}/robert'/>", room_jid("names")))
        .await;
    let gone = presence_of(&mut bob, "names", "bob").await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    let mut c = codes(&gone);
    c.sort();
    assert_eq!(c, vec![110, 303]);
    assert_eq!(item(&gone).attr("nick"), Some("robert"));
    let back = presence_of(&mut bob, "names", "robert").await;
    assert_eq!(back.attr("type"), None);
    assert!(codes(&back).contains(&110));

    sync(&mut alice).await;
    alice
        .expect_only(
            since,
            &[
                Expect("bob leaves with 303", &|e: &Element| {
                    e.attr("type") == Some("unavailable")
                        && codes(e) == vec![303]
                        && item(e).attr("nick") == Some("robert")
                }),
                Expect("robert arrives", &|e: &Element| {
                    e.attr("from") == Some(&format!("{}/robert", room_jid("names")))
                        && e.attr("type").is_none()
                }),
            ],
        )
        .await;

    // Changing to a taken nick is a conflict, and nothing changes.
    bob.send_str(&format!("<presence to='{}/owner'/>", room_jid("names")))
        .await;
    let e = presence_of(&mut bob, "names", "owner").await;
    assert_eq!(stanza_error(&e).as_deref(), Some("conflict"));
}

#[tokio::test]
async fn private_messages_go_between_occupants_only() {
    let server = TestServer::start().await;
    let [mut alice, mut bob, mut carol] = users(&server, ["alice", "bob", "carol"]).await;
    open_room(&mut alice, "pm", &mut [&mut bob]).await;
    bob.send_str(&format!(
        "<message to='{}/owner' type='chat'><body>psst</body></message>",
        room_jid("pm")
    ))
    .await;
    let m = loop {
        let e = alice.next_named("message").await;
        if e.get_child("body", NS_CLIENT).is_some() {
            break e;
        }
    };
    assert_eq!(
        m.attr("from"),
        Some(format!("{}/bob", room_jid("pm")).as_str())
    );
    assert_eq!(m.attr("type"), Some("chat"));
    assert!(m.get_child("x", NS_USER).is_some());

    bob.send_str(&format!(
        "<message to='{}/nobody' type='chat'><body>?</body></message>",
        room_jid("pm")
    ))
    .await;
    assert_eq!(message_error(&mut bob, "pm").await, "item-not-found");
    carol
        .send_str(&format!(
            "<message to='{}/owner' type='chat'><body>?</body></message>",
            room_jid("pm")
        ))
        .await;
    assert_eq!(message_error(&mut carol, "pm").await, "not-acceptable");
}

#[tokio::test]
async fn leaving_is_announced_and_an_empty_temporary_room_is_gone() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    open_room(&mut alice, "brief", &mut [&mut bob]).await;
    bob.send_str(&format!(
        "<presence type='unavailable' to='{}/bob'><status>bye</status></presence>",
        room_jid("brief")
    ))
    .await;
    let own = presence_of(&mut bob, "brief", "bob").await;
    assert_eq!(own.attr("type"), Some("unavailable"));
    assert_eq!(codes(&own), vec![110]);
    let seen = presence_of(&mut alice, "brief", "bob").await;
    assert_eq!(seen.attr("type"), Some("unavailable"));
    assert_eq!(
        seen.get_child("status", NS_CLIENT)
            .map(|s| s.text())
            .as_deref(),
        Some("bye")
    );
    assert_eq!(item(&seen).attr("role"), Some("none"));

    // The owner's session ends without a word: the room still hears it.
    drop(alice);
    // Polled as `eventually` does (the session's end is noticed by the
    // server in its own time).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let r = query(&mut bob, &room_jid("brief"), "get", NS_INFO, "").await;
        if stanza_error(&r).as_deref() == Some("item-not-found") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the empty temporary room was never destroyed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_user_can_join_with_several_resources_under_one_nick() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    let mut a2 = Client::login(server.plain_addr, "alice", "pw", Some("r2")).await;
    open_room(&mut alice, "multi", &mut [&mut bob]).await;
    sync(&mut bob).await;
    let since = bob.mark();
    let j = join_room(&mut a2, "multi", "owner").await;
    assert_eq!(j.others.len(), 1, "bob's presence");
    // Bob sees no new occupant.
    sync(&mut bob).await;
    bob.expect_nothing(since).await;

    say(&mut bob, "multi", "both").await;
    groupchat(&mut alice, "multi").await;
    groupchat(&mut a2, "multi").await;
    groupchat(&mut bob, "multi").await;

    // One resource leaves: only it hears of it, the occupant stays.
    let since = bob.mark();
    a2.send_str(&format!(
        "<presence type='unavailable' to='{}/owner'/>",
        room_jid("multi")
    ))
    .await;
    let own = presence_of(&mut a2, "multi", "owner").await;
    assert_eq!(own.attr("type"), Some("unavailable"));
    sync(&mut bob).await;
    bob.expect_nothing(since).await;
    say(&mut bob, "multi", "still").await;
    assert_eq!(
        groupchat(&mut alice, "multi")
            .await
            .get_child("body", NS_CLIENT)
            .unwrap()
            .text(),
        "still"
    );
}

#[tokio::test]
async fn the_subject_is_for_moderators_unless_the_room_allows_it() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    open_room(&mut alice, "topic", &mut [&mut bob]).await;
    let set = |t: &str| {
        format!(
            "<message to='{}' type='groupchat'><subject>{t}</subject></message>",
            room_jid("topic")
        )
    };
    bob.send_str(&set("mine")).await;
    assert_eq!(message_error(&mut bob, "topic").await, "forbidden");
    alice.send_str(&set("Rust")).await;
    let m = loop {
        let e = bob.next_named("message").await;
        if e.get_child("subject", NS_CLIENT).is_some() {
            break e;
        }
    };
    assert_eq!(
        m.attr("from"),
        Some(format!("{}/owner", room_jid("topic")).as_str())
    );
    // A joiner gets it last.
    let [mut c3] = users(&server, ["carol"]).await;
    let j = join_room(&mut c3, "topic", "carol").await;
    assert_eq!(
        j.subject.get_child("subject", NS_CLIENT).unwrap().text(),
        "Rust"
    );
    // Too long a subject is refused.
    let r = configure(
        &mut alice,
        "topic",
        &[("muc#roomconfig_changesubject", "1")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    bob.send_str(&set(&"x".repeat(5000))).await;
    assert_eq!(message_error(&mut bob, "topic").await, "not-acceptable");
    bob.send_str(&set("ours")).await;
    loop {
        let e = c3.next_named("message").await;
        if e.get_child("subject", NS_CLIENT)
            .map(|s| s.text())
            .as_deref()
            == Some("ours")
        {
            break;
        }
    }
}

#[tokio::test]
async fn kick_ban_and_voice() {
    let server = TestServer::start().await;
    let [mut alice, mut bob, mut carol] = users(&server, ["alice", "bob", "carol"]).await;
    open_room(&mut alice, "mod", &mut [&mut bob]).await;

    // A participant may not kick.
    let r = admin_set(&mut bob, "mod", "<item nick='owner' role='none'/>").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    // Kick (307) with actor and reason.
    let (r, before) = iq_keep(
        &mut alice,
        &format!(
            "<iq type='set' id='kick' to='{}'><query xmlns='{NS_ADMIN}'><item nick='bob' role='none'><reason>calm down</reason></item></query></iq>",
            room_jid("mod")
        ),
        "kick",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let p = presence_of(&mut bob, "mod", "bob").await;
    assert_eq!(p.attr("type"), Some("unavailable"));
    let mut c = codes(&p);
    c.sort();
    assert_eq!(c, vec![110, 307]);
    assert_eq!(
        item(&p).get_child("reason", NS_USER).unwrap().text(),
        "calm down"
    );
    assert_eq!(
        item(&p).get_child("actor", NS_USER).unwrap().attr("nick"),
        Some("owner")
    );
    // The room tells the moderator before it answers.
    let seen = before
        .iter()
        .find(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        .expect("the moderator sees the kick");
    assert_eq!(codes(seen), vec![307]);

    // Ban (301): out, and cannot come back.
    join_room(&mut bob, "mod", "bob").await;
    let r = admin_set(
        &mut alice,
        "mod",
        "<item jid='bob@localhost' affiliation='outcast'><reason>spam</reason></item>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let p = presence_of(&mut bob, "mod", "bob").await;
    let mut c = codes(&p);
    c.sort();
    assert_eq!(c, vec![110, 301]);
    assert_eq!(item(&p).attr("affiliation"), Some("outcast"));
    assert_eq!(join_refused(&mut bob, "mod", "bob", "").await, "forbidden");
    let list = query(
        &mut alice,
        &room_jid("mod"),
        "get",
        NS_ADMIN,
        "<item affiliation='outcast'/>",
    )
    .await;
    let items: Vec<&Element> = list
        .get_child("query", NS_ADMIN)
        .unwrap()
        .children()
        .collect();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].attr("jid"), Some("bob@localhost"));
    assert_eq!(
        items[0].get_child("reason", NS_ADMIN).unwrap().text(),
        "spam"
    );

    // Moderated: a visitor has no voice until granted.
    let r = configure(&mut alice, "mod", &[("muc#roomconfig_moderatedroom", "1")]).await;
    assert_eq!(r.attr("type"), Some("result"));
    let j = join_room(&mut carol, "mod", "carol").await;
    assert_eq!(item(&j.own).attr("role"), Some("visitor"));
    say(&mut carol, "mod", "may I").await;
    assert_eq!(message_error(&mut carol, "mod").await, "forbidden");
    let r = admin_set(&mut alice, "mod", "<item nick='carol' role='participant'/>").await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = presence_of(&mut carol, "mod", "carol").await;
    assert_eq!(item(&p).attr("role"), Some("participant"));
    say(&mut carol, "mod", "thanks").await;
    assert_eq!(
        groupchat(&mut alice, "mod")
            .await
            .get_child("body", NS_CLIENT)
            .unwrap()
            .text(),
        "thanks"
    );
    // Revoked again.
    let r = admin_set(&mut alice, "mod", "<item nick='carol' role='visitor'/>").await;
    assert_eq!(r.attr("type"), Some("result"));
    // Nobody kicks the owner.
    let r = admin_set(&mut alice, "mod", "<item nick='owner' role='none'/>").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"));
    // The last owner stays an owner.
    let r = admin_set(
        &mut alice,
        "mod",
        "<item jid='alice@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("conflict"));
}

#[tokio::test]
async fn member_lists_and_members_only_rooms() {
    let server = TestServer::start().await;
    let [mut alice, mut bob, mut carol] = users(&server, ["alice", "bob", "carol"]).await;
    open_room(&mut alice, "club", &mut [&mut carol]).await;
    let r = admin_set(
        &mut alice,
        "club",
        "<item jid='bob@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let list = query(
        &mut alice,
        &room_jid("club"),
        "get",
        NS_ADMIN,
        "<item affiliation='member'/>",
    )
    .await;
    let jids: Vec<&str> = list
        .get_child("query", NS_ADMIN)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("jid"))
        .collect();
    assert_eq!(jids, vec!["bob@localhost"]);
    // Owner list.
    let list = query(
        &mut alice,
        &room_jid("club"),
        "get",
        NS_ADMIN,
        "<item affiliation='owner'/>",
    )
    .await;
    assert_eq!(
        list.get_child("query", NS_ADMIN)
            .unwrap()
            .children()
            .count(),
        1
    );
    // A non-admin may not read lists.
    let r = query(
        &mut carol,
        &room_jid("club"),
        "get",
        NS_ADMIN,
        "<item affiliation='member'/>",
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    // Members-only: carol (no affiliation) is removed with 322.
    let r = configure(&mut alice, "club", &[("muc#roomconfig_membersonly", "1")]).await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = presence_of(&mut carol, "club", "carol").await;
    assert_eq!(p.attr("type"), Some("unavailable"));
    assert!(codes(&p).contains(&322), "{}", show(&p));
    assert_eq!(
        join_refused(&mut carol, "club", "carol", "").await,
        "registration-required"
    );
    let j = join_room(&mut bob, "club", "bob").await;
    assert_eq!(item(&j.own).attr("affiliation"), Some("member"));
    // Losing membership removes bob with 321.
    let r = admin_set(
        &mut alice,
        "club",
        "<item jid='bob@localhost' affiliation='none'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = presence_of(&mut bob, "club", "bob").await;
    assert!(codes(&p).contains(&321), "{}", show(&p));
}

#[tokio::test]
async fn passwords_and_maximum_occupants() {
    let server = TestServer::start().await;
    let [mut alice, mut bob, mut carol] = users(&server, ["alice", "bob", "carol"]).await;
    instant_room(&mut alice, "safe").await;
    let r = configure(
        &mut alice,
        "safe",
        &[
            ("muc#roomconfig_passwordprotectedroom", "1"),
            ("muc#roomconfig_roomsecret", "sesame"),
            ("muc#roomconfig_maxusers", "2"),
        ],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    assert_eq!(
        join_refused(&mut bob, "safe", "bob", "").await,
        "not-authorized"
    );
    assert_eq!(
        join_refused(&mut bob, "safe", "bob", "<password>wrong</password>").await,
        "not-authorized"
    );
    join_with(&mut bob, "safe", "bob", "<password>sesame</password>").await;
    assert_eq!(
        join_refused(&mut carol, "safe", "carol", "<password>sesame</password>").await,
        "service-unavailable"
    );
    // Wrong types in the form: bad-request, nothing changed.
    let r = configure(&mut alice, "safe", &[("muc#roomconfig_maxusers", "many")]).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
    let r = configure(
        &mut alice,
        "safe",
        &[("muc#roomconfig_moderatedroom", "maybe")],
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
}

#[tokio::test]
async fn destroying_a_room_tells_everyone_why_and_where_to_go() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    open_room(&mut alice, "old", &mut [&mut bob]).await;
    let r = query(&mut bob, &room_jid("old"), "set", NS_OWNER, "<destroy/>").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    let (r, before) = iq_keep(
        &mut alice,
        &format!(
            "<iq type='set' id='x' to='{}'><query xmlns='{NS_OWNER}'><destroy jid='new@{SERVICE}'><reason>moved</reason></destroy></query></iq>",
            room_jid("old")
        ),
        "x",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let owner_saw = before
        .into_iter()
        .find(|e| e.name() == "presence" && codes(e).contains(&110))
        .expect("the owner's own unavailable, before the answer");
    let bob_saw = loop {
        let e = bob.next_named("presence").await;
        if is_room_stanza(&e, "old") && e.attr("type") == Some("unavailable") {
            break e;
        }
    };
    for p in [owner_saw, bob_saw] {
        assert!(codes(&p).contains(&110), "{}", show(&p));
        assert_eq!(p.attr("type"), Some("unavailable"));
        let d = p
            .get_child("x", NS_USER)
            .unwrap()
            .get_child("destroy", NS_USER)
            .unwrap();
        assert_eq!(d.attr("jid"), Some(format!("new@{SERVICE}").as_str()));
        assert_eq!(d.get_child("reason", NS_USER).unwrap().text(), "moved");
    }
    let r = query(&mut bob, &room_jid("old"), "get", NS_INFO, "").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn history_on_join_follows_the_limits_asked_for() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    instant_room(&mut alice, "past").await;
    for i in 0..5 {
        say(&mut alice, "past", &format!("m{i}")).await;
    }
    sync(&mut alice).await;
    let body = |e: &Element| e.get_child("body", NS_CLIENT).unwrap().text();

    let j = join_room(&mut bob, "past", "bob").await;
    assert_eq!(
        j.history.iter().map(body).collect::<Vec<_>>(),
        ["m0", "m1", "m2", "m3", "m4"]
    );
    let d = j.history[0]
        .get_child("delay", "urn:xmpp:delay")
        .expect("delay");
    assert_eq!(d.attr("from"), Some(room_jid("past").as_str()));
    assert!(d.attr("stamp").is_some());
    assert!(j.history[0]
        .get_child("stanza-id", "urn:xmpp:sid:0")
        .is_some());
    let leave = format!(
        "<presence type='unavailable' to='{}/bob'/>",
        room_jid("past")
    );

    bob.send_str(&leave).await;
    sync(&mut bob).await;
    let j = join_with(&mut bob, "past", "bob", "<history maxstanzas='2'/>").await;
    assert_eq!(j.history.iter().map(body).collect::<Vec<_>>(), ["m3", "m4"]);

    bob.send_str(&leave).await;
    sync(&mut bob).await;
    let j = join_with(&mut bob, "past", "bob", "<history maxchars='0'/>").await;
    assert!(j.history.is_empty());

    bob.send_str(&leave).await;
    sync(&mut bob).await;
    let j = join_with(
        &mut bob,
        "past",
        "bob",
        "<history since='2999-01-01T00:00:00Z'/>",
    )
    .await;
    assert!(j.history.is_empty());

    bob.send_str(&leave).await;
    sync(&mut bob).await;
    let j = join_with(
        &mut bob,
        "past",
        "bob",
        "<history seconds='3600' maxstanzas='3'/>",
    )
    .await;
    assert_eq!(j.history.len(), 3);

    // The room keeps what its configuration says.
    let r = configure(&mut alice, "past", &[("muc#maxhistoryfetch", "1")]).await;
    assert_eq!(r.attr("type"), Some("result"));
    bob.send_str(&leave).await;
    sync(&mut bob).await;
    let j = join_room(&mut bob, "past", "bob").await;
    assert_eq!(j.history.iter().map(body).collect::<Vec<_>>(), ["m4"]);
}

#[tokio::test]
async fn mediated_invitations_and_self_ping() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    // Bob's initial presence is handled before the invitation is sent (it
    // goes to his available resources).
    sync(&mut bob).await;
    instant_room(&mut alice, "party").await;
    alice
        .send_str(&format!(
            "<message to='{}'><x xmlns='{NS_USER}'><invite to='bob@localhost'><reason>come</reason></invite></x></message>",
            room_jid("party")
        ))
        .await;
    let m = loop {
        let e = bob.next_named("message").await;
        if e.attr("from") == Some(room_jid("party").as_str()) {
            break e;
        }
    };
    let inv = m
        .get_child("x", NS_USER)
        .unwrap()
        .get_child("invite", NS_USER)
        .unwrap();
    assert_eq!(inv.attr("from"), Some("alice@localhost"));
    assert_eq!(inv.get_child("reason", NS_USER).unwrap().text(), "come");

    // XEP-0410: own occupant JID answers; not joined → not-acceptable.
    let ping = |id: &str, nick: &str| {
        format!(
            "<iq type='get' id='{id}' to='{}/{nick}'><ping xmlns='urn:xmpp:ping'/></iq>",
            room_jid("party")
        )
    };
    let r = alice.iq(&ping("p1", "owner"), "p1").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = bob.iq(&ping("p2", "bob"), "p2").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-acceptable"));
}

#[tokio::test]
async fn bounds_on_nicks_rooms_and_joins() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.muc.max_rooms = 2;
        c.muc.max_rooms_per_user = 2;
        c.muc.max_nick_length = 10;
    })
    .await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    assert_eq!(
        join_refused(&mut alice, "r1", &"n".repeat(11), "").await,
        "not-acceptable"
    );
    instant_room(&mut alice, "r1").await;
    instant_room(&mut alice, "r2").await;
    // The service is full.
    assert_eq!(
        join_refused(&mut bob, "r3", "bob", "").await,
        "resource-constraint"
    );
    // Bob may be in two rooms, not three... here, the service's two.
    join_room(&mut bob, "r1", "bob").await;
    join_room(&mut bob, "r2", "bob").await;
    // A presence to the room without a nick.
    bob.send_str(&format!(
        "<presence to='{}'><x xmlns='{NS_MUC}'/></presence>",
        room_jid("r1")
    ))
    .await;
    let e = loop {
        let e = bob.next_named("presence").await;
        if e.attr("type") == Some("error") {
            break e;
        }
    };
    assert_eq!(stanza_error(&e).as_deref(), Some("jid-malformed"));
    // The server is unharmed.
    server.add_user("canary", "pw").await;
    still_serves(&server).await;
}

#[tokio::test]
async fn rooms_per_user_are_bounded() {
    let server = TestServer::start_with(|c: &mut Config| c.muc.max_rooms_per_user = 1).await;
    let [mut alice] = users(&server, ["alice"]).await;
    instant_room(&mut alice, "one").await;
    assert_eq!(
        join_refused(&mut alice, "two", "owner", "").await,
        "resource-constraint"
    );
    // A second resource in a room already joined is no new room.
    let mut a2 = Client::login(server.plain_addr, "alice", "pw", Some("r2")).await;
    join_room(&mut a2, "one", "owner").await;
}

/// A persistent room keeps its configuration, affiliations and subject
/// across a restart on the database at `url`.
async fn persistent_room_survives_restart(url: String) {
    let room = format!("keep{}", std::process::id());
    let start = |url: String| async move {
        TestServer::start_with(move |c: &mut Config| {
            c.database.url = url;
        })
        .await
    };
    let mut server = start(url.clone()).await;
    for u in ["alice", "bob", "carol"] {
        let _ = server.store().delete_account("localhost", u).await;
        server.add_user(u, "pw").await;
    }
    let mut a = Client::login(server.plain_addr, "alice", "pw", Some("r")).await;
    join_room(&mut a, &room, "owner").await;
    let r = configure(
        &mut a,
        &room,
        &[
            ("muc#roomconfig_persistentroom", "1"),
            ("muc#roomconfig_roomname", "Kept"),
            ("muc#roomconfig_membersonly", "1"),
        ],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = admin_set(
        &mut a,
        &room,
        "<item jid='bob@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    a.send_str(&format!(
        "<message to='{}' type='groupchat'><subject>still here</subject></message>",
        room_jid(&room)
    ))
    .await;
    sync(&mut a).await;
    // Everyone leaves: a persistent room stays.
    a.send_str(&format!(
        "<presence type='unavailable' to='{}/owner'/>",
        room_jid(&room)
    ))
    .await;
    sync(&mut a).await;
    drop(a);
    server.stop().await;

    let server = start(url).await;
    let mut b = Client::login(server.plain_addr, "bob", "pw", Some("r")).await;
    let info = query(&mut b, &room_jid(&room), "get", NS_INFO, "").await;
    let q = info
        .get_child("query", NS_INFO)
        .unwrap_or_else(|| panic!("{}", show(&info)));
    let vars: Vec<&str> = q.children().filter_map(|f| f.attr("var")).collect();
    assert!(
        vars.contains(&"muc_persistent") && vars.contains(&"muc_membersonly"),
        "{}",
        show(&info)
    );
    assert_eq!(
        q.get_child("identity", NS_INFO).unwrap().attr("name"),
        Some("Kept")
    );
    let j = join_room(&mut b, &room, "bob").await;
    assert_eq!(item(&j.own).attr("affiliation"), Some("member"));
    assert_eq!(
        j.subject.get_child("subject", NS_CLIENT).unwrap().text(),
        "still here"
    );
    let mut c = Client::login(server.plain_addr, "carol", "pw", Some("r")).await;
    assert_eq!(
        join_refused(&mut c, &room, "carol", "").await,
        "registration-required"
    );
    // Destroyed: gone from the database too.
    let mut a = Client::login(server.plain_addr, "alice", "pw", Some("r")).await;
    let r = query(&mut a, &room_jid(&room), "set", NS_OWNER, "<destroy/>").await;
    assert_eq!(r.attr("type"), Some("result"));
    sync(&mut a).await;
    let service = SERVICE.to_string();
    let rooms = server.store().muc_rooms(&service).await.unwrap();
    assert!(rooms.iter().all(|r| r.room != room));
}

#[tokio::test]
async fn a_persistent_room_survives_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    persistent_room_survives_restart(format!("sqlite://{}/muc.db", dir.path().display())).await;
}

#[tokio::test]
async fn a_persistent_room_survives_a_restart_on_postgres() {
    persistent_room_survives_restart(postgres_url()).await;
}

#[tokio::test]
async fn an_occupant_whose_session_is_gone_is_removed_with_333() {
    let server = TestServer::start().await;
    let [mut alice] = users(&server, ["alice"]).await;
    server.add_user("bob", "pw").await;
    instant_room(&mut alice, "gone").await;
    // Never available, so its end sends no unavailable to the room: the
    // room finds out when it next writes to it.
    let mut b = Client::login_without_presence(server.plain_addr, "bob", "pw", Some("r")).await;
    join_room(&mut b, "gone", "bob").await;
    sync(&mut b).await;
    drop(b);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut n = 0;
    loop {
        n += 1;
        say(&mut alice, "gone", &format!("ping{n}")).await;
        let (_, before) = iq_keep(
            &mut alice,
            &format!("<iq type='get' id='s{n}' to='{SERVICE}'><ping xmlns='urn:xmpp:ping'/></iq>"),
            &format!("s{n}"),
        )
        .await;
        if let Some(p) = before
            .iter()
            .find(|e| e.name() == "presence" && e.attr("type") == Some("unavailable"))
        {
            assert_eq!(
                p.attr("from"),
                Some(format!("{}/bob", room_jid("gone")).as_str())
            );
            assert_eq!(codes(p), vec![333], "{}", show(p));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob was never removed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_occupant_that_stops_reading_is_removed_and_the_room_goes_on() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.limits.session_queue = 4;
        c.limits.write_timeout = 300;
    })
    .await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    open_room(&mut alice, "slow", &mut [&mut bob]).await;
    // Bob stops reading; alice writes big messages until the room gives
    // up on him (his socket buffers and his queue of 4 full).
    let big = "x".repeat(100_000);
    let mut removed = None;
    for i in 0..400 {
        say(&mut alice, "slow", &format!("{i}{big}")).await;
        loop {
            let e = alice.next_element().await;
            if e.name() == "presence" && e.attr("type") == Some("unavailable") {
                removed = Some(e);
                break;
            }
            if e.name() == "message" && e.attr("id") == Some(format!("m-{i}{big}").as_str()) {
                break;
            }
        }
        if removed.is_some() {
            break;
        }
    }
    let p = removed.expect("bob removed before 40 MB were queued for him");
    assert_eq!(
        p.attr("from"),
        Some(format!("{}/bob", room_jid("slow")).as_str())
    );
    assert_eq!(codes(&p), vec![333]);
    // The room still works for alice.
    say(&mut alice, "slow", "after").await;
    while groupchat(&mut alice, "slow")
        .await
        .get_child("body", NS_CLIENT)
        .unwrap()
        .text()
        != "after"
    {}
}

#[tokio::test]
async fn the_room_archive_pages_with_the_stanza_ids_occupants_got() {
    let server = TestServer::start().await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    let j = instant_room(&mut alice, "log").await;
    assert!(
        codes(&j.own).contains(&170),
        "logged room: {}",
        show(&j.own)
    );
    let info = query(&mut alice, &room_jid("log"), "get", NS_INFO, "").await;
    assert!(info
        .get_child("query", NS_INFO)
        .unwrap()
        .children()
        .any(|f| f.attr("var") == Some("urn:xmpp:mam:2")));
    let mut sids = Vec::new();
    for i in 0..3 {
        say(&mut alice, "log", &format!("a{i}")).await;
        let m = groupchat(&mut alice, "log").await;
        let sid = m.get_child("stanza-id", "urn:xmpp:sid:0").unwrap();
        sids.push(sid.attr("id").unwrap().to_string());
    }
    // Bob (not in the room: it is open) pages through it.
    let mam_query = |id: &str, set: &str| {
        format!(
            "<iq type='set' id='{id}' to='{}'><query xmlns='urn:xmpp:mam:2' queryid='q{id}'><set xmlns='http://jabber.org/protocol/rsm'>{set}</set></query></iq>",
            room_jid("log")
        )
    };
    let (fin, before) = iq_keep(&mut bob, &mam_query("p1", "<max>2</max>"), "p1").await;
    assert_eq!(fin.attr("type"), Some("result"), "{}", show(&fin));
    let results: Vec<(String, String)> = before
        .iter()
        .filter_map(|m| {
            let r = m.get_child("result", "urn:xmpp:mam:2")?;
            assert_eq!(m.attr("from"), Some(room_jid("log").as_str()));
            let fwd = r.get_child("forwarded", "urn:xmpp:forward:0")?;
            let msg = fwd.get_child("message", NS_CLIENT)?;
            assert_eq!(
                msg.attr("from"),
                Some(format!("{}/owner", room_jid("log")).as_str())
            );
            Some((
                r.attr("id")?.to_string(),
                msg.get_child("body", NS_CLIENT)?.text(),
            ))
        })
        .collect();
    assert_eq!(
        results,
        vec![
            (sids[0].clone(), "a0".to_string()),
            (sids[1].clone(), "a1".to_string())
        ]
    );
    let f = fin.get_child("fin", "urn:xmpp:mam:2").unwrap();
    assert_eq!(f.attr("complete"), None);
    let (fin, before) = iq_keep(
        &mut bob,
        &mam_query("p2", &format!("<max>2</max><after>{}</after>", sids[1])),
        "p2",
    )
    .await;
    let ids: Vec<&str> = before
        .iter()
        .filter_map(|m| m.get_child("result", "urn:xmpp:mam:2")?.attr("id"))
        .collect();
    assert_eq!(ids, vec![sids[2].as_str()]);
    assert_eq!(
        fin.get_child("fin", "urn:xmpp:mam:2")
            .unwrap()
            .attr("complete"),
        Some("true")
    );

    // Members-only: outsiders may not read it.
    let r = configure(&mut alice, "log", &[("muc#roomconfig_membersonly", "1")]).await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = bob.iq(&mam_query("p3", "<max>2</max>"), "p3").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn history_is_bounded_in_bytes_too() {
    let server = TestServer::start_with(|c: &mut Config| c.muc.max_history_bytes = 10_000).await;
    let [mut alice, mut bob] = users(&server, ["alice", "bob"]).await;
    instant_room(&mut alice, "big").await;
    for i in 0..5 {
        say(&mut alice, "big", &format!("{i}{}", "y".repeat(2_000))).await;
    }
    sync(&mut alice).await;
    let j = join_room(&mut bob, "big", "bob").await;
    // Two messages of ~4.4 KB (the test repeats the body in the id) fit
    // in 10,000 bytes, not three.
    let firsts: Vec<char> = j
        .history
        .iter()
        .map(|m| {
            m.get_child("body", NS_CLIENT)
                .unwrap()
                .text()
                .chars()
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(firsts, vec!['3', '4']);
}

/// A joiner whose occupant list is longer than its session queue gets it
/// streamed as it reads: every occupant's presence, then its own, then
/// the subject, in that order; nobody is dropped with 333 on the way
/// (each of the 20 joins before it is streamed the same way).
#[tokio::test]
async fn a_join_into_a_room_bigger_than_the_session_queue_is_streamed() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.limits.session_queue = 4;
    })
    .await;
    let [mut alice, _bob, mut carol] = users(&server, ["alice", "bob", "carol"]).await;
    instant_room(&mut alice, "big").await;
    let mut others = Vec::new();
    for i in 0..20 {
        let mut c =
            Client::login_without_presence(server.plain_addr, "bob", "pw", Some(&format!("o{i}")))
                .await;
        let j = join_room(&mut c, "big", &format!("n{i}")).await;
        assert_eq!(j.others.len(), i + 1, "occupants before n{i}");
        assert!(!codes(&j.own).contains(&333), "{}", show(&j.own));
        others.push(c);
    }
    carol
        .send_str(&format!(
            "<presence to='{}/carol'><x xmlns='{NS_MUC}'/></presence>",
            room_jid("big")
        ))
        .await;
    let (mut seen, mut own_at) = (Vec::new(), None);
    loop {
        let e = carol.next_element().await;
        if !is_room_stanza(&e, "big") {
            continue;
        }
        if e.name() == "message" {
            assert!(e.get_child("subject", NS_CLIENT).is_some(), "{}", show(&e));
            break;
        }
        assert_eq!(e.name(), "presence", "{}", show(&e));
        assert_ne!(e.attr("type"), Some("unavailable"), "{}", show(&e));
        if codes(&e).contains(&110) {
            own_at = Some(seen.len());
        }
        seen.push(e.attr("from").unwrap_or_default().to_string());
    }
    assert_eq!(own_at, Some(21), "self-presence after all 21 others");
    let mut nicks = seen[..21].to_vec();
    nicks.sort();
    nicks.dedup();
    assert_eq!(nicks.len(), 21, "each occupant once");
    // The room goes on for everyone, the streamed joiners included.
    say(&mut alice, "big", "after").await;
    for c in others.iter_mut().chain(std::iter::once(&mut carol)) {
        while groupchat(c, "big")
            .await
            .get_child("body", NS_CLIENT)
            .map(|b| b.text())
            .as_deref()
            != Some("after")
        {}
    }
}
