//! What service discovery (XEP-0030) shows of an account's PEP service,
//! asked at the account's bare JID: its nodes as disco#items, each node's
//! identity and meta-data form (XEP-0060 §5.3, §5.4) as disco#info with
//! `node`. A requester sees only the nodes it may read (XEP-0163 §8.2:
//! the access model decides); a node it may not see is answered as one
//! that does not exist, so node names do not leak.

use crate::stanza::bare::Bare;
use jid::{BareJid, Jid};

use super::{service, Asker};
use crate::feature::iq::IqOutcome;
use crate::modules::disco::{NS_INFO, NS_ITEMS};
use crate::modules::NS_DATA;
use crate::pubsub;
use crate::pubsub::config::ROSTER_GROUPS;
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::Element;

/// The `pubsub#meta-data` FORM_TYPE (XEP-0060 §16.4.3).
pub const NS_META_DATA: &str = "http://jabber.org/protocol/pubsub#meta-data";

fn internal(e: crate::storage::StorageError) -> StanzaError {
    tracing::error!(error = %e, "pubsub storage");
    StanzaErrorCondition::InternalServerError.into()
}

/// disco#items at `owner`'s bare JID: the nodes `from` may see.
pub async fn items(server: &Server, owner: &BareJid, from: &Jid, is_owner: bool) -> IqOutcome {
    let asker = Asker::of(server, owner, &from.bare(), is_owner).await?;
    let who = asker.requester(from);
    let svc = service(server, owner);
    let mut q = Element::new("query", NS_ITEMS);
    for (node, config) in svc.nodes().await.map_err(internal)? {
        if svc.may_see(&who, &node, &config).await {
            q.append_child(
                Element::new("item", NS_ITEMS)
                    .with_attr("jid", owner.as_str())
                    .with_attr("node", node),
            );
        }
    }
    Ok(Some(q))
}

/// disco#info at `owner`'s bare JID with `node`: the node's identity and
/// meta-data, if `from` may see it.
pub async fn node_info(
    server: &Server,
    owner: &BareJid,
    from: &Jid,
    is_owner: bool,
    node: &str,
) -> IqOutcome {
    let svc = service(server, owner);
    let Some(config) = svc.node(node).await.map_err(internal)? else {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    };
    let asker = Asker::of(server, owner, &from.bare(), is_owner).await?;
    if !svc.may_see(&asker.requester(from), node, &config).await {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    }
    let field = |var: &str, kind: &str, value: &str| {
        Element::new("field", NS_DATA)
            .with_attr("var", var)
            .with_attr("type", kind)
            .with_child(Element::new("value", NS_DATA).with_text(value))
    };
    let mut form = Element::new("x", NS_DATA)
        .with_attr("type", "result")
        .with_child(field("FORM_TYPE", "hidden", NS_META_DATA))
        .with_child(field("pubsub#owner", "jid-multi", owner.as_str()));
    for (var, value) in config.fields() {
        form.append_child(
            Element::new("field", NS_DATA)
                .with_attr("var", var)
                .with_child(Element::new("value", NS_DATA).with_text(value)),
        );
    }
    // The owner's group names are the owner's business.
    if is_owner {
        let mut groups = Element::new("field", NS_DATA)
            .with_attr("var", ROSTER_GROUPS)
            .with_attr("type", "list-multi");
        for g in &config.roster_groups_allowed {
            groups.append_child(Element::new("value", NS_DATA).with_text(g.as_str()));
        }
        form.append_child(groups);
    }
    Ok(Some(
        Element::new("query", NS_INFO)
            .with_attr("node", node)
            .with_child(
                Element::new("identity", NS_INFO)
                    .with_attr("category", "pubsub")
                    .with_attr("type", "leaf"),
            )
            .with_child(Element::new("feature", NS_INFO).with_attr("var", pubsub::NS))
            .with_child(form),
    ))
}
