//! One room's whole state, with one owner (the service's task): occupants
//! by nick and by session, affiliations, roles, configuration, subject
//! and the history kept for joiners. Nothing here waits; what must be
//! stored is marked `dirty` and written by the service after the stanza.

use std::collections::{HashMap, HashSet, VecDeque};

use jid::{BareJid, FullJid};

use super::config::{RoomConfig, Whois};
use super::fanout::Prepared;
use crate::config::MucConfig;
use crate::modules::mam::id::IdSource;
use crate::server::Server;
use crate::storage::StoredRoom;
use crate::xml::Element;

/// A long-lived relation of a user (bare JID) to the room (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Affiliation> {
        Some(match s {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }
}

/// A temporary position of an occupant while in the room (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// One client session of an occupant (a user may join under one nick
/// from several resources).
#[derive(Debug, Clone)]
pub struct OccupantSession {
    pub jid: FullJid,
    /// The presence's payload as the client last sent it (show, status,
    /// capabilities), without the MUC elements.
    pub presence: Vec<Element>,
}

/// A nick in the room and who is behind it.
#[derive(Debug, Clone)]
pub struct Occupant {
    pub nick: String,
    pub real: BareJid,
    pub sessions: Vec<OccupantSession>,
    pub role: Role,
    /// XEP-0421: stable for this user in this room.
    pub occupant_id: String,
}

impl Occupant {
    /// The real JID shown to those allowed to see it: the latest session.
    pub fn shown_jid(&self) -> &FullJid {
        &self.sessions[self.sessions.len() - 1].jid
    }

    /// The presence payload shown for the occupant (the latest session's).
    pub fn payload(&self) -> &[Element] {
        &self.sessions[self.sessions.len() - 1].presence
    }
}

/// A message kept for joiners: the broadcast's bytes with a delay stamp.
#[derive(Debug, Clone)]
pub struct HistoryItem {
    pub stanza: Prepared,
    /// Its stanza-id (what a moderator names to retract it).
    pub id: String,
    /// When it was sent (unix seconds).
    pub at: i64,
}

/// The room's subject and the nick that set it ('' = the room).
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub text: String,
    pub by: String,
}

/// A room.
#[derive(Debug)]
pub struct Room {
    pub jid: BareJid,
    pub config: RoomConfig,
    /// Bare JID → (affiliation, reason); `none` is never stored.
    pub affiliations: HashMap<String, (Affiliation, String)>,
    /// Nick → occupant.
    pub occupants: HashMap<String, Occupant>,
    /// A session's full JID → its nick.
    pub by_session: HashMap<String, String>,
    pub subject: Subject,
    pub history: VecDeque<HistoryItem>,
    /// Bytes held by `history`.
    pub history_bytes: usize,
    /// Created and not yet configured (§10.1): only owners may enter.
    pub locked: bool,
    /// Configuration or subject changed since the last write (the room's
    /// row); affiliations and the vCard are tracked in `pending`.
    pub dirty: bool,
    /// Affiliation rows and vCard changed since the last write.
    pub pending: super::persist::Pending,
    /// Bare JID → the nick an affiliated user last entered with (for
    /// mentions of absent members); only affiliated users have one.
    pub nicks: super::mentions::MemberNicks,
    /// The room's vCard and its photo's hash (XEP-0486).
    pub avatar: Option<super::avatar::RoomAvatar>,
    /// Has rows in the database.
    pub stored: bool,
    /// Destroyed by its owner: the service forgets it.
    pub destroyed: bool,
    /// IQs relayed to occupants awaiting their answer, by the id they
    /// were sent with (bounded by `[muc] max_relayed_iqs`).
    pub relayed: HashMap<String, super::iq_relay::RelayedIq>,
    /// Nicks of visitors whose voice request awaits a moderator (§7.13).
    pub voice_requests: HashSet<String>,
    /// XEP-0317 hats users wear here (≤ `[muc] max_hats`).
    pub hats: Vec<super::hats::Hat>,
}

/// What a room's handlers reach beyond the room: the server (delivery),
/// the service's limits, the per-user join counts, ids, and the sessions
/// found gone or too slow while sending (removed after the stanza).
pub struct Ctx<'a> {
    pub server: &'a Server,
    pub limits: &'a MucConfig,
    /// Bare JID → rooms of this service it is in.
    pub joined: &'a mut HashMap<String, usize>,
    pub ids: &'a IdSource,
    pub secret: &'a [u8],
    /// Sessions a stanza could not be queued for: gone, or not reading.
    pub lost: Vec<FullJid>,
    /// Rooms keep their group chat in the archive.
    pub archiving: bool,
    /// Rows for the archive, handed to its writer after the stanza.
    pub archive_rows: Vec<crate::storage::ArchiveRow>,
    /// Messages naming absent members, told to push after the stanza.
    pub mentions: Vec<super::mentions::Mentioned>,
    /// Joiners whose occupant list is still going out: what the room
    /// sends them waits behind it.
    pub streams: &'a mut super::fanout::JoinStreams,
    /// Nicks whose occupant changed (its presence was announced): a
    /// cluster records them after the stanza (`occupancy`).
    pub touched: HashSet<String>,
}

impl Ctx<'_> {
    /// Queues `p` for one session, noting a session that cannot take it.
    pub fn send(&mut self, p: &Prepared, to: &FullJid) {
        match self.streams.hold(p, to) {
            super::fanout::Hold::Held => {}
            super::fanout::Hold::SendNow => {
                if p.send(self.server, to).is_err() {
                    self.lost.push(to.clone());
                }
            }
            super::fanout::Hold::TooSlow => self.lost.push(to.clone()),
        }
    }

    /// The user's XEP-0421 occupant id in `room`: a keyed hash, so it is
    /// stable across joins and restarts and reveals nothing.
    pub fn occupant_id(&self, room: &BareJid, real: &BareJid) -> String {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.secret).expect("any key length");
        mac.update(room.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(real.as_str().as_bytes());
        let out = mac.finalize().into_bytes();
        base64::engine::general_purpose::STANDARD.encode(&out[..18])
    }
}

impl Room {
    pub fn new(jid: BareJid, config: RoomConfig) -> Room {
        Room {
            jid,
            config,
            affiliations: HashMap::new(),
            occupants: HashMap::new(),
            by_session: HashMap::new(),
            subject: Subject::default(),
            history: VecDeque::new(),
            history_bytes: 0,
            locked: false,
            dirty: false,
            pending: Default::default(),
            nicks: Default::default(),
            avatar: None,
            stored: false,
            destroyed: false,
            relayed: HashMap::new(),
            voice_requests: HashSet::new(),
            hats: Vec::new(),
        }
    }

    /// A user's affiliation.
    pub fn affiliation(&self, real: &BareJid) -> Affiliation {
        self.affiliations
            .get(real.as_str())
            .map(|a| a.0)
            .unwrap_or(Affiliation::None)
    }

    /// Sets an affiliation (`none` removes the entry).
    pub fn set_affiliation(&mut self, real: &BareJid, aff: Affiliation, reason: String) {
        if aff == Affiliation::None {
            self.affiliations.remove(real.as_str());
            self.nicks.remove(real.as_str());
        } else {
            self.affiliations
                .insert(real.as_str().to_string(), (aff, reason));
        }
        self.pending.affiliation(real.as_str());
    }

    /// How many owners the room has.
    pub fn owners(&self) -> usize {
        self.affiliations
            .values()
            .filter(|a| a.0 == Affiliation::Owner)
            .count()
    }

    /// The role an affiliation gets on entering (§5.1.2).
    pub fn default_role(&self, aff: Affiliation) -> Role {
        match aff {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Member => Role::Participant,
            Affiliation::None if self.config.moderated => Role::Visitor,
            Affiliation::None => Role::Participant,
            Affiliation::Outcast => Role::None,
        }
    }

    /// The occupant a session is joined as.
    pub fn occupant_of(&self, session: &FullJid) -> Option<&Occupant> {
        self.occupants.get(self.by_session.get(session.as_str())?)
    }

    /// The nick a session is joined as.
    pub fn nick_of(&self, session: &FullJid) -> Option<String> {
        self.by_session.get(session.as_str()).cloned()
    }

    /// The room JID of a nick (`room@service/nick`).
    pub fn occupant_jid(&self, nick: &str) -> String {
        format!("{}/{}", self.jid, nick)
    }

    /// Whether an occupant with `role` sees real JIDs.
    pub fn shows_jids_to(&self, role: Role) -> bool {
        self.config.whois == Whois::Anyone || role == Role::Moderator
    }

    /// Keeps a broadcast message for joiners, within the room's length
    /// and the service's byte bound.
    pub fn remember(&mut self, item: HistoryItem, max_bytes: usize) {
        if self.config.history == 0 || item.stanza.len() > max_bytes {
            return;
        }
        self.history_bytes += item.stanza.len();
        self.history.push_back(item);
        self.trim_history(max_bytes);
    }

    /// Drops the oldest history beyond the room's length or `max_bytes`.
    pub fn trim_history(&mut self, max_bytes: usize) {
        while self.history.len() > self.config.history || self.history_bytes > max_bytes {
            match self.history.pop_front() {
                Some(old) => self.history_bytes -= old.stanza.len(),
                None => break,
            }
        }
    }

    /// What the database keeps of the room.
    pub fn to_stored(&self) -> StoredRoom {
        let mut affiliations: Vec<(String, String, String)> = self
            .affiliations
            .iter()
            .map(|(j, (a, r))| (j.clone(), a.as_str().to_string(), r.clone()))
            .collect();
        affiliations.sort();
        StoredRoom {
            room: self.jid.node().map(|n| n.to_string()).unwrap_or_default(),
            config: self.stored_config(),
            subject: self.subject.text.clone(),
            subject_by: self.subject.by.clone(),
            affiliations,
            ..StoredRoom::default()
        }
    }

    /// The configuration text with the hats as `hat=` lines (the
    /// configuration reader passes over them).
    pub fn stored_config(&self) -> String {
        let mut text = self.config.to_stored();
        for h in &self.hats {
            // A hat's fields hold no line break (`hats::command` sees to it).
            text.push_str("hat=");
            text.push_str(&h.to_stored());
            text.push('\n');
        }
        text
    }

    /// A room read back from the database.
    pub fn from_stored(service: &str, stored: &StoredRoom, limits: &MucConfig) -> Option<Room> {
        let jid = BareJid::new(&format!("{}@{}", stored.room, service)).ok()?;
        let mut room = Room::new(jid, RoomConfig::from_stored(&stored.config, limits));
        room.config.persistent = true;
        room.hats = stored
            .config
            .lines()
            .filter_map(|l| l.strip_prefix("hat="))
            .filter_map(super::hats::Hat::from_stored)
            .take(limits.max_hats)
            .collect();
        room.subject = Subject {
            text: stored.subject.clone(),
            by: stored.subject_by.clone(),
        };
        for (jid, aff, reason) in &stored.affiliations {
            if let (Ok(j), Some(a)) = (BareJid::new(jid), Affiliation::parse(aff)) {
                if a != Affiliation::None {
                    room.affiliations
                        .insert(j.as_str().to_string(), (a, reason.clone()));
                }
            }
        }
        room.stored = true;
        Some(room)
    }

    /// Every session of every occupant, with its occupant.
    pub fn sessions(&self) -> impl Iterator<Item = (&Occupant, &FullJid)> {
        self.occupants
            .values()
            .flat_map(|o| o.sessions.iter().map(move |s| (o, &s.jid)))
    }
}
