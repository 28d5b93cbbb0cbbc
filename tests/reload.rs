//! Configuration reload (`waxwing::reload`, SIGHUP, `ctl reload`) over real
//! sockets: hosts added and removed, a renewed certificate, admins and
//! limits changed — each checked by its effect on new streams while a
//! session opened before the reload keeps working; a file that cannot be
//! applied changes nothing; restart-only settings are named and kept.

mod common;

use std::process::Command;

use common::process::Waxwing;
use common::*;
use waxwing::config::{Config, HostConfig};

const SECOND: &str = "second.test";

fn host(domain: &str) -> HostConfig {
    HostConfig {
        domain: domain.into(),
        cert: None,
        key: None,
        allow_registration: false,
    }
}

/// The running configuration, to change and apply again.
fn running(server: &TestServer) -> Config {
    (*server.server().config()).clone()
}

/// A ping the session answers: it is still bound and served.
async fn ping(c: &mut Client) {
    let to = c.domain.clone();
    let id = format!("ping-{}", rand_id());
    let r = c
        .iq(
            &format!("<iq type='get' id='{id}' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>"),
            &id,
        )
        .await;
    assert_eq!(r.attr("type"), Some("result"), "{}", show(&r));
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Ok when a new stream to `domain` gets stream features, else the
/// stream error condition its header got.
async fn open_to(server: &TestServer, domain: &str) -> Result<(), String> {
    let mut c = Client::connect(server.plain_addr).await;
    c.domain = domain.into();
    c.open_stream().await;
    loop {
        match c.next_event().await {
            Some(waxwing::xml::StreamEvent::Header(_)) => continue,
            Some(waxwing::xml::StreamEvent::Stanza(e)) if e.name() == "features" => return Ok(()),
            Some(waxwing::xml::StreamEvent::Stanza(e)) if e.name() == "error" => {
                return Err(e
                    .children()
                    .next()
                    .map(|c| c.name().to_string())
                    .unwrap_or_default())
            }
            other => return Err(format!("{other:?}")),
        }
    }
}

#[tokio::test]
async fn hosts_come_and_go_without_dropping_other_sessions() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let mut alice = Client::login(server.plain_addr, "alice", "pw", None).await;
    assert_eq!(
        open_to(&server, SECOND).await,
        Err("host-unknown".to_string())
    );

    let mut config = running(&server);
    config.host.push(host(SECOND));
    let report = waxwing::reload::apply(server.server(), config)
        .await
        .unwrap();
    assert_eq!(report.hosts_added, vec![SECOND.to_string()]);
    assert!(report.needs_restart.is_empty(), "{report:?}");
    // The new host takes logins, and its chat service is routed.
    server.add_user_at(SECOND, "bob", "pw").await;
    let mut bob = Client::login_at(server.plain_addr, SECOND, "bob", "pw", None).await;
    bob.send_str("<presence/>").await;
    ping(&mut bob).await;
    let id = "muc-info";
    let info = bob
        .iq(
            &format!("<iq type='get' id='{id}' to='conference.{SECOND}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"),
            id,
        )
        .await;
    assert_eq!(info.attr("type"), Some("result"), "{}", show(&info));
    // Alice, bound before, never noticed; she and bob can talk.
    ping(&mut alice).await;
    alice
        .send_str(&format!(
            "<message to='bob@{SECOND}' type='chat'><body>welcome</body></message>"
        ))
        .await;
    let m = bob.next_named("message").await;
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "welcome"
    );

    // Removed: bob's stream ends with host-gone, new streams get
    // host-unknown, alice stays.
    let mut config = running(&server);
    config.host.retain(|h| h.domain != SECOND);
    let report = waxwing::reload::apply(server.server(), config)
        .await
        .unwrap();
    assert_eq!(report.hosts_removed, vec![SECOND.to_string()]);
    assert_eq!(report.sessions_closed, 1);
    assert_eq!(bob.expect_stream_error().await, "host-gone");
    assert_eq!(
        open_to(&server, SECOND).await,
        Err("host-unknown".to_string())
    );
    ping(&mut alice).await;
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_handshakes_while_old_streams_continue() {
    let root = tempfile::tempdir().unwrap();
    let old = cert_dir(&root, "old");
    let new = root.path().join("renewed");
    waxwing::net::tls::ensure_dev_cert(&new, &[DOMAIN.to_string()]).unwrap();
    let live = root.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    for f in ["dev-cert.pem", "dev-key.pem"] {
        std::fs::copy(old.join(f), live.join(f)).unwrap();
    }
    let (cert, key) = (live.join("dev-cert.pem"), live.join("dev-key.pem"));
    let (c2, k2) = (cert.clone(), key.clone());
    let server = TestServer::start_with(move |c| {
        c.tls.cert = c2.display().to_string();
        c.tls.key = k2.display().to_string();
    })
    .await;
    server.add_user("alice", "pw").await;
    let before = Client::connect_tls(server.tls_addr).await;
    let first = before.peer_certificate().unwrap();
    drop(before);
    let mut alice = Client::login(server.plain_addr, "alice", "pw", None).await;

    // The files are replaced in place, as a certificate renewal does.
    for f in ["dev-cert.pem", "dev-key.pem"] {
        std::fs::copy(new.join(f), live.join(f)).unwrap();
    }
    waxwing::reload::apply(server.server(), running(&server))
        .await
        .unwrap();
    let after = Client::connect_tls(server.tls_addr).await;
    let second = after.peer_certificate().unwrap();
    assert_ne!(
        first, second,
        "a new handshake still got the old certificate"
    );
    let renewed = std::fs::read_to_string(new.join("dev-cert.pem")).unwrap();
    let der = rustls_pemfile_der(&renewed);
    assert_eq!(second, der, "not the renewed certificate");
    // STARTTLS on a new stream, and SCRAM-PLUS's channel binding with it.
    let mut fresh = Client::connect(server.plain_addr).await;
    fresh.starttls().await;
    assert_eq!(fresh.peer_certificate().unwrap(), der);
    let outcome = fresh
        .scram(waxwing::sasl::ScramHash::Sha256, "alice", "pw", true)
        .await;
    assert!(outcome.is("success", NS_SASL), "{}", show(&outcome));
    // The stream encrypted before the renewal goes on.
    ping(&mut alice).await;
}

/// The DER of the first certificate in PEM `text`.
fn rustls_pemfile_der(text: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[tokio::test]
async fn admins_change_at_once() {
    let server = TestServer::start().await;
    server.add_user("bob", "pw").await;
    let mut bob = Client::login(server.plain_addr, "bob", "pw", None).await;
    let exec = |id: &str| {
        format!("<iq type='set' id='{id}' to='{DOMAIN}'><command xmlns='http://jabber.org/protocol/commands' node='http://jabber.org/protocol/admin#get-online-users-num' action='execute'/></iq>")
    };
    let refused = bob.iq(&exec("a1"), "a1").await;
    assert_eq!(refused.attr("type"), Some("error"), "{}", show(&refused));
    assert_eq!(stanza_error(&refused).as_deref(), Some("forbidden"));

    let mut config = running(&server);
    config.admin.admins = vec![format!("bob@{DOMAIN}")];
    waxwing::reload::apply(server.server(), config)
        .await
        .unwrap();
    let allowed = bob.iq(&exec("a2"), "a2").await;
    assert_eq!(allowed.attr("type"), Some("result"), "{}", show(&allowed));

    let mut config = running(&server);
    config.admin.admins.clear();
    waxwing::reload::apply(server.server(), config)
        .await
        .unwrap();
    let refused = bob.iq(&exec("a3"), "a3").await;
    assert_eq!(stanza_error(&refused).as_deref(), Some("forbidden"));
}

#[tokio::test]
async fn limits_apply_to_streams_opened_after() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    server.add_user("carol", "pw").await;
    let mut alice = Client::login(server.plain_addr, "alice", "pw", None).await;
    let big = format!(
        "<message to='alice@{DOMAIN}' type='chat'><body>{}</body></message>",
        "x".repeat(20_000)
    );
    // Allowed at first.
    let mut carol = Client::login(server.plain_addr, "carol", "pw", None).await;
    carol.send_str(&big).await;
    alice.next_named("message").await;

    let mut config = running(&server);
    config.limits.max_stanza_size = 10_000;
    waxwing::reload::apply(server.server(), config)
        .await
        .unwrap();
    let mut carol2 = Client::login(server.plain_addr, "carol", "pw", Some("new")).await;
    carol2.send_str(&big).await;
    assert_eq!(carol2.expect_stream_error().await, "policy-violation");
    ping(&mut alice).await;

    // A throttle takes its new cap at once: one failed guess is now too many.
    let mut config = running(&server);
    config.limits.auth_failures_per_ip = 1;
    waxwing::reload::apply(server.server(), config)
        .await
        .unwrap();
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    let wrong = c
        .scram(waxwing::sasl::ScramHash::Sha256, "alice", "bad", false)
        .await;
    assert!(wrong.is("failure", NS_SASL), "{}", show(&wrong));
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    let throttled = c
        .scram(waxwing::sasl::ScramHash::Sha256, "alice", "pw", false)
        .await;
    assert!(
        throttled.is("failure", NS_SASL),
        "the lowered cap did not apply: {}",
        show(&throttled)
    );
}

#[tokio::test]
async fn a_configuration_that_cannot_apply_changes_nothing() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let mut alice = Client::login(server.plain_addr, "alice", "pw", None).await;
    let mut config = running(&server);
    config.host.push(HostConfig {
        cert: Some("/nonexistent/cert.pem".into()),
        key: Some("/nonexistent/key.pem".into()),
        ..host(SECOND)
    });
    config.admin.admins = vec![format!("alice@{DOMAIN}")];
    let err = waxwing::reload::apply(server.server(), config)
        .await
        .unwrap_err();
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    assert!(server.server().config().admin.admins.is_empty());
    assert_eq!(
        open_to(&server, SECOND).await,
        Err("host-unknown".to_string())
    );
    ping(&mut alice).await;
    still_serves_user(&server, "alice").await;
}

#[tokio::test]
async fn restart_only_settings_are_named_and_keep_running_values() {
    let server = TestServer::start().await;
    server.add_user("alice", "pw").await;
    let mut config = running(&server);
    let listening = config.c2s.listen.clone();
    config.c2s.listen = vec![format!("127.0.0.1:{}", free_port()).parse().unwrap()];
    config.mam.enabled = !config.mam.enabled;
    let report = waxwing::reload::apply(server.server(), config)
        .await
        .unwrap();
    assert_eq!(
        report.needs_restart,
        vec!["[c2s] listen".to_string(), "[mam]".to_string()]
    );
    assert_eq!(server.server().config().c2s.listen, listening);
    still_serves_user(&server, "alice").await;
}

/// SIGHUP and `ctl reload` on a `waxwing serve` process re-read its file.
#[tokio::test]
async fn sighup_and_ctl_reload_reread_the_file() {
    let mut w = Waxwing::new(&[("alice", "pw")]);
    w.start();
    let mut alice = Client::login(w.c2s, "alice", "pw", None).await;
    let original = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(
        &w.config,
        format!("{original}\n[[host]]\ndomain = \"{SECOND}\"\n"),
    )
    .unwrap();
    w.ctl(&["user", "add", &format!("bob@{SECOND}"), "pw"]);
    let pid = w.child.as_ref().unwrap().id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    // The reload runs in the server's own time: wait for its log line.
    let log = w.log_path();
    eventually("the SIGHUP reload is logged", || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("configuration reloaded")
        }
    })
    .await;
    let mut bob = Client::login_at(w.c2s, SECOND, "bob", "pw", None).await;
    ping(&mut bob).await;
    ping(&mut alice).await;

    std::fs::write(&w.config, &original).unwrap();
    let out = w
        .command()
        .args(["ctl", "--config"])
        .arg(&w.config)
        .arg("reload")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("hosts removed: {SECOND} (1 session(s) ended)")),
        "{stdout}"
    );
    assert_eq!(bob.expect_stream_error().await, "host-gone");
    ping(&mut alice).await;

    // A file that does not parse: refused and logged, nothing changes.
    std::fs::write(&w.config, format!("{original}\n[[host]\n")).unwrap();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    eventually("the refused reload is logged", || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("reload refused")
        }
    })
    .await;
    ping(&mut alice).await;
}
