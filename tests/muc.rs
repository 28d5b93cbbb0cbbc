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

use common::*;
use waxwing::config::Config;
use waxwing::xml::{Element, NS_CLIENT};

const SERVICE: &str = "conference.localhost";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
const NS_DATA: &str = "jabber:x:data";
const NS_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_ITEMS: &str = "http://jabber.org/protocol/disco#items";

fn room_jid(room: &str) -> String {
    format!("{room}@{SERVICE}")
}

/// Status codes of a MUC presence or message.
fn codes(e: &Element) -> Vec<u16> {
    e.get_child("x", NS_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", NS_USER))
                .filter_map(|c| c.attr("code")?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn item(e: &Element) -> &Element {
    e.get_child("x", NS_USER)
        .and_then(|x| x.get_child("item", NS_USER))
        .unwrap_or_else(|| panic!("no muc#user item in {}", show(e)))
}

fn is_room_stanza(e: &Element, room: &str) -> bool {
    e.attr("from")
        .is_some_and(|f| f == room_jid(room) || f.starts_with(&format!("{}/", room_jid(room))))
}

/// A round trip through the chat service: what the room sent this client
/// before answering has been read.
async fn sync(c: &mut Client) {
    let id = format!("sync-{}", c.received.len());
    c.send_str(&format!(
        "<iq type='get' id='{id}' to='{SERVICE}'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    loop {
        let e = c.next_element().await;
        if e.is("iq", NS_CLIENT) && e.attr("id") == Some(id.as_str()) {
            assert_eq!(e.attr("type"), Some("result"), "{}", show(&e));
            if c.received
                .last()
                .is_some_and(|l| l.attr("id") == Some(id.as_str()))
            {
                c.received.pop();
            }
            return;
        }
    }
}

/// What a join brought: other occupants' presences, the self-presence,
/// history and the subject.
struct Joined {
    others: Vec<Element>,
    own: Element,
    history: Vec<Element>,
    subject: Element,
}

/// Sends a join with `extra` inside `<x/>` and reads up to the subject.
async fn join_with(c: &mut Client, room: &str, nick: &str, extra: &str) -> Joined {
    c.send_str(&format!(
        "<presence to='{}/{nick}'><x xmlns='{NS_MUC}'>{extra}</x></presence>",
        room_jid(room)
    ))
    .await;
    let mut others = Vec::new();
    let mut own = None;
    let mut history = Vec::new();
    loop {
        let e = c.next_element().await;
        if !is_room_stanza(&e, room) {
            continue;
        }
        if e.attr("type") == Some("error") {
            panic!("join refused: {}", show(&e));
        }
        if e.name() == "presence" {
            if codes(&e).contains(&110) {
                own = Some(e);
            } else {
                others.push(e);
            }
        } else if e.name() == "message" && e.get_child("subject", NS_CLIENT).is_some() {
            return Joined {
                others,
                own: own.expect("self-presence before the subject"),
                history,
                subject: e,
            };
        } else if e.name() == "message" {
            history.push(e);
        }
    }
}

async fn join(c: &mut Client, room: &str, nick: &str) -> Joined {
    join_with(c, room, nick, "").await
}

/// A join expected to fail: the error condition.
async fn join_refused(c: &mut Client, room: &str, nick: &str, extra: &str) -> String {
    c.send_str(&format!(
        "<presence to='{}/{nick}'><x xmlns='{NS_MUC}'>{extra}</x></presence>",
        room_jid(room)
    ))
    .await;
    loop {
        let e = c.next_named("presence").await;
        if is_room_stanza(&e, room) {
            assert_eq!(
                e.attr("type"),
                Some("error"),
                "expected a refusal: {}",
                show(&e)
            );
            assert!(e.get_child("x", NS_MUC).is_some(), "{}", show(&e));
            return stanza_error(&e).unwrap();
        }
    }
}

/// Creates `room` as `owner` (nick "owner") and accepts the default
/// configuration (the instant room).
async fn instant_room(owner: &mut Client, room: &str) -> Joined {
    let j = join(owner, room, "owner").await;
    let r = owner
        .iq(
            &format!(
                "<iq type='set' id='inst' to='{}'><query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query></iq>",
                room_jid(room)
            ),
            "inst",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    j
}

/// Submits configuration fields as the owner.
async fn configure(owner: &mut Client, room: &str, fields: &[(&str, &str)]) -> Element {
    let mut form = String::from(
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>",
    );
    for (var, v) in fields {
        form.push_str(&format!("<field var='{var}'><value>{v}</value></field>"));
    }
    owner
        .iq(
            &format!(
                "<iq type='set' id='cfg' to='{}'><query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'>{form}</x></query></iq>",
                room_jid(room)
            ),
            "cfg",
        )
        .await
}

/// Sends an IQ and returns its answer with everything read before it.
async fn iq_keep(c: &mut Client, xml: &str, id: &str) -> (Element, Vec<Element>) {
    c.send_str(xml).await;
    let mut before = Vec::new();
    loop {
        let e = c.next_element().await;
        if e.is("iq", NS_CLIENT) && e.attr("id") == Some(id) {
            return (e, before);
        }
        before.push(e);
    }
}

async fn admin_set(c: &mut Client, room: &str, items: &str) -> Element {
    c.iq(
        &format!(
            "<iq type='set' id='adm' to='{}'><query xmlns='{NS_ADMIN}'>{items}</query></iq>",
            room_jid(room)
        ),
        "adm",
    )
    .await
}

/// Next presence from the room about `nick`.
async fn presence_of(c: &mut Client, room: &str, nick: &str) -> Element {
    let from = format!("{}/{nick}", room_jid(room));
    loop {
        let e = c.next_named("presence").await;
        if e.attr("from") == Some(from.as_str()) {
            return e;
        }
    }
}

/// Next group chat message from the room.
async fn groupchat(c: &mut Client, room: &str) -> Element {
    loop {
        let e = c.next_named("message").await;
        if is_room_stanza(&e, room) && e.get_child("body", NS_CLIENT).is_some() {
            return e;
        }
    }
}

async fn say(c: &mut Client, room: &str, text: &str) {
    c.send_str(&format!(
        "<message to='{}' type='groupchat' id='m-{text}'><body>{text}</body></message>",
        room_jid(room)
    ))
    .await;
}

/// An error answer to a message sent to the room.
async fn message_error(c: &mut Client, room: &str) -> String {
    loop {
        let e = c.next_named("message").await;
        if is_room_stanza(&e, room) && e.attr("type") == Some("error") {
            return stanza_error(&e).unwrap();
        }
    }
}

async fn users(server: &TestServer, names: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for n in names {
        server.add_user(n, "pw").await;
        out.push(Client::login(server.plain_addr, n, "pw", Some("r")).await);
    }
    out
}

#[tokio::test]
async fn the_service_is_discoverable_and_the_server_does_not_claim_muc() {
    let server = TestServer::start().await;
    let mut c = users(&server, &["alice"]).await.remove(0);
    let items = c
        .iq(
            &format!("<iq type='get' id='i' to='{DOMAIN}'><query xmlns='{NS_ITEMS}'/></iq>"),
            "i",
        )
        .await;
    let q = items.get_child("query", NS_ITEMS).unwrap();
    assert!(
        q.children().any(|i| i.attr("jid") == Some(SERVICE)),
        "{}",
        show(&items)
    );
    let info = c
        .iq(
            &format!("<iq type='get' id='s' to='{SERVICE}'><query xmlns='{NS_INFO}'/></iq>"),
            "s",
        )
        .await;
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
    let own = c
        .iq(
            &format!("<iq type='get' id='o' to='{DOMAIN}'><query xmlns='{NS_INFO}'/></iq>"),
            "o",
        )
        .await;
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
    let mut cs = users(&server, &["alice", "bob"]).await;
    let (a, rest) = cs.split_first_mut().unwrap();
    let b = &mut rest[0];

    let j = join(a, "lobby", "owner").await;
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
    assert_eq!(join_refused(b, "lobby", "bob", "").await, "item-not-found");

    // The owner gets the form, then accepts the defaults.
    let form = a
        .iq(
            &format!(
                "<iq type='get' id='f' to='{}'><query xmlns='{NS_OWNER}'/></iq>",
                room_jid("lobby")
            ),
            "f",
        )
        .await;
    let x = form
        .get_child("query", NS_OWNER)
        .and_then(|q| q.get_child("x", NS_DATA))
        .unwrap_or_else(|| panic!("{}", show(&form)));
    assert!(x
        .children()
        .any(|f| f.attr("var") == Some("muc#roomconfig_whois")));
    // Only the owner may.
    let r = b
        .iq(
            &format!(
                "<iq type='get' id='f2' to='{}'><query xmlns='{NS_OWNER}'/></iq>",
                room_jid("lobby")
            ),
            "f2",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    let r = configure(a, "lobby", &[]).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));

    let since = a.mark();
    let jb = join(b, "lobby", "bob").await;
    assert_eq!(codes(&jb.own), vec![110, 170]);
    assert_eq!(jb.others.len(), 1);
    // Semi-anonymous: a participant does not see the owner's JID.
    assert_eq!(item(&jb.others[0]).attr("jid"), None);
    assert_eq!(item(&jb.others[0]).attr("role"), Some("moderator"));
    // The moderator sees bob's.
    sync(a).await;
    let got = a
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

    let items = b
        .iq(
            &format!("<iq type='get' id='l' to='{SERVICE}'><query xmlns='{NS_ITEMS}'/></iq>"),
            "l",
        )
        .await;
    assert!(items
        .get_child("query", NS_ITEMS)
        .unwrap()
        .children()
        .any(|i| i.attr("jid") == Some(room_jid("lobby").as_str())));
}

#[tokio::test]
async fn group_chat_reaches_everyone_with_stanza_and_occupant_ids() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob", "carol"]).await;
    instant_room(&mut cs[0], "chat").await;
    join(&mut cs[1], "chat", "bob").await;
    sync(&mut cs[0]).await;

    say(&mut cs[1], "chat", "hello").await;
    // A forged id for the room is dropped.
    let mut ids = Vec::new();
    for c in cs[..2].iter_mut() {
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
    cs[1]
        .send_str(&format!(
            "<message to='{}' type='groupchat'><body>x</body><occupant-id xmlns='urn:xmpp:occupant-id:0' id='fake'/><stanza-id xmlns='urn:xmpp:sid:0' by='{}' id='fake'/></message>",
            room_jid("chat"),
            room_jid("chat")
        ))
        .await;
    let m = groupchat(&mut cs[0], "chat").await;
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
    say(&mut cs[2], "chat", "intruder").await;
    assert_eq!(message_error(&mut cs[2], "chat").await, "not-acceptable");
}

#[tokio::test]
async fn nick_conflicts_get_409_and_nick_changes_303() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    instant_room(&mut cs[0], "names").await;
    assert_eq!(
        join_refused(&mut cs[1], "names", "owner", "").await,
        "conflict"
    );
    join(&mut cs[1], "names", "bob").await;
    sync(&mut cs[0]).await;
    let since = cs[0].mark();

    cs[1]
        .send_str(&format!("<presence to='{}/robert'/>", room_jid("names")))
        .await;
    let gone = presence_of(&mut cs[1], "names", "bob").await;
    assert_eq!(gone.attr("type"), Some("unavailable"));
    let mut c = codes(&gone);
    c.sort();
    assert_eq!(c, vec![110, 303]);
    assert_eq!(item(&gone).attr("nick"), Some("robert"));
    let back = presence_of(&mut cs[1], "names", "robert").await;
    assert_eq!(back.attr("type"), None);
    assert!(codes(&back).contains(&110));

    sync(&mut cs[0]).await;
    cs[0]
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
    cs[1]
        .send_str(&format!("<presence to='{}/owner'/>", room_jid("names")))
        .await;
    let e = presence_of(&mut cs[1], "names", "owner").await;
    assert_eq!(stanza_error(&e).as_deref(), Some("conflict"));
}

#[tokio::test]
async fn private_messages_go_between_occupants_only() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob", "carol"]).await;
    instant_room(&mut cs[0], "pm").await;
    join(&mut cs[1], "pm", "bob").await;
    cs[1]
        .send_str(&format!(
            "<message to='{}/owner' type='chat'><body>psst</body></message>",
            room_jid("pm")
        ))
        .await;
    let m = loop {
        let e = cs[0].next_named("message").await;
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

    cs[1]
        .send_str(&format!(
            "<message to='{}/nobody' type='chat'><body>?</body></message>",
            room_jid("pm")
        ))
        .await;
    assert_eq!(message_error(&mut cs[1], "pm").await, "item-not-found");
    cs[2]
        .send_str(&format!(
            "<message to='{}/owner' type='chat'><body>?</body></message>",
            room_jid("pm")
        ))
        .await;
    assert_eq!(message_error(&mut cs[2], "pm").await, "not-acceptable");
}

#[tokio::test]
async fn leaving_is_announced_and_an_empty_temporary_room_is_gone() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    instant_room(&mut cs[0], "brief").await;
    join(&mut cs[1], "brief", "bob").await;
    sync(&mut cs[0]).await;
    cs[1]
        .send_str(&format!(
            "<presence type='unavailable' to='{}/bob'><status>bye</status></presence>",
            room_jid("brief")
        ))
        .await;
    let own = presence_of(&mut cs[1], "brief", "bob").await;
    assert_eq!(own.attr("type"), Some("unavailable"));
    assert_eq!(codes(&own), vec![110]);
    let seen = presence_of(&mut cs[0], "brief", "bob").await;
    assert_eq!(seen.attr("type"), Some("unavailable"));
    assert_eq!(
        seen.get_child("status", NS_CLIENT)
            .map(|s| s.text())
            .as_deref(),
        Some("bye")
    );
    assert_eq!(item(&seen).attr("role"), Some("none"));

    // The owner's session ends without a word: the room still hears it.
    drop(cs.remove(0));
    // Polled as `eventually` does (the session's end is noticed by the
    // server in its own time).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let r = cs[0]
            .iq(
                &format!(
                    "<iq type='get' id='d' to='{}'><query xmlns='{NS_INFO}'/></iq>",
                    room_jid("brief")
                ),
                "d",
            )
            .await;
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
    let mut cs = users(&server, &["alice", "bob"]).await;
    let mut a2 = Client::login(server.plain_addr, "alice", "pw", Some("r2")).await;
    instant_room(&mut cs[0], "multi").await;
    join(&mut cs[1], "multi", "bob").await;
    sync(&mut cs[1]).await;
    let since = cs[1].mark();
    let j = join(&mut a2, "multi", "owner").await;
    assert_eq!(j.others.len(), 1, "bob's presence");
    // Bob sees no new occupant.
    sync(&mut cs[1]).await;
    cs[1].expect_nothing(since).await;

    say(&mut cs[1], "multi", "both").await;
    groupchat(&mut cs[0], "multi").await;
    groupchat(&mut a2, "multi").await;
    groupchat(&mut cs[1], "multi").await;

    // One resource leaves: only it hears of it, the occupant stays.
    let since = cs[1].mark();
    a2.send_str(&format!(
        "<presence type='unavailable' to='{}/owner'/>",
        room_jid("multi")
    ))
    .await;
    let own = presence_of(&mut a2, "multi", "owner").await;
    assert_eq!(own.attr("type"), Some("unavailable"));
    sync(&mut cs[1]).await;
    cs[1].expect_nothing(since).await;
    say(&mut cs[1], "multi", "still").await;
    assert_eq!(
        groupchat(&mut cs[0], "multi")
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
    let mut cs = users(&server, &["alice", "bob"]).await;
    instant_room(&mut cs[0], "topic").await;
    join(&mut cs[1], "topic", "bob").await;
    let set = |t: &str| {
        format!(
            "<message to='{}' type='groupchat'><subject>{t}</subject></message>",
            room_jid("topic")
        )
    };
    cs[1].send_str(&set("mine")).await;
    assert_eq!(message_error(&mut cs[1], "topic").await, "forbidden");
    cs[0].send_str(&set("Rust")).await;
    let m = loop {
        let e = cs[1].next_named("message").await;
        if e.get_child("subject", NS_CLIENT).is_some() {
            break e;
        }
    };
    assert_eq!(
        m.attr("from"),
        Some(format!("{}/owner", room_jid("topic")).as_str())
    );
    // A joiner gets it last.
    let mut c3 = users(&server, &["carol"]).await.remove(0);
    let j = join(&mut c3, "topic", "carol").await;
    assert_eq!(
        j.subject.get_child("subject", NS_CLIENT).unwrap().text(),
        "Rust"
    );
    // Too long a subject is refused.
    let r = configure(
        &mut cs[0],
        "topic",
        &[("muc#roomconfig_changesubject", "1")],
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    cs[1].send_str(&set(&"x".repeat(5000))).await;
    assert_eq!(message_error(&mut cs[1], "topic").await, "not-acceptable");
    cs[1].send_str(&set("ours")).await;
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
    let mut cs = users(&server, &["alice", "bob", "carol"]).await;
    instant_room(&mut cs[0], "mod").await;
    join(&mut cs[1], "mod", "bob").await;

    // A participant may not kick.
    let r = admin_set(&mut cs[1], "mod", "<item nick='owner' role='none'/>").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    // Kick (307) with actor and reason.
    let (r, before) = iq_keep(
        &mut cs[0],
        &format!(
            "<iq type='set' id='kick' to='{}'><query xmlns='{NS_ADMIN}'><item nick='bob' role='none'><reason>calm down</reason></item></query></iq>",
            room_jid("mod")
        ),
        "kick",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let p = presence_of(&mut cs[1], "mod", "bob").await;
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
    join(&mut cs[1], "mod", "bob").await;
    let r = admin_set(
        &mut cs[0],
        "mod",
        "<item jid='bob@localhost' affiliation='outcast'><reason>spam</reason></item>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let p = presence_of(&mut cs[1], "mod", "bob").await;
    let mut c = codes(&p);
    c.sort();
    assert_eq!(c, vec![110, 301]);
    assert_eq!(item(&p).attr("affiliation"), Some("outcast"));
    assert_eq!(
        join_refused(&mut cs[1], "mod", "bob", "").await,
        "forbidden"
    );
    let list = cs[0]
        .iq(
            &format!("<iq type='get' id='ol' to='{}'><query xmlns='{NS_ADMIN}'><item affiliation='outcast'/></query></iq>", room_jid("mod")),
            "ol",
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
    let r = configure(&mut cs[0], "mod", &[("muc#roomconfig_moderatedroom", "1")]).await;
    assert_eq!(r.attr("type"), Some("result"));
    let j = join(&mut cs[2], "mod", "carol").await;
    assert_eq!(item(&j.own).attr("role"), Some("visitor"));
    say(&mut cs[2], "mod", "may I").await;
    assert_eq!(message_error(&mut cs[2], "mod").await, "forbidden");
    let r = admin_set(&mut cs[0], "mod", "<item nick='carol' role='participant'/>").await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = presence_of(&mut cs[2], "mod", "carol").await;
    assert_eq!(item(&p).attr("role"), Some("participant"));
    say(&mut cs[2], "mod", "thanks").await;
    assert_eq!(
        groupchat(&mut cs[0], "mod")
            .await
            .get_child("body", NS_CLIENT)
            .unwrap()
            .text(),
        "thanks"
    );
    // Revoked again.
    let r = admin_set(&mut cs[0], "mod", "<item nick='carol' role='visitor'/>").await;
    assert_eq!(r.attr("type"), Some("result"));
    // Nobody kicks the owner.
    let r = admin_set(&mut cs[0], "mod", "<item nick='owner' role='none'/>").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("not-allowed"));
    // The last owner stays an owner.
    let r = admin_set(
        &mut cs[0],
        "mod",
        "<item jid='alice@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("conflict"));
}

#[tokio::test]
async fn member_lists_and_members_only_rooms() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob", "carol"]).await;
    instant_room(&mut cs[0], "club").await;
    join(&mut cs[2], "club", "carol").await;
    let r = admin_set(
        &mut cs[0],
        "club",
        "<item jid='bob@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let list = cs[0]
        .iq(
            &format!("<iq type='get' id='ml' to='{}'><query xmlns='{NS_ADMIN}'><item affiliation='member'/></query></iq>", room_jid("club")),
            "ml",
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
    let list = cs[0]
        .iq(
            &format!("<iq type='get' id='own' to='{}'><query xmlns='{NS_ADMIN}'><item affiliation='owner'/></query></iq>", room_jid("club")),
            "own",
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
    let r = cs[2]
        .iq(
            &format!("<iq type='get' id='ml2' to='{}'><query xmlns='{NS_ADMIN}'><item affiliation='member'/></query></iq>", room_jid("club")),
            "ml2",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));

    // Members-only: carol (no affiliation) is removed with 322.
    let r = configure(&mut cs[0], "club", &[("muc#roomconfig_membersonly", "1")]).await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = presence_of(&mut cs[2], "club", "carol").await;
    assert_eq!(p.attr("type"), Some("unavailable"));
    assert!(codes(&p).contains(&322), "{}", show(&p));
    assert_eq!(
        join_refused(&mut cs[2], "club", "carol", "").await,
        "registration-required"
    );
    let j = join(&mut cs[1], "club", "bob").await;
    assert_eq!(item(&j.own).attr("affiliation"), Some("member"));
    // Losing membership removes bob with 321.
    let r = admin_set(
        &mut cs[0],
        "club",
        "<item jid='bob@localhost' affiliation='none'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"));
    let p = presence_of(&mut cs[1], "club", "bob").await;
    assert!(codes(&p).contains(&321), "{}", show(&p));
}

#[tokio::test]
async fn passwords_and_maximum_occupants() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob", "carol"]).await;
    instant_room(&mut cs[0], "safe").await;
    let r = configure(
        &mut cs[0],
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
        join_refused(&mut cs[1], "safe", "bob", "").await,
        "not-authorized"
    );
    assert_eq!(
        join_refused(&mut cs[1], "safe", "bob", "<password>wrong</password>").await,
        "not-authorized"
    );
    join_with(&mut cs[1], "safe", "bob", "<password>sesame</password>").await;
    assert_eq!(
        join_refused(&mut cs[2], "safe", "carol", "<password>sesame</password>").await,
        "service-unavailable"
    );
    // Wrong types in the form: bad-request, nothing changed.
    let r = configure(&mut cs[0], "safe", &[("muc#roomconfig_maxusers", "many")]).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
    let r = configure(
        &mut cs[0],
        "safe",
        &[("muc#roomconfig_moderatedroom", "maybe")],
    )
    .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
}

#[tokio::test]
async fn destroying_a_room_tells_everyone_why_and_where_to_go() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    instant_room(&mut cs[0], "old").await;
    join(&mut cs[1], "old", "bob").await;
    let r = cs[1]
        .iq(
            &format!(
                "<iq type='set' id='x' to='{}'><query xmlns='{NS_OWNER}'><destroy/></query></iq>",
                room_jid("old")
            ),
            "x",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    let (r, before) = iq_keep(
        &mut cs[0],
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
        let e = cs[1].next_named("presence").await;
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
    let r = cs[1]
        .iq(
            &format!(
                "<iq type='get' id='g' to='{}'><query xmlns='{NS_INFO}'/></iq>",
                room_jid("old")
            ),
            "g",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn history_on_join_follows_the_limits_asked_for() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    instant_room(&mut cs[0], "past").await;
    for i in 0..5 {
        say(&mut cs[0], "past", &format!("m{i}")).await;
    }
    sync(&mut cs[0]).await;
    let body = |e: &Element| e.get_child("body", NS_CLIENT).unwrap().text();

    let j = join(&mut cs[1], "past", "bob").await;
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

    cs[1].send_str(&leave).await;
    sync(&mut cs[1]).await;
    let j = join_with(&mut cs[1], "past", "bob", "<history maxstanzas='2'/>").await;
    assert_eq!(j.history.iter().map(body).collect::<Vec<_>>(), ["m3", "m4"]);

    cs[1].send_str(&leave).await;
    sync(&mut cs[1]).await;
    let j = join_with(&mut cs[1], "past", "bob", "<history maxchars='0'/>").await;
    assert!(j.history.is_empty());

    cs[1].send_str(&leave).await;
    sync(&mut cs[1]).await;
    let j = join_with(
        &mut cs[1],
        "past",
        "bob",
        "<history since='2999-01-01T00:00:00Z'/>",
    )
    .await;
    assert!(j.history.is_empty());

    cs[1].send_str(&leave).await;
    sync(&mut cs[1]).await;
    let j = join_with(
        &mut cs[1],
        "past",
        "bob",
        "<history seconds='3600' maxstanzas='3'/>",
    )
    .await;
    assert_eq!(j.history.len(), 3);

    // The room keeps what its configuration says.
    let r = configure(&mut cs[0], "past", &[("muc#maxhistoryfetch", "1")]).await;
    assert_eq!(r.attr("type"), Some("result"));
    cs[1].send_str(&leave).await;
    sync(&mut cs[1]).await;
    let j = join(&mut cs[1], "past", "bob").await;
    assert_eq!(j.history.iter().map(body).collect::<Vec<_>>(), ["m4"]);
}

#[tokio::test]
async fn mediated_invitations_and_self_ping() {
    let server = TestServer::start().await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    instant_room(&mut cs[0], "party").await;
    // Bob's initial presence is handled before the invitation reaches his
    // bare JID (else it is stored offline, and this test waited forever).
    sync(&mut cs[1]).await;
    cs[0]
        .send_str(&format!(
            "<message to='{}'><x xmlns='{NS_USER}'><invite to='bob@localhost'><reason>come</reason></invite></x></message>",
            room_jid("party")
        ))
        .await;
    let m = loop {
        let e = cs[1].next_named("message").await;
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
    let r = cs[0].iq(&ping("p1", "owner"), "p1").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let r = cs[1].iq(&ping("p2", "bob"), "p2").await;
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
    let mut cs = users(&server, &["alice", "bob"]).await;
    assert_eq!(
        join_refused(&mut cs[0], "r1", &"n".repeat(11), "").await,
        "not-acceptable"
    );
    instant_room(&mut cs[0], "r1").await;
    instant_room(&mut cs[0], "r2").await;
    // The service is full.
    assert_eq!(
        join_refused(&mut cs[1], "r3", "bob", "").await,
        "resource-constraint"
    );
    // Bob may be in two rooms, not three... here, the service's two.
    join(&mut cs[1], "r1", "bob").await;
    join(&mut cs[1], "r2", "bob").await;
    // A presence to the room without a nick.
    cs[1]
        .send_str(&format!(
            "<presence to='{}'><x xmlns='{NS_MUC}'/></presence>",
            room_jid("r1")
        ))
        .await;
    let e = loop {
        let e = cs[1].next_named("presence").await;
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
    let mut cs = users(&server, &["alice"]).await;
    instant_room(&mut cs[0], "one").await;
    assert_eq!(
        join_refused(&mut cs[0], "two", "owner", "").await,
        "resource-constraint"
    );
    // A second resource in a room already joined is no new room.
    let mut a2 = Client::login(server.plain_addr, "alice", "pw", Some("r2")).await;
    join(&mut a2, "one", "owner").await;
}

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/wt_muc".into())
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
    join(&mut a, &room, "owner").await;
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
    let info = b
        .iq(
            &format!(
                "<iq type='get' id='i' to='{}'><query xmlns='{NS_INFO}'/></iq>",
                room_jid(&room)
            ),
            "i",
        )
        .await;
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
    let j = join(&mut b, &room, "bob").await;
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
    let r = a
        .iq(
            &format!(
                "<iq type='set' id='x' to='{}'><query xmlns='{NS_OWNER}'><destroy/></query></iq>",
                room_jid(&room)
            ),
            "x",
        )
        .await;
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
    let mut cs = users(&server, &["alice"]).await;
    server.add_user("bob", "pw").await;
    instant_room(&mut cs[0], "gone").await;
    // Never available, so its end sends no unavailable to the room: the
    // room finds out when it next writes to it.
    let mut b = Client::login_without_presence(server.plain_addr, "bob", "pw", Some("r")).await;
    join(&mut b, "gone", "bob").await;
    sync(&mut b).await;
    drop(b);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut n = 0;
    loop {
        n += 1;
        say(&mut cs[0], "gone", &format!("ping{n}")).await;
        let (_, before) = iq_keep(
            &mut cs[0],
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
    let mut cs = users(&server, &["alice", "bob"]).await;
    instant_room(&mut cs[0], "slow").await;
    join(&mut cs[1], "slow", "bob").await;
    sync(&mut cs[0]).await;
    // Bob stops reading; alice writes big messages until the room gives
    // up on him (his socket buffers and his queue of 4 full).
    let big = "x".repeat(100_000);
    let mut removed = None;
    for i in 0..400 {
        say(&mut cs[0], "slow", &format!("{i}{big}")).await;
        loop {
            let e = cs[0].next_element().await;
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
    say(&mut cs[0], "slow", "after").await;
    while groupchat(&mut cs[0], "slow")
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
    let mut cs = users(&server, &["alice", "bob"]).await;
    let j = instant_room(&mut cs[0], "log").await;
    assert!(
        codes(&j.own).contains(&170),
        "logged room: {}",
        show(&j.own)
    );
    let info = cs[0]
        .iq(
            &format!(
                "<iq type='get' id='i' to='{}'><query xmlns='{NS_INFO}'/></iq>",
                room_jid("log")
            ),
            "i",
        )
        .await;
    assert!(info
        .get_child("query", NS_INFO)
        .unwrap()
        .children()
        .any(|f| f.attr("var") == Some("urn:xmpp:mam:2")));
    let mut sids = Vec::new();
    for i in 0..3 {
        say(&mut cs[0], "log", &format!("a{i}")).await;
        let m = groupchat(&mut cs[0], "log").await;
        let sid = m.get_child("stanza-id", "urn:xmpp:sid:0").unwrap();
        sids.push(sid.attr("id").unwrap().to_string());
    }
    // Bob (not in the room: it is open) pages through it.
    let query = |id: &str, set: &str| {
        format!(
            "<iq type='set' id='{id}' to='{}'><query xmlns='urn:xmpp:mam:2' queryid='q{id}'><set xmlns='http://jabber.org/protocol/rsm'>{set}</set></query></iq>",
            room_jid("log")
        )
    };
    let (fin, before) = iq_keep(&mut cs[1], &query("p1", "<max>2</max>"), "p1").await;
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
        &mut cs[1],
        &query("p2", &format!("<max>2</max><after>{}</after>", sids[1])),
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
    let r = configure(&mut cs[0], "log", &[("muc#roomconfig_membersonly", "1")]).await;
    assert_eq!(r.attr("type"), Some("result"));
    let r = cs[1].iq(&query("p3", "<max>2</max>"), "p3").await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn history_is_bounded_in_bytes_too() {
    let server = TestServer::start_with(|c: &mut Config| c.muc.max_history_bytes = 10_000).await;
    let mut cs = users(&server, &["alice", "bob"]).await;
    instant_room(&mut cs[0], "big").await;
    for i in 0..5 {
        say(&mut cs[0], "big", &format!("{i}{}", "y".repeat(2_000))).await;
    }
    sync(&mut cs[0]).await;
    let j = join(&mut cs[1], "big", "bob").await;
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
    let mut cs = users(&server, &["alice", "bob", "carol"]).await;
    instant_room(&mut cs[0], "big").await;
    let mut others = Vec::new();
    for i in 0..20 {
        let mut c =
            Client::login_without_presence(server.plain_addr, "bob", "pw", Some(&format!("o{i}")))
                .await;
        let j = join(&mut c, "big", &format!("n{i}")).await;
        assert_eq!(j.others.len(), i + 1, "occupants before n{i}");
        assert!(!codes(&j.own).contains(&333), "{}", show(&j.own));
        others.push(c);
    }
    let carol = &mut cs[2];
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
    say(&mut cs[0], "big", "after").await;
    for c in others.iter_mut().chain(std::iter::once(&mut cs[2])) {
        while groupchat(c, "big")
            .await
            .get_child("body", NS_CLIENT)
            .map(|b| b.text())
            .as_deref()
            != Some("after")
        {}
    }
}
