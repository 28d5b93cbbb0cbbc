//! Audit item 1: an account authenticated on one virtual host must not
//! bind, read or write as the account of the same name on another host.
//! The domain is fixed by the connection's first stream header; a restart
//! that names another domain ends the stream with `not-authorized`.

use crate::common::*;
use waxwing::config::HostConfig;
use waxwing::sasl::ScramHash;

fn host(domain: &str) -> HostConfig {
    HostConfig {
        domain: domain.into(),
        cert: None,
        key: None,
        allow_registration: false,
    }
}

async fn two_hosts() -> TestServer {
    let server = TestServer::start_with(|c| c.host = vec![host("a.test"), host("b.test")]).await;
    server.add_user_at("a.test", "alice", "alice-a").await;
    server.add_user_at("b.test", "alice", "alice-b").await;
    server
}

/// STARTTLS and authentication on a.test, up to the SASL success.
async fn authenticated_on_a(server: &TestServer, plain: bool) -> Client {
    let mut c = Client::connect(server.plain_addr).await;
    c.domain = "a.test".into();
    c.starttls().await;
    let outcome = if plain {
        c.send_str(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>",
            b64(b"\0alice\0alice-a")
        ))
        .await;
        let outcome = c.next_element().await;
        // A new stream follows a SASL success (RFC 6120 §6.4.6).
        c.parser.reset();
        outcome
    } else {
        c.scram(ScramHash::Sha256, "alice", "alice-a", false).await
    };
    assert!(outcome.is("success", NS_SASL), "{outcome:?}");
    c
}

async fn restart_on_b_is_refused(plain: bool) {
    let server = two_hosts().await;
    let mut c = authenticated_on_a(&server, plain).await;
    c.domain = "b.test".into();
    c.open_stream().await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");

    // b.test's alice is untouched and still served; a.test's alice binds
    // as herself.
    let mut b = Client::login_at(server.plain_addr, "b.test", "alice", "alice-b", Some("r")).await;
    assert_eq!(b.jid.as_deref(), Some("alice@b.test/r"));
    let pong = b
        .iq(
            "<iq type='get' id='p' to='b.test'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    let a = Client::login_at(server.plain_addr, "a.test", "alice", "alice-a", Some("r")).await;
    assert_eq!(a.jid.as_deref(), Some("alice@a.test/r"));
}

#[tokio::test]
async fn plain_on_one_host_cannot_bind_on_another() {
    restart_on_b_is_refused(true).await;
}

#[tokio::test]
async fn scram_on_one_host_cannot_bind_on_another() {
    restart_on_b_is_refused(false).await;
}

/// The TLS restart is pinned too: the certificate was chosen for a.test.
#[tokio::test]
async fn starttls_restart_cannot_switch_host() {
    let server = two_hosts().await;
    let mut c = Client::connect(server.plain_addr).await;
    c.domain = "a.test".into();
    c.open_stream().await;
    let features = c.next_element().await;
    assert!(features.get_child("starttls", NS_TLS).is_some());
    c.send_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert!(c.next_element().await.is("proceed", NS_TLS));
    c.tls_handshake().await.unwrap();
    c.domain = "b.test".into();
    c.open_stream().await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
}

/// The same rule on incoming s2s: a peer's restarted stream (after
/// STARTTLS) may not switch to another of our domains.
#[tokio::test]
async fn s2s_restart_cannot_switch_local_domain() {
    let server = TestServer::start_with(|c| {
        c.host = vec![host("a.test"), host("c.test")];
        c.s2s.listen = vec!["127.0.0.1:0".parse().unwrap()];
    })
    .await;
    let addr = server.running.as_ref().unwrap().s2s_addrs[0];
    let header = |to: &str| {
        format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' xmlns:stream='http://etherx.jabber.org/streams' from='b.test' to='{to}' version='1.0'>")
    };
    let mut c = Client::connect(addr).await;
    c.send_str(&header("a.test")).await;
    let features = c.next_element().await;
    assert!(features.get_child("starttls", NS_TLS).is_some());
    c.send_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert!(c.next_element().await.is("proceed", NS_TLS));
    c.tls_handshake_with("a.test").await.unwrap();
    c.send_str(&header("c.test")).await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
}
