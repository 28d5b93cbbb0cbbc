//! The periodic clean-up of archives: messages older than
//! `[mam] retention_days`, and each user's oldest beyond
//! `max_messages_per_user` (what bounds what one sender can make us keep).

use std::sync::Arc;
use std::time::Duration;

use crate::server::Server;
use crate::storage::{ArchiveKind, ArchiveOwner, Store};

/// Starts the clean-up task on the server's background tracker; it holds
/// the store and the configuration, not the server.
pub fn spawn(server: &Arc<Server>) {
    let config = server.config().mam.clone();
    if config.retention_days == 0 && config.max_messages_per_user == 0 {
        return;
    }
    let store = server.store.clone();
    let shutdown = server.shutdown.clone();
    let every = Duration::from_secs(config.cleanup_interval.max(1));
    server.background.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
            run_once(&store, config.retention_days, config.max_messages_per_user).await;
        }
    });
}

/// One clean-up pass (also what `ctl` could run).
pub async fn run_once(store: &Store, retention_days: u64, max_per_user: u64) {
    if retention_days > 0 {
        let cutoff = super::id::now_micros().saturating_sub(
            i64::try_from(retention_days)
                .unwrap_or(i64::MAX / 2)
                .saturating_mul(86_400_000_000),
        );
        match store.archive_expire(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "archive: expired messages removed"),
            Err(e) => tracing::error!(error = %e, "archive retention"),
        }
    }
    if max_per_user > 0 {
        let over = match store
            .archive_over_quota(ArchiveKind::User, max_per_user)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "archive quota");
                return;
            }
        };
        for (domain, username, count) in over {
            let owner = ArchiveOwner {
                kind: ArchiveKind::User,
                domain,
                username,
            };
            match store.archive_trim(&owner, max_per_user).await {
                Ok(n) => tracing::info!(user = %owner.username, count, removed = n,
                    "archive: oldest messages beyond the per-user cap removed"),
                Err(e) => tracing::error!(error = %e, "archive quota"),
            }
        }
    }
}
