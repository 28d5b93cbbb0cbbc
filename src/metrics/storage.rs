//! The database as the metrics see it: how long the hot queries take (a
//! histogram per operation) and how much is stored (offline messages,
//! archived messages), the latter counted at scrape time but at most once
//! per `[metrics] storage_refresh`, so scrapes cannot load the database.

use std::future::Future;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::storage::Store;

/// The timed operations: the queries on the paths that carry messages and
/// logins. (`Store` has some eighty queries behind an enum of pools and
/// no single place they all pass, so the hot ones are timed where they are
/// called.)
#[derive(Debug, Clone, Copy)]
pub enum StorageOp {
    /// Storing a message for an offline user.
    OfflinePush,
    /// Reading a batch of offline messages for delivery.
    OfflineFetch,
    /// One batch of the archive writer (one transaction).
    ArchiveInsert,
    /// Loading a roster.
    RosterLoad,
    /// Loading an account's credentials at login.
    AccountLookup,
}

impl StorageOp {
    const ALL: [StorageOp; 5] = [
        StorageOp::OfflinePush,
        StorageOp::OfflineFetch,
        StorageOp::ArchiveInsert,
        StorageOp::RosterLoad,
        StorageOp::AccountLookup,
    ];

    fn label(self) -> &'static str {
        match self {
            StorageOp::OfflinePush => "offline_push",
            StorageOp::OfflineFetch => "offline_fetch",
            StorageOp::ArchiveInsert => "archive_insert",
            StorageOp::RosterLoad => "roster_load",
            StorageOp::AccountLookup => "account_lookup",
        }
    }
}

/// `waxwing_storage_query_duration_seconds{op}`.
#[derive(Clone)]
pub struct StorageTimers {
    /// By `StorageOp as usize`, resolved once.
    histograms: [Histogram; 5],
}

fn buckets() -> Histogram {
    // 100 µs to about 3.3 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl StorageTimers {
    pub(super) fn register(registry: &mut Registry) -> StorageTimers {
        let family = Family::<[(&'static str, &'static str); 1], Histogram, fn() -> Histogram>::new_with_constructor(buckets);
        let histograms = std::array::from_fn(|i| {
            family.get_or_create_owned(&[("op", StorageOp::ALL[i].label())])
        });
        registry.register(
            "waxwing_storage_query_duration_seconds",
            "Time taken by the hot storage queries, by operation",
            family,
        );
        StorageTimers { histograms }
    }

    /// Runs `query`, recording how long it took (failures too: a slow
    /// failure is as telling as a slow success).
    pub async fn time<F: Future>(&self, op: StorageOp, query: F) -> F::Output {
        let started = Instant::now();
        let out = query.await;
        self.histograms[op as usize].observe(started.elapsed().as_secs_f64());
        out
    }

    /// Records a query timed by the caller.
    pub fn observe(&self, op: StorageOp, took: Duration) {
        self.histograms[op as usize].observe(took.as_secs_f64());
    }
}

/// The stored-message gauges and when they were last counted.
pub(super) struct StoredCounts {
    offline: Gauge,
    archive: Gauge,
    refresh: Duration,
    /// When the figures were last counted; a tokio mutex, held across the
    /// queries, so scrapes that arrive together wait for one count instead
    /// of each running their own.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl StoredCounts {
    pub(super) fn register(registry: &mut Registry, refresh: Duration) -> StoredCounts {
        let offline = Gauge::default();
        let archive = Gauge::default();
        registry.register(
            "waxwing_offline_messages",
            "Messages stored for offline users (counted at most once per storage_refresh)",
            offline.clone(),
        );
        registry.register(
            "waxwing_archive_messages",
            "Messages in all archives (counted at most once per storage_refresh)",
            archive.clone(),
        );
        StoredCounts {
            offline,
            archive,
            refresh,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Counts again if the figures are older than the refresh interval. A
    /// failed count keeps the old figures until the next interval.
    pub(super) async fn refresh(&self, store: &Store) {
        let mut last = self.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.refresh) {
            return;
        }
        *last = Some(Instant::now());
        match store.offline_total().await {
            Ok(n) => {
                self.offline.set(n);
            }
            Err(e) => tracing::warn!(error = %e, "metrics: counting offline messages"),
        }
        match store.archive_total().await {
            Ok(n) => {
                self.archive.set(n);
            }
            Err(e) => tracing::warn!(error = %e, "metrics: counting archived messages"),
        }
    }
}
