//! `waxwing ctl check [DOMAIN]`: the operator's self-check of a deployment.
//!
//! Each part looks at one thing and adds findings to a [`Report`]: the
//! configuration ([`config`]), the certificates the server will present
//! ([`certs`]), the DNS records clients and peers will follow ([`dns`]),
//! the listeners as seen from this machine ([`ports`]), the running
//! server's upload URL self-check ([`upload`]) and what clients will show
//! of the server's features ([`grade`]). A finding is one line: a status,
//! what was found, and for a warning or a failure what to change (the
//! config key, the exact DNS record). Why one command: a deployment that
//! half works (no SRV record, a certificate missing the MUC's name, a
//! proxy eating `/upload/`) looks healthy from the server's logs and only
//! fails in users' clients, where the operator does not look.

pub mod certs;
pub mod config;
pub mod dns;
pub mod grade;
pub mod ports;
pub mod upload;

use std::fmt::Write as _;
use std::path::Path;

use crate::config::{Config, ConfigError};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    /// Works, but some clients or peers will do worse than they could.
    Warn,
    /// Something users will hit; `ctl check` exits non-zero.
    Fail,
    /// Not checked (`--offline`, or nothing to check against).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    /// The part that found it: config, cert, dns, port, upload, grade, client.
    pub area: &'static str,
    /// What was found.
    pub found: String,
    /// What to change, for a warning or a failure.
    pub fix: Option<String>,
}

/// Every finding, in the order the checks ran.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn ok(&mut self, area: &'static str, found: impl Into<String>) {
        self.push(Status::Ok, area, found.into(), None);
    }

    pub fn warn(&mut self, area: &'static str, found: impl Into<String>, fix: impl Into<String>) {
        self.push(Status::Warn, area, found.into(), Some(fix.into()));
    }

    pub fn skip(&mut self, area: &'static str, found: impl Into<String>) {
        self.push(Status::Skip, area, found.into(), None);
    }

    pub fn fail(&mut self, area: &'static str, found: impl Into<String>, fix: impl Into<String>) {
        self.push(Status::Fail, area, found.into(), Some(fix.into()));
    }

    fn push(&mut self, status: Status, area: &'static str, found: String, fix: Option<String>) {
        self.findings.push(Finding {
            status,
            area,
            found,
            fix,
        });
    }

    /// Did any check fail (warnings alone do not)?
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Fail)
    }

    /// One line per finding: `STATUS AREA  found [-- fix: …]`, then a
    /// count.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let _ = write!(out, "{:<4} {:<6} {}", f.status.label(), f.area, f.found);
            if let Some(fix) = &f.fix {
                let _ = write!(out, " -- fix: {fix}");
            }
            out.push('\n');
        }
        let count = |s| self.findings.iter().filter(|f| f.status == s).count();
        let _ = writeln!(
            out,
            "{} ok, {} warning(s), {} failure(s), {} skipped",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip)
        );
        out
    }
}

/// What `ctl check` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only this host (and its services); all `[[host]]`s when None.
    pub domain: Option<String>,
    /// Skip everything that needs the network or a running server (DNS,
    /// ports, upload).
    pub offline: bool,
}

/// Runs every check on a configuration as loaded (or not) from `path`.
pub async fn run(
    loaded: Result<Config, ConfigError>,
    path: Option<&Path>,
    opts: &Options,
) -> Report {
    let mut report = Report::default();
    let Some(config) = config::check(loaded, path, &mut report) else {
        return report;
    };
    let hosts = match scope(&config, opts.domain.as_deref()) {
        Ok(h) => h,
        Err(why) => {
            report.fail("config", why.0, why.1);
            return report;
        }
    };
    certs::check(&config, &hosts, &mut report);
    if opts.offline {
        report.skip("dns", "not checked (--offline)");
        report.skip("port", "not checked (--offline): listeners, upload URL");
    } else {
        dns::check(&config, &hosts, &mut report).await;
        let running = ports::check(&config, &hosts, &mut report).await;
        if running {
            upload::check(&config, &mut report).await;
        }
    }
    grade::check(&config, &mut report);
    report
}

/// The hosts to check: `domain` if it is one of ours, else all of them.
fn scope(config: &Config, domain: Option<&str>) -> Result<Vec<String>, (String, String)> {
    let all = config.domains();
    let Some(d) = domain else {
        return Ok(all);
    };
    let wanted = jid::BareJid::new(d)
        .map(|j| j.to_string())
        .unwrap_or_else(|_| d.to_ascii_lowercase());
    if all.contains(&wanted) {
        Ok(vec![wanted])
    } else {
        Err((
            format!(
                "{d} is not a host of this configuration (hosts: {})",
                all.join(", ")
            ),
            format!("add a [[host]] with domain = \"{d}\", or name one of the hosts"),
        ))
    }
}

/// The in-process service domains of `host` that peers reach over TLS
/// (the chat service, the upload service), as the features name them.
pub fn service_domains(config: &Config, host: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    if config.muc.enabled {
        out.push((format!("{}.{host}", config.muc.subdomain), "[muc] enabled"));
    }
    if config.upload.enabled && crate::modules::upload::base_url(config).is_some() {
        out.push((
            format!("{}.{host}", config.upload.subdomain),
            "[upload] enabled",
        ));
    }
    out
}
