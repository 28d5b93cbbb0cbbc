//! Last Activity (XEP-0012): the server's uptime, and for an offline user
//! the time since their last session ended — answered only to requesters
//! the user shares presence with.

use crate::stanza::bare::Bare;
use std::time::{SystemTime, UNIX_EPOCH};

use jid::BareJid;

use super::{IqFuture, IqRequest, IqTarget};
use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::server::Server;
use crate::stanza::StanzaErrorCondition;
use crate::xml::Element;

pub const NS: &str = "jabber:iq:last";

/// The last-activity feature: answers queries and records when a user's
/// last session ends (`SessionEnded`).
#[derive(Debug, Default)]
pub struct LastActivity;

impl Feature for LastActivity {
    fn name(&self) -> &'static str {
        "last"
    }

    fn xeps(&self) -> &'static [u16] {
        &[12]
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
        handle(req)
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[(EventKind::SessionEnded, 0)]
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            if let Event::SessionEnded { jid, departed } = event {
                if departed.last_resource {
                    record_logout(server, &jid.bare()).await;
                }
            }
            Verdict::Continue
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The `user_data` key holding the unix time of the last session's end.
pub const KEY: &str = "last_logout";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn query(seconds: u64) -> Element {
    Element::new("query", NS).with_attr("seconds", seconds.to_string())
}

fn handle<'a>(req: &'a IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        if req.is_set || req.payload.name() != "query" {
            return Err(StanzaErrorCondition::BadRequest.into());
        }
        let user = match req.target {
            IqTarget::Server => return Ok(Some(query(req.server.uptime().as_secs()))),
            IqTarget::Account { own } => {
                let Some(to) = req.iq.attr("to").and_then(|t| BareJid::new(t).ok()) else {
                    return Ok(Some(query(0)));
                };
                if !own {
                    match super::roster::is_subscribed_from(req.server, &to, &req.from.bare()).await
                    {
                        Ok(true) => {}
                        Ok(false) => return Err(StanzaErrorCondition::Forbidden.into()),
                        Err(_) => return Err(StanzaErrorCondition::InternalServerError.into()),
                    }
                }
                to
            }
        };
        if !req.server.sessions.available_resources(&user).is_empty() {
            return Ok(Some(query(0)));
        }
        let (d, u) = (
            user.domain().as_str(),
            user.node().map(|n| n.as_str()).unwrap_or_default(),
        );
        match req.server.store.user_data_get(d, u, KEY).await {
            Ok(Some(v)) => {
                let then: u64 = v.parse().unwrap_or(0);
                Ok(Some(query(now().saturating_sub(then))))
            }
            Ok(None) => Err(StanzaErrorCondition::ItemNotFound.into()),
            Err(_) => Err(StanzaErrorCondition::InternalServerError.into()),
        }
    })
}

/// Remembers when the user's last session ended.
async fn record_logout(server: &Server, user: &BareJid) {
    let (d, u) = (
        user.domain().as_str(),
        user.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    if let Err(e) = server
        .store
        .user_data_put(d, u, KEY, &now().to_string())
        .await
    {
        tracing::error!(error = %e, "storing last activity");
    }
}
