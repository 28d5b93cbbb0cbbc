//! The vocabulary of the MUC transcript tests (`tests/muc.rs` and the
//! `tests/muc_*.rs` of moderation, rooms, voice, hats and IQ relay), on top
//! of `tests/common/muc.rs`: named clients, joining and creating rooms,
//! configuring them (the answer returned, so refusals can be tested),
//! reading what the room sends. Each helper reads a whole exchange, so a
//! test reads as "alice does X, bob sees Y".

#![allow(dead_code)]

/// What the other MUC test files share (tests/common/muc.rs); each test
/// file uses a part of it.
#[allow(unused_imports)]
pub use crate::common::muc::{
    admin_set, codes, item, postgres_url, room_jid, sync, NS_ADMIN, NS_DATA, NS_INFO, NS_ITEMS,
    NS_MUC, NS_OWNER, NS_USER, SERVICE,
};
use crate::common::*;
use waxwing::xml::{Element, NS_CLIENT};

/// A fresh IQ id: answers are matched by id, so no two may share one.
pub fn next_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn is_room_stanza(e: &Element, room: &str) -> bool {
    e.attr("from")
        .is_some_and(|f| f == room_jid(room) || f.starts_with(&format!("{}/", room_jid(room))))
}

/// What a join brought: other occupants' presences, the self-presence,
/// history and the subject.
pub struct Joined {
    pub others: Vec<Element>,
    pub own: Element,
    pub history: Vec<Element>,
    pub subject: Element,
}

/// Sends a join with `extra` inside `<x/>` and reads up to the subject.
pub async fn join_with(c: &mut Client, room: &str, nick: &str, extra: &str) -> Joined {
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

/// `c` enters `room` as `nick` and reads everything a join brings.
pub async fn join_room(c: &mut Client, room: &str, nick: &str) -> Joined {
    join_with(c, room, nick, "").await
}

/// A join expected to fail: the error condition.
pub async fn join_refused(c: &mut Client, room: &str, nick: &str, extra: &str) -> String {
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
pub async fn instant_room(owner: &mut Client, room: &str) -> Joined {
    let j = join_room(owner, room, "owner").await;
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
pub async fn configure(owner: &mut Client, room: &str, fields: &[(&str, &str)]) -> Element {
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
pub async fn iq_keep(c: &mut Client, xml: &str, id: &str) -> (Element, Vec<Element>) {
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

/// Next presence from the room about `nick`.
pub async fn presence_of(c: &mut Client, room: &str, nick: &str) -> Element {
    let from = format!("{}/{nick}", room_jid(room));
    loop {
        let e = c.next_named("presence").await;
        if e.attr("from") == Some(from.as_str()) {
            return e;
        }
    }
}

/// Next group chat message from the room.
pub async fn groupchat(c: &mut Client, room: &str) -> Element {
    loop {
        let e = c.next_named("message").await;
        if is_room_stanza(&e, room) && e.get_child("body", NS_CLIENT).is_some() {
            return e;
        }
    }
}

pub async fn say(c: &mut Client, room: &str, text: &str) {
    c.send_str(&format!(
        "<message to='{}' type='groupchat' id='m-{text}'><body>{text}</body></message>",
        room_jid(room)
    ))
    .await;
}

/// An error answer to a message sent to the room.
pub async fn message_error(c: &mut Client, room: &str) -> String {
    loop {
        let e = c.next_named("message").await;
        if is_room_stanza(&e, room) && e.attr("type") == Some("error") {
            return stanza_error(&e).unwrap();
        }
    }
}

/// Accounts `names` (password "pw"), each logged in as resource "r",
/// in the order named: `let [mut alice, mut bob] = users(…)`.
pub async fn users<const N: usize>(server: &TestServer, names: [&str; N]) -> [Client; N] {
    let mut out = Vec::new();
    for n in names {
        server.add_user(n, "pw").await;
        out.push(Client::login(server.plain_addr, n, "pw", Some("r")).await);
    }
    match out.try_into() {
        Ok(clients) => clients,
        Err(_) => unreachable!("one client per name"),
    }
}

/// `owner` makes `room` an instant room, then each guest joins under its
/// account's name; every client has read all the room sent it so far.
pub async fn open_room(owner: &mut Client, room: &str, guests: &mut [&mut Client]) {
    instant_room(owner, room).await;
    for g in guests.iter_mut() {
        let nick = g
            .jid
            .as_deref()
            .and_then(|j| j.split('@').next())
            .expect("a bound client")
            .to_string();
        join_room(g, room, &nick).await;
    }
    sync(owner).await;
    for g in guests.iter_mut() {
        sync(g).await;
    }
}

/// `owner` creates `room` and submits its first configuration with
/// `fields`, which must be accepted.
pub async fn configured_room(owner: &mut Client, room: &str, fields: &[(&str, &str)]) -> Joined {
    let j = join_room(owner, room, "owner").await;
    let r = configure(owner, room, fields).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    j
}

/// An IQ of `kind` to `to` with `<query xmlns='{ns}'>{inner}</query>`:
/// its answer.
pub async fn query(c: &mut Client, to: &str, kind: &str, ns: &str, inner: &str) -> Element {
    let id = next_id("q");
    c.iq(
        &format!("<iq type='{kind}' id='{id}' to='{to}'><query xmlns='{ns}'>{inner}</query></iq>"),
        &id,
    )
    .await
}

/// The answer's child `name` in `ns`, or a panic showing the stanza.
pub fn child<'a>(e: &'a Element, name: &str, ns: &str) -> &'a Element {
    e.get_child(name, ns)
        .unwrap_or_else(|| panic!("no <{name} xmlns='{ns}'/> in {}", show(e)))
}
