//! The HTTP side of the server (issue #14): one listener kind, plain or
//! HTTPS (rustls with the hosts' certificates by SNI, as direct-TLS c2s),
//! serving
//! - XMPP over WebSocket (RFC 7395) at `/xmpp-websocket` ([`websocket`]),
//! - BOSH (XEP-0124, XEP-0206) at `/http-bind` ([`bosh`]),
//! - connection discovery (XEP-0156) at `/.well-known/host-meta` and
//!   `/.well-known/host-meta.json` ([`host_meta`]),
//! - Prometheus metrics at `/metrics` ([`metrics`]).
//!
//! hyper parses HTTP and axum routes; each accepted connection is served
//! here so that it can be bounded (`[http] max_connections`, header size
//! and time) and so that handlers know where it came from and whether it
//! is encrypted ([`ConnInfo`]).

pub mod bosh;
pub mod chat;
pub mod host_meta;
pub mod invite;
pub mod metrics;
pub mod self_check;
pub mod upload;
pub mod websocket;

/// XEPs the HTTP side implements (xep/waxwing.doap lists them): BOSH
/// (XEP-0124) with XMPP over it (XEP-0206), XEP-0156 connection
/// discovery. (XMPP over WebSocket is RFC 7395, not a XEP.)
pub const XEPS: &[u16] = &[124, 156, 206];

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::server::Server;

/// What every handler shares.
pub struct Web {
    pub server: Arc<Server>,
    /// WebSocket sessions outlive the HTTP exchange that upgraded them
    /// (the library runs them on a task of its own): each holds a token of
    /// this tracker, so shutdown waits for them as for TCP sessions.
    pub tracker: TaskTracker,
    /// BOSH sessions by sid.
    pub bosh: Arc<bosh::Sessions>,
}

/// The HTTP connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// HTTPS, or plain HTTP trusted by `[http] plain_is_secure`.
    pub secure: bool,
    /// The connection itself is TLS (the scheme clients should use).
    pub tls: bool,
}

/// The routes.
fn router(server: &Arc<Server>, tracker: &TaskTracker) -> Router {
    let web = Arc::new(Web {
        server: server.clone(),
        tracker: tracker.clone(),
        bosh: Arc::default(),
    });
    let mut routes = Router::new();
    if !server.config().http.chat_dir.is_empty() {
        routes = routes
            .route("/chat", get(chat::to_index))
            .route("/chat/", get(chat::serve))
            .route("/chat/{*path}", get(chat::serve));
    }
    routes
        .route("/xmpp-websocket", get(websocket::upgrade))
        .route("/http-bind", post(bosh::request).options(bosh::preflight))
        .route("/invite/{token}", get(invite::show).post(invite::register))
        .route("/.well-known/host-meta", get(host_meta::xrd))
        .route("/.well-known/host-meta.json", get(host_meta::json))
        .route("/metrics", get(metrics::scrape))
        .route(
            &format!("/upload/{}/{{nonce}}", self_check::SEGMENT),
            get(self_check::answer),
        )
        .route(
            "/upload/{token}/{name}",
            get(upload::get).put(upload::put).options(upload::preflight),
        )
        .with_state(web)
}

/// Bound addresses of the HTTP listeners.
#[derive(Debug, Default)]
pub struct Bound {
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
}

/// Binds `[http] listen` and `listen_tls` and serves them until shutdown.
pub async fn start(server: &Arc<Server>, tracker: &TaskTracker) -> Result<Bound, String> {
    let config = &server.config().http;
    let mut bound = Bound::default();
    if config.listen.is_empty() && config.listen_tls.is_empty() {
        return Ok(bound);
    }
    let chat_dir = &config.chat_dir;
    if !chat_dir.is_empty() && !std::path::Path::new(chat_dir).is_dir() {
        tracing::warn!(
            chat_dir,
            "[http] chat_dir is not a directory: /chat/ will answer 404"
        );
    }
    let router = router(server, tracker);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    for (addrs, tls, out) in [
        (&config.listen, false, &mut bound.http),
        (&config.listen_tls, true, &mut bound.https),
    ] {
        for addr in addrs {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            let kind = if tls { "https" } else { "http" };
            tracing::info!(addr = %local, kind, "listening");
            out.push(local);
            tracker.spawn(accept(
                server.clone(),
                listener,
                tls,
                router.clone(),
                slots.clone(),
                tracker.clone(),
            ));
        }
    }
    if server.config().upload.self_check {
        tracker.spawn(self_check::run(server.clone()));
    }
    Ok(bound)
}

async fn accept(
    server: Arc<Server>,
    listener: TcpListener,
    // HTTPS (its configuration is taken per connection, so a reload's
    // certificates serve the next handshake) or plain HTTP.
    tls: bool,
    router: Router,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = server.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the cap: closed at once, before any byte is read.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "http connection refused: connection limit reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (server, router) = (server.clone(), router.clone());
        tracker.spawn(async move {
            let _permit = permit;
            match tls.then(|| server.tls().https.clone()) {
                None => {
                    let info = ConnInfo {
                        peer,
                        secure: plain_is_secure(&server, &peer),
                        tls: false,
                    };
                    serve_connection(&server, tcp, info, router).await
                }
                Some(tls) => {
                    let timeout = Duration::from_secs(server.config().http.header_timeout);
                    let handshake = crate::net::handshakes::accept(tls, tcp);
                    let Ok(Ok(stream)) = tokio::time::timeout(timeout, handshake).await else {
                        return;
                    };
                    let info = ConnInfo {
                        peer,
                        secure: true,
                        tls: true,
                    };
                    serve_connection(&server, stream, info, router).await
                }
            }
        });
    }
}

/// Does a plain-HTTP connection from `peer` count as encrypted?
fn plain_is_secure(server: &Server, peer: &SocketAddr) -> bool {
    match server.config().http.plain_is_secure.as_str() {
        "always" => true,
        "loopback" => peer.ip().is_loopback(),
        _ => false,
    }
}

/// Serves one HTTP/1.1 connection (with upgrades, for WebSocket) until it
/// ends or the server shuts down.
async fn serve_connection<I>(server: &Server, io: I, info: ConnInfo, router: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &server.config().http;
    let service = router.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(info);
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_timeout))
        .max_buf_size(config.max_header_bytes);
    let conn = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %info.peer, error = %e, "http connection ended");
            }
        }
        _ = server.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
