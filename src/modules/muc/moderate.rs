//! Moderated message retraction (XEP-0425 0.3, and the earlier
//! `urn:xmpp:message-moderate:0` form inside a XEP-0422 `<apply-to/>`):
//! a moderator names a group chat message by the stanza-id the room gave
//! it; the room tells every occupant (a XEP-0424 `<retract/>` with
//! `<moderated/>`, plus the legacy `<apply-to/>` for older clients),
//! drops the message from the history joiners get, and replaces it in
//! the room's archive with a tombstone.
//!
//! The work is split in two because the archive is on disk: [`prepare`]
//! checks the request and rewrites the archived row (the service's task
//! awaits it, as it awaits other admin actions' writes), then [`apply`]
//! broadcasts, with nothing left to wait for.

use std::sync::Arc;

use jid::FullJid;

use super::archive::RoomArchive;
use super::fanout::Prepared;
use super::room::{Ctx, Role, Room};
use super::{NS_OCCUPANT_ID, NS_SID};
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::storage::ArchiveFilter;
use crate::xml::{Element, Node, NS_CLIENT};

/// XEP-0425's namespace (0.3), advertised on rooms.
pub const NS_MODERATE: &str = "urn:xmpp:message-moderate:1";
/// The namespace of XEP-0425 before 0.3, still sent by some clients.
pub const NS_MODERATE_0: &str = "urn:xmpp:message-moderate:0";
/// XEP-0424 message retraction.
pub const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
const NS_RETRACT_0: &str = "urn:xmpp:message-retract:0";
const NS_FASTEN: &str = "urn:xmpp:fasten:0";

/// Longest reason kept (bytes); a longer one is cut.
const MAX_REASON: usize = 1024;

/// A moderator's request to retract one message.
#[derive(Debug, Clone)]
pub struct Request {
    /// The room's stanza-id of the message.
    pub id: String,
    pub reason: Option<String>,
}

impl Request {
    /// The request an IQ payload carries, if it is one: `<moderate
    /// id=…>` (:1) or `<apply-to id=…><moderate/></apply-to>` (:0).
    pub fn parse(payload: &Element) -> Option<Result<Request, StanzaError>> {
        let (id, moderate, retract_ns) = if payload.is("moderate", NS_MODERATE) {
            (payload.attr("id"), payload, NS_RETRACT)
        } else if payload.is("apply-to", NS_FASTEN) {
            let m = payload.get_child("moderate", NS_MODERATE_0)?;
            (payload.attr("id"), m, NS_RETRACT_0)
        } else {
            return None;
        };
        let reason = moderate
            .get_child("reason", moderate.ns())
            .map(|r| cut(r.text()));
        Some(match (id, moderate.get_child("retract", retract_ns)) {
            (Some(id), Some(_)) if !id.is_empty() => Ok(Request {
                id: id.to_string(),
                reason,
            }),
            // Moderation other than retraction is not defined.
            _ => Err(StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                "a moderation names a stanza-id and asks for a <retract/>",
            )),
        })
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A checked request, its archive row already a tombstone.
#[derive(Debug)]
pub struct Retraction {
    request: Request,
    /// The moderator's nick and occupant id.
    by_nick: String,
    by_occupant_id: String,
}

/// Checks the request (a moderator of the room, a message of the room)
/// and replaces the archived message with its tombstone.
pub async fn prepare(
    server: &Arc<Server>,
    room: Option<&Room>,
    archive: Option<&Arc<RoomArchive>>,
    from: &FullJid,
    request: Request,
) -> Result<Retraction, StanzaError> {
    let Some(room) = room else {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    };
    let Some(moderator) = room.occupant_of(from).filter(|o| o.role == Role::Moderator) else {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::Forbidden,
            "only moderators may retract others' messages",
        ));
    };
    let retraction = Retraction {
        request,
        by_nick: moderator.nick.clone(),
        by_occupant_id: moderator.occupant_id.clone(),
    };
    let in_history = room.history.iter().any(|h| h.id == retraction.request.id);
    let archived = match archive {
        Some(a) => tombstone_archived(server, a, room, &retraction).await?,
        None => false,
    };
    if !(in_history || archived) {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::ItemNotFound,
            "no message of this room has that id",
        ));
    }
    Ok(retraction)
}

/// Replaces the archived message with its tombstone; false when the
/// archive has no message of that id.
async fn tombstone_archived(
    server: &Arc<Server>,
    archive: &Arc<RoomArchive>,
    room: &Room,
    r: &Retraction,
) -> Result<bool, StanzaError> {
    let internal = |e: crate::storage::StorageError| {
        tracing::error!(error = %e, room = %room.jid, "muc: retracting an archived message");
        StanzaError::from(StanzaErrorCondition::InternalServerError)
    };
    // The message may still be on its way to the disk.
    archive.flushed().await;
    let owner = super::archive::owner(&room.jid);
    let filter = ArchiveFilter {
        ids: vec![r.request.id.clone()],
        ..Default::default()
    };
    let rows = server
        .store
        .archive_page(&owner, &filter, false, 1)
        .await
        .map_err(internal)?;
    let Some(row) = rows.first() else {
        return Ok(false);
    };
    let depth = server.config().limits.max_depth;
    let Some(original) = crate::modules::xml_from_storage(&row.payload, depth)
        .and_then(|v| v.into_iter().find(|e| e.name() == "message"))
    else {
        return Ok(false);
    };
    let stone = tombstone(&original, room, r);
    server
        .store
        .archive_replace(
            &owner,
            &r.request.id,
            &crate::modules::xml_for_storage([&stone]),
        )
        .await
        .map_err(internal)
}

/// §4: the message as archived after retraction: its addressing, ids and
/// author's occupant id, and `<retracted/>` in place of its content.
fn tombstone(original: &Element, room: &Room, r: &Retraction) -> Element {
    let mut stone = Element::new("message", NS_CLIENT);
    for (name, value) in original.attrs() {
        stone.set_attr(name, value);
    }
    for c in original.children() {
        if c.is("occupant-id", NS_OCCUPANT_ID) || c.is("stanza-id", NS_SID) {
            stone.append_child(c.clone());
        }
    }
    let stamp = crate::modules::time::xep0082(crate::modules::mam::id::now_micros() / 1_000_000)
        .unwrap_or_default();
    let mut retracted = Element::new("retracted", NS_RETRACT)
        .with_attr("stamp", stamp)
        .with_child(moderated(room, r, NS_MODERATE));
    if let Some(reason) = &r.request.reason {
        retracted.append_child(Element::new("reason", NS_RETRACT).with_text(reason.as_str()));
    }
    stone.append_child(retracted);
    stone
}

/// `<moderated by='room/nick'>` with the moderator's occupant id.
fn moderated(room: &Room, r: &Retraction, ns: &str) -> Element {
    Element::new("moderated", ns)
        .with_attr("by", room.occupant_jid(&r.by_nick))
        .with_child(
            Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", r.by_occupant_id.as_str()),
        )
}

/// Tells every occupant, and keeps the message out of joiners' history.
/// The announcement gets a stanza-id and is archived, so a client
/// catching up through the archive learns of the retraction too.
pub fn apply(ctx: &mut Ctx<'_>, room: &mut Room, r: Retraction) {
    let id = &r.request.id;
    if let Some(i) = room.history.iter().position(|h| &h.id == id) {
        if let Some(old) = room.history.remove(i) {
            room.history_bytes -= old.stanza.len();
        }
    }
    let mut retract = Element::new("retract", NS_RETRACT)
        .with_attr("id", id.as_str())
        .with_child(moderated(room, &r, NS_MODERATE));
    let mut legacy = Element::new("moderated", NS_MODERATE_0)
        .with_attr("by", room.occupant_jid(&r.by_nick))
        .with_child(Element::new("retract", NS_RETRACT_0));
    if let Some(reason) = &r.request.reason {
        retract.append_child(Element::new("reason", NS_RETRACT).with_text(reason.as_str()));
        legacy.append_child(Element::new("reason", NS_MODERATE_0).with_text(reason.as_str()));
    }
    let (sid, ts) = ctx.ids.next();
    let by = room.jid.as_str().to_string();
    let m = Element::new("message", NS_CLIENT)
        .with_attr("from", by.as_str())
        .with_attr("type", "groupchat")
        .with_attr("id", sid.as_str())
        .with_child(retract)
        .with_child(
            Element::new("apply-to", NS_FASTEN)
                .with_attr("id", id.as_str())
                .with_child(legacy),
        )
        .with_child(
            Element::new("stanza-id", NS_SID)
                .with_attr("id", sid.as_str())
                .with_attr("by", by.as_str()),
        );
    let p = Prepared::new(m);
    if ctx.archiving {
        if let Some(e) = p.element_ref() {
            ctx.archive_rows
                .push(super::archive::row(&room.jid, "", sid, ts, e));
        }
    }
    for (_, s) in room.sessions() {
        ctx.send(&p, s);
    }
}

/// Strips what only the room may say from an occupant's message: a
/// `<moderated/>` inside a `<retract/>` (XEP-0425 §6: clients trust one
/// from the room's own JID only, but not every client checks).
pub fn strip_forged(message: &mut Element) {
    for e in message.children_mut() {
        if e.name() == "retract" || e.name() == "apply-to" {
            e.nodes_mut().retain(|c| match c {
                Node::Element(c) => c.name() != "moderated",
                Node::Text(_) => true,
            });
        }
    }
}
