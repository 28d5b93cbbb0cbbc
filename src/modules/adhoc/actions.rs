//! What an administrator does to the server, once: the XEP-0133 commands
//! call these, and so can the admin socket (`waxwing ctl`), so a client
//! and a shell change the same things the same way.

use crate::stanza::bare::Bare;
use jid::{BareJid, Jid};

use crate::accounts;
use crate::feature::Event;
use crate::hashing::HashingError;
use crate::server::Server;
use crate::sessions::OutStanza;
use crate::stanza::{StanzaError, StanzaErrorCondition, StreamErrorCondition};
use crate::xml::Element;

/// Why an action failed, worded for the administrator.
pub type ActionResult<T> = Result<T, StanzaError>;

fn refuse(condition: StanzaErrorCondition, text: impl Into<String>) -> StanzaError {
    StanzaError::with_text(condition, text)
}

fn internal(what: &str, e: impl std::fmt::Display) -> StanzaError {
    tracing::error!(error = %e, "{what}");
    StanzaErrorCondition::InternalServerError.into()
}

/// Parses an account address of one of this server's hosts.
pub fn local_account(server: &Server, text: &str) -> ActionResult<BareJid> {
    let jid = Jid::new(text.trim()).map_err(|_| {
        refuse(
            StanzaErrorCondition::JidMalformed,
            format!("not a JID: {text}"),
        )
    })?;
    if jid.node().is_none() || !server.is_local_domain(jid.domain().as_str()) {
        return Err(refuse(
            StanzaErrorCondition::NotAcceptable,
            format!("{text} is not an account of this server"),
        ));
    }
    Ok(jid.bare())
}

fn parts(jid: &BareJid) -> (&str, &str) {
    (
        jid.domain().as_str(),
        jid.node().map(|n| n.as_str()).unwrap_or_default(),
    )
}

/// Derives stored credentials on the bounded hashing pool.
async fn derive(
    server: &Server,
    jid: &BareJid,
    password: String,
) -> ActionResult<crate::storage::AccountRecord> {
    if password.is_empty() {
        return Err(refuse(
            StanzaErrorCondition::NotAcceptable,
            "the password is empty",
        ));
    }
    let hashing = server.config().limits.password_hashing();
    let owned = jid.clone();
    match server
        .hashing
        .run(move |memory| accounts::derive_record_with(&owned, &password, &hashing, memory))
        .await
    {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(internal("deriving credentials", e)),
        Err(HashingError::Busy) => Err(refuse(
            StanzaErrorCondition::ResourceConstraint,
            "the server is busy; try again shortly",
        )),
        Err(HashingError::Failed) => Err(internal("deriving credentials", "task failed")),
    }
}

/// Creates an account; conflict when it exists.
pub async fn add_user(server: &Server, jid: &BareJid, password: String) -> ActionResult<()> {
    let (domain, user) = parts(jid);
    if server
        .store
        .account_exists(domain, user)
        .await
        .map_err(|e| internal("checking for an account", e))?
    {
        return Err(refuse(
            StanzaErrorCondition::Conflict,
            format!("{jid} exists"),
        ));
    }
    let record = derive(server, jid, password).await?;
    match server.store.create_account(&record).await {
        Ok(true) => {
            tracing::info!(%jid, "account added by an administrator");
            Ok(())
        }
        Ok(false) => Err(refuse(
            StanzaErrorCondition::Conflict,
            format!("{jid} exists"),
        )),
        Err(e) => Err(internal("creating an account", e)),
    }
}

/// Deletes an account and its data; its sessions end.
pub async fn delete_user(server: &Server, jid: &BareJid) -> ActionResult<()> {
    let (domain, user) = parts(jid);
    match server.store.delete_account(domain, user).await {
        Ok(true) => {
            tracing::info!(%jid, "account deleted by an administrator");
            server
                .features
                .fire(server, &mut Event::AccountDeleted { user: jid })
                .await;
            server
                .sessions
                .close_account(jid, None, StreamErrorCondition::NotAuthorized);
            Ok(())
        }
        Ok(false) => Err(refuse(
            StanzaErrorCondition::ItemNotFound,
            format!("no account {jid}"),
        )),
        Err(e) => Err(internal("deleting an account", e)),
    }
}

/// Sets a new password (every stored hash is replaced).
pub async fn change_password(server: &Server, jid: &BareJid, password: String) -> ActionResult<()> {
    let record = derive(server, jid, password).await?;
    match server.store.set_credentials(&record).await {
        Ok(true) => {
            tracing::info!(%jid, "password changed by an administrator");
            Ok(())
        }
        Ok(false) => Err(refuse(
            StanzaErrorCondition::ItemNotFound,
            format!("no account {jid}"),
        )),
        Err(e) => Err(internal("changing a password", e)),
    }
}

/// Ends a session (full JID) or every session of an account (bare JID)
/// with a `policy-violation` stream error; how many were ended.
pub fn end_sessions(server: &Server, jid: &Jid) -> usize {
    let bare = jid.bare();
    let ended: Vec<_> = server
        .sessions
        .list()
        .into_iter()
        .filter(|s| {
            s.jid.bare() == bare
                && jid
                    .resource()
                    .is_none_or(|r| r.as_str() == s.jid.resource().as_str())
        })
        .collect();
    for s in &ended {
        server
            .sessions
            .close(&s.jid, StreamErrorCondition::PolicyViolation);
    }
    ended.len()
}

/// The accounts with a bound session on `host`, sorted, each once.
pub fn online_users(server: &Server, host: &str) -> Vec<BareJid> {
    let mut users: Vec<BareJid> = server
        .sessions
        .list()
        .into_iter()
        .map(|s| s.jid.bare())
        .filter(|b| b.domain().as_str() == host)
        .collect();
    users.dedup();
    users
}

/// Sends `text` as a headline from `host` to every session bound there;
/// how many it reached.
pub fn announce(server: &Server, host: &str, text: &str) -> usize {
    let mut reached = 0;
    for jid in server.sessions.all() {
        if jid.domain().as_str() != host {
            continue;
        }
        let message = Element::new("message", "jabber:client")
            .with_attr("from", host)
            .with_attr("to", jid.as_str())
            .with_attr("type", "headline")
            .with_attr("id", format!("announce-{:x}", server.next_id()))
            .with_child(Element::new("body", "jabber:client").with_text(text));
        if server
            .sessions
            .send_to_full(&jid, OutStanza::new(message))
            .is_ok()
        {
            reached += 1;
        }
    }
    tracing::info!(host, reached, "announcement sent");
    reached
}

/// Whether `username@domain` is disabled; true when the store cannot
/// tell, so an outage never lets a disabled account in.
pub async fn is_disabled(server: &Server, domain: &str, username: &str) -> bool {
    server
        .store
        .account_disabled(domain, username)
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading disabled accounts");
            true
        })
}

/// Disables an account: its logins fail with `account-disabled` and its
/// live sessions end (`not-authorized`). Disabling twice is no error.
pub async fn disable_user(server: &Server, jid: &BareJid) -> ActionResult<()> {
    let (domain, user) = parts(jid);
    if !server
        .store
        .account_exists(domain, user)
        .await
        .map_err(|e| internal("checking for an account", e))?
    {
        return Err(refuse(
            StanzaErrorCondition::ItemNotFound,
            format!("no account {jid}"),
        ));
    }
    server
        .store
        .disable_account(domain, user)
        .await
        .map_err(|e| internal("disabling an account", e))?;
    tracing::info!(%jid, "account disabled by an administrator");
    server
        .sessions
        .close_account(jid, None, StreamErrorCondition::NotAuthorized);
    Ok(())
}

/// Lets a disabled account log in again; item-not-found when it was not
/// disabled.
pub async fn enable_user(server: &Server, jid: &BareJid) -> ActionResult<()> {
    let (domain, user) = parts(jid);
    match server.store.enable_account(domain, user).await {
        Ok(true) => {
            tracing::info!(%jid, "account enabled by an administrator");
            Ok(())
        }
        Ok(false) => Err(refuse(
            StanzaErrorCondition::ItemNotFound,
            format!("{jid} is not disabled"),
        )),
        Err(e) => Err(internal("enabling an account", e)),
    }
}

/// Sets `host`'s message of the day (sent to each session at login).
pub async fn set_motd(server: &Server, host: &str, text: &str) -> ActionResult<()> {
    let max = server.config().admin.max_announcement_bytes;
    if text.is_empty() || text.len() > max {
        return Err(refuse(
            StanzaErrorCondition::NotAcceptable,
            format!("a message of the day has 1 to {max} bytes"),
        ));
    }
    server
        .store
        .motd_set(host, text)
        .await
        .map_err(|e| internal("setting the message of the day", e))?;
    if let Some(adhoc) = server.features.get::<super::AdHoc>() {
        adhoc.motd.remember(host, Some(text));
    }
    tracing::info!(host, "message of the day set");
    send_motd_to_online(server, host);
    Ok(())
}

/// XEP-0133 §4.23: a new message of the day goes at once to the users
/// online on `host` (the others get it at their next login). `deliver`
/// marks each account as sent, so one with several sessions gets it once
/// and not again at its next login. In a task: one upsert per account
/// online must not hold up the admin's answer.
fn send_motd_to_online(server: &Server, host: &str) {
    let Some(server) = server.arc() else {
        return;
    };
    let online: Vec<jid::FullJid> = server
        .sessions
        .list()
        .into_iter()
        .filter(|s| s.available && s.jid.domain().as_str() == host)
        .map(|s| s.jid)
        .collect();
    if online.is_empty() {
        return;
    }
    let tasks = server.background.clone();
    tasks.spawn(async move {
        let Some(adhoc) = server.features.get::<super::AdHoc>() else {
            return;
        };
        for jid in online {
            adhoc.motd.deliver(&server, &jid).await;
        }
    });
}

/// Removes `host`'s message of the day; whether there was one.
pub async fn delete_motd(server: &Server, host: &str) -> ActionResult<bool> {
    let had = server
        .store
        .motd_delete(host)
        .await
        .map_err(|e| internal("deleting the message of the day", e))?;
    if let Some(adhoc) = server.features.get::<super::AdHoc>() {
        adhoc.motd.remember(host, None);
    }
    Ok(had)
}
