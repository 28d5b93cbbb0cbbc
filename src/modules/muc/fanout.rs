//! A stanza the room sends to many occupants, serialized once: only the
//! `to` differs between recipients, so it is spliced into the shared
//! bytes for local sessions instead of building one element per
//! occupant. Recipients elsewhere (s2s, components) get an element, as
//! `router::deliver` needs one.
//!
//! A joiner's occupant list is streamed ([`JoinStreams`]): each presence
//! is built from the room as it is when the joiner's session queue has
//! room for it, never all N at once, and whatever else the room sends
//! that session meanwhile waits behind the list, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use jid::{FullJid, Jid};
use tokio::sync::mpsc;

use super::presence::{occupant_presence, Announcement};
use super::room::Room;
use crate::routes::Route;
use crate::server::Server;
use crate::sessions::{DeliveryError, OutStanza, Outbound};
use crate::xml::{Element, NS_CLIENT};

/// A stanza without `to`, ready to go to any number of occupants.
#[derive(Debug, Clone)]
pub struct Prepared {
    bytes: Bytes,
    /// Where the element's name ends in `bytes`: `to` goes there.
    name_end: usize,
    /// The element, when the room has it at hand (live broadcasts);
    /// history keeps only the bytes and parses them for the rare remote
    /// recipient.
    element: Option<Element>,
}

impl Prepared {
    /// Serializes `element` (which has no `to`) once.
    pub fn new(element: Element) -> Prepared {
        let bytes = Bytes::from(element.to_bytes(NS_CLIENT));
        let name_end = 1 + element.name().len();
        Prepared {
            bytes,
            name_end,
            element: Some(element),
        }
    }

    /// The same stanza keeping only its bytes (what history stores).
    pub fn bytes_only(&self) -> Prepared {
        Prepared {
            bytes: self.bytes.clone(),
            name_end: self.name_end,
            element: None,
        }
    }

    /// The element, when kept.
    pub fn element_ref(&self) -> Option<&Element> {
        self.element.as_ref()
    }

    /// Its serialized size, for history's `maxchars`.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty (never, for a stanza).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The stanza as an element (parsed from the bytes if not kept).
    pub fn element(&self) -> Option<Element> {
        match &self.element {
            Some(e) => Some(e.clone()),
            None => OutStanza::serialized(self.bytes.clone()).element().cloned(),
        }
    }

    /// The stanza for one local session: `to` spliced in after the
    /// element's name, no element built.
    fn for_session(&self, to: &FullJid) -> Arc<OutStanza> {
        let out = crate::xml::with_to(&self.bytes, self.name_end, to.as_str());
        OutStanza::serialized(Bytes::from(out.into_boxed_slice()))
    }

    /// Queues it for `to`.
    pub fn send(&self, server: &Server, to: &FullJid) -> Result<(), DeliveryError> {
        // Nearly every occupant is a session here: the registry answers
        // first (a session on another cluster node gets the bytes without
        // `to`, shared by every recipient there), and only a JID it does
        // not know costs a route look-up.
        match server
            .sessions
            .send_unaddressed(to, &self.bytes, self.name_end, || self.for_session(to))
        {
            Err(DeliveryError::Offline) if server.route(to.domain().as_str()) != Route::Host => {}
            done => return done,
        }
        let Some(mut e) = self.element() else {
            return Err(DeliveryError::Offline);
        };
        e.set_attr("to", to.as_str());
        crate::router::deliver(server, &e, &Jid::from(to.clone()))
    }
}

/// Joiners whose occupant list is still being sent, by session.
pub struct JoinStreams {
    streams: HashMap<String, JoinStream>,
    /// Sessions whose queue has room again, for the service to pump.
    wake: mpsc::UnboundedSender<FullJid>,
    /// Most stanzas held behind one joiner's list: as many as its session
    /// queue holds, so a joiner that does not read is dropped (333) as any
    /// slow occupant is.
    max_held: usize,
}

/// Stanzas of a stream built ahead of one hand-over to the session's
/// queue: a join's presences reach the connection in chunks (one lock,
/// one wake-up, one write) rather than one by one.
const CHUNK: usize = 64;

/// What became of a stanza for a session that may be joining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// No list is going out to it: send it now.
    SendNow,
    /// Held behind its list.
    Held,
    /// Too much is held already: the session does not read (its stream
    /// is dropped; the room removes it as any slow occupant).
    TooSlow,
}

/// What one joiner still has to get, in order.
struct JoinStream {
    /// Built and addressed, next to go (at most `CHUNK`).
    ready: VecDeque<Outbound>,
    backlog: VecDeque<Backlog>,
    /// `Stanza` items in `backlog`.
    held: usize,
    /// A waker is armed: the service resumes the stream.
    waiting: bool,
}

enum Backlog {
    /// The presences of `nicks` (those still in the room when their turn
    /// comes) as `room` shows them to the joiner.
    Occupants {
        room: String,
        nicks: VecDeque<String>,
        show_jids: bool,
    },
    /// A stanza the room sent the joiner while its list was going out.
    Stanza(Prepared),
}

/// How a pump ended.
enum Pumped {
    /// Everything is queued: the stream is over.
    Done,
    /// The session's queue is full: resume when it has room.
    Blocked,
    /// The session is gone.
    Gone,
}

impl JoinStreams {
    /// Streams holding at most `max_held` stanzas each; the receiver
    /// gets the sessions to pump again ([`JoinStreams::resume`]).
    pub fn new(max_held: usize) -> (JoinStreams, mpsc::UnboundedReceiver<FullJid>) {
        let (wake, rx) = mpsc::unbounded_channel();
        let streams = JoinStreams {
            streams: HashMap::new(),
            wake,
            max_held: max_held.max(1),
        };
        (streams, rx)
    }

    /// Holds `p` behind `to`'s list if it has one.
    pub fn hold(&mut self, p: &Prepared, to: &FullJid) -> Hold {
        if self.streams.is_empty() {
            return Hold::SendNow;
        }
        let Some(s) = self.streams.get_mut(to.as_str()) else {
            return Hold::SendNow;
        };
        if s.held >= self.max_held {
            self.streams.remove(to.as_str());
            return Hold::TooSlow;
        }
        s.held += 1;
        s.backlog.push_back(Backlog::Stanza(p.bytes_only()));
        Hold::Held
    }

    /// Opens `to`'s stream (a local session joining `room`) with the
    /// presence of every occupant but `own_nick`: what the room sends it
    /// from now on (its own presence, history, subject) waits behind the
    /// list. Nothing is sent before [`JoinStreams::flush`].
    pub fn start(&mut self, room: &Room, own_nick: &str, show_jids: bool, to: &FullJid) {
        let nicks: VecDeque<String> = room
            .occupants
            .keys()
            .filter(|n| n.as_str() != own_nick)
            .cloned()
            .collect();
        let s = self
            .streams
            .entry(to.as_str().to_string())
            .or_insert_with(|| JoinStream {
                ready: VecDeque::new(),
                backlog: VecDeque::new(),
                held: 0,
                waiting: false,
            });
        if !nicks.is_empty() {
            s.backlog.push_back(Backlog::Occupants {
                room: room.jid.as_str().to_string(),
                nicks,
                show_jids,
            });
        }
    }

    /// After a join was handled: sends `to` what its queue takes of its
    /// stream now; the rest follows as it reads. A stream already waiting
    /// for room (another room's list going out) is left to its waker.
    pub fn flush(&mut self, server: &Server, room: &Room, to: &FullJid) {
        if self.streams.get(to.as_str()).is_none_or(|s| s.waiting) {
            return;
        }
        let key = room.jid.as_str();
        self.pump(server, to, |k| (k == key).then_some(room));
    }

    /// Resumes `to`'s stream after its queue made room, with the rooms.
    pub fn resume<'r>(
        &mut self,
        server: &Server,
        to: &FullJid,
        rooms: impl Fn(&str) -> Option<&'r Room>,
    ) {
        self.pump(server, to, rooms);
    }

    /// Queues what `to`'s queue takes; arms a waker when it is full.
    fn pump<'r>(
        &mut self,
        server: &Server,
        to: &FullJid,
        rooms: impl Fn(&str) -> Option<&'r Room>,
    ) {
        let Some(s) = self.streams.get_mut(to.as_str()) else {
            return;
        };
        s.waiting = false;
        match s.pump(server, to, rooms) {
            Pumped::Done | Pumped::Gone => {
                self.streams.remove(to.as_str());
            }
            Pumped::Blocked => {
                let Some(queue) = server.sessions.queue_of(to) else {
                    self.streams.remove(to.as_str());
                    return;
                };
                s.waiting = true;
                let (wake, to) = (self.wake.clone(), to.clone());
                tokio::spawn(async move {
                    queue.wait_for_room().await;
                    let _ = wake.send(to);
                });
            }
        }
    }

    /// Joiners with a list still going out.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no list is going out.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

impl JoinStream {
    /// Hands chunks to the session's queue until the stream is out or the
    /// queue is full.
    fn pump<'r>(
        &mut self,
        server: &Server,
        to: &FullJid,
        rooms: impl Fn(&str) -> Option<&'r Room>,
    ) -> Pumped {
        loop {
            self.refill(to, &rooms);
            if self.ready.is_empty() {
                return Pumped::Done;
            }
            match server.sessions.send_batch_to_full(to, &mut self.ready) {
                Ok(_) if self.ready.is_empty() => {}
                Ok(_) => return Pumped::Blocked,
                Err(_) => return Pumped::Gone,
            }
        }
    }

    /// Builds the next stanzas, up to `CHUNK` ready: occupants as the room
    /// shows them now, then what was held.
    fn refill<'r>(&mut self, to: &FullJid, rooms: &impl Fn(&str) -> Option<&'r Room>) {
        let none = Announcement::default();
        while self.ready.len() < CHUNK {
            let Some(item) = self.backlog.front_mut() else {
                return;
            };
            match item {
                Backlog::Occupants {
                    room,
                    nicks,
                    show_jids,
                } => {
                    // A room gone, or left by the joiner meanwhile: the rest
                    // of its list means nothing any more.
                    if let Some(room) = rooms(room.as_str()).filter(|r| r.nick_of(to).is_some()) {
                        while self.ready.len() < CHUNK {
                            let Some(nick) = nicks.pop_front() else {
                                break;
                            };
                            if let Some(occ) = room.occupants.get(&nick) {
                                let aff = room.affiliation(&occ.real);
                                let p = Prepared::new(occupant_presence(
                                    room, occ, aff, &none, *show_jids, false,
                                ));
                                self.ready.push_back(Outbound::Stanza(p.for_session(to)));
                            }
                        }
                    } else {
                        nicks.clear();
                    }
                    if nicks.is_empty() {
                        self.backlog.pop_front();
                    }
                }
                Backlog::Stanza(p) => {
                    let out = p.for_session(to);
                    self.held -= 1;
                    self.ready.push_back(Outbound::Stanza(out));
                    self.backlog.pop_front();
                }
            }
        }
    }
}

/// Sends a one-off stanza (an error, an IQ answer, a stanza for one
/// recipient) to any address.
pub fn send_one(server: &Server, mut stanza: Element, to: &Jid) {
    stanza.set_attr("to", to.as_str());
    let _ = crate::router::deliver(server, &stanza, to);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipient_is_spliced_after_the_name() {
        let e = Element::new("message", NS_CLIENT)
            .with_attr("from", "r@c/n")
            .with_attr("type", "groupchat")
            .with_child(Element::new("body", NS_CLIENT).with_text("hi"));
        let p = Prepared::new(e.clone());
        let mut out = Vec::new();
        out.extend_from_slice(&p.bytes[..p.name_end]);
        out.extend_from_slice(b" to=\"a@b/c\"");
        out.extend_from_slice(&p.bytes[p.name_end..]);
        let parsed = OutStanza::serialized(Bytes::from(out));
        let got = parsed.element().expect("one stanza");
        assert_eq!(got.attr("to"), Some("a@b/c"));
        assert_eq!(got.attr("from"), e.attr("from"));
        assert_eq!(got.children().next(), e.children().next());
    }
}
