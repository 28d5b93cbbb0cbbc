//! Publishing notifications: one worker task per account with something
//! to tell, which publishes to every registration of the account, then
//! waits `[push] min_interval` before the next round; messages arriving
//! meanwhile are counted into that next notification instead of sending
//! one each. The accounts tracked are bounded (`max_pending_accounts`).
//!
//! An app server that answers with an error loses its registration
//! (XEP-0357 §7.1) after `[push] max_errors` errors in a row (default 1,
//! as the XEP says), unless the error is of type `wait` (such as
//! `resource-constraint`) or says the app server's domain cannot be
//! reached (`remote-server-not-found`, `-timeout`): those, no answer in
//! time, and a route that cannot be used right now (a component not
//! connected) keep it — registrations that vanish while the network
//! hiccups are what users of other servers complain of.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::BareJid;

use super::notification::{publish_iq, Summary, Unseen};
use crate::iq_tracker::IqFailure;
use crate::server::Server;
use crate::storage::PushRegistration;

/// What is waiting to be told to one account's app servers.
#[derive(Debug, Default)]
struct Pending {
    summary: Summary,
    /// Something arrived since the last notification.
    fresh: bool,
    /// A worker task runs for this account.
    worker: bool,
}

/// The accounts with notifications counted or under way.
#[derive(Debug, Default)]
pub struct Publisher {
    accounts: Mutex<HashMap<BareJid, Pending>>,
    /// Errors in a row per registration (account, service, node), for
    /// those whose last answer was an error; at most one entry per stored
    /// registration.
    errors: Mutex<HashMap<(BareJid, String, String), u32>>,
    /// Notifications published and answered with a result.
    published: AtomicU64,
    /// Notifications answered with an error, or with nothing in time, or
    /// not sent.
    failed: AtomicU64,
    /// Registrations removed after their app server's errors.
    removed: AtomicU64,
    /// Notifications not counted because too many accounts were pending.
    dropped: AtomicU64,
}

impl Publisher {
    /// Counts what `account` has not seen and starts its worker if none runs.
    pub fn notify(&self, server: &Server, account: &BareJid, unseen: Unseen) {
        let start = {
            let mut map = self.lock();
            if !map.contains_key(account) && map.len() >= server.config().push.max_pending_accounts
            {
                // Forget accounts with nothing under way (they only lose
                // their unread count) before refusing a new one.
                map.retain(|_, p| p.worker || p.fresh);
                if map.len() >= server.config().push.max_pending_accounts {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("push: too many accounts pending; notification dropped");
                    return;
                }
            }
            let p = map.entry(account.clone()).or_default();
            p.summary.add(unseen);
            p.fresh = true;
            !std::mem::replace(&mut p.worker, true)
        };
        if start {
            let Some(server) = server.arc() else {
                return;
            };
            let account = account.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = work(&server, &account) => {}
                    _ = server.shutdown.cancelled() => {}
                }
            });
        }
    }

    /// A client of `account` is connected again (or the account is gone):
    /// it sees what it missed, so the count starts over and nothing
    /// waiting is sent.
    pub fn seen(&self, account: &BareJid) {
        let mut map = self.lock();
        if let Some(p) = map.get_mut(account) {
            if p.worker {
                p.summary = Summary::default();
                p.fresh = false;
            } else {
                map.remove(account);
            }
        }
    }

    /// One more error in a row from `reg`'s app server; how many now.
    fn error_in_a_row(&self, account: &BareJid, reg: &PushRegistration) -> u32 {
        let mut map = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let n = map
            .entry((account.clone(), reg.service.clone(), reg.node.clone()))
            .or_default();
        *n = n.saturating_add(1);
        *n
    }

    /// `reg` answered, or is gone: its errors start over.
    fn forget_errors(&self, account: &BareJid, reg: &PushRegistration) {
        let mut map = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if !map.is_empty() {
            map.remove(&(account.clone(), reg.service.clone(), reg.node.clone()));
        }
    }

    /// The account disabled registrations or is gone: its error counts go.
    pub fn forget_account_errors(&self, account: &BareJid) {
        let mut map = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if !map.is_empty() {
            map.retain(|(a, _, _), _| a != account);
        }
    }

    /// Drops what is kept for `account` (its worker ends).
    fn forget(&self, account: &BareJid) {
        self.lock().remove(account);
    }

    /// Notifications answered with a result so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Notifications that failed (error, timeout, not sent).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Registrations removed after their app server's errors.
    pub fn removed(&self) -> u64 {
        self.removed.load(Ordering::Relaxed)
    }

    /// Notifications dropped because too many accounts were pending.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Accounts tracked now.
    pub fn pending_accounts(&self) -> usize {
        self.lock().len()
    }

    /// What is fresh for `account`, marking it sent; None (and the worker
    /// ends) when nothing new arrived.
    fn take_fresh(&self, account: &BareJid) -> Option<Summary> {
        let mut map = self.lock();
        let p = map.get_mut(account)?;
        if !p.fresh {
            p.worker = false;
            if p.summary.is_empty() {
                map.remove(account);
            }
            return None;
        }
        p.fresh = false;
        Some(p.summary.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, Pending>> {
        // Each update is a few field writes: poisoning cannot leave it half done.
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One account's worker: a round of notifications, then the interval,
/// until nothing new arrived.
async fn work(server: &Arc<Server>, account: &BareJid) {
    let Some(push) = server.features.get::<super::Push>() else {
        return;
    };
    let publisher = &push.publisher;
    let interval = Duration::from_secs(server.config().push.min_interval);
    while let Some(summary) = publisher.take_fresh(account) {
        if publish_round(server, publisher, account, &summary).await == 0 {
            // No registration (most accounts, and accounts that do not
            // exist): nothing to wait for, nothing worth remembering.
            publisher.forget(account);
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// Publishes `summary` to each of the account's registrations at once;
/// returns how many there were.
async fn publish_round(
    server: &Arc<Server>,
    publisher: &Publisher,
    account: &BareJid,
    summary: &Summary,
) -> usize {
    let (domain, user) = (
        account.domain().as_str(),
        account.node().map(|n| n.as_str()).unwrap_or_default(),
    );
    let registrations = match server.store.push_registrations(domain, user).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "push: reading registrations");
            return 0;
        }
    };
    let rounds = registrations
        .iter()
        .map(|reg| publish_one(server, publisher, account, reg, summary));
    futures_util::future::join_all(rounds).await;
    registrations.len()
}

async fn publish_one(
    server: &Server,
    publisher: &Publisher,
    account: &BareJid,
    reg: &PushRegistration,
    summary: &Summary,
) {
    let options = reg.options.as_deref().and_then(|xml| {
        crate::modules::xml_from_storage(xml, server.config().limits.max_depth)
            .and_then(|mut v| v.pop())
    });
    let iq = publish_iq(&reg.service, &reg.node, summary, options);
    let timeout = Duration::from_secs(server.config().push.timeout);
    // From the account's domain, as XEP-0357 §7 shows; the answer comes
    // back to the server, where the IQ tracker takes it.
    let from = account.domain().as_str();
    match server.iq_tracker.request(server, from, iq, timeout).await {
        Ok(_) => {
            publisher.published.fetch_add(1, Ordering::Relaxed);
            publisher.forget_errors(account, reg);
        }
        Err(IqFailure::Error(answer)) => {
            publisher.failed.fetch_add(1, Ordering::Relaxed);
            let error = answer.get_child("error", crate::xml::NS_CLIENT);
            let kind = error.and_then(|e| e.attr("type")).unwrap_or("cancel");
            let condition = error
                .and_then(|e| {
                    e.children()
                        .find(|c| c.ns() == crate::stanza::NS_STANZA_ERRORS)
                })
                .map(|c| c.name())
                .unwrap_or("undefined-condition");
            // The network between us and the app server, or an app
            // server asking to be tried later, is no refusal.
            let transient = kind == "wait"
                || matches!(
                    condition,
                    "remote-server-not-found" | "remote-server-timeout"
                );
            if transient {
                tracing::info!(account = %account, service = %reg.service, condition,
                    "push: app server unreachable or busy; registration kept");
                return;
            }
            let errors = publisher.error_in_a_row(account, reg);
            let max = server.config().push.max_errors;
            if errors < max {
                tracing::info!(account = %account, service = %reg.service, condition,
                    errors, max, "push: app server answered with an error; registration kept");
                return;
            }
            publisher.forget_errors(account, reg);
            let (domain, user) = (
                account.domain().as_str(),
                account.node().map(|n| n.as_str()).unwrap_or_default(),
            );
            match server
                .store
                .push_disable(domain, user, &reg.service, Some(&reg.node))
                .await
            {
                Ok(_) => {
                    publisher.removed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(account = %account, service = %reg.service, condition,
                        "push: app server answered with an error; registration removed")
                }
                Err(e) => tracing::error!(error = %e, "push: removing a registration"),
            }
        }
        Err(IqFailure::Timeout) => {
            publisher.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(account = %account, service = %reg.service,
                "push: no answer from the app server");
        }
        Err(IqFailure::NotSent) => {
            publisher.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(account = %account, service = %reg.service,
                "push: notification could not be sent");
        }
    }
}
