//! The HTTP half of HTTP File Upload (XEP-0363; the slots are handed out by
//! `modules::upload`): `PUT /upload/<token>/<name>?e=<expiry>&s=<signature>`
//! writes the file, `GET` (and `HEAD`) serves it, `OPTIONS` answers CORS
//! preflights (web clients upload from another origin; Conversations
//! checks the headers too).
//!
//! Both directions stream: the PUT body goes to a temporary file chunk by
//! chunk and is counted against the slot's size as it arrives (one byte
//! more and it stops with 413), the GET reads the file in chunks, so memory
//! stays flat whatever the file's size.

use crate::modules::time::unix_now as now;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::Web;
use crate::modules::upload::{self, Upload};
use crate::server::Server;

#[derive(serde::Deserialize)]
pub struct Signed {
    e: Option<i64>,
    s: Option<String>,
}

/// A token is 32 lower-case hex digits; anything else names no file.
fn valid_token(t: &str) -> bool {
    t.len() == 32 && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn file_of(server: &Server, token: &str) -> PathBuf {
    PathBuf::from(&server.config().upload.dir).join(token)
}

/// CORS on every answer: uploads and downloads come from web pages of
/// other origins.
fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, PUT, OPTIONS"),
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

fn status(code: StatusCode, why: &'static str) -> Response {
    cors((code, why).into_response())
}

pub async fn preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

pub async fn put(
    State(web): State<Arc<Web>>,
    Path((token, name)): Path<(String, String)>,
    Query(signed): Query<Signed>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let server = &web.server;
    let Some(key) = server.features.get::<Upload>().and_then(Upload::key) else {
        return status(StatusCode::SERVICE_UNAVAILABLE, "uploads are not ready\n");
    };
    let (Some(expiry), Some(sig)) = (signed.e, signed.s) else {
        return status(StatusCode::FORBIDDEN, "unsigned\n");
    };
    if !valid_token(&token) || expiry < now() {
        return status(StatusCode::FORBIDDEN, "expired or unknown\n");
    }
    let slot = match server.store.upload_slot(&token).await {
        Ok(Some(s)) => s,
        Ok(None) => return status(StatusCode::FORBIDDEN, "expired or unknown\n"),
        Err(e) => {
            tracing::error!(error = %e, "upload: reading a slot");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "\n");
        }
    };
    if slot.filename != name
        || !upload::verify(
            key,
            &token,
            &name,
            slot.size,
            &slot.content_type,
            expiry,
            &sig,
        )
    {
        return status(StatusCode::FORBIDDEN, "bad signature\n");
    }
    if slot.done {
        return status(StatusCode::CONFLICT, "already uploaded\n");
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    match length {
        Some(n) if n > slot.size => {
            return status(StatusCode::PAYLOAD_TOO_LARGE, "larger than the slot\n")
        }
        Some(n) if n == slot.size => {}
        _ => {
            return status(
                StatusCode::BAD_REQUEST,
                "Content-Length must be the slot's size\n",
            )
        }
    }
    if !slot.content_type.is_empty() {
        let sent = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(upload::clean_content_type);
        if sent.as_deref() != Some(slot.content_type.as_str()) {
            return status(
                StatusCode::BAD_REQUEST,
                "Content-Type differs from the slot's\n",
            );
        }
    }
    let final_path = file_of(server, &token);
    let part = final_path.with_extension("part");
    match receive(body, &part, slot.size).await {
        Ok(()) => {}
        Err(r) => {
            let _ = tokio::fs::remove_file(&part).await;
            return r;
        }
    }
    if let Err(e) = tokio::fs::rename(&part, &final_path).await {
        tracing::error!(error = %e, "upload: storing a file");
        let _ = tokio::fs::remove_file(&part).await;
        return status(StatusCode::INTERNAL_SERVER_ERROR, "\n");
    }
    match server.store.upload_done(&token).await {
        Ok(true) => status(StatusCode::CREATED, ""),
        Ok(false) => status(StatusCode::CONFLICT, "already uploaded\n"),
        Err(e) => {
            tracing::error!(error = %e, "upload: marking a slot done");
            status(StatusCode::INTERNAL_SERVER_ERROR, "\n")
        }
    }
}

/// Streams `body` into `path`, refusing more than `size` bytes and fewer.
async fn receive(body: Body, path: &std::path::Path, size: i64) -> Result<(), Response> {
    let internal = |e: std::io::Error| {
        tracing::error!(error = %e, "upload: writing a file");
        status(StatusCode::INTERNAL_SERVER_ERROR, "\n")
    };
    // Written through a 1 MiB buffer: tokio's file writes each go to a
    // blocking thread, so small body frames would cost one hop each.
    let file = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut got: i64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| status(StatusCode::BAD_REQUEST, "the upload broke off\n"))?;
        got += chunk.len() as i64;
        if got > size {
            return Err(status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "more bytes than the slot\n",
            ));
        }
        file.write_all(&chunk).await.map_err(internal)?;
    }
    if got != size {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "fewer bytes than the slot\n",
        ));
    }
    file.flush().await.map_err(internal)?;
    file.get_ref().sync_all().await.map_err(internal)?;
    Ok(())
}

pub async fn get(
    State(web): State<Arc<Web>>,
    method: Method,
    Path((token, name)): Path<(String, String)>,
) -> Response {
    let server = &web.server;
    if !valid_token(&token) {
        return status(StatusCode::NOT_FOUND, "\n");
    }
    let slot = match server.store.upload_slot(&token).await {
        Ok(Some(s)) if s.done && s.filename == name => s,
        Ok(_) => return status(StatusCode::NOT_FOUND, "\n"),
        Err(e) => {
            tracing::error!(error = %e, "upload: reading a slot");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "\n");
        }
    };
    let file = match tokio::fs::File::open(file_of(server, &token)).await {
        Ok(f) => f,
        Err(_) => return status(StatusCode::NOT_FOUND, "\n"),
    };
    let ctype = if slot.content_type.is_empty() {
        "application/octet-stream".to_string()
    } else {
        slot.content_type.clone()
    };
    // Media opens in place; anything else (HTML above all) downloads, and
    // nothing runs: no sniffing, no scripts, whatever the type claims.
    let inline = ["image/", "audio/", "video/"]
        .iter()
        .any(|p| ctype.starts_with(p))
        && ctype != "image/svg+xml";
    let disposition = format!(
        "{}; filename*=UTF-8''{}",
        if inline { "inline" } else { "attachment" },
        upload::encode_segment(&slot.filename)
    );
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024))
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    h.insert(header::CONTENT_TYPE, value(&ctype));
    h.insert(header::CONTENT_LENGTH, value(&slot.size.to_string()));
    h.insert(header::CONTENT_DISPOSITION, value(&disposition));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    cors(r)
}

/// Removes files past `[upload] expire_days`, and slots never used within
/// twice `slot_lifetime`, a bounded batch of each per round.
pub async fn clean_up(server: &Server) {
    let config = &server.config().upload;
    let t = now();
    for (before, open_only) in [
        (t - config.expire_days as i64 * 86_400, false),
        (t - 2 * config.slot_lifetime as i64, true),
    ] {
        let tokens = match server.store.upload_expired(before, open_only, 1000).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "upload: clean-up");
                return;
            }
        };
        for token in tokens {
            let path = file_of(server, &token);
            let _ = tokio::fs::remove_file(&path).await;
            let _ = tokio::fs::remove_file(path.with_extension("part")).await;
            let _ = server.store.upload_forget(&token).await;
        }
    }
}
