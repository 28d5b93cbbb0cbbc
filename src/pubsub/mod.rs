//! A publish-subscribe service (XEP-0060), independent of who runs it:
//! PEP (XEP-0163) runs one per account, a pubsub domain could run one for
//! the domain. A [`Service`] names its owner in storage and its limits;
//! [`Service::handle`] answers one `<pubsub/>` request and reports what
//! changed ([`Change`]), and the runner sends the notifications, since
//! only it knows who should get them.

pub mod config;
pub mod event;

use crate::stanza::bare::Bare;
use jid::Jid;

use crate::modules::{xml_for_storage, xml_from_storage};
use crate::stanza::{StanzaError, StanzaErrorCondition as Cond};
use crate::storage::{StorageError, Store, StoredItem};
use crate::xml::Element;
use config::{form_type, AccessModel, NodeConfig, PublishModel};

pub const NS: &str = "http://jabber.org/protocol/pubsub";
pub const NS_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
pub const NS_ERRORS: &str = "http://jabber.org/protocol/pubsub#errors";
pub const NS_NODE_CONFIG: &str = "http://jabber.org/protocol/pubsub#node_config";
pub const NS_PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

/// What one service lets its users make it keep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_nodes: u32,
    /// Items per node; `max_items = max` means this.
    pub max_items: u32,
    pub max_item_bytes: usize,
    /// Items per `<items/>` answer.
    pub max_items_page: u32,
    pub max_subscribers: u32,
    /// XML depth items were accepted under (for reading them back).
    pub max_depth: usize,
}

/// One service: its owner's address in storage, and its limits.
pub struct Service<'a> {
    pub store: &'a Store,
    pub domain: &'a str,
    pub username: &'a str,
    pub limits: Limits,
}

/// Who asks, as far as access models go.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub jid: &'a Jid,
    /// The service's owner (for PEP: the account itself).
    pub owner: bool,
    /// The owner shares presence with the requester (subscription from or both).
    pub presence_subscribed: bool,
    /// The groups the owner's roster puts the requester in (the roster
    /// access model's `pubsub#roster_groups_allowed`).
    pub groups: &'a [String],
}

/// Something a request changed that subscribers may hear of.
#[derive(Debug, Clone)]
pub enum Change {
    /// An item was published (`item` the whole `<item/>` with payload).
    Published {
        node: String,
        config: NodeConfig,
        item: Element,
    },
    Retracted {
        node: String,
        config: NodeConfig,
        ids: Vec<String>,
    },
    Deleted {
        node: String,
        config: NodeConfig,
        subscribers: Vec<String>,
    },
    Purged {
        node: String,
        config: NodeConfig,
    },
    /// `jid` subscribed: it may get the last item.
    Subscribed {
        node: String,
        config: NodeConfig,
        jid: Jid,
    },
}

/// Does the access model let an entity get a node's notifications and
/// items (the owner always does; `affiliation` the owner gave it)?
pub fn may_receive(
    config: &NodeConfig,
    owner: bool,
    presence_subscribed: bool,
    groups: &[String],
    affiliation: &str,
) -> bool {
    if owner {
        return true;
    }
    if affiliation == "outcast" {
        return false;
    }
    match config.access_model {
        AccessModel::Open => true,
        AccessModel::Presence => presence_subscribed,
        AccessModel::Roster => presence_subscribed && in_allowed_group(config, groups),
        AccessModel::Whitelist => matches!(affiliation, "member" | "publisher"),
    }
}

/// The roster access model (§4.5): is one of the requester's groups among
/// the node's allowed ones? A node that names none lets every contact in.
pub fn in_allowed_group(config: &NodeConfig, groups: &[String]) -> bool {
    config.roster_groups_allowed.is_empty()
        || groups
            .iter()
            .any(|g| config.roster_groups_allowed.contains(g))
}

/// A stanza error with a pubsub#errors condition.
pub fn error(cond: Cond, app: &str) -> StanzaError {
    StanzaError::from(cond).with_app(Element::new(app, NS_ERRORS))
}

fn internal(e: StorageError) -> StanzaError {
    tracing::error!(error = %e, "pubsub storage");
    Cond::InternalServerError.into()
}

/// A new item id when the publisher gives none (§7.1.1).
fn new_item_id() -> String {
    use rand::Rng;
    let n: u128 = rand::thread_rng().gen();
    format!("{n:032x}")
}

type Outcome = Result<Option<Element>, StanzaError>;

impl Service<'_> {
    /// Answers one request: `payload` is the IQ's `<pubsub/>` in either
    /// namespace; what changed is pushed to `changes`.
    pub async fn handle(
        &self,
        who: &Requester<'_>,
        payload: &Element,
        is_set: bool,
        changes: &mut Vec<Change>,
    ) -> Outcome {
        if payload.name() != "pubsub" {
            return Err(Cond::BadRequest.into());
        }
        let owner_ns = payload.ns() == NS_OWNER;
        let ns = payload.ns();
        // The verb is the first child; publish-options and configure ride along.
        let Some(verb) = payload.children().find(|c| c.ns() == ns) else {
            return Err(Cond::BadRequest.into());
        };
        match (owner_ns, is_set, verb.name()) {
            (false, true, "publish") => self.publish(who, payload, verb, changes).await,
            (false, true, "retract") => self.retract(who, verb, changes).await,
            (false, true, "subscribe") => self.subscribe(who, verb, changes).await,
            (false, true, "unsubscribe") => self.unsubscribe(who, verb).await,
            (false, true, "create") => self.create(who, payload, verb).await,
            (false, false, "items") => self.items(who, verb).await,
            (false, false, "subscriptions") => self.own_subscriptions(who).await,
            (false, false, "affiliations") => self.own_affiliations(who).await,
            (false, _, "options") => Err(error(Cond::FeatureNotImplemented, "unsupported")
                .with_app(
                    Element::new("unsupported", NS_ERRORS)
                        .with_attr("feature", "subscription-options"),
                )),
            (true, _, _) if !who.owner => Err(Cond::Forbidden.into()),
            (true, false, "configure") => self.configure_get(verb).await,
            (true, true, "configure") => self.configure_set(verb).await,
            (true, false, "default") => Ok(Some(Element::new("pubsub", NS_OWNER).with_child(
                Element::new("default", NS_OWNER).with_child(NodeConfig::default().to_form()),
            ))),
            (true, true, "delete") => self.delete(verb, changes).await,
            (true, true, "purge") => self.purge(verb, changes).await,
            (true, false, "subscriptions") => self.subscribers_get(verb).await,
            (true, true, "subscriptions") => self.subscribers_set(verb).await,
            (true, false, "affiliations") => self.affiliations_get(verb).await,
            (true, true, "affiliations") => self.affiliations_set(verb).await,
            _ => Err(Cond::FeatureNotImplemented.into()),
        }
    }

    /// A node's configuration, if the node exists.
    pub async fn node(&self, node: &str) -> Result<Option<NodeConfig>, StorageError> {
        Ok(self
            .store
            .pubsub_node(self.domain, self.username, node)
            .await?
            .map(|t| NodeConfig::from_text(&t)))
    }

    /// Every node with its configuration.
    pub async fn nodes(&self) -> Result<Vec<(String, NodeConfig)>, StorageError> {
        Ok(self
            .store
            .pubsub_nodes(self.domain, self.username)
            .await?
            .into_iter()
            .map(|(n, t)| (n, NodeConfig::from_text(&t)))
            .collect())
    }

    /// The newest item of a node, as an `<item/>`.
    pub async fn last_item(&self, node: &str) -> Result<Option<Element>, StorageError> {
        Ok(self
            .store
            .pubsub_items(self.domain, self.username, node, 1)
            .await?
            .into_iter()
            .next()
            .and_then(|i| self.item_element(&i, true)))
    }

    /// One item by id, as an `<item/>` with its payload.
    pub async fn item(&self, node: &str, id: &str) -> Result<Option<Element>, StorageError> {
        Ok(self
            .store
            .pubsub_item(self.domain, self.username, node, id)
            .await?
            .and_then(|i| self.item_element(&i, true)))
    }

    fn item_element(&self, stored: &StoredItem, payload: bool) -> Option<Element> {
        let mut item = Element::new("item", NS).with_attr("id", stored.item_id.as_str());
        if payload {
            for child in xml_from_storage(&stored.payload, self.limits.max_depth)? {
                item.append_child(child);
            }
        }
        Some(item)
    }

    fn max_items(&self, config: &NodeConfig) -> u32 {
        if config.persist_items {
            config.max_items.resolve(self.limits.max_items)
        } else {
            // Not persisted: only the last item, for late arrivals (XEP-0163 §4.3.4).
            1
        }
    }

    /// The affiliation the owner gave `jid` on a node ("none" if none).
    pub async fn affiliation(&self, node: &str, jid: &Jid) -> Result<String, StanzaError> {
        let bare = jid.bare().to_string();
        Ok(self
            .store
            .pubsub_affiliations(self.domain, self.username, node)
            .await
            .map_err(internal)?
            .into_iter()
            .find(|(j, _)| *j == bare)
            .map(|(_, a)| a)
            .unwrap_or_else(|| "none".into()))
    }

    /// §6.1.3 / §6.5.9: may `who` see this node's items and subscribe?
    async fn may_read(
        &self,
        who: &Requester<'_>,
        node: &str,
        config: &NodeConfig,
    ) -> Result<(), StanzaError> {
        if who.owner {
            return Ok(());
        }
        let affiliation = self.affiliation(node, who.jid).await?;
        if affiliation == "outcast" {
            return Err(Cond::Forbidden.into());
        }
        match config.access_model {
            AccessModel::Open => Ok(()),
            AccessModel::Presence if who.presence_subscribed => Ok(()),
            AccessModel::Presence => {
                Err(error(Cond::NotAuthorized, "presence-subscription-required"))
            }
            AccessModel::Roster
                if who.presence_subscribed && in_allowed_group(config, who.groups) =>
            {
                Ok(())
            }
            AccessModel::Roster => Err(error(Cond::NotAuthorized, "not-in-roster-group")),
            AccessModel::Whitelist if matches!(affiliation.as_str(), "member" | "publisher") => {
                Ok(())
            }
            AccessModel::Whitelist => Err(error(Cond::NotAllowed, "closed-node")),
        }
    }

    /// May `who` see this node (its items, its disco entries)?
    pub async fn may_see(&self, who: &Requester<'_>, node: &str, config: &NodeConfig) -> bool {
        self.may_read(who, node, config).await.is_ok()
    }

    async fn may_publish(
        &self,
        who: &Requester<'_>,
        node: &str,
        config: &NodeConfig,
    ) -> Result<(), StanzaError> {
        if who.owner {
            return Ok(());
        }
        let affiliation = self.affiliation(node, who.jid).await?;
        let allowed = match config.publish_model {
            PublishModel::Publishers => affiliation == "publisher",
            PublishModel::Subscribers => {
                affiliation == "publisher"
                    || self
                        .store
                        .pubsub_subscribers(self.domain, self.username, node)
                        .await
                        .map_err(internal)?
                        .contains(&who.jid.bare().to_string())
            }
            PublishModel::Open => affiliation != "outcast",
        };
        if allowed {
            Ok(())
        } else {
            Err(Cond::Forbidden.into())
        }
    }

    /// Creates a node with `config`, within the per-service quota.
    async fn create_node(&self, node: &str, config: &NodeConfig) -> Result<bool, StanzaError> {
        let created = self
            .store
            .pubsub_node_create(
                self.domain,
                self.username,
                node,
                &config.to_text(),
                self.limits.max_nodes,
            )
            .await
            .map_err(internal)?;
        if !created && self.node(node).await.map_err(internal)?.is_none() {
            return Err(StanzaError::with_text(
                Cond::ResourceConstraint,
                "too many nodes",
            ));
        }
        Ok(created)
    }

    /// §7.1 publish, with §7.1.5 publish-options and XEP-0163 auto-create.
    async fn publish(
        &self,
        who: &Requester<'_>,
        pubsub: &Element,
        verb: &Element,
        changes: &mut Vec<Change>,
    ) -> Outcome {
        let node = node_attr(verb)?;
        let mut items = verb.children().filter(|c| c.is("item", NS));
        let item = items.next();
        if items.next().is_some() {
            return Err(error(Cond::BadRequest, "invalid-payload"));
        }
        let Some(item) = item else {
            return Err(error(Cond::BadRequest, "item-required"));
        };
        // §7.1.3.6 / §7.1.3.7: PEP nodes deliver payloads, so exactly one.
        let mut payloads = item.children();
        let payload = match (payloads.next(), payloads.next()) {
            (Some(p), None) => p,
            (None, _) => return Err(error(Cond::BadRequest, "payload-required")),
            (Some(_), Some(_)) => return Err(error(Cond::BadRequest, "invalid-payload")),
        };
        let stored_payload = xml_for_storage([payload]);
        if stored_payload.len() > self.limits.max_item_bytes {
            return Err(error(Cond::NotAcceptable, "payload-too-big"));
        }
        let form = pubsub
            .get_child("publish-options", NS)
            .and_then(|po| po.get_child("x", crate::modules::NS_DATA));
        let options = match form {
            None => Vec::new(),
            Some(x) => {
                if form_type(x).is_some_and(|t| t != NS_PUBLISH_OPTIONS) {
                    return Err(Cond::BadRequest.into());
                }
                config::form_fields(x)
            }
        };
        let cap = self.limits.max_items;
        let config = match self.node(node).await.map_err(internal)? {
            Some(config) => {
                self.may_publish(who, node, &config).await?;
                // §7.1.5: every option given must be what the node has.
                if options
                    .iter()
                    .any(|(var, value)| !config.matches(var, value, cap))
                {
                    return Err(error(Cond::Conflict, "precondition-not-met"));
                }
                config
            }
            None => {
                if !who.owner {
                    return Err(Cond::ItemNotFound.into());
                }
                let mut config = NodeConfig::default();
                if let Some(x) = form {
                    if config.apply_form(x, cap).is_err() {
                        return Err(error(Cond::Conflict, "precondition-not-met"));
                    }
                }
                self.create_node(node, &config).await?;
                // A concurrent create may have won with other options.
                self.node(node)
                    .await
                    .map_err(internal)?
                    .ok_or(StanzaError::from(Cond::InternalServerError))?
            }
        };
        let id = match item.attr("id") {
            Some(id) if !id.is_empty() && id.len() <= 256 => id.to_owned(),
            Some(id) if id.len() > 256 => return Err(Cond::NotAcceptable.into()),
            _ => new_item_id(),
        };
        let publisher = who.jid.bare().to_string();
        self.store
            .pubsub_item_put(
                self.domain,
                self.username,
                node,
                &id,
                &publisher,
                &stored_payload,
                self.max_items(&config),
            )
            .await
            .map_err(internal)?;
        changes.push(Change::Published {
            node: node.to_owned(),
            config,
            item: Element::new("item", NS)
                .with_attr("id", id.as_str())
                .with_child(payload.clone()),
        });
        Ok(Some(
            Element::new("pubsub", NS).with_child(
                Element::new("publish", NS)
                    .with_attr("node", node)
                    .with_child(Element::new("item", NS).with_attr("id", id)),
            ),
        ))
    }

    /// §7.2 retract.
    async fn retract(
        &self,
        who: &Requester<'_>,
        verb: &Element,
        changes: &mut Vec<Change>,
    ) -> Outcome {
        let node = node_attr(verb)?;
        let config = self.existing(node).await?;
        self.may_publish(who, node, &config).await?;
        let ids: Vec<&str> = verb
            .children()
            .filter(|c| c.is("item", NS))
            .filter_map(|i| i.attr("id"))
            .collect();
        if ids.is_empty() {
            return Err(error(Cond::BadRequest, "item-required"));
        }
        if ids.len() > self.limits.max_items_page as usize {
            return Err(Cond::NotAcceptable.into());
        }
        let mut retracted = Vec::new();
        for id in ids {
            if self
                .store
                .pubsub_item_delete(self.domain, self.username, node, id)
                .await
                .map_err(internal)?
            {
                retracted.push(id.to_owned());
            }
        }
        if retracted.is_empty() {
            return Err(Cond::ItemNotFound.into());
        }
        let notify = match verb.attr("notify") {
            Some("1" | "true") => true,
            Some(_) => false,
            None => config.notify_retract,
        };
        if notify {
            changes.push(Change::Retracted {
                node: node.to_owned(),
                config,
                ids: retracted,
            });
        }
        Ok(None)
    }

    /// §6.5 retrieve items: the newest `max_items`, or those asked by id.
    async fn items(&self, who: &Requester<'_>, verb: &Element) -> Outcome {
        let node = node_attr(verb)?;
        let config = self.existing(node).await?;
        self.may_read(who, node, &config).await?;
        let page = self.limits.max_items_page;
        let ids: Vec<&str> = verb
            .children()
            .filter(|c| c.is("item", NS))
            .filter_map(|i| i.attr("id"))
            .take(page as usize)
            .collect();
        let stored = if ids.is_empty() {
            let limit = match verb.attr("max_items") {
                None => page,
                Some(n) => match n.parse::<u32>() {
                    Ok(n) => n.min(page),
                    Err(_) => return Err(Cond::BadRequest.into()),
                },
            };
            self.store
                .pubsub_items(self.domain, self.username, node, limit)
                .await
                .map_err(internal)?
        } else {
            let mut found = Vec::new();
            for id in ids {
                if let Some(i) = self
                    .store
                    .pubsub_item(self.domain, self.username, node, id)
                    .await
                    .map_err(internal)?
                {
                    found.push(i);
                }
            }
            found
        };
        let mut items = Element::new("items", NS).with_attr("node", node);
        for s in &stored {
            if let Some(mut item) = self.item_element(s, true) {
                if config.publish_model != PublishModel::Publishers || !who.owner {
                    item.set_attr("publisher", s.publisher.as_str());
                }
                items.append_child(item);
            }
        }
        Ok(Some(Element::new("pubsub", NS).with_child(items)))
    }

    /// §6.1 subscribe (the subscriber's bare or full JID, its own).
    async fn subscribe(
        &self,
        who: &Requester<'_>,
        verb: &Element,
        changes: &mut Vec<Change>,
    ) -> Outcome {
        let node = node_attr(verb)?;
        let jid = subscriber_jid(who, verb)?;
        let config = self.existing(node).await?;
        self.may_read(who, node, &config).await?;
        let subscribed = self
            .store
            .pubsub_subscribe(
                self.domain,
                self.username,
                node,
                jid.as_str(),
                self.limits.max_subscribers,
            )
            .await
            .map_err(internal)?;
        if !subscribed {
            return Err(StanzaError::with_text(
                Cond::ResourceConstraint,
                "too many subscribers",
            ));
        }
        let answer = Element::new("subscription", NS)
            .with_attr("node", node)
            .with_attr("jid", jid.as_str())
            .with_attr("subscription", "subscribed");
        changes.push(Change::Subscribed {
            node: node.to_owned(),
            config,
            jid,
        });
        Ok(Some(Element::new("pubsub", NS).with_child(answer)))
    }

    /// §6.2 unsubscribe.
    async fn unsubscribe(&self, who: &Requester<'_>, verb: &Element) -> Outcome {
        let node = node_attr(verb)?;
        let jid = subscriber_jid(who, verb)?;
        self.existing(node).await?;
        if self
            .store
            .pubsub_unsubscribe(self.domain, self.username, node, jid.as_str())
            .await
            .map_err(internal)?
        {
            Ok(None)
        } else {
            Err(error(Cond::UnexpectedRequest, "not-subscribed"))
        }
    }

    /// §8.1 create (named nodes only), with an optional configuration.
    async fn create(&self, who: &Requester<'_>, pubsub: &Element, verb: &Element) -> Outcome {
        if !who.owner {
            return Err(Cond::Forbidden.into());
        }
        let Some(node) = verb.attr("node").filter(|n| !n.is_empty()) else {
            return Err(error(Cond::NotAcceptable, "nodeid-required"));
        };
        check_node_name(node)?;
        let mut config = NodeConfig::default();
        if let Some(x) = pubsub
            .get_child("configure", NS)
            .and_then(|c| c.get_child("x", crate::modules::NS_DATA))
        {
            config
                .apply_form(x, self.limits.max_items)
                .map_err(|_| StanzaError::from(Cond::NotAcceptable))?;
        }
        if !self.create_node(node, &config).await? {
            return Err(Cond::Conflict.into());
        }
        Ok(None)
    }

    /// §5.6: the requester's subscriptions on this service.
    async fn own_subscriptions(&self, who: &Requester<'_>) -> Outcome {
        let bare = who.jid.bare().to_string();
        let mut subs = Element::new("subscriptions", NS);
        for (node, jid) in self
            .store
            .pubsub_subscriptions_of(self.domain, self.username, who.jid.as_str(), &bare)
            .await
            .map_err(internal)?
        {
            subs.append_child(
                Element::new("subscription", NS)
                    .with_attr("node", node)
                    .with_attr("jid", jid)
                    .with_attr("subscription", "subscribed"),
            );
        }
        Ok(Some(Element::new("pubsub", NS).with_child(subs)))
    }

    /// §5.7: the requester's affiliations on this service.
    async fn own_affiliations(&self, who: &Requester<'_>) -> Outcome {
        let list: Vec<(String, String)> = if who.owner {
            self.nodes()
                .await
                .map_err(internal)?
                .into_iter()
                .map(|(node, _)| (node, "owner".to_owned()))
                .collect()
        } else {
            self.store
                .pubsub_affiliations_of(self.domain, self.username, &who.jid.bare().to_string())
                .await
                .map_err(internal)?
        };
        let mut affs = Element::new("affiliations", NS);
        for (node, a) in list {
            affs.append_child(
                Element::new("affiliation", NS)
                    .with_attr("node", node)
                    .with_attr("affiliation", a),
            );
        }
        Ok(Some(Element::new("pubsub", NS).with_child(affs)))
    }

    async fn existing(&self, node: &str) -> Result<NodeConfig, StanzaError> {
        self.node(node)
            .await
            .map_err(internal)?
            .ok_or_else(|| Cond::ItemNotFound.into())
    }

    /// §8.2.1: the configuration form.
    async fn configure_get(&self, verb: &Element) -> Outcome {
        let node = owner_node_attr(verb)?;
        let config = self.existing(node).await?;
        Ok(Some(
            Element::new("pubsub", NS_OWNER).with_child(
                Element::new("configure", NS_OWNER)
                    .with_attr("node", node)
                    .with_child(config.to_form()),
            ),
        ))
    }

    /// §8.2.4: a submitted configuration form.
    async fn configure_set(&self, verb: &Element) -> Outcome {
        let node = owner_node_attr(verb)?;
        let mut config = self.existing(node).await?;
        let Some(x) = verb.get_child("x", crate::modules::NS_DATA) else {
            return Err(Cond::BadRequest.into());
        };
        match x.attr("type") {
            Some("cancel") => return Ok(None),
            Some("submit") => {}
            _ => return Err(Cond::BadRequest.into()),
        }
        if form_type(x).is_some_and(|t| t != NS_NODE_CONFIG) {
            return Err(Cond::BadRequest.into());
        }
        config
            .apply_form(x, self.limits.max_items)
            .map_err(|_| StanzaError::from(Cond::NotAcceptable))?;
        self.store
            .pubsub_node_configure(
                self.domain,
                self.username,
                node,
                &config.to_text(),
                self.max_items(&config),
            )
            .await
            .map_err(internal)?;
        Ok(None)
    }

    /// §8.4 delete.
    async fn delete(&self, verb: &Element, changes: &mut Vec<Change>) -> Outcome {
        let node = owner_node_attr(verb)?;
        let config = self.existing(node).await?;
        let subscribers = self
            .store
            .pubsub_subscribers(self.domain, self.username, node)
            .await
            .map_err(internal)?;
        self.store
            .pubsub_node_delete(self.domain, self.username, node)
            .await
            .map_err(internal)?;
        if config.notify_delete {
            changes.push(Change::Deleted {
                node: node.to_owned(),
                config,
                subscribers,
            });
        }
        Ok(None)
    }

    /// §8.5 purge.
    async fn purge(&self, verb: &Element, changes: &mut Vec<Change>) -> Outcome {
        let node = owner_node_attr(verb)?;
        let config = self.existing(node).await?;
        self.store
            .pubsub_purge(self.domain, self.username, node)
            .await
            .map_err(internal)?;
        changes.push(Change::Purged {
            node: node.to_owned(),
            config,
        });
        Ok(None)
    }

    /// §8.8.1: the node's subscribers.
    async fn subscribers_get(&self, verb: &Element) -> Outcome {
        let node = owner_node_attr(verb)?;
        self.existing(node).await?;
        let mut subs = Element::new("subscriptions", NS_OWNER).with_attr("node", node);
        for jid in self
            .store
            .pubsub_subscribers(self.domain, self.username, node)
            .await
            .map_err(internal)?
        {
            subs.append_child(
                Element::new("subscription", NS_OWNER)
                    .with_attr("jid", jid)
                    .with_attr("subscription", "subscribed"),
            );
        }
        Ok(Some(Element::new("pubsub", NS_OWNER).with_child(subs)))
    }

    /// §8.8.2: the owner changes subscriptions.
    async fn subscribers_set(&self, verb: &Element) -> Outcome {
        let node = owner_node_attr(verb)?;
        self.existing(node).await?;
        for s in verb.children().filter(|c| c.is("subscription", NS_OWNER)) {
            let jid = parse_jid(s.attr("jid"))?;
            match s.attr("subscription") {
                Some("none") => {
                    self.store
                        .pubsub_unsubscribe(self.domain, self.username, node, jid.as_str())
                        .await
                        .map_err(internal)?;
                }
                Some("subscribed") => {
                    self.store
                        .pubsub_subscribe(
                            self.domain,
                            self.username,
                            node,
                            jid.as_str(),
                            self.limits.max_subscribers,
                        )
                        .await
                        .map_err(internal)?;
                }
                _ => return Err(Cond::BadRequest.into()),
            }
        }
        Ok(None)
    }

    /// §8.9.1: the node's affiliations, the owner first.
    async fn affiliations_get(&self, verb: &Element) -> Outcome {
        let node = owner_node_attr(verb)?;
        self.existing(node).await?;
        let owner = format!("{}@{}", self.username, self.domain);
        let mut affs = Element::new("affiliations", NS_OWNER)
            .with_attr("node", node)
            .with_child(
                Element::new("affiliation", NS_OWNER)
                    .with_attr("jid", owner)
                    .with_attr("affiliation", "owner"),
            );
        for (jid, a) in self
            .store
            .pubsub_affiliations(self.domain, self.username, node)
            .await
            .map_err(internal)?
        {
            affs.append_child(
                Element::new("affiliation", NS_OWNER)
                    .with_attr("jid", jid)
                    .with_attr("affiliation", a),
            );
        }
        Ok(Some(Element::new("pubsub", NS_OWNER).with_child(affs)))
    }

    /// §8.9.2: the owner sets affiliations (the whitelist among them).
    async fn affiliations_set(&self, verb: &Element) -> Outcome {
        let node = owner_node_attr(verb)?;
        self.existing(node).await?;
        let entries: Vec<&Element> = verb
            .children()
            .filter(|c| c.is("affiliation", NS_OWNER))
            .collect();
        let current = self
            .store
            .pubsub_affiliations(self.domain, self.username, node)
            .await
            .map_err(internal)?
            .len();
        // The same bound as subscribers: the whitelist is a list of them.
        if current + entries.len() > self.limits.max_subscribers as usize {
            return Err(Cond::ResourceConstraint.into());
        }
        for a in entries {
            let jid = parse_jid(a.attr("jid"))?.bare();
            let affiliation = a.attr("affiliation").unwrap_or_default();
            if !matches!(affiliation, "member" | "publisher" | "outcast" | "none") {
                return Err(Cond::BadRequest.into());
            }
            self.store
                .pubsub_affiliate(self.domain, self.username, node, jid.as_str(), affiliation)
                .await
                .map_err(internal)?;
        }
        Ok(None)
    }
}

fn node_attr(verb: &Element) -> Result<&str, StanzaError> {
    match verb.attr("node").filter(|n| !n.is_empty()) {
        Some(n) => {
            check_node_name(n)?;
            Ok(n)
        }
        None => Err(error(Cond::BadRequest, "nodeid-required")),
    }
}

fn owner_node_attr(verb: &Element) -> Result<&str, StanzaError> {
    node_attr(verb)
}

/// Node names are stored and echoed: keep them to a sane size.
fn check_node_name(node: &str) -> Result<(), StanzaError> {
    if node.len() > 1024 {
        Err(Cond::NotAcceptable.into())
    } else {
        Ok(())
    }
}

fn parse_jid(raw: Option<&str>) -> Result<Jid, StanzaError> {
    raw.and_then(|j| Jid::new(j).ok())
        .ok_or_else(|| Cond::JidMalformed.into())
}

/// §6.1.3.1: the JID to subscribe must be the requester's (bare or full).
fn subscriber_jid(who: &Requester<'_>, verb: &Element) -> Result<Jid, StanzaError> {
    let jid = match verb.attr("jid") {
        None => return Err(error(Cond::BadRequest, "jid-required")),
        Some(j) => Jid::new(j).map_err(|_| error(Cond::BadRequest, "invalid-jid"))?,
    };
    if jid.bare() != who.jid.bare() {
        return Err(error(Cond::BadRequest, "invalid-jid"));
    }
    Ok(jid)
}
