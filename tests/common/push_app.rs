//! A push app server (XEP-0357) played by an external component
//! (XEP-0114), for tests of what wakes a phone: the server configuration
//! it needs, the user's `<enable/>`, and the publishes it receives.
//! (`tests/push.rs` has its own copies of these steps; they belong here.)

use std::collections::HashMap;

use waxwing::config::{ComponentConfig, Config};
use waxwing::stream::component::NS_COMPONENT;
use waxwing::xml::Element;

use super::{eventually, show, Client, TestServer};

pub const APP: &str = "push.localhost";
pub const APP_SECRET: &str = "app-secret";
pub const NS_PUSH: &str = "urn:xmpp:push:0";
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_DATA: &str = "jabber:x:data";

/// Adds the app server's component (and a listener for it) to `c`, and
/// publishes without waiting between notifications.
pub fn configure(c: &mut Config) {
    c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.component.push(ComponentConfig {
        domain: APP.into(),
        secret: APP_SECRET.into(),
    });
    c.push.min_interval = 0;
}

/// Connects the app server.
pub async fn connect(ts: &TestServer) -> Client {
    let addr = ts.running.as_ref().unwrap().component_addrs[0];
    Client::component(addr, APP, APP_SECRET).await
}

/// The user registers the app server with `node`; panics unless accepted.
pub async fn enable(c: &mut Client, node: &str) {
    let r = c
        .iq(
            &format!(
                "<iq type='set' id='enable'><enable xmlns='{NS_PUSH}' jid='{APP}' node='{node}'/></iq>"
            ),
            "enable",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
}

/// The next publish the app server receives, answered with a result:
/// its node and its summary form's fields.
pub async fn next_publish(app: &mut Client) -> (String, HashMap<String, String>) {
    let iq = loop {
        let e = app.next_element().await;
        if e.is("iq", NS_COMPONENT) && e.attr("type") == Some("set") {
            break e;
        }
    };
    let publish = iq
        .get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("publish", NS_PUBSUB))
        .unwrap_or_else(|| panic!("no publish: {}", show(&iq)));
    let form: &Element = publish
        .get_child("item", NS_PUBSUB)
        .and_then(|i| i.get_child("notification", NS_PUSH))
        .and_then(|n| n.get_child("x", NS_DATA))
        .unwrap_or_else(|| panic!("no notification form: {}", show(&iq)));
    let fields = form
        .children()
        .filter(|f| f.is("field", NS_DATA))
        .map(|f| {
            let v = f.get_child("value", NS_DATA).map(|v| v.text());
            (f.attr("var").unwrap().to_string(), v.unwrap_or_default())
        })
        .collect();
    // The answer goes back from the app server to the account's domain.
    let (id, server, app_jid) = (
        iq.attr("id").unwrap(),
        iq.attr("from").unwrap(),
        iq.attr("to").unwrap(),
    );
    app.send_str(&format!(
        "<iq type='result' id='{id}' from='{app_jid}' to='{server}'/>"
    ))
    .await;
    (publish.attr("node").unwrap().to_string(), fields)
}

/// Ends the client's stream and waits until `user` has no session left
/// (what push waits for before it wakes a phone).
pub async fn go_offline(ts: &TestServer, mut c: Client, user: &str) {
    c.send_str("</stream:stream>").await;
    drop(c);
    let prefix = format!("{user}@");
    eventually("the session ends", || async {
        !ts.server()
            .sessions
            .all()
            .iter()
            .any(|j| j.as_str().starts_with(&prefix))
    })
    .await;
}
