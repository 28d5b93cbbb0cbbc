//! Message Carbons (XEP-0280): a resource that enables carbons gets a
//! copy of every instant message its account sends from another resource
//! (`<sent/>`) and of every one the account receives on another resource
//! (`<received/>`), each wrapped in a XEP-0297 `<forwarded/>`.
//!
//! Whether a resource has carbons on is session data (its extensions in
//! the session registry): it follows the session, and a new binding of
//! the same resource starts with carbons off. In a cluster the registry
//! also reports it to the other nodes (`sessions::set_carbons`), whose
//! copies for it are forwarded like any stanza.
//!
//! The copies come from the events the router fires after it routed a
//! message: `MessageDelivered` (received copies, to the account's
//! carbons-enabled resources that did not get the message),
//! `Undeliverable` (the same when no resource took it, as when every
//! resource has a negative priority) and `MessageSent` (sent copies, to
//! the sender's other carbons-enabled resources). Copies go through `router::deliver` and fire no event, so
//! a copy is never copied again; a message that *contains* a copy (one a
//! client forged, or relayed) is not eligible either. What one message
//! can make the server write is bounded by the number of the account's
//! own resources.

use crate::stanza::bare::Bare;
use jid::{BareJid, FullJid, Jid};

use super::{IqFuture, IqRequest, IqTarget};
use crate::feature::{Disco, Event, EventKind, Feature, Verdict};
use crate::server::Server;
use crate::stanza::StanzaErrorCondition;
use crate::xml::{Element, NS_CLIENT};

/// The carbons namespace (and its disco feature).
pub const NS: &str = "urn:xmpp:carbons:2";
/// Stanza Forwarding (XEP-0297).
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// Message Processing Hints (XEP-0334).
pub const NS_HINTS: &str = "urn:xmpp:hints";
/// Multi-User Chat's user namespace (XEP-0045).
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// Payload namespaces of messages used in instant messaging even without
/// a body (XEP-0280 §6.1): receipts, chat states, chat markers, direct
/// MUC invitations, Jingle message initiation (calls).
const IM_PAYLOADS: &[&str] = &[
    "urn:xmpp:receipts",
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:chat-markers:0",
    "jabber:x:conference",
    "urn:xmpp:jingle-message:0",
    "urn:xmpp:jingle-message:1",
];

/// A session's carbons state, kept in its extensions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CarbonsEnabled(pub bool);

/// Which way a message went, seen from the account getting copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The account's resource sent it.
    Sent,
    /// The account received it.
    Received,
}

impl Direction {
    fn element(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// The carbons feature: the enable/disable IQs and the copies.
#[derive(Debug, Default)]
pub struct Carbons;

impl Feature for Carbons {
    fn name(&self) -> &'static str {
        "carbons"
    }

    fn xeps(&self) -> &'static [u16] {
        // Copies are XEP-0297 forwards; XEP-0334's no-copy is honoured.
        &[280, 297, 334]
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &[NS],
            account: &[],
        }
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS]
    }

    fn handle_iq<'a>(&'a self, req: &'a IqRequest<'a>) -> IqFuture<'a> {
        super::ready(answer(req))
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        // Undeliverable before offline storage (100), which stops it.
        &[
            (EventKind::MessageDelivered, 0),
            (EventKind::MessageSent, 0),
            (EventKind::Undeliverable, 0),
        ]
    }

    fn on_event_now(&self, server: &Server, event: &mut Event<'_>) -> Option<Verdict> {
        match event {
            Event::MessageDelivered {
                account,
                resources,
                stanza,
            } => received_copies(server, account, resources, stanza),
            Event::MessageSent { from, to, stanza } => sent_copies(server, from, to, stanza),
            // No resource took it (none available with a non-negative
            // priority): the carbons-enabled ones still get their copy. A
            // message the account's own session left behind (re-routed at
            // its end) had its copies when it was first delivered.
            Event::Undeliverable {
                origin, to, stanza, ..
            } if origin.session().is_none_or(|s| s.bare() != **to) => {
                received_copies(server, to, &[], stanza)
            }
            _ => {}
        }
        Some(Verdict::Continue)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `<enable/>` and `<disable/>` (§4, §5): for the requesting resource
/// only; repeating either is no error (§10.1).
fn answer(req: &IqRequest<'_>) -> super::IqOutcome {
    let own = matches!(
        req.target,
        IqTarget::Server | IqTarget::Account { own: true }
    );
    let Ok(full) = req.from.try_as_full() else {
        return Err(StanzaErrorCondition::NotAllowed.into());
    };
    if !own || !req.server.sessions.is_bound(full) {
        return Err(StanzaErrorCondition::NotAllowed.into());
    }
    if !req.is_set {
        return Err(StanzaErrorCondition::BadRequest.into());
    }
    let on = match req.payload.name() {
        "enable" => true,
        "disable" => false,
        _ => return Err(StanzaErrorCondition::BadRequest.into()),
    };
    let Some(ext) = req.server.sessions.extensions(full) else {
        return Err(StanzaErrorCondition::NotAllowed.into());
    };
    ext.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(CarbonsEnabled(on));
    // Other nodes of a cluster copy to this resource too.
    req.server.sessions.set_carbons(full, on);
    Ok(None)
}

/// Has the session bound to `jid` enabled carbons?
pub fn enabled(server: &Server, jid: &FullJid) -> bool {
    server.sessions.extensions(jid).is_some_and(|ext| {
        ext.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get::<CarbonsEnabled>()
            .is_some_and(|c| c.0)
    })
}

/// The carbons-enabled resources of `account` (its bare JID's text) that
/// are `wanted` (resource parts). Runs for every routed message, so it
/// builds no JID and allocates nothing unless a copy is due.
fn enabled_resources(server: &Server, account: &str, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    // Looked up before anything else: most accounts have no other
    // carbons-enabled resource, and then the message is not even parsed
    // for eligibility.
    let mut names: Vec<String> = Vec::new();
    server
        .sessions
        .for_each_extensions(account, |resource, ext| {
            if ext.get::<CarbonsEnabled>().is_some_and(|c| c.0) && wanted(resource) {
                names.push(resource.to_string());
            }
        });
    // Resources on other nodes of a cluster, as their nodes reported them;
    // the copy is forwarded there like any stanza.
    server
        .sessions
        .for_each_remote(account, &mut |resource, state| {
            if state.carbons && wanted(resource) && !names.iter().any(|n| n == resource) {
                names.push(resource.to_string());
            }
        });
    names
}

/// The resource part of `jid` if it is a full JID of `account`.
fn resource_of<'j>(jid: &'j str, account: &BareJid) -> Option<&'j str> {
    jid.strip_prefix(account.as_str())?.strip_prefix('/')
}

/// §7: a message reached some resources of a local account; its other
/// carbons-enabled resources get a `<received/>` copy. A message one
/// resource sent to its own account is not copied back to the sender.
fn received_copies(server: &Server, account: &BareJid, resources: &[FullJid], stanza: &Element) {
    let sender = stanza.attr("from").and_then(|f| resource_of(f, account));
    let names = enabled_resources(server, account.as_str(), |r| {
        Some(r) != sender && !resources.iter().any(|got| got.resource().as_str() == r)
    });
    if names.is_empty() || !eligible(stanza, Direction::Received) {
        return;
    }
    for target in names
        .iter()
        .filter_map(|r| account.with_resource_str(r).ok())
    {
        send_copy(server, Direction::Received, account, &target, stanza);
    }
}

/// §8: a local resource sent a message; the account's other
/// carbons-enabled resources get a `<sent/>` copy. A message to the own
/// account is left to the received copies (each resource gets it once).
fn sent_copies(server: &Server, from: &FullJid, to: &Jid, stanza: &Element) {
    let account = from.bare_str();
    let to_own_account = to
        .as_str()
        .strip_prefix(account)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if to_own_account {
        return;
    }
    let own = from.resource().as_str();
    let names = enabled_resources(server, account, |r| r != own);
    if names.is_empty() || !eligible(stanza, Direction::Sent) {
        return;
    }
    let account = from.bare();
    for target in names
        .iter()
        .filter_map(|r| account.with_resource_str(r).ok())
    {
        send_copy(server, Direction::Sent, &account, &target, stanza);
    }
}

/// Wraps `original` as §7/§8 say and queues it for `target`. A copy that
/// cannot be queued is dropped: nobody is told (§10.3).
fn send_copy(
    server: &Server,
    direction: Direction,
    account: &BareJid,
    target: &FullJid,
    original: &Element,
) {
    let copy = wrap(direction, account, target, original);
    let _ = crate::router::deliver(server, &copy, &Jid::from(target.clone()));
}

/// The carbon copy of `original` for `target`: from the bare account, the
/// original's type kept, the original inside `<forwarded/>`.
pub fn wrap(
    direction: Direction,
    account: &BareJid,
    target: &FullJid,
    original: &Element,
) -> Element {
    let mut copy = Element::new("message", NS_CLIENT)
        .with_attr("from", account.as_str())
        .with_attr("to", target.as_str());
    if let Some(t) = original.attr("type") {
        copy.set_attr("type", t);
    }
    // Routed stanzas are in `jabber:client`, which the writer declares on
    // the forwarded message (its parent is in another namespace).
    copy.with_child(
        Element::new(direction.element(), NS)
            .with_child(Element::new("forwarded", NS_FORWARD).with_child(original.clone())),
    )
}

/// §6.1: is this message one carbons copies, in `direction`?
pub fn eligible(stanza: &Element, direction: Direction) -> bool {
    if stanza.name() != "message" {
        return false;
    }
    // §6 (private) and XEP-0334 (no-copy): the sender asked for none.
    if stanza.get_child("private", NS).is_some() || stanza.get_child("no-copy", NS_HINTS).is_some()
    {
        return false;
    }
    // A copy, or something dressed as one, is never copied again.
    if stanza.get_child("sent", NS).is_some() || stanza.get_child("received", NS).is_some() {
        return false;
    }
    let from_full = stanza
        .attr("from")
        .and_then(|f| Jid::new(f).ok())
        .is_some_and(|j| j.resource().is_some());
    let muc_user = stanza.get_child("x", NS_MUC_USER);
    match stanza.attr("type").unwrap_or("normal") {
        // §6.1: groupchat is replicated by the room itself.
        "groupchat" | "headline" => return false,
        "error" => {
            // A bounce of an eligible message: it echoes that message's
            // content, or (a message sent to a bare JID) comes from a bare
            // JID. A client's own error replies are its business.
            return im_content(stanza)
                || (direction == Direction::Received && !from_full && muc_user.is_none());
        }
        _ => {}
    }
    // §6.1: a private message from a room occupant (a full JID) is
    // replicated by the room to every joined client; one the user sends
    // to an occupant is copied like any chat. Invitations are copied.
    if let Some(x) = muc_user {
        if x.get_child("invite", NS_MUC_USER).is_some() {
            return true;
        }
        if direction == Direction::Received && from_full {
            return false;
        }
    }
    match stanza.attr("type").unwrap_or("normal") {
        "chat" => true,
        _ => im_content(stanza),
    }
}

/// A body, or one of the payloads IM uses without one.
fn im_content(stanza: &Element) -> bool {
    stanza
        .children()
        .any(|c| (c.name() == "body" && c.ns() == NS_CLIENT) || IM_PAYLOADS.contains(&c.ns()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(xml: &str) -> Element {
        crate::modules::xml_from_storage(xml, 16)
            .and_then(|v| v.into_iter().next())
            .expect("one element")
    }

    #[test]
    fn which_messages_are_copied() {
        use Direction::{Received as R, Sent as S};
        let cases: &[(&str, Direction, bool)] = &[
            ("<message type='chat' from='a@x/r'/>", R, true),
            ("<message from='a@x/r'><body>hi</body></message>", R, true),
            ("<message type='normal' from='a@x/r'/>", R, false),
            ("<message type='headline' from='x'><body>news</body></message>", R, false),
            ("<message type='groupchat' from='r@muc/n'><body>hi</body></message>", R, false),
            ("<message from='a@x/r'><received xmlns='urn:xmpp:receipts' id='1'/></message>", R, true),
            ("<message from='a@x/r'><active xmlns='http://jabber.org/protocol/chatstates'/></message>", S, true),
            ("<message type='chat' from='a@x/r'><body>s</body><private xmlns='urn:xmpp:carbons:2'/></message>", S, false),
            ("<message type='chat' from='a@x/r'><body>s</body><no-copy xmlns='urn:xmpp:hints'/></message>", R, false),
            ("<message type='chat' from='a@x'><sent xmlns='urn:xmpp:carbons:2'/></message>", R, false),
            ("<message type='chat' from='a@x'><received xmlns='urn:xmpp:carbons:2'/></message>", R, false),
            // MUC private messages: copied when sent, not when received.
            ("<message type='chat' to='r@muc/n'><body>pm</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>", S, true),
            ("<message type='chat' from='r@muc/n'><body>pm</body><x xmlns='http://jabber.org/protocol/muc#user'/></message>", R, false),
            ("<message from='r@muc'><x xmlns='http://jabber.org/protocol/muc#user'><invite from='b@x'/></x></message>", R, true),
            ("<message from='b@x/r'><x xmlns='jabber:x:conference' jid='r@muc'/></message>", R, true),
            // Errors: the bounce of a message to a bare JID, or echoing an eligible one.
            ("<message type='error' from='b@y'><error type='cancel'/></message>", R, true),
            ("<message type='error' from='b@y/r'><error type='cancel'/></message>", R, false),
            ("<message type='error' from='b@y/r'><body>x</body><error type='cancel'/></message>", R, true),
            ("<message type='error' to='b@y'><error type='cancel'/></message>", S, false),
            ("<presence from='a@x/r'/>", R, false),
        ];
        for (xml, dir, want) in cases {
            assert_eq!(eligible(&msg(xml), *dir), *want, "{xml} {dir:?}");
        }
    }

    #[test]
    fn a_copy_wraps_the_original() {
        let original =
            msg("<message type='chat' from='j@c/b' to='r@m/g'><body>hi</body></message>");
        let copy = wrap(
            Direction::Received,
            &BareJid::new("r@m").unwrap(),
            &FullJid::new("r@m/h").unwrap(),
            &original,
        );
        let xml = String::from_utf8(copy.to_bytes(NS_CLIENT)).unwrap();
        assert_eq!(
            xml,
            "<message from='r@m' to='r@m/h' type='chat'><received xmlns='urn:xmpp:carbons:2'>\
             <forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' type='chat' \
             from='j@c/b' to='r@m/g'><body>hi</body></message></forwarded></received></message>"
        );
    }
}
