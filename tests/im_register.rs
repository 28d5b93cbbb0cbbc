//! In-band registration (XEP-0077) over real sockets: creating an account
//! before login, refusals (disabled, taken, invalid, rate-limited), password
//! change, account removal with all its data; and the contact addresses
//! (XEP-0157) in the server's disco#info.

mod common;

use common::*;
use waxwing::sasl::ScramHash;
use waxwing::xml::{Element, NS_CLIENT};

const NS_REGISTER: &str = "jabber:iq:register";
const NS_REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_DATA: &str = "jabber:x:data";

async fn open_registration() -> TestServer {
    TestServer::start_with(|c| c.host[0].allow_registration = true).await
}

/// A TLS stream before authentication: its features.
async fn unauthenticated(server: &TestServer) -> (Client, Element) {
    let mut c = Client::connect(server.plain_addr).await;
    let features = c.starttls().await;
    (c, features)
}

/// Sends an in-band registration set and returns the reply.
async fn register(c: &mut Client, user: &str, pass: &str, id: &str) -> Element {
    c.iq(
        &format!(
            "<iq type='set' id='{id}'><query xmlns='{NS_REGISTER}'><username>{user}</username><password>{pass}</password></query></iq>"
        ),
        id,
    )
    .await
}

/// The text of a stanza error, if any.
fn error_text(e: &Element) -> String {
    e.get_child("error", NS_CLIENT)
        .and_then(|err| err.get_child("text", NS_STANZAS))
        .map(|t| t.text())
        .unwrap_or_default()
}

async fn can_log_in(server: &TestServer, user: &str, pass: &str) -> bool {
    let (mut c, _) = unauthenticated(server).await;
    c.scram(ScramHash::Sha256, user, pass, false)
        .await
        .is("success", NS_SASL)
}

#[tokio::test]
async fn registration_is_off_by_default() {
    let server = TestServer::start().await;
    let (mut c, features) = unauthenticated(&server).await;
    // Still advertised: an invitation token creates accounts in-band even
    // here (clients look for the feature before presenting one); without
    // a token the IQs are refused.
    assert!(
        features
            .get_child("register", NS_REGISTER_FEATURE)
            .is_some(),
        "{features:?}"
    );
    let reply = c
        .iq(
            &format!("<iq type='get' id='g1'><query xmlns='{NS_REGISTER}'/></iq>"),
            "g1",
        )
        .await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("service-unavailable"));
    let reply = register(&mut c, "mallory", "pw", "s1").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("service-unavailable"));
    assert!(!server
        .store()
        .account_exists(DOMAIN, "mallory")
        .await
        .unwrap());
    // The refusal is a stanza error: the stream goes on to authenticate.
    server.add_user("alice", "pw").await;
    assert!(c
        .scram(ScramHash::Sha256, "alice", "pw", false)
        .await
        .is("success", NS_SASL));
}

#[tokio::test]
async fn register_then_log_in_on_the_same_stream() {
    let server = open_registration().await;
    let (mut c, features) = unauthenticated(&server).await;
    assert!(
        features
            .get_child("register", NS_REGISTER_FEATURE)
            .is_some(),
        "{features:?}"
    );
    let form = c
        .iq(
            &format!("<iq type='get' id='g1'><query xmlns='{NS_REGISTER}'/></iq>"),
            "g1",
        )
        .await;
    assert_eq!(form.attr("type"), Some("result"), "{form:?}");
    let q = form.get_child("query", NS_REGISTER).unwrap();
    for name in ["instructions", "username", "password"] {
        assert!(q.get_child(name, NS_REGISTER).is_some(), "{name} in {q:?}");
    }

    let reply = register(&mut c, "Juliet", "balcony", "r1").await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    assert!(server
        .store()
        .account_exists(DOMAIN, "juliet")
        .await
        .unwrap());
    // One account per stream (XEP-0077 §3.3).
    let reply = register(&mut c, "nurse", "pw", "r2").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("not-acceptable"));

    // Still unauthenticated: the client logs in with the new account.
    assert!(c
        .scram(ScramHash::Sha256, "juliet", "balcony", false)
        .await
        .is("success", NS_SASL));
    c.open_stream().await;
    c.next_element().await;
    assert_eq!(c.bind(Some("r")).await, "juliet@localhost/r");

    // And from a new connection, with SCRAM-SHA-512 too.
    let mut again = Client::connect(server.plain_addr).await;
    again.starttls().await;
    assert!(again
        .scram(ScramHash::Sha512, "juliet", "balcony", false)
        .await
        .is("success", NS_SASL));
}

#[tokio::test]
async fn taken_and_invalid_usernames_and_empty_passwords_are_refused() {
    let server = open_registration().await;
    server.add_user("romeo", "montague").await;
    let cases = [
        ("romeo", "other", "conflict"),
        ("ROMEO", "other", "conflict"),
        ("bad@name", "pw", "not-acceptable"),
        ("", "pw", "not-acceptable"),
        (&"x".repeat(1100), "pw", "not-acceptable"),
        ("tybalt", "", "not-acceptable"),
    ];
    for (i, (user, pass, cond)) in cases.iter().enumerate() {
        // A fresh stream each time, so only the case itself is judged.
        let (mut c, _) = unauthenticated(&server).await;
        let reply = register(&mut c, user, pass, &format!("c{i}")).await;
        assert_eq!(
            stanza_error(&reply).as_deref(),
            Some(*cond),
            "{user:?}/{pass:?}: {reply:?}"
        );
    }
    let (mut c, _) = unauthenticated(&server).await;
    let reply = c
        .iq(
            &format!("<iq type='set' id='m'><query xmlns='{NS_REGISTER}'><username>tybalt</username></query></iq>"),
            "m",
        )
        .await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("not-acceptable"));
    assert!(!server
        .store()
        .account_exists(DOMAIN, "tybalt")
        .await
        .unwrap());
    assert!(can_log_in(&server, "romeo", "montague").await, "untouched");
}

#[tokio::test]
async fn registration_is_rate_limited_per_ip() {
    let server = TestServer::start_with(|c| {
        c.host[0].allow_registration = true;
        c.limits.registrations_per_ip = 2;
    })
    .await;
    for user in ["one", "two"] {
        let (mut c, _) = unauthenticated(&server).await;
        let reply = register(&mut c, user, "pw", "r").await;
        assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    }
    let (mut c, _) = unauthenticated(&server).await;
    let reply = register(&mut c, "three", "pw", "r").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("not-acceptable"));
    assert!(error_text(&reply).contains("too many"), "{reply:?}");
    assert!(!server
        .store()
        .account_exists(DOMAIN, "three")
        .await
        .unwrap());
    // The limit is on creating accounts, not on using them.
    assert!(can_log_in(&server, "one", "pw").await);
}

#[tokio::test]
async fn password_change_takes_effect() {
    let server = TestServer::start().await;
    server.add_user("bill", "oldpass").await;
    let mut c = Client::login(server.plain_addr, "bill", "oldpass", Some("globe")).await;

    // A registered user is told so, with the username (§3.1).
    let info = c
        .iq(
            &format!("<iq type='get' id='g'><query xmlns='{NS_REGISTER}'/></iq>"),
            "g",
        )
        .await;
    let q = info.get_child("query", NS_REGISTER).expect("query");
    assert!(q.get_child("registered", NS_REGISTER).is_some(), "{q:?}");
    assert_eq!(q.get_child("username", NS_REGISTER).unwrap().text(), "bill");

    // Someone else's username, or an empty password, changes nothing.
    let reply = c
        .iq(
            &format!("<iq type='set' to='localhost' id='x1'><query xmlns='{NS_REGISTER}'><username>ben</username><password>p</password></query></iq>"),
            "x1",
        )
        .await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("bad-request"));
    let reply = c
        .iq(
            &format!("<iq type='set' id='x2'><query xmlns='{NS_REGISTER}'><username>bill</username><password/></query></iq>"),
            "x2",
        )
        .await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("not-acceptable"));
    assert!(can_log_in(&server, "bill", "oldpass").await);

    // §3.3's example sends it to the server.
    let reply = c
        .iq(
            &format!("<iq type='set' to='localhost' id='change1'><query xmlns='{NS_REGISTER}'><username>bill</username><password>newpass</password></query></iq>"),
            "change1",
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    assert!(can_log_in(&server, "bill", "newpass").await);
    assert!(!can_log_in(&server, "bill", "oldpass").await);
    // The session that changed it goes on.
    let pong = c
        .iq(
            "<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
}

/// Cancels `user`'s account from a logged-in session and checks that every
/// row of it is gone and the session ends with not-authorized.
async fn cancel_removes_everything(server: &TestServer, user: &str) {
    let store = server.store();
    store
        .user_data_put(DOMAIN, user, "vcard", "<vCard/>")
        .await
        .unwrap();
    store
        .user_data_put(DOMAIN, user, "blocklist", "x@y")
        .await
        .unwrap();
    let mut c = Client::login(server.plain_addr, user, "pw", Some("r")).await;
    // <remove/> with anything beside it is a bad request (§3.2).
    let reply = c
        .iq(
            &format!("<iq type='set' id='u0'><query xmlns='{NS_REGISTER}'><remove/><username>{user}</username></query></iq>"),
            "u0",
        )
        .await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("bad-request"));

    let reply = c
        .iq(
            &format!(
                "<iq type='set' id='unreg1'><query xmlns='{NS_REGISTER}'><remove/></query></iq>"
            ),
            "unreg1",
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    assert_eq!(c.expect_stream_error().await, "not-authorized");

    assert!(!store.account_exists(DOMAIN, user).await.unwrap());
    for key in ["vcard", "blocklist"] {
        assert_eq!(store.user_data_get(DOMAIN, user, key).await.unwrap(), None);
    }
    for mech in ["SHA-1", "SHA-256", "SHA-512"] {
        assert!(store
            .scram_credentials(DOMAIN, user, mech)
            .await
            .unwrap()
            .is_none());
    }
    assert!(!can_log_in(server, user, "pw").await);
}

#[tokio::test]
async fn cancel_deletes_the_account_and_ends_the_session() {
    let server = TestServer::start().await;
    server.add_user("bill", "pw").await;
    server.add_user("keep", "pw").await;
    server
        .store()
        .user_data_put(DOMAIN, "keep", "vcard", "mine")
        .await
        .unwrap();
    cancel_removes_everything(&server, "bill").await;
    // Nobody else's data goes with it.
    assert_eq!(
        server
            .store()
            .user_data_get(DOMAIN, "keep", "vcard")
            .await
            .unwrap()
            .as_deref(),
        Some("mine")
    );
    assert!(can_log_in(&server, "keep", "pw").await);
}

#[tokio::test]
async fn ctl_user_del_removes_all_data() {
    let mut server = TestServer::start().await;
    server.add_user("gone", "pw").await;
    server
        .store()
        .user_data_put(DOMAIN, "gone", "vcard", "<vCard/>")
        .await
        .unwrap();
    let url = server.server().config().database.url.clone();
    // Stopping closes the store, so the command has the database to itself.
    server.stop().await;

    let cfg = server.dir.path().join("ctl.toml");
    std::fs::write(
        &cfg,
        format!("[[host]]\ndomain = \"{DOMAIN}\"\n[database]\nurl = \"{url}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_waxwing"))
        .arg("ctl")
        .arg("--config")
        .arg(&cfg)
        .args(["user", "del", "gone@localhost"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = waxwing::storage::Store::open(&url, 1).await.unwrap();
    assert!(!store.account_exists(DOMAIN, "gone").await.unwrap());
    assert_eq!(
        store.user_data_get(DOMAIN, "gone", "vcard").await.unwrap(),
        None
    );
    // Every per-user table is empty for that account.
    if let waxwing::storage::Store::Sqlite(pool) = &store {
        for table in waxwing::storage::Store::USER_TABLES {
            let (n,): (i64,) = sqlx::query_as(&format!(
                "SELECT COUNT(*) FROM {table} WHERE domain = $1 AND username = $2"
            ))
            .bind(DOMAIN)
            .bind("gone")
            .fetch_one(pool)
            .await
            .unwrap();
            assert_eq!(n, 0, "{table}");
        }
    }
}

#[tokio::test]
async fn registration_and_cancel_with_postgres_storage() {
    let url = std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let server = TestServer::start_with(move |c| {
        c.database.url = url;
        c.host[0].allow_registration = true;
    })
    .await;
    // The shared database outlives this run: a name no other run uses.
    let user = format!("reg{}", rand::random::<u64>());
    let (mut c, _) = unauthenticated(&server).await;
    let reply = register(&mut c, &user, "pw", "r").await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    let (mut c, _) = unauthenticated(&server).await;
    let reply = register(&mut c, &user, "pw", "r").await;
    assert_eq!(stanza_error(&reply).as_deref(), Some("conflict"));
    cancel_removes_everything(&server, &user).await;
}

#[tokio::test]
async fn contact_addresses_are_in_disco_info() {
    let server = TestServer::start_with(|c| {
        c.contact.abuse = vec!["mailto:abuse@localhost".into()];
        c.contact.support = vec![
            "xmpp:support@localhost".into(),
            "https://localhost/help".into(),
        ];
    })
    .await;
    server.add_user("alice", "pw").await;
    let mut c = Client::login(server.plain_addr, "alice", "pw", None).await;
    let info = c
        .iq(
            &format!("<iq type='get' to='localhost' id='d'><query xmlns='{NS_DISCO_INFO}'/></iq>"),
            "d",
        )
        .await;
    let q = info.get_child("query", NS_DISCO_INFO).expect("query");
    assert!(
        q.children()
            .any(|f| f.name() == "feature" && f.attr("var") == Some(NS_REGISTER)),
        "{q:?}"
    );
    let form = q.get_child("x", NS_DATA).expect("XEP-0128 form");
    assert_eq!(form.attr("type"), Some("result"));
    let values = |var: &str| -> Vec<String> {
        form.children()
            .find(|f| f.attr("var") == Some(var))
            .map(|f| f.children().map(|v| v.text()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        values("FORM_TYPE"),
        ["http://jabber.org/network/serverinfo"]
    );
    assert_eq!(values("abuse-addresses"), ["mailto:abuse@localhost"]);
    assert_eq!(
        values("support-addresses"),
        ["xmpp:support@localhost", "https://localhost/help"]
    );
    assert!(values("admin-addresses").is_empty(), "unset: left out");

    // Without a [contact] table there is no form at all.
    let plain = TestServer::start().await;
    plain.add_user("bob", "pw").await;
    let mut c = Client::login(plain.plain_addr, "bob", "pw", None).await;
    let info = c
        .iq(
            &format!("<iq type='get' to='localhost' id='d'><query xmlns='{NS_DISCO_INFO}'/></iq>"),
            "d",
        )
        .await;
    assert!(info
        .get_child("query", NS_DISCO_INFO)
        .unwrap()
        .get_child("x", NS_DATA)
        .is_none());
}
