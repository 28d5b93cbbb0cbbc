//! Stanzas read and written, by direction, stream kind and stanza kind.
//!
//! Every counter is resolved once, when the server starts, into a fixed
//! table: counting a stanza is an index and one relaxed atomic add — no
//! label lookup, no allocation, whatever the traffic.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The kind of stream a stanza came over or went out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A client (TCP, WebSocket, …).
    C2s,
    /// Another server.
    S2s,
    /// An external component (XEP-0114).
    Component,
}

impl StreamKind {
    const ALL: [StreamKind; 3] = [StreamKind::C2s, StreamKind::S2s, StreamKind::Component];

    fn label(self) -> &'static str {
        match self {
            StreamKind::C2s => "c2s",
            StreamKind::S2s => "s2s",
            StreamKind::Component => "component",
        }
    }
}

const KINDS: [&str; 3] = ["message", "presence", "iq"];
const DIRECTIONS: [&str; 2] = ["in", "out"];

/// The index of a stanza kind by its element name (None: not a stanza).
fn kind_of_name(name: &str) -> Option<usize> {
    match name {
        "message" => Some(0),
        "presence" => Some(1),
        "iq" => Some(2),
        _ => None,
    }
}

/// The index of a stanza kind by its serialized form: the letter after
/// `<` tells the three apart, so the bytes need not be parsed.
fn kind_of_serialized(bytes: &[u8]) -> Option<usize> {
    match bytes.get(1) {
        Some(b'm') => Some(0),
        Some(b'p') => Some(1),
        Some(b'i') => Some(2),
        _ => None,
    }
}

type Labels = [(&'static str, &'static str); 3];

/// `waxwing_stanzas_total{direction, stream, kind}`.
pub struct StanzaCounters {
    /// [direction][stream][kind].
    table: [[[Counter; 3]; 3]; 2],
}

impl StanzaCounters {
    pub(super) fn register(registry: &mut Registry) -> StanzaCounters {
        let family = Family::<Labels, Counter>::default();
        let table = std::array::from_fn(|d| {
            std::array::from_fn(|s| {
                std::array::from_fn(|k| {
                    family.get_or_create_owned(&[
                        ("direction", DIRECTIONS[d]),
                        ("stream", StreamKind::ALL[s].label()),
                        ("kind", KINDS[k]),
                    ])
                })
            })
        });
        registry.register(
            "waxwing_stanzas",
            "Stanzas read from (in) and written to (out) client, server and component streams",
            family,
        );
        StanzaCounters { table }
    }

    fn counter(&self, direction: usize, stream: StreamKind, kind: Option<usize>) {
        if let Some(k) = kind {
            self.table[direction][stream as usize][k].inc();
        }
    }

    /// A stanza read from a stream, by its element's name.
    pub fn received(&self, stream: StreamKind, name: &str) {
        self.counter(0, stream, kind_of_name(name));
    }

    /// A stanza written to a stream, by its element's name.
    pub fn sent(&self, stream: StreamKind, name: &str) {
        self.counter(1, stream, kind_of_name(name));
    }

    /// A stanza written to a stream, already serialized.
    pub fn sent_serialized(&self, stream: StreamKind, bytes: &[u8]) {
        self.counter(1, stream, kind_of_serialized(bytes));
    }

    /// The count so far (tests).
    pub fn get(&self, direction: &str, stream: StreamKind, kind: &str) -> u64 {
        let d = DIRECTIONS.iter().position(|x| *x == direction);
        let k = kind_of_name(kind);
        match (d, k) {
            (Some(d), Some(k)) => self.table[d][stream as usize][k].get(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_name_and_by_bytes_agree() {
        for (name, bytes) in [
            ("message", &b"<message to='a'/>"[..]),
            ("presence", b"<presence/>"),
            ("iq", b"<iq type='get'/>"),
        ] {
            assert_eq!(kind_of_name(name), kind_of_serialized(bytes));
            assert!(kind_of_name(name).is_some());
        }
        assert_eq!(kind_of_name("r"), None);
        assert_eq!(kind_of_serialized(b"<r xmlns='urn:xmpp:sm:3'/>"), None);
        assert_eq!(kind_of_serialized(b""), None);
    }

    #[test]
    fn counts_land_in_their_own_cell() {
        let mut r = Registry::default();
        let c = StanzaCounters::register(&mut r);
        c.received(StreamKind::S2s, "presence");
        c.sent_serialized(StreamKind::C2s, b"<message/>");
        c.sent_serialized(StreamKind::C2s, b"<message/>");
        c.sent(StreamKind::Component, "a");
        assert_eq!(c.get("in", StreamKind::S2s, "presence"), 1);
        assert_eq!(c.get("out", StreamKind::C2s, "message"), 2);
        assert_eq!(c.get("in", StreamKind::C2s, "message"), 0);
        let total: u64 = c.table.iter().flatten().flatten().map(|c| c.get()).sum();
        assert_eq!(total, 3);
    }
}
