//! Client-to-server streams over real sockets: negotiation, every SASL
//! mechanism, binding, routing between sessions, server IQs, shutdown.

mod common;

use common::*;
use waxwing::sasl::ScramHash;
use waxwing::xml::{StreamEvent, NS_CLIENT};

#[tokio::test]
async fn two_users_chat_over_starttls_and_direct_tls() {
    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let mut alice = Client::login(server.plain_addr, "alice", "wonderland", Some("laptop")).await;
    // Bob comes in over direct TLS (XEP-0368).
    let mut bob = Client::connect_tls(server.tls_addr).await;
    bob.open_stream().await;
    let features = bob.next_element().await;
    assert!(
        features.get_child("starttls", NS_TLS).is_none(),
        "no STARTTLS inside TLS"
    );
    assert!(bob
        .scram(ScramHash::Sha256, "bob", "builder", false)
        .await
        .is("success", NS_SASL));
    bob.open_stream().await;
    bob.next_element().await;
    let bob_jid = bob.bind(Some("phone")).await;
    assert_eq!(bob_jid, "bob@localhost/phone");
    bob.send_str("<presence/>").await;

    alice
        .send_str("<message to='bob@localhost/phone' type='chat' id='m1'><body>hi &amp; hello</body></message>")
        .await;
    let m = bob.next_named("message").await;
    assert_eq!(m.attr("from"), Some("alice@localhost/laptop"));
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "hi & hello");

    // Bare-JID addressing reaches bob's only available resource.
    bob.send_str("<message to='alice@localhost' type='chat'><body>back at you</body><x xmlns='urn:example:payload' a='1'><y/></x></message>")
        .await;
    let m = alice.next_named("message").await;
    assert_eq!(m.attr("from"), Some("bob@localhost/phone"));
    assert_eq!(
        m.get_child("body", NS_CLIENT).unwrap().text(),
        "back at you"
    );
    let x = m
        .get_child("x", "urn:example:payload")
        .expect("namespaced payload preserved");
    assert_eq!(x.attr("a"), Some("1"));
    assert!(x.get_child("y", "urn:example:payload").is_some());
}

#[tokio::test]
async fn every_scram_variant_and_plain_log_in() {
    let server = TestServer::start().await;
    server.add_user("carol", "s3cret").await;
    for hash in [ScramHash::Sha1, ScramHash::Sha256, ScramHash::Sha512] {
        for plus in [false, true] {
            let mut c = Client::connect(server.plain_addr).await;
            let features = c.starttls().await;
            let mechs: Vec<String> = features
                .get_child("mechanisms", NS_SASL)
                .unwrap()
                .children()
                .map(|m| m.text())
                .collect();
            let name = if plus { hash.plus_name() } else { hash.name() };
            assert!(
                mechs.iter().any(|m| m == name),
                "{name} offered in {mechs:?}"
            );
            let cb = features
                .get_child("sasl-channel-binding", "urn:xmpp:sasl-cb:0")
                .expect("XEP-0440 channel-binding types advertised");
            assert!(cb
                .children()
                .any(|t| t.attr("type") == Some("tls-exporter")));
            let outcome = c.scram(hash, "carol", "s3cret", plus).await;
            assert!(outcome.is("success", NS_SASL), "{name}: {outcome:?}");
        }
    }
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    let plain = b64(b"\0carol\0s3cret");
    c.send_str(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{plain}</auth>"
    ))
    .await;
    assert!(c.next_element().await.is("success", NS_SASL));
}

#[tokio::test]
async fn wrong_password_fails_and_failures_are_throttled() {
    let server = TestServer::start_with(|c| c.limits.auth_failures_per_ip = 3).await;
    server.add_user("dave", "right").await;
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    for _ in 0..3 {
        let f = c.scram(ScramHash::Sha256, "dave", "wrong", false).await;
        assert!(f.is("failure", NS_SASL));
        assert!(f.get_child("not-authorized", NS_SASL).is_some(), "{f:?}");
    }
    // The IP is now over its limit: even the right password is refused for a while.
    let f = c.scram(ScramHash::Sha256, "dave", "right", false).await;
    assert!(
        f.get_child("temporary-auth-failure", NS_SASL).is_some(),
        "{f:?}"
    );
}

#[tokio::test]
async fn unknown_user_fails_like_a_wrong_password() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    let f = c.scram(ScramHash::Sha256, "nobody", "x", false).await;
    assert!(f.get_child("not-authorized", NS_SASL).is_some(), "{f:?}");
}

#[tokio::test]
async fn tls_is_required_before_authentication() {
    let server = TestServer::start().await;
    server.add_user("erin", "pw").await;
    let mut c = Client::connect(server.plain_addr).await;
    c.open_stream().await;
    let features = c.next_element().await;
    let st = features.get_child("starttls", NS_TLS).unwrap();
    assert!(st.get_child("required", NS_TLS).is_some());
    assert!(features.get_child("mechanisms", NS_SASL).is_none());
    let f = c.scram(ScramHash::Sha256, "erin", "pw", false).await;
    assert!(
        f.get_child("encryption-required", NS_SASL).is_some(),
        "{f:?}"
    );
}

#[tokio::test]
async fn stream_header_errors() {
    let server = TestServer::start().await;
    let cases = [
        ("<stream:stream to='elsewhere.example' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", "host-unknown"),
        ("<stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>", "unsupported-version"),
        ("<stream:stream to='localhost' version='1.0' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>", "invalid-namespace"),
        ("<stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='urn:not-streams'>", "invalid-namespace"),
    ];
    for (header, want) in cases {
        let mut c = Client::connect(server.plain_addr).await;
        c.send_str(header).await;
        assert_eq!(c.expect_stream_error().await, want, "{header}");
    }
}

#[tokio::test]
async fn same_full_jid_twice_newest_wins_and_server_picks_resources() {
    let server = TestServer::start().await;
    server.add_user("frank", "pw").await;
    let mut first = Client::login(server.plain_addr, "frank", "pw", Some("desk")).await;
    let mut second = Client::login(server.plain_addr, "frank", "pw", Some("desk")).await;
    assert_eq!(first.expect_stream_error().await, "conflict");
    // The newer session keeps working.
    let pong = second
        .iq(
            "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    // No resource asked for: the server generates one.
    let generated = Client::login(server.plain_addr, "frank", "pw", None).await;
    let jid = generated.jid.unwrap();
    assert!(jid.starts_with("frank@localhost/") && jid.len() > "frank@localhost/".len());
}

#[tokio::test]
async fn legacy_session_iq_is_accepted() {
    let server = TestServer::start().await;
    server.add_user("gina", "pw").await;
    let mut c = Client::login(server.plain_addr, "gina", "pw", None).await;
    let r = c
        .iq(
            "<iq type='set' id='s1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
            "s1",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"));
}

#[tokio::test]
async fn server_iqs_disco_ping_version_time_and_unknown() {
    let server = TestServer::start().await;
    server.add_user("hank", "pw").await;
    let mut c = Client::login(server.plain_addr, "hank", "pw", None).await;
    let info = c
        .iq("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>", "d1")
        .await;
    assert_eq!(info.attr("from"), Some("localhost"));
    let q = info
        .get_child("query", "http://jabber.org/protocol/disco#info")
        .unwrap();
    let features: Vec<&str> = q.children().filter_map(|f| f.attr("var")).collect();
    for f in [
        "http://jabber.org/protocol/disco#info",
        "urn:xmpp:ping",
        "jabber:iq:version",
        "urn:xmpp:time",
    ] {
        assert!(features.contains(&f), "{f} in {features:?}");
    }
    assert!(q
        .children()
        .any(|i| i.name() == "identity" && i.attr("category") == Some("server")));
    let items = c
        .iq("<iq type='get' id='d2' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>", "d2")
        .await;
    assert_eq!(items.attr("type"), Some("result"));
    let v = c
        .iq(
            "<iq type='get' id='v1' to='localhost'><query xmlns='jabber:iq:version'/></iq>",
            "v1",
        )
        .await;
    let q = v.get_child("query", "jabber:iq:version").unwrap();
    assert_eq!(
        q.get_child("name", "jabber:iq:version").unwrap().text(),
        "Waxwing"
    );
    let t = c
        .iq(
            "<iq type='get' id='t1' to='localhost'><time xmlns='urn:xmpp:time'/></iq>",
            "t1",
        )
        .await;
    let utc = t
        .get_child("time", "urn:xmpp:time")
        .unwrap()
        .get_child("utc", "urn:xmpp:time")
        .unwrap()
        .text();
    assert!(utc.ends_with('Z') && utc.len() >= 20, "{utc}");
    let p = c
        .iq(
            "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
        )
        .await;
    assert_eq!(p.attr("type"), Some("result"));
    let u = c
        .iq(
            "<iq type='get' id='u1' to='localhost'><query xmlns='urn:example:unknown'/></iq>",
            "u1",
        )
        .await;
    assert_eq!(u.attr("type"), Some("error"));
    assert_eq!(stanza_error(&u).as_deref(), Some("service-unavailable"));
    let u = c
        .iq(
            "<iq type='set' id='u2'><query xmlns='urn:example:unknown'/></iq>",
            "u2",
        )
        .await;
    assert_eq!(stanza_error(&u).as_deref(), Some("service-unavailable"));
    // An IQ with two payloads is malformed.
    let b = c
        .iq("<iq type='get' id='b1' to='localhost'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>", "b1")
        .await;
    assert_eq!(stanza_error(&b).as_deref(), Some("bad-request"));
}

#[tokio::test]
async fn bare_jid_messages_follow_priority_rules() {
    let server = TestServer::start().await;
    server.add_user("ivy", "pw").await;
    server.add_user("jack", "pw").await;
    let mut sender = Client::login(server.plain_addr, "jack", "pw", Some("s")).await;
    // No such account: the sender learns at once.
    sender
        .send_str(
            "<message to='ivy-nobody@localhost' type='chat' id='x1'><body>anyone?</body></message>",
        )
        .await;
    let err = sender.next_named("message").await;
    assert_eq!(err.attr("type"), Some("error"));
    assert_eq!(stanza_error(&err).as_deref(), Some("service-unavailable"));

    let mut low = Client::login(server.plain_addr, "ivy", "pw", Some("low")).await;
    low.send_str("<presence><priority>1</priority></presence>")
        .await;
    let mut high = Client::login(server.plain_addr, "ivy", "pw", Some("high")).await;
    high.send_str("<presence><priority>5</priority></presence>")
        .await;
    let mut negative = Client::login(server.plain_addr, "ivy", "pw", Some("neg")).await;
    negative
        .send_str("<presence><priority>-1</priority></presence>")
        .await;
    // Make sure the presences are processed before sending.
    for c in [&mut low, &mut high, &mut negative] {
        c.iq(
            "<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "sync",
        )
        .await;
    }
    sender
        .send_str(
            "<message to='ivy@localhost' type='chat' id='x2'><body>to the top</body></message>",
        )
        .await;
    let m = high.next_named("message").await;
    assert_eq!(m.attr("id"), Some("x2"));
    // A headline goes to every non-negative resource.
    sender
        .send_str("<message to='ivy@localhost' type='headline' id='h1'><body>news</body></message>")
        .await;
    assert_eq!(high.next_named("message").await.attr("id"), Some("h1"));
    assert_eq!(low.next_named("message").await.attr("id"), Some("h1"));
    // A full JID reaches even a negative-priority resource.
    sender
        .send_str(
            "<message to='ivy@localhost/neg' type='chat' id='x3'><body>direct</body></message>",
        )
        .await;
    assert_eq!(negative.next_named("message").await.attr("id"), Some("x3"));
    // Neither low nor negative saw x2: their next message is what we send now.
    sender
        .send_str("<message to='ivy@localhost/low' id='x4'/>")
        .await;
    assert_eq!(low.next_named("message").await.attr("id"), Some("x4"));
    // An IQ to an absent resource bounces.
    let r = sender
        .iq(
            "<iq type='get' id='q1' to='ivy@localhost/gone'><ping xmlns='urn:xmpp:ping'/></iq>",
            "q1",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("service-unavailable"));
}

#[tokio::test]
async fn iq_between_full_jids_round_trips() {
    let server = TestServer::start().await;
    server.add_user("kim", "pw").await;
    server.add_user("lee", "pw").await;
    let mut kim = Client::login(server.plain_addr, "kim", "pw", Some("a")).await;
    let mut lee = Client::login(server.plain_addr, "lee", "pw", Some("b")).await;
    kim.send_str(
        "<iq type='get' id='v' to='lee@localhost/b'><query xmlns='jabber:iq:version'/></iq>",
    )
    .await;
    let req = lee.next_named("iq").await;
    assert_eq!(req.attr("from"), Some("kim@localhost/a"));
    lee.send_str("<iq type='result' id='v' to='kim@localhost/a'><query xmlns='jabber:iq:version'><name>x</name></query></iq>").await;
    let res = kim.next_named("iq").await;
    assert_eq!(res.attr("type"), Some("result"));
    assert_eq!(res.attr("from"), Some("lee@localhost/b"));
}

#[tokio::test]
async fn remote_domains_bounce_until_federation_exists() {
    let server = TestServer::start().await;
    server.add_user("max", "pw").await;
    let mut c = Client::login(server.plain_addr, "max", "pw", None).await;
    c.send_str("<message to='someone@remote.example' id='r1'><body>x</body></message>")
        .await;
    let e = c.next_named("message").await;
    assert_eq!(stanza_error(&e).as_deref(), Some("remote-server-not-found"));
}

#[tokio::test]
async fn shutdown_closes_streams_with_system_shutdown() {
    let mut server = TestServer::start().await;
    server.add_user("nia", "pw").await;
    let mut c = Client::login(server.plain_addr, "nia", "pw", None).await;
    let stop = tokio::spawn(async move {
        server.stop().await;
        server
    });
    assert_eq!(c.expect_stream_error().await, "system-shutdown");
    let _ = stop.await.unwrap();
}

#[tokio::test]
async fn idle_streams_time_out() {
    let server = TestServer::start_with(|c| c.c2s.idle_timeout = 1).await;
    server.add_user("oz", "pw").await;
    let mut c = Client::login(server.plain_addr, "oz", "pw", None).await;
    // Whitespace keepalives count as traffic.
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        c.send_str(" ").await;
    }
    let p = c
        .iq(
            "<iq type='get' id='k' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "k",
        )
        .await;
    assert_eq!(p.attr("type"), Some("result"));
    assert_eq!(c.expect_stream_error().await, "connection-timeout");
}

#[tokio::test]
async fn client_closing_its_stream_gets_ours_closed() {
    let server = TestServer::start().await;
    server.add_user("pat", "pw").await;
    let mut c = Client::login(server.plain_addr, "pat", "pw", None).await;
    c.send_str("</stream:stream>").await;
    loop {
        match c.next_event().await {
            Some(StreamEvent::End) => break,
            Some(StreamEvent::Stanza(e)) if e.name() == "presence" => continue,
            other => panic!("expected the end of the stream, got {other:?}"),
        }
    }
    c.expect_closed().await;
    // The session is gone from the registry.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(server.server().sessions.count(), 0);
}

#[tokio::test]
async fn tls_server_end_point_binding_logs_in() {
    let server = TestServer::start().await;
    server.add_user("quinn", "pw").await;
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    let hash = c.server_end_point_hash().expect("peer certificate");
    let outcome = c
        .scram_with_binding(
            ScramHash::Sha256,
            "quinn",
            "pw",
            waxwing::sasl::ChannelBindingType::TlsServerEndPoint,
            hash,
        )
        .await;
    assert!(outcome.is("success", NS_SASL), "{outcome:?}");
}

#[tokio::test]
async fn failures_are_throttled_per_account_across_connections() {
    let server = TestServer::start_with(|c| {
        c.limits.auth_failures_per_ip = 1000;
        c.limits.auth_failures_per_account = 2;
    })
    .await;
    server.add_user("rita", "right").await;
    for _ in 0..2 {
        let mut c = Client::connect(server.plain_addr).await;
        c.starttls().await;
        let f = c.scram(ScramHash::Sha256, "rita", "wrong", false).await;
        assert!(f.get_child("not-authorized", NS_SASL).is_some(), "{f:?}");
    }
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    let f = c.scram(ScramHash::Sha1, "rita", "right", false).await;
    assert!(
        f.get_child("temporary-auth-failure", NS_SASL).is_some(),
        "{f:?}"
    );
    // Other accounts are unaffected.
    server.add_user("sam", "pw").await;
    let f = c.scram(ScramHash::Sha256, "sam", "pw", false).await;
    assert!(f.is("success", NS_SASL), "{f:?}");
}

#[tokio::test]
async fn sni_picks_the_domain_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for d in ["a.example", "b.example"] {
        let ck = rcgen::generate_simple_self_signed(vec![d.to_string()]).unwrap();
        let (c, k) = (
            dir.path().join(format!("{d}.pem")),
            dir.path().join(format!("{d}.key")),
        );
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.key_pair.serialize_pem()).unwrap();
        paths.push((d, c, k, ck.cert.der().to_vec()));
    }
    let hosts = paths.clone();
    let server = TestServer::start_with(move |c| {
        c.host = hosts
            .iter()
            .map(|(d, cert, key, _)| waxwing::config::HostConfig {
                domain: d.to_string(),
                cert: Some(cert.clone()),
                key: Some(key.clone()),
                allow_registration: false,
            })
            .chain([waxwing::config::HostConfig {
                domain: "localhost".into(),
                cert: None,
                key: None,
                allow_registration: false,
            }])
            .collect();
    })
    .await;
    for (d, _, _, der) in &paths {
        let c = Client::connect_tls_sni(server.tls_addr, d).await;
        assert_eq!(c.peer_certificate().unwrap(), *der, "certificate for {d}");
    }
    // An unknown name gets the fallback (the generated dev certificate).
    let c = Client::connect_tls_sni(server.tls_addr, "unknown.example").await;
    assert!(!paths
        .iter()
        .any(|(_, _, _, der)| *der == c.peer_certificate().unwrap()));
}

/// STARTTLS from a client that sends no SNI: the stream header already
/// named the domain, so its certificate is served (not the fallback).
#[tokio::test]
async fn starttls_without_sni_gets_the_addressed_domain_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for d in ["a.example", "b.example"] {
        let ck = rcgen::generate_simple_self_signed(vec![d.to_string()]).unwrap();
        let (c, k) = (
            dir.path().join(format!("{d}.pem")),
            dir.path().join(format!("{d}.key")),
        );
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.key_pair.serialize_pem()).unwrap();
        paths.push((d, c, k, ck.cert.der().to_vec()));
    }
    let hosts = paths.clone();
    let server = TestServer::start_with(move |c| {
        c.host = hosts
            .iter()
            .map(|(d, cert, key, _)| waxwing::config::HostConfig {
                domain: d.to_string(),
                cert: Some(cert.clone()),
                key: Some(key.clone()),
                allow_registration: false,
            })
            .collect();
    })
    .await;
    for (d, _, _, der) in &paths {
        let mut c = Client::connect(server.plain_addr).await;
        c.domain = d.to_string();
        c.open_stream().await;
        let features = c.next_element().await;
        assert!(features.get_child("starttls", NS_TLS).is_some());
        c.send_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        assert!(c.next_element().await.is("proceed", NS_TLS));
        c.tls_handshake_without_sni().await.unwrap();
        assert_eq!(c.peer_certificate().unwrap(), *der, "certificate for {d}");
        // The stream goes on over TLS.
        c.open_stream().await;
        let features = c.next_element().await;
        assert_eq!(features.name(), "features", "{features:?}");
    }
    // Direct TLS without SNI has no header to go by: the fallback.
    let mut c = Client::connect(server.tls_addr).await;
    c.tls_handshake_without_sni().await.unwrap();
    assert!(!paths
        .iter()
        .any(|(_, _, _, der)| *der == c.peer_certificate().unwrap()));
}
