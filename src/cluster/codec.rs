//! The text form of a session's state and of change events, as stored in
//! the directory and sent on the bus: tab-separated, the presence last
//! (its text may hold tabs), so a value is parsed without a schema.

use bytes::Bytes;
use jid::FullJid;

use super::bus::{Change, Delivery};
use crate::sessions::{Kept, ResourceState};

/// `node \t priority \t flags \t session \t presence`: a directory value.
pub fn encode_state(node: &str, state: &ResourceState) -> String {
    // `i` interested, `c` carbons on; `-` neither.
    let flags = match (state.interested, state.carbons) {
        (false, false) => "-",
        (true, false) => "i",
        (false, true) => "c",
        (true, true) => "ic",
    };
    let presence = state
        .presence
        .as_ref()
        .map(|p| String::from_utf8_lossy(&p.to_bytes(crate::xml::NS_CLIENT)).into_owned())
        .unwrap_or_default();
    format!(
        "{node}\t{}\t{flags}\t{}\t{presence}",
        state.priority, state.session
    )
}

/// Parses a directory value back: (node, state).
pub fn decode_state(value: &str) -> Option<(String, ResourceState)> {
    let mut parts = value.splitn(5, '\t');
    let node = parts.next()?.to_string();
    let priority = parts.next()?.parse().ok()?;
    let flags = parts.next()?;
    let (interested, carbons) = (flags.contains('i'), flags.contains('c'));
    let session = parts.next()?.parse().ok()?;
    let presence = match parts.next()? {
        "" => None,
        xml => Some(
            crate::modules::xml_from_storage(xml, crate::xml::ParserLimits::default().max_depth)?
                .into_iter()
                .next()?,
        ),
    };
    Some((
        node,
        ResourceState {
            presence,
            priority,
            interested,
            carbons,
            session,
        },
    ))
}

/// Does a directory value belong to `node`?
pub fn value_node(value: &str) -> &str {
    value.split('\t').next().unwrap_or_default()
}

/// A change as one bus message.
pub fn encode_change(change: &Change) -> String {
    match change {
        Change::Bound {
            node, jid, state, ..
        } => format!("B\t{jid}\t{}", encode_state(node, state)),
        Change::Unbound {
            node,
            jid,
            last_local,
        } => format!("U\t{jid}\t{node}\t{}", u8::from(*last_local)),
        Change::NodeDown { node } => format!("D\t{node}"),
        Change::KeptForLater { user, what } => {
            let what = match what {
                Kept::Message => "m",
                Kept::SubscriptionRequest => "s",
            };
            format!("K\t{user}\t{what}")
        }
        Change::Component { node, domain, up } => {
            format!("C\t{domain}\t{node}\t{}", u8::from(*up))
        }
    }
}

/// Parses a bus message (None for anything else: a newer node's event
/// kind is ignored, not fatal).
pub fn decode_change(text: &str) -> Option<Change> {
    let (kind, rest) = text.split_once('\t')?;
    match kind {
        "B" => {
            let (jid, value) = rest.split_once('\t')?;
            let (node, state) = decode_state(value)?;
            Some(Change::Bound {
                node,
                jid: FullJid::new(jid).ok()?,
                state,
                claim: false,
            })
        }
        "U" => {
            let mut parts = rest.split('\t');
            let jid = FullJid::new(parts.next()?).ok()?;
            let node = parts.next()?.to_string();
            let last_local = parts.next()? == "1";
            Some(Change::Unbound {
                node,
                jid,
                last_local,
            })
        }
        "D" => Some(Change::NodeDown {
            node: rest.to_string(),
        }),
        "K" => {
            let (user, what) = rest.split_once('\t')?;
            let what = match what {
                "m" => Kept::Message,
                "s" => Kept::SubscriptionRequest,
                _ => return None,
            };
            Some(Change::KeptForLater {
                user: user.to_string(),
                what,
            })
        }
        "C" => {
            let mut parts = rest.split('\t');
            let domain = parts.next()?.to_string();
            let node = parts.next()?.to_string();
            let up = parts.next()? == "1";
            Some(Change::Component { node, domain, up })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::Element;

    #[test]
    fn changes_round_trip() {
        let presence = Element::new("presence", crate::xml::NS_CLIENT)
            .with_child(Element::new("status", crate::xml::NS_CLIENT).with_text("a\tb"));
        let changes = [
            Change::Bound {
                node: "n-1".into(),
                jid: FullJid::new("a@x/r").unwrap(),
                state: ResourceState {
                    presence: Some(presence),
                    priority: -3,
                    interested: true,
                    carbons: true,
                    session: 7,
                },
                claim: false,
            },
            Change::Bound {
                node: "n2".into(),
                jid: FullJid::new("b@x/phone").unwrap(),
                state: ResourceState::default(),
                claim: false,
            },
            Change::Unbound {
                node: "n2".into(),
                jid: FullJid::new("b@x/phone").unwrap(),
                last_local: true,
            },
            Change::NodeDown { node: "n3".into() },
            Change::KeptForLater {
                user: "carol@x".into(),
                what: Kept::Message,
            },
            Change::KeptForLater {
                user: "carol@x".into(),
                what: Kept::SubscriptionRequest,
            },
            Change::Component {
                node: "n1".into(),
                domain: "svc.x".into(),
                up: true,
            },
            Change::Component {
                node: "n2".into(),
                domain: "svc.x".into(),
                up: false,
            },
        ];
        for c in changes {
            assert_eq!(decode_change(&encode_change(&c)), Some(c));
        }
        assert_eq!(decode_change("Z\tsomething"), None);
    }
}

/// Several inbox entries for one node packed into one stream entry (field
/// `p`), so a batch — a presence broadcast to many contacts' resources,
/// a burst of chat — costs one append. A record is a kind byte (`s`
/// stanza, `=` the same stanza bytes as the record before, `r` replaced,
/// `a` an IQ answer, `o` a take-over request, `h` its answer, `k` a stanza
/// for a component, `m` a stanza for a room, `u` a stanza without `to`
/// — its value the byte where `to` goes, u32 big-endian, then the
/// bytes — and `^` the same as the `u` before, for another recipient), the full JID
/// (u32 big-endian length, bytes), and for all but `=` the value (u32 length, bytes; for `r` the session id
/// in decimal).
pub fn pack(entries: &[(&str, &Delivery)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut previous: Option<&Bytes> = None;
    let mut unaddressed: Option<&Bytes> = None;
    for (to, delivery) in entries {
        let put = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        };
        let session_text;
        let with_at;
        let (kind, value) = match delivery {
            // A room's broadcast to several occupants on the node: its bytes
            // go once, each record naming only its recipient.
            Delivery::Unaddressed { stanza, .. }
                if unaddressed
                    .is_some_and(|p| p.as_ptr() == stanza.as_ptr() && p.len() == stanza.len()) =>
            {
                (b'^', None)
            }
            Delivery::Unaddressed { stanza, at } => {
                unaddressed = Some(stanza);
                let mut v = Vec::with_capacity(4 + stanza.len());
                v.extend_from_slice(&at.to_be_bytes());
                v.extend_from_slice(stanza);
                with_at = Bytes::from(v);
                (b'u', Some(&with_at))
            }
            // One stanza to several resources of one contact is serialized
            // once by the router: its bytes are shared, and sent once.
            Delivery::Stanza(b)
                if previous.is_some_and(|p| p.as_ptr() == b.as_ptr() && p.len() == b.len()) =>
            {
                (b'=', None)
            }
            Delivery::Stanza(b) => {
                previous = Some(b);
                (b's', Some(b))
            }
            Delivery::Replaced(session) => {
                session_text = Bytes::from(session.to_string());
                (b'r', Some(&session_text))
            }
            Delivery::Answer(b) => (b'a', Some(b)),
            Delivery::TakeOver(b) => (b'o', Some(b)),
            Delivery::HandedOver(b) => (b'h', Some(b)),
            Delivery::Component(b) => (b'k', Some(b)),
            Delivery::Room(b) => (b'm', Some(b)),
        };
        out.push(kind);
        put(&mut out, to.as_bytes());
        if let Some(v) = value {
            put(&mut out, v);
        }
    }
    out
}

/// A session id as an entry carries it (decimal; 0 when unreadable:
/// whichever session is bound).
pub fn session_of(text: &[u8]) -> u64 {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The records of a packed entry (None if it is malformed: a newer
/// node's kind, or cut short).
pub fn unpack(packed: &Bytes) -> Option<Vec<(String, Delivery)>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut previous: Option<Bytes> = None;
    // The last unaddressed stanza and where its `to` goes.
    let mut unaddressed: Option<(Bytes, usize)> = None;
    let take = |at: &mut usize| -> Option<Bytes> {
        let len = u32::from_be_bytes(packed.get(*at..*at + 4)?.try_into().ok()?) as usize;
        let start = *at + 4;
        let value = packed.get(start..start.checked_add(len)?)?;
        let value = packed.slice_ref(value);
        *at = start + len;
        Some(value)
    };
    while at < packed.len() {
        let kind = packed[at];
        at += 1;
        let to = String::from_utf8(take(&mut at)?.to_vec()).ok()?;
        let delivery = match kind {
            b's' => {
                let b = take(&mut at)?;
                previous = Some(b.clone());
                Delivery::Stanza(b)
            }
            b'=' => Delivery::Stanza(previous.clone()?),
            b'r' => Delivery::Replaced(session_of(&take(&mut at)?)),
            b'a' => Delivery::Answer(take(&mut at)?),
            b'o' => Delivery::TakeOver(take(&mut at)?),
            b'h' => Delivery::HandedOver(take(&mut at)?),
            b'k' => Delivery::Component(take(&mut at)?),
            b'm' => Delivery::Room(take(&mut at)?),
            // Addressed here, as the reader expects a stanza.
            b'u' | b'^' => {
                if kind == b'u' {
                    let v = take(&mut at)?;
                    let to_at = u32::from_be_bytes(v.get(..4)?.try_into().ok()?) as usize;
                    unaddressed = Some((v.slice(4..), to_at));
                }
                let (stanza, to_at) = unaddressed.as_ref()?;
                Delivery::Stanza(Bytes::from(crate::xml::with_to(stanza, *to_at, &to)))
            }
            _ => return None,
        };
        out.push((to, delivery));
    }
    Some(out)
}

#[cfg(test)]
mod pack_tests {
    use super::*;

    #[test]
    fn packed_entries_round_trip_and_shared_bytes_go_once() {
        let shared = Bytes::from_static(b"<presence to='c@x'/>");
        let other = Bytes::from_static(b"<presence to='d@x'/>");
        let entries = [
            ("c@x/1", Delivery::Stanza(shared.clone())),
            ("c@x/2", Delivery::Stanza(shared.clone())),
            ("d@x/1", Delivery::Stanza(other.clone())),
            ("e@x/1", Delivery::Replaced(42)),
            ("f@x/1", Delivery::Answer(Bytes::from_static(b"<iq/>"))),
            ("g@x", Delivery::TakeOver(Bytes::from_static(b"request"))),
            ("g@x", Delivery::HandedOver(Bytes::from_static(b"session"))),
            (
                "svc.x",
                Delivery::Component(Bytes::from_static(b"<message/>")),
            ),
        ];
        let refs: Vec<(&str, &Delivery)> = entries.iter().map(|(t, d)| (*t, d)).collect();
        let packed = Bytes::from(pack(&refs));
        // The shared stanza once, the other once.
        assert_eq!(
            packed
                .windows(shared.len())
                .filter(|w| *w == &shared[..])
                .count(),
            1
        );
        let back = unpack(&packed).unwrap();
        let expected: Vec<(String, Delivery)> = entries
            .iter()
            .map(|(t, d)| (t.to_string(), d.clone()))
            .collect();
        assert_eq!(back, expected);
        // Cut short, or an unknown kind: refused, not misread.
        assert!(unpack(&packed.slice(..packed.len() - 1)).is_none());
        assert!(unpack(&Bytes::from_static(b"z\0\0\0\0")).is_none());
    }

    #[test]
    fn a_room_broadcast_goes_once_and_is_addressed_per_record() {
        let bytes = Bytes::from_static(b"<message type='groupchat'><body>hello</body></message>");
        let at = "<message".len() as u32;
        let room = Delivery::Unaddressed {
            stanza: bytes.clone(),
            at,
        };
        let entries = [("a@x/1", &room), ("b@x/2", &room), ("c@x/3", &room)];
        let packed = Bytes::from(pack(&entries));
        let body = b"<body>hello</body>";
        assert_eq!(packed.windows(body.len()).filter(|w| w == body).count(), 1);
        let back = unpack(&packed).unwrap();
        let got: Vec<(String, Vec<u8>)> = back
            .into_iter()
            .map(|(to, d)| match d {
                Delivery::Stanza(b) => (to, b.to_vec()),
                other => panic!("{other:?}"),
            })
            .collect();
        for (to, stanza) in got {
            assert_eq!(
                String::from_utf8(stanza).unwrap(),
                format!("<message to=\"{to}\" type='groupchat'><body>hello</body></message>")
            );
        }
        // A `^` with no `u` before it is refused.
        let lone = [("a@x/1", &Delivery::Replaced(1))];
        let mut bad = pack(&lone);
        bad.push(b'^');
        bad.extend_from_slice(&5u32.to_be_bytes());
        bad.extend_from_slice(b"b@x/2");
        assert!(unpack(&Bytes::from(bad)).is_none());
    }
}
