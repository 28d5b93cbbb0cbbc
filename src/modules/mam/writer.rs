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

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::metrics::{StorageOp, StorageTimers};
use crate::server::Server;
use crate::storage::{ArchiveBatch, ArchiveConn, RowRef, StorageError, Store};

/// What waits for the writer task: the rows handed over since it last
/// took them, and the sequence number of the last message among them.
#[derive(Debug, Default)]
struct Pending {
    batch: ArchiveBatch,
    last: u64,
    /// Set at shutdown, once the task has taken what waited: senders write
    /// directly from then on.
    closed: bool,
}

/// The queue between senders and the task.
#[derive(Debug)]
struct Queue {
    pending: Mutex<Pending>,
    /// Wakes the task: something waits.
    work: Notify,
    /// Wakes senders waiting for room: the task took what waited.
    room: Notify,
    /// Messages that may wait (`[mam] queue`).
    max_messages: usize,
    /// Bytes that may wait (`[mam] queue_bytes`); a message larger than
    /// this still goes in alone.
    max_bytes: usize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle the feature writes through.
#[derive(Debug)]
pub struct Writer {
    queue: Arc<Queue>,
    store: Store,
    /// The last sequence number committed (or given up on, logged).
    committed: watch::Receiver<u64>,
}

impl Writer {
    /// Starts the writer task on the server's background tracker.
    pub fn spawn(server: &Arc<Server>) -> Writer {
        let config = &server.config().mam;
        let queue = Arc::new(Queue {
            pending: Mutex::new(Pending::default()),
            work: Notify::new(),
            room: Notify::new(),
            max_messages: config.queue.max(1),
            max_bytes: config.queue_bytes.max(1),
        });
        let (mark, committed) = watch::channel(0);
        let store = server.store.clone();
        server.background.spawn(run(
            Db {
                store: store.clone(),
                cache_kib: config.writer_cache_kib,
                synchronous_full: server.config().database.sqlite_synchronous == "full",
                checkpoint_pages: config.checkpoint_pages,
                conn: None,
                timers: server.metrics.storage.clone(),
            },
            Arc::clone(&queue),
            config.batch.max(1),
            server.shutdown.clone(),
            mark,
        ));
        Writer {
            queue,
            store,
            committed,
        }
    }

    /// Hands one message's rows to the writer task, waiting only for room
    /// in its queue (a failed commit is logged: the message still goes on).
    pub async fn write(&self, rows: &[RowRef<'_>]) {
        let q = &self.queue;
        // Most hand-overs find room: no waiter is registered for those.
        let mut outcome = self.try_hand_over(rows);
        while outcome.is_none() {
            // Registered before the check, so the task's wake-up between
            // the check and the wait is not missed.
            let room = q.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            outcome = self.try_hand_over(rows);
            if outcome.is_none() {
                room.await;
                outcome = self.try_hand_over(rows);
            }
        }
        match outcome {
            Some(true) => q.work.notify_one(),
            _ => write_direct(&self.store, rows).await,
        }
    }

    /// Queues `rows` as one message if there is room: Some(true) if it
    /// did, None if the queue is full, Some(false) if the task is gone.
    fn try_hand_over(&self, rows: &[RowRef<'_>]) -> Option<bool> {
        let q = &self.queue;
        let mut p = q.lock();
        let full = !p.batch.is_empty()
            && (p.batch.messages() >= q.max_messages || p.batch.size() >= q.max_bytes);
        if p.closed {
            Some(false)
        } else if full {
            None
        } else {
            p.batch.push_rows(rows);
            p.last += 1;
            Some(true)
        }
    }

    /// Waits until everything handed over before the call is committed.
    pub async fn flushed(&self) {
        let target = self.queue.lock().last;
        let mut committed = self.committed.clone();
        // An error means the task is gone; what it took was committed or
        // logged, and later rows are written directly.
        let _ = committed.wait_for(|&c| c >= target).await;
    }
}

/// Writes without the task (it has stopped at shutdown).
pub async fn write_direct(store: &Store, rows: &[RowRef<'_>]) {
    if let Err(e) = store.archive_insert_refs(rows).await {
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
        batch: &Arc<ArchiveBatch>,
        range: Range<usize>,
    ) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let r = self.insert_untimed(batch, range).await;
        (self.timers).observe(StorageOp::ArchiveInsert, started.elapsed());
        r
    }

    async fn insert_untimed(
        &mut self,
        batch: &Arc<ArchiveBatch>,
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
            let rows = batch.decode()?;
            return (self.store)
                .archive_insert_refs(rows.get(range).unwrap_or_default())
                .await;
        };
        let r = conn.insert(batch, range).await;
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
    queue: Arc<Queue>,
    most_rows: usize,
    shutdown: CancellationToken,
    mark: watch::Sender<u64>,
) {
    // The batch the task commits while senders fill the other; the two
    // swap, so their buffers are reused.
    let mut taken = ArchiveBatch::new();
    loop {
        let last = {
            let mut p = queue.lock();
            if p.batch.is_empty() {
                None
            } else {
                std::mem::swap(&mut p.batch, &mut taken);
                Some(p.last)
            }
        };
        let Some(last) = last else {
            tokio::select! {
                biased;
                _ = queue.work.notified() => continue,
                _ = shutdown.cancelled() => break,
            }
        };
        queue.room.notify_waiters();
        taken = commit(&mut db, taken, most_rows).await;
        mark.send_replace(last);
    }
    // Shutdown: senders write directly from now on; what waits still goes
    // in before the store closes.
    let last = {
        let mut p = queue.lock();
        p.closed = true;
        std::mem::swap(&mut p.batch, &mut taken);
        p.last
    };
    queue.room.notify_waiters();
    if !taken.is_empty() {
        commit(&mut db, taken, most_rows).await;
    }
    mark.send_replace(last);
    if let Some(conn) = db.conn.take() {
        conn.close().await;
    }
}

/// The row ranges of `batch` to commit, each whole messages and at most
/// `most` rows (unless one message alone has more).
fn slices(batch: &ArchiveBatch, most: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut end) = (0, 0);
    for m in batch.message_ranges() {
        if m.end - start > most && end > start {
            out.push(start..end);
            start = end;
        }
        end = m.end;
    }
    if end > start {
        out.push(start..end);
    }
    out
}

/// Commits `batch` and gives it back emptied (its buffers are reused).
async fn commit(db: &mut Db, batch: ArchiveBatch, most_rows: usize) -> ArchiveBatch {
    let ranges = slices(&batch, most_rows);
    let batch = Arc::new(batch);
    for range in ranges {
        match db.insert(&batch, range.clone()).await {
            Ok(()) => {}
            Err(e) => {
                // One bad row must not cost the others: each message on its own.
                tracing::warn!(error = %e, "archive batch failed; writing its messages one by one");
                let messages: Vec<Range<usize>> = batch
                    .message_ranges()
                    .filter(|m| m.start >= range.start && m.end <= range.end)
                    .collect();
                for m in messages {
                    if let Err(e) = db.insert(&batch, m.clone()).await {
                        log_failure(&e, m.len());
                    }
                }
            }
        }
    }
    let mut batch = Arc::try_unwrap(batch).unwrap_or_default();
    batch.clear();
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ArchiveKind;

    #[test]
    fn commits_are_cut_between_messages() {
        let row = RowRef {
            kind: ArchiveKind::User,
            domain: "d",
            username: "u",
            peer: "p",
            id: "i",
            ts: 0,
            resource: "",
            outgoing: false,
            payload: "",
            own_resource: None,
        };
        let mut batch = ArchiveBatch::new();
        // Messages of 2, 1, 2, 2, 1 rows.
        for n in [2, 1, 2, 2, 1] {
            for _ in 0..n {
                batch.push(&row);
            }
            batch.end_message();
        }
        assert_eq!(slices(&batch, 3), vec![0..3, 3..5, 5..8]);
        assert_eq!(slices(&batch, 100), vec![0..8]);
        assert_eq!(slices(&batch, 1), vec![0..2, 2..3, 3..5, 5..7, 7..8]);
        assert!(slices(&ArchiveBatch::new(), 5).is_empty());
    }
}
