//! Persistent storage: one `Store` over SQLite (embedded default) or
//! PostgreSQL, chosen by the database URL. Backends are dispatched by enum so
//! each query is written once per SQL dialect, next to its twin.
//!
//! Migrations live in `migrations/sqlite` and `migrations/postgres`, are
//! embedded in the binary, and are applied by `Store::open`.

/// Runs the same expression on whichever pool backs the store: the SQL is
/// the same on both dialects, only the pool's type differs.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

mod accounts;
mod administration;
mod archive;
mod archive_batch;
mod archive_block;
mod archive_change;
mod archive_envelope;
mod archive_legacy;
mod archive_query;
mod archive_sqlite;
mod clients;
mod import;
mod invites;
mod muc;
mod offline;
mod pubsub;
mod push;
mod roster;
mod stats;
mod uploads;
mod user_data;

pub use accounts::{AccountRecord, ScramRecord};
pub use archive::{
    ArchiveConn, ArchiveFilter, ArchiveKind, ArchiveOwner, ArchiveRow, ArchivedItem,
};
pub use archive_batch::{ArchiveBatch, RowRef};
pub use archive_block::RowView;
pub use clients::{ClientRecord, FastToken};
pub use import::{ImportCounts, ImportUser, Tally};
pub use invites::InviteRecord;
pub use muc::{AffiliationRow, RoomDelta, StoredRoom};
pub use pubsub::StoredItem;
pub use push::PushRegistration;
pub use roster::{PendingRequest, RosterRecord, SubscriptionRequest};
pub use uploads::UploadSlot;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// A storage failure, carrying its cause for the log (never for the wire).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    /// A cluster node wrote a room it no longer owns (its fencing number
    /// is below the stored one); nothing was written.
    #[error("fenced: {0}")]
    Fenced(String),
}

/// How long a SQLite connection waits for another one's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// How SQLite connections are set up (PostgreSQL ignores it).
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteTuning {
    /// `synchronous = FULL`: every commit synced to disk. Otherwise
    /// NORMAL: in WAL mode a commit is written to the WAL file (so it
    /// survives the process being killed) and synced only at checkpoints,
    /// so power loss or an OS crash can lose the last commits.
    pub synchronous_full: bool,
}

impl Store {
    /// Connects (creating a SQLite file and its directory if missing) and
    /// applies pending migrations, with the default [`SqliteTuning`].
    pub async fn open(url: &str, max_connections: u32) -> Result<Store, StorageError> {
        Store::open_tuned(url, max_connections, SqliteTuning::default()).await
    }

    /// [`Store::open`] with SQLite connections set up as `tuning` says.
    pub async fn open_tuned(
        url: &str,
        max_connections: u32,
        tuning: SqliteTuning,
    ) -> Result<Store, StorageError> {
        let store = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(if tuning.synchronous_full {
                    SqliteSynchronous::Full
                } else {
                    SqliteSynchronous::Normal
                })
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            if let Some(dir) = opts.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StorageError::Invalid(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
            }
            let lock_path = {
                let mut p = opts.get_filename().as_os_str().to_owned();
                p.push(".migrate-lock");
                std::path::PathBuf::from(p)
            };
            // SQLite has no advisory lock for sqlx's migrator: two processes
            // opening a new database at once (`waxwing ctl` beside the server,
            // or two `ctl` runs) would both apply the first migration. An
            // exclusive file lock makes the second wait and find it applied.
            // It is taken before the first connection too: switching a new
            // file to WAL can fail with "database is locked" at once, without
            // the busy timeout, when another process does the same.
            let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)?;
                f.lock()?;
                Ok(f)
            })
            .await
            .map_err(|e| StorageError::Invalid(format!("migration lock: {e}")))?
            .map_err(|e| StorageError::Invalid(format!("migration lock: {e}")))?;
            let opened = async {
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .connect_with(opts)
                    .await?;
                SQLITE_MIGRATIONS.run(&pool).await?;
                // Under the lock too: a second process waits for it.
                Store::Sqlite(pool.clone()).convert_legacy_archive().await?;
                Ok::<_, StorageError>(pool)
            }
            .await;
            drop(lock);
            let pool = opened?;
            Store::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            let store = Store::Postgres(pool);
            store.convert_legacy_archive().await?;
            store
        } else {
            return Err(StorageError::Invalid(format!(
                "unsupported database url '{url}' (use sqlite:// or postgres://)"
            )));
        };
        Ok(store)
    }

    /// Tables holding per-account rows, each keyed by (domain, username):
    /// deleting an account empties all of them. Every new per-user table is
    /// added here.
    pub const USER_TABLES: &'static [&'static str] = &[
        "user_data",
        "scram_credentials",
        "roster_items",
        "roster_versions",
        "offline_messages",
        "push_registrations",
        "clients",
        "pubsub_nodes",
        "pubsub_items",
        "pubsub_subscriptions",
        "pubsub_affiliations",
        // The blocks of `archive_blocks` go with their owner (`delete_account`).
        "archive_owners",
        // A new account of a deleted one's name starts enabled.
        "disabled_accounts",
        // ... and gets the message of the day.
        "motd_seen",
    ];

    /// Closes every pooled connection (flushes SQLite's WAL).
    pub async fn close(&self) {
        match self {
            Store::Sqlite(p) => p.close().await,
            Store::Postgres(p) => p.close().await,
        }
    }
}
