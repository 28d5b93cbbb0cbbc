//! IQs between occupants through the room (XEP-0045 §17.4 "IQ", rule 3):
//! a request to `room@service/nick` goes to that occupant's real JID
//! with the sender's occupant JID as `from`, and the answer comes back
//! the same way, so neither learns the other's real JID. A vCard request
//! goes to the occupant's bare JID (its server answers for the account,
//! XEP-0054); anything else to the occupant's latest session.
//!
//! The room remembers each relayed request until its answer (the answer
//! must come from the address the request went to), at most
//! `[muc] max_relayed_iqs` per room, each forgotten after
//! `[muc] relayed_iq_timeout` seconds: beyond the bound a sender gets
//! `resource-constraint`.

use std::time::{Duration, Instant};

use jid::{FullJid, Jid};

use super::room::{Ctx, Room};
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::Element;

const NS_VCARD: &str = "vcard-temp";

/// A request relayed to an occupant, awaiting its answer.
#[derive(Debug, Clone)]
pub struct RelayedIq {
    /// Who asked, and the id it used.
    asker: FullJid,
    asker_id: String,
    /// The nick the request was for: the answer comes from its occupant JID.
    target_nick: String,
    /// Where the request went; the answer must come from there.
    sent_to: String,
    expires: Instant,
}

/// Relays `iq` (a get or set from the occupant `from`) to the occupant
/// `nick`; the answer is relayed back by [`answered`].
pub fn relay(
    ctx: &mut Ctx<'_>,
    room: &mut Room,
    from: &FullJid,
    nick: &str,
    iq: &Element,
) -> Result<(), StanzaError> {
    let Some(sender) = room.nick_of(from) else {
        return Err(StanzaErrorCondition::NotAcceptable.into());
    };
    let Some(target) = room.occupants.get(nick) else {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    };
    let now = Instant::now();
    room.relayed.retain(|_, r| r.expires > now);
    if room.relayed.len() >= ctx.limits.max_relayed_iqs {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::ResourceConstraint,
            "too many requests to occupants awaiting an answer",
        ));
    }
    let to: Jid = if iq.children().any(|c| c.ns() == NS_VCARD) {
        Jid::from(target.real.clone())
    } else {
        Jid::from(target.shown_jid().clone())
    };
    let (id, _) = ctx.ids.next();
    let mut out = iq.clone();
    out.set_attr("id", id.as_str());
    out.set_attr("from", room.occupant_jid(&sender));
    out.set_attr("to", to.as_str());
    room.relayed.insert(
        id.clone(),
        RelayedIq {
            asker: from.clone(),
            asker_id: iq.attr("id").unwrap_or_default().to_string(),
            target_nick: nick.to_string(),
            sent_to: to.as_str().to_string(),
            expires: now + Duration::from_secs(ctx.limits.relayed_iq_timeout),
        },
    );
    if to.resource().is_none() {
        // For the account, not a session: routed as any stanza from this
        // service is, so the account's server answers (its vCard).
        let (Some(server), domain) = (ctx.server.arc(), room.jid.domain().to_string()) else {
            room.relayed.remove(&id);
            return Err(StanzaErrorCondition::InternalServerError.into());
        };
        server.clone().background.spawn(async move {
            let _ = crate::router::route_from_component(&server, &domain, out).await;
        });
        return Ok(());
    }
    if crate::router::deliver(ctx.server, &out, &to).is_err() {
        room.relayed.remove(&id);
        return Err(StanzaErrorCondition::RecipientUnavailable.into());
    }
    Ok(())
}

/// An IQ result or error to an occupant JID: the answer to a relayed
/// request, handed back to whoever asked. Anything else is dropped (an
/// answer is never answered).
pub fn answered(server: &Server, room: &mut Room, from: &Jid, iq: &Element) {
    let Some(id) = iq.attr("id") else {
        return;
    };
    match room.relayed.get(id) {
        Some(r) if r.sent_to == from.as_str() => {}
        _ => return,
    }
    let Some(r) = room.relayed.remove(id) else {
        return;
    };
    let mut back = iq.clone();
    back.set_attr("id", r.asker_id.as_str());
    back.set_attr("from", room.occupant_jid(&r.target_nick));
    back.set_attr("to", r.asker.as_str());
    let _ = crate::router::deliver(server, &back, &Jid::from(r.asker));
}
