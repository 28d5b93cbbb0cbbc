//! The admin channel: a Unix domain socket through which `waxwing ctl`
//! asks the running server what it holds (sessions, components, s2s
//! connections, counters).
//!
//! Protocol: the client writes one request line (UTF-8, at most
//! `MAX_REQUEST` bytes, ended by `\n`), e.g. `s2s list`; the server answers
//! and closes. The answer's first line is `ok` or `error <message>`; after
//! `ok` comes one line per item, its fields separated by tabs (a field
//! never holds a tab or a line break; an empty one is `-`). `Request` lists
//! the commands and the columns of each.
//!
//! The channel has no authentication of its own: the socket file is made
//! mode 0600, so only the server's user (and root) can connect, and each
//! connection's peer credentials are checked against the same rule, which
//! also covers the instant between `bind` and `chmod`. A Unix socket rather
//! than a TCP port because the operating system then does the access
//! control, nothing is reachable from the network, and no secret has to be
//! configured on both sides.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::task::TaskTracker;

use crate::server::Server;

/// Longest request line, in bytes, without its `\n`.
pub const MAX_REQUEST: usize = 1024;
/// How long a client has to send its request, and to take the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more are answered `error busy`.
const MAX_CLIENTS: usize = 16;

/// The commands the channel answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    S2sList,
    ComponentsList,
    SessionsList,
    Stats,
    /// The nodes of the cluster (asks Redis, so answered apart).
    ClusterStatus,
}

impl Request {
    pub const ALL: [Request; 5] = [
        Request::S2sList,
        Request::ComponentsList,
        Request::SessionsList,
        Request::Stats,
        Request::ClusterStatus,
    ];

    /// The request line (without `\n`).
    pub fn line(self) -> &'static str {
        match self {
            Request::S2sList => "s2s list",
            Request::ComponentsList => "components list",
            Request::SessionsList => "sessions list",
            Request::Stats => "stats",
            Request::ClusterStatus => "cluster status",
        }
    }

    /// The fields of each answer line, as `ctl` titles them.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Request::S2sList => &[
                "DIRECTION",
                "PEER",
                "LOCAL",
                "REMOTE",
                "AUTH",
                "TLS",
                "BIDI",
                "AGE(s)",
            ],
            Request::ComponentsList => &["DOMAIN", "CONNECTED", "CONN", "PEER", "AGE(s)"],
            Request::SessionsList => &["JID", "CONN", "AVAILABLE", "PRIORITY", "AGE(s)"],
            Request::Stats => &["KEY", "VALUE"],
            Request::ClusterStatus => &["NODE", "ALIVE", "SESSIONS", "ROOMS"],
        }
    }

    /// Parses a request line; words may be separated by any whitespace.
    pub fn parse(line: &str) -> Option<Request> {
        let words: Vec<&str> = line.split_whitespace().collect();
        Request::ALL.into_iter().find(|r| {
            r.line()
                .split(' ')
                .eq(words.iter().map(|w| w.to_ascii_lowercase()))
        })
    }
}

/// The answer lines of `request` (without the `ok` line), from the
/// server's state now.
pub fn answer(server: &Server, request: Request) -> Vec<Vec<String>> {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    match request {
        Request::S2sList => server
            .s2s_links
            .list()
            .into_iter()
            .map(|l| {
                vec![
                    l.direction.as_str().to_string(),
                    l.peer.map(|p| p.to_string()).unwrap_or_default(),
                    l.local.clone(),
                    l.remote.join(","),
                    l.auth.as_str().to_string(),
                    yes_no(l.tls),
                    yes_no(l.bidi),
                    l.age_secs().to_string(),
                ]
            })
            .collect(),
        Request::ComponentsList => server
            .components
            .status()
            .into_iter()
            .map(|c| match c.connection {
                Some((id, peer, age)) => vec![
                    c.domain,
                    yes_no(true),
                    id.to_string(),
                    peer.map(|p| p.to_string()).unwrap_or_default(),
                    age.to_string(),
                ],
                None => vec![
                    c.domain,
                    yes_no(false),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
            })
            .collect(),
        Request::SessionsList => server
            .sessions
            .list()
            .into_iter()
            .map(|s| {
                vec![
                    s.jid.to_string(),
                    s.session_id.to_string(),
                    yes_no(s.available),
                    s.priority.to_string(),
                    s.age_secs.to_string(),
                ]
            })
            .collect(),
        // Answered by `cluster_status` (it waits on Redis); never here.
        Request::ClusterStatus => Vec::new(),
        Request::Stats => {
            let (inbound, outbound) = server.s2s_links.count_by_direction();
            let (external, dialback) = server.s2s.authenticated();
            [
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("uptime_seconds", server.uptime().as_secs().to_string()),
                ("c2s_sessions", server.sessions.count().to_string()),
                (
                    "c2s_sessions_waiting_resumption",
                    server
                        .features
                        .get::<crate::modules::stream_management::StreamManagementFeature>()
                        .map_or(0, |f| f.parked())
                        .to_string(),
                ),
                ("s2s_connections_in", inbound.to_string()),
                ("s2s_connections_out", outbound.to_string()),
                ("s2s_outgoing_streams", server.s2s.count().to_string()),
                ("s2s_authenticated_external", external.to_string()),
                ("s2s_authenticated_dialback", dialback.to_string()),
                (
                    "components_connected",
                    server.components.count().to_string(),
                ),
                (
                    "components_configured",
                    server.components.domains().len().to_string(),
                ),
            ]
            .into_iter()
            .chain(push_stats(server))
            .chain(upload_stats(server))
            .map(|(k, v)| vec![k.to_string(), v])
            .collect()
        }
    }
}

/// Push notifications' counters (XEP-0357), when the feature runs: what
/// an operator looks at when users say notifications stopped.
fn push_stats(server: &Server) -> Vec<(&'static str, String)> {
    let Some(p) = server.features.get::<crate::modules::push::Push>() else {
        return Vec::new();
    };
    let p = p.publisher();
    vec![
        ("push_published", p.published().to_string()),
        ("push_failed", p.failed().to_string()),
        ("push_registrations_removed", p.removed().to_string()),
        ("push_dropped", p.dropped().to_string()),
    ]
}

/// The upload URL self-check's outcome (`web::self_check`), when the
/// upload service runs: the first thing to look at when photos fail.
fn upload_stats(server: &Server) -> Vec<(&'static str, String)> {
    match server.features.get::<crate::modules::upload::Upload>() {
        Some(u) if server.config().upload.self_check => {
            vec![("upload_url_check", u.self_check().result().to_string())]
        }
        _ => Vec::new(),
    }
}

/// Makes a value safe as one field: no tab, line break or other control
/// character; `-` when empty.
fn field(s: &str) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The whole answer as sent.
fn encode(result: Result<Vec<Vec<String>>, String>) -> String {
    match result {
        Ok(rows) => {
            let mut out = String::from("ok\n");
            for row in rows {
                let fields: Vec<String> = row.iter().map(|f| field(f)).collect();
                out.push_str(&fields.join("\t"));
                out.push('\n');
            }
            out
        }
        Err(msg) => format!("error {}\n", field(&msg)),
    }
}

/// `reload`: the configuration file read again (`crate::reload`); one
/// line per thing done.
async fn reload(server: &Server) -> Result<Vec<Vec<String>>, String> {
    let Some(server) = server.arc() else {
        return Err("shutting down".into());
    };
    let report = crate::reload::reload(&server).await?;
    Ok(report.lines().into_iter().map(|l| vec![l]).collect())
}

/// What `handle` answers to one request line.
fn handle(server: &Server, line: &str) -> Result<Vec<Vec<String>>, String> {
    if line.trim().is_empty() {
        return Err("empty request".into());
    }
    // `sessions close JID/RESOURCE`: ends one session (a client revoked
    // from `ctl` while the server runs).
    if let Some(jid) = line.trim().strip_prefix("sessions close ") {
        let jid = jid::FullJid::new(jid.trim()).map_err(|e| format!("bad JID: {e}"))?;
        let closed = server.sessions.is_bound(&jid);
        // Live or waiting for resumption, the session ends (ending a
        // parked one re-routes its stanzas, which is done in a task).
        if closed {
            if let Some(server) = server.arc() {
                let tasks = server.background.clone();
                tasks.spawn(async move {
                    crate::modules::clients::end_session(&server, &jid).await;
                });
            }
        }
        return Ok(vec![vec![
            if closed { "closed" } else { "not bound" }.into()
        ]]);
    }
    match Request::parse(line) {
        Some(r) => Ok(answer(server, r)),
        None => {
            let known: Vec<&str> = Request::ALL.iter().map(|r| r.line()).collect();
            let shown: String = line.chars().take(64).collect();
            Err(format!(
                "unknown command '{shown}' (known: {})",
                known.join(", ")
            ))
        }
    }
}

/// `cluster status`: every registered node, alive or not, with its
/// session count and the chat rooms it holds the lease of.
async fn cluster_status(server: &Server) -> Result<Vec<Vec<String>>, String> {
    let Some(cluster) = server.cluster.get() else {
        return Err("this server is not in a cluster (no [cluster] section)".into());
    };
    let nodes = cluster
        .status(server)
        .await
        .map_err(|e| format!("Redis: {e}"))?;
    Ok(nodes
        .into_iter()
        .map(|n| {
            let alive = if n.alive { "yes" } else { "no" };
            vec![
                n.node,
                alive.into(),
                n.sessions.to_string(),
                n.rooms.to_string(),
            ]
        })
        .collect())
}

/// Why the admin socket could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// Another process answers on the socket: most likely a second server
    /// started with the same configuration and data.
    InUse(String),
    /// Anything else (directory missing and not creatable, a file of
    /// another kind in the way, permissions).
    Failed(String),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::InUse(m) | BindError::Failed(m) => f.write_str(m),
        }
    }
}

/// The bound admin socket; the file goes when this is dropped or `remove`d
/// (only if it is still the one this server made).
#[derive(Debug)]
pub struct AdminSocket {
    path: PathBuf,
    /// (device, inode) of the socket file, so a file that replaced ours is
    /// left alone.
    identity: (u64, u64),
}

impl AdminSocket {
    /// Binds `path` and starts accepting on `tracker`, until the server's
    /// shutdown. A stale socket file (nobody answers) is replaced; a live
    /// one is `BindError::InUse`.
    pub async fn bind(
        server: &Arc<Server>,
        path: &Path,
        tracker: &TaskTracker,
    ) -> Result<AdminSocket, BindError> {
        let shown = path.display();
        let failed = |what: &str, e: std::io::Error| {
            BindError::Failed(format!("admin socket {shown}: {what}: {e}"))
        };
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("cannot inspect", e)),
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path).await {
                Ok(_) => {
                    return Err(BindError::InUse(format!(
                        "another server answers on the admin socket {shown}: stop it first, \
                         or give this server its own [admin] socket (and its own data)"
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(|e| failed("cannot remove stale", e))?;
                    tracing::info!(path = %shown, "removed a stale admin socket");
                }
                Err(e) => return Err(failed("cannot check the existing socket", e)),
            },
            Ok(_) => {
                return Err(BindError::Failed(format!(
                    "admin socket {shown}: a file that is not a socket is in the way"
                )))
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| failed("cannot create its directory", e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| failed("cannot bind", e))?;
        // Owner only: the channel is unauthenticated, so these permissions
        // are its access control (see the module comment).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| failed("cannot set its mode to 0600", e))?;
        let meta = std::fs::metadata(path).map_err(|e| failed("cannot inspect", e))?;
        let socket = AdminSocket {
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        };
        tracing::info!(path = %shown, "admin socket listening");
        tracker.spawn(accept_loop(
            server.clone(),
            listener,
            meta.uid(),
            tracker.clone(),
        ));
        Ok(socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still ours.
    pub fn remove(&self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.identity);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the admin socket");
            }
        }
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.remove()
    }
}

/// Accepts admin connections until shutdown, one task each, from the
/// socket's owner (`owner`, the server's user) or root only.
async fn accept_loop(
    server: Arc<Server>,
    listener: UnixListener,
    owner: u32,
    tracker: TaskTracker,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let accepted = tokio::select! {
            _ = server.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == owner || c.uid() == 0 => {}
            Ok(c) => {
                tracing::warn!(
                    uid = c.uid(),
                    "admin connection refused: not the server's user"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin connection refused: no peer credentials");
                continue;
            }
        }
        let server = server.clone();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tracker.spawn(async move {
                    let _permit = permit;
                    serve(&server, stream).await
                });
            }
            Err(_) => {
                tracker.spawn(async move {
                    let busy = encode(Err("busy: too many admin connections".into()));
                    let _ =
                        tokio::time::timeout(IO_TIMEOUT, stream.write_all(busy.as_bytes())).await;
                });
            }
        }
    }
}

/// Reads one request, writes the answer, closes.
async fn serve(server: &Server, mut stream: UnixStream) {
    let request = tokio::select! {
        _ = server.shutdown.cancelled() => return,
        r = tokio::time::timeout(IO_TIMEOUT, read_request(&mut stream)) => r,
    };
    let result = match request {
        Err(_) => Err("timed out waiting for the request line".to_string()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(line)) => {
            // Requests that change the server (and may wait on storage)
            // first; the listings after.
            let result = if line.trim() == "reload" {
                reload(server).await
            } else if Request::parse(&line) == Some(Request::ClusterStatus) {
                cluster_status(server).await
            } else {
                match crate::modules::adhoc::ctl::answer(server, &line).await {
                    Some(r) => r,
                    None => handle(server, &line),
                }
            };
            tracing::debug!(request = %line.chars().take(64).collect::<String>(), ok = result.is_ok(), "admin request");
            result
        }
    };
    let answer = encode(result);
    let written = tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        // Closing with unread input (an overlong line) would reset the
        // connection, and the client could lose the answer: read what is
        // left, briefly and up to a bound, until the client closes.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut sink = [0u8; 512];
            let mut left: usize = 64 * 1024;
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }
}

/// The first line the client sends, without its `\n` (or all it sent
/// before closing its side).
async fn read_request(stream: &mut UnixStream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            break;
        }
        if buf.len() > MAX_REQUEST {
            break;
        }
    }
    if buf.len() > MAX_REQUEST {
        return Err(format!("request line longer than {MAX_REQUEST} bytes"));
    }
    let line = String::from_utf8(buf).map_err(|_| "the request is not UTF-8".to_string())?;
    Ok(line.trim_end_matches('\r').to_string())
}

/// Why `request` got no answer lines.
#[derive(Debug)]
pub enum CallError {
    /// Nothing listens at the path (no file, or a stale one).
    NoServer,
    /// The server answered `error …`.
    Server(String),
    /// Connecting, writing or reading failed otherwise.
    Io(String),
}

/// Client side: sends `request` to the server at `path`, returns the
/// answer lines, each split into its fields.
pub async fn request(path: &Path, request: &str) -> Result<Vec<Vec<String>>, CallError> {
    let io =
        |what: &str, e: std::io::Error| CallError::Io(format!("{what} {}: {e}", path.display()));
    let exchange = async {
        let mut stream = match UnixStream::connect(path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(CallError::NoServer)
            }
            Err(e) => return Err(io("cannot connect to", e)),
        };
        stream
            .write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(|e| io("cannot write to", e))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| io("cannot read from", e))?;
        Ok(answer)
    };
    let answer = tokio::time::timeout(IO_TIMEOUT * 2, exchange)
        .await
        .map_err(|_| CallError::Io(format!("no answer from {} in time", path.display())))??;
    let answer = String::from_utf8_lossy(&answer);
    let mut lines = answer.lines();
    match lines.next() {
        Some("ok") => Ok(lines
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()),
        Some(l) if l.starts_with("error ") => Err(CallError::Server(l["error ".len()..].into())),
        _ => Err(CallError::Io(format!(
            "unexpected answer from {}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_fields_are_safe() {
        for r in Request::ALL {
            assert_eq!(Request::parse(r.line()), Some(r));
        }
        assert_eq!(Request::parse("  S2S \t list "), Some(Request::S2sList));
        assert_eq!(Request::parse("s2s"), None);
        assert_eq!(Request::parse("s2s list extra"), None);
        assert_eq!(Request::parse(""), None);
        assert_eq!(
            encode(Ok(vec![vec!["a\tb".into(), String::new(), "c\nd".into()]])),
            "ok\na?b\t-\tc?d\n"
        );
        assert_eq!(encode(Err("bad\nthing".into())), "error bad?thing\n");
    }
}
