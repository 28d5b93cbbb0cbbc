//! Connection discovery (XEP-0156 §3): `/.well-known/host-meta` (XRD)
//! and `/.well-known/host-meta.json` (JRD) list where a web client
//! connects. Served with `Access-Control-Allow-Origin: *`, since the page
//! asking is usually on another origin.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::{ConnInfo, Web};

pub const REL_WEBSOCKET: &str = "urn:xmpp:alt-connections:websocket";
pub const REL_BOSH: &str = "urn:xmpp:alt-connections:xbosh";

/// The BOSH endpoint's URL: as the WebSocket one's, with http(s).
fn bosh_url(web: &Web, conn: &ConnInfo, headers: &HeaderMap) -> Option<String> {
    let ws = websocket_url(web, conn, headers)?;
    let base = ws.strip_suffix("/xmpp-websocket")?;
    let http = base
        .replacen("wss://", "https://", 1)
        .replacen("ws://", "http://", 1);
    Some(format!("{http}/http-bind"))
}

/// The endpoints, as (rel, href).
fn links(web: &Web, conn: &ConnInfo, headers: &HeaderMap) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(url) = websocket_url(web, conn, headers) {
        out.push((REL_WEBSOCKET, url));
    }
    if let Some(url) = bosh_url(web, conn, headers) {
        out.push((REL_BOSH, url));
    }
    out
}

/// The WebSocket endpoint's URL: from `[http] public_url`, else from the
/// request's Host header and the connection's scheme.
pub(super) fn websocket_url(web: &Web, conn: &ConnInfo, headers: &HeaderMap) -> Option<String> {
    let public = &web.server.config().http.public_url;
    if !public.is_empty() {
        let ws = public
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        return Some(format!("{ws}/xmpp-websocket"));
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    // A Host header is a host and a port, nothing that could end the URL
    // or the attribute it goes into.
    let sane = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !sane {
        return None;
    }
    let scheme = if conn.tls { "wss" } else { "ws" };
    Some(format!("{scheme}://{host}/xmpp-websocket"))
}

fn with_cors(mut r: Response, content_type: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

pub async fn xrd(
    State(web): State<Arc<Web>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let mut body = String::from(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    for (rel, url) in links(&web, &conn, &headers) {
        body.push_str(&format!("  <Link rel='{rel}' href='{url}'/>\n"));
    }
    body.push_str("</XRD>\n");
    with_cors(body.into_response(), "application/xrd+xml")
}

pub async fn json(
    State(web): State<Arc<Web>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let links: Vec<String> = links(&web, &conn, &headers)
        .into_iter()
        .map(|(rel, url)| format!("{{\"rel\":\"{rel}\",\"href\":\"{url}\"}}"))
        .collect();
    let body = format!("{{\"links\":[{}]}}\n", links.join(","));
    with_cors(body.into_response(), "application/json")
}
