//! Membership, session directory and bus on Redis.
//!
//! Keys (all under the configured prefix `p`):
//! - `p:node:<id>`: liveness, the node's session count, `PX` the TTL
//! - `p:nodes`: set of registered node ids
//! - `p:sess:<bare>`: hash resource → `node \t priority \t flags \t presence`
//! - `p:nodesess:<id>`: set of bare JIDs the node holds sessions of (so a
//!   dead node is cleaned without scanning every hash)
//! - `p:inbox:<id>`: stream of stanzas for the node (group `nodes`), one
//!   entry per sender's batch (`to`+`s`/`r`/`a`, or several packed in `p`),
//!   appended to only while `p:node:<id>` exists (`APPEND_IF_ALIVE`)
//! - `p:reap:<id>`: lock, one survivor cleans a dead node up
//! - `p:events`: pub/sub channel of session changes

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use jid::FullJid;
use redis::aio::ConnectionManager;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};

use super::bus::{
    Applied, Bus, BusResult, Change, ComponentDirectory, Delivery, InboxEntry, Membership,
    NodeStatus, RoomDirectory, RoomRecords, SessionDirectory,
};
use super::codec;
use crate::sessions::ResourceState;
use crate::stanza::bare::Bare;

/// The consumer group every inbox is read through.
const GROUP: &str = "nodes";

/// Deletes a directory field only while it still names `ARGV[2]` as its
/// node: a resource bound again on another node since is not touched.
const DELETE_IF_NODE: &str = "local v = redis.call('HGET', KEYS[1], ARGV[1]) \
    if v and string.sub(v, 1, string.len(ARGV[2]) + 1) == ARGV[2] .. '\\t' then \
    return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

/// Appends one entry to a node's inbox only while its liveness key is
/// there, in one step: once the key is gone the node may have been reaped
/// and its inbox drained, and an entry appended after that would never be
/// read. KEYS: liveness, inbox; ARGV: MAXLEN bound, then the entry's
/// field/value pairs. Returns 1 when appended, 0 when the node is not
/// alive (nothing appended).
const APPEND_IF_ALIVE: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 2)) \
    return 1";

/// Writes a session's directory field, compare-and-set on its node.
/// KEYS: `sess:<bare>`, `nodesess:<node>`; ARGV: resource, node, value,
/// bare JID, `1` for a claim (a new binding). A claim always writes and
/// returns the value it took from another node (`''` if none or its own:
/// the node and session to replace); an
/// update writes only while the field is the node's or absent, else
/// returns nil (the session is being replaced by a newer one).
const CLAIM: &str = "local old = redis.call('HGET', KEYS[1], ARGV[1]) \
    local owner = '' \
    if old then owner = string.match(old, '^[^\t]*') end \
    if owner == ARGV[2] then owner = '' end \
    if owner ~= '' and ARGV[5] ~= '1' then return false end \
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) \
    redis.call('SADD', KEYS[2], ARGV[4]) \
    if owner == '' then return '' end \
    return old";

/// A room's lease. KEYS: `rooms` (room → `node \t fence`), `roomfence`
/// (room → last fence given); ARGV: room, claiming node, least fence,
/// the liveness keys' prefix, the prefix of the sets of rooms each node
/// took (`noderooms:<node>`, which the reaper of a dead node reads). The lease stays with its holder while that
/// node's liveness key exists (a room has no TTL of its own: its lease
/// lasts as long as its node); else — nobody, a dead node, or the
/// claimer itself, which lost the room's state — it goes to the claimer
/// with a fence larger than every earlier one and than ARGV[3].
const ROOM_CLAIM: &str = "local cur = redis.call('HGET', KEYS[1], ARGV[1]) \
    if cur then \
      local owner = string.match(cur, '^[^\t]*') \
      if owner ~= ARGV[2] and redis.call('EXISTS', ARGV[4] .. owner) == 1 then return cur end \
    end \
    local f = redis.call('HINCRBY', KEYS[2], ARGV[1], 1) \
    if f <= tonumber(ARGV[3]) then \
      f = tonumber(ARGV[3]) + 1 \
      redis.call('HSET', KEYS[2], ARGV[1], f) \
    end \
    local v = ARGV[2] .. '\t' .. f \
    redis.call('HSET', KEYS[1], ARGV[1], v) \
    redis.call('SADD', ARGV[5] .. ARGV[2], ARGV[1]) \
    return v";

/// Gives a forgotten room's lease back: deleted, with its fencing
/// counter, only while it is exactly the releasing node's lease (a node
/// that claimed the room again since holds a newer fence, and keeps it).
/// A later claim starts from the database's number. KEYS: `rooms`,
/// `roomfence`; ARGV: room, `node \t fence`.
const ROOM_RELEASE: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
    redis.call('HDEL', KEYS[1], ARGV[1]) redis.call('HDEL', KEYS[2], ARGV[1]) return 1 end \
    return 0";

/// A Lua script run by its SHA-1 (`EVALSHA`), so its text is sent only
/// when Redis does not know it (after a restart: `SCRIPT LOAD`, then the
/// command is tried again).
struct Lua {
    text: &'static str,
    sha: String,
}

impl Lua {
    fn new(text: &'static str) -> Lua {
        use sha1::Digest;
        let sha = sha1::Sha1::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Lua { text, sha }
    }
}

/// The Redis side of a cluster node.
pub struct RedisCluster {
    client: redis::Client,
    /// Commands, multiplexed on one connection that reconnects by itself.
    conn: ConnectionManager,
    /// Blocking inbox reads only: a `BLOCK`ed command would hold up every
    /// command behind it on the shared connection.
    reader: ConnectionManager,
    prefix: String,
    inbox_max: usize,
    append: Lua,
    claim: Lua,
}

fn err(e: redis::RedisError) -> String {
    e.to_string()
}

impl RedisCluster {
    /// Connects (twice: commands, and blocking inbox reads).
    pub async fn connect(url: &str, prefix: &str, inbox_max: usize) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(err)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(Duration::from_secs(5))
            .set_max_delay(2_000);
        let conn = client
            .get_connection_manager_with_config(config.clone())
            .await
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        // Its reads block up to a few seconds by design.
        let reader = client
            .get_connection_manager_with_config(
                config.set_response_timeout(Duration::from_secs(30)),
            )
            .await
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        Ok(RedisCluster {
            client,
            conn,
            reader,
            prefix: prefix.to_string(),
            inbox_max,
            append: Lua::new(APPEND_IF_ALIVE),
            claim: Lua::new(CLAIM),
        })
    }

    /// Runs a pipeline of `EVALSHA`s (and idempotent commands): when Redis
    /// lost the scripts (restarted), loads them and runs it once more —
    /// a script Redis does not know fails without running, and the other
    /// commands may run twice, so they must be idempotent.
    async fn query_scripts<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> BusResult<T> {
        let mut c = self.conn.clone();
        match pipe.query_async(&mut c).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                let mut load = redis::pipe();
                for lua in [&self.append, &self.claim] {
                    load.cmd("SCRIPT").arg("LOAD").arg(lua.text).ignore();
                }
                load.query_async::<()>(&mut c).await.map_err(err)?;
                pipe.query_async(&mut c).await.map_err(err)
            }
            other => other.map_err(err),
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    fn components_key(&self) -> String {
        format!("{}:comps", self.prefix)
    }

    /// Adds to `pipe` the removal of `domain`'s entry if it names `node`.
    fn component_gone(&self, pipe: &mut redis::Pipeline, domain: &str, node: &str) {
        pipe.cmd("EVAL")
            .arg(COMPONENT_GONE)
            .arg(1)
            .arg(self.components_key())
            .arg(domain)
            .arg(node)
            .ignore();
    }
}

/// Removes a component's field only while it names the given node.
const COMPONENT_GONE: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
    return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

impl RoomDirectory for RedisCluster {
    fn claim_room<'a>(
        &'a self,
        room: &'a str,
        node: &'a str,
        at_least: u64,
    ) -> BoxFuture<'a, BusResult<(String, u64)>> {
        async move {
            let mut c = self.conn.clone();
            // Rare (a node's first stanza for a room): sent as text.
            let lease: String = redis::cmd("EVAL")
                .arg(ROOM_CLAIM)
                .arg(2)
                .arg(format!("{}:rooms", self.prefix))
                .arg(format!("{}:roomfence", self.prefix))
                .arg(room)
                .arg(node)
                .arg(at_least)
                .arg(format!("{}:node:", self.prefix))
                .arg(format!("{}:noderooms:", self.prefix))
                .query_async(&mut c)
                .await
                .map_err(err)?;
            let (owner, fence) = lease
                .split_once('\t')
                .ok_or_else(|| format!("room lease unreadable: {lease}"))?;
            let fence = fence
                .parse()
                .map_err(|_| format!("room lease unreadable: {lease}"))?;
            Ok((owner.to_string(), fence))
        }
        .boxed()
    }

    fn write_room_records<'a>(
        &'a self,
        node: &'a str,
        batch: &'a [RoomRecords],
    ) -> BoxFuture<'a, BusResult<()>> {
        async move {
            let mut pipe = redis::pipe();
            let list = format!("{}:roomlist", self.prefix);
            for r in batch {
                let key = self.key("occ", &r.room);
                if let Some(fence) = r.gone {
                    // Forgotten: nothing for a reaper to take over, no
                    // lease left behind.
                    pipe.cmd("DEL").arg(&key).ignore();
                    pipe.cmd("SREM")
                        .arg(self.key("noderooms", node))
                        .arg(&r.room)
                        .ignore();
                    pipe.cmd("EVAL")
                        .arg(ROOM_RELEASE)
                        .arg(2)
                        .arg(format!("{}:rooms", self.prefix))
                        .arg(format!("{}:roomfence", self.prefix))
                        .arg(&r.room)
                        .arg(format!("{node}\t{fence}"))
                        .ignore();
                }
                match &r.listing {
                    Some(Some(name)) => pipe.cmd("HSET").arg(&list).arg(&r.room).arg(name).ignore(),
                    Some(None) => pipe.cmd("HDEL").arg(&list).arg(&r.room).ignore(),
                    None => &mut pipe,
                };
                for (field, record) in &r.changes {
                    match record {
                        Some(r) => pipe
                            .cmd("HSET")
                            .arg(&key)
                            .arg(field)
                            .arg(r.as_ref())
                            .ignore(),
                        None => pipe.cmd("HDEL").arg(&key).arg(field).ignore(),
                    };
                }
            }
            let mut c = self.conn.clone();
            pipe.query_async::<()>(&mut c).await.map_err(err)
        }
        .boxed()
    }

    fn room_records<'a>(&'a self, room: &'a str) -> BoxFuture<'a, BusResult<Vec<(String, Bytes)>>> {
        async move {
            let mut c = self.conn.clone();
            let all: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(self.key("occ", room))
                .query_async(&mut c)
                .await
                .map_err(err)?;
            Ok(all.into_iter().map(|(f, v)| (f, Bytes::from(v))).collect())
        }
        .boxed()
    }

    fn take_node_rooms<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<Vec<String>>> {
        async move {
            let key = self.key("noderooms", node);
            let mut c = self.conn.clone();
            let (rooms,): (Vec<String>,) = redis::pipe()
                .atomic()
                .cmd("SMEMBERS")
                .arg(&key)
                .cmd("DEL")
                .arg(&key)
                .ignore()
                .query_async(&mut c)
                .await
                .map_err(err)?;
            Ok(rooms)
        }
        .boxed()
    }

    fn room_list(&self) -> BoxFuture<'_, BusResult<Vec<(String, String)>>> {
        async move {
            let mut c = self.conn.clone();
            redis::cmd("HGETALL")
                .arg(format!("{}:roomlist", self.prefix))
                .query_async(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn room_counts(&self) -> BoxFuture<'_, BusResult<std::collections::HashMap<String, usize>>> {
        async move {
            let mut c = self.conn.clone();
            let leases: Vec<String> = redis::cmd("HVALS")
                .arg(format!("{}:rooms", self.prefix))
                .query_async(&mut c)
                .await
                .map_err(err)?;
            let mut counts = std::collections::HashMap::new();
            for lease in leases {
                if let Some((node, _)) = lease.split_once('\t') {
                    *counts.entry(node.to_string()).or_insert(0) += 1;
                }
            }
            Ok(counts)
        }
        .boxed()
    }
}

impl ComponentDirectory for RedisCluster {
    fn set_component<'a>(
        &'a self,
        node: &'a str,
        domain: &'a str,
        up: bool,
    ) -> BoxFuture<'a, BusResult<()>> {
        async move {
            let mut pipe = redis::pipe();
            if up {
                pipe.cmd("HSET")
                    .arg(self.components_key())
                    .arg(domain)
                    .arg(node)
                    .ignore();
            } else {
                self.component_gone(&mut pipe, domain, node);
            }
            let change = Change::Component {
                node: node.to_string(),
                domain: domain.to_string(),
                up,
            };
            pipe.cmd("PUBLISH")
                .arg(self.channel())
                .arg(codec::encode_change(&change))
                .ignore();
            let mut c = self.conn.clone();
            pipe.query_async::<()>(&mut c).await.map_err(err)
        }
        .boxed()
    }

    fn components(&self) -> BoxFuture<'_, BusResult<Vec<(String, String)>>> {
        async move {
            let mut c = self.conn.clone();
            redis::cmd("HGETALL")
                .arg(self.components_key())
                .query_async(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn drop_node_components<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<()>> {
        async move {
            let all = self.components().await?;
            let mut pipe = redis::pipe();
            for (domain, _) in all.iter().filter(|(_, n)| n == node) {
                self.component_gone(&mut pipe, domain, node);
            }
            let mut c = self.conn.clone();
            pipe.query_async::<()>(&mut c).await.map_err(err)
        }
        .boxed()
    }
}

fn entries(ids: Vec<StreamId>) -> Vec<InboxEntry> {
    let mut out = Vec::with_capacity(ids.len());
    for e in ids {
        let field = |name: &str| -> Vec<u8> {
            e.map
                .get(name)
                .and_then(|v| redis::from_redis_value::<Vec<u8>>(v).ok())
                .unwrap_or_default()
        };
        if e.map.contains_key("p") {
            // Several entries in one: each keeps the stream entry's id
            // (acknowledged together).
            match codec::unpack(&Bytes::from(field("p"))) {
                Some(records) => out.extend(records.into_iter().map(|(to, delivery)| InboxEntry {
                    id: e.id.clone(),
                    to,
                    delivery,
                })),
                None => {
                    tracing::warn!(id = %e.id, "cluster: unreadable packed inbox entry dropped")
                }
            }
            continue;
        }
        let delivery = if e.map.contains_key("r") {
            Delivery::Replaced(codec::session_of(&field("r")))
        } else if e.map.contains_key("a") {
            Delivery::Answer(Bytes::from(field("a")))
        } else if e.map.contains_key("o") {
            Delivery::TakeOver(Bytes::from(field("o")))
        } else if e.map.contains_key("h") {
            Delivery::HandedOver(Bytes::from(field("h")))
        } else if e.map.contains_key("k") {
            Delivery::Component(Bytes::from(field("k")))
        } else if e.map.contains_key("m") {
            Delivery::Room(Bytes::from(field("m")))
        } else {
            Delivery::Stanza(Bytes::from(field("s")))
        };
        out.push(InboxEntry {
            to: String::from_utf8_lossy(&field("to")).into_owned(),
            delivery,
            id: e.id,
        });
    }
    out
}

impl Membership for RedisCluster {
    fn heartbeat<'a>(
        &'a self,
        node: &'a str,
        ttl_ms: u64,
        sessions: usize,
    ) -> BoxFuture<'a, BusResult<bool>> {
        async move {
            let mut c = self.conn.clone();
            let (was,): (bool,) = redis::pipe()
                .cmd("EXISTS")
                .arg(self.key("node", node))
                .cmd("SET")
                .arg(self.key("node", node))
                .arg(sessions)
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("SADD")
                .arg(self.nodes_key())
                .arg(node)
                .ignore()
                .query_async(&mut c)
                .await
                .map_err(err)?;
            Ok(was)
        }
        .boxed()
    }

    fn is_alive<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<bool>> {
        async move {
            let mut c = self.conn.clone();
            redis::cmd("EXISTS")
                .arg(self.key("node", node))
                .query_async::<bool>(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn members(&self) -> BoxFuture<'_, BusResult<Vec<NodeStatus>>> {
        async move {
            let mut c = self.conn.clone();
            let mut ids: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.nodes_key())
                .query_async(&mut c)
                .await
                .map_err(err)?;
            ids.sort();
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut get = redis::cmd("MGET");
            for id in &ids {
                get.arg(self.key("node", id));
            }
            let counts: Vec<Option<usize>> = get.query_async(&mut c).await.map_err(err)?;
            Ok(ids
                .into_iter()
                .zip(counts)
                .map(|(node, count)| NodeStatus {
                    node,
                    alive: count.is_some(),
                    sessions: count.unwrap_or(0),
                    rooms: 0,
                })
                .collect())
        }
        .boxed()
    }

    fn try_lock<'a>(&'a self, name: &'a str, ttl_ms: u64) -> BoxFuture<'a, BusResult<bool>> {
        async move {
            let mut c = self.conn.clone();
            let set: Option<String> = redis::cmd("SET")
                .arg(format!("{}:{name}", self.prefix))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            Ok(set.is_some())
        }
        .boxed()
    }

    fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<()>> {
        async move {
            let mut c = self.conn.clone();
            redis::pipe()
                .cmd("DEL")
                .arg(self.key("node", node))
                .ignore()
                .cmd("SREM")
                .arg(self.nodes_key())
                .arg(node)
                .ignore()
                .query_async::<()>(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }
}

impl SessionDirectory for RedisCluster {
    fn apply<'a>(&'a self, changes: &'a [Change]) -> BoxFuture<'a, BusResult<Vec<Applied>>> {
        async move {
            let mut pipe = redis::pipe();
            for change in changes {
                match change {
                    Change::Bound {
                        node,
                        jid,
                        state,
                        claim,
                    } => {
                        let bare = jid.bare_str();
                        pipe.cmd("EVALSHA")
                            .arg(&self.claim.sha)
                            .arg(2)
                            .arg(self.key("sess", bare))
                            .arg(self.key("nodesess", node))
                            .arg(jid.resource().as_str())
                            .arg(node)
                            .arg(codec::encode_state(node, state))
                            .arg(bare)
                            .arg(if *claim { "1" } else { "0" });
                    }
                    Change::Unbound {
                        node,
                        jid,
                        last_local,
                    } => {
                        let bare = jid.bare_str();
                        pipe.cmd("EVAL")
                            .arg(DELETE_IF_NODE)
                            .arg(1)
                            .arg(self.key("sess", bare))
                            .arg(jid.resource().as_str())
                            .arg(node)
                            .ignore();
                        if *last_local {
                            pipe.cmd("SREM")
                                .arg(self.key("nodesess", node))
                                .arg(bare)
                                .ignore();
                        }
                    }
                    Change::NodeDown { .. }
                    | Change::KeptForLater { .. }
                    | Change::Component { .. } => {}
                }
            }
            // One answer per `Bound` (the others' are ignored).
            let mut claims: std::vec::IntoIter<Option<String>> = self
                .query_scripts::<Vec<Option<String>>>(&pipe)
                .await?
                .into_iter();
            Ok(changes
                .iter()
                .map(|change| match change {
                    Change::Bound { .. } => match claims.next() {
                        Some(None) => Applied::Stale,
                        Some(Some(old)) if !old.is_empty() => {
                            let node = codec::value_node(&old).to_string();
                            let session = codec::decode_state(&old).map_or(0, |(_, s)| s.session);
                            Applied::Displaced(node, session)
                        }
                        _ => Applied::Written,
                    },
                    _ => Applied::Written,
                })
                .collect())
        }
        .boxed()
    }

    fn snapshot(&self) -> BoxFuture<'_, BusResult<Vec<(String, FullJid, ResourceState)>>> {
        async move {
            let mut c = self.conn.clone();
            let nodes: Vec<String> = redis::cmd("SMEMBERS")
                .arg(self.nodes_key())
                .query_async(&mut c)
                .await
                .map_err(err)?;
            let mut bares = std::collections::BTreeSet::new();
            for node in &nodes {
                let list: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(self.key("nodesess", node))
                    .query_async(&mut c)
                    .await
                    .map_err(err)?;
                bares.extend(list);
            }
            let bares: Vec<String> = bares.into_iter().collect();
            let mut out = Vec::new();
            // Hashes in pipelined batches: one round trip per 500 users.
            for chunk in bares.chunks(500) {
                let mut pipe = redis::pipe();
                for bare in chunk {
                    pipe.cmd("HGETALL").arg(self.key("sess", bare));
                }
                let hashes: Vec<Vec<(String, String)>> =
                    pipe.query_async(&mut c).await.map_err(err)?;
                for (bare, fields) in chunk.iter().zip(hashes) {
                    for (resource, value) in fields {
                        let Some((node, state)) = codec::decode_state(&value) else {
                            continue;
                        };
                        if let Ok(jid) = FullJid::new(&format!("{bare}/{resource}")) {
                            out.push((node, jid, state));
                        }
                    }
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn take_node<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, BusResult<Vec<(FullJid, ResourceState)>>> {
        async move {
            let mut c = self.conn.clone();
            let set = self.key("nodesess", node);
            let bares: Vec<String> = redis::cmd("SMEMBERS")
                .arg(&set)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            let mut out = Vec::new();
            for bare in bares {
                let key = self.key("sess", &bare);
                let fields: Vec<(String, String)> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .map_err(err)?;
                for (resource, value) in fields {
                    if codec::value_node(&value) != node {
                        continue;
                    }
                    let deleted: i64 = redis::cmd("EVAL")
                        .arg(DELETE_IF_NODE)
                        .arg(1)
                        .arg(&key)
                        .arg(&resource)
                        .arg(node)
                        .query_async(&mut c)
                        .await
                        .map_err(err)?;
                    let parsed = codec::decode_state(&value);
                    if let (1, Some((_, state)), Ok(jid)) =
                        (deleted, parsed, FullJid::new(&format!("{bare}/{resource}")))
                    {
                        out.push((jid, state));
                    }
                }
            }
            redis::cmd("DEL")
                .arg(&set)
                .query_async::<()>(&mut c)
                .await
                .map_err(err)?;
            Ok(out)
        }
        .boxed()
    }
}

impl Bus for RedisCluster {
    fn publish<'a>(&'a self, changes: &'a [Change]) -> BoxFuture<'a, BusResult<()>> {
        async move {
            let mut pipe = redis::pipe();
            for change in changes {
                pipe.cmd("PUBLISH")
                    .arg(self.channel())
                    .arg(codec::encode_change(change))
                    .ignore();
            }
            let mut c = self.conn.clone();
            pipe.query_async::<()>(&mut c).await.map_err(err)
        }
        .boxed()
    }

    fn subscribe(&self) -> BoxFuture<'_, BusResult<BoxStream<'static, Change>>> {
        async move {
            let mut pubsub = self.client.get_async_pubsub().await.map_err(err)?;
            pubsub.subscribe(self.channel()).await.map_err(err)?;
            let stream = pubsub.into_on_message().filter_map(|msg| async move {
                codec::decode_change(std::str::from_utf8(msg.get_payload_bytes()).ok()?)
            });
            Ok(stream.boxed())
        }
        .boxed()
    }

    fn send<'a>(
        &'a self,
        batch: &'a [(String, String, Delivery)],
    ) -> BoxFuture<'a, BusResult<Vec<bool>>> {
        async move {
            // Grouped by target node, in order within each.
            let mut nodes: Vec<&str> = Vec::new();
            for (node, _, _) in batch {
                if !nodes.contains(&node.as_str()) {
                    nodes.push(node);
                }
            }
            let mut pipe = redis::pipe();
            for node in &nodes {
                // Trimmed only beyond the bound (approximately, which is
                // cheap): a node that stopped reading loses its oldest.
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(&self.append.sha)
                    .arg(2)
                    .arg(self.key("node", node))
                    .arg(self.key("inbox", node))
                    .arg(self.inbox_max);
                let mine: Vec<(&str, &Delivery)> = batch
                    .iter()
                    .filter(|(n, _, _)| n == node)
                    .map(|(_, to, d)| (to.as_str(), d))
                    .collect();
                // One entry per node and batch: one stanza as it is,
                // several packed (`codec::pack`).
                match mine[..] {
                    [(to, delivery)] => {
                        cmd.arg("to").arg(to);
                        match delivery {
                            Delivery::Stanza(stanza) => cmd.arg("s").arg(stanza.as_ref()),
                            Delivery::Replaced(session) => cmd.arg("r").arg(*session),
                            Delivery::Answer(iq) => cmd.arg("a").arg(iq.as_ref()),
                            Delivery::TakeOver(r) => cmd.arg("o").arg(r.as_ref()),
                            Delivery::HandedOver(s) => cmd.arg("h").arg(s.as_ref()),
                            Delivery::Component(s) => cmd.arg("k").arg(s.as_ref()),
                            Delivery::Room(s) => cmd.arg("m").arg(s.as_ref()),
                            // Packed even alone: the reader addresses it
                            // while unpacking (`p` is read first).
                            Delivery::Unaddressed { .. } => cmd.arg("p").arg(codec::pack(&mine)),
                        };
                    }
                    _ => {
                        cmd.arg("p").arg(codec::pack(&mine));
                    }
                }
            }
            let appended: Vec<i64> = self.query_scripts(&pipe).await?;
            Ok(batch
                .iter()
                .map(|(node, _, _)| {
                    nodes
                        .iter()
                        .position(|n| n == node)
                        .and_then(|i| appended.get(i))
                        == Some(&1)
                })
                .collect())
        }
        .boxed()
    }

    fn open_inbox<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<()>> {
        async move {
            let mut c = self.conn.clone();
            // From id 0: what a previous run of this node left unread is
            // read now, not skipped.
            let made: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.key("inbox", node))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut c)
                .await;
            match made {
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                other => other.map_err(err),
            }
        }
        .boxed()
    }

    fn receive<'a>(
        &'a self,
        node: &'a str,
        done: &'a [String],
        max: usize,
        block_ms: u64,
    ) -> BoxFuture<'a, BusResult<Vec<InboxEntry>>> {
        async move {
            let mut c = self.reader.clone();
            let key = self.key("inbox", node);
            // NOACK: nothing goes to the group's pending list, so handled
            // entries need only their XDEL (what stays in the stream is
            // what the node has not finished; a drain reads the stream,
            // not the pending list). The XDEL of the previous read rides
            // in the same round trip as this read: at a moderate rate, a
            // read often brings one entry, and two round trips per entry
            // were most of the bus's cost.
            let mut pipe = redis::pipe();
            if !done.is_empty() {
                pipe.cmd("XDEL").arg(&key).arg(done).ignore();
            }
            pipe.cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(node)
                .arg("COUNT")
                .arg(max)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("NOACK")
                .arg("STREAMS")
                .arg(&key)
                .arg(">");
            let (reply,): (Option<StreamReadReply>,) =
                pipe.query_async(&mut c).await.map_err(err)?;
            Ok(reply
                .map(|r| r.keys.into_iter().flat_map(|k| entries(k.ids)).collect())
                .unwrap_or_default())
        }
        .boxed()
    }

    fn ack<'a>(&'a self, node: &'a str, ids: &'a [String]) -> BoxFuture<'a, BusResult<()>> {
        async move {
            if ids.is_empty() {
                return Ok(());
            }
            let key = self.key("inbox", node);
            // Deleted once acknowledged: what stays in the stream is
            // exactly what a dead node left undone.
            let mut pipe = redis::pipe();
            pipe.cmd("XACK").arg(&key).arg(GROUP).arg(ids).ignore();
            pipe.cmd("XDEL").arg(&key).arg(ids).ignore();
            let mut c = self.conn.clone();
            pipe.query_async::<()>(&mut c).await.map_err(err)
        }
        .boxed()
    }

    fn unacked<'a>(
        &'a self,
        node: &'a str,
        after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, BusResult<Vec<InboxEntry>>> {
        async move {
            let mut c = self.conn.clone();
            let start = match after {
                Some(id) => format!("({id}"),
                None => "-".to_string(),
            };
            let reply: StreamRangeReply = redis::cmd("XRANGE")
                .arg(self.key("inbox", node))
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(max)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            Ok(entries(reply.ids))
        }
        .boxed()
    }

    fn drop_inbox<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BusResult<()>> {
        async move {
            let mut c = self.conn.clone();
            redis::cmd("DEL")
                .arg(self.key("inbox", node))
                .query_async::<()>(&mut c)
                .await
                .map_err(err)
        }
        .boxed()
    }
}
