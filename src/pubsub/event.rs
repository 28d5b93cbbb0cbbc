//! Notifications (XEP-0060 §7.1.2, §7.2.2, §8.4.2, §8.5.2): the headline
//! messages subscribers get, built once per change and addressed per
//! recipient.

use super::config::NodeConfig;
use super::{Change, NS, NS_EVENT};
use crate::xml::{Element, NS_CLIENT};

/// The `<event/>` a change is announced with (None when the node's
/// configuration says not to notify).
pub fn event_of(change: &Change) -> Option<Element> {
    let event = Element::new("event", NS_EVENT);
    match change {
        Change::Published { node, config, item } => {
            if !config.deliver_notifications {
                return None;
            }
            Some(event.with_child(items(node, std::slice::from_ref(item), config)))
        }
        Change::Retracted { node, ids, .. } => {
            let mut items = Element::new("items", NS_EVENT).with_attr("node", node.as_str());
            for id in ids {
                items.append_child(Element::new("retract", NS_EVENT).with_attr("id", id.as_str()));
            }
            Some(event.with_child(items))
        }
        Change::Deleted { node, .. } => Some(
            event.with_child(Element::new("delete", NS_EVENT).with_attr("node", node.as_str())),
        ),
        Change::Purged { node, .. } => {
            Some(event.with_child(Element::new("purge", NS_EVENT).with_attr("node", node.as_str())))
        }
        Change::Subscribed { .. } => None,
    }
}

/// An `<items/>` of the event namespace with `items` (given in the
/// pubsub namespace), their payloads left out unless the node delivers them.
pub fn items(node: &str, items: &[Element], config: &NodeConfig) -> Element {
    let mut out = Element::new("items", NS_EVENT).with_attr("node", node);
    for item in items {
        let mut e = Element::new("item", NS_EVENT);
        if let Some(id) = item.attr("id") {
            e.set_attr("id", id);
        }
        if config.deliver_payloads {
            for child in item.children() {
                e.append_child(child.clone());
            }
        }
        out.append_child(e);
    }
    debug_assert!(items.iter().all(|i| i.ns() == NS));
    out
}

/// The headline message carrying `event` from the service `from` to `to`.
pub fn message(from: &str, to: &str, event: &Element) -> Element {
    Element::new("message", NS_CLIENT)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", "headline")
        .with_child(event.clone())
}
