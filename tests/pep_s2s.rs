//! PEP across servers: a contact on another server (two in-process
//! servers over s2s) announces +notify caps, the publisher's server asks
//! that client what the caps mean over s2s, then sends it the last item
//! and later notifications; the contact fetches an open OMEMO bundle
//! from the other server.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::*;
use waxwing::config::HostConfig;
use waxwing::modules::caps::verification_string;
use waxwing::storage::RosterRecord;
use waxwing::xml::{Element, NS_CLIENT};

const A: &str = "a.test";
const B: &str = "b.test";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";

async fn start_one(
    domain: &str,
    port: u16,
    certs: PathBuf,
    peer_certs: PathBuf,
    peer: (&str, u16),
) -> TestServer {
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
        c.s2s
            .hosts
            .insert(peer.0.into(), format!("127.0.0.1:{}", peer.1));
    })
    .await;
    ts.add_user_at(domain, "user", "pw").await;
    // The two users share presence both ways.
    let other = if domain == A { B } else { A };
    let rec = RosterRecord {
        contact: format!("user@{other}"),
        name: None,
        subscription: "both".into(),
        ask_out: false,
        pending_in: false,
        approved: false,
        in_roster: true,
        groups: Vec::new(),
    };
    ts.store().roster_put(domain, "user", &rec).await.unwrap();
    ts
}

fn devicelist_publish(id: &str, device: u32) -> String {
    format!(
        "<iq type='set' id='{id}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{DEVICELIST}'>\
         <item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='{device}'/></list></item>\
         </publish><publish-options><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
         <field var='pubsub#access_model'><value>open</value></field></x></publish-options></pubsub></iq>"
    )
}

/// Reads until a devicelist notification naming `device` arrives,
/// answering the server's disco#info query on the way.
async fn devicelist_event(c: &mut Client, info: &Element, device: u32) {
    loop {
        let e = c.next_element().await;
        if e.is("iq", NS_CLIENT) && e.attr("type") == Some("get") {
            if let Some(q) = e.get_child("query", NS_DISCO_INFO) {
                let mut answer = info.clone();
                answer.set_attr("node", q.attr("node").unwrap_or_default());
                let reply = Element::new("iq", NS_CLIENT)
                    .with_attr("type", "result")
                    .with_attr("id", e.attr("id").unwrap())
                    .with_attr("to", e.attr("from").unwrap())
                    .with_child(answer);
                let mut out = Vec::new();
                reply.write_to(&mut out, "");
                c.send(&out).await.unwrap();
            }
            continue;
        }
        let wanted = format!("id='{device}'");
        if e.attr("from") == Some("user@a.test")
            && e.get_child("event", NS_EVENT).is_some()
            && show(&e).contains(&wanted)
        {
            return;
        }
    }
}

#[tokio::test]
async fn remote_contact_gets_notifications_and_fetches_bundles() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cb) = (cert_dir(&certs, A), cert_dir(&certs, B));
    let (pa, pb) = (free_port(), free_port());
    let a = start_one(A, pa, ca.clone(), cb.clone(), (B, pb)).await;
    let b = start_one(B, pb, cb, ca, (A, pa)).await;

    let mut ua = Client::login_at(a.plain_addr, A, "user", "pw", Some("r")).await;
    ua.send_str("<presence/>").await;
    let r = ua.iq(&devicelist_publish("p1", 1), "p1").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));

    // B's client comes online with +notify caps: A's server asks it over
    // s2s what they mean, then sends the last item.
    let mut info = Element::new("query", NS_DISCO_INFO).with_child(
        Element::new("identity", NS_DISCO_INFO)
            .with_attr("category", "client")
            .with_attr("type", "phone"),
    );
    for f in [
        NS_DISCO_INFO,
        "eu.siacs.conversations.axolotl.devicelist+notify",
    ] {
        info.append_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", f));
    }
    let ver = verification_string(&info);
    let mut ub = Client::login_at(b.plain_addr, B, "user", "pw", Some("r")).await;
    ub.send_str(&format!(
        "<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://c.example' ver='{ver}'/></presence>"
    ))
    .await;
    devicelist_event(&mut ub, &info, 1).await;

    // A live notification across servers.
    let r = ua.iq(&devicelist_publish("p2", 2), "p2").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    devicelist_event(&mut ub, &info, 2).await;

    // B's user reads A's open node over s2s.
    let r = ub
        .iq(
            &format!(
                "<iq type='get' id='it' to='user@a.test'><pubsub xmlns='{NS_PUBSUB}'><items node='{DEVICELIST}'/></pubsub></iq>"
            ),
            "it",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    assert!(show(&r).contains("id='2'"), "{}", show(&r));
}
