//! IQs to a room (XEP-0045 §6, §8–10): its disco, the moderator's roles
//! (kick 307, voice), the admin's and owner's affiliations (ban 301,
//! member/admin/owner/outcast lists, 321 when a members-only room loses
//! a member), the owner's configuration form (unlocking a new room,
//! 104/172/173 notices, 322 when a room becomes members-only) and
//! destruction with reason and alternate venue.

use crate::stanza::bare::Bare;
use jid::{BareJid, FullJid};

use super::config::Whois;
use super::presence::{announce, remove_occupant, remove_user, Announcement};
use super::room::{Affiliation, Ctx, Role, Room};
use super::{NS_ADMIN, NS_MUC, NS_OCCUPANT_ID, NS_OWNER, NS_PING, NS_SELF_PING, NS_SID, NS_USER};
use crate::modules::disco::{NS_INFO, NS_ITEMS};
use crate::modules::NS_DATA;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::Element;

type Outcome = Result<Option<Element>, StanzaError>;

/// §7.12: the disco node that tells a user its reserved nick.
const RESERVED_NICK_NODE: &str = "x-roomuser-item";

fn err(c: StanzaErrorCondition) -> Outcome {
    Err(c.into())
}

/// An IQ get/set to the room's bare JID.
pub fn room_iq(
    ctx: &mut Ctx<'_>,
    room: &mut Room,
    from: &FullJid,
    is_set: bool,
    payload: &Element,
) -> Outcome {
    // §10.1.3: until its owner configures it, the room is there for its
    // owners only.
    if room.locked && room.affiliation(&from.bare()) != Affiliation::Owner {
        return err(StanzaErrorCondition::ItemNotFound);
    }
    match (payload.ns(), is_set) {
        (NS_INFO, false) => disco_info(room, payload, ctx.archiving),
        (NS_ITEMS, false) if payload.attr("node") == Some(super::hats::NS_COMMANDS) => {
            let mut q = Element::new("query", NS_ITEMS).with_attr("node", super::hats::NS_COMMANDS);
            for i in super::hats::command_items(room, from) {
                q.append_child(i);
            }
            Ok(Some(q))
        }
        (NS_ITEMS, false) => Ok(Some(disco_items(room, from))),
        (super::hats::NS_COMMANDS, true) => super::hats::command(ctx, room, from, payload),
        (NS_PING, false) => Ok(None),
        (NS_ADMIN, false) => admin_get(room, from, payload),
        (NS_ADMIN, true) => admin_set(ctx, room, from, payload),
        (NS_OWNER, false) => owner_get(ctx, room, from),
        (NS_OWNER, true) => owner_set(ctx, room, from, payload),
        _ => err(StanzaErrorCondition::ServiceUnavailable),
    }
}

fn feature(var: &str) -> Element {
    Element::new("feature", NS_INFO).with_attr("var", var)
}

/// §6.4: identity, the room's features and `muc#roominfo`.
fn disco_info(room: &Room, payload: &Element, archiving: bool) -> Outcome {
    match payload.attr("node") {
        None => {}
        // §7.12: the user's reserved nick. The service has no room
        // registration, so nobody has one: an empty answer, as the XEP
        // asks for a user without.
        Some(RESERVED_NICK_NODE) => {
            return Ok(Some(
                Element::new("query", NS_INFO).with_attr("node", RESERVED_NICK_NODE),
            ))
        }
        Some(_) => return err(StanzaErrorCondition::ItemNotFound),
    }
    let c = &room.config;
    let mut q = Element::new("query", NS_INFO);
    let name = if c.name.is_empty() {
        room.jid.node().map(|n| n.to_string()).unwrap_or_default()
    } else {
        c.name.clone()
    };
    q.append_child(
        Element::new("identity", NS_INFO)
            .with_attr("category", "conference")
            .with_attr("type", "text")
            .with_attr("name", name),
    );
    let pick = |b: bool, yes: &'static str, no: &'static str| if b { yes } else { no };
    for f in [
        NS_MUC,
        NS_INFO,
        NS_ITEMS,
        NS_PING,
        NS_SID,
        NS_OCCUPANT_ID,
        NS_SELF_PING,
        super::moderate::NS_MODERATE,
        super::moderate::NS_MODERATE_0,
        super::hats::NS_HATS,
        super::hats::NS_COMMANDS,
        "http://jabber.org/protocol/muc#stable_id",
        pick(c.persistent, "muc_persistent", "muc_temporary"),
        pick(c.public, "muc_public", "muc_hidden"),
        pick(c.members_only, "muc_membersonly", "muc_open"),
        pick(c.moderated, "muc_moderated", "muc_unmoderated"),
        pick(
            c.password.is_some(),
            "muc_passwordprotected",
            "muc_unsecured",
        ),
        pick(
            c.whois == Whois::Anyone,
            "muc_nonanonymous",
            "muc_semianonymous",
        ),
    ] {
        q.append_child(feature(f));
    }
    if archiving {
        q.append_child(feature(crate::modules::mam::NS_MAM));
    }
    q.append_child(super::config::roominfo(
        c,
        room.occupants.len(),
        &room.subject.text,
    ));
    Ok(Some(q))
}

/// §6.5: the occupants' room JIDs, to occupants only (others learn
/// nothing of who is inside).
fn disco_items(room: &Room, from: &FullJid) -> Element {
    let mut q = Element::new("query", NS_ITEMS);
    if room.nick_of(from).is_some() {
        for nick in room.occupants.keys() {
            q.append_child(
                Element::new("item", NS_ITEMS).with_attr("jid", room.occupant_jid(nick)),
            );
        }
    }
    q
}

/// The requester's affiliation and role.
fn standing(room: &Room, from: &FullJid) -> (Affiliation, Role) {
    let aff = room.affiliation(&from.bare());
    let role = room.occupant_of(from).map(|o| o.role).unwrap_or(Role::None);
    (aff, role)
}

/// §9.5, §10.5, §10.8, §8.5: lists by affiliation or role.
fn admin_get(room: &Room, from: &FullJid, payload: &Element) -> Outcome {
    let Some(item) = payload.get_child("item", NS_ADMIN) else {
        return err(StanzaErrorCondition::BadRequest);
    };
    let (aff, role) = standing(room, from);
    let mut q = Element::new("query", NS_ADMIN);
    if let Some(a) = item.attr("affiliation") {
        let Some(want) = Affiliation::parse(a).filter(|a| *a != Affiliation::None) else {
            return err(StanzaErrorCondition::BadRequest);
        };
        if aff < Affiliation::Admin {
            return err(StanzaErrorCondition::Forbidden);
        }
        let mut list: Vec<(&String, &(Affiliation, String))> = room
            .affiliations
            .iter()
            .filter(|(_, (a, _))| *a == want)
            .collect();
        list.sort();
        for (jid, (a, reason)) in list {
            let mut i = Element::new("item", NS_ADMIN)
                .with_attr("affiliation", a.as_str())
                .with_attr("jid", jid.as_str());
            if let Some(o) = room.occupants.values().find(|o| o.real.as_str() == jid) {
                i.set_attr("nick", o.nick.as_str());
            }
            if !reason.is_empty() {
                i.append_child(Element::new("reason", NS_ADMIN).with_text(reason.as_str()));
            }
            q.append_child(i);
        }
        return Ok(Some(q));
    }
    if let Some(r) = item.attr("role") {
        let Some(want) = Role::parse(r).filter(|r| *r != Role::None) else {
            return err(StanzaErrorCondition::BadRequest);
        };
        if role != Role::Moderator {
            return err(StanzaErrorCondition::Forbidden);
        }
        for o in room.occupants.values().filter(|o| o.role == want) {
            q.append_child(
                Element::new("item", NS_ADMIN)
                    .with_attr("affiliation", room.affiliation(&o.real).as_str())
                    .with_attr("role", o.role.as_str())
                    .with_attr("nick", o.nick.as_str())
                    .with_attr("jid", o.shown_jid().as_str()),
            );
        }
        return Ok(Some(q));
    }
    err(StanzaErrorCondition::BadRequest)
}

/// One change an admin IQ asks for, checked before any is applied.
enum Change {
    Role {
        nick: String,
        role: Role,
        reason: Option<String>,
    },
    Affiliation {
        jid: BareJid,
        aff: Affiliation,
        reason: Option<String>,
    },
}

/// §8, §9, §10: role and affiliation changes, all checked first, then
/// applied together.
fn admin_set(ctx: &mut Ctx<'_>, room: &mut Room, from: &FullJid, payload: &Element) -> Outcome {
    let (aff, role) = standing(room, from);
    let mut changes = Vec::new();
    let mut owners = room.owners() as i64;
    let mut new_affiliations = 0usize;
    for item in payload.children().filter(|c| c.is("item", NS_ADMIN)) {
        let reason = item.get_child("reason", NS_ADMIN).map(|r| r.text());
        if let Some(r) = item.attr("role") {
            let Some(new) = Role::parse(r) else {
                return err(StanzaErrorCondition::BadRequest);
            };
            let Some(nick) = item.attr("nick") else {
                return err(StanzaErrorCondition::BadRequest);
            };
            let Some(target) = room.occupants.get(nick) else {
                return err(StanzaErrorCondition::ItemNotFound);
            };
            let target_aff = room.affiliation(&target.real);
            if role != Role::Moderator {
                return err(StanzaErrorCondition::Forbidden);
            }
            // §8.2/§8.3: nobody removes or silences an admin or owner, nor
            // someone of a higher affiliation than their own.
            if new != Role::Moderator && (target_aff >= Affiliation::Admin || target_aff > aff) {
                return err(StanzaErrorCondition::NotAllowed);
            }
            // §9.6: granting or revoking moderator is for admins.
            if (new == Role::Moderator || target.role == Role::Moderator)
                && aff < Affiliation::Admin
            {
                return err(StanzaErrorCondition::Forbidden);
            }
            changes.push(Change::Role {
                nick: nick.to_string(),
                role: new,
                reason,
            });
        } else if let Some(a) = item.attr("affiliation") {
            let Some(new) = Affiliation::parse(a) else {
                return err(StanzaErrorCondition::BadRequest);
            };
            let Some(jid) = item
                .attr("jid")
                .and_then(|j| jid::Jid::new(j).ok())
                .map(|j| j.bare())
            else {
                return err(StanzaErrorCondition::BadRequest);
            };
            let old = room.affiliation(&jid);
            if aff < Affiliation::Admin {
                return err(StanzaErrorCondition::Forbidden);
            }
            // §10.3-10.7: owners manage owners and admins; admins only
            // members, outcasts and none, and never an admin or owner.
            let high = |a: Affiliation| a >= Affiliation::Admin;
            if aff != Affiliation::Owner && (high(new) || high(old)) {
                return err(StanzaErrorCondition::NotAllowed);
            }
            if old == Affiliation::Owner && new != Affiliation::Owner {
                owners -= 1;
            }
            if new == Affiliation::Owner && old != Affiliation::Owner {
                owners += 1;
            }
            if old == Affiliation::None && new != Affiliation::None {
                new_affiliations += 1;
            }
            changes.push(Change::Affiliation {
                jid,
                aff: new,
                reason,
            });
        } else {
            return err(StanzaErrorCondition::BadRequest);
        }
    }
    if changes.is_empty() {
        return err(StanzaErrorCondition::BadRequest);
    }
    // §10.9: a room always keeps an owner.
    if owners < 1 {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::Conflict,
            "the room needs an owner",
        ));
    }
    if room.affiliations.len() + new_affiliations > ctx.limits.max_affiliations {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::ResourceConstraint,
            "too many affiliations in this room",
        ));
    }
    let actor = room.nick_of(from);
    let item_children = |reason: &Option<String>| {
        let mut v = Vec::new();
        if let Some(n) = &actor {
            v.push(Element::new("actor", NS_USER).with_attr("nick", n.as_str()));
        }
        if let Some(r) = reason {
            v.push(Element::new("reason", NS_USER).with_text(r.as_str()));
        }
        v
    };
    for change in changes {
        match change {
            Change::Role { nick, role, reason } => {
                if role == Role::None {
                    let a = Announcement {
                        codes: vec![307],
                        item_children: item_children(&reason),
                        ..Default::default()
                    };
                    remove_occupant(ctx, room, &nick, &a);
                } else if let Some(o) = room.occupants.get_mut(&nick) {
                    o.role = role;
                    let o = o.clone();
                    let a = Announcement {
                        item_children: item_children(&reason),
                        ..Default::default()
                    };
                    announce(ctx, room, &o, &a, None);
                }
            }
            Change::Affiliation { jid, aff, reason } => {
                room.set_affiliation(&jid, aff, reason.clone().unwrap_or_default());
                let children = item_children(&reason);
                affiliation_changed(ctx, room, &jid, aff, children);
            }
        }
    }
    Ok(None)
}

/// The occupants of a user whose affiliation changed: banned (301), out
/// of a members-only room (321), or their new standing announced.
fn affiliation_changed(
    ctx: &mut Ctx<'_>,
    room: &mut Room,
    jid: &BareJid,
    aff: Affiliation,
    item_children: Vec<Element>,
) {
    if aff == Affiliation::Outcast {
        let a = Announcement {
            codes: vec![301],
            item_children,
            ..Default::default()
        };
        return remove_user(ctx, room, jid, &a);
    }
    if room.config.members_only && aff < Affiliation::Member {
        let a = Announcement {
            codes: vec![321],
            item_children,
            ..Default::default()
        };
        return remove_user(ctx, room, jid, &a);
    }
    let role = room.default_role(aff);
    let nicks: Vec<String> = room
        .occupants
        .values()
        .filter(|o| &o.real == jid)
        .map(|o| o.nick.clone())
        .collect();
    for n in nicks {
        if let Some(o) = room.occupants.get_mut(&n) {
            // A visitor given voice keeps it; only the affiliation's own
            // role floor moves the role.
            o.role = if aff >= Affiliation::Admin {
                Role::Moderator
            } else {
                role.max(o.role.min(Role::Participant))
            };
            let o = o.clone();
            let a = Announcement {
                item_children: item_children.clone(),
                ..Default::default()
            };
            announce(ctx, room, &o, &a, None);
        }
    }
}

/// §10.2: the configuration form, for owners.
fn owner_get(ctx: &Ctx<'_>, room: &Room, from: &FullJid) -> Outcome {
    if room.affiliation(&from.bare()) != Affiliation::Owner {
        return err(StanzaErrorCondition::Forbidden);
    }
    Ok(Some(
        Element::new("query", NS_OWNER).with_child(room.config.form(ctx.limits)),
    ))
}

/// §10.1–10.2: a submitted or cancelled configuration; §10.9 destroy.
fn owner_set(ctx: &mut Ctx<'_>, room: &mut Room, from: &FullJid, payload: &Element) -> Outcome {
    if room.affiliation(&from.bare()) != Affiliation::Owner {
        return err(StanzaErrorCondition::Forbidden);
    }
    if let Some(d) = payload.get_child("destroy", NS_OWNER) {
        destroy(ctx, room, d);
        return Ok(None);
    }
    let Some(x) = payload.get_child("x", NS_DATA) else {
        return err(StanzaErrorCondition::BadRequest);
    };
    match x.attr("type") {
        Some("cancel") => {
            // §10.1.3: cancelling the first configuration destroys the room.
            if room.locked {
                destroy(ctx, room, &Element::new("destroy", NS_OWNER));
            }
            Ok(None)
        }
        Some("submit") => {
            let new = room.config.apply(x, ctx.limits)?;
            let old = std::mem::replace(&mut room.config, new);
            let was_locked = std::mem::replace(&mut room.locked, false);
            room.dirty = true;
            room.trim_history(ctx.limits.max_history_bytes);
            if was_locked {
                return Ok(None);
            }
            let mut codes = Vec::new();
            if old != room.config {
                codes.push(104);
            }
            if old.whois != room.config.whois {
                codes.push(if room.config.whois == Whois::Anyone {
                    172
                } else {
                    173
                });
            }
            if !codes.is_empty() {
                super::message::notify_all(ctx, room, &codes);
            }
            if room.config.members_only && !old.members_only {
                let outsiders: Vec<String> = room
                    .occupants
                    .values()
                    .filter(|o| room.affiliation(&o.real) < Affiliation::Member)
                    .map(|o| o.nick.clone())
                    .collect();
                let a = Announcement {
                    codes: vec![322],
                    ..Default::default()
                };
                for n in outsiders {
                    remove_occupant(ctx, room, &n, &a);
                }
            }
            Ok(None)
        }
        _ => err(StanzaErrorCondition::BadRequest),
    }
}

/// §10.9: everyone leaves with the reason and alternate venue (each
/// occupant hears only of itself); the service forgets the room.
pub fn destroy(ctx: &mut Ctx<'_>, room: &mut Room, request: &Element) {
    let mut d = Element::new("destroy", NS_USER);
    if let Some(j) = request.attr("jid") {
        d.set_attr("jid", j);
    }
    if let Some(r) = request.get_child("reason", NS_OWNER) {
        d.append_child(Element::new("reason", NS_USER).with_text(r.text()));
    }
    if let Some(p) = request.get_child("password", NS_OWNER) {
        d.append_child(Element::new("password", NS_USER).with_text(p.text()));
    }
    let a = Announcement {
        unavailable: true,
        x_children: vec![d],
        ..Default::default()
    };
    super::presence::empty_room(ctx, room, &a);
    room.destroyed = true;
}
