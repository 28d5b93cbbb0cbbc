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
    unacked: VecDeque<Arc<OutStanza>>,
    unacked_weight: usize,
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
            unacked: VecDeque::new(),
            unacked_weight: 0,
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

    /// A stanza was written to the client: keep it until acknowledged.
    pub fn sent_one(&mut self, stanza: Arc<OutStanza>) {
        self.sent = self.sent.wrapping_add(1);
        self.unacked_weight += stanza.weight();
        self.unacked.push_back(stanza);
    }

    /// Stanzas written and not acknowledged.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// The unacknowledged stanzas, oldest first.
    pub fn unacked(&self) -> impl Iterator<Item = &Arc<OutStanza>> {
        self.unacked.iter()
    }

    /// Roughly the memory the unacknowledged stanzas hold.
    pub fn unacked_weight(&self) -> usize {
        self.unacked_weight
    }

    /// The client acknowledged everything up to its `h`: forget those
    /// stanzas. An `h` beyond what was sent is a protocol error (§4:
    /// `handled-count-too-high`). An `h` below an earlier one (an old ack
    /// arriving late) acknowledges nothing new.
    ///
    /// Returns the highest offline-storage row among the stanzas it
    /// acknowledged (rows that may now be deleted).
    pub fn acknowledge(&mut self, h: u32) -> Result<Option<i64>, TooHigh> {
        let acked_before = self.sent.wrapping_sub(self.unacked.len() as u32);
        let newly = h.wrapping_sub(acked_before);
        if newly as usize > self.unacked.len() {
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
            if let Some(st) = self.unacked.pop_front() {
                self.unacked_weight -= st.weight();
                stored = st.stored_id().or(stored);
            }
        }
        Ok(stored)
    }

    /// Takes the unacknowledged stanzas (for resending after a resumption,
    /// or re-routing when the session ends), oldest first.
    pub fn take_unacked(&mut self) -> Vec<Arc<OutStanza>> {
        self.unacked_weight = 0;
        self.unacked.drain(..).collect()
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
            sm.sent_one(st());
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
        sm.sent_one(st());
        sm.sent_one(OutStanza::stored(
            bytes::Bytes::from_static(b"<message/>"),
            7,
        ));
        sm.sent_one(OutStanza::stored(
            bytes::Bytes::from_static(b"<message/>"),
            9,
        ));
        assert_eq!(sm.acknowledge(2), Ok(Some(7)));
        assert_eq!(sm.acknowledge(3), Ok(Some(9)));
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
            sm.sent_one(st());
        }
        assert_eq!(sm.acknowledge(u32::MAX), Ok(None));
        assert_eq!(sm.unacked_len(), 2);
        assert_eq!(sm.acknowledge(1), Ok(None));
        assert_eq!(sm.unacked_len(), 0);
        assert!(sm.acknowledge(2).is_err());
    }
}
