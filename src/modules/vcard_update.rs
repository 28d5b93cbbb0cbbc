//! The avatar hash in presence (XEP-0153 §4, done by the server as
//! XEP-0398 §5 asks): every available presence a user sends, broadcast or
//! directed, carries `<x xmlns='vcard-temp:x:update'><photo>SHA-1</photo></x>`
//! of the account's avatar, so contacts that only know vCard avatars
//! (and every client in a group chat) learn of it without the sender's
//! client downloading its own vCard first.
//!
//! The hash per account is kept in memory (`[limits] max_avatar_hashes`),
//! read from the stored vCard when unknown, and changed by the owner's
//! successful vCard set or `urn:xmpp:avatar:metadata` publish (the
//! conversion in `avatar.rs` keeps the two stores in step, so the vCard
//! is the one place to read after a restart). On a change, each available
//! resource's presence is broadcast again with the new hash: modern
//! clients publish through PEP and never re-send presence for it, and a
//! vCard-only contact would otherwise see the old avatar until the next
//! presence. Directed presence is not re-sent (XEP-0398 §5.1 leaves that
//! to the client).

use crate::stanza::bare::Bare;
use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use jid::BareJid;

use super::avatar::{self, NS_METADATA};
use super::vcard;
use crate::feature::iq::IqTarget;
use crate::feature::{Event, EventKind, Feature, HookFuture, Verdict};
use crate::pubsub;
use crate::router::Origin;
use crate::server::Server;
use crate::xml::Element;

pub const NS_UPDATE: &str = "vcard-temp:x:update";

/// What the server knows of an account's avatar.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Photo {
    /// None stored: presence is left as the client sent it.
    Unset,
    /// It was removed while the server ran: an empty `<photo/>` says so.
    Removed,
    /// The hex SHA-1 of the image.
    Hash(String),
}

/// The feature: the hashes, bounded.
#[derive(Debug, Default)]
pub struct VcardUpdate {
    hashes: Mutex<HashMap<String, Photo>>,
}

impl VcardUpdate {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Photo>> {
        // Single inserts and removals: a panic cannot leave it half done.
        self.hashes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many accounts' hashes are held (at most `max_avatar_hashes`).
    pub fn held(&self) -> usize {
        self.lock().len()
    }

    fn cached(&self, account: &str) -> Option<Photo> {
        self.lock().get(account).cloned()
    }

    /// Remembers `photo` for `account`; the previous value, if known.
    fn remember(&self, server: &Server, account: &str, photo: Photo) -> Option<Photo> {
        let mut map = self.lock();
        if !map.contains_key(account) && map.len() >= server.config().limits.max_avatar_hashes {
            // Any one goes: it is read from the vCard again when needed.
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
        }
        map.insert(account.to_owned(), photo)
    }

    /// The account's avatar as stored (its vCard's PHOTO).
    async fn load(&self, server: &Server, account: &BareJid) -> Photo {
        let (domain, user) = (
            account.domain().as_str(),
            account.node().map_or("", |n| n.as_str()),
        );
        let photo = match server
            .store
            .user_data_get(domain, user, vcard::STORE_KEY)
            .await
        {
            Ok(Some(xml)) => super::xml_from_storage(&xml, server.config().limits.max_depth)
                .and_then(|v| v.into_iter().next())
                .map_or(Photo::Unset, |card| {
                    photo_of_vcard(&card).unwrap_or(Photo::Unset)
                }),
            Ok(None) => Photo::Unset,
            Err(e) => {
                // Not remembered: asked again with the next presence.
                tracing::error!(error = %e, "vcard storage");
                return Photo::Unset;
            }
        };
        self.remember(server, account.as_str(), photo.clone());
        photo
    }
}

impl Feature for VcardUpdate {
    fn name(&self) -> &'static str {
        "vcard-update"
    }

    fn xeps(&self) -> &[u16] {
        &[153]
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[
            // Before the presence feature stores and sends the stanza.
            (EventKind::Presence, -20),
            (EventKind::IqSetDone, 10),
            (EventKind::AccountDeleted, 0),
        ]
    }

    fn on_event_now(&self, _server: &Server, event: &mut Event<'_>) -> Option<Verdict> {
        match event {
            Event::Presence {
                origin: Origin::Session(full),
                stanza,
                ..
            } if stanza.attr("type").is_none() => match self.cached(full.bare().as_str()) {
                Some(photo) => {
                    apply(stanza, &photo);
                    Some(Verdict::Continue)
                }
                None => None,
            },
            Event::IqSetDone {
                target: IqTarget::Account { own: true },
                payload,
                ..
            } if payload.is("vCard", vcard::NS) || publish_of(payload, NS_METADATA).is_some() => {
                None
            }
            Event::AccountDeleted { user } => {
                self.lock().remove(user.as_str());
                Some(Verdict::Continue)
            }
            _ => Some(Verdict::Continue),
        }
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            match event {
                Event::Presence {
                    origin: Origin::Session(full),
                    stanza,
                    ..
                } => {
                    let photo = self.load(server, &full.bare()).await;
                    apply(stanza, &photo);
                }
                Event::IqSetDone { from, payload, .. } => {
                    let account = from.bare();
                    let new = if payload.is("vCard", vcard::NS) {
                        photo_of_vcard(payload)
                    } else {
                        publish_of(payload, NS_METADATA).and_then(photo_of_metadata)
                    };
                    let Some(new) = new else {
                        return Verdict::Continue;
                    };
                    let old = self.remember(server, account.as_str(), new.clone());
                    let new = match (old, new) {
                        // Nothing was there and nothing is: no news.
                        (None | Some(Photo::Unset), Photo::Removed) => {
                            self.remember(server, account.as_str(), Photo::Unset);
                            return Verdict::Continue;
                        }
                        (Some(old), new) if old == new => return Verdict::Continue,
                        (_, new) => new,
                    };
                    tracing::debug!(%account, ?new, "avatar changed");
                    rebroadcast(server, &account).await;
                }
                _ => {}
            }
            Verdict::Continue
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Puts the hash into an available presence (XEP-0398 §5): an empty
/// `<photo/>` the client sent stays (it advertises no avatar on purpose);
/// an `<x/>` without photo, or a photo with another hash, is replaced.
fn apply(stanza: &mut Element, photo: &Photo) {
    let text = match photo {
        Photo::Unset => return,
        Photo::Removed => "",
        Photo::Hash(h) => h.as_str(),
    };
    if let Some(sent) = stanza
        .get_child("x", NS_UPDATE)
        .and_then(|x| x.get_child("photo", NS_UPDATE))
        .map(|p| p.text())
    {
        if sent.trim().is_empty() || sent.trim() == text {
            return;
        }
    }
    while stanza.remove_child("x", NS_UPDATE).is_some() {}
    stanza.append_child(
        Element::new("x", NS_UPDATE).with_child(Element::new("photo", NS_UPDATE).with_text(text)),
    );
}

/// The `<item/>` payload's parent of a publish to `node`, if `payload` is one.
fn publish_of<'a>(payload: &'a Element, node: &str) -> Option<&'a Element> {
    if !payload.is("pubsub", pubsub::NS) {
        return None;
    }
    let publish = payload.get_child("publish", pubsub::NS)?;
    (publish.attr("node") == Some(node)).then_some(publish)
}

/// The avatar a vCard carries: the hash of its PHOTO's image, or removed
/// when it has none. None when the PHOTO cannot be read (kept as it was).
fn photo_of_vcard(card: &Element) -> Option<Photo> {
    let Some(photo) = card.get_child("PHOTO", vcard::NS) else {
        return Some(Photo::Removed);
    };
    let b64: String = photo
        .get_child("BINVAL", vcard::NS)?
        .text()
        .split_whitespace()
        .collect();
    let image = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some(Photo::Hash(avatar::avatar_id(&image)))
}

/// The avatar a metadata publish names: the id of its first `<info/>`
/// without a URL (the image in the data node, XEP-0398 §4.1); empty
/// metadata disables the avatar (XEP-0084 §4.2).
fn photo_of_metadata(publish: &Element) -> Option<Photo> {
    let metadata = publish
        .get_child("item", pubsub::NS)?
        .get_child("metadata", NS_METADATA)?;
    let infos: Vec<&Element> = metadata
        .children()
        .filter(|i| i.is("info", NS_METADATA))
        .collect();
    if infos.is_empty() {
        return Some(Photo::Removed);
    }
    let id = infos.iter().find(|i| i.attr("url").is_none())?.attr("id")?;
    // A SHA-1 in hex, as XEP-0084 requires; anything else is not a hash
    // a vCard-only contact could compare.
    let valid = id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| Photo::Hash(id.to_ascii_lowercase()))
}

/// Sends each available resource's current presence again, through the
/// router as if the client had re-sent it (XEP-0153 §4.2 asks clients to
/// do so after an avatar change): the presence feature broadcasts it and
/// stores it for probes, and [`apply`] puts in the new hash.
async fn rebroadcast(server: &Server, account: &BareJid) {
    for (full, mut presence) in server.sessions.local_presences(account) {
        // The hash we put in last time goes; the new one comes back.
        while presence.remove_child("x", NS_UPDATE).is_some() {}
        presence.remove_attr("to");
        if let Err(e) = crate::router::route_from_client(server, &full, presence).await {
            tracing::debug!(%full, ?e, "presence not sent again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(inner: &str) -> Element {
        let xml = format!("<presence xmlns='jabber:client'>{inner}</presence>");
        crate::modules::xml_from_storage(&xml, 16)
            .unwrap()
            .remove(0)
    }

    fn photo(e: &Element) -> Option<String> {
        Some(
            e.get_child("x", NS_UPDATE)?
                .get_child("photo", NS_UPDATE)?
                .text(),
        )
    }

    #[test]
    fn hash_goes_in_unless_the_client_sent_an_empty_photo() {
        let h = Photo::Hash("ab".repeat(20));
        let mut p = presence("<show>away</show>");
        apply(&mut p, &h);
        assert_eq!(photo(&p), Some("ab".repeat(20)));

        let mut p = presence("<x xmlns='vcard-temp:x:update'/>");
        apply(&mut p, &h);
        assert_eq!(photo(&p), Some("ab".repeat(20)));
        assert_eq!(p.children().count(), 1);

        let mut p = presence("<x xmlns='vcard-temp:x:update'><photo>0123</photo></x>");
        apply(&mut p, &h);
        assert_eq!(photo(&p), Some("ab".repeat(20)));

        let mut p = presence("<x xmlns='vcard-temp:x:update'><photo/></x>");
        apply(&mut p, &h);
        assert_eq!(photo(&p), Some(String::new()));

        let mut p = presence("");
        apply(&mut p, &Photo::Unset);
        assert_eq!(photo(&p), None);

        let mut p = presence("<x xmlns='vcard-temp:x:update'><photo>0123</photo></x>");
        apply(&mut p, &Photo::Removed);
        assert_eq!(photo(&p), Some(String::new()));
    }
}
