//! XEP-0401's ad-hoc commands, so users create invitations from their
//! client (Conversations, Gajim) rather than asking the operator for a
//! `waxwing ctl invite create`:
//! - `urn:xmpp:invite#invite` (every local user): a contact invitation,
//!   completed at once with its URI, landing page and expiry; it lets the
//!   invitee create an account here only when `[invite]
//!   user_invites_create_accounts` says so (or an administrator asked);
//! - `urn:xmpp:invite#create-account` (`[invite] account_invites`:
//!   administrators by default): an account invitation, which admits
//!   registration even where open registration is off; its form asks
//!   whether the new account and the inviter become contacts.
//!
//! Each user has at most `[invite] max_live_per_user` live invitations
//! (administrators are not counted); spent and expired invitations are
//! purged a bounded batch at a time as new ones are made.

use crate::stanza::bare::Bare;
use jid::{BareJid, Jid};

use super::admin::is_admin;
use super::{Command, Stage};
use crate::modules::invite::{self, token, Invitations};
use crate::modules::time::unix_now;
use crate::modules::NS_DATA;
use crate::server::Server;
use crate::stanza::{StanzaError, StanzaErrorCondition};
use crate::xml::Element;

pub const INVITE: &str = "urn:xmpp:invite#invite";
pub const CREATE_ACCOUNT: &str = "urn:xmpp:invite#create-account";
/// The FORM_TYPE of the result (XEP-0401 §5).
const FORM_TYPE: &str = "urn:xmpp:invite#invitation";
/// Most spent or expired invitations one creation deletes.
const PURGE_BATCH: i64 = 100;

pub const COMMANDS: &[Command] = &[
    Command {
        node: INVITE,
        name: "Invite someone",
        allowed: may_invite,
    },
    Command {
        node: CREATE_ACCOUNT,
        name: "Create an account invitation",
        allowed: may_invite_accounts,
    },
];

/// A user of one of our hosts, with the invitations feature running.
fn may_invite(server: &Server, requester: &Jid) -> bool {
    requester.node().is_some()
        && server.is_local_domain(requester.domain().as_str())
        && server.features.get::<Invitations>().is_some()
}

fn may_invite_accounts(server: &Server, requester: &Jid) -> bool {
    may_invite(server, requester)
        && (server.config().invite.account_invites == "users" || is_admin(server, requester))
}

/// Runs one stage of `node` for `requester`.
pub async fn run(
    server: &Server,
    node: &str,
    requester: &Jid,
    submitted: Option<&Element>,
) -> Result<Stage, StanzaError> {
    let bare = requester.bare();
    match (node, submitted) {
        (INVITE, _) => {
            let accounts =
                server.config().invite.user_invites_create_accounts || is_admin(server, requester);
            let result = create(server, &bare, Some(&bare), false, accounts, None).await?;
            Ok(Stage::Completed(Some(result)))
        }
        (CREATE_ACCOUNT, None) => Ok(Stage::Form(account_form())),
        (CREATE_ACCOUNT, Some(x)) => {
            let username = match value(x, "username").as_str() {
                "" => None,
                name => Some(reservable(server, bare.domain().as_str(), name).await?),
            };
            let subscribe = matches!(value(x, "roster-subscription").as_str(), "1" | "true");
            let inviter = subscribe.then_some(&bare);
            let result = create(server, &bare, inviter, true, true, username.as_deref()).await?;
            Ok(Stage::Completed(Some(result)))
        }
        _ => Err(StanzaErrorCondition::ItemNotFound.into()),
    }
}

/// `name` as the account name an invitation reserves on `domain`
/// (normalised): a valid localpart, no account of that name, and no live
/// invitation holding it already (XEP-0401: reserved until the token is
/// used or expires).
async fn reservable(server: &Server, domain: &str, name: &str) -> Result<String, StanzaError> {
    let node = jid::NodePart::new(name)
        .map(|n| n.to_string())
        .map_err(|_| {
            StanzaError::with_text(
                StanzaErrorCondition::NotAcceptable,
                "the account name is not valid in an XMPP address",
            )
        })?;
    let internal = |e: crate::storage::StorageError| {
        tracing::error!(error = %e, "checking an account name for an invitation");
        StanzaError::from(StanzaErrorCondition::InternalServerError)
    };
    let taken = server
        .store
        .account_exists(domain, &node)
        .await
        .map_err(internal)?
        || server
            .store
            .invite_reserves(domain, &node, unix_now())
            .await
            .map_err(internal)?;
    if taken {
        return Err(StanzaError::with_text(
            StanzaErrorCondition::Conflict,
            "that account name is taken or reserved by another invitation",
        ));
    }
    Ok(node)
}

/// Makes the invitation and its result form.
async fn create(
    server: &Server,
    requester: &BareJid,
    inviter: Option<&BareJid>,
    account: bool,
    may_create_account: bool,
    username: Option<&str>,
) -> Result<Element, StanzaError> {
    let store = &server.store;
    let now = unix_now();
    let internal = |e: crate::storage::StorageError| {
        tracing::error!(error = %e, "creating an invitation");
        StanzaError::from(StanzaErrorCondition::InternalServerError)
    };
    // Lazily, a bounded batch: the table never fills with dead rows
    // however many invitations are made and never used.
    if let Err(e) = store.invite_purge(now, PURGE_BATCH).await {
        tracing::warn!(error = %e, "purging spent invitations");
    }
    let snapshot = server.config();
    let config = &snapshot.invite;
    if !is_admin(server, &Jid::from(requester.clone())) {
        let live = store
            .invites_live_by(requester.as_str(), now)
            .await
            .map_err(internal)?;
        if live >= i64::from(config.max_live_per_user) {
            return Err(StanzaError::with_text(
                StanzaErrorCondition::ResourceConstraint,
                format!(
                    "at most {} unused invitations at once; wait until one is used or expires",
                    config.max_live_per_user
                ),
            ));
        }
    }
    let domain = requester.domain().as_str();
    let (tok, record) = invite::create(
        store,
        invite::Spec {
            domain,
            inviter,
            admin: account,
            may_create_account,
            expires_in: Some(config.expiry),
            max_uses: 1,
            username,
        },
    )
    .await
    .map_err(internal)?;
    tracing::info!(by = %requester, account, "invitation created (ad-hoc)");
    let mut fields = vec![
        hidden("FORM_TYPE", FORM_TYPE),
        text("uri", "Invitation URI", &token::uri(&record, &tok)),
    ];
    if let Some(base) = crate::modules::upload::base_url(&snapshot) {
        fields.push(text(
            "landing-url",
            "Invitation web page",
            &token::landing_url(&base, &tok),
        ));
    }
    if let Some(at) = record.expires.and_then(crate::modules::time::xep0082) {
        fields.push(text("expire", "Valid until", &at));
    }
    let mut x = Element::new("x", NS_DATA).with_attr("type", "result");
    for f in fields {
        x.append_child(f);
    }
    Ok(x)
}

fn account_form() -> Element {
    Element::new("x", NS_DATA)
        .with_attr("type", "form")
        .with_child(Element::new("title", NS_DATA).with_text("Account invitation"))
        .with_child(
            Element::new("field", NS_DATA)
                .with_attr("var", "username")
                .with_attr("type", "text-single")
                .with_attr(
                    "label",
                    "Account name, reserved for the invitee (leave empty: the invitee chooses)",
                ),
        )
        .with_child(
            Element::new("field", NS_DATA)
                .with_attr("var", "roster-subscription")
                .with_attr("type", "boolean")
                .with_attr("label", "Become contacts with the new account")
                .with_child(Element::new("value", NS_DATA).with_text("1")),
        )
}

fn hidden(var: &str, value: &str) -> Element {
    Element::new("field", NS_DATA)
        .with_attr("var", var)
        .with_attr("type", "hidden")
        .with_child(Element::new("value", NS_DATA).with_text(value))
}

fn text(var: &str, label: &str, value: &str) -> Element {
    Element::new("field", NS_DATA)
        .with_attr("var", var)
        .with_attr("type", "text-single")
        .with_attr("label", label)
        .with_child(Element::new("value", NS_DATA).with_text(value))
}

/// A submitted field's first value, trimmed ("" when absent).
fn value(form: &Element, var: &str) -> String {
    form.children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .and_then(|f| f.get_child("value", NS_DATA))
        .map(|v| v.text().trim().to_string())
        .unwrap_or_default()
}
