//! The HTTP listener's bounds over real sockets: connections over
//! `[http] max_connections` are closed at once, a connection that sends
//! no request head is closed after `header_timeout`, and the listener
//! serves again as soon as room is free.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn host_meta(addr: SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out).await;
    out
}

/// Reads until the server closes; how long that took.
async fn closed_within(tcp: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_idle_ones_time_out() {
    let ts = TestServer::start_with(|c| {
        c.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.http.max_connections = 5;
        c.http.header_timeout = 1;
    })
    .await;
    let addr = ts.running.as_ref().unwrap().web.http[0];

    // Five silent connections fill the listener.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // A sixth is closed at once, before any byte.
    let mut sixth = tokio::net::TcpStream::connect(addr).await.unwrap();
    let took = closed_within(&mut sixth, Duration::from_secs(5)).await;
    assert!(took < Duration::from_millis(900), "refused in {took:?}");

    // The silent ones go after header_timeout (1 s), well before 5 s.
    for tcp in &mut idle {
        closed_within(tcp, Duration::from_secs(5)).await;
    }
    // And the listener serves again.
    let r = host_meta(addr).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

/// Two thousand connections that never send a request head: all are
/// closed after `header_timeout`; meanwhile XMPP over TCP and HTTP within
/// the cap keep working, and afterwards the listener serves as before.
/// (Connections over the cap are the test above.)
#[tokio::test]
async fn two_thousand_idle_http_connections_leave_the_server_unharmed() {
    let ts = TestServer::start_with(|c| {
        c.http.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.http.max_connections = 2_001;
        c.http.header_timeout = 3;
    })
    .await;
    let addr = ts.running.as_ref().unwrap().web.http[0];
    ts.add_user("steady", "pw").await;
    let mut xmpp = Client::login(ts.plain_addr, "steady", "pw", Some("r")).await;

    let mut idle = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // One place is left under the cap: a real request still gets through
    // while the idle ones are held.
    let r = host_meta(addr).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // XMPP is untouched.
    let pong = xmpp
        .iq(
            "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p1",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));

    // Every idle connection is closed by the server after header_timeout.
    let started = Instant::now();
    let closes = idle.into_iter().map(|mut tcp| async move {
        closed_within(&mut tcp, Duration::from_secs(10)).await;
    });
    futures_util::future::join_all(closes).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closing took {:?}",
        started.elapsed()
    );
    let r = host_meta(addr).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let pong = xmpp
        .iq(
            "<iq type='get' id='p2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "p2",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
}
