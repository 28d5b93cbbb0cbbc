//! A room's occupants as the cluster keeps them (issue #16), so the node
//! that takes a room over when its holder died goes on with the same
//! occupants: those on surviving nodes stay in the room without a sign of
//! the move, those of the dead node are removed (333, as for a session
//! lost any other way).
//!
//! The holder records each occupant whose presence the room announced
//! (joins, presence changes, roles, nick changes, departures: every
//! change an occupant's presence broadcast stands for) after the stanza,
//! as one record per nick, and a temporary room's configuration and
//! affiliations under the empty nick (a persistent room's are in the
//! database). A record is XML of our own namespace, parsed back with the
//! same reader as stored stanzas. History is not recorded: a room taken
//! over starts with none (the room's archive keeps it for MAM).

use std::collections::HashMap;

use bytes::Bytes;
use jid::{BareJid, FullJid};

use super::room::{Occupant, OccupantSession, Role, Room};
use crate::storage::StoredRoom;
use crate::xml::Element;

const NS: &str = "urn:waxwing:cluster:muc";

/// The field of a temporary room's own record (no nick is empty).
pub const ROOM_FIELD: &str = "";

// Written as in a `jabber:client` stream (the root declares our
// namespace, presence payloads keep theirs), as the reader expects.

/// One occupant's record.
pub fn encode(occ: &Occupant) -> Bytes {
    let mut e = Element::new("occupant", NS)
        .with_attr("nick", occ.nick.as_str())
        .with_attr("real", occ.real.as_str())
        .with_attr("role", occ.role.as_str())
        .with_attr("id", occ.occupant_id.as_str());
    for s in &occ.sessions {
        let mut session = Element::new("session", NS).with_attr("jid", s.jid.as_str());
        for p in &s.presence {
            session.append_child(p.clone());
        }
        e.append_child(session);
    }
    Bytes::from(e.to_bytes(crate::xml::NS_CLIENT))
}

/// An occupant read back (None if the record is unreadable).
pub fn decode(bytes: &[u8]) -> Option<Occupant> {
    let e = parse(bytes)?;
    if !e.is("occupant", NS) {
        return None;
    }
    let sessions: Vec<OccupantSession> = e
        .children()
        .filter(|c| c.is("session", NS))
        .filter_map(|s| {
            Some(OccupantSession {
                jid: FullJid::new(s.attr("jid")?).ok()?,
                presence: s.children().cloned().collect(),
            })
        })
        .collect();
    if sessions.is_empty() {
        return None;
    }
    Some(Occupant {
        nick: e.attr("nick")?.to_string(),
        real: BareJid::new(e.attr("real")?).ok()?,
        sessions,
        role: Role::parse(e.attr("role")?)?,
        occupant_id: e.attr("id")?.to_string(),
    })
}

/// A temporary room's configuration, subject and affiliations.
pub fn encode_room(stored: &StoredRoom) -> Bytes {
    let mut e = Element::new("room", NS)
        .with_attr("subject-by", stored.subject_by.as_str())
        .with_child(Element::new("config", NS).with_text(stored.config.as_str()))
        .with_child(Element::new("subject", NS).with_text(stored.subject.as_str()));
    for (jid, aff, reason) in &stored.affiliations {
        e.append_child(
            Element::new("affiliation", NS)
                .with_attr("jid", jid.as_str())
                .with_attr("affiliation", aff.as_str())
                .with_attr("reason", reason.as_str()),
        );
    }
    Bytes::from(e.to_bytes(crate::xml::NS_CLIENT))
}

/// A temporary room's record read back, named `room`.
pub fn decode_room(room: &str, bytes: &[u8]) -> Option<StoredRoom> {
    let e = parse(bytes)?;
    if !e.is("room", NS) {
        return None;
    }
    let text = |name: &str| e.get_child(name, NS).map(|c| c.text()).unwrap_or_default();
    Some(StoredRoom {
        room: room.to_string(),
        config: text("config"),
        subject: text("subject"),
        subject_by: e.attr("subject-by").unwrap_or_default().to_string(),
        affiliations: e
            .children()
            .filter(|c| c.is("affiliation", NS))
            .filter_map(|a| {
                Some((
                    a.attr("jid")?.to_string(),
                    a.attr("affiliation")?.to_string(),
                    a.attr("reason").unwrap_or_default().to_string(),
                ))
            })
            .collect(),
        ..StoredRoom::default()
    })
}

fn parse(bytes: &[u8]) -> Option<Element> {
    let text = std::str::from_utf8(bytes).ok()?;
    crate::modules::xml_from_storage(text, crate::xml::ParserLimits::default().max_depth)?
        .into_iter()
        .next()
}

/// What changed in a room's records after a stanza: (nick, the record
/// now, or None when the nick left).
pub fn changes(
    room: &Room,
    touched: impl IntoIterator<Item = String>,
) -> Vec<(String, Option<Bytes>)> {
    touched
        .into_iter()
        .map(|nick| {
            let now = room.occupants.get(&nick).map(encode);
            (nick, now)
        })
        .collect()
}

/// Puts the recorded occupants into a room just taken over. Sessions
/// that are not alive anywhere (`alive` says no: their node died) are
/// returned, for the room to remove as lost (333). `joined` counts each
/// user's rooms, as a join does.
pub fn restore(
    room: &mut Room,
    records: Vec<(String, Bytes)>,
    alive: impl Fn(&FullJid) -> bool,
    joined: &mut HashMap<String, usize>,
) -> Vec<FullJid> {
    let mut gone = Vec::new();
    for (nick, bytes) in records {
        if nick == ROOM_FIELD {
            continue;
        }
        let Some(occ) = decode(&bytes).filter(|o| o.nick == nick) else {
            tracing::warn!(room = %room.jid, nick, "muc: unreadable occupant record skipped");
            continue;
        };
        if room.occupants.contains_key(&nick) {
            continue;
        }
        for s in &occ.sessions {
            room.by_session
                .insert(s.jid.as_str().to_string(), nick.clone());
            if !alive(&s.jid) {
                gone.push(s.jid.clone());
            }
        }
        if !room.occupants.values().any(|o| o.real == occ.real) {
            *joined.entry(occ.real.as_str().to_string()).or_default() += 1;
        }
        room.occupants.insert(nick, occ);
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let occ = Occupant {
            nick: "bee <&>".into(),
            real: BareJid::new("b@x").unwrap(),
            sessions: vec![OccupantSession {
                jid: FullJid::new("b@x/phone").unwrap(),
                presence: vec![
                    Element::new("show", crate::xml::NS_CLIENT).with_text("away"),
                    Element::new("c", "http://jabber.org/protocol/caps").with_attr("ver", "v1"),
                ],
            }],
            role: Role::Moderator,
            occupant_id: "id1".into(),
        };
        let back = decode(&encode(&occ)).expect("readable");
        assert_eq!(back.nick, occ.nick);
        assert_eq!(back.real, occ.real);
        assert_eq!(back.role, Role::Moderator);
        assert_eq!(back.occupant_id, "id1");
        assert_eq!(back.sessions[0].jid, occ.sessions[0].jid);
        assert_eq!(back.sessions[0].presence, occ.sessions[0].presence);

        let stored = StoredRoom {
            room: "r".into(),
            config: "a=1\nb=2\n".into(),
            subject: "hi".into(),
            subject_by: "bee".into(),
            affiliations: vec![("o@x".into(), "owner".into(), "".into())],
            ..StoredRoom::default()
        };
        assert_eq!(decode_room("r", &encode_room(&stored)), Some(stored));
    }
}
