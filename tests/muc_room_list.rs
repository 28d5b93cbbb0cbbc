//! The chat service's room list (disco#items) paged with Result Set
//! Management (XEP-0059): `max`, `after`, `before` (empty = last page),
//! `index`, `first`/`last`/`count` in the answer, and the page cap
//! (`[muc] max_room_list_page`) that also bounds an answer to a request
//! without RSM. Hidden and locked rooms are never listed.

mod common;

use common::muc::*;
use common::*;
use waxwing::config::Config;
use waxwing::xml::Element;

const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const PAGE_CAP: usize = 5;
const ROOMS: usize = 12;

fn name(i: usize) -> String {
    format!("r{i:02}")
}

/// A page: the room JIDs, and the `<set/>` (first, its index, last,
/// count) if any.
struct Page {
    rooms: Vec<String>,
    first: Option<(String, usize)>,
    last: Option<String>,
    count: Option<usize>,
}

async fn list(c: &mut Client, set: &str) -> Result<Page, String> {
    let r = c
        .iq(
            &format!(
                "<iq type='get' id='items' to='{SERVICE}'><query xmlns='{NS_ITEMS}'>{set}</query></iq>"
            ),
            "items",
        )
        .await;
    if let Some(e) = stanza_error(&r) {
        return Err(e);
    }
    let q = r.get_child("query", NS_ITEMS).unwrap();
    let rooms = q
        .children()
        .filter(|i| i.is("item", NS_ITEMS))
        .map(|i| i.attr("jid").unwrap().to_string())
        .collect();
    let s: Option<&Element> = q.get_child("set", NS_RSM);
    let text = |n: &str| s.and_then(|s| s.get_child(n, NS_RSM)).map(|e| e.text());
    Ok(Page {
        rooms,
        first: s
            .and_then(|s| s.get_child("first", NS_RSM))
            .map(|f| (f.text(), f.attr("index").unwrap().parse().unwrap())),
        last: text("last"),
        count: text("count").map(|c| c.parse().unwrap()),
    })
}

fn rsm(inner: &str) -> String {
    format!("<set xmlns='{NS_RSM}'>{inner}</set>")
}

fn jids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| room_jid(&name(i))).collect()
}

#[tokio::test]
async fn the_room_list_is_paged_with_rsm() {
    let server = TestServer::start_with(|c: &mut Config| c.muc.max_room_list_page = PAGE_CAP).await;
    server.add_user("alice", "pw").await;
    let mut a = Client::login(server.plain_addr, "alice", "pw", Some("r")).await;
    // Created out of order: the list is ordered by JID all the same.
    for i in (0..ROOMS).rev() {
        create_room(&mut a, &name(i), &[]).await;
    }
    create_room(&mut a, "zz-hidden", &[("muc#roomconfig_publicroom", "0")]).await;
    join(&mut a, "zz-locked", "owner").await;

    // Without RSM: the first capped page, with a <set/> saying there is more.
    let p = list(&mut a, "").await.unwrap();
    assert_eq!(p.rooms, jids(0..PAGE_CAP));
    assert_eq!(p.count, Some(ROOMS));
    assert_eq!(p.first, Some((room_jid(&name(0)), 0)));
    assert_eq!(p.last, Some(room_jid(&name(PAGE_CAP - 1))));

    // Forward with max and after, to the end.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let set = match &after {
            None => rsm("<max>3</max>"),
            Some(a) => rsm(&format!("<max>3</max><after>{a}</after>")),
        };
        let p = list(&mut a, &set).await.unwrap();
        assert_eq!(p.count, Some(ROOMS));
        if p.rooms.is_empty() {
            assert!(p.first.is_none() && p.last.is_none());
            break;
        }
        assert_eq!(p.first.as_ref().unwrap().1, seen.len());
        assert_eq!(p.first.as_ref().unwrap().0, p.rooms[0]);
        assert_eq!(p.last.as_ref(), p.rooms.last());
        seen.extend(p.rooms.clone());
        after = p.last;
    }
    assert_eq!(seen, jids(0..ROOMS));

    // The last page, then backwards.
    let p = list(&mut a, &rsm("<max>3</max><before/>")).await.unwrap();
    assert_eq!(p.rooms, jids(ROOMS - 3..ROOMS));
    assert_eq!(p.first.as_ref().unwrap().1, ROOMS - 3);
    let before = p.first.unwrap().0;
    let p = list(
        &mut a,
        &rsm(&format!("<max>3</max><before>{before}</before>")),
    )
    .await
    .unwrap();
    assert_eq!(p.rooms, jids(ROOMS - 6..ROOMS - 3));
    assert_eq!(p.first.unwrap().1, ROOMS - 6);

    // By index; near the end the page is short.
    let p = list(&mut a, &rsm("<max>3</max><index>10</index>"))
        .await
        .unwrap();
    assert_eq!(p.rooms, jids(10..ROOMS));
    assert_eq!(p.first.unwrap().1, 10);

    // Asking for more than the cap gets the cap; max 0 only the count.
    let p = list(&mut a, &rsm("<max>1000</max>")).await.unwrap();
    assert_eq!(p.rooms.len(), PAGE_CAP);
    let p = list(&mut a, &rsm("<max>0</max>")).await.unwrap();
    assert!(p.rooms.is_empty());
    assert_eq!(p.count, Some(ROOMS));

    // A room that is gone between two pages does not break the walk:
    // `after` is a position.
    let p = list(
        &mut a,
        &rsm(&format!("<max>2</max><after>{}</after>", room_jid("r03x"))),
    )
    .await
    .unwrap();
    assert_eq!(p.rooms, jids(4..6));

    // Bad numbers, an index past the end.
    assert_eq!(
        list(&mut a, &rsm("<max>many</max>")).await.err().as_deref(),
        Some("bad-request")
    );
    assert_eq!(
        list(&mut a, &rsm("<index>13</index>"))
            .await
            .err()
            .as_deref(),
        Some("item-not-found")
    );
}
