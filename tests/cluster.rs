//! Cluster mode (issue #16, first slice): three `waxwing serve` processes
//! on 127.0.0.21-23 serving one domain over one PostgreSQL database
//! (WAXWING_TEST_POSTGRES) and the local Redis (its own key prefix).
//! Users on different nodes chat (full and bare JID), subscribe and see
//! each other's presence; a node killed with SIGKILL: its user's contact
//! on another node gets the unavailable presence within the liveness TTL
//! plus a bounded margin, and a message sent to that user afterwards is
//! kept offline and arrives when they log in on another node.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use waxwing::storage::Store;
use waxwing::xml::{Element, StreamEvent, NS_CLIENT};

/// Short, so the test is fast: the dead node is noticed within it plus
/// one refresh period (a third of it).
const TTL_MS: u64 = 1500;
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("WAXWING_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One `waxwing serve` process of the cluster.
struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
    c2s: SocketAddr,
    child: Option<Child>,
}

impl Node {
    fn new(id: &str, ip: &str, prefix: &str) -> Node {
        Node::with_redis(id, ip, prefix, &redis_url())
    }

    fn with_redis(id: &str, ip: &str, prefix: &str, redis: &str) -> Node {
        Node::with_ttl(id, ip, prefix, redis, TTL_MS)
    }

    fn with_ttl(id: &str, ip: &str, prefix: &str, redis: &str, ttl_ms: u64) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let c2s: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
        let tls: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
        let config = dir.path().join("waxwing.toml");
        let q = |s: String| format!("{s:?}");
        std::fs::write(
            &config,
            format!(
                "log_level = \"info,waxwing::cluster=debug\"\n\
                 [[host]]\ndomain = \"{DOMAIN}\"\n\
                 [database]\nurl = {}\n\
                 [tls]\ndev_cert_dir = {}\n\
                 [c2s]\nlisten = [\"{c2s}\"]\nlisten_tls = [\"{tls}\"]\n\
                 [http]\nlisten = []\nlisten_tls = []\n\
                 [admin]\nsocket = {}\n\
                 [cluster]\nnode_id = \"{id}\"\nredis = {}\nkey_prefix = \"{prefix}\"\n\
                 liveness_ttl_ms = {ttl_ms}\n",
                q(postgres_url()),
                q(dir.path().join("certs").display().to_string()),
                q(dir.path().join("waxwing.sock").display().to_string()),
                q(redis.to_string()),
            ),
        )
        .unwrap();
        Node {
            dir,
            config,
            c2s,
            child: None,
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_waxwing"));
        c.current_dir(self.dir.path()).stdin(Stdio::null());
        c
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("waxwing.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Adds `text` (TOML sections) to its configuration, before it starts.
    fn append_config(&self, text: &str) {
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        config.push_str(text);
        std::fs::write(&self.config, config).unwrap();
    }

    /// Starts it; does not wait (`wait_ready` does), so nodes start
    /// side by side.
    fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = self
            .command()
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "waxwing serve exited during start: {status}\n{}",
                    self.log_tail()
                );
            }
            if std::net::TcpStream::connect_timeout(&self.c2s, Duration::from_secs(1)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not accepting\n{}",
                self.c2s,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `waxwing ctl cluster status` on this node: (node, alive, sessions).
    fn cluster_status(&self) -> Vec<(String, String, String)> {
        let out = self
            .command()
            .args(["ctl", "--config"])
            .arg(&self.config)
            .args(["cluster", "status"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctl cluster status: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut w = l.split_whitespace().map(String::from);
                Some((w.next()?, w.next()?, w.next()?))
            })
            .collect()
    }

    /// `waxwing ctl cluster status` on this node: (node, rooms held).
    fn cluster_status_rooms(&self) -> Vec<(String, usize)> {
        let out = self
            .command()
            .args(["ctl", "--config"])
            .arg(&self.config)
            .args(["cluster", "status"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                Some((w.first()?.to_string(), w.get(3)?.parse().ok()?))
            })
            .collect()
    }

    /// SIGTERM, and waits for a clean exit (the node leaves the cluster).
    fn terminate(&mut self) {
        let mut child = self.child.take().expect("not running");
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{status}\n{}", self.log_tail());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("not running").id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    fn kill_9(&mut self) {
        let mut child = self.child.take().expect("not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.c2s, self.log_tail());
        }
    }
}

/// The test's Redis keys (its own prefix).
fn redis_keys(prefix: &str) -> Vec<String> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_connection().expect("Redis must be reachable");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap();
    keys.sort();
    keys
}

/// Deletes the test's Redis keys however it ends.
struct RedisKeys(String);

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let keys = redis_keys(&self.0);
        if keys.is_empty() {
            return;
        }
        if let Ok(mut conn) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

async fn add_user(store: &Store, user: &str) {
    let jid = jid::BareJid::new(&format!("{user}@{DOMAIN}")).unwrap();
    let rec = tokio::task::spawn_blocking(move || {
        waxwing::accounts::derive_record(&jid, "pw", 4096).unwrap()
    })
    .await
    .unwrap();
    assert!(store.create_account(&rec).await.unwrap());
}

/// The next stanza matching `f`, others skipped; panics after `within`.
async fn await_stanza(
    c: &mut Client,
    within: Duration,
    what: &str,
    f: impl Fn(&Element) -> bool,
) -> Element {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, c.next_element()).await {
            Ok(e) if f(&e) => return e,
            Ok(_) => continue,
            Err(_) => panic!(
                "{}: no {what} within {within:?}",
                c.jid.as_deref().unwrap_or("?")
            ),
        }
    }
}

/// Until `from`'s node routes to `to`'s bare JID (it has seen `to`'s
/// available presence): headlines to a bare JID are dropped, never
/// stored, when no resource is available, so each try either arrives or
/// vanishes. Bounded by a deadline.
async fn until_routable(from: &mut Client, to: &mut Client, to_bare: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        let body = format!("sync-{n}");
        from.send_str(&format!(
            "<message to='{to_bare}' type='headline'><body>{body}</body></message>"
        ))
        .await;
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                let e = to.next_element().await;
                if e.is("message", NS_CLIENT) && e.attr("type") == Some("headline") {
                    return e;
                }
            }
        })
        .await;
        if got.is_ok() {
            // Earlier tries may still come: drain them with a barrier.
            to.barrier().await;
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{to_bare} never routable"
        );
    }
}

/// `from` sends a chat with body `text` to `to`; returns it as `at`
/// receives it (other stanzas skipped), or panics after `within`.
async fn chat_arrives(
    from: &mut Client,
    to: &str,
    id: &str,
    text: &str,
    at: &mut Client,
    within: Duration,
) -> Element {
    from.send_str(&format!(
        "<message to='{to}' type='chat' id='{id}'><body>{text}</body></message>"
    ))
    .await;
    await_stanza(at, within, &format!("the chat '{text}'"), |e| {
        e.is("message", NS_CLIENT) && body(e).as_deref() == Some(text)
    })
    .await
}

fn body(e: &Element) -> Option<String> {
    e.get_child("body", NS_CLIENT).map(|b| b.text())
}

fn is_presence_from(e: &Element, from: &str, kind: Option<&str>) -> bool {
    e.is("presence", NS_CLIENT) && e.attr("from") == Some(from) && e.attr("type") == kind
}

/// `x` subscribes to `y`, `y` approves, and `x` gets `y`'s presence.
async fn subscribe_one(x: &mut Client, x_bare: &str, y: &mut Client, y_full: &str) {
    let y_bare = y_full.split('/').next().unwrap();
    x.send_str(&format!("<presence to='{y_bare}' type='subscribe'/>"))
        .await;
    await_stanza(y, Duration::from_secs(10), "subscribe", |e| {
        e.is("presence", NS_CLIENT)
            && e.attr("type") == Some("subscribe")
            && e.attr("from") == Some(x_bare)
    })
    .await;
    y.send_str(&format!("<presence to='{x_bare}' type='subscribed'/>"))
        .await;
    // Approved: the subscriber gets the contact's current presence,
    // from the contact's node.
    await_stanza(x, Duration::from_secs(10), "available presence", |e| {
        is_presence_from(e, y_full, None)
    })
    .await;
}

/// Mutual subscription between `a` and `b`, each seeing the other's
/// available presence.
async fn subscribe_both(a: &mut Client, a_full: &str, b: &mut Client, b_full: &str) {
    let a_bare = a_full.split('/').next().unwrap();
    let b_bare = b_full.split('/').next().unwrap();
    subscribe_one(a, a_bare, b, b_full).await;
    subscribe_one(b, b_bare, a, a_full).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_one_domain_and_survive_a_kill() {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let _keys = RedisKeys(prefix.clone());
    let (alice, bob, carol) = (format!("ca{tag}"), format!("cb{tag}"), format!("cc{tag}"));
    {
        let store = Store::open(&postgres_url(), 2).await.expect("PostgreSQL");
        for u in [&alice, &bob, &carol] {
            add_user(&store, u).await;
        }
        store.close().await;
    }
    let mut nodes: Vec<Node> = [
        ("n1", "127.0.0.21"),
        ("n2", "127.0.0.22"),
        ("n3", "127.0.0.23"),
    ]
    .into_iter()
    .map(|(id, ip)| Node::new(id, ip, &prefix))
    .collect();
    for n in &mut nodes {
        n.spawn();
    }
    for n in &mut nodes {
        n.wait_ready();
    }
    let status = nodes[0].cluster_status();
    let names: Vec<(&str, &str)> = status
        .iter()
        .map(|(n, a, _)| (n.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        names,
        [("n1", "yes"), ("n2", "yes"), ("n3", "yes")],
        "{status:?}"
    );

    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("a1")).await;
    let mut b = Client::login(nodes[1].c2s, &bob, "pw", Some("b1")).await;
    let mut c = Client::login(nodes[2].c2s, &carol, "pw", Some("c1")).await;
    let (a_bare, b_bare, c_bare) = (
        format!("{alice}@{DOMAIN}"),
        format!("{bob}@{DOMAIN}"),
        format!("{carol}@{DOMAIN}"),
    );
    let (a_full, b_full, c_full) = (
        format!("{a_bare}/a1"),
        format!("{b_bare}/b1"),
        format!("{c_bare}/c1"),
    );
    until_routable(&mut a, &mut b, &b_bare).await;
    until_routable(&mut b, &mut a, &a_bare).await;
    until_routable(&mut a, &mut c, &c_bare).await;
    until_routable(&mut c, &mut a, &a_bare).await;

    // Chat across nodes: to a full JID, and to a bare JID.
    let m = chat_arrives(
        &mut a,
        &b_full,
        "m1",
        "full",
        &mut b,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(m.attr("from"), Some(a_full.as_str()));
    let m = chat_arrives(
        &mut b,
        &a_bare,
        "m2",
        "bare",
        &mut a,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(m.attr("from"), Some(b_full.as_str()));

    // The bare-JID rule sees every node's resources: a second resource
    // of bob's on n3 with a higher priority takes bare-JID chat.
    let mut b2 = Client::login_without_presence(nodes[2].c2s, &bob, "pw", Some("b2")).await;
    b2.send_str("<presence><priority>5</priority></presence>")
        .await;
    // n1 knows of b2 once a headline (to every available resource) reaches it.
    until_routable(&mut a, &mut b2, &b_bare).await;
    let m = chat_arrives(
        &mut a,
        &b_bare,
        "m3",
        "top",
        &mut b2,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(m.attr("to"), Some(b_bare.as_str()));
    // b1 (lower priority) did not get it: what n1 sends n2 arrives in
    // order, so everything before this headline is what b1 was sent.
    a.send_str(&format!(
        "<message to='{b_bare}' type='headline'><body>fence</body></message>"
    ))
    .await;
    let mut seen_top = false;
    loop {
        let e = b.next_element().await;
        seen_top |= body(&e).as_deref() == Some("top");
        if body(&e).as_deref() == Some("fence") {
            break;
        }
    }
    assert!(!seen_top, "the lower-priority resource got bare-JID chat");
    b2.send_str("<presence type='unavailable'/>").await;
    drop(b2);

    // Subscriptions and presence across nodes.
    subscribe_both(&mut a, &a_full, &mut b, &b_full).await;
    subscribe_both(&mut a, &a_full, &mut c, &c_full).await;
    a.send_str("<presence><show>away</show></presence>").await;
    let p = await_stanza(&mut b, Duration::from_secs(5), "alice's away", |e| {
        is_presence_from(e, &a_full, None)
    })
    .await;
    assert_eq!(
        p.get_child("show", NS_CLIENT).map(|s| s.text()).as_deref(),
        Some("away")
    );

    // n3 stops reading (SIGSTOP), so a message for carol waits in its
    // inbox, unread; then n3 dies. Carol's unavailable presence reaches
    // alice on n1 within the TTL, one refresh period and a bounded margin
    // for the reaping; the message left in n3's inbox is re-routed
    // (offline storage: carol has no other resource).
    nodes[2].signal("-STOP");
    a.send_str(&format!(
        "<message to='{c_full}' type='chat' id='m5'><body>in the inbox</body></message>"
    ))
    .await;
    a.barrier().await;
    let killed = Instant::now();
    nodes[2].kill_9();
    let margin = Duration::from_millis(TTL_MS + TTL_MS / 3 + 2_000);
    await_stanza(&mut a, margin, "carol's unavailable", |e| {
        is_presence_from(e, &c_full, Some("unavailable"))
    })
    .await;
    let detected = killed.elapsed();
    eprintln!("dead node's unavailable presence after {detected:?} (TTL {TTL_MS} ms)");
    assert!(detected < margin);

    // A message to carol now waits offline, and arrives at her login on n2.
    a.send_str(&format!(
        "<message to='{c_bare}' type='chat' id='m4'><body>while away</body></message>"
    ))
    .await;
    a.barrier().await;
    let mut old_c = c;
    let mut c = Client::login(nodes[1].c2s, &carol, "pw", Some("c2")).await;
    // In either order: the inbox is re-routed after the presence went out.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < 2 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, c.next_element()).await {
            Ok(m) if m.is("message", NS_CLIENT) && body(&m).is_some() => {
                assert_eq!(m.attr("from"), Some(a_full.as_str()));
                got.extend(body(&m));
            }
            Ok(_) => {}
            Err(_) => {
                // What the killed node's session had read and the test not:
                // tells a message delivered before the stop from one lost.
                let mut unread = Vec::new();
                while let Ok(Some(ev)) =
                    tokio::time::timeout(Duration::from_millis(300), old_c.next_event()).await
                {
                    if let StreamEvent::Stanza(e) = ev {
                        unread.extend(body(&e));
                    }
                }
                panic!(
                    "carol's new session got {got:?} of the two offline messages in 5 s; \
                     her session on the killed node had unread {unread:?}"
                );
            }
        }
    }
    drop(old_c);
    got.sort();
    assert_eq!(got, ["in the inbox", "while away"]);

    // n3 is gone from the cluster once reaped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = nodes[0].cluster_status();
        let names: Vec<&str> = status.iter().map(|(n, _, _)| n.as_str()).collect();
        if names == ["n1", "n2"] {
            assert!(
                status.iter().all(|(_, alive, _)| alive == "yes"),
                "{status:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "n3 still listed: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // n3 comes back under the same id and joins without the others
    // restarting: a session on it is reached from n1 again.
    nodes[2].spawn();
    nodes[2].wait_ready();
    drop(c);
    let mut c3 = Client::login(nodes[2].c2s, &carol, "pw", Some("c3")).await;
    until_routable(&mut a, &mut c3, &c_bare).await;
    chat_arrives(
        &mut a,
        &format!("{c_bare}/c3"),
        "m6",
        "welcome back",
        &mut c3,
        Duration::from_secs(5),
    )
    .await;
    let status = nodes[0].cluster_status();
    let names: Vec<(&str, &str)> = status
        .iter()
        .map(|(n, a, _)| (n.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        names,
        [("n1", "yes"), ("n2", "yes"), ("n3", "yes")],
        "{status:?}"
    );
    drop(c3);
    nodes[2].terminate();

    // A clean leave (SIGTERM): bob's session on n2 ends, alice hears it,
    // and n2 is no member any more.
    let t = Instant::now();
    nodes[1].terminate();
    eprintln!("n2 stopped in {:?}", t.elapsed());
    await_stanza(&mut a, Duration::from_secs(5), "bob's unavailable", |e| {
        is_presence_from(e, &b_full, Some("unavailable"))
    })
    .await;
    let status = nodes[0].cluster_status();
    let names: Vec<&str> = status.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["n1"], "{status:?}");
    // The last node leaves: nothing of the cluster stays in Redis but
    // the reaping lock, which expires.
    drop(a);
    let t = Instant::now();
    nodes[0].terminate();
    eprintln!("n1 stopped in {:?}", t.elapsed());
    let mut left = redis_keys(&prefix);
    left.retain(|k| !k.starts_with(&format!("{prefix}:reap:")));
    assert!(left.is_empty(), "{left:?}");
}

/// A Redis server of the test's own, on a free port, that it may kill and
/// start again (the shared one must not be restarted).
struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.spawn();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: everything it held is gone (no persistence).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Redis restarted empty (within the liveness TTL): the nodes register
/// again, write their sessions again and reload their replicas; chat and
/// presence across nodes work again without restarting a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_when_redis_restarts_empty() {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let mut redis_server = PrivateRedis::start();
    let (alice, bob) = (format!("ra{tag}"), format!("rb{tag}"));
    {
        let store = Store::open(&postgres_url(), 2).await.expect("PostgreSQL");
        for u in [&alice, &bob] {
            add_user(&store, u).await;
        }
        store.close().await;
    }
    let mut nodes: Vec<Node> = [("n1", "127.0.0.21"), ("n2", "127.0.0.22")]
        .into_iter()
        // A TTL longer than the restart takes: a node that cannot refresh
        // for a whole TTL fences itself (closes its sessions), which the
        // next test covers; this one is about Redis losing its data.
        .map(|(id, ip)| Node::with_ttl(id, ip, &prefix, &redis_server.url(), 10_000))
        .collect();
    for n in &mut nodes {
        n.spawn();
    }
    for n in &mut nodes {
        n.wait_ready();
    }
    let (a_bare, b_bare) = (format!("{alice}@{DOMAIN}"), format!("{bob}@{DOMAIN}"));
    let (a_full, b_full) = (format!("{a_bare}/a1"), format!("{b_bare}/b1"));
    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("a1")).await;
    let mut b = Client::login(nodes[1].c2s, &bob, "pw", Some("b1")).await;
    until_routable(&mut a, &mut b, &b_bare).await;
    until_routable(&mut b, &mut a, &a_bare).await;
    subscribe_both(&mut a, &a_full, &mut b, &b_full).await;

    redis_server.kill();
    redis_server.spawn();

    // Both nodes write their sessions again into the empty Redis; a chat
    // to the full JID goes through the new inbox.
    until_routable(&mut a, &mut b, &b_bare).await;
    until_routable(&mut b, &mut a, &a_bare).await;
    chat_arrives(
        &mut a,
        &b_full,
        "r1",
        "after the restart",
        &mut b,
        Duration::from_secs(10),
    )
    .await;
    b.send_str("<presence><show>dnd</show></presence>").await;
    await_stanza(&mut a, Duration::from_secs(10), "bob's dnd", |e| {
        is_presence_from(e, &b_full, None)
            && e.get_child("show", NS_CLIENT).map(|s| s.text()).as_deref() == Some("dnd")
    })
    .await;
    let status = nodes[0].cluster_status();
    let names: Vec<(&str, &str)> = status
        .iter()
        .map(|(n, a, _)| (n.as_str(), a.as_str()))
        .collect();
    assert_eq!(names, [("n1", "yes"), ("n2", "yes")], "{status:?}");
}

/// Calls per command since the server started (`INFO commandstats`).
fn command_calls(url: &str) -> std::collections::BTreeMap<String, u64> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// Bytes Redis read and wrote since it started (`INFO stats`).
fn net_bytes(url: &str) -> (u64, u64) {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO").arg("stats").query(&mut conn).unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or(0u64)
    };
    (
        field("total_net_input_bytes"),
        field("total_net_output_bytes"),
    )
}

/// What one chat message between nodes costs in Redis, measured on a
/// Redis of the test's own (background heartbeats included): the inbox
/// commands are XADD on the sender (one per batch, in a script that checks
/// the target is alive), XREADGROUP, XACK and XDEL on the receiver,
/// batched, so at most those four per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_between_nodes_costs_a_few_redis_commands() {
    const MESSAGES: usize = 500;
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let redis_server = PrivateRedis::start();
    let (alice, bob) = (format!("ma{tag}"), format!("mb{tag}"));
    {
        let store = Store::open(&postgres_url(), 2).await.expect("PostgreSQL");
        for u in [&alice, &bob] {
            add_user(&store, u).await;
        }
        store.close().await;
    }
    let mut nodes: Vec<Node> = [("n1", "127.0.0.21"), ("n2", "127.0.0.22")]
        .into_iter()
        .map(|(id, ip)| Node::with_redis(id, ip, &prefix, &redis_server.url()))
        .collect();
    for n in &mut nodes {
        n.spawn();
    }
    for n in &mut nodes {
        n.wait_ready();
    }
    let b_bare = format!("{bob}@{DOMAIN}");
    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("a1")).await;
    let mut b = Client::login(nodes[1].c2s, &bob, "pw", Some("b1")).await;
    until_routable(&mut a, &mut b, &b_bare).await;
    let before = command_calls(&redis_server.url());
    let bytes_before = net_bytes(&redis_server.url());
    let started = Instant::now();
    let mut batch = String::new();
    for i in 0..MESSAGES {
        batch.push_str(&format!(
            "<message to='{b_bare}/b1' type='chat' id='x{i}'><body>n{i}</body></message>"
        ));
    }
    a.send_str(&batch).await;
    let mut got = 0;
    while got < MESSAGES {
        let e = await_stanza(&mut b, Duration::from_secs(20), "the burst", |e| {
            e.is("message", NS_CLIENT) && e.attr("type") == Some("chat")
        })
        .await;
        assert_eq!(body(&e), Some(format!("n{got}")), "in order");
        got += 1;
    }
    let elapsed = started.elapsed();
    let after = command_calls(&redis_server.url());
    let bytes_after = net_bytes(&redis_server.url());
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    let inbox: u64 = ["xadd", "xreadgroup", "xack", "xdel"]
        .iter()
        .map(|c| delta(c))
        .sum();
    let all: u64 = after.keys().map(|c| delta(c)).sum::<u64>() - delta("info");
    eprintln!(
        "{MESSAGES} messages n1 -> n2 in {elapsed:?}: {} inbox commands per message \
         (xadd {}, xreadgroup {}, xack {}, xdel {}), {} Redis commands per message in all; \
         {} bytes into Redis and {} out of it per message",
        inbox as f64 / MESSAGES as f64,
        delta("xadd"),
        delta("xreadgroup"),
        delta("xack"),
        delta("xdel"),
        all as f64 / MESSAGES as f64,
        (bytes_after.0 - bytes_before.0) / MESSAGES as u64,
        (bytes_after.1 - bytes_before.1) / MESSAGES as u64,
    );
    // At most one append per message (one per target node and batch).
    assert!(delta("xadd") <= MESSAGES as u64, "{}", delta("xadd"));
    assert!(inbox <= 4 * MESSAGES as u64, "{inbox}");
    // Counted by Redis, a script's inner commands included: at worst (no
    // batching at all) EVALSHA with its EXISTS and XADD on the sender,
    // XREADGROUP, XACK and XDEL on the receiver — six per message; plus
    // the heartbeats meanwhile.
    assert!(all <= 6 * MESSAGES as u64 + 200, "{all}");
}

/// One full JID bound on two nodes: the newest binding wins, as on one
/// node. The old session gets `conflict`, and stanzas from any node reach
/// the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_bound_again_on_another_node_replaces_the_old_session() {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let _keys = RedisKeys(prefix.clone());
    let (alice, bob) = (format!("xa{tag}"), format!("xb{tag}"));
    {
        let store = Store::open(&postgres_url(), 2).await.expect("PostgreSQL");
        for u in [&alice, &bob] {
            add_user(&store, u).await;
        }
        store.close().await;
    }
    let mut nodes: Vec<Node> = [("n1", "127.0.0.21"), ("n2", "127.0.0.22")]
        .into_iter()
        .map(|(id, ip)| Node::new(id, ip, &prefix))
        .collect();
    for n in &mut nodes {
        n.spawn();
    }
    for n in &mut nodes {
        n.wait_ready();
    }
    let b_bare = format!("{bob}@{DOMAIN}");
    let b_full = format!("{b_bare}/same");
    // alice on n2; bob's "same" first on n2, then again on n1.
    let mut a = Client::login(nodes[1].c2s, &alice, "pw", Some("a1")).await;
    let mut old = Client::login(nodes[1].c2s, &bob, "pw", Some("same")).await;
    until_routable(&mut a, &mut old, &b_bare).await;
    let mut new = Client::login(nodes[0].c2s, &bob, "pw", Some("same")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let condition = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = tokio::time::timeout(left, old.next_element())
            .await
            .expect("the old session was never replaced");
        if e.name() == "error" {
            break e.children().next().map(|c| c.name().to_string());
        }
    };
    assert_eq!(condition.as_deref(), Some("conflict"));
    // From n2, where the old session was: the full JID is on n1 now.
    until_routable(&mut a, &mut new, &b_bare).await;
    chat_arrives(
        &mut a,
        &b_full,
        "s1",
        "to the new one",
        &mut new,
        Duration::from_secs(5),
    )
    .await;
}

/// `waxwing check-config` refuses a cluster on SQLite: every node must see
/// the same accounts and messages, which one node's file cannot give.
#[test]
fn check_config_refuses_a_cluster_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("waxwing.toml");
    let write = |database: &str| {
        std::fs::write(
            &config,
            format!(
                "[[host]]\ndomain = \"{DOMAIN}\"\n[database]\nurl = \"{database}\"\n\
                 [cluster]\nnode_id = \"n1\"\n"
            ),
        )
        .unwrap()
    };
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_waxwing"))
            .args(["check-config", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    write("sqlite://waxwing.db");
    let out = check();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("[cluster] needs a PostgreSQL"), "{text}");
    write("postgres://postgres@127.0.0.1/none");
    let out = check();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Cluster keys seen from a test: the directory field of one full JID.
fn directory_field(url: &str, prefix: &str, bare: &str, resource: &str) -> Option<String> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("HGET")
        .arg(format!("{prefix}:sess:{bare}"))
        .arg(resource)
        .query(&mut conn)
        .unwrap()
}

/// A free port on each of the first `n` nodes' addresses (127.0.0.21, …),
/// for a listener of their own beside c2s.
fn node_addresses(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| {
            format!("127.0.0.{}:{}", 21 + i, free_port())
                .parse()
                .unwrap()
        })
        .collect()
}

/// Starts `n` nodes n1, n2, … on 127.0.0.21, … and waits until all accept.
fn start_nodes(n: usize, prefix: &str, redis: &[String], ttl_ms: u64) -> Vec<Node> {
    start_nodes_with(n, prefix, redis, ttl_ms, |_, _| String::new())
}

/// [`start_nodes`], with `extra(i, node)` added to node i's configuration
/// (it may prepare the node's files too).
fn start_nodes_with(
    n: usize,
    prefix: &str,
    redis: &[String],
    ttl_ms: u64,
    extra: impl Fn(usize, &Node) -> String,
) -> Vec<Node> {
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| {
            Node::with_ttl(
                &format!("n{}", i + 1),
                &format!("127.0.0.{}", 21 + i),
                prefix,
                &redis[i],
                ttl_ms,
            )
        })
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        node.append_config(&extra(i, node));
    }
    for node in &mut nodes {
        node.spawn();
    }
    for node in &mut nodes {
        node.wait_ready();
    }
    nodes
}

async fn add_users(users: &[&String]) {
    let store = Store::open(&postgres_url(), 2).await.expect("PostgreSQL");
    for u in users {
        add_user(&store, u).await;
    }
    store.close().await;
}

/// What most two-node tests start from: a key prefix of their own (its
/// keys deleted when done), two accounts named `{a}{tag}` and `{b}{tag}`,
/// and nodes n1 and n2 on the local Redis.
struct TwoNodes {
    prefix: String,
    users: (String, String),
    // Before the keys: the nodes stop first, then their keys go.
    nodes: Vec<Node>,
    _keys: RedisKeys,
}

async fn two_nodes(a: &str, b: &str) -> TwoNodes {
    two_nodes_with(a, b, |_, _| String::new()).await
}

/// [`two_nodes`], with `extra(i, node)` added to node i's configuration.
async fn two_nodes_with(a: &str, b: &str, extra: impl Fn(usize, &Node) -> String) -> TwoNodes {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let keys = RedisKeys(prefix.clone());
    let users = (format!("{a}{tag}"), format!("{b}{tag}"));
    add_users(&[&users.0, &users.1]).await;
    let nodes = start_nodes_with(2, &prefix, &[redis_url(), redis_url()], TTL_MS, extra);
    TwoNodes {
        prefix,
        users,
        nodes,
        _keys: keys,
    }
}

/// A stanza for a node that is no longer alive is not appended to its
/// inbox (which may have been drained already: it would never be read)
/// but re-routed by the sender. The sender's replica still names node n9
/// for bob's resource `ghost` — as right after n9 died and was reaped,
/// before the sender heard — while n9 has no liveness key: a chat that
/// the bare-JID rule gives the ghost (priority 10) reaches bob's real
/// resource, re-routed, and n9's inbox is never made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stanza_for_a_node_no_longer_alive_is_rerouted_not_lost() {
    let setup = two_nodes("da", "db").await;
    let (prefix, _nodes) = (&setup.prefix, &setup.nodes);
    let (alice, bob) = setup.users.clone();
    let b_bare = format!("{bob}@{DOMAIN}");
    let mut a = Client::login(_nodes[0].c2s, &alice, "pw", Some("a1")).await;
    let mut b = Client::login(_nodes[1].c2s, &bob, "pw", Some("real")).await;
    until_routable(&mut a, &mut b, &b_bare).await;

    // The ghost, announced as n9 would have announced it.
    let ghost = jid::FullJid::new(&format!("{b_bare}/ghost")).unwrap();
    let state = waxwing::sessions::ResourceState {
        presence: Some(
            Element::new("presence", NS_CLIENT)
                .with_child(Element::new("priority", NS_CLIENT).with_text("10")),
        ),
        priority: 10,
        interested: false,
        carbons: false,
        session: 0,
    };
    let event = waxwing::cluster::codec::encode_change(&waxwing::cluster::bus::Change::Bound {
        node: "n9".into(),
        jid: ghost,
        state,
        claim: false,
    });
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("PUBLISH")
        .arg(format!("{prefix}:events"))
        .arg(event)
        .query(&mut conn)
        .unwrap();

    // Until n1 has heard of the ghost, bare-JID chat goes to `real`
    // directly; the first one given to the ghost comes back re-routed
    // (stamped with a delay). Without the liveness check it would wait
    // in n9's inbox for ever, and no re-routed chat would come.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        a.send_str(&format!(
            "<message to='{b_bare}' type='chat' id='g{n}'><body>g{n}</body></message>"
        ))
        .await;
        let m = await_stanza(
            &mut b,
            Duration::from_secs(5),
            "the chat, directly or re-routed",
            |e| e.is("message", NS_CLIENT) && body(e) == Some(format!("g{n}")),
        )
        .await;
        if m.get_child("delay", "urn:xmpp:delay").is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "n1 never routed to the ghost"
        );
    }
    let inbox: bool = redis::cmd("EXISTS")
        .arg(format!("{prefix}:inbox:n9"))
        .query(&mut conn)
        .unwrap();
    assert!(!inbox, "an entry was appended to a dead node's inbox");
}

/// Two binds of one full JID racing on two nodes, before either node's
/// replica can know of the other (Redis holds every write back meanwhile:
/// `CLIENT PAUSE … WRITE`): the directory orders the claims, and exactly
/// one session stays — the later claim — the other gets `conflict`,
/// whichever node it is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_binds_of_one_full_jid_on_two_nodes_leave_one_session() {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let redis_server = PrivateRedis::start();
    let bob = format!("rb{tag}");
    add_users(&[&bob]).await;
    // A TTL well beyond the pause, so that no node fences itself.
    let nodes = start_nodes(
        2,
        &prefix,
        &[redis_server.url(), redis_server.url()],
        10_000,
    );
    let b_bare = format!("{bob}@{DOMAIN}");
    let mut conn = redis::Client::open(redis_server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(5000)
        .arg("WRITE")
        .query(&mut conn)
        .unwrap();
    let (mut x, mut y) = tokio::join!(
        Client::login(nodes[0].c2s, &bob, "pw", Some("same")),
        Client::login(nodes[1].c2s, &bob, "pw", Some("same")),
    );
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut conn)
        .unwrap();

    async fn ended(c: &mut Client) -> String {
        c.expect_stream_error().await
    }
    let (loser, condition) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            c = ended(&mut x) => (0, c),
            c = ended(&mut y) => (1, c),
        }
    })
    .await
    .expect("both sessions of one full JID stayed");
    assert_eq!(condition, "conflict");
    // The other one is alive and is the directory's.
    let (winner, winner_node) = if loser == 0 {
        (&mut y, "n2")
    } else {
        (&mut x, "n1")
    };
    winner.barrier().await;
    let field = directory_field(&redis_server.url(), &prefix, &b_bare, "same")
        .expect("the winner is in the directory");
    assert!(field.starts_with(&format!("{winner_node}\t")), "{field:?}");
    eprintln!("the claim on {winner_node} won");
}

/// A TCP relay to Redis that the test can cut: open connections are
/// closed and new ones refused until it is restored (one node's link to
/// Redis lost, the others' intact).
struct CutRelay {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CutRelay {
    async fn start(target_port: u16) -> CutRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let relay = tokio::spawn(async move {
                    let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                });
                o.lock().unwrap().push(relay.abort_handle());
            }
        });
        CutRelay { port, cut, open }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for relay in self.open.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Self-fencing: n1 loses Redis for longer than the TTL, so n2 reaps it
/// (alice's contact hears she is gone, a chat to her goes offline). n1
/// must not keep serving alice's session as if nothing happened: it ends
/// it with `system-shutdown` within the TTL, and when its link comes back
/// it joins again without writing that session back; alice logs in
/// again and gets what was sent to her meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_beyond_the_ttl_fences_itself() {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let redis_server = PrivateRedis::start();
    let relay = CutRelay::start(redis_server.port).await;
    let (alice, bob) = (format!("fa{tag}"), format!("fb{tag}"));
    add_users(&[&alice, &bob]).await;
    let nodes = start_nodes(2, &prefix, &[relay.url(), redis_server.url()], TTL_MS);
    let (a_bare, b_bare) = (format!("{alice}@{DOMAIN}"), format!("{bob}@{DOMAIN}"));
    let (a_full, b_full) = (format!("{a_bare}/a1"), format!("{b_bare}/b1"));
    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("a1")).await;
    let mut b = Client::login(nodes[1].c2s, &bob, "pw", Some("b1")).await;
    until_routable(&mut a, &mut b, &b_bare).await;
    until_routable(&mut b, &mut a, &a_bare).await;
    subscribe_both(&mut a, &a_full, &mut b, &b_full).await;

    relay.cut();
    let cut = Instant::now();
    let condition = tokio::time::timeout(
        Duration::from_millis(TTL_MS + 2_000),
        a.expect_stream_error(),
    )
    .await
    .expect("n1 kept serving alice's session after losing Redis");
    assert_eq!(condition, "system-shutdown");
    eprintln!(
        "n1 fenced itself {:?} after the cut (TTL {TTL_MS} ms)",
        cut.elapsed()
    );
    await_stanza(
        &mut b,
        Duration::from_millis(TTL_MS + TTL_MS / 3 + 3_000),
        "alice's unavailable (n1 reaped)",
        |e| is_presence_from(e, &a_full, Some("unavailable")),
    )
    .await;
    b.send_str(&format!(
        "<message to='{a_bare}' type='chat' id='f1'><body>while fenced</body></message>"
    ))
    .await;
    b.barrier().await;

    relay.restore();
    // n1 joins again; alice logs in there, is reached from n2, and gets
    // what was kept for her.
    let deadline = Instant::now() + Duration::from_secs(15);
    while nodes[1]
        .cluster_status()
        .iter()
        .all(|(n, alive, _)| n != "n1" || alive != "yes")
    {
        assert!(Instant::now() < deadline, "n1 never joined again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("a2")).await;
    let m = await_stanza(&mut a, Duration::from_secs(5), "the offline chat", |e| {
        e.is("message", NS_CLIENT) && body(e).is_some()
    })
    .await;
    assert_eq!(body(&m).as_deref(), Some("while fenced"));
    until_routable(&mut b, &mut a, &a_bare).await;
    // The fenced session was not written back.
    assert_eq!(
        directory_field(&redis_server.url(), &prefix, &a_bare, "a1"),
        None
    );
    assert!(directory_field(&redis_server.url(), &prefix, &a_bare, "a2").is_some());
}

/// An IQ the server sends names its node in its id, so that the answer,
/// which arrives at the node the addressee is attached to, is handed back
/// to the node that waits for it. Node n1 (in this process, so the test
/// can make it send an IQ) pings bob, whose session is on n2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_to_a_server_iq_arriving_at_another_node_reaches_the_sender() {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let _keys = RedisKeys(prefix.clone());
    let bob = format!("ib{tag}");
    add_users(&[&bob]).await;
    let p = prefix.clone();
    let mut n1 = TestServer::start_with(move |c| {
        c.database.url = postgres_url();
        c.cluster = Some(waxwing::config::ClusterConfig {
            node_id: "n1".into(),
            redis: redis_url(),
            key_prefix: p,
            liveness_ttl_ms: TTL_MS,
            ..Default::default()
        });
    })
    .await;
    let mut n2 = Node::new("n2", "127.0.0.22", &prefix);
    n2.spawn();
    n2.wait_ready();
    let b_bare = jid::BareJid::new(&format!("{bob}@{DOMAIN}")).unwrap();
    let b_full = format!("{b_bare}/b1");
    let mut b = Client::login(n2.c2s, &bob, "pw", Some("b1")).await;
    // Until n1 has heard of bob's session.
    let deadline = Instant::now() + Duration::from_secs(10);
    while n1.server().sessions.available_resources(&b_bare).is_empty() {
        assert!(Instant::now() < deadline, "n1 never saw bob's session");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = n1.server().clone();
    let to = b_full.clone();
    let request = tokio::spawn(async move {
        let ping = Element::new("iq", NS_CLIENT)
            .with_attr("type", "get")
            .with_attr("to", to.as_str())
            .with_child(Element::new("ping", "urn:xmpp:ping"));
        s.iq_tracker
            .request(&s, DOMAIN, ping, Duration::from_secs(5))
            .await
    });
    let ping = await_stanza(&mut b, Duration::from_secs(5), "the server's ping", |e| {
        e.is("iq", NS_CLIENT) && e.attr("type") == Some("get")
    })
    .await;
    let id = ping.attr("id").unwrap().to_string();
    assert!(id.ends_with("-n1"), "{id}");
    // Answered to n2, the node bob is attached to.
    b.send_str(&format!("<iq type='result' id='{id}' to='{DOMAIN}'/>"))
        .await;
    let answer = request
        .await
        .unwrap()
        .expect("the answer reached the node that sent the IQ");
    assert_eq!(answer.attr("from"), Some(b_full.as_str()));
    assert_eq!(n1.server().iq_tracker.waiting(), 0);
    drop(b);
    n2.terminate();
    n1.stop().await;
}

/// A presence broadcast to contacts whose resources are on another node
/// is one bus entry for that node, carrying every recipient, not one
/// append per contact resource: measured in Redis commands per presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_broadcast_is_one_bus_entry_per_node() {
    const CONTACTS: usize = 4;
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let redis_server = PrivateRedis::start();
    let alice = format!("pa{tag}");
    let contacts: Vec<String> = (0..CONTACTS).map(|i| format!("p{i}c{tag}")).collect();
    let mut users: Vec<&String> = contacts.iter().collect();
    users.push(&alice);
    add_users(&users).await;
    let nodes = start_nodes(
        2,
        &prefix,
        &[redis_server.url(), redis_server.url()],
        TTL_MS,
    );
    let a_bare = format!("{alice}@{DOMAIN}");
    let a_full = format!("{a_bare}/a1");
    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("a1")).await;
    let mut cs = Vec::new();
    for (i, c) in contacts.iter().enumerate() {
        let mut client = Client::login(nodes[1].c2s, c, "pw", Some(&format!("r{i}"))).await;
        let full = format!("{c}@{DOMAIN}/r{i}");
        if i == 0 {
            until_routable(&mut a, &mut client, &format!("{c}@{DOMAIN}")).await;
            until_routable(&mut client, &mut a, &a_bare).await;
        }
        subscribe_both(&mut a, &a_full, &mut client, &full).await;
        cs.push(client);
    }
    let before = command_calls(&redis_server.url());
    let bytes_before = net_bytes(&redis_server.url());
    a.send_str("<presence><show>away</show></presence>").await;
    for c in &mut cs {
        await_stanza(c, Duration::from_secs(5), "alice's away", |e| {
            is_presence_from(e, &a_full, None)
                && e.get_child("show", NS_CLIENT).map(|s| s.text()).as_deref() == Some("away")
        })
        .await;
    }
    let after = command_calls(&redis_server.url());
    let bytes_after = net_bytes(&redis_server.url());
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    let all: u64 = after.keys().map(|c| delta(c)).sum::<u64>() - delta("info");
    eprintln!(
        "one presence to {CONTACTS} contacts on another node: xadd {}, evalsha {}, \
         {all} Redis commands in all (heartbeats and the directory update included), \
         {} bytes into Redis and {} out",
        delta("xadd"),
        delta("evalsha"),
        bytes_after.0 - bytes_before.0,
        bytes_after.1 - bytes_before.1,
    );
    assert_eq!(delta("xadd"), 1, "one inbox entry for the one node");
}

/// Message Carbons (XEP-0280) reach a carbons-enabled resource on another
/// node: alice's a1 on n1 and a2 on n2 both enable carbons; a chat bob (on
/// n1) sends to a1, and one a1 sends to bob, are copied to a2 on n2
/// (`<received/>`, `<sent/>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carbons_reach_a_resource_on_another_node() {
    let setup = two_nodes("ka", "kb").await;
    let nodes = &setup.nodes;
    let (alice, bob) = setup.users.clone();
    let (a_bare, b_bare) = (format!("{alice}@{DOMAIN}"), format!("{bob}@{DOMAIN}"));
    let mut b = Client::login(nodes[0].c2s, &bob, "pw", Some("b1")).await;
    let mut a1 = Client::login_without_presence(nodes[0].c2s, &alice, "pw", Some("a1")).await;
    let mut a2 = Client::login_without_presence(nodes[1].c2s, &alice, "pw", Some("a2")).await;
    for c in [&mut a1, &mut a2] {
        let r = c
            .iq(
                "<iq type='set' id='carbons'><enable xmlns='urn:xmpp:carbons:2'/></iq>",
                "carbons",
            )
            .await;
        assert_eq!(r.attr("type"), Some("result"));
        // After carbons: once n1 routes to a2, it knows a2 has them on.
        c.send_str("<presence/>").await;
    }
    until_routable(&mut b, &mut a2, &a_bare).await;

    let copied = |kind: &'static str, text: &'static str| {
        move |e: &Element| {
            e.is("message", NS_CLIENT)
                && e.get_child(kind, "urn:xmpp:carbons:2")
                    .and_then(|k| k.get_child("forwarded", "urn:xmpp:forward:0"))
                    .and_then(|f| f.get_child("message", NS_CLIENT))
                    .and_then(body)
                    .as_deref()
                    == Some(text)
        }
    };
    b.send_str(&format!(
        "<message to='{a_bare}/a1' type='chat' id='k1'><body>to a1</body></message>"
    ))
    .await;
    await_stanza(
        &mut a2,
        Duration::from_secs(5),
        "the received copy on n2",
        copied("received", "to a1"),
    )
    .await;
    a1.send_str(&format!(
        "<message to='{b_bare}' type='chat' id='k2'><body>from a1</body></message>"
    ))
    .await;
    await_stanza(
        &mut a2,
        Duration::from_secs(5),
        "the sent copy on n2",
        copied("sent", "from a1"),
    )
    .await;
}

/// What a node keeps for a user's next initial presence (an offline
/// message, a pending subscription request) while it knows of no
/// available resource, when the user's session on another node has read
/// that storage already (its initial presence not yet in the storing
/// node's replica): the storing node announces it (`K` on the bus), and
/// the node holding the session hands it over again. Both halves, each
/// made certain rather than raced: n1 announces what it keeps for a user
/// it knows no session of; and what is announced for carol reaches her
/// session on n2 again (a row committed after her login read the queue;
/// a pending request she was shown at login, shown again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_kept_behind_a_new_session_on_another_node_reaches_it() {
    let setup = two_nodes("oa", "oc").await;
    let (prefix, nodes) = (&setup.prefix, &setup.nodes);
    let (alice, carol) = setup.users.clone();
    let (a_bare, c_bare) = (format!("{alice}@{DOMAIN}"), format!("{carol}@{DOMAIN}"));
    let mut events = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    events
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut events = events.as_pubsub();
    events.subscribe(format!("{prefix}:events")).unwrap();
    let mut announced = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(msg) = events.get_message() {
                let text: String = msg.get_payload().unwrap();
                if text == format!("K\t{c_bare}\t{what}") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "n1 kept something ({what}) for carol without announcing it"
            );
        }
    };

    // Carol has no session: n1 keeps alice's chat and her subscription
    // request, and says so.
    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("a1")).await;
    a.send_str(&format!(
        "<message to='{c_bare}' type='chat' id='o1'><body>first</body></message>"
    ))
    .await;
    a.barrier().await;
    announced("m");
    a.send_str(&format!("<presence to='{c_bare}' type='subscribe'/>"))
        .await;
    a.barrier().await;
    announced("s");

    // Carol logs in on n2; her initial presence reads both.
    let is_request = |e: &Element| {
        e.is("presence", NS_CLIENT)
            && e.attr("type") == Some("subscribe")
            && e.attr("from") == Some(a_bare.as_str())
    };
    let mut c = Client::login(nodes[1].c2s, &carol, "pw", Some("c1")).await;
    let (mut chat, mut request) = (false, false);
    while !(chat && request) {
        let e = await_stanza(&mut c, Duration::from_secs(5), "chat and request", |e| {
            body(e).as_deref() == Some("first") || is_request(e)
        })
        .await;
        chat |= body(&e).is_some();
        request |= is_request(&e);
    }
    c.barrier().await;

    // A row committed after that reading (as by a node that did not know
    // of her session yet), then that node's announcement.
    let store = Store::open(&postgres_url(), 1).await.expect("PostgreSQL");
    let late = format!(
        "<message xmlns='jabber:client' from='{a_bare}/a1' to='{c_bare}' type='chat'>\
         <body>late</body></message>"
    );
    assert!(store
        .offline_push(DOMAIN, &carol, &late, 100, 1 << 20)
        .await
        .unwrap());
    store.close().await;
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut announce = |what: &str| {
        let _: () = redis::cmd("PUBLISH")
            .arg(format!("{prefix}:events"))
            .arg(format!("K\t{c_bare}\t{what}"))
            .query(&mut conn)
            .unwrap();
    };
    announce("m");
    let m = await_stanza(
        &mut c,
        Duration::from_secs(5),
        "the late offline chat",
        |e| e.is("message", NS_CLIENT) && body(e).is_some(),
    )
    .await;
    assert_eq!(body(&m).as_deref(), Some("late"));
    // The pending request, shown again.
    announce("s");
    await_stanza(
        &mut c,
        Duration::from_secs(5),
        "the request again",
        is_request,
    )
    .await;
    // The queue was handed over once (its row deleted): announced again,
    // it hands over nothing, so the next chat carol sees is one sent now
    // (a second copy of "late" would most likely come before it).
    announce("m");
    c.barrier().await;
    a.send_str(&format!(
        "<message to='{c_bare}/c1' type='chat' id='o3'><body>fence</body></message>"
    ))
    .await;
    let m = await_stanza(&mut c, Duration::from_secs(5), "the fence", |e| {
        e.is("message", NS_CLIENT) && body(e).is_some()
    })
    .await;
    assert_eq!(body(&m).as_deref(), Some("fence"));
}

/// A client whose network dropped comes back through another node (a
/// load balancer picked n2; its session is on n1) and resumes its
/// stream-managed session there: n1 hands it over. It gets again what it
/// never acknowledged (a chat written to it before the drop) and what was
/// queued for it meanwhile (a chat sent while it was away), each once;
/// from then on chats to its full JID reach it on n2 from both nodes; the
/// directory names n2; and its contact never saw it go unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_managed_session_resumes_on_another_node() {
    let setup = two_nodes("sa", "sb").await;
    let (prefix, nodes) = (&setup.prefix, &setup.nodes);
    let (alice, bob) = setup.users.clone();
    let (a_bare, b_bare) = (format!("{alice}@{DOMAIN}"), format!("{bob}@{DOMAIN}"));
    let b_full = format!("{b_bare}/phone");
    let mut desk = Client::login(nodes[1].c2s, &alice, "pw", Some("desk")).await;
    let mut laptop =
        Client::login_without_presence(nodes[0].c2s, &alice, "pw", Some("laptop")).await;
    let mut b = Client::login(nodes[0].c2s, &bob, "pw", Some("phone")).await;
    subscribe_both(&mut desk, &format!("{a_bare}/desk"), &mut b, &b_full).await;
    b.send_str("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = await_stanza(&mut b, Duration::from_secs(5), "<enabled/>", |e| {
        e.is("enabled", NS_SM)
    })
    .await;
    let id = enabled.attr("id").expect("a resumption id").to_string();
    // Written to bob on n1 (from alice's desk on n2), never acknowledged.
    chat_arrives(
        &mut desk,
        &b_full,
        "s1",
        "one",
        &mut b,
        Duration::from_secs(10),
    )
    .await;
    let watched = desk.mark();
    drop(b);
    // Sent while bob is away, from n1 itself: queued in n1's session.
    laptop
        .send_str(&format!(
            "<message to='{b_full}' type='chat' id='s2'><body>two</body></message>"
        ))
        .await;
    laptop.barrier().await;

    let (mut c, answer) = resume_at(nodes[1].c2s, &bob, &id).await;
    assert!(answer.is("resumed", NS_SM), "{}", show(&answer));
    assert_eq!(answer.attr("previd"), Some(id.as_str()));
    // Bob sent nothing since <enable/>.
    assert_eq!(answer.attr("h"), Some("0"));
    // Every chat bob gets from now on, in order: nothing may come twice.
    let mut bodies = Vec::new();
    for _ in 0..2 {
        bodies.push(next_chat(&mut c).await);
    }
    assert_eq!(bodies, ["one", "two"]);
    // Routed to n2 now: from n2 (local) and from n1 (forwarded).
    desk.send_str(&format!(
        "<message to='{b_full}' type='chat' id='s3'><body>three</body></message>"
    ))
    .await;
    bodies.push(next_chat(&mut c).await);
    laptop
        .send_str(&format!(
            "<message to='{b_full}' type='chat' id='s4'><body>four</body></message>"
        ))
        .await;
    bodies.push(next_chat(&mut c).await);
    assert_eq!(bodies, ["one", "two", "three", "four"]);
    let field = directory_field(&redis_url(), prefix, &b_bare, "phone").expect("bob's entry");
    assert!(field.starts_with("n2\t"), "directory: {field:?}");
    let since = c.mark();
    c.barrier().await;
    let more: Vec<String> = c.received[since..]
        .iter()
        .filter(|e| e.is("message", NS_CLIENT))
        .map(show)
        .collect();
    assert!(more.is_empty(), "after the four chats: {more:?}");
    desk.barrier().await;
    let gone: Vec<String> = desk.received[watched..]
        .iter()
        .filter(|e| is_presence_from(e, &b_full, Some("unavailable")))
        .map(show)
        .collect();
    assert!(gone.is_empty(), "alice saw bob go: {gone:?}");
}

/// The body of the next chat message `c` gets (other stanzas skipped).
async fn next_chat(c: &mut Client) -> String {
    let e = await_stanza(c, Duration::from_secs(10), "a chat", |e| {
        e.is("message", NS_CLIENT) && e.attr("type") == Some("chat")
    })
    .await;
    body(&e).unwrap_or_default()
}

const NS_SM: &str = "urn:xmpp:sm:3";

/// A new connection to `addr` that authenticates as `user` and sends
/// `<resume previd=id h=0/>`; the connection and the answer (`<resumed/>`
/// or `<failed/>`).
async fn resume_at(addr: SocketAddr, user: &str, id: &str) -> (Client, Element) {
    let mut c = Client::connect(addr).await;
    c.starttls().await;
    let outcome = c
        .scram(waxwing::sasl::ScramHash::Sha256, user, "pw", false)
        .await;
    assert_eq!(outcome.name(), "success", "{}", show(&outcome));
    c.open_stream().await;
    c.next_element().await;
    c.send_str(&format!(
        "<resume xmlns='urn:xmpp:sm:3' previd='{id}' h='0'/>"
    ))
    .await;
    let answer = await_stanza(
        &mut c,
        Duration::from_secs(15),
        "<resumed/> or <failed/>",
        |e| e.ns() == NS_SM && matches!(e.name(), "resumed" | "failed"),
    )
    .await;
    (c, answer)
}

/// Logs `user` in at `addr` and enables resumable stream management;
/// the client and the resumption id.
async fn resumable_login(addr: SocketAddr, user: &str, resource: &str) -> (Client, String) {
    let mut c = Client::login(addr, user, "pw", Some(resource)).await;
    c.send_str("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        .await;
    let enabled = await_stanza(&mut c, Duration::from_secs(5), "<enabled/>", |e| {
        e.is("enabled", NS_SM)
    })
    .await;
    let id = enabled.attr("id").expect("a resumption id").to_string();
    (c, id)
}

/// The node holding a stream-managed session is killed (SIGKILL): a
/// resumption on another node fails (`<failed/>`, item-not-found), and
/// the chat written to the session that its client never acknowledged is
/// not lost: it is in the account's archive, where the client's catch-up
/// (XEP-0313) finds it from the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_node_died_is_not_resumed_and_its_chat_is_archived() {
    let mut setup = two_nodes("sk", "sl").await;
    let (alice, bob) = setup.users.clone();
    let b_bare = format!("{bob}@{DOMAIN}");
    let b_full = format!("{b_bare}/phone");
    let mut desk = Client::login(setup.nodes[1].c2s, &alice, "pw", Some("desk")).await;
    let (mut b, id) = resumable_login(setup.nodes[0].c2s, &bob, "phone").await;
    until_routable(&mut desk, &mut b, &b_bare).await;
    let text = "written before the crash";
    chat_arrives(
        &mut desk,
        &b_full,
        "k1",
        text,
        &mut b,
        Duration::from_secs(10),
    )
    .await;
    setup.nodes[0].kill_9();
    drop(b);

    let (mut c, answer) = resume_at(setup.nodes[1].c2s, &bob, &id).await;
    assert!(answer.is("failed", NS_SM), "{}", show(&answer));
    assert!(
        answer
            .get_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
            .is_some(),
        "{}",
        show(&answer)
    );
    c.bind(Some("phone")).await;
    c.send_str("<iq type='set' id='mam1'><query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>")
        .await;
    let mut archived = Vec::new();
    loop {
        let e = await_stanza(
            &mut c,
            Duration::from_secs(10),
            "the archive's answer",
            |e| e.attr("id") == Some("mam1") || e.is("message", NS_CLIENT),
        )
        .await;
        if e.attr("id") == Some("mam1") {
            assert_eq!(e.attr("type"), Some("result"), "{}", show(&e));
            break;
        }
        let inner = e
            .get_child("result", "urn:xmpp:mam:2")
            .and_then(|r| r.get_child("forwarded", "urn:xmpp:forward:0"))
            .and_then(|f| f.get_child("message", NS_CLIENT));
        archived.extend(inner.and_then(body));
    }
    assert!(archived.iter().any(|b| b == text), "archive: {archived:?}");
}

/// PEP from any node (XEP-0163): alice publishes an OMEMO device list on
/// n1; her contact bob, on n2, whose verified capabilities ask for
/// device-list notifications (`+notify`), gets the notification (n1
/// learns his capabilities by a disco#info query that crosses to n2 and
/// whose answer comes back to n1); and a second resource of bob that
/// becomes available later, on n1, gets the last item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pep_notifications_reach_contacts_on_another_node() {
    const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
    const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
    const NS_DISCO: &str = "http://jabber.org/protocol/disco#info";
    const DEVICELIST: &str = "eu.siacs.conversations.axolotl.devicelist";
    let setup = two_nodes("pa", "pb").await;
    let nodes = &setup.nodes;
    let (alice, bob) = setup.users.clone();
    let (a_bare, b_bare) = (format!("{alice}@{DOMAIN}"), format!("{bob}@{DOMAIN}"));
    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("a")).await;
    let mut b = Client::login(nodes[1].c2s, &bob, "pw", Some("b")).await;
    subscribe_both(
        &mut a,
        &format!("{a_bare}/a"),
        &mut b,
        &format!("{b_bare}/b"),
    )
    .await;

    // Bob's client wants device-list notifications.
    let mut info = Element::new("query", NS_DISCO).with_child(
        Element::new("identity", NS_DISCO)
            .with_attr("category", "client")
            .with_attr("type", "phone")
            .with_attr("name", "cluster-test"),
    );
    for f in [NS_DISCO, &format!("{DEVICELIST}+notify")] {
        info.append_child(Element::new("feature", NS_DISCO).with_attr("var", f));
    }
    let ver = waxwing::modules::caps::verification_string(&info);
    let caps = format!(
        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://test' ver='{ver}'/>"
    );
    b.send_str(&format!("<presence>{caps}</presence>")).await;
    let publish = |n: u32| {
        format!(
            "<iq type='set' id='pub{n}'><pubsub xmlns='{NS_PUBSUB}'><publish node='{DEVICELIST}'>\
             <item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='{n}'/>\
             </list></item></publish></pubsub></iq>"
        )
    };
    // Reads until the device-list event from alice, answering the
    // server's capability queries (from either node) on the way.
    async fn event(c: &mut Client, info: &Element, from: &str) -> Element {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = tokio::time::timeout(left, c.next_element())
                .await
                .expect("the device-list notification within 10 s");
            if e.is("iq", NS_CLIENT) && e.attr("type") == Some("get") {
                if let Some(q) = e.get_child("query", "http://jabber.org/protocol/disco#info") {
                    let mut answer = info.clone();
                    answer.set_attr("node", q.attr("node").unwrap_or_default());
                    let mut reply = Element::new("iq", NS_CLIENT)
                        .with_attr("type", "result")
                        .with_attr("id", e.attr("id").unwrap_or_default())
                        .with_child(answer);
                    if let Some(to) = e.attr("from") {
                        reply.set_attr("to", to);
                    }
                    c.send_str(&show(&reply)).await;
                }
                continue;
            }
            if e.is("message", NS_CLIENT)
                && e.attr("from") == Some(from)
                && e.get_child("event", "http://jabber.org/protocol/pubsub#event")
                    .is_some()
            {
                return e;
            }
        }
    }
    // Bob's own node asks his client first; then alice publishes.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let e = b.next_element().await;
            if e.get_child("query", NS_DISCO).is_some() && e.attr("type") == Some("get") {
                let mut reply = Element::new("iq", NS_CLIENT)
                    .with_attr("type", "result")
                    .with_attr("id", e.attr("id").unwrap_or_default())
                    .with_child(info.clone());
                if let Some(to) = e.attr("from") {
                    reply.set_attr("to", to);
                }
                b.send_str(&show(&reply)).await;
                return;
            }
        }
    })
    .await;
    let r = a.iq(&publish(1), "pub1").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let e = event(&mut b, &info, &a_bare).await;
    let items = e
        .get_child("event", NS_EVENT)
        .and_then(|ev| ev.get_child("items", NS_EVENT));
    assert_eq!(
        items.and_then(|i| i.attr("node")),
        Some(DEVICELIST),
        "{}",
        show(&e)
    );
    // Once: a second publish is one more notification, not two.
    let r = a.iq(&publish(2), "pub2").await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let e = event(&mut b, &info, &a_bare).await;
    assert!(show(&e).contains("device id='2'"), "{}", show(&e));
    let since = b.mark();
    a.barrier().await;
    b.barrier().await;
    let more: Vec<String> = b.received[since..]
        .iter()
        .filter(|e| e.get_child("event", NS_EVENT).is_some())
        .map(show)
        .collect();
    assert!(more.is_empty(), "after the second publish: {more:?}");

    // Bob's second resource comes online on n1: the last item.
    let mut b2 = Client::login_without_presence(nodes[0].c2s, &bob, "pw", Some("b2")).await;
    b2.send_str(&format!("<presence>{caps}</presence>")).await;
    let e = event(&mut b2, &info, &a_bare).await;
    assert!(show(&e).contains("device id='2'"), "{}", show(&e));
}

/// Push from the node holding the session (XEP-0357): bob's
/// stream-managed session on n2 waits for resumption, with a push
/// registration at an app server (a component connected to n2). Alice,
/// on n1, writes to him: n1 sees bob's resource as attached (it cannot see
/// its connection) and forwards the message; n2, where it is queued for a
/// session whose connection is gone, publishes the notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_waiting_on_another_node_is_pushed_for() {
    const APP: &str = "push.localhost";
    let app_addr = node_addresses(2)[1];
    let setup = two_nodes_with("ua", "ub", |i, _| match i {
        1 => format!(
            "[component_listener]\nlisten = [\"{app_addr}\"]\n\
             [[component]]\ndomain = \"{APP}\"\nsecret = \"app-secret\"\n\
             [push]\nmin_interval = 0\n"
        ),
        _ => String::new(),
    })
    .await;
    let nodes = &setup.nodes;
    let (alice, bob) = setup.users.clone();
    let mut app = Client::component(app_addr, APP, "app-secret").await;
    let b_bare = format!("{bob}@{DOMAIN}");
    let (mut b, _id) = resumable_login(nodes[1].c2s, &bob, "phone").await;
    let r = b
        .iq(
            &format!(
                "<iq type='set' id='push'><enable xmlns='urn:xmpp:push:0' jid='{APP}' node='bob-phone'/></iq>"
            ),
            "push",
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("desk")).await;
    until_routable(&mut a, &mut b, &b_bare).await;
    drop(b);
    // n2 parks the session when it sees the socket gone; until then a
    // message still looks delivered. Written until a publish comes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let publish = loop {
        a.send_str(&format!(
            "<message to='{b_bare}/phone' type='chat'><body>wake up</body></message>"
        ))
        .await;
        let got = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                let e = app.next_element().await;
                if e.name() == "iq" && e.attr("type") == Some("set") {
                    return e;
                }
            }
        })
        .await;
        if let Ok(iq) = got {
            break iq;
        }
        assert!(Instant::now() < deadline, "no push from n2 within 10 s");
    };
    assert_eq!(publish.attr("from"), Some(DOMAIN), "{}", show(&publish));
    let xml = show(&publish);
    assert!(xml.contains("node='bob-phone'"), "{xml}");
    assert!(xml.contains(&format!("{alice}@{DOMAIN}/desk")), "{xml}");
}

/// An external component (XEP-0114) connected to one node is reachable
/// from every node: bob, on n2, writes to a component connected to n1
/// and gets its answer; when the component moves to n2, alice's message
/// from n1 follows it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_on_one_node_is_reachable_from_the_others() {
    const SVC: &str = "svc.localhost";
    let listeners = node_addresses(2);
    let setup = two_nodes_with("ca", "cb", |i, _| {
        format!(
            "[component_listener]\nlisten = [\"{}\"]\n\
             [[component]]\ndomain = \"{SVC}\"\nsecret = \"svc-secret\"\n",
            listeners[i]
        )
    })
    .await;
    let nodes = &setup.nodes;
    let (alice, bob) = setup.users.clone();
    let b_full = format!("{bob}@{DOMAIN}/b");
    let mut svc = Client::component(listeners[0], SVC, "svc-secret").await;
    let mut b = Client::login(nodes[1].c2s, &bob, "pw", Some("b")).await;
    // Until n2 has heard that n1 serves the component.
    let got = reaches_component(&mut b, &mut svc, SVC, "from n2").await;
    assert_eq!(got.attr("from"), Some(b_full.as_str()), "{}", show(&got));
    svc.send_str(&format!(
        "<message from='{SVC}' to='{b_full}' type='chat'><body>hello from n1</body></message>"
    ))
    .await;
    await_stanza(
        &mut b,
        Duration::from_secs(10),
        "the component's answer",
        |e| e.is("message", NS_CLIENT) && body(e).as_deref() == Some("hello from n1"),
    )
    .await;

    // The component moves to n2.
    drop(svc);
    let mut svc = loop {
        let mut c = Client::component_handshake_sent(listeners[1], SVC, "svc-secret").await;
        let answer = c.next_event().await;
        if matches!(&answer, Some(StreamEvent::Stanza(e)) if e.name() == "handshake") {
            break c;
        }
        // n1 has not seen the old connection go yet: n2 refuses a second one.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("a")).await;
    let got = reaches_component(&mut a, &mut svc, SVC, "from n1").await;
    assert_eq!(
        got.attr("from"),
        Some(format!("{alice}@{DOMAIN}/a").as_str()),
        "{}",
        show(&got)
    );
}

/// `from` writes `text` to the component `svc` until `at` (the
/// component's stream) gets it; the message as the component got it.
async fn reaches_component(from: &mut Client, at: &mut Client, svc: &str, text: &str) -> Element {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        from.send_str(&format!(
            "<message to='{svc}' type='chat'><body>{text}</body></message>"
        ))
        .await;
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                let e = at.next_element().await;
                if e.name() == "message" && body_any(&e).as_deref() == Some(text) {
                    return e;
                }
            }
        })
        .await;
        if let Ok(e) = got {
            return e;
        }
        assert!(Instant::now() < deadline, "{svc} never reached: {text}");
    }
}

/// The body of a message in any namespace (a component's stream is
/// `jabber:component:accept`).
fn body_any(e: &Element) -> Option<String> {
    e.children().find(|c| c.name() == "body").map(|b| b.text())
}

/// Federation from every node (RFC 6120 server-to-server, dialback): a
/// remote server (`remote.test`, in this process) reaches the cluster's
/// domain at n1 only. Its user writes to alice (on n1) and bob (on n2):
/// both get it, n1 forwarding bob's. Each answers from its own node, n2
/// over a stream of its own, which the remote server checks by dialback
/// against the domain, that is at n1: n1 verifies n2's key because every
/// node derives keys from the one `[s2s] dialback_secret`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_every_node_federate_with_a_remote_server() {
    const REMOTE: &str = "remote.test";
    let certs = tempfile::tempdir().unwrap();
    let ours = cert_dir(&certs, DOMAIN);
    let theirs = cert_dir(&certs, REMOTE);
    let remote_s2s = free_port();
    let s2s = node_addresses(2);
    let setup = two_nodes_with("fa", "fb", |i, node| {
        // One certificate for the domain on every node.
        let dir = node.dir.path().join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["dev-cert.pem", "dev-key.pem"] {
            std::fs::copy(ours.join(f), dir.join(f)).unwrap();
        }
        format!(
            "[s2s]\nlisten = [\"{}\"]\nca_file = {:?}\nsasl_external = false\nbidi = false\n\
             dialback_secret = \"one-secret-for-the-cluster\"\n\
             [s2s.hosts]\n\"{REMOTE}\" = \"127.0.0.1:{remote_s2s}\"\n",
            s2s[i],
            theirs.join("dev-cert.pem").display().to_string()
        )
    })
    .await;
    let nodes = &setup.nodes;
    let (alice, bob) = setup.users.clone();
    let (theirs_dir, ours_pem) = (theirs.clone(), ours.join("dev-cert.pem"));
    let remote = TestServer::start_with(move |c| {
        c.host = vec![waxwing::config::HostConfig {
            domain: REMOTE.into(),
            cert: None,
            key: None,
            allow_registration: false,
        }];
        c.tls.dev_cert_dir = theirs_dir;
        c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], remote_s2s))];
        c.s2s.ca_file = ours_pem.display().to_string();
        c.s2s.sasl_external = false;
        c.s2s.bidi = false;
        c.s2s.connect_timeout = 5;
        c.s2s.dialback_secret = "the-remote-secret".into();
        // The cluster's domain is at n1 only.
        c.s2s.hosts.insert(DOMAIN.into(), s2s[0].to_string());
    })
    .await;
    remote.add_user_at(REMOTE, "r", "pw").await;
    let mut r = Client::login_at(remote.plain_addr, REMOTE, "r", "pw", Some("pc")).await;
    let r_full = format!("r@{REMOTE}/pc");
    let mut a = Client::login(nodes[0].c2s, &alice, "pw", Some("a")).await;
    let mut b = Client::login(nodes[1].c2s, &bob, "pw", Some("b")).await;
    for (to, c) in [(&alice, &mut a), (&bob, &mut b)] {
        r.send_str(&format!(
            "<message to='{to}@{DOMAIN}/{}' type='chat'><body>to {to}</body></message>",
            if *to == alice { "a" } else { "b" }
        ))
        .await;
        let got = await_stanza(c, Duration::from_secs(15), "the remote user's chat", |e| {
            e.is("message", NS_CLIENT) && body(e) == Some(format!("to {to}"))
        })
        .await;
        assert_eq!(got.attr("from"), Some(r_full.as_str()), "{}", show(&got));
    }
    for (name, c) in [("alice", &mut a), ("bob", &mut b)] {
        c.send_str(&format!(
            "<message to='{r_full}' type='chat'><body>from {name}</body></message>"
        ))
        .await;
        await_stanza(
            &mut r,
            Duration::from_secs(15),
            "an answer from the cluster",
            |e| e.is("message", NS_CLIENT) && body(e) == Some(format!("from {name}")),
        )
        .await;
    }
}

// ---- Chat rooms across nodes (issue #16: one node serves a room) ----

use common::muc::NS_ADMIN;

/// A room's name (its JID's node), as the shared MUC steps take it.
fn room_name(room: &str) -> &str {
    room.split('@').next().unwrap_or(room)
}

/// Joins `room` (a JID) as `nick`; returns the nicks of the occupants the
/// joiner was shown, sorted.
async fn muc_join(c: &mut Client, room: &str, nick: &str) -> Vec<String> {
    let joined = common::muc::join(c, room_name(room), nick).await;
    let mut others: Vec<String> = joined
        .others
        .iter()
        .filter_map(|p| p.attr("from")?.rsplit('/').next().map(String::from))
        .collect();
    others.sort();
    others
}

/// Makes `room` as `owner` (nick "owner"), unlocked, with `fields` set.
async fn muc_create(c: &mut Client, room: &str, fields: &[(&str, &str)]) {
    common::muc::create_room(c, room_name(room), fields).await;
}

/// The room's owners as `c` asks for them (an IQ result, or the error).
async fn owner_list(c: &mut Client, room: &str) -> Element {
    c.iq(
        &format!(
            "<iq type='get' id='own' to='{room}'><query xmlns='{NS_ADMIN}'>\
             <item affiliation='owner'/></query></iq>"
        ),
        "own",
    )
    .await
}

/// A disco query (`ns`: disco#info or disco#items) from `c` to `to`: the
/// IQ result, or the error.
async fn disco(c: &mut Client, to: &str, ns: &str, id: &str) -> Element {
    c.iq(
        &format!("<iq type='get' id='{id}' to='{to}'><query xmlns='{ns}'/></iq>"),
        id,
    )
    .await
}

/// The group chat `text` as `at` receives it from the room (others
/// skipped), or panics.
async fn groupchat_arrives(at: &mut Client, room: &str, text: &str) -> Element {
    await_stanza(
        at,
        Duration::from_secs(10),
        &format!("'{text}' in {room}"),
        |e| {
            e.is("message", NS_CLIENT)
                && e.attr("type") == Some("groupchat")
                && e.attr("from").is_some_and(|f| f.starts_with(room))
                && body(e).as_deref() == Some(text)
        },
    )
    .await
}

/// The lease of `room` in Redis: (node, fencing number).
fn room_lease(prefix: &str, room: &str) -> Option<(String, u64)> {
    let mut c = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let v: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}:rooms"))
        .arg(room)
        .query(&mut c)
        .unwrap();
    let (node, fence) = v?
        .split_once('\t')
        .map(|(n, f)| (n.to_string(), f.to_string()))?;
    Some((node, fence.parse().unwrap()))
}

/// A room with occupants on three nodes is one room: the node of its
/// first stanza takes its lease and serves it; the others hand its
/// stanzas to that node, and what it sends occupants elsewhere crosses
/// the bus. Joins show every occupant, group chat from any node reaches
/// all, a private message crosses, the service's room list on another
/// node has the room, `ctl cluster status` counts the room on its node,
/// and a stanza to a room nobody uses leaves no lease behind. (Each node served its own copy before: b's join
/// on n2 made a new, locked room.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_with_occupants_on_three_nodes_is_one_room() {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let _keys = RedisKeys(prefix.clone());
    let users = [format!("ra{tag}"), format!("rb{tag}"), format!("rc{tag}")];
    add_users(&[&users[0], &users[1], &users[2]]).await;
    let redis = [redis_url(), redis_url(), redis_url()];
    let nodes = start_nodes(3, &prefix, &redis, TTL_MS);
    let room = format!("hall{tag}@conference.{DOMAIN}");

    let mut a = Client::login(nodes[0].c2s, &users[0], "pw", Some("a")).await;
    let mut b = Client::login(nodes[1].c2s, &users[1], "pw", Some("b")).await;
    let mut c = Client::login(nodes[2].c2s, &users[2], "pw", Some("c")).await;
    muc_create(&mut a, &room, &[("muc#roomconfig_persistentroom", "1")]).await;
    assert_eq!(
        room_lease(&prefix, &room).map(|l| l.0).as_deref(),
        Some("n1")
    );

    assert_eq!(muc_join(&mut b, &room, "bee").await, ["owner"]);
    await_stanza(&mut a, Duration::from_secs(10), "bee's join", |e| {
        is_presence_from(e, &format!("{room}/bee"), None)
    })
    .await;
    assert_eq!(muc_join(&mut c, &room, "cee").await, ["bee", "owner"]);
    for x in [&mut a, &mut b] {
        await_stanza(x, Duration::from_secs(10), "cee's join", |e| {
            is_presence_from(e, &format!("{room}/cee"), None)
        })
        .await;
    }

    // Group chat from each node reaches every node.
    for (i, text) in ["from n3", "from n2", "from n1"].into_iter().enumerate() {
        let sender = match i {
            0 => &mut c,
            1 => &mut b,
            _ => &mut a,
        };
        sender
            .send_str(&format!(
                "<message to='{room}' type='groupchat'><body>{text}</body></message>"
            ))
            .await;
        for x in [&mut a, &mut b, &mut c] {
            let got = groupchat_arrives(x, &room, text).await;
            assert!(
                got.get_child("stanza-id", "urn:xmpp:sid:0").is_some(),
                "{}",
                show(&got)
            );
        }
    }

    // A private message from n2 to the occupant on n1.
    b.send_str(&format!(
        "<message to='{room}/owner' type='chat'><body>psst</body></message>"
    ))
    .await;
    let pm = await_stanza(
        &mut a,
        Duration::from_secs(10),
        "the private message",
        |e| e.is("message", NS_CLIENT) && body(e).as_deref() == Some("psst"),
    )
    .await;
    assert_eq!(pm.attr("from"), Some(format!("{room}/bee").as_str()));

    // The service's room list on n3 has the room n1 holds.
    let items = disco(
        &mut c,
        &format!("conference.{DOMAIN}"),
        "http://jabber.org/protocol/disco#items",
        "items",
    )
    .await;
    let listed: Vec<&str> = items
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .map(|q| q.children().filter_map(|i| i.attr("jid")).collect())
        .unwrap_or_default();
    assert!(listed.contains(&room.as_str()), "{}", show(&items));

    // The room is n1's alone.
    let status = nodes[2].cluster_status_rooms();
    assert!(status.contains(&("n1".to_string(), 1)), "{status:?}");
    assert!(
        !status.iter().any(|(n, r)| n != "n1" && *r > 0),
        "{status:?}"
    );

    // A stanza to a room name nobody uses leaves no lease behind (what
    // Redis keeps follows the rooms that exist).
    let nosuch = format!("nosuch{tag}@conference.{DOMAIN}");
    let r = disco(
        &mut c,
        &nosuch,
        "http://jabber.org/protocol/disco#info",
        "ghost",
    )
    .await;
    assert_eq!(r.attr("type"), Some("error"), "{}", show(&r));
    let deadline = Instant::now() + Duration::from_secs(5);
    while room_lease(&prefix, &nosuch).is_some() {
        assert!(Instant::now() < deadline, "the unused room's lease stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // c leaves from n3: the others see it.
    c.send_str(&format!("<presence to='{room}/cee' type='unavailable'/>"))
        .await;
    for x in [&mut a, &mut b] {
        await_stanza(x, Duration::from_secs(10), "cee's departure", |e| {
            is_presence_from(e, &format!("{room}/cee"), Some("unavailable"))
        })
        .await;
    }
}

/// The node holding two rooms (one persistent, one temporary) is killed
/// (SIGKILL). The reaper's node takes both over at once: the dead node's
/// user leaves the rooms (333, seen by the others, with nothing sent to
/// the rooms: fails without the reaper's hand-over); the occupants on
/// the surviving nodes stay without a rejoin and chat on, the room's
/// lease has moved with a larger fencing number, the persistent room
/// kept its configuration and owner, and the temporary one its occupants
/// (fails without the occupant records: b is no occupant of the room
/// taken over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_survive_the_death_of_their_node() {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let _keys = RedisKeys(prefix.clone());
    let users = [format!("ka{tag}"), format!("kb{tag}"), format!("kc{tag}")];
    add_users(&[&users[0], &users[1], &users[2]]).await;
    let redis = [redis_url(), redis_url(), redis_url()];
    let mut nodes = start_nodes(3, &prefix, &redis, TTL_MS);
    let kept = format!("kept{tag}@conference.{DOMAIN}");
    let temp = format!("temp{tag}@conference.{DOMAIN}");

    let mut a = Client::login(nodes[0].c2s, &users[0], "pw", Some("a")).await;
    let mut b = Client::login(nodes[1].c2s, &users[1], "pw", Some("b")).await;
    let mut c = Client::login(nodes[2].c2s, &users[2], "pw", Some("c")).await;
    muc_create(&mut a, &kept, &[("muc#roomconfig_persistentroom", "1")]).await;
    muc_create(&mut a, &temp, &[]).await;
    for room in [&kept, &temp] {
        assert_eq!(muc_join(&mut b, room, "bee").await, ["owner"]);
        assert_eq!(muc_join(&mut c, room, "cee").await, ["bee", "owner"]);
    }
    let (_, fence_before) = room_lease(&prefix, &kept).expect("a lease");
    // Everything the joins recorded is in Redis before the kill.
    c.barrier().await;
    b.barrier().await;

    let killed = Instant::now();
    nodes[0].kill_9();
    // Taken over by the reaper's node with nothing sent to the rooms: the
    // survivors see the dead node's user leave.
    // (Both rooms' departures, in whichever order the rooms were taken.)
    let owners = [format!("{kept}/owner"), format!("{temp}/owner")];
    for x in [&mut b, &mut c] {
        let mut seen = Vec::new();
        while seen.len() < owners.len() {
            let gone = await_stanza(x, Duration::from_secs(10), "the owner's departures", |e| {
                owners
                    .iter()
                    .any(|o| is_presence_from(e, o, Some("unavailable")))
            })
            .await;
            assert!(common::muc::codes(&gone).contains(&333), "{}", show(&gone));
            let from = gone.attr("from").unwrap_or_default().to_string();
            if !seen.contains(&from) {
                seen.push(from);
            }
        }
    }
    eprintln!(
        "both rooms taken over {:?} after the kill",
        killed.elapsed()
    );
    for room in [&kept, &temp] {
        b.send_str(&format!(
            "<message to='{room}' type='groupchat'><body>after the kill</body></message>"
        ))
        .await;
        groupchat_arrives(&mut c, room, "after the kill").await;
    }
    let (holder, fence_after) = room_lease(&prefix, &kept).expect("a lease");
    assert_ne!(holder, "n1");
    assert!(fence_after > fence_before, "{fence_before} → {fence_after}");

    // The persistent room kept its owner: a's affiliation is listed.
    let owners = owner_list(&mut b, &kept).await;
    // Only owners may list owners: a participant is refused, which says
    // the room is there and knows b.
    assert_eq!(owners.attr("type"), Some("error"), "{}", show(&owners));
    assert!(
        owners.get_child("error", NS_CLIENT).is_some_and(|e| e
            .get_child("forbidden", "urn:ietf:params:xml:ns:xmpp-stanzas")
            .is_some()),
        "{}",
        show(&owners)
    );
    // a logs in again on a survivor and is still the owner.
    let mut a2 = Client::login(nodes[2].c2s, &users[0], "pw", Some("a2")).await;
    let shown = muc_join(&mut a2, &kept, "owner").await;
    assert_eq!(shown, ["bee", "cee"]);
    let owners = owner_list(&mut a2, &kept).await;
    assert_eq!(owners.attr("type"), Some("result"), "{}", show(&owners));
}

/// A TCP relay to PostgreSQL whose traffic can be held: bytes read while
/// it is paused are written only when it resumes (a database that stops
/// answering one node, as a stall or a partition would).
struct PauseRelay {
    port: u16,
    paused: tokio::sync::watch::Sender<bool>,
}

impl PauseRelay {
    async fn start(target: String) -> PauseRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (paused, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(out) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = out.into_split();
                tokio::spawn(Self::pipe(ri, wo, watch.clone()));
                tokio::spawn(Self::pipe(ro, wi, watch.clone()));
            }
        });
        PauseRelay { port, paused }
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut paused: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if paused.wait_for(|p| !*p).await.is_err() {
                return;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn pause(&self, on: bool) {
        self.paused.send_replace(on);
    }
}

/// The PostgreSQL URL with its host and port replaced by `addr`.
fn postgres_url_via(addr: &str) -> String {
    let url = postgres_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, rest) = rest.split_once('@').unwrap();
    let (_, path) = rest.split_once('/').unwrap();
    format!("{scheme}://{user}@{addr}/{path}")
}

fn redis_exists(key: &str) -> bool {
    let mut c = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("EXISTS").arg(key).query::<i64>(&mut c).unwrap() == 1
}

/// Fencing: n1 holds a persistent room and is writing its new subject
/// when its database stalls and it is stopped (SIGSTOP) past its
/// liveness. n2 takes the room over (a larger fencing number) and writes
/// its own subject. When n1 runs again (SIGCONT) and its write reaches
/// PostgreSQL, it is refused by the fencing check: the stored subject is
/// n2's, and n1 drops the room. Without the check n1's stale subject
/// overwrites n2's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_s_write_is_refused_by_the_fencing_check() {
    let setup = two_nodes("fa", "fb").await;
    let prefix = setup.prefix.clone();
    // Dropped before the setup's keys: the nodes stop first.
    let mut nodes = setup.nodes;
    // n1 again, its database behind a relay that can hold its traffic.
    let pg = postgres_url();
    let authority = pg
        .split_once('@')
        .unwrap()
        .1
        .split_once('/')
        .unwrap()
        .0
        .to_string();
    let relay = PauseRelay::start(authority).await;
    nodes[0].terminate();
    let via = postgres_url_via(&format!("127.0.0.1:{}", relay.port));
    let config = std::fs::read_to_string(&nodes[0].config).unwrap();
    std::fs::write(
        &nodes[0].config,
        config.replace(&format!("{pg:?}"), &format!("{via:?}")),
    )
    .unwrap();
    nodes[0].spawn();
    nodes[0].wait_ready();

    let tag = rand::random::<u32>();
    let room = format!("fence{tag}@conference.{DOMAIN}");
    let (name, service) = room.split_once('@').unwrap();
    let mut a = Client::login(nodes[0].c2s, &setup.users.0, "pw", Some("a")).await;
    let mut b = Client::login(nodes[1].c2s, &setup.users.1, "pw", Some("b")).await;
    muc_create(
        &mut a,
        &room,
        &[
            ("muc#roomconfig_persistentroom", "1"),
            ("muc#roomconfig_changesubject", "1"),
        ],
    )
    .await;
    muc_join(&mut b, &room, "bee").await;
    let store = Store::open(&postgres_url(), 2).await.unwrap();
    let fence_of = |store: Store| async move { store.muc_fence(service, name).await.unwrap() };
    let first = fence_of(store.clone()).await;
    assert!(first > 0, "the room's write carried no fence");

    // n1's database stalls; its new subject is broadcast, its write held.
    relay.pause(true);
    a.send_str(&format!(
        "<message to='{room}' type='groupchat'><subject>stale</subject></message>"
    ))
    .await;
    await_stanza(&mut b, Duration::from_secs(10), "the stale subject", |e| {
        e.get_child("subject", NS_CLIENT)
            .is_some_and(|s| s.text() == "stale")
    })
    .await;
    nodes[0].signal("-STOP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis_exists(&format!("{prefix}:node:n1")) {
        assert!(Instant::now() < deadline, "n1's liveness never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // n2 takes the room over and writes its subject with a larger fence.
    b.send_str(&format!(
        "<message to='{room}' type='groupchat'><subject>fresh</subject></message>"
    ))
    .await;
    await_stanza(&mut b, Duration::from_secs(10), "the fresh subject", |e| {
        e.get_child("subject", NS_CLIENT)
            .is_some_and(|s| s.text() == "fresh")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = store.muc_room(service, name).await.unwrap().unwrap();
        if stored.subject == "fresh" {
            break;
        }
        assert!(Instant::now() < deadline, "n2 never wrote: {stored:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = fence_of(store.clone()).await;
    assert!(second > first, "{first} → {second}");
    assert_eq!(
        room_lease(&prefix, &room).map(|l| l.0).as_deref(),
        Some("n2")
    );

    // n1 runs again; its held write reaches PostgreSQL and is refused.
    nodes[0].signal("-CONT");
    relay.pause(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(nodes[0].log_path())
        .unwrap_or_default()
        .contains("refused by the fencing check")
    {
        assert!(
            Instant::now() < deadline,
            "n1's write never refused:\n{}",
            nodes[0].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = store.muc_room(service, name).await.unwrap().unwrap();
    assert_eq!(stored.subject, "fresh");
    assert_eq!(fence_of(store.clone()).await, second);
    store.close().await;
}

/// A rolling upgrade: the node holding a room leaves cleanly (SIGTERM)
/// and starts again. Its own user's occupant leaves the room (332, seen
/// by the others, recorded before the node is gone); the occupants on
/// the other nodes stay and chat on, served by the node that takes the
/// room over; back up, the node serves its user in the room held
/// elsewhere now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_lives_through_a_rolling_restart_of_its_node() {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let _keys = RedisKeys(prefix.clone());
    let users = [format!("ua{tag}"), format!("ub{tag}"), format!("uc{tag}")];
    add_users(&[&users[0], &users[1], &users[2]]).await;
    let redis = [redis_url(), redis_url(), redis_url()];
    let mut nodes = start_nodes(3, &prefix, &redis, TTL_MS);
    let room = format!("roll{tag}@conference.{DOMAIN}");

    let mut a = Client::login(nodes[0].c2s, &users[0], "pw", Some("a")).await;
    let mut b = Client::login(nodes[1].c2s, &users[1], "pw", Some("b")).await;
    let mut c = Client::login(nodes[2].c2s, &users[2], "pw", Some("c")).await;
    muc_create(&mut a, &room, &[("muc#roomconfig_persistentroom", "1")]).await;
    muc_join(&mut b, &room, "bee").await;
    muc_join(&mut c, &room, "cee").await;
    b.barrier().await;

    nodes[0].terminate();
    for x in [&mut b, &mut c] {
        let gone = await_stanza(x, Duration::from_secs(10), "the owner's departure", |e| {
            is_presence_from(e, &format!("{room}/owner"), Some("unavailable"))
        })
        .await;
        assert!(common::muc::codes(&gone).contains(&332), "{}", show(&gone));
    }
    b.send_str(&format!(
        "<message to='{room}' type='groupchat'><body>still here</body></message>"
    ))
    .await;
    groupchat_arrives(&mut c, &room, "still here").await;
    groupchat_arrives(&mut b, &room, "still here").await;
    let holder = room_lease(&prefix, &room).expect("a lease").0;
    assert_ne!(holder, "n1");

    // n1 back: its user joins the room another node holds now.
    nodes[0].spawn();
    nodes[0].wait_ready();
    let mut a2 = Client::login(nodes[0].c2s, &users[0], "pw", Some("a2")).await;
    assert_eq!(muc_join(&mut a2, &room, "owner").await, ["bee", "cee"]);
    a2.send_str(&format!(
        "<message to='{room}' type='groupchat'><body>back</body></message>"
    ))
    .await;
    groupchat_arrives(&mut c, &room, "back").await;
    groupchat_arrives(&mut a2, &room, "back").await;
}

/// The web transport in a cluster: a browser's WebSocket session on n1
/// is a session like any other: a TCP user on n2 chats with it both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_on_one_node_chats_with_a_user_on_another() {
    let tag = rand::random::<u32>();
    let prefix = format!("wxtest-{tag}");
    let _keys = RedisKeys(prefix.clone());
    let (webby, tcpy) = (format!("wa{tag}"), format!("wb{tag}"));
    add_users(&[&webby, &tcpy]).await;
    let http: SocketAddr = format!("127.0.0.21:{}", free_port()).parse().unwrap();
    let nodes = start_nodes_with(
        2,
        &prefix,
        &[redis_url(), redis_url()],
        TTL_MS,
        |i, node| {
            if i == 0 {
                let config = std::fs::read_to_string(&node.config).unwrap();
                let config = config.replace(
                    "[http]\nlisten = []",
                    &format!("[http]\nlisten = [\"{http}\"]"),
                );
                std::fs::write(&node.config, config).unwrap();
            }
            String::new()
        },
    );
    let mut ws = common::ws::Ws::connect(http).await;
    let web_full = ws.login(&webby, "pw", "browser").await;
    ws.send("<presence xmlns='jabber:client'/>").await;
    let mut tcp = Client::login(nodes[1].c2s, &tcpy, "pw", Some("desk")).await;
    let tcp_full = format!("{tcpy}@{DOMAIN}/desk");

    // Until n2 knows the browser's session (headlines to a bare JID with
    // no resource known are dropped, never stored).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tcp.send_str(&format!(
            "<message to='{webby}@{DOMAIN}' type='headline'><body>sync</body></message>"
        ))
        .await;
        let got = tokio::time::timeout(Duration::from_millis(300), ws.next_message()).await;
        if got.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the browser never routable from n2"
        );
    }
    tcp.send_str(&format!(
        "<message to='{web_full}' type='chat'><body>hello browser</body></message>"
    ))
    .await;
    let m = loop {
        let m = ws.next_message().await;
        if common::ws::body(&m) != "sync" {
            break m;
        }
    };
    assert_eq!(common::ws::body(&m), "hello browser");
    assert_eq!(m.attr("from"), Some(tcp_full.as_str()));

    ws.send(&format!(
        "<message xmlns='jabber:client' to='{tcp_full}' type='chat'><body>hello desk</body></message>"
    ))
    .await;
    let m = await_stanza(
        &mut tcp,
        Duration::from_secs(10),
        "the browser's chat",
        |e| e.is("message", NS_CLIENT) && body(e).as_deref() == Some("hello desk"),
    )
    .await;
    assert_eq!(m.attr("from"), Some(web_full.as_str()));
}
