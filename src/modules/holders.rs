//! Which accounts have a document under one user-data key, learnt with one
//! scan, so that a feature whose documents most accounts never have can
//! answer "none" without a database read.
//!
//! Why (issue #11): blocklists and archiving preferences are consulted for
//! both sides of every message. Read per account on first need, the first
//! messages after a start each waited for the database pool; at
//! saturation, a thousand such reads queued for seconds. The scan runs
//! once, when first needed (callers meanwhile wait for it); a failed scan
//! is tried again by the next caller, each account read as before until one
//! succeeds.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::server::Server;

#[derive(Debug)]
pub struct Holders {
    key: &'static str,
    /// Set once `State::known` has been read.
    read: tokio::sync::OnceCell<()>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Bare JIDs of the accounts with a document; None until read.
    known: Option<HashSet<String, foldhash::fast::RandomState>>,
    /// Accounts that got a document before the scan finished: it may
    /// have missed them.
    early: Vec<String>,
}

impl Holders {
    pub fn new(key: &'static str) -> Holders {
        Holders {
            key,
            read: tokio::sync::OnceCell::new(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Each change is one set operation: poisoning leaves nothing half done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May account `bare` have a document? False only when it is known not
    /// to (the scan has run and nothing was stored for it since).
    pub async fn may_have(&self, server: &Server, bare: &str) -> bool {
        let read = self.read.get_or_try_init(|| self.scan(server)).await;
        if let Err(e) = read {
            tracing::warn!(key = self.key, error = %e, "reading which accounts have documents");
        }
        self.lock().known.as_ref().is_none_or(|k| k.contains(bare))
    }

    async fn scan(&self, server: &Server) -> Result<(), crate::storage::StorageError> {
        let rows = server.store.user_data_holders(self.key).await?;
        let mut known: HashSet<String, _> =
            rows.into_iter().map(|(d, u)| format!("{u}@{d}")).collect();
        let mut state = self.lock();
        known.extend(std::mem::take(&mut state.early));
        tracing::debug!(
            key = self.key,
            accounts = known.len(),
            "accounts with documents"
        );
        state.known = Some(known);
        Ok(())
    }

    /// Account `bare` now has a document (call once it is stored).
    pub fn added(&self, bare: &str) {
        let mut state = self.lock();
        match &mut state.known {
            Some(k) => {
                k.insert(bare.to_string());
            }
            None => state.early.push(bare.to_string()),
        }
    }

    /// Account `bare` has no document any more (deleted, or the account
    /// is).
    pub fn removed(&self, bare: &str) {
        let mut state = self.lock();
        if let Some(k) = &mut state.known {
            k.remove(bare);
        }
        state.early.retain(|b| b != bare);
    }
}
