//! Room avatars (XEP-0486 with vcard-temp and the XEP-0153 hash): an
//! owner sets the room's vCard, anyone reads it, the hash shows in the
//! room's disco#info and is announced to occupants by a presence from
//! the room's JID; only owners may set it, a vCard beyond
//! `[muc] max_avatar_bytes` is refused, a persistent room keeps it
//! across a restart, and an empty vCard removes it.

mod common;

use common::muc::*;
use common::*;
use sha1::{Digest, Sha1};
use waxwing::config::Config;
use waxwing::xml::{Element, NS_CLIENT};

const NS_VCARD: &str = "vcard-temp";
const NS_UPDATE: &str = "vcard-temp:x:update";
const MAX_AVATAR: usize = 4096;

fn sha1_hex(data: &[u8]) -> String {
    Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn vcard_with_photo(image: &[u8]) -> String {
    format!(
        "<vCard xmlns='{NS_VCARD}'><FN>The room</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO></vCard>",
        b64(image)
    )
}

async fn set_vcard(c: &mut Client, room: &str, vcard: &str) -> Element {
    c.iq(
        &format!(
            "<iq type='set' id='vset' to='{}'>{vcard}</iq>",
            room_jid(room)
        ),
        "vset",
    )
    .await
}

async fn get_vcard(c: &mut Client, room: &str) -> Element {
    let r = c
        .iq(
            &format!(
                "<iq type='get' id='vget' to='{}'><vCard xmlns='{NS_VCARD}'/></iq>",
                room_jid(room)
            ),
            "vget",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    r.get_child("vCard", NS_VCARD)
        .cloned()
        .unwrap_or_else(|| panic!("no vCard: {}", show(&r)))
}

fn binval(card: &Element) -> Option<String> {
    Some(
        card.get_child("PHOTO", NS_VCARD)?
            .get_child("BINVAL", NS_VCARD)?
            .text(),
    )
}

/// The avatar announcement from the room's bare JID: its photo text.
fn announced(e: &Element, room: &str) -> Option<String> {
    (e.is("presence", NS_CLIENT) && e.attr("from") == Some(room_jid(room).as_str()))
        .then(|| e.get_child("x", NS_UPDATE)?.get_child("photo", NS_UPDATE))
        .flatten()
        .map(|p| p.text())
}

fn features(info: &Element) -> Vec<String> {
    info.children()
        .filter(|f| f.is("feature", NS_INFO))
        .filter_map(|f| f.attr("var").map(String::from))
        .collect()
}

/// `c` reads the room's vCard with `image` and its hash in disco#info.
async fn shows_avatar(c: &mut Client, room: &str, image: &[u8]) {
    let card = get_vcard(c, room).await;
    assert_eq!(binval(&card), Some(b64(image)));
    let info = room_info(c, room).await;
    assert_eq!(
        form_values(&info, "muc#roominfo_avatarhash"),
        vec![sha1_hex(image)]
    );
}

async fn start(url: &str) -> TestServer {
    let url = url.to_string();
    TestServer::start_with(move |c: &mut Config| {
        c.database.url = url;
        c.muc.max_avatar_bytes = MAX_AVATAR;
    })
    .await
}

async fn room_avatar(url: String) {
    let room = format!("pics{}", std::process::id());
    let room = room.as_str();
    let mut server = start(&url).await;
    for u in ["alice", "bob", "carol"] {
        let _ = server.store().delete_account("localhost", u).await;
        server.add_user(u, "pw").await;
    }
    let mut a = Client::login(server.plain_addr, "alice", "pw", Some("r")).await;
    create_room(&mut a, room, &[("muc#roomconfig_persistentroom", "1")]).await;
    let mut b = Client::login(server.plain_addr, "bob", "pw", Some("r")).await;
    join(&mut b, room, "bob").await;
    sync(&mut a).await;

    // No avatar yet: an empty vCard, no hash, but the feature.
    let card = get_vcard(&mut b, room).await;
    assert!(card.children().next().is_none(), "{}", show(&card));
    let info = room_info(&mut b, room).await;
    assert!(features(&info).contains(&NS_VCARD.to_string()));
    assert!(form_values(&info, "muc#roominfo_avatarhash").is_empty());

    // Only owners set it.
    let image = b"\x89PNG not really, but bytes".to_vec();
    let r = set_vcard(&mut b, room, &vcard_with_photo(&image)).await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("forbidden"),
        "{}",
        show(&r)
    );

    let mark_b = b.mark();
    let mark_a = a.mark();
    let r = set_vcard(&mut a, room, &vcard_with_photo(&image)).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let hash = sha1_hex(&image);
    // Each occupant hears of the new hash from the room's JID.
    let got = b
        .expect_only(
            mark_b,
            &[Expect("the avatar announcement", &|e| {
                announced(e, room).as_deref() == Some(hash.as_str())
            })],
        )
        .await;
    assert_eq!(got.len(), 1);
    // The owner too (it came before the IQ's answer).
    assert!(
        a.received[mark_a..]
            .iter()
            .any(|e| announced(e, room).as_deref() == Some(hash.as_str())),
        "no announcement to the owner"
    );

    // Anyone reads it, an occupant or not.
    let mut c = Client::login(server.plain_addr, "carol", "pw", Some("r")).await;
    shows_avatar(&mut c, room, &image).await;

    // Too big: refused, and the avatar stays.
    let big = vec![7u8; MAX_AVATAR];
    let r = set_vcard(&mut a, room, &vcard_with_photo(&big)).await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("not-acceptable"),
        "{}",
        show(&r)
    );
    // Not base64: bad request.
    let r = set_vcard(
        &mut a,
        room,
        &format!(
            "<vCard xmlns='{NS_VCARD}'><PHOTO><BINVAL>!!not base64!!</BINVAL></PHOTO></vCard>"
        ),
    )
    .await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("bad-request"),
        "{}",
        show(&r)
    );
    shows_avatar(&mut c, room, &image).await;

    // A persistent room keeps it across a restart.
    leave(&mut a, room, "owner").await;
    leave(&mut b, room, "bob").await;
    drop((a, b, c));
    server.stop().await;
    let server = start(&url).await;
    let mut c = Client::login(server.plain_addr, "carol", "pw", Some("r")).await;
    shows_avatar(&mut c, room, &image).await;

    // An empty vCard removes it: an empty photo is announced.
    join(&mut c, room, "carol").await;
    let mut a = Client::login(server.plain_addr, "alice", "pw", Some("r")).await;
    join(&mut a, room, "owner").await;
    sync(&mut c).await;
    let mark_c = c.mark();
    let r = set_vcard(&mut a, room, &format!("<vCard xmlns='{NS_VCARD}'/>")).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    sync(&mut a).await;
    c.expect_only(
        mark_c,
        &[Expect("an empty photo", &|e| {
            announced(e, room).as_deref() == Some("")
        })],
    )
    .await;
    let info = room_info(&mut c, room).await;
    assert!(form_values(&info, "muc#roominfo_avatarhash").is_empty());
    assert!(get_vcard(&mut c, room).await.children().next().is_none());
    sync(&mut c).await;
    let stored = server.store().muc_rooms(SERVICE).await.unwrap();
    assert!(stored.iter().any(|r| r.room == room && r.vcard.is_empty()));
}

#[tokio::test]
async fn an_owner_sets_the_room_avatar_and_everyone_sees_it_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    room_avatar(format!("sqlite://{}/muc.db", dir.path().display())).await;
}

#[tokio::test]
async fn an_owner_sets_the_room_avatar_and_everyone_sees_it_on_postgres() {
    room_avatar(postgres_url()).await;
}
