//! Service administration (XEP-0133) as ad-hoc commands on the server's
//! domain, for the accounts named in `[admin] admins`. The node names are
//! the XEP's, so clients' admin menus (Gajim, Psi) find them. Each command
//! shows one form and acts on its submission through [`super::actions`].

use crate::stanza::bare::Bare;
use jid::Jid;

use super::actions;
use super::{Command, Stage};
use crate::modules::NS_DATA;
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::Element;

/// The FORM_TYPE of every XEP-0133 form.
const FORM_TYPE: &str = "http://jabber.org/protocol/admin";

pub const ADD_USER: &str = "http://jabber.org/protocol/admin#add-user";
pub const DELETE_USER: &str = "http://jabber.org/protocol/admin#delete-user";
pub const DISABLE_USER: &str = "http://jabber.org/protocol/admin#disable-user";
pub const REENABLE_USER: &str = "http://jabber.org/protocol/admin#reenable-user";
pub const CHANGE_PASSWORD: &str = "http://jabber.org/protocol/admin#change-user-password";
pub const END_SESSION: &str = "http://jabber.org/protocol/admin#end-user-session";
pub const ONLINE_NUM: &str = "http://jabber.org/protocol/admin#get-online-users-num";
pub const ONLINE_LIST: &str = "http://jabber.org/protocol/admin#get-online-users-list";
pub const ONLINE: &str = "http://jabber.org/protocol/admin#get-online-users";
pub const ANNOUNCE: &str = "http://jabber.org/protocol/admin#announce";
pub const SET_MOTD: &str = "http://jabber.org/protocol/admin#set-motd";
pub const EDIT_MOTD: &str = "http://jabber.org/protocol/admin#edit-motd";
pub const DELETE_MOTD: &str = "http://jabber.org/protocol/admin#delete-motd";

/// Most accounts one delete or end-session form names.
const MAX_JIDS: usize = 100;

/// Is `requester` named in `[admin] admins`?
pub fn is_admin(server: &Server, requester: &Jid) -> bool {
    let bare = requester.bare();
    server
        .config()
        .admin
        .admins
        .iter()
        .any(|a| jid::BareJid::new(a).is_ok_and(|a| a == bare))
}

pub const COMMANDS: &[Command] = &[
    Command {
        node: ADD_USER,
        name: "Add a User",
        allowed: is_admin,
    },
    Command {
        node: DELETE_USER,
        name: "Delete a User",
        allowed: is_admin,
    },
    Command {
        node: DISABLE_USER,
        name: "Disable a User",
        allowed: is_admin,
    },
    Command {
        node: REENABLE_USER,
        name: "Re-Enable a User",
        allowed: is_admin,
    },
    Command {
        node: CHANGE_PASSWORD,
        name: "Change User Password",
        allowed: is_admin,
    },
    Command {
        node: END_SESSION,
        name: "End User Session",
        allowed: is_admin,
    },
    Command {
        node: ONLINE_NUM,
        name: "Get Number of Online Users",
        allowed: is_admin,
    },
    Command {
        node: ONLINE_LIST,
        name: "Get List of Online Users",
        allowed: is_admin,
    },
    Command {
        node: ONLINE,
        name: "Get List of Online Users",
        allowed: is_admin,
    },
    Command {
        node: ANNOUNCE,
        name: "Send Announcement to Online Users",
        allowed: is_admin,
    },
    Command {
        node: SET_MOTD,
        name: "Set Message of the Day",
        allowed: is_admin,
    },
    Command {
        node: EDIT_MOTD,
        name: "Edit Message of the Day",
        allowed: is_admin,
    },
    Command {
        node: DELETE_MOTD,
        name: "Delete Message of the Day",
        allowed: is_admin,
    },
];

fn field(var: &str, kind: &str, label: &str, required: bool) -> Element {
    let mut f = Element::new("field", NS_DATA)
        .with_attr("var", var)
        .with_attr("type", kind)
        .with_attr("label", label);
    if required {
        f.append_child(Element::new("required", NS_DATA));
    }
    f
}

fn form(kind: &str, title: &str, fields: Vec<Element>) -> Element {
    let mut x = Element::new("x", NS_DATA)
        .with_attr("type", kind)
        .with_child(Element::new("title", NS_DATA).with_text(title))
        .with_child(
            Element::new("field", NS_DATA)
                .with_attr("var", "FORM_TYPE")
                .with_attr("type", "hidden")
                .with_child(Element::new("value", NS_DATA).with_text(FORM_TYPE)),
        );
    for f in fields {
        x.append_child(f);
    }
    x
}

/// The values of a submitted field, trimmed, empty ones left out.
fn values(form: &Element, var: &str) -> Vec<String> {
    form.children()
        .filter(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .flat_map(|f| f.children().filter(|v| v.is("value", NS_DATA)))
        .map(|v| v.text().trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// A text-multi field's lines as one text (each `<value/>` a line, kept
/// as typed, trailing empty lines dropped).
fn lines(form: &Element, var: &str) -> String {
    let all: Vec<String> = form
        .children()
        .filter(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .flat_map(|f| f.children().filter(|v| v.is("value", NS_DATA)))
        .map(|v| v.text())
        .collect();
    all.join("\n").trim().to_string()
}

fn one(form: &Element, var: &str) -> Result<String, StanzaError> {
    values(form, var).into_iter().next().ok_or_else(|| {
        StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            format!("{var} is required"),
        )
    })
}

/// A password field keeps its spaces: only the first value, as given.
fn password(form: &Element, var: &str) -> Result<String, StanzaError> {
    form.children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            StanzaError::with_text(
                StanzaErrorCondition::BadRequest,
                format!("{var} is required"),
            )
        })
}

fn jids(form: &Element, var: &str) -> Result<Vec<String>, StanzaError> {
    let list = values(form, var);
    if list.is_empty() {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::BadRequest,
            format!("{var} is required"),
        ));
    }
    if list.len() > MAX_JIDS {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::NotAcceptable,
            format!("at most {MAX_JIDS} accounts at once"),
        ));
    }
    Ok(list)
}

/// A completed command's note (§4.4 `<note/>`).
fn note(text: &str) -> Option<Element> {
    Some(
        Element::new("note", super::NS_COMMANDS)
            .with_attr("type", "info")
            .with_text(text),
    )
}

/// The online users result form (§4.16): up to `max` bare JIDs.
fn online_list(server: &Server, host: &str, max: usize) -> Element {
    let mut f = field(
        "onlineuserjids",
        "jid-multi",
        "The list of all online users",
        false,
    );
    for u in actions::online_users(server, host).into_iter().take(max) {
        f.append_child(Element::new("value", NS_DATA).with_text(u.as_str()));
    }
    form("result", "Online users", vec![f])
}

/// Runs one stage of `node` for `requester` on `host`: with no
/// submitted form, the form to fill in (or the answer of a command that
/// asks nothing); with one, the action.
pub async fn run(
    server: &Server,
    host: &str,
    node: &str,
    requester: &Jid,
    submitted: Option<&Element>,
) -> Result<Stage, StanzaError> {
    let Some(x) = submitted else {
        return Ok(match node {
            ADD_USER => Stage::Form(form(
                "form",
                "Adding a user",
                vec![
                    field(
                        "accountjid",
                        "jid-single",
                        "The Jabber ID for the account to be added",
                        true,
                    ),
                    field(
                        "password",
                        "text-private",
                        "The password for this account",
                        true,
                    ),
                    field("password-verify", "text-private", "Retype password", true),
                ],
            )),
            DELETE_USER => Stage::Form(form(
                "form",
                "Deleting a user",
                vec![field(
                    "accountjids",
                    "jid-multi",
                    "The Jabber ID(s) to delete",
                    true,
                )],
            )),
            DISABLE_USER => Stage::Form(form(
                "form",
                "Disabling a user",
                vec![field(
                    "accountjids",
                    "jid-multi",
                    "The Jabber ID(s) to disable",
                    true,
                )],
            )),
            REENABLE_USER => Stage::Form(form(
                "form",
                "Re-enabling a user",
                vec![field(
                    "accountjids",
                    "jid-multi",
                    "The Jabber ID(s) to re-enable",
                    true,
                )],
            )),
            CHANGE_PASSWORD => Stage::Form(form(
                "form",
                "Changing a user's password",
                vec![
                    field(
                        "accountjid",
                        "jid-single",
                        "The Jabber ID for this account",
                        true,
                    ),
                    field(
                        "password",
                        "text-private",
                        "The password for this account",
                        true,
                    ),
                ],
            )),
            END_SESSION => Stage::Form(form(
                "form",
                "Ending a user's sessions",
                vec![field(
                    "accountjids",
                    "jid-multi",
                    "The Jabber ID(s) whose sessions end (a full JID ends one)",
                    true,
                )],
            )),
            ONLINE_NUM => Stage::Completed(Some(online_num(server, host))),
            ONLINE_LIST | ONLINE => Stage::Form(form(
                "form",
                "Requesting the list of online users",
                vec![field(
                    "max_items",
                    "list-single",
                    "Maximum number of items to show",
                    false,
                )
                .with_child(option("25"))
                .with_child(option("50"))
                .with_child(option("75"))
                .with_child(option("100"))
                .with_child(option("none"))],
            )),
            ANNOUNCE => Stage::Form(form(
                "form",
                "Making an announcement",
                vec![field("announcement", "text-multi", "Announcement", true)],
            )),
            SET_MOTD | EDIT_MOTD => {
                let mut f = field("motd", "text-multi", "Message of the day", true);
                // edit-motd shows the current text to change.
                if node == EDIT_MOTD {
                    if let Some(adhoc) = server.features.get::<super::AdHoc>() {
                        if let Some(text) = adhoc.motd.get(server, host).await {
                            for line in text.split('\n') {
                                f.append_child(Element::new("value", NS_DATA).with_text(line));
                            }
                        }
                    }
                }
                Stage::Form(form("form", "Setting the message of the day", vec![f]))
            }
            DELETE_MOTD => {
                let had = actions::delete_motd(server, host).await?;
                Stage::Completed(note(if had {
                    "message of the day deleted"
                } else {
                    "there was no message of the day"
                }))
            }
            _ => return Err(StanzaErrorCondition::ItemNotFound.into()),
        });
    };
    let done = match node {
        ADD_USER => {
            let jid = actions::local_account(server, &one(x, "accountjid")?)?;
            let pass = password(x, "password")?;
            if !values(x, "password-verify").is_empty() && password(x, "password-verify")? != pass {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::NotAcceptable,
                    "the passwords differ",
                ));
            }
            actions::add_user(server, &jid, pass).await?;
            note(&format!("{jid} added"))
        }
        DELETE_USER => {
            let list = jids(x, "accountjids")?
                .iter()
                .map(|j| actions::local_account(server, j))
                .collect::<Result<Vec<_>, _>>()?;
            for jid in &list {
                actions::delete_user(server, jid).await?;
            }
            note(&format!("{} deleted", list.len()))
        }
        DISABLE_USER | REENABLE_USER => {
            let list = jids(x, "accountjids")?
                .iter()
                .map(|j| actions::local_account(server, j))
                .collect::<Result<Vec<_>, _>>()?;
            for jid in &list {
                if node == DISABLE_USER {
                    actions::disable_user(server, jid).await?;
                } else {
                    actions::enable_user(server, jid).await?;
                }
            }
            note(&format!("{} accounts changed", list.len()))
        }
        CHANGE_PASSWORD => {
            let jid = actions::local_account(server, &one(x, "accountjid")?)?;
            actions::change_password(server, &jid, password(x, "password")?).await?;
            note(&format!("password of {jid} changed"))
        }
        END_SESSION => {
            let mut targets = Vec::new();
            for j in jids(x, "accountjids")? {
                let bare = actions::local_account(server, &j)?;
                // Keeps the resource of a full JID: it ends that one session.
                let jid = Jid::new(j.trim()).map_err(|_| StanzaErrorCondition::JidMalformed)?;
                debug_assert_eq!(jid.bare(), bare);
                targets.push(jid);
            }
            let ended: usize = targets
                .iter()
                .map(|j| actions::end_sessions(server, j))
                .sum();
            note(&format!("{ended} sessions ended"))
        }
        ONLINE_NUM => Some(online_num(server, host)),
        ONLINE_LIST | ONLINE => {
            let max = match values(x, "max_items").first().map(String::as_str) {
                None | Some("none") => usize::MAX,
                Some(n) => n.parse().map_err(|_| {
                    StanzaError::with_text(
                        StanzaErrorCondition::BadRequest,
                        "max_items is a number",
                    )
                })?,
            };
            Some(online_list(server, host, max))
        }
        SET_MOTD | EDIT_MOTD => {
            actions::set_motd(server, host, &lines(x, "motd")).await?;
            note("message of the day set")
        }
        DELETE_MOTD => {
            actions::delete_motd(server, host).await?;
            note("message of the day deleted")
        }
        ANNOUNCE => {
            let text = lines(x, "announcement");
            let max = server.config().admin.max_announcement_bytes;
            if text.is_empty() || text.len() > max {
                return Err(StanzaError::with_text(
                    StanzaErrorCondition::NotAcceptable,
                    format!("an announcement has 1 to {max} bytes"),
                ));
            }
            let reached = actions::announce(server, host, &text);
            note(&format!("sent to {reached} sessions"))
        }
        _ => return Err(StanzaErrorCondition::ItemNotFound.into()),
    };
    tracing::info!(admin = %requester, node, "administration command run");
    Ok(Stage::Completed(done))
}

fn option(v: &str) -> Element {
    Element::new("option", NS_DATA)
        .with_attr("label", v)
        .with_child(Element::new("value", NS_DATA).with_text(v))
}

fn online_num(server: &Server, host: &str) -> Element {
    form(
        "result",
        "Number of online users",
        vec![field(
            "onlineusersnum",
            "text-single",
            "The number of online users",
            false,
        )
        .with_child(
            Element::new("value", NS_DATA)
                .with_text(actions::online_users(server, host).len().to_string()),
        )],
    )
}
