//! Multi-user chat across servers (two in-process servers over s2s): a
//! user of b.test joins a room of conference.a.test and talks with its
//! local occupants, a user of a.test joins a room of conference.b.test,
//! and a remote user may not create rooms under the default policy. The
//! rooms treat remote full JIDs like local ones; their stanzas leave by
//! `router::deliver`, so the service domain speaks s2s for itself.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use waxwing::config::HostConfig;
use waxwing::xml::{Element, NS_CLIENT};

const A: &str = "a.test";
const B: &str = "b.test";
const MUC_A: &str = "conference.a.test";
const MUC_B: &str = "conference.b.test";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_USER: &str = "http://jabber.org/protocol/muc#user";

async fn start_one(
    domain: &str,
    port: u16,
    certs: PathBuf,
    peer_certs: PathBuf,
    peer: (&str, u16),
) -> TestServer {
    let peer_muc = format!("conference.{}", peer.0);
    let ts = TestServer::start_with(|c| {
        c.host = vec![HostConfig {
            domain: domain.into(),
            cert: None,
            key: None,
            allow_registration: false,
        }];
        c.tls.dev_cert_dir = certs;
        c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        c.s2s.ca_file = peer_certs.join("dev-cert.pem").display().to_string();
        c.s2s.connect_timeout = 2;
        for d in [peer.0.to_string(), peer_muc] {
            c.s2s.hosts.insert(d, format!("127.0.0.1:{}", peer.1));
        }
    })
    .await;
    ts.add_user_at(domain, "user", "pw").await;
    ts
}

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

/// Joins `room` as `nick`; returns the presences of the others.
async fn join(c: &mut Client, room: &str, nick: &str) -> Vec<Element> {
    c.send_str(&format!(
        "<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'/></presence>"
    ))
    .await;
    let mut others = Vec::new();
    loop {
        let e = c.next_element().await;
        if !e.attr("from").is_some_and(|f| f.starts_with(room)) {
            continue;
        }
        assert_ne!(e.attr("type"), Some("error"), "join refused: {}", show(&e));
        if e.name() == "presence" && !codes(&e).contains(&110) {
            others.push(e);
        } else if e.name() == "message" && e.get_child("subject", NS_CLIENT).is_some() {
            return others;
        }
    }
}

async fn instant(c: &mut Client, room: &str) {
    join(c, room, "owner").await;
    let r = c
        .iq(
            &format!(
                "<iq type='set' id='inst' to='{room}'><query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'/></query></iq>"
            ),
            "inst",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
}

async fn said(c: &mut Client, room: &str, body: &str) -> Element {
    loop {
        let e = c.next_named("message").await;
        if e.attr("from").is_some_and(|f| f.starts_with(room))
            && e.get_child("body", NS_CLIENT).map(|b| b.text()).as_deref() == Some(body)
        {
            return e;
        }
    }
}

#[tokio::test]
async fn remote_users_join_local_rooms_and_local_users_remote_ones() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cb) = (cert_dir(&certs, A), cert_dir(&certs, B));
    let (pa, pb) = (free_port(), free_port());
    let a = start_one(A, pa, ca.clone(), cb.clone(), (B, pb)).await;
    let b = start_one(B, pb, cb, ca, (A, pa)).await;
    let mut ua = Client::login_at(a.plain_addr, A, "user", "pw", Some("r")).await;
    let mut ub = Client::login_at(b.plain_addr, B, "user", "pw", Some("r")).await;

    // b.test's user in a room of a.test.
    let r1 = format!("r1@{MUC_A}");
    instant(&mut ua, &r1).await;
    let others = join(&mut ub, &r1, "visitor").await;
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].attr("from"), Some(format!("{r1}/owner").as_str()));
    let seen = loop {
        let e = ua.next_named("presence").await;
        if e.attr("from") == Some(format!("{r1}/visitor").as_str()) {
            break e;
        }
    };
    // The owner (a moderator) sees the remote real JID.
    let item = seen
        .get_child("x", NS_USER)
        .unwrap()
        .get_child("item", NS_USER)
        .unwrap();
    assert_eq!(item.attr("jid"), Some("user@b.test/r"));
    ub.send_str(&format!(
        "<message to='{r1}' type='groupchat'><body>from b</body></message>"
    ))
    .await;
    let m = said(&mut ua, &r1, "from b").await;
    assert_eq!(m.attr("from"), Some(format!("{r1}/visitor").as_str()));
    said(&mut ub, &r1, "from b").await;
    ua.send_str(&format!(
        "<message to='{r1}' type='groupchat'><body>from a</body></message>"
    ))
    .await;
    let m = said(&mut ub, &r1, "from a").await;
    assert_eq!(m.attr("to"), Some("user@b.test/r"));

    // A remote user may not create rooms here (`create = "local"`).
    ub.send_str(&format!(
        "<presence to='new@{MUC_A}/x'><x xmlns='{NS_MUC}'/></presence>"
    ))
    .await;
    let e = loop {
        let e = ub.next_named("presence").await;
        if e.attr("from") == Some(format!("new@{MUC_A}/x").as_str()) {
            break e;
        }
    };
    assert_eq!(
        stanza_error(&e).as_deref(),
        Some("not-allowed"),
        "{}",
        show(&e)
    );

    // a.test's user in a room of b.test.
    let r2 = format!("r2@{MUC_B}");
    instant(&mut ub, &r2).await;
    let others = join(&mut ua, &r2, "guest").await;
    assert_eq!(others.len(), 1);
    ua.send_str(&format!(
        "<message to='{r2}' type='groupchat'><body>hello b</body></message>"
    ))
    .await;
    said(&mut ub, &r2, "hello b").await;
    said(&mut ua, &r2, "hello b").await;
    drop(b);
}
