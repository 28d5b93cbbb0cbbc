//! Push notifications (XEP-0357) over real sockets: an external component
//! (XEP-0114) plays the app server. A user registers it, goes away (its
//! session waiting for stream-management resumption, or no session at
//! all), a contact writes, and the component gets the publish with the
//! count and the sender (no body unless configured). An error answer
//! removes the registration; pushes are rate-limited and coalesced;
//! `disable` stops them; bad input gets the right errors; secrets never
//! reach the log. On SQLite files and on PostgreSQL; and across s2s to an
//! app server on another domain.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use waxwing::config::{ComponentConfig, Config, HostConfig};
use waxwing::modules::stream_management::StreamManagementFeature;
use waxwing::stream::component::NS_COMPONENT;
use waxwing::xml::Element;

const APP: &str = "push.localhost";
const APP2: &str = "push2.localhost";
const APP_SECRET: &str = "app-secret";
const NS_PUSH: &str = "urn:xmpp:push:0";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_DATA: &str = "jabber:x:data";
const NS_INFO: &str = "http://jabber.org/protocol/disco#info";
/// The app server's secret, as a client hands it over in publish options.
const OPTION_SECRET: &str = "eruio234vzxc2kla-91";

/// Every log line the server writes in this test process, at every level.
fn captured_log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        // One per process: with nextest each test has its own.
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A server with two app-server components, `tweak` applied.
async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
    captured_log();
    TestServer::start_with(|c| {
        c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
        for domain in [APP, APP2] {
            c.component.push(ComponentConfig {
                domain: domain.into(),
                secret: APP_SECRET.into(),
            });
        }
        c.push.min_interval = 0;
        tweak(c);
    })
    .await
}

/// Accounts unique to this run (PostgreSQL is shared between runs).
struct Names {
    user: String,
    contact: String,
}

async fn accounts(ts: &TestServer) -> Names {
    let n = std::process::id();
    let names = Names {
        user: format!("pushu{n}"),
        contact: format!("pushc{n}"),
    };
    ts.add_user(&names.user, "pw").await;
    ts.add_user(&names.contact, "pw").await;
    names
}

async fn app_server(ts: &TestServer, domain: &str) -> Client {
    let addr = ts.running.as_ref().unwrap().component_addrs[0];
    Client::component(addr, domain, APP_SECRET).await
}

/// Sends `<enable/>` (with the publish-options form when `secret`) and
/// returns the answer.
async fn enable(c: &mut Client, service: &str, node: &str, secret: Option<&str>) -> Element {
    let form = secret
        .map(|s| {
            format!(
                "<x xmlns='{NS_DATA}' type='submit'>\
                 <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
                 <field var='secret'><value>{s}</value></field></x>"
            )
        })
        .unwrap_or_default();
    let id = format!("en-{service}-{node}");
    c.iq(
        &format!(
            "<iq type='set' id='{id}'><enable xmlns='{NS_PUSH}' jid='{service}' node='{node}'>{form}</enable></iq>"
        ),
        &id,
    )
    .await
}

async fn disable(c: &mut Client, service: &str, node: Option<&str>) -> Element {
    let node = node.map(|n| format!(" node='{n}'")).unwrap_or_default();
    c.iq(
        &format!("<iq type='set' id='dis'><disable xmlns='{NS_PUSH}' jid='{service}'{node}/></iq>"),
        "dis",
    )
    .await
}

/// Logs in with resumable stream management enabled.
async fn sm_login(ts: &TestServer, user: &str) -> Client {
    let mut c = Client::login(ts.plain_addr, user, "pw", Some("phone")).await;
    c.send_str("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = c.next_named("enabled").await;
    assert_eq!(enabled.attr("resume"), Some("true"), "{}", show(&enabled));
    c
}

/// Drops the client's socket and waits until its session is parked.
async fn drop_and_park(ts: &TestServer, c: Client) {
    drop(c);
    let sm = ts
        .server()
        .features
        .get::<StreamManagementFeature>()
        .unwrap();
    eventually("the session waits for resumption", || async {
        sm.parked() == 1
    })
    .await;
}

/// Ends the client's stream and waits until no resource of `user` is bound.
async fn go_offline(ts: &TestServer, mut c: Client, user: &str) {
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

async fn chat(from: &mut Client, to: &str, body: &str) {
    from.send_str(&format!(
        "<message to='{to}@localhost' type='chat'><body>{body}</body></message>"
    ))
    .await;
}

/// The next publish the app server receives.
async fn next_publish(app: &mut Client) -> Element {
    loop {
        let e = app.next_element().await;
        if e.is("iq", NS_COMPONENT) && e.attr("type") == Some("set") {
            return e;
        }
    }
}

/// The publish's node and its summary form's fields.
fn summary(iq: &Element) -> (String, HashMap<String, String>) {
    let publish = iq
        .get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("publish", NS_PUBSUB))
        .unwrap_or_else(|| panic!("no publish: {}", show(iq)));
    let form = publish
        .get_child("item", NS_PUBSUB)
        .and_then(|i| i.get_child("notification", NS_PUSH))
        .and_then(|n| n.get_child("x", NS_DATA))
        .unwrap_or_else(|| panic!("no notification form: {}", show(iq)));
    assert_eq!(form.attr("type"), Some("form"));
    let fields = form
        .children()
        .filter(|f| f.is("field", NS_DATA))
        .map(|f| {
            let v = f.get_child("value", NS_DATA).map(|v| v.text());
            (f.attr("var").unwrap().to_string(), v.unwrap_or_default())
        })
        .collect();
    (publish.attr("node").unwrap().to_string(), fields)
}

/// The publish-options fields of a publish.
fn publish_options(iq: &Element) -> HashMap<String, String> {
    iq.get_child("pubsub", NS_PUBSUB)
        .and_then(|p| p.get_child("publish-options", NS_PUBSUB))
        .and_then(|o| o.get_child("x", NS_DATA))
        .map(|x| {
            x.children()
                .map(|f| {
                    let v = f.get_child("value", NS_DATA).map(|v| v.text());
                    (
                        f.attr("var").unwrap_or("").to_string(),
                        v.unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The app server answers a publish: a result, or an error `condition`
/// of `kind`.
async fn answer(app: &mut Client, iq: &Element, error: Option<(&str, &str)>) {
    let (id, to, from) = (
        iq.attr("id").unwrap(),
        iq.attr("from").unwrap(),
        iq.attr("to").unwrap(),
    );
    let reply = match error {
        None => format!("<iq type='result' id='{id}' from='{from}' to='{to}'/>"),
        Some((kind, cond)) => format!(
            "<iq type='error' id='{id}' from='{from}' to='{to}'><error type='{kind}'>\
             <{cond} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        ),
    };
    app.send_str(&reply).await;
}

/// Round trip from the component to the server: anything the server
/// queued for it before answering has arrived by the time the answer does.
async fn app_barrier(app: &mut Client, domain: &str) -> Vec<Element> {
    app.send_str(&format!(
        "<iq type='get' id='app-barrier' from='{domain}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let mut before = Vec::new();
    loop {
        let e = app.next_element().await;
        if e.attr("id") == Some("app-barrier") {
            return before;
        }
        before.push(e);
    }
}

async fn registrations(ts: &TestServer, user: &str) -> Vec<(String, String)> {
    ts.store()
        .push_registrations("localhost", user)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.service, r.node))
        .collect()
}

/// The user's sessions all wait for resumption: a message pushes to every
/// registration; one app server answers with an error and loses its
/// registration, the other keeps getting notifications.
async fn parked_session_pushes(ts: TestServer) {
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut user = sm_login(&ts, &n.user).await;

    // Advertised on the account (§4.1).
    let info = user
        .iq(
            &format!(
                "<iq type='get' id='d1' to='{}@localhost'><query xmlns='{NS_INFO}'/></iq>",
                n.user
            ),
            "d1",
        )
        .await;
    let q = info.get_child("query", NS_INFO).unwrap();
    assert!(
        q.children().any(|f| f.attr("var") == Some(NS_PUSH)),
        "{}",
        show(&info)
    );

    for node in ["node-a", "node-b"] {
        let r = enable(&mut user, APP, node, Some(OPTION_SECRET)).await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    }
    drop_and_park(&ts, user).await;

    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    chat(&mut contact, &n.user, "the body is private").await;
    let mut by_node = HashMap::new();
    for _ in 0..2 {
        let iq = next_publish(&mut app).await;
        assert_eq!(iq.attr("from"), Some("localhost"));
        assert_eq!(iq.attr("to"), Some(APP));
        let (node, fields) = summary(&iq);
        assert_eq!(fields["FORM_TYPE"], "urn:xmpp:push:summary");
        assert_eq!(fields["message-count"], "1");
        assert_eq!(
            fields["last-message-sender"],
            format!("{}@localhost/desk", n.contact)
        );
        assert!(!fields.contains_key("last-message-body"), "{}", show(&iq));
        assert_eq!(publish_options(&iq)["secret"], OPTION_SECRET);
        by_node.insert(node, iq);
    }
    answer(
        &mut app,
        &by_node["node-a"],
        Some(("cancel", "item-not-found")),
    )
    .await;
    answer(&mut app, &by_node["node-b"], None).await;
    eventually("node-a is unregistered", || async {
        registrations(&ts, &n.user).await == vec![(APP.to_string(), "node-b".to_string())]
    })
    .await;

    // The next message goes to node-b only (node-a would come first: the
    // round sends in node order).
    chat(&mut contact, &n.user, "again").await;
    let iq = next_publish(&mut app).await;
    let (node, fields) = summary(&iq);
    assert_eq!(node, "node-b");
    assert_eq!(fields["message-count"], "2", "unread since the user left");
    answer(&mut app, &iq, None).await;
    let late = app_barrier(&mut app, APP).await;
    assert!(
        late.is_empty(),
        "{:?}",
        late.iter().map(show).collect::<Vec<_>>()
    );
    let push = ts
        .server()
        .features
        .get::<waxwing::modules::push::Push>()
        .unwrap();
    eventually("two answered publishes to node-b", || async {
        push.publisher().published() == 2
    })
    .await;
    // What an operator sees (`waxwing ctl stats`).
    let stats: HashMap<String, String> = waxwing::admin::request(&ts.admin_socket(), "stats")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(stats["push_published"], "2");
    assert_eq!(stats["push_failed"], "1");
    assert_eq!(stats["push_registrations_removed"], "1");
    assert_eq!(stats["push_dropped"], "0");
}

#[tokio::test]
async fn parked_session_pushes_on_sqlite() {
    parked_session_pushes(start(|_| {}).await).await;
}

#[tokio::test]
async fn parked_session_pushes_on_postgres() {
    parked_session_pushes(start(|c| c.database.url = postgres_url()).await).await;
}

/// Messages written to a connection that was lost before the client
/// acknowledged them count as unseen when the session is parked: a phone
/// out of coverage looks connected until a write fails.
#[tokio::test]
async fn unacknowledged_messages_push_when_the_session_parks() {
    let ts = start(|_| {}).await;
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut user = sm_login(&ts, &n.user).await;
    enable(&mut user, APP, "n", None).await;
    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    for body in ["one", "two"] {
        chat(&mut contact, &n.user, body).await;
        let m = user.next_named("message").await;
        assert_eq!(
            m.get_child("body", waxwing::xml::NS_CLIENT).unwrap().text(),
            body
        );
    }
    // Written, never acknowledged; nothing pushed while attached.
    let early = app_barrier(&mut app, APP).await;
    assert!(
        early.is_empty(),
        "{:?}",
        early.iter().map(show).collect::<Vec<_>>()
    );
    drop_and_park(&ts, user).await;
    let iq = next_publish(&mut app).await;
    let fields = summary(&iq).1;
    assert_eq!(fields["message-count"], "2", "{}", show(&iq));
    assert_eq!(
        fields["last-message-sender"],
        format!("{}@localhost/desk", n.contact)
    );
}

/// No session at all: the message is stored offline (the push does not
/// stop it) and pushed.
async fn offline_user_pushes(ts: TestServer) {
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    let r = enable(&mut user, APP, "off", None).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    go_offline(&ts, user, &n.user).await;

    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    chat(&mut contact, &n.user, "while you were out").await;
    let iq = next_publish(&mut app).await;
    let (node, fields) = summary(&iq);
    assert_eq!(node, "off");
    assert_eq!(fields["message-count"], "1");
    assert!(publish_options(&iq).is_empty());
    answer(&mut app, &iq, None).await;
    // The push ran beside offline storage, which still keeps the message.
    eventually("the message is kept offline", || async {
        ts.store()
            .offline_count("localhost", &n.user)
            .await
            .unwrap()
            == 1
    })
    .await;

    // Chat states alone wake nobody.
    contact
        .send_str(&format!(
            "<message to='{}@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>",
            n.user
        ))
        .await;
    contact.barrier().await;
    let late = app_barrier(&mut app, APP).await;
    assert!(
        late.is_empty(),
        "{:?}",
        late.iter().map(show).collect::<Vec<_>>()
    );

    // Back online: the count starts over.
    let user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    go_offline(&ts, user, &n.user).await;
    chat(&mut contact, &n.user, "once more").await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq).1["message-count"], "1");
}

#[tokio::test]
async fn offline_user_pushes_on_sqlite() {
    offline_user_pushes(start(|_| {}).await).await;
}

#[tokio::test]
async fn offline_user_pushes_on_postgres() {
    offline_user_pushes(start(|c| c.database.url = postgres_url()).await).await;
}

/// A subscription request for a user with no connected client is worth a
/// notification too, counted apart from messages.
#[tokio::test]
async fn subscription_request_pushes() {
    let ts = start(|_| {}).await;
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    enable(&mut user, APP, "n", None).await;
    go_offline(&ts, user, &n.user).await;
    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    contact
        .send_str(&format!(
            "<presence type='subscribe' to='{}@localhost'/>",
            n.user
        ))
        .await;
    let iq = next_publish(&mut app).await;
    let fields = summary(&iq).1;
    assert_eq!(fields["pending-subscription-count"], "1", "{}", show(&iq));
    assert_eq!(fields["message-count"], "0");
    assert!(!fields.contains_key("last-message-sender"));
}

/// Within `min_interval` of a push, further messages wait and go out as
/// one notification counting them all.
#[tokio::test]
async fn pushes_within_the_interval_are_coalesced() {
    let ts = start(|c| c.push.min_interval = 2).await;
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    enable(&mut user, APP, "n", None).await;
    go_offline(&ts, user, &n.user).await;
    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    chat(&mut contact, &n.user, "one").await;
    let first = next_publish(&mut app).await;
    assert_eq!(summary(&first).1["message-count"], "1");
    answer(&mut app, &first, None).await;
    for body in ["two", "three", "four"] {
        chat(&mut contact, &n.user, body).await;
    }
    contact.barrier().await;
    // The next publish waits for the interval, then counts all four.
    let second = next_publish(&mut app).await;
    assert_eq!(summary(&second).1["message-count"], "4");
}

/// `include_body` sends the body, cut to `max_body_bytes`.
#[tokio::test]
async fn body_only_when_configured() {
    let ts = start(|c| {
        c.push.include_body = true;
        c.push.max_body_bytes = 5;
    })
    .await;
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    enable(&mut user, APP, "n", None).await;
    go_offline(&ts, user, &n.user).await;
    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    chat(&mut contact, &n.user, "hello world").await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq).1["last-message-body"], "hello");
}

/// `disable` with a node removes that registration; without, every one of
/// the service (§6); other services keep theirs.
#[tokio::test]
async fn disable_stops_pushes() {
    let ts = start(|_| {}).await;
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut app2 = app_server(&ts, APP2).await;
    let mut user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    for (service, node) in [(APP, "a"), (APP, "b"), (APP2, "c")] {
        let r = enable(&mut user, service, node, None).await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    }
    let r = disable(&mut user, APP, Some("a")).await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(
        registrations(&ts, &n.user).await,
        vec![
            (APP.to_string(), "b".to_string()),
            (APP2.to_string(), "c".to_string())
        ]
    );
    let r = disable(&mut user, APP, None).await;
    assert_eq!(r.attr("type"), Some("result"));
    assert_eq!(
        registrations(&ts, &n.user).await,
        vec![(APP2.to_string(), "c".to_string())]
    );
    go_offline(&ts, user, &n.user).await;
    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    chat(&mut contact, &n.user, "hi").await;
    // The round reached the remaining service; the disabled one got nothing
    // (both were queued at once, so a barrier on it after shows it).
    let iq = next_publish(&mut app2).await;
    assert_eq!(summary(&iq).0, "c");
    let late = app_barrier(&mut app, APP).await;
    assert!(
        late.is_empty(),
        "{:?}",
        late.iter().map(show).collect::<Vec<_>>()
    );
}

/// Bad requests, the per-account limit, other accounts, and account
/// deletion.
#[tokio::test]
async fn bad_input_and_limits() {
    let ts = start(|c| {
        c.push.max_registrations = 2;
        c.push.max_node_length = 16;
        c.push.max_options_bytes = 400;
    })
    .await;
    let n = accounts(&ts).await;
    let mut user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    let mut send = async |xml: &str| {
        let iq = format!("<iq type='set' id='b'>{xml}</iq>");
        user.iq(&iq, "b").await
    };
    let cases = [
        (format!("<enable xmlns='{NS_PUSH}' node='n'/>"), "bad-request"),
        (format!("<enable xmlns='{NS_PUSH}' jid='a@@b' node='n'/>"), "jid-malformed"),
        (format!("<enable xmlns='{NS_PUSH}' jid='{APP}'/>"), "bad-request"),
        (
            format!("<enable xmlns='{NS_PUSH}' jid='{APP}' node='{}'/>", "n".repeat(17)),
            "not-acceptable",
        ),
        (
            format!(
                "<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'><x xmlns='{NS_DATA}' type='submit'>\
                 <field var='FORM_TYPE'><value>urn:example:other</value></field></x></enable>"
            ),
            "bad-request",
        ),
        (
            format!(
                "<enable xmlns='{NS_PUSH}' jid='{APP}' node='n'><x xmlns='{NS_DATA}' type='submit'>\
                 <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
                 <field var='secret'><value>{}</value></field></x></enable>",
                "s".repeat(400)
            ),
            "not-acceptable",
        ),
        (format!("<disable xmlns='{NS_PUSH}'/>"), "bad-request"),
        // Not an account here, nor the server itself.
        (
            format!("<enable xmlns='{NS_PUSH}' jid='{}@localhost/r' node='n'/>", n.contact),
            "not-acceptable",
        ),
        (format!("<enable xmlns='{NS_PUSH}' jid='localhost' node='n'/>"), "not-acceptable"),
        (format!("<other xmlns='{NS_PUSH}' jid='{APP}'/>"), "bad-request"),
    ];
    for (xml, cond) in &cases {
        let r = send(xml).await;
        assert_eq!(
            stanza_error(&r).as_deref(),
            Some(*cond),
            "{xml}: {}",
            show(&r)
        );
    }
    // A get is not how it is used.
    let r = user
        .iq(
            &format!("<iq type='get' id='g'><enable xmlns='{NS_PUSH}' jid='{APP}' node='n'/></iq>"),
            "g",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("bad-request"));
    // Another account's registrations are not ours to change.
    let r = user
        .iq(
            &format!(
                "<iq type='set' id='o' to='{}@localhost'><enable xmlns='{NS_PUSH}' jid='{APP}' node='n'/></iq>",
                n.contact
            ),
            "o",
        )
        .await;
    assert_eq!(stanza_error(&r).as_deref(), Some("forbidden"));
    assert!(registrations(&ts, &n.contact).await.is_empty());

    // Two registrations; a third is refused, enabling one again is not.
    for node in ["one", "two"] {
        let r = enable(&mut user, APP, node, None).await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    }
    let r = enable(&mut user, APP, "three", None).await;
    assert_eq!(stanza_error(&r).as_deref(), Some("resource-constraint"));
    let r = enable(&mut user, APP, "two", Some("new-secret")).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let regs = ts
        .store()
        .push_registrations("localhost", &n.user)
        .await
        .unwrap();
    assert_eq!(regs.len(), 2);
    assert!(regs[1].options.as_deref().unwrap().contains("new-secret"));

    // Deleting the account deletes its registrations.
    assert!(ts
        .store()
        .delete_account("localhost", &n.user)
        .await
        .unwrap());
    assert!(registrations(&ts, &n.user).await.is_empty());
}

/// Neither the node nor the publish options' secret is ever logged, at
/// any level, while registering, publishing, and losing the registration.
#[tokio::test]
async fn secrets_never_reach_the_log() {
    let ts = start(|_| {}).await;
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    let node = "node-that-is-secret";
    enable(&mut user, APP, node, Some(OPTION_SECRET)).await;
    go_offline(&ts, user, &n.user).await;
    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    chat(&mut contact, &n.user, "hi").await;
    let iq = next_publish(&mut app).await;
    answer(&mut app, &iq, Some(("auth", "not-authorized"))).await;
    let log = || String::from_utf8_lossy(&captured_log().lock().unwrap()).into_owned();
    // The removal is logged once the row is gone.
    eventually("the removal is logged", || async {
        log().contains("registration removed")
    })
    .await;
    let log = log();
    // The capture works: the events about it are there.
    assert!(log.contains("push notifications enabled"), "{log}");
    assert!(!log.contains(OPTION_SECRET), "{log}");
    assert!(!log.contains(node), "{log}");
}

/// Across s2s: the user is on b.test, the app server a component of
/// a.test's server; the publish and its error answer cross both ways.
#[tokio::test]
async fn push_crosses_s2s_to_a_remote_app_server() {
    const A: &str = "a.test";
    const B: &str = "b.test";
    const REMOTE_APP: &str = "push.a.test";
    captured_log();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cb) = (cert_dir(&certs, A), cert_dir(&certs, B));
    let (pa, pb) = (free_port(), free_port());
    let server =
        |domain: &'static str, port: u16, own: std::path::PathBuf, peer: std::path::PathBuf| {
            move |c: &mut Config| {
                c.host = vec![HostConfig {
                    domain: domain.into(),
                    cert: None,
                    key: None,
                    allow_registration: false,
                }];
                c.tls.dev_cert_dir = own;
                c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
                c.s2s.ca_file = peer.join("dev-cert.pem").display().to_string();
                c.s2s.connect_timeout = 2;
                c.push.min_interval = 0;
            }
        };
    let a_config = server(A, pa, ca.clone(), cb.clone());
    let a = TestServer::start_with(|c| {
        a_config(c);
        c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.component.push(ComponentConfig {
            domain: REMOTE_APP.into(),
            secret: APP_SECRET.into(),
        });
        c.s2s.hosts.insert(B.into(), format!("127.0.0.1:{pb}"));
    })
    .await;
    let b_config = server(B, pb, cb, ca);
    let b = TestServer::start_with(|c| {
        b_config(c);
        for d in [A, REMOTE_APP] {
            c.s2s.hosts.insert(d.into(), format!("127.0.0.1:{pa}"));
        }
    })
    .await;
    b.add_user_at(B, "user", "pw").await;
    b.add_user_at(B, "contact", "pw").await;
    let addr = a.running.as_ref().unwrap().component_addrs[0];
    let mut app = Client::component(addr, REMOTE_APP, APP_SECRET).await;

    let mut user = Client::login_at(b.plain_addr, B, "user", "pw", Some("phone")).await;
    let r = enable(&mut user, REMOTE_APP, "far", Some(OPTION_SECRET)).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    user.send_str("</stream:stream>").await;
    drop(user);
    eventually("user offline", || async {
        b.server().sessions.count() == 0
    })
    .await;

    let mut contact = Client::login_at(b.plain_addr, B, "contact", "pw", Some("desk")).await;
    contact
        .send_str("<message to='user@b.test' type='chat'><body>far away</body></message>")
        .await;
    let iq = next_publish(&mut app).await;
    assert_eq!(iq.attr("from"), Some(B));
    let (node, fields) = summary(&iq);
    assert_eq!(node, "far");
    assert_eq!(fields["last-message-sender"], "contact@b.test/desk");
    assert_eq!(publish_options(&iq)["secret"], OPTION_SECRET);
    // The error comes back over s2s to b.test's IQ tracker.
    answer(&mut app, &iq, Some(("cancel", "item-not-found"))).await;
    eventually("the registration on b.test is removed", || async {
        b.store()
            .push_registrations(B, "user")
            .await
            .unwrap()
            .is_empty()
    })
    .await;
}

/// Messages for accounts without registrations (or without an account at
/// all, as anyone may address) leave nothing behind in the publisher.
#[tokio::test]
async fn accounts_without_registrations_are_not_remembered() {
    let ts = start(|c| c.push.min_interval = 3600).await;
    let n = accounts(&ts).await;
    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    for to in [n.user.as_str(), "nobody1", "nobody2"] {
        chat(&mut contact, to, "hello?").await;
    }
    contact.barrier().await;
    let push = ts
        .server()
        .features
        .get::<waxwing::modules::push::Push>()
        .unwrap();
    eventually("nothing pending", || async {
        push.publisher().pending_accounts() == 0
    })
    .await;
}

/// Transient errors never remove a registration; with `max_errors = 2`
/// two refusals in a row do, one does not.
#[tokio::test]
async fn transient_errors_keep_the_registration() {
    let ts = start(|c| c.push.max_errors = 2).await;
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    enable(&mut user, APP, "n", None).await;
    go_offline(&ts, user, &n.user).await;
    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    let answers = [
        ("wait", "resource-constraint"),
        ("cancel", "remote-server-not-found"),
        ("cancel", "service-unavailable"),
        ("wait", "remote-server-timeout"),
        ("cancel", "service-unavailable"),
    ];
    for (i, (kind, cond)) in answers.iter().enumerate() {
        chat(&mut contact, &n.user, "hi").await;
        let iq = next_publish(&mut app).await;
        answer(&mut app, &iq, Some((kind, cond))).await;
        if i + 1 < answers.len() {
            // Kept: the next message is published to it again.
            continue;
        }
        eventually("the second refusal removes it", || async {
            registrations(&ts, &n.user).await.is_empty()
        })
        .await;
    }
}

/// A push follows what became of the message: one that offline storage
/// refuses (its quota is full; the sender gets an error) wakes nobody,
/// so the next notification still counts one message.
#[tokio::test]
async fn no_push_for_a_message_that_was_bounced() {
    let ts = start(|c| c.limits.max_offline_messages = 1).await;
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    let r = enable(&mut user, APP, "quota", None).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    go_offline(&ts, user, &n.user).await;

    let mut contact = Client::login(ts.plain_addr, &n.contact, "pw", Some("desk")).await;
    chat(&mut contact, &n.user, "kept").await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq).1["message-count"], "1");
    answer(&mut app, &iq, None).await;

    // The store is full: this one bounces.
    chat(&mut contact, &n.user, "bounced").await;
    let bounce = contact.next_named("message").await;
    assert_eq!(bounce.attr("type"), Some("error"), "{}", show(&bounce));
    assert_eq!(
        stanza_error(&bounce).as_deref(),
        Some("service-unavailable")
    );

    // Something else worth a push: its notification counts the one
    // message kept, not the bounced one, and it is the only publish.
    contact
        .send_str(&format!(
            "<presence type='subscribe' to='{}@localhost'/>",
            n.user
        ))
        .await;
    let iq = next_publish(&mut app).await;
    let fields = summary(&iq).1;
    assert_eq!(fields["pending-subscription-count"], "1", "{}", show(&iq));
    assert_eq!(fields["message-count"], "1", "{}", show(&iq));
    answer(&mut app, &iq, None).await;
    contact.barrier().await;
    let late = app_barrier(&mut app, APP).await;
    assert!(
        late.is_empty(),
        "{:?}",
        late.iter().map(show).collect::<Vec<_>>()
    );
}

// A component plays a remote room service (conference.localhost is the
// built-in MUC service now, so the component takes another name).
const ROOMS: &str = "rooms.localhost";

/// Group chat: a component plays the room and sends type='groupchat' to
/// the user's full JID. A session waiting for resumption, or a resource
/// that is gone (the room gets its error), pushes for a message with a
/// body; a subject alone does not.
#[tokio::test]
async fn group_chat_pushes() {
    let ts = start(|c| {
        c.component.push(ComponentConfig {
            domain: ROOMS.into(),
            secret: APP_SECRET.into(),
        })
    })
    .await;
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut room = app_server(&ts, ROOMS).await;
    let room_jid = format!("room@{ROOMS}");
    let groupchat = |to: &str, inner: &str| {
        format!(
            "<message from='{room_jid}/alice' to='{to}' type='groupchat' id='g'>{inner}</message>"
        )
    };

    // Parked: the message waits in the session's queue.
    let mut user = sm_login(&ts, &n.user).await;
    let r = enable(&mut user, APP, "muc", None).await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    drop_and_park(&ts, user).await;
    let full = format!("{}@localhost/phone", n.user);
    room.send_str(&groupchat(&full, "<body>hey @user</body>"))
        .await;
    let iq = next_publish(&mut app).await;
    let fields = summary(&iq).1;
    assert_eq!(fields["message-count"], "1", "{}", show(&iq));
    assert_eq!(fields["last-message-sender"], format!("{room_jid}/alice"));
    answer(&mut app, &iq, None).await;

    // A subject alone is no news; the next body is the second message.
    room.send_str(&groupchat(&full, "<subject>topic</subject>"))
        .await;
    room.send_str(&groupchat(&full, "<body>second</body>"))
        .await;
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq).1["message-count"], "2", "{}", show(&iq));
    answer(&mut app, &iq, None).await;

    // A resource that is gone: the room hears so, the phone is woken.
    let gone = format!("{}@localhost/laptop", n.user);
    room.send_str(&groupchat(&gone, "<body>third</body>")).await;
    let error = loop {
        let e = room.next_element().await;
        if e.name() == "message" {
            break e;
        }
    };
    assert_eq!(error.attr("type"), Some("error"), "{}", show(&error));
    let iq = next_publish(&mut app).await;
    assert_eq!(summary(&iq).1["message-count"], "3", "{}", show(&iq));
    answer(&mut app, &iq, None).await;
}

/// Remote disabling (XEP-0357 §8): the app server tells the user's bare
/// JID that the publish affiliation is gone (the XEP's `<pubsub/>` form,
/// or a pubsub#event affiliations change); the registration goes, but
/// only when the sender is the app server of that registration and the
/// node is its node. Such a message reaches no client; others do.
#[tokio::test]
async fn app_server_disables_a_registration() {
    let ts = start(|_| {}).await;
    let n = accounts(&ts).await;
    let mut app = app_server(&ts, APP).await;
    let mut app2 = app_server(&ts, APP2).await;
    let mut user = Client::login(ts.plain_addr, &n.user, "pw", Some("phone")).await;
    for (service, node) in [(APP, "n1"), (APP, "n3"), (APP2, "n2")] {
        let r = enable(&mut user, service, node, None).await;
        assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    }
    let bare = format!("{}@localhost", n.user);
    let xep_form = |from: &str, node: &str, jid: &str| {
        format!(
            "<message from='{from}' to='{bare}'><pubsub xmlns='{NS_PUBSUB}' node='{node}'>\
             <affiliation jid='{jid}' affiliation='none'/></pubsub></message>"
        )
    };
    let mark = user.mark();

    // Not the registration's app server, not its node, not the user: kept.
    app2.send_str(&xep_form(APP2, "n1", &bare)).await;
    app_barrier(&mut app2, APP2).await;
    app.send_str(&xep_form(APP, "n2", &bare)).await;
    app.send_str(&xep_form(APP, "n1", "someone@localhost"))
        .await;
    app_barrier(&mut app, APP).await;
    let all = vec![
        (APP.to_string(), "n1".to_string()),
        (APP.to_string(), "n3".to_string()),
        (APP2.to_string(), "n2".to_string()),
    ];
    assert_eq!(registrations(&ts, &n.user).await, all);

    // The app server of n1, for n1: gone.
    app.send_str(&xep_form(APP, "n1", &bare)).await;
    // The XEP-0060 notification form, for n3: gone too.
    app.send_str(&format!(
        "<message from='{APP}' to='{bare}'><event xmlns='{NS_PUBSUB}#event'>\
         <affiliations node='n3'><affiliation jid='{bare}' affiliation='none'/></affiliations>\
         </event></message>"
    ))
    .await;
    app_barrier(&mut app, APP).await;
    assert_eq!(
        registrations(&ts, &n.user).await,
        vec![(APP2.to_string(), "n2".to_string())]
    );

    // The user's client saw only the three that were not acted on.
    let from_app = |e: &Element, from: &str| {
        e.is("message", waxwing::xml::NS_CLIENT) && e.attr("from") == Some(from)
    };
    user.expect_only(
        mark,
        &[
            Expect("APP2's message", &|e| from_app(e, APP2)),
            Expect("APP's message for n2", &|e| from_app(e, APP)),
            Expect("APP's message for someone", &|e| from_app(e, APP)),
        ],
    )
    .await;
}
