//! Stream management across the nodes of a cluster (XEP-0198, issue #16):
//! a client whose network dropped may come back through another node than
//! the one holding its session (a load balancer picks any). That node asks
//! the others (`SessionRegistry::take_over_elsewhere`); the one holding the
//! session takes it back as a local resumption would ([`hand_over`]), lets
//! it go without a departure (the user stays online: no unavailable
//! presence), and sends what the session is: its counters, what the client
//! has not acknowledged, what was queued for it since the drop, and its
//! routing state. The asking node binds it again ([`adopt`]) and the
//! resumption goes on as a local one (`net::c2s::session::resume`).
//!
//! What does not travel: features' per-session data kept in the session's
//! extensions (client state indication, for one) starts afresh, as it does
//! when features see a resumption (`Event::SessionResumed`). Carbons are
//! carried (they are part of the routing state other nodes see).
//!
//! A stanza routed to the full JID while it moves (after the holder let it
//! go, before the new node's claim reached the router) follows the rule
//! for a resource that is gone: the user's other resources, else offline
//! storage, whose kept-for-later notice brings it to the new session
//! (`cluster::follow`).

use std::sync::Arc;

use bytes::Bytes;
use jid::{BareJid, FullJid};

use super::carbons::CarbonsEnabled;
use super::stream_management::{
    close_and_drain, end_for_good, take_back, Parked, StreamManagementFeature,
};
use crate::server::Server;
use crate::sessions::{OutStanza, Outbound, ResourceState};
use crate::stanza::bare::Bare;
use crate::stream::sm::StreamManagement;

/// The first byte of an encoded session: its format.
const FORMAT: u8 = 1;

/// A stream-managed session on its way from one node to another.
#[derive(Debug)]
pub struct HandedOver {
    pub jid: FullJid,
    /// Its resumption id (the client resumes it by this id again later).
    pub sm_id: String,
    pub resumable: bool,
    pub max_secs: u64,
    /// Stanzas handled from the client (our `h`).
    pub handled: u32,
    /// Stanzas written to the client.
    pub sent: u32,
    /// Written and not acknowledged, oldest first (the last of `sent`).
    pub unacked: Vec<Arc<OutStanza>>,
    /// Queued for it and not written yet, in order.
    pub queued: Vec<Arc<OutStanza>>,
    /// Presence, priority, roster interest, carbons.
    pub state: ResourceState,
    /// Where it sent directed available presence.
    pub directed: Vec<String>,
}

/// Takes the session `previd` of `owner` out of this node for another
/// node, after the client acknowledged `h` of what it was sent: as a local
/// resumption, the connection still holding it is told to let go first.
/// None when this node does not hold it (or may not hand it over: the
/// client was revoked, or `h` is beyond what was sent, which ends it).
pub async fn hand_over(
    server: &Arc<Server>,
    owner: &BareJid,
    previd: &str,
    h: u32,
) -> Option<HandedOver> {
    let feature = server.features.get::<StreamManagementFeature>()?;
    let parked = feature.resume(owner, previd).await.ok()?;
    let Parked {
        jid,
        session_id,
        rx,
        mut sm,
    } = take_back(server, parked, h).await.ok()?;
    let Some((state, directed)) = server.sessions.hand_over(&jid, session_id) else {
        let unacked = sm.take_unacked();
        end_for_good(server, &jid, session_id, &rx, unacked).await;
        return None;
    };
    // Unbound first, so nothing more reaches this queue once it is drained.
    let queued = close_and_drain(&rx);
    tracing::info!(%jid, unacked = sm.unacked_len(), "stream management: session handed to another node");
    Some(HandedOver {
        jid,
        sm_id: sm.id.clone(),
        resumable: sm.resumable,
        max_secs: sm.max_secs,
        handled: sm.handled(),
        sent: sm.sent(),
        unacked: sm.take_unacked(),
        queued,
        state,
        directed,
    })
}

/// Binds a session handed over by another node on this one, for the
/// connection `session_id` that resumes it: what was queued for it comes
/// first in its new queue, then whatever is routed to it from now on.
pub fn adopt(server: &Server, handed: HandedOver, session_id: u64) -> Parked {
    let (tx, rx) = crate::queue::queue_with_peak(
        server.config().limits.session_queue,
        server.config().limits.session_queue_bytes,
        Some(server.metrics.queue_peak.clone()),
    );
    for st in handed.queued {
        // Beyond capacity if need be: these were accepted for it already.
        let _ = tx.send_beyond_capacity(Outbound::Stanza(st));
    }
    server
        .sessions
        .bind_with(&handed.jid, session_id, tx, &handed.state, handed.directed);
    if handed.state.carbons {
        if let Some(ext) = server.sessions.extensions(&handed.jid) {
            ext.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(CarbonsEnabled(true));
        }
    }
    let sm = StreamManagement::handed_over(
        handed.sm_id,
        handed.resumable,
        handed.max_secs,
        handed.handled,
        handed.sent,
        &handed.unacked,
    );
    Parked {
        jid: handed.jid,
        session_id,
        rx,
        sm,
    }
}

/// Asks the other nodes for `owner`'s session `previd` and binds it here
/// for the connection `session_id`. None when no node hands it over.
pub async fn take_over(
    server: &Server,
    owner: &BareJid,
    previd: &str,
    h: u32,
    session_id: u64,
) -> Option<Parked> {
    let bytes = server
        .sessions
        .take_over_elsewhere(owner, previd, h)
        .await?;
    let Some(handed) = decode(&bytes) else {
        tracing::warn!(%owner, "stream management: unreadable session from another node");
        return None;
    };
    // Only the account's own session (the holder checked it too).
    if handed.jid.bare_str() != owner.as_str() {
        return None;
    }
    Some(adopt(server, handed, session_id))
}

/// A session's bytes on the bus: the format byte, then fields in order,
/// numbers big-endian, texts and stanzas with a u32 length; the presence
/// as its serialized stanza (empty: none).
pub fn encode(h: &HandedOver) -> Vec<u8> {
    let mut out = vec![FORMAT];
    put(&mut out, h.jid.as_str().as_bytes());
    put(&mut out, h.sm_id.as_bytes());
    out.push(u8::from(h.resumable));
    out.extend_from_slice(&h.max_secs.to_be_bytes());
    out.extend_from_slice(&h.handled.to_be_bytes());
    out.extend_from_slice(&h.sent.to_be_bytes());
    for list in [&h.unacked, &h.queued] {
        out.extend_from_slice(&(list.len() as u32).to_be_bytes());
        for st in list.iter() {
            out.extend_from_slice(&st.stored_id().unwrap_or(-1).to_be_bytes());
            out.extend_from_slice(&st.queued_at().to_be_bytes());
            put(&mut out, st.bytes());
        }
    }
    let presence = h
        .state
        .presence
        .as_ref()
        .map(|p| OutStanza::new(p.clone()).bytes().clone())
        .unwrap_or_default();
    put(&mut out, &presence);
    out.push(h.state.priority as u8);
    out.push(u8::from(h.state.interested) | u8::from(h.state.carbons) << 1);
    out.extend_from_slice(&(h.directed.len() as u32).to_be_bytes());
    for to in &h.directed {
        put(&mut out, to.as_bytes());
    }
    out
}

/// The session [`encode`] wrote; None if the bytes are not one.
pub fn decode(bytes: &Bytes) -> Option<HandedOver> {
    let mut r = Reader { bytes, at: 0 };
    if r.u8()? != FORMAT {
        return None;
    }
    let jid = FullJid::new(r.text()?).ok()?;
    let sm_id = r.text()?.to_string();
    let resumable = r.u8()? != 0;
    let max_secs = u64::from_be_bytes(r.array()?);
    let handled = u32::from_be_bytes(r.array()?);
    let sent = u32::from_be_bytes(r.array()?);
    let mut lists = [Vec::new(), Vec::new()];
    for list in lists.iter_mut() {
        let n = u32::from_be_bytes(r.array()?) as usize;
        for _ in 0..n {
            let stored = i64::from_be_bytes(r.array()?);
            let queued_at = u64::from_be_bytes(r.array()?);
            let st = r.slice()?;
            list.push(OutStanza::restored(
                st,
                queued_at,
                (stored >= 0).then_some(stored),
            ));
        }
    }
    let [unacked, queued] = lists;
    let presence = r.slice()?;
    let presence = if presence.is_empty() {
        None
    } else {
        Some(OutStanza::serialized(presence).element()?.clone())
    };
    let priority = r.u8()? as i8;
    let flags = r.u8()?;
    let n = u32::from_be_bytes(r.array()?) as usize;
    let mut directed = Vec::new();
    for _ in 0..n {
        directed.push(r.text()?.to_string());
    }
    (r.at == bytes.len()).then_some(HandedOver {
        jid,
        sm_id,
        resumable,
        max_secs,
        handled,
        sent,
        unacked,
        queued,
        state: ResourceState {
            presence,
            priority,
            interested: flags & 1 != 0,
            carbons: flags & 2 != 0,
            session: 0,
        },
        directed,
    })
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let a = self
            .bytes
            .get(self.at..self.at.checked_add(N)?)?
            .try_into()
            .ok()?;
        self.at += N;
        Some(a)
    }

    fn slice(&mut self) -> Option<Bytes> {
        let n = u32::from_be_bytes(self.array()?) as usize;
        let end = self.at.checked_add(n)?;
        if end > self.bytes.len() {
            return None;
        }
        let s = self.bytes.slice(self.at..end);
        self.at = end;
        Some(s)
    }

    fn text(&mut self) -> Option<&str> {
        let n = u32::from_be_bytes(self.array()?) as usize;
        let end = self.at.checked_add(n)?;
        let s = std::str::from_utf8(self.bytes.get(self.at..end)?).ok()?;
        self.at = end;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::Element;

    #[test]
    fn a_session_round_trips_and_a_cut_one_is_refused() {
        let presence = Element::new("presence", crate::xml::NS_CLIENT)
            .with_child(Element::new("show", crate::xml::NS_CLIENT).with_text("away"));
        let handed = HandedOver {
            jid: FullJid::new("bob@example.org/phone").unwrap(),
            sm_id: "abc".into(),
            resumable: true,
            max_secs: 300,
            handled: 7,
            sent: u32::MAX,
            unacked: vec![
                OutStanza::restored(Bytes::from_static(b"<message id='1'/>"), 11, Some(42)),
                OutStanza::restored(Bytes::from_static(b"<message id='2'/>"), 12, None),
            ],
            queued: vec![OutStanza::serialized(Bytes::from_static(b"<iq id='3'/>"))],
            state: ResourceState {
                presence: Some(presence.clone()),
                priority: -3,
                interested: true,
                carbons: true,
                session: 9,
            },
            directed: vec!["room@muc.example.org/bob".into()],
        };
        let bytes = Bytes::from(encode(&handed));
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back.jid, handed.jid);
        assert_eq!(back.sm_id, "abc");
        assert!(back.resumable);
        assert_eq!((back.max_secs, back.handled, back.sent), (300, 7, u32::MAX));
        let view = |l: &[Arc<OutStanza>]| -> Vec<(Vec<u8>, Option<i64>)> {
            l.iter()
                .map(|s| (s.bytes().to_vec(), s.stored_id()))
                .collect()
        };
        assert_eq!(view(&back.unacked), view(&handed.unacked));
        assert_eq!(back.unacked[0].queued_at(), 11);
        assert_eq!(view(&back.queued), view(&handed.queued));
        assert_eq!(back.state.presence, Some(presence));
        assert_eq!(back.state.priority, -3);
        assert!(back.state.interested && back.state.carbons);
        assert_eq!(back.directed, handed.directed);
        // Cut anywhere, or a byte too many, or another format: refused.
        for cut in 0..bytes.len() {
            assert!(decode(&bytes.slice(..cut)).is_none(), "cut at {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode(&Bytes::from(longer)).is_none());
        let mut other = bytes.to_vec();
        other[0] = 2;
        assert!(decode(&Bytes::from(other)).is_none());
    }

    #[test]
    fn counting_goes_on_where_the_other_node_left_it() {
        let unacked = vec![
            OutStanza::serialized(Bytes::from_static(b"<message id='a'/>")),
            OutStanza::serialized(Bytes::from_static(b"<message id='b'/>")),
        ];
        let mut sm = StreamManagement::handed_over("x".into(), true, 60, 5, 10, &unacked);
        assert_eq!((sm.handled(), sm.sent(), sm.unacked_len()), (5, 10, 2));
        // The client had 8 of the 10: the two kept are the ones it lacks.
        assert_eq!(sm.acknowledge(8), Ok(None));
        assert_eq!(sm.unacked_len(), 2);
        assert_eq!(sm.acknowledge(9), Ok(None));
        let left: Vec<&[u8]> = sm.unacked().collect();
        assert_eq!(left, vec![&b"<message id='b'/>"[..]]);
        assert!(sm.acknowledge(11).is_err());
    }
}
