//! Who hears of a change to a personal node, and the last items a
//! resource gets when it becomes available (XEP-0163 §4.3).

use crate::stanza::bare::Bare;
use std::collections::HashSet;

use jid::{BareJid, FullJid, Jid};

use super::caps::notify_feature;
use super::{service, Pep};
use crate::modules::roster;
use crate::pubsub::config::{AccessModel, NodeConfig, SendLast};
use crate::pubsub::{event, may_receive, Change};
use crate::router::deliver;
use crate::server::Server;
use crate::xml::Element;

/// Sends the notifications of one change of `owner`'s service.
pub async fn change(server: &Server, owner: &BareJid, change: &Change) {
    // A new subscriber's last item follows the subscription's result
    // (§6.1.7), so it is sent on `IqSetDone`: see [`subscribed`].
    if let Change::Subscribed { .. } = change {
        return;
    }
    let Some(ev) = event::event_of(change) else {
        return;
    };
    let (node, config, explicit) = match change {
        Change::Published { node, config, .. }
        | Change::Retracted { node, config, .. }
        | Change::Purged { node, config } => (node, config, None),
        Change::Deleted {
            node,
            config,
            subscribers,
        } => (node, config, Some(subscribers.clone())),
        Change::Subscribed { .. } => return,
    };
    let from = owner.as_str();
    for to in recipients(server, owner, node, config, explicit).await {
        // A full queue drops the notification: headlines are not kept (§7.1.2.1).
        let _ = deliver(server, &event::message(from, to.as_str(), &ev), &to);
    }
}

/// The owner's resources and contacts that want `node` (+notify), and the
/// explicit subscribers, each once.
async fn recipients(
    server: &Server,
    owner: &BareJid,
    node: &str,
    config: &NodeConfig,
    explicit: Option<Vec<String>>,
) -> Vec<Jid> {
    let Some(pep) = server.features.get::<Pep>() else {
        return Vec::new();
    };
    let caps = pep.caps();
    let mut out: Vec<Jid> = Vec::new();
    let mut bares: HashSet<BareJid> = HashSet::new();
    let mut add_wanting = |out: &mut Vec<Jid>, bare: &BareJid, resources: Vec<FullJid>| {
        for full in resources {
            if caps.wants(&full, node) {
                bares.insert(bare.clone());
                out.push(full.into());
            }
        }
    };
    let own: Vec<FullJid> = server
        .sessions
        .available_resources(owner)
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    add_wanting(&mut out, owner, own);
    let service = service(server, owner);
    let contacts = roster::items(server, owner).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "roster");
        Vec::new()
    });
    let whitelist = config.access_model == AccessModel::Whitelist;
    for item in contacts.iter().filter(|i| i.from()) {
        let Ok(contact) = BareJid::new(&item.record.contact) else {
            continue;
        };
        let affiliation = if whitelist {
            service
                .affiliation(node, &Jid::from(contact.clone()))
                .await
                .unwrap_or_else(|_| "none".into())
        } else {
            String::new()
        };
        if !may_receive(config, false, true, &item.record.groups, &affiliation) {
            continue;
        }
        let resources = if server.is_local_domain(contact.domain().as_str()) {
            note_other_nodes_caps(server, pep, owner, &contact);
            server
                .sessions
                .available_resources(&contact)
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        } else {
            caps.resources(&contact)
        };
        add_wanting(&mut out, &contact, resources);
    }
    let explicit = match explicit {
        Some(e) => e,
        None => service
            .store
            .pubsub_subscribers(service.domain, service.username, node)
            .await
            .unwrap_or_default(),
    };
    for s in explicit {
        let Ok(jid) = Jid::new(&s) else {
            continue;
        };
        if !bares.contains(&jid.bare()) {
            out.push(jid);
        }
    }
    out
}

/// A local contact's resources held by other nodes of a cluster sent
/// their capabilities with their presence to those nodes, not to this
/// one: read from the presence the cluster reports for them, as if it had
/// arrived here. A `ver` this node knows counts at once; a new one is asked
/// about (the answer finds its way back, `iq_tracker`), and `owner`'s last
/// items follow once it is learned — the notification this change would
/// have been, if it is still the last item.
fn note_other_nodes_caps(server: &Server, pep: &Pep, owner: &BareJid, contact: &BareJid) {
    for (full, presence) in server.sessions.remote_presences(contact) {
        pep.note_caps(server, full, Some(owner.clone()), &presence, true);
    }
}

/// A resource became available (or announced new capabilities): the last
/// items of the services it follows. For a local resource that is its own
/// account's and its local contacts' (those whose presence it receives);
/// for a remote one, `owner`'s, the local user its presence was sent to.
pub async fn last_items_on_presence(server: &Server, from: &FullJid, owner: Option<BareJid>) {
    let owners = match owner {
        Some(o) => vec![o],
        None => {
            let bare = from.bare();
            let mut owners = vec![bare.clone()];
            if let Ok(items) = roster::items(server, &bare).await {
                owners.extend(
                    items
                        .iter()
                        .filter(|i| i.to())
                        .filter_map(|i| BareJid::new(&i.record.contact).ok())
                        .filter(|c| server.is_local_domain(c.domain().as_str())),
                );
            }
            owners
        }
    };
    last_items_to(server, from, &owners).await;
}

/// Sends `to` the last item of each node of each of `owners` it asks for
/// (+notify) and may see, once per owner while it stays available.
pub async fn last_items_to(server: &Server, to: &FullJid, owners: &[BareJid]) {
    let Some(pep) = server.features.get::<Pep>() else {
        return;
    };
    let Some(features) = pep.caps().features(to) else {
        return;
    };
    let bare = to.bare();
    for owner in owners {
        if !pep.caps().serve(to, owner) {
            continue;
        }
        let service = service(server, owner);
        let Ok(nodes) = service.nodes().await else {
            continue;
        };
        let wanted: Vec<(String, NodeConfig)> = nodes
            .into_iter()
            .filter(|(n, c)| {
                c.send_last_published_item == SendLast::OnSubAndPresence
                    && features.contains(&notify_feature(n))
            })
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let is_owner = *owner == bare;
        let Ok(asker) = super::Asker::of(server, owner, &bare, is_owner).await else {
            continue;
        };
        let jid = Jid::from(to.clone());
        for (node, config) in wanted {
            let affiliation = if config.access_model == AccessModel::Whitelist {
                service
                    .affiliation(&node, &jid)
                    .await
                    .unwrap_or_else(|_| "none".into())
            } else {
                String::new()
            };
            if may_receive(
                &config,
                is_owner,
                asker.subscribed,
                &asker.groups,
                &affiliation,
            ) {
                send_last(server, owner, &node, &config, &jid).await;
            }
        }
    }
}

/// A subscription was confirmed (its result queued): the new subscriber
/// gets the node's last item unless the node says never.
pub async fn subscribed(server: &Server, owner: &BareJid, node: &str, to: &Jid) {
    match service(server, owner).node(node).await {
        Ok(Some(config)) if config.send_last_published_item != SendLast::Never => {
            send_last(server, owner, node, &config, to).await
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "pubsub storage"),
    }
}

/// The node's last item, as a notification to `to`.
async fn send_last(server: &Server, owner: &BareJid, node: &str, config: &NodeConfig, to: &Jid) {
    let item = match service(server, owner).last_item(node).await {
        Ok(Some(item)) => item,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "pubsub storage");
            return;
        }
    };
    let ev = Element::new("event", crate::pubsub::NS_EVENT).with_child(event::items(
        node,
        std::slice::from_ref(&item),
        config,
    ));
    let _ = deliver(
        server,
        &event::message(owner.as_str(), to.as_str(), &ev),
        to,
    );
}
