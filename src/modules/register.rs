//! In-Band Registration (XEP-0077): creating an account before logging in
//! (when the host allows it, over TLS, rate-limited per IP), and for a
//! logged-in user, changing the password or cancelling the account with
//! everything stored for it.
//!
//! The pre-authentication half answers the `PreAuthIq` event the c2s
//! negotiation fires (the stream has no bound JID yet); the rest answers
//! IQs like any feature.

use crate::stanza::bare::Bare;
use std::net::IpAddr;

use jid::{BareJid, NodePart};

use super::{IqFuture, IqOutcome, IqRequest, IqTarget, NS_DATA};
use crate::accounts;
use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::hashing::HashingError;
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition, StreamErrorCondition};
use crate::storage::AccountRecord;
use crate::stream::c2s::NS_REGISTER;
use crate::throttle;
use crate::xml::Element;

/// The registration feature, with its count of accounts created in-band
/// per source address (counted like failures, so the same window logic
/// caps them; made from the configuration on first use).
#[derive(Default)]
pub struct Registration {
    by_source: std::sync::OnceLock<crate::throttle::FailureWindow<IpAddr>>,
}

impl Registration {
    pub(crate) fn by_source(&self, server: &Server) -> &crate::throttle::FailureWindow<IpAddr> {
        self.by_source.get_or_init(|| {
            crate::throttle::FailureWindow::new(
                server.config().limits.registrations_per_ip,
                std::time::Duration::from_secs(server.config().limits.registration_window),
            )
        })
    }
}

/// Per-connection state: an account was created on this stream.
#[derive(Debug, Default)]
pub(crate) struct RegisteredHere(pub bool);

/// Per-connection state set by another feature (invitations, XEP-0401):
/// this stream may register where open registration is off. The c2s
/// negotiation then lets registration IQs through, and the feature that
/// admitted it answers the set that creates the account.
#[derive(Debug)]
pub struct Admitted;

impl Feature for Registration {
    fn name(&self) -> &'static str {
        "register"
    }

    fn xeps(&self) -> &'static [u16] {
        &[77]
    }

    fn disco(&self) -> Disco {
        // Advertised on every host: a logged-in user can always change the
        // password and cancel in-band (§6); whether new accounts may be
        // created is told by the stream feature instead.
        Disco {
            server: &[NS_REGISTER],
            account: &[],
        }
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS_REGISTER]
    }

    fn handle_iq<'a>(&'a self, req: &'a IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(answer(req))
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[(EventKind::PreAuthIq, 0)]
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            let Event::PreAuthIq {
                domain,
                peer,
                iq,
                connection,
                answer,
            } = event
            else {
                return Verdict::Continue;
            };
            if iq.get_child("query", NS_REGISTER).is_none() {
                return Verdict::Continue;
            }
            let here = &mut connection.get_or_default::<RegisteredHere>().0;
            let outcome =
                before_auth(server, self.by_source(server), domain, *peer, iq, here).await;
            **answer = Some(outcome.map_err(|r| StanzaError {
                condition: r.condition,
                text: r.text.map(str::to_owned),
                app: None,
            }));
            Verdict::Stop
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A refused registration request: the condition and a text for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub condition: StanzaErrorCondition,
    pub text: Option<&'static str>,
}

impl Refusal {
    fn new(condition: StanzaErrorCondition, text: &'static str) -> Refusal {
        Refusal {
            condition,
            text: Some(text),
        }
    }
}

impl From<StanzaErrorCondition> for Refusal {
    fn from(condition: StanzaErrorCondition) -> Refusal {
        Refusal {
            condition,
            text: None,
        }
    }
}

/// Answers a registration IQ on a TLS stream that is not authenticated yet,
/// for a host that allows registration (XEP-0077 §3.1, §3.3). The stream
/// stays unauthenticated: the client logs in with the new account next.
/// `registered_here` is set once an account was created on this stream; a
/// second one is refused, as §3.3 allows.
pub(crate) async fn before_auth(
    server: &Server,
    by_source: &crate::throttle::FailureWindow<IpAddr>,
    domain: &str,
    ip: IpAddr,
    iq: &Element,
    registered_here: &mut bool,
) -> Result<Option<Element>, Refusal> {
    let query = iq
        .get_child("query", NS_REGISTER)
        .ok_or(StanzaErrorCondition::BadRequest)?;
    if iq.attr("type") != Some("set") {
        return Ok(Some(
            Element::new("query", NS_REGISTER)
                .with_child(
                    Element::new("instructions", NS_REGISTER)
                        .with_text(format!("Choose a username and password for {domain}.")),
                )
                .with_child(Element::new("username", NS_REGISTER))
                .with_child(Element::new("password", NS_REGISTER)),
        ));
    }
    if query.get_child("remove", NS_REGISTER).is_some() {
        // Nobody is logged in, so there is no account to cancel (§3.2).
        return Err(StanzaErrorCondition::UnexpectedRequest.into());
    }
    if *registered_here {
        return Err(Refusal::new(
            StanzaErrorCondition::NotAcceptable,
            "an account was already created on this stream; log in with it",
        ));
    }
    let (Some(username), Some(password)) = (field(query, "username"), field(query, "password"))
    else {
        return Err(Refusal::new(
            StanzaErrorCondition::NotAcceptable,
            "a username and a password are required",
        ));
    };
    let jid = NodePart::new(&username)
        .ok()
        .and_then(|node| BareJid::new(&format!("{node}@{domain}")).ok())
        .filter(|_| !username.is_empty())
        .ok_or(Refusal::new(
            StanzaErrorCondition::NotAcceptable,
            "the username is not valid in an XMPP address",
        ))?;
    if password.is_empty() {
        return Err(Refusal::new(
            StanzaErrorCondition::NotAcceptable,
            "the password must not be empty",
        ));
    }
    // The registration is counted before the work, so parallel requests
    // from one source cannot all pass, and given back if no account was
    // created. §3.3 suggests not-acceptable for registering too often.
    let source = throttle::source_key(ip, server.config().limits.auth_ipv6_prefix);
    let Some(attempt) = by_source.try_reserve(&source) else {
        return Err(Refusal::new(
            StanzaErrorCondition::NotAcceptable,
            "too many accounts were created from your address recently; try again later",
        ));
    };
    let created = create(server, domain, &jid, password).await;
    match created {
        Ok(()) => {
            *registered_here = true;
            tracing::info!(jid = %jid, peer = %ip, "account registered in-band");
            Ok(None)
        }
        Err(r) => {
            by_source.refund(&source, attempt);
            Err(r)
        }
    }
}

/// Creates the account `jid` unless it exists.
async fn create(
    server: &Server,
    domain: &str,
    jid: &BareJid,
    password: String,
) -> Result<(), Refusal> {
    let node = jid.node().map(|n| n.as_str()).unwrap_or_default();
    // Cheap check first, so a taken name costs no key derivation.
    match server.store.account_exists(domain, node).await {
        Ok(false) => {}
        Ok(true) => return Err(StanzaErrorCondition::Conflict.into()),
        Err(e) => {
            tracing::error!(error = %e, "checking for an account");
            return Err(StanzaErrorCondition::InternalServerError.into());
        }
    }
    // A name an account invitation reserves is its token's alone (XEP-0401
    // "Account Creation"); that token's registration has taken its use
    // already, so its own reservation no longer counts here.
    let now = crate::modules::time::unix_now();
    match server.store.invite_reserves(domain, node, now).await {
        Ok(false) => {}
        Ok(true) => {
            return Err(Refusal::new(
                StanzaErrorCondition::Conflict,
                "that account name is reserved for an invitation",
            ))
        }
        Err(e) => {
            tracing::error!(error = %e, "checking reserved account names");
            return Err(StanzaErrorCondition::InternalServerError.into());
        }
    }
    let record = derive(server, jid, password).await?;
    match server.store.create_account(&record).await {
        Ok(true) => Ok(()),
        // Someone took the name between the check and the insert.
        Ok(false) => Err(StanzaErrorCondition::Conflict.into()),
        Err(e) => {
            tracing::error!(error = %e, "creating an account");
            Err(StanzaErrorCondition::InternalServerError.into())
        }
    }
}

/// Registration IQs from a logged-in user, about their own account: to
/// the server (as §3.3 shows) or with no `to` (as §3.2 asks for cancels).
async fn answer(req: &IqRequest<'_>) -> IqOutcome {
    if req.target == (IqTarget::Account { own: false }) {
        return Err(StanzaErrorCondition::ServiceUnavailable.into());
    }
    if req.payload.name() != "query" {
        return Err(StanzaErrorCondition::BadRequest.into());
    }
    let account = req.from.bare();
    let username = account.node().map(|n| n.as_str()).unwrap_or_default();
    if !req.is_set {
        // §3.1: an entity that is registered is told so, with its username.
        return Ok(Some(
            Element::new("query", NS_REGISTER)
                .with_child(Element::new("registered", NS_REGISTER))
                .with_child(Element::new("username", NS_REGISTER).with_text(username)),
        ));
    }
    if req.payload.get_child("remove", NS_REGISTER).is_some() {
        // §3.2: <remove/> must be the only child.
        if req.payload.children().count() != 1 {
            return Err(StanzaErrorCondition::BadRequest.into());
        }
        // Only a session owns an account to cancel.
        let session = req
            .from
            .try_as_full()
            .map_err(|_| StanzaErrorCondition::ServiceUnavailable)?;
        return cancel(req, &account, session).await;
    }
    change_password(req, &account, username).await
}

/// §3.2: deletes the account and all its data. The requesting session ends
/// with `not-authorized` after this result is written.
async fn cancel(req: &IqRequest<'_>, account: &BareJid, requester: &jid::FullJid) -> IqOutcome {
    let server = req.server;
    let domain = account.domain().as_str();
    let username = account.node().map(|n| n.as_str()).unwrap_or_default();
    match server.store.delete_account(domain, username).await {
        Ok(true) => {
            tracing::info!(jid = %account, "account cancelled in-band");
            server
                .features
                .fire(server, &mut Event::AccountDeleted { user: account })
                .await;
            // §3.2: the account's other sessions end too; the requester's
            // own once this result is written.
            server.sessions.close_account(
                account,
                Some(requester),
                StreamErrorCondition::NotAuthorized,
            );
            let _ = req.end_session.set(StreamErrorCondition::NotAuthorized);
            Ok(None)
        }
        Ok(false) => Err(StanzaErrorCondition::RegistrationRequired.into()),
        Err(e) => {
            tracing::error!(error = %e, jid = %account, "deleting an account");
            Err(StanzaErrorCondition::InternalServerError.into())
        }
    }
}

/// §3.3: a new password for the logged-in account.
async fn change_password(req: &IqRequest<'_>, account: &BareJid, username: &str) -> IqOutcome {
    let given = field(req.payload, "username").ok_or(StanzaErrorCondition::BadRequest)?;
    // Compare in normalised form: "Juliet" names the account "juliet".
    if NodePart::new(&given).ok().as_ref().map(|n| n.as_str()) != Some(username) {
        return Err(StanzaErrorCondition::BadRequest.into());
    }
    let password = field(req.payload, "password").ok_or(StanzaErrorCondition::BadRequest)?;
    // §3.3: an empty password never replaces the existing one.
    if password.is_empty() {
        return Err(StanzaErrorCondition::NotAcceptable.into());
    }
    let record = derive(req.server, account, password)
        .await
        .map_err(|r| r.condition)?;
    match req.server.store.set_credentials(&record).await {
        Ok(true) => {
            tracing::info!(jid = %account, "password changed in-band");
            Ok(None)
        }
        Ok(false) => Err(StanzaErrorCondition::RegistrationRequired.into()),
        Err(e) => {
            tracing::error!(error = %e, jid = %account, "changing a password");
            Err(StanzaErrorCondition::InternalServerError.into())
        }
    }
}

/// Derives the stored credentials on the bounded hashing pool (PBKDF2, and
/// argon2 when configured, are deliberately slow). When the pool's queue is
/// full the request is refused with resource-constraint, which tells the
/// client to retry later.
async fn derive(
    server: &Server,
    jid: &BareJid,
    password: String,
) -> Result<AccountRecord, Refusal> {
    let hashing = server.config().limits.password_hashing();
    let jid = jid.clone();
    match server
        .hashing
        .run(move |memory| accounts::derive_record_with(&jid, &password, &hashing, memory))
        .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "deriving credentials");
            Err(StanzaErrorCondition::InternalServerError.into())
        }
        Err(HashingError::Busy) => Err(Refusal::new(
            StanzaErrorCondition::ResourceConstraint,
            "the server is busy; try again shortly",
        )),
        Err(HashingError::Failed) => {
            tracing::error!("credential derivation task failed");
            Err(StanzaErrorCondition::InternalServerError.into())
        }
    }
}

/// A registration field: the `jabber:iq:register` element, or the field of
/// a submitted data form (§5, which takes precedence when present).
pub(crate) fn field(query: &Element, name: &str) -> Option<String> {
    if let Some(form) = query.get_child("x", NS_DATA) {
        return form
            .children()
            .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(name))
            .map(|f| {
                f.get_child("value", NS_DATA)
                    .map(Element::text)
                    .unwrap_or_default()
            });
    }
    query.get_child(name, NS_REGISTER).map(Element::text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_from_plain_elements_or_a_form() {
        let plain = Element::new("query", NS_REGISTER)
            .with_child(Element::new("username", NS_REGISTER).with_text("juliet"))
            .with_child(Element::new("password", NS_REGISTER));
        assert_eq!(field(&plain, "username").as_deref(), Some("juliet"));
        assert_eq!(field(&plain, "password").as_deref(), Some(""));
        assert_eq!(field(&plain, "email"), None);

        let form = Element::new("query", NS_REGISTER).with_child(
            Element::new("x", NS_DATA)
                .with_attr("type", "submit")
                .with_child(
                    Element::new("field", NS_DATA)
                        .with_attr("var", "username")
                        .with_child(Element::new("value", NS_DATA).with_text("romeo")),
                ),
        );
        assert_eq!(field(&form, "username").as_deref(), Some("romeo"));
        assert_eq!(field(&form, "password"), None);
    }
}
