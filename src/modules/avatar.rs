//! User avatars kept in step both ways (XEP-0398): a vCard photo
//! (XEP-0054/0153) set by an older client is published as User Avatar
//! (XEP-0084) data and metadata, and an avatar published through PEP
//! becomes the vCard's PHOTO. Each direction follows a successful IQ set
//! (`Event::IqSetDone`) and writes the other store directly, so neither
//! triggers the other again.

use crate::stanza::bare::Bare;
use base64::Engine;
use jid::BareJid;
use sha1::{Digest, Sha1};

use super::vcard;
use crate::feature::iq::IqTarget;
use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::pubsub::{self, Requester};
use crate::server::Server;
use crate::xml::Element;

pub const NS_DATA: &str = "urn:xmpp:avatar:data";
pub const NS_METADATA: &str = "urn:xmpp:avatar:metadata";
pub const NS_CONVERSION: &str = "urn:xmpp:pep-vcard-conversion:0";

/// The conversion feature.
#[derive(Debug, Default)]
pub struct AvatarConversion;

impl Feature for AvatarConversion {
    fn name(&self) -> &'static str {
        "avatar"
    }

    // The conversion needs the PEP nodes; without PEP the vCard alone
    // remains (its hash still goes into presence, `vcard_update`).
    fn enabled(&self, config: &crate::config::Config) -> bool {
        config.pep.enabled
    }

    fn xeps(&self) -> &[u16] {
        &[84, 398]
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &[],
            account: &[NS_CONVERSION],
        }
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[(EventKind::IqSetDone, 0)]
    }

    fn on_event_now(&self, _server: &Server, event: &mut Event<'_>) -> Option<Verdict> {
        // Most sets are neither a vCard nor an avatar: answer without waiting.
        match event {
            Event::IqSetDone {
                target: IqTarget::Account { own: true },
                payload,
                ..
            } if payload.is("vCard", vcard::NS) || publishes(payload, NS_METADATA) => None,
            _ => Some(Verdict::Continue),
        }
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            if let Event::IqSetDone { from, payload, .. } = event {
                if !server.config().pep.enabled {
                    return Verdict::Continue;
                }
                let owner = from.bare();
                if payload.is("vCard", vcard::NS) {
                    vcard_to_pep(server, &owner, payload).await;
                } else {
                    pep_to_vcard(server, &owner).await;
                }
            }
            Verdict::Continue
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Is `payload` a pubsub publish to `node`?
fn publishes(payload: &Element, node: &str) -> bool {
    payload.is("pubsub", pubsub::NS)
        && payload
            .get_child("publish", pubsub::NS)
            .is_some_and(|p| p.attr("node") == Some(node))
}

/// The hex SHA-1 of the image: the avatar's id (XEP-0084 §4.2).
pub(crate) fn avatar_id(image: &[u8]) -> String {
    Sha1::digest(image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Publishes as the owner through the engine (quotas, trimming and
/// notifications as for the owner's own publish).
async fn publish(server: &Server, owner: &BareJid, node: &str, item: Element) -> bool {
    let request = Element::new("pubsub", pubsub::NS).with_child(
        Element::new("publish", pubsub::NS)
            .with_attr("node", node)
            .with_child(item),
    );
    let jid = jid::Jid::from(owner.clone());
    let who = Requester {
        jid: &jid,
        owner: true,
        presence_subscribed: true,
        groups: &[],
    };
    let mut changes = Vec::new();
    let done = super::pep::service(server, owner)
        .handle(&who, &request, true, &mut changes)
        .await;
    super::pep::publish_changes(server, owner, &changes).await;
    done.is_ok()
}

/// A vCard with a PHOTO was stored: publish it as the avatar, unless the
/// avatar already is that image.
async fn vcard_to_pep(server: &Server, owner: &BareJid, vcard: &Element) {
    let Some(photo) = vcard.get_child("PHOTO", vcard::NS) else {
        return;
    };
    let Some(b64) = photo
        .get_child("BINVAL", vcard::NS)
        .map(|b| b.text().split_whitespace().collect::<String>())
    else {
        return;
    };
    let Ok(image) = base64::engine::general_purpose::STANDARD.decode(&b64) else {
        return;
    };
    let kind = photo
        .get_child("TYPE", vcard::NS)
        .map(|t| t.text())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "image/png".into());
    let id = avatar_id(&image);
    let service = super::pep::service(server, owner);
    let current = service.last_item(NS_METADATA).await.ok().flatten();
    if current.is_some_and(|i| i.attr("id") == Some(id.as_str())) {
        return;
    }
    let data = Element::new("item", pubsub::NS)
        .with_attr("id", id.as_str())
        .with_child(Element::new("data", NS_DATA).with_text(b64));
    if !publish(server, owner, NS_DATA, data).await {
        // Too large for an item, or the account has no room for the node.
        return;
    }
    let metadata = Element::new("item", pubsub::NS)
        .with_attr("id", id.as_str())
        .with_child(
            Element::new("metadata", NS_METADATA).with_child(
                Element::new("info", NS_METADATA)
                    .with_attr("id", id.as_str())
                    .with_attr("bytes", image.len().to_string())
                    .with_attr("type", kind),
            ),
        );
    publish(server, owner, NS_METADATA, metadata).await;
}

/// The avatar's metadata was published: the vCard's PHOTO becomes that
/// image (or goes, for empty metadata: the avatar was disabled).
async fn pep_to_vcard(server: &Server, owner: &BareJid) {
    let service = super::pep::service(server, owner);
    let Ok(Some(item)) = service.last_item(NS_METADATA).await else {
        return;
    };
    let info = item
        .get_child("metadata", NS_METADATA)
        .and_then(|m| {
            m.children()
                .find(|i| i.is("info", NS_METADATA) && i.attr("url").is_none())
        })
        .and_then(|i| Some((i.attr("id")?.to_owned(), i.attr("type")?.to_owned())));
    let (domain, user) = (
        owner.domain().as_str(),
        owner.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    let store = &server.store;
    let max_depth = server.config().limits.max_depth;
    let mut card = match store.user_data_get(domain, user, vcard::STORE_KEY).await {
        Ok(Some(xml)) => {
            match super::xml_from_storage(&xml, max_depth).and_then(|v| v.into_iter().next()) {
                Some(c) => c,
                None => return,
            }
        }
        Ok(None) => Element::new("vCard", vcard::NS),
        Err(e) => {
            tracing::error!(error = %e, "vcard storage");
            return;
        }
    };
    let photo = match info {
        None => None,
        Some((id, kind)) => {
            let Ok(Some(data)) = service.item(NS_DATA, &id).await else {
                return;
            };
            let Some(b64) = data.get_child("data", NS_DATA).map(|d| d.text()) else {
                return;
            };
            Some(
                Element::new("PHOTO", vcard::NS)
                    .with_child(Element::new("TYPE", vcard::NS).with_text(kind))
                    .with_child(Element::new("BINVAL", vcard::NS).with_text(b64)),
            )
        }
    };
    while card.remove_child("PHOTO", vcard::NS).is_some() {}
    if let Some(p) = photo {
        card.append_child(p);
    }
    let xml = super::xml_for_storage([&card]);
    if xml.len() > server.config().limits.max_vcard_size {
        return;
    }
    if let Err(e) = store
        .user_data_put(domain, user, vcard::STORE_KEY, &xml)
        .await
    {
        tracing::error!(error = %e, "vcard storage");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn avatar_id_is_hex_sha1() {
        assert_eq!(
            super::avatar_id(b"abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
