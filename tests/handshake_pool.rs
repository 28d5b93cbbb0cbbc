//! TLS handshakes on threads of their own at a lower priority
//! (`net/handshakes.rs`, `[tls] handshake_threads` and `handshake_nice`):
//! with the pool running, logins over STARTTLS and direct TLS work and their
//! handshakes ran on it, its threads carry the nice value asked for, and a
//! client that vanishes in the middle of a handshake leaves nothing stuck.
//!
//! The pool is process-wide, so this file holds one test: it is the only
//! test binary that starts it.

mod common;

use common::*;
use waxwing::net::handshakes;
use waxwing::xml::NS_CLIENT;

/// Nice values of this process's threads whose name starts with `prefix`
/// (`/proc/self/task/*/stat`, field 19; the name is cut to 15 bytes).
fn nice_of_threads(prefix: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // After "pid (comm) ": state is field 3, nice field 19.
        let nice = stat[close + 2..]
            .split(' ')
            .nth(16)
            .and_then(|n| n.parse().ok())
            .unwrap();
        out.push(nice);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_run_on_the_lower_priority_pool() {
    handshakes::start(2, 7).unwrap();

    let server = TestServer::start().await;
    server.add_user("alice", "wonderland").await;
    server.add_user("bob", "builder").await;
    let before = handshakes::completed_on_pool();

    // A client that asks for TLS and goes away mid-handshake.
    let mut gone = Client::connect(server.plain_addr).await;
    gone.open_stream().await;
    gone.next_element().await;
    gone.send_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await;
    assert!(gone.next_element().await.is("proceed", NS_TLS));
    gone.send(b"\x16\x03\x01\x00\x05hello").await.unwrap();
    drop(gone);

    // Eight STARTTLS logins at once, then one over direct TLS.
    let logins = (0..8).map(|i| {
        let addr = server.plain_addr;
        tokio::spawn(async move {
            Client::login(addr, "alice", "wonderland", Some(&format!("r{i}"))).await
        })
    });
    let mut alices = Vec::new();
    for l in logins {
        alices.push(l.await.unwrap());
    }
    let mut bob = Client::connect_tls(server.tls_addr).await;
    bob.open_stream().await;
    bob.next_element().await;
    assert!(bob
        .scram(waxwing::sasl::ScramHash::Sha256, "bob", "builder", false)
        .await
        .is("success", NS_SASL));
    bob.open_stream().await;
    bob.next_element().await;
    bob.bind(Some("phone")).await;

    // The streams work once handed back to the main runtime.
    alices[3]
        .send_str(
            "<message to='bob@localhost/phone' type='chat'><body>over the pool</body></message>",
        )
        .await;
    let m = bob.next_named("message").await;
    assert_eq!(m.attr("from"), Some("alice@localhost/r3"));
    assert_eq!(
        m.get_child("body", NS_CLIENT).unwrap().text(),
        "over the pool"
    );

    // Nine good handshakes ran on the pool (the broken one may be counted
    // as a failed handshake or not, depending on when the socket closed).
    let on_pool = handshakes::completed_on_pool() - before;
    assert!(
        (9..=10).contains(&on_pool),
        "{on_pool} handshakes on the pool"
    );

    // Checked last: a worker thread lowers its priority when it starts,
    // which `start` does not wait for; by now both have run handshakes.
    assert_eq!(nice_of_threads("waxwing-handsha"), vec![7, 7]);
}
