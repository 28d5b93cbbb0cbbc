//! Server-to-server resolution and transport beyond `[s2s.hosts]`: an
//! authoritative DNS server on 127.0.0.1 (hickory-server) serving the
//! `test.` zone, reached through `[s2s] nameservers`, so `a.test` finds
//! `b.test` by its SRV records; and direct TLS (XEP-0368), by override
//! (`tls://host:port`) and by `_xmpps-server._tcp` records, with the
//! fallback to `_xmpp-server._tcp` + STARTTLS.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;
use waxwing::config::HostConfig;
use waxwing::xml::{Element, NS_CLIENT};

const A_DOM: &str = "a.test";
const B_DOM: &str = "b.test";

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

/// A DNS record of the zone served.
enum Rr {
    /// service (e.g. "_xmpp-server._tcp.b.test."), port, target.
    Srv(&'static str, u16, &'static str),
    /// name, 127.0.0.1.
    A(&'static str),
}

/// Serves the `test.` zone with `records` (plus its SOA) on 127.0.0.1,
/// UDP and TCP on one port; returns that address. The server runs until
/// the test's runtime ends.
async fn dns_server(records: &[Rr]) -> SocketAddr {
    let origin = name("test.");
    let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
    let soa = SOA::new(
        name("ns.test."),
        name("hostmaster.test."),
        1,
        3600,
        600,
        86_400,
        60,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    for rr in records {
        let record = match rr {
            Rr::Srv(service, port, target) => Record::from_rdata(
                name(service),
                60,
                RData::SRV(SRV::new(0, 5, *port, name(target))),
            ),
            Rr::A(host) => {
                Record::from_rdata(name(host), 60, RData::A(A::from(Ipv4Addr::LOCALHOST)))
            }
        };
        assert!(zone.upsert_mut(record, 1));
    }
    let mut catalog = Catalog::new();
    catalog.upsert(origin.into(), Box::new(Arc::new(zone)));
    let mut server = ServerFuture::new(catalog);
    // The same port for UDP and TCP (retry if the TCP one is taken).
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5));
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    addr
}

/// How one server of the pair is set up.
struct Side {
    domain: &'static str,
    /// `[s2s] listen` (STARTTLS) port.
    plain: Option<u16>,
    /// `[s2s] listen_tls` (direct TLS) port.
    tls: Option<u16>,
    /// `[s2s.hosts]` entries.
    hosts: Vec<(&'static str, String)>,
    /// `[s2s] nameservers`.
    dns: Option<SocketAddr>,
}

async fn start(side: Side, certs: PathBuf, peer_certs: PathBuf) -> TestServer {
    let ts = TestServer::start_with(|c| {
        c.host = vec![HostConfig {
            domain: side.domain.into(),
            cert: None,
            key: None,
            allow_registration: false,
        }];
        c.tls.dev_cert_dir = certs;
        let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        c.s2s.listen = side.plain.into_iter().map(local).collect();
        c.s2s.listen_tls = side.tls.into_iter().map(local).collect();
        c.s2s.nameservers = side.dns.into_iter().collect();
        c.s2s.ca_file = peer_certs.join("dev-cert.pem").display().to_string();
        c.s2s.connect_timeout = 10;
        for (d, hp) in side.hosts {
            c.s2s.hosts.insert(d.into(), hp);
        }
    })
    .await;
    ts.add_user_at(side.domain, "user", "pw").await;
    ts
}

struct Pair {
    a: TestServer,
    b: TestServer,
    _certs: tempfile::TempDir,
}

/// a.test and b.test, trusting each other's certificate.
async fn pair(a: Side, b: Side) -> Pair {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cb) = (cert_dir(&certs, A_DOM), cert_dir(&certs, B_DOM));
    let a = start(a, ca.clone(), cb.clone()).await;
    let b = start(b, cb, ca).await;
    Pair {
        a,
        b,
        _certs: certs,
    }
}

async fn online(ts: &TestServer, domain: &str) -> Client {
    let mut c = Client::login_at(ts.plain_addr, domain, "user", "pw", Some("r")).await;
    c.send_str("<presence/>").await;
    c
}

async fn next_message(c: &mut Client) -> Element {
    loop {
        let e = c.next_element().await;
        if e.name() == "message" {
            return e;
        }
    }
}

async fn messages_cross_both_ways(p: &Pair) {
    let mut ua = online(&p.a, A_DOM).await;
    let mut ub = online(&p.b, B_DOM).await;
    ua.send_str("<message to='user@b.test' type='chat'><body>hello b</body></message>")
        .await;
    let m = next_message(&mut ub).await;
    assert_eq!(m.attr("from"), Some("user@a.test/r"));
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "hello b");
    ub.send_str("<message to='user@a.test/r' type='chat'><body>hello a</body></message>")
        .await;
    let m = next_message(&mut ua).await;
    assert_eq!(m.attr("from"), Some("user@b.test/r"));
    assert_eq!(m.get_child("body", NS_CLIENT).unwrap().text(), "hello a");
    assert_eq!(p.a.server().s2s.count(), 1);
    assert_eq!(p.b.server().s2s.count(), 1);
}

/// Two servers listening for STARTTLS on `pa` and `pb`: a.test finds b.test
/// only through the DNS server at `dns`; b.test reaches a.test by an
/// `[s2s.hosts]` entry.
async fn a_finds_b_through_dns(pa: u16, pb: u16, dns: SocketAddr) -> Pair {
    pair(
        Side {
            domain: A_DOM,
            plain: Some(pa),
            tls: None,
            hosts: vec![],
            dns: Some(dns),
        },
        Side {
            domain: B_DOM,
            plain: Some(pb),
            tls: None,
            hosts: vec![(A_DOM, format!("127.0.0.1:{pa}"))],
            dns: None,
        },
    )
    .await
}

/// a.test has no `[s2s.hosts]` entry for b.test: it asks the DNS server
/// for `_xmpp-server._tcp.b.test` (SRV → b-host.test:port), then for
/// b-host.test's address, and connects there (STARTTLS).
#[tokio::test]
async fn srv_record_leads_to_peer_through_configured_nameserver() {
    let (pa, pb) = (free_port(), free_port());
    let dns = dns_server(&[
        Rr::Srv("_xmpp-server._tcp.b.test.", pb, "b-host.test."),
        Rr::A("b-host.test."),
    ])
    .await;
    let p = a_finds_b_through_dns(pa, pb, dns).await;
    messages_cross_both_ways(&p).await;
}

/// Both servers listen for direct TLS only and reach each other through
/// `tls://` overrides: no plain s2s port exists.
#[tokio::test]
async fn direct_tls_federation_both_ways() {
    let (pa, pb) = (free_port(), free_port());
    let p = pair(
        Side {
            domain: A_DOM,
            plain: None,
            tls: Some(pa),
            hosts: vec![(B_DOM, format!("tls://127.0.0.1:{pb}"))],
            dns: None,
        },
        Side {
            domain: B_DOM,
            plain: None,
            tls: Some(pb),
            hosts: vec![(A_DOM, format!("tls://127.0.0.1:{pa}"))],
            dns: None,
        },
    )
    .await;
    assert!(p.a.running.as_ref().unwrap().s2s_addrs.is_empty());
    assert_eq!(p.a.running.as_ref().unwrap().s2s_tls_addrs.len(), 1);
    messages_cross_both_ways(&p).await;
    // Both trusted each other's certificate: SASL EXTERNAL, no dialback;
    // and b.test answered on a.test's stream (XEP-0288, on by default).
    assert_eq!(p.a.server().s2s.authenticated(), (1, 0));
    assert_eq!(p.b.server().s2s.authenticated(), (0, 0));
    let links = p.b.server().s2s_links.list();
    assert_eq!(links.len(), 1);
    assert!(links[0].bidi && links[0].tls, "{links:?}");
}

/// `_xmpps-server._tcp` is looked up first and means direct TLS: b.test
/// listens for direct TLS only, and its `_xmpp-server._tcp` record points
/// at a closed port.
#[tokio::test]
async fn xmpps_server_srv_record_means_direct_tls() {
    let (pa, pb, closed) = (free_port(), free_port(), free_port());
    let dns = dns_server(&[
        Rr::Srv("_xmpps-server._tcp.b.test.", pb, "b-host.test."),
        Rr::Srv("_xmpp-server._tcp.b.test.", closed, "b-host.test."),
        Rr::A("b-host.test."),
    ])
    .await;
    let p = pair(
        Side {
            domain: A_DOM,
            plain: Some(pa),
            tls: None,
            hosts: vec![],
            dns: Some(dns),
        },
        Side {
            domain: B_DOM,
            plain: None,
            tls: Some(pb),
            hosts: vec![(A_DOM, format!("127.0.0.1:{pa}"))],
            dns: None,
        },
    )
    .await;
    messages_cross_both_ways(&p).await;
}

/// An `_xmpps-server._tcp` target that does not answer is skipped for the
/// `_xmpp-server._tcp` one, with STARTTLS.
#[tokio::test]
async fn dead_xmpps_target_falls_back_to_starttls() {
    let (pa, pb, closed) = (free_port(), free_port(), free_port());
    let dns = dns_server(&[
        Rr::Srv("_xmpps-server._tcp.b.test.", closed, "b-host.test."),
        Rr::Srv("_xmpp-server._tcp.b.test.", pb, "b-host.test."),
        Rr::A("b-host.test."),
    ])
    .await;
    let p = a_finds_b_through_dns(pa, pb, dns).await;
    messages_cross_both_ways(&p).await;
}
