//! Row-level persistence of chat rooms, on SQLite and PostgreSQL: in a
//! room with many members, one affiliation change writes only that row
//! (a row changed behind the server's back stays as it was, which a
//! whole-room rewrite would undo), and the room — configuration,
//! affiliations, subject — comes back after a restart. Occupant ids
//! (XEP-0421) stay the same across a restart without a configured
//! dialback secret.

mod common;

use common::muc::*;
use common::*;
use waxwing::config::Config;
use waxwing::storage::Store;
use waxwing::xml::{Element, NS_CLIENT};

const MEMBERS: usize = 1500;

async fn start(url: &str) -> TestServer {
    let url = url.to_string();
    TestServer::start_with(move |c: &mut Config| c.database.url = url).await
}

/// Sets a stored affiliation's reason directly in the database.
async fn tamper(store: &Store, room: &str, jid: &str, reason: &str) {
    const SQL: &str =
        "UPDATE muc_affiliations SET reason = $1 WHERE service = $2 AND room = $3 AND jid = $4";
    // The same statement on whichever pool backs the store.
    macro_rules! run {
        ($pool:expr) => {
            sqlx::query(SQL)
                .bind(reason)
                .bind(SERVICE)
                .bind(room)
                .bind(jid)
                .execute($pool)
                .await
                .unwrap()
                .rows_affected()
        };
    }
    let done = match store {
        Store::Sqlite(p) => run!(p),
        Store::Postgres(p) => run!(p),
    };
    assert_eq!(done, 1);
}

/// The stored affiliations of `room`: (jid, affiliation, reason).
async fn stored(store: &Store, room: &str) -> Vec<(String, String, String)> {
    store
        .muc_rooms(SERVICE)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.room == room)
        .map(|r| r.affiliations)
        .unwrap_or_else(|| panic!("{room} is not stored"))
}

fn member(i: usize) -> String {
    format!("m{i}@members.example")
}

/// The affiliation list of one kind, as the owner reads it:
/// (jid, reason).
async fn list(c: &mut Client, room: &str, aff: &str) -> Vec<(String, String)> {
    let r = c
        .iq(
            &format!(
                "<iq type='get' id='list' to='{}'><query xmlns='{NS_ADMIN}'><item affiliation='{aff}'/></query></iq>",
                room_jid(room)
            ),
            "list",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    r.get_child("query", NS_ADMIN)
        .unwrap()
        .children()
        .map(|i: &Element| {
            (
                i.attr("jid").unwrap().to_string(),
                i.get_child("reason", NS_ADMIN)
                    .map(|r| r.text())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

async fn one_change_in_a_big_room(url: String) {
    let room = format!("big{}", std::process::id());
    let mut server = start(&url).await;
    for u in ["alice", "bob", "carol", "dave"] {
        let _ = server.store().delete_account("localhost", u).await;
        server.add_user(u, "pw").await;
    }
    let mut a = Client::login(server.plain_addr, "alice", "pw", Some("r")).await;
    create_room(
        &mut a,
        &room,
        &[
            ("muc#roomconfig_persistentroom", "1"),
            ("muc#roomconfig_membersonly", "1"),
            ("muc#roomconfig_roomname", "Big"),
        ],
    )
    .await;
    // Two real members among many made-up ones.
    let r = admin_set(
        &mut a,
        &room,
        "<item jid='carol@localhost' affiliation='member'/>         <item jid='dave@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    // In IQs of 500 items: a stanza's parsed size is bounded.
    for chunk in (0..MEMBERS).collect::<Vec<_>>().chunks(500) {
        let items: String = chunk
            .iter()
            .map(|i| format!("<item jid='{}' affiliation='member'/>", member(*i)))
            .collect();
        let r = admin_set(&mut a, &room, &items).await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    }
    // Written after the answer: a round trip later it is on disk.
    sync(&mut a).await;
    assert_eq!(stored(server.store(), &room).await.len(), MEMBERS + 3);

    // Behind the server's back: a whole-room rewrite would put '' back.
    tamper(server.store(), &room, &member(7), "written by hand").await;
    let r = admin_set(
        &mut a,
        &room,
        "<item jid='bob@localhost' affiliation='admin'><reason>trusted</reason></item>\
         <item jid='dave@localhost' affiliation='none'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    a.send_str(&format!(
        "<message to='{}' type='groupchat'><subject>big news</subject></message>",
        room_jid(&room)
    ))
    .await;
    sync(&mut a).await;
    let rows = stored(server.store(), &room).await;
    assert_eq!(rows.len(), MEMBERS + 3, "one added, one removed");
    let reason_of = |rows: &[(String, String, String)], jid: &str| {
        rows.iter()
            .find(|r| r.0 == jid)
            .map(|r| (r.1.clone(), r.2.clone()))
    };
    assert_eq!(
        reason_of(&rows, &member(7)),
        Some(("member".into(), "written by hand".into())),
        "only the changed rows were written"
    );
    assert_eq!(
        reason_of(&rows, "bob@localhost"),
        Some(("admin".into(), "trusted".into()))
    );
    assert_eq!(reason_of(&rows, "dave@localhost"), None);
    leave(&mut a, &room, "owner").await;
    drop(a);
    server.stop().await;

    // After a restart the room is as it was left.
    let server = start(&url).await;
    let mut a = Client::login(server.plain_addr, "alice", "pw", Some("r")).await;
    let info = room_info(&mut a, &room).await;
    assert_eq!(
        info.get_child("identity", NS_INFO).unwrap().attr("name"),
        Some("Big")
    );
    // (The member list itself is too long for one stanza a client
    // reads; the members' standing shows in who may enter.)
    let rows = stored(server.store(), &room).await;
    assert_eq!(rows.len(), MEMBERS + 3);
    assert_eq!(
        reason_of(&rows, &member(7)),
        Some(("member".into(), "written by hand".into()))
    );
    assert_eq!(
        list(&mut a, &room, "admin").await,
        vec![("bob@localhost".to_string(), "trusted".to_string())]
    );
    assert_eq!(
        list(&mut a, &room, "owner").await,
        vec![("alice@localhost".to_string(), String::new())]
    );
    let j = join(&mut a, &room, "owner").await;
    assert_eq!(
        j.subject.get_child("subject", NS_CLIENT).unwrap().text(),
        "big news"
    );
    let mut b = Client::login(server.plain_addr, "bob", "pw", Some("r")).await;
    let j = join(&mut b, &room, "bob").await;
    assert_eq!(item(&j.own).attr("affiliation"), Some("admin"));
    assert_eq!(item(&j.own).attr("role"), Some("moderator"));
    let mut c = Client::login(server.plain_addr, "carol", "pw", Some("r")).await;
    let j = join(&mut c, &room, "carol").await;
    assert_eq!(item(&j.own).attr("affiliation"), Some("member"));
    let mut d = Client::login(server.plain_addr, "dave", "pw", Some("r")).await;
    d.send_str(&format!(
        "<presence to='{}/dave'><x xmlns='{NS_MUC}'/></presence>",
        room_jid(&room)
    ))
    .await;
    let refused = loop {
        let p = d.next_named("presence").await;
        if p.attr("from")
            .is_some_and(|f| f.starts_with(&room_jid(&room)))
        {
            break p;
        }
    };
    assert_eq!(
        stanza_error(&refused).as_deref(),
        Some("registration-required"),
        "{}",
        show(&refused)
    );

    // Destroyed: every row goes.
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
    let rooms = server.store().muc_rooms(SERVICE).await.unwrap();
    assert!(rooms.iter().all(|r| r.room != room));
}

#[tokio::test]
async fn one_affiliation_change_in_a_big_room_is_one_row_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    one_change_in_a_big_room(format!("sqlite://{}/muc.db", dir.path().display())).await;
}

#[tokio::test]
async fn one_affiliation_change_in_a_big_room_is_one_row_on_postgres() {
    one_change_in_a_big_room(postgres_url()).await;
}

/// The occupant id an occupant's self-presence carries.
fn occupant_id(j: &Joined) -> String {
    j.own
        .get_child("occupant-id", "urn:xmpp:occupant-id:0")
        .and_then(|o| o.attr("id"))
        .unwrap_or_else(|| panic!("no occupant-id: {}", show(&j.own)))
        .to_string()
}

#[tokio::test]
async fn occupant_ids_survive_a_restart_without_a_dialback_secret() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/muc.db", dir.path().display());
    let mut server = start(&url).await;
    assert!(server.server().config().s2s.dialback_secret.is_empty());
    for u in ["alice", "bob"] {
        server.add_user(u, "pw").await;
    }
    let mut a = Client::login(server.plain_addr, "alice", "pw", Some("r")).await;
    create_room(&mut a, "ids", &[("muc#roomconfig_persistentroom", "1")]).await;
    let mut b = Client::login(server.plain_addr, "bob", "pw", Some("r")).await;
    let before = occupant_id(&join(&mut b, "ids", "bob").await);
    drop((a, b));
    server.stop().await;

    let server = start(&url).await;
    let mut b = Client::login(server.plain_addr, "bob", "pw", Some("other")).await;
    let after = occupant_id(&join(&mut b, "ids", "bobby").await);
    assert_eq!(before, after);
    // And it still tells users apart.
    let mut a = Client::login(server.plain_addr, "alice", "pw", Some("r")).await;
    assert_ne!(occupant_id(&join(&mut a, "ids", "owner").await), after);
}
