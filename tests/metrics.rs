//! `/metrics` over a real HTTP socket: the OpenMetrics text is parsed
//! (a small parser below, strict about the shape) and the counters are
//! checked to move by exactly what the test did — logins (SCRAM success,
//! PLAIN failure), a message exchange, a WebSocket session; the stored
//! counts are cached; the token mode refuses and accepts as it should;
//! and the Grafana dashboard only asks for metrics a live scrape exports.
//!
//! A non-loopback peer cannot be made on loopback (all of 127/8 is
//! loopback), so the loopback-only refusal is a unit test of
//! `web::metrics::decide`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "metrics-test-token-0123456789";

fn http_addr(ts: &TestServer) -> SocketAddr {
    ts.running.as_ref().unwrap().web.http[0]
}

/// One HTTP/1.1 exchange: status, headers (lower-case names), body.
struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

async fn get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> HttpResponse {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut raw))
        .await
        .expect("response within the timeout")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<HashMap<_, _>>();
    if let Some(len) = headers.get("content-length") {
        assert_eq!(body.len(), len.parse::<usize>().unwrap(), "whole body read");
    }
    HttpResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A parsed OpenMetrics exposition.
#[derive(Debug)]
struct Scrape {
    /// `name{k="v",…}` (labels sorted) → value.
    samples: BTreeMap<String, f64>,
    /// Family name → its TYPE.
    types: HashMap<String, String>,
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<_> = labels.to_vec();
    labels.sort();
    if labels.is_empty() {
        return name.to_string();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Parses the text format strictly: every line a comment we know, a
/// sample of a declared family, or the final `# EOF`.
fn parse(text: &str) -> Scrape {
    let mut samples = BTreeMap::new();
    let mut types = HashMap::new();
    let mut helped = HashSet::new();
    let mut saw_eof = false;
    for line in text.lines() {
        assert!(!saw_eof, "nothing after # EOF: {line}");
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP name text");
            helped.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "info"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        // name{labels} value  |  name value
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("number in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                (name, parse_labels(body))
            }
        };
        let family = family_of(name, &types);
        assert!(
            types.contains_key(family) && helped.contains(family),
            "sample {name} without TYPE and HELP for {family}"
        );
        assert!(name.starts_with("waxwing_"), "prefixed: {name}");
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let k = key(name, &labels);
        assert!(samples.insert(k.clone(), value).is_none(), "duplicate {k}");
    }
    assert!(saw_eof, "ends with # EOF");
    Scrape { samples, types }
}

/// `k="v",k2="v2"` with `\"`, `\\` and `\n` escapes.
fn parse_labels(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "quoted value in {body}");
        let mut value = String::new();
        loop {
            match chars.next().expect("closing quote") {
                '\\' => match chars.next().expect("escape") {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name, value));
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(c) => panic!("unexpected {c} in {body}"),
        }
    }
    out
}

/// The family a sample belongs to (the suffixes the text format adds).
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    if types.contains_key(name) {
        return name;
    }
    for suffix in ["_total", "_bucket", "_sum", "_count", "_info", "_created"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.contains_key(base) {
                return base;
            }
        }
    }
    name
}

impl Scrape {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let k = key(name, labels);
        *self
            .samples
            .get(&k)
            .unwrap_or_else(|| panic!("no sample {k} in {:#?}", self.samples.keys()))
    }

    fn has_family(&self, name: &str) -> bool {
        self.types.contains_key(name)
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let r = get(addr, "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    parse(&r.body)
}

async fn server(tweak: impl FnOnce(&mut waxwing::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
        tweak(c);
    })
    .await
}

const AUTH: &str = "waxwing_c2s_auth_total";
const STANZAS: &str = "waxwing_stanzas_total";

fn auth(s: &Scrape, mechanism: &str, result: &str) -> f64 {
    let labels = [
        ("profile", "sasl"),
        ("mechanism", mechanism),
        ("result", result),
    ];
    let k = key(AUTH, &labels);
    s.samples.get(&k).copied().unwrap_or(0.0)
}

fn stanzas(s: &Scrape, direction: &str, kind: &str) -> f64 {
    s.value(
        STANZAS,
        &[("direction", direction), ("stream", "c2s"), ("kind", kind)],
    )
}

#[tokio::test]
async fn logins_messages_and_sessions_move_the_counters_by_what_happened() {
    let ts = server(|_| {}).await;
    ts.add_user("alice", "pw-alice").await;
    ts.add_user("bob", "pw-bob").await;
    let addr = http_addr(&ts);
    let before = scrape(addr).await;
    assert_eq!(
        before.value("waxwing_c2s_sessions", &[("transport", "tcp")]),
        0.0
    );
    assert_eq!(
        before.value(
            "waxwing_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // Two SCRAM-SHA-256 logins and one PLAIN with a wrong password.
    let mut alice = Client::login(ts.plain_addr, "alice", "pw-alice", Some("a")).await;
    let mut bob = Client::login(ts.plain_addr, "bob", "pw-bob", Some("b")).await;
    let mut mallory = Client::connect(ts.plain_addr).await;
    mallory.starttls().await;
    let bad = b64(b"\0alice\0wrong");
    mallory
        .send_str(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{bad}</auth>"
        ))
        .await;
    let failure = mallory.next_element().await;
    assert!(failure.is("failure", NS_SASL), "{}", show(&failure));
    // Both sessions are through their presence before counting.
    alice.barrier().await;
    bob.barrier().await;

    let mid = scrape(addr).await;
    assert_eq!(
        auth(&mid, "SCRAM-SHA-256", "success") - auth(&before, "SCRAM-SHA-256", "success"),
        2.0
    );
    assert_eq!(
        auth(&mid, "PLAIN", "failure") - auth(&before, "PLAIN", "failure"),
        1.0
    );
    assert_eq!(auth(&mid, "PLAIN", "success"), 0.0);
    assert_eq!(
        mid.value("waxwing_c2s_sessions", &[("transport", "tcp")]),
        2.0
    );
    // The credentials were looked up three times, and timed.
    let lookups = |s: &Scrape| {
        s.value(
            "waxwing_storage_query_duration_seconds_count",
            &[("op", "account_lookup")],
        )
    };
    assert_eq!(lookups(&mid) - lookups(&before), 3.0);

    // Three messages from alice to bob: three in, three out.
    for i in 0..3 {
        alice
            .send_str(&format!(
                "<message to='bob@localhost/b' type='chat' id='m{i}'><body>hi {i}</body></message>"
            ))
            .await;
    }
    for i in 0..3 {
        let m = bob.next_named("message").await;
        assert_eq!(m.attr("id"), Some(format!("m{i}").as_str()));
    }
    let after = scrape(addr).await;
    assert_eq!(
        stanzas(&after, "in", "message") - stanzas(&mid, "in", "message"),
        3.0
    );
    assert_eq!(
        stanzas(&after, "out", "message") - stanzas(&mid, "out", "message"),
        3.0
    );
    assert!(stanzas(&after, "in", "presence") >= 2.0);
    assert!(stanzas(&after, "out", "iq") >= 2.0, "the barriers' answers");
    assert!(after.value("waxwing_c2s_queue_peak_items", &[]) >= 1.0);
    assert!(after.value("waxwing_c2s_queue_peak_bytes", &[]) >= 1.0);
    assert!(after.value("waxwing_process_resident_memory_bytes", &[]) > 1e6);
    assert!(after.value("waxwing_uptime_seconds", &[]) >= 0.0);
    assert_eq!(
        after.value("waxwing_s2s_connections", &[("direction", "in")]),
        0.0
    );
    assert_eq!(
        after.value("waxwing_c2s_sessions_waiting_resumption", &[]),
        0.0
    );
    assert!(after.has_family("waxwing_offline_messages"));
    assert!(after.has_family("waxwing_archive_messages"));
}

#[tokio::test]
async fn sasl2_and_fast_logins_count_under_their_profile() {
    use common::sasl2::NS_SASL2;
    use waxwing::sasl::ScramHash;
    let ts = server(|_| {}).await;
    ts.add_user("erin", "pw-erin").await;
    let addr = http_addr(&ts);
    let sasl2 = |s: &Scrape, mechanism: &str, result: &str| {
        let labels = [
            ("profile", "sasl2"),
            ("mechanism", mechanism),
            ("result", result),
        ];
        s.samples.get(&key(AUTH, &labels)).copied().unwrap_or(0.0)
    };
    let before = scrape(addr).await;

    let mut c = Client::connect(ts.plain_addr).await;
    c.starttls().await;
    let r = c
        .sasl2_scram(ScramHash::Sha256, "erin", "pw-erin", false, "dev-1", "")
        .await;
    assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));
    // A FAST login with a token the server never issued.
    let mut c = Client::connect(ts.plain_addr).await;
    c.starttls().await;
    let failed = c
        .sasl2_fast(
            "HT-SHA-256-NONE",
            "erin",
            "not-a-token",
            &[],
            "dev-1",
            None,
            "",
        )
        .await;
    assert!(failed.is("failure", NS_SASL2), "{}", show(&failed));

    let after = scrape(addr).await;
    let moved = |m: &str, r: &str| sasl2(&after, m, r) - sasl2(&before, m, r);
    assert_eq!(moved("SCRAM-SHA-256", "success"), 1.0);
    assert_eq!(moved("HT-SHA-256-NONE", "failure"), 1.0);
    assert_eq!(moved("HT-SHA-256-NONE", "success"), 0.0);
    // Nothing counted under legacy SASL.
    assert_eq!(
        auth(&after, "SCRAM-SHA-256", "success"),
        auth(&before, "SCRAM-SHA-256", "success")
    );
}

#[tokio::test]
async fn component_stanzas_count_on_the_component_stream() {
    let ts = server(|c| {
        c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.component.push(waxwing::config::ComponentConfig {
            domain: "bot.localhost".into(),
            secret: "bot-secret".into(),
        });
    })
    .await;
    ts.add_user("alice", "pw-alice").await;
    let addr = http_addr(&ts);
    let component_addr = ts.running.as_ref().unwrap().component_addrs[0];
    let mut bot = Client::component(component_addr, "bot.localhost", "bot-secret").await;
    let mut alice = Client::login(ts.plain_addr, "alice", "pw-alice", Some("a")).await;
    alice.barrier().await;
    let before = scrape(addr).await;
    let count = |s: &Scrape, direction: &str| {
        s.value(
            STANZAS,
            &[
                ("direction", direction),
                ("stream", "component"),
                ("kind", "message"),
            ],
        )
    };

    // Two messages to the component, one from it.
    for i in 0..2 {
        alice
            .send_str(&format!(
                "<message to='echo@bot.localhost' id='c{i}'><body>hi</body></message>"
            ))
            .await;
        let m = bot.next_element().await;
        assert_eq!(m.name(), "message");
    }
    bot.send_str(
        "<message from='echo@bot.localhost' to='alice@localhost/a'><body>back</body></message>",
    )
    .await;
    alice.next_named("message").await;
    let after = scrape(addr).await;
    assert_eq!(count(&after, "out") - count(&before, "out"), 2.0);
    assert_eq!(count(&after, "in") - count(&before, "in"), 1.0);
}

/// A WebSocket session (RFC 7395), PLAIN over the loopback WebSocket.
async fn websocket_login(addr: SocketAddr, user: &str, pass: &str) -> WsSocket {
    let mut req = format!("ws://{addr}/xmpp-websocket")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("xmpp"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let open = "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";
    ws.send(Message::text(open)).await.unwrap();
    ws_until(&mut ws, "<stream:features").await;
    let auth = b64(format!("\0{user}\0{pass}").as_bytes());
    ws.send(Message::text(format!(
        "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{auth}</auth>"
    )))
    .await
    .unwrap();
    ws_until(&mut ws, "<success").await;
    ws.send(Message::text(open)).await.unwrap();
    ws_until(&mut ws, "<stream:features").await;
    ws.send(Message::text(
        "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>",
    ))
    .await
    .unwrap();
    ws_until(&mut ws, "<iq").await;
    ws
}

type WsSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads messages until one starts with `prefix`.
async fn ws_until(ws: &mut WsSocket, prefix: &str) {
    loop {
        let m = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = m {
            assert!(!t.as_str().contains("<failure"), "{t}");
            if t.as_str().starts_with(prefix) {
                return;
            }
        }
    }
}

#[tokio::test]
async fn a_websocket_session_counts_under_its_transport_while_connected() {
    let ts = server(|_| {}).await;
    ts.add_user("carol", "pw-carol").await;
    let addr = http_addr(&ts);
    let before = scrape(addr).await;
    let ws = websocket_login(addr, "carol", "pw-carol").await;
    let during = scrape(addr).await;
    assert_eq!(
        during.value("waxwing_c2s_sessions", &[("transport", "websocket")]),
        1.0
    );
    assert_eq!(
        during.value("waxwing_c2s_sessions", &[("transport", "tcp")]),
        0.0
    );
    assert_eq!(
        auth(&during, "PLAIN", "success") - auth(&before, "PLAIN", "success"),
        1.0
    );
    drop(ws);
    eventually("the WebSocket session is uncounted", || async {
        scrape(addr)
            .await
            .value("waxwing_c2s_sessions", &[("transport", "websocket")])
            == 0.0
    })
    .await;
}

#[tokio::test]
async fn stored_counts_are_cached_between_refreshes() {
    // Counted once at the first scrape, then reused for an hour.
    let ts = server(|c| c.metrics.storage_refresh = 3600).await;
    ts.add_user("alice", "pw-alice").await;
    ts.add_user("dave", "pw-dave").await;
    let addr = http_addr(&ts);
    let first = scrape(addr).await;
    assert_eq!(first.value("waxwing_offline_messages", &[]), 0.0);
    let mut alice = Client::login(ts.plain_addr, "alice", "pw-alice", Some("a")).await;
    alice
        .send_str("<message to='dave@localhost' type='chat' id='o1'><body>later</body></message>")
        .await;
    eventually("the message is stored offline", || async {
        ts.store().offline_count("localhost", "dave").await.unwrap() == 1
    })
    .await;
    let cached = scrape(addr).await;
    assert_eq!(cached.value("waxwing_offline_messages", &[]), 0.0);
    assert!(
        cached.value(
            "waxwing_storage_query_duration_seconds_count",
            &[("op", "offline_push")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn stored_counts_follow_the_database_after_a_refresh() {
    let ts = server(|c| c.metrics.storage_refresh = 1).await;
    ts.add_user("alice", "pw-alice").await;
    ts.add_user("bob", "pw-bob").await;
    ts.add_user("dave", "pw-dave").await;
    let addr = http_addr(&ts);
    let mut alice = Client::login(ts.plain_addr, "alice", "pw-alice", Some("a")).await;
    let mut bob = Client::login(ts.plain_addr, "bob", "pw-bob", Some("b")).await;
    alice
        .send_str("<message to='dave@localhost' type='chat' id='o1'><body>later</body></message>")
        .await;
    alice
        .send_str("<message to='bob@localhost' type='chat' id='c1'><body>now</body></message>")
        .await;
    bob.next_named("message").await;
    // Offline: one. Archive: the chat message, in alice's and bob's
    // archives, and the offline one in alice's (and dave's).
    eventually("the counts catch up", || async {
        let s = scrape(addr).await;
        s.value("waxwing_offline_messages", &[]) == 1.0
            && s.value("waxwing_archive_messages", &[]) >= 2.0
    })
    .await;
}

#[tokio::test]
async fn token_mode_refuses_missing_and_wrong_tokens() {
    let ts = server(|c| {
        c.metrics.allow = "token".into();
        c.metrics.token = TOKEN.into();
    })
    .await;
    let addr = http_addr(&ts);
    let none = get(addr, "/metrics", None).await;
    assert_eq!(none.status, 401);
    assert!(none
        .headers
        .get("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    assert!(!none.body.contains("waxwing_"));
    for bad in [
        format!("Bearer {TOKEN}x"),
        format!("Basic {TOKEN}"),
        "Bearer ".to_string(),
    ] {
        let r = get(addr, "/metrics", Some(&bad)).await;
        assert_eq!(r.status, 401, "{bad}");
        assert!(!r.body.contains("waxwing_"));
    }
    let ok = get(addr, "/metrics", Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(ok.status, 200);
    parse(&ok.body);
}

#[tokio::test]
async fn disabled_metrics_are_not_served() {
    let ts = server(|c| c.metrics.enabled = false).await;
    let r = get(http_addr(&ts), "/metrics", None).await;
    assert_eq!(r.status, 404);
}

/// Every `waxwing_…` name in the dashboard's queries, as written.
fn dashboard_metric_names(v: &serde_json::Value, out: &mut HashSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if let ("expr" | "query", serde_json::Value::String(q)) = (k.as_str(), v) {
                    let mut rest = q.as_str();
                    while let Some(at) = rest.find("waxwing_") {
                        let tail = &rest[at..];
                        let end = tail
                            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .unwrap_or(tail.len());
                        out.insert(tail[..end].to_string());
                        rest = &tail[end..];
                    }
                } else {
                    dashboard_metric_names(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_metric_names(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/waxwing-dashboard.json"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let text = json.to_string();
    assert!(text.contains("${DS_PROMETHEUS}"), "datasource variable");
    let mut names = HashSet::new();
    dashboard_metric_names(&json, &mut names);
    assert!(names.len() >= 10, "{names:?}");

    let ts = server(|_| {}).await;
    let s = scrape(http_addr(&ts)).await;
    // A name is exported when its family is declared (TYPE) and the name
    // is one its samples take: the family's own, or with the suffix its
    // type gives (counters _total, histograms _bucket/_sum/_count, info).
    for name in &names {
        let family = family_of(name, &s.types);
        let suffix = &name[family.len()..];
        let allowed: &[&str] = match s.types.get(family).map(String::as_str) {
            Some("counter") => &["_total"],
            Some("histogram") => &["_bucket", "_sum", "_count"],
            Some("info") => &["_info"],
            Some("gauge") => &[""],
            _ => panic!("the dashboard queries {name}, which /metrics does not export"),
        };
        assert!(
            allowed.contains(&suffix),
            "{name}: not a sample name of {family}"
        );
    }
    // And every family exported has a panel.
    for family in s.types.keys() {
        assert!(
            names.iter().any(|n| family_of(n, &s.types) == family),
            "no panel shows {family}"
        );
    }
}
