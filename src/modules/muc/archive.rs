//! Room archives (XEP-0313 on the room's JID): every group chat message
//! with a body is kept in the shared archive table as owner kind `Room`
//! (service domain, room name), under the id the room stamped on it as
//! its stanza-id, so the two are the same (XEP-0359). Writes go through
//! the archive's batching writer; queries run beside the service's task
//! (they wait on the database) and deliver their results themselves.
//! The room's every use of the archive is in this file.

use crate::stanza::bare::Bare;
use std::sync::Arc;

use jid::{BareJid, FullJid, Jid};

use super::room::{Affiliation, Room};
use tokio::sync::{mpsc, oneshot};

use crate::modules::mam::{query, NS_MAM};
use crate::server::Server;
use crate::stanza::{iq_result, StanzaError, StanzaErrorCondition};
use crate::storage::{ArchiveKind, ArchiveOwner, ArchiveRow};
use crate::xml::Element;

/// Most archive queries of one service running at once; beyond it a
/// query is answered `resource-constraint` (wait).
const MAX_QUERIES: usize = 16;

/// What the writer task is handed: rows, or a wish to know when what
/// came before is committed.
enum Job {
    Rows(Vec<ArchiveRow>),
    Flushed(oneshot::Sender<()>),
}

/// The service's handle on the archive: a writer task that batches what
/// waits into one transaction ([mam] queue and batch), so the service's
/// task never waits on the disk for a message.
pub struct RoomArchive {
    tx: mpsc::Sender<Job>,
    queries: Arc<tokio::sync::Semaphore>,
}

impl RoomArchive {
    pub fn new(server: &Arc<Server>) -> RoomArchive {
        let (tx, rx) = mpsc::channel(server.config().mam.queue.max(1));
        let batch = server.config().mam.batch.max(1);
        server
            .background
            .spawn(write_rows(server.store.clone(), rx, batch));
        RoomArchive {
            tx,
            queries: Arc::new(tokio::sync::Semaphore::new(MAX_QUERIES)),
        }
    }

    /// Hands rows to the writer, waiting only for room in its queue (the
    /// service slows down rather than drop history).
    pub async fn write(&self, rows: Vec<ArchiveRow>) {
        if !rows.is_empty() {
            let _ = self.tx.send(Job::Rows(rows)).await;
        }
    }

    /// Resolves once every row handed over before is committed.
    pub(super) async fn flushed(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Flushed(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The writer task: what waits goes into one transaction; waiters on a
/// flush are told after the commit that covers what preceded them. It
/// ends when the service drops its handle (after shutdown).
async fn write_rows(store: crate::storage::Store, mut rx: mpsc::Receiver<Job>, batch: usize) {
    while let Some(first) = rx.recv().await {
        let mut rows = Vec::new();
        let mut waiters = Vec::new();
        let mut job = Some(first);
        while let Some(j) = job.take() {
            match j {
                Job::Rows(r) => rows.extend(r),
                Job::Flushed(w) => waiters.push(w),
            }
            if rows.len() < batch {
                job = rx.try_recv().ok();
            }
        }
        if let Err(e) = store.archive_insert(&rows).await {
            tracing::error!(error = %e, rows = rows.len(), "muc: archiving room messages");
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// A room's archive owner.
pub fn owner(room: &BareJid) -> ArchiveOwner {
    ArchiveOwner {
        kind: ArchiveKind::Room,
        domain: room.domain().as_str().to_string(),
        username: room
            .node()
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
    }
}

/// The row of a broadcast message (`stanza` as occupants got it, without
/// `to`): `with` searches match the occupant's room JID.
pub fn row(room: &BareJid, nick: &str, id: String, ts: i64, stanza: &Element) -> ArchiveRow {
    ArchiveRow {
        owner: owner(room),
        id,
        ts,
        peer: room.as_str().to_string(),
        resource: nick.to_string(),
        outgoing: false,
        payload: crate::modules::xml_for_storage([stanza]).into(),
    }
}

/// Who may read a room's archive: anyone not banned from an open room;
/// members and up in a members-only one (§XEP-0313 6.1.2 leaves it to
/// the room's access rules).
pub fn may_query(room: &Room, from: &FullJid) -> bool {
    let aff = room.affiliation(&from.bare());
    if room.config.members_only {
        aff >= Affiliation::Member
    } else {
        aff != Affiliation::Outcast
    }
}

/// Answers a `urn:xmpp:mam:2` IQ to a room: the form at once; a query on
/// a task of its own, after everything handed to the writer before it
/// is committed (so a client finds what it was just sent).
pub fn answer(
    server: &Arc<Server>,
    archive: &Arc<RoomArchive>,
    room: &BareJid,
    from: &FullJid,
    iq: &Element,
    payload: &Element,
) {
    let is_set = iq.attr("type") == Some("set");
    match (payload.name(), is_set) {
        ("query", false) => reply(server, iq, Ok(Some(query::form()))),
        ("query", true) => {
            let Ok(permit) = archive.queries.clone().try_acquire_owned() else {
                return reply(
                    server,
                    iq,
                    Err(StanzaError::with_text(
                        StanzaErrorCondition::ResourceConstraint,
                        "too many archive queries",
                    )),
                );
            };
            let config = &server.config().mam;
            let q = match query::parse(
                payload,
                config.default_page,
                config.max_page,
                config.max_ids,
            ) {
                Ok(q) => q,
                Err(e) => return reply(server, iq, Err(e)),
            };
            let (server, archive, room, from, iq) = (
                server.clone(),
                archive.clone(),
                room.clone(),
                from.clone(),
                iq.clone(),
            );
            server.clone().background.spawn(async move {
                let _permit = permit;
                archive.flushed().await;
                let outcome = match query::run(&server, &owner(&room), &q).await {
                    Ok(answer) => {
                        let depth = server.config().limits.max_depth;
                        let mut full = false;
                        for item in &answer.items {
                            let Some(msg) = query::result_message(
                                &room,
                                &from,
                                q.query_id.as_deref(),
                                item,
                                depth,
                            ) else {
                                continue;
                            };
                            if crate::router::deliver(&server, &msg, &Jid::from(from.clone()))
                                .is_err()
                            {
                                full = true;
                                break;
                            }
                        }
                        if full {
                            Err(StanzaError::with_text(
                                StanzaErrorCondition::ResourceConstraint,
                                "ask for smaller pages",
                            ))
                        } else {
                            Ok(Some(answer.fin))
                        }
                    }
                    Err(e) => Err(e),
                };
                reply(&server, &iq, outcome);
            });
        }
        ("metadata", false) => {
            let (server, room, iq) = (server.clone(), room.clone(), iq.clone());
            let archive = archive.clone();
            server.clone().background.spawn(async move {
                archive.flushed().await;
                let outcome = query::metadata(&server, &owner(&room)).await.map(Some);
                reply(&server, &iq, outcome);
            });
        }
        _ => reply(
            server,
            iq,
            Err(StanzaErrorCondition::FeatureNotImplemented.into()),
        ),
    }
}

/// Forgets a destroyed room's archive.
pub async fn purge(server: &Server, room: &BareJid) {
    if let Err(e) = server.store.archive_purge(&owner(room), None).await {
        tracing::error!(error = %e, room = %room, "muc: purging a room's archive");
    }
}

/// Whether a payload is for the archive.
pub fn is_archive_iq(payload: &Element) -> bool {
    payload.ns() == NS_MAM
}

fn reply(server: &Server, iq: &Element, outcome: Result<Option<Element>, StanzaError>) {
    let reply = match outcome {
        Ok(p) => Some(iq_result(iq, p)),
        Err(e) => e.reply_to(iq),
    };
    if let Some(r) = reply {
        if let Some(to) = r.attr("to").and_then(|t| Jid::new(t).ok()) {
            let _ = crate::router::deliver(server, &r, &to);
        }
    }
}
