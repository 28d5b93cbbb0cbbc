//! Voice requests (XEP-0045 §7.13, §8.6): a visitor of a moderated room
//! submits the `muc#request` form to the room; every moderator gets the
//! approval form (with the visitor's nick and real JID, which moderators
//! may see); a moderator who submits it with `muc#request_allow` true
//! gives the visitor voice (participant, announced to the room).
//!
//! A visitor's request is sent to the moderators once: until it is
//! answered, or the visitor leaves, more requests from it are dropped, so
//! one visitor cannot flood the moderators.

use jid::FullJid;

use super::fanout::Prepared;
use super::presence::{announce, Announcement};
use super::room::{Ctx, Role, Room};
use super::NS_USER;
use crate::modules::NS_DATA;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::{Element, NS_CLIENT};

pub const FORM_TYPE: &str = "http://jabber.org/protocol/muc#request";

/// Whether a data form is a voice request or its approval.
pub fn is_voice_form(form: &Element) -> bool {
    field(form, "FORM_TYPE").as_deref() == Some(FORM_TYPE)
}

fn field(form: &Element, var: &str) -> Option<String> {
    form.children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text())
}

/// A submitted `muc#request` form from `from`: a visitor's request, or a
/// moderator's answer to one.
pub fn submitted(
    ctx: &mut Ctx<'_>,
    room: &mut Room,
    from: &FullJid,
    form: &Element,
) -> Result<(), StanzaError> {
    if form.attr("type") != Some("submit") {
        return Err(StanzaErrorCondition::BadRequest.into());
    }
    let Some(sender) = room.occupant_of(from) else {
        return Err(StanzaErrorCondition::NotAcceptable.into());
    };
    if let Some(allow) = field(form, "muc#request_allow") {
        if sender.role != Role::Moderator {
            return Err(StanzaErrorCondition::Forbidden.into());
        }
        let actor = sender.nick.clone();
        let nick = field(form, "muc#roomnick").unwrap_or_default();
        room.voice_requests.remove(&nick);
        if matches!(allow.as_str(), "1" | "true") {
            grant(ctx, room, &nick, &actor);
        }
        return Ok(());
    }
    if field(form, "muc#role").as_deref() != Some("participant") {
        return Err(StanzaErrorCondition::BadRequest.into());
    }
    if sender.role != Role::Visitor {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::NotAcceptable,
            "you have voice already",
        ));
    }
    let nick = sender.nick.clone();
    let jid = sender.shown_jid().clone();
    // Requests of occupants who left are forgotten; one at a time each.
    let occupants = &room.occupants;
    room.voice_requests.retain(|n| occupants.contains_key(n));
    if !room.voice_requests.insert(nick.clone()) {
        return Ok(());
    }
    let approval = Prepared::new(approval_form(room, &nick, &jid, ctx.ids.next().0));
    let moderators: Vec<FullJid> = room
        .occupants
        .values()
        .filter(|o| o.role == Role::Moderator)
        .flat_map(|o| o.sessions.iter().map(|s| s.jid.clone()))
        .collect();
    for m in &moderators {
        ctx.send(&approval, m);
    }
    Ok(())
}

/// §8.6: the form a moderator fills in to answer a request.
fn approval_form(room: &Room, nick: &str, jid: &FullJid, id: String) -> Element {
    let f = |var: &str, kind: &str, label: &str, value: &str| {
        Element::new("field", NS_DATA)
            .with_attr("var", var)
            .with_attr("type", kind)
            .with_attr("label", label)
            .with_child(Element::new("value", NS_DATA).with_text(value))
    };
    let form = Element::new("x", NS_DATA)
        .with_attr("type", "form")
        .with_child(Element::new("title", NS_DATA).with_text("Voice request"))
        .with_child(Element::new("instructions", NS_DATA).with_text(
            "To approve this request for voice, select the \"Grant voice to this person?\" checkbox and submit.",
        ))
        .with_child(f("FORM_TYPE", "hidden", "", FORM_TYPE))
        .with_child(f("muc#role", "list-single", "Requested role", "participant"))
        .with_child(f("muc#jid", "jid-single", "User ID", jid.as_str()))
        .with_child(f("muc#roomnick", "text-single", "Room Nickname", nick))
        .with_child(f(
            "muc#request_allow",
            "boolean",
            "Grant voice to this person?",
            "false",
        ));
    Element::new("message", NS_CLIENT)
        .with_attr("from", room.jid.as_str())
        .with_attr("id", id)
        .with_child(form)
}

/// §8.3: the visitor `nick` becomes a participant, announced to all.
fn grant(ctx: &mut Ctx<'_>, room: &mut Room, nick: &str, actor: &str) {
    let Some(o) = room.occupants.get_mut(nick) else {
        return;
    };
    if o.role != Role::Visitor {
        return;
    }
    o.role = Role::Participant;
    let o = o.clone();
    let a = Announcement {
        item_children: vec![Element::new("actor", NS_USER).with_attr("nick", actor)],
        ..Default::default()
    };
    announce(ctx, room, &o, &a, None);
}
