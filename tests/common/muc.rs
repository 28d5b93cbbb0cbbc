//! Multi-user chat steps the MUC test files share: joining a room and
//! reading up to its subject, the instant room, configuration and
//! affiliation IQs, and `sync`, the round trip through the chat service
//! after which everything a room sent the client has been read (the
//! service handles one client's stanzas in order), so tests never sleep.

use waxwing::xml::{Element, NS_CLIENT};

use super::{show, Client};

pub const SERVICE: &str = "conference.localhost";
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_DATA: &str = "jabber:x:data";
pub const NS_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const NS_ITEMS: &str = "http://jabber.org/protocol/disco#items";

pub fn room_jid(room: &str) -> String {
    format!("{room}@{SERVICE}")
}

/// The PostgreSQL test database (`WAXWING_TEST_POSTGRES`).
pub fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Status codes of a MUC presence or message.
pub fn codes(e: &Element) -> Vec<u16> {
    e.get_child("x", NS_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", NS_USER))
                .filter_map(|c| c.attr("code")?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The `<item/>` of a muc#user presence.
pub fn item(e: &Element) -> &Element {
    e.get_child("x", NS_USER)
        .and_then(|x| x.get_child("item", NS_USER))
        .unwrap_or_else(|| panic!("no muc#user item in {}", show(e)))
}

fn is_room_stanza(e: &Element, room: &str) -> bool {
    e.attr("from")
        .is_some_and(|f| f == room_jid(room) || f.starts_with(&format!("{}/", room_jid(room))))
}

/// A round trip through the chat service.
pub async fn sync(c: &mut Client) {
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

/// What a join brought.
pub struct Joined {
    pub others: Vec<Element>,
    pub own: Element,
    pub subject: Element,
}

/// Joins `room` as `nick` and reads up to the subject.
pub async fn join(c: &mut Client, room: &str, nick: &str) -> Joined {
    c.send_str(&format!(
        "<presence to='{}/{nick}'><x xmlns='{NS_MUC}'/></presence>",
        room_jid(room)
    ))
    .await;
    let mut others = Vec::new();
    let mut own = None;
    loop {
        let e = c.next_element().await;
        if !is_room_stanza(&e, room) {
            continue;
        }
        assert_ne!(e.attr("type"), Some("error"), "join refused: {}", show(&e));
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
                subject: e,
            };
        }
    }
}

/// Leaves `room` (nick `nick`) and waits until the service handled it.
pub async fn leave(c: &mut Client, room: &str, nick: &str) {
    c.send_str(&format!(
        "<presence type='unavailable' to='{}/{nick}'/>",
        room_jid(room)
    ))
    .await;
    sync(c).await;
}

/// Submits configuration fields as the owner; panics unless accepted.
pub async fn configure(owner: &mut Client, room: &str, fields: &[(&str, &str)]) {
    let mut form = String::from(
        "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>",
    );
    for (var, v) in fields {
        form.push_str(&format!("<field var='{var}'><value>{v}</value></field>"));
    }
    let r = owner
        .iq(
            &format!(
                "<iq type='set' id='cfg' to='{}'><query xmlns='{NS_OWNER}'><x xmlns='{NS_DATA}' type='submit'>{form}</x></query></iq>",
                room_jid(room)
            ),
            "cfg",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
}

/// Creates `room` as `owner` with nick "owner", configured with `fields`.
pub async fn create_room(owner: &mut Client, room: &str, fields: &[(&str, &str)]) -> Joined {
    let j = join(owner, room, "owner").await;
    configure(owner, room, fields).await;
    j
}

/// A muc#admin set with `items`; the answer.
pub async fn admin_set(c: &mut Client, room: &str, items: &str) -> Element {
    c.iq(
        &format!(
            "<iq type='set' id='adm' to='{}'><query xmlns='{NS_ADMIN}'>{items}</query></iq>",
            room_jid(room)
        ),
        "adm",
    )
    .await
}

/// The room's disco#info query.
pub async fn room_info(c: &mut Client, room: &str) -> Element {
    let r = c
        .iq(
            &format!(
                "<iq type='get' id='info' to='{}'><query xmlns='{NS_INFO}'/></iq>",
                room_jid(room)
            ),
            "info",
        )
        .await;
    r.get_child("query", NS_INFO)
        .cloned()
        .unwrap_or_else(|| panic!("no disco#info: {}", show(&r)))
}

/// A field's values in a data form (the first form of `query`).
pub fn form_values(query: &Element, var: &str) -> Vec<String> {
    query
        .get_child("x", NS_DATA)
        .into_iter()
        .flat_map(|x| x.children())
        .filter(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .flat_map(|f| f.children())
        .filter(|v| v.is("value", NS_DATA))
        .map(|v| v.text())
        .collect()
}
