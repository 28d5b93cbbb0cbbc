//! Room avatars (XEP-0486): the room's vCard (vcard-temp, XEP-0054) set
//! by an owner with an IQ to the room's JID and read by anyone; the
//! SHA-1 of its PHOTO (as XEP-0153 hashes it) in the room's disco#info
//! (`muc#roominfo_avatarhash`); a change announced to the occupants by a
//! presence from the room's bare JID carrying
//! `<x xmlns='vcard-temp:x:update'><photo>hash</photo></x>`.
//!
//! The vCard is held serialized (bounded by `[muc] max_avatar_bytes`)
//! and written with the room's other rows when the room is persistent.

use crate::stanza::bare::Bare;
use base64::Engine;
use jid::FullJid;

use super::fanout::Prepared;
use super::room::{Affiliation, Ctx, Room};
use crate::modules::disco::NS_INFO;
use crate::modules::vcard::NS as NS_VCARD;
use crate::modules::NS_DATA;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::{Element, Node, NS_CLIENT};

/// XEP-0153's presence element.
pub const NS_VCARD_UPDATE: &str = "vcard-temp:x:update";

/// The depth a stored vCard is read back with (vCards are shallow).
const MAX_DEPTH: usize = 16;

/// A room's vCard and the hash of its photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomAvatar {
    /// The vCard as stored and served.
    pub vcard: String,
    /// Hex SHA-1 of the PHOTO's image; `None` when the vCard has none.
    pub hash: Option<String>,
}

impl RoomAvatar {
    /// A vCard read back from the database.
    pub fn from_stored(vcard: &str) -> Option<RoomAvatar> {
        let card = crate::modules::xml_from_storage(vcard, MAX_DEPTH)?
            .into_iter()
            .next()?;
        Some(RoomAvatar {
            vcard: vcard.to_string(),
            hash: photo_hash(&card).ok()?,
        })
    }
}

/// The hash of a vCard's PHOTO: `None` without one; an error when the
/// image is not base64.
fn photo_hash(card: &Element) -> Result<Option<String>, StanzaError> {
    let Some(photo) = card.get_child("PHOTO", NS_VCARD) else {
        return Ok(None);
    };
    let Some(binval) = photo.get_child("BINVAL", NS_VCARD) else {
        return Ok(None);
    };
    let b64: String = binval.text().split_whitespace().collect();
    let image = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| {
            StanzaError::with_text(StanzaErrorCondition::BadRequest, "BINVAL is not base64")
        })?;
    Ok(Some(crate::modules::avatar::avatar_id(&image)))
}

/// Is this IQ payload the room's vCard?
pub fn is_vcard(payload: &Element) -> bool {
    payload.is("vCard", NS_VCARD)
}

/// An IQ get/set of the room's vCard.
pub fn iq(
    ctx: &mut Ctx<'_>,
    room: &mut Room,
    from: &FullJid,
    is_set: bool,
    payload: &Element,
) -> Result<Option<Element>, StanzaError> {
    if !is_set {
        // Anyone may see a room's avatar, as a client shows it before
        // joining (a bookmark, a room list).
        let card = room
            .avatar
            .as_ref()
            .and_then(|a| crate::modules::xml_from_storage(&a.vcard, MAX_DEPTH))
            .and_then(|v| v.into_iter().next())
            .unwrap_or_else(|| Element::new("vCard", NS_VCARD));
        return Ok(Some(card));
    }
    if room.affiliation(&from.bare()) != Affiliation::Owner {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::Forbidden,
            "only owners set the room's vCard",
        ));
    }
    let empty = payload.nodes().iter().all(|n| match n {
        Node::Element(_) => false,
        Node::Text(t) => t.trim().is_empty(),
    });
    let new = if empty {
        None
    } else {
        let vcard = crate::modules::xml_for_storage([payload]);
        if vcard.len() > ctx.limits.max_avatar_bytes {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "the room's vCard is too large",
            ));
        }
        let hash = photo_hash(payload)?;
        Some(RoomAvatar { vcard, hash })
    };
    let old_hash = room.avatar.as_ref().and_then(|a| a.hash.clone());
    let new_hash = new.as_ref().and_then(|a| a.hash.clone());
    room.avatar = new;
    room.pending.vcard = true;
    if old_hash != new_hash {
        announce(ctx, room, new_hash.as_deref());
    }
    Ok(None)
}

/// XEP-0486: every occupant hears of the new hash (an empty `<photo/>`
/// once the avatar is gone), from the room's bare JID.
fn announce(ctx: &mut Ctx<'_>, room: &Room, hash: Option<&str>) {
    let mut photo = Element::new("photo", NS_VCARD_UPDATE);
    if let Some(h) = hash {
        photo.append_text(h);
    }
    let p = Element::new("presence", NS_CLIENT)
        .with_attr("from", room.jid.as_str())
        .with_child(Element::new("x", NS_VCARD_UPDATE).with_child(photo));
    let p = Prepared::new(p);
    let sessions: Vec<FullJid> = room.sessions().map(|(_, s)| s.clone()).collect();
    for s in &sessions {
        ctx.send(&p, s);
    }
}

/// Adds the avatar to a room's disco#info: the `vcard-temp` feature
/// and, with a photo, `muc#roominfo_avatarhash` in the roominfo form.
pub fn add_to_info(room: &Room, info: &mut Element) {
    let feature = Element::new("feature", NS_INFO).with_attr("var", NS_VCARD);
    let at = info
        .nodes()
        .iter()
        .position(|n| matches!(n, Node::Element(e) if e.is("x", NS_DATA)))
        .unwrap_or(info.nodes().len());
    info.nodes_mut().insert(at, Node::Element(feature));
    let Some(hash) = room.avatar.as_ref().and_then(|a| a.hash.as_deref()) else {
        return;
    };
    if let Some(form) = info.children_mut().find(|e| e.is("x", NS_DATA)) {
        form.append_child(
            Element::new("field", NS_DATA)
                .with_attr("var", "muc#roominfo_avatarhash")
                .with_attr("type", "text-multi")
                .with_child(Element::new("value", NS_DATA).with_text(hash)),
        );
    }
}
