//! A bundled web chat at `/chat/` (`[http] chat_dir`): a directory holding
//! a browser client (Converse.js, or any other) is served as it is, except
//! that its HTML pages are templates in which the server fills in where to
//! connect:
//!
//! | placeholder           | value                                          |
//! |-----------------------|------------------------------------------------|
//! | `{{websocket_url}}`   | the RFC 7395 endpoint (`…/xmpp-websocket`)     |
//! | `{{bosh_url}}`        | the XEP-0206 endpoint (`…/http-bind`)          |
//! | `{{domain}}`          | the XMPP domain the page was asked for         |
//!
//! So one page works behind any name or proxy the operator puts in front:
//! the URLs come from `[http] public_url`, else from the request's Host,
//! as for connection discovery (`host_meta`). `contrib/chat/index.html` is
//! such a page for Converse.js.
//!
//! Static files go through tower-http's `ServeDir` (which refuses paths
//! leaving the directory); HTML pages are read here, under the same
//! rules, up to [`MAX_PAGE`] bytes.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use tower::ServiceExt;

use super::{ConnInfo, Web};

/// The largest HTML page filled in (read into memory to be filled in).
pub const MAX_PAGE: u64 = 1 << 20;

/// `/chat`: to the directory's index, so relative links resolve.
pub async fn to_index() -> Redirect {
    Redirect::permanent("/chat/")
}

/// `/chat/` and everything under it.
pub async fn serve(
    State(web): State<Arc<Web>>,
    Extension(conn): Extension<ConnInfo>,
    req: Request,
) -> Response {
    let dir = PathBuf::from(&web.server.config().http.chat_dir);
    let Some(rel) = req.uri().path().strip_prefix("/chat/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let rel = if rel.is_empty() || rel.ends_with('/') {
        format!("{rel}index.html")
    } else {
        rel.to_owned()
    };
    if rel.ends_with(".html") {
        return page(&web, &conn, req.headers(), &dir, &rel).await;
    }
    // Everything else, as it is: ServeDir sees the path below /chat.
    let (mut parts, body) = req.into_parts();
    let Ok(uri) = format!("/{rel}").parse::<Uri>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    parts.uri = uri;
    match tower_http::services::ServeDir::new(&dir)
        .oneshot(Request::from_parts(parts, body))
        .await
    {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    }
}

/// The path of `rel` inside `dir`, or None when it would leave it (`..`,
/// an absolute path, or a symbolic link pointing out).
async fn inside(dir: &Path, rel: &str) -> Option<PathBuf> {
    let rel = percent_decode(rel)?;
    let rel = Path::new(&rel);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let root = tokio::fs::canonicalize(dir).await.ok()?;
    let path = tokio::fs::canonicalize(root.join(rel)).await.ok()?;
    path.starts_with(&root).then_some(path)
}

/// `%XX` escapes of a URL path undone; None for broken ones or a NUL.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.contains('\0')).then_some(s)
}

/// An HTML page of the directory with the placeholders filled in.
async fn page(web: &Web, conn: &ConnInfo, headers: &HeaderMap, dir: &Path, rel: &str) -> Response {
    let Some(path) = inside(dir, rel).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() && m.len() <= MAX_PAGE => {}
        Ok(m) if m.is_file() => {
            tracing::warn!(path = %path.display(), "chat page larger than {MAX_PAGE} bytes");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        _ => return StatusCode::NOT_FOUND.into_response(),
    }
    let Ok(template) = tokio::fs::read_to_string(&path).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(websocket) = super::host_meta::websocket_url(web, conn, headers) else {
        return (StatusCode::BAD_REQUEST, "no usable Host header\n").into_response();
    };
    let bosh = websocket
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1)
        .replace("/xmpp-websocket", "/http-bind");
    let filled = template
        .replace("{{websocket_url}}", &escape(&websocket))
        .replace("{{bosh_url}}", &escape(&bosh))
        .replace("{{domain}}", &escape(&domain(web, headers)));
    let mut r = filled.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Filled in per request: never cached under another Host.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("Host"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The XMPP domain for the page: the Host's name when this server serves
/// it, else the first configured host.
fn domain(web: &Web, headers: &HeaderMap) -> String {
    let config = &web.server.config();
    let hosts = config.domains();
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| hosts.iter().any(|d| d == h))
        .or_else(|| hosts.into_iter().next())
        .unwrap_or_default()
}

/// Safe inside HTML text, attributes and JavaScript string literals.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\\' => out.push_str("&#92;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("%2e%2e/x").as_deref(), Some("../x"));
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("nul%00"), None);
    }

    #[tokio::test]
    async fn traversal_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let chat = d.path().join("chat");
        std::fs::create_dir(&chat).unwrap();
        std::fs::write(chat.join("index.html"), "x").unwrap();
        std::fs::write(d.path().join("secret.html"), "s").unwrap();
        assert!(inside(&chat, "index.html").await.is_some());
        assert!(inside(&chat, "../secret.html").await.is_none());
        assert!(inside(&chat, "%2e%2e/secret.html").await.is_none());
        assert!(inside(&chat, "/etc/passwd").await.is_none());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(d.path().join("secret.html"), chat.join("link.html"))
                .unwrap();
            assert!(inside(&chat, "link.html").await.is_none());
        }
    }

    #[test]
    fn values_cannot_break_out() {
        assert_eq!(escape("a'b\"<c>&\\"), "a&#39;b&quot;&lt;c&gt;&amp;&#92;");
    }
}
