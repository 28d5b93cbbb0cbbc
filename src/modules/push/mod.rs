//! Push Notifications (XEP-0357), the user's server side: a client
//! registers its app server (`<enable jid node>`, with the publish options
//! its app server needs, often a secret) and unregisters it
//! (`<disable jid [node]>`); when a message worth waking the phone for
//! (or a subscription request) arrives while none of the account's
//! clients is connected, the server publishes a summary to every
//! registration ([`publisher`]).
//!
//! "Not connected" is two cases: no session at all (the message is
//! `Unreached`: kept by offline storage — one it refused, the sender was
//! told of, pushes nothing — or a group chat message for a resource that
//! is gone), or sessions that all
//! wait for stream-management resumption (the message reached their
//! queues, `MessageDelivered`, but nobody reads them; see
//! `stream_management::AwaitingResumption`); and when a session is
//! parked, what its client never acknowledged (`SessionParked`).
//!
//! Registrations are stored per account (`storage::push`), at most
//! `[push] max_registrations`; publish options are stored and sent, never
//! logged.

mod notification;
mod publisher;
mod remote_disable;

use crate::stanza::bare::Bare;
use std::sync::Arc;

use jid::{BareJid, Jid};

use crate::feature::iq::{IqFuture, IqOutcome, IqRequest, IqTarget};
use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::router::Origin;
use crate::server::Server;
use crate::sessions::OutStanza;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::storage::PushRegistration;
use crate::xml::Element;

use notification::Unseen;
pub use notification::{worth_pushing, NS_SUMMARY};
pub use publisher::Publisher;

pub const NS_PUSH: &str = "urn:xmpp:push:0";
pub const NS_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// The push notifications feature.
#[derive(Default)]
pub struct Push {
    publisher: Publisher,
}

impl Feature for Push {
    fn name(&self) -> &'static str {
        "push"
    }

    // `[push] enabled = false`: no account disco feature, no IQs.
    fn enabled(&self, config: &crate::config::Config) -> bool {
        config.push.enabled
    }

    fn xeps(&self) -> &'static [u16] {
        &[357]
    }

    fn disco(&self) -> Disco {
        // XEP-0357 §4.1: on the account's bare JID.
        Disco {
            server: &[],
            account: &[NS_PUSH],
        }
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS_PUSH]
    }

    fn handle_iq<'a>(&'a self, req: &'a IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(self.answer(req))
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[
            // After offline storage decided: a message it refused (the
            // sender got an error) wakes nobody.
            (EventKind::Unreached, 0),
            (EventKind::MessageDelivered, 50),
            (EventKind::ForwardedHere, 0),
            (EventKind::SessionParked, 0),
            (EventKind::SubscriptionRequest, 0),
            // A client is back: what it missed is on its screen now.
            (EventKind::SessionBound, 0),
            (EventKind::SessionResumed, 0),
            (EventKind::AccountDeleted, 0),
            // An app server taking a registration back (§8).
            (EventKind::PreRoute, 0),
        ]
    }

    fn on_event_now(&self, server: &Server, event: &mut Event<'_>) -> Option<Verdict> {
        match event {
            // Every routed stanza passes here: only a message from outside
            // (a component, another server) to a local account carrying
            // an affiliation change is looked at further.
            Event::PreRoute {
                origin,
                kind: crate::stanza::StanzaKind::Message,
                to,
                stanza,
            } if origin.session().is_none()
                && to.node().is_some()
                && server.is_local_domain(to.domain().as_str())
                && remote_disable::affiliation_removed(stanza).is_some() =>
            {
                return None;
            }
            Event::Unreached {
                origin,
                to,
                stanza,
                stored,
            } => {
                // A message re-routed from a session that ended without
                // reading it is not counted again: a session that waited
                // for resumption counted it when it arrived or when it was
                // parked. (One without stream management was connected
                // when it arrived, as far as anyone knew.)
                let rerouted = matches!(origin, Origin::Session(s) if s.bare() == **to);
                // Only what offline storage kept is waiting for the user;
                // a group chat message is never kept, but the room's
                // archive has it for the client that wakes up.
                let waiting = *stored || stanza.attr("type") == Some("groupchat");
                if waiting && !rerouted {
                    self.consider(server, to, stanza);
                }
            }
            // Every routed message passes here: the registry is looked at
            // (a lock) only for one worth a push.
            Event::MessageDelivered {
                account,
                resources,
                stanza,
            } if !resources.is_empty()
                && worth_pushing(stanza).is_some()
                && all_awaiting_resumption(server, account, resources) =>
            {
                self.consider(server, account, stanza);
            }
            // A message another node of a cluster routed to a session of
            // ours that waits for resumption: that node saw the session
            // as attached (it cannot see its connection), so the push is
            // decided here.
            Event::ForwardedHere { jid, stanza } if still_awaiting_resumption(server, jid) => {
                if let Some(element) = stanza.element() {
                    self.consider(server, &jid.bare(), element);
                }
            }
            // Told from a task: the session may be resumed already.
            Event::SessionParked {
                jid,
                unacknowledged,
            } if still_awaiting_resumption(server, jid) => {
                self.unacknowledged(server, &jid.bare(), unacknowledged)
            }
            Event::SubscriptionRequest { user, .. } if !any_attached(server, user) => {
                self.publisher
                    .notify(server, user, Unseen::SubscriptionRequest);
            }
            Event::SessionBound { jid } | Event::SessionResumed { jid, .. } => {
                self.publisher.seen(&jid.bare());
            }
            Event::AccountDeleted { user } => {
                self.publisher.seen(user);
                self.publisher.forget_account_errors(user);
            }
            _ => {}
        }
        Some(Verdict::Continue)
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            let Event::PreRoute {
                origin, to, stanza, ..
            } = event
            else {
                return Verdict::Continue;
            };
            let Some((node, jid)) = remote_disable::affiliation_removed(stanza) else {
                return Verdict::Continue;
            };
            let user = to.bare();
            if remote_disable::disable(server, origin.sender(), &user, node, jid).await {
                self.publisher.forget_account_errors(&user);
                // Told to the server, not to the user's clients.
                return Verdict::Stop;
            }
            Verdict::Continue
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn still_awaiting_resumption(server: &Server, jid: &jid::FullJid) -> bool {
    use crate::modules::stream_management::AwaitingResumption;
    server.sessions.extensions(jid).is_some_and(|ext| {
        ext.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get::<AwaitingResumption>()
            .is_some()
    })
}

/// Did the message reach only sessions whose connection is gone? A
/// session held by another node of a cluster counts as attached: this
/// node cannot see its connection (that node knows; without this, every
/// message to a user online elsewhere looked like one for a user away,
/// and cost a look-up of their push registrations).
fn all_awaiting_resumption(server: &Server, account: &BareJid, resources: &[jid::FullJid]) -> bool {
    use crate::modules::stream_management::AwaitingResumption;
    let mut attached = false;
    let mut here = 0;
    server
        .sessions
        .for_each_extensions(account.as_str(), |resource, ext| {
            let got_it = resources.iter().any(|r| r.resource().as_str() == resource);
            if got_it {
                here += 1;
                attached |= ext.get::<AwaitingResumption>().is_none();
            }
        });
    !attached && here == resources.len()
}

/// Is any session of `account` attached to a connection?
fn any_attached(server: &Server, account: &BareJid) -> bool {
    use crate::modules::stream_management::AwaitingResumption;
    let mut attached = false;
    server
        .sessions
        .for_each_extensions(account.as_str(), |_, ext| {
            attached |= ext.get::<AwaitingResumption>().is_none();
        });
    attached
}

impl Push {
    /// The publisher, for tests and `ctl` figures.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Counts a message for `account` and has a notification published if
    /// it is worth one.
    fn consider(&self, server: &Server, account: &BareJid, stanza: &Element) {
        let Some(summary) = worth_pushing(stanza) else {
            return;
        };
        let limits = &server.config().push;
        let body = summary
            .body
            .filter(|_| limits.include_body)
            .map(|b| notification::truncate(&b.text(), limits.max_body_bytes).to_string());
        let unseen = Unseen::Message {
            sender: summary.sender.to_string(),
            body,
        };
        self.publisher.notify(server, account, unseen);
    }

    /// A session was parked with stanzas its client never acknowledged:
    /// it may have lost them with the connection (a phone that went out of
    /// coverage looks connected until a write fails), so they count as
    /// unseen. Those read from offline storage were counted when stored.
    fn unacknowledged(&self, server: &Server, account: &BareJid, stanzas: &[Arc<OutStanza>]) {
        let max_depth = server.config().limits.max_depth;
        for st in stanzas.iter().filter(|st| st.stored_id().is_none()) {
            // Parsed apart from the stanza, which keeps only its bytes
            // while it waits (its element is not cached again).
            let Some(element) = std::str::from_utf8(st.bytes())
                .ok()
                .and_then(|xml| super::xml_from_storage(xml, max_depth))
                .and_then(|mut v| v.pop())
            else {
                continue;
            };
            self.consider(server, account, &element);
        }
    }

    async fn answer(&self, req: &IqRequest<'_>) -> IqOutcome {
        // Sent to the user's own bare JID (or without `to`), §5.
        match req.target {
            IqTarget::Account { own: true } => {}
            IqTarget::Account { own: false } => return Err(StanzaErrorCondition::Forbidden.into()),
            IqTarget::Server => return Err(StanzaErrorCondition::ServiceUnavailable.into()),
        }
        if !req.is_set {
            return Err(StanzaErrorCondition::BadRequest.into());
        }
        let account = req.from.bare();
        let (domain, user) = (
            account.domain().as_str(),
            account.node().map(|n| n.as_str()).unwrap_or_default(),
        );
        let service = service_jid(req.payload)?;
        let store = &req.server.store;
        match req.payload.name() {
            "enable" => {
                check_service(req.server, &service)?;
                let reg = registration(req.server, req.payload, service.to_string())?;
                let max = req.server.config().push.max_registrations;
                match store.push_enable(domain, user, &reg, max).await {
                    Ok(true) => {
                        // The node and the options are the app server's
                        // secrets: only the service is logged.
                        tracing::info!(account = %account, service = %reg.service,
                            "push notifications enabled");
                        Ok(None)
                    }
                    Ok(false) => Err(StanzaError::with_text(
                        StanzaErrorCondition::ResourceConstraint,
                        format!("at most {max} push registrations per account"),
                    )),
                    Err(e) => Err(internal(e)),
                }
            }
            "disable" => {
                let node = req.payload.attr("node");
                match store
                    .push_disable(domain, user, service.as_str(), node)
                    .await
                {
                    Ok(n) => {
                        self.publisher.forget_account_errors(&account);
                        tracing::info!(account = %account, service = %service, removed = n,
                            "push notifications disabled");
                        Ok(None)
                    }
                    Err(e) => Err(internal(e)),
                }
            }
            _ => Err(StanzaErrorCondition::BadRequest.into()),
        }
    }
}

fn internal(e: crate::storage::StorageError) -> StanzaError {
    tracing::error!(error = %e, "push registrations");
    StanzaErrorCondition::InternalServerError.into()
}

/// The app server's JID (`jid`, required), normalised.
fn service_jid(payload: &Element) -> Result<Jid, StanzaError> {
    let raw = payload
        .attr("jid")
        .ok_or_else(|| StanzaError::with_text(StanzaErrorCondition::BadRequest, "missing 'jid'"))?;
    Jid::new(raw).map_err(|_| StanzaErrorCondition::JidMalformed.into())
}

/// An app server is a service: a component, or anything on another
/// domain. An address at one of our hosts would let a user have the
/// server send IQs of their making to another user's client, past that
/// user's blocklist.
fn check_service(server: &Server, service: &Jid) -> Result<(), StanzaError> {
    if server.route(service.domain().as_str()) == crate::routes::Route::Host {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::NotAcceptable,
            "an app server is not an address at this server's hosts",
        ));
    }
    Ok(())
}

/// The registration an `<enable/>` asks for: a node (required: a publish
/// needs one) and the optional publish-options form.
fn registration(
    server: &Server,
    enable: &Element,
    service: String,
) -> Result<PushRegistration, StanzaError> {
    let limits = &server.config().push;
    let node = match enable.attr("node") {
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "missing 'node'",
            ))
        }
    };
    if node.len() > limits.max_node_length {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::NotAcceptable,
            "node too long",
        ));
    }
    let mut forms = enable.children().filter(|c| c.is("x", super::NS_DATA));
    let options = match (forms.next(), forms.next()) {
        (None, _) => None,
        (Some(form), None) => {
            if !notification::is_form_of(form, NS_PUBLISH_OPTIONS)
                || form.attr("type") != Some("submit")
            {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::BadRequest,
                    "publish options must be a submitted form of FORM_TYPE pubsub#publish-options",
                ));
            }
            let xml = super::xml_for_storage([form]);
            if xml.len() > limits.max_options_bytes {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::NotAcceptable,
                    "publish options too large",
                ));
            }
            Some(xml)
        }
        (Some(_), Some(_)) => {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "one publish-options form at most",
            ))
        }
    };
    Ok(PushRegistration {
        service,
        node: node.to_string(),
        options,
    })
}
