//! One account of a XEP-0227 (PIE) export as Waxwing stores it: what a
//! `<user/>` element carries, read from it ([`PieUser::from_element`]) and
//! written back ([`PieUser::to_element`]).
//!
//! The shapes read are those the XEP describes and those Prosody 0.12
//! (`mod_storage_xep0227`) and ejabberd 23.01 (`export_piefxis`) really
//! write: SCRAM keys base64-encoded once (Prosody, the XEP) or twice
//! (ejabberd), pending subscription requests as `<presence
//! type='subscribe'/>` children of the user, PEP node configuration in the
//! `pubsub#owner` shape with items in the `pubsub` one, blocks as
//! `jabber:iq:privacy` lists (ejabberd keeps XEP-0191 blocks there) or as
//! an `urn:xmpp:blocking` list (what Waxwing writes), and the archive in
//! `urn:xmpp:pie:0#mam`.

use crate::stanza::bare::Bare;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use jid::{BareJid, Jid};

use crate::modules::{xml_for_storage, xml_from_storage};
use crate::pubsub::config::NodeConfig;
use crate::storage::{RosterRecord, ScramRecord, SubscriptionRequest};
use crate::xml::{Element, NS_CLIENT, NS_SERVER};

/// The namespace of the PIE structure (`server-data`, `host`, `user`).
pub const NS_PIE: &str = "urn:xmpp:pie:0";
/// The namespace older ejabberd versions wrote for the same structure.
pub const NS_PIE_OLD: &str = "http://www.xmpp.org/extensions/xep-0227.html#ns";
pub const NS_SCRAM: &str = "urn:xmpp:pie:0#scram";
pub const NS_PIE_MAM: &str = "urn:xmpp:pie:0#mam";
pub const NS_ROSTER: &str = "jabber:iq:roster";
pub const NS_PRIVATE: &str = "jabber:iq:private";
pub const NS_PRIVACY: &str = "jabber:iq:privacy";
pub const NS_VCARD: &str = "vcard-temp";
pub const NS_BLOCKING: &str = "urn:xmpp:blocking";
pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUBSUB_OWNER: &str = "http://jabber.org/protocol/pubsub#owner";
pub const NS_NICK: &str = "http://jabber.org/protocol/nick";
pub const NS_MAM: &str = "urn:xmpp:mam:2";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
pub const NS_DELAY: &str = "urn:xmpp:delay";
pub const NS_XINCLUDE: &str = "http://www.w3.org/2001/XInclude";

/// Depth limit for stored payloads read back (a generous stanza depth).
const STORED_DEPTH: usize = 64;

/// A PEP node of the account's own pubsub service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PepNode {
    pub node: String,
    /// The configuration as stored (`NodeConfig::to_text`); None when the
    /// export has items but no configuration (the defaults then).
    pub config: Option<String>,
    /// (item id, payload XML), oldest first.
    pub items: Vec<(String, String)>,
    /// (bare JID, member | publisher | outcast).
    pub affiliations: Vec<(String, String)>,
    /// Subscribed JIDs.
    pub subscriptions: Vec<String>,
}

/// One archived message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedMessage {
    /// The id in the source (kept when it is one of Waxwing's).
    pub id: String,
    /// Microseconds since the Unix epoch.
    pub ts: i64,
    /// The message, serialized as the archive stores it.
    pub payload: String,
    /// The other side's bare JID and resource.
    pub peer: String,
    pub resource: String,
    pub outgoing: bool,
}

/// Everything of one account that Waxwing carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PieUser {
    pub host: String,
    /// The account's local part, normalised (nodeprep).
    pub name: String,
    /// A clear-text password, when the source stored one.
    pub password: Option<String>,
    /// SCRAM keys by hash ("SHA-1", "SHA-256", "SHA-512").
    pub scram: Vec<ScramRecord>,
    /// Roster rows; rows with `in_roster` false only carry a pending
    /// inbound request.
    pub roster: Vec<RosterRecord>,
    /// The texts of pending inbound requests, by requester.
    pub requests: Vec<(String, SubscriptionRequest)>,
    /// The vCard (vcard-temp), serialized.
    pub vcard: Option<String>,
    /// Private XML documents (XEP-0049): (namespace, serialized element).
    pub private: Vec<(String, String)>,
    /// Offline messages, serialized as the offline store keeps them.
    pub offline: Vec<String>,
    pub pep: Vec<PepNode>,
    /// Blocked JIDs (XEP-0191).
    pub blocklist: Vec<String>,
    pub archive: Vec<ArchivedMessage>,
    /// What the source carried that is not imported, one line each.
    pub notes: Vec<String>,
}

/// Is `el` the PIE element `name` (in either PIE namespace)?
pub fn is_pie(el_name: &str, el_ns: &str, name: &str) -> bool {
    el_name == name && (el_ns == NS_PIE || el_ns == NS_PIE_OLD || el_ns.is_empty())
}

/// The SCRAM hash behind a PIE mechanism name, with its output length.
fn scram_hash(mechanism: &str) -> Option<(&'static str, usize)> {
    match mechanism.trim_end_matches("-PLUS") {
        "SCRAM-SHA-1" => Some(("SHA-1", 20)),
        "SCRAM-SHA-256" => Some(("SHA-256", 32)),
        "SCRAM-SHA-512" => Some(("SHA-512", 64)),
        _ => None,
    }
}

fn b64(text: &str) -> Option<Vec<u8>> {
    let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    B64.decode(t).ok()
}

/// Reads `<scram-credentials/>`. The keys say how the element is encoded:
/// once-decoded they have the hash's length (the XEP, Prosody), or they
/// are base64 text that decodes to it (ejabberd 23.01, which encodes the
/// salt and keys twice); the salt is then decoded as many times.
pub fn parse_scram(el: &Element) -> Result<ScramRecord, String> {
    let mechanism = el.attr("mechanism").unwrap_or_default();
    let (hash, len) =
        scram_hash(mechanism).ok_or_else(|| format!("unknown SCRAM mechanism '{mechanism}'"))?;
    let text = |name: &str| {
        el.children()
            .find(|c| c.name() == name)
            .map(|c| c.text())
            .ok_or_else(|| format!("{mechanism} credentials without <{name}/>"))
    };
    let iterations: u32 = text("iter-count")?
        .trim()
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{mechanism}: bad <iter-count/>"))?;
    let bad = |what: &str| format!("{mechanism}: <{what}/> is not base64 of a {hash} key");
    let decode_key = |name: &str| -> Result<(Vec<u8>, bool), String> {
        let once = b64(&text(name)?).ok_or_else(|| bad(name))?;
        if once.len() == len {
            return Ok((once, false));
        }
        let twice = std::str::from_utf8(&once)
            .ok()
            .and_then(b64)
            .filter(|k| k.len() == len)
            .ok_or_else(|| bad(name))?;
        Ok((twice, true))
    };
    let (server_key, double) = decode_key("server-key")?;
    let (stored_key, double_stored) = decode_key("stored-key")?;
    if double != double_stored {
        return Err(format!("{mechanism}: keys encoded differently"));
    }
    let mut salt = b64(&text("salt")?).ok_or_else(|| bad("salt"))?;
    if double {
        salt = std::str::from_utf8(&salt)
            .ok()
            .and_then(b64)
            .ok_or_else(|| bad("salt"))?;
    }
    if salt.is_empty() {
        return Err(format!("{mechanism}: empty salt"));
    }
    Ok(ScramRecord {
        mechanism: hash.to_string(),
        salt,
        iterations,
        stored_key,
        server_key,
    })
}

/// A normalised bare JID, or None.
fn bare(s: &str) -> Option<String> {
    Jid::new(s.trim()).ok().map(|j| j.bare().to_string())
}

/// Moves a stanza written in the PIE file's default namespace (or none,
/// or jabber:server) into jabber:client, as stanzas are kept.
fn client_stanza(mut el: Element) -> Element {
    for ns in [NS_PIE, NS_PIE_OLD, "", NS_SERVER] {
        if el.ns() == ns {
            el.move_namespace(ns, NS_CLIENT);
        }
    }
    el
}

/// Microseconds since the epoch of an XEP-0082 DateTime.
fn parse_stamp(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

impl PieUser {
    /// Reads one `<user/>` of `host`. Items that cannot be read (a roster
    /// contact that is no JID, a PEP item without id) are left out with a
    /// note; an account whose name or credentials cannot be read is an
    /// error, and nothing of it is imported.
    pub fn from_element(host: &str, user: &Element) -> Result<PieUser, String> {
        let raw = user.attr("name").ok_or("<user/> without a name")?;
        let jid = BareJid::new(&format!("{raw}@{host}"))
            .map_err(|e| format!("'{raw}@{host}' is not a valid JID: {e}"))?;
        let name = jid.node().map(|n| n.to_string()).ok_or("empty user name")?;
        let mut u = PieUser {
            host: jid.domain().to_string(),
            name,
            password: user
                .attr("password")
                .filter(|p| !p.is_empty())
                .map(str::to_string),
            ..PieUser::default()
        };
        let own = jid.to_string();
        for child in user.children() {
            match (child.name(), child.ns()) {
                ("scram-credentials", NS_SCRAM) => {
                    let rec = parse_scram(child)?;
                    u.scram.retain(|s| s.mechanism != rec.mechanism);
                    u.scram.push(rec);
                }
                ("query", NS_ROSTER) => u.read_roster(child, &own),
                ("presence", _) => u.read_request(child, &own),
                ("vCard", NS_VCARD) => {
                    if !child.nodes().is_empty() {
                        u.vcard = Some(xml_for_storage([child]));
                    }
                }
                ("query", NS_PRIVATE) => {
                    for doc in child.children() {
                        let ns = doc.ns().to_string();
                        u.private.retain(|(n, _)| *n != ns);
                        u.private.push((ns, xml_for_storage([doc])));
                    }
                }
                ("offline-messages", _) => {
                    for m in child.children().filter(|m| m.name() == "message") {
                        let m = client_stanza(m.clone());
                        u.offline
                            .push(String::from_utf8_lossy(&m.to_bytes(NS_CLIENT)).into_owned());
                    }
                }
                ("pubsub", NS_PUBSUB_OWNER) => u.read_pep_owner(child),
                ("pubsub", NS_PUBSUB) => u.read_pep_items(child),
                ("query", NS_PRIVACY) => u.read_privacy(child),
                ("blocklist", NS_BLOCKING) => {
                    for item in child.children().filter(|i| i.name() == "item") {
                        match item.attr("jid").and_then(|j| Jid::new(j.trim()).ok()) {
                            Some(j) => u.block(j.to_string()),
                            None => u.notes.push("a blocklist item that is no JID".into()),
                        }
                    }
                }
                ("archive", NS_PIE_MAM) => u.read_archive(child, &own),
                (name, ns) => u
                    .notes
                    .push(format!("<{name} xmlns='{ns}'/> is not carried")),
            }
        }
        Ok(u)
    }

    fn block(&mut self, jid: String) {
        if !self.blocklist.contains(&jid) {
            self.blocklist.push(jid);
        }
    }

    fn roster_row(&mut self, contact: &str) -> &mut RosterRecord {
        if let Some(i) = self.roster.iter().position(|r| r.contact == contact) {
            return &mut self.roster[i];
        }
        self.roster.push(RosterRecord {
            contact: contact.to_string(),
            name: None,
            subscription: "none".into(),
            ask_out: false,
            pending_in: false,
            approved: false,
            in_roster: true,
            groups: Vec::new(),
        });
        self.roster.last_mut().expect("just pushed")
    }

    fn read_roster(&mut self, query: &Element, own: &str) {
        for item in query.children().filter(|i| i.name() == "item") {
            let Some(contact) = item.attr("jid").and_then(bare) else {
                self.notes.push(format!(
                    "roster item '{}' is no JID",
                    item.attr("jid").unwrap_or("")
                ));
                continue;
            };
            if contact == own {
                continue;
            }
            let subscription = match item.attr("subscription").unwrap_or("none") {
                s @ ("none" | "to" | "from" | "both") => s.to_string(),
                "remove" => continue,
                other => {
                    self.notes.push(format!(
                        "roster item {contact}: subscription '{other}' read as none"
                    ));
                    "none".to_string()
                }
            };
            let mut groups: Vec<String> = Vec::new();
            for g in item.children().filter(|g| g.name() == "group") {
                let g = g.text().trim().to_string();
                if !g.is_empty() && !g.contains('\n') && !groups.contains(&g) {
                    groups.push(g);
                }
            }
            let row = self.roster_row(&contact);
            row.name = item
                .attr("name")
                .filter(|n| !n.is_empty())
                .map(str::to_string);
            row.subscription = subscription;
            row.ask_out = item.attr("ask") == Some("subscribe");
            row.approved = matches!(item.attr("approved"), Some("true" | "1"));
            row.in_roster = true;
            row.groups = groups;
        }
    }

    /// A pending inbound subscription request (XEP-0227 §4.1).
    fn read_request(&mut self, presence: &Element, own: &str) {
        if presence.attr("type") != Some("subscribe") {
            return;
        }
        let Some(from) = presence.attr("from").and_then(bare) else {
            self.notes
                .push("a subscription request without a valid from".into());
            return;
        };
        if from == own {
            return;
        }
        let nick = presence
            .children()
            .find(|c| c.is("nick", NS_NICK))
            .map(|n| n.text())
            .filter(|n| !n.is_empty());
        let status = presence
            .children()
            .find(|c| c.name() == "status")
            .map(|n| n.text())
            .filter(|n| !n.is_empty());
        let fresh = !self.roster.iter().any(|r| r.contact == from);
        let row = self.roster_row(&from);
        if fresh {
            // Only the request: not (yet) in the roster.
            row.in_roster = false;
        }
        // Only meaningful while the contact has no subscription to us.
        if matches!(row.subscription.as_str(), "none" | "to") {
            row.pending_in = true;
            self.requests.retain(|(c, _)| *c != from);
            self.requests
                .push((from, SubscriptionRequest { nick, status }));
        }
    }

    fn pep_node(&mut self, node: &str) -> &mut PepNode {
        if let Some(i) = self.pep.iter().position(|n| n.node == node) {
            return &mut self.pep[i];
        }
        self.pep.push(PepNode {
            node: node.to_string(),
            ..PepNode::default()
        });
        self.pep.last_mut().expect("just pushed")
    }

    fn read_pep_owner(&mut self, pubsub: &Element) {
        for el in pubsub.children() {
            let Some(node) = el.attr("node").filter(|n| !n.is_empty()) else {
                continue;
            };
            match el.name() {
                "configure" => {
                    let mut config = NodeConfig::default();
                    if let Some(form) = el.children().find(|c| c.name() == "x") {
                        use crate::pubsub::config::{form_fields, form_values, ROSTER_GROUPS};
                        for (var, value) in form_fields(form) {
                            // Values this service does not know keep the default.
                            if var != ROSTER_GROUPS {
                                let _ = config.set(&var, &value, u32::MAX);
                            }
                        }
                        // The one multi-valued option: every value, not the first.
                        for group in form_values(form, ROSTER_GROUPS).unwrap_or_default() {
                            let _ = config.set(ROSTER_GROUPS, &group, u32::MAX);
                        }
                    }
                    self.pep_node(node).config = Some(config.to_text());
                }
                "affiliations" => {
                    let mut list = Vec::new();
                    for a in el.children().filter(|a| a.name() == "affiliation") {
                        let (Some(j), Some(aff)) =
                            (a.attr("jid").and_then(bare), a.attr("affiliation"))
                        else {
                            continue;
                        };
                        if matches!(aff, "member" | "publisher" | "outcast") {
                            list.push((j, aff.to_string()));
                        }
                    }
                    self.pep_node(node).affiliations.extend(list);
                }
                "subscriptions" => {
                    let mut list = Vec::new();
                    for s in el.children().filter(|s| s.name() == "subscription") {
                        // Prosody 0.12 writes the state as `subscribed='subscribed'`.
                        let state = s.attr("subscription").or(s.attr("subscribed"));
                        if state != Some("subscribed") {
                            continue;
                        }
                        if let Some(j) = s.attr("jid").and_then(|j| Jid::new(j.trim()).ok()) {
                            list.push(j.to_string());
                        }
                    }
                    self.pep_node(node).subscriptions.extend(list);
                }
                other => self
                    .notes
                    .push(format!("pubsub#owner <{other}/> is not carried")),
            }
        }
    }

    fn read_pep_items(&mut self, pubsub: &Element) {
        for items in pubsub.children().filter(|c| c.name() == "items") {
            let Some(node) = items.attr("node").filter(|n| !n.is_empty()) else {
                continue;
            };
            let mut list = Vec::new();
            for item in items.children().filter(|i| i.name() == "item") {
                let (Some(id), Some(payload)) = (
                    item.attr("id").filter(|i| !i.is_empty()),
                    item.children().next(),
                ) else {
                    self.notes
                        .push(format!("an item of PEP node {node} without id or payload"));
                    continue;
                };
                list.retain(|(i, _): &(String, String)| i != id);
                list.push((id.to_string(), xml_for_storage([payload])));
            }
            let n = self.pep_node(node);
            for (id, payload) in list {
                n.items.retain(|(i, _)| *i != id);
                n.items.push((id, payload));
            }
        }
    }

    /// XEP-0191 blocks from privacy lists (ejabberd keeps them there):
    /// items of the default list or of "Blocked contacts" that deny a JID
    /// everything. Other privacy rules are not carried.
    fn read_privacy(&mut self, query: &Element) {
        let default = query
            .children()
            .find(|c| c.name() == "default")
            .and_then(|d| d.attr("name"))
            .map(str::to_string);
        let mut other_rules = 0;
        for list in query.children().filter(|c| c.name() == "list") {
            let name = list.attr("name").unwrap_or_default();
            let blocking = Some(name) == default.as_deref() || name == "Blocked contacts";
            for item in list.children().filter(|i| i.name() == "item") {
                let blocks_all = item.attr("type") == Some("jid")
                    && item.attr("action") == Some("deny")
                    && item.children().next().is_none();
                match (blocking && blocks_all, item.attr("value").map(Jid::new)) {
                    (true, Some(Ok(j))) => self.block(j.to_string()),
                    _ => other_rules += 1,
                }
            }
        }
        if other_rules > 0 {
            self.notes.push(format!(
                "{other_rules} privacy list rules (XEP-0016) other than blocks are not carried"
            ));
        }
    }

    fn read_archive(&mut self, archive: &Element, own: &str) {
        let mut skipped = 0;
        for result in archive.children().filter(|r| r.name() == "result") {
            match archived(result, own) {
                Some(m) => self.archive.push(m),
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            self.notes
                .push(format!("{skipped} archived messages could not be read"));
        }
    }

    /// The `<user/>` element of this account, as `ctl export` writes it.
    pub fn to_element(&self) -> Element {
        let mut user = Element::new("user", NS_PIE).with_attr("name", self.name.as_str());
        if let Some(p) = &self.password {
            user.set_attr("password", p.as_str());
        }
        for s in &self.scram {
            user.append_child(
                Element::new("scram-credentials", NS_SCRAM)
                    .with_attr("mechanism", format!("SCRAM-{}", s.mechanism))
                    .with_child(
                        Element::new("iter-count", NS_SCRAM).with_text(s.iterations.to_string()),
                    )
                    .with_child(Element::new("salt", NS_SCRAM).with_text(B64.encode(&s.salt)))
                    .with_child(
                        Element::new("server-key", NS_SCRAM).with_text(B64.encode(&s.server_key)),
                    )
                    .with_child(
                        Element::new("stored-key", NS_SCRAM).with_text(B64.encode(&s.stored_key)),
                    ),
            );
        }
        let in_roster: Vec<&RosterRecord> = self.roster.iter().filter(|r| r.in_roster).collect();
        if !in_roster.is_empty() {
            let mut q = Element::new("query", NS_ROSTER);
            for r in in_roster {
                let mut item = Element::new("item", NS_ROSTER)
                    .with_attr("jid", r.contact.as_str())
                    .with_attr("subscription", r.subscription.as_str());
                if let Some(n) = &r.name {
                    item.set_attr("name", n.as_str());
                }
                if r.ask_out {
                    item.set_attr("ask", "subscribe");
                }
                if r.approved {
                    item.set_attr("approved", "true");
                }
                for g in &r.groups {
                    item.append_child(Element::new("group", NS_ROSTER).with_text(g.as_str()));
                }
                q.append_child(item);
            }
            user.append_child(q);
        }
        for r in self.roster.iter().filter(|r| r.pending_in) {
            let mut p = Element::new("presence", NS_CLIENT)
                .with_attr("from", r.contact.as_str())
                .with_attr("type", "subscribe");
            if let Some((_, req)) = self.requests.iter().find(|(c, _)| *c == r.contact) {
                if let Some(n) = &req.nick {
                    p.append_child(Element::new("nick", NS_NICK).with_text(n.as_str()));
                }
                if let Some(s) = &req.status {
                    p.append_child(Element::new("status", NS_CLIENT).with_text(s.as_str()));
                }
            }
            user.append_child(p);
        }
        if let Some(v) = self.vcard.as_deref().and_then(parse_stored) {
            user.append_child(v);
        }
        if !self.private.is_empty() {
            let mut q = Element::new("query", NS_PRIVATE);
            for (_, xml) in &self.private {
                if let Some(doc) = parse_stored(xml) {
                    q.append_child(doc);
                }
            }
            user.append_child(q);
        }
        if !self.offline.is_empty() {
            let mut o = Element::new("offline-messages", NS_PIE);
            for m in &self.offline {
                if let Some(m) = parse_stored(m) {
                    o.append_child(m);
                }
            }
            user.append_child(o);
        }
        if !self.pep.is_empty() {
            let mut owner = Element::new("pubsub", NS_PUBSUB_OWNER);
            let mut items_el = Element::new("pubsub", NS_PUBSUB);
            for n in &self.pep {
                let config = n
                    .config
                    .as_deref()
                    .map(NodeConfig::from_text)
                    .unwrap_or_default();
                let mut form = config.to_form();
                form.set_attr("type", "submit");
                owner.append_child(
                    Element::new("configure", NS_PUBSUB_OWNER)
                        .with_attr("node", n.node.as_str())
                        .with_child(form),
                );
                if !n.affiliations.is_empty() {
                    let mut a = Element::new("affiliations", NS_PUBSUB_OWNER)
                        .with_attr("node", n.node.as_str());
                    for (j, aff) in &n.affiliations {
                        a.append_child(
                            Element::new("affiliation", NS_PUBSUB_OWNER)
                                .with_attr("jid", j.as_str())
                                .with_attr("affiliation", aff.as_str()),
                        );
                    }
                    owner.append_child(a);
                }
                if !n.subscriptions.is_empty() {
                    let mut s = Element::new("subscriptions", NS_PUBSUB_OWNER)
                        .with_attr("node", n.node.as_str());
                    for j in &n.subscriptions {
                        s.append_child(
                            Element::new("subscription", NS_PUBSUB_OWNER)
                                .with_attr("jid", j.as_str())
                                .with_attr("subscription", "subscribed"),
                        );
                    }
                    owner.append_child(s);
                }
                if !n.items.is_empty() {
                    let mut items =
                        Element::new("items", NS_PUBSUB).with_attr("node", n.node.as_str());
                    for (id, payload) in &n.items {
                        let mut item = Element::new("item", NS_PUBSUB).with_attr("id", id.as_str());
                        if let Some(p) = parse_stored(payload) {
                            item.append_child(p);
                        }
                        items.append_child(item);
                    }
                    items_el.append_child(items);
                }
            }
            user.append_child(owner);
            if items_el.children().next().is_some() {
                user.append_child(items_el);
            }
        }
        if !self.blocklist.is_empty() {
            let mut b = Element::new("blocklist", NS_BLOCKING);
            for j in &self.blocklist {
                b.append_child(Element::new("item", NS_BLOCKING).with_attr("jid", j.as_str()));
            }
            user.append_child(b);
        }
        if !self.archive.is_empty() {
            let mut a = Element::new("archive", NS_PIE_MAM);
            for m in &self.archive {
                let Some(msg) = parse_stored(&m.payload) else {
                    continue;
                };
                let stamp = crate::modules::mam::query::stamp(m.ts).unwrap_or_default();
                a.append_child(
                    Element::new("result", NS_MAM)
                        .with_attr("id", m.id.as_str())
                        .with_child(
                            Element::new("forwarded", NS_FORWARD)
                                .with_child(
                                    Element::new("delay", NS_DELAY).with_attr("stamp", stamp),
                                )
                                .with_child(msg),
                        ),
                );
            }
            user.append_child(a);
        }
        user
    }
}

/// The element of a stored payload (stanzas are stored in jabber:client).
fn parse_stored(xml: &str) -> Option<Element> {
    xml_from_storage(xml, STORED_DEPTH).and_then(|v| v.into_iter().next())
}

/// One `<result/>` of an exported archive.
fn archived(result: &Element, own: &str) -> Option<ArchivedMessage> {
    let fwd = result.children().find(|c| c.is("forwarded", NS_FORWARD))?;
    let stamp = fwd
        .children()
        .find(|c| c.is("delay", NS_DELAY))
        .and_then(|d| d.attr("stamp"))
        .and_then(parse_stamp)?;
    let msg = fwd.children().find(|c| c.name() == "message")?;
    let msg = client_stanza(msg.clone());
    let from = msg.attr("from").and_then(|f| Jid::new(f).ok());
    let to = msg.attr("to").and_then(|t| Jid::new(t).ok());
    let from_bare = from.as_ref().map(|j| j.bare().to_string());
    let outgoing = from_bare.as_deref() == Some(own);
    let other = if outgoing { to } else { from };
    let other = other?;
    Some(ArchivedMessage {
        id: result.attr("id").unwrap_or_default().to_string(),
        ts: stamp,
        peer: other.bare().to_string(),
        resource: other.resource().map(|r| r.to_string()).unwrap_or_default(),
        outgoing,
        // As the archive writer keeps stanzas.
        payload: xml_for_storage([&msg]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(xml: &str) -> Element {
        xml_from_storage(xml, 64)
            .unwrap()
            .into_iter()
            .next()
            .unwrap()
    }

    #[test]
    fn scram_keys_single_and_double_base64() {
        // Prosody / the XEP: base64 of the raw salt and keys.
        let single = el(
            "<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>\
            <iter-count>10000</iter-count><salt>c2FsdA==</salt>\
            <server-key>AAECAwQFBgcICQoLDA0ODxAREhM=</server-key>\
            <stored-key>FBUWFxgZGhscHR4fICEiIyQlJic=</stored-key></scram-credentials>",
        );
        let s = parse_scram(&single).unwrap();
        assert_eq!(s.mechanism, "SHA-1");
        assert_eq!(s.iterations, 10000);
        assert_eq!(s.salt, b"salt");
        assert_eq!(s.server_key, (0u8..20).collect::<Vec<_>>());
        assert_eq!(s.stored_key, (20u8..40).collect::<Vec<_>>());
        // ejabberd 23.01: base64 of the base64 text (its real output).
        let double = el(
            "<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>\
            <iter-count>4096</iter-count><salt>T1IxYlFFVmpsQlpMUEF5MVpRNUZSZz09</salt>\
            <server-key>Vm5rWVVYb0h0eWVleGVoZ1NzYVVLV0xuTHFNPQ==</server-key>\
            <stored-key>Y2tTM3MxdUlDdUtaNkZ0NTdZUUE4a2tqZFFvPQ==</stored-key></scram-credentials>",
        );
        let d = parse_scram(&double).unwrap();
        assert_eq!(d.iterations, 4096);
        assert_eq!(d.salt, B64.decode("OR1bQEVjlBZLPAy1ZQ5FRg==").unwrap());
        assert_eq!(d.server_key.len(), 20);
        assert_eq!(
            d.stored_key,
            B64.decode("ckS3s1uICuKZ6Ft57YQA8kkjdQo=").unwrap()
        );
        // Neither: refused, with the reason.
        let bad = el(
            "<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-256'>\
            <iter-count>4096</iter-count><salt>c2FsdA==</salt>\
            <server-key>AAECAwQFBgcICQoLDA0ODxAREhM=</server-key>\
            <stored-key>FBUWFxgZGhscHR4fICEiIyQlJic=</stored-key></scram-credentials>",
        );
        assert!(parse_scram(&bad).unwrap_err().contains("SHA-256"));
    }

    #[test]
    fn the_double_encoded_keys_verify_the_password() {
        // The exported alice of the ejabberd run above has password alicepw.
        let double = el(
            "<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>\
            <iter-count>4096</iter-count><salt>T1IxYlFFVmpsQlpMUEF5MVpRNUZSZz09</salt>\
            <server-key>Vm5rWVVYb0h0eWVleGVoZ1NzYVVLV0xuTHFNPQ==</server-key>\
            <stored-key>Y2tTM3MxdUlDdUtaNkZ0NTdZUUE4a2tqZFFvPQ==</stored-key></scram-credentials>",
        );
        let s = parse_scram(&double).unwrap();
        let c = crate::sasl::ScramCredentials {
            hash: crate::sasl::ScramHash::Sha1,
            salt: s.salt,
            iterations: s.iterations,
            stored_key: s.stored_key,
            server_key: s.server_key,
        };
        assert!(c.verify_password("alicepw"));
        assert!(!c.verify_password("alicepw2"));
    }

    #[test]
    fn roster_requests_and_blocks() {
        let user = el("<user xmlns='urn:xmpp:pie:0' name='Juliet'>\
            <query xmlns='jabber:iq:roster'>\
              <item jid='Romeo@Montague.net' name='Romeo' subscription='to' ask='subscribe'>\
                <group>Friends</group><group>Friends</group><group>Lovers</group></item>\
              <item jid='juliet@capulet.com' subscription='both'/>\
              <item jid='not a jid@@' subscription='both'/>\
            </query>\
            <presence xmlns='jabber:client' type='subscribe' from='romeo@montague.net'>\
              <nick xmlns='http://jabber.org/protocol/nick'>Romy</nick></presence>\
            <presence xmlns='jabber:client' type='subscribe' from='tybalt@capulet.com/x'/>\
            <query xmlns='jabber:iq:privacy'><default name='Blocked contacts'/>\
              <list name='Blocked contacts'><item type='jid' value='paris@verona.lit' action='deny' order='1'/>\
              <item type='jid' value='nurse@verona.lit' action='deny' order='2'><message/></item></list>\
            </query></user>");
        let u = PieUser::from_element("Capulet.com", &user).unwrap();
        assert_eq!(
            (u.name.as_str(), u.host.as_str()),
            ("juliet", "capulet.com")
        );
        assert_eq!(u.roster.len(), 2);
        let romeo = &u.roster[0];
        assert_eq!(romeo.contact, "romeo@montague.net");
        assert_eq!(romeo.groups, vec!["Friends", "Lovers"]);
        assert!(romeo.ask_out && romeo.pending_in && romeo.in_roster);
        let tybalt = &u.roster[1];
        assert!(tybalt.pending_in && !tybalt.in_roster);
        assert_eq!(u.requests[0].1.nick.as_deref(), Some("Romy"));
        assert_eq!(u.blocklist, vec!["paris@verona.lit"]);
        assert!(u.notes.iter().any(|n| n.contains("not a jid")));
        assert!(u.notes.iter().any(|n| n.contains("privacy")));
    }
}
