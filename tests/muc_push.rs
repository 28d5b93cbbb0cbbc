//! Push for mentions (XEP-0357 registrations, XEP-0045 rooms): a group
//! chat message naming an absent member of a room — by the nick they
//! last entered with — wakes that member's phone through the push
//! feature, as a group chat message no resource of theirs got. Nobody is
//! woken for a message that names nobody, for a non-member, or for a
//! member who is in the room.

mod common;

use common::muc::*;
use common::*;
use waxwing::modules::push::Push;

/// Accounts tracked by the push publisher: a notification counted for
/// anyone shows here as soon as the room handled the message.
fn pending(ts: &TestServer) -> usize {
    ts.server()
        .features
        .get::<Push>()
        .unwrap()
        .publisher()
        .pending_accounts()
}

async fn say(c: &mut Client, room: &str, body: &str) {
    c.send_str(&format!(
        "<message to='{}' type='groupchat'><body>{body}</body></message>",
        room_jid(room)
    ))
    .await;
    sync(c).await;
}

#[tokio::test]
async fn a_mention_of_an_absent_member_pushes() {
    let ts = TestServer::start_with(push_app::configure).await;
    for u in ["alice", "bob", "eve"] {
        ts.add_user(u, "pw").await;
    }
    let mut app = push_app::connect(&ts).await;
    let mut a = Client::login(ts.plain_addr, "alice", "pw", Some("r")).await;
    create_room(&mut a, "team", &[]).await;
    let r = admin_set(
        &mut a,
        "team",
        "<item jid='bob@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));

    // Bob and Eve register for push and pass by the room; only Bob is a
    // member, so only his nick is remembered.
    for (user, nick) in [("bob", "bobby"), ("eve", "eve")] {
        let mut c = Client::login(ts.plain_addr, user, "pw", Some("phone")).await;
        push_app::enable(&mut c, &format!("{user}-node")).await;
        join(&mut c, "team", nick).await;
        leave(&mut c, "team", nick).await;
        push_app::go_offline(&ts, c, user).await;
    }

    // Nobody named, a non-member named: nothing counted.
    say(&mut a, "team", "good morning").await;
    say(&mut a, "team", "eve, are you there?").await;
    assert_eq!(pending(&ts), 0);

    // Bob named, in any case and punctuation: one push to his node.
    say(&mut a, "team", "@Bobby: the build is green").await;
    let (node, fields) = push_app::next_publish(&mut app).await;
    assert_eq!(node, "bob-node");
    assert_eq!(fields["message-count"], "1");
    assert_eq!(
        fields["last-message-sender"],
        format!("{}/owner", room_jid("team"))
    );

    // Bob in the room (from his laptop): he reads it there, no push.
    let mut b = Client::login(ts.plain_addr, "bob", "pw", Some("laptop")).await;
    join(&mut b, "team", "bobby").await;
    eventually("bob's earlier notification is settled", || async {
        pending(&ts) == 0
    })
    .await;
    say(&mut a, "team", "bobby: welcome back").await;
    assert_eq!(pending(&ts), 0);
}

/// The nick a member entered with is kept with a persistent room: after
/// a restart a mention still finds them.
#[tokio::test]
async fn a_member_is_found_by_nick_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/muc.db", dir.path().display());
    let start = |url: String| {
        TestServer::start_with(move |c| {
            push_app::configure(c);
            c.database.url = url;
        })
    };
    let mut ts = start(url.clone()).await;
    for u in ["alice", "bob"] {
        ts.add_user(u, "pw").await;
    }
    let mut a = Client::login(ts.plain_addr, "alice", "pw", Some("r")).await;
    create_room(&mut a, "kept", &[("muc#roomconfig_persistentroom", "1")]).await;
    let r = admin_set(
        &mut a,
        "kept",
        "<item jid='bob@localhost' affiliation='member'/>",
    )
    .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let mut b = Client::login(ts.plain_addr, "bob", "pw", Some("phone")).await;
    push_app::enable(&mut b, "bob-node").await;
    join(&mut b, "kept", "bobby").await;
    leave(&mut b, "kept", "bobby").await;
    drop((a, b));
    ts.stop().await;

    let ts = start(url).await;
    let mut app = push_app::connect(&ts).await;
    let mut a = Client::login(ts.plain_addr, "alice", "pw", Some("r")).await;
    join(&mut a, "kept", "owner").await;
    say(&mut a, "kept", "where is bobby?").await;
    let (node, fields) = push_app::next_publish(&mut app).await;
    assert_eq!(node, "bob-node");
    assert_eq!(fields["message-count"], "1");
}
