//! Stream management resumed on another node (issue #16): the messages
//! between the node a resumption arrived at and the nodes that may hold
//! the session, over their inboxes. What is handed over, and how, is the
//! core's (`modules::sm_handover`); this is only the asking and answering.
//!
//! The asking node sends a `TakeOver` entry to each node its replica
//! shows holding a resource of the account (the session being resumed is
//! still bound while it waits, so its node is among them), and waits for
//! the first that hands the session over, or for all to say they do not
//! hold it, or for [`WAIT`]. A node that is not alive answers nothing: the
//! outbox, failing to append to it, counts it as a no, and so does the
//! asker when it sees the node's liveness key gone while it waits (the
//! node died after the entry was appended).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use jid::BareJid;
use tokio::sync::mpsc;

use super::bus::Delivery;
use super::Cluster;
use crate::modules::sm_handover;
use crate::server::Server;

/// How long a resumer waits for the session: the holder itself may wait
/// up to 5 s for a half-dead connection to let go of it
/// (`modules::stream_management`), then sends it.
const WAIT: Duration = Duration::from_secs(8);

/// Requests this node is waiting on: their id → where answers go (the
/// session's bytes, or None: "not here").
#[derive(Default)]
pub(super) struct TakeOvers {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::Sender<Option<Bytes>>>>,
}

impl TakeOvers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Option<Bytes>>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An answer to request `id`; given back when nobody waits for it
    /// any more.
    fn answer(&self, id: u64, session: Option<Bytes>) -> Option<Option<Bytes>> {
        match self.lock().get(&id) {
            Some(tx) => tx.try_send(session).err().map(|e| e.into_inner()),
            None => Some(session),
        }
    }
}

/// Forgets a request when its asker stops waiting, however it stops.
struct Forget<'a>(&'a TakeOvers, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

impl Cluster {
    /// Asks the nodes holding resources of `owner` for its session
    /// `previd` (see the module's comment).
    pub(super) async fn take_over_session(
        &self,
        owner: &BareJid,
        previd: &str,
        h: u32,
    ) -> Option<Bytes> {
        let nodes = self.replica.nodes_of(owner.as_str());
        if nodes.is_empty() {
            return None;
        }
        let id = self.takeovers.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(nodes.len());
        self.takeovers.lock().insert(id, tx);
        let _forget = Forget(&self.takeovers, id);
        let request = Bytes::from(encode_request(id, &self.node, owner.as_str(), previd, h));
        let mut asked = Vec::new();
        for node in nodes {
            if self.send_entry(
                &node,
                owner.to_string(),
                Delivery::TakeOver(request.clone()),
            ) {
                asked.push(node);
            }
        }
        // A node that died after its entry was appended answers nothing:
        // its liveness, checked now and then, counts as its no.
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut check = tokio::time::interval(self.ttl / 3);
        check.tick().await;
        let mut noes = 0;
        while noes < asked.len() {
            tokio::select! {
                answer = tokio::time::timeout_at(deadline, rx.recv()) => match answer {
                    Ok(Some(Some(session))) => return Some(session),
                    Ok(Some(None)) => noes += 1,
                    Ok(None) | Err(_) => break,
                },
                _ = check.tick() => {
                    let mut dead = 0;
                    for node in &asked {
                        if matches!(self.engine().is_alive(node).await, Ok(false)) {
                            dead += 1;
                        }
                    }
                    if noes + dead >= asked.len() {
                        break;
                    }
                }
            }
        }
        None
    }

    /// A `TakeOver` entry for a node that is not alive: counted as its no.
    pub(super) fn take_over_not_delivered(&self, request: &Bytes) {
        if let Some(r) = decode_request(request) {
            let _ = self.takeovers.answer(r.id, None);
        }
    }

    /// A `HandedOver` entry: the answer to one of this node's requests.
    /// A session that comes after its asker gave up (the holder took
    /// longer than [`WAIT`]) has left its node already: it is ended here,
    /// its stanzas re-routed, rather than lost.
    pub(super) fn handed_over(&self, server: &Arc<Server>, answer: &Bytes) {
        if answer.len() < 8 {
            return;
        }
        let id = u64::from_be_bytes(answer[..8].try_into().unwrap_or_default());
        let session = (answer.len() > 8).then(|| answer.slice(8..));
        let Some(Some(late)) = self.takeovers.answer(id, session) else {
            return;
        };
        let Some(handed) = sm_handover::decode(&late) else {
            return;
        };
        tracing::info!(jid = %handed.jid, "cluster: a session handed over too late ends here");
        let server = server.clone();
        let tasks = server.background.clone();
        tasks.spawn(async move { end_handed(&server, handed).await });
    }
}

/// A `TakeOver` entry from another node: the session is taken out of this
/// node if it is here, on a task of its own (it may wait for a half-dead
/// connection to let go; the inbox goes on meanwhile), and the answer
/// goes back to the asking node's inbox.
pub(super) fn on_request(server: &Arc<Server>, cluster: &Arc<Cluster>, request: &Bytes) {
    let Some(r) = decode_request(request) else {
        tracing::warn!("cluster: unreadable take-over request dropped");
        return;
    };
    let Ok(owner) = BareJid::new(&r.owner) else {
        return;
    };
    let (server, cluster) = (server.clone(), cluster.clone());
    let tasks = server.background.clone();
    tasks.spawn(async move {
        let handed = sm_handover::hand_over(&server, &owner, &r.previd, r.h).await;
        let mut answer = r.id.to_be_bytes().to_vec();
        if let Some(h) = &handed {
            answer.extend_from_slice(&sm_handover::encode(h));
        }
        let delivery = Delivery::HandedOver(Bytes::from(answer));
        if !cluster.send_entry(&r.reply_node, owner.to_string(), delivery) {
            tracing::warn!(%owner, node = %r.reply_node, "cluster: a handed-over session could not be sent");
            // The session left this node's registry; its stanzas would be
            // lost with it: end it here as if it expired.
            if let Some(h) = handed {
                end_handed(&server, h).await;
            }
        }
    });
}

/// A session taken out for a node that cannot be told: ended for good,
/// what it held re-routed (other resources, else offline storage).
async fn end_handed(server: &Server, h: sm_handover::HandedOver) {
    use crate::stanza::bare::Bare;
    let departed = crate::sessions::Departed {
        presence: h.state.presence.clone(),
        directed: h.directed.clone(),
        last_resource: server
            .sessions
            .available_resources(&h.jid.bare())
            .is_empty(),
    };
    let mut event = crate::feature::Event::SessionEnded {
        jid: &h.jid,
        departed: &departed,
    };
    server.features.fire(server, &mut event).await;
    for st in h.unacked.iter().chain(h.queued.iter()) {
        crate::router::reroute_one(server, &h.jid, st).await;
    }
}

struct Request {
    id: u64,
    reply_node: String,
    owner: String,
    previd: String,
    h: u32,
}

fn encode_request(id: u64, reply_node: &str, owner: &str, previd: &str, h: u32) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    for text in [reply_node, owner, previd] {
        out.extend_from_slice(&(text.len() as u32).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&h.to_be_bytes());
    out
}

fn decode_request(b: &[u8]) -> Option<Request> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let id = u64::from_be_bytes(take(8)?.try_into().ok()?);
    let mut texts = Vec::with_capacity(3);
    for _ in 0..3 {
        let n = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        texts.push(String::from_utf8(take(n)?.to_vec()).ok()?);
    }
    let h = u32::from_be_bytes(take(4)?.try_into().ok()?);
    if at != b.len() {
        return None;
    }
    let previd = texts.pop()?;
    let owner = texts.pop()?;
    let reply_node = texts.pop()?;
    Some(Request {
        id,
        reply_node,
        owner,
        previd,
        h,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_cut_ones_are_refused() {
        let b = encode_request(7, "n2", "bob@example.org", "sm-1", 42);
        let r = decode_request(&b).unwrap();
        assert_eq!(
            (
                r.id,
                r.reply_node.as_str(),
                r.owner.as_str(),
                r.previd.as_str(),
                r.h
            ),
            (7, "n2", "bob@example.org", "sm-1", 42)
        );
        for cut in 0..b.len() {
            assert!(decode_request(&b[..cut]).is_none());
        }
        let mut longer = b.clone();
        longer.push(1);
        assert!(decode_request(&longer).is_none());
    }
}
