//! The message of the day (XEP-0133 set-motd / edit-motd / delete-motd):
//! one text per host, stored in the `motd` table and sent as a headline
//! from the host to the first session of an account that sends its initial
//! presence after the text changed — once per change, not at every login
//! (as ejabberd does); `motd_seen` remembers, per account, a digest of the
//! text it was sent.
//!
//! Every login would otherwise read the table, so the text is cached per
//! host (one entry per configured host at most, with "none" cached too);
//! the admin actions write the table and the cache together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jid::FullJid;

use crate::server::Server;
use crate::sessions::OutStanza;
use crate::xml::Element;

#[derive(Default)]
pub struct Motd {
    /// Host → its text (None: known to have none).
    cache: Mutex<HashMap<String, Option<Arc<str>>>>,
}

impl Motd {
    fn cached(&self, host: &str) -> Option<Option<Arc<str>>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(host).cloned()
    }

    /// Records what the table now holds for `host`.
    pub fn remember(&self, host: &str, text: Option<&str>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(host.to_string(), text.map(Arc::from));
    }

    /// The message of the day of `host`, from the cache or the table.
    pub async fn get(&self, server: &Server, host: &str) -> Option<Arc<str>> {
        if let Some(known) = self.cached(host) {
            return known;
        }
        match server.store.motd_get(host).await {
            Ok(text) => {
                // Only hosts of ours reach here, so the cache stays bounded.
                self.remember(host, text.as_deref());
                text.map(Arc::from)
            }
            Err(e) => {
                // Not cached: the next login tries again.
                tracing::error!(error = %e, "reading the message of the day");
                None
            }
        }
    }

    /// Sends `host`'s message of the day to a session that just became
    /// available, if there is one and its account was not sent this text
    /// yet.
    pub async fn deliver(&self, server: &Server, jid: &FullJid) {
        let host = jid.domain().as_str();
        let Some(text) = self.get(server, host).await else {
            return;
        };
        let Some(user) = jid.node() else {
            return;
        };
        match (server.store)
            .motd_mark_seen(host, user.as_str(), &digest(&text))
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                // Better missed once than repeated at every login.
                tracing::error!(error = %e, "recording the message of the day sent");
                return;
            }
        }
        let message = Element::new("message", "jabber:client")
            .with_attr("from", host)
            .with_attr("to", jid.as_str())
            .with_attr("type", "headline")
            .with_attr("id", format!("motd-{:x}", server.next_id()))
            .with_child(Element::new("subject", "jabber:client").with_text("Message of the day"))
            .with_child(Element::new("body", "jabber:client").with_text(&*text));
        let _ = server.sessions.send_to_full(jid, OutStanza::new(message));
    }
}

/// What names a text in `motd_seen`: hex of the first 16 bytes of its
/// SHA-256 (a fixed 32 characters whatever the text's length).
fn digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
