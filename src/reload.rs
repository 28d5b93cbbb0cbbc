//! Configuration reload: SIGHUP or `waxwing ctl reload` reads the
//! configuration file again and puts in force what can change under
//! running sessions, without dropping any:
//!
//! - `[[host]]`: hosts added are served from the next stream header on
//!   (with their in-process services, `conference.<host>`…); streams of a
//!   host removed end with `host-gone` (RFC 6120 §4.9.3.6);
//! - certificates (`[tls]`, a host's `cert`/`key`): every TLS
//!   configuration is rebuilt, so the next handshake serves the new files
//!   while encrypted streams keep the keys they negotiated;
//! - `[limits]` (parser bounds and queue sizes for streams opened from now
//!   on, throttles at once), except the hashing pool's size;
//! - `[admin]` (who is an administrator, command limits), except the socket;
//! - `[c2s]` and `[s2s]`, except the addresses listened on and the
//!   dialback secret (connection caps at once, the rest per connection);
//! - `[contact]`.
//!
//! Everything else (the database, listeners, components, which features
//! run and their sections) keeps its running value, and the answer names
//! what differs and needs a restart, so `config()` never disagrees with
//! what actually runs. A file that does not load or validate changes
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::server::Server;
use crate::stanza::StreamErrorCondition;

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub hosts_added: Vec<String>,
    pub hosts_removed: Vec<String>,
    /// Sessions of removed hosts that were ended.
    pub sessions_closed: usize,
    /// Settings that differ in the file but keep their running value
    /// until a restart (`[database]`, `[c2s] listen`…).
    pub needs_restart: Vec<String>,
}

impl Report {
    /// The lines `ctl reload` prints and the log records.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec!["reloaded".to_string()];
        if !self.hosts_added.is_empty() {
            out.push(format!("hosts added: {}", self.hosts_added.join(", ")));
        }
        if !self.hosts_removed.is_empty() {
            out.push(format!(
                "hosts removed: {} ({} session(s) ended)",
                self.hosts_removed.join(", "),
                self.sessions_closed
            ));
        }
        if !self.needs_restart.is_empty() {
            out.push(format!(
                "changed but kept until a restart: {}",
                self.needs_restart.join(", ")
            ));
        }
        out
    }
}

/// Reads the file the server was started with again (the built-in
/// defaults when it was started without one) and applies it.
pub async fn reload(server: &Arc<Server>) -> Result<Report, String> {
    let fresh = match server.config_path() {
        Some(path) => {
            let read = tokio::task::spawn_blocking(move || Config::load(&path))
                .await
                .map_err(|e| e.to_string())?;
            read.map_err(|e| e.to_string().trim_end().replace('\n', "; "))?
        }
        None => Config::default(),
    };
    apply(server, fresh).await
}

/// Puts `fresh` in force as far as it can change while running (see the
/// module's comment); nothing changes when it cannot be applied.
pub async fn apply(server: &Arc<Server>, fresh: Config) -> Result<Report, String> {
    let _one_at_a_time = server.reloading.lock().await;
    let running = server.config();
    let (next, needs_restart) = merge(&running, fresh);
    // Everything that can fail is built before anything is replaced.
    let routes = Server::route_table(&next, &server.features)?;
    let next_for_tls = next.clone();
    let services = server.features.service_domains(&next);
    let tls = tokio::task::spawn_blocking(move || {
        let services = services.into_iter().map(|(d, _)| d).collect();
        crate::net::tls_set::TlsSet::build(&next_for_tls, services)
    })
    .await
    .map_err(|e| e.to_string())??;

    let old_hosts = running.domains();
    let new_hosts = next.domains();
    let mut report = Report {
        hosts_added: new_hosts
            .iter()
            .filter(|h| !old_hosts.contains(h))
            .cloned()
            .collect(),
        hosts_removed: old_hosts
            .iter()
            .filter(|h| !new_hosts.contains(h))
            .cloned()
            .collect(),
        needs_restart,
        ..Report::default()
    };
    set_caps(server, &next);
    server.install(next, routes, tls);
    // After the switch, so a removed host's client cannot bind again
    // between the two.
    for jid in server.sessions.all() {
        if report
            .hosts_removed
            .iter()
            .any(|h| h.as_str() == jid.domain().as_str())
        {
            server.sessions.close(&jid, StreamErrorCondition::HostGone);
            report.sessions_closed += 1;
        }
    }
    tracing::info!(
        added = ?report.hosts_added,
        removed = ?report.hosts_removed,
        sessions_closed = report.sessions_closed,
        needs_restart = ?report.needs_restart,
        "configuration reloaded"
    );
    Ok(report)
}

/// The configuration to run: `running` with the parts of `fresh` that may
/// change while running; and the settings that differ in `fresh` but
/// keep their running value.
fn merge(running: &Config, fresh: Config) -> (Config, Vec<String>) {
    let mut next = running.clone();
    next.host = fresh.host.clone();
    next.tls = crate::config::TlsConfig {
        handshake_threads: running.tls.handshake_threads,
        handshake_nice: running.tls.handshake_nice,
        ..fresh.tls.clone()
    };
    next.contact = fresh.contact.clone();
    next.limits = crate::config::Limits {
        hashing_workers: running.limits.hashing_workers,
        hashing_queue: running.limits.hashing_queue,
        ..fresh.limits.clone()
    };
    next.admin = crate::config::AdminConfig {
        socket: running.admin.socket.clone(),
        ..fresh.admin.clone()
    };
    next.c2s = crate::config::C2sConfig {
        listen: running.c2s.listen.clone(),
        listen_tls: running.c2s.listen_tls.clone(),
        ..fresh.c2s.clone()
    };
    // Read per command: nothing to rebuild.
    next.invite = fresh.invite.clone();
    next.s2s = crate::config::S2sConfig {
        listen: running.s2s.listen.clone(),
        listen_tls: running.s2s.listen_tls.clone(),
        dialback_secret: running.s2s.dialback_secret.clone(),
        ..fresh.s2s.clone()
    };

    // What still differs between `next` and `fresh` is what the running
    // server keeps. Sections are compared by their debug form: every
    // section derives Debug, and a field added later is covered without
    // a list to maintain here.
    let mut needs_restart = Vec::new();
    let mut differs = |name: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        if format!("{a:?}") != format!("{b:?}") {
            needs_restart.push(name.to_string());
        }
    };
    differs("log_level", &next.log_level, &fresh.log_level);
    differs("[database]", &next.database, &fresh.database);
    differs("[c2s] listen", &next.c2s.listen, &fresh.c2s.listen);
    differs(
        "[c2s] listen_tls",
        &next.c2s.listen_tls,
        &fresh.c2s.listen_tls,
    );
    differs("[s2s] listen", &next.s2s.listen, &fresh.s2s.listen);
    differs(
        "[s2s] listen_tls",
        &next.s2s.listen_tls,
        &fresh.s2s.listen_tls,
    );
    differs(
        "[s2s] dialback_secret",
        &next.s2s.dialback_secret,
        &fresh.s2s.dialback_secret,
    );
    differs("[admin] socket", &next.admin.socket, &fresh.admin.socket);
    differs(
        "[tls] handshake_threads",
        &next.tls.handshake_threads,
        &fresh.tls.handshake_threads,
    );
    differs(
        "[tls] handshake_nice",
        &next.tls.handshake_nice,
        &fresh.tls.handshake_nice,
    );
    differs(
        "[limits] hashing_workers",
        &next.limits.hashing_workers,
        &fresh.limits.hashing_workers,
    );
    differs(
        "[limits] hashing_queue",
        &next.limits.hashing_queue,
        &fresh.limits.hashing_queue,
    );
    differs("[[component]]", &next.component, &fresh.component);
    differs(
        "[component_listener]",
        &next.component_listener,
        &fresh.component_listener,
    );
    differs(
        "[stream_management]",
        &next.stream_management,
        &fresh.stream_management,
    );
    differs("[csi]", &next.csi, &fresh.csi);
    differs("[push]", &next.push, &fresh.push);
    differs("[sasl2]", &next.sasl2, &fresh.sasl2);
    differs("[pep]", &next.pep, &fresh.pep);
    differs("[mam]", &next.mam, &fresh.mam);
    differs("[muc]", &next.muc, &fresh.muc);
    differs("[http]", &next.http, &fresh.http);
    differs(
        "[[external_service]]",
        &next.external_service,
        &fresh.external_service,
    );
    differs("[upload]", &next.upload, &fresh.upload);
    differs("[metrics]", &next.metrics, &fresh.metrics);
    // A node joins with its id and Redis at start (`cluster::Cluster::join`).
    differs("[cluster]", &next.cluster, &fresh.cluster);
    (next, needs_restart)
}

/// Caps held outside the configuration (counters with their limits).
fn set_caps(server: &Server, config: &Config) {
    let window = Duration::from_secs(config.limits.auth_failure_window);
    server
        .auth_failures_by_ip
        .set_caps(config.limits.auth_failures_per_ip, window);
    server
        .auth_failures_by_account
        .set_caps(config.limits.auth_failures_per_account, window);
    server
        .component_failures_by_ip
        .set_caps(config.limits.component_failures_per_ip, window);
    server.connections.set_caps(
        config.c2s.max_connections,
        config.c2s.max_connections_per_ip,
    );
    server.s2s_connections.set_caps(
        config.s2s.max_connections,
        config.s2s.max_connections_per_ip,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_keep_their_running_values() {
        let running = Config::default();
        let mut fresh = Config::default();
        fresh.c2s.listen = vec!["127.0.0.1:1".parse().unwrap()];
        fresh.c2s.max_connections = 7;
        fresh.limits.hashing_workers = running.limits.hashing_workers + 1;
        fresh.limits.max_stanza_size = 1234;
        fresh.admin.admins = vec!["boss@localhost".into()];
        let (next, restart) = merge(&running, fresh);
        assert_eq!(next.c2s.listen, running.c2s.listen);
        assert_eq!(next.c2s.max_connections, 7);
        assert_eq!(next.limits.hashing_workers, running.limits.hashing_workers);
        assert_eq!(next.limits.max_stanza_size, 1234);
        assert_eq!(next.admin.admins, vec!["boss@localhost".to_string()]);
        assert_eq!(
            restart,
            vec![
                "[c2s] listen".to_string(),
                "[limits] hashing_workers".to_string()
            ]
        );
    }

    #[test]
    fn an_unchanged_file_needs_no_restart() {
        let (_, restart) = merge(&Config::default(), Config::default());
        assert!(restart.is_empty(), "{restart:?}");
    }
}
