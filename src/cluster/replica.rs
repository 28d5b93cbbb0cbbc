//! This node's copy of the sessions other nodes hold: fed by change
//! events, rebuilt from the directory at start and after the bus
//! reconnects, so routing a stanza costs no Redis round trip.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use jid::FullJid;

use super::bus::Change;
use crate::sessions::ResourceState;
use crate::stanza::bare::Bare;

/// One remote resource.
#[derive(Debug)]
struct Remote {
    resource: String,
    node: Arc<str>,
    state: ResourceState,
}

/// Remote sessions by bare JID (this node's own are never here: the
/// session registry has them).
#[derive(Debug)]
pub struct Replica {
    me: String,
    by_bare: RwLock<HashMap<String, Vec<Remote>>>,
    /// External components other nodes serve: domain → node.
    components: RwLock<HashMap<String, Arc<str>>>,
    /// Counts the times a node was dropped or everything reloaded: what
    /// was remembered of other nodes (a room's holder) may be stale.
    departures: std::sync::atomic::AtomicU64,
}

impl Replica {
    pub fn new(me: &str) -> Replica {
        Replica {
            me: me.to_string(),
            by_bare: RwLock::default(),
            components: RwLock::default(),
            departures: Default::default(),
        }
    }

    /// Changes whenever a node is dropped or the replica reloaded.
    pub fn departures(&self) -> u64 {
        self.departures.load(std::sync::atomic::Ordering::Acquire)
    }

    fn departed(&self) {
        self.departures
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<Remote>>> {
        // Every update is one Vec or map operation: poisoning is ignored.
        self.by_bare.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Vec<Remote>>> {
        self.by_bare.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one change announced on the bus.
    pub fn apply(&self, change: Change) {
        match change {
            Change::Bound { node, .. } | Change::Unbound { node, .. } if node == self.me => {}
            Change::NodeDown { node } if node == self.me => {}
            Change::Bound {
                node, jid, state, ..
            } => self.put(&node, &jid, state),
            Change::Unbound { node, jid, .. } => {
                let mut map = self.write();
                let bare = jid.bare_str();
                if let Some(list) = map.get_mut(bare) {
                    list.retain(|r| {
                        !(r.resource == jid.resource().as_str() && &*r.node == node.as_str())
                    });
                    if list.is_empty() {
                        map.remove(bare);
                    }
                }
            }
            Change::NodeDown { node } => {
                self.drop_node(&node);
            }
            // Acted on by `follow`, not a session of the replica.
            Change::KeptForLater { .. } => {}
            Change::Component { node, .. } if node == self.me => {}
            Change::Component { node, domain, up } => {
                let mut map = self.components_mut();
                if up {
                    map.insert(domain, node.into());
                } else if map.get(&domain).is_some_and(|n| **n == *node) {
                    map.remove(&domain);
                }
            }
        }
    }

    fn put(&self, node: &str, jid: &FullJid, state: ResourceState) {
        let mut map = self.write();
        let list = map.entry(jid.bare_str().to_string()).or_default();
        let resource = jid.resource().as_str();
        // One full JID lives on one node: the latest to bind it wins,
        // as locally.
        match list.iter_mut().find(|r| r.resource == resource) {
            Some(r) => {
                if &*r.node != node {
                    r.node = node.into();
                }
                r.state = state;
            }
            None => list.push(Remote {
                resource: resource.to_string(),
                node: node.into(),
                state,
            }),
        }
    }

    /// Replaces everything with a snapshot of the directory.
    pub fn replace_all(&self, sessions: Vec<(String, FullJid, ResourceState)>) {
        let mut fresh = Replica::new(&self.me);
        for (node, jid, state) in sessions {
            if node != self.me {
                fresh.put(&node, &jid, state);
            }
        }
        let map = std::mem::take(fresh.by_bare.get_mut().unwrap_or_else(|e| e.into_inner()));
        *self.write() = map;
        self.departed();
    }

    /// The components other nodes serve, as the directory lists them
    /// (domain, node).
    pub fn replace_components(&self, all: Vec<(String, String)>) {
        *self.components_mut() = all
            .into_iter()
            .filter(|(_, node)| *node != self.me)
            .map(|(domain, node)| (domain, node.into()))
            .collect();
    }

    /// The node serving the component `domain`, if another one does.
    pub fn component_node(&self, domain: &str) -> Option<Arc<str>> {
        self.components
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
            .cloned()
    }

    fn components_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<str>>> {
        self.components.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every session (and component) of `node`; returns how many
    /// sessions there were.
    pub fn drop_node(&self, node: &str) -> usize {
        self.departed();
        self.components_mut().retain(|_, n| **n != *node);
        let mut map = self.write();
        let mut dropped = 0;
        map.retain(|_, list| {
            let before = list.len();
            list.retain(|r| &*r.node != node);
            dropped += before - list.len();
            !list.is_empty()
        });
        dropped
    }

    /// The node holding `jid`, if another one does.
    pub fn node_of(&self, jid: &FullJid) -> Option<Arc<str>> {
        self.read()
            .get(jid.bare_str())?
            .iter()
            .find(|r| r.resource == jid.resource().as_str())
            .map(|r| r.node.clone())
    }

    /// Forgets a remote resource; the node that held it.
    pub fn take(&self, jid: &FullJid) -> Option<Arc<str>> {
        let mut map = self.write();
        let bare = jid.bare_str();
        let list = map.get_mut(bare)?;
        let i = list
            .iter()
            .position(|r| r.resource == jid.resource().as_str())?;
        let gone = list.swap_remove(i);
        if list.is_empty() {
            map.remove(bare);
        }
        Some(gone.node)
    }

    /// Calls `f` with each remote resource of `bare`.
    pub fn for_each(&self, bare: &str, f: &mut dyn FnMut(&str, &ResourceState)) {
        if let Some(list) = self.read().get(bare) {
            for r in list {
                f(&r.resource, &r.state);
            }
        }
    }

    /// The nodes holding a resource of `bare`, each once.
    pub fn nodes_of(&self, bare: &str) -> Vec<Arc<str>> {
        let mut nodes: Vec<Arc<str>> = Vec::new();
        for r in self.read().get(bare).into_iter().flatten() {
            if !nodes.contains(&r.node) {
                nodes.push(r.node.clone());
            }
        }
        nodes
    }

    /// Remote sessions per node.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for r in self.read().values().flatten() {
            *out.entry(r.node.to_string()).or_insert(0) += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(node: &str, jid: &str, priority: i8) -> Change {
        Change::Bound {
            node: node.into(),
            jid: FullJid::new(jid).unwrap(),
            state: ResourceState {
                priority,
                ..Default::default()
            },
            claim: false,
        }
    }

    #[test]
    fn follows_changes_and_ignores_its_own_node() {
        let r = Replica::new("me");
        r.apply(bound("a", "u@x/1", 1));
        r.apply(bound("b", "u@x/2", 2));
        r.apply(bound("me", "u@x/3", 3));
        let mut seen = Vec::new();
        r.for_each("u@x", &mut |res, s| {
            seen.push((res.to_string(), s.priority))
        });
        seen.sort();
        assert_eq!(seen, [("1".to_string(), 1), ("2".to_string(), 2)]);
        assert_eq!(
            r.node_of(&FullJid::new("u@x/2").unwrap()).as_deref(),
            Some("b")
        );
        // The same full JID bound on another node moves there.
        r.apply(bound("a", "u@x/2", 5));
        assert_eq!(
            r.node_of(&FullJid::new("u@x/2").unwrap()).as_deref(),
            Some("a")
        );
        // An unbind from a node that no longer holds it changes nothing.
        r.apply(Change::Unbound {
            node: "b".into(),
            jid: FullJid::new("u@x/2").unwrap(),
            last_local: true,
        });
        assert!(r.node_of(&FullJid::new("u@x/2").unwrap()).is_some());
        r.apply(Change::NodeDown { node: "a".into() });
        assert!(r.counts().is_empty());
    }
}
