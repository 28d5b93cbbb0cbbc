//! What is worth a push notification, and the notification itself: the
//! XEP-0357 §7 publish with its `urn:xmpp:push:summary` form.

use crate::xml::{Element, NS_CLIENT};

pub const NS_SUMMARY: &str = "urn:xmpp:push:summary";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_DATA: &str = crate::modules::NS_DATA;

/// Payloads that make a message worth waking the phone for even without a
/// body: end-to-end encrypted messages (OMEMO, legacy and current; OpenPGP
/// for XMPP) and call proposals (XEP-0353).
const WAKING_PAYLOADS: &[(&str, &str)] = &[
    ("encrypted", "eu.siacs.conversations.axolotl"),
    ("encrypted", "urn:xmpp:omemo:2"),
    ("openpgp", "urn:xmpp:openpgp:0"),
    ("propose", "urn:xmpp:jingle-message:0"),
];

/// What a notification tells of the message that caused it.
#[derive(Debug, PartialEq, Eq)]
pub struct MessageSummary<'a> {
    /// The sender as the stanza names it (`from`, stamped by the router).
    pub sender: &'a str,
    /// The `<body/>` element, if any.
    pub body: Option<&'a Element>,
}

/// The summary of a message worth a push (a body, an encrypted payload, a
/// call proposal), or None: errors and headlines, chat states, receipts
/// and markers alone never wake a phone. Group chat messages count like
/// chat (they only ever reach a full JID: a room sends them to an
/// occupant's resource); a client that wants only mentions filters on its
/// app server, as Conversations does.
pub fn worth_pushing(stanza: &Element) -> Option<MessageSummary<'_>> {
    if stanza.name() != "message" {
        return None;
    }
    if matches!(stanza.attr("type"), Some("error" | "headline")) {
        return None;
    }
    let body = stanza.children().find(|c| c.is("body", NS_CLIENT));
    let waking = body.is_some()
        || stanza
            .children()
            .any(|c| WAKING_PAYLOADS.iter().any(|(n, ns)| c.is(n, ns)));
    if !waking {
        return None;
    }
    Some(MessageSummary {
        sender: stanza.attr("from").unwrap_or_default(),
        body,
    })
}

/// Is `form` a data form whose FORM_TYPE is `form_type`?
pub fn is_form_of(form: &Element, form_type: &str) -> bool {
    form.is("x", NS_DATA)
        && form.children().any(|f| {
            f.is("field", NS_DATA)
                && f.attr("var") == Some("FORM_TYPE")
                && f.get_child("value", NS_DATA)
                    .is_some_and(|v| v.text() == form_type)
        })
}

fn field(var: &str, value: &str) -> Element {
    Element::new("field", NS_DATA)
        .with_attr("var", var)
        .with_child(Element::new("value", NS_DATA).with_text(value))
}

/// What is published: the count of messages since the user was last
/// connected, the last sender, and the last body when the operator allows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages since a client was last connected.
    pub count: u32,
    /// Subscription requests since then.
    pub subscriptions: u32,
    /// The last message's sender (empty before any message).
    pub sender: String,
    pub body: Option<String>,
}

/// What happened that is worth a notification.
#[derive(Debug)]
pub enum Unseen {
    Message {
        sender: String,
        body: Option<String>,
    },
    SubscriptionRequest,
}

impl Summary {
    /// Counts one more unseen event.
    pub fn add(&mut self, unseen: Unseen) {
        match unseen {
            Unseen::Message { sender, body } => {
                self.count = self.count.saturating_add(1);
                self.sender = sender;
                self.body = body;
            }
            Unseen::SubscriptionRequest => {
                self.subscriptions = self.subscriptions.saturating_add(1);
            }
        }
    }

    /// Nothing counted.
    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.subscriptions == 0
    }
}

/// The publish IQ (without `id` and `from`, which the IQ tracker sets) to
/// `service`'s `node`, with the stored publish options.
pub fn publish_iq(
    service: &str,
    node: &str,
    summary: &Summary,
    options: Option<Element>,
) -> Element {
    let mut form = Element::new("x", NS_DATA)
        .with_attr("type", "form")
        .with_child(field("FORM_TYPE", NS_SUMMARY).with_attr("type", "hidden"))
        .with_child(field("message-count", &summary.count.to_string()));
    if summary.subscriptions > 0 {
        form.append_child(field(
            "pending-subscription-count",
            &summary.subscriptions.to_string(),
        ));
    }
    if summary.count > 0 {
        form.append_child(field("last-message-sender", &summary.sender));
    }
    if let Some(body) = &summary.body {
        form.append_child(field("last-message-body", body));
    }
    let notification = Element::new("notification", super::NS_PUSH).with_child(form);
    let publish = Element::new("publish", NS_PUBSUB)
        .with_attr("node", node)
        .with_child(Element::new("item", NS_PUBSUB).with_child(notification));
    let mut pubsub = Element::new("pubsub", NS_PUBSUB).with_child(publish);
    if let Some(options) = options {
        pubsub.append_child(Element::new("publish-options", NS_PUBSUB).with_child(options));
    }
    Element::new("iq", NS_CLIENT)
        .with_attr("type", "set")
        .with_attr("to", service)
        .with_child(pubsub)
}

/// `body` cut to at most `max` bytes, at a character boundary.
pub fn truncate(body: &str, max: usize) -> &str {
    if body.len() <= max {
        return body;
    }
    let mut end = max;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    &body[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(children: Element, kind: Option<&str>) -> Element {
        let mut m = Element::new("message", NS_CLIENT)
            .with_attr("from", "juliet@capulet.lit/balcony")
            .with_child(children);
        if let Some(k) = kind {
            m.set_attr("type", k);
        }
        m
    }

    #[test]
    fn bodies_encrypted_payloads_and_calls_are_worth_a_push() {
        let body = message(
            Element::new("body", NS_CLIENT).with_text("hi"),
            Some("chat"),
        );
        let s = worth_pushing(&body).unwrap();
        assert_eq!(s.sender, "juliet@capulet.lit/balcony");
        assert_eq!(s.body.map(|b| b.text()).as_deref(), Some("hi"));
        for (name, ns) in WAKING_PAYLOADS {
            let m = message(Element::new(*name, *ns), None);
            assert!(worth_pushing(&m).unwrap().body.is_none(), "{name} {ns}");
        }
    }

    #[test]
    fn chat_states_errors_and_headlines_are_not() {
        let state = message(
            Element::new("composing", "http://jabber.org/protocol/chatstates"),
            Some("chat"),
        );
        assert!(worth_pushing(&state).is_none());
        for kind in ["error", "headline"] {
            let m = message(Element::new("body", NS_CLIENT).with_text("x"), Some(kind));
            assert!(worth_pushing(&m).is_none(), "{kind}");
        }
        let subject = message(
            Element::new("subject", NS_CLIENT).with_text("x"),
            Some("groupchat"),
        );
        assert!(worth_pushing(&subject).is_none());
        let m = message(
            Element::new("body", NS_CLIENT).with_text("x"),
            Some("groupchat"),
        );
        assert!(worth_pushing(&m).is_some());
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
