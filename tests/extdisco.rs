//! External service discovery (XEP-0215) over a real socket: the configured
//! STUN and TURN servers, and TURN credentials a TURN server configured
//! with the same secret (coturn's `use-auth-secret`) accepts: checked here
//! by recomputing HMAC-SHA1 over the username, as the TURN server does.

mod common;

use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use waxwing::config::ExternalServiceConfig;
use waxwing::xml::Element;

const NS: &str = "urn:xmpp:extdisco:2";
const SECRET: &str = "shared-with-coturn";

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.external_service = vec![
            ExternalServiceConfig {
                kind: "stun".into(),
                host: "stun.localhost".into(),
                port: 3478,
                ..Default::default()
            },
            ExternalServiceConfig {
                kind: "turn".into(),
                host: "turn.localhost".into(),
                port: 3478,
                transport: "udp".into(),
                secret: SECRET.into(),
                credential_lifetime: 3600,
                name: "relay".into(),
            },
            ExternalServiceConfig {
                kind: "turn".into(),
                host: "turn.localhost".into(),
                port: 5349,
                transport: "tcp".into(),
                secret: SECRET.into(),
                ..Default::default()
            },
        ]
    })
    .await
}

fn services(e: &Element) -> Vec<&Element> {
    e.children()
        .next()
        .map(|p| p.children().filter(|c| c.name() == "service").collect())
        .unwrap_or_default()
}

/// What a TURN server with `SECRET` checks: the password is the HMAC of
/// the username, and the username's expiry is in the future.
fn turn_accepts(s: &Element, user: &str) {
    let username = s.attr("username").expect("a username");
    let (expiry, who) = username.split_once(':').expect("expiry:user");
    assert_eq!(who, user);
    let expiry: i64 = expiry.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(expiry > now && expiry <= now + 86_400, "{expiry} vs {now}");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(s.attr("password"), Some(expected.as_str()));
    assert!(s.attr("expires").is_some_and(|e| e.ends_with('Z')));
    assert_eq!(s.attr("restricted"), Some("1"));
}

#[tokio::test]
async fn services_and_turn_credentials() {
    let ts = server().await;
    ts.add_user("caller", "pw").await;
    let mut c = Client::login(ts.plain_addr, "caller", "pw", Some("r")).await;
    let info = c
        .iq(
            "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d",
        )
        .await;
    assert!(
        show(&info).contains(&format!("<feature var='{NS}'/>")),
        "{}",
        show(&info)
    );

    let all = c
        .iq(
            &format!("<iq type='get' id='a' to='localhost'><services xmlns='{NS}'/></iq>"),
            "a",
        )
        .await;
    let list = services(&all);
    assert_eq!(list.len(), 3, "{}", show(&all));
    let stun = list
        .iter()
        .find(|s| s.attr("type") == Some("stun"))
        .unwrap();
    assert_eq!(stun.attr("host"), Some("stun.localhost"));
    assert!(stun.attr("password").is_none(), "no secret, no credentials");
    for turn in list.iter().filter(|s| s.attr("type") == Some("turn")) {
        turn_accepts(turn, "caller@localhost");
    }

    // One type only.
    let turns = c
        .iq(
            &format!(
                "<iq type='get' id='t' to='localhost'><services xmlns='{NS}' type='turn'/></iq>"
            ),
            "t",
        )
        .await;
    assert_eq!(services(&turns).len(), 2, "{}", show(&turns));

    // Credentials for one service, by host, type and port.
    let cred = c
        .iq(
            &format!("<iq type='get' id='c' to='localhost'><credentials xmlns='{NS}'><service host='turn.localhost' type='turn' port='5349'/></credentials></iq>"),
            "c",
        )
        .await;
    let got = services(&cred);
    assert_eq!(got.len(), 1, "{}", show(&cred));
    assert_eq!(got[0].attr("transport"), Some("tcp"));
    turn_accepts(got[0], "caller@localhost");

    // A service we do not know: item-not-found; a set: not-allowed.
    let none = c
        .iq(
            &format!("<iq type='get' id='n' to='localhost'><credentials xmlns='{NS}'><service host='elsewhere' type='turn'/></credentials></iq>"),
            "n",
        )
        .await;
    assert_eq!(stanza_error(&none).as_deref(), Some("item-not-found"));
    let set = c
        .iq(
            &format!("<iq type='set' id='s' to='localhost'><services xmlns='{NS}'/></iq>"),
            "s",
        )
        .await;
    assert_eq!(stanza_error(&set).as_deref(), Some("not-allowed"));
}

#[tokio::test]
async fn without_services_nothing_is_offered() {
    let ts = TestServer::start().await;
    ts.add_user("plain", "pw").await;
    let mut c = Client::login(ts.plain_addr, "plain", "pw", Some("r")).await;
    let info = c
        .iq(
            "<iq type='get' id='d' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            "d",
        )
        .await;
    assert!(!show(&info).contains(NS), "{}", show(&info));
    let r = c
        .iq(
            &format!("<iq type='get' id='a' to='localhost'><services xmlns='{NS}'/></iq>"),
            "a",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("service-unavailable"));
}
