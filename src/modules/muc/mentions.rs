//! Push for mentions: a group chat message whose body names an absent
//! member (a local user affiliated with the room, by the nick they last
//! entered with, [`MemberNicks`]) is handed to the push feature as a group
//! chat message that reached none of their resources — the
//! `Event::Unreached` the router fires for one sent to a resource that is
//! gone — so push's own rules (worth a push, summary, rate, limits)
//! apply unchanged. Nothing here knows about push registrations: an
//! account without any gets nothing.

use std::collections::{HashMap, HashSet};

use jid::{BareJid, Jid};

use super::fanout::Prepared;
use super::room::{Affiliation, Ctx, Room};
use crate::feature::{Event, EventKind};
use crate::router::Origin;
use crate::server::Server;
use crate::xml::{Element, NS_CLIENT};

/// Most distinct words of a body looked at.
const MAX_WORDS: usize = 256;

/// The nick each affiliated user last entered the room with, and the
/// same by nick (in lower case), so a message's words are looked up
/// rather than every member's nick scanned.
#[derive(Debug, Default)]
pub struct MemberNicks {
    by_jid: HashMap<String, String>,
    /// Lower-case nick → the bare JIDs that used it.
    by_nick: HashMap<String, Vec<String>>,
}

impl MemberNicks {
    pub fn get(&self, jid: &str) -> Option<&str> {
        self.by_jid.get(jid).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_jid.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.by_jid.iter()
    }

    pub fn insert(&mut self, jid: &str, nick: &str) {
        self.remove(jid);
        self.by_jid.insert(jid.to_string(), nick.to_string());
        self.by_nick
            .entry(nick.to_lowercase())
            .or_default()
            .push(jid.to_string());
    }

    pub fn remove(&mut self, jid: &str) {
        let Some(old) = self.by_jid.remove(jid) else {
            return;
        };
        let key = old.to_lowercase();
        if let Some(jids) = self.by_nick.get_mut(&key) {
            jids.retain(|j| j != jid);
            if jids.is_empty() {
                self.by_nick.remove(&key);
            }
        }
    }

    /// The bare JIDs whose nick is one of `words` (lower case).
    fn named<'a>(&'a self, words: &'a HashSet<String>) -> impl Iterator<Item = &'a String> {
        words.iter().filter_map(|w| self.by_nick.get(w)).flatten()
    }
}

/// A message that mentions absent members.
#[derive(Debug)]
pub struct Mentioned {
    /// The broadcast, as occupants got it (from `room/nick`).
    pub message: Element,
    pub members: Vec<BareJid>,
}

/// The words of a body a nick is matched against: split at spaces and
/// punctuation, an `@` before a nick dropped, compared in lower case.
fn words(body: &str) -> HashSet<String> {
    body.split(|c: char| c.is_whitespace() || ",:;!?()[]<>\"'".contains(c))
        .map(|w| w.trim_start_matches('@').trim_end_matches('.'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .take(MAX_WORDS)
        .collect()
}

/// After a group chat broadcast: the absent members it names, noted in
/// `ctx` for the service to tell push once the stanza is handled.
/// Costs a look-up per distinct word of the body (at most
/// `MAX_WORDS`), only in a room where a member has entered before.
pub fn note(ctx: &mut Ctx<'_>, room: &Room, live: &Prepared) {
    if room.nicks.is_empty() {
        return;
    }
    let Some(message) = live.element_ref() else {
        return;
    };
    let Some(body) = message.get_child("body", NS_CLIENT) else {
        return;
    };
    let words = words(&body.text());
    if words.is_empty() {
        return;
    }
    let members: Vec<BareJid> = room
        .nicks
        .named(&words)
        .filter_map(|jid| BareJid::new(jid).ok())
        .filter(|jid| room.affiliation(jid) >= Affiliation::Member)
        .filter(|jid| ctx.server.is_local_domain(jid.domain().as_str()))
        .filter(|jid| !room.occupants.values().any(|o| &o.real == jid))
        .collect();
    if !members.is_empty() {
        ctx.mentions.push(Mentioned {
            message: message.clone(),
            members,
        });
    }
}

/// Tells the features (push) of each mention, as a group chat message
/// for the member that no resource took.
pub async fn tell(server: &Server, service: &str, mentioned: Vec<Mentioned>) {
    if !server.features.wants(EventKind::Unreached) {
        return;
    }
    for m in mentioned {
        let Some(from) = m.message.attr("from").and_then(|f| Jid::new(f).ok()) else {
            continue;
        };
        for member in &m.members {
            let mut stanza = m.message.clone();
            stanza.set_attr("to", member.as_str());
            let mut event = Event::Unreached {
                // The room is an in-process service: it speaks as a
                // component's address would.
                origin: Origin::Component {
                    domain: service,
                    from: &from,
                },
                to: member,
                stanza: &stanza,
                stored: false,
            };
            server.features.fire(server, &mut event).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{words, MemberNicks};

    #[test]
    fn nicks_are_found_by_word_and_forgotten_with_their_member() {
        let mut n = MemberNicks::default();
        n.insert("bob@x", "Bobby");
        n.insert("rob@x", "bobby");
        n.insert("bob@x", "Robert");
        let w = words("hi bobby and robert");
        let mut named: Vec<&String> = n.named(&w).collect();
        named.sort();
        assert_eq!(named, ["bob@x", "rob@x"]);
        n.remove("rob@x");
        assert_eq!(n.named(&words("bobby")).count(), 0);
        assert_eq!(n.get("bob@x"), Some("Robert"));
    }

    #[test]
    fn nicks_are_found_among_punctuation_and_at_signs() {
        let w = words("@Juliet: see you, Romeo. (nurse?)");
        for nick in ["juliet", "romeo", "nurse", "see"] {
            assert!(w.contains(nick), "{nick} in {w:?}");
        }
        assert!(!w.contains("@juliet"));
    }
}
