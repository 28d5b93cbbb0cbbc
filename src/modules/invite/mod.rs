//! Invitations (XEP-0401 Easy User Onboarding, XEP-0379 Pre-Authenticated
//! Roster Subscription, registration with a token as XEP-0445 describes).
//!
//! A token (made by `waxwing ctl invite create`) lets its holder:
//! - register in-band on a host whose open registration is off: the client
//!   presents `<preauth xmlns='urn:xmpp:pars:0' token=…/>` in an IQ before
//!   the XEP-0077 form, the stream is admitted to registration
//!   (`register::Admitted`), and the set that creates the account redeems
//!   one use of the token; the account and the inviter (if any) then have
//!   a mutual subscription;
//! - subscribe to the inviter from an existing account: a subscription
//!   request carrying the token is pre-approved on the inviter's side.
//!
//! Tokens are stored hashed (`storage::invites`); this module never keeps
//! one in memory longer than a request.

pub mod token;

use crate::stanza::bare::Bare;
use std::net::IpAddr;

use jid::{BareJid, Jid};

use crate::feature::{Event, EventKind, Feature, HookFuture, StreamPhase, Verdict};
use crate::modules::register::{self, Admitted, Refusal, RegisteredHere, Registration};
use crate::modules::roster;
use crate::modules::time::unix_now as now;
use crate::router::Origin;
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::storage::{InviteRecord, StorageError, Store};
use crate::stream::c2s::{NS_PARS, NS_REGISTER};
use crate::xml::Element;

/// The stream feature that says tokens are accepted before registration,
/// under its first name (what Conversations looks for) …
pub const NS_INVITE: &str = "urn:xmpp:invite";
/// … and under XEP-0445's current one.
pub const NS_IBR_TOKEN: &str = "urn:xmpp:ibr-token:0";

/// Per-connection state: the invitation this stream presented.
#[derive(Debug)]
struct Presented {
    token_hash: String,
    inviter: Option<BareJid>,
}

/// Per-connection count of refused tokens.
#[derive(Debug, Default)]
struct Refused(u32);

/// The invitations feature.
#[derive(Default)]
pub struct Invitations;

/// What an invitation is for (see [`create`]).
pub struct Spec<'a> {
    /// The host the invitee may join.
    pub domain: &'a str,
    /// Whose contact the invitee becomes.
    pub inviter: Option<&'a BareJid>,
    /// An account invitation (XEP-0401 "Account Creation", from an
    /// operator or an administrator): its URI is `xmpp:host?register`,
    /// even with an inviter to subscribe to.
    pub admin: bool,
    /// The token admits registration (always for an account invitation).
    pub may_create_account: bool,
    pub expires_in: Option<u64>,
    pub max_uses: i64,
    /// The account name reserved for the invitee (normalised localpart).
    pub username: Option<&'a str>,
}

/// Creates and stores an invitation; returns the token (shown once: only
/// its hash is kept) and the record.
pub async fn create(store: &Store, spec: Spec<'_>) -> Result<(String, InviteRecord), StorageError> {
    let token = token::generate();
    let created = now();
    let record = InviteRecord {
        token_hash: token::hash(&token),
        domain: spec.domain.to_owned(),
        inviter: spec.inviter.map(|j| j.to_string()),
        may_create_account: spec.may_create_account || spec.admin,
        admin: spec.admin,
        expires: spec.expires_in.map(|s| created.saturating_add(s as i64)),
        uses: 0,
        max_uses: spec.max_uses,
        created,
        username: spec.username.map(str::to_owned),
    };
    store.invite_add(&record).await?;
    Ok((token, record))
}

/// The stored invitation a token names, if it may still be used for an
/// account on `domain`.
pub async fn usable(server: &Server, domain: &str, token: &str) -> Option<InviteRecord> {
    if !token::well_formed(token) {
        return None;
    }
    match server.store.invite(&token::hash(token)).await {
        Ok(Some(r)) if r.domain == domain && r.may_create_account && r.is_usable(now()) => Some(r),
        Ok(_) => None,
        Err(e) => {
            tracing::error!(error = %e, "reading an invitation");
            None
        }
    }
}

/// After an account was created with `invite`: mutual subscription with
/// the inviter (XEP-0401 §5, pushed to the inviter's online resources).
pub async fn welcome(server: &Server, invite: Option<&BareJid>, account: &BareJid) {
    let Some(inviter) = invite else { return };
    for (user, contact) in [(inviter, account), (account, inviter)] {
        if let Err(e) = roster::subscribe_mutually(server, user, contact).await {
            tracing::error!(error = %e, user = %user, "invitation: roster subscription");
        }
    }
}

/// The second name of the stream feature (`Feature::stream_feature` offers
/// one element per feature, so the current name has a feature of its own).
pub struct IbrToken;

impl Feature for IbrToken {
    fn name(&self) -> &'static str {
        "ibr-token"
    }

    fn stream_feature(&self, _server: &Server, phase: StreamPhase) -> Option<Element> {
        (phase == StreamPhase::Unauthenticated { tls: true })
            .then(|| Element::new("register", NS_IBR_TOKEN))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Feature for Invitations {
    fn name(&self) -> &'static str {
        "invite"
    }

    fn xeps(&self) -> &[u16] {
        &[379, 401]
    }

    fn stream_feature(&self, _server: &Server, phase: StreamPhase) -> Option<Element> {
        // Tokens travel with passwords after them: only over TLS.
        (phase == StreamPhase::Unauthenticated { tls: true })
            .then(|| Element::new("register", NS_INVITE))
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        // Before registration (0) and presence (0).
        &[(EventKind::PreAuthIq, -10), (EventKind::Presence, -10)]
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            match event {
                Event::PreAuthIq {
                    domain,
                    peer,
                    iq,
                    connection,
                    answer,
                } => {
                    if let Some(preauth) = iq.get_child("preauth", NS_PARS) {
                        let token = preauth.attr("token").unwrap_or_default();
                        let outcome = present(server, domain, token, connection).await;
                        **answer = Some(outcome.map(|()| None));
                        return Verdict::Stop;
                    }
                    let is_set = iq.attr("type") == Some("set");
                    let Some(query) = iq.get_child("query", NS_REGISTER) else {
                        return Verdict::Continue;
                    };
                    if !is_set || query.get_child("remove", NS_REGISTER).is_some() {
                        return Verdict::Continue;
                    }
                    let Some(presented) = connection.remove::<Presented>() else {
                        return Verdict::Continue;
                    };
                    let here = &mut connection.get_or_default::<RegisteredHere>().0;
                    let outcome = register_with(
                        server,
                        domain,
                        *peer,
                        iq,
                        here,
                        &presented.token_hash,
                        presented.inviter.as_ref(),
                    )
                    .await;
                    if outcome.is_err() {
                        // Not used: the stream may try again (another name).
                        connection.insert(presented);
                    } else {
                        // One account per token use; the stream goes back
                        // to the host's own rules.
                        connection.remove::<Admitted>();
                    }
                    **answer = Some(outcome.map_err(|r| StanzaError {
                        condition: r.condition,
                        text: r.text.map(str::to_owned),
                        app: None,
                    }));
                    Verdict::Stop
                }
                Event::Presence {
                    origin,
                    to: Some(to),
                    stanza,
                } => {
                    // From a local user, a remote server's or a component's:
                    // XEP-0379 invitees may live anywhere.
                    let from = match origin {
                        Origin::Session(full) => full.bare(),
                        other => other.sender().bare(),
                    };
                    if stanza.attr("type") == Some("subscribe") && from.node().is_some() {
                        if let Some(token) = stanza
                            .get_child("preauth", NS_PARS)
                            .and_then(|p| p.attr("token"))
                        {
                            let token = token.to_owned();
                            preapprove(server, &from, to, &token).await;
                        }
                    }
                    Verdict::Continue
                }
                _ => Verdict::Continue,
            }
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// XEP-0445: a token presented before registration. A valid one admits the
/// stream to registration; anything else is item-not-found, the same for
/// unknown, expired and used-up tokens so none can be told apart.
async fn present(
    server: &Server,
    domain: &str,
    token: &str,
    connection: &mut crate::feature::Extensions,
) -> Result<(), StanzaError> {
    // `[limits] invite_tries_per_stream`: a token has ~190 bits, so this
    // is about load, not guessing; the per-address registration cap
    // still applies on top.
    if connection.get_or_default::<Refused>().0 >= server.config().limits.invite_tries_per_stream {
        return Err(StanzaError {
            condition: StanzaErrorCondition::PolicyViolation,
            text: Some("too many invalid invitation tokens on this stream".into()),
            app: None,
        });
    }
    let Some(invite) = usable(server, domain, token).await else {
        connection.get_or_default::<Refused>().0 += 1;
        return Err(StanzaError {
            condition: StanzaErrorCondition::ItemNotFound,
            text: Some("the invitation is unknown, expired or already used".into()),
            app: None,
        });
    };
    connection.insert(Presented {
        token_hash: invite.token_hash,
        inviter: invite.inviter.and_then(|j| BareJid::new(&j).ok()),
    });
    connection.insert(Admitted);
    Ok(())
}

/// A registration set (XEP-0077 IQ, or the landing page's form made into
/// one) with the invitation `token_hash`: one use of the token is taken
/// first (so two requests racing for the last use cannot both create an
/// account) and given back if no account was created; the registration
/// rules, per-address cap and hashing pool are registration's own.
pub async fn register_with(
    server: &Server,
    domain: &str,
    peer: IpAddr,
    iq: &Element,
    here: &mut bool,
    token_hash: &str,
    inviter: Option<&BareJid>,
) -> Result<Option<Element>, Refusal> {
    let refused = Refusal {
        condition: StanzaErrorCondition::NotAuthorized,
        text: Some("the invitation is no longer valid"),
    };
    let Some(registration) = server.features.get::<Registration>() else {
        return Err(StanzaErrorCondition::ServiceUnavailable.into());
    };
    // An invitation that names the account admits that account only.
    let reserved = match server.store.invite(token_hash).await {
        Ok(r) => r.and_then(|r| r.username),
        Err(e) => {
            tracing::error!(error = %e, "reading an invitation");
            return Err(StanzaErrorCondition::InternalServerError.into());
        }
    };
    if let Some(name) = reserved {
        let asked = iq
            .get_child("query", NS_REGISTER)
            .and_then(|q| register::field(q, "username"))
            .and_then(|u| jid::NodePart::new(&u).ok().map(|n| n.to_string()));
        if asked.as_deref() != Some(name.as_str()) {
            return Err(Refusal {
                condition: StanzaErrorCondition::NotAcceptable,
                text: Some("this invitation is for another account name"),
            });
        }
    }
    match server.store.invite_redeem(token_hash, now()).await {
        Ok(true) => {}
        Ok(false) => return Err(refused),
        Err(e) => {
            tracing::error!(error = %e, "redeeming an invitation");
            return Err(StanzaErrorCondition::InternalServerError.into());
        }
    }
    let by_source = registration.by_source(server);
    let outcome = register::before_auth(server, by_source, domain, peer, iq, here).await;
    if outcome.is_err() {
        if let Err(e) = server.store.invite_unredeem(token_hash).await {
            tracing::error!(error = %e, "giving back an invitation's use");
        }
        return outcome;
    }
    let account = iq
        .get_child("query", NS_REGISTER)
        .and_then(|q| register::field(q, "username"))
        .and_then(|u| BareJid::new(&format!("{u}@{domain}")).ok());
    if let Some(account) = account {
        tracing::info!(jid = %account, "account created with an invitation");
        welcome(server, inviter, &account).await;
    }
    outcome
}

/// XEP-0379 §3.4: `from` asks to subscribe to `to` with a token `to` gave
/// out; the token's use is taken and `to`'s side pre-approves, so the
/// presence module answers the request at once.
async fn preapprove(server: &Server, from: &BareJid, to: &Jid, token: &str) {
    let to = to.bare();
    if !token::well_formed(token) || !server.is_local_domain(to.domain().as_str()) {
        return;
    }
    let hash = token::hash(token);
    let Ok(Some(invite)) = server.store.invite(&hash).await else {
        return;
    };
    if invite.inviter.as_deref() != Some(to.as_str()) {
        return;
    }
    match server.store.invite_redeem(&hash, now()).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::error!(error = %e, "redeeming an invitation");
            return;
        }
    }
    if let Err(e) = roster::preapprove(server, &to, from).await {
        tracing::error!(error = %e, "invitation: pre-approval");
    }
}
