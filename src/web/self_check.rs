//! The upload URL self-check: at start, the server fetches a URL under the
//! upload prefix exactly as a client will build it (`modules::upload::
//! base_url`: `[http] public_url`, else the listener) and checks that the
//! answer comes from this very process.
//!
//! Why: upload URLs are handed out in slot answers and only used later by
//! the client. A wrong `public_url`, a reverse proxy that does not forward
//! `/upload/`, a name that resolves elsewhere or a certificate clients do
//! not trust all leave the server looking healthy while every photo fails
//! to send — the silent trap of other servers. Here the operator gets one
//! log line saying what is wrong (and `ctl stats` shows it,
//! `upload_url_check`).
//!
//! The probe is `GET <base>/upload/_self-check/<nonce>` with a fresh random
//! nonce, answered with a second random value only this process holds, so
//! an answer from anything else (another server with a catch-all page, a
//! stale proxy target) is told apart. It is retried with growing pauses for
//! `[upload] self_check_for` seconds, for a proxy that starts after us.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Web;
use crate::modules::upload::{base_url, Upload};
use crate::server::Server;

/// The path segment the probe uses under `/upload/` (slot tokens are hex,
/// so it cannot name a slot).
pub const SEGMENT: &str = "_self-check";

/// What the last probe found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UrlCheck {
    /// Not run (no HTTP listener, uploads off) or not finished yet.
    #[default]
    Pending,
    Passed,
    Failed(String),
}

impl std::fmt::Display for UrlCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlCheck::Pending => f.write_str("pending"),
            UrlCheck::Passed => f.write_str("ok"),
            UrlCheck::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// The probe's state, kept by the upload feature.
#[derive(Debug, Default)]
pub struct SelfCheck {
    /// The probe in flight: the nonce in its URL and the answer expected.
    probe: Mutex<Option<(String, String)>>,
    result: Mutex<UrlCheck>,
}

impl SelfCheck {
    pub fn result(&self) -> UrlCheck {
        self.result.lock().expect("not poisoned").clone()
    }

    fn set(&self, r: UrlCheck) {
        *self.result.lock().expect("not poisoned") = r;
    }

    /// The answer to a probe with `nonce`, when it is ours.
    fn answer_to(&self, nonce: &str) -> Option<String> {
        let probe = self.probe.lock().expect("not poisoned");
        probe
            .as_ref()
            .filter(|(n, _)| n == nonce)
            .map(|(_, answer)| answer.clone())
    }

    fn arm(&self, probe: Option<(String, String)>) {
        *self.probe.lock().expect("not poisoned") = probe;
    }
}

/// `GET /upload/_self-check/{nonce}`: the expected answer for the nonce of
/// our probe, 404 for anything else.
pub async fn answer(State(web): State<Arc<Web>>, Path(nonce): Path<String>) -> Response {
    match web
        .server
        .features
        .get::<Upload>()
        .and_then(|u| u.self_check().answer_to(&nonce))
    {
        Some(answer) => (StatusCode::OK, answer).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Runs the probe until it passes or the retries are spent; logs the outcome.
pub async fn run(server: Arc<Server>) {
    let Some(upload) = server.features.get::<Upload>() else {
        return;
    };
    let Some(base) = base_url(&server.config()) else {
        return;
    };
    let (nonce, expected) = (random_hex(), random_hex());
    upload
        .self_check()
        .arm(Some((nonce.clone(), expected.clone())));
    let url = format!("{}/upload/{SEGMENT}/{nonce}", base.trim_end_matches('/'));
    let give_up =
        tokio::time::Instant::now() + Duration::from_secs(server.config().upload.self_check_for);
    let mut pause = Duration::from_secs(1);
    let outcome = loop {
        let r = probe(&server, &url, &expected).await;
        let now = tokio::time::Instant::now();
        if r.is_ok() || now >= give_up {
            break r;
        }
        tracing::info!(base = %base, error = %r.as_ref().unwrap_err(),
            "upload URL self-check failed; trying again in {pause:?}");
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until((now + pause).min(give_up)) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    };
    upload.self_check().arm(None);
    match outcome {
        Ok(()) => {
            tracing::info!(base = %base, "upload URL self-check passed");
            upload.self_check().set(UrlCheck::Passed);
        }
        Err(why) => {
            tracing::error!(
                base = %base,
                "upload URL self-check failed: {why}; clients will be handed upload URLs \
                 they cannot use (check [http] public_url and any reverse proxy in front)"
            );
            upload.self_check().set(UrlCheck::Failed(why));
        }
    }
}

/// One attempt: Ok when the answer proves it came from this process.
async fn probe(server: &Server, url: &str, expected: &str) -> Result<(), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url}: the scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| format!("{url} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let timeout = Duration::from_secs(server.config().http.header_timeout.max(1));
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("connecting to {host}:{port} timed out"))?
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let (status, body) = if https {
        let tls = tls_connect(server, host, tcp, timeout).await?;
        get(tls, &uri, timeout).await?
    } else {
        get(tcp, &uri, timeout).await?
    };
    match status {
        StatusCode::OK if body == expected.as_bytes() => Ok(()),
        StatusCode::OK => Err(format!(
            "{url} was answered by something other than this server"
        )),
        s => Err(format!(
            "{url} answered {s}: the URL does not reach this server's HTTP listener"
        )),
    }
}

/// TLS as a client would do it: the system's roots (and `[s2s] ca_file`),
/// the URL's host name checked against the certificate.
async fn tls_connect(
    server: &Server,
    host: &str,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let roots = crate::net::tls::s2s_roots(&server.config().s2s.ca_file)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Err(_) => Err(format!("the TLS handshake with {host} timed out")),
        Ok(Err(e)) => Err(format!(
            "TLS with {host} failed ({e}): clients will refuse the upload URLs too"
        )),
        Ok(Ok(s)) => Ok(s),
    }
}

/// The most of an answer's body read (ours is 32 bytes).
const MAX_BODY: usize = 1024;

/// One GET over `io`; the status and (the start of) the body of the answer.
async fn get<I>(io: I, uri: &Uri, timeout: Duration) -> Result<(StatusCode, Vec<u8>), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let req = Request::get(path)
            .header(header::HOST, authority)
            .header(header::USER_AGENT, "waxwing-self-check")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = axum::body::to_bytes(Body::new(resp.into_body()), MAX_BODY)
            .await
            .unwrap_or_default();
        conn.abort();
        Ok::<_, String>((status, body.to_vec()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{uri} did not answer within {timeout:?}"))?
        .map_err(|e| format!("{uri}: {e}"))
}
