//! Invitations (XEP-0401, XEP-0379, tokens before registration as XEP-0445
//! describes) over real sockets: `waxwing ctl invite` makes a token, a raw
//! client registers with it where open registration is off, reuse and
//! expired or unknown tokens are refused, the invitee and the inviter end
//! up subscribed both ways, and a subscription request with a token is
//! approved at once.

mod common;

use std::process::Command;

use common::*;
use waxwing::sasl::ScramHash;
use waxwing::storage::InviteRecord;
use waxwing::xml::{Element, NS_CLIENT};

const NS_REGISTER: &str = "jabber:iq:register";
const NS_REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
const NS_INVITE: &str = "urn:xmpp:invite";
const NS_PARS: &str = "urn:xmpp:pars:0";
const NS_ROSTER: &str = "jabber:iq:roster";

/// Runs `waxwing ctl invite ARGS` on the test server's database.
fn ctl_invite(server: &TestServer, args: &[&str]) -> (bool, String) {
    let cfg = server.dir.path().join("ctl.toml");
    let url = &server.server().config().database.url;
    std::fs::write(
        &cfg,
        format!(
            "[[host]]\ndomain = \"{DOMAIN}\"\n[database]\nurl = \"{url}\"\n[http]\npublic_url = \"https://chat.example\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_waxwing"))
        .arg("ctl")
        .arg("--config")
        .arg(&cfg)
        .arg("invite")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The token in `ctl invite create`'s output (from the `uri:` line).
fn token_of(out: &str) -> String {
    let uri = out
        .lines()
        .find_map(|l| l.strip_prefix("uri: "))
        .unwrap_or_else(|| panic!("no uri in {out}"));
    let start = uri.find("preauth=").unwrap() + "preauth=".len();
    uri[start..].split(';').next().unwrap().to_string()
}

async fn tls_stream(server: &TestServer) -> (Client, Element) {
    let mut c = Client::connect(server.plain_addr).await;
    let features = c.starttls().await;
    (c, features)
}

async fn preauth(c: &mut Client, token: &str, id: &str) -> Element {
    c.iq(
        &format!("<iq type='set' id='{id}' to='{DOMAIN}'><preauth xmlns='{NS_PARS}' token='{token}'/></iq>"),
        id,
    )
    .await
}

async fn register(c: &mut Client, user: &str, pass: &str, id: &str) -> Element {
    c.iq(
        &format!(
            "<iq type='set' id='{id}'><query xmlns='{NS_REGISTER}'><username>{user}</username><password>{pass}</password></query></iq>"
        ),
        id,
    )
    .await
}

async fn can_log_in(server: &TestServer, user: &str, pass: &str) -> bool {
    let (mut c, _) = tls_stream(server).await;
    c.scram(ScramHash::Sha256, user, pass, false)
        .await
        .is("success", NS_SASL)
}

async fn subscription(server: &TestServer, user: &str, contact: &str) -> Option<String> {
    server
        .store()
        .roster_item(DOMAIN, user, &format!("{contact}@{DOMAIN}"))
        .await
        .unwrap()
        .map(|r| r.subscription)
}

/// Waits for a roster push about `contact`.
async fn next_push_about(c: &mut Client, contact: &str) -> Element {
    loop {
        let e = c.next_named("iq").await;
        if let Some(item) = e
            .get_child("query", NS_ROSTER)
            .and_then(|q| q.get_child("item", NS_ROSTER))
        {
            if item.attr("jid") == Some(contact) {
                return item.clone();
            }
        }
    }
}

#[tokio::test]
async fn an_invitee_registers_with_the_token_and_becomes_the_inviters_contact() {
    let server = TestServer::start().await;
    server.add_user("romeo", "montague").await;
    let mut romeo = Client::login(server.plain_addr, "romeo", "montague", Some("r")).await;
    // Romeo asks for his roster, so he gets pushes.
    romeo
        .iq(
            &format!("<iq type='get' id='ro'><query xmlns='{NS_ROSTER}'/></iq>"),
            "ro",
        )
        .await;

    let (ok, out) = ctl_invite(
        &server,
        &["create", "--inviter", "romeo@localhost", "--expires", "1h"],
    );
    assert!(ok, "{out}");
    let token = token_of(&out);
    assert!(token.len() >= 22, "{token}");
    assert!(
        out.contains(&format!(
            "uri: xmpp:romeo@localhost?roster;preauth={token};ibr=y"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("url: https://chat.example/invite/{token}")),
        "{out}"
    );
    // Only a hash is stored.
    let stored = server.store().invites(None).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].token_hash.contains(&token));

    // Open registration is off: the stream offers the invitation feature,
    // and in-band registration (as Prosody's invite-only mode does: clients
    // such as Conversations look for it before presenting a token), which
    // refuses a registration without a token.
    let (mut c, features) = tls_stream(&server).await;
    assert!(
        features.get_child("register", NS_INVITE).is_some(),
        "{}",
        show(&features)
    );
    assert!(features
        .get_child("register", NS_REGISTER_FEATURE)
        .is_some());
    let reply = register(&mut c, "juliet", "balcony", "r0").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("service-unavailable"));

    let reply = preauth(&mut c, &token, "p1").await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", show(&reply));
    let form = c
        .iq(
            &format!("<iq type='get' id='g1'><query xmlns='{NS_REGISTER}'/></iq>"),
            "g1",
        )
        .await;
    assert_eq!(form.attr("type"), Some("result"), "{}", show(&form));
    let reply = register(&mut c, "juliet", "balcony", "r1").await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", show(&reply));
    assert!(can_log_in(&server, "juliet", "balcony").await);

    // Mutual subscription, pushed to the inviter (XEP-0401 §5).
    let push = next_push_about(&mut romeo, "juliet@localhost").await;
    assert_eq!(push.attr("subscription"), Some("both"));
    assert_eq!(
        subscription(&server, "romeo", "juliet").await.as_deref(),
        Some("both")
    );
    assert_eq!(
        subscription(&server, "juliet", "romeo").await.as_deref(),
        Some("both")
    );

    // The token had one use: it is gone for the next stream, and this one
    // cannot create a second account with it either.
    let reply = register(&mut c, "nurse", "pw", "r2").await;
    assert!(reply.attr("type") == Some("error"), "{}", show(&reply));
    let (mut again, _) = tls_stream(&server).await;
    let reply = preauth(&mut again, &token, "p2").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("item-not-found"));
    let reply = register(&mut again, "nurse", "pw", "r3").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("service-unavailable"));
    assert!(!server
        .store()
        .account_exists(DOMAIN, "nurse")
        .await
        .unwrap());

    let (ok, list) = ctl_invite(&server, &["list"]);
    assert!(
        ok && list.contains("romeo@localhost") && list.contains("1/1"),
        "{list}"
    );
}

#[tokio::test]
async fn expired_unknown_and_revoked_tokens_are_refused() {
    let server = TestServer::start().await;
    let expired = "Expired0123456789Expired012345678";
    server
        .store()
        .invite_add(&InviteRecord {
            token_hash: waxwing::modules::invite::token::hash(expired),
            domain: DOMAIN.into(),
            inviter: None,
            may_create_account: true,
            admin: true,
            expires: Some(waxwing::modules::time::unix_now() - 1),
            uses: 0,
            max_uses: 1,
            created: 0,
            username: None,
        })
        .await
        .unwrap();
    let (ok, out) = ctl_invite(&server, &["create", "--admin"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("uri: xmpp:localhost?register;preauth="),
        "{out}"
    );
    let revoked = token_of(&out);
    let (ok, out) = ctl_invite(&server, &["revoke", &revoked]);
    assert!(ok, "{out}");

    let (mut c, _) = tls_stream(&server).await;
    for (i, t) in [
        expired,
        revoked.as_str(),
        "Unknown0123456789Unknown012345678",
    ]
    .into_iter()
    .enumerate()
    {
        let reply = preauth(&mut c, t, &format!("p{i}")).await;
        assert_eq!(
            stanza_error(&reply).as_deref(),
            Some("item-not-found"),
            "{t}"
        );
        let reply = register(&mut c, "mallory", "pw", &format!("r{i}")).await;
        assert_eq!(stanza_error(&reply).as_deref(), Some("service-unavailable"));
    }
    // Bounded attempts per stream: the next one is not even looked up.
    let (ok, out) = ctl_invite(&server, &["create"]);
    assert!(ok, "{out}");
    let good = token_of(&out);
    let reply = preauth(&mut c, &good, "p9").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("policy-violation"));
    // Junk never reaches the database, and the stream goes on.
    let (mut c, _) = tls_stream(&server).await;
    let reply = preauth(&mut c, "&lt;&amp;&apos;&quot;", "pj").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("item-not-found"));
    let reply = preauth(&mut c, &good, "pg").await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", show(&reply));
    assert!(!server
        .store()
        .account_exists(DOMAIN, "mallory")
        .await
        .unwrap());
}

#[tokio::test]
async fn a_taken_name_gives_the_use_back() {
    let server = TestServer::start().await;
    server.add_user("romeo", "montague").await;
    let (ok, out) = ctl_invite(&server, &["create"]);
    assert!(ok, "{out}");
    let token = token_of(&out);
    let (mut c, _) = tls_stream(&server).await;
    assert_eq!(
        preauth(&mut c, &token, "p").await.attr("type"),
        Some("result")
    );
    let reply = register(&mut c, "romeo", "x", "r1").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("conflict"));
    let reply = register(&mut c, "juliet", "balcony", "r2").await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", show(&reply));
    assert!(can_log_in(&server, "juliet", "balcony").await);
}

#[tokio::test]
async fn a_subscription_request_with_the_inviters_token_is_approved_at_once() {
    let server = TestServer::start().await;
    server.add_user("romeo", "montague").await;
    server.add_user("juliet", "balcony").await;
    let (ok, out) = ctl_invite(&server, &["create", "--inviter", "romeo@localhost"]);
    assert!(ok, "{out}");
    let token = token_of(&out);
    let mut juliet = Client::login(server.plain_addr, "juliet", "balcony", Some("j")).await;
    // A wrong token is an ordinary request: it waits for Romeo.
    juliet
        .send_str(&format!(
            "<presence to='romeo@localhost' type='subscribe'><preauth xmlns='{NS_PARS}' token='Wrong0123456789Wrong0123456789ab'/></presence>"
        ))
        .await;
    juliet.barrier().await;
    eventually("request kept", || async {
        server
            .store()
            .roster_item(DOMAIN, "romeo", "juliet@localhost")
            .await
            .unwrap()
            .is_some_and(|r| r.pending_in)
    })
    .await;
    assert_eq!(
        subscription(&server, "romeo", "juliet").await.as_deref(),
        Some("none")
    );

    juliet
        .send_str(&format!(
            "<presence to='romeo@localhost' type='subscribe'><preauth xmlns='{NS_PARS}' token='{token}'/></presence>"
        ))
        .await;
    loop {
        let p = juliet.next_named("presence").await;
        if p.attr("type") == Some("subscribed") {
            assert_eq!(p.attr("from"), Some("romeo@localhost"));
            break;
        }
    }
    assert_eq!(
        subscription(&server, "romeo", "juliet").await.as_deref(),
        Some("from")
    );
    assert_eq!(
        subscription(&server, "juliet", "romeo").await.as_deref(),
        Some("to")
    );
    let _ = NS_CLIENT;
}

#[tokio::test]
async fn invitations_work_on_postgres() {
    let url = std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let server = TestServer::start_with(move |c| c.database.url = url).await;
    let tag = format!("{}", rand::random::<u32>());
    let (a, b) = (format!("ia{tag}"), format!("ib{tag}"));
    server.add_user(&a, "pw").await;
    let inviter = format!("{a}@{DOMAIN}");
    let (ok, out) = ctl_invite(&server, &["create", "--inviter", &inviter]);
    assert!(ok, "{out}");
    let token = token_of(&out);
    let (mut c, _) = tls_stream(&server).await;
    assert_eq!(
        preauth(&mut c, &token, "p").await.attr("type"),
        Some("result")
    );
    let reply = register(&mut c, &b, "pw", "r").await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", show(&reply));
    assert_eq!(subscription(&server, &a, &b).await.as_deref(), Some("both"));
    let (mut again, _) = tls_stream(&server).await;
    assert_eq!(
        stanza_error(&preauth(&mut again, &token, "p").await).as_deref(),
        Some("item-not-found")
    );
    for u in [&a, &b] {
        server.store().delete_account(DOMAIN, u).await.unwrap();
    }
}

#[tokio::test]
async fn two_streams_holding_the_last_use_create_one_account() {
    let server = TestServer::start().await;
    let (ok, out) = ctl_invite(&server, &["create"]);
    assert!(ok, "{out}");
    let token = token_of(&out);
    let (mut a, _) = tls_stream(&server).await;
    let (mut b, _) = tls_stream(&server).await;
    // Both present it while it is still unused …
    assert_eq!(
        preauth(&mut a, &token, "p").await.attr("type"),
        Some("result")
    );
    assert_eq!(
        preauth(&mut b, &token, "p").await.attr("type"),
        Some("result")
    );
    // … but only the first registration redeems it.
    let reply = register(&mut a, "first", "pw", "r").await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", show(&reply));
    let reply = register(&mut b, "second", "pw", "r").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("not-authorized"));
    assert!(!server
        .store()
        .account_exists(DOMAIN, "second")
        .await
        .unwrap());
}

/// One HTTP/1.1 exchange on a fresh connection: the status and the body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    (head[9..12].parse().unwrap(), body.to_string())
}

async fn with_http() -> (TestServer, std::net::SocketAddr) {
    let port = free_port();
    let server = TestServer::start_with(move |c| {
        c.http.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    })
    .await;
    let http = server.running.as_ref().unwrap().web.http[0];
    (server, http)
}

#[tokio::test]
async fn the_landing_page_registers_and_consumes_the_token() {
    let (server, addr) = with_http().await;
    server.add_user("romeo", "montague").await;
    let (ok, out) = ctl_invite(&server, &["create", "--inviter", "romeo@localhost"]);
    assert!(ok, "{out}");
    let token = token_of(&out);
    let path = format!("/invite/{token}");

    let (status, page) = http(addr, "GET", &path, "").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("romeo@localhost invites you"), "{page}");
    assert!(
        page.contains(&format!(
            "href=\"xmpp:romeo@localhost?roster;preauth={token};ibr=y\""
        )),
        "{page}"
    );
    for app in ["Conversations", "Monal", "Dino", "Gajim"] {
        assert!(page.contains(app), "{app}");
    }
    assert!(!page.contains("<script"), "self-contained, no scripts");

    // What the visitor typed comes back escaped.
    let (status, page) = http(
        addr,
        "POST",
        &path,
        "username=%3Cscript%3Ealert(1)%3C%2Fscript%3E&password=x",
    )
    .await;
    assert_eq!(status, 400, "{page}");
    assert!(!page.contains("<script>"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    // A taken name keeps the token.
    let (status, _) = http(addr, "POST", &path, "username=romeo&password=x").await;
    assert_eq!(status, 409);

    let (status, page) = http(addr, "POST", &path, "username=Juliet&password=bal+cony%21").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("juliet@localhost"), "{page}");
    assert!(can_log_in(&server, "juliet", "bal cony!").await);
    assert_eq!(
        subscription(&server, "romeo", "juliet").await.as_deref(),
        Some("both")
    );
    assert_eq!(
        subscription(&server, "juliet", "romeo").await.as_deref(),
        Some("both")
    );

    // Used up: the page is gone, and a second POST creates nothing.
    let (status, _) = http(addr, "GET", &path, "").await;
    assert_eq!(status, 404);
    let (status, _) = http(addr, "POST", &path, "username=nurse&password=x").await;
    assert_eq!(status, 404);
    assert!(!server
        .store()
        .account_exists(DOMAIN, "nurse")
        .await
        .unwrap());
}

#[tokio::test]
async fn unknown_expired_and_junk_tokens_get_404() {
    let (server, addr) = with_http().await;
    let expired = "Expired0123456789Expired012345678";
    server
        .store()
        .invite_add(&InviteRecord {
            token_hash: waxwing::modules::invite::token::hash(expired),
            domain: DOMAIN.into(),
            inviter: None,
            may_create_account: true,
            admin: true,
            expires: Some(waxwing::modules::time::unix_now() - 1),
            uses: 0,
            max_uses: 1,
            created: 0,
            username: None,
        })
        .await
        .unwrap();
    for path in [
        format!("/invite/{expired}"),
        "/invite/Unknown0123456789Unknown012345678".into(),
        "/invite/%3Cb%3E".into(),
        "/invite/".into(),
    ] {
        let (status, page) = http(addr, "GET", &path, "").await;
        assert_eq!(status, 404, "{path}");
        assert!(!page.contains("<b>"), "{page}");
        let (status, _) = http(addr, "POST", &path, "username=mallory&password=x").await;
        assert_eq!(status, 404, "{path}");
    }
    assert!(!server
        .store()
        .account_exists(DOMAIN, "mallory")
        .await
        .unwrap());
}

#[tokio::test]
async fn an_inviters_invitations_die_with_the_account() {
    let server = TestServer::start().await;
    server.add_user("romeo", "montague").await;
    let (ok, out) = ctl_invite(&server, &["create", "--inviter", "romeo@localhost"]);
    assert!(ok, "{out}");
    let token = token_of(&out);
    let (ok, out) = ctl_invite(&server, &["create"]);
    assert!(ok, "{out}");
    let admins = token_of(&out);
    assert!(server
        .store()
        .delete_account(DOMAIN, "romeo")
        .await
        .unwrap());
    // Whoever takes the name next gets none of Romeo's invitees.
    server.add_user("romeo", "someone-else").await;
    let (mut c, _) = tls_stream(&server).await;
    let reply = preauth(&mut c, &token, "p").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("item-not-found"));
    // Other invitations stay.
    let reply = preauth(&mut c, &admins, "q").await;
    assert_eq!(reply.attr("type"), Some("result"), "{}", show(&reply));
}

#[tokio::test]
async fn an_invitee_elsewhere_is_approved_too() {
    // A user behind an external component stands for any non-local
    // sender (XEP-0379 invitees may be on another server).
    const BOT: &str = "bot.localhost";
    let server = TestServer::start_with(|c| {
        c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.component.push(waxwing::config::ComponentConfig {
            domain: BOT.into(),
            secret: "s3cret".into(),
        });
    })
    .await;
    server.add_user("romeo", "montague").await;
    let (ok, out) = ctl_invite(&server, &["create", "--inviter", "romeo@localhost"]);
    assert!(ok, "{out}");
    let token = token_of(&out);
    let addr = server.running.as_ref().unwrap().component_addrs[0];
    let mut bot = Client::component(addr, BOT, "s3cret").await;
    bot.send_str(&format!(
        "<presence from='juliet@{BOT}' to='romeo@localhost' type='subscribe'><preauth xmlns='{NS_PARS}' token='{token}'/></presence>"
    ))
    .await;
    loop {
        let p = bot.next_named("presence").await;
        if p.attr("type") == Some("subscribed") {
            assert_eq!(p.attr("from"), Some("romeo@localhost"));
            assert_eq!(p.attr("to"), Some(&*format!("juliet@{BOT}")));
            break;
        }
    }
    let romeo = server
        .store()
        .roster_item(DOMAIN, "romeo", &format!("juliet@{BOT}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(romeo.subscription, "from");
}

// ---- XEP-0401 ad-hoc commands ----------------------------------------

const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const NS_DATA: &str = "jabber:x:data";
const INVITE_NODE: &str = "urn:xmpp:invite#invite";
const ACCOUNT_NODE: &str = "urn:xmpp:invite#create-account";

fn adhoc_config(c: &mut waxwing::config::Config) {
    c.admin.admins = vec!["alice@localhost".into()];
}

/// Executes `node`; the IQ answer.
async fn execute(c: &mut Client, node: &str, id: &str) -> Element {
    c.iq(
        &format!("<iq type='set' id='{id}' to='{DOMAIN}'><command xmlns='{NS_COMMANDS}' node='{node}' action='execute'/></iq>"),
        id,
    )
    .await
}

/// A result form's field value.
fn form_value(answer: &Element, var: &str) -> Option<String> {
    answer
        .get_child("command", NS_COMMANDS)?
        .get_child("x", NS_DATA)?
        .children()
        .find(|f| f.attr("var") == Some(var))?
        .get_child("value", NS_DATA)
        .map(|v| v.text())
}

fn token_in(uri: &str) -> String {
    let start = uri.find("preauth=").unwrap() + "preauth=".len();
    uri[start..].split(';').next().unwrap().to_string()
}

/// The nodes of the command list `c` sees.
async fn command_nodes(c: &mut Client) -> Vec<String> {
    let r = c
        .iq(
            &format!("<iq type='get' id='cl' to='{DOMAIN}'><query xmlns='http://jabber.org/protocol/disco#items' node='{NS_COMMANDS}'/></iq>"),
            "cl",
        )
        .await;
    r.get_child("query", "http://jabber.org/protocol/disco#items")
        .unwrap()
        .children()
        .filter_map(|i| i.attr("node").map(str::to_owned))
        .collect()
}

/// A user's contact invitation: completed at once with the URI, the
/// landing page and the expiry; by default it does not admit
/// registration. Account invitations are the administrators': refused to
/// the user, and an administrator's token creates an account that becomes
/// the administrator's contact.
#[tokio::test]
async fn users_invite_contacts_and_admins_invite_accounts_with_adhoc_commands() {
    let server = TestServer::start_with(|c| {
        adhoc_config(c);
        c.http.public_url = "https://chat.example".into();
    })
    .await;
    server.add_user("romeo", "montague").await;
    server.add_user("alice", "admin-pw").await;
    let mut romeo = Client::login(server.plain_addr, "romeo", "montague", Some("r")).await;
    let nodes = command_nodes(&mut romeo).await;
    assert!(nodes.iter().any(|n| n == INVITE_NODE), "{nodes:?}");
    assert!(!nodes.iter().any(|n| n == ACCOUNT_NODE), "{nodes:?}");

    let r = execute(&mut romeo, INVITE_NODE, "i1").await;
    let cmd = r.get_child("command", NS_COMMANDS).expect("command");
    assert_eq!(cmd.attr("status"), Some("completed"), "{}", show(&r));
    assert_eq!(
        form_value(&r, "FORM_TYPE").as_deref(),
        Some("urn:xmpp:invite#invitation")
    );
    let uri = form_value(&r, "uri").unwrap();
    let token = token_in(&uri);
    assert_eq!(uri, format!("xmpp:romeo@localhost?roster;preauth={token}"));
    assert_eq!(
        form_value(&r, "landing-url"),
        Some(format!("https://chat.example/invite/{token}"))
    );
    assert!(form_value(&r, "expire").is_some(), "{}", show(&r));
    // Contact only: the token does not open registration.
    let (mut c, _) = tls_stream(&server).await;
    let refused = preauth(&mut c, &token, "p0").await;
    assert_eq!(stanza_error(&refused).as_deref(), Some("item-not-found"));

    let r = execute(&mut romeo, ACCOUNT_NODE, "a1").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("forbidden"),
        "{}",
        show(&r)
    );

    // The administrator: a form, then the account invitation.
    let mut alice = Client::login(server.plain_addr, "alice", "admin-pw", Some("a")).await;
    assert!(command_nodes(&mut alice)
        .await
        .iter()
        .any(|n| n == ACCOUNT_NODE));
    let form = execute(&mut alice, ACCOUNT_NODE, "a2").await;
    let cmd = form.get_child("command", NS_COMMANDS).unwrap();
    assert_eq!(cmd.attr("status"), Some("executing"), "{}", show(&form));
    let sid = cmd.attr("sessionid").unwrap().to_string();
    let submit = |id: &str, fields: &str| {
        format!(
            "<iq type='set' id='{id}' to='{DOMAIN}'><command xmlns='{NS_COMMANDS}' node='{ACCOUNT_NODE}' sessionid='{sid}' action='complete'><x xmlns='{NS_DATA}' type='submit'>{fields}</x></command></iq>"
        )
    };
    let r = alice
        .iq(
            &submit(
                "a3",
                "<field var='username'><value></value></field><field var='roster-subscription'><value>1</value></field>",
            ),
            "a3",
        )
        .await;
    let uri = form_value(&r, "uri").unwrap_or_else(|| panic!("{}", show(&r)));
    let token = token_in(&uri);
    assert_eq!(uri, format!("xmpp:localhost?register;preauth={token}"));
    let (mut c, _) = tls_stream(&server).await;
    let ok = preauth(&mut c, &token, "p1").await;
    assert_eq!(ok.attr("type"), Some("result"), "{}", show(&ok));
    let done = register(&mut c, "juliet", "capulet", "r1").await;
    assert_eq!(done.attr("type"), Some("result"), "{}", show(&done));
    assert!(can_log_in(&server, "juliet", "capulet").await);
    assert_eq!(
        subscription(&server, "alice", "juliet").await.as_deref(),
        Some("both")
    );
}

/// Submits the account-invitation form with `name`; the answer.
async fn invite_named(alice: &mut Client, name: &str, id: &str) -> Element {
    let form = execute(alice, ACCOUNT_NODE, &format!("{id}-x")).await;
    let sid = form
        .get_child("command", NS_COMMANDS)
        .unwrap()
        .attr("sessionid")
        .unwrap()
        .to_string();
    alice
        .iq(
            &format!(
                "<iq type='set' id='{id}' to='{DOMAIN}'><command xmlns='{NS_COMMANDS}' node='{ACCOUNT_NODE}' sessionid='{sid}' action='complete'><x xmlns='{NS_DATA}' type='submit'><field var='username'><value>{name}</value></field></x></command></iq>"
            ),
            id,
        )
        .await
}

/// An account invitation that names the account (XEP-0401 "Account
/// Creation"): the URI carries the name; the name is reserved — open
/// registration and other tokens get `conflict` — and the token registers
/// that name only; a name taken or already reserved is refused when the
/// invitation is made.
#[tokio::test]
async fn an_account_invitation_reserves_the_name_it_gives() {
    let server = TestServer::start_with(|c| {
        adhoc_config(c);
        // Open registration too: the reservation must hold against it.
        c.host[0].allow_registration = true;
    })
    .await;
    server.add_user("alice", "admin-pw").await;
    let mut alice = Client::login(server.plain_addr, "alice", "admin-pw", Some("a")).await;
    let r = invite_named(&mut alice, "Tybalt", "n1").await;
    let uri = form_value(&r, "uri").unwrap_or_else(|| panic!("{}", show(&r)));
    let token = token_in(&uri);
    // Normalised (nodeprep), carried in the URI.
    assert_eq!(
        uri,
        format!("xmpp:tybalt@localhost?register;preauth={token}")
    );
    // Reserved: a second invitation for the name, and an account taken,
    // are refused.
    let r = invite_named(&mut alice, "tybalt", "n2").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("conflict"),
        "{}",
        show(&r)
    );
    let r = invite_named(&mut alice, "alice", "n3").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("conflict"),
        "{}",
        show(&r)
    );
    let r = invite_named(&mut alice, "bad@name", "n4").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("not-acceptable"),
        "{}",
        show(&r)
    );
    // Open registration cannot take it.
    let (mut c, _) = tls_stream(&server).await;
    let taken = register(&mut c, "tybalt", "sneaky", "o1").await;
    assert_eq!(
        stanza_error(&taken).as_deref(),
        Some("conflict"),
        "{}",
        show(&taken)
    );
    // The token registers that name only...
    let (mut c, _) = tls_stream(&server).await;
    let ok = preauth(&mut c, &token, "p1").await;
    assert_eq!(ok.attr("type"), Some("result"), "{}", show(&ok));
    let other = register(&mut c, "mercutio", "pw", "r1").await;
    assert_eq!(
        stanza_error(&other).as_deref(),
        Some("not-acceptable"),
        "{}",
        show(&other)
    );
    assert!(!can_log_in(&server, "mercutio", "pw").await);
    // ...and its use was not spent by the refusal.
    let done = register(&mut c, "tybalt", "capulet", "r2").await;
    assert_eq!(done.attr("type"), Some("result"), "{}", show(&done));
    assert!(can_log_in(&server, "tybalt", "capulet").await);
    assert!(!can_log_in(&server, "tybalt", "sneaky").await);
}

/// `[invite] user_invites_create_accounts`: the user's invitation carries
/// `ibr=y` and its token registers on a host whose open registration is
/// off; at most `max_live_per_user` live invitations; dead ones are purged
/// as new ones are made.
#[tokio::test]
async fn user_invitations_may_create_accounts_are_capped_and_dead_ones_purged() {
    let server = TestServer::start_with(|c| {
        c.invite.user_invites_create_accounts = true;
        c.invite.max_live_per_user = 2;
    })
    .await;
    server.add_user("romeo", "montague").await;
    let dead = "Expired0123456789Expired012345678";
    let dead_hash = waxwing::modules::invite::token::hash(dead);
    server
        .store()
        .invite_add(&InviteRecord {
            token_hash: dead_hash.clone(),
            domain: DOMAIN.into(),
            inviter: Some("romeo@localhost".into()),
            may_create_account: true,
            admin: false,
            expires: Some(waxwing::modules::time::unix_now() - 1),
            uses: 0,
            max_uses: 1,
            created: 0,
            username: None,
        })
        .await
        .unwrap();
    let mut romeo = Client::login(server.plain_addr, "romeo", "montague", Some("r")).await;
    let r = execute(&mut romeo, INVITE_NODE, "i1").await;
    let uri = form_value(&r, "uri").unwrap_or_else(|| panic!("{}", show(&r)));
    assert!(uri.ends_with(";ibr=y"), "{uri}");
    assert!(
        server.store().invite(&dead_hash).await.unwrap().is_none(),
        "the expired invitation was purged"
    );
    let (mut c, _) = tls_stream(&server).await;
    let ok = preauth(&mut c, &token_in(&uri), "p1").await;
    assert_eq!(ok.attr("type"), Some("result"), "{}", show(&ok));
    let done = register(&mut c, "mercutio", "pw", "r1").await;
    assert_eq!(done.attr("type"), Some("result"), "{}", show(&done));
    assert_eq!(
        subscription(&server, "romeo", "mercutio").await.as_deref(),
        Some("both")
    );
    // That one is spent: two more live ones are allowed, not three.
    for id in ["i2", "i3"] {
        let r = execute(&mut romeo, INVITE_NODE, id).await;
        assert!(form_value(&r, "uri").is_some(), "{}", show(&r));
    }
    let r = execute(&mut romeo, INVITE_NODE, "i4").await;
    assert_eq!(
        stanza_error(&r).as_deref(),
        Some("resource-constraint"),
        "{}",
        show(&r)
    );
}
