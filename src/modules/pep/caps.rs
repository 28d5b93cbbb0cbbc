//! What contacts' clients want to hear of: their entity capabilities
//! (XEP-0115) from presence, the features behind each verification string
//! (asked once with disco#info, checked against the hash, cached), and
//! which `ver` each full JID announced last. PEP notifications go to the
//! resources whose features include `<node>+notify` (XEP-0163 §4.2.1).

use crate::stanza::bare::Bare;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use jid::{BareJid, FullJid};

/// A resource's last announced capabilities, and the owners whose last
/// items it was already sent since it became available.
#[derive(Debug, Default)]
struct Seen {
    ver: String,
    served: HashSet<BareJid>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Verification string → the features it stands for (checked).
    by_ver: HashMap<String, Arc<HashSet<String>>>,
    /// Insertion order of `by_ver`, oldest first, for eviction.
    order: VecDeque<String>,
    /// Vers being asked about now.
    pending: HashSet<String>,
    /// Bare JID → resource → what it announced.
    by_bare: HashMap<BareJid, HashMap<String, Seen>>,
    resources: usize,
}

/// The capabilities cache and per-resource announcements (bounded).
#[derive(Debug, Default)]
pub struct ContactCaps {
    inner: Mutex<Inner>,
}

/// What [`ContactCaps::announce`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Announced {
    /// The same ver as before: nothing new.
    Same,
    /// A new ver whose features are known.
    Known(Arc<HashSet<String>>),
    /// A new ver nobody asked about yet: the caller asks (and reports with
    /// [`ContactCaps::learned`]).
    Ask,
    /// A new ver already being asked about.
    Asking,
    /// Not remembered (too many resources tracked).
    Full,
}

impl ContactCaps {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Each update leaves the maps consistent: poisoning cannot half-do one.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `jid` announced `ver` in available presence.
    /// At most `max_queries` vers are asked about at once: beyond, a new
    /// one is remembered for the resource but not asked (a peer inventing
    /// vers cannot fill the server's IQ tracker).
    pub fn announce(
        &self,
        jid: &FullJid,
        ver: &str,
        max_resources: usize,
        max_queries: usize,
    ) -> Announced {
        let mut inner = self.lock();
        let bare = jid.bare();
        let resource = jid.resource().as_str();
        let is_new = !inner
            .by_bare
            .get(&bare)
            .is_some_and(|m| m.contains_key(resource));
        if is_new && inner.resources >= max_resources {
            return Announced::Full;
        }
        let seen = inner
            .by_bare
            .entry(bare)
            .or_default()
            .entry(resource.to_owned())
            .or_default();
        if !is_new && seen.ver == ver {
            return Announced::Same;
        }
        seen.ver = ver.to_owned();
        seen.served.clear();
        if is_new {
            inner.resources += 1;
        }
        if let Some(f) = inner.by_ver.get(ver) {
            return Announced::Known(f.clone());
        }
        if inner.pending.contains(ver) || inner.pending.len() >= max_queries {
            Announced::Asking
        } else if inner.pending.insert(ver.to_owned()) {
            Announced::Ask
        } else {
            Announced::Asking
        }
    }

    /// The answer about `ver`: its features when the hash checked out,
    /// None when it did not or nothing came (not cached; asked again by
    /// the next resource announcing it).
    pub fn learned(&self, ver: &str, features: Option<HashSet<String>>, max: usize) {
        let mut inner = self.lock();
        inner.pending.remove(ver);
        let Some(features) = features else {
            return;
        };
        if inner
            .by_ver
            .insert(ver.to_owned(), Arc::new(features))
            .is_none()
        {
            inner.order.push_back(ver.to_owned());
        }
        while inner.order.len() > max {
            if let Some(old) = inner.order.pop_front() {
                inner.by_ver.remove(&old);
            }
        }
    }

    /// `jid` went unavailable (or its session ended).
    pub fn forget(&self, jid: &FullJid) {
        let mut inner = self.lock();
        let bare = jid.bare();
        let Some(m) = inner.by_bare.get_mut(&bare) else {
            return;
        };
        if m.remove(jid.resource().as_str()).is_some() {
            if m.is_empty() {
                inner.by_bare.remove(&bare);
            }
            inner.resources -= 1;
        }
    }

    /// The features `jid` announced, if known.
    pub fn features(&self, jid: &FullJid) -> Option<Arc<HashSet<String>>> {
        let inner = self.lock();
        let ver = &inner
            .by_bare
            .get(&jid.bare())?
            .get(jid.resource().as_str())?
            .ver;
        inner.by_ver.get(ver).cloned()
    }

    /// Does `jid` want notifications of `node`?
    pub fn wants(&self, jid: &FullJid, node: &str) -> bool {
        let inner = self.lock();
        let Some(seen) = inner
            .by_bare
            .get(&jid.bare())
            .and_then(|m| m.get(jid.resource().as_str()))
        else {
            return false;
        };
        inner
            .by_ver
            .get(&seen.ver)
            .is_some_and(|f| f.contains(&notify_feature(node)))
    }

    /// The resources of `bare` that announced a ver, e.g. a remote
    /// contact's (local ones are in the session registry too).
    pub fn resources(&self, bare: &BareJid) -> Vec<FullJid> {
        let inner = self.lock();
        inner
            .by_bare
            .get(bare)
            .map(|m| {
                m.keys()
                    .filter_map(|r| bare.with_resource_str(r).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Marks that `jid` got `owner`'s last items; false if it already had.
    pub fn serve(&self, jid: &FullJid, owner: &BareJid) -> bool {
        let mut inner = self.lock();
        inner
            .by_bare
            .get_mut(&jid.bare())
            .and_then(|m| m.get_mut(jid.resource().as_str()))
            .is_some_and(|s| s.served.insert(owner.clone()))
    }

    /// Resources and cached vers, for tests and `ctl`.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.resources, inner.by_ver.len())
    }
}

/// The disco feature saying a client wants a node's notifications.
pub fn notify_feature(node: &str) -> String {
    format!("{node}+notify")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> FullJid {
        FullJid::new(s).unwrap()
    }

    #[test]
    fn announce_learn_forget() {
        let c = ContactCaps::default();
        let a = jid("a@x/1");
        assert_eq!(c.announce(&a, "v1", 10, 10), Announced::Ask);
        assert_eq!(c.announce(&jid("b@x/1"), "v1", 10, 10), Announced::Asking);
        assert_eq!(c.announce(&a, "v1", 10, 10), Announced::Same);
        assert!(!c.wants(&a, "n"));
        c.learned("v1", Some(["n+notify".to_owned()].into()), 10);
        assert!(c.wants(&a, "n"));
        assert!(!c.wants(&a, "m"));
        assert!(matches!(
            c.announce(&jid("a@x/2"), "v1", 10, 10),
            Announced::Known(_)
        ));
        assert_eq!(c.resources(&BareJid::new("a@x").unwrap()).len(), 2);
        c.forget(&a);
        assert!(!c.wants(&a, "n"));
        assert_eq!(c.counts().0, 2);
    }

    #[test]
    fn bounded() {
        let c = ContactCaps::default();
        assert_eq!(c.announce(&jid("a@x/1"), "v1", 1, 1), Announced::Ask);
        assert_eq!(c.announce(&jid("a@x/2"), "v1", 1, 1), Announced::Full);
        assert_eq!(c.announce(&jid("a@x/1"), "v2", 2, 1), Announced::Asking);
        c.learned("v1", Some(HashSet::new()), 1);
        c.learned("v2", Some(HashSet::new()), 1);
        assert_eq!(c.counts().1, 1);
    }
}
