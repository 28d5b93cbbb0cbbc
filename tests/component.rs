//! External components (XEP-0114) over real TCP: the handshake, routing
//! between a component and a logged-in user both ways, the `from` rule, a
//! configured but disconnected component, and a second connection.

mod common;

use std::net::SocketAddr;

use common::*;
use waxwing::config::ComponentConfig;
use waxwing::stream::component::{handshake_digest, NS_COMPONENT};
use waxwing::xml::{StreamEvent, NS_CLIENT};

const BOT: &str = "bot.localhost";
const SECRET: &str = "s3cret";
/// Configured but never connected by these tests.
const IDLE_BOT: &str = "idle.localhost";

async fn start() -> TestServer {
    let ts = TestServer::start_with(|c| {
        c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
        for domain in [BOT, IDLE_BOT] {
            c.component.push(ComponentConfig {
                domain: domain.into(),
                secret: SECRET.into(),
            });
        }
    })
    .await;
    ts.add_user("alice", "pw").await;
    ts
}

fn component_addr(ts: &TestServer) -> SocketAddr {
    ts.running.as_ref().unwrap().component_addrs[0]
}

/// Opens a component stream to `domain` and returns the stream id.
async fn open(c: &mut Client, domain: &str) -> String {
    c.send_str(&format!(
        "<stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    ))
    .await;
    match c.next_event().await {
        Some(StreamEvent::Header(h)) => {
            assert_eq!(h.default_ns.as_deref(), Some(NS_COMPONENT));
            assert_eq!(h.from.as_deref(), Some(domain));
            h.id.expect("stream id")
        }
        other => panic!("expected a header, got {other:?}"),
    }
}

/// A component that completed its handshake.
async fn component(ts: &TestServer) -> Client {
    Client::component(component_addr(ts), BOT, SECRET).await
}

#[tokio::test]
async fn wrong_secret_is_not_authorized() {
    let ts = start().await;
    let mut c = Client::connect(component_addr(&ts)).await;
    let id = open(&mut c, BOT).await;
    c.send_str(&format!(
        "<handshake>{}</handshake>",
        handshake_digest(&id, "wrong")
    ))
    .await;
    assert_eq!(c.expect_stream_error().await, "not-authorized");
}

#[tokio::test]
async fn unknown_domain_and_wrong_namespace_are_refused() {
    let ts = start().await;
    let mut c = Client::connect(component_addr(&ts)).await;
    c.send_str("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='nobody.localhost'>").await;
    assert_eq!(c.expect_stream_error().await, "host-unknown");

    // A host is not a component.
    let mut c = Client::connect(component_addr(&ts)).await;
    c.send_str("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' to='localhost'>").await;
    assert_eq!(c.expect_stream_error().await, "host-unknown");

    let mut c = Client::connect(component_addr(&ts)).await;
    c.send_str("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='bot.localhost'>").await;
    assert_eq!(c.expect_stream_error().await, "invalid-namespace");
}

#[tokio::test]
async fn messages_flow_both_ways() {
    let ts = start().await;
    let mut bot = component(&ts).await;
    let mut alice = Client::login(ts.plain_addr, "alice", "pw", Some("phone")).await;
    alice.next_named("presence").await;

    alice
        .send_str(
            "<message to='Echo@Bot.localhost' type='chat' id='m1'><body>hello</body></message>",
        )
        .await;
    let m = bot.next_element().await;
    assert!(m.is("message", NS_COMPONENT), "{m:?}");
    assert_eq!(m.attr("from"), Some("alice@localhost/phone"));
    assert_eq!(m.attr("to"), Some("echo@bot.localhost"));
    let body = m
        .get_child("body", NS_COMPONENT)
        .expect("body in the component namespace");
    assert_eq!(body.text(), "hello");

    bot.send_str("<message from='echo@bot.localhost' to='alice@localhost' type='chat'><body>hello back</body></message>").await;
    let back = alice.next_named("message").await;
    assert!(back.is("message", NS_CLIENT));
    assert_eq!(back.attr("from"), Some("echo@bot.localhost"));
    assert_eq!(
        back.get_child("body", NS_CLIENT)
            .map(|b| b.text())
            .as_deref(),
        Some("hello back")
    );

    // The component asks the server itself; errors come back to it.
    bot.send_str("<iq type='get' id='p1' from='bot.localhost' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    let pong = bot.next_element().await;
    assert_eq!(pong.attr("type"), Some("result"), "{pong:?}");
    assert_eq!(pong.attr("to"), Some("bot.localhost"));
    bot.send_str("<iq type='get' id='r1' from='bot.localhost' to='localhost'><query xmlns='jabber:iq:roster'/></iq>").await;
    let refused = bot.next_element().await;
    assert_eq!(refused.attr("type"), Some("error"));
    bot.send_str("<message from='echo@bot.localhost' to='a@@b'><body>x</body></message>")
        .await;
    let malformed = bot.next_element().await;
    assert_eq!(malformed.attr("type"), Some("error"));
    assert!(
        format!("{malformed:?}").contains("jid-malformed"),
        "{malformed:?}"
    );

    // An IQ to a user's full JID and its result travel through too.
    bot.send_str("<iq type='get' id='v1' from='echo@bot.localhost' to='alice@localhost/phone'><query xmlns='jabber:iq:version'/></iq>").await;
    let iq = alice.next_named("iq").await;
    assert_eq!(iq.attr("from"), Some("echo@bot.localhost"));
    alice
        .send_str("<iq type='result' id='v1' to='echo@bot.localhost'/>")
        .await;
    let result = bot.next_element().await;
    assert!(result.is("iq", NS_COMPONENT));
    assert_eq!(result.attr("type"), Some("result"));

    // A message to an offline user waits in storage like any other.
    ts.add_user("bob", "pw").await;
    bot.send_str("<message from='echo@bot.localhost' to='bob@localhost' type='chat'><body>later</body></message>").await;
    let mut bob = Client::login(ts.plain_addr, "bob", "pw", None).await;
    let stored = bob.next_named("message").await;
    assert_eq!(stored.attr("from"), Some("echo@bot.localhost"));

    // The server lists its components.
    let items = alice
        .iq("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>", "d1")
        .await;
    let listed = format!("{items:?}");
    assert!(
        listed.contains(BOT) && listed.contains(IDLE_BOT),
        "{listed}"
    );
}

#[tokio::test]
async fn foreign_from_ends_the_component_stream() {
    let ts = start().await;
    let mut bot = component(&ts).await;
    bot.send_str(
        "<message from='alice@localhost' to='alice@localhost'><body>spoof</body></message>",
    )
    .await;
    assert_eq!(bot.expect_stream_error().await, "invalid-from");

    let mut bot = component(&ts).await;
    bot.send_str("<message to='alice@localhost'><body>no from</body></message>")
        .await;
    assert_eq!(bot.expect_stream_error().await, "invalid-from");
}

#[tokio::test]
async fn disconnected_component_is_service_unavailable() {
    let ts = start().await;
    let mut alice = Client::login(ts.plain_addr, "alice", "pw", None).await;
    alice.next_named("presence").await;
    alice
        .send_str(&format!(
            "<message to='x@{IDLE_BOT}' id='m2'><body>anyone?</body></message>"
        ))
        .await;
    let err = alice.next_named("message").await;
    assert_eq!(stanza_error(&err).as_deref(), Some("service-unavailable"));
    let ping = alice
        .iq(
            &format!("<iq type='get' id='p2' to='{IDLE_BOT}'><ping xmlns='urn:xmpp:ping'/></iq>"),
            "p2",
        )
        .await;
    assert_eq!(stanza_error(&ping).as_deref(), Some("service-unavailable"));
}

#[tokio::test]
async fn second_connection_is_refused_and_the_first_keeps_working() {
    let ts = start().await;
    let mut first = component(&ts).await;
    let mut second = Client::connect(component_addr(&ts)).await;
    let id = open(&mut second, BOT).await;
    second
        .send_str(&format!(
            "<handshake>{}</handshake>",
            handshake_digest(&id, SECRET)
        ))
        .await;
    assert_eq!(second.expect_stream_error().await, "conflict");

    let mut alice = Client::login(ts.plain_addr, "alice", "pw", None).await;
    alice.next_named("presence").await;
    alice
        .send_str("<message to='bot.localhost'><body>still there?</body></message>")
        .await;
    let m = first.next_element().await;
    assert_eq!(m.attr("to"), Some(BOT));

    // Once the first leaves, the domain is free again.
    first.send_str("</stream:stream>").await;
    first.expect_closed().await;
    let mut tries = 0;
    loop {
        let mut again = Client::connect(component_addr(&ts)).await;
        let id = open(&mut again, BOT).await;
        again
            .send_str(&format!(
                "<handshake>{}</handshake>",
                handshake_digest(&id, SECRET)
            ))
            .await;
        let answer = again.next_event().await;
        if matches!(&answer, Some(StreamEvent::Stanza(e)) if e.is("handshake", NS_COMPONENT)) {
            break;
        }
        tries += 1;
        assert!(tries < 50, "domain never freed: {answer:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
