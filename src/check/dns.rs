//! DNS: the SRV records clients and peers follow to each host (RFC 6120
//! §3.2, XEP-0368 for direct TLS), looked up with the resolver federation
//! uses (`[s2s] nameservers`, else the system's), their targets' A/AAAA
//! records, and the ports they name against the configured listeners.
//! Every missing or wrong record comes with the exact record to publish.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::TokioAsyncResolver;

use super::Report;
use crate::config::Config;

/// One SRV service a host should publish.
struct Service {
    /// `_xmpp-client._tcp` and the like.
    label: &'static str,
    /// The listeners the records must lead to.
    listeners: Vec<SocketAddr>,
    /// The port a client tries without the record (RFC 6120 §3.2.2), for
    /// the STARTTLS services; direct TLS has no fallback.
    fallback_port: Option<u16>,
    /// The listener setting, for the messages.
    setting: &'static str,
    /// Who follows the record: clients or peers.
    who: &'static str,
}

fn services(config: &Config) -> Vec<Service> {
    let mut out = Vec::new();
    let mut add = |label: &'static str, listeners: &[SocketAddr], fallback_port, setting| {
        if !listeners.is_empty() {
            out.push(Service {
                label,
                listeners: listeners.to_vec(),
                fallback_port,
                setting,
                who: if label.contains("server") {
                    "peers"
                } else {
                    "clients"
                },
            });
        }
    };
    add(
        "_xmpp-client._tcp",
        &config.c2s.listen,
        Some(5222),
        "[c2s] listen",
    );
    add(
        "_xmpps-client._tcp",
        &config.c2s.listen_tls,
        None,
        "[c2s] listen_tls",
    );
    add(
        "_xmpp-server._tcp",
        &config.s2s.listen,
        Some(5269),
        "[s2s] listen",
    );
    add(
        "_xmpps-server._tcp",
        &config.s2s.listen_tls,
        None,
        "[s2s] listen_tls",
    );
    out
}

/// TTL used in suggested records.
const TTL: u32 = 3600;

pub async fn check(config: &Config, hosts: &[String], report: &mut Report) {
    let resolver = match crate::net::s2s_out::resolver_for(&config.s2s.nameservers) {
        Ok(r) => r,
        Err(e) => {
            report.fail(
                "dns",
                format!("no resolver: {e}"),
                "check /etc/resolv.conf or [s2s] nameservers",
            );
            return;
        }
    };
    for host in hosts {
        for service in services(config) {
            check_service(&resolver, host, &service, report).await;
        }
    }
}

async fn check_service(
    resolver: &TokioAsyncResolver,
    host: &str,
    s: &Service,
    report: &mut Report,
) {
    let name = format!("{}.{host}.", s.label);
    let ports: BTreeSet<u16> = s.listeners.iter().map(|a| a.port()).collect();
    let port = s.listeners[0].port();
    let suggested = format!("{name} {TTL} IN SRV 0 5 {port} {host}.");
    let records = match resolver.srv_lookup(name.clone()).await {
        Ok(srv) => srv.iter().cloned().collect::<Vec<_>>(),
        Err(e) if matches!(e.kind(), ResolveErrorKind::NoRecordsFound { .. }) => Vec::new(),
        Err(e) => {
            report.fail(
                "dns",
                format!("{name}: the lookup failed: {e}"),
                "check this machine's resolver (or [s2s] nameservers)",
            );
            return;
        }
    };
    if records.is_empty() {
        missing(resolver, host, s, &name, &suggested, report).await;
        return;
    }
    for r in records {
        let target = r.target().to_utf8();
        let shown = format!(
            "{name} SRV {} {} {} {target}",
            r.priority(),
            r.weight(),
            r.port()
        );
        if target == "." || target.is_empty() {
            report.fail(
                "dns",
                format!(
                    "{shown}: says the service is not offered, yet {} is set",
                    s.setting
                ),
                format!("replace it with: {suggested}"),
            );
            continue;
        }
        if !ports.contains(&r.port()) {
            report.fail(
                "dns",
                format!(
                    "{shown}: port {} is not a port of {} ({})",
                    r.port(),
                    s.setting,
                    joined(&ports)
                ),
                format!(
                    "change it to: {name} {TTL} IN SRV {} {} {port} {target}",
                    r.priority(),
                    r.weight()
                ),
            );
            continue;
        }
        match addresses(resolver, &target).await {
            Err(e) => report.fail(
                "dns",
                format!("{shown}: the target {target} does not resolve ({e})"),
                format!("add: {target} {TTL} IN A <this server's public IPv4> (and AAAA for IPv6)"),
            ),
            Ok(ips) => match bound_elsewhere(&s.listeners, &ips) {
                Some(bound) => report.fail(
                    "dns",
                    format!(
                        "{shown}: {target} resolves to {} but {} is bound to {bound}",
                        ips_joined(&ips),
                        s.setting
                    ),
                    format!("make {target} resolve to {bound}, or listen on that address"),
                ),
                None => report.ok("dns", format!("{shown} -> {}", ips_joined(&ips))),
            },
        }
    }
}

/// No record for the service: what clients do without it decides.
async fn missing(
    resolver: &TokioAsyncResolver,
    host: &str,
    s: &Service,
    name: &str,
    suggested: &str,
    report: &mut Report,
) {
    let fallback = s
        .fallback_port
        .filter(|p| s.listeners.iter().any(|a| a.port() == *p));
    match (fallback, s.fallback_port) {
        (Some(p), _) => match addresses(resolver, host).await {
            Ok(ips) => match bound_elsewhere(&s.listeners, &ips) {
                None => report.warn(
                    "dns",
                    format!(
                        "{name}: no SRV record; {} fall back to {host}:{p} ({})",
                        s.who,
                        ips_joined(&ips)
                    ),
                    format!("add: {suggested}"),
                ),
                Some(bound) => report.fail(
                    "dns",
                    format!(
                        "{name}: no SRV record, and {host} resolves to {} but {} is bound to {bound}",
                        ips_joined(&ips),
                        s.setting
                    ),
                    format!("add: {suggested} and make {host} resolve to {bound}"),
                ),
            },
            Err(_) => report.fail(
                "dns",
                format!("{name}: no SRV record, and {host} has no A/AAAA record to fall back to"),
                format!("add: {suggested} and {host}. {TTL} IN A <this server's public IPv4>"),
            ),
        },
        (None, Some(p)) => report.fail(
            "dns",
            format!(
                "{name}: no SRV record, and {} does not include port {p} that {} try without it",
                s.setting, s.who
            ),
            format!("add: {suggested}"),
        ),
        // Direct TLS (XEP-0368) is found through its record only.
        (None, None) => report.warn(
            "dns",
            format!("{name}: no SRV record; nobody will use {} (direct TLS)", s.setting),
            format!("add: {suggested}"),
        ),
    }
}

/// The A and AAAA addresses of `name`.
async fn addresses(resolver: &TokioAsyncResolver, name: &str) -> Result<Vec<IpAddr>, String> {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let ips: Vec<IpAddr> = resolver
        .lookup_ip(fqdn)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .collect();
    if ips.is_empty() {
        Err("no A/AAAA record".into())
    } else {
        Ok(ips)
    }
}

/// When every listener is bound to a specific address and the records
/// lead to none of them: those addresses.
fn bound_elsewhere(listeners: &[SocketAddr], ips: &[IpAddr]) -> Option<String> {
    if listeners
        .iter()
        .any(|l| l.ip().is_unspecified() || ips.contains(&l.ip()))
    {
        return None;
    }
    let bound: BTreeSet<String> = listeners.iter().map(|l| l.ip().to_string()).collect();
    Some(bound.into_iter().collect::<Vec<_>>().join(", "))
}

fn joined(ports: &BTreeSet<u16>) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn ips_joined(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
