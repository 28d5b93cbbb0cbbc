//! Ports: every configured listener reached from this machine, as a
//! client or a peer would reach it: a TCP connection, and on the XMPP ones
//! a stream opened to each host, which must answer with stream features
//! (STARTTLS offered on the STARTTLS ports; on the direct TLS ports a
//! handshake with the host's name as SNI first). The certificate itself is
//! judged by `certs`, so the handshakes here accept any.
//!
//! When nothing answers at all, the server is not running: one failure
//! says so and the rest is skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Report;
use crate::config::Config;
use crate::xml::{escape_attr, ParserLimits, StreamEvent, StreamParser, NS_CLIENT, NS_SERVER};

/// How long one connection, handshake or answer may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most read while waiting for stream features.
const MAX_READ: usize = 64 * 1024;
const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";

/// What is listening, and how to talk to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An XMPP stream in this namespace, STARTTLS or direct TLS.
    Xmpp { ns: &'static str, direct_tls: bool },
    /// TCP (and the TLS handshake when `tls`).
    Plain { tls: bool },
}

struct Listener {
    addr: SocketAddr,
    setting: &'static str,
    kind: Kind,
}

fn listeners(config: &Config) -> Vec<Listener> {
    let mut out = Vec::new();
    let mut add = |addrs: &[SocketAddr], setting, kind| {
        for a in addrs {
            out.push(Listener {
                addr: *a,
                setting,
                kind,
            });
        }
    };
    let xmpp = |ns, direct_tls| Kind::Xmpp { ns, direct_tls };
    add(&config.c2s.listen, "[c2s] listen", xmpp(NS_CLIENT, false));
    add(
        &config.c2s.listen_tls,
        "[c2s] listen_tls",
        xmpp(NS_CLIENT, true),
    );
    add(&config.s2s.listen, "[s2s] listen", xmpp(NS_SERVER, false));
    add(
        &config.s2s.listen_tls,
        "[s2s] listen_tls",
        xmpp(NS_SERVER, true),
    );
    let plain = Kind::Plain { tls: false };
    add(
        &config.component_listener.listen,
        "[component_listener] listen",
        plain,
    );
    add(&config.http.listen, "[http] listen", plain);
    add(
        &config.http.listen_tls,
        "[http] listen_tls",
        Kind::Plain { tls: true },
    );
    out
}

/// Where this machine reaches a listener: its address, loopback when it
/// is bound to all addresses.
fn reach(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(TIMEOUT, TcpStream::connect(reach(addr))).await {
        Err(_) => Err(format!("connecting to {} timed out", reach(addr))),
        Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", reach(addr))),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Checks every listener; false when the server is not running.
pub async fn check(config: &Config, hosts: &[String], report: &mut Report) -> bool {
    let all = listeners(config);
    let mut reachable = Vec::new();
    for l in &all {
        reachable.push(connect(l.addr).await.map(drop));
    }
    if !all.is_empty() && reachable.iter().all(Result::is_err) {
        let addrs: Vec<String> = all.iter().map(|l| reach(l.addr).to_string()).collect();
        report.fail(
            "port",
            format!(
                "nothing answers on any configured listener ({}): the server is not running \
                 (or not with this configuration); ports and upload not checked",
                addrs.join(", ")
            ),
            "start it (`waxwing serve --config FILE`, or its service) and check again",
        );
        return false;
    }
    for (l, r) in all.iter().zip(reachable) {
        if let Err(e) = r {
            report.fail(
                "port",
                format!("{} {}: {e}", l.setting, l.addr),
                format!(
                    "check that the server could bind {} (its log) and no firewall blocks it",
                    l.addr
                ),
            );
            continue;
        }
        match l.kind {
            Kind::Plain { tls: false } => report.ok(
                "port",
                format!("{} {}: accepts connections", l.setting, l.addr),
            ),
            Kind::Plain { tls: true } => {
                let Some(host) = hosts.first() else { continue };
                match tls_to(l.addr, host).await {
                    Ok(_) => report.ok(
                        "port",
                        format!("{} {}: TLS handshake with SNI {host}", l.setting, l.addr),
                    ),
                    Err(e) => report.fail(
                        "port",
                        format!("{} {}: {e}", l.setting, l.addr),
                        "check the server's log for TLS errors and the certificate lines above",
                    ),
                }
            }
            Kind::Xmpp { ns, direct_tls } => {
                for host in hosts {
                    stream(config, l, host, ns, direct_tls, report).await;
                }
            }
        }
    }
    true
}

/// Opens a stream to `host` on an XMPP listener and judges its features.
async fn stream(
    config: &Config,
    l: &Listener,
    host: &str,
    ns: &'static str,
    direct_tls: bool,
    report: &mut Report,
) {
    let subject = format!("{} {} ({host})", l.setting, l.addr);
    let features = if direct_tls {
        match tls_to(l.addr, host).await {
            Ok(tls) => features(tls, host, ns).await,
            Err(e) => Err(e),
        }
    } else {
        match connect(l.addr).await {
            Ok(tcp) => features(tcp, host, ns).await,
            Err(e) => Err(e),
        }
    };
    let features = match features {
        Ok(f) => f,
        Err(e) => {
            report.fail(
                "port",
                format!("{subject}: {e}"),
                format!("is {} this server's, for {host}? see its log", l.setting),
            );
            return;
        }
    };
    let starttls = features.iter().any(|(_, ns)| ns == NS_TLS);
    let required = if ns == NS_CLIENT {
        config.c2s.require_encryption
    } else {
        config.s2s.require_encryption
    };
    let mut names: Vec<&str> = features.iter().map(|(n, _)| n.as_str()).collect();
    names.dedup();
    if !direct_tls && !starttls && required {
        report.fail(
            "port",
            format!(
                "{subject}: stream features without STARTTLS ({}) although encryption is required",
                names.join(", ")
            ),
            format!("is another server listening on {}?", l.addr),
        );
    } else {
        report.ok(
            "port",
            format!("{subject}: stream features: {}", names.join(", ")),
        );
    }
}

/// Sends a stream header to `host` over `io` and reads up to the stream
/// features: their children's (name, namespace).
async fn features<I>(mut io: I, host: &str, ns: &str) -> Result<Vec<(String, String)>, String>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut to = Vec::new();
    escape_attr(host, &mut to);
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{ns}' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{}' version='1.0'>",
        String::from_utf8_lossy(&to)
    );
    let exchange = async {
        io.write_all(header.as_bytes())
            .await
            .map_err(|e| format!("writing the stream header: {e}"))?;
        let mut parser = StreamParser::new(ParserLimits::default());
        let mut buf = vec![0u8; 4096];
        let mut read = 0;
        loop {
            while let Some(ev) = parser.next_event().map_err(|e| format!("bad XML: {e}"))? {
                match ev {
                    StreamEvent::Stanza(el) if el.name() == "features" => {
                        return Ok(el
                            .children()
                            .map(|c| (c.name().to_string(), c.ns().to_string()))
                            .collect());
                    }
                    StreamEvent::Stanza(el) if el.name() == "error" => {
                        let cond: Vec<&str> = el.children().map(|c| c.name()).collect();
                        return Err(format!("stream error: {}", cond.join(" ")));
                    }
                    StreamEvent::End => return Err("the stream was closed".to_string()),
                    _ => {}
                }
            }
            if read > MAX_READ {
                return Err(format!("no stream features in the first {MAX_READ} bytes"));
            }
            let n = io
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading: {e}"))?;
            if n == 0 {
                return Err("the connection was closed before stream features".to_string());
            }
            read += n;
            parser.feed(&buf[..n]);
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no stream features within {TIMEOUT:?}"))?
}

/// A TLS handshake with `host` as SNI, any certificate accepted.
async fn tls_to(
    addr: SocketAddr,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = connect(addr).await?;
    // Any certificate: judging it is the `certs` check's business; here
    // only whether the listener speaks TLS (and then XMPP).
    let config = crate::net::tls::probe_client_config()?;
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(TIMEOUT, connector.connect(name, tcp)).await {
        Err(_) => Err("the TLS handshake timed out".into()),
        Ok(Err(e)) => Err(format!("the TLS handshake failed: {e}")),
        Ok(Ok(s)) => Ok(s),
    }
}
