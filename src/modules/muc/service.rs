//! The chat service as a plug-in feature: `<subdomain>.<host>` for each
//! host in the route table; stanzas for it are queued (bounded) to one
//! task that owns every room, loads persistent rooms at start, and
//! writes what a stanza changed in a persistent room after it
//! (`persist`). The service's own disco (§6.1–6.3, the room list paged
//! by `room_list`) and unique room names (§10.1.4) are answered here.

use crate::stanza::bare::Bare;
use std::collections::HashMap;
use std::sync::Arc;

use jid::{FullJid, Jid};
use tokio::sync::mpsc;

use super::config::RoomConfig;
use super::moderate::{self, Request};
use super::placement::{Place, Placement};
use super::presence;
use super::room::{Affiliation, Ctx, Room};
use super::{message, NS_MUC, NS_OCCUPANT_ID, NS_PING, NS_SELF_PING, NS_SID, NS_UNIQUE};
use crate::config::{Config, MucConfig};
use crate::feature::Feature;
use crate::modules::disco::{NS_INFO, NS_ITEMS};
use crate::modules::mam::id::IdSource;
use crate::server::Server;
use crate::sessions::DeliveryError;
use crate::stanza::{iq_result, StanzaError, StanzaErrorCondition};
use crate::xml::Element;

/// The multi-user chat feature.
#[derive(Default)]
pub struct Muc {
    inbox: crate::feature::inbox::ServiceInbox,
    /// `ctl room list|destroy`, queued to the service's task.
    pub control: super::control::ControlQueue,
}

/// The service domains under `config`.
pub fn service_domains(config: &Config) -> Vec<String> {
    config
        .domains()
        .into_iter()
        .map(|h| format!("{}.{}", config.muc.subdomain, h))
        .collect()
}

impl Feature for Muc {
    fn name(&self) -> &'static str {
        "muc"
    }

    fn enabled(&self, config: &Config) -> bool {
        config.muc.enabled
    }

    fn xeps(&self) -> &[u16] {
        &[45, 317, 410, 421, 424, 425, 486]
    }

    fn service_domains(&self, config: &Config) -> Vec<String> {
        service_domains(config)
    }

    fn deliver_to_service(&self, _server: &Server, stanza: &Element) -> Result<(), DeliveryError> {
        self.inbox.deliver(stanza)
    }

    fn start(&self, server: &Arc<Server>) {
        let Some(rx) = self.inbox.open(server.config().muc.queue) else {
            return;
        };
        let control = self.control.open();
        let server = server.clone();
        server.clone().background.spawn(run(server, rx, control));
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The service's task: loads persistent rooms, then handles stanzas in
/// order until shutdown, when every occupant is told (332).
async fn run(
    server: Arc<Server>,
    mut rx: mpsc::Receiver<Element>,
    mut control: mpsc::Receiver<super::control::Control>,
) {
    let secret = occupant_id_secret(&server).await;
    // What waits behind a joiner's list: its queue's worth, plus a whole
    // join's own stanzas (self-presence, history, subject).
    let held = server.config().limits.session_queue + server.config().muc.max_history + 2;
    let (streams, mut wakes) = super::fanout::JoinStreams::new(held);
    let mut service = Service::new(&server, &secret, streams);
    // In a cluster a room is loaded by the node that takes its lease.
    let clustered = server.config().cluster.is_some();
    for domain in service_domains(&server.config())
        .into_iter()
        .filter(|_| !clustered)
    {
        match server.store.muc_rooms(&domain).await {
            Ok(rooms) => {
                for stored in rooms {
                    if let Some(room) = super::persist::load(&domain, &stored, &service.limits) {
                        service.rooms.insert(room.jid.as_str().to_string(), room);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, service = %domain, "muc: loading rooms"),
        }
    }
    loop {
        tokio::select! {
            biased;
            _ = server.shutdown.cancelled() => {
                service.shutdown(&server);
                return;
            }
            stanza = rx.recv() => match stanza {
                Some(s) => service.handle(&server, s).await,
                None => return,
            },
            Some(c) = control.recv() => service.control(&server, c).await,
            // A joiner's queue has room again: more of its occupant list.
            Some(to) = wakes.recv() => {
                let rooms = &service.rooms;
                service.streams.resume(&server, &to, |k| rooms.get(k));
            }
        }
    }
}

/// The key occupant ids are derived from: the configured dialback
/// secret when there is one (as before), else a secret made once and
/// kept in the database, so ids survive a restart either way (XEP-0421
/// §3: an occupant id is stable). Without a database answer, the
/// server's dialback secret of this run.
async fn occupant_id_secret(server: &Server) -> String {
    if !server.config().s2s.dialback_secret.is_empty() {
        return server.dialback_secret.clone();
    }
    let fresh: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    match server.store.server_secret("muc-occupant-id", &fresh).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "muc: no stored secret; occupant ids change at restart");
            server.dialback_secret.clone()
        }
    }
}

struct Service {
    rooms: HashMap<String, Room>,
    /// The rooms' archive, when `[muc] archive` is on.
    archive: Option<Arc<super::archive::RoomArchive>>,
    joined: HashMap<String, usize>,
    ids: IdSource,
    secret: Vec<u8>,
    limits: MucConfig,
    streams: super::fanout::JoinStreams,
    /// In a cluster, which node serves which room (set at the first
    /// stanza: the cluster joins after the features start).
    placement: Option<Placement>,
    /// Sessions of a room just taken over that are alive nowhere.
    restored_gone: Vec<FullJid>,
}

impl Service {
    fn new(server: &Arc<Server>, secret: &str, streams: super::fanout::JoinStreams) -> Service {
        use hmac::{Hmac, Mac};
        // Occupant ids are keyed by a secret that outlives a restart.
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(b"waxwing muc occupant-id");
        Service {
            rooms: HashMap::new(),
            archive: server
                .config()
                .muc
                .archive
                .then(|| Arc::new(super::archive::RoomArchive::new(server))),
            joined: HashMap::new(),
            ids: IdSource::default(),
            secret: mac.finalize().into_bytes().to_vec(),
            limits: server.config().muc.clone(),
            streams,
            placement: None,
            restored_gone: Vec::new(),
        }
    }

    /// In a cluster: serves the room's stanza here if this node holds the
    /// room's lease (taking it if nobody does, and loading the room),
    /// else hands it to the holder. True when it is for this node.
    async fn served_here(&mut self, server: &Arc<Server>, key: &str, stanza: &Element) -> bool {
        match self.locate(server, key).await {
            Ok(None) => true,
            Ok(Some(node)) => {
                let bytes = bytes::Bytes::from(stanza.to_bytes(crate::xml::NS_CLIENT));
                let handed = self
                    .placement
                    .as_ref()
                    .is_some_and(|p| p.hand_to(&node, key, bytes));
                if !handed {
                    reply_error(
                        server,
                        stanza,
                        StanzaErrorCondition::ResourceConstraint.into(),
                    );
                }
                false
            }
            Err(condition) => {
                reply_error(server, stanza, condition.into());
                false
            }
        }
    }

    /// Where a room is served: here (None; on a single server always),
    /// or the node holding it. A room nobody held is taken and loaded
    /// here (persistent: from the database; temporary: from its record),
    /// with its recorded occupants; those alive nowhere wait in
    /// `restored_gone` to be removed as lost.
    async fn locate(
        &mut self,
        server: &Server,
        key: &str,
    ) -> Result<Option<Arc<str>>, StanzaErrorCondition> {
        if !self.clustered(server) {
            return Ok(None);
        }
        let Some(placement) = self.placement.as_mut() else {
            return Ok(None);
        };
        for room in placement.lost() {
            tracing::warn!(
                room,
                "muc: this node fenced itself; the room is left to others"
            );
            self.rooms.remove(&room);
        }
        let Ok(room) = jid::BareJid::new(key) else {
            return Err(StanzaErrorCondition::JidMalformed);
        };
        let (domain, name) = (
            room.domain().as_str(),
            room.node().map(|n| n.as_str()).unwrap_or_default(),
        );
        let at_least = async {
            match server.store.muc_fence(domain, name).await {
                Ok(f) => f.max(0) as u64,
                Err(e) => {
                    // Redis's own counter still grows; a refused write
                    // later is the worst that can follow.
                    tracing::error!(error = %e, room = key, "muc: fencing number not readable");
                    0
                }
            }
        };
        match placement.place(key, at_least).await {
            Ok(Place::Here(false)) => Ok(None),
            Ok(Place::Elsewhere(node)) => Ok(Some(node)),
            Err(e) => {
                tracing::warn!(error = %e, room = key, "muc: room lease not readable");
                Err(StanzaErrorCondition::InternalServerError)
            }
            Ok(Place::Here(true)) => {
                // Taken just now: the database has the room if it is
                // persistent; a copy left in memory from an earlier lease
                // is stale.
                self.rooms.remove(key);
                let records = match placement.records(key).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, room = key, "muc: occupants of a room taken over not readable");
                        Vec::new()
                    }
                };
                let stored = match server.store.muc_room(domain, name).await {
                    Ok(stored) => stored,
                    Err(e) => {
                        tracing::error!(error = %e, room = key, "muc: room not loadable");
                        placement.release(key);
                        return Err(StanzaErrorCondition::InternalServerError);
                    }
                };
                let room = match stored {
                    Some(stored) => super::persist::load(domain, &stored, &self.limits),
                    // A temporary room lives on in its record.
                    None => records
                        .iter()
                        .find(|(nick, _)| nick == super::occupancy::ROOM_FIELD)
                        .and_then(|(_, b)| super::occupancy::decode_room(name, b))
                        .and_then(|stored| {
                            let mut r = super::persist::load(domain, &stored, &self.limits)?;
                            r.config.persistent = false;
                            r.stored = false;
                            Some(r)
                        }),
                };
                if let Some(mut room) = room {
                    // A user of another server (s2s) cannot be checked:
                    // kept, as its server would tell the room when it goes.
                    let alive = |jid: &FullJid| {
                        server.route(jid.domain().as_str()) != crate::routes::Route::Host
                            || server.sessions.session_id(jid).is_some()
                            || placement.session_alive(jid)
                    };
                    let gone =
                        super::occupancy::restore(&mut room, records, alive, &mut self.joined);
                    tracing::info!(
                        room = key,
                        occupants = room.occupants.len(),
                        gone = gone.len(),
                        "muc: room taken over"
                    );
                    self.restored_gone = gone;
                    self.rooms.insert(key.to_string(), room);
                }
                Ok(None)
            }
        }
    }

    /// Whether this node is in a cluster (the placement is set up at the
    /// first stanza: the cluster joins after the features start).
    fn clustered(&mut self, server: &Server) -> bool {
        if self.placement.is_none() {
            let Some(cluster) = server.cluster.get() else {
                return false;
            };
            self.placement = Some(Placement::new(cluster.clone()));
        }
        true
    }

    /// In a cluster, the service's room list (disco#items, §6.3) is every
    /// node's: the rooms' holders keep it in Redis. True when answered.
    async fn cluster_room_list(&mut self, server: &Server, stanza: &Element, to: &Jid) -> bool {
        let mut children = stanza.children();
        let (Some(query), None) = (children.next(), children.next()) else {
            return false;
        };
        if stanza.name() != "iq"
            || stanza.attr("type") != Some("get")
            || !query.is("query", NS_ITEMS)
            || query.attr("node").is_some()
            || !self.clustered(server)
        {
            return false;
        }
        let Some(placement) = self.placement.as_mut() else {
            return false;
        };
        let outcome = match placement.room_list().await {
            Ok(all) => {
                let suffix = format!("@{}", to.domain());
                let listed = all
                    .iter()
                    .filter(|(jid, _)| jid.ends_with(&suffix))
                    .map(|(jid, name)| super::room_list::Listed { jid, name })
                    .collect();
                super::room_list::answer_listed(listed, query, self.limits.max_room_list_page)
                    .map(Some)
            }
            Err(e) => {
                tracing::warn!(error = %e, "muc: the cluster's room list is not readable");
                Err(StanzaErrorCondition::InternalServerError.into())
            }
        };
        answer(server, stanza, outcome);
        true
    }

    /// The fencing number writes of `key` carry (None on a single server).
    fn fence(&self, key: &str) -> Option<i64> {
        self.placement.as_ref().and_then(|p| p.fence(key))
    }

    async fn handle(&mut self, server: &Arc<Server>, stanza: Element) {
        let (Some(to), Some(from)) = (
            stanza.attr("to").and_then(|t| Jid::new(t).ok()),
            stanza.attr("from").and_then(|f| Jid::new(f).ok()),
        ) else {
            return;
        };
        if to.node().is_none() {
            if self.cluster_room_list(server, &stanza, &to).await {
                return;
            }
            return self.service_stanza(server, &stanza, &from, &to);
        }
        if !self.served_here(server, to.bare().as_str(), &stanza).await {
            return;
        }
        // The answer to an IQ relayed to an occupant (it may come from a
        // bare JID: a vCard is the account's).
        if stanza.name() == "iq"
            && to.resource().is_some()
            && matches!(stanza.attr("type"), Some("result" | "error"))
        {
            if let Some(room) = self.rooms.get_mut(to.bare().as_str()) {
                super::iq_relay::answered(server, room, &from, &stanza);
            }
            return;
        }
        // Occupants are sessions: a bare sender cannot be one.
        let Ok(from) = from.try_into_full() else {
            return reply_error(server, &stanza, StanzaErrorCondition::NotAcceptable.into());
        };
        let key = to.bare().as_str().to_string();
        if stanza.name() == "iq"
            && to.resource().is_none()
            && matches!(stanza.attr("type"), Some("get" | "set"))
        {
            if let Some(payload) = stanza
                .children()
                .next()
                .filter(|p| super::archive::is_archive_iq(p))
            {
                return self.archive_iq(server, &key, &from, &stanza, payload);
            }
        }
        // XEP-0425: checked and archived first (that waits on the disk).
        let mut retraction = None;
        if stanza.name() == "iq" && to.resource().is_none() && stanza.attr("type") == Some("set") {
            if let Some(request) = stanza.children().next().and_then(Request::parse) {
                let room = self.rooms.get(&key);
                let prepared = match request {
                    Ok(r) => moderate::prepare(server, room, self.archive.as_ref(), &from, r).await,
                    Err(e) => Err(e),
                };
                match prepared {
                    Ok(r) => retraction = Some(r),
                    Err(e) => return reply_error(server, &stanza, e),
                }
            }
        }
        let archiving = self.archive.is_some();
        // Occupants of a room just taken over whose node died: removed
        // as lost (333) after this stanza.
        let gone = std::mem::take(&mut self.restored_gone);
        let Service {
            rooms,
            joined,
            ids,
            secret,
            limits,
            archive,
            streams,
            ..
        } = self;
        let mut ctx = Ctx {
            server,
            limits,
            joined,
            ids,
            secret,
            lost: gone,
            archiving,
            archive_rows: Vec::new(),
            mentions: Vec::new(),
            streams,
            touched: Default::default(),
        };
        let nick = to.resource().map(|r| r.as_str().to_string());
        // What goes to occupants on other cluster nodes leaves as one bus
        // entry per node, before anything below waits on the database.
        crate::cluster::grouped_now(|| {
            match stanza.name() {
                "presence" => {
                    presence_to_room(&mut ctx, rooms, &key, &from, nick.as_deref(), &stanza);
                    // An affiliated user's nick is remembered (mentions).
                    if let Some(room) = rooms.get_mut(&key) {
                        if let Some(n) = room.nick_of(&from) {
                            super::persist::remember_nick(room, from.bare().as_str(), &n);
                        }
                    }
                }
                "message" => match rooms.get_mut(&key) {
                    None => reply_error(server, &stanza, StanzaErrorCondition::ItemNotFound.into()),
                    Some(room) => match &nick {
                        Some(n) => message::private(&mut ctx, room, &from, n, &stanza),
                        None => message::to_room(&mut ctx, room, &from, &stanza),
                    },
                },
                "iq" => match (retraction, rooms.get_mut(&key)) {
                    (Some(r), Some(room)) => {
                        moderate::apply(&mut ctx, room, r);
                        answer(server, &stanza, Ok(None));
                    }
                    _ => iq_to_room(&mut ctx, rooms, &key, &from, nick.as_deref(), &stanza),
                },
                _ => {}
            }
            if let Some(room) = rooms.get_mut(&key) {
                drop_lost_rounds(&mut ctx, room);
            }
        });
        let rows = std::mem::take(&mut ctx.archive_rows);
        let mentions = std::mem::take(&mut ctx.mentions);
        let touched = std::mem::take(&mut ctx.touched);
        drop(ctx);
        if let (Some(p), Some(room)) = (self.placement.as_mut(), self.rooms.get(&key)) {
            p.record_changes(room, touched);
        }
        if let Some(a) = archive {
            a.write(rows).await;
        }
        if !mentions.is_empty() {
            super::mentions::tell(server, to.domain().as_str(), mentions).await;
        }
        self.settle(server, &key).await;
    }

    /// A request from the admin socket (`super::control`).
    async fn control(&mut self, server: &Arc<Server>, request: super::control::Control) {
        use super::control::Control;
        match request {
            Control::List(done) => {
                let rooms = self
                    .rooms
                    .values()
                    .map(|r| {
                        let jid = r.jid.as_str().to_string();
                        (jid, r.occupants.len(), r.config.persistent)
                    })
                    .collect();
                let _ = done.send(rooms);
            }
            Control::Adopt(room) => {
                if self.locate(server, &room).await != Ok(None) {
                    return;
                }
                // Its dead occupants leave now, seen by the others.
                let lost = std::mem::take(&mut self.restored_gone);
                let mut ctx = Ctx {
                    server,
                    limits: &self.limits,
                    joined: &mut self.joined,
                    ids: &self.ids,
                    secret: &self.secret,
                    lost,
                    archiving: self.archive.is_some(),
                    archive_rows: Vec::new(),
                    mentions: Vec::new(),
                    streams: &mut self.streams,
                    touched: Default::default(),
                };
                if let Some(r) = self.rooms.get_mut(&room) {
                    crate::cluster::grouped_now(|| drop_lost_rounds(&mut ctx, r));
                }
                let touched = std::mem::take(&mut ctx.touched);
                drop(ctx);
                if let (Some(p), Some(r)) = (self.placement.as_mut(), self.rooms.get(&room)) {
                    p.record_changes(r, touched);
                }
                self.settle(server, &room).await;
            }
            Control::Destroy { room, reason, done } => {
                let Some(r) = self.rooms.get_mut(&room) else {
                    let _ = done.send(false);
                    return;
                };
                let mut request = Element::new("destroy", super::NS_OWNER);
                if let Some(text) = reason {
                    request.append_child(Element::new("reason", super::NS_OWNER).with_text(text));
                }
                let mut ctx = Ctx {
                    server,
                    limits: &self.limits,
                    joined: &mut self.joined,
                    ids: &mut self.ids,
                    secret: &self.secret,
                    lost: Vec::new(),
                    archiving: self.archive.is_some(),
                    archive_rows: Vec::new(),
                    mentions: Vec::new(),
                    streams: &mut self.streams,
                    touched: Default::default(),
                };
                super::admin::destroy(&mut ctx, r, &request);
                drop(ctx);
                tracing::info!(room, "muc: room destroyed by an administrator");
                self.settle(server, &room).await;
                let _ = done.send(true);
            }
        }
    }

    /// After a stanza: a destroyed room, or a temporary one left empty,
    /// is forgotten; what changed in a persistent one is written.
    async fn settle(&mut self, server: &Server, key: &str) {
        let fence = self.fence(key);
        let Some(room) = self.rooms.get_mut(key) else {
            // A lease taken for a stanza that made no room (a join refused,
            // an IQ to a name nobody uses): given back.
            if let Some(p) = self.placement.as_mut() {
                p.forget(key);
            }
            return;
        };
        let service = room.jid.domain().as_str().to_string();
        let name = room.jid.node().map(|n| n.to_string()).unwrap_or_default();
        let forget = room.destroyed || (room.occupants.is_empty() && !room.config.persistent);
        if room.destroyed && self.archive.is_some() {
            super::archive::purge(server, &room.jid).await;
        }
        let mut fenced = false;
        if forget || !room.config.persistent {
            if room.stored {
                match server.store.muc_delete_room(&service, &name, fence).await {
                    Err(crate::storage::StorageError::Fenced(_)) => fenced = true,
                    Err(e) => tracing::error!(error = %e, room = %key, "muc: deleting a room"),
                    Ok(()) => {}
                }
                room.stored = false;
            }
            // Written whole if it becomes persistent: nothing to track.
            room.dirty = false;
            room.pending = Default::default();
        } else if !room.locked {
            fenced = super::persist::write(server, room, fence).await;
        }
        if fenced {
            // Another node holds the room now (this one was paused or cut
            // off past its liveness): its state here is stale.
            tracing::warn!(room = %key, "muc: write refused by the fencing check; the room is another node's now");
        }
        if forget || fenced {
            self.rooms.remove(key);
            if let Some(p) = self.placement.as_mut() {
                if forget {
                    p.forget(key);
                } else {
                    p.release(key);
                }
            }
        }
    }

    /// An archive IQ (XEP-0313) to a room, for those its rules let read.
    fn archive_iq(
        &self,
        server: &Arc<Server>,
        key: &str,
        from: &FullJid,
        iq: &Element,
        payload: &Element,
    ) {
        let Some(archive) = &self.archive else {
            return reply_error(server, iq, StanzaErrorCondition::ServiceUnavailable.into());
        };
        let Some(room) = self.rooms.get(key) else {
            return reply_error(server, iq, StanzaErrorCondition::ItemNotFound.into());
        };
        if !super::archive::may_query(room, from) {
            return reply_error(server, iq, StanzaErrorCondition::Forbidden.into());
        }
        super::archive::answer(server, archive, &room.jid, from, iq, payload);
    }

    /// Stanzas to the service's own domain.
    fn service_stanza(&mut self, server: &Server, stanza: &Element, from: &Jid, to: &Jid) {
        if stanza.name() != "iq" {
            if stanza.name() == "message" {
                reply_error(
                    server,
                    stanza,
                    StanzaErrorCondition::ServiceUnavailable.into(),
                );
            }
            return;
        }
        let is_set = match stanza.attr("type") {
            Some("get") => false,
            Some("set") => true,
            _ => return,
        };
        let mut children = stanza.children();
        let (Some(payload), None) = (children.next(), children.next()) else {
            return reply_error(server, stanza, StanzaErrorCondition::BadRequest.into());
        };
        let outcome: Result<Option<Element>, StanzaError> = match (payload.ns(), is_set) {
            (NS_INFO, false) if payload.attr("node").is_none() => Ok(Some(service_info())),
            (NS_ITEMS, false) if payload.attr("node").is_none() => super::room_list::answer(
                self.rooms.values(),
                to.domain().as_str(),
                payload,
                self.limits.max_room_list_page,
            )
            .map(Some),
            (NS_PING, false) => Ok(None),
            (NS_UNIQUE, false) => {
                let (id, _) = self.ids.next();
                Ok(Some(Element::new("unique", NS_UNIQUE).with_text(id)))
            }
            (NS_INFO | NS_ITEMS, false) => Err(StanzaErrorCondition::ItemNotFound.into()),
            _ => Err(StanzaErrorCondition::ServiceUnavailable.into()),
        };
        let _ = from;
        answer(server, stanza, outcome);
    }

    /// §7.2.? / §8: the service is stopping; each occupant hears 332.
    fn shutdown(&mut self, server: &Server) {
        let archiving = self.archive.is_some();
        let Service {
            rooms,
            joined,
            ids,
            secret,
            limits,
            streams,
            placement,
            ..
        } = self;
        let mut ctx = Ctx {
            server,
            limits,
            joined,
            ids,
            secret,
            lost: Vec::new(),
            archiving,
            archive_rows: Vec::new(),
            mentions: Vec::new(),
            streams,
            touched: Default::default(),
        };
        let a = presence::Announcement {
            unavailable: true,
            codes: vec![332],
            ..Default::default()
        };
        for room in rooms.values_mut() {
            let Some(placement) = placement.as_mut() else {
                presence::empty_room(&mut ctx, room, &a);
                continue;
            };
            // In a cluster the room outlives this node: another node takes
            // it over with its recorded occupants. Only this node's users
            // leave (their sessions end with it, and may have ended
            // already: any session of ours no other node holds), seen by
            // everyone; users on other nodes and servers stay.
            let here: Vec<String> = room
                .occupants
                .values()
                .filter(|o| {
                    o.sessions.iter().all(|s| {
                        server.route(s.jid.domain().as_str()) == crate::routes::Route::Host
                            && !placement.session_alive(&s.jid)
                    })
                })
                .map(|o| o.nick.clone())
                .collect();
            for nick in here {
                presence::remove_occupant(&mut ctx, room, &nick, &a);
            }
            placement.record_changes(room, std::mem::take(&mut ctx.touched));
        }
    }
}

/// Sessions that could not take what the room sent leave it (333);
/// their removal may find more, a few rounds at most.
fn drop_lost_rounds(ctx: &mut Ctx<'_>, room: &mut Room) {
    for _ in 0..4 {
        let lost = std::mem::take(&mut ctx.lost);
        if lost.is_empty() {
            break;
        }
        for s in &lost {
            presence::drop_lost(ctx, room, s);
        }
    }
}

/// The service's disco#info (§6.2).
fn service_info() -> Element {
    let mut q = Element::new("query", NS_INFO).with_child(
        Element::new("identity", NS_INFO)
            .with_attr("category", "conference")
            .with_attr("type", "text")
            .with_attr("name", "Chatrooms"),
    );
    for f in [
        NS_MUC,
        NS_INFO,
        NS_ITEMS,
        NS_PING,
        NS_UNIQUE,
        NS_SID,
        NS_OCCUPANT_ID,
        NS_SELF_PING,
    ] {
        q.append_child(Element::new("feature", NS_INFO).with_attr("var", f));
    }
    q
}

/// Presence to `room/nick` (or, wrongly, to the bare room).
fn presence_to_room(
    ctx: &mut Ctx<'_>,
    rooms: &mut HashMap<String, Room>,
    key: &str,
    from: &FullJid,
    nick: Option<&str>,
    stanza: &Element,
) {
    let kind = stanza.attr("type");
    match kind {
        None => {}
        Some("unavailable") => {
            if let Some(room) = rooms.get_mut(key) {
                presence::unavailable(ctx, room, from, stanza);
            }
            return;
        }
        Some("error") => {
            if rooms.get(key).is_some_and(|r| r.nick_of(from).is_some()) {
                ctx.lost.push(from.clone());
            }
            return;
        }
        // Subscriptions and probes mean nothing to a room.
        Some(_) => return,
    }
    let Some(nick) = nick else {
        // §7.2.1: a join names a nick.
        return reply_error(
            ctx.server,
            stanza,
            StanzaErrorCondition::JidMalformed.into(),
        );
    };
    let mut created = false;
    if !rooms.contains_key(key) {
        let to_nick = format!("{key}/{nick}");
        let refuse = |ctx: &Ctx<'_>, e: StanzaError| {
            if let Some(p) = presence::presence_error(&to_nick, from, &e) {
                let _ = crate::router::deliver(ctx.server, &p, &Jid::from(from.clone()));
            }
        };
        if let Err(e) = presence::check_nick(ctx, nick) {
            return refuse(ctx, e);
        }
        if !presence::may_create(ctx, from) {
            return refuse(
                ctx,
                StanzaError::with_text(
                    StanzaErrorCondition::NotAllowed,
                    "you may not create rooms on this service",
                ),
            );
        }
        if rooms.len() >= ctx.limits.max_rooms {
            return refuse(
                ctx,
                StanzaError::with_text(
                    StanzaErrorCondition::ResourceConstraint,
                    "no more rooms on this service",
                ),
            );
        }
        let Ok(jid) = jid::BareJid::new(key) else {
            return;
        };
        let mut room = Room::new(jid, RoomConfig::new(ctx.limits));
        room.locked = true;
        room.set_affiliation(&from.bare(), Affiliation::Owner, String::new());
        rooms.insert(key.to_string(), room);
        created = true;
    }
    let Some(room) = rooms.get_mut(key) else {
        return;
    };
    if !created && room.nick_of(from).is_none() && stanza.get_child("x", NS_MUC).is_none() {
        return presence::not_joined(ctx, room, from, nick);
    }
    presence::available(ctx, room, from, nick, stanza, created);
}

/// IQs to a room or to an occupant.
fn iq_to_room(
    ctx: &mut Ctx<'_>,
    rooms: &mut HashMap<String, Room>,
    key: &str,
    from: &FullJid,
    nick: Option<&str>,
    stanza: &Element,
) {
    let is_set = match stanza.attr("type") {
        Some("get") => false,
        Some("set") => true,
        _ => return,
    };
    let mut children = stanza.children();
    let (Some(payload), None) = (children.next(), children.next()) else {
        return reply_error(ctx.server, stanza, StanzaErrorCondition::BadRequest.into());
    };
    let Some(room) = rooms.get_mut(key) else {
        return reply_error(
            ctx.server,
            stanza,
            StanzaErrorCondition::ItemNotFound.into(),
        );
    };
    let outcome = match nick {
        // A locked room's vCard is its owners' too (admin::room_iq says
        // item-not-found to the others).
        None if super::avatar::is_vcard(payload)
            && (!room.locked || room.affiliation(&from.bare()) == Affiliation::Owner) =>
        {
            super::avatar::iq(ctx, room, from, is_set, payload)
        }
        None => super::admin::room_iq(ctx, room, from, is_set, payload).map(|mut answer| {
            // The room's own features only, not those of a node (§7.12).
            if let Some(info) = answer
                .as_mut()
                .filter(|q| q.is("query", NS_INFO) && q.attr("node").is_none())
            {
                super::avatar::add_to_info(room, info);
            }
            answer
        }),
        Some(nick) => match room.nick_of(from) {
            // XEP-0410: a ping to one's own occupant JID is answered here.
            Some(own) if own == nick && payload.is("ping", NS_PING) => Ok(None),
            // Relayed to the occupant; its answer comes back later.
            Some(_) => match super::iq_relay::relay(ctx, room, from, nick, stanza) {
                Ok(()) => return,
                Err(e) => Err(e),
            },
            None => Err(StanzaErrorCondition::NotAcceptable.into()),
        },
    };
    answer(ctx.server, stanza, outcome);
}

fn answer(server: &Server, iq: &Element, outcome: Result<Option<Element>, StanzaError>) {
    match outcome {
        Ok(payload) => {
            let reply = iq_result(iq, payload);
            if let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) {
                let _ = crate::router::deliver(server, &reply, &to);
            }
        }
        Err(e) => reply_error(server, iq, e),
    }
}

fn reply_error(server: &Server, stanza: &Element, e: StanzaError) {
    if let Some(reply) = e.reply_to(stanza) {
        if let Some(to) = reply.attr("to").and_then(|t| Jid::new(t).ok()) {
            let _ = crate::router::deliver(server, &reply, &to);
        }
    }
}
