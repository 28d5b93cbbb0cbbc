//! Audit items 4, 7 and 8 (authentication): PLAIN logins beyond the
//! hashing capacity, throttles that parallel attempts or a success could
//! get around, an account anyone could lock, user enumeration through the
//! SCRAM fake salt and PLAIN timing, and unthrottled component handshakes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::common::*;
use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use waxwing::config::ComponentConfig;
use waxwing::sasl::build_plain;
use waxwing::stream::component::NS_COMPONENT;
use waxwing::xml::{Element, StreamEvent};

const OTHER_HOST: &str = "127.0.0.2";

fn other_host() -> IpAddr {
    OTHER_HOST.parse().unwrap()
}

/// Creates `user` with SCRAM keys and, as every account had before argon2
/// became optional, an argon2id hash — here with `m_kib` KiB and one pass,
/// so that the old code's argon2 path costs a known amount.
async fn add_user_with_argon2(ts: &TestServer, user: &str, password: &str, m_kib: u32) {
    let jid = jid::BareJid::new(&format!("{user}@{DOMAIN}")).unwrap();
    let password = password.to_string();
    let rec = tokio::task::spawn_blocking(move || {
        let mut rec = waxwing::accounts::derive_record(&jid, &password, 4096).unwrap();
        let params = argon2::Params::new(m_kib, 1, 1, None).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        rec.argon2 =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password(password.as_bytes(), &salt)
                .unwrap()
                .to_string();
        rec
    })
    .await
    .unwrap();
    assert!(ts.store().create_account(&rec).await.unwrap());
}

/// A TLS stream from `from` (None: 127.0.0.1), up to the SASL features.
async fn tls_client(ts: &TestServer, from: Option<IpAddr>) -> Client {
    let mut c = match from {
        Some(ip) => Client::connect_from(ts.plain_addr, ip).await,
        None => Client::connect(ts.plain_addr).await,
    };
    c.starttls().await;
    c
}

async fn send_plain(c: &mut Client, user: &str, pass: &str) {
    let msg = b64(&build_plain(None, user, pass));
    c.send_str(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{msg}</auth>"
    ))
    .await;
}

/// The SASL outcome: "success" or the failure's condition.
fn outcome(e: &Element) -> String {
    if e.is("success", NS_SASL) {
        return "success".into();
    }
    assert!(e.is("failure", NS_SASL), "{e:?}");
    e.children()
        .next()
        .map(|c| c.name().to_string())
        .unwrap_or_default()
}

async fn plain(c: &mut Client, user: &str, pass: &str) -> String {
    send_plain(c, user, pass).await;
    outcome(&c.next_element().await)
}

/// PLAIN on a fresh TLS stream from `from`.
async fn plain_once(ts: &TestServer, from: Option<IpAddr>, user: &str, pass: &str) -> String {
    let mut c = tls_client(ts, from).await;
    plain(&mut c, user, pass).await
}

/// A full PLAIN login to a bound resource, then a ping answered.
async fn plain_login_works(ts: &TestServer, from: Option<IpAddr>, user: &str, pass: &str) {
    let mut c = tls_client(ts, from).await;
    assert_eq!(plain(&mut c, user, pass).await, "success");
    c.parser.reset();
    c.open_stream().await;
    c.next_element().await;
    c.bind(None).await;
    let p = c
        .iq(
            "<iq type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "alive",
        )
        .await;
    assert_eq!(p.attr("type"), Some("result"));
}

/// Another user, from another address, still logs in (SCRAM) and is answered.
async fn still_serves(ts: &TestServer) {
    let started = Instant::now();
    let mut c = Client::connect_from(ts.plain_addr, other_host()).await;
    c.starttls().await;
    let o = c
        .scram(waxwing::sasl::ScramHash::Sha256, "canary", "pw", false)
        .await;
    assert!(o.is("success", NS_SASL), "{o:?}");
    c.open_stream().await;
    c.next_element().await;
    c.bind(None).await;
    let p = c
        .iq(
            "<iq type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "alive",
        )
        .await;
    assert_eq!(p.attr("type"), Some("result"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "login took {:?}",
        started.elapsed()
    );
}

/// Peak resident set size of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) this process has used, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" closing the command name; utime and stime are
    // the 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

// ---- item 7: throttles ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_plain_guesses_cannot_exceed_the_ip_budget() {
    let ts = TestServer::start_with(|c| {
        c.limits.auth_failures_per_ip = 5;
        c.limits.auth_failures_per_account = 1000;
    })
    .await;
    ts.add_user("canary", "pw").await;
    add_user_with_argon2(&ts, "victim", "right", 1024).await;
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(tls_client(&ts, None).await);
    }
    // Every guess is on the wire before the first answer.
    for c in &mut clients {
        send_plain(c, "victim", "guess").await;
    }
    let answers = futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|c| async { outcome(&c.next_element().await) }),
    )
    .await;
    let guessed = answers.iter().filter(|a| *a == "not-authorized").count();
    let refused = answers
        .iter()
        .filter(|a| *a == "temporary-auth-failure")
        .count();
    assert_eq!(guessed, 5, "{answers:?}");
    assert_eq!(refused, 11, "{answers:?}");
    // The budget is spent for this address, even for the right password.
    assert_eq!(
        plain_once(&ts, None, "victim", "right").await,
        "temporary-auth-failure"
    );
    still_serves(&ts).await;
}

#[tokio::test]
async fn own_account_success_does_not_reset_the_ip_counter() {
    let ts = TestServer::start_with(|c| {
        c.limits.auth_failures_per_ip = 3;
        c.limits.auth_failures_per_account = 1000;
    })
    .await;
    ts.add_user("canary", "pw").await;
    add_user_with_argon2(&ts, "victim", "right", 64).await;
    add_user_with_argon2(&ts, "attacker", "mine", 64).await;
    assert_eq!(
        plain_once(&ts, None, "victim", "g1").await,
        "not-authorized"
    );
    assert_eq!(
        plain_once(&ts, None, "victim", "g2").await,
        "not-authorized"
    );
    // Logging into one's own account between guesses...
    assert_eq!(plain_once(&ts, None, "attacker", "mine").await, "success");
    assert_eq!(
        plain_once(&ts, None, "victim", "g3").await,
        "not-authorized"
    );
    // ...does not buy more guesses: three failures spent the budget.
    assert_eq!(
        plain_once(&ts, None, "victim", "g4").await,
        "temporary-auth-failure"
    );
    still_serves(&ts).await;
}

#[tokio::test]
async fn failures_from_elsewhere_do_not_lock_the_owner_out() {
    let ts = TestServer::start_with(|c| {
        c.limits.auth_failures_per_ip = 1000;
        c.limits.auth_failures_per_account = 3;
    })
    .await;
    ts.add_user("canary", "pw").await;
    add_user_with_argon2(&ts, "victim", "right", 64).await;
    let attacker = Some(other_host());
    for g in ["g1", "g2", "g3"] {
        assert_eq!(
            plain_once(&ts, attacker, "victim", g).await,
            "not-authorized"
        );
    }
    // The attacker's budget for this account is spent...
    assert_eq!(
        plain_once(&ts, attacker, "victim", "g4").await,
        "temporary-auth-failure"
    );
    // ...but the owner, from their own address, still gets in.
    plain_login_works(&ts, None, "victim", "right").await;
    still_serves(&ts).await;
}

// ---- item 4: hashing capacity --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_flood_beyond_hashing_capacity_is_shed_with_bounded_memory() {
    let ts = TestServer::start_with(|c| {
        // The costliest configuration: PLAIN checks argon2 hashes.
        c.limits.argon2 = true;
        c.limits.hashing_workers = 1;
        c.limits.hashing_queue = 3;
    })
    .await;
    ts.add_user("canary", "pw").await;
    // 8 MiB of argon2 memory per check of this account.
    add_user_with_argon2(&ts, "user", "pw", 8 * 1024).await;
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(tls_client(&ts, None).await);
    }
    let before = peak_rss_kib();
    for c in &mut clients {
        send_plain(c, "user", "pw").await;
    }
    let answers = futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|c| async { outcome(&c.next_element().await) }),
    )
    .await;
    let grown = peak_rss_kib().saturating_sub(before);
    let ok = answers.iter().filter(|a| *a == "success").count();
    let shed = answers
        .iter()
        .filter(|a| *a == "temporary-auth-failure")
        .count();
    assert_eq!(ok + shed, answers.len(), "{answers:?}");
    assert!(ok >= 1, "{answers:?}");
    assert!(shed >= 1, "nothing was shed: {answers:?}");
    // One worker's argon2 memory (8 MiB, reused) and the connections; the
    // unbounded code ran all 24 checks at once (~192 MiB).
    assert!(grown < 64 * 1024, "peak RSS grew by {grown} KiB");
    drop(clients);
    // Normal logins keep working once the burst is over.
    plain_login_works(&ts, None, "user", "pw").await;
    still_serves(&ts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_flood_beyond_hashing_capacity_is_shed() {
    let ts = TestServer::start_with(|c| {
        c.host[0].allow_registration = true;
        c.limits.registrations_per_ip = 1000;
        c.limits.hashing_workers = 1;
        c.limits.hashing_queue = 0;
    })
    .await;
    ts.add_user("canary", "pw").await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(tls_client(&ts, None).await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_str(&format!(
            "<iq type='set' id='r{i}'><query xmlns='jabber:iq:register'><username>new{i}</username><password>pw{i}</password></query></iq>"
        ))
        .await;
    }
    let answers = futures_util::future::join_all(clients.iter_mut().map(|c| async {
        let reply = c.next_element().await;
        match reply.attr("type") {
            Some("result") => "created".to_string(),
            _ => stanza_error(&reply).unwrap_or_default(),
        }
    }))
    .await;
    let created: Vec<usize> = (0..answers.len())
        .filter(|&i| answers[i] == "created")
        .collect();
    let shed = answers
        .iter()
        .filter(|a| *a == "resource-constraint")
        .count();
    assert_eq!(created.len() + shed, answers.len(), "{answers:?}");
    assert!(!created.is_empty(), "{answers:?}");
    assert!(shed >= 1, "nothing was shed: {answers:?}");
    for &i in &created {
        plain_login_works(&ts, None, &format!("new{i}"), &format!("pw{i}")).await;
    }
    // A shed request can be retried once the burst is over.
    let mut c = tls_client(&ts, None).await;
    let reply = c
        .iq(
            "<iq type='set' id='again'><query xmlns='jabber:iq:register'><username>later</username><password>pw</password></query></iq>",
            "again",
        )
        .await;
    assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    still_serves(&ts).await;
}

// ---- item 8: enumeration, component handshakes ---------------------------

/// The salt the server announces for `user` in SCRAM-SHA-256, then aborts.
async fn scram_salt(c: &mut Client, user: &str) -> String {
    let first = b64(format!("n,,n={user},r=abcdefghijkl").as_bytes());
    c.send_str(&format!(
        "<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-256'>{first}</auth>"
    ))
    .await;
    let challenge = c.next_element().await;
    assert!(challenge.is("challenge", NS_SASL), "{challenge:?}");
    let server_first = String::from_utf8(unb64(&challenge.text())).unwrap();
    let salt = server_first
        .split(',')
        .find_map(|p| p.strip_prefix("s="))
        .unwrap()
        .to_string();
    c.send_str(&format!("<abort xmlns='{NS_SASL}'/>")).await;
    assert_eq!(outcome(&c.next_element().await), "aborted");
    salt
}

#[tokio::test]
async fn scram_fake_salt_does_not_tell_unknown_users_apart() {
    let ts = TestServer::start().await;
    ts.add_user("canary", "pw").await;
    ts.add_user("alice", "pw").await;
    let mut c = tls_client(&ts, None).await;
    // A real account has one salt under every spelling of its name...
    let alice = scram_salt(&mut c, "alice").await;
    assert_eq!(scram_salt(&mut c, "Alice").await, alice);
    assert_eq!(scram_salt(&mut c, "ALICE").await, alice);
    // ...and so must a name that does not exist, or comparing spellings
    // tells which names are accounts.
    let nobody = scram_salt(&mut c, "nobody").await;
    assert_eq!(scram_salt(&mut c, "Nobody").await, nobody);
    assert_eq!(scram_salt(&mut c, "NOBODY").await, nobody);
    assert_ne!(nobody, alice);
    still_serves(&ts).await;
}

/// CPU ticks spent on eight failed PLAIN guesses at `user` (two streams of
/// four), not counting the connections' set-up.
async fn guessing_cost(ts: &TestServer, user: &str) -> u64 {
    let mut ticks = 0;
    for _ in 0..2 {
        let mut c = tls_client(ts, None).await;
        let t0 = cpu_ticks();
        for i in 0..4 {
            assert_eq!(
                plain(&mut c, user, &format!("guess{i}")).await,
                "not-authorized"
            );
        }
        ticks += cpu_ticks() - t0;
    }
    ticks
}

#[tokio::test]
async fn unknown_user_plain_costs_like_a_known_one() {
    let ts = TestServer::start().await;
    ts.add_user("canary", "pw").await;
    add_user_with_argon2(&ts, "alice", "right", 1024).await;
    // Failed guesses at a known and at an unknown account, with the CPU
    // the whole process (server and test client) spends on them.
    let known = guessing_cost(&ts, "alice").await;
    let unknown = guessing_cost(&ts, "nobody").await;
    assert!(known >= 3, "too little work to compare: {known} ticks");
    assert!(
        unknown * 2 >= known,
        "unknown user {unknown} ticks, known user {known} ticks"
    );
    still_serves(&ts).await;
}

#[tokio::test]
async fn unknown_user_plain_runs_the_same_derivation() {
    let ts = TestServer::start().await;
    ts.add_user("canary", "pw").await;
    ts.add_user("alice", "right").await;
    let hashing = &ts.server().hashing;
    let mut c = tls_client(&ts, None).await;
    let before = hashing.completed();
    assert_eq!(plain(&mut c, "alice", "wrong").await, "not-authorized");
    assert_eq!(hashing.completed(), before + 1);
    assert_eq!(plain(&mut c, "nobody", "wrong").await, "not-authorized");
    assert_eq!(
        hashing.completed(),
        before + 2,
        "no derivation for an unknown user"
    );
    still_serves(&ts).await;
}

const BOT: &str = "bot.localhost";
const SECRET: &str = "s3cret";

/// One component handshake from 127.0.0.1: Ok on `<handshake/>`, else the
/// stream error condition.
async fn component_handshake(addr: SocketAddr, secret: &str) -> Result<(), String> {
    let mut c = Client::component_handshake_sent(addr, BOT, secret).await;
    match c.next_event().await {
        Some(StreamEvent::Stanza(e)) if e.is("handshake", NS_COMPONENT) => Ok(()),
        Some(StreamEvent::Stanza(e)) if e.is("error", waxwing::xml::NS_STREAMS) => Err(e
            .children()
            .find(|c| c.ns() == NS_STREAM_ERRORS && c.name() != "text")
            .map(|c| c.name().to_string())
            .unwrap_or_default()),
        other => panic!("expected a handshake answer, got {other:?}"),
    }
}

#[tokio::test]
async fn failed_component_handshakes_are_throttled_per_address() {
    let ts = TestServer::start_with(|c| {
        c.component_listener.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.component.push(ComponentConfig {
            domain: BOT.into(),
            secret: SECRET.into(),
        });
    })
    .await;
    ts.add_user("canary", "pw").await;
    let addr = ts.running.as_ref().unwrap().component_addrs[0];
    // The default budget: ten failed handshakes a window.
    for i in 0..10 {
        assert_eq!(
            component_handshake(addr, &format!("guess{i}")).await,
            Err("not-authorized".into())
        );
    }
    // Then even the right secret is refused from this address.
    assert_eq!(
        component_handshake(addr, SECRET).await,
        Err("policy-violation".into())
    );
    still_serves(&ts).await;
}
