//! External service discovery (XEP-0215, `urn:xmpp:extdisco:2`): the STUN
//! and TURN servers of `[[external_service]]`, so Jingle calls (XEP-0167)
//! find a relay behind NAT.
//!
//! A TURN server with a `secret` gets short-lived credentials in the TURN
//! REST scheme that coturn accepts with `use-auth-secret`: the username is
//! `<expiry unix time>:<bare JID>` and the password the base64 of
//! HMAC-SHA1(secret, username), so the TURN server checks them with no
//! call back to us, and they stop working at the expiry. Only the server's
//! own users get them (a session of one of our hosts asking its server).

use crate::modules::time::unix_now;
use crate::stanza::bare::Bare;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::time::xep0082;
use crate::config::{Config, ExternalServiceConfig};
use crate::feature::iq::{IqFuture, IqOutcome, IqRequest};
use crate::feature::{Disco, Feature};
use crate::stanza::StanzaErrorCondition;
use crate::xml::Element;

pub const NS: &str = "urn:xmpp:extdisco:2";

/// The feature: on when any service is configured.
#[derive(Debug, Default)]
pub struct ExternalServices;

impl Feature for ExternalServices {
    fn name(&self) -> &'static str {
        "external-services"
    }

    fn enabled(&self, config: &Config) -> bool {
        !config.external_service.is_empty()
    }

    fn xeps(&self) -> &[u16] {
        &[215]
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &[NS],
            account: &[],
        }
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    fn handle_iq<'a>(&'a self, req: &'a IqRequest<'a>) -> IqFuture<'a> {
        crate::feature::iq::ready(answer(req))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn answer(req: &IqRequest<'_>) -> IqOutcome {
    req.require_server_get()?;
    // Our own users only: credentials open a relay that costs bandwidth.
    let user = match req.from.try_as_full() {
        Ok(f) if f.node().is_some() && req.server.is_local_domain(f.domain().as_str()) => f.bare(),
        _ => return Err(StanzaErrorCondition::Forbidden.into()),
    };
    let now = unix_now();
    let services = &req.server.config().external_service;
    match req.payload.name() {
        // §3.1 / §3.2: every service, or those of one type.
        "services" => {
            let kind = req.payload.attr("type");
            let mut out = Element::new("services", NS);
            if let Some(k) = kind {
                out.set_attr("type", k);
            }
            for s in services.iter().filter(|s| kind.is_none_or(|k| k == s.kind)) {
                out.append_child(service(s, user.as_str(), now));
            }
            Ok(Some(out))
        }
        // §3.3: credentials for one service, named by host and type (and
        // port, where one host serves several).
        "credentials" => {
            let wanted = req
                .payload
                .get_child("service", NS)
                .ok_or(StanzaErrorCondition::BadRequest)?;
            let (Some(host), Some(kind)) = (wanted.attr("host"), wanted.attr("type")) else {
                return Err(StanzaErrorCondition::BadRequest.into());
            };
            let port = wanted.attr("port").and_then(|p| p.parse::<u16>().ok());
            let mut out = Element::new("credentials", NS);
            for s in services
                .iter()
                .filter(|s| s.host == host && s.kind == kind && port.is_none_or(|p| p == s.port))
            {
                out.append_child(service(s, user.as_str(), now));
            }
            if out.children().next().is_none() {
                return Err(StanzaErrorCondition::ItemNotFound.into());
            }
            Ok(Some(out))
        }
        _ => Err(StanzaErrorCondition::BadRequest.into()),
    }
}

/// One `<service/>`, with credentials where the service has a secret.
fn service(s: &ExternalServiceConfig, user: &str, now: i64) -> Element {
    let mut e = Element::new("service", NS)
        .with_attr("type", &s.kind)
        .with_attr("host", &s.host)
        .with_attr("port", s.port.to_string())
        .with_attr("transport", &s.transport);
    if !s.name.is_empty() {
        e.set_attr("name", &s.name);
    }
    if !s.secret.is_empty() {
        let expires = now + s.credential_lifetime as i64;
        let (username, password) = turn_credentials(&s.secret, user, expires);
        e.set_attr("username", username);
        e.set_attr("password", password);
        e.set_attr("restricted", "1");
        if let Some(at) = xep0082(expires) {
            e.set_attr("expires", at);
        }
    }
    e
}

/// The TURN REST credentials for `user` valid until `expires` (unix time):
/// (`expires:user`, base64(HMAC-SHA1(secret, that username))).
pub fn turn_credentials(secret: &str, user: &str, expires: i64) -> (String, String) {
    let username = format!("{expires}:{user}");
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::turn_credentials;

    #[test]
    fn turn_rest_credentials_match_the_published_scheme() {
        // coturn's turnutils / the TURN REST draft: password =
        // base64(HMAC-SHA1(secret, "expiry:user")), checked here against a
        // value computed independently (python3: hmac.new(b"north",
        // b"1800000000:ann@example.org", "sha1") → base64).
        let (u, p) = turn_credentials("north", "ann@example.org", 1_800_000_000);
        assert_eq!(u, "1800000000:ann@example.org");
        assert_eq!(p, "fOu4/kX+gZ1EuCLpJ/otMB642cs=");
    }
}
