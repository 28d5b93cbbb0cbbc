//! Issue 8, items 2 and 3: the XML parser, attacked before login and before TLS.
//!
//! Item 2: a namespace URI declared once and used by tens of thousands of tiny
//! elements made each element copy the URI (265 KB sent, ~1 GB held per
//! connection). Item 3: one tag with as many attributes as the stanza size allows
//! made the duplicate check quadratic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::rss_kib;

/// Connections sending the amplification input at once.
const CONNECTIONS: usize = 100;
/// Growth of the process's RSS the issue allows for the 100 connections.
const RSS_BUDGET_MIB: u64 = 50;

async fn server_with_canary() -> TestServer {
    let server = TestServer::start().await;
    server.add_user("canary", "pw").await;
    server
}

/// The audit's input: a header binding `p:` to `urn:` + `uri_len` × 'x', then
/// `<p:r>` with `children` `<p:a/>`.
fn amplification(uri_len: usize, children: usize) -> Vec<u8> {
    let mut s = format!(
        "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:p='urn:{}'><p:r>",
        "x".repeat(uri_len)
    );
    s.push_str(&"<p:a/>".repeat(children));
    s.push_str("</p:r>");
    s.into_bytes()
}

/// Sends `input` on `CONNECTIONS` plain (pre-TLS) connections at once; each must be
/// answered with policy-violation and closed. Returns the RSS growth in MiB.
async fn replay_on_many_connections(server: &TestServer, input: Vec<u8>) -> u64 {
    let input = Arc::new(input);
    let before = rss_kib();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (addr, input) = (server.plain_addr, input.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            // The server may close before it has read everything: not an error here.
            let _ = c.send(&input).await;
            c.expect_stream_error().await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "policy-violation");
    }
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    eprintln!("{CONNECTIONS} connections: RSS grew by {grown_mib} MiB");
    grown_mib
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_amplification_on_100_connections_is_refused_in_bounded_memory() {
    let server = server_with_canary().await;
    // Exactly as measured in the audit: 25,000-byte URI, 40,000 elements, 265 KB.
    let input = amplification(25_000, 40_000);
    assert!(input.len() > 264_000 && input.len() < 266_000);
    let grown_mib = replay_on_many_connections(&server, input).await;
    assert!(
        grown_mib < RSS_BUDGET_MIB,
        "process RSS grew by {grown_mib} MiB"
    );
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_elements_in_a_long_namespace_on_100_connections_stay_bounded() {
    let server = server_with_canary().await;
    // The same shape with the URI inside the length cap: the elements are what
    // must stay cheap (shared URI, element cap, memory budget).
    let input = amplification(500, 40_000);
    let grown_mib = replay_on_many_connections(&server, input).await;
    assert!(
        grown_mib < RSS_BUDGET_MIB,
        "process RSS grew by {grown_mib} MiB"
    );
    still_serves(&server).await;
}

/// As many ` aN=''` attributes as fit in the default 256 KiB stanza size.
fn attributes_filling_a_stanza() -> String {
    let mut attrs = String::new();
    let mut i = 0;
    while attrs.len() < 250 * 1024 {
        attrs.push_str(&format!(" a{i}=''"));
        i += 1;
    }
    attrs
}

#[tokio::test]
async fn one_tag_with_as_many_attributes_as_fit_is_refused_promptly() {
    let server = server_with_canary().await;
    let attrs = attributes_filling_a_stanza();

    let started = Instant::now();
    let mut c = Client::connect(server.plain_addr).await;
    c.open_stream().await;
    let _ = c.send(format!("<message{attrs}/>").as_bytes()).await;
    assert_eq!(c.expect_stream_error().await, "policy-violation");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );

    // The stream header itself.
    let started = Instant::now();
    let mut c = Client::connect(server.plain_addr).await;
    let header = format!(
        "<stream:stream to='localhost' version='1.0' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams'{attrs}>"
    );
    let _ = c.send(header.as_bytes()).await;
    assert_eq!(c.expect_stream_error().await, "policy-violation");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
    still_serves(&server).await;
}
