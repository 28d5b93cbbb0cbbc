//! Hostile and broken input: each case gets the right RFC 6120 error, and
//! the server keeps serving everyone else.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use waxwing::sasl::ScramHash;

async fn server_with_canary() -> TestServer {
    let server = TestServer::start().await;
    server.add_user("canary", "pw").await;
    server.add_user("user", "pw").await;
    server
}

#[tokio::test]
async fn garbage_before_tls_is_not_well_formed() {
    let server = server_with_canary().await;
    let mut c = Client::connect(server.plain_addr).await;
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage")
        .await
        .unwrap();
    assert_eq!(c.expect_stream_error().await, "not-well-formed");
    still_serves(&server).await;
}

#[tokio::test]
async fn garbage_instead_of_a_tls_handshake_closes_the_connection() {
    let server = server_with_canary().await;
    // After <proceed/>, plaintext junk instead of a ClientHello.
    let mut c = Client::connect(server.plain_addr).await;
    c.open_stream().await;
    c.next_element().await;
    c.send_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert!(c.next_element().await.is("proceed", NS_TLS));
    c.send(b"this is not a TLS record\r\n\r\n").await.unwrap();
    c.expect_closed().await;
    // Junk on the direct-TLS port too.
    let mut raw = tokio::net::TcpStream::connect(server.tls_addr)
        .await
        .unwrap();
    raw.write_all(b"<stream:stream xmlns='jabber:client'>")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(TIMEOUT, tokio::io::AsyncReadExt::read(&mut raw, &mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(_)) | Ok(Err(_))),
        "server must answer or close"
    );
    still_serves(&server).await;
}

#[tokio::test]
async fn garbage_after_tls_is_not_well_formed() {
    let server = server_with_canary().await;
    let mut c = Client::login(server.plain_addr, "user", "pw", None).await;
    c.send(b"<message><body>ok</body></message>\xff\xfe\x00<<<")
        .await
        .unwrap();
    assert_eq!(c.expect_stream_error().await, "not-well-formed");
    still_serves(&server).await;
}

#[tokio::test]
async fn mismatched_tags_are_not_well_formed() {
    let server = server_with_canary().await;
    let mut c = Client::login(server.plain_addr, "user", "pw", None).await;
    c.send_str("<message to='user@localhost'><body>x</bodyy></message>")
        .await;
    assert_eq!(c.expect_stream_error().await, "not-well-formed");
    still_serves(&server).await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn ten_megabyte_stanza_is_a_policy_violation_and_memory_stays_bounded() {
    let server = server_with_canary().await;
    let mut c = Client::login(server.plain_addr, "user", "pw", None).await;
    let before = rss_kib();
    c.send_str("<message to='user@localhost'><body>").await;
    // 10 MB of body, sent in 64 KiB pieces from one reused buffer so the
    // test's own memory does not blur the measurement.
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 10 * 1024 * 1024 {
        if c.send(&chunk).await.is_err() {
            break; // the server closed on us, as it should
        }
        sent += chunk.len();
    }
    assert_eq!(c.expect_stream_error().await, "policy-violation");
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 20, "process RSS grew by {grown_mib} MiB");
    still_serves(&server).await;
}

#[tokio::test]
async fn deep_nesting_is_a_policy_violation() {
    let server = server_with_canary().await;
    let mut c = Client::login(server.plain_addr, "user", "pw", None).await;
    let mut s = String::from("<message to='user@localhost'>");
    for _ in 0..5000 {
        s.push_str("<a>");
    }
    let _ = c.send(s.as_bytes()).await;
    assert_eq!(c.expect_stream_error().await, "policy-violation");
    still_serves(&server).await;
}

#[tokio::test]
async fn billion_laughs_is_restricted_xml() {
    let server = server_with_canary().await;
    let mut c = Client::connect(server.plain_addr).await;
    let doc = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'><!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>&lol3;";
    c.send_str(doc).await;
    assert_eq!(c.expect_stream_error().await, "restricted-xml");
    // Comments and processing instructions inside a stream are restricted too.
    let mut c = Client::login(server.plain_addr, "user", "pw", None).await;
    c.send_str("<!-- hi -->").await;
    assert_eq!(c.expect_stream_error().await, "restricted-xml");
    let mut c = Client::login(server.plain_addr, "user", "pw", None).await;
    c.send_str("<message><body>&undefined;</body></message>")
        .await;
    assert_eq!(c.expect_stream_error().await, "restricted-xml");
    still_serves(&server).await;
}

#[tokio::test]
async fn a_thousand_dropped_handshakes_leave_the_server_responsive() {
    let server = server_with_canary().await;
    for i in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(if i % 2 == 0 {
            server.plain_addr
        } else {
            server.tls_addr
        })
        .await
        .unwrap();
        // Half of them say something first, then all vanish mid-handshake.
        if i % 4 == 0 {
            let _ = s
                .write_all(b"<?xml version='1.0'?><stream:stream to='localhost' ver")
                .await;
        } else if i % 4 == 1 {
            let _ = s.write_all(b"\x16\x03\x01\x00\xa5\x01\x00").await;
        }
        drop(s);
    }
    still_serves(&server).await;
    // All those connections are gone, not lingering.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.server().connections.open() <= 1,
        "{} open",
        server.server().connections.open()
    );
}

#[tokio::test]
async fn stanza_before_authentication_is_not_authorized() {
    let server = server_with_canary().await;
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    c.send_str("<message to='canary@localhost'><body>sneaky</body></message>")
        .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
    // And before TLS.
    let mut c = Client::connect(server.plain_addr).await;
    c.open_stream().await;
    c.next_element().await;
    c.send_str("<iq type='get' id='1'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
    still_serves(&server).await;
}

#[tokio::test]
async fn malformed_to_gets_jid_malformed() {
    let server = server_with_canary().await;
    let mut c = Client::login(server.plain_addr, "user", "pw", None).await;
    for (i, bad) in [
        "a@b@c",
        "@localhost",
        "user@",
        "user@localhost/",
        "us er@localhost",
        "user@bad domain",
    ]
    .iter()
    .enumerate()
    {
        c.send_str(&format!(
            "<message id='j{i}' to='{bad}'><body>x</body></message>"
        ))
        .await;
        let e = c.next_named("message").await;
        assert_eq!(e.attr("id"), Some(format!("j{i}").as_str()));
        assert_eq!(stanza_error(&e).as_deref(), Some("jid-malformed"), "{bad}");
    }
}

#[tokio::test]
async fn spoofed_from_is_invalid_from_and_recipients_see_the_truth() {
    let server = server_with_canary().await;
    let mut victim = Client::login(server.plain_addr, "canary", "pw", Some("v")).await;
    let mut c = Client::login(server.plain_addr, "user", "pw", Some("u")).await;
    // Claiming its own bare JID is allowed; the server stamps the full JID.
    c.send_str(
        "<message from='user@localhost' to='canary@localhost/v' id='ok'><body>x</body></message>",
    )
    .await;
    let m = victim.next_named("message").await;
    assert_eq!(m.attr("from"), Some("user@localhost/u"));
    let mark = victim.mark();
    c.send_str("<message from='admin@localhost/x' to='canary@localhost/v'><body>give me your password</body></message>").await;
    assert_eq!(c.expect_stream_error().await, "invalid-from");
    // The victim never sees the forged message (nor anything else): the
    // stream error went out after the stanza was handled, so a delivered
    // forgery would be in the victim's queue before its barrier's answer.
    victim.expect_nothing(mark).await;
}

#[tokio::test]
async fn sasl_bad_base64_and_broken_scram() {
    let server = server_with_canary().await;
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    c.send_str(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>!!!not base64!!!</auth>"
    ))
    .await;
    let f = c.next_element().await;
    assert!(
        f.get_child("incorrect-encoding", NS_SASL).is_some(),
        "{f:?}"
    );
    // A client-first message that is not SCRAM at all.
    c.send_str(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{}</auth>",
        b64(b"hello")
    ))
    .await;
    let f = c.next_element().await;
    assert!(f.get_child("malformed-request", NS_SASL).is_some(), "{f:?}");
    // A final message whose nonce is not the one the server issued.
    c.send_str(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{}</auth>",
        b64(b"n,,n=canary,r=abcdefgh")
    ))
    .await;
    let ch = c.next_element().await;
    assert!(ch.is("challenge", NS_SASL), "{ch:?}");
    let forged = b64(b"c=biws,r=abcdefghFORGED,p=dGhpcyBpcyBub3QgYSBwcm9vZg==");
    c.send_str(&format!("<response xmlns='{NS_SASL}'>{forged}</response>"))
        .await;
    let f = c.next_element().await;
    assert!(f.is("failure", NS_SASL), "{f:?}");
    // An unknown mechanism.
    c.send_str(&format!("<auth xmlns='{NS_SASL}' mechanism='DIGEST-MD5'/>"))
        .await;
    let f = c.next_element().await;
    assert!(f.get_child("invalid-mechanism", NS_SASL).is_some(), "{f:?}");
    // The same connection can still log in properly.
    assert!(c
        .scram(ScramHash::Sha256, "canary", "pw", false)
        .await
        .is("success", NS_SASL));
}

#[tokio::test]
async fn plain_is_never_offered_without_tls() {
    let server = TestServer::start_with(|c| c.c2s.require_encryption = false).await;
    server.add_user("user", "pw").await;
    let mut c = Client::connect(server.plain_addr).await;
    c.open_stream().await;
    let f = c.next_element().await;
    let mechs: Vec<String> = f
        .get_child("mechanisms", NS_SASL)
        .unwrap()
        .children()
        .map(|m| m.text())
        .collect();
    assert!(
        !mechs.iter().any(|m| m == "PLAIN" || m.ends_with("-PLUS")),
        "{mechs:?}"
    );
    c.send_str(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>",
        b64(b"\0user\0pw")
    ))
    .await;
    let f = c.next_element().await;
    assert!(f.is("failure", NS_SASL), "{f:?}");
    // SCRAM without TLS works when encryption is optional.
    assert!(c
        .scram(ScramHash::Sha256, "user", "pw", false)
        .await
        .is("success", NS_SASL));
}
