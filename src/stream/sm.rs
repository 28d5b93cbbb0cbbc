//! Stream Management (XEP-0198) counting, sans I/O: the stanzas handled
//! from the client (`h` we report), the stanzas written to it and not yet
//! acknowledged (kept for resending or re-routing), and the checks on the
//! client's acknowledgements. Counters wrap at 2^32 as §4 says.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::sessions::OutStanza;
use crate::xml::Element;

pub const NS_SM: &str = "urn:xmpp:sm:3";

/// Why an acknowledgement from the client is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooHigh {
    /// The `h` the client sent.
    pub h: u32,
    /// How many stanzas we sent.
    pub sent: u32,
}

/// One stream-managed session's counters and unacknowledged stanzas.
#[derive(Debug)]
pub struct StreamManagement {
    /// The resumption id (also the key of a parked session).
    pub id: String,
    /// Whether the client asked for resumption.
    pub resumable: bool,
    /// Seconds a detached session waits for resumption.
    pub max_secs: u64,
    /// Stanzas received from the client and handled (our `h`).
    handled: u32,
    /// Stanzas written to the client (its `h` should reach this).
    sent: u32,
    /// Written and not yet acknowledged, oldest first: the last
    /// `unacked.len()` of the `sent` count.
    unacked: Unacked,
    /// An `<r/>` went out and its `<a/>` has not come back.
    pub request_pending: bool,
}

impl StreamManagement {
    /// Counting starts at zero both ways when SM is enabled (§4).
    pub fn new(id: String, resumable: bool, max_secs: u64) -> StreamManagement {
        StreamManagement {
            id,
            resumable,
            max_secs,
            handled: 0,
            sent: 0,
            unacked: Unacked::default(),
            request_pending: false,
        }
    }

    /// A stanza from the client was handled.
    pub fn handled_one(&mut self) {
        self.handled = self.handled.wrapping_add(1);
    }

    /// Our `h`: stanzas handled so far, modulo 2^32.
    pub fn handled(&self) -> u32 {
        self.handled
    }

    /// A stanza was written to the client: keep its bytes until
    /// acknowledged (the caller may drop the stanza itself at once).
    pub fn sent_one(&mut self, stanza: &OutStanza) {
        self.sent = self.sent.wrapping_add(1);
        self.unacked.push(stanza);
    }

    /// Stanzas written and not acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.unacked.entries.len()
    }

    /// The bytes of the unacknowledged stanzas, oldest first.
    pub fn unacked(&self) -> impl Iterator<Item = &[u8]> {
        self.unacked.iter().map(|(bytes, _)| bytes)
    }

    /// The unacknowledged stanzas as stanzas again (copies), oldest first.
    pub fn unacked_stanzas(&self) -> Vec<Arc<OutStanza>> {
        self.unacked
            .iter()
            .map(|(bytes, e)| e.restore(bytes))
            .collect()
    }

    /// The memory the unacknowledged stanzas hold.
    pub fn unacked_weight(&self) -> usize {
        self.unacked.weight()
    }

    /// The client acknowledged everything up to its `h`: forget those
    /// stanzas. An `h` beyond what was sent is a protocol error (§4:
    /// `handled-count-too-high`). An `h` below an earlier one (an old ack
    /// arriving late) acknowledges nothing new.
    ///
    /// Returns the highest offline-storage row among the stanzas it
    /// acknowledged (rows that may now be deleted).
    pub fn acknowledge(&mut self, h: u32) -> Result<Option<i64>, TooHigh> {
        let pending = self.unacked_len();
        let acked_before = self.sent.wrapping_sub(pending as u32);
        let newly = h.wrapping_sub(acked_before);
        if newly as usize > pending {
            // Either ahead of what we sent, or an older ack: an older one
            // wraps to a huge count; tell them apart by distance.
            let behind = acked_before.wrapping_sub(h);
            if behind <= u32::MAX / 2 && behind != 0 {
                return Ok(None);
            }
            return Err(TooHigh { h, sent: self.sent });
        }
        let mut stored = None;
        for _ in 0..newly {
            if let Some(e) = self.unacked.pop() {
                stored = e.stored_id.or(stored);
            }
        }
        Ok(stored)
    }

    /// Takes the unacknowledged stanzas (for resending after a resumption,
    /// or re-routing when the session ends), oldest first.
    pub fn take_unacked(&mut self) -> Vec<Arc<OutStanza>> {
        let all = self.unacked_stanzas();
        self.unacked = Unacked::default();
        all
    }

    /// A session's counting as another node of a cluster left it
    /// (`modules::sm_handover`): `handled` and `sent` as they stood there,
    /// `unacked` the last of the `sent` stanzas, oldest first.
    pub fn handed_over(
        id: String,
        resumable: bool,
        max_secs: u64,
        handled: u32,
        sent: u32,
        unacked: &[Arc<OutStanza>],
    ) -> StreamManagement {
        let mut sm = StreamManagement::new(id, resumable, max_secs);
        sm.handled = handled;
        sm.sent = sent.wrapping_sub(unacked.len() as u32);
        for st in unacked {
            sm.sent_one(st);
        }
        sm
    }

    /// Stanzas written to the client so far, modulo 2^32.
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// `<a h='…'/>`.
    pub fn answer(&self) -> Element {
        Element::new("a", NS_SM).with_attr("h", self.handled.to_string())
    }

    /// Test hook: start the counters near the wrap, as a long session
    /// would be.
    #[doc(hidden)]
    pub fn set_counters(&mut self, handled: u32, sent: u32) {
        self.handled = handled;
        self.sent = sent;
    }
}

/// The unacknowledged stanzas: their bytes one after another in one
/// buffer, and a small record per stanza. Why not the stanzas themselves:
/// holding each written stanza until its ack and then freeing a batch of
/// them (cold in the cache by then, often on another thread than the one
/// that allocated them) cost more than the rest of stream management. A
/// copy of bytes just written is cheap; an ack only moves an offset.
#[derive(Debug, Default)]
struct Unacked {
    bytes: Vec<u8>,
    /// Where the oldest unacknowledged stanza begins in `bytes`.
    start: usize,
    entries: VecDeque<Entry>,
}

/// What is kept of one unacknowledged stanza besides its bytes.
#[derive(Debug, Clone, Copy)]
struct Entry {
    len: usize,
    queued_at: u64,
    stored_id: Option<i64>,
}

/// A buffer whose acknowledged head is longer than this (and than what
/// is still pending) moves the pending tail down.
const COMPACT_AFTER: usize = 4096;
/// Records allocated at once when the first stanza goes out.
const FIRST_ENTRIES: usize = 32;

impl Entry {
    fn restore(&self, bytes: &[u8]) -> Arc<OutStanza> {
        OutStanza::restored(
            bytes::Bytes::copy_from_slice(bytes),
            self.queued_at,
            self.stored_id,
        )
    }
}

impl Unacked {
    fn push(&mut self, st: &OutStanza) {
        if self.entries.capacity() == 0 {
            self.entries.reserve(FIRST_ENTRIES);
        }
        self.bytes.extend_from_slice(st.bytes());
        self.entries.push_back(Entry {
            len: st.bytes().len(),
            queued_at: st.queued_at(),
            stored_id: st.stored_id(),
        });
    }

    fn pop(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.start += e.len;
        if self.entries.is_empty() {
            // Everything acknowledged: an idle session holds nothing here
            // (a busy one allocates again once per ack round, not per stanza).
            *self = Unacked::default();
        } else if self.start > COMPACT_AFTER && self.start * 2 > self.bytes.len() {
            // A stream that is never fully acknowledged: move the tail down
            // now and then rather than grow for ever.
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        Some(e)
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        let mut at = self.start;
        self.entries.iter().map(move |e| {
            let bytes = &self.bytes[at..at + e.len];
            at += e.len;
            (bytes, e)
        })
    }

    fn weight(&self) -> usize {
        self.bytes.len() - self.start + self.entries.len() * std::mem::size_of::<Entry>()
    }
}

/// Reads an `h` attribute (a u32, §4).
pub fn parse_h(el: &Element) -> Option<u32> {
    el.attr("h")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st() -> Arc<OutStanza> {
        OutStanza::serialized(bytes::Bytes::from_static(b"<message/>"))
    }

    #[test]
    fn acks_forget_what_they_cover() {
        let mut sm = StreamManagement::new("x".into(), true, 60);
        for _ in 0..5 {
            sm.sent_one(&st());
        }
        assert_eq!(sm.acknowledge(3), Ok(None));
        assert_eq!(sm.unacked_len(), 2);
        // A stale ack changes nothing.
        assert_eq!(sm.acknowledge(1), Ok(None));
        assert_eq!(sm.unacked_len(), 2);
        assert_eq!(sm.acknowledge(6), Err(TooHigh { h: 6, sent: 5 }));
        assert_eq!(sm.acknowledge(5), Ok(None));
        assert_eq!(sm.unacked_len(), 0);
        assert_eq!(sm.unacked_weight(), 0);
    }

    #[test]
    fn an_ack_names_the_last_stored_row_it_covers() {
        let mut sm = StreamManagement::new("x".into(), true, 60);
        sm.sent_one(&st());
        sm.sent_one(&OutStanza::stored(
            bytes::Bytes::from_static(b"<message/>"),
            7,
        ));
        sm.sent_one(&OutStanza::stored(
            bytes::Bytes::from_static(b"<message/>"),
            9,
        ));
        assert_eq!(sm.acknowledge(2), Ok(Some(7)));
        assert_eq!(sm.acknowledge(3), Ok(Some(9)));
    }

    #[test]
    fn the_bytes_come_back_in_order_and_the_buffer_is_reused() {
        let mut sm = StreamManagement::new("x".into(), true, 60);
        let mk =
            |i: usize| OutStanza::stored(bytes::Bytes::from(format!("<m n='{i}'/>")), i as i64);
        for i in 0..10 {
            sm.sent_one(&mk(i));
        }
        assert_eq!(sm.acknowledge(4), Ok(Some(3)));
        let left: Vec<String> = sm
            .unacked()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        assert_eq!(
            left,
            (4..10).map(|i| format!("<m n='{i}'/>")).collect::<Vec<_>>()
        );
        let again = sm.unacked_stanzas();
        assert_eq!(again[0].stored_id(), Some(4));
        assert_eq!(again[0].bytes().as_ref(), b"<m n='4'/>");
        assert_eq!(sm.unacked_weight(), 6 * (10 + std::mem::size_of::<Entry>()));
        // Never fully acknowledged: the buffer stays bounded by what is pending.
        for i in 10..5000 {
            sm.sent_one(&mk(i));
            sm.acknowledge((i - 2) as u32).unwrap();
            assert!(sm.unacked.bytes.len() <= 2 * COMPACT_AFTER + 64);
        }
        assert_eq!(sm.unacked().count(), 3);
        // Everything acknowledged: nothing stays allocated.
        let mut idle = StreamManagement::new("y".into(), true, 60);
        idle.sent_one(&mk(1));
        idle.acknowledge(1).unwrap();
        assert_eq!(idle.unacked.bytes.capacity(), 0);
        assert_eq!(idle.unacked.entries.capacity(), 0);
        assert_eq!(sm.take_unacked().len(), 3);
        assert_eq!(sm.unacked_weight(), 0);
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut sm = StreamManagement::new("x".into(), true, 60);
        sm.set_counters(u32::MAX, u32::MAX - 1);
        sm.handled_one();
        assert_eq!(sm.handled(), 0);
        sm.handled_one();
        assert_eq!(sm.answer().attr("h"), Some("1"));
        // Sent u32::MAX - 1 with none pending; three more cross the wrap.
        for _ in 0..3 {
            sm.sent_one(&st());
        }
        assert_eq!(sm.acknowledge(u32::MAX), Ok(None));
        assert_eq!(sm.unacked_len(), 2);
        assert_eq!(sm.acknowledge(1), Ok(None));
        assert_eq!(sm.unacked_len(), 0);
        assert!(sm.acknowledge(2).is_err());
    }
}
