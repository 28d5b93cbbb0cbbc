//! Rosters and presence subscriptions (RFC 6121 §2–3): the roster IQ with
//! versioning (XEP-0237) and pushes, and the subscription state machine for
//! outbound (user → contact) and inbound (contact → user) subscription
//! stanzas, as RFC 6121 Appendix A tabulates it.

use crate::stanza::bare::Bare;
use jid::BareJid;

use super::{IqFuture, IqOutcome, IqRequest, IqTarget, Module};
use crate::metrics::StorageOp;
use crate::router::deliver_local;
use crate::server::Server;
use crate::stanza::StanzaErrorCondition;
use crate::storage::{RosterRecord, StorageError, SubscriptionRequest};
use crate::xml::{Element, NS_CLIENT};

pub const NS: &str = "jabber:iq:roster";

/// User Nickname (XEP-0172), carried in subscription requests.
pub const NS_NICK: &str = "http://jabber.org/protocol/nick";

pub const MODULE: Module = Module {
    xep: 237,
    namespaces: &[NS],
    features: &[],
    handle,
};

/// A subscription presence type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionKind {
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
}

impl SubscriptionKind {
    /// The kind named by a presence `type`, if it is a subscription one.
    pub fn from_type(t: Option<&str>) -> Option<Self> {
        match t? {
            "subscribe" => Some(Self::Subscribe),
            "subscribed" => Some(Self::Subscribed),
            "unsubscribe" => Some(Self::Unsubscribe),
            "unsubscribed" => Some(Self::Unsubscribed),
            _ => None,
        }
    }

    pub fn as_type(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Subscribed => "subscribed",
            Self::Unsubscribe => "unsubscribe",
            Self::Unsubscribed => "unsubscribed",
        }
    }
}

/// Subscription state of one roster row, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub record: RosterRecord,
}

impl Item {
    fn new(contact: &BareJid) -> Item {
        Item {
            record: RosterRecord {
                contact: contact.to_string(),
                name: None,
                subscription: "none".into(),
                ask_out: false,
                pending_in: false,
                approved: false,
                in_roster: true,
                groups: Vec::new(),
            },
        }
    }

    /// The user receives the contact's presence.
    pub fn to(&self) -> bool {
        matches!(self.record.subscription.as_str(), "to" | "both")
    }

    /// The contact receives the user's presence.
    pub fn from(&self) -> bool {
        matches!(self.record.subscription.as_str(), "from" | "both")
    }

    fn set(&mut self, to: bool, from: bool) {
        self.record.subscription = match (to, from) {
            (false, false) => "none",
            (true, false) => "to",
            (false, true) => "from",
            (true, true) => "both",
        }
        .into();
    }

    /// A row outside the roster that no longer carries anything.
    fn is_empty_request_row(&self) -> bool {
        let r = &self.record;
        !r.in_roster && r.subscription == "none" && !r.pending_in && !r.approved && !r.ask_out
    }

    /// The `<item/>` of a roster result or push.
    pub fn to_element(&self) -> Element {
        let r = &self.record;
        let mut e = Element::new("item", NS)
            .with_attr("jid", r.contact.as_str())
            .with_attr("subscription", r.subscription.as_str());
        if let Some(n) = &r.name {
            e.set_attr("name", n.as_str());
        }
        if r.ask_out {
            e.set_attr("ask", "subscribe");
        }
        if r.approved {
            e.set_attr("approved", "true");
        }
        for g in &r.groups {
            e.append_child(Element::new("group", NS).with_text(g.as_str()));
        }
        e
    }
}

fn parts(user: &BareJid) -> (&str, &str) {
    (
        user.domain().as_str(),
        user.node().map(|n| n.as_str()).unwrap_or_default(),
    )
}

/// Loads one roster row.
pub async fn item(
    server: &Server,
    user: &BareJid,
    contact: &BareJid,
) -> Result<Option<Item>, StorageError> {
    let (d, u) = parts(user);
    Ok(server
        .store
        .roster_item(d, u, contact.as_str())
        .await?
        .map(|record| Item { record }))
}

/// The whole roster, request-only rows included.
pub async fn items(server: &Server, user: &BareJid) -> Result<Vec<Item>, StorageError> {
    let (d, u) = parts(user);
    let timers = &server.metrics.storage;
    Ok(timers
        .time(StorageOp::RosterLoad, server.store.roster_items(d, u))
        .await?
        .into_iter()
        .map(|record| Item { record })
        .collect())
}

/// Saves a row and pushes it to the user's interested resources
/// (a request-only row is saved without a push: it is not in the roster).
async fn save_and_push(server: &Server, user: &BareJid, item: &Item) -> Result<(), StorageError> {
    let (d, u) = parts(user);
    let ver = server.store.roster_put(d, u, &item.record).await?;
    if item.record.in_roster {
        push(server, user, item.to_element(), ver);
    }
    Ok(())
}

/// Puts `contact` in `user`'s roster with a subscription both ways and
/// pushes it: what an invitation grants inviter and invitee (XEP-0401 §5).
pub async fn subscribe_mutually(
    server: &Server,
    user: &BareJid,
    contact: &BareJid,
) -> Result<(), StorageError> {
    let mut item = item(server, user, contact)
        .await?
        .unwrap_or_else(|| Item::new(contact));
    item.set(true, true);
    item.record.in_roster = true;
    item.record.ask_out = false;
    item.record.pending_in = false;
    item.record.approved = false;
    save_and_push(server, user, &item).await
}

/// Pre-approves `contact`'s subscription to `user` (RFC 6121 §3.4), so
/// the request that follows is answered at once: how a valid XEP-0379
/// token from the user takes effect.
pub async fn preapprove(
    server: &Server,
    user: &BareJid,
    contact: &BareJid,
) -> Result<(), StorageError> {
    let mut item = item(server, user, contact).await?.unwrap_or_else(|| {
        let mut i = Item::new(contact);
        i.record.in_roster = false;
        i
    });
    if item.from() || item.record.approved {
        return Ok(());
    }
    item.record.approved = true;
    save_and_push(server, user, &item).await
}

/// Sends a roster push (RFC 6121 §2.1.6) to every interested resource.
fn push(server: &Server, user: &BareJid, item: Element, ver: i64) {
    for full in server.sessions.interested_resources(user) {
        let iq = Element::new("iq", NS_CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push{ver}"))
            .with_attr("to", full.as_str())
            .with_child(
                Element::new("query", NS)
                    .with_attr("ver", ver.to_string())
                    .with_child(item.clone()),
            );
        let _ = deliver_local(server, &full, &iq);
    }
}

fn handle<'a>(req: &'a IqRequest<'a>) -> IqFuture<'a> {
    Box::pin(async move {
        if req.target != (IqTarget::Account { own: true }) {
            return Err(StanzaErrorCondition::Forbidden.into());
        }
        if req.payload.name() != "query" {
            return Err(StanzaErrorCondition::BadRequest.into());
        }
        let user = req.from.bare();
        let r = if req.is_set {
            set(req, &user).await
        } else {
            get(req, &user).await
        };
        r.unwrap_or_else(|e| {
            tracing::error!(error = %e, "roster storage");
            Err(StanzaErrorCondition::InternalServerError.into())
        })
    })
}

async fn get(req: &IqRequest<'_>, user: &BareJid) -> Result<IqOutcome, StorageError> {
    if let Ok(session) = req.from.try_as_full() {
        req.server.sessions.set_interested(session);
    }
    let (d, u) = parts(user);
    let ver = req.server.store.roster_version(d, u).await?;
    // XEP-0237: a client already at the current version gets an empty
    // result and then only pushes.
    if req.payload.attr("ver") == Some(ver.to_string().as_str()) {
        return Ok(Ok(None));
    }
    let mut q = Element::new("query", NS).with_attr("ver", ver.to_string());
    for item in items(req.server, user).await? {
        if item.record.in_roster {
            q.append_child(item.to_element());
        }
    }
    Ok(Ok(Some(q)))
}

async fn set(req: &IqRequest<'_>, user: &BareJid) -> Result<IqOutcome, StorageError> {
    // RFC 6121 §2.3.3: exactly one item.
    let mut it = req.payload.children().filter(|c| c.is("item", NS));
    let (Some(el), None) = (it.next(), it.next()) else {
        return Ok(Err(StanzaErrorCondition::BadRequest.into()));
    };
    let Some(contact) = el.attr("jid").and_then(|j| BareJid::new(j).ok()) else {
        return Ok(Err(StanzaErrorCondition::BadRequest.into()));
    };
    if contact == *user {
        return Ok(Err(StanzaErrorCondition::NotAllowed.into()));
    }
    if el.attr("subscription") == Some("remove") {
        return remove(req.server, user, &contact).await.map(|_| Ok(None));
    }
    let mut groups: Vec<String> = Vec::new();
    for g in el.children().filter(|c| c.is("group", NS)) {
        let name = g.text();
        // §2.3.3: empty or duplicate groups are errors.
        if name.is_empty() || groups.contains(&name) {
            return Ok(Err(StanzaErrorCondition::BadRequest.into()));
        }
        groups.push(name);
    }
    let existing = item(req.server, user, &contact).await?;
    let joins = !existing.as_ref().is_some_and(|i| i.record.in_roster);
    if joins && roster_full(req.server, user).await? {
        return Ok(Err(StanzaErrorCondition::ResourceConstraint.into()));
    }
    let mut item = existing.unwrap_or_else(|| Item::new(&contact));
    item.record.in_roster = true;
    item.record.name = el.attr("name").filter(|n| !n.is_empty()).map(String::from);
    item.record.groups = groups;
    save_and_push(req.server, user, &item).await?;
    Ok(Ok(None))
}

/// Roster removal (§2.5): cancels subscriptions both ways, then deletes.
async fn remove(server: &Server, user: &BareJid, contact: &BareJid) -> Result<(), StorageError> {
    let Some(item) = item(server, user, contact).await? else {
        return Ok(());
    };
    if item.to() || item.record.ask_out {
        send_subscription(server, user, contact, SubscriptionKind::Unsubscribe).await?;
    }
    if item.from() || item.record.pending_in {
        send_subscription(server, user, contact, SubscriptionKind::Unsubscribed).await?;
    }
    let (d, u) = parts(user);
    let ver = server.store.roster_remove(d, u, contact.as_str()).await?;
    push(
        server,
        user,
        Element::new("item", NS)
            .with_attr("jid", contact.as_str())
            .with_attr("subscription", "remove"),
        ver,
    );
    Ok(())
}

/// Generates a subscription stanza from `user` to `contact`, as if the user
/// had sent it, and processes both sides.
async fn send_subscription(
    server: &Server,
    user: &BareJid,
    contact: &BareJid,
    kind: SubscriptionKind,
) -> Result<(), StorageError> {
    let stanza = Element::new("presence", NS_CLIENT)
        .with_attr("from", user.as_str())
        .with_attr("to", contact.as_str())
        .with_attr("type", kind.as_type());
    let out = outbound(server, user, contact, kind).await?;
    super::presence::finish_outbound(server, user, contact, kind, stanza, out).await
}

/// Presence the user's server sends once an outbound subscription stanza
/// has been routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowUp {
    /// §3.1.5: the contact may now see the user's presence.
    CurrentPresence,
    /// §3.2.3: the contact may no longer see it.
    Unavailable,
}

/// What the user's server does with a subscription stanza the user sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outbound {
    /// Route it on to the contact.
    pub route: bool,
    /// Then send this presence to the contact.
    pub then: Option<FollowUp>,
    /// Refused (nothing changed, nothing routed): the user gets this error.
    pub refused: Option<StanzaErrorCondition>,
}

/// The user's side of a subscription stanza the user sends (RFC 6121
/// §3.1.2, §3.2.2, §3.3.2, §3.4; Appendix A.2).
pub async fn outbound(
    server: &Server,
    user: &BareJid,
    contact: &BareJid,
    kind: SubscriptionKind,
) -> Result<Outbound, StorageError> {
    let existing = item(server, user, contact).await?;
    let mut it = existing.clone().unwrap_or_else(|| Item::new(contact));
    let before = it.clone();
    let route = match kind {
        SubscriptionKind::Subscribe => {
            it.record.in_roster = true;
            if !it.to() {
                it.record.ask_out = true;
            }
            true
        }
        SubscriptionKind::Unsubscribe => {
            let (_, from) = (it.to(), it.from());
            it.set(false, from);
            it.record.ask_out = false;
            true
        }
        SubscriptionKind::Subscribed => {
            if it.record.pending_in {
                let to = it.to();
                it.set(to, true);
                it.record.pending_in = false;
                it.record.approved = false;
                // §3.1.5: an approved requester joins the roster.
                it.record.in_roster = true;
                true
            } else if !it.from() {
                // §3.4: pre-approval of a request not yet made.
                it.record.approved = true;
                it.record.in_roster = true;
                false
            } else {
                false
            }
        }
        SubscriptionKind::Unsubscribed => {
            let had = it.from() || it.record.pending_in || it.record.approved;
            let to = it.to();
            it.set(to, false);
            it.record.pending_in = false;
            it.record.approved = false;
            had
        }
    };
    let joins = it.record.in_roster && !existing.as_ref().is_some_and(|e| e.record.in_roster);
    if joins && roster_full(server, user).await? {
        return Ok(Outbound {
            route: false,
            then: None,
            refused: Some(StanzaErrorCondition::ResourceConstraint),
        });
    }
    if it != before || existing.is_none() && it.record.in_roster {
        if it.is_empty_request_row() {
            // A request-only row with nothing left to carry.
            let (d, u) = parts(user);
            server.store.roster_remove(d, u, contact.as_str()).await?;
        } else {
            save_and_push(server, user, &it).await?;
        }
    }
    let then = match kind {
        SubscriptionKind::Subscribed if route => Some(FollowUp::CurrentPresence),
        SubscriptionKind::Unsubscribed if before.from() => Some(FollowUp::Unavailable),
        _ => None,
    };
    Ok(Outbound {
        route,
        then,
        refused: None,
    })
}

/// What to do with an inbound subscription stanza for a local user.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Deliver it to the user's available resources.
    Deliver,
    /// Consume it silently.
    Drop,
    /// Consume it and answer `subscribed` on the user's behalf.
    AutoApprove,
    /// Refuse it: the sender gets this error back.
    Refuse(StanzaErrorCondition),
}

/// The user's side of a subscription stanza arriving from `contact`
/// (RFC 6121 §3.1.3, §3.2.3, §3.3.3; Appendix A.3).
pub async fn inbound(
    server: &Server,
    user: &BareJid,
    contact: &BareJid,
    kind: SubscriptionKind,
    stanza: &Element,
) -> Result<Inbound, StorageError> {
    let existing = item(server, user, contact).await?;
    let mut it = existing.clone().unwrap_or_else(|| {
        let mut i = Item::new(contact);
        i.record.in_roster = false;
        i
    });
    let before = it.clone();
    let outcome = match kind {
        SubscriptionKind::Subscribe => {
            if it.from() {
                Inbound::AutoApprove
            } else if it.record.approved {
                let to = it.to();
                it.set(to, true);
                it.record.approved = false;
                Inbound::AutoApprove
            } else if it.record.pending_in {
                Inbound::Drop
            } else {
                // A new request: kept in short form, within the user's cap
                // on waiting requests — the one number any stranger on the
                // network can raise.
                it.record.pending_in = true;
                let limits = &server.config().limits;
                let request = request_of(stanza, limits.max_subscription_text);
                let (d, u) = parts(user);
                return match server
                    .store
                    .roster_put_request(
                        d,
                        u,
                        &it.record,
                        &request,
                        limits.max_pending_subscriptions,
                    )
                    .await?
                {
                    Some(ver) => {
                        if it.record.in_roster {
                            push(server, user, it.to_element(), ver);
                        }
                        Ok(Inbound::Deliver)
                    }
                    None => Ok(Inbound::Refuse(StanzaErrorCondition::ResourceConstraint)),
                };
            }
        }
        SubscriptionKind::Subscribed => {
            if it.record.ask_out {
                let from = it.from();
                it.set(true, from);
                it.record.ask_out = false;
                Inbound::Deliver
            } else {
                Inbound::Drop
            }
        }
        SubscriptionKind::Unsubscribe => {
            if it.from() || it.record.pending_in {
                let to = it.to();
                it.set(to, false);
                it.record.pending_in = false;
                Inbound::Deliver
            } else {
                Inbound::Drop
            }
        }
        SubscriptionKind::Unsubscribed => {
            if it.to() || it.record.ask_out {
                let from = it.from();
                it.set(false, from);
                it.record.ask_out = false;
                Inbound::Deliver
            } else {
                Inbound::Drop
            }
        }
    };
    if it != before {
        if it.is_empty_request_row() {
            if existing.is_some() {
                let (d, u) = parts(user);
                server.store.roster_remove(d, u, contact.as_str()).await?;
            }
        } else {
            save_and_push(server, user, &it).await?;
        }
    }
    Ok(outcome)
}

/// Does `user`'s roster let `requester` see the user's presence?
pub async fn is_subscribed_from(
    server: &Server,
    user: &BareJid,
    requester: &BareJid,
) -> Result<bool, StorageError> {
    Ok(item(server, user, requester)
        .await?
        .is_some_and(|i| i.from()))
}

/// Has the user's roster reached `max_roster_items`?
async fn roster_full(server: &Server, user: &BareJid) -> Result<bool, StorageError> {
    let (d, u) = parts(user);
    let n = server.store.roster_count(d, u).await?;
    Ok(n >= i64::from(server.config().limits.max_roster_items))
}

/// What is kept of a subscribe stanza: its XEP-0172 nick and its status
/// text, each cut to `max` bytes. Everything else a sender put in it (up to
/// a whole stanza's worth) is not the user's business until they log in,
/// and would otherwise be stored for as long as the request waits.
pub fn request_of(stanza: &Element, max: usize) -> SubscriptionRequest {
    let text = |e: Option<&Element>| e.map(|e| capped(&e.text(), max)).filter(|t| !t.is_empty());
    SubscriptionRequest {
        nick: text(stanza.get_child("nick", NS_NICK)),
        status: text(stanza.get_child("status", NS_CLIENT)),
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn capped(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The subscribe presence a stored request is delivered as.
pub fn request_presence(contact: &str, user: &BareJid, request: &SubscriptionRequest) -> Element {
    let mut p = Element::new("presence", NS_CLIENT)
        .with_attr("from", contact)
        .with_attr("to", user.as_str())
        .with_attr("type", "subscribe");
    if let Some(status) = &request.status {
        p.append_child(Element::new("status", NS_CLIENT).with_text(status.as_str()));
    }
    if let Some(nick) = &request.nick {
        p.append_child(Element::new("nick", NS_NICK).with_text(nick.as_str()));
    }
    p
}

/// The requests waiting for the user's answer (RFC 6121 §3.1.3), as the
/// presence stanzas to deliver at login. Requests stored whole by an older
/// version are converted to the short form on the way.
pub async fn pending_requests(
    server: &Server,
    user: &BareJid,
) -> Result<Vec<Element>, StorageError> {
    let (d, u) = parts(user);
    let limits = &server.config().limits;
    let mut out = Vec::new();
    for pending in server.store.roster_pending_requests(d, u).await? {
        let request = match &pending.legacy_stanza {
            Some(xml) => {
                let request = super::xml_from_storage(xml, limits.max_depth)
                    .and_then(|els| els.into_iter().next())
                    .map(|stanza| request_of(&stanza, limits.max_subscription_text))
                    .unwrap_or_default();
                server
                    .store
                    .roster_request_convert(d, u, &pending.contact, &request)
                    .await?;
                request
            }
            None => pending.request,
        };
        out.push(request_presence(&pending.contact, user, &request));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keeps_nick_and_status_only_and_caps_them() {
        let stanza = Element::new("presence", NS_CLIENT)
            .with_attr("type", "subscribe")
            .with_child(Element::new("status", NS_CLIENT).with_text("héllo".repeat(100)))
            .with_child(Element::new("nick", NS_NICK).with_text("Juliet"))
            .with_child(Element::new("junk", "urn:x").with_text("x".repeat(10_000)));
        let r = request_of(&stanza, 10);
        assert_eq!(r.nick.as_deref(), Some("Juliet"));
        assert_eq!(r.status.as_deref(), Some("héllohél"));
        // 8 bytes would split the second "é": cut before it.
        let r = request_of(&stanza, 8);
        assert_eq!(r.status.as_deref(), Some("hélloh"));
        let p = request_presence("romeo@a.test", &BareJid::new("juliet@b.test").unwrap(), &r);
        assert!(p.get_child("junk", "urn:x").is_none());
        assert_eq!(p.attr("type"), Some("subscribe"));
        assert_eq!(p.attr("from"), Some("romeo@a.test"));
        assert_eq!(
            p.get_child("nick", NS_NICK).map(|n| n.text()).as_deref(),
            Some("Juliet")
        );
    }

    #[test]
    fn empty_texts_are_not_kept() {
        let stanza = Element::new("presence", NS_CLIENT)
            .with_child(Element::new("status", NS_CLIENT))
            .with_child(Element::new("nick", NS_NICK));
        assert_eq!(request_of(&stanza, 100), SubscriptionRequest::default());
        assert_eq!(capped("abc", 0), "");
        assert_eq!(capped("aé", 2), "a");
        assert_eq!(capped("aé", 3), "aé");
    }
}
