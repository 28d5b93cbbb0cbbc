//! Hats (XEP-0317 0.2): roles of an application's own ("Teacher",
//! "Presenter") that a room's owners put on users with two XEP-0050
//! commands on the room, `urn:xmpp:hats:commands:don` and `…:doff`. A
//! user's hats go in every presence of its occupant (`<hats/>` beside
//! the MUC `<x/>`); a change is announced to the room at once.
//!
//! Hats belong to the user (bare JID), as affiliations do, and are kept
//! with the room's configuration text (`hat=` lines), so a persistent
//! room keeps them across restarts. At most `[muc] max_hats` per room.

use crate::stanza::bare::Bare;
use jid::{BareJid, FullJid};

use super::presence::{announce, Announcement};
use super::room::{Affiliation, Ctx, Room};
use crate::modules::NS_DATA;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::Element;

pub const NS_HATS: &str = "urn:xmpp:hats:0";
pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const FORM_TYPE: &str = "urn:xmpp:hats:commands";
pub const DON: &str = "urn:xmpp:hats:commands:don";
pub const DOFF: &str = "urn:xmpp:hats:commands:doff";

/// Longest hat URI or title kept (bytes).
const MAX_TEXT: usize = 256;

/// One hat a user wears in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hat {
    pub jid: String,
    pub uri: String,
    pub title: String,
}

impl Hat {
    /// The stored line's value: fields apart by tabs (none of them has one).
    pub fn to_stored(&self) -> String {
        format!("{}\t{}\t{}", self.jid, self.uri, self.title)
    }

    pub fn from_stored(v: &str) -> Option<Hat> {
        let mut parts = v.splitn(3, '\t');
        Some(Hat {
            jid: parts.next()?.to_string(),
            uri: parts.next()?.to_string(),
            title: parts.next().unwrap_or_default().to_string(),
        })
    }
}

/// The `<hats/>` of `real`, if it wears any.
pub fn hats_of(room: &Room, real: &BareJid) -> Option<Element> {
    if !room.hats.iter().any(|h| h.jid == real.as_str()) {
        return None;
    }
    let mut hats = Element::new("hats", NS_HATS);
    for h in room.hats.iter().filter(|h| h.jid == real.as_str()) {
        hats.append_child(
            Element::new("hat", NS_HATS)
                .with_attr("uri", h.uri.as_str())
                .with_attr("title", h.title.as_str()),
        );
    }
    Some(hats)
}

/// The commands an owner sees in the room's command list (disco#items of
/// node `http://jabber.org/protocol/commands`).
pub fn command_items(room: &Room, from: &FullJid) -> Vec<Element> {
    if room.affiliation(&from.bare()) != Affiliation::Owner {
        return Vec::new();
    }
    [(DON, "Assign a hat"), (DOFF, "Remove a hat")]
        .into_iter()
        .map(|(node, name)| {
            Element::new("item", crate::modules::disco::NS_ITEMS)
                .with_attr("jid", room.jid.as_str())
                .with_attr("node", node)
                .with_attr("name", name)
        })
        .collect()
}

fn field(form: &Element, var: &str) -> Option<String> {
    form.children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text().trim().to_string())
}

fn text_field(var: &str, kind: &str, label: &str) -> Element {
    Element::new("field", NS_DATA)
        .with_attr("var", var)
        .with_attr("type", kind)
        .with_attr("label", label)
        .with_child(Element::new("required", NS_DATA))
}

/// A `<command/>` IQ set to the room: the form when executed bare, the
/// change when submitted with one. Owners only.
pub fn command(
    ctx: &mut Ctx<'_>,
    room: &mut Room,
    from: &FullJid,
    command: &Element,
) -> Result<Option<Element>, StanzaError> {
    let node = command.attr("node").unwrap_or_default();
    if node != DON && node != DOFF {
        return Err(StanzaErrorCondition::ItemNotFound.into());
    }
    if room.affiliation(&from.bare()) != Affiliation::Owner {
        return Err(StanzaErrorCondition::Forbidden.into());
    }
    let session = command
        .attr("sessionid")
        .map(str::to_string)
        .unwrap_or_else(|| ctx.ids.next().0);
    let reply = |status: &str| {
        Element::new("command", NS_COMMANDS)
            .with_attr("node", node)
            .with_attr("sessionid", session.as_str())
            .with_attr("status", status)
    };
    if command.attr("action") == Some("cancel") {
        return Ok(Some(reply("canceled")));
    }
    let Some(form) = command
        .get_child("x", NS_DATA)
        .filter(|x| x.attr("type") == Some("submit"))
    else {
        let title = if node == DON {
            "Assigning a hat"
        } else {
            "Removing a hat"
        };
        let mut x = Element::new("x", NS_DATA)
            .with_attr("type", "form")
            .with_child(Element::new("title", NS_DATA).with_text(title))
            .with_child(
                Element::new("field", NS_DATA)
                    .with_attr("var", "FORM_TYPE")
                    .with_attr("type", "hidden")
                    .with_child(Element::new("value", NS_DATA).with_text(FORM_TYPE)),
            )
            .with_child(text_field("accountjid", "jid-single", "User Address"))
            .with_child(text_field("hat", "text-single", "Hat URI"));
        if node == DON {
            x.append_child(text_field("title", "text-single", "Hat title"));
        }
        return Ok(Some(reply("executing").with_child(x)));
    };
    let bad = |t: &str| StanzaError::with_text(StanzaErrorCondition::BadRequest, t);
    let jid = field(form, "accountjid")
        .and_then(|j| jid::Jid::new(&j).ok())
        .map(|j| j.bare())
        .ok_or_else(|| bad("accountjid must be a JID"))?;
    let uri = field(form, "hat").unwrap_or_default();
    if uri.is_empty() || uri.len() > MAX_TEXT {
        return Err(bad("a hat is a URI of at most 256 bytes"));
    }
    if node == DON {
        let title = field(form, "title")
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| uri.clone())
            .replace(['\t', '\n'], " ");
        if title.len() > MAX_TEXT {
            return Err(bad("a hat's title is at most 256 bytes"));
        }
        if uri.contains(['\t', '\n']) {
            return Err(bad("a hat URI has no white space"));
        }
        let hat = Hat {
            jid: jid.as_str().to_string(),
            uri,
            title,
        };
        let full = room.hats.len() >= ctx.limits.max_hats;
        match room
            .hats
            .iter_mut()
            .find(|h| h.jid == hat.jid && h.uri == hat.uri)
        {
            Some(h) => h.title = hat.title,
            None if full => {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::ResourceConstraint,
                    "too many hats in this room",
                ))
            }
            None => room.hats.push(hat),
        }
    } else {
        let before = room.hats.len();
        room.hats
            .retain(|h| !(h.jid == jid.as_str() && h.uri == uri));
        if room.hats.len() == before {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::ItemNotFound,
                "that user does not wear that hat",
            ));
        }
    }
    room.dirty = true;
    // Those present show their hats at once.
    let wearers: Vec<_> = room
        .occupants
        .values()
        .filter(|o| o.real == jid)
        .cloned()
        .collect();
    for o in wearers {
        announce(ctx, room, &o, &Announcement::default(), None);
    }
    Ok(Some(reply("completed")))
}
