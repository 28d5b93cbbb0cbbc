//! SASL2 (XEP-0388) with Bind 2 (XEP-0386), FAST (XEP-0484) and downgrade
//! protection (XEP-0474) over real sockets, on SQLite and on PostgreSQL
//! (WAXWING_TEST_POSTGRES).

mod common;

use std::sync::Arc;

use common::sasl2::*;
use common::*;
use waxwing::modules::stream_management::StreamManagementFeature;
use waxwing::sasl::fast;
use waxwing::sasl::ScramHash;
use waxwing::server::Server;
use waxwing::xml::Element;

const EXPR: &str = "HT-SHA-256-EXPR";
const NONE: &str = "HT-SHA-256-NONE";

fn postgres_url() -> String {
    std::env::var("WAXWING_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A unique account name (PostgreSQL is shared between runs).
fn user(prefix: &str) -> String {
    format!("{prefix}{}", rand::random::<u32>())
}

/// Connects, STARTTLS; returns the client and the features after TLS.
async fn secured(server: &TestServer) -> (Client, Element) {
    let mut c = Client::connect(server.plain_addr).await;
    let features = c.starttls().await;
    (c, features)
}

async fn parked(s: &Arc<Server>) -> usize {
    s.features
        .get::<StreamManagementFeature>()
        .map_or(0, |f| f.parked())
}

/// The whole flow: SCRAM-SHA-256-PLUS with Bind 2 (SM, carbons) and a
/// token; the connection drops; messages arrive meanwhile; the client
/// comes back with its token in one round trip, resuming inline, and gets
/// each message exactly once.
async fn login_drop_and_fast_resume(server: &TestServer) {
    let (alice, bob) = (user("alice"), user("bob"));
    server.add_user(&alice, "pencil").await;
    server.add_user(&bob, "pw").await;
    let (mut c, features) = secured(server).await;
    let auth = features
        .get_child("authentication", NS_SASL2)
        .expect("SASL2 offered");
    let mechs = mechanisms(auth, NS_SASL2);
    assert!(
        mechs.contains(&"SCRAM-SHA-256-PLUS".to_string()),
        "{mechs:?}"
    );
    let inline = auth.get_child("inline", NS_SASL2).unwrap();
    let fast_mechs = mechanisms(inline.get_child("fast", NS_FAST).unwrap(), NS_FAST);
    assert!(fast_mechs.contains(&EXPR.to_string()), "{fast_mechs:?}");
    assert!(inline.get_child("sm", NS_SM).is_some());
    assert!(inline.get_child("bind", NS_BIND2).is_some());

    let bind = format!(
        "<bind xmlns='{NS_BIND2}'><tag>Test</tag><enable xmlns='urn:xmpp:carbons:2'/>\
         <enable xmlns='{NS_SM}' resume='true'/></bind><request-token xmlns='{NS_FAST}' mechanism='{EXPR}'/>"
    );
    let r = c
        .sasl2_scram(ScramHash::Sha256, &alice, "pencil", true, "phone-1", &bind)
        .await;
    let success = r.outcome;
    assert!(success.is("success", NS_SASL2), "{}", show(&success));
    // XEP-0474: the hash over what the features listed, with SHA-256.
    let cbs = cb_types(&features).expect("XEP-0440 types advertised");
    let names: Vec<&str> = mechs.iter().map(String::as_str).collect();
    let cb_names: Vec<&str> = cbs.iter().map(String::as_str).collect();
    let expected =
        waxwing::stream::sasl2::downgrade_hash(ScramHash::Sha256, &names, Some(&cb_names));
    assert_eq!(downgrade_attr(&r.server_first), Some(expected));
    let full = authorization_identifier(&success);
    assert!(
        full.starts_with(&format!("{alice}@localhost/Test.")),
        "{full}"
    );
    let enabled = success
        .get_child("bound", NS_BIND2)
        .and_then(|b| b.get_child("enabled", NS_SM))
        .expect("SM enabled inline");
    let sm_id = enabled.attr("id").expect("resumable").to_owned();
    let token = issued_token(&success).expect("token issued");
    let features = c.next_element().await;
    assert!(features.is("features", "http://etherx.jabber.org/streams"));
    assert!(waxwing::modules::carbons::enabled(
        server.server(),
        &jid::FullJid::new(&full).unwrap()
    ));
    c.send_str("<presence/>").await;
    c.barrier().await;

    // The link dies without a close.
    drop(c);
    let s = server.server().clone();
    eventually("the session waits for resumption", || {
        let s = s.clone();
        async move { parked(&s).await == 1 }
    })
    .await;
    let mut b = Client::login(server.plain_addr, &bob, "pw", None).await;
    for i in 1..=3 {
        b.send_str(&format!(
            "<message to='{full}' type='chat' id='away{i}'><body>{i}</body></message>"
        ))
        .await;
    }
    b.barrier().await;

    // Back, with the token: one message out, one answer.
    let (mut c, _) = secured(server).await;
    let exporter = c.tls_exporter().unwrap();
    let resume = format!("<resume xmlns='{NS_SM}' previd='{sm_id}' h='0'/>{bind}");
    let success = c
        .sasl2_fast(EXPR, &alice, &token, &exporter, "phone-1", Some(1), &resume)
        .await;
    assert!(success.is("success", NS_SASL2), "{}", show(&success));
    // HT's server proof: HMAC(token, "Responder" || cb-data).
    let proof = unb64(
        &success
            .get_child("additional-data", NS_SASL2)
            .unwrap()
            .text(),
    );
    assert_eq!(
        proof,
        fast::responder(&fast::token_hash(&token), &exporter),
        "server proves it knows the token"
    );
    let resumed = success.get_child("resumed", NS_SM).expect("resumed inline");
    // XEP-0388: after a resumption, the session's full JID.
    assert_eq!(authorization_identifier(&success), full);
    assert_eq!(resumed.attr("previd"), Some(sm_id.as_str()));
    assert!(
        success.get_child("bound", NS_BIND2).is_none(),
        "bind ignored"
    );
    // Each message once, nothing else of the kind.
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = c.next_element().await;
        if e.name() == "message" {
            got.push(e.attr("id").unwrap().to_owned());
        }
    }
    assert_eq!(got, ["away1", "away2", "away3"]);
    let since = c.mark();
    c.send_str(&format!("<a xmlns='{NS_SM}' h='3'/>")).await;
    c.barrier().await;
    assert!(
        c.received[since..].iter().all(|e| e.name() != "message"),
        "a message came twice"
    );

    // The same count again is a replay.
    let (mut r, _) = secured(server).await;
    let ex = r.tls_exporter().unwrap();
    let failure = r
        .sasl2_fast(EXPR, &alice, &token, &ex, "phone-1", Some(1), "")
        .await;
    assert!(failure.is("failure", NS_SASL2), "{}", show(&failure));
    assert!(failure.get_child("not-authorized", NS_SASL).is_some());
    // A higher count is fine.
    let (mut r, _) = secured(server).await;
    let ex = r.tls_exporter().unwrap();
    let ok = r
        .sasl2_fast(EXPR, &alice, &token, &ex, "phone-1", Some(2), "")
        .await;
    assert!(ok.is("success", NS_SASL2), "{}", show(&ok));
    // Another client id cannot use it, nor another mechanism.
    let (mut r, _) = secured(server).await;
    let ex = r.tls_exporter().unwrap();
    let f = r
        .sasl2_fast(EXPR, &alice, &token, &ex, "laptop", Some(3), "")
        .await;
    assert!(f.is("failure", NS_SASL2), "{}", show(&f));
    let (mut r, _) = secured(server).await;
    let f = r
        .sasl2_fast(NONE, &alice, &token, &[], "phone-1", Some(4), "")
        .await;
    assert!(f.is("failure", NS_SASL2), "{}", show(&f));

    // A new password ends the token.
    let jid = jid::BareJid::new(&format!("{alice}@localhost")).unwrap();
    let rec = waxwing::accounts::derive_record(&jid, "new", 4096).unwrap();
    assert!(server.store().set_credentials(&rec).await.unwrap());
    let (mut r, _) = secured(server).await;
    let ex = r.tls_exporter().unwrap();
    let f = r
        .sasl2_fast(EXPR, &alice, &token, &ex, "phone-1", Some(5), "")
        .await;
    assert!(f.is("failure", NS_SASL2), "{}", show(&f));
    for u in [&alice, &bob] {
        server.store().delete_account("localhost", u).await.unwrap();
    }
}

#[tokio::test]
async fn scram_plus_bind2_then_fast_resume_on_sqlite() {
    let server = TestServer::start().await;
    login_drop_and_fast_resume(&server).await;
}

#[tokio::test]
async fn scram_plus_bind2_then_fast_resume_on_postgres() {
    let url = postgres_url();
    let server = TestServer::start_with(move |c| c.database.url = url).await;
    login_drop_and_fast_resume(&server).await;
}

/// A token used near its expiry is replaced; the old one stays good until
/// the new one is used, then dies.
async fn rotation(server: &TestServer) {
    let u = user("rot");
    server.add_user(&u, "pw").await;
    let (mut c, _) = secured(server).await;
    let r = c
        .sasl2_scram(
            ScramHash::Sha256,
            &u,
            "pw",
            false,
            "dev",
            &format!("<request-token xmlns='{NS_FAST}' mechanism='{NONE}'/>"),
        )
        .await;
    let t1 = issued_token(&r.outcome).expect("first token");
    // Without Bind 2 the stream is authenticated, and binds the old way.
    let features = c.next_element().await;
    assert!(
        features.get_child("bind", NS_BIND).is_some(),
        "{}",
        show(&features)
    );
    c.bind(None).await;

    let fast_login = |token: &str, count: u32| {
        let token = token.to_owned();
        let u = u.clone();
        async move {
            let (mut r, _) = secured(server).await;
            r.sasl2_fast(NONE, &u, &token, &[], "dev", Some(count), "")
                .await
        }
    };
    let s = fast_login(&t1, 1).await;
    assert!(s.is("success", NS_SASL2), "{}", show(&s));
    let t2 = issued_token(&s).expect("rotated: every use is near expiry here");
    assert_ne!(t1, t2);
    // The old token still works until the new one is used…
    let s = fast_login(&t1, 2).await;
    assert!(s.is("success", NS_SASL2), "{}", show(&s));
    let t3 = issued_token(&s).expect("rotated again");
    // … which replaces any earlier unused one: t2 is gone.
    let f = fast_login(&t2, 1).await;
    assert!(f.is("failure", NS_SASL2), "{}", show(&f));
    let s = fast_login(&t3, 1).await;
    assert!(s.is("success", NS_SASL2), "{}", show(&s));
    // Using t3 invalidated t1.
    let f = fast_login(&t1, 9).await;
    assert!(f.is("failure", NS_SASL2), "{}", show(&f));
    // Explicit invalidation.
    let t4 = issued_token(&s).unwrap();
    let (mut r, _) = secured(server).await;
    let resp = b64(&fast::client_response(&u, &t4, &[]));
    r.send_str(&format!(
        "<authenticate xmlns='{NS_SASL2}' mechanism='{NONE}'><initial-response>{resp}</initial-response>{}<fast xmlns='{NS_FAST}' count='1' invalidate='true'/></authenticate>",
        user_agent("dev")
    ))
    .await;
    let s = r.next_element().await;
    assert!(s.is("success", NS_SASL2), "{}", show(&s));
    assert!(issued_token(&s).is_none(), "no token after invalidation");
    let f = fast_login(&t4, 2).await;
    assert!(f.is("failure", NS_SASL2), "{}", show(&f));
    // The account's deletion takes its clients along.
    server
        .store()
        .delete_account("localhost", &u)
        .await
        .unwrap();
    assert!(server
        .store()
        .clients("localhost", &u)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn tokens_rotate_and_old_ones_die_on_sqlite() {
    let server = TestServer::start_with(|c| {
        c.sasl2.token_rotate_before_expiry = c.sasl2.token_lifetime;
    })
    .await;
    rotation(&server).await;
}

#[tokio::test]
async fn tokens_rotate_and_old_ones_die_on_postgres() {
    let url = postgres_url();
    let server = TestServer::start_with(move |c| {
        c.database.url = url;
        c.sasl2.token_rotate_before_expiry = c.sasl2.token_lifetime;
    })
    .await;
    rotation(&server).await;
}

/// XEP-0484 §5: a token the server no longer trusts (here: past its
/// expiry) fails with credentials-expired, so the client goes back to its
/// password; a token that does not verify stays not-authorized.
async fn expired_token(server: &TestServer) {
    let u = user("exp");
    server.add_user(&u, "pw").await;
    let (mut c, _) = secured(server).await;
    let r = c
        .sasl2_scram(
            ScramHash::Sha256,
            &u,
            "pw",
            false,
            "dev",
            &format!("<request-token xmlns='{NS_FAST}' mechanism='{NONE}'/>"),
        )
        .await;
    assert!(issued_token(&r.outcome).is_some(), "{}", show(&r.outcome));
    // The client's waiting token becomes one that expired a minute ago.
    let stale = fast::new_token();
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 60;
    let stored = waxwing::storage::FastToken {
        hash: fast::token_hash(&stale),
        mechanism: NONE.into(),
        expiry: past,
    };
    assert!(server
        .store()
        .issue_fast_token("localhost", &u, "dev", &stored)
        .await
        .unwrap());
    let (mut f, _) = secured(server).await;
    let out = f
        .sasl2_fast(NONE, &u, &stale, &[], "dev", Some(1), "")
        .await;
    assert!(out.is("failure", NS_SASL2), "{}", show(&out));
    assert!(
        out.get_child("credentials-expired", NS_SASL).is_some(),
        "{}",
        show(&out)
    );
    // A token nobody issued: not-authorized, as before.
    let (mut g, _) = secured(server).await;
    let out = g
        .sasl2_fast(NONE, &u, &fast::new_token(), &[], "dev", Some(1), "")
        .await;
    assert!(
        out.get_child("not-authorized", NS_SASL).is_some(),
        "{}",
        show(&out)
    );
    // The password still opens the account on the same client.
    let (mut h, _) = secured(server).await;
    let r = h
        .sasl2_scram(ScramHash::Sha256, &u, "pw", false, "dev", "")
        .await;
    assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));
}

#[tokio::test]
async fn an_expired_token_fails_with_credentials_expired_on_sqlite() {
    expired_token(&TestServer::start().await).await;
}

#[tokio::test]
async fn an_expired_token_fails_with_credentials_expired_on_postgres() {
    let url = postgres_url();
    expired_token(&TestServer::start_with(move |c| c.database.url = url).await).await;
}

/// Legacy SASL clients see the same mechanisms and log in as before; their
/// SCRAM carries the downgrade hash too.
#[tokio::test]
async fn legacy_sasl_is_unaffected_and_carries_the_downgrade_hash() {
    let server = TestServer::start().await;
    server.add_user("leg", "pw").await;
    let (mut c, features) = secured(&server).await;
    let mechs = mechanisms(
        features
            .get_child("mechanisms", NS_SASL)
            .expect("legacy SASL still offered"),
        NS_SASL,
    );
    let mut client = waxwing::sasl::ScramClient::new(ScramHash::Sha512, "leg", "pw", None);
    c.send_str(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-512'>{}</auth>",
        b64(&client.client_first())
    ))
    .await;
    let challenge = c.next_element().await;
    let server_first = String::from_utf8(unb64(&challenge.text())).unwrap();
    let names: Vec<&str> = mechs.iter().map(String::as_str).collect();
    let cbs = cb_types(&features).unwrap();
    let cb_names: Vec<&str> = cbs.iter().map(String::as_str).collect();
    assert_eq!(
        downgrade_attr(&server_first),
        Some(waxwing::stream::sasl2::downgrade_hash(
            ScramHash::Sha512,
            &names,
            Some(&cb_names)
        ))
    );
    let fin = client.handle_server_first(server_first.as_bytes()).unwrap();
    c.send_str(&format!(
        "<response xmlns='{NS_SASL}'>{}</response>",
        b64(&fin)
    ))
    .await;
    let s = c.next_element().await;
    assert!(s.is("success", NS_SASL), "{}", show(&s));
    // And the usual helper's whole login.
    let _ = Client::login(server.plain_addr, "leg", "pw", Some("r")).await;
}

/// Failures: a wrong password answers `<failure/>` with a condition and a
/// text, and the client may try again on the same stream; an unknown
/// mechanism is refused; before TLS (where it is required) nothing is
/// offered.
#[tokio::test]
async fn failures_carry_a_condition_and_a_text() {
    let server = TestServer::start().await;
    server.add_user("fay", "pw").await;
    let mut plain = Client::connect(server.plain_addr).await;
    plain.open_stream().await;
    let f = plain.next_element().await;
    assert!(
        f.get_child("authentication", NS_SASL2).is_none(),
        "{}",
        show(&f)
    );

    let (mut c, _) = secured(&server).await;
    let r = c
        .sasl2_scram(ScramHash::Sha256, "fay", "wrong", false, "x", "")
        .await;
    assert!(r.outcome.is("failure", NS_SASL2), "{}", show(&r.outcome));
    assert!(r.outcome.get_child("not-authorized", NS_SASL).is_some());
    assert!(r.outcome.get_child("text", NS_SASL2).is_some());
    c.send_str(&format!(
        "<authenticate xmlns='{NS_SASL2}' mechanism='X-UNKNOWN'><initial-response>AA==</initial-response></authenticate>"
    ))
    .await;
    let f = c.next_element().await;
    assert!(
        f.get_child("invalid-mechanism", NS_SASL).is_some(),
        "{}",
        show(&f)
    );
    let r = c
        .sasl2_scram(
            ScramHash::Sha256,
            "fay",
            "pw",
            false,
            "x",
            &format!("<bind xmlns='{NS_BIND2}'/>"),
        )
        .await;
    assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));
    assert!(authorization_identifier(&r.outcome).starts_with("fay@localhost/waxwing."));
}

/// A stream header without `from` still gets SASL2 (a client that omits
/// it must not be pushed back to legacy SASL).
#[tokio::test]
async fn offered_without_from_on_the_stream_header() {
    let server = TestServer::start().await;
    let (_c, features) = secured(&server).await;
    assert!(features.get_child("authentication", NS_SASL2).is_some());
    // And with `from`, as FAST clients send it.
    let header =
        "<?xml version='1.0'?><stream:stream from='a@localhost' to='localhost' version='1.0' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";
    let mut c = Client::connect(server.plain_addr).await;
    c.send_str(header).await;
    c.next_element().await;
    c.send_str(&format!("<starttls xmlns='{NS_TLS}'/>")).await;
    assert!(c.next_element().await.is("proceed", NS_TLS));
    c.tls_handshake().await.unwrap();
    c.send_str(header).await;
    let features = c.next_element().await;
    assert!(
        features.get_child("authentication", NS_SASL2).is_some(),
        "{}",
        show(&features)
    );
}

/// Logs in with SASL2 SCRAM + Bind 2 as `client_id`, asking for a token;
/// returns the client, its full JID and the token.
async fn sasl2_login(server: &TestServer, user: &str, client_id: &str) -> (Client, String, String) {
    let (mut c, _) = secured(server).await;
    let inline = format!(
        "<bind xmlns='{NS_BIND2}'><tag>T</tag></bind><request-token xmlns='{NS_FAST}' mechanism='{NONE}'/>"
    );
    let r = c
        .sasl2_scram(ScramHash::Sha256, user, "pw", false, client_id, &inline)
        .await;
    assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));
    let full = authorization_identifier(&r.outcome);
    let token = issued_token(&r.outcome).unwrap();
    c.next_element().await; // features
    c.jid = Some(full.clone());
    (c, full, token)
}

/// XEP-0494 (0.1.0): a user lists their clients and revokes one: its token
/// dies and its session ends. A client that last logged in with the
/// password is revoked too, but the answer says the password must change.
#[tokio::test]
async fn a_user_lists_and_revokes_clients() {
    let server = TestServer::start().await;
    server.add_user("cam", "pw").await;
    let (first, _, phone_token) = sasl2_login(&server, "cam", "phone").await;
    drop(first);
    // The phone comes back with its token: it logs in with FAST now.
    let (mut phone, _) = secured(&server).await;
    let bind = format!("<bind xmlns='{NS_BIND2}'><tag>T</tag></bind>");
    let ok = phone
        .sasl2_fast(NONE, "cam", &phone_token, &[], "phone", Some(1), &bind)
        .await;
    assert!(ok.is("success", NS_SASL2), "{}", show(&ok));
    phone.next_element().await; // features
    let (mut laptop, _, _) = sasl2_login(&server, "cam", "laptop").await;
    let (mut old, _, _) = sasl2_login(&server, "cam", "old-pc").await;
    let list = laptop
        .iq(
            "<iq type='get' id='l1'><list xmlns='urn:xmpp:cam:0'/></iq>",
            "l1",
        )
        .await;
    let clients = list
        .get_child("clients", "urn:xmpp:cam:0")
        .unwrap_or_else(|| panic!("{}", show(&list)));
    let ids: Vec<&str> = clients.children().filter_map(|c| c.attr("id")).collect();
    assert_eq!(ids.len(), 3, "{}", show(&list));
    let p = clients
        .children()
        .find(|c| c.attr("id") == Some("phone"))
        .unwrap();
    assert_eq!(p.attr("connected"), Some("true"));
    assert_eq!(p.attr("type"), Some("session"), "it logged in over XMPP");
    let cam = "urn:xmpp:cam:0";
    let auth = p.get_child("auth", cam).expect("<auth/> is required");
    assert!(auth.get_child("password", cam).is_some(), "{}", show(p));
    assert!(auth.get_child("fast", cam).is_some(), "holds a token");
    assert_eq!(
        p.get_child("permission", cam)
            .and_then(|e| e.attr("status")),
        Some("unrestricted")
    );
    let ua = p.get_child("user-agent", cam).unwrap();
    assert_eq!(
        ua.get_child("software", cam).unwrap().text(),
        "waxwing tests"
    );
    assert_eq!(ua.get_child("device", cam).unwrap().text(), "loopback");

    let bad = laptop
        .iq(
            "<iq type='set' id='r0'><revoke xmlns='urn:xmpp:cam:0' id='nope'/></iq>",
            "r0",
        )
        .await;
    assert_eq!(stanza_error(&bad).as_deref(), Some("item-not-found"));
    let ok = laptop
        .iq(
            "<iq type='set' id='r1'><revoke xmlns='urn:xmpp:cam:0' id='phone'/></iq>",
            "r1",
        )
        .await;
    assert_eq!(ok.attr("type"), Some("result"), "{}", show(&ok));
    assert_eq!(phone.expect_stream_error().await, "not-authorized");
    let (mut r, _) = secured(&server).await;
    let f = r
        .sasl2_fast(NONE, "cam", &phone_token, &[], "phone", Some(2), "")
        .await;
    assert!(f.is("failure", NS_SASL2), "{}", show(&f));

    // Logged in with the password last: ended all the same, and told so.
    let e = laptop
        .iq(
            "<iq type='set' id='r2'><revoke xmlns='urn:xmpp:cam:0' id='old-pc'/></iq>",
            "r2",
        )
        .await;
    assert_eq!(
        stanza_error(&e).as_deref(),
        Some("service-unavailable"),
        "{}",
        show(&e)
    );
    assert!(
        e.get_child("error", "jabber:client")
            .and_then(|er| er.get_child("password-reset-required", cam))
            .is_some(),
        "{}",
        show(&e)
    );
    assert_eq!(old.expect_stream_error().await, "not-authorized");
}

/// How a revocation reaches the server in `revoke_parked`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Revoker {
    /// Another client of the user, XEP-0494.
    User,
    /// `waxwing ctl user revoke`, which tells the server on its admin socket.
    Ctl,
    /// `ctl` with no admin socket: only the database knows.
    CtlDatabaseOnly,
}

/// Runs `waxwing ctl` on the server's database; (success, stdout, stderr).
async fn run_ctl(
    server: &TestServer,
    db_url: &str,
    admin: bool,
    args: Vec<String>,
) -> (bool, String, String) {
    let d = server.dir.path();
    let config = d.join(format!("ctl-{}.toml", rand::random::<u32>()));
    let socket = if admin {
        server.admin_socket().display().to_string()
    } else {
        String::new()
    };
    std::fs::write(
        &config,
        format!("[[host]]\ndomain = \"localhost\"\n[database]\nurl = \"{db_url}\"\n[admin]\nsocket = \"{socket}\"\n"),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_waxwing"))
            .arg("ctl")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A revoked client's session that waits for resumption ends with the
/// revocation (or, when the server was not told, at the resumption): a
/// later `<resume/>` gets `<failed/>` and its token is dead.
async fn revoke_parked(server: &TestServer, db_url: &str, how: Revoker) {
    let u = user("park");
    server.add_user(&u, "pw").await;
    let (mut c, _) = secured(server).await;
    let inline = format!(
        "<bind xmlns='{NS_BIND2}'><tag>T</tag><enable xmlns='{NS_SM}' resume='true'/></bind>\
         <request-token xmlns='{NS_FAST}' mechanism='{NONE}'/>"
    );
    let r = c
        .sasl2_scram(ScramHash::Sha256, &u, "pw", false, "phone", &inline)
        .await;
    assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));
    let token = issued_token(&r.outcome).unwrap();
    let sm_id = r
        .outcome
        .get_child("bound", NS_BIND2)
        .and_then(|b| b.get_child("enabled", NS_SM))
        .and_then(|e| e.attr("id"))
        .expect("resumable")
        .to_owned();
    c.next_element().await; // features
    c.send_str("<presence/>").await;
    c.barrier().await;
    drop(c);
    let s = server.server().clone();
    let count_parked = || {
        let s = s.clone();
        async move { parked(&s).await }
    };
    eventually("the session waits for resumption", || async {
        count_parked().await == 1
    })
    .await;

    match how {
        Revoker::User => {
            let (mut other, _, _) = sasl2_login(server, &u, "laptop").await;
            let e = other
                .iq(
                    "<iq type='set' id='r'><revoke xmlns='urn:xmpp:cam:0' id='phone'/></iq>",
                    "r",
                )
                .await;
            // It last logged in with the password: revoked, and said so.
            assert_eq!(
                stanza_error(&e).as_deref(),
                Some("service-unavailable"),
                "{}",
                show(&e)
            );
        }
        Revoker::Ctl | Revoker::CtlDatabaseOnly => {
            let admin = how == Revoker::Ctl;
            let args = vec![
                "user".into(),
                "revoke".into(),
                format!("{u}@localhost"),
                "phone".into(),
            ];
            let (ok, out, err) = run_ctl(server, db_url, admin, args).await;
            assert!(ok, "{out}{err}");
            assert_eq!(out.contains("its session was ended"), admin, "{out}");
        }
    }
    if how == Revoker::CtlDatabaseOnly {
        // Nobody told the server: the session still waits.
        assert_eq!(count_parked().await, 1);
    } else {
        eventually("the revoked session no longer waits", || async {
            count_parked().await == 0
        })
        .await;
    }

    // The token is dead.
    let (mut f, _) = secured(server).await;
    let resume = format!("<resume xmlns='{NS_SM}' previd='{sm_id}' h='0'/>");
    let failure = f
        .sasl2_fast(NONE, &u, &token, &[], "phone", Some(1), &resume)
        .await;
    assert!(failure.is("failure", NS_SASL2), "{}", show(&failure));
    // The password still works (a new row for the same client id), but
    // the old session is not resumed.
    let (mut back, _) = secured(server).await;
    let r = back
        .sasl2_scram(ScramHash::Sha256, &u, "pw", false, "phone", &resume)
        .await;
    assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));
    let failed = r
        .outcome
        .get_child("failed", NS_SM)
        .unwrap_or_else(|| panic!("resumption refused: {}", show(&r.outcome)));
    assert!(
        failed
            .get_child("item-not-found", "urn:ietf:params:xml:ns:xmpp-stanzas")
            .is_some(),
        "{}",
        show(failed)
    );
    assert!(r.outcome.get_child("resumed", NS_SM).is_none());
    assert_eq!(count_parked().await, 0, "ended at the refused resumption");
    server
        .store()
        .delete_account("localhost", &u)
        .await
        .unwrap();
}

#[tokio::test]
async fn revoking_ends_a_parked_session_on_sqlite() {
    let server = TestServer::start().await;
    let db = format!("sqlite://{}/waxwing.db", server.dir.path().display());
    for how in [Revoker::User, Revoker::Ctl, Revoker::CtlDatabaseOnly] {
        revoke_parked(&server, &db, how).await;
    }
}

#[tokio::test]
async fn revoking_ends_a_parked_session_on_postgres() {
    let url = postgres_url();
    let db = url.clone();
    let server = TestServer::start_with(move |c| c.database.url = url).await;
    for how in [Revoker::User, Revoker::Ctl, Revoker::CtlDatabaseOnly] {
        revoke_parked(&server, &db, how).await;
    }
}

/// `waxwing ctl user clients JID` and `ctl user revoke JID CLIENT-ID` on
/// the same database, the running server ending the revoked session.
#[tokio::test]
async fn ctl_lists_and_revokes_clients() {
    let server = TestServer::start().await;
    server.add_user("op", "pw").await;
    let (mut tablet, _, token) = sasl2_login(&server, "op", "tablet-7").await;
    let d = server.dir.path();
    let config = d.join("ctl.toml");
    std::fs::write(
        &config,
        format!(
            "[[host]]\ndomain = \"localhost\"\n[database]\nurl = \"sqlite://{}/waxwing.db\"\n[admin]\nsocket = \"{}\"\n",
            d.display(),
            server.admin_socket().display()
        ),
    )
    .unwrap();
    let ctl = |args: Vec<&'static str>| {
        let config = config.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_waxwing"))
                    .arg("ctl")
                    .arg("--config")
                    .arg(&config)
                    .args(args)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (ok, out, err) = ctl(vec!["user", "clients", "op@localhost"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().next().unwrap().starts_with("CLIENT-ID"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("tablet-7"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("waxwing tests") && line.ends_with("yes"),
        "{line}"
    );
    let (ok, out, err) = ctl(vec!["user", "revoke", "op@localhost", "tablet-7"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("its session was ended"), "{out}");
    assert_eq!(tablet.expect_stream_error().await, "not-authorized");
    let (ok, _, err) = ctl(vec!["user", "revoke", "op@localhost", "tablet-7"]).await;
    assert!(!ok && err.contains("no client"), "{err}");
    let (mut r, _) = secured(&server).await;
    let f = r
        .sasl2_fast(NONE, "op", &token, &[], "tablet-7", Some(1), "")
        .await;
    assert!(f.is("failure", NS_SASL2), "{}", show(&f));
}

/// One account cannot make the server remember more than
/// `max_clients_per_account` clients: a new one forgets the least recently
/// seen, never itself.
async fn client_quota(server: &TestServer) {
    let u = user("many");
    server.add_user(&u, "pw").await;
    for id in ["c1", "c2", "c3"] {
        let (_c, _, _) = sasl2_login(server, &u, id).await;
    }
    let ids: Vec<String> = server
        .store()
        .clients("localhost", &u)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&"c3".to_string()), "{ids:?}");
    server
        .store()
        .delete_account("localhost", &u)
        .await
        .unwrap();
}

#[tokio::test]
async fn clients_per_account_are_bounded_on_sqlite() {
    let server = TestServer::start_with(|c| c.sasl2.max_clients_per_account = 2).await;
    client_quota(&server).await;
}

#[tokio::test]
async fn clients_per_account_are_bounded_on_postgres() {
    let url = postgres_url();
    let server = TestServer::start_with(move |c| {
        c.database.url = url;
        c.sasl2.max_clients_per_account = 2;
    })
    .await;
    client_quota(&server).await;
}

/// One TLS session, resumed: a rustls client keeping its session store
/// across connections resumes (no certificate signature), on direct TLS
/// and on STARTTLS, with stateless tickets alone and with the server's
/// session cache alone; SCRAM-SHA-256-PLUS then binds to the resumed
/// session with tls-exporter (RFC 9266: this handshake's exporter, not the
/// first one's) and with tls-server-end-point (the session's certificate).
/// With both off, nothing resumes.
#[tokio::test]
async fn resumed_tls_sessions_keep_channel_binding() {
    for (tickets, cache) in [(true, 0), (false, 16)] {
        let server = TestServer::start_with(move |c| {
            c.tls.session_tickets = tickets;
            c.tls.session_cache = cache;
        })
        .await;
        server.add_user("tick", "pw").await;
        for direct in [true, false] {
            resumed_session_binds(&server, direct).await;
        }
    }

    let off = TestServer::start_with(|c| {
        c.tls.session_tickets = false;
        c.tls.session_cache = 0;
    })
    .await;
    let config = insecure_client_config();
    for _ in 0..2 {
        let mut c = Client::connect_tls_config(off.tls_addr, "localhost", config.clone()).await;
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
        // The features come after anything sent right after the
        // handshake: had the server sent a ticket, the store would hold it.
        c.open_stream().await;
        c.next_element().await;
    }
}

/// Direct TLS or STARTTLS, `resumed_tls_sessions_keep_channel_binding`.
async fn resumed_session_binds(server: &TestServer, direct: bool) {
    let config = insecure_client_config();
    let connect = |config: Arc<rustls::ClientConfig>| async move {
        if direct {
            let mut c = Client::connect_tls_config(server.tls_addr, "localhost", config).await;
            c.open_stream().await;
            let f = c.next_element().await;
            (c, f)
        } else {
            let mut c = Client::connect(server.plain_addr).await;
            let f = c.starttls_config(config).await;
            (c, f)
        }
    };
    let (mut first, _) = connect(config.clone()).await;
    assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
    // A login reads past the handshake, so the tickets are in.
    let r = first
        .sasl2_scram(ScramHash::Sha256, "tick", "pw", true, "t1", "")
        .await;
    assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));
    let first_exporter = first.tls_exporter().unwrap();
    drop(first);

    let (mut again, features) = connect(config.clone()).await;
    assert_eq!(
        again.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "direct TLS: {direct}"
    );
    let cbs = cb_types(&features).unwrap();
    assert!(cbs.contains(&"tls-exporter".to_string()), "{cbs:?}");
    let exporter = again.tls_exporter().unwrap();
    assert_ne!(exporter, first_exporter, "a new exporter per handshake");
    let r = again
        .sasl2_scram(ScramHash::Sha256, "tick", "pw", true, "t1", "")
        .await;
    assert!(r.outcome.is("success", NS_SASL2), "{}", show(&r.outcome));

    let (mut endpoint, _) = connect(config.clone()).await;
    assert_eq!(
        endpoint.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let hash = endpoint
        .server_end_point_hash()
        .expect("certificate of the session");
    let outcome = endpoint
        .scram_with_binding(
            ScramHash::Sha256,
            "tick",
            "pw",
            waxwing::sasl::ChannelBindingType::TlsServerEndPoint,
            hash,
        )
        .await;
    assert!(outcome.is("success", NS_SASL), "{}", show(&outcome));
}
