//! The admin channel (`waxwing ctl` → running server) over its real Unix
//! socket: what `sessions list`, `components list`, `s2s list` and `stats`
//! show; bad, overlong and silent requests; the socket's mode, a stale
//! socket, a second server, removal at shutdown; and the `waxwing ctl`
//! commands run as the real binary against `waxwing serve`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use waxwing::admin::CallError;
use waxwing::config::{ComponentConfig, Config, HostConfig};
use waxwing::server::{RunningServer, Server};

const BOT: &str = "bot.localhost";
const IDLE_BOT: &str = "idle.localhost";
const SECRET: &str = "s3cret";

/// Asks and expects `ok`.
async fn ask(path: &Path, line: &str) -> Vec<Vec<String>> {
    match waxwing::admin::request(path, line).await {
        Ok(rows) => rows,
        Err(e) => panic!("{line}: {e:?}"),
    }
}

async fn stats(path: &Path) -> HashMap<String, String> {
    ask(path, "stats")
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r.len(), 2, "{r:?}");
            (r[0].clone(), r[1].clone())
        })
        .collect()
}

/// Asks until `done` holds for the rows (state changes as connections
/// come and go), or panics after 10 s.
async fn ask_until(
    path: &Path,
    line: &str,
    done: impl Fn(&[Vec<String>]) -> bool,
) -> Vec<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = ask(path, line).await;
        if done(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{line}: still {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `bytes` as they are and returns the whole answer.
async fn raw(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

/// A component connection that completed its handshake.
async fn component(addr: SocketAddr, domain: &str) -> Client {
    Client::component(addr, domain, SECRET).await
}

#[tokio::test]
async fn sessions_components_and_stats_show_what_the_server_holds() {
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
    let sock = ts.admin_socket();
    assert_eq!(
        sock,
        ts.dir.path().join("waxwing.sock"),
        "beside the database"
    );
    assert!(ask(&sock, "sessions list").await.is_empty());
    assert_eq!(stats(&sock).await["c2s_sessions"], "0");

    let mut alice = Client::login(ts.plain_addr, "alice", "pw", Some("phone")).await;
    alice.next_named("presence").await;
    let component_addr = ts.running.as_ref().unwrap().component_addrs[0];
    let _bot = component(component_addr, BOT).await;

    let sessions = ask(&sock, "sessions list").await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert_eq!(s.len(), 5, "{s:?}");
    assert_eq!(s[0], "alice@localhost/phone");
    assert!(s[1].parse::<u64>().is_ok(), "connection id: {s:?}");
    assert_eq!((s[2].as_str(), s[3].as_str()), ("yes", "0"), "{s:?}");
    assert!(s[4].parse::<u64>().unwrap() < 60);

    let components = ask(&sock, "components list").await;
    assert_eq!(components.len(), 2, "{components:?}");
    let (bot, idle) = (&components[0], &components[1]);
    assert_eq!((bot[0].as_str(), bot[1].as_str()), (BOT, "yes"), "{bot:?}");
    assert!(bot[2].parse::<u64>().is_ok(), "{bot:?}");
    assert!(
        bot[3]
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback()),
        "peer address: {bot:?}"
    );
    assert_eq!(idle, &[IDLE_BOT, "no", "-", "-", "-"], "{idle:?}");

    let st = stats(&sock).await;
    assert_eq!(st["c2s_sessions"], "1", "{st:?}");
    assert_eq!(st["c2s_sessions_waiting_resumption"], "0", "{st:?}");
    assert_eq!(st["components_connected"], "1", "{st:?}");
    assert_eq!(st["components_configured"], "2", "{st:?}");
    assert_eq!(st["s2s_connections_in"], "0", "{st:?}");
    assert_eq!(st["s2s_connections_out"], "0", "{st:?}");
    assert_eq!(st["s2s_outgoing_streams"], "0", "{st:?}");
    assert!(st["uptime_seconds"].parse::<u64>().is_ok(), "{st:?}");
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));

    // Gone from the list when the session ends.
    alice.send_str("</stream:stream>").await;
    alice.expect_closed().await;
    ask_until(&sock, "sessions list", |r| r.is_empty()).await;
}

#[tokio::test]
async fn bad_overlong_and_silent_requests_get_errors_and_the_server_keeps_serving() {
    let ts = TestServer::start().await;
    let sock = ts.admin_socket();

    let answer = raw(&sock, b"bogus command\n").await;
    assert!(
        answer.starts_with("error unknown command 'bogus command'"),
        "{answer}"
    );
    assert_eq!(answer.lines().count(), 1, "{answer}");
    assert_eq!(raw(&sock, b"\n").await, "error empty request\n");
    assert_eq!(
        raw(&sock, b"\xff\xfe\n").await,
        "error the request is not UTF-8\n"
    );
    match waxwing::admin::request(&sock, "sessions").await {
        Err(CallError::Server(e)) => assert!(e.starts_with("unknown command"), "{e}"),
        other => panic!("{other:?}"),
    }

    // Too long, with or without its line end: answered at once, without
    // waiting for the rest.
    let mut long = vec![b'a'; 2000];
    long.push(b'\n');
    assert_eq!(
        raw(&sock, &long).await,
        "error request line longer than 1024 bytes\n"
    );
    let mut s = UnixStream::connect(&sock).await.unwrap();
    s.write_all(&[b'x'; 4096]).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut answer))
        .await
        .expect("answered before the client stops writing")
        .unwrap();
    assert_eq!(answer, "error request line longer than 1024 bytes\n");

    // A client that says nothing does not hold up others, and is answered
    // with an error after the read timeout.
    let mut silent = UnixStream::connect(&sock).await.unwrap();
    let started = Instant::now();
    assert_eq!(stats(&sock).await["c2s_sessions"], "0");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(15), silent.read_to_string(&mut answer))
        .await
        .expect("the silent client is dropped")
        .unwrap();
    assert_eq!(answer, "error timed out waiting for the request line\n");
    assert!(started.elapsed() >= Duration::from_secs(4));

    // Still serving.
    assert_eq!(ask(&sock, "s2s list").await.len(), 0);
    assert_eq!(
        raw(&sock, b"STATS\r\n").await.lines().next(),
        Some("ok"),
        "case and CRLF are tolerated"
    );
}

/// A configuration like `TestServer`'s, with its own data directory.
fn config_in(dir: &Path) -> Config {
    let mut c = Config::default();
    c.database.url = format!("sqlite://{}/waxwing.db", dir.display());
    c.tls.dev_cert_dir = dir.join("certs");
    c.c2s.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.c2s.listen_tls = vec![];
    c.http.listen = vec![];
    c.http.listen_tls = vec![];
    c.log_level = "warn".into();
    c
}

async fn start(config: Config) -> Result<RunningServer, String> {
    RunningServer::start(Server::new(config).await.unwrap()).await
}

#[tokio::test]
async fn socket_is_owner_only_replaces_a_stale_one_refuses_a_live_one_and_goes_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run").join("ctl.sock");
    // A socket left by a server that died: nobody answers on it.
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let mut config = config_in(&dir.path().join("one"));
    config.admin.socket = Some(sock.display().to_string());
    let first = start(config.clone())
        .await
        .expect("a stale socket is replaced");
    assert_eq!(first.admin_socket(), Some(sock.as_path()));
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner only");
    assert_eq!(stats(&sock).await["c2s_sessions"], "0");

    // A second server on the same socket stops at start, whatever its data.
    config.database.url = format!("sqlite://{}/two/waxwing.db", dir.path().display());
    let err = start(config.clone()).await.err().expect("refused");
    assert!(err.contains("another server answers"), "{err}");
    assert!(err.contains(&sock.display().to_string()), "{err}");
    // …and the first is untouched.
    assert_eq!(stats(&sock).await["c2s_sessions"], "0");

    // Something other than a socket in the way.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    config.admin.socket = Some(file.display().to_string());
    let err = start(config.clone()).await.err().expect("refused");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x", "left alone");

    first.shutdown(Duration::from_secs(5)).await;
    assert!(!sock.exists(), "removed at shutdown");
    assert!(matches!(
        waxwing::admin::request(&sock, "stats").await,
        Err(CallError::NoServer)
    ));

    // The default place (beside the database): a second server on the same
    // data is refused too…
    let data = dir.path().join("shared");
    let running = start(config_in(&data)).await.unwrap();
    let err = start(config_in(&data)).await.err().expect("refused");
    assert!(err.contains("another server answers"), "{err}");
    running.shutdown(Duration::from_secs(5)).await;
    // …but a default place that cannot be used only costs the channel.
    std::fs::write(data.join("waxwing.sock"), "x").unwrap();
    let running = start(config_in(&data)).await.unwrap();
    assert_eq!(running.admin_socket(), None);
    running.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        std::fs::read_to_string(data.join("waxwing.sock")).unwrap(),
        "x"
    );

    // Disabled with an empty path: no socket at all.
    let mut config = config_in(&dir.path().join("three"));
    config.admin.socket = Some(String::new());
    let running = start(config).await.unwrap();
    assert_eq!(running.admin_socket(), None);
    assert!(!dir.path().join("three").join("waxwing.sock").exists());
    running.shutdown(Duration::from_secs(5)).await;
}

// --- two federating servers, set up as tests/s2s.rs does ----------------

const A: &str = "a.test";
const B: &str = "b.test";

/// `domain` on s2s `port`, trusting the certificate in `peer_certs`,
/// reaching `peer` at `peer_port`.
async fn federating(
    domain: &str,
    port: u16,
    certs: PathBuf,
    peer_certs: PathBuf,
    peer: &str,
    peer_port: u16,
) -> TestServer {
    let ts = TestServer::start_with(|c| {
        c.host = vec![HostConfig {
            domain: domain.into(),
            cert: None,
            key: None,
            allow_registration: false,
        }];
        c.tls.dev_cert_dir = certs;
        c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        c.s2s.ca_file = peer_certs.join("dev-cert.pem").display().to_string();
        c.s2s.connect_timeout = 5;
        c.s2s
            .hosts
            .insert(peer.into(), format!("127.0.0.1:{peer_port}"));
    })
    .await;
    ts.add_user_at(domain, "user", "pw").await;
    ts
}

fn rows_with<'a>(rows: &'a [Vec<String>], direction: &str) -> Vec<&'a Vec<String>> {
    rows.iter().filter(|r| r[0] == direction).collect()
}

#[tokio::test]
async fn s2s_list_shows_the_outgoing_and_the_incoming_connection() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cb) = (cert_dir(&certs, A), cert_dir(&certs, B));
    let (pa, pb) = (free_port(), free_port());
    let a = federating(A, pa, ca.clone(), cb.clone(), B, pb).await;
    let b = federating(B, pb, cb, ca, A, pa).await;
    let (sa, sb) = (a.admin_socket(), b.admin_socket());
    assert!(ask(&sa, "s2s list").await.is_empty());

    let mut ua = Client::login_at(a.plain_addr, A, "user", "pw", Some("r")).await;
    let mut ub = Client::login_at(b.plain_addr, B, "user", "pw", Some("r")).await;
    ub.send_str("<presence/>").await;
    ub.next_named("presence").await;
    ua.send_str("<message to='user@b.test/r' type='chat'><body>hi</body></message>")
        .await;
    let m = ub.next_named("message").await;
    assert_eq!(m.attr("from"), Some("user@a.test/r"));

    // a.test connected out to b.test, which authenticated it by certificate.
    let rows = ask_until(&sa, "s2s list", |r| {
        rows_with(r, "out").iter().any(|l| l[4] != "none")
    })
    .await;
    assert_eq!(rows.len(), 1, "only the outgoing connection: {rows:?}");
    let out = &rows[0];
    assert_eq!(out.len(), 8, "{out:?}");
    assert_eq!(out[1], format!("127.0.0.1:{pb}"), "peer: {out:?}");
    assert_eq!((out[2].as_str(), out[3].as_str()), (A, B), "{out:?}");
    assert_eq!((out[4].as_str(), out[5].as_str()), ("external", "yes"));
    assert!(out[7].parse::<u64>().is_ok(), "{out:?}");

    let rows = ask_until(&sb, "s2s list", |r| {
        rows_with(r, "in").iter().any(|l| l[3] == A)
    })
    .await;
    assert_eq!(rows.len(), 1, "only the incoming connection: {rows:?}");
    let inc = &rows[0];
    assert!(
        inc[1]
            .parse::<SocketAddr>()
            .is_ok_and(|p| p.ip().is_loopback()),
        "{inc:?}"
    );
    assert_eq!((inc[2].as_str(), inc[3].as_str()), (B, A), "{inc:?}");
    assert_eq!((inc[4].as_str(), inc[5].as_str()), ("external", "yes"));

    let st = stats(&sa).await;
    assert_eq!(
        (
            st["s2s_connections_out"].as_str(),
            st["s2s_connections_in"].as_str(),
            st["s2s_outgoing_streams"].as_str(),
            st["s2s_authenticated_external"].as_str(),
        ),
        ("1", "0", "1", "1"),
        "{st:?}"
    );
    let st = stats(&sb).await;
    assert_eq!(st["s2s_connections_in"], "1", "{st:?}");
}

// --- the real binary ------------------------------------------------------

/// Kills the server process if a test fails before stopping it.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `waxwing ctl --config <config> <args>`: (exit code, stdout, stderr).
async fn ctl(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waxwing"));
    cmd.arg("ctl").arg("--config").arg(config).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn ctl_lists_from_a_running_waxwing_serve() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("waxwing.toml");
    std::fs::write(
        &config,
        format!(
            "log_level = \"warn\"\n[[host]]\ndomain = \"localhost\"\n[database]\nurl = \"sqlite://{d}/db.sqlite\"\n[tls]\ndev_cert_dir = \"{d}/certs\"\n[c2s]\nlisten = [\"127.0.0.1:{port}\"]\nlisten_tls = []\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let sock = dir.path().join("waxwing.sock");
    let (code, _, err) = ctl(&config, &["user", "add", "alice@localhost", "pw"]).await;
    assert_eq!(code, Some(0), "{err}");

    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let server = Child(
        Command::new(env!("CARGO_BIN_EXE_waxwing"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while waxwing::admin::request(&sock, "stats").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "server did not start: {}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut alice = Client::login(addr, "alice", "pw", Some("cli")).await;
    alice.next_named("presence").await;

    let (code, out, err) = ctl(&config, &["sessions", "list"]).await;
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[0],
        ["JID", "CONN", "AVAILABLE", "PRIORITY", "AGE(s)"],
        "{out}"
    );
    assert_eq!(lines[1][0], "alice@localhost/cli", "{out}");
    assert_eq!(&lines[1][2..4], ["yes", "0"], "{out}");
    // Aligned: every column starts where its title does.
    let header = out.lines().next().unwrap();
    let row = out.lines().nth(1).unwrap();
    for title in ["CONN", "AVAILABLE", "PRIORITY"] {
        let at = header.find(title).unwrap();
        assert!(
            row.as_bytes()[at - 1] == b' ' && row.as_bytes()[at] != b' ',
            "{title} misaligned:\n{out}"
        );
    }

    let (code, out, err) = ctl(&config, &["stats"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.lines().any(|l| l == "c2s_sessions: 1"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("uptime_seconds: ")),
        "{out}"
    );
    for (args, title) in [
        (["s2s", "list"], "DIRECTION"),
        (["components", "list"], "DOMAIN"),
    ] {
        let (code, out, err) = ctl(&config, &args).await;
        assert_eq!(code, Some(0), "{err}");
        assert!(out.starts_with(title), "{out}");
        assert_eq!(out.lines().count(), 1, "header only: {out}");
    }

    // SIGTERM: the server stops cleanly and takes its socket with it.
    let pid = server.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket removed at shutdown");

    let (code, out, err) = ctl(&config, &["stats"]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(
        err.trim(),
        format!(
            "no running server at {} (is it started with this config?)",
            sock.display()
        )
    );
}
