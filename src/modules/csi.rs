//! Client State Indication (XEP-0352): a client says `<inactive/>` when
//! nobody looks at it (a phone in a pocket) and `<active/>` when someone
//! does. While it is inactive, the stanzas that only update what the
//! client shows are held back instead of waking it:
//!
//! - presence updates (available and unavailable), the newest per full
//!   JID they come from;
//! - messages that carry nothing but a chat state (XEP-0085), the newest
//!   per contact (and their carbon copies, likewise).
//!
//! Everything else — a body, an encrypted payload, a call, a receipt
//! request, a subscription request, an IQ, an error — goes at once, after
//! what was held, in order: the client never sees an older update after a
//! newer stanza. `<active/>` releases everything held. So does reaching
//! `[csi] max_held` stanzas (or `[limits] session_queue_bytes` of them):
//! holding is bounded like the session queue it stands in for.
//!
//! The state and the held stanzas are the session's extension data: they
//! follow the session, and the `outbound` filter reads them with the
//! session's data locked. A session that ends drops what it held (only
//! updates that no longer matter). A stream resumed with XEP-0198 starts
//! active again (XEP-0352 §6), and what the session held is written
//! after the stanzas stream management sends again.

use crate::stanza::bare::Bare;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jid::{BareJid, FullJid, Jid};

use crate::feature::{
    Event, EventKind, Extensions, Feature, HookFuture, Outgoing, StreamPhase, Verdict,
};
use crate::server::Server;
use crate::sessions::OutStanza;
use crate::xml::{Element, NS_CLIENT};

/// The client state namespace.
pub const NS: &str = "urn:xmpp:csi:0";
/// Chat State Notifications (XEP-0085).
pub const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

/// Payloads that may ride along a chat state without making the message
/// worth waking a client for: a thread, processing hints, stanza ids,
/// delay stamps.
const INCIDENTAL: &[&str] = &[
    NS_CHATSTATES,
    "urn:xmpp:hints",
    "urn:xmpp:sid:0",
    "urn:xmpp:delay",
];

/// What one held stanza replaces: the previous one with the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// Presence from this full JID.
    Presence(String),
    /// A chat state from this contact (a bare JID; a room occupant's full
    /// JID in a groupchat).
    ChatState(String),
    /// A chat state another resource of the account sent to this contact
    /// (a `<sent/>` carbon copy).
    SentChatState(String),
}

/// One session's client state, in its extensions.
#[derive(Debug, Default)]
pub struct ClientState {
    inactive: bool,
    /// The caps, fixed when the client went inactive.
    max_held: usize,
    max_bytes: usize,
    /// Held stanzas by arrival; `index` finds the one a key holds.
    held: BTreeMap<u64, (Key, Arc<OutStanza>)>,
    index: HashMap<Key, u64>,
    bytes: usize,
    next: u64,
}

impl ClientState {
    /// Is the client inactive?
    pub fn inactive(&self) -> bool {
        self.inactive
    }

    /// How many stanzas are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Everything held, in the order it came; nothing is held after.
    fn take_all(&mut self) -> Vec<Arc<OutStanza>> {
        self.index.clear();
        self.bytes = 0;
        std::mem::take(&mut self.held)
            .into_values()
            .map(|(_, st)| st)
            .collect()
    }

    /// Holds `st` in place of what `key` held; false (nothing changed)
    /// when that would pass a cap.
    fn hold(&mut self, key: Key, st: &Arc<OutStanza>) -> bool {
        let replaced = self.index.get(&key).copied();
        let weight = st.weight();
        let old_weight = replaced
            .and_then(|seq| self.held.get(&seq))
            .map_or(0, |(_, old)| old.weight());
        let count = self.held.len() + usize::from(replaced.is_none());
        if count > self.max_held || self.bytes - old_weight + weight > self.max_bytes {
            return false;
        }
        if let Some(seq) = replaced {
            self.held.remove(&seq);
        }
        self.bytes = self.bytes - old_weight + weight;
        let seq = self.next;
        self.next += 1;
        self.index.insert(key.clone(), seq);
        self.held.insert(seq, (key, st.clone()));
        true
    }
}

/// The client state feature.
#[derive(Debug, Default)]
pub struct ClientStateIndication;

impl Feature for ClientStateIndication {
    fn name(&self) -> &'static str {
        "csi"
    }

    fn xeps(&self) -> &'static [u16] {
        &[352]
    }

    fn stream_feature(&self, _server: &Server, phase: StreamPhase) -> Option<Element> {
        (phase == StreamPhase::Authenticated).then(|| Element::new("csi", NS))
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[
            (EventKind::SessionElement, 0),
            (EventKind::SessionResumed, 0),
            (EventKind::Outbound, 0),
        ]
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        let verdict = match event {
            Event::SessionElement {
                jid,
                element,
                release,
                ..
            } if element.ns() == NS => match element.name() {
                "inactive" => {
                    with_state(server, jid, |s| {
                        s.inactive = true;
                        s.max_held = server.config().csi.max_held;
                        s.max_bytes = server.config().limits.session_queue_bytes;
                    });
                    Verdict::Stop
                }
                "active" => {
                    with_state(server, jid, |s| activate(s, release));
                    Verdict::Stop
                }
                _ => Verdict::Continue,
            },
            // §6: a resumed stream starts active.
            Event::SessionResumed { jid, release } => {
                with_state(server, jid, |s| activate(s, release));
                Verdict::Continue
            }
            _ => Verdict::Continue,
        };
        crate::feature::verdict(verdict)
    }

    fn outbound(&self, session: &mut Extensions, stanza: &Arc<OutStanza>) -> Outgoing {
        if session
            .get::<ClientState>()
            .is_none_or(|s| !s.inactive && s.held.is_empty())
        {
            return Outgoing::Write;
        }
        let state = session.get_or_default::<ClientState>();
        if state.inactive {
            if let Some(key) = stanza.element().and_then(holdable) {
                if state.hold(key, stanza) {
                    return Outgoing::Hold;
                }
            }
        }
        let held = state.take_all();
        if held.is_empty() {
            Outgoing::Write
        } else {
            Outgoing::FlushThenWrite(held)
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Back to active: what was held is released, in order.
fn activate(state: &mut ClientState, release: &mut Vec<Arc<OutStanza>>) {
    state.inactive = false;
    release.extend(state.take_all());
}

/// Runs `f` on the client state of the session bound to `jid`.
fn with_state(server: &Server, jid: &FullJid, f: impl FnOnce(&mut ClientState)) {
    if let Some(ext) = server.sessions.extensions(jid) {
        f(ext
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_default::<ClientState>());
    }
}

/// The client state of the session bound to `jid`: inactive, and how many
/// stanzas it holds (None when no such session is bound).
pub fn state_of(server: &Server, jid: &FullJid) -> Option<(bool, usize)> {
    let ext = server.sessions.extensions(jid)?;
    let ext = ext.lock().unwrap_or_else(|e| e.into_inner());
    Some(
        ext.get::<ClientState>()
            .map_or((false, 0), |s| (s.inactive, s.held())),
    )
}

/// The key a stanza may be held under while the client is inactive, or
/// None when it must go at once.
fn holdable(st: &Element) -> Option<Key> {
    match st.name() {
        "presence" => presence_update(st),
        "message" => {
            if let Some((sent, inner)) = carbon_copy(st) {
                let key = chat_state_only(inner)?;
                return Some(match (sent, key) {
                    (true, Key::ChatState(_)) => {
                        let to = inner.attr("to").and_then(|t| Jid::new(t).ok())?;
                        Key::SentChatState(to.bare().to_string())
                    }
                    (_, key) => key,
                });
            }
            chat_state_only(st)
        }
        _ => None,
    }
}

/// A presence update (available or unavailable) keyed by who it is from.
/// A room's presence about the client itself (status 110: the answer to
/// joining or leaving) is not an update: it goes at once.
fn presence_update(st: &Element) -> Option<Key> {
    if !matches!(st.attr("type"), None | Some("unavailable")) {
        return None;
    }
    let from = st.attr("from")?;
    let muc = "http://jabber.org/protocol/muc#user";
    let self_presence = st.get_child("x", muc).is_some_and(|x| {
        x.children()
            .any(|c| c.is("status", muc) && c.attr("code") == Some("110"))
    });
    (!self_presence).then(|| Key::Presence(from.to_string()))
}

/// A message with a chat state and nothing of consequence, keyed by the
/// contact it is from.
fn chat_state_only(st: &Element) -> Option<Key> {
    if st.attr("type") == Some("error") {
        return None;
    }
    let mut chat_state = false;
    for c in st.children() {
        if c.ns() == NS_CHATSTATES {
            chat_state = true;
        } else if !(INCIDENTAL.contains(&c.ns()) || c.is("thread", NS_CLIENT)) {
            return None;
        }
    }
    if !chat_state {
        return None;
    }
    let from = Jid::new(st.attr("from")?).ok()?;
    Some(Key::ChatState(if st.attr("type") == Some("groupchat") {
        from.to_string()
    } else {
        from.bare().to_string()
    }))
}

/// A carbon copy (XEP-0280) of the account's own: whether it is a
/// `<sent/>` one, and the message it forwards. Only a copy from the bare
/// JID of the session it is addressed to counts as one.
fn carbon_copy(st: &Element) -> Option<(bool, &Element)> {
    use super::carbons::{NS as NS_CARBONS, NS_FORWARD};
    let to = FullJid::new(st.attr("to")?).ok()?;
    let from = BareJid::new(st.attr("from")?).ok()?;
    if from != to.bare() {
        return None;
    }
    let (sent, wrapper) = match (
        st.get_child("sent", NS_CARBONS),
        st.get_child("received", NS_CARBONS),
    ) {
        (Some(w), None) => (true, w),
        (None, Some(w)) => (false, w),
        _ => return None,
    };
    let inner = wrapper
        .get_child("forwarded", NS_FORWARD)?
        .get_child("message", NS_CLIENT)?;
    Some((sent, inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        crate::modules::xml_from_storage(xml, 16)
            .and_then(|v| v.into_iter().next())
            .expect("one element")
    }

    fn key(xml: &str) -> Option<Key> {
        holdable(&el(xml))
    }

    #[test]
    fn what_may_wait() {
        let cs = "<composing xmlns='http://jabber.org/protocol/chatstates'/>";
        assert_eq!(
            key("<presence from='b@x/r'/>"),
            Some(Key::Presence("b@x/r".into()))
        );
        assert_eq!(
            key("<presence type='unavailable' from='b@x/r'/>"),
            Some(Key::Presence("b@x/r".into()))
        );
        assert_eq!(
            key(&format!(
                "<message type='chat' from='b@x/r'>{cs}<thread>t</thread></message>"
            )),
            Some(Key::ChatState("b@x".into()))
        );
        assert_eq!(
            key(&format!(
                "<message type='groupchat' from='room@muc/n'>{cs}</message>"
            )),
            Some(Key::ChatState("room@muc/n".into()))
        );
        let must_go = [
            "<presence type='subscribe' from='b@x'/>".to_string(),
            "<presence type='error' from='b@x'/>".to_string(),
            "<presence from='room@muc/me'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>".to_string(),
            format!("<message type='chat' from='b@x/r'>{cs}<body>hi</body></message>"),
            format!("<message type='chat' from='b@x/r'>{cs}<encrypted xmlns='eu.siacs.conversations.axolotl'/></message>"),
            format!("<message type='chat' from='b@x/r'>{cs}<encrypted xmlns='urn:xmpp:omemo:2'/></message>"),
            format!("<message type='chat' from='b@x/r'>{cs}<request xmlns='urn:xmpp:receipts'/></message>"),
            "<message from='b@x/r'><propose xmlns='urn:xmpp:jingle-message:0' id='c'/></message>".to_string(),
            format!("<message type='error' from='b@x/r'>{cs}</message>"),
            "<message type='chat' from='b@x/r'><thread>t</thread></message>".to_string(),
            "<iq type='get' from='b@x/r' id='1'><ping xmlns='urn:xmpp:ping'/></iq>".to_string(),
        ];
        for xml in &must_go {
            assert_eq!(key(xml), None, "{xml}");
        }
    }

    #[test]
    fn carbon_copies_of_chat_states_wait() {
        let copy = |dir: &str, from: &str, inner: &str| {
            format!(
                "<message from='{from}' to='a@x/r' type='chat'><{dir} xmlns='urn:xmpp:carbons:2'>\
                 <forwarded xmlns='urn:xmpp:forward:0'>{inner}</forwarded></{dir}></message>"
            )
        };
        let composing = "<message xmlns='jabber:client' type='chat' from='b@x/r' to='a@x'>\
                         <composing xmlns='http://jabber.org/protocol/chatstates'/></message>";
        let mine = "<message xmlns='jabber:client' type='chat' from='a@x/o' to='b@x/r'>\
                    <paused xmlns='http://jabber.org/protocol/chatstates'/></message>";
        let body = "<message xmlns='jabber:client' type='chat' from='b@x/r' to='a@x'>\
                    <body>hi</body></message>";
        assert_eq!(
            key(&copy("received", "a@x", composing)),
            Some(Key::ChatState("b@x".into()))
        );
        assert_eq!(
            key(&copy("sent", "a@x", mine)),
            Some(Key::SentChatState("b@x".into()))
        );
        assert_eq!(key(&copy("received", "a@x", body)), None);
        // Not from the own account: not a copy, and not a chat state.
        assert_eq!(key(&copy("received", "m@x", composing)), None);
    }

    fn out(xml: &str) -> Arc<OutStanza> {
        OutStanza::new(el(xml))
    }

    fn inactive(max_held: usize) -> Extensions {
        let mut ext = Extensions::default();
        let s = ext.get_or_default::<ClientState>();
        s.inactive = true;
        s.max_held = max_held;
        s.max_bytes = 1 << 20;
        ext
    }

    fn bytes(list: &[Arc<OutStanza>]) -> Vec<String> {
        list.iter()
            .map(|s| String::from_utf8_lossy(s.bytes()).into_owned())
            .collect()
    }

    #[test]
    fn newest_per_key_in_order_and_flushed_before_what_matters() {
        let f = ClientStateIndication;
        let mut ext = inactive(10);
        let p1 = out("<presence from='b@x/r'><show>away</show></presence>");
        let p2 = out("<presence from='c@x/r'/>");
        let p3 = out("<presence from='b@x/r'/>");
        for p in [&p1, &p2, &p3] {
            assert!(matches!(f.outbound(&mut ext, p), Outgoing::Hold));
        }
        assert_eq!(ext.get::<ClientState>().unwrap().held(), 2);
        let m = out("<message type='chat' from='b@x/r'><body>hi</body></message>");
        match f.outbound(&mut ext, &m) {
            Outgoing::FlushThenWrite(held) => assert_eq!(bytes(&held), bytes(&[p2, p3])),
            other => panic!("{other:?}"),
        }
        assert_eq!(ext.get::<ClientState>().unwrap().held(), 0);
        // Nothing held: what matters is simply written.
        assert!(matches!(f.outbound(&mut ext, &m), Outgoing::Write));
    }

    #[test]
    fn the_cap_flushes() {
        let f = ClientStateIndication;
        let mut ext = inactive(2);
        let ps: Vec<_> = (0..3)
            .map(|i| out(&format!("<presence from='b@x/r{i}'/>")))
            .collect();
        assert!(matches!(f.outbound(&mut ext, &ps[0]), Outgoing::Hold));
        assert!(matches!(f.outbound(&mut ext, &ps[1]), Outgoing::Hold));
        // Replacing a held one takes no new place.
        let again = out("<presence from='b@x/r1'><show>dnd</show></presence>");
        assert!(matches!(f.outbound(&mut ext, &again), Outgoing::Hold));
        match f.outbound(&mut ext, &ps[2]) {
            Outgoing::FlushThenWrite(held) => {
                assert_eq!(bytes(&held), bytes(&[ps[0].clone(), again]))
            }
            other => panic!("{other:?}"),
        }
        // Nothing held, no place: nothing is ever held.
        let mut ext = inactive(0);
        assert!(matches!(f.outbound(&mut ext, &ps[0]), Outgoing::Write));
    }

    #[test]
    fn active_writes_everything() {
        let f = ClientStateIndication;
        let mut ext = Extensions::default();
        let p = out("<presence from='b@x/r'/>");
        assert!(matches!(f.outbound(&mut ext, &p), Outgoing::Write));
        assert!(ext.get::<ClientState>().is_none());
    }
}
