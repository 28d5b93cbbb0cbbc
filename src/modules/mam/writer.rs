//! The archive writer: one task that commits archive rows in batches, one
//! transaction per batch, so many senders share each commit instead of
//! queueing for the database one by one.
//!
//! Handing rows over does not wait for their commit: routing goes on at
//! once, and many senders share each commit. Each hand-over gets the next
//! sequence number (in queue order), and the task publishes the last one
//! it committed. What must not run ahead of the disk waits for that mark
//! ([`Writer::flushed`]): stream management before it acknowledges
//! stanzas (through `Feature::flushed`), so whatever the server
//! acknowledged is in the archive after a crash, and an archive query, so
//! a client finds what it was just sent.
//! The queue is bounded (`[mam] queue`): when full, the sender waits for a
//! place, which holds back only the streams sending archived messages.
//! After shutdown has closed the queue, rows are written directly.
//!
//! What a commit costs is mostly the index pages it writes, about one per
//! owner it touches (see `storage::archive`), so the task commits
//! everything that waits, up to `[mam] batch` rows: under load the queue
//! fills while a commit runs, and the next commit takes all of it. It
//! writes on a connection of its own (`[mam] writer_cache_kib` of page
//! cache on SQLite), opened at start and again after a failure; without
//! one it uses the pool.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::{StorageOp, StorageTimers};
use crate::server::Server;
use crate::storage::{ArchiveConn, ArchiveRow, StorageError, Store};

/// One message's rows, with their place in the queue.
struct Job {
    seq: u64,
    rows: Vec<ArchiveRow>,
}

/// The handle the feature writes through.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    store: Store,
    /// The last sequence number handed out; taken with the queue's slot
    /// under this lock, so queue order and number order agree.
    last: Mutex<u64>,
    /// The last sequence number committed (or given up on, logged).
    committed: watch::Receiver<u64>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} rows)", self.rows.len())
    }
}

impl Writer {
    /// Starts the writer task on the server's background tracker.
    pub fn spawn(server: &Arc<Server>) -> Writer {
        let config = &server.config().mam;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let (mark, committed) = watch::channel(0);
        let store = server.store.clone();
        let batch = config.batch.max(1);
        let cache_kib = config.writer_cache_kib;
        let checkpoint_pages = config.checkpoint_pages;
        let synchronous_full = server.config().database.sqlite_synchronous == "full";
        let shutdown = server.shutdown.clone();
        server.background.spawn(run(
            Db {
                store: store.clone(),
                cache_kib,
                synchronous_full,
                checkpoint_pages,
                conn: None,
                timers: server.metrics.storage.clone(),
            },
            rx,
            batch,
            shutdown,
            mark,
        ));
        Writer {
            tx,
            store,
            last: Mutex::new(0),
            committed,
        }
    }

    /// Hands `rows` to the writer task, waiting only for room in its
    /// queue (a failed commit is logged: the message still goes on).
    pub async fn write(&self, rows: Vec<ArchiveRow>) {
        let Ok(slot) = self.tx.reserve().await else {
            // The task has stopped (shutdown): write here.
            write_direct(&self.store, &rows).await;
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last += 1;
        slot.send(Job { seq: *last, rows });
    }

    /// Waits until everything handed over before the call is committed.
    pub async fn flushed(&self) {
        let target = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut committed = self.committed.clone();
        // An error means the task is gone; what it took was committed or
        // logged, and later rows are written directly.
        let _ = committed.wait_for(|&c| c >= target).await;
    }
}

/// Writes without the task (it has stopped at shutdown).
pub async fn write_direct(store: &Store, rows: &[ArchiveRow]) {
    if let Err(e) = store.archive_insert(rows).await {
        log_failure(&e, rows.len());
    }
}

fn log_failure(e: &StorageError, rows: usize) {
    tracing::error!(error = %e, rows, "archiving messages");
}

/// The database side of the task: its own connection when it has one.
struct Db {
    store: Store,
    cache_kib: u64,
    synchronous_full: bool,
    checkpoint_pages: u32,
    conn: Option<ArchiveConn>,
    /// Each batch's commit time goes to the metrics.
    timers: StorageTimers,
}

impl Db {
    async fn insert(
        &mut self,
        rows: &Arc<Vec<ArchiveRow>>,
        range: Range<usize>,
    ) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let r = self.insert_untimed(rows, range).await;
        (self.timers).observe(StorageOp::ArchiveInsert, started.elapsed());
        r
    }

    async fn insert_untimed(
        &mut self,
        rows: &Arc<Vec<ArchiveRow>>,
        range: Range<usize>,
    ) -> Result<(), StorageError> {
        if self.conn.is_none() {
            match (self.store)
                .archive_conn(self.cache_kib, self.synchronous_full, self.checkpoint_pages)
                .await
            {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "archive writer: own connection; using the pool")
                }
            }
        }
        let Some(conn) = &mut self.conn else {
            return self.store.archive_insert(&rows[range]).await;
        };
        let r = conn.insert(rows, range).await;
        if r.is_err() {
            // Whatever broke, the next batch starts on a new connection.
            if let Some(c) = self.conn.take() {
                c.close().await;
            }
        }
        r
    }
}

async fn run(
    mut db: Db,
    mut rx: mpsc::Receiver<Job>,
    batch: usize,
    shutdown: CancellationToken,
    mark: watch::Sender<u64>,
) {
    loop {
        let first = tokio::select! {
            biased;
            job = rx.recv() => job,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let jobs = gather(first, &mut rx, batch);
        let last = jobs.last().map_or(0, |j| j.seq);
        commit(&mut db, jobs).await;
        mark.send_replace(last);
    }
    // Shutdown: no new jobs (senders write directly from now on); what is
    // queued still goes in before the store closes.
    rx.close();
    while let Some(first) = rx.recv().await {
        let jobs = gather(first, &mut rx, batch);
        let last = jobs.last().map_or(0, |j| j.seq);
        commit(&mut db, jobs).await;
        mark.send_replace(last);
    }
    if let Some(conn) = db.conn.take() {
        conn.close().await;
    }
}

/// `first` and whatever else waits, up to `batch` rows.
fn gather(first: Job, rx: &mut mpsc::Receiver<Job>, batch: usize) -> Vec<Job> {
    let mut n = first.rows.len();
    let mut jobs = vec![first];
    while n < batch {
        match rx.try_recv() {
            Ok(job) => {
                n += job.rows.len();
                jobs.push(job);
            }
            Err(_) => break,
        }
    }
    jobs
}

async fn commit(db: &mut Db, jobs: Vec<Job>) {
    let mut sizes = Vec::with_capacity(jobs.len());
    let mut rows = Vec::with_capacity(jobs.iter().map(|j| j.rows.len()).sum());
    for j in jobs {
        sizes.push(j.rows.len());
        rows.extend(j.rows);
    }
    let rows = Arc::new(rows);
    match db.insert(&rows, 0..rows.len()).await {
        Ok(()) => {}
        Err(e) if sizes.len() > 1 => {
            // One bad row must not cost the others: each message on its own.
            tracing::warn!(error = %e, "archive batch failed; writing its messages one by one");
            let mut at = 0;
            for n in sizes {
                if let Err(e) = db.insert(&rows, at..at + n).await {
                    log_failure(&e, n);
                }
                at += n;
            }
        }
        Err(e) => log_failure(&e, rows.len()),
    }
}
