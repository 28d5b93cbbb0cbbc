//! SASL Upgrade Tasks (XEP-0480) over real sockets, on SQLite and on
//! PostgreSQL (WAXWING_TEST_POSTGRES): an account with SCRAM-SHA-1 keys
//! only (as imported from Prosody) logs in with SCRAM-SHA-1, asks for the
//! SHA-256 upgrade, computes SaltedPassword with the salt it is given; a
//! fresh connection then logs in with SCRAM-SHA-256. Bad hashes, wrong
//! tasks and aborts store nothing.

mod common;

use common::sasl2::*;
use common::*;
use waxwing::sasl::{ScramClient, ScramHash};
use waxwing::stream::sasl_upgrade::{NS_SCRAM_UPGRADE, NS_UPGRADE};
use waxwing::xml::Element;

const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A unique account name (PostgreSQL is shared between runs).
fn user(prefix: &str) -> String {
    format!("{prefix}{}", rand::random::<u32>())
}

/// An account with SCRAM-SHA-1 keys only, as `ctl import` leaves a
/// Prosody 0.12 account.
async fn add_sha1_only(server: &TestServer, name: &str, password: &str) {
    let jid = jid::BareJid::new(&format!("{name}@{DOMAIN}")).unwrap();
    let mut rec = waxwing::accounts::derive_record(&jid, password, 4096).unwrap();
    rec.scram.retain(|k| k.mechanism == "SHA-1");
    assert!(server.store().create_account(&rec).await.unwrap());
}

async fn mechanisms_stored(server: &TestServer, name: &str) -> Vec<String> {
    let mut m = server.store().scram_mechanisms(DOMAIN, name).await.unwrap();
    m.sort();
    m
}

/// Connects with STARTTLS; the features after TLS.
async fn secured(server: &TestServer) -> (Client, Element) {
    let mut c = Client::connect(server.plain_addr).await;
    let features = c.starttls().await;
    (c, features)
}

/// A SASL2 SCRAM exchange with `inline` in `<authenticate/>`, up to the
/// server's answer after the client-final message (`<continue/>`,
/// `<success/>` or `<failure/>`). The server signature is checked from
/// whichever of them carries it.
async fn authenticate(
    c: &mut Client,
    hash: ScramHash,
    name: &str,
    password: &str,
    inline: &str,
) -> (Element, ScramClient) {
    let mut scram = ScramClient::new(hash, name, password, None);
    let first = b64(&scram.client_first());
    let ua = user_agent("upgrader");
    c.send_str(&format!(
        "<authenticate xmlns='{NS_SASL2}' mechanism='{}'><initial-response>{first}</initial-response>{ua}{inline}</authenticate>",
        hash.name()
    ))
    .await;
    let challenge = c.next_element().await;
    if !challenge.is("challenge", NS_SASL2) {
        return (challenge, scram);
    }
    let fin = scram
        .handle_server_first(&unb64(&challenge.text()))
        .unwrap();
    c.send_str(&format!(
        "<response xmlns='{NS_SASL2}'>{}</response>",
        b64(&fin)
    ))
    .await;
    let answer = c.next_element().await;
    if let Some(d) = answer.get_child("additional-data", NS_SASL2) {
        scram
            .verify_server_final(&unb64(&d.text()))
            .expect("server signature verifies");
    }
    (answer, scram)
}

fn upgrade(hash: ScramHash) -> String {
    format!(
        "<upgrade xmlns='{NS_UPGRADE}'>UPGR-{}</upgrade>",
        hash.name()
    )
}

fn task_of(cont: &Element) -> String {
    cont.get_child("tasks", NS_SASL2)
        .and_then(|t| t.get_child("task", NS_SASL2))
        .map(|t| t.text())
        .unwrap_or_default()
}

/// Starts the task `<continue/>` named; returns the salt and iterations.
async fn next(c: &mut Client, task: &str) -> (Vec<u8>, u32) {
    c.send_str(&format!("<next xmlns='{NS_SASL2}' task='{task}'/>"))
        .await;
    let data = c.next_element().await;
    assert!(data.is("task-data", NS_SASL2), "{}", show(&data));
    let salt = data
        .get_child("salt", NS_SCRAM_UPGRADE)
        .expect("salt in task-data");
    let iterations = salt.attr("iterations").unwrap().parse().unwrap();
    (unb64(&salt.text()), iterations)
}

async fn send_hash(c: &mut Client, salted: &[u8]) -> Element {
    c.send_str(&format!(
        "<task-data xmlns='{NS_SASL2}'><hash xmlns='{NS_SCRAM_UPGRADE}'>{}</hash></task-data>",
        b64(salted)
    ))
    .await;
    c.next_element().await
}

async fn upgrade_then_log_in(server: &TestServer) {
    let name = user("imported");
    add_sha1_only(server, &name, "pencil").await;
    let (mut c, features) = secured(server).await;
    let auth = features.get_child("authentication", NS_SASL2).unwrap();
    let advertised: Vec<String> = auth
        .children()
        .filter(|e| e.is("upgrade", NS_UPGRADE))
        .map(|e| e.text())
        .collect();
    for h in [
        "UPGR-SCRAM-SHA-1",
        "UPGR-SCRAM-SHA-256",
        "UPGR-SCRAM-SHA-512",
    ] {
        assert!(advertised.iter().any(|a| a == h), "{advertised:?}");
    }
    assert!(
        !advertised.iter().any(|a| a.ends_with("-PLUS")),
        "{advertised:?}"
    );

    // Without the upgrade, SCRAM-SHA-256 is not available to the account.
    let (f, _) = authenticate(&mut c, ScramHash::Sha256, &name, "pencil", "").await;
    assert!(
        f.get_child("invalid-mechanism", NS_SASL).is_some(),
        "{}",
        show(&f)
    );

    // SHA-1 login asking for SHA-256 (and SHA-1, which it has: skipped).
    let inline = format!(
        "{}{}<bind xmlns='{NS_BIND2}'/>",
        upgrade(ScramHash::Sha1),
        upgrade(ScramHash::Sha256)
    );
    let (cont, _) = authenticate(&mut c, ScramHash::Sha1, &name, "pencil", &inline).await;
    assert!(cont.is("continue", NS_SASL2), "{}", show(&cont));
    assert!(
        cont.get_child("additional-data", NS_SASL2).is_some(),
        "the first continue carries the server signature"
    );
    assert_eq!(task_of(&cont), "UPGR-SCRAM-SHA-256");
    let (salt, iterations) = next(&mut c, "UPGR-SCRAM-SHA-256").await;
    assert_eq!(salt.len(), 16);
    assert_eq!(
        iterations,
        server.server().config().limits.scram_iterations,
        "the server's iteration count"
    );
    let salted = ScramHash::Sha256.salted_password("pencil", &salt, iterations);
    let success = send_hash(&mut c, &salted).await;
    assert!(success.is("success", NS_SASL2), "{}", show(&success));
    assert!(
        success.get_child("additional-data", NS_SASL2).is_none(),
        "sent in continue already"
    );
    assert!(authorization_identifier(&success).starts_with(&format!("{name}@{DOMAIN}/")));
    assert_eq!(mechanisms_stored(server, &name).await, ["SHA-1", "SHA-256"]);

    // A fresh connection: SCRAM-SHA-256 with the same password.
    let (mut d, _) = secured(server).await;
    let r = d
        .sasl2_scram(ScramHash::Sha256, &name, "pencil", false, "other", "")
        .await;
    assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));
    let (mut e, _) = secured(server).await;
    let r = e
        .sasl2_scram(ScramHash::Sha256, &name, "wrong", false, "other", "")
        .await;
    assert!(r.outcome.get_child("not-authorized", NS_SASL).is_some());
    // Asking again for what the account has: no task, straight success.
    let (mut g, _) = secured(server).await;
    let (s, _) = authenticate(
        &mut g,
        ScramHash::Sha256,
        &name,
        "pencil",
        &upgrade(ScramHash::Sha256),
    )
    .await;
    assert!(s.is("success", NS_SASL2), "{}", show(&s));
    // Legacy SASL sees the new keys too.
    let mut h = Client::connect(server.plain_addr).await;
    h.starttls().await;
    let s = h.scram(ScramHash::Sha256, &name, "pencil", false).await;
    assert!(s.is("success", NS_SASL), "{}", show(&s));
}

#[tokio::test]
async fn sha1_account_upgrades_to_sha256_on_sqlite() {
    let server = TestServer::start().await;
    upgrade_then_log_in(&server).await;
}

#[tokio::test]
async fn sha1_account_upgrades_to_sha256_on_postgres() {
    let url = postgres_url();
    let server = TestServer::start_with(move |c| c.database.url = url).await;
    upgrade_then_log_in(&server).await;
}

/// Two tasks in one authentication, one `<continue/>` each; both keys are
/// stored.
#[tokio::test]
async fn two_tasks_run_in_sequence() {
    let server = TestServer::start().await;
    add_sha1_only(&server, "two", "pw").await;
    let (mut c, _) = secured(&server).await;
    let inline = format!(
        "{}{}",
        upgrade(ScramHash::Sha512),
        upgrade(ScramHash::Sha256)
    );
    let (cont, _) = authenticate(&mut c, ScramHash::Sha1, "two", "pw", &inline).await;
    assert_eq!(task_of(&cont), "UPGR-SCRAM-SHA-512");
    let (salt, it) = next(&mut c, "UPGR-SCRAM-SHA-512").await;
    let cont = send_hash(&mut c, &ScramHash::Sha512.salted_password("pw", &salt, it)).await;
    assert!(cont.is("continue", NS_SASL2), "{}", show(&cont));
    assert_eq!(task_of(&cont), "UPGR-SCRAM-SHA-256");
    let (salt, it) = next(&mut c, "UPGR-SCRAM-SHA-256").await;
    let s = send_hash(&mut c, &ScramHash::Sha256.salted_password("pw", &salt, it)).await;
    assert!(s.is("success", NS_SASL2), "{}", show(&s));
    assert_eq!(
        mechanisms_stored(&server, "two").await,
        ["SHA-1", "SHA-256", "SHA-512"]
    );
    for h in [ScramHash::Sha256, ScramHash::Sha512] {
        let (mut d, _) = secured(&server).await;
        let r = d.sasl2_scram(h, "two", "pw", false, "x", "").await;
        assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));
    }
}

/// A hash of the wrong length, garbage, the wrong task, an abort, or the
/// second task failing after the first went well: `<failure/>`, nothing
/// stored, the client may authenticate again on the same stream.
#[tokio::test]
async fn bad_task_data_is_refused_and_nothing_is_stored() {
    let server = TestServer::start().await;
    add_sha1_only(&server, "bad", "pw").await;
    let (mut c, _) = secured(&server).await;
    let ask = upgrade(ScramHash::Sha256);

    // SHA-1's length for a SHA-256 key.
    let (cont, _) = authenticate(&mut c, ScramHash::Sha1, "bad", "pw", &ask).await;
    assert!(cont.is("continue", NS_SASL2), "{}", show(&cont));
    let (salt, it) = next(&mut c, "UPGR-SCRAM-SHA-256").await;
    let f = send_hash(&mut c, &ScramHash::Sha1.salted_password("pw", &salt, it)).await;
    assert!(f.is("failure", NS_SASL2), "{}", show(&f));
    assert!(
        f.get_child("malformed-request", NS_SASL).is_some(),
        "{}",
        show(&f)
    );

    // Not base64.
    let (cont, _) = authenticate(&mut c, ScramHash::Sha1, "bad", "pw", &ask).await;
    assert!(cont.is("continue", NS_SASL2), "{}", show(&cont));
    next(&mut c, "UPGR-SCRAM-SHA-256").await;
    c.send_str(&format!(
        "<task-data xmlns='{NS_SASL2}'><hash xmlns='{NS_SCRAM_UPGRADE}'>%%%</hash></task-data>"
    ))
    .await;
    let f = c.next_element().await;
    assert!(
        f.get_child("incorrect-encoding", NS_SASL).is_some(),
        "{}",
        show(&f)
    );

    // The wrong task started.
    let (cont, _) = authenticate(&mut c, ScramHash::Sha1, "bad", "pw", &ask).await;
    assert!(cont.is("continue", NS_SASL2), "{}", show(&cont));
    c.send_str(&format!(
        "<next xmlns='{NS_SASL2}' task='UPGR-SCRAM-SHA-512'/>"
    ))
    .await;
    let f = c.next_element().await;
    assert!(
        f.get_child("malformed-request", NS_SASL).is_some(),
        "{}",
        show(&f)
    );

    // Aborted.
    let (cont, _) = authenticate(&mut c, ScramHash::Sha1, "bad", "pw", &ask).await;
    assert!(cont.is("continue", NS_SASL2), "{}", show(&cont));
    c.send_str(&format!("<abort xmlns='{NS_SASL2}'/>")).await;
    let f = c.next_element().await;
    assert!(f.get_child("aborted", NS_SASL).is_some(), "{}", show(&f));
    assert_eq!(mechanisms_stored(&server, "bad").await, ["SHA-1"]);

    // The first of two tasks done, the second garbage: neither stored.
    let (mut d, _) = secured(&server).await;
    let both = format!(
        "{}{}",
        upgrade(ScramHash::Sha256),
        upgrade(ScramHash::Sha512)
    );
    let (cont, _) = authenticate(&mut d, ScramHash::Sha1, "bad", "pw", &both).await;
    assert!(cont.is("continue", NS_SASL2), "{}", show(&cont));
    let (salt, it) = next(&mut d, "UPGR-SCRAM-SHA-256").await;
    let cont = send_hash(&mut d, &ScramHash::Sha256.salted_password("pw", &salt, it)).await;
    assert!(cont.is("continue", NS_SASL2), "{}", show(&cont));
    next(&mut d, "UPGR-SCRAM-SHA-512").await;
    let f = send_hash(&mut d, &[0u8; 3]).await;
    assert!(f.is("failure", NS_SASL2), "{}", show(&f));
    assert_eq!(mechanisms_stored(&server, "bad").await, ["SHA-1"]);

    // And the client that gives up on upgrades still logs in.
    let r = d
        .sasl2_scram(ScramHash::Sha1, "bad", "pw", false, "x", "")
        .await;
    assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));
}

/// Switched off: nothing advertised, requests ignored, the login goes on
/// without a task.
#[tokio::test]
async fn switched_off_nothing_is_advertised_or_run() {
    let server = TestServer::start_with(|c| c.sasl2.upgrade_tasks = false).await;
    add_sha1_only(&server, "off", "pw").await;
    let (mut c, features) = secured(&server).await;
    let auth = features.get_child("authentication", NS_SASL2).unwrap();
    assert!(auth.get_child("upgrade", NS_UPGRADE).is_none());
    let (s, _) = authenticate(
        &mut c,
        ScramHash::Sha1,
        "off",
        "pw",
        &upgrade(ScramHash::Sha256),
    )
    .await;
    assert!(s.is("success", NS_SASL2), "{}", show(&s));
    assert_eq!(mechanisms_stored(&server, "off").await, ["SHA-1"]);
}

/// A FAST token login asking for an upgrade gets no task: a token must
/// not be turnable into a password for another mechanism.
#[tokio::test]
async fn no_task_after_a_fast_token_login() {
    let server = TestServer::start().await;
    add_sha1_only(&server, "fasty", "pw").await;
    let (mut c, _) = secured(&server).await;
    let ask_token = format!("<request-token xmlns='{NS_FAST}' mechanism='HT-SHA-256-NONE'/>");
    let (s, _) = authenticate(&mut c, ScramHash::Sha1, "fasty", "pw", &ask_token).await;
    assert!(s.is("success", NS_SASL2), "{}", show(&s));
    let token = issued_token(&s).expect("a token");
    let (mut d, _) = secured(&server).await;
    let s = d
        .sasl2_fast(
            "HT-SHA-256-NONE",
            "fasty",
            &token,
            &[],
            "upgrader",
            Some(1),
            &upgrade(ScramHash::Sha256),
        )
        .await;
    assert!(s.is("success", NS_SASL2), "{}", show(&s));
    assert_eq!(mechanisms_stored(&server, "fasty").await, ["SHA-1"]);
}
