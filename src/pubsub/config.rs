//! A node's configuration (XEP-0060 §16.4.4 `pubsub#node_config`): the
//! options this service knows, read from and written to XEP-0004 data
//! forms, and stored as text, one `var=value` a line.

use super::NS_NODE_CONFIG;
use crate::modules::NS_DATA;
use crate::xml::Element;

/// Who may read a node's items and subscribe (§4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessModel {
    Open,
    Presence,
    Roster,
    Whitelist,
}

/// Who may publish (§16.4.4 `pubsub#publish_model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishModel {
    Publishers,
    Subscribers,
    Open,
}

/// When the last item goes to a new subscriber (§16.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendLast {
    Never,
    OnSub,
    OnSubAndPresence,
}

/// How many items a node keeps: a number, or as many as the service allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxItems {
    Count(u32),
    Max,
}

impl MaxItems {
    /// The number kept under the service's cap.
    pub fn resolve(self, cap: u32) -> u32 {
        match self {
            MaxItems::Count(n) => n.min(cap),
            MaxItems::Max => cap,
        }
    }
}

/// A node's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub access_model: AccessModel,
    pub publish_model: PublishModel,
    pub max_items: MaxItems,
    pub persist_items: bool,
    pub send_last_published_item: SendLast,
    pub notify_retract: bool,
    pub notify_delete: bool,
    pub deliver_payloads: bool,
    pub deliver_notifications: bool,
    pub title: String,
    /// `pubsub#roster_groups_allowed` (list-multi): with the roster access
    /// model, the owner's roster groups whose contacts may read the node;
    /// empty means every contact with a presence subscription.
    pub roster_groups_allowed: Vec<String>,
}

/// The one multi-valued option (a list of roster groups).
pub const ROSTER_GROUPS: &str = "pubsub#roster_groups_allowed";
/// Most groups one node names, and the longest name taken.
const MAX_ROSTER_GROUPS: usize = 100;
const MAX_OPTION_TEXT: usize = 1024;

impl Default for NodeConfig {
    /// XEP-0163 §4 defaults for a personal node: contacts with a presence
    /// subscription read it, the owner publishes, the last item is kept.
    fn default() -> Self {
        NodeConfig {
            access_model: AccessModel::Presence,
            publish_model: PublishModel::Publishers,
            max_items: MaxItems::Count(1),
            persist_items: true,
            send_last_published_item: SendLast::OnSubAndPresence,
            notify_retract: true,
            notify_delete: true,
            deliver_payloads: true,
            deliver_notifications: true,
            title: String::new(),
            roster_groups_allowed: Vec::new(),
        }
    }
}

/// Why an option could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionError {
    /// A value this option cannot take (or a count above the cap).
    BadValue(String),
}

fn boolean(v: &str) -> Option<bool> {
    match v {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn bool_text(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

impl NodeConfig {
    /// Every option this service knows, as (var, value) in wire form.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "pubsub#access_model",
                match self.access_model {
                    AccessModel::Open => "open",
                    AccessModel::Presence => "presence",
                    AccessModel::Roster => "roster",
                    AccessModel::Whitelist => "whitelist",
                }
                .into(),
            ),
            (
                "pubsub#publish_model",
                match self.publish_model {
                    PublishModel::Publishers => "publishers",
                    PublishModel::Subscribers => "subscribers",
                    PublishModel::Open => "open",
                }
                .into(),
            ),
            (
                "pubsub#max_items",
                match self.max_items {
                    MaxItems::Count(n) => n.to_string(),
                    MaxItems::Max => "max".into(),
                },
            ),
            ("pubsub#persist_items", bool_text(self.persist_items).into()),
            (
                "pubsub#send_last_published_item",
                match self.send_last_published_item {
                    SendLast::Never => "never",
                    SendLast::OnSub => "on_sub",
                    SendLast::OnSubAndPresence => "on_sub_and_presence",
                }
                .into(),
            ),
            (
                "pubsub#notify_retract",
                bool_text(self.notify_retract).into(),
            ),
            ("pubsub#notify_delete", bool_text(self.notify_delete).into()),
            (
                "pubsub#deliver_payloads",
                bool_text(self.deliver_payloads).into(),
            ),
            (
                "pubsub#deliver_notifications",
                bool_text(self.deliver_notifications).into(),
            ),
            ("pubsub#title", self.title.clone()),
        ]
    }

    /// Sets one option from its wire value; unknown options are ignored
    /// (false), so a client's extra options do not stop a publish.
    pub fn set(&mut self, var: &str, value: &str, cap: u32) -> Result<bool, OptionError> {
        let bad = || OptionError::BadValue(var.to_owned());
        match var {
            "pubsub#access_model" => {
                self.access_model = match value {
                    "open" => AccessModel::Open,
                    "presence" => AccessModel::Presence,
                    "roster" => AccessModel::Roster,
                    "whitelist" => AccessModel::Whitelist,
                    _ => return Err(bad()),
                }
            }
            "pubsub#publish_model" => {
                self.publish_model = match value {
                    "publishers" => PublishModel::Publishers,
                    "subscribers" => PublishModel::Subscribers,
                    "open" => PublishModel::Open,
                    _ => return Err(bad()),
                }
            }
            "pubsub#max_items" => {
                self.max_items = match value {
                    "max" => MaxItems::Max,
                    n => match n.parse::<u32>() {
                        Ok(n) if (1..=cap).contains(&n) => MaxItems::Count(n),
                        _ => return Err(bad()),
                    },
                }
            }
            "pubsub#persist_items" => self.persist_items = boolean(value).ok_or_else(bad)?,
            "pubsub#send_last_published_item" => {
                self.send_last_published_item = match value {
                    "never" => SendLast::Never,
                    "on_sub" => SendLast::OnSub,
                    "on_sub_and_presence" => SendLast::OnSubAndPresence,
                    _ => return Err(bad()),
                }
            }
            "pubsub#notify_retract" => self.notify_retract = boolean(value).ok_or_else(bad)?,
            "pubsub#notify_delete" => self.notify_delete = boolean(value).ok_or_else(bad)?,
            "pubsub#deliver_payloads" => self.deliver_payloads = boolean(value).ok_or_else(bad)?,
            "pubsub#deliver_notifications" => {
                self.deliver_notifications = boolean(value).ok_or_else(bad)?
            }
            "pubsub#title" => {
                if value.len() > MAX_OPTION_TEXT {
                    return Err(bad());
                }
                self.title = value.to_owned();
            }
            // One value at a time: each adds a group (a form replaces the
            // list first, see `apply_form`). A group name is one line of
            // the stored text.
            ROSTER_GROUPS => {
                if value.len() > MAX_OPTION_TEXT || value.contains(['\n', '\r']) {
                    return Err(bad());
                }
                if value.is_empty() || self.roster_groups_allowed.iter().any(|g| g == value) {
                    return Ok(true);
                }
                if self.roster_groups_allowed.len() >= MAX_ROSTER_GROUPS {
                    return Err(bad());
                }
                self.roster_groups_allowed.push(value.to_owned());
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Does the node's value of `var` equal `value` (both read the same
    /// way, `max` as the cap)? Unknown options never match.
    pub fn matches(&self, var: &str, value: &str, cap: u32) -> bool {
        if var == ROSTER_GROUPS {
            return self.roster_groups_allowed.iter().any(|g| g == value);
        }
        let mut probe = self.clone();
        match probe.set(var, value, cap) {
            Ok(true) => {
                if var == "pubsub#max_items" {
                    probe.max_items.resolve(cap) == self.max_items.resolve(cap)
                } else {
                    probe == *self
                }
            }
            _ => false,
        }
    }

    /// Applies every field of a submitted form (FORM_TYPE aside); a
    /// roster groups field replaces the list with all its values.
    pub fn apply_form(&mut self, form: &Element, cap: u32) -> Result<(), OptionError> {
        for (var, value) in form_fields(form) {
            if var != ROSTER_GROUPS {
                self.set(&var, &value, cap)?;
            }
        }
        if let Some(values) = form_values(form, ROSTER_GROUPS) {
            self.roster_groups_allowed.clear();
            for v in values {
                self.set(ROSTER_GROUPS, &v, cap)?;
            }
        }
        Ok(())
    }

    /// The configuration as stored.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (var, value) in self.fields() {
            s.push_str(var);
            s.push('=');
            // One line per option: a title cannot break the format.
            s.push_str(&value.replace('\n', " "));
            s.push('\n');
        }
        for g in &self.roster_groups_allowed {
            s.push_str(ROSTER_GROUPS);
            s.push('=');
            s.push_str(g);
            s.push('\n');
        }
        s
    }

    /// Reads what [`NodeConfig::to_text`] wrote; lines it cannot read keep
    /// their default.
    pub fn from_text(text: &str) -> NodeConfig {
        let mut c = NodeConfig::default();
        for line in text.lines() {
            if let Some((var, value)) = line.split_once('=') {
                let _ = c.set(var, value, u32::MAX);
            }
        }
        c
    }

    /// The configuration form (§8.2), type `form`.
    pub fn to_form(&self) -> Element {
        let mut x = Element::new("x", NS_DATA).with_attr("type", "form");
        x.append_child(
            Element::new("field", NS_DATA)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", NS_DATA).with_text(NS_NODE_CONFIG)),
        );
        for (var, value) in self.fields() {
            let (kind, options): (&str, &[&str]) = match var {
                "pubsub#access_model" => {
                    ("list-single", &["open", "presence", "roster", "whitelist"])
                }
                "pubsub#publish_model" => ("list-single", &["publishers", "subscribers", "open"]),
                "pubsub#send_last_published_item" => {
                    ("list-single", &["never", "on_sub", "on_sub_and_presence"])
                }
                "pubsub#max_items" | "pubsub#title" => ("text-single", &[]),
                _ => ("boolean", &[]),
            };
            let mut f = Element::new("field", NS_DATA)
                .with_attr("var", var)
                .with_attr("type", kind);
            for o in options {
                f.append_child(
                    Element::new("option", NS_DATA)
                        .with_child(Element::new("value", NS_DATA).with_text(*o)),
                );
            }
            f.append_child(Element::new("value", NS_DATA).with_text(value));
            x.append_child(f);
        }
        let mut groups = Element::new("field", NS_DATA)
            .with_attr("var", ROSTER_GROUPS)
            .with_attr("type", "list-multi");
        for g in &self.roster_groups_allowed {
            groups.append_child(Element::new("value", NS_DATA).with_text(g.as_str()));
        }
        x.append_child(groups);
        x
    }
}

/// The (var, first value) of each field of a form, FORM_TYPE left out.
pub fn form_fields(form: &Element) -> Vec<(String, String)> {
    form.children()
        .filter(|c| c.is("field", NS_DATA))
        .filter_map(|f| {
            let var = f.attr("var")?;
            if var == "FORM_TYPE" {
                return None;
            }
            let value = f
                .get_child("value", NS_DATA)
                .map(Element::text)
                .unwrap_or_default();
            Some((var.to_owned(), value))
        })
        .collect()
}

/// Every value of the field `var` of a form; None without that field.
pub fn form_values(form: &Element, var: &str) -> Option<Vec<String>> {
    let field = form
        .children()
        .find(|c| c.is("field", NS_DATA) && c.attr("var") == Some(var))?;
    Some(
        field
            .children()
            .filter(|v| v.is("value", NS_DATA))
            .map(Element::text)
            .collect(),
    )
}

/// The FORM_TYPE of a form, if it has one.
pub fn form_type(form: &Element) -> Option<String> {
    form.children()
        .filter(|c| c.is("field", NS_DATA))
        .find(|f| f.attr("var") == Some("FORM_TYPE"))?
        .get_child("value", NS_DATA)
        .map(Element::text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let mut c = NodeConfig::default();
        c.set("pubsub#access_model", "open", 10).unwrap();
        c.set("pubsub#max_items", "max", 10).unwrap();
        c.set("pubsub#title", "a\nb", 10).unwrap();
        let back = NodeConfig::from_text(&c.to_text());
        assert_eq!(back.access_model, AccessModel::Open);
        assert_eq!(back.max_items, MaxItems::Max);
        assert_eq!(back.title, "a b");
    }

    #[test]
    fn matching_reads_values_alike() {
        let c = NodeConfig::default();
        assert!(c.matches("pubsub#persist_items", "1", 10));
        assert!(c.matches("pubsub#persist_items", "true", 10));
        assert!(!c.matches("pubsub#access_model", "open", 10));
        assert!(!c.matches("pubsub#unknown", "x", 10));
        let mut m = c.clone();
        m.max_items = MaxItems::Count(10);
        assert!(m.matches("pubsub#max_items", "max", 10));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = NodeConfig::default();
        assert!(c.set("pubsub#max_items", "0", 10).is_err());
        assert!(c.set("pubsub#max_items", "11", 10).is_err());
        assert!(c.set("pubsub#access_model", "authorize", 10).is_err());
        assert_eq!(c.set("x#unknown", "1", 10), Ok(false));
    }
}
