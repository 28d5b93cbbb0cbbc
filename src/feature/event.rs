//! The events features subscribe to. Each carries typed borrowed data; a
//! subscriber answers with a [`Verdict`]. Adding an event means a variant
//! here, its kind in [`EventKind`], and one `fire` where it happens.

use std::net::IpAddr;
use std::sync::Arc;

use jid::{BareJid, FullJid, Jid};

use super::Extensions;
use crate::router::Origin;
use crate::sessions::{Departed, Kept, OutStanza};
use crate::stanza::{StanzaError, StanzaKind};
use crate::xml::Element;

/// Whether later subscribers see the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not handled here (or handled, and others may act too).
    Continue,
    /// Handled: later subscribers and the default action are skipped.
    Stop,
}

/// The kinds of [`Event`], for subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum EventKind {
    PreRoute,
    Presence,
    MessageSent,
    MessageDelivered,
    Undeliverable,
    PreAuthIq,
    SessionElement,
    SessionBound,
    SessionResumed,
    SessionParked,
    SessionAvailable,
    SessionEnded,
    AccountDeleted,
    Acknowledged,
    SubscriptionRequest,
    IqSetDone,
    LocalDelivery,
    Unreached,
    KeptForLater,
    ForwardedHere,
    /// Not an [`Event`]: subscribers' `Feature::outbound` runs for every
    /// stanza about to be written to a client (kept synchronous: it is on
    /// the hot path).
    Outbound,
}

impl EventKind {
    /// Every kind, in discriminant order.
    pub const ALL: [EventKind; 21] = [
        EventKind::PreRoute,
        EventKind::Presence,
        EventKind::MessageSent,
        EventKind::MessageDelivered,
        EventKind::Undeliverable,
        EventKind::PreAuthIq,
        EventKind::SessionElement,
        EventKind::SessionBound,
        EventKind::SessionResumed,
        EventKind::SessionParked,
        EventKind::SessionAvailable,
        EventKind::SessionEnded,
        EventKind::AccountDeleted,
        EventKind::Acknowledged,
        EventKind::SubscriptionRequest,
        EventKind::IqSetDone,
        EventKind::LocalDelivery,
        EventKind::Unreached,
        EventKind::KeptForLater,
        EventKind::ForwardedHere,
        EventKind::Outbound,
    ];
}

/// Something that happened, with what a feature needs to act on it.
pub enum Event<'a> {
    /// A stanza with a `to`, its `from` checked, before the route is
    /// chosen. Stop = the feature dealt with it (dropped or answered).
    PreRoute {
        origin: Origin<'a>,
        kind: StanzaKind,
        to: &'a Jid,
        stanza: &'a Element,
    },
    /// A presence stanza past the filters, for the presence feature: from
    /// a local session (`to` None for a broadcast), or from a component or
    /// a remote server to a local JID. A feature ordered before the
    /// presence feature may change it (the avatar hash of XEP-0398).
    Presence {
        origin: Origin<'a>,
        to: Option<&'a Jid>,
        stanza: &'a mut Element,
    },
    /// A message a local session sent, after it was routed (carbons' sent
    /// copies, archiving).
    MessageSent {
        from: &'a FullJid,
        to: &'a Jid,
        stanza: &'a Element,
    },
    /// A message handed to resources of a local `account` (`resources`
    /// those that got it).
    MessageDelivered {
        account: &'a BareJid,
        resources: &'a [FullJid],
        stanza: &'a Element,
    },
    /// A message for a local account that no resource can take. A
    /// subscriber that keeps it (offline storage) stops the event; one that
    /// cannot sets `refusal`, the error the sender gets.
    Undeliverable {
        origin: Origin<'a>,
        to: &'a BareJid,
        stanza: &'a Element,
        refusal: &'a mut Option<StanzaError>,
    },
    /// An IQ on a client stream before authentication (registration).
    /// The subscriber that answers sets `answer` and stops the event;
    /// `connection` holds per-connection state across such IQs.
    PreAuthIq {
        domain: &'a str,
        peer: IpAddr,
        iq: &'a Element,
        connection: &'a mut Extensions,
        answer: &'a mut Option<Result<Option<Element>, StanzaError>>,
    },
    /// A top-level element on a bound client stream that is not a stanza
    /// and not stream management's (client state, …). The subscriber that
    /// takes it stops the event; it may keep state in the session's
    /// extension data (`SessionRegistry::extensions`), write `replies`,
    /// and `release` stanzas it held back (`Feature::outbound`), which are
    /// written in order. Untaken, the element ends the stream with
    /// `unsupported-stanza-type`.
    SessionElement {
        jid: &'a FullJid,
        element: &'a Element,
        replies: &'a mut Vec<Element>,
        release: &'a mut Vec<Arc<OutStanza>>,
    },
    /// A resource was bound.
    SessionBound { jid: &'a FullJid },
    /// A session was resumed on a new stream (XEP-0198), after stream
    /// management sent again what the client had not acknowledged. A
    /// feature whose per-stream state starts afresh (client state) resets
    /// it here; `release` are stanzas it held back, written next, in order.
    SessionResumed {
        jid: &'a FullJid,
        release: &'a mut Vec<Arc<OutStanza>>,
    },
    /// A session's connection went away and the session waits for
    /// resumption (XEP-0198); `unacknowledged` are the stanzas written to
    /// the lost connection that the client never acknowledged (push
    /// notifications tell of them: the client may never have seen them).
    SessionParked {
        jid: &'a FullJid,
        unacknowledged: &'a [Arc<OutStanza>],
    },
    /// A session sent available presence; `initial` the first time.
    SessionAvailable { jid: &'a FullJid, initial: bool },
    /// A session ended and was unbound: what it left behind.
    SessionEnded {
        jid: &'a FullJid,
        departed: &'a Departed,
    },
    /// An account was deleted; each feature forgets what it kept for it.
    AccountDeleted { user: &'a BareJid },
    /// A subscription request from `contact` was kept for local `user`
    /// (pending, RFC 6121 §3.1.3) and handed to the resources available.
    SubscriptionRequest {
        user: &'a BareJid,
        contact: &'a BareJid,
    },
    /// A client acknowledged (stream management) stanzas read from offline
    /// storage, up to row `stored_through`: they are delivered now.
    Acknowledged {
        jid: &'a FullJid,
        stored_through: i64,
    },
    /// An IQ set was answered with a result (the reply is queued): a
    /// feature that keeps one store in step with another (vCard photo and
    /// avatar nodes, private bookmarks and PEP bookmarks) follows up here.
    IqSetDone {
        from: &'a Jid,
        target: crate::feature::iq::IqTarget,
        iq: &'a Element,
        payload: &'a Element,
    },
    /// A message for the local account `to`, past the routing checks,
    /// before it is handed to its resources or kept for later: the one
    /// place a feature may change what the account gets (the archive's
    /// stanza-id). Fired only when someone subscribes. The verdict only
    /// ends the event; the message goes on either way.
    LocalDelivery {
        origin: Origin<'a>,
        to: &'a BareJid,
        stanza: &'a mut Element,
        /// `stanza` as its recipient gets it (serialized with
        /// `jabber:client` as the default namespace), when a feature
        /// had the bytes at hand: the router then does not serialize it
        /// again. A feature that changes `stanza` sets it anew or clears
        /// it; debug builds check it against `stanza` on delivery.
        serialized: &'a mut Option<bytes::Bytes>,
    },
    /// A message for the local account `to` reached none of its
    /// resources, and what became of it is settled: offline storage kept
    /// it (`stored`), or the sender got an error (a full offline store, a
    /// group chat message for a resource that is gone). Push
    /// notifications follow this outcome rather than the attempt.
    Unreached {
        origin: Origin<'a>,
        to: &'a BareJid,
        stanza: &'a Element,
        stored: bool,
    },
    /// Another node of the cluster committed `what` to storage for the
    /// next available session of `user`, who has an available session
    /// here that may have read that storage before the commit (the other
    /// node did not know of it yet): what waits is handed over again.
    KeptForLater { user: &'a BareJid, what: Kept },
    /// Another node of the cluster routed `stanza` to the local session
    /// `jid`, which has it in its queue now. That node fired the routing
    /// events (`MessageDelivered`: carbons, its push decision) already;
    /// only what depends on the session's state here remains (push for a
    /// session waiting for resumption).
    ForwardedHere {
        jid: &'a FullJid,
        stanza: &'a OutStanza,
    },
}

impl Event<'_> {
    /// This event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::PreRoute { .. } => EventKind::PreRoute,
            Event::Presence { .. } => EventKind::Presence,
            Event::MessageSent { .. } => EventKind::MessageSent,
            Event::MessageDelivered { .. } => EventKind::MessageDelivered,
            Event::Undeliverable { .. } => EventKind::Undeliverable,
            Event::PreAuthIq { .. } => EventKind::PreAuthIq,
            Event::SessionElement { .. } => EventKind::SessionElement,
            Event::SessionBound { .. } => EventKind::SessionBound,
            Event::SessionResumed { .. } => EventKind::SessionResumed,
            Event::SessionParked { .. } => EventKind::SessionParked,
            Event::SessionAvailable { .. } => EventKind::SessionAvailable,
            Event::SessionEnded { .. } => EventKind::SessionEnded,
            Event::AccountDeleted { .. } => EventKind::AccountDeleted,
            Event::Acknowledged { .. } => EventKind::Acknowledged,
            Event::SubscriptionRequest { .. } => EventKind::SubscriptionRequest,
            Event::IqSetDone { .. } => EventKind::IqSetDone,
            Event::LocalDelivery { .. } => EventKind::LocalDelivery,
            Event::Unreached { .. } => EventKind::Unreached,
            Event::KeptForLater { .. } => EventKind::KeptForLater,
            Event::ForwardedHere { .. } => EventKind::ForwardedHere,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_kind_at_its_index() {
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }
}
