//! The clients an account logged in with, as users see and revoke them
//! (client access management, XEP-0494), and the feature that carries the
//! SASL2 family's XEPs (the login itself is in `net::c2s::sasl2`).
//!
//! `<list/>` answers every client recorded at SASL2 login (user-agent id,
//! software, device, first and last seen, how it last authenticated,
//! whether it holds a FAST token, whether it is connected); `<revoke/>`
//! forgets a client: its token dies and its live session ends.

use jid::{BareJid, FullJid};

use super::{IqFuture, IqOutcome, IqRequest, IqTarget};
use crate::feature::{Disco, Feature};
use crate::server::Server;
use crate::stanza::{StanzaErrorCondition, StreamErrorCondition};
use crate::storage::ClientRecord;
use crate::xml::Element;

pub const NS: &str = "urn:xmpp:cam:0";

/// The SASL2 family and client access management.
#[derive(Debug, Default)]
pub struct Clients;

impl Feature for Clients {
    fn name(&self) -> &'static str {
        "clients"
    }

    fn xeps(&self) -> &'static [u16] {
        // SASL2, Bind 2, FAST and downgrade protection are negotiated by
        // the c2s driver; the client list is this feature's.
        &[388, 386, 484, 474, 494]
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
    let bare = from.to_bare();
    match (req.is_set, req.payload.name()) {
        (false, "list") => list(req.server, &bare).await.map(Some),
        (true, "revoke") => {
            let id = req
                .payload
                .attr("id")
                .filter(|i| !i.is_empty())
                .ok_or(StanzaErrorCondition::BadRequest)?;
            match revoke(req.server, &bare, id).await? {
                true => Ok(None),
                false => Err(StanzaErrorCondition::ItemNotFound.into()),
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

fn storage_error(e: crate::storage::StorageError) -> crate::stanza::StanzaError {
    tracing::error!(error = %e, "client list");
    StanzaErrorCondition::InternalServerError.into()
}

/// The client's live session, if its last resource is bound.
fn live(server: &Server, bare: &BareJid, c: &ClientRecord) -> Option<FullJid> {
    let full = FullJid::new(&format!("{bare}/{}", c.resource.as_deref()?)).ok()?;
    server.sessions.is_bound(&full).then_some(full)
}

async fn list(server: &Server, bare: &BareJid) -> Result<Element, crate::stanza::StanzaError> {
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

fn client_element(server: &Server, bare: &BareJid, c: &ClientRecord) -> Element {
    let connected = live(server, bare, c).is_some();
    let mut auth = Element::new("auth", NS);
    auth.append_child(Element::new(
        if c.last_auth == "fast" {
            "fast"
        } else {
            "password"
        },
        NS,
    ));
    let mut ua = Element::new("user-agent", NS);
    if !c.software.is_empty() {
        ua.append_child(Element::new("software", NS).with_text(&c.software));
    }
    if !c.device.is_empty() {
        ua.append_child(Element::new("device", NS).with_text(&c.device));
    }
    let has_token = c.token.is_some() || c.next.is_some();
    Element::new("client", NS)
        .with_attr("id", &c.client_id)
        .with_attr("connected", if connected { "true" } else { "false" })
        .with_attr("type", if has_token { "access" } else { "session" })
        .with_child(Element::new("first-seen", NS).with_text(stamp(c.first_seen)))
        .with_child(Element::new("last-seen", NS).with_text(stamp(c.last_seen)))
        .with_child(auth)
        .with_child(ua)
}

/// Forgets a client of `bare` (its token with it) and ends its live
/// session. False: no such client.
pub async fn revoke(
    server: &Server,
    bare: &BareJid,
    client_id: &str,
) -> Result<bool, crate::stanza::StanzaError> {
    let (domain, user) = account_parts(bare);
    let Some(old) = server
        .store
        .delete_client(domain, user, client_id)
        .await
        .map_err(storage_error)?
    else {
        return Ok(false);
    };
    if let Some(full) = live(server, bare, &old) {
        server
            .sessions
            .close(&full, StreamErrorCondition::NotAuthorized);
    }
    tracing::info!(user = %bare, client = client_id, "client revoked");
    Ok(true)
}
