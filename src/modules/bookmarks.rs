//! Bookmarks kept in step (XEP-0411 and XEP-0402 §Compatibility): PEP
//! Native Bookmarks (one item per room in `urn:xmpp:bookmarks:1`), the
//! XEP-0048 list in private XML storage (XEP-0049, `#compat`) and the
//! XEP-0048 list in the `storage:bookmarks` PEP node (`#compat-pep`).
//! Whichever one a client writes (a successful IQ set, `Event::IqSetDone`),
//! the other two are rewritten from it, directly in storage or through the
//! engine, so no write triggers another conversion.

use crate::stanza::bare::Bare;
use std::collections::BTreeMap;

use jid::{BareJid, Jid};

use super::private;
use crate::feature::iq::IqTarget;
use crate::feature::{Disco, Event, EventKind, Feature, HookFuture, Verdict};
use crate::pubsub::{self, Change, Requester};
use crate::server::Server;
use crate::xml::Element;

pub const NS_NATIVE: &str = "urn:xmpp:bookmarks:1";
pub const NS_LEGACY: &str = "storage:bookmarks";

/// The conversion feature.
#[derive(Debug, Default)]
pub struct BookmarksConversion;

impl Feature for BookmarksConversion {
    fn name(&self) -> &'static str {
        "bookmarks"
    }

    // The conversion writes PEP nodes: nothing to keep in step without PEP.
    fn enabled(&self, config: &crate::config::Config) -> bool {
        config.pep.enabled
    }

    fn xeps(&self) -> &[u16] {
        &[402, 411]
    }

    fn disco(&self) -> Disco {
        Disco {
            server: &[],
            account: &[
                "urn:xmpp:bookmarks:1#compat",
                "urn:xmpp:bookmarks:1#compat-pep",
            ],
        }
    }

    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[(EventKind::IqSetDone, 0)]
    }

    fn on_event_now(&self, _server: &Server, event: &mut Event<'_>) -> Option<Verdict> {
        match event {
            Event::IqSetDone {
                target: IqTarget::Account { own: true },
                payload,
                ..
            } if source(payload).is_some() => None,
            _ => Some(Verdict::Continue),
        }
    }

    fn on_event<'a>(&'a self, server: &'a Server, event: &'a mut Event<'_>) -> HookFuture<'a> {
        Box::pin(async move {
            if let Event::IqSetDone { from, payload, .. } = event {
                if server.config().pep.enabled {
                    let owner = from.bare();
                    match source(payload) {
                        Some(Source::Private(storage)) => {
                            from_legacy(server, &owner, storage, Legacy::Private).await
                        }
                        Some(Source::LegacyPep(storage)) => {
                            from_legacy(server, &owner, storage, Legacy::Pep).await
                        }
                        Some(Source::Native) => native_written(server, &owner).await,
                        None => {}
                    }
                }
            }
            Verdict::Continue
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Which bookmark store an IQ set wrote.
enum Source<'a> {
    /// XEP-0049 private storage, with the `<storage/>` written.
    Private(&'a Element),
    /// The XEP-0048 PEP node, with the `<storage/>` published.
    LegacyPep(&'a Element),
    /// The XEP-0402 node (publish or retract).
    Native,
}

/// Which XEP-0048 store a list came from (the other one is rewritten).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Legacy {
    Private,
    Pep,
}

fn source(payload: &Element) -> Option<Source<'_>> {
    if payload.is("query", private::NS) {
        return payload.get_child("storage", NS_LEGACY).map(Source::Private);
    }
    if !payload.is("pubsub", pubsub::NS) {
        return None;
    }
    let verb = payload.children().find(|c| c.ns() == pubsub::NS)?;
    match (verb.name(), verb.attr("node")) {
        ("publish", Some(NS_LEGACY)) => verb
            .get_child("item", pubsub::NS)?
            .get_child("storage", NS_LEGACY)
            .map(Source::LegacyPep),
        ("publish" | "retract", Some(NS_NATIVE)) => Some(Source::Native),
        _ => None,
    }
}

/// One room, as both formats carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Conference {
    name: Option<String>,
    autojoin: bool,
    nick: Option<String>,
    password: Option<String>,
}

fn child_text(e: &Element, name: &str, ns: &str) -> Option<String> {
    e.get_child(name, ns).map(Element::text)
}

fn autojoin(e: &Element) -> bool {
    matches!(e.attr("autojoin"), Some("true" | "1"))
}

/// The rooms of a XEP-0048 `<storage/>`, by room JID.
fn from_storage(storage: &Element) -> BTreeMap<String, Conference> {
    storage
        .children()
        .filter(|c| c.is("conference", NS_LEGACY))
        .filter_map(|c| {
            let jid = Jid::new(c.attr("jid")?).ok()?.bare().to_string();
            Some((
                jid,
                Conference {
                    name: c.attr("name").map(str::to_owned),
                    autojoin: autojoin(c),
                    nick: child_text(c, "nick", NS_LEGACY),
                    password: child_text(c, "password", NS_LEGACY),
                },
            ))
        })
        .collect()
}

/// A XEP-0048 `<storage/>` of these rooms.
fn to_storage(rooms: &BTreeMap<String, Conference>) -> Element {
    let mut storage = Element::new("storage", NS_LEGACY);
    for (jid, c) in rooms {
        let mut e = Element::new("conference", NS_LEGACY)
            .with_attr("jid", jid.as_str())
            .with_attr("autojoin", if c.autojoin { "true" } else { "false" });
        if let Some(n) = &c.name {
            e.set_attr("name", n.as_str());
        }
        if let Some(n) = &c.nick {
            e.append_child(Element::new("nick", NS_LEGACY).with_text(n.as_str()));
        }
        if let Some(p) = &c.password {
            e.append_child(Element::new("password", NS_LEGACY).with_text(p.as_str()));
        }
        storage.append_child(e);
    }
    storage
}

/// A XEP-0402 `<conference/>` of one room.
fn to_native(c: &Conference) -> Element {
    let mut e = Element::new("conference", NS_NATIVE)
        .with_attr("autojoin", if c.autojoin { "true" } else { "false" });
    if let Some(n) = &c.name {
        e.set_attr("name", n.as_str());
    }
    if let Some(n) = &c.nick {
        e.append_child(Element::new("nick", NS_NATIVE).with_text(n.as_str()));
    }
    if let Some(p) = &c.password {
        e.append_child(Element::new("password", NS_NATIVE).with_text(p.as_str()));
    }
    e
}

fn conference_of_item(item: &Element) -> Option<Conference> {
    let c = item.get_child("conference", NS_NATIVE)?;
    Some(Conference {
        name: c.attr("name").map(str::to_owned),
        autojoin: autojoin(c),
        nick: child_text(c, "nick", NS_NATIVE),
        password: child_text(c, "password", NS_NATIVE),
    })
}

/// XEP-0402 §5 / XEP-0223: the private, persistent node configuration.
fn private_options() -> Element {
    let field = |var: &str, value: &str| {
        Element::new("field", super::NS_DATA)
            .with_attr("var", var)
            .with_child(Element::new("value", super::NS_DATA).with_text(value))
    };
    Element::new("publish-options", pubsub::NS).with_child(
        Element::new("x", super::NS_DATA)
            .with_attr("type", "submit")
            .with_child(field("FORM_TYPE", pubsub::NS_PUBLISH_OPTIONS).with_attr("type", "hidden"))
            .with_child(field("pubsub#persist_items", "true"))
            .with_child(field("pubsub#max_items", "max"))
            .with_child(field("pubsub#send_last_published_item", "never"))
            .with_child(field("pubsub#access_model", "whitelist")),
    )
}

/// Runs one request through the owner's service and notifies.
async fn as_owner(server: &Server, owner: &BareJid, request: Element) -> bool {
    let jid = Jid::from(owner.clone());
    let who = Requester {
        jid: &jid,
        owner: true,
        presence_subscribed: true,
        groups: &[],
    };
    let mut changes: Vec<Change> = Vec::new();
    let done = super::pep::service(server, owner)
        .handle(&who, &request, true, &mut changes)
        .await;
    super::pep::publish_changes(server, owner, &changes).await;
    if let Err(e) = &done {
        tracing::debug!(%owner, condition = ?e.condition, "bookmark conversion");
    }
    done.is_ok()
}

/// Publishes `payload` as item `id` of `node`, creating the node private
/// when it does not exist yet.
async fn publish(server: &Server, owner: &BareJid, node: &str, id: &str, payload: Element) {
    let exists = super::pep::service(server, owner)
        .node(node)
        .await
        .ok()
        .flatten()
        .is_some();
    let mut request = Element::new("pubsub", pubsub::NS).with_child(
        Element::new("publish", pubsub::NS)
            .with_attr("node", node)
            .with_child(
                Element::new("item", pubsub::NS)
                    .with_attr("id", id)
                    .with_child(payload),
            ),
    );
    if !exists {
        request.append_child(private_options());
    }
    as_owner(server, owner, request).await;
}

/// The rooms of the XEP-0402 node.
async fn native_rooms(server: &Server, owner: &BareJid) -> BTreeMap<String, Conference> {
    let service = super::pep::service(server, owner);
    let Ok(items) = service
        .store
        .pubsub_items(
            service.domain,
            service.username,
            NS_NATIVE,
            server.config().pep.max_items,
        )
        .await
    else {
        return BTreeMap::new();
    };
    items
        .into_iter()
        .filter_map(|i| {
            let payload = super::xml_from_storage(&i.payload, server.config().limits.max_depth)?;
            let item = Element::new("item", pubsub::NS).with_child(payload.into_iter().next()?);
            Some((i.item_id, conference_of_item(&item)?))
        })
        .collect()
}

async fn write_private(server: &Server, owner: &BareJid, storage: &Element) {
    let xml = super::xml_for_storage([storage]);
    // The private-storage bound holds here too: a list that does not fit
    // one document is left as it was.
    if xml.len() > server.config().limits.max_private_document {
        return;
    }
    let (domain, user) = (
        owner.domain().as_str(),
        owner.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    if let Err(e) = server
        .store
        .user_data_put(domain, user, &private::key(NS_LEGACY), &xml)
        .await
    {
        tracing::error!(error = %e, "private storage");
    }
}

/// A XEP-0048 list was written (`from`: which store): the native items
/// follow it (changed rooms published, missing ones retracted), and the
/// other XEP-0048 store gets the same list.
async fn from_legacy(server: &Server, owner: &BareJid, storage: &Element, from: Legacy) {
    let wanted = from_storage(storage);
    let have = native_rooms(server, owner).await;
    for (jid, c) in &wanted {
        if have.get(jid) != Some(c) {
            publish(server, owner, NS_NATIVE, jid, to_native(c)).await;
        }
    }
    for jid in have.keys().filter(|j| !wanted.contains_key(*j)) {
        let retract = Element::new("pubsub", pubsub::NS).with_child(
            Element::new("retract", pubsub::NS)
                .with_attr("node", NS_NATIVE)
                .with_attr("notify", "true")
                .with_child(Element::new("item", pubsub::NS).with_attr("id", jid.as_str())),
        );
        as_owner(server, owner, retract).await;
    }
    let storage = to_storage(&wanted);
    if from == Legacy::Private {
        publish(server, owner, NS_LEGACY, "current", storage).await;
    } else {
        write_private(server, owner, &storage).await;
    }
}

/// The native node changed: both XEP-0048 stores get the whole list.
async fn native_written(server: &Server, owner: &BareJid) {
    let storage = to_storage(&native_rooms(server, owner).await);
    write_private(server, owner, &storage).await;
    publish(server, owner, NS_LEGACY, "current", storage).await;
}
