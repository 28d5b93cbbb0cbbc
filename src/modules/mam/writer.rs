//! The archive writer: one task that commits archive rows in batches, one
//! transaction per batch, so many senders share each commit instead of
//! queueing for the database one by one.
//!
//! A message's rows are handed over with a oneshot that fires once they are
//! committed; the router waits for it before the message is delivered or
//! stored offline, and before the sender's stream reads its next stanza (so
//! before stream management can acknowledge it). Whatever a client saw, or
//! the server acknowledged, is therefore in the archive after a crash.
//! The queue is bounded (`[mam] queue`): when full, the sender waits for a
//! place, which holds back only the streams sending archived messages.
//! After shutdown has closed the queue, rows are written directly.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::server::Server;
use crate::storage::{ArchiveRow, StorageError, Store};

/// One message's rows, and who waits for their commit.
struct Job {
    rows: Vec<ArchiveRow>,
    done: oneshot::Sender<bool>,
}

/// The handle the feature writes through.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    store: Store,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} rows)", self.rows.len())
    }
}

impl Writer {
    /// Starts the writer task on the server's background tracker.
    pub fn spawn(server: &Arc<Server>) -> Writer {
        let config = &server.config.mam;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let store = server.store.clone();
        let batch = config.batch.max(1);
        let shutdown = server.shutdown.clone();
        server
            .background
            .spawn(run(store.clone(), rx, batch, shutdown));
        Writer { tx, store }
    }

    /// Archives `rows` and returns once they are committed (or failed,
    /// which is logged: the message still goes on).
    pub async fn write(&self, rows: Vec<ArchiveRow>) {
        let (done, committed) = oneshot::channel();
        match self.tx.send(Job { rows, done }).await {
            Ok(()) => {
                // A dropped sender means the task ended mid-batch; nothing
                // more can be done for these rows than what it logged.
                let _ = committed.await;
            }
            Err(mpsc::error::SendError(job)) => write_direct(&self.store, &job.rows).await,
        }
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

async fn run(store: Store, mut rx: mpsc::Receiver<Job>, batch: usize, shutdown: CancellationToken) {
    loop {
        let first = tokio::select! {
            biased;
            job = rx.recv() => job,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let jobs = gather(first, &mut rx, batch);
        commit(&store, jobs).await;
    }
    // Shutdown: no new jobs (senders write directly from now on); what is
    // queued still goes in before the store closes.
    rx.close();
    while let Some(first) = rx.recv().await {
        let jobs = gather(first, &mut rx, batch);
        commit(&store, jobs).await;
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

async fn commit(store: &Store, jobs: Vec<Job>) {
    let rows: Vec<ArchiveRow> = jobs.iter().flat_map(|j| j.rows.iter().cloned()).collect();
    match store.archive_insert(&rows).await {
        Ok(()) => {
            for j in jobs {
                let _ = j.done.send(true);
            }
        }
        Err(e) if jobs.len() > 1 => {
            // One bad row must not cost the others: each on its own.
            tracing::warn!(error = %e, "archive batch failed; writing its messages one by one");
            for j in jobs {
                let ok = match store.archive_insert(&j.rows).await {
                    Ok(()) => true,
                    Err(e) => {
                        log_failure(&e, j.rows.len());
                        false
                    }
                };
                let _ = j.done.send(ok);
            }
        }
        Err(e) => {
            log_failure(&e, rows.len());
            for j in jobs {
                let _ = j.done.send(false);
            }
        }
    }
}
