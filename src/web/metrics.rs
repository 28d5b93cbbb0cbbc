//! `GET /metrics`: the server's metrics (`crate::metrics`) in the
//! OpenMetrics text format, for Prometheus to scrape.
//!
//! Who may read them is `[metrics] allow`: peers on loopback (a Prometheus
//! on the same machine, or a local proxy in front of it), holders of a
//! bearer token, or either. A peer that is refused gets 403 when no token
//! could help it, and 401 with `WWW-Authenticate: Bearer` when a token is
//! the way in.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use subtle::ConstantTimeEq;

use super::{ConnInfo, Web};
use crate::config::MetricsConfig;

/// What to do with a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// 403: not from loopback, and tokens are not accepted.
    Forbidden,
    /// 401: the token is missing or wrong.
    Unauthorized,
}

/// Decides on a scrape from `peer` with this `Authorization` header.
pub fn decide(config: &MetricsConfig, peer: IpAddr, authorization: Option<&[u8]>) -> Access {
    // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
    let loopback = peer.to_canonical().is_loopback();
    let by_loopback = matches!(config.allow.as_str(), "loopback" | "loopback_or_token");
    let by_token = matches!(config.allow.as_str(), "token" | "loopback_or_token");
    if by_loopback && loopback {
        return Access::Allowed;
    }
    if !by_token {
        return Access::Forbidden;
    }
    if token_matches(&config.token, authorization) {
        Access::Allowed
    } else {
        Access::Unauthorized
    }
}

/// `Authorization: Bearer <token>` with our token, compared in constant
/// time. An empty configured token matches nothing (check-config refuses
/// it anyway).
fn token_matches(token: &str, authorization: Option<&[u8]>) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Some(given) = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
    else {
        return false;
    };
    !token.is_empty() && bool::from(given.ct_eq(token.as_bytes()))
}

pub async fn scrape(
    State(web): State<Arc<Web>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
) -> Response {
    let server = &web.server;
    let config = &server.config().metrics;
    if !config.enabled {
        return StatusCode::NOT_FOUND.into_response();
    }
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    match decide(config, conn.peer.ip(), authorization) {
        Access::Allowed => {}
        Access::Forbidden => {
            tracing::debug!(peer = %conn.peer, "metrics scrape refused: not loopback");
            return StatusCode::FORBIDDEN.into_response();
        }
        Access::Unauthorized => {
            tracing::debug!(peer = %conn.peer, "metrics scrape refused: no valid token");
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"waxwing metrics\""),
                )],
            )
                .into_response();
        }
    }
    let body = server.metrics.render(server).await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow: &str) -> MetricsConfig {
        MetricsConfig {
            allow: allow.into(),
            token: "0123456789abcdef-secret".into(),
            ..MetricsConfig::default()
        }
    }

    const LOOPBACK: &str = "127.0.0.34";
    const REMOTE: &str = "192.0.2.7";
    const GOOD: &[u8] = b"Bearer 0123456789abcdef-secret";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // Every address in 127/8 is loopback, so a socket test cannot be made
    // to come from elsewhere: the decision is tested here instead.
    #[test]
    fn loopback_mode_refuses_other_peers_whatever_they_send() {
        let c = config("loopback");
        assert_eq!(decide(&c, ip(LOOPBACK), None), Access::Allowed);
        assert_eq!(decide(&c, ip("::1"), None), Access::Allowed);
        assert_eq!(decide(&c, ip("::ffff:127.0.0.1"), None), Access::Allowed);
        assert_eq!(decide(&c, ip(REMOTE), None), Access::Forbidden);
        assert_eq!(decide(&c, ip(REMOTE), Some(GOOD)), Access::Forbidden);
        assert_eq!(decide(&c, ip("::ffff:192.0.2.7"), None), Access::Forbidden);
        assert_eq!(decide(&c, ip("2001:db8::1"), None), Access::Forbidden);
    }

    #[test]
    fn token_mode_wants_the_token_from_everyone() {
        let c = config("token");
        assert_eq!(decide(&c, ip(REMOTE), Some(GOOD)), Access::Allowed);
        assert_eq!(decide(&c, ip(LOOPBACK), Some(GOOD)), Access::Allowed);
        assert_eq!(decide(&c, ip(LOOPBACK), None), Access::Unauthorized);
        assert_eq!(decide(&c, ip(REMOTE), None), Access::Unauthorized);
        for bad in [
            &b"Bearer 0123456789abcdef-secreT"[..],
            b"Bearer 0123456789abcdef-secret ",
            b"Bearer ",
            b"Basic 0123456789abcdef-secret",
            b"0123456789abcdef-secret",
        ] {
            assert_eq!(decide(&c, ip(REMOTE), Some(bad)), Access::Unauthorized);
        }
    }

    #[test]
    fn either_mode_takes_loopback_or_the_token() {
        let c = config("loopback_or_token");
        assert_eq!(decide(&c, ip(LOOPBACK), None), Access::Allowed);
        assert_eq!(decide(&c, ip(REMOTE), Some(GOOD)), Access::Allowed);
        assert_eq!(decide(&c, ip(REMOTE), None), Access::Unauthorized);
    }

    #[test]
    fn an_empty_token_opens_nothing() {
        let mut c = config("token");
        c.token.clear();
        assert_eq!(
            decide(&c, ip(REMOTE), Some(b"Bearer ")),
            Access::Unauthorized
        );
    }
}
