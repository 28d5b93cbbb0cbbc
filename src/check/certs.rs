//! Certificates: for each host, the one the server will present (the
//! host's `cert`/`key`, else `[tls] cert`/`key`, else the generated
//! development certificate), loaded exactly as the server loads it
//! (`net::tls::load_certified`), then judged as a client would: does it
//! name the host and the services peers reach under it, is it within its
//! dates, does its chain lead to a root this machine trusts, does the key
//! belong to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::Report;
use crate::config::Config;
use crate::net::tls;

/// A certificate ending within this many days is a warning: Let's
/// Encrypt renews at 30 days left, so 14 means renewal has been failing.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Where a host's certificate comes from, and the key that names it.
struct Source {
    cert: PathBuf,
    key: PathBuf,
    /// The config key to change.
    setting: &'static str,
    /// The generated development certificate.
    dev: bool,
}

fn source_of(config: &Config, host: &str) -> Source {
    let own = config
        .host
        .iter()
        .find(|h| jid::BareJid::new(&h.domain).is_ok_and(|j| j.as_str() == host));
    if let Some((Some(cert), Some(key))) = own.map(|h| (&h.cert, &h.key)) {
        return Source {
            cert: cert.clone(),
            key: key.clone(),
            setting: "[[host]] cert/key",
            dev: false,
        };
    }
    if !config.tls.cert.is_empty() {
        return Source {
            cert: PathBuf::from(&config.tls.cert),
            key: PathBuf::from(&config.tls.key),
            setting: "[tls] cert/key",
            dev: false,
        };
    }
    Source {
        cert: config.tls.dev_cert_dir.join("dev-cert.pem"),
        key: config.tls.dev_cert_dir.join("dev-key.pem"),
        setting: "[tls] cert/key",
        dev: true,
    }
}

/// Checks the certificate of each of `hosts`, and that configured
/// components are named by one (when federation is on).
pub fn check(config: &Config, hosts: &[String], report: &mut Report) {
    let roots = tls::s2s_roots(&config.s2s.ca_file);
    for host in hosts {
        let src = source_of(config, host);
        let certbot = certbot_line(config, host);
        if src.dev && !src.cert.exists() {
            report.warn(
                "cert",
                format!(
                    "{host}: no certificate configured; the server will generate a self-signed \
                     one in {} that clients refuse",
                    config.tls.dev_cert_dir.display()
                ),
                format!(
                    "get one from Let's Encrypt ({certbot}) and set {}",
                    src.setting
                ),
            );
            continue;
        }
        let key = match tls::load_certified(&src.cert, &src.key) {
            Ok(k) => k,
            Err(e) => {
                report.fail(
                    "cert",
                    format!("{host}: cannot load: {e}"),
                    format!(
                        "point {} at a PEM certificate chain and its key",
                        src.setting
                    ),
                );
                continue;
            }
        };
        judge(
            config,
            host,
            &src,
            &key,
            roots.as_ref().ok(),
            &certbot,
            report,
        );
    }
    if config.s2s.enabled() {
        components(config, report);
    }
}

/// What one host's certificate is worth.
fn judge(
    config: &Config,
    host: &str,
    src: &Source,
    key: &Arc<CertifiedKey>,
    roots: Option<&Arc<rustls::RootCertStore>>,
    certbot: &str,
    report: &mut Report,
) {
    let file = src.cert.display();
    if let Err(e) = key.keys_match() {
        report.fail(
            "cert",
            format!(
                "{host}: the key {} does not belong to {file} ({e})",
                src.key.display()
            ),
            format!(
                "set {} to the key the certificate was issued for",
                src.setting
            ),
        );
        return;
    }
    let leaf = &key.cert[0];
    let Ok((_, parsed)) = X509Certificate::from_der(leaf.as_ref()) else {
        report.fail(
            "cert",
            format!("{host}: {file} is not a readable X.509 certificate"),
            format!("point {} at a PEM certificate chain", src.setting),
        );
        return;
    };
    let names = dns_names(&parsed);
    // Names: the host itself, then each service peers reach under it.
    if tls::certified_names(key, host) {
        report.ok("cert", format!("{host}: {file} names {host}"));
    } else {
        report.fail(
            "cert",
            format!(
                "{host}: {file} does not name {host} (it names: {})",
                listed(&names)
            ),
            format!(
                "get a certificate for {host} ({certbot}) and set {}",
                src.setting
            ),
        );
    }
    for (service, why) in super::service_domains(config, host) {
        if tls::certified_names(key, &service) || fallback_names(config, src, &service) {
            report.ok("cert", format!("{service}: named by a certificate ({why})"));
        } else {
            report.warn(
                "cert",
                format!(
                    "{service} ({why}) is named by no certificate: other servers cannot \
                     authenticate it by certificate (dialback only) and some refuse it"
                ),
                format!("add {service} to the certificate: {certbot}"),
            );
        }
    }
    dates(host, &parsed, report);
    chain(host, src, key, &parsed, roots, certbot, report);
}

/// Validity dates: not yet valid or expired fail, close to expiry warns.
fn dates(host: &str, cert: &X509Certificate<'_>, report: &mut Report) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let validity = cert.validity();
    let not_after = validity.not_after;
    let until = not_after.to_datetime().date();
    let days = (not_after.timestamp() - now).div_euclid(86_400);
    if validity.not_before.timestamp() > now {
        report.fail(
            "cert",
            format!(
                "{host}: not valid before {} (is this machine's clock right?)",
                validity.not_before.to_datetime().date()
            ),
            "check the clock (timedatectl), or use a certificate valid now",
        );
    } else if not_after.timestamp() <= now {
        report.fail(
            "cert",
            format!("{host}: expired on {until}"),
            "renew it (certbot renew) and reload the server",
        );
    } else if days < EXPIRY_WARNING_DAYS {
        report.warn(
            "cert",
            format!("{host}: expires on {until}, in {days} day(s)"),
            "renew it now (certbot renew) and check that automatic renewal runs",
        );
    } else {
        report.ok("cert", format!("{host}: valid until {until} ({days} days)"));
    }
}

/// The chain, verified as a client does against this machine's roots
/// (plus `[s2s] ca_file`). Names and dates are reported by their own
/// lines; here only whom the certificate leads to.
fn chain(
    host: &str,
    src: &Source,
    key: &CertifiedKey,
    cert: &X509Certificate<'_>,
    roots: Option<&Arc<rustls::RootCertStore>>,
    certbot: &str,
    report: &mut Report,
) {
    // Alone in its file and its own issuer: nothing to build a chain from.
    let self_signed = key.cert.len() == 1 && cert.issuer() == cert.subject();
    if self_signed {
        let what = if src.dev {
            "the development certificate"
        } else {
            "self-signed"
        };
        report.warn(
            "cert",
            format!("{host}: {what}: clients will refuse it"),
            format!(
                "get one from Let's Encrypt ({certbot}) and set {}",
                src.setting
            ),
        );
        return;
    }
    let verifier = roots.filter(|r| !r.is_empty()).and_then(|r| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::client::WebPkiServerVerifier::builder_with_provider(r.clone(), provider)
            .build()
            .ok()
    });
    let Some(verifier) = verifier else {
        report.warn(
            "cert",
            format!("{host}: no trusted root certificates on this machine to verify the chain"),
            "install the system CA bundle (ca-certificates)",
        );
        return;
    };
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return;
    };
    let intermediates: Vec<CertificateDer<'_>> = key.cert[1..].to_vec();
    use rustls::client::danger::ServerCertVerifier;
    use rustls::{CertificateError, Error};
    match verifier.verify_server_cert(&key.cert[0], &intermediates, &name, &[], UnixTime::now()) {
        Ok(_) => report.ok("cert", format!("{host}: the chain leads to a trusted root")),
        Err(Error::InvalidCertificate(
            CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }
            | CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) => {}
        Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => report.fail(
            "cert",
            format!(
                "{host}: the chain in {} does not lead to a trusted root ({} certificate(s) \
                 in the file)",
                src.cert.display(),
                key.cert.len()
            ),
            format!(
                "use the full chain (Let's Encrypt's fullchain.pem, not cert.pem) in {}",
                src.setting
            ),
        ),
        Err(e) => report.fail(
            "cert",
            format!("{host}: clients will refuse the certificate: {e}"),
            format!("get a new one ({certbot}) and set {}", src.setting),
        ),
    }
}

/// Is `domain` named by the fallback certificate (`[tls]`), which the
/// server also presents for services no host certificate names?
fn fallback_names(config: &Config, src: &Source, domain: &str) -> bool {
    if config.tls.cert.is_empty() || src.cert == Path::new(&config.tls.cert) {
        return false;
    }
    tls::load_certified(Path::new(&config.tls.cert), Path::new(&config.tls.key))
        .is_ok_and(|k| tls::certified_names(&k, domain))
}

/// Components (XEP-0114) are authenticated by peers with the certificate
/// of a host (or `[tls]`) that names them, as `CertStore::adopt` picks.
fn components(config: &Config, report: &mut Report) {
    for (domain, _) in config.components() {
        let named = config
            .domains()
            .iter()
            .map(|h| source_of(config, h))
            .filter_map(|s| tls::load_certified(&s.cert, &s.key).ok())
            .any(|k| tls::certified_names(&k, &domain));
        if named {
            report.ok(
                "cert",
                format!("component {domain}: named by a certificate"),
            );
        } else {
            report.warn(
                "cert",
                format!(
                    "component {domain} is named by no certificate: peers can only verify it \
                     by dialback"
                ),
                format!("add {domain} to a host's certificate (certbot ... -d {domain})"),
            );
        }
    }
}

/// The certbot command line for a host and its services.
fn certbot_line(config: &Config, host: &str) -> String {
    let mut line = format!("certbot certonly -d {host}");
    for (service, _) in super::service_domains(config, host) {
        line.push_str(&format!(" -d {service}"));
    }
    line
}

/// The DNS names of the subjectAltName extension.
fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

fn listed(names: &[String]) -> String {
    if names.is_empty() {
        "no DNS name".into()
    } else {
        names.join(", ")
    }
}
