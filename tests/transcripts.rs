//! Transcript tests: a scripted client says exactly X and expects exactly Y,
//! element by element, with nothing else in between.
//!
//! A script is one step a line:
//!
//! ```text
//! # a comment
//! C: <iq type='get' id='p'>…</iq>     the client sends this text as is
//! S: <iq type='result' id='p'/>       the next element from the server is this one
//! S: header                           the next event is a stream header
//! S: end                              the server closes the stream (</stream:stream>)
//! ```
//!
//! An `S:` element matches when name, namespace, attributes (the same set;
//! a value of `*` matches any value), text and children (in order, the same
//! rules) are equal; whitespace-only text is ignored. Logged-in scripts end
//! with a barrier: anything the script did not expect fails the test.

mod common;

use common::*;
use waxwing::xml::{Element, Node, ParserLimits, StreamEvent, StreamParser};

/// One step of a script.
enum Step {
    Send(String),
    Element(Element),
    Header,
    End,
}

/// Parses a script; panics on a line it does not understand (a typo in a
/// test must not become a step that is silently skipped).
fn parse_script(script: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for line in script.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(xml) = line.strip_prefix("C: ") {
            steps.push(Step::Send(xml.to_string()));
        } else if let Some(what) = line.strip_prefix("S: ") {
            steps.push(match what {
                "header" => Step::Header,
                "end" => Step::End,
                xml => Step::Element(parse_expected(xml)),
            });
        } else {
            panic!("script line not understood: {line:?}");
        }
    }
    steps
}

/// An expected element, written as the server would send it on a c2s
/// stream (default namespace `jabber:client`, `stream:` prefix bound).
fn parse_expected(xml: &str) -> Element {
    let mut parser = StreamParser::new(ParserLimits::default());
    parser.feed(
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
    );
    parser.feed(xml.as_bytes());
    loop {
        match parser.next_event() {
            Ok(Some(StreamEvent::Header(_))) => continue,
            Ok(Some(StreamEvent::Stanza(e))) => return e,
            other => panic!("expected element in the script does not parse: {xml}: {other:?}"),
        }
    }
}

/// Why `got` is not `want`, or None when it matches.
fn mismatch(want: &Element, got: &Element) -> Option<String> {
    if want.name() != got.name() || want.ns() != got.ns() {
        return Some(format!(
            "element {{{}}}{} instead of {{{}}}{}",
            got.ns(),
            got.name(),
            want.ns(),
            want.name()
        ));
    }
    let mut want_attrs: Vec<_> = want.attrs().collect();
    let mut got_attrs: Vec<_> = got.attrs().collect();
    want_attrs.sort();
    got_attrs.sort();
    let same_attrs = want_attrs.len() == got_attrs.len()
        && want_attrs
            .iter()
            .zip(&got_attrs)
            .all(|((wk, wv), (gk, gv))| wk == gk && (*wv == "*" || wv == gv));
    if !same_attrs {
        return Some(format!(
            "<{}> attributes {got_attrs:?} instead of {want_attrs:?}",
            got.name()
        ));
    }
    let text = |e: &Element| -> String {
        e.nodes()
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect::<String>()
            .trim()
            .to_string()
    };
    if text(want) != text(got) {
        return Some(format!(
            "<{}> text {:?} instead of {:?}",
            got.name(),
            text(got),
            text(want)
        ));
    }
    let want_children: Vec<_> = want.children().collect();
    let got_children: Vec<_> = got.children().collect();
    if want_children.len() != got_children.len() {
        return Some(format!(
            "<{}> has {} children instead of {}",
            got.name(),
            got_children.len(),
            want_children.len()
        ));
    }
    want_children
        .iter()
        .zip(&got_children)
        .find_map(|(w, g)| mismatch(w, g))
}

/// Plays `script` on `client`; each `S:` step must be the very next thing
/// the server sends.
async fn play(client: &mut Client, script: &str) {
    for (n, step) in parse_script(script).into_iter().enumerate() {
        match step {
            Step::Send(xml) => client.send_str(&xml).await,
            Step::Header => match client.next_event().await {
                Some(StreamEvent::Header(_)) => {}
                other => panic!("step {n}: expected a stream header, got {other:?}"),
            },
            Step::End => match client.next_event().await {
                Some(StreamEvent::End) => client.expect_closed().await,
                other => panic!("step {n}: expected the end of the stream, got {other:?}"),
            },
            Step::Element(want) => {
                let got = match client.next_event().await {
                    Some(StreamEvent::Stanza(e)) => e,
                    other => panic!("step {n}: expected {}, got {other:?}", show(&want)),
                };
                if let Some(why) = mismatch(&want, &got) {
                    panic!(
                        "step {n}: {why}\n  want: {}\n  got:  {}",
                        show(&want),
                        show(&got)
                    );
                }
            }
        }
    }
}

/// A logged-in session (no presence sent) on a fresh server with `users`.
async fn session(users: &[&str], user: &str) -> (TestServer, Client) {
    let server = TestServer::start().await;
    for u in users {
        server.add_user(u, "pw").await;
    }
    let client = Client::login_without_presence(server.plain_addr, user, "pw", Some("t")).await;
    (server, client)
}

/// Plays a script on a logged-in session, then checks with a barrier that
/// nothing followed the last expected element.
async fn play_logged_in(client: &mut Client, script: &str) {
    play(client, script).await;
    let mark = client.mark();
    client.expect_nothing(mark).await;
}

#[tokio::test]
async fn plain_stream_offers_only_starttls_and_refuses_stanzas() {
    let server = TestServer::start().await;
    let mut c = Client::connect(server.plain_addr).await;
    play(
        &mut c,
        "
        C: <?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>
        S: header
        S: <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>
        # RFC 6120 §4.9.3.12: no stanza before the stream is authenticated.
        C: <message to='someone@localhost'><body>hi</body></message>
        S: <stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>
        S: end
        ",
    )
    .await;
}

#[tokio::test]
async fn ping_unknown_iq_and_empty_roster() {
    let (_server, mut c) = session(&["tom"], "tom").await;
    play_logged_in(
        &mut c,
        "
        C: <iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>
        S: <iq type='result' id='p1' from='localhost' to='tom@localhost/t'/>
        # A namespace nobody serves: service-unavailable (RFC 6120 §8.4),
        # without the request's payload (§8.3.1 makes echoing it optional).
        C: <iq type='get' id='u1' to='localhost'><query xmlns='urn:example:nothing'/></iq>
        S: <iq type='error' id='u1' from='localhost' to='tom@localhost/t'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>
        C: <iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>
        S: <iq type='result' id='r1' to='tom@localhost/t'><query xmlns='jabber:iq:roster' ver='*'/></iq>
        ",
    )
    .await;
}

#[tokio::test]
async fn message_to_own_resource_and_to_nobody() {
    let (_server, mut c) = session(&["una"], "una").await;
    play_logged_in(
        &mut c,
        "
        C: <message to='una@localhost/t' type='chat' id='m1'><body>note to self</body></message>
        # Archived (XEP-0313), so it carries the archive's id (XEP-0359).
        S: <message to='una@localhost/t' type='chat' id='m1' from='una@localhost/t'><body>note to self</body><stanza-id xmlns='urn:xmpp:sid:0' by='una@localhost' id='*'/></message>
        # No such user: the message comes back as an error (RFC 6121 §8.5.2.2.1).
        C: <message to='nobody@localhost' type='chat' id='m2'><body>hello?</body></message>
        S: <message to='una@localhost/t' type='error' id='m2' from='nobody@localhost'><body>hello?</body><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>
        ",
    )
    .await;
}

#[tokio::test]
async fn forged_from_ends_the_stream_with_invalid_from() {
    let (_server, mut c) = session(&["vic"], "vic").await;
    play(
        &mut c,
        "
        C: <message from='admin@localhost/x' to='vic@localhost/t'><body>forged</body></message>
        S: <stream:error><invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>
        S: end
        ",
    )
    .await;
}
