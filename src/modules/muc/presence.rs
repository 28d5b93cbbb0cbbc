//! Entering, leaving and changing nick (XEP-0045 §7.2–7.6, §7.14), and
//! the occupant presences with their status codes: 110 (self), 100
//! (non-anonymous room), 201 (room created), 303 (nick change), 307/301
//! /321/322/332/333 (removed: kicked, banned, affiliation, members-only,
//! shutdown, technical), with the item each viewer may see.

use crate::stanza::bare::Bare;
use jid::{BareJid, FullJid};

use super::fanout::Prepared;
use super::room::{Affiliation, Ctx, Occupant, OccupantSession, Role, Room};
use super::{NS_MUC, NS_OCCUPANT_ID, NS_USER};
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::{Element, NS_CLIENT};

/// What an announcement of an occupant's presence carries beyond the
/// occupant's state.
#[derive(Debug, Default, Clone)]
pub struct Announcement {
    pub unavailable: bool,
    /// Status codes every recipient gets.
    pub codes: Vec<u16>,
    /// Status codes only the occupant's own sessions get (110 is added).
    pub self_codes: Vec<u16>,
    /// Children of the `<item/>`: `<actor/>`, `<reason/>`.
    pub item_children: Vec<Element>,
    /// The new nick (303).
    pub item_nick: Option<String>,
    /// Extra children of the `<x/>`: `<destroy/>`.
    pub x_children: Vec<Element>,
    /// The occupant's payload to show instead of its stored one (the
    /// status of an unavailable presence).
    pub payload: Option<Vec<Element>>,
}

/// The presence of `occ` with `a`, showing its real JID or not, for
/// itself (`own`: 110 and the self codes) or for others.
pub fn occupant_presence(
    room: &Room,
    occ: &Occupant,
    aff: Affiliation,
    a: &Announcement,
    show_jid: bool,
    own: bool,
) -> Element {
    let mut p = Element::new("presence", NS_CLIENT).with_attr("from", room.occupant_jid(&occ.nick));
    if a.unavailable {
        p.set_attr("type", "unavailable");
    }
    let payload = a.payload.as_deref().unwrap_or(occ.payload());
    for child in payload {
        p.append_child(child.clone());
    }
    let mut item = Element::new("item", NS_USER)
        .with_attr("affiliation", aff.as_str())
        .with_attr(
            "role",
            if a.unavailable {
                "none"
            } else {
                occ.role.as_str()
            },
        );
    if show_jid || own {
        item.set_attr("jid", occ.shown_jid().as_str());
    }
    if let Some(n) = &a.item_nick {
        item.set_attr("nick", n.as_str());
    }
    for c in &a.item_children {
        item.append_child(c.clone());
    }
    let mut x = Element::new("x", NS_USER).with_child(item);
    for c in &a.x_children {
        x.append_child(c.clone());
    }
    let mut codes: Vec<u16> = a.codes.clone();
    if own {
        codes.extend(&a.self_codes);
        codes.push(110);
    }
    codes.sort_unstable();
    codes.dedup();
    for c in codes {
        x.append_child(Element::new("status", NS_USER).with_attr("code", c.to_string()));
    }
    p.append_child(x);
    if let Some(hats) = super::hats::hats_of(room, &occ.real) {
        p.append_child(hats);
    }
    p.append_child(
        Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", occ.occupant_id.as_str()),
    );
    p
}

/// Sends `occ`'s presence to everyone in the room (each variant built and
/// serialized once) and to its own sessions (`only_self`: only to that one).
pub fn announce(
    ctx: &mut Ctx<'_>,
    room: &Room,
    occ: &Occupant,
    a: &Announcement,
    only_self: Option<&FullJid>,
) {
    ctx.touched.insert(occ.nick.clone());
    let aff = room.affiliation(&occ.real);
    if let Some(s) = only_self {
        // Another resource joining under the same nick: it alone hears.
        let own = Prepared::new(occupant_presence(room, occ, aff, a, true, true));
        ctx.send(&own, s);
        return;
    }
    let mut with_jid: Option<Prepared> = None;
    let mut without_jid: Option<Prepared> = None;
    for other in room.occupants.values() {
        if other.nick == occ.nick {
            continue;
        }
        let show = room.shows_jids_to(other.role);
        let slot = if show {
            &mut with_jid
        } else {
            &mut without_jid
        };
        let p = slot.get_or_insert_with(|| {
            Prepared::new(occupant_presence(room, occ, aff, a, show, false))
        });
        for s in &other.sessions {
            ctx.send(p, &s.jid);
        }
    }
    let own = Prepared::new(occupant_presence(room, occ, aff, a, true, true));
    for s in &occ.sessions {
        ctx.send(&own, &s.jid);
    }
}

/// The presence payload worth keeping from a client's presence: all but
/// the MUC elements and ids the room sets itself.
fn payload_of(stanza: &Element) -> Vec<Element> {
    stanza
        .children()
        .filter(|c| c.ns() != NS_MUC && c.ns() != NS_USER && c.ns() != NS_OCCUPANT_ID)
        .cloned()
        .collect()
}

/// The error presence for a refused join or nick change.
pub fn presence_error(to_nick: &str, from: &FullJid, err: &StanzaError) -> Option<Element> {
    let stanza = Element::new("presence", NS_CLIENT)
        .with_attr("from", from.as_str())
        .with_attr("to", to_nick)
        .with_child(Element::new("x", NS_MUC));
    err.reply_to(&stanza)
}

fn refuse(ctx: &mut Ctx<'_>, to_nick: &str, from: &FullJid, err: impl Into<StanzaError>) {
    if let Some(e) = presence_error(to_nick, from, &err.into()) {
        let _ = crate::router::deliver(ctx.server, &e, &jid::Jid::from(from.clone()));
    }
}

/// A nick acceptable to the service: within the length bound (the JID
/// parser already made it a valid, normalised resource).
pub fn check_nick(ctx: &Ctx<'_>, nick: &str) -> Result<(), StanzaError> {
    if nick.chars().count() > ctx.limits.max_nick_length {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::NotAcceptable,
            format!(
                "nicknames are at most {} characters",
                ctx.limits.max_nick_length
            ),
        ));
    }
    if nick.trim().is_empty() {
        return Err(StanzaErrorCondition::JidMalformed.into());
    }
    Ok(())
}

/// §10.1.1: may `from` create a room, by the service's `create` policy?
/// The service's admins always may.
pub fn may_create(ctx: &Ctx<'_>, from: &FullJid) -> bool {
    let bare = from.bare();
    let listed = |l: &[String]| l.iter().any(|j| BareJid::new(j).is_ok_and(|j| j == bare));
    if listed(&ctx.limits.admins) {
        return true;
    }
    match ctx.limits.create.as_str() {
        "anyone" => true,
        "admins" => false,
        "list" => listed(&ctx.limits.creators),
        _ => ctx.server.is_local_domain(from.domain().as_str()),
    }
}

/// Available presence from `from` to `room/nick`: a join, a second
/// session under the same nick, a presence update or a nick change.
/// `created`: the room was just made for this join (201, locked).
pub fn available(
    ctx: &mut Ctx<'_>,
    room: &mut Room,
    from: &FullJid,
    nick: &str,
    stanza: &Element,
    created: bool,
) {
    let enforced = super::nick::enforce(nick);
    // 210: the occupant is known by another nick than it asked for.
    let modified = super::nick::requested(stanza) != Some(enforced.as_str());
    let nick = enforced.as_str();
    let to_nick = room.occupant_jid(nick);
    if let Some(current) = room.nick_of(from) {
        if current == nick {
            update(ctx, room, from, nick, stanza);
        } else {
            change_nick(ctx, room, from, &current, nick, stanza, modified);
        }
        return;
    }
    if let Err(e) = check_nick(ctx, nick) {
        return refuse(ctx, &to_nick, from, e);
    }
    let real = from.bare();
    let aff = room.affiliation(&real);
    let x = stanza.get_child("x", NS_MUC);
    let existing = room.occupants.get(nick);
    let same_user = existing.is_some_and(|o| o.real == real);
    let refusal: Option<StanzaError> = if room.locked && aff != Affiliation::Owner {
        Some(StanzaError::with_text(
            StanzaErrorCondition::ItemNotFound,
            "the room is not configured yet",
        ))
    } else if aff == Affiliation::Outcast {
        Some(StanzaErrorCondition::Forbidden.into())
    } else if room.config.members_only && aff < Affiliation::Member {
        Some(StanzaErrorCondition::RegistrationRequired.into())
    } else if existing.is_some() && !same_user {
        Some(StanzaErrorCondition::Conflict.into())
    } else if !same_user
        && ((aff < Affiliation::Admin && room.occupants.len() >= room.config.max_users)
            || room.occupants.len() >= ctx.limits.max_occupants)
    {
        Some(StanzaErrorCondition::ServiceUnavailable.into())
    } else if room.config.password.is_some()
        && aff != Affiliation::Owner
        && x.and_then(|x| x.get_child("password", NS_MUC))
            .map(|p| p.text())
            != room.config.password
    {
        Some(StanzaErrorCondition::NotAuthorized.into())
    } else if !same_user
        && !room.occupants.values().any(|o| o.real == real)
        && ctx.joined.get(real.as_str()).copied().unwrap_or(0) >= ctx.limits.max_rooms_per_user
    {
        Some(StanzaError::with_text(
            StanzaErrorCondition::ResourceConstraint,
            "in too many rooms of this service",
        ))
    } else {
        None
    };
    if let Some(e) = refusal {
        return refuse(ctx, &to_nick, from, e);
    }

    let session = OccupantSession {
        jid: from.clone(),
        presence: payload_of(stanza),
    };
    room.by_session
        .insert(from.as_str().to_string(), nick.to_string());
    if same_user {
        // Another resource of the occupant: it alone hears the room.
        let role = {
            let occ = room.occupants.get_mut(nick).expect("checked above");
            occ.sessions.push(session);
            occ.role
        };
        send_occupants_to(ctx, room, nick, role, from);
        let occ = room.occupants.get(nick).expect("checked above").clone();
        let a = Announcement {
            self_codes: self_codes(ctx, room, false, modified),
            ..Default::default()
        };
        announce(ctx, room, &occ, &a, Some(from));
    } else {
        let occ = Occupant {
            nick: nick.to_string(),
            real: real.clone(),
            sessions: vec![session],
            role: room.default_role(aff),
            occupant_id: ctx.occupant_id(&room.jid, &real),
        };
        if !room.occupants.values().any(|o| o.real == real) {
            *ctx.joined.entry(real.as_str().to_string()).or_default() += 1;
        }
        send_occupants_to(ctx, room, nick, occ.role, from);
        let a = Announcement {
            self_codes: self_codes(ctx, room, created, modified),
            ..Default::default()
        };
        room.occupants.insert(nick.to_string(), occ.clone());
        announce(ctx, room, &occ, &a, None);
    }
    super::message::send_history(
        ctx,
        room,
        from,
        x.and_then(|x| x.get_child("history", NS_MUC)),
    );
    super::message::send_subject(ctx, room, from);
    // The joiner's stream: the occupants, then all of the above, as its
    // session queue takes them.
    ctx.streams.flush(ctx.server, room, from);
}

fn self_codes(ctx: &Ctx<'_>, room: &Room, created: bool, modified: bool) -> Vec<u16> {
    let mut codes = Vec::new();
    // 170: what is said here is kept (the room's archive).
    if ctx.archiving {
        codes.push(170);
    }
    if room.config.whois == super::config::Whois::Anyone {
        codes.push(100);
    }
    if created {
        codes.push(201);
    }
    if modified {
        codes.push(210);
    }
    codes
}

/// The presence of every occupant but `nick` to a joining session. A
/// local session's list is streamed (`fanout::JoinStreams`): built as its
/// queue takes it, with what the room sends it meanwhile held behind. A
/// remote one's (s2s, or a session on another cluster node) goes out at
/// once, one stanza at a time (its s2s queue, or the cluster's outbox, is
/// the bound).
fn send_occupants_to(ctx: &mut Ctx<'_>, room: &Room, nick: &str, role: Role, to: &FullJid) {
    let show = room.shows_jids_to(role);
    if ctx.server.route(to.domain().as_str()) == crate::routes::Route::Host
        && ctx.server.sessions.session_id(to).is_some()
    {
        ctx.streams.start(room, nick, show, to);
        return;
    }
    let a = Announcement::default();
    for occ in room.occupants.values() {
        if occ.nick == nick {
            continue;
        }
        let aff = room.affiliation(&occ.real);
        let p = Prepared::new(occupant_presence(room, occ, aff, &a, show, false));
        ctx.send(&p, to);
    }
}

/// A presence update from an occupant's session (show, status).
fn update(ctx: &mut Ctx<'_>, room: &mut Room, from: &FullJid, nick: &str, stanza: &Element) {
    let Some(occ) = room.occupants.get_mut(nick) else {
        return;
    };
    // The latest session's presence is the one shown.
    if let Some(i) = occ.sessions.iter().position(|s| &s.jid == from) {
        let mut s = occ.sessions.remove(i);
        s.presence = payload_of(stanza);
        occ.sessions.push(s);
    }
    let occ = occ.clone();
    announce(ctx, room, &occ, &Announcement::default(), None);
}

/// §7.6: unavailable as the old nick with 303 and the new one, then
/// available as the new nick, to everyone.
fn change_nick(
    ctx: &mut Ctx<'_>,
    room: &mut Room,
    from: &FullJid,
    old: &str,
    new: &str,
    stanza: &Element,
    modified: bool,
) {
    let to_nick = room.occupant_jid(new);
    if let Err(e) = check_nick(ctx, new) {
        return refuse(ctx, &to_nick, from, e);
    }
    if room.occupants.contains_key(new) {
        return refuse(ctx, &to_nick, from, StanzaErrorCondition::Conflict);
    }
    let Some(mut occ) = room.occupants.remove(old) else {
        return;
    };
    let gone = Announcement {
        unavailable: true,
        codes: vec![303],
        item_nick: Some(new.to_string()),
        ..Default::default()
    };
    // Announced while no longer in the map: it gets its own variant only.
    announce(ctx, room, &occ, &gone, None);
    occ.nick = new.to_string();
    if let Some(s) = occ.sessions.iter_mut().find(|s| &s.jid == from) {
        s.presence = payload_of(stanza);
    }
    for s in &occ.sessions {
        room.by_session
            .insert(s.jid.as_str().to_string(), new.to_string());
    }
    room.occupants.insert(new.to_string(), occ.clone());
    let back = Announcement {
        self_codes: self_codes(ctx, room, false, modified),
        ..Default::default()
    };
    announce(ctx, room, &occ, &back, None);
}

/// Unavailable from a session: it leaves (the occupant with it, if it
/// was the last of its sessions).
pub fn unavailable(ctx: &mut Ctx<'_>, room: &mut Room, from: &FullJid, stanza: &Element) {
    let Some(nick) = room.nick_of(from) else {
        return;
    };
    let status: Vec<Element> = stanza
        .children()
        .filter(|c| c.is("status", NS_CLIENT))
        .cloned()
        .collect();
    let a = Announcement {
        unavailable: true,
        payload: Some(status),
        ..Default::default()
    };
    remove_session(ctx, room, &nick, from, &a);
}

/// Removes one session; the occupant goes (announced with `a`) when it
/// was its last.
pub fn remove_session(
    ctx: &mut Ctx<'_>,
    room: &mut Room,
    nick: &str,
    session: &FullJid,
    a: &Announcement,
) {
    room.by_session.remove(session.as_str());
    let Some(occ) = room.occupants.get_mut(nick) else {
        return;
    };
    if occ.sessions.len() > 1 {
        occ.sessions.retain(|s| &s.jid != session);
        let occ = occ.clone();
        ctx.touched.insert(occ.nick.clone());
        // Only the leaving session hears of it; the occupant stays.
        let mut own = occ.clone();
        own.sessions = vec![OccupantSession {
            jid: session.clone(),
            presence: Vec::new(),
        }];
        let p = Prepared::new(occupant_presence(
            room,
            &own,
            room.affiliation(&occ.real),
            a,
            true,
            true,
        ));
        ctx.send(&p, session);
        return;
    }
    remove_occupant(ctx, room, nick, a);
}

/// Removes an occupant with all its sessions, announced with `a`.
pub fn remove_occupant(ctx: &mut Ctx<'_>, room: &mut Room, nick: &str, a: &Announcement) {
    let Some(occ) = room.occupants.remove(nick) else {
        return;
    };
    for s in &occ.sessions {
        room.by_session.remove(s.jid.as_str());
    }
    let a = Announcement {
        unavailable: true,
        ..a.clone()
    };
    announce(ctx, room, &occ, &a, None);
    left(ctx, room, &occ.real);
}

/// Removes every occupant, each told only of itself with `a` (room
/// destroyed, service shutting down): no presence storm of N × N.
pub fn empty_room(ctx: &mut Ctx<'_>, room: &mut Room, a: &Announcement) {
    let occupants: Vec<Occupant> = room.occupants.drain().map(|(_, o)| o).collect();
    room.by_session.clear();
    for occ in &occupants {
        let p = Prepared::new(occupant_presence(
            room,
            occ,
            room.affiliation(&occ.real),
            a,
            true,
            true,
        ));
        for s in &occ.sessions {
            ctx.send(&p, &s.jid);
        }
        left(ctx, room, &occ.real);
    }
}

/// Counts a user out of the room when none of its occupants remain.
fn left(ctx: &mut Ctx<'_>, room: &Room, real: &BareJid) {
    if room.occupants.values().any(|o| &o.real == real) {
        return;
    }
    if let Some(n) = ctx.joined.get_mut(real.as_str()) {
        *n -= 1;
        if *n == 0 {
            ctx.joined.remove(real.as_str());
        }
    }
}

/// Removes every occupant of the user `real` (banned, or no longer a
/// member of a members-only room), with `a`.
pub fn remove_user(ctx: &mut Ctx<'_>, room: &mut Room, real: &BareJid, a: &Announcement) {
    let nicks: Vec<String> = room
        .occupants
        .values()
        .filter(|o| &o.real == real)
        .map(|o| o.nick.clone())
        .collect();
    for n in nicks {
        remove_occupant(ctx, room, &n, a);
    }
}

/// A session that could not be sent to (gone, or its queue full): removed
/// with 333, as the service's own decision (§7.2.? "technical reasons").
pub fn drop_lost(ctx: &mut Ctx<'_>, room: &mut Room, session: &FullJid) {
    let Some(nick) = room.nick_of(session) else {
        return;
    };
    let a = Announcement {
        unavailable: true,
        codes: vec![333],
        ..Default::default()
    };
    remove_session(ctx, room, &nick, session, &a);
}

/// Presence without `<x/>` from a session that is not in the room: per
/// §7.2.1 (1.32+) the service answers with a removal (110, 307, 333) so a
/// client out of step notices.
pub fn not_joined(ctx: &mut Ctx<'_>, room: &Room, from: &FullJid, nick: &str) {
    let p = Element::new("presence", NS_CLIENT)
        .with_attr("from", room.occupant_jid(nick))
        .with_attr("type", "unavailable")
        .with_child(
            Element::new("x", NS_USER)
                .with_child(
                    Element::new("item", NS_USER)
                        .with_attr("affiliation", room.affiliation(&from.bare()).as_str())
                        .with_attr("role", "none"),
                )
                .with_child(Element::new("status", NS_USER).with_attr("code", "110"))
                .with_child(Element::new("status", NS_USER).with_attr("code", "307"))
                .with_child(Element::new("status", NS_USER).with_attr("code", "333")),
        );
    super::fanout::send_one(ctx.server, p, &jid::Jid::from(from.clone()));
}
