//! Message Archive Management (XEP-0313 urn:xmpp:mam:2 and #extended),
//! unique stanza ids (XEP-0359), result paging (XEP-0059) and archiving
//! preferences (XEP-0441).
//!
//! A message for a local account passes `Event::LocalDelivery` before any
//! resource or offline storage gets it: a `<stanza-id/>` claiming to be by
//! the account is removed, and an archivable message (`eligible`) the
//! account's preferences keep is archived (its rows handed to `writer`,
//! which commits in the background), and gets the archive's
//! `<stanza-id/>`. Offline copies are taken after that, so they carry the
//! same id. A local sender's copy goes in the same hand-over; a message
//! from a local user to anywhere else is archived on `MessageSent`.
//! Stream management acknowledges a stanza only after the writer committed
//! what was handed over before (`Feature::flushed`).

pub mod cleanup;
mod delivered;
pub mod eligible;
mod envelope;
pub mod id;
pub mod prefs;
pub mod query;
mod writer;

use crate::stanza::bare::Bare;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use jid::{BareJid, FullJid, Jid};

use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::modules::{IqFuture, IqRequest, IqTarget};
use crate::router::Origin;
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::storage::{ArchiveKind, ArchiveOwner, RowRef};
use crate::xml::Element;

pub use writer::Writer;

pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_MAM_EXTENDED: &str = "urn:xmpp:mam:2#extended";

/// The archive feature: ids, preferences and the writer task.
#[derive(Debug, Default)]
pub struct Mam {
    ids: id::IdSource,
    prefs: prefs::PrefsCache,
    writer: OnceLock<Writer>,
}

/// The archive owner of a user.
/// The resource of a JID as a stanza's address names it, normalized as a
/// parsed JID's is. Most resources are printable ASCII, which the
/// resourcepart's normalization (PRECIS OpaqueString) leaves as it is: no
/// parse for those.
fn resource_of(jid: &str) -> Cow<'_, str> {
    match jid.split_once('/') {
        None => Cow::Borrowed(""),
        Some((_, r)) if !r.is_empty() && r.bytes().all(|b| (0x21..0x7f).contains(&b)) => {
            Cow::Borrowed(r)
        }
        Some(_) => Cow::Owned(
            Jid::new(jid)
                .ok()
                .and_then(|j| j.resource().map(|r| r.as_str().to_string()))
                .unwrap_or_default(),
        ),
    }
}

/// A row of `user`'s archive with its owner filled in (the rest to fill).
fn owner_ref(user: &BareJid) -> RowRef<'_> {
    RowRef {
        kind: ArchiveKind::User,
        domain: user.domain().as_str(),
        username: user.node().map(|n| n.as_str()).unwrap_or_default(),
        peer: "",
        id: "",
        ts: 0,
        resource: "",
        outgoing: false,
        payload: "",
        own_resource: None,
    }
}

pub fn owner_of(user: &BareJid) -> ArchiveOwner {
    ArchiveOwner {
        kind: ArchiveKind::User,
        domain: user.domain().as_str().to_string(),
        username: user
            .node()
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
    }
}

impl Feature for Mam {
    fn name(&self) -> &'static str {
        "mam"
    }

    fn enabled(&self, config: &crate::config::Config) -> bool {
        config.mam.enabled
    }

    fn xeps(&self) -> &'static [u16] {
        &[313, 359, 59, 441]
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &[NS_MAM, NS_MAM_EXTENDED],
            account: &[NS_MAM, NS_MAM_EXTENDED, eligible::NS_SID],
        }
    }

    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[NS_MAM]
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[
            (EventKind::LocalDelivery, 0),
            (EventKind::MessageSent, 0),
            (EventKind::AccountDeleted, 0),
        ]
    }

    fn flushed(&self) -> Option<HookFuture<'_>> {
        let writer = self.writer.get()?;
        Some(Box::pin(async move {
            writer.flushed().await;
            Verdict::Continue
        }))
    }

    fn start(&self, server: &Arc<Server>) {
        let _ = self.writer.set(Writer::spawn(server));
        cleanup::spawn(server);
    }

    fn on_event_now(&self, server: &Server, event: &mut Event<'_>) -> Option<Verdict> {
        match event {
            Event::LocalDelivery { to, stanza, .. } => {
                // Removed whether or not this one is archived: an id by
                // the account's archive comes from the archive only.
                eligible::strip_stanza_ids(stanza, to.as_str());
                (!eligible::archivable(stanza)).then_some(Verdict::Continue)
            }
            Event::MessageSent { to, stanza, .. } => {
                // To a local account, LocalDelivery archived both sides.
                let local = to.node().is_some() && server.is_local_domain(to.domain().as_str());
                (local || !eligible::archivable(stanza)).then_some(Verdict::Continue)
            }
            Event::AccountDeleted { user } => {
                self.prefs.forget(user);
                Some(Verdict::Continue)
            }
            _ => Some(Verdict::Continue),
        }
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            match event {
                Event::LocalDelivery {
                    origin,
                    to,
                    stanza,
                    serialized,
                } => {
                    **serialized = self.archive_local(server, *origin, to, stanza).await;
                }
                Event::MessageSent { from, to, stanza } => {
                    self.archive_outgoing(server, from, to, stanza).await;
                }
                _ => {}
            }
            Verdict::Continue
        })
    }

    fn handle_iq<'a>(&'a self, req: &'a IqRequest<'a>) -> IqFuture<'a> {
        Box::pin(self.iq(req))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Mam {
    /// Does `user`'s archive keep messages with `peer` (bare)?
    async fn keeps(&self, server: &Server, user: &BareJid, peer: &str) -> bool {
        let decision = match self.prefs.decide(server, user, peer).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "reading archive preferences");
                return false;
            }
        };
        match decision {
            prefs::Decision::Archive => true,
            prefs::Decision::Skip => false,
            prefs::Decision::IfInRoster => {
                let Ok(peer) = BareJid::new(peer) else {
                    return false;
                };
                match crate::modules::roster::item(server, user, &peer).await {
                    Ok(item) => item.is_some_and(|i| i.record.in_roster),
                    Err(e) => {
                        tracing::error!(error = %e, "reading the roster for archiving");
                        false
                    }
                }
            }
        }
    }

    /// Archives a message for the local account `to`, and stamps it with
    /// the archive's id; from a local user, in the sender's archive too,
    /// in the same commit (one commit per message, not two). Returns the
    /// stanza as its recipient gets it, made from the archive's bytes
    /// (`delivered`), when it could be.
    async fn archive_local(
        &self,
        server: &Server,
        origin: Origin<'_>,
        to: &BareJid,
        stanza: &mut Element,
    ) -> Option<bytes::Bytes> {
        let from = origin.sender();
        let peer = from.bare();
        // Which archives keep it: the recipient's, and (from a local
        // session) the sender's. A message to oneself is one message,
        // archived once; a session origin is the sender, `peer`.
        let incoming =
            self.account_exists(server, to).await && self.keeps(server, to, peer.as_str()).await;
        let sender = origin.session().map(|_| &peer).filter(|u| *u != to);
        let outgoing = match sender {
            Some(user) => self.keeps(server, user, to.as_str()).await,
            None => false,
        };
        if !incoming && !outgoing {
            return None;
        }
        // Both rows hold the same stanza, serialized once (before the
        // stanza-id is added: the sender's copy must not carry it), without
        // its envelope where the rows name it (envelope.rs).
        let from_resource = from.resource().map(|r| r.as_str()).unwrap_or_default();
        let to_resource = resource_of(stanza.attr("to").unwrap_or_default());
        let written = envelope::write(
            stanza,
            peer.as_str(),
            from_resource,
            to.as_str(),
            &to_resource,
        );
        let payload = written.payload.as_str();
        let mut ids = [None, None];
        let mut rows: [Option<RowRef<'_>>; 2] = [None, None];
        if incoming {
            ids[0] = Some(self.ids.next_id());
        }
        if outgoing {
            ids[1] = Some(self.ids.next_id());
        }
        if let Some((id, ts)) = &ids[0] {
            rows[0] = Some(RowRef {
                peer: peer.as_str(),
                id: id.as_str(),
                ts: *ts,
                resource: from_resource,
                outgoing: false,
                payload,
                own_resource: written.cut.map(|c| c.to_resource),
                ..owner_ref(to)
            });
        }
        if let (Some((id, ts)), Some(user)) = (&ids[1], sender) {
            rows[1] = Some(RowRef {
                peer: to.as_str(),
                id: id.as_str(),
                ts: *ts,
                resource: &to_resource,
                outgoing: true,
                payload,
                own_resource: written.cut.map(|c| c.from_resource),
                ..owner_ref(user)
            });
        }
        let rows: smallvec::SmallVec<[RowRef<'_>; 2]> = rows.into_iter().flatten().collect();
        self.write(server, &rows).await;
        let stamp = ids[0]
            .as_ref()
            .map(|(id, _)| eligible::stanza_id(to.as_str(), id.as_str()));
        // What the recipient gets, from the bytes at hand.
        let serialized = match written.cut {
            Some(cut) => delivered::from_kept(payload, cut.start_tag, stanza, stamp.as_ref()),
            None => delivered::from_stored(payload, stanza, stamp.as_ref()),
        };
        // The rows and the cut borrow the stanza; done with before it changes.
        drop(rows);
        drop(written);
        drop(to_resource);
        if let Some(stamp) = stamp {
            stanza.append_child(stamp);
        }
        serialized
    }

    /// Nothing is kept for an account that does not exist (a remote
    /// server naming users at random); one with a session exists.
    async fn account_exists(&self, server: &Server, user: &BareJid) -> bool {
        if server.sessions.has_available(user) {
            return true;
        }
        let (d, u) = (
            user.domain().as_str(),
            user.node().map(|n| n.as_str()).unwrap_or_default(),
        );
        server.store.account_exists(d, u).await.unwrap_or(false)
    }

    /// Archives a message a local user sent, in their own archive.
    async fn archive_outgoing(&self, server: &Server, from: &FullJid, to: &Jid, stanza: &Element) {
        let user = from.bare();
        let peer = to.bare();
        if !self.keeps(server, &user, peer.as_str()).await {
            return;
        }
        // The recipient's archive id, when it is ours, is not the sender's.
        let mut copy = stanza.clone();
        eligible::strip_stanza_ids(&mut copy, peer.as_str());
        let (id, ts) = self.ids.next();
        let payload = crate::modules::xml_for_storage([&copy]);
        let row = RowRef {
            peer: peer.as_str(),
            id: &id,
            ts,
            resource: to.resource().map(|r| r.as_str()).unwrap_or_default(),
            outgoing: true,
            payload: &payload,
            ..owner_ref(&user)
        };
        self.write(server, &[row]).await;
    }

    async fn write(&self, server: &Server, rows: &[RowRef<'_>]) {
        match self.writer.get() {
            Some(w) => w.write(rows).await,
            // A server that was never started (embedded, tests): directly.
            None => writer::write_direct(&server.store, rows).await,
        }
    }

    async fn iq(&self, req: &IqRequest<'_>) -> Result<Option<Element>, StanzaError> {
        match req.target {
            IqTarget::Account { own: true } => {}
            // Another user's archive is theirs alone.
            IqTarget::Account { own: false } => return Err(StanzaErrorCondition::Forbidden.into()),
            IqTarget::Server => return Err(StanzaErrorCondition::ServiceUnavailable.into()),
        }
        let Ok(requester) = req.from.clone().try_into_full() else {
            return Err(StanzaErrorCondition::Forbidden.into());
        };
        let user = requester.bare();
        let server = req.server;
        let config = &server.config().mam;
        match (req.payload.name(), req.is_set) {
            ("query", false) => Ok(Some(query::form())),
            ("query", true) => {
                // Read what this account was just sent: rows handed to the
                // writer before the query are committed first.
                if let Some(w) = self.writer.get() {
                    w.flushed().await;
                }
                let q = query::parse(
                    req.payload,
                    config.default_page,
                    config.max_page,
                    config.max_ids,
                )?;
                let answer = query::run(server, &owner_of(&user), &q).await?;
                let depth = server.config().limits.max_depth;
                for item in &answer.items {
                    let Some(msg) = query::result_message(
                        &user,
                        &requester,
                        q.query_id.as_deref(),
                        item,
                        depth,
                    ) else {
                        tracing::warn!(id = %item.id, "an archived message does not parse; skipped");
                        continue;
                    };
                    // Queued before the IQ result, so read before it; a
                    // client not reading its results fills its own queue.
                    if crate::router::deliver_local(server, &requester, &msg).is_err() {
                        return Err(StanzaError::with_text(
                            StanzaErrorCondition::ResourceConstraint,
                            "ask for smaller pages",
                        ));
                    }
                }
                Ok(Some(answer.fin))
            }
            ("metadata", false) => Ok(Some(query::metadata(server, &owner_of(&user)).await?)),
            ("prefs", false) => {
                let p = self.prefs.get(server, &user).await.map_err(internal)?;
                Ok(Some(p.to_element()))
            }
            ("prefs", true) => {
                let p = prefs::Prefs::from_element(req.payload, config.max_pref_jids)?;
                let answer = p.to_element();
                self.prefs.set(server, &user, p).await.map_err(internal)?;
                Ok(Some(answer))
            }
            _ => Err(StanzaErrorCondition::FeatureNotImplemented.into()),
        }
    }
}

fn internal(e: crate::storage::StorageError) -> StanzaError {
    tracing::error!(error = %e, "archive preferences");
    StanzaErrorCondition::InternalServerError.into()
}

#[cfg(test)]
mod tests {
    use super::resource_of;

    #[test]
    fn a_resource_is_read_as_a_parsed_jid_has_it() {
        assert_eq!(resource_of("bob@example.org"), "");
        assert_eq!(resource_of("bob@example.org/phone"), "phone");
        assert_eq!(resource_of("example.org/a/b"), "a/b");
        assert_eq!(resource_of("bob@example.org/"), "");
        // Not plain ASCII: as the JID parser normalizes it.
        assert_eq!(resource_of("bob@example.org/my phone"), "my phone");
        assert_eq!(resource_of("bob@example.org/Te\u{301}l"), "T\u{e9}l");
    }
}
