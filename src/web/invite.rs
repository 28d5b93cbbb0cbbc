//! The invitation landing page, `/invite/TOKEN` (XEP-0401 §5.2, XEP-0379
//! §3.3): which app to install, a button with the `xmpp:` URI, and a web
//! registration form for people who would rather create the account here.
//!
//! The page is self-contained (inline style, no scripts, no external
//! assets). The token in the URL is the credential, so the form needs no
//! CSRF token: a forged POST would have to know it. The form's POST is
//! the in-band registration made into an IQ and handed to the same code
//! (`invite::register_with`): same name rules, per-address cap and
//! hashing pool, and the token's use is taken atomically. It is accepted
//! only on HTTPS (or plain HTTP that `[http] plain_is_secure` trusts), as
//! a password crosses the wire.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::{ConnInfo, Web};
use crate::modules::invite::{self, token};
use crate::stanza::StanzaErrorCondition;
use crate::storage::InviteRecord;
use crate::stream::c2s::NS_REGISTER;
use crate::xml::{Element, NS_CLIENT};

/// The largest form body read (a username and a password).
const MAX_FORM: usize = 4096;

/// `GET /invite/TOKEN`.
pub async fn show(State(web): State<Arc<Web>>, Path(tok): Path<String>) -> Response {
    let Some(invite) = lookup(&web, &tok).await else {
        return not_found();
    };
    page(StatusCode::OK, &form_page(&web, &invite, &tok, None, ""))
}

/// `POST /invite/TOKEN`: username and password, form-encoded.
pub async fn register(
    State(web): State<Arc<Web>>,
    Extension(conn): Extension<ConnInfo>,
    Path(tok): Path<String>,
    req: Request,
) -> Response {
    let Some(invite) = lookup(&web, &tok).await else {
        return not_found();
    };
    if !conn.secure {
        return page(
            StatusCode::FORBIDDEN,
            &form_page(
                &web,
                &invite,
                &tok,
                Some("Use the https:// address of this page to register."),
                "",
            ),
        );
    }
    let Ok(body) = to_bytes(req.into_body(), MAX_FORM).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let fields = parse_form(&body);
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let (username, password) = (get("username"), get("password"));
    let iq = Element::new("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_child(
            Element::new("query", NS_REGISTER)
                .with_child(Element::new("username", NS_REGISTER).with_text(username))
                .with_child(Element::new("password", NS_REGISTER).with_text(password)),
        );
    let inviter = invite
        .inviter
        .as_deref()
        .and_then(|j| jid::BareJid::new(j).ok());
    let mut here = false;
    let outcome = invite::register_with(
        &web.server,
        &invite.domain,
        conn.peer.ip(),
        &iq,
        &mut here,
        &invite.token_hash,
        inviter.as_ref(),
    )
    .await;
    match outcome {
        Ok(_) => {
            let jid = format!(
                "{}@{}",
                jid::NodePart::new(username)
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                invite.domain
            );
            page(StatusCode::OK, &done_page(&jid, invite.inviter.as_deref()))
        }
        Err(refusal) => {
            let (status, text) = match refusal.condition {
                StanzaErrorCondition::Conflict => (
                    StatusCode::CONFLICT,
                    "That username is taken; choose another.",
                ),
                StanzaErrorCondition::NotAuthorized => {
                    return not_found();
                }
                StanzaErrorCondition::ResourceConstraint => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server is busy; try again in a moment.",
                ),
                StanzaErrorCondition::NotAcceptable => (
                    StatusCode::BAD_REQUEST,
                    refusal
                        .text
                        .unwrap_or("The username or password is not acceptable."),
                ),
                _ => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The account could not be created.",
                ),
            };
            page(
                status,
                &form_page(&web, &invite, &tok, Some(text), username),
            )
        }
    }
}

/// The invitation a token in a URL names, if it may still create an
/// account. Junk tokens never reach the database.
async fn lookup(web: &Web, tok: &str) -> Option<InviteRecord> {
    if !token::well_formed(tok) {
        return None;
    }
    let invite = match web.server.store.invite(&token::hash(tok)).await {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!(error = %e, "reading an invitation");
            return None;
        }
    };
    (invite.may_create_account && invite.is_usable(crate::modules::time::unix_now()))
        .then_some(invite)
}

fn page(status: StatusCode, html: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            ),
        ],
        Body::from(html.to_owned()),
    )
        .into_response()
}

fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        &frame(
            "Invitation not found",
            "<h1>This invitation is not valid</h1>\
             <p>It may have expired or been used already. Ask the person who invited you for a new one.</p>",
        ),
    )
}

/// The page around `body`.
fn frame(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em;line-height:1.5;color:#222}}\
         .button{{display:inline-block;padding:.6em 1.2em;background:#2a6;color:#fff;border-radius:.4em;text-decoration:none;font-weight:bold}}\
         form label{{display:block;margin:.6em 0}} input{{font-size:1em;padding:.3em;width:100%;box-sizing:border-box}}\
         .error{{color:#b00;font-weight:bold}} li{{margin:.2em 0}}\
         </style></head><body>{body}</body></html>\n",
        escape(title)
    )
}

fn form_page(
    web: &Web,
    invite: &InviteRecord,
    tok: &str,
    error: Option<&str>,
    username: &str,
) -> String {
    let domain = escape(&invite.domain);
    let heading = match &invite.inviter {
        Some(i) => format!("{} invites you to chat on {domain}", escape(i)),
        None => format!("You are invited to {domain}"),
    };
    let uri = escape(&token::uri(invite, tok));
    let web_chat = if web.server.config().http.chat_dir.is_empty() {
        String::new()
    } else {
        "<li>In a web browser: <a href=\"/chat/\">the web chat of this server</a></li>".into()
    };
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>{heading}</h1>\
         <p>XMPP is open instant messaging: you pick an app, and you can talk with people on any XMPP server.</p>\
         <h2>1. Install an app</h2><ul>\
         <li>Android: <a href=\"https://conversations.im/\">Conversations</a></li>\
         <li>iPhone, iPad and Mac: <a href=\"https://monal-im.org/\">Monal</a></li>\
         <li>Linux: <a href=\"https://dino.im/\">Dino</a></li>\
         <li>Windows and Linux: <a href=\"https://gajim.org/\">Gajim</a></li>{web_chat}</ul>\
         <h2>2. Open the invitation in it</h2>\
         <p><a class=\"button\" id=\"open\" href=\"{uri}\">Open in your app</a></p>\
         <p>The app creates your account on {domain}{contact}.</p>\
         <h2>Or create your account here</h2>{error}\
         <form method=\"post\" action=\"\">\
         <label>Username <input name=\"username\" id=\"username\" required autocomplete=\"username\" value=\"{username}\"></label>\
         <label>Password <input name=\"password\" id=\"password\" type=\"password\" required autocomplete=\"new-password\"></label>\
         <p><button type=\"submit\" id=\"register\">Create account</button></p></form>\
         <p>Then log in to your app with your address <em>username</em>@{domain} and this password.</p>",
        contact = if invite.inviter.is_some() {
            " and adds the person who invited you as a contact"
        } else {
            ""
        },
        username = escape(username),
    );
    frame(&format!("Invitation to {}", invite.domain), &body)
}

fn done_page(jid: &str, inviter: Option<&str>) -> String {
    let contact = inviter
        .map(|i| format!("<p>{} is already in your contacts.</p>", escape(i)))
        .unwrap_or_default();
    frame(
        "Account created",
        &format!(
            "<h1>Your account is ready</h1><p>Your address is <strong id=\"jid\">{}</strong>. \
             Log in to your app with it and your password.</p>{contact}",
            escape(jid)
        ),
    )
}

/// HTML text and attribute escaping.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `application/x-www-form-urlencoded` pairs (malformed ones are dropped).
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| -> Option<String> {
        let s = s.replace('+', " ");
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
        String::from_utf8(out).ok()
    };
    let Ok(body) = std::str::from_utf8(body) else {
        return Vec::new();
    };
    body.split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_escaping() {
        let f = parse_form(b"username=j%C3%BCliet&password=a+b%26c&bad=%zz");
        assert_eq!(f[0], ("username".into(), "jüliet".into()));
        assert_eq!(f[1], ("password".into(), "a b&c".into()));
        assert_eq!(f.len(), 2);
        assert_eq!(
            escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
