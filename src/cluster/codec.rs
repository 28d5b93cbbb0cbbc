//! The text form of a session's state and of change events, as stored in
//! the directory and sent on the bus: tab-separated, the presence last
//! (its text may hold tabs), so a value is parsed without a schema.

use jid::FullJid;

use super::bus::Change;
use crate::sessions::ResourceState;

/// `node \t priority \t flags \t presence`: a directory value.
pub fn encode_state(node: &str, state: &ResourceState) -> String {
    let flags = if state.interested { "i" } else { "-" };
    let presence = state
        .presence
        .as_ref()
        .map(|p| String::from_utf8_lossy(&p.to_bytes(crate::xml::NS_CLIENT)).into_owned())
        .unwrap_or_default();
    format!("{node}\t{}\t{flags}\t{presence}", state.priority)
}

/// Parses a directory value back: (node, state).
pub fn decode_state(value: &str) -> Option<(String, ResourceState)> {
    let mut parts = value.splitn(4, '\t');
    let node = parts.next()?.to_string();
    let priority = parts.next()?.parse().ok()?;
    let interested = parts.next()? == "i";
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
        ];
        for c in changes {
            assert_eq!(decode_change(&encode_change(&c)), Some(c));
        }
        assert_eq!(decode_change("Z\tsomething"), None);
    }
}
