//! The clients an account logged in with, as users see and revoke them
//! (client access management, XEP-0494), and the feature that carries the
//! SASL2 family's XEPs (the login itself is in `net::c2s::sasl2`).
//!
//! `<list/>` answers every client recorded at SASL2 login (user-agent id,
//! software, device, first and last seen, how it authenticated — every
//! client's row was made by a password login, `<fast/>` when it holds a
//! live token —, whether it is connected or waiting for resumption);
//! `<revoke/>` forgets a client: its token dies and its session ends,
//! whether a connection holds it or it waits for resumption. Checked
//! against XEP-0494 version 0.1.0 (2024-09-17).

use crate::modules::time::unix_now as now;
use crate::stanza::bare::Bare;
use jid::{BareJid, FullJid};

use super::stream_management::{end_parked, StreamManagementFeature};
use super::{IqFuture, IqOutcome, IqRequest, IqTarget};
use crate::feature::{Disco, Feature};
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition, StreamErrorCondition};
use crate::storage::ClientRecord;
use crate::xml::Element;

pub const NS: &str = "urn:xmpp:cam:0";

/// In a session's extensions (set at Bind 2): the SASL2 client the session
/// belongs to, and its row's `generation` then. A resumption checks the row
/// is still there and still the same one, so a client revoked while the
/// server could not be told (`ctl` without the admin socket) cannot resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundClient {
    pub client_id: String,
    pub generation: i64,
}

/// What a revocation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// No such client.
    NotFound,
    /// Forgotten; it last logged in with its token.
    Done,
    /// Forgotten, but it last logged in with the password, which it may
    /// keep: only a new password locks it out (XEP-0494 §3.2).
    PasswordKnown,
}

/// The SASL2 family and client access management.
#[derive(Debug, Default)]
pub struct Clients;

impl Feature for Clients {
    fn name(&self) -> &'static str {
        "clients"
    }

    fn xeps(&self) -> &'static [u16] {
        // SASL2, Bind 2, FAST, downgrade protection and upgrade tasks are
        // negotiated by the c2s driver; the client list is this feature's.
        &[388, 386, 484, 474, 480, 494]
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
        Box::pin(answer(req))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

async fn answer(req: &IqRequest<'_>) -> IqOutcome {
    let own = matches!(
        req.target,
        IqTarget::Server | IqTarget::Account { own: true }
    );
    let Ok(from) = req.from.try_as_full() else {
        return Err(StanzaErrorCondition::Forbidden.into());
    };
    if !own || !req.server.sessions.is_bound(from) {
        return Err(StanzaErrorCondition::Forbidden.into());
    }
    let bare = from.bare();
    match (req.is_set, req.payload.name()) {
        (false, "list") => list(req.server, &bare).await.map(Some),
        (true, "revoke") => {
            let id = req
                .payload
                .attr("id")
                .filter(|i| !i.is_empty())
                .ok_or(StanzaErrorCondition::BadRequest)?;
            match revoke(req.server, &bare, id).await? {
                Revoked::Done => Ok(None),
                Revoked::NotFound => Err(StanzaErrorCondition::ItemNotFound.into()),
                // Its token and session are gone all the same; the error
                // tells the user the password must change too.
                Revoked::PasswordKnown => Err(StanzaError::with_text(
                    StanzaErrorCondition::ServiceUnavailable,
                    "the client's token and session are ended, but it logged in with the \
                     password: change the password to lock it out",
                )
                .with_app(Element::new("password-reset-required", NS))),
            }
        }
        _ => Err(StanzaErrorCondition::BadRequest.into()),
    }
}

fn account_parts(bare: &BareJid) -> (&str, &str) {
    (
        bare.domain().as_str(),
        bare.node().map(|n| n.as_str()).unwrap_or_default(),
    )
}

fn storage_error(e: crate::storage::StorageError) -> StanzaError {
    tracing::error!(error = %e, "client list");
    StanzaErrorCondition::InternalServerError.into()
}

/// The client's live session, if its last resource is bound.
fn live(server: &Server, bare: &BareJid, c: &ClientRecord) -> Option<FullJid> {
    let full = FullJid::new(&format!("{bare}/{}", c.resource.as_deref()?)).ok()?;
    server.sessions.is_bound(&full).then_some(full)
}

async fn list(server: &Server, bare: &BareJid) -> Result<Element, StanzaError> {
    let (domain, user) = account_parts(bare);
    let clients = server
        .store
        .clients(domain, user)
        .await
        .map_err(storage_error)?;
    let mut out = Element::new("clients", NS);
    for c in &clients {
        out.append_child(client_element(server, bare, c));
    }
    Ok(out)
}

fn stamp(secs: i64) -> String {
    super::time::xep0082(secs).unwrap_or_default()
}

/// One `<client/>` as XEP-0494 0.1.0 draws it.
fn client_element(server: &Server, bare: &BareJid, c: &ClientRecord) -> Element {
    let connected = live(server, bare, c).is_some();
    // Every row is made by a password login (a token is only issued to a
    // known client), so every client has presented the password.
    let mut auth = Element::new("auth", NS).with_child(Element::new("password", NS));
    let t = now();
    if [&c.token, &c.next]
        .into_iter()
        .flatten()
        .any(|tok| tok.expiry > t)
    {
        auth.append_child(Element::new("fast", NS));
    }
    let mut ua = Element::new("user-agent", NS)
        .with_child(Element::new("software", NS).with_text(&c.software));
    if !c.device.is_empty() {
        ua.append_child(Element::new("device", NS).with_text(&c.device));
    }
    Element::new("client", NS)
        .with_attr("id", &c.client_id)
        .with_attr("connected", if connected { "true" } else { "false" })
        // "session": it logged in over XMPP (no other kind of access here).
        .with_attr("type", "session")
        .with_child(Element::new("first-seen", NS).with_text(stamp(c.first_seen)))
        .with_child(Element::new("last-seen", NS).with_text(stamp(c.last_seen)))
        .with_child(auth)
        // Nothing here restricts what a client may do.
        .with_child(Element::new("permission", NS).with_attr("status", "unrestricted"))
        .with_child(ua)
}

/// Ends one session for good, whether a connection holds it (closed with
/// `not-authorized`) or it waits for resumption (ended now, what it never
/// got re-routed). False: no such session.
pub async fn end_session(server: &Server, full: &FullJid) -> bool {
    let parked = server
        .features
        .get::<StreamManagementFeature>()
        .and_then(|f| f.take_parked(full));
    if let Some(p) = parked {
        tracing::info!(jid = %full, "session waiting for resumption ended");
        end_parked(server, p).await;
        return true;
    }
    let bound = server.sessions.is_bound(full);
    server
        .sessions
        .close(full, StreamErrorCondition::NotAuthorized);
    bound
}

/// May the session `jid` (waiting for resumption) be resumed? Not when it
/// was bound by a SASL2 client whose row is gone or was made anew since
/// (revoked); a storage failure says no too.
pub async fn may_resume(server: &Server, jid: &FullJid) -> bool {
    let bound = server.sessions.extensions(jid).and_then(|e| {
        e.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get::<BoundClient>()
            .cloned()
    });
    let Some(bound) = bound else {
        return true;
    };
    let bare = jid.bare();
    let (domain, user) = account_parts(&bare);
    match server.store.client(domain, user, &bound.client_id).await {
        Ok(Some(row)) => row.generation == bound.generation,
        Ok(None) => false,
        Err(e) => {
            tracing::error!(error = %e, "reading client before resumption");
            false
        }
    }
}

/// Forgets a client of `bare` (its token with it) and ends its session,
/// live or waiting for resumption.
pub async fn revoke(
    server: &Server,
    bare: &BareJid,
    client_id: &str,
) -> Result<Revoked, StanzaError> {
    let (domain, user) = account_parts(bare);
    let Some(old) = server
        .store
        .delete_client(domain, user, client_id)
        .await
        .map_err(storage_error)?
    else {
        return Ok(Revoked::NotFound);
    };
    if let Some(full) = live(server, bare, &old) {
        end_session(server, &full).await;
    }
    tracing::info!(user = %bare, client = client_id, "client revoked");
    Ok(if old.last_auth == "fast" {
        Revoked::Done
    } else {
        Revoked::PasswordKnown
    })
}
