//! The avatar hash in presence (XEP-0153, put in by the server as
//! XEP-0398 §5 says) over real sockets, on SQLite and PostgreSQL: a
//! contact sees the hash after an avatar published through PEP and after
//! a vCard photo set the old way, an empty photo once the avatar is gone,
//! the hash of a vCard stored before the server knew of it, in directed
//! presence too, and with PEP turned off.

mod common;

use base64::Engine;
use common::*;
use waxwing::storage::RosterRecord;
use waxwing::xml::{Element, NS_CLIENT};

const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_UPDATE: &str = "vcard-temp:x:update";

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Usernames no other run uses (runs share one PostgreSQL database).
fn names<const N: usize>(base: [&str; N]) -> [String; N] {
    use rand::Rng;
    let tag: u32 = rand::thread_rng().gen();
    base.map(|b| format!("{b}{tag}"))
}

async fn befriend(ts: &TestServer, user: &str, contact: &str) {
    for (a, b) in [(user, contact), (contact, user)] {
        let rec = RosterRecord {
            contact: format!("{b}@{DOMAIN}"),
            name: None,
            subscription: "both".into(),
            ask_out: false,
            pending_in: false,
            approved: false,
            in_roster: true,
            groups: Vec::new(),
        };
        ts.store().roster_put(DOMAIN, a, &rec).await.unwrap();
    }
}

fn sha1_hex(data: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn vcard(image: &[u8]) -> String {
    format!(
        "<vCard xmlns='vcard-temp'><FN>Someone</FN><PHOTO><TYPE>image/png</TYPE>\
         <BINVAL>{}</BINVAL></PHOTO></vCard>",
        b64(image)
    )
}

/// The photo of a presence's vcard-temp:x:update, if it has one.
fn photo(e: &Element) -> Option<String> {
    Some(
        e.get_child("x", NS_UPDATE)?
            .get_child("photo", NS_UPDATE)?
            .text(),
    )
}

/// An available presence from one of `user`'s resources.
fn is_presence_of(e: &Element, user: &str) -> bool {
    e.is("presence", NS_CLIENT)
        && e.attr("type").is_none()
        && e.attr("from")
            .is_some_and(|f| f.starts_with(&format!("{user}@{DOMAIN}/")))
}

/// Everything `c` got since `since` is exactly one available presence
/// of `user`: its photo.
async fn one_presence_of(c: &mut Client, since: usize, user: &str) -> Element {
    let got = c
        .expect_only(
            since,
            &[Expect("one presence", &|e| is_presence_of(e, user))],
        )
        .await;
    got.into_iter().next().unwrap()
}

async fn publish(c: &mut Client, node: &str, id: &str, payload: &str) {
    let iq_id = format!("pub-{node}-{id}");
    let r = c
        .iq(
            &format!(
                "<iq type='set' id='{iq_id}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{node}'>\
                 <item id='{id}'>{payload}</item></publish></pubsub></iq>"
            ),
            &iq_id,
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
}

/// Publishes `image` as the avatar through PEP (XEP-0084: data, then metadata).
async fn publish_avatar(c: &mut Client, image: &[u8]) {
    let id = sha1_hex(image);
    publish(
        c,
        "urn:xmpp:avatar:data",
        &id,
        &format!("<data xmlns='urn:xmpp:avatar:data'>{}</data>", b64(image)),
    )
    .await;
    publish(
        c,
        "urn:xmpp:avatar:metadata",
        &id,
        &format!(
            "<metadata xmlns='urn:xmpp:avatar:metadata'><info id='{id}' bytes='{}' \
             type='image/png'/></metadata>",
            image.len()
        ),
    )
    .await;
}

async fn set_vcard(c: &mut Client, card: &str) {
    let r = c
        .iq(&format!("<iq type='set' id='vc'>{card}</iq>"), "vc")
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
}

async fn scenario(ts: &TestServer) {
    let [ava, bob, vic] = names(["ava", "bob", "vic"]);
    for u in [&ava, &bob, &vic] {
        ts.add_user(u, "pw").await;
    }
    befriend(ts, &ava, &bob).await;
    befriend(ts, &vic, &bob).await;

    // Vic's vCard was stored before this server ran (or before it knew of
    // it): the hash is read from storage for his first presence.
    let image_v = b"\x89PNG vic's photo";
    let stored =
        vcard(image_v).replace("<vCard xmlns='vcard-temp'>", "<vCard xmlns=\"vcard-temp\">");
    ts.store()
        .user_data_put(DOMAIN, &vic, "vcard", &stored)
        .await
        .unwrap();

    let mut b = Client::login(ts.plain_addr, &bob, "pw", Some("r")).await;
    b.barrier().await;
    let mark = b.mark();
    let mut v = Client::login(ts.plain_addr, &vic, "pw", Some("r")).await;
    v.barrier().await;
    let p = one_presence_of(&mut b, mark, &vic).await;
    assert_eq!(photo(&p), Some(sha1_hex(image_v)), "{}", show(&p));

    // Ava has no avatar yet: her presence is left alone.
    let mark = b.mark();
    let mut a = Client::login(ts.plain_addr, &ava, "pw", Some("r")).await;
    a.barrier().await;
    let p = one_presence_of(&mut b, mark, &ava).await;
    assert!(p.get_child("x", NS_UPDATE).is_none(), "{}", show(&p));

    // Published through PEP: her presence goes out again with the hash,
    // though her client sent none.
    let image1 = b"\x89PNG ava's first avatar";
    let mark = b.mark();
    publish_avatar(&mut a, image1).await;
    a.barrier().await;
    let p = one_presence_of(&mut b, mark, &ava).await;
    assert_eq!(photo(&p), Some(sha1_hex(image1)), "{}", show(&p));

    // Her next presence carries it too; an <x/> without photo is replaced.
    let mark = b.mark();
    a.send_str(&format!(
        "<presence><show>away</show><x xmlns='{NS_UPDATE}'/></presence>"
    ))
    .await;
    a.barrier().await;
    let p = one_presence_of(&mut b, mark, &ava).await;
    assert_eq!(photo(&p), Some(sha1_hex(image1)), "{}", show(&p));
    assert_eq!(p.get_child("show", NS_CLIENT).unwrap().text(), "away");
    assert_eq!(p.children().filter(|c| c.is("x", NS_UPDATE)).count(), 1);

    // A stale hash the client sent is replaced as well.
    let mark = b.mark();
    a.send_str(&format!(
        "<presence><x xmlns='{NS_UPDATE}'><photo>{}</photo></x></presence>",
        "0".repeat(40)
    ))
    .await;
    a.barrier().await;
    let p = one_presence_of(&mut b, mark, &ava).await;
    assert_eq!(photo(&p), Some(sha1_hex(image1)), "{}", show(&p));

    // The old way: a vCard photo.
    let image2 = b"GIF89a ava's second avatar";
    let mark = b.mark();
    set_vcard(&mut a, &vcard(image2)).await;
    a.barrier().await;
    let p = one_presence_of(&mut b, mark, &ava).await;
    assert_eq!(photo(&p), Some(sha1_hex(image2)), "{}", show(&p));

    // The same vCard again changes nothing: no presence goes out.
    let mark = b.mark();
    set_vcard(&mut a, &vcard(image2)).await;
    a.barrier().await;
    b.expect_nothing(mark).await;

    // Directed presence gets the hash (XEP-0398 §5.1).
    let mark = b.mark();
    a.send_str(&format!("<presence to='{bob}@{DOMAIN}/r'/>"))
        .await;
    a.barrier().await;
    let p = one_presence_of(&mut b, mark, &ava).await;
    assert_eq!(photo(&p), Some(sha1_hex(image2)), "{}", show(&p));

    // The avatar disabled (empty metadata): an empty photo.
    let mark = b.mark();
    publish(
        &mut a,
        "urn:xmpp:avatar:metadata",
        "none",
        "<metadata xmlns='urn:xmpp:avatar:metadata'/>",
    )
    .await;
    a.barrier().await;
    let p = one_presence_of(&mut b, mark, &ava).await;
    assert_eq!(photo(&p), Some(String::new()), "{}", show(&p));

    // Probes are answered with the presence as sent: a new resource of
    // Bob sees Vic's hash.
    let mut b2 = Client::login(ts.plain_addr, &bob, "pw", Some("r2")).await;
    loop {
        let e = b2.next_element().await;
        if is_presence_of(&e, &vic) {
            assert_eq!(photo(&e), Some(sha1_hex(image_v)), "{}", show(&e));
            break;
        }
    }
}

#[tokio::test]
async fn hash_in_presence_on_sqlite() {
    let ts = TestServer::start().await;
    scenario(&ts).await;
}

#[tokio::test]
async fn hash_in_presence_on_postgres() {
    let ts = TestServer::start_with(|c| c.database.url = postgres_url()).await;
    scenario(&ts).await;
}

/// Without PEP the vCard still gives the hash (XEP-0153 alone).
#[tokio::test]
async fn hash_from_vcard_without_pep() {
    let ts = TestServer::start_with(|c| c.pep.enabled = false).await;
    let [ava, bob] = names(["ava", "bob"]);
    for u in [&ava, &bob] {
        ts.add_user(u, "pw").await;
    }
    befriend(&ts, &ava, &bob).await;
    let mut b = Client::login(ts.plain_addr, &bob, "pw", Some("r")).await;
    let mut a = Client::login(ts.plain_addr, &ava, "pw", Some("r")).await;
    a.barrier().await;
    b.barrier().await;
    let image = b"\x89PNG legacy";
    let mark = b.mark();
    set_vcard(&mut a, &vcard(image)).await;
    a.barrier().await;
    let p = one_presence_of(&mut b, mark, &ava).await;
    assert_eq!(photo(&p), Some(sha1_hex(image)), "{}", show(&p));
}

/// The hashes kept in memory are bounded (`[limits] max_avatar_hashes`);
/// an account pushed out is read from its vCard again, so presence still
/// carries the right hash for everyone.
#[tokio::test]
async fn hashes_past_the_cap_are_read_again_from_the_vcard() {
    let ts = TestServer::start_with(|c| {
        c.pep.enabled = false;
        c.limits.max_avatar_hashes = 1;
    })
    .await;
    let [ava, cid, bob] = names(["ava", "cid", "bob"]);
    for u in [&ava, &cid, &bob] {
        ts.add_user(u, "pw").await;
    }
    befriend(&ts, &ava, &bob).await;
    befriend(&ts, &cid, &bob).await;
    let mut b = Client::login(ts.plain_addr, &bob, "pw", Some("r")).await;
    b.barrier().await;
    let (image_a, image_c) = (b"\x89PNG ava", b"\x89PNG cid");
    // Every client stays connected to the end, so no unavailable presence
    // arrives between the marks below.
    let mut kept = Vec::new();
    for (user, image) in [(&ava, image_a), (&cid, image_c)] {
        let mut c = Client::login(ts.plain_addr, user, "pw", Some("r")).await;
        set_vcard(&mut c, &vcard(image)).await;
        c.barrier().await;
        kept.push(c);
    }
    // Both send presence again, in turns, each evicting the other's hash.
    for round in 0..2 {
        for (user, image) in [(&ava, image_a), (&cid, image_c)] {
            b.barrier().await;
            let mark = b.mark();
            let mut c = Client::login(ts.plain_addr, user, "pw", Some(&format!("x{round}"))).await;
            c.barrier().await;
            kept.push(c);
            let p = one_presence_of(&mut b, mark, user).await;
            assert_eq!(photo(&p), Some(sha1_hex(image)), "{user}: {}", show(&p));
            let held = ts
                .server()
                .features
                .get::<waxwing::modules::vcard_update::VcardUpdate>()
                .unwrap()
                .held();
            assert!(held <= 1, "{held} hashes held past the cap of 1");
        }
    }
}
