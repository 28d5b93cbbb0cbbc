//! Archiving preferences (XEP-0441, in the urn:xmpp:mam:2 namespace): a
//! default mode and JIDs always or never archived, one document per user
//! in the key-value store, cached.

use crate::stanza::bare::Bare;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jid::{BareJid, Jid};

use crate::modules::holders::Holders;
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::storage::StorageError;
use crate::xml::Element;

use super::NS_MAM;

/// The user-data key of the preferences document.
const KEY: &str = "mam:prefs";
/// Users whose preferences are cached; beyond it the cache starts afresh.
const CACHE_USERS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Always,
    Roster,
    Never,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "always" => Some(Mode::Always),
            "roster" => Some(Mode::Roster),
            "never" => Some(Mode::Never),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::Always => "always",
            Mode::Roster => "roster",
            Mode::Never => "never",
        }
    }
}

/// One user's preferences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefs {
    pub default: Mode,
    /// Bare JIDs, normalised.
    pub always: Vec<String>,
    pub never: Vec<String>,
}

/// What the preferences say of one conversation partner before the
/// roster is consulted.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Archive,
    Skip,
    /// `roster` mode and in neither list: archive if in the roster.
    IfInRoster,
}

impl Prefs {
    /// The decision for `peer` (bare JID). `never` wins over `always`:
    /// a JID in both is the user's mistake, and not keeping is the safe one.
    pub fn decide(&self, peer: &str) -> Decision {
        if self.never.iter().any(|j| j == peer) {
            Decision::Skip
        } else if self.always.iter().any(|j| j == peer) {
            Decision::Archive
        } else {
            self.default.decision()
        }
    }

    /// The `<prefs/>` element.
    pub fn to_element(&self) -> Element {
        let list = |name: &str, jids: &[String]| {
            let mut e = Element::new(name, NS_MAM);
            for j in jids {
                e.append_child(Element::new("jid", NS_MAM).with_text(j.clone()));
            }
            e
        };
        Element::new("prefs", NS_MAM)
            .with_attr("default", self.default.as_str())
            .with_child(list("always", &self.always))
            .with_child(list("never", &self.never))
    }

    /// Reads a `<prefs/>` a client set (bad-request when malformed,
    /// not-acceptable beyond `max_jids` in a list).
    pub fn from_element(e: &Element, max_jids: usize) -> Result<Prefs, StanzaError> {
        let bad = || StanzaError::from(StanzaErrorCondition::BadRequest);
        let default = e.attr("default").and_then(Mode::parse).ok_or_else(bad)?;
        let list = |name: &str| -> Result<Vec<String>, StanzaError> {
            let mut out = Vec::new();
            if let Some(l) = e.get_child(name, NS_MAM) {
                for j in l.children().filter(|c| c.is("jid", NS_MAM)) {
                    let jid = Jid::new(j.text().trim())
                        .map_err(|_| StanzaError::from(StanzaErrorCondition::JidMalformed))?;
                    let bare = jid.bare().to_string();
                    if !out.contains(&bare) {
                        out.push(bare);
                    }
                    if out.len() > max_jids {
                        return Err(StanzaError::with_text(
                            StanzaErrorCondition::NotAcceptable,
                            format!("at most {max_jids} JIDs per list"),
                        ));
                    }
                }
            }
            Ok(out)
        };
        Ok(Prefs {
            default,
            always: list("always")?,
            never: list("never")?,
        })
    }
}

/// The preferences in force, cached per user. Most users never set any:
/// who did is learnt with one scan (`modules::holders`), and anyone else
/// has the configured default without a database read.
#[derive(Debug)]
pub struct PrefsCache {
    /// Preferences read or set, at most [`CACHE_USERS`] users.
    by_user: Mutex<HashMap<BareJid, Arc<Prefs>, foldhash::fast::RandomState>>,
    holders: Holders,
}

impl Default for PrefsCache {
    fn default() -> PrefsCache {
        PrefsCache {
            by_user: Mutex::default(),
            holders: Holders::new(KEY),
        }
    }
}

fn parts(user: &BareJid) -> (&str, &str) {
    (
        user.domain().as_str(),
        user.node().map(|n| n.as_str()).unwrap_or_default(),
    )
}

impl PrefsCache {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<BareJid, Arc<Prefs>, foldhash::fast::RandomState>> {
        self.by_user.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `user`'s preferences say of `peer` (bare JID), without a copy
    /// of them when they are cached or the default.
    pub async fn decide(
        &self,
        server: &Server,
        user: &BareJid,
        peer: &str,
    ) -> Result<Decision, StorageError> {
        if let Some(p) = self.lock().get(user) {
            return Ok(p.decide(peer));
        }
        if !self.holders.may_have(server, user.as_str()).await {
            return Ok(default_mode(server).decision());
        }
        Ok(self.get(server, user).await?.decide(peer))
    }

    /// `user`'s preferences (the configured default if they set none).
    pub async fn get(&self, server: &Server, user: &BareJid) -> Result<Arc<Prefs>, StorageError> {
        if let Some(p) = self.lock().get(user) {
            return Ok(p.clone());
        }
        if !self.holders.may_have(server, user.as_str()).await {
            return Ok(Arc::new(default_prefs(server)));
        }
        let (d, u) = parts(user);
        let stored = server.store.user_data_get(d, u, KEY).await?;
        let prefs = stored
            .and_then(|s| crate::modules::xml_from_storage(&s, 8))
            .and_then(|mut els| els.pop())
            .and_then(|e| Prefs::from_element(&e, usize::MAX).ok())
            .unwrap_or_else(|| default_prefs(server));
        let prefs = Arc::new(prefs);
        let mut map = self.lock();
        if map.len() >= CACHE_USERS {
            map.clear();
        }
        map.insert(user.clone(), prefs.clone());
        Ok(prefs)
    }

    /// Stores new preferences for `user`.
    pub async fn set(
        &self,
        server: &Server,
        user: &BareJid,
        prefs: Prefs,
    ) -> Result<(), StorageError> {
        let (d, u) = parts(user);
        let text = crate::modules::xml_for_storage([&prefs.to_element()]);
        server.store.user_data_put(d, u, KEY, &text).await?;
        self.holders.added(user.as_str());
        let mut map = self.lock();
        if map.len() >= CACHE_USERS {
            map.clear();
        }
        map.insert(user.clone(), Arc::new(prefs));
        Ok(())
    }

    /// Forgets a deleted account's preferences.
    pub fn forget(&self, user: &BareJid) {
        self.lock().remove(user);
        self.holders.removed(user.as_str());
    }
}

/// The configured default mode.
fn default_mode(server: &Server) -> Mode {
    Mode::parse(&server.config_now().mam.default).unwrap_or(Mode::Always)
}

impl Mode {
    /// The decision of a user with this default and empty lists.
    fn decision(self) -> Decision {
        match self {
            Mode::Always => Decision::Archive,
            Mode::Never => Decision::Skip,
            Mode::Roster => Decision::IfInRoster,
        }
    }
}

/// The preferences of a user who set none.
pub fn default_prefs(server: &Server) -> Prefs {
    Prefs {
        default: default_mode(server),
        always: Vec::new(),
        never: Vec::new(),
    }
}
