//! Administration from a client over real sockets: the XEP-0050 command
//! list and sessions on the server's domain, and the XEP-0133 commands
//! run by an admin named in `[admin] admins`, each checked by its effect
//! (a login that works or fails, a session that ends, a message that
//! arrives), with the refusals non-admins and bad sessions get.

mod common;

use common::muc::{NS_DATA, NS_INFO, NS_ITEMS};
use common::*;
use waxwing::sasl::ScramHash;
use waxwing::xml::Element;

const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const ADMIN: &str = "http://jabber.org/protocol/admin#";

fn admin_config(c: &mut waxwing::config::Config) {
    c.admin.admins = vec!["alice@localhost".into()];
}

static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
fn fresh(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn command(reply: &Element) -> &Element {
    reply
        .get_child("command", NS_COMMANDS)
        .unwrap_or_else(|| panic!("no <command/> in {}", show(reply)))
}

/// The app-specific XEP-0050 condition of an error reply.
fn command_condition(reply: &Element) -> Option<String> {
    reply
        .get_child("error", "jabber:client")?
        .children()
        .find(|c| c.ns() == NS_COMMANDS)
        .map(|c| c.name().to_string())
}

/// Executes `node` on the server (a new session); the reply.
async fn execute(c: &mut Client, node: &str) -> Element {
    let id = fresh("exec");
    c.iq(
        &format!("<iq type='set' id='{id}' to='{DOMAIN}'><command xmlns='{NS_COMMANDS}' node='{ADMIN}{node}' action='execute'/></iq>"),
        &id,
    )
    .await
}

/// Submits `fields` in session `sid` of `node`; the reply.
async fn submit(c: &mut Client, node: &str, sid: &str, fields: &str) -> Element {
    let id = fresh("submit");
    c.iq(
        &format!("<iq type='set' id='{id}' to='{DOMAIN}'><command xmlns='{NS_COMMANDS}' node='{ADMIN}{node}' sessionid='{sid}' action='complete'><x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/admin</value></field>{fields}</x></command></iq>"),
        &id,
    )
    .await
}

/// Executes `node`, fills its form with `fields`, and checks it completed.
async fn run(c: &mut Client, node: &str, fields: &str) -> Element {
    let form = execute(c, node).await;
    let cmd = command(&form);
    assert_eq!(cmd.attr("status"), Some("executing"), "{}", show(&form));
    assert!(cmd.get_child("x", NS_DATA).is_some(), "{}", show(&form));
    let sid = cmd.attr("sessionid").expect("sessionid").to_string();
    let done = submit(c, node, &sid, fields).await;
    assert_eq!(done.attr("type"), Some("result"), "{node}: {}", show(&done));
    assert_eq!(command(&done).attr("status"), Some("completed"));
    done
}

fn value(var: &str, v: &str) -> String {
    format!("<field var='{var}'><value>{v}</value></field>")
}

/// Whether `user` logs in with `pass` (SCRAM-SHA-256 after STARTTLS).
async fn can_login(server: &TestServer, user: &str, pass: &str) -> bool {
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    c.scram(ScramHash::Sha256, user, pass, false)
        .await
        .is("success", NS_SASL)
}

fn result_values(reply: &Element, var: &str) -> Vec<String> {
    command(reply)
        .get_child("x", NS_DATA)
        .map(|x| {
            x.children()
                .filter(|f| f.attr("var") == Some(var))
                .flat_map(|f| f.children().filter(|v| v.is("value", NS_DATA)))
                .map(|v| v.text())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn only_admins_see_and_run_commands() {
    let server = TestServer::start_with(admin_config).await;
    server.add_user("alice", "pw-a").await;
    server.add_user("bob", "pw-b").await;
    let mut alice = Client::login(server.plain_addr, "alice", "pw-a", Some("a")).await;
    let mut bob = Client::login(server.plain_addr, "bob", "pw-b", Some("b")).await;

    let id = fresh("info");
    let info = alice
        .iq(
            &format!("<iq type='get' id='{id}' to='{DOMAIN}'><query xmlns='{NS_INFO}'/></iq>"),
            &id,
        )
        .await;
    assert!(show(&info).contains(NS_COMMANDS), "{}", show(&info));

    let list = |who: &str| {
        let id = fresh(who);
        (
            id.clone(),
            format!("<iq type='get' id='{id}' to='{DOMAIN}'><query xmlns='{NS_ITEMS}' node='{NS_COMMANDS}'/></iq>"),
        )
    };
    let (i, q) = list("items");
    let items = alice.iq(&q, &i).await;
    let nodes: Vec<String> = items
        .get_child("query", NS_ITEMS)
        .unwrap()
        .children()
        .filter_map(|i| i.attr("node").map(str::to_string))
        .collect();
    for n in [
        "add-user",
        "delete-user",
        "change-user-password",
        "end-user-session",
        "get-online-users-num",
        "get-online-users-list",
        "announce",
    ] {
        assert!(
            nodes.contains(&format!("{ADMIN}{n}")),
            "{n} missing: {nodes:?}"
        );
    }
    // A command node's own disco#info (XEP-0050 §2.3).
    let id = fresh("cmdinfo");
    let ninfo = alice
        .iq(&format!("<iq type='get' id='{id}' to='{DOMAIN}'><query xmlns='{NS_INFO}' node='{ADMIN}announce'/></iq>"), &id)
        .await;
    assert!(show(&ninfo).contains("command-node"), "{}", show(&ninfo));

    // Bob is no admin: no administration command in his list (only
    // XEP-0401's contact invitation, which every user may run), forbidden
    // to run, no node info.
    let (i, q) = list("items");
    let items = bob.iq(&q, &i).await;
    let bobs: Vec<String> = items
        .get_child("query", NS_ITEMS)
        .unwrap()
        .children()
        .filter_map(|c| c.attr("node").map(str::to_owned))
        .collect();
    assert_eq!(bobs, ["urn:xmpp:invite#invite"], "{}", show(&items));
    let refused = execute(&mut bob, "add-user").await;
    assert_eq!(
        stanza_error(&refused).as_deref(),
        Some("forbidden"),
        "{}",
        show(&refused)
    );
    let id = fresh("cmdinfo");
    let ninfo = bob
        .iq(&format!("<iq type='get' id='{id}' to='{DOMAIN}'><query xmlns='{NS_INFO}' node='{ADMIN}announce'/></iq>"), &id)
        .await;
    assert_eq!(stanza_error(&ninfo).as_deref(), Some("item-not-found"));
    assert!(!can_login(&server, "mallory", "x").await);

    // An unknown node; a made-up session; a session of another node; a
    // session used twice.
    let unknown = execute(&mut alice, "no-such-command").await;
    assert_eq!(stanza_error(&unknown).as_deref(), Some("item-not-found"));
    let bad = submit(&mut alice, "add-user", "made-up", "").await;
    assert_eq!(stanza_error(&bad).as_deref(), Some("bad-request"));
    assert_eq!(command_condition(&bad).as_deref(), Some("bad-sessionid"));
    let form = execute(&mut alice, "add-user").await;
    let sid = command(&form).attr("sessionid").unwrap().to_string();
    let other = submit(&mut alice, "delete-user", &sid, "").await;
    assert_eq!(command_condition(&other).as_deref(), Some("bad-sessionid"));
    // The session is another resource's: bob cannot continue alice's.
    let form = execute(&mut alice, "add-user").await;
    let sid = command(&form).attr("sessionid").unwrap().to_string();
    let id = fresh("cancel");
    let canceled = alice
        .iq(&format!("<iq type='set' id='{id}' to='{DOMAIN}'><command xmlns='{NS_COMMANDS}' node='{ADMIN}add-user' sessionid='{sid}' action='cancel'/></iq>"), &id)
        .await;
    assert_eq!(
        command(&canceled).attr("status"),
        Some("canceled"),
        "{}",
        show(&canceled)
    );
    let after = submit(
        &mut alice,
        "add-user",
        &sid,
        &value("accountjid", "x@localhost"),
    )
    .await;
    assert_eq!(command_condition(&after).as_deref(), Some("bad-sessionid"));
    // A bad action starting a session.
    let id = fresh("prev");
    let prev = alice
        .iq(&format!("<iq type='set' id='{id}' to='{DOMAIN}'><command xmlns='{NS_COMMANDS}' node='{ADMIN}add-user' action='prev'/></iq>"), &id)
        .await;
    assert_eq!(
        command_condition(&prev).as_deref(),
        Some("bad-action"),
        "{}",
        show(&prev)
    );
    let adhoc = server
        .server()
        .features
        .get::<waxwing::modules::adhoc::AdHoc>()
        .unwrap();
    // Only the add-user session tried on the wrong node is still open.
    assert_eq!(adhoc.open_sessions(), 1);
    server.add_user("canary", "pw").await;
    still_serves(&server).await;
}

#[tokio::test]
async fn admins_add_delete_and_change_passwords() {
    let server = TestServer::start_with(admin_config).await;
    server.add_user("alice", "pw-a").await;
    let mut alice = Client::login(server.plain_addr, "alice", "pw-a", Some("a")).await;

    assert!(!can_login(&server, "dave", "first").await);
    run(
        &mut alice,
        "add-user",
        &format!(
            "{}{}{}",
            value("accountjid", "dave@localhost"),
            value("password", "first"),
            value("password-verify", "first")
        ),
    )
    .await;
    assert!(can_login(&server, "dave", "first").await);
    // Adding again: conflict. Differing passwords: refused.
    let form = execute(&mut alice, "add-user").await;
    let sid = command(&form).attr("sessionid").unwrap().to_string();
    let again = submit(
        &mut alice,
        "add-user",
        &sid,
        &format!(
            "{}{}",
            value("accountjid", "dave@localhost"),
            value("password", "x")
        ),
    )
    .await;
    assert_eq!(
        stanza_error(&again).as_deref(),
        Some("conflict"),
        "{}",
        show(&again)
    );
    let form = execute(&mut alice, "add-user").await;
    let sid = command(&form).attr("sessionid").unwrap().to_string();
    let differ = submit(
        &mut alice,
        "add-user",
        &sid,
        &format!(
            "{}{}{}",
            value("accountjid", "erin@localhost"),
            value("password", "x"),
            value("password-verify", "y")
        ),
    )
    .await;
    assert_eq!(stanza_error(&differ).as_deref(), Some("not-acceptable"));
    // Another server's account is not ours to add.
    let form = execute(&mut alice, "add-user").await;
    let sid = command(&form).attr("sessionid").unwrap().to_string();
    let remote = submit(
        &mut alice,
        "add-user",
        &sid,
        &format!(
            "{}{}",
            value("accountjid", "erin@example.org"),
            value("password", "x")
        ),
    )
    .await;
    assert_eq!(stanza_error(&remote).as_deref(), Some("not-acceptable"));

    run(
        &mut alice,
        "change-user-password",
        &format!(
            "{}{}",
            value("accountjid", "dave@localhost"),
            value("password", "second")
        ),
    )
    .await;
    assert!(!can_login(&server, "dave", "first").await);
    assert!(can_login(&server, "dave", "second").await);

    // Disabling ends dave's live session and refuses his logins with
    // account-disabled, until he is re-enabled.
    let mut dave = Client::login(server.plain_addr, "dave", "second", Some("d")).await;
    run(
        &mut alice,
        "disable-user",
        &value("accountjids", "dave@localhost"),
    )
    .await;
    assert_eq!(dave.expect_stream_error().await, "not-authorized");
    let mut c = Client::connect(server.plain_addr).await;
    c.starttls().await;
    let failure = c.scram(ScramHash::Sha256, "dave", "second", false).await;
    assert!(
        show(&failure).contains("account-disabled"),
        "{}",
        show(&failure)
    );
    run(
        &mut alice,
        "reenable-user",
        &value("accountjids", "dave@localhost"),
    )
    .await;
    assert!(can_login(&server, "dave", "second").await);

    // Deleting ends dave's live session and his logins.
    let mut dave = Client::login(server.plain_addr, "dave", "second", Some("d")).await;
    run(
        &mut alice,
        "delete-user",
        &value("accountjids", "dave@localhost"),
    )
    .await;
    assert_eq!(dave.expect_stream_error().await, "not-authorized");
    assert!(!can_login(&server, "dave", "second").await);
    let form = execute(&mut alice, "delete-user").await;
    let sid = command(&form).attr("sessionid").unwrap().to_string();
    let gone = submit(
        &mut alice,
        "delete-user",
        &sid,
        &value("accountjids", "dave@localhost"),
    )
    .await;
    assert_eq!(stanza_error(&gone).as_deref(), Some("item-not-found"));
}

#[tokio::test]
async fn admins_see_online_users_announce_and_end_sessions() {
    let server = TestServer::start_with(admin_config).await;
    for (u, p) in [("alice", "pw-a"), ("bob", "pw-b"), ("carol", "pw-c")] {
        server.add_user(u, p).await;
    }
    let mut alice = Client::login(server.plain_addr, "alice", "pw-a", Some("a")).await;
    let mut bob1 = Client::login(server.plain_addr, "bob", "pw-b", Some("one")).await;
    let mut bob2 = Client::login(server.plain_addr, "bob", "pw-b", Some("two")).await;
    let mut carol = Client::login(server.plain_addr, "carol", "pw-c", Some("c")).await;
    for c in [&mut bob1, &mut bob2, &mut carol] {
        c.barrier().await;
    }

    // The number asks nothing: completed at once.
    let num = execute(&mut alice, "get-online-users-num").await;
    assert_eq!(
        command(&num).attr("status"),
        Some("completed"),
        "{}",
        show(&num)
    );
    assert_eq!(result_values(&num, "onlineusersnum"), vec!["3"]);
    let list = run(
        &mut alice,
        "get-online-users-list",
        &value("max_items", "25"),
    )
    .await;
    assert_eq!(
        result_values(&list, "onlineuserjids"),
        vec!["alice@localhost", "bob@localhost", "carol@localhost"]
    );
    let two = run(
        &mut alice,
        "get-online-users-list",
        &value("max_items", "2"),
    )
    .await;
    assert_eq!(result_values(&two, "onlineuserjids").len(), 2);

    // Every online session gets the announcement as a headline.
    let marks: Vec<usize> = [&mut bob1, &mut bob2, &mut carol]
        .into_iter()
        .map(|c| c.mark())
        .collect();
    run(
        &mut alice,
        "announce",
        &value("announcement", "Maintenance at noon"),
    )
    .await;
    for (c, since) in [&mut bob1, &mut bob2, &mut carol].into_iter().zip(marks) {
        c.expect_only(
            since,
            &[Expect("the announcement", &|e: &Element| {
                e.is("message", "jabber:client")
                    && e.attr("type") == Some("headline")
                    && e.attr("from") == Some(DOMAIN)
                    && show(e).contains("Maintenance at noon")
            })],
        )
        .await;
    }

    // A full JID ends one session; a bare JID all of an account's.
    run(
        &mut alice,
        "end-user-session",
        &value("accountjids", "bob@localhost/one"),
    )
    .await;
    assert_eq!(bob1.expect_stream_error().await, "policy-violation");
    bob2.barrier().await;
    run(
        &mut alice,
        "end-user-session",
        &value("accountjids", "carol@localhost"),
    )
    .await;
    assert_eq!(carol.expect_stream_error().await, "policy-violation");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let num = execute(&mut alice, "get-online-users-num").await;
        if result_values(&num, "onlineusersnum") == vec!["2"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", show(&num));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    bob2.barrier().await;
}

#[tokio::test]
async fn command_sessions_are_bounded_and_expire() {
    let server = TestServer::start_with(|c| {
        admin_config(c);
        c.admin.max_command_sessions = 1;
        c.admin.command_session_timeout_secs = 1;
    })
    .await;
    server.add_user("alice", "pw-a").await;
    let mut alice = Client::login(server.plain_addr, "alice", "pw-a", Some("a")).await;
    let first = execute(&mut alice, "announce").await;
    let sid = command(&first).attr("sessionid").unwrap().to_string();
    let second = execute(&mut alice, "announce").await;
    assert_eq!(
        stanza_error(&second).as_deref(),
        Some("resource-constraint"),
        "{}",
        show(&second)
    );
    // Once the first expires, a new one may start, and the old one is gone.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let r = execute(&mut alice, "add-user").await;
        if r.attr("type") == Some("result") {
            break;
        }
        assert_eq!(stanza_error(&r).as_deref(), Some("resource-constraint"));
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let late = submit(&mut alice, "announce", &sid, &value("announcement", "late")).await;
    assert_eq!(
        command_condition(&late).as_deref(),
        Some("bad-sessionid"),
        "{}",
        show(&late)
    );
    // The periodic sweep forgets the one left open.
    let adhoc = server
        .server()
        .features
        .get::<waxwing::modules::adhoc::AdHoc>()
        .unwrap();
    eventually("the open session swept", || async {
        adhoc.open_sessions() == 0
    })
    .await;
}

/// Disabling on PostgreSQL: the same table and refusal as on SQLite.
#[tokio::test]
async fn disable_user_on_postgres() {
    let url = std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let server = TestServer::start_with(|c| {
        c.database.url = url;
        c.admin.admins = vec![];
    })
    .await;
    // The accounts live in a shared database: names unique to this run.
    let tag = format!("{:x}", rand::random::<u64>());
    let (admin, user) = (format!("adm{tag}"), format!("usr{tag}"));
    server.add_user(&admin, "pw").await;
    server.add_user(&user, "pw").await;
    let store = server.store();
    assert!(!store.account_disabled("localhost", &user).await.unwrap());
    assert!(store.disable_account("localhost", &user).await.unwrap());
    assert!(!store.disable_account("localhost", &user).await.unwrap());
    assert!(!can_login(&server, &user, "pw").await);
    assert!(can_login(&server, &admin, "pw").await);
    assert!(store.enable_account("localhost", &user).await.unwrap());
    assert!(can_login(&server, &user, "pw").await);
    for u in [&admin, &user] {
        store.delete_account("localhost", u).await.unwrap();
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `waxwing ctl --config <config> <args>`: (exit code, stdout, stderr).
async fn ctl(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waxwing"));
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

/// `waxwing ctl announce`, `session kick` and `user disable|enable`
/// against a real `waxwing serve`, through its admin socket.
#[tokio::test]
async fn ctl_announces_kicks_and_disables_on_a_running_server() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("waxwing.toml");
    std::fs::write(
        &config,
        format!(
            "log_level = \"warn\"\n[[host]]\ndomain = \"localhost\"\n[database]\nurl = \"sqlite://{d}/db.sqlite\"\n[tls]\ndev_cert_dir = \"{d}/certs\"\n[c2s]\nlisten = [\"127.0.0.1:{port}\"]\nlisten_tls = []\n[http]\nlisten = []\nlisten_tls = []\n[admin]\nadmins = [\"alice@localhost\"]\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    // check-config accepts the admins list (and would name a bad JID).
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_waxwing"))
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A bad admin JID or limit is named with its line.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[host]]\ndomain = \"localhost\"\n[admin]\nadmins = [\"not a jid@@\"]\nmax_command_sessions = 0\n",
    )
    .unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_waxwing"))
        .arg("check-config")
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "{report}");
    assert!(report.contains("line 4: admin.admins"), "{report}");
    assert!(
        report.contains("line 5: admin.max_command_sessions"),
        "{report}"
    );
    for u in ["alice", "bob"] {
        let (code, _, err) = ctl(&config, &["user", "add", &format!("{u}@localhost"), "pw"]).await;
        assert_eq!(code, Some(0), "{err}");
    }
    let sock = dir.path().join("waxwing.sock");
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let _server = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_waxwing"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while waxwing::admin::request(&sock, "stats").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server did not start: {}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut alice = Client::login(addr, "alice", "pw", Some("a")).await;
    let mut bob = Client::login(addr, "bob", "pw", Some("b")).await;
    alice.barrier().await;
    bob.barrier().await;

    // A two-line announcement, with a backslash, reaches both sessions.
    let (code, out, err) = ctl(&config, &["announce", "Back", "at\\noon\nsharp"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "sent to 2 sessions");
    for c in [&mut alice, &mut bob] {
        let m = c.next_named("message").await;
        assert_eq!(m.attr("type"), Some("headline"), "{}", show(&m));
        let body = m.get_child("body", "jabber:client").unwrap().text();
        assert_eq!(body, "Back at\\noon\nsharp");
    }

    // Rooms: listed, then destroyed with a reason the occupant hears.
    let room = "lounge@conference.localhost";
    alice
        .send_str(&format!(
            "<presence to='{room}/al'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    loop {
        let p = alice.next_named("presence").await;
        if p.attr("from") == Some(&format!("{room}/al")) {
            break;
        }
    }
    let (code, out, err) = ctl(&config, &["room", "list"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("{room} 1 no"));
    let (code, out, err) = ctl(&config, &["room", "destroy", room, "Closing", "time"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("{room} destroyed"));
    let gone = alice.next_named("presence").await;
    assert_eq!(gone.attr("type"), Some("unavailable"), "{}", show(&gone));
    assert!(
        show(&gone).contains("<reason>Closing time</reason>"),
        "{}",
        show(&gone)
    );
    let (code, out, err) = ctl(&config, &["room", "list"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "");
    let (code, _, err) = ctl(&config, &["room", "destroy", room]).await;
    assert_eq!(code, Some(1), "no such room any more: {err}");
    let (code, _, err) = ctl(&config, &["room", "destroy", "conference.localhost"]).await;
    assert_eq!(code, Some(1), "not a room: {err}");

    // Bad arguments are refused before or by the server, nothing happens.
    let (code, _, err) = ctl(&config, &["session", "kick", "bob@elsewhere.example"]).await;
    assert_eq!(code, Some(1), "{err}");
    let r = waxwing::admin::request(&sock, "user disable nobody@elsewhere.example").await;
    assert!(r.is_err(), "{r:?}");
    let r = waxwing::admin::request(&sock, "session kick not a jid").await;
    assert!(r.is_err(), "{r:?}");

    let (code, out, err) = ctl(&config, &["session", "kick", "bob@localhost/b"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "1 sessions ended");
    assert_eq!(bob.expect_stream_error().await, "policy-violation");

    let (code, _, err) = ctl(&config, &["user", "disable", "alice@localhost"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(alice.expect_stream_error().await, "not-authorized");
    let mut c = Client::connect(addr).await;
    c.starttls().await;
    let failure = c.scram(ScramHash::Sha256, "alice", "pw", false).await;
    assert!(
        show(&failure).contains("account-disabled"),
        "{}",
        show(&failure)
    );
    let (code, _, err) = ctl(&config, &["user", "enable", "alice@localhost"]).await;
    assert_eq!(code, Some(0), "{err}");
    Client::login(addr, "alice", "pw", Some("again")).await;
    let (code, _, err) = ctl(&config, &["user", "enable", "alice@localhost"]).await;
    assert_eq!(code, Some(1), "enabling twice: {err}");
}

/// The message of the day reaches each session at login, edit-motd shows
/// it, and after delete-motd logins get nothing.
#[tokio::test]
async fn the_message_of_the_day_is_sent_at_login() {
    let server = TestServer::start_with(admin_config).await;
    server.add_user("alice", "pw-a").await;
    server.add_user("bob", "pw-b").await;
    let mut alice = Client::login(server.plain_addr, "alice", "pw-a", Some("a")).await;
    run(
        &mut alice,
        "set-motd",
        "<field var='motd'><value>Welcome</value><value>Be nice</value></field>",
    )
    .await;
    let mut bob = Client::login(server.plain_addr, "bob", "pw-b", Some("b")).await;
    let m = bob.next_named("message").await;
    assert_eq!(m.attr("type"), Some("headline"), "{}", show(&m));
    assert_eq!(m.attr("from"), Some(DOMAIN));
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "Welcome\nBe nice"
    );
    // edit-motd's form carries the current text, line by line.
    let form = execute(&mut alice, "edit-motd").await;
    let values: Vec<String> = command(&form)
        .get_child("x", NS_DATA)
        .unwrap()
        .children()
        .filter(|f| f.attr("var") == Some("motd"))
        .flat_map(|f| {
            f.children()
                .filter(|v| v.is("value", NS_DATA))
                .map(|v| v.text())
        })
        .collect();
    assert_eq!(values, vec!["Welcome", "Be nice"], "{}", show(&form));
    let sid = command(&form).attr("sessionid").unwrap().to_string();
    let done = submit(
        &mut alice,
        "edit-motd",
        &sid,
        "<field var='motd'><value>Changed</value></field>",
    )
    .await;
    assert_eq!(command(&done).attr("status"), Some("completed"));
    // Bob is online: the changed text reaches him at once (§4.23).
    let m = bob.next_named("message").await;
    assert_eq!(
        m.get_child("body", "jabber:client").unwrap().text(),
        "Changed"
    );
    // Too long: refused, the old one kept.
    let form = execute(&mut alice, "set-motd").await;
    let sid = command(&form).attr("sessionid").unwrap().to_string();
    let long = "x".repeat(5000);
    let refused = submit(&mut alice, "set-motd", &sid, &value("motd", &long)).await;
    assert_eq!(stanza_error(&refused).as_deref(), Some("not-acceptable"));

    let deleted = execute(&mut alice, "delete-motd").await;
    assert_eq!(
        command(&deleted).attr("status"),
        Some("completed"),
        "{}",
        show(&deleted)
    );
    server.add_user("carol", "pw-c").await;
    let mut bob3 =
        Client::login_without_presence(server.plain_addr, "carol", "pw-c", Some("c")).await;
    let since = bob3.mark();
    bob3.send_str("<presence/>").await;
    bob3.expect_only(
        since,
        &[Expect("own presence", &|e: &Element| {
            e.is("presence", "jabber:client")
        })],
    )
    .await;
    // Stored in the database: what a restarted server would send.
    assert_eq!(server.store().motd_get(DOMAIN).await.unwrap(), None);
}

/// Logs `user` in with `resource`; whether a message of the day came with
/// the initial presence (the text if so).
async fn motd_at_login(server: &TestServer, user: &str, resource: &str) -> Option<String> {
    let mut c =
        Client::login_without_presence(server.plain_addr, user, "pw-b", Some(resource)).await;
    let since = c.mark();
    c.send_str("<presence/>").await;
    // The message comes before the answer to a later ping, if at all.
    c.barrier().await;
    c.received[since..]
        .iter()
        .find(|e| e.is("message", "jabber:client") && e.attr("type") == Some("headline"))
        .map(|m| m.get_child("body", "jabber:client").unwrap().text())
}

/// XEP-0133 §4.23: users online when the message of the day is set get it
/// at once, each account once, and not again at their next login.
#[tokio::test]
async fn a_new_message_of_the_day_reaches_online_users_at_once() {
    let server = TestServer::start_with(admin_config).await;
    server.add_user("alice", "pw-a").await;
    server.add_user("bob", "pw-b").await;
    let mut alice = Client::login(server.plain_addr, "alice", "pw-a", Some("a")).await;
    let mut bob1 = Client::login(server.plain_addr, "bob", "pw-b", Some("one")).await;
    let mut bob2 = Client::login(server.plain_addr, "bob", "pw-b", Some("two")).await;
    bob1.barrier().await;
    bob2.barrier().await;
    let (since1, since2) = (bob1.mark(), bob2.mark());
    run(
        &mut alice,
        "set-motd",
        "<field var='motd'><value>Maintenance at noon</value></field>",
    )
    .await;
    let headline = |e: &Element| {
        e.is("message", "jabber:client")
            && e.attr("type") == Some("headline")
            && e.get_child("body", "jabber:client")
                .is_some_and(|b| b.text() == "Maintenance at noon")
    };
    let got = |c: &Client, since: usize| c.received[since..].iter().filter(|e| headline(e)).count();
    // Whichever of bob's sessions the server picked, exactly one has it.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        bob1.barrier().await;
        bob2.barrier().await;
        let n = got(&bob1, since1) + got(&bob2, since2);
        if n >= 1 {
            assert_eq!(n, 1, "bob's account got it more than once");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob never got the message of the day"
        );
    }
    // Already sent: the next login does not repeat it.
    assert_eq!(motd_at_login(&server, "bob", "three").await, None);
}

/// Once per change, as ejabberd does: the first login after a text is set
/// gets it, later logins (other resources, reconnections) do not; the
/// same text set again is no change; a new text is sent again; after a
/// delete, even the old text is news. One row per account remembers.
#[tokio::test]
async fn the_message_of_the_day_is_sent_once_per_change() {
    let server = TestServer::start_with(admin_config).await;
    server.add_user("alice", "pw-a").await;
    server.add_user("bob", "pw-b").await;
    let mut alice = Client::login(server.plain_addr, "alice", "pw-a", Some("a")).await;
    let set = |text: &'static str| format!("<field var='motd'><value>{text}</value></field>");
    run(&mut alice, "set-motd", &set("First")).await;
    assert_eq!(
        motd_at_login(&server, "bob", "b1").await.as_deref(),
        Some("First")
    );
    assert_eq!(motd_at_login(&server, "bob", "b2").await, None);
    assert_eq!(motd_at_login(&server, "bob", "b1").await, None);
    run(&mut alice, "set-motd", &set("First")).await;
    assert_eq!(motd_at_login(&server, "bob", "b3").await, None);
    run(&mut alice, "set-motd", &set("Second")).await;
    assert_eq!(
        motd_at_login(&server, "bob", "b4").await.as_deref(),
        Some("Second")
    );
    assert_eq!(motd_at_login(&server, "bob", "b5").await, None);
    execute(&mut alice, "delete-motd").await;
    run(&mut alice, "set-motd", &set("Second")).await;
    assert_eq!(
        motd_at_login(&server, "bob", "b6").await.as_deref(),
        Some("Second")
    );
    assert_eq!(motd_at_login(&server, "bob", "b7").await, None);
    // Deleting the account forgets it; a new account of the name gets it.
    assert!(server.store().delete_account(DOMAIN, "bob").await.unwrap());
    server.add_user("bob", "pw-b").await;
    assert_eq!(
        motd_at_login(&server, "bob", "b8").await.as_deref(),
        Some("Second")
    );
}
