//! A feature plugs in with one value and one registration: this file
//! defines a tiny one (a disco feature, two event subscriptions, its own
//! state reached by type) and hands it to `Server::with_features`. Nothing
//! else in the server knows it, yet clients see it over a real socket.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use waxwing::feature::{verdict, Disco, Event, EventKind, Feature, HookFuture, Verdict};
use waxwing::server::Server;

const NS_PLUGIN: &str = "urn:example:plugin";
const NS_INFO: &str = "http://jabber.org/protocol/disco#info";

/// Counts bound resources and messages sent by local users.
#[derive(Default)]
struct Counter {
    bound: AtomicUsize,
    sent: AtomicUsize,
}

impl Feature for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &[NS_PLUGIN],
            account: &[],
        }
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[(EventKind::SessionBound, 0), (EventKind::MessageSent, 0)]
    }

    fn on_event<'a>(&'a self, _server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        match event {
            Event::SessionBound { .. } => self.bound.fetch_add(1, Ordering::SeqCst),
            Event::MessageSent { .. } => self.sent.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
        verdict(Verdict::Continue)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn counter(ts: &TestServer) -> &Counter {
    ts.server().features.get::<Counter>().expect("registered")
}

#[tokio::test]
async fn a_feature_defined_here_is_served() {
    let ts = TestServer::start_with_features(|_| {}, vec![Arc::new(Counter::default())]).await;
    ts.add_user("alice", "pw").await;
    ts.add_user("bob", "pw").await;
    let mut alice = Client::login(ts.plain_addr, "alice", "pw", Some("a")).await;
    let mut bob = Client::login(ts.plain_addr, "bob", "pw", Some("b")).await;
    // Fired once the bind result is written.
    eventually("two resources bound", || async {
        counter(&ts).bound.load(Ordering::SeqCst) == 2
    })
    .await;

    // Its disco feature, beside the built-in ones.
    let info = alice
        .iq(
            &format!("<iq type='get' id='d' to='localhost'><query xmlns='{NS_INFO}'/></iq>"),
            "d",
        )
        .await;
    let q = info.get_child("query", NS_INFO).expect("disco#info");
    let vars: Vec<&str> = q.children().filter_map(|f| f.attr("var")).collect();
    assert!(vars.contains(&NS_PLUGIN), "{vars:?}");
    assert!(vars.contains(&"urn:xmpp:carbons:2"), "{vars:?}");

    // Its event: two messages sent, to an online and an offline user.
    alice
        .send_str("<message type='chat' to='bob@localhost'><body>1</body></message>")
        .await;
    alice
        .send_str("<message type='chat' to='nobody@localhost'><body>2</body></message>")
        .await;
    alice.barrier().await;
    let m = bob.next_named("message").await;
    assert_eq!(
        m.get_child("body", waxwing::xml::NS_CLIENT).unwrap().text(),
        "1"
    );
    assert_eq!(counter(&ts).sent.load(Ordering::SeqCst), 1);

    // The server's capabilities hash covers it too (XEP-0115).
    let mut c = Client::connect(ts.plain_addr).await;
    let features = c.starttls().await;
    let ver = features
        .get_child("c", "http://jabber.org/protocol/caps")
        .and_then(|c| c.attr("ver"))
        .expect("caps");
    assert_eq!(ver, waxwing::modules::caps::verification_string(q));
}
