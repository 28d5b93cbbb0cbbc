//! Messages in a room (XEP-0045 §7.4–7.9): group chat broadcast (one
//! serialization for every occupant, with the room's XEP-0359 stanza-id
//! and the sender's XEP-0421 occupant-id), private messages between
//! occupants, the subject, mediated invitations and declines, and the
//! history a joiner gets (§7.2.14, with XEP-0203 delays).

use crate::stanza::bare::Bare;
use jid::{BareJid, FullJid, Jid};

use super::config::AllowPm;
use super::fanout::{send_one, Prepared};
use super::room::{Affiliation, Ctx, HistoryItem, Role, Room};
use super::{NS_DELAY, NS_OCCUPANT_ID, NS_SID, NS_USER};
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::{Element, NS_CLIENT};

/// Most `<invite/>`s one message may carry.
const MAX_INVITES: usize = 20;

fn refuse(ctx: &Ctx<'_>, stanza: &Element, err: impl Into<StanzaError>) {
    if let Some(reply) = err.into().reply_to(stanza) {
        if let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) {
            let _ = crate::router::deliver(ctx.server, &reply, &to);
        }
    }
}

fn now() -> i64 {
    crate::modules::mam::id::now_micros() / 1_000_000
}

/// A message to the room's bare JID.
pub fn to_room(ctx: &mut Ctx<'_>, room: &mut Room, from: &FullJid, stanza: &Element) {
    let kind = stanza.attr("type").unwrap_or("normal");
    if kind == "error" {
        // A bounce of something we sent: the session is not there.
        if room.nick_of(from).is_some() {
            ctx.lost.push(from.clone());
        }
        return;
    }
    if let Some(form) = stanza
        .get_child("x", crate::modules::NS_DATA)
        .filter(|f| kind != "groupchat" && super::voice::is_voice_form(f))
    {
        if let Err(e) = super::voice::submitted(ctx, room, from, form) {
            refuse(ctx, stanza, e);
        }
        return;
    }
    if let Some(x) = stanza.get_child("x", NS_USER) {
        if kind != "groupchat" {
            return invitations(ctx, room, from, stanza, x);
        }
    }
    if kind != "groupchat" {
        return refuse(ctx, stanza, StanzaErrorCondition::BadRequest);
    }
    let Some(nick) = room.nick_of(from) else {
        return refuse(
            ctx,
            stanza,
            StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "only occupants may send to the room",
            ),
        );
    };
    let occ = &room.occupants[&nick];
    let role = occ.role;
    let occupant_id = occ.occupant_id.clone();
    let subject = stanza.get_child("subject", NS_CLIENT);
    let has_body = stanza.get_child("body", NS_CLIENT).is_some();
    if let (Some(subject), false) = (subject, has_body) {
        let may =
            role == Role::Moderator || (room.config.change_subject && role >= Role::Participant);
        if !may {
            return refuse(ctx, stanza, StanzaErrorCondition::Forbidden);
        }
        let text = subject.text();
        if text.len() > ctx.limits.max_subject_bytes {
            return refuse(
                ctx,
                stanza,
                StanzaError::with_text(
                    StanzaErrorCondition::NotAcceptable,
                    "the subject is too long",
                ),
            );
        }
        room.subject.text = text;
        room.subject.by = nick.clone();
        room.dirty = true;
    } else if role < Role::Participant {
        // §7.4: visitors in a moderated room have no voice.
        return refuse(ctx, stanza, StanzaErrorCondition::Forbidden);
    }

    let mut out = stanza.clone();
    out.remove_attr("to");
    out.set_attr("from", room.occupant_jid(&nick));
    // Ids others claim for this room, or for this occupant, are forged.
    let by = room.jid.as_str().to_string();
    out.nodes_mut().retain(|n| match n {
        crate::xml::Node::Element(e) => {
            let forged_id = e.is("stanza-id", NS_SID) && e.attr("by") == Some(by.as_str());
            !(forged_id || e.is("occupant-id", NS_OCCUPANT_ID) || e.is("delay", NS_DELAY))
        }
        crate::xml::Node::Text(_) => true,
    });
    out.append_child(Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", occupant_id));
    super::moderate::strip_forged(&mut out);
    let (id, ts) = ctx.ids.next();
    out.append_child(
        Element::new("stanza-id", NS_SID)
            .with_attr("id", id.as_str())
            .with_attr("by", by.as_str()),
    );
    let live = Prepared::new(out);
    // Archived under the stanza-id the occupants got (XEP-0313 §5.1.2).
    if ctx.archiving && has_body {
        if let Some(e) = live.element_ref() {
            let row = super::archive::row(&room.jid, &nick, id.clone(), ts, e);
            ctx.archive_rows.push(row);
        }
    }
    for (_, s) in room.sessions() {
        ctx.send(&live, s);
    }
    super::mentions::note(ctx, room, &live);
    if has_body && room.config.history > 0 {
        let at = now();
        room.remember(
            HistoryItem {
                stanza: with_delay(&live, room.jid.as_str(), at),
                id,
                at,
            },
            ctx.limits.max_history_bytes,
        );
    }
}

/// The broadcast with a XEP-0203 delay, for history: spliced before the
/// closing tag of the serialized message.
fn with_delay(live: &Prepared, room: &str, at: i64) -> Prepared {
    let delay = Element::new("delay", NS_DELAY)
        .with_attr("from", room)
        .with_attr(
            "stamp",
            crate::modules::time::xep0082(at).unwrap_or_default(),
        );
    match live.element() {
        Some(mut e) => {
            e.append_child(delay);
            Prepared::new(e).bytes_only()
        }
        None => live.bytes_only(),
    }
}

/// §7.2.14: the history a joining session asked for (`maxchars`,
/// `maxstanzas`, `seconds`, `since`), oldest first.
pub fn send_history(ctx: &mut Ctx<'_>, room: &Room, to: &FullJid, request: Option<&Element>) {
    let num = |name: &str| {
        request
            .and_then(|h| h.attr(name))
            .and_then(|v| v.parse::<i64>().ok())
    };
    let max_stanzas = num("maxstanzas")
        .map(|n| n.max(0) as usize)
        .unwrap_or(usize::MAX);
    let max_chars = num("maxchars")
        .map(|n| n.max(0) as usize)
        .unwrap_or(usize::MAX);
    let mut oldest = i64::MIN;
    if let Some(s) = num("seconds") {
        oldest = now() - s.max(0);
    }
    if let Some(since) = request.and_then(|h| h.attr("since")) {
        if let Ok(t) = time::OffsetDateTime::parse(
            since.trim(),
            &time::format_description::well_known::Rfc3339,
        ) {
            oldest = oldest.max(t.unix_timestamp());
        }
    }
    let mut chars = 0usize;
    let mut count = 0usize;
    for item in room.history.iter().rev() {
        if count >= max_stanzas || item.at < oldest {
            break;
        }
        chars += item.stanza.len();
        if chars > max_chars {
            break;
        }
        count += 1;
    }
    let start = room.history.len() - count;
    for item in room.history.iter().skip(start) {
        ctx.send(&item.stanza, to);
    }
}

/// §7.2.15: the subject (empty when none), last of what a joiner gets.
pub fn send_subject(ctx: &mut Ctx<'_>, room: &Room, to: &FullJid) {
    let from = if room.subject.by.is_empty() {
        room.jid.as_str().to_string()
    } else {
        room.occupant_jid(&room.subject.by)
    };
    let mut m = Element::new("message", NS_CLIENT)
        .with_attr("from", from)
        .with_attr("type", "groupchat")
        .with_attr("id", ctx.ids.next().0);
    let mut s = Element::new("subject", NS_CLIENT);
    if !room.subject.text.is_empty() {
        s.append_text(room.subject.text.clone());
    }
    m.append_child(s);
    ctx.send(&Prepared::new(m), to);
}

/// A message from the room itself to every occupant (status codes of a
/// configuration change).
pub fn notify_all(ctx: &mut Ctx<'_>, room: &Room, codes: &[u16]) {
    let mut x = Element::new("x", NS_USER);
    for c in codes {
        x.append_child(Element::new("status", NS_USER).with_attr("code", c.to_string()));
    }
    let m = Element::new("message", NS_CLIENT)
        .with_attr("from", room.jid.as_str())
        .with_attr("type", "groupchat")
        .with_attr("id", ctx.ids.next().0)
        .with_child(x);
    let p = Prepared::new(m);
    for (_, s) in room.sessions() {
        ctx.send(&p, s);
    }
}

/// A message to `room/nick`: a private message between occupants (§7.5).
pub fn private(ctx: &mut Ctx<'_>, room: &Room, from: &FullJid, nick: &str, stanza: &Element) {
    let kind = stanza.attr("type").unwrap_or("normal");
    if kind == "error" {
        if room.nick_of(from).is_some() {
            ctx.lost.push(from.clone());
        }
        return;
    }
    if kind == "groupchat" {
        return refuse(ctx, stanza, StanzaErrorCondition::BadRequest);
    }
    let Some(sender) = room.occupant_of(from) else {
        return refuse(
            ctx,
            stanza,
            StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "only occupants may send private messages",
            ),
        );
    };
    let allowed = match room.config.allow_pm {
        AllowPm::Anyone => true,
        AllowPm::Participants => sender.role >= Role::Participant,
        AllowPm::Moderators => sender.role == Role::Moderator,
        AllowPm::Nobody => false,
    };
    if !allowed {
        return refuse(ctx, stanza, StanzaErrorCondition::Forbidden);
    }
    let Some(target) = room.occupants.get(nick) else {
        return refuse(ctx, stanza, StanzaErrorCondition::ItemNotFound);
    };
    let mut out = stanza.clone();
    out.remove_attr("to");
    out.set_attr("from", room.occupant_jid(&sender.nick));
    out.nodes_mut().retain(|n| match n {
        crate::xml::Node::Element(e) => !e.is("occupant-id", NS_OCCUPANT_ID),
        crate::xml::Node::Text(_) => true,
    });
    // Marks it as a private message from a room occupant (XEP-0280 §6
    // keeps carbons of it apart).
    if out.get_child("x", NS_USER).is_none() {
        out.append_child(Element::new("x", NS_USER));
    }
    out.append_child(
        Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", sender.occupant_id.as_str()),
    );
    let p = Prepared::new(out);
    for s in &target.sessions {
        ctx.send(&p, &s.jid);
    }
}

/// §7.8.2 mediated invitations and §7.8.2 declines.
fn invitations(ctx: &mut Ctx<'_>, room: &mut Room, from: &FullJid, stanza: &Element, x: &Element) {
    let invites: Vec<&Element> = x.children().filter(|c| c.is("invite", NS_USER)).collect();
    if let Some(decline) = x.get_child("decline", NS_USER) {
        // Handed to the inviter named in `to`, from the room.
        let Some(to) = decline.attr("to").and_then(|t| Jid::new(t).ok()) else {
            return refuse(ctx, stanza, StanzaErrorCondition::BadRequest);
        };
        let mut d = Element::new("decline", NS_USER).with_attr("from", from.bare().as_str());
        if let Some(r) = decline.get_child("reason", NS_USER) {
            d.append_child(r.clone());
        }
        let m = Element::new("message", NS_CLIENT)
            .with_attr("from", room.jid.as_str())
            .with_child(Element::new("x", NS_USER).with_child(d));
        return send_one(ctx.server, m, &to);
    }
    if invites.is_empty() {
        return refuse(ctx, stanza, StanzaErrorCondition::BadRequest);
    }
    if invites.len() > MAX_INVITES {
        return refuse(
            ctx,
            stanza,
            StanzaError::with_text(
                StanzaErrorCondition::PolicyViolation,
                "too many invitations at once",
            ),
        );
    }
    let Some(occ) = room.occupant_of(from) else {
        return refuse(ctx, stanza, StanzaErrorCondition::NotAcceptable);
    };
    let inviter: BareJid = occ.real.clone();
    let aff = room.affiliation(&inviter);
    // §7.8: in a members-only room only admins, or everyone when the
    // owner allows invitations, may invite — and an invitation makes the
    // invitee a member.
    if room.config.members_only && !room.config.allow_invites && aff < Affiliation::Admin {
        return refuse(ctx, stanza, StanzaErrorCondition::Forbidden);
    }
    let mut targets = Vec::new();
    for inv in &invites {
        match inv.attr("to").and_then(|t| Jid::new(t).ok()) {
            Some(j) => targets.push((j, inv.get_child("reason", NS_USER).cloned())),
            None => return refuse(ctx, stanza, StanzaErrorCondition::JidMalformed),
        }
    }
    for (to, reason) in targets {
        if room.config.members_only {
            let bare = to.bare();
            if room.affiliation(&bare) == Affiliation::None
                && room.affiliations.len() < ctx.limits.max_affiliations
            {
                room.set_affiliation(&bare, Affiliation::Member, String::new());
            }
        }
        let mut invite = Element::new("invite", NS_USER).with_attr("from", inviter.as_str());
        if let Some(r) = reason {
            invite.append_child(r);
        }
        let mut ux = Element::new("x", NS_USER).with_child(invite);
        if let Some(p) = &room.config.password {
            ux.append_child(Element::new("password", NS_USER).with_text(p.as_str()));
        }
        let m = Element::new("message", NS_CLIENT)
            .with_attr("from", room.jid.as_str())
            .with_attr("id", ctx.ids.next().0)
            .with_child(ux);
        send_one(ctx.server, m, &to);
    }
}
