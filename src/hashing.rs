//! The password-hashing pool: every PBKDF2 or argon2 run (PLAIN logins,
//! registrations, password changes) goes through it, so that a burst of
//! them cannot take every core or, with argon2, gigabytes of memory.
//!
//! At most `workers` jobs run at once on the blocking pool; at most `queue`
//! more wait for a turn. A job beyond that is refused at once with
//! [`HashingError::Busy`] (the caller answers `temporary-auth-failure` or
//! `resource-constraint`): a client retrying later costs less than a queue
//! that grows with the attack. Argon2 working memory is kept in a few
//! reusable buffers, one per running job, instead of a fresh ~19 MiB
//! allocation per call that the allocator may never give back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use argon2::Block;
use tokio::sync::Semaphore;

/// Why a hashing job did not run to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashingError {
    /// Every worker is busy and the waiting queue is full.
    Busy,
    /// The job panicked or the runtime is shutting down.
    Failed,
}

/// Bounded password hashing; one per server.
#[derive(Debug)]
pub struct HashingPool {
    workers: usize,
    permits: Arc<Semaphore>,
    max_waiting: usize,
    waiting: AtomicUsize,
    /// Jobs that ran to their end, for tests and statistics.
    completed: AtomicU64,
    /// Jobs refused because the queue was full.
    refused: AtomicU64,
    memory: Arc<ArgonMemory>,
}

impl HashingPool {
    /// `workers`: jobs at once (0 = one per CPU core); `max_waiting`: jobs
    /// that may wait for a worker.
    pub fn new(workers: usize, max_waiting: usize) -> HashingPool {
        let workers = if workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            workers
        };
        HashingPool {
            workers,
            permits: Arc::new(Semaphore::new(workers)),
            max_waiting,
            waiting: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            memory: Arc::new(ArgonMemory::new(workers)),
        }
    }

    /// How many jobs may run at once.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Jobs run to their end since start.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Jobs refused with [`HashingError::Busy`] since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Runs `job` on the blocking pool once a worker is free, handing it a
    /// reusable argon2 memory buffer. Refuses at once when the queue is full.
    pub async fn run<T, F>(&self, job: F) -> Result<T, HashingError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Count ourselves in before checking, so that parallel
                // callers cannot all see room for one more.
                let before = self.waiting.fetch_add(1, Ordering::AcqRel);
                let _waiting = WaitingGuard(&self.waiting);
                if before >= self.max_waiting {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(HashingError::Busy);
                }
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| HashingError::Failed)?
            }
        };
        let memory = self.memory.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut buf = memory.take();
            let out = job(&mut buf);
            memory.give_back(buf);
            out
        })
        .await
        .map_err(|_| HashingError::Failed);
        if result.is_ok() {
            self.completed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// Leaves the waiting count when the waiting caller returns or is dropped
/// (a client that disconnects while queued must not keep its place).
struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Argon2 block buffers, reused between jobs. There are never more than
/// `workers` in use (one per running job), so at most that many are kept.
#[derive(Debug)]
struct ArgonMemory {
    keep: usize,
    free: Mutex<Vec<Vec<Block>>>,
}

impl ArgonMemory {
    fn new(keep: usize) -> ArgonMemory {
        ArgonMemory {
            keep,
            free: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<Block> {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give_back(&self, buf: Vec<Block>) {
        if buf.capacity() == 0 {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

/// Makes `buf` exactly `blocks` long, reusing its allocation when it is
/// large enough (argon2 overwrites every block, so old contents do not
/// matter).
pub fn argon2_blocks(buf: &mut Vec<Block>, blocks: usize) -> &mut [Block] {
    buf.resize(blocks, Block::new());
    &mut buf[..blocks]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_beyond_workers_plus_queue() {
        let pool = Arc::new(HashingPool::new(1, 2));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        // One job holds the only worker until released.
        let held = {
            let pool = pool.clone();
            let rx = release_rx.clone();
            tokio::spawn(async move {
                pool.run(move |_| {
                    let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
                })
                .await
            })
        };
        // Wait (bounded) until it holds the worker.
        for _ in 0..1000 {
            if pool.permits.available_permits() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(pool.permits.available_permits(), 0);
        // Two may wait; the third is refused at once.
        let waiters: Vec<_> = (0..2)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move |_| i).await })
            })
            .collect();
        for _ in 0..1000 {
            if pool.waiting.load(Ordering::Acquire) == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(pool.run(|_| 99).await, Err(HashingError::Busy));
        assert_eq!(pool.refused(), 1);
        release_tx.send(()).unwrap();
        assert_eq!(held.await.unwrap(), Ok(()));
        let mut got: Vec<i32> = Vec::new();
        for w in waiters {
            got.push(w.await.unwrap().unwrap());
        }
        got.sort();
        assert_eq!(got, vec![0, 1]);
        assert_eq!(pool.completed(), 3);
        // Room again once the queue drained.
        assert_eq!(pool.run(|_| 7).await, Ok(7));
    }

    #[tokio::test]
    async fn argon_memory_is_reused() {
        let pool = HashingPool::new(1, 0);
        let first = pool
            .run(|buf| {
                argon2_blocks(buf, 64);
                buf.as_ptr() as usize
            })
            .await
            .unwrap();
        let second = pool
            .run(|buf| {
                argon2_blocks(buf, 32);
                buf.as_ptr() as usize
            })
            .await
            .unwrap();
        assert_eq!(first, second, "the second job got the first one's buffer");
    }
}
