//! A room's configuration and its `muc#roomconfig` data form (XEP-0045
//! §10.2): what the owner sees, what a submitted form changes (every
//! field checked for its type and bounds before anything changes), and
//! the `var=value` text persistent rooms are stored as.

use crate::config::MucConfig;
use crate::modules::NS_DATA;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::Element;

pub const FORM_TYPE: &str = "http://jabber.org/protocol/muc#roomconfig";

/// Who may see occupants' real JIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whois {
    /// Semi-anonymous: moderators only.
    Moderators,
    /// Non-anonymous: every occupant.
    Anyone,
}

/// Who may send private messages to occupants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowPm {
    Anyone,
    Participants,
    Moderators,
    Nobody,
}

impl AllowPm {
    fn as_str(self) -> &'static str {
        match self {
            AllowPm::Anyone => "anyone",
            AllowPm::Participants => "participants",
            AllowPm::Moderators => "moderators",
            AllowPm::Nobody => "none",
        }
    }

    fn parse(s: &str) -> Option<AllowPm> {
        Some(match s {
            "anyone" => AllowPm::Anyone,
            "participants" => AllowPm::Participants,
            "moderators" => AllowPm::Moderators,
            "none" => AllowPm::Nobody,
            _ => return None,
        })
    }
}

/// What an owner configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    pub name: String,
    pub description: String,
    pub lang: String,
    pub persistent: bool,
    /// Listed in the service's disco#items (false: hidden).
    pub public: bool,
    pub members_only: bool,
    pub moderated: bool,
    /// Some: password-protected with this secret.
    pub password: Option<String>,
    pub whois: Whois,
    pub max_users: usize,
    /// Participants may change the subject (moderators always may).
    pub change_subject: bool,
    pub allow_invites: bool,
    pub allow_pm: AllowPm,
    /// Messages kept for joiners.
    pub history: usize,
}

impl RoomConfig {
    /// A new room's configuration.
    pub fn new(limits: &MucConfig) -> RoomConfig {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            lang: String::new(),
            persistent: false,
            public: true,
            members_only: false,
            moderated: false,
            password: None,
            whois: Whois::Moderators,
            max_users: limits.default_max_users.min(limits.max_occupants),
            change_subject: false,
            allow_invites: false,
            allow_pm: AllowPm::Anyone,
            history: limits.default_history.min(limits.max_history),
        }
    }

    /// The `muc#roomconfig` form with the current values.
    pub fn form(&self, limits: &MucConfig) -> Element {
        let mut x = Element::new("x", NS_DATA).with_attr("type", "form");
        x.append_child(Element::new("title", NS_DATA).with_text("Room configuration"));
        x.append_child(field("FORM_TYPE", "hidden", None, &[FORM_TYPE]));
        x.append_child(field(
            "muc#roomconfig_roomname",
            "text-single",
            Some("Name"),
            &[&self.name],
        ));
        x.append_child(field(
            "muc#roomconfig_roomdesc",
            "text-single",
            Some("Description"),
            &[&self.description],
        ));
        x.append_child(field(
            "muc#roomconfig_lang",
            "text-single",
            Some("Language"),
            &[&self.lang],
        ));
        x.append_child(boolean(
            "muc#roomconfig_persistentroom",
            "Persistent",
            self.persistent,
        ));
        x.append_child(boolean(
            "muc#roomconfig_publicroom",
            "Listed publicly",
            self.public,
        ));
        x.append_child(boolean(
            "muc#roomconfig_membersonly",
            "Members only",
            self.members_only,
        ));
        x.append_child(boolean(
            "muc#roomconfig_moderatedroom",
            "Moderated",
            self.moderated,
        ));
        x.append_child(boolean(
            "muc#roomconfig_passwordprotectedroom",
            "Password protected",
            self.password.is_some(),
        ));
        x.append_child(field(
            "muc#roomconfig_roomsecret",
            "text-private",
            Some("Password"),
            &[self.password.as_deref().unwrap_or("")],
        ));
        let mut whois = field(
            "muc#roomconfig_whois",
            "list-single",
            Some("Who may see real JIDs"),
            &[match self.whois {
                Whois::Moderators => "moderators",
                Whois::Anyone => "anyone",
            }],
        );
        whois.append_child(option("Moderators", "moderators"));
        whois.append_child(option("Anyone", "anyone"));
        x.append_child(whois);
        let max = self.max_users.to_string();
        let mut users = field(
            "muc#roomconfig_maxusers",
            "list-single",
            Some("Maximum occupants"),
            &[&max],
        );
        for n in [10, 20, 30, 50, 100, 200, 500, 1000, 5000] {
            if n <= limits.max_occupants {
                users.append_child(option(&n.to_string(), &n.to_string()));
            }
        }
        x.append_child(users);
        x.append_child(boolean(
            "muc#roomconfig_changesubject",
            "Participants may change the subject",
            self.change_subject,
        ));
        x.append_child(boolean(
            "muc#roomconfig_allowinvites",
            "Participants may invite",
            self.allow_invites,
        ));
        let mut pm = field(
            "muc#roomconfig_allowpm",
            "list-single",
            Some("Who may send private messages"),
            &[self.allow_pm.as_str()],
        );
        for v in ["anyone", "participants", "moderators", "none"] {
            pm.append_child(option(v, v));
        }
        x.append_child(pm);
        x.append_child(field(
            "muc#maxhistoryfetch",
            "text-single",
            Some("Messages of history kept"),
            &[&self.history.to_string()],
        ));
        x
    }

    /// Applies a submitted form: every field is checked first (a wrong
    /// type is `bad-request`, a value beyond a bound `not-acceptable`),
    /// then all change together. Fields not in the form keep their value.
    pub fn apply(&self, form: &Element, limits: &MucConfig) -> Result<RoomConfig, StanzaError> {
        let mut c = self.clone();
        let mut wants_password = None;
        let bad = |text: &str| StanzaError::with_text(StanzaErrorCondition::BadRequest, text);
        let too_long = |var: &str| {
            StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                format!("{var} is too long"),
            )
        };
        for f in form.children().filter(|f| f.is("field", NS_DATA)) {
            let Some(var) = f.attr("var") else { continue };
            let values: Vec<String> = f
                .children()
                .filter(|v| v.is("value", NS_DATA))
                .map(|v| v.text())
                .collect();
            let one = values.first().map(String::as_str).unwrap_or("");
            let text = |max: usize| -> Result<String, StanzaError> {
                if one.len() > max {
                    Err(too_long(var))
                } else {
                    Ok(one.to_string())
                }
            };
            match var {
                "FORM_TYPE" if one != FORM_TYPE => {
                    return Err(bad("not a muc#roomconfig form"));
                }
                "muc#roomconfig_roomname" => c.name = text(limits.max_field_bytes)?,
                "muc#roomconfig_roomdesc" => c.description = text(limits.max_field_bytes)?,
                "muc#roomconfig_lang" => c.lang = text(64)?,
                "muc#roomconfig_persistentroom" => c.persistent = parse_bool(var, one)?,
                "muc#roomconfig_publicroom" => c.public = parse_bool(var, one)?,
                "muc#roomconfig_membersonly" => c.members_only = parse_bool(var, one)?,
                "muc#roomconfig_moderatedroom" => c.moderated = parse_bool(var, one)?,
                "muc#roomconfig_passwordprotectedroom" => {
                    wants_password = Some(parse_bool(var, one)?)
                }
                "muc#roomconfig_roomsecret" => {
                    let secret = text(limits.max_field_bytes)?;
                    c.password = (!secret.is_empty()).then_some(secret);
                }
                "muc#roomconfig_whois" => {
                    c.whois = match one {
                        "moderators" => Whois::Moderators,
                        "anyone" => Whois::Anyone,
                        _ => return Err(bad("muc#roomconfig_whois: moderators or anyone")),
                    }
                }
                "muc#roomconfig_maxusers" => {
                    let n = if one.is_empty() || one == "none" {
                        limits.max_occupants
                    } else {
                        one.parse::<usize>()
                            .map_err(|_| bad("muc#roomconfig_maxusers: a number"))?
                    };
                    if n == 0 || n > limits.max_occupants {
                        return Err(StanzaError::with_text(
                            StanzaErrorCondition::NotAcceptable,
                            format!("maximum occupants: 1 to {}", limits.max_occupants),
                        ));
                    }
                    c.max_users = n;
                }
                "muc#roomconfig_changesubject" => c.change_subject = parse_bool(var, one)?,
                "muc#roomconfig_allowinvites" => c.allow_invites = parse_bool(var, one)?,
                "muc#roomconfig_allowpm" => {
                    c.allow_pm = AllowPm::parse(one).ok_or_else(|| {
                        bad("muc#roomconfig_allowpm: anyone, participants, moderators or none")
                    })?
                }
                "muc#maxhistoryfetch" | "muc#roomconfig_historylength" => {
                    let n = one
                        .parse::<usize>()
                        .map_err(|_| bad("muc#maxhistoryfetch: a number"))?;
                    if n > limits.max_history {
                        return Err(StanzaError::with_text(
                            StanzaErrorCondition::NotAcceptable,
                            format!("history: at most {}", limits.max_history),
                        ));
                    }
                    c.history = n;
                }
                // Fields of other servers' forms a client may send back.
                _ => {}
            }
        }
        match wants_password {
            Some(false) => c.password = None,
            Some(true) if c.password.is_none() => {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::NotAcceptable,
                    "a password-protected room needs a password",
                ))
            }
            _ => {}
        }
        Ok(c)
    }

    /// The stored form: one `var=value` a line (values never hold a line
    /// break: they are escaped).
    pub fn to_stored(&self) -> String {
        let mut out = String::new();
        let mut put = |k: &str, v: &str| {
            out.push_str(k);
            out.push('=');
            out.push_str(&v.replace('\\', "\\\\").replace('\n', "\\n"));
            out.push('\n');
        };
        put("name", &self.name);
        put("description", &self.description);
        put("lang", &self.lang);
        put("persistent", bool_str(self.persistent));
        put("public", bool_str(self.public));
        put("members_only", bool_str(self.members_only));
        put("moderated", bool_str(self.moderated));
        put("password", self.password.as_deref().unwrap_or(""));
        put(
            "whois",
            match self.whois {
                Whois::Moderators => "moderators",
                Whois::Anyone => "anyone",
            },
        );
        put("max_users", &self.max_users.to_string());
        put("change_subject", bool_str(self.change_subject));
        put("allow_invites", bool_str(self.allow_invites));
        put("allow_pm", self.allow_pm.as_str());
        put("history", &self.history.to_string());
        out
    }

    /// Reads what [`RoomConfig::to_stored`] wrote; unknown or broken lines
    /// keep the default (and the limits of this start apply).
    pub fn from_stored(text: &str, limits: &MucConfig) -> RoomConfig {
        let mut c = RoomConfig::new(limits);
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = unescape(v);
            let b = v == "1";
            match k {
                "name" => c.name = v,
                "description" => c.description = v,
                "lang" => c.lang = v,
                "persistent" => c.persistent = b,
                "public" => c.public = b,
                "members_only" => c.members_only = b,
                "moderated" => c.moderated = b,
                "password" => c.password = (!v.is_empty()).then_some(v),
                "whois" => {
                    c.whois = if v == "anyone" {
                        Whois::Anyone
                    } else {
                        Whois::Moderators
                    }
                }
                "max_users" => {
                    if let Ok(n) = v.parse::<usize>() {
                        c.max_users = n.clamp(1, limits.max_occupants)
                    }
                }
                "change_subject" => c.change_subject = b,
                "allow_invites" => c.allow_invites = b,
                "allow_pm" => c.allow_pm = AllowPm::parse(&v).unwrap_or(AllowPm::Anyone),
                "history" => {
                    if let Ok(n) = v.parse::<usize>() {
                        c.history = n.min(limits.max_history)
                    }
                }
                _ => {}
            }
        }
        c
    }
}

fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(ch) = chars.next() {
        if ch == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// XEP-0004 booleans: "1"/"true" and "0"/"false"; anything else is a
/// wrong type.
fn parse_bool(var: &str, v: &str) -> Result<bool, StanzaError> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            format!("{var}: a boolean"),
        )),
    }
}

fn field(var: &str, kind: &str, label: Option<&str>, values: &[&str]) -> Element {
    let mut f = Element::new("field", NS_DATA)
        .with_attr("var", var)
        .with_attr("type", kind);
    if let Some(l) = label {
        f.set_attr("label", l);
    }
    for v in values {
        f.append_child(Element::new("value", NS_DATA).with_text(*v));
    }
    f
}

fn boolean(var: &str, label: &str, v: bool) -> Element {
    field(var, "boolean", Some(label), &[bool_str(v)])
}

fn option(label: &str, value: &str) -> Element {
    Element::new("option", NS_DATA)
        .with_attr("label", label)
        .with_child(Element::new("value", NS_DATA).with_text(value))
}

/// A `muc#roominfo` form for the room's disco#info (XEP-0045 §6.4).
pub fn roominfo(config: &RoomConfig, occupants: usize, subject: &str) -> Element {
    let mut x = Element::new("x", NS_DATA).with_attr("type", "result");
    x.append_child(field(
        "FORM_TYPE",
        "hidden",
        None,
        &["http://jabber.org/protocol/muc#roominfo"],
    ));
    x.append_child(field(
        "muc#roominfo_description",
        "text-single",
        Some("Description"),
        &[&config.description],
    ));
    x.append_child(field(
        "muc#roominfo_occupants",
        "text-single",
        Some("Occupants"),
        &[&occupants.to_string()],
    ));
    x.append_child(field(
        "muc#roominfo_subject",
        "text-single",
        Some("Subject"),
        &[subject],
    ));
    x.append_child(field(
        "muc#roominfo_subjectmod",
        "boolean",
        Some("Participants may change the subject"),
        &[bool_str(config.change_subject)],
    ));
    if !config.lang.is_empty() {
        x.append_child(field(
            "muc#roominfo_lang",
            "text-single",
            Some("Language"),
            &[&config.lang],
        ));
    }
    x.append_child(field(
        "muc#roomconfig_roomname",
        "text-single",
        Some("Name"),
        &[&config.name],
    ));
    x.append_child(field(
        "muc#roomconfig_allowpm",
        "list-single",
        None,
        &[config.allow_pm.as_str()],
    ));
    x.append_child(field(
        "muc#maxhistoryfetch",
        "text-single",
        None,
        &[&config.history.to_string()],
    ));
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(fields: &[(&str, &str)]) -> Element {
        let mut x = Element::new("x", NS_DATA).with_attr("type", "submit");
        for (var, v) in fields {
            x.append_child(field(var, "text-single", None, &[v]));
        }
        x
    }

    #[test]
    fn stored_text_round_trips() {
        let l = MucConfig::default();
        let mut c = RoomConfig::new(&l);
        c.name = "a=b\nc\\d".into();
        c.persistent = true;
        c.password = Some("s".into());
        c.whois = Whois::Anyone;
        c.allow_pm = AllowPm::Moderators;
        assert_eq!(RoomConfig::from_stored(&c.to_stored(), &l), c);
    }

    #[test]
    fn wrong_types_are_bad_requests_and_nothing_changes() {
        let l = MucConfig::default();
        let c = RoomConfig::new(&l);
        let e = c
            .apply(
                &submit(&[
                    ("muc#roomconfig_roomname", "x"),
                    ("muc#roomconfig_persistentroom", "yes"),
                ]),
                &l,
            )
            .unwrap_err();
        assert_eq!(e.condition, StanzaErrorCondition::BadRequest);
        let e = c
            .apply(&submit(&[("muc#roomconfig_maxusers", "lots")]), &l)
            .unwrap_err();
        assert_eq!(e.condition, StanzaErrorCondition::BadRequest);
        let e = c
            .apply(&submit(&[("muc#roomconfig_maxusers", "9999999")]), &l)
            .unwrap_err();
        assert_eq!(e.condition, StanzaErrorCondition::NotAcceptable);
        let ok = c
            .apply(
                &submit(&[
                    ("muc#roomconfig_roomname", "x"),
                    ("muc#roomconfig_persistentroom", "true"),
                ]),
                &l,
            )
            .unwrap();
        assert!(ok.persistent);
        assert_eq!(ok.name, "x");
    }
}
