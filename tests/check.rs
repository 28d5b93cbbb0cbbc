//! `waxwing ctl check`: the operator's self-check. The offline parts
//! (configuration, certificates, grade) on generated files; DNS against an
//! authoritative test DNS server on 127.0.0.1 reached through `[s2s]
//! nameservers`; ports against a running test server and a stopped one;
//! and the command itself as a subprocess.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use waxwing::check::{Finding, Options, Report, Status};
use waxwing::config::{Config, HostConfig};

const HOST: &str = "a.test";

/// A configuration serving `a.test` only, listeners on loopback.
fn config_for(dir: &Path) -> Config {
    let mut c = Config {
        host: vec![HostConfig {
            domain: HOST.into(),
            cert: None,
            key: None,
            allow_registration: false,
        }],
        ..Config::default()
    };
    c.database.url = format!("sqlite://{}/waxwing.db", dir.display());
    c.tls.dev_cert_dir = dir.join("certs");
    c
}

/// The findings of `area`.
fn of<'a>(r: &'a Report, area: &str) -> Vec<&'a Finding> {
    r.findings.iter().filter(|f| f.area == area).collect()
}

fn has(r: &Report, area: &str, status: Status, text: &str) -> bool {
    of(r, area).iter().any(|f| {
        f.status == status
            && (f.found.contains(text) || f.fix.as_deref().is_some_and(|x| x.contains(text)))
    })
}

async fn offline(config: Config) -> Report {
    let opts = Options {
        domain: None,
        offline: true,
    };
    waxwing::check::run(Ok(config), None, &opts).await
}

/// Writes `cert`/`key` PEM files under `dir` named `stem`; returns paths.
fn write_pair(dir: &Path, stem: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let c = dir.join(format!("{stem}.pem"));
    let k = dir.join(format!("{stem}.key"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

fn days(n: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(n)
}

/// A self-signed certificate for `names`, valid from `from` to `until` days from now.
fn self_signed(names: &[&str], from: i64, until: i64) -> (String, String) {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.not_before = days(from);
    p.not_after = days(until);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Sets the host's certificate.
fn use_cert(c: &mut Config, cert: PathBuf, key: PathBuf) {
    c.host[0].cert = Some(cert);
    c.host[0].key = Some(key);
}

fn dump(r: &Report) -> String {
    r.render()
}

#[tokio::test]
async fn certificate_for_another_name_fails_with_the_names_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(&["other.test"], -1, 90);
    let (c, k) = write_pair(dir.path(), "other", &cert, &key);
    let mut config = config_for(dir.path());
    use_cert(&mut config, c, k);
    let r = offline(config).await;
    assert!(
        has(
            &r,
            "cert",
            Status::Fail,
            "does not name a.test (it names: other.test)"
        ),
        "{}",
        dump(&r)
    );
    assert!(r.failed());
}

#[tokio::test]
async fn expired_certificate_fails_and_one_close_to_expiry_warns() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(&[HOST, "conference.a.test"], -100, -2);
    let (c, k) = write_pair(dir.path(), "expired", &cert, &key);
    let mut config = config_for(dir.path());
    use_cert(&mut config, c, k);
    let r = offline(config).await;
    assert!(has(&r, "cert", Status::Fail, "expired on"), "{}", dump(&r));

    let (cert, key) = self_signed(&[HOST, "conference.a.test"], -80, 10);
    let (c, k) = write_pair(dir.path(), "soon", &cert, &key);
    let mut config = config_for(dir.path());
    use_cert(&mut config, c, k);
    let r = offline(config).await;
    assert!(has(&r, "cert", Status::Warn, "expires on"), "{}", dump(&r));
    assert!(!has(&r, "cert", Status::Fail, ""), "{}", dump(&r));
}

#[tokio::test]
async fn valid_self_signed_certificate_is_a_warning_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(&[HOST, "conference.a.test"], -1, 90);
    let (c, k) = write_pair(dir.path(), "self", &cert, &key);
    let mut config = config_for(dir.path());
    use_cert(&mut config, c, k);
    let r = offline(config).await;
    assert!(has(&r, "cert", Status::Ok, "names a.test"), "{}", dump(&r));
    assert!(
        has(&r, "cert", Status::Ok, "conference.a.test: named"),
        "{}",
        dump(&r)
    );
    assert!(
        has(&r, "cert", Status::Warn, "clients will refuse it"),
        "{}",
        dump(&r)
    );
    assert!(
        has(&r, "cert", Status::Warn, "Let's Encrypt"),
        "{}",
        dump(&r)
    );
    assert!(!r.failed(), "{}", dump(&r));
}

#[tokio::test]
async fn service_name_missing_from_the_certificate_warns_with_certbot_line() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(&[HOST], -1, 90);
    let (c, k) = write_pair(dir.path(), "bare", &cert, &key);
    let mut config = config_for(dir.path());
    use_cert(&mut config, c, k);
    let r = offline(config).await;
    assert!(
        has(
            &r,
            "cert",
            Status::Warn,
            "certbot certonly -d a.test -d conference.a.test"
        ),
        "{}",
        dump(&r)
    );
}

#[tokio::test]
async fn key_of_another_certificate_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = self_signed(&[HOST], -1, 90);
    let (_, other_key) = self_signed(&[HOST], -1, 90);
    let (c, k) = write_pair(dir.path(), "mismatch", &cert, &other_key);
    let mut config = config_for(dir.path());
    use_cert(&mut config, c, k);
    let r = offline(config).await;
    assert!(
        has(&r, "cert", Status::Fail, "does not belong"),
        "{}",
        dump(&r)
    );
}

/// A CA and a leaf for a.test it signed: trusted through `[s2s] ca_file`
/// with the chain complete; without the CA trusted, the chain fails.
#[tokio::test]
async fn chain_to_a_trusted_root_is_ok_and_an_unknown_issuer_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Check Test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf =
        CertificateParams::new(vec![HOST.to_string(), "conference.a.test".into()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, HOST);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    let (c, k) = write_pair(
        dir.path(),
        "leaf",
        &leaf_cert.pem(),
        &leaf_key.serialize_pem(),
    );
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let mut config = config_for(dir.path());
    use_cert(&mut config, c.clone(), k.clone());
    config.s2s.ca_file = ca_file.display().to_string();
    let r = offline(config).await;
    assert!(
        has(&r, "cert", Status::Ok, "the chain leads to a trusted root"),
        "{}",
        dump(&r)
    );
    assert!(!r.failed(), "{}", dump(&r));

    let mut config = config_for(dir.path());
    use_cert(&mut config, c, k);
    let r = offline(config).await;
    assert!(
        has(&r, "cert", Status::Fail, "does not lead to a trusted root"),
        "{}",
        dump(&r)
    );
    assert!(
        has(&r, "cert", Status::Fail, "fullchain.pem"),
        "{}",
        dump(&r)
    );
}

// --- DNS -----------------------------------------------------------------

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

/// Serves the `test.` zone with SRV records (name, port, target) and A
/// records (127.0.0.1) on 127.0.0.1, UDP and TCP on one port.
async fn dns_server(srv: &[(&str, u16, &str)], a: &[&str]) -> SocketAddr {
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
    for (service, port, target) in srv {
        let rdata = RData::SRV(SRV::new(0, 5, *port, name(target)));
        assert!(zone.upsert_mut(Record::from_rdata(name(service), 60, rdata), 1));
    }
    for host in a {
        let rdata = RData::A(A::from(Ipv4Addr::LOCALHOST));
        assert!(zone.upsert_mut(Record::from_rdata(name(host), 60, rdata), 1));
    }
    let mut catalog = Catalog::new();
    catalog.upsert(origin.into(), Box::new(Arc::new(zone)));
    let mut server = ServerFuture::new(catalog);
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
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

/// a.test with a STARTTLS client listener on 127.0.0.1:`port` (not
/// running: DNS is checked against the configuration), and federation on
/// 127.0.0.1:`s2s_port`.
fn dns_config(dir: &Path, dns: SocketAddr, port: u16, s2s_port: u16) -> Config {
    let mut c = config_for(dir);
    c.c2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
    c.c2s.listen_tls = Vec::new();
    c.s2s.listen = vec![SocketAddr::from(([127, 0, 0, 1], s2s_port))];
    c.s2s.nameservers = vec![dns];
    c
}

async fn dns_report(config: &Config) -> Report {
    let mut r = Report::default();
    waxwing::check::dns::check(config, &[HOST.to_string()], &mut r).await;
    r
}

#[tokio::test]
async fn srv_records_leading_to_the_listeners_are_ok() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_server(
        &[
            ("_xmpp-client._tcp.a.test.", 15222, "xmpp.a.test."),
            ("_xmpp-server._tcp.a.test.", 15269, "xmpp.a.test."),
        ],
        &["xmpp.a.test."],
    )
    .await;
    let r = dns_report(&dns_config(dir.path(), dns, 15222, 15269)).await;
    assert_eq!(of(&r, "dns").len(), 2, "{}", dump(&r));
    assert!(
        of(&r, "dns").iter().all(|f| f.status == Status::Ok),
        "{}",
        dump(&r)
    );
    assert!(
        has(&r, "dns", Status::Ok, "15222 xmpp.a.test. -> 127.0.0.1"),
        "{}",
        dump(&r)
    );
}

#[tokio::test]
async fn missing_srv_records_come_with_the_record_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_server(&[], &["a.test."]).await;
    let r = dns_report(&dns_config(dir.path(), dns, 15222, 5269)).await;
    // Not 5222, so clients without the record find nothing: a failure.
    assert!(
        has(
            &r,
            "dns",
            Status::Fail,
            "add: _xmpp-client._tcp.a.test. 3600 IN SRV 0 5 15222 a.test."
        ),
        "{}",
        dump(&r)
    );
    // 5269 and an A record: peers fall back, a warning with the record.
    assert!(
        has(
            &r,
            "dns",
            Status::Warn,
            "add: _xmpp-server._tcp.a.test. 3600 IN SRV 0 5 5269 a.test."
        ),
        "{}",
        dump(&r)
    );
}

#[tokio::test]
async fn srv_port_other_than_the_listener_fails_with_the_corrected_record() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_server(
        &[
            ("_xmpp-client._tcp.a.test.", 5999, "a.test."),
            ("_xmpp-server._tcp.a.test.", 15269, "nowhere.a.test."),
        ],
        &["a.test."],
    )
    .await;
    let r = dns_report(&dns_config(dir.path(), dns, 15222, 15269)).await;
    assert!(
        has(
            &r,
            "dns",
            Status::Fail,
            "port 5999 is not a port of [c2s] listen (15222)"
        ),
        "{}",
        dump(&r)
    );
    assert!(
        has(
            &r,
            "dns",
            Status::Fail,
            "change it to: _xmpp-client._tcp.a.test. 3600 IN SRV 0 5 15222 a.test."
        ),
        "{}",
        dump(&r)
    );
    assert!(
        has(
            &r,
            "dns",
            Status::Fail,
            "the target nowhere.a.test. does not resolve"
        ),
        "{}",
        dump(&r)
    );
}

// --- Ports -----------------------------------------------------------------

/// The test server's configuration with its real listener addresses.
fn running_config(ts: &TestServer) -> Config {
    let mut c = Config::clone(&ts.server().config());
    c.c2s.listen = vec![ts.plain_addr];
    c.c2s.listen_tls = vec![ts.tls_addr];
    c
}

#[tokio::test]
async fn listeners_of_a_running_server_answer_and_a_stopped_one_is_reported_once() {
    let mut ts = TestServer::start().await;
    let config = running_config(&ts);
    let mut r = Report::default();
    let running = waxwing::check::ports::check(&config, &[DOMAIN.to_string()], &mut r).await;
    assert!(running, "{}", dump(&r));
    assert!(has(&r, "port", Status::Ok, "starttls"), "{}", dump(&r));
    assert!(
        has(
            &r,
            "port",
            Status::Ok,
            &format!("[c2s] listen_tls {}", ts.tls_addr)
        ),
        "{}",
        dump(&r)
    );
    assert!(!r.failed(), "{}", dump(&r));

    ts.stop().await;
    let mut r = Report::default();
    let running = waxwing::check::ports::check(&config, &[DOMAIN.to_string()], &mut r).await;
    assert!(!running);
    assert_eq!(of(&r, "port").len(), 1, "{}", dump(&r));
    assert!(
        has(&r, "port", Status::Fail, "the server is not running"),
        "{}",
        dump(&r)
    );
}

#[tokio::test]
async fn a_listener_that_is_not_xmpp_fails() {
    let ts = TestServer::start().await;
    // Something else on the configured s2s port: it accepts and closes.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in other.incoming() {
            drop(s);
        }
    });
    let mut config = running_config(&ts);
    config.s2s.listen = vec![other_addr];
    let mut r = Report::default();
    waxwing::check::ports::check(&config, &[DOMAIN.to_string()], &mut r).await;
    assert!(
        has(
            &r,
            "port",
            Status::Fail,
            &format!("[s2s] listen {other_addr}")
        ),
        "{}",
        dump(&r)
    );
}

// --- Upload ----------------------------------------------------------------

/// A running server with uploads on an HTTP listener, `public_url` as given
/// (empty: the listener), its self-check finished; and its configuration.
async fn upload_server(public_url: String) -> (TestServer, Config, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().display().to_string();
    let port = free_port();
    let ts = TestServer::start_with(move |c| {
        c.http.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
        c.http.public_url = public_url;
        c.upload.dir = dir;
        c.upload.self_check_for = 0;
    })
    .await;
    let upload = ts
        .server()
        .features
        .get::<waxwing::modules::upload::Upload>()
        .expect("the upload feature runs");
    eventually("the upload URL self-check finishes", || async {
        upload.self_check().result() != waxwing::web::self_check::UrlCheck::Pending
    })
    .await;
    let config = Config::clone(&ts.server().config());
    (ts, config, files)
}

#[tokio::test]
async fn upload_url_outcome_is_read_from_the_running_server() {
    let (_ts, config, _files) = upload_server(String::new()).await;
    let mut r = Report::default();
    waxwing::check::upload::check(&config, &mut r).await;
    assert!(
        has(
            &r,
            "upload",
            Status::Ok,
            "the server's self-check reached itself"
        ),
        "{}",
        dump(&r)
    );

    let closed = free_port();
    let (_ts, config, _files) = upload_server(format!("http://127.0.0.1:{closed}")).await;
    let mut r = Report::default();
    waxwing::check::upload::check(&config, &mut r).await;
    assert!(
        has(&r, "upload", Status::Fail, "cannot connect"),
        "{}",
        dump(&r)
    );
    assert!(
        has(&r, "upload", Status::Fail, "[http] public_url"),
        "{}",
        dump(&r)
    );
}

// --- Grade -----------------------------------------------------------------

fn grade(config: &Config) -> Report {
    let mut r = Report::default();
    waxwing::check::grade::check(config, &mut r);
    r
}

#[tokio::test]
async fn grade_follows_what_the_configuration_enables() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.http.listen = vec!["127.0.0.1:5280".parse().unwrap()];
    config.upload.enabled = true;
    config.external_service = Config::parse(
        "[[host]]\ndomain = \"a.test\"\n[[external_service]]\ntype = \"stun\"\nhost = \"turn.a.test\"\nport = 3478\n",
    )
    .unwrap()
    .external_service;
    let r = grade(&config);
    for suite in ["Core", "IM", "Mobile", "Web", "A/V"] {
        assert!(
            has(
                &r,
                "grade",
                Status::Ok,
                &format!("XEP-0479 {suite}: Advanced Server")
            ),
            "{}",
            dump(&r)
        );
    }
    assert!(has(
        &r,
        "client",
        Status::Ok,
        "Message archive management: available"
    ));

    config.mam.enabled = false;
    let r = grade(&config);
    assert!(
        has(
            &r,
            "grade",
            Status::Warn,
            "XEP-0479 IM: Core Server; Advanced needs"
        ),
        "{}",
        dump(&r)
    );
    assert!(
        has(&r, "grade", Status::Warn, "[mam] enabled = true"),
        "{}",
        dump(&r)
    );
    assert!(has(
        &r,
        "client",
        Status::Warn,
        "Message archive management: unavailable"
    ));

    config.mam.enabled = true;
    config.push.enabled = false;
    let r = grade(&config);
    assert!(
        has(&r, "grade", Status::Warn, "XEP-0479 Mobile: Core Server; Advanced needs Third party push notifications (XEP-0357)"),
        "{}",
        dump(&r)
    );
    config.stream_management.enabled = false;
    let r = grade(&config);
    assert!(
        has(
            &r,
            "grade",
            Status::Warn,
            "XEP-0479 Mobile: not compliant; Core needs Stream management (XEP-0198)"
        ),
        "{}",
        dump(&r)
    );
}

// --- The command -----------------------------------------------------------

fn ctl_check(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_waxwing"))
        .arg("ctl")
        .arg("--config")
        .arg(config)
        .arg("check")
        .args(args)
        .current_dir(config.parent().unwrap())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn command_reports_config_problems_with_their_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("waxwing.toml");
    std::fs::write(
        &path,
        "[[host]]\ndomain = \"a.test\"\n[c2s]\nlisten = \"not an address\"\n",
    )
    .unwrap();
    let (ok, out) = ctl_check(&path, &["--offline"]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL config"), "{out}");
    assert!(out.contains("line 4"), "{out}");
    assert!(out.contains("nothing else was checked"), "{out}");
}

#[test]
fn command_exits_zero_on_warnings_and_names_an_unknown_domain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("waxwing.toml");
    std::fs::write(
        &path,
        format!(
            "[[host]]\ndomain = \"a.test\"\n[tls]\ndev_cert_dir = {:?}\n",
            dir.path().join("certs").display().to_string()
        ),
    )
    .unwrap();
    let (ok, out) = ctl_check(&path, &["--offline"]);
    assert!(ok, "{out}");
    assert!(out.contains("warn cert"), "{out}");
    assert!(out.contains("0 failure(s)"), "{out}");

    let (ok, out) = ctl_check(&path, &["--offline", "b.test"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("b.test is not a host of this configuration"),
        "{out}"
    );
}
