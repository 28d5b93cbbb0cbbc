//! HTTP File Upload (XEP-0363, `urn:xmpp:http:upload:0`): a service at
//! `<[upload] subdomain>.<host>` hands the server's users upload slots —
//! a PUT URL and a GET URL on the `[http]` listener — and `web::upload`
//! takes the PUT and serves the GET.
//!
//! A slot is a row (`storage::uploads`: owner, promised size and type) and
//! a random token. The PUT URL carries an expiry and an HMAC-SHA256 over
//! (token, file name, size, content type, expiry) with a key the server
//! keeps in its database, so only what a slot promised can be written, and
//! only until the expiry. Files live under `[upload] dir` named by token
//! alone (the client's file name never reaches the file system). Quotas are
//! per user (the sum of their slots, counted when the slot is handed out);
//! files go after `expire_days`, open slots after `slot_lifetime`.

use crate::modules::time::unix_now as now;
use crate::stanza::bare::Bare;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::feature::Feature;
use crate::server::Server;
use crate::sessions::DeliveryError;
use crate::stanza::{iq_result, StanzaError, StanzaErrorCondition};
use crate::storage::UploadSlot;
use crate::xml::Element;

pub const NS: &str = "urn:xmpp:http:upload:0";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";

/// The feature; its key and queue are set at start.
#[derive(Debug, Default)]
pub struct Upload {
    inbox: crate::feature::inbox::ServiceInbox,
    key: OnceLock<Vec<u8>>,
    /// The upload URL self-check at start (`web::self_check`).
    self_check: crate::web::self_check::SelfCheck,
}

pub fn service_domains(config: &Config) -> Vec<String> {
    config
        .domains()
        .into_iter()
        .map(|h| format!("{}.{}", config.upload.subdomain, h))
        .collect()
}

/// Where clients reach the HTTP listener: `[http] public_url`, else the
/// first HTTPS listener under the first host's name, else the first plain
/// listener's address. None: no listener, no uploads.
pub fn base_url(config: &Config) -> Option<String> {
    let http = &config.http;
    if !http.public_url.is_empty() {
        return Some(http.public_url.clone());
    }
    if let Some(a) = http.listen_tls.first() {
        let host = config.domains().into_iter().next()?;
        return Some(format!("https://{host}:{}", a.port()));
    }
    http.listen.first().map(|a| format!("http://{a}"))
}

impl Upload {
    /// The signing key (None before start has read it).
    pub fn key(&self) -> Option<&[u8]> {
        self.key.get().map(Vec::as_slice)
    }

    /// The upload URL self-check's state.
    pub fn self_check(&self) -> &crate::web::self_check::SelfCheck {
        &self.self_check
    }
}

/// The PUT URL's signature over what the slot promised.
pub fn sign(
    key: &[u8],
    token: &str,
    filename: &str,
    size: i64,
    ctype: &str,
    expiry: i64,
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    // Newline-separated: none of the parts can hold a newline (the token
    // is hex, names and types are checked), so no two inputs collide.
    mac.update(format!("{token}\n{filename}\n{size}\n{ctype}\n{expiry}").as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Checks a signature in constant time.
pub fn verify(
    key: &[u8],
    token: &str,
    filename: &str,
    size: i64,
    ctype: &str,
    expiry: i64,
    sig: &str,
) -> bool {
    use subtle::ConstantTimeEq;
    let want = sign(key, token, filename, size, ctype, expiry);
    want.as_bytes().ct_eq(sig.as_bytes()).into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Percent-encodes a path segment (RFC 3986 unreserved characters kept).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A file name as the client sent it, made safe to show and to put in a
/// URL and a header: its last path component, without control characters,
/// at most 200 bytes; None when nothing is left.
pub fn clean_filename(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut out = String::new();
    for c in last.chars().filter(|c| !c.is_control() && *c != '"') {
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    let out = out.trim().trim_start_matches('.').to_string();
    (!out.is_empty()).then_some(out)
}

/// A MIME type of the `type/subtype` shape (parameters dropped), or None.
pub fn clean_content_type(t: &str) -> Option<String> {
    let t = t
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match t.split_once('/') {
        Some((a, b)) if token(a) && token(b) => Some(t),
        _ => None,
    }
}

impl Feature for Upload {
    fn name(&self) -> &'static str {
        "upload"
    }

    fn enabled(&self, config: &Config) -> bool {
        config.upload.enabled && base_url(config).is_some()
    }

    fn xeps(&self) -> &[u16] {
        &[363]
    }

    fn service_domains(&self, config: &Config) -> Vec<String> {
        service_domains(config)
    }

    fn deliver_to_service(&self, _server: &Server, stanza: &Element) -> Result<(), DeliveryError> {
        self.inbox.deliver(stanza)
    }

    fn start(&self, server: &Arc<Server>) {
        let Some(rx) = self.inbox.open(server.config().upload.queue) else {
            return;
        };
        let server = server.clone();
        server.clone().background.spawn(run(server, rx));
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn feature(server: &Server) -> Option<&Upload> {
    server.features.get::<Upload>()
}

/// The service's task: reads the key, cleans up now and then, and answers
/// what comes to the service's domains.
async fn run(server: Arc<Server>, mut rx: mpsc::Receiver<Element>) {
    let mut fresh = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut fresh);
    match server
        .store
        .server_secret("upload-hmac", &hex(&fresh))
        .await
    {
        Ok(k) => {
            if let Some(f) = feature(&server) {
                let _ = f.key.set(k.into_bytes());
            }
        }
        Err(e) => tracing::error!(error = %e, "upload: reading the signing key; no uploads"),
    }
    if let Err(e) = tokio::fs::create_dir_all(&server.config().upload.dir).await {
        tracing::error!(error = %e, dir = %server.config().upload.dir, "upload: cannot create the directory");
    }
    let mut cleanup = tokio::time::interval(Duration::from_secs(
        server.config().upload.cleanup_interval.max(1),
    ));
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => return,
            _ = cleanup.tick() => crate::web::upload::clean_up(&server).await,
            stanza = rx.recv() => match stanza {
                Some(s) => handle(&server, &s).await,
                None => return,
            },
        }
    }
}

async fn handle(server: &Server, stanza: &Element) {
    if stanza.name() != "iq" || !matches!(stanza.attr("type"), Some("get" | "set")) {
        return;
    }
    let outcome = answer(server, stanza).await;
    let reply = match outcome {
        Ok(payload) => Some(iq_result(stanza, Some(payload))),
        Err(e) => e.reply_to(stanza),
    };
    if let (Some(reply), Some(to)) = (reply, stanza.attr("from")) {
        if let Ok(to) = jid::Jid::new(to) {
            let _ = crate::router::deliver(server, &reply, &to);
        }
    }
}

async fn answer(server: &Server, iq: &Element) -> Result<Element, StanzaError> {
    let payload = iq
        .children()
        .next()
        .ok_or(StanzaErrorCondition::BadRequest)?;
    let is_get = iq.attr("type") == Some("get");
    match (payload.ns(), payload.name()) {
        (NS_DISCO_INFO, "query") if is_get => Ok(disco_info(server)),
        (NS, "request") if is_get => slot(server, iq, payload).await,
        _ => Err(StanzaErrorCondition::ServiceUnavailable.into()),
    }
}

fn disco_info(server: &Server) -> Element {
    let max = server.config().upload.max_file_size.to_string();
    Element::new("query", NS_DISCO_INFO)
        .with_child(
            Element::new("identity", NS_DISCO_INFO)
                .with_attr("category", "store")
                .with_attr("type", "file")
                .with_attr("name", "HTTP File Upload"),
        )
        .with_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", NS_DISCO_INFO))
        .with_child(Element::new("feature", NS_DISCO_INFO).with_attr("var", NS))
        .with_child(
            Element::new("x", super::NS_DATA)
                .with_attr("type", "result")
                .with_child(
                    Element::new("field", super::NS_DATA)
                        .with_attr("var", "FORM_TYPE")
                        .with_attr("type", "hidden")
                        .with_child(Element::new("value", super::NS_DATA).with_text(NS)),
                )
                .with_child(
                    Element::new("field", super::NS_DATA)
                        .with_attr("var", "max-file-size")
                        .with_child(Element::new("value", super::NS_DATA).with_text(max)),
                ),
        )
}

/// A slot request (XEP-0363 §4).
async fn slot(server: &Server, iq: &Element, req: &Element) -> Result<Element, StanzaError> {
    let config = &server.config().upload;
    // Our users only: uploads cost disk.
    let from = iq
        .attr("from")
        .and_then(|f| {
            jid::BareJid::new(f)
                .ok()
                .or_else(|| jid::FullJid::new(f).ok().map(|j| j.bare()))
        })
        .ok_or(StanzaErrorCondition::Forbidden)?;
    let user = from
        .node()
        .ok_or(StanzaErrorCondition::Forbidden)?
        .to_string();
    let domain = from.domain().to_string();
    if !server.is_local_domain(&domain) {
        return Err(StanzaErrorCondition::Forbidden.into());
    }
    let filename = req
        .attr("filename")
        .and_then(clean_filename)
        .ok_or_else(|| {
            StanzaError::with_text(StanzaErrorCondition::BadRequest, "a file name is needed")
        })?;
    let size: i64 = req
        .attr("size")
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .ok_or_else(|| {
            StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "size must be a positive number",
            )
        })?;
    if size > config.max_file_size as i64 {
        let too_large = Element::new("file-too-large", NS).with_child(
            Element::new("max-file-size", NS).with_text(config.max_file_size.to_string()),
        );
        return Err(StanzaError::with_text(
            StanzaErrorCondition::NotAcceptable,
            format!("the file is larger than {} bytes", config.max_file_size),
        )
        .with_app(too_large));
    }
    let ctype = match req.attr("content-type") {
        None => String::new(),
        Some(t) => clean_content_type(t).ok_or_else(|| {
            StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "content-type is not a MIME type",
            )
        })?,
    };
    let key = feature(server)
        .and_then(Upload::key)
        .ok_or(StanzaErrorCondition::InternalServerError)?;
    let base = base_url(&server.config()).ok_or(StanzaErrorCondition::ServiceUnavailable)?;
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let token = hex(&raw);
    let created = now();
    let stored = server
        .store
        .upload_slot_add(
            &UploadSlot {
                token: token.clone(),
                domain,
                username: user,
                filename: filename.clone(),
                size,
                content_type: ctype.clone(),
                created,
                done: false,
            },
            config.quota_per_user as i64,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "upload: storing a slot");
            StanzaErrorCondition::InternalServerError
        })?;
    if !stored {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::ResourceConstraint,
            format!("over the upload quota of {} bytes", config.quota_per_user),
        ));
    }
    let expiry = created + config.slot_lifetime as i64;
    let sig = sign(key, &token, &filename, size, &ctype, expiry);
    let path = format!("{base}/upload/{token}/{}", encode_segment(&filename));
    Ok(Element::new("slot", NS)
        .with_child(Element::new("put", NS).with_attr("url", format!("{path}?e={expiry}&s={sig}")))
        .with_child(Element::new("get", NS).with_attr("url", path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types_are_cleaned() {
        assert_eq!(
            clean_filename("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            clean_filename("C:\\x\\photo.jpg").as_deref(),
            Some("photo.jpg")
        );
        assert_eq!(clean_filename(".hidden").as_deref(), Some("hidden"));
        assert_eq!(clean_filename("a\u{0}b\nc\"d").as_deref(), Some("abcd"));
        assert_eq!(clean_filename("/"), None);
        assert_eq!(clean_filename(&"é".repeat(500)).unwrap().len(), 200);
        assert_eq!(
            clean_content_type("image/JPEG; q=1").as_deref(),
            Some("image/jpeg")
        );
        assert_eq!(clean_content_type("text/html\r\nX: y"), None);
        assert_eq!(clean_content_type("nonsense"), None);
        assert_eq!(encode_segment("a b/é.png"), "a%20b%2F%C3%A9.png");
    }

    #[test]
    fn signatures_bind_every_part() {
        let k = b"key";
        let s = sign(k, "t", "f", 10, "image/png", 100);
        assert!(verify(k, "t", "f", 10, "image/png", 100, &s));
        assert!(!verify(k, "t", "f", 11, "image/png", 100, &s));
        assert!(!verify(k, "t", "g", 10, "image/png", 100, &s));
        assert!(!verify(k, "t", "f", 10, "text/html", 100, &s));
        assert!(!verify(k, "t", "f", 10, "image/png", 101, &s));
        assert!(!verify(b"other", "t", "f", 10, "image/png", 100, &s));
    }
}
