//! BOSH (XEP-0124, XMPP over it: XEP-0206) at `/http-bind`.
//!
//! Each POST carries one `<body/>`. Without a `sid` it creates a session:
//! a [`BoshStream`] running the one c2s driver (`net::c2s::serve`) on a
//! task of its own, admitted like a TCP client (`[c2s]` caps), tracked
//! like WebSocket sessions. With a `sid`, the request is handed to that
//! session's task through a bounded channel and the handler waits for the
//! response the session picks for it (see [`stream`]).
//!
//! Errors are terminal binding conditions in an HTTP 200 (`type='terminate'`,
//! XEP-0124 §17.2), not HTTP error codes: those are the legacy way
//! (§17.1) that non-legacy connection managers SHOULD NOT use, and BOSH
//! clients of today (Strophe, Converse.js) read the condition.

pub mod body;
pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use super::{ConnInfo, Web};
use crate::config::Config;
use crate::net::ConnectionSlot;
pub use stream::BoshStream;
use stream::{Incoming, Request, Terms};

/// The newest protocol version we speak (XEP-0124 1.11).
const VERSION: (u64, u64) = (1, 11);

/// The live sessions by sid: how a request finds its session's task.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, mpsc::Sender<Incoming>>>,
}

impl Sessions {
    fn get(&self, sid: &str) -> Option<mpsc::Sender<Incoming>> {
        self.lock().get(sid).cloned()
    }

    fn insert(&self, sid: String, tx: mpsc::Sender<Incoming>) {
        self.lock().insert(sid, tx);
    }

    /// Called as a session's stream is dropped.
    pub(super) fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    /// Sessions live now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Incoming>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Most bytes of one request body: `[http] bosh_max_body_bytes`, or by
/// default the stanza size bound plus room for the wrapper.
pub fn max_body_bytes(config: &Config) -> usize {
    match config.http.bosh_max_body_bytes {
        0 => config.limits.max_stanza_size + 8 * 1024,
        n => n,
    }
}

/// Headers every answer carries: a web client on another origin may
/// POST here (XEP-0156 points it at us).
fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

fn xml(body: Bytes) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    cors(r)
}

fn terminate(condition: &str) -> Response {
    xml(Bytes::from(body::terminate(Some(condition))))
}

pub async fn preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

/// Reads the request body up to `max` bytes; over it, what was read
/// (enough to find the wrapper's `sid`) and `false`.
async fn read_body(body: Body, max: usize) -> Result<(Bytes, bool), ()> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ())?;
        if buf.len() + chunk.len() > max {
            let room = max - buf.len();
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf.freeze(), false));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf.freeze(), true))
}

/// The `sid` of a body cut short, from its start tag if that much came.
fn sid_of_prefix(prefix: &[u8]) -> Option<String> {
    let end = prefix.iter().position(|&b| b == b'>')?;
    let mut head = prefix[..=end].to_vec();
    if head.ends_with(b"/>") {
        head.truncate(head.len() - 2);
    } else {
        head.pop();
    }
    head.extend_from_slice(b"/>");
    body::parse(&head).ok()?.attr("sid").map(String::from)
}

/// POST /http-bind.
pub async fn request(
    State(web): State<Arc<Web>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let max = max_body_bytes(&web.server.config());
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let (bytes, whole) = match read_body(body, max).await {
        Ok(r) => r,
        Err(()) => return terminate("bad-request"),
    };
    if !whole || declared.is_some_and(|n| n > max) {
        // The session the body names ends too: it broke the rules.
        if let Some(tx) = sid_of_prefix(&bytes).and_then(|sid| web.bosh.get(&sid)) {
            let (reply, answer) = oneshot::channel();
            if tx.try_send(Incoming::Oversized(reply)).is_ok() {
                if let Ok(r) = answer.await {
                    return xml(r);
                }
            }
        }
        return terminate("policy-violation");
    }
    let wrapper = match body::parse(&bytes) {
        Ok(w) => w,
        Err(why) => {
            tracing::debug!(peer = %conn.peer, why, "BOSH request refused");
            return terminate("bad-request");
        }
    };
    if wrapper.rid().is_none() {
        return terminate("bad-request");
    }
    match wrapper.attr("sid").map(String::from) {
        None => create(&web, conn, wrapper, bytes).await,
        Some(sid) => match web.bosh.get(&sid) {
            None => terminate("item-not-found"),
            Some(tx) => submit(&tx, wrapper, bytes).await,
        },
    }
}

/// Hands a request to its session and waits for the response chosen for
/// it (at most `wait` later, or when the session ends).
async fn submit(tx: &mpsc::Sender<Incoming>, wrapper: body::Wrapper, bytes: Bytes) -> Response {
    let (reply, answer) = oneshot::channel();
    let req = Request {
        wrapper,
        bytes,
        reply,
    };
    match tx.try_send(Incoming::Request(req)) {
        Ok(()) => {}
        // More requests in flight than the session allows (§11).
        Err(mpsc::error::TrySendError::Full(_)) => return terminate("policy-violation"),
        Err(mpsc::error::TrySendError::Closed(_)) => return terminate("item-not-found"),
    }
    match answer.await {
        Ok(r) => xml(r),
        // The session ended without answering: it is gone.
        Err(_) => terminate("item-not-found"),
    }
}

/// `ver` of the response: ours, or the client's if older (§7.1).
fn version(asked: Option<&str>) -> String {
    let parsed = asked.and_then(|v| {
        let (a, b) = v.split_once('.')?;
        Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
    });
    let (a, b) = match parsed {
        Some(v) if v < VERSION => v,
        _ => VERSION,
    };
    format!("{a}.{b}")
}

/// A 128-bit session id from the OS's CSPRNG: knowing it is what lets a
/// request into the session, so it must not be guessable.
fn new_sid() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Session creation (XEP-0124 §7, XEP-0206 §5).
async fn create(web: &Arc<Web>, conn: ConnInfo, wrapper: body::Wrapper, bytes: Bytes) -> Response {
    let server = &web.server;
    let http = &server.config().http;
    let Some(first_rid) = wrapper.rid() else {
        return terminate("bad-request");
    };
    let Some(slot) = ConnectionSlot::admit_client(server, conn.peer.ip()) else {
        return terminate("remote-connection-failed");
    };
    let hold = wrapper
        .number("hold")
        .unwrap_or(1)
        .min(http.bosh_max_hold as u64);
    // `requests` must exceed `hold` (§7.1): hold+1, within the cap.
    let requests = (hold + 1).min(http.bosh_max_requests as u64).max(1);
    let hold = hold.min(requests - 1);
    let wait = wrapper
        .number("wait")
        .unwrap_or(http.bosh_max_wait)
        .min(http.bosh_max_wait);
    let terms = Terms {
        sid: new_sid(),
        wait: Duration::from_secs(wait),
        hold: hold as usize,
        requests,
        inactivity: Duration::from_secs(http.bosh_inactivity),
        max_pause: http.bosh_max_pause,
        polling: Duration::from_secs(http.bosh_polling),
        ver: version(wrapper.attr("ver")),
        buffer_bytes: http.bosh_buffer_bytes,
    };
    // Room for every request the client may have open, and as many again
    // retransmitted; beyond that it is overactive.
    let (tx, rx) = mpsc::channel((2 * requests) as usize);
    let sid = terms.sid.clone();
    let stream = BoshStream::new(
        rx,
        terms,
        first_rid,
        web.bosh.clone(),
        server.config().limits.stream(),
        conn.secure,
        server.shutdown.clone(),
    );
    web.bosh.insert(sid.clone(), tx.clone());
    tracing::debug!(peer = %conn.peer, sid, "BOSH session created");
    let server = server.clone();
    web.tracker
        .spawn(async move { crate::net::c2s::serve(server, stream, conn.peer, false, slot).await });
    submit(&tx, wrapper, bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_sids() {
        assert_eq!(version(Some("1.6")), "1.6");
        assert_eq!(version(Some("1.11")), "1.11");
        assert_eq!(version(Some("2.0")), "1.11");
        assert_eq!(version(None), "1.11");
        let (a, b) = (new_sid(), new_sid());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn sid_from_a_cut_body() {
        assert_eq!(
            sid_of_prefix(b"<body rid='1' sid='abc' xmlns='http://jabber.org/protocol/httpbind'><message>xxxx").as_deref(),
            Some("abc")
        );
        assert_eq!(sid_of_prefix(b"<body rid='1' sid='ab"), None);
    }
}
