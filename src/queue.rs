//! The bounded queue between the router and one session's connection task.
//!
//! A `VecDeque` behind a mutex plus a `Notify`, rather than tokio's mpsc:
//! an mpsc channel keeps a block of slots allocated for its whole life,
//! while this queue gives its memory back whenever it drains — most
//! sessions are idle most of the time, and idle memory is what limits how
//! many sessions one server holds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue holds `capacity` items already.
    Full,
    /// The receiving side is gone.
    Closed,
}

#[derive(Debug)]
struct Shared<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    ready: Notify,
    closed: AtomicBool,
}

/// The sending side (cheap to clone).
#[derive(Debug)]
pub struct QueueSender<T>(Arc<Shared<T>>);

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        QueueSender(self.0.clone())
    }
}

/// The receiving side; closes the queue when dropped.
#[derive(Debug)]
pub struct QueueReceiver<T>(Arc<Shared<T>>);

/// A queue holding at most `capacity` items.
pub fn queue<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let shared = Arc::new(Shared {
        items: Mutex::new(VecDeque::new()),
        capacity,
        ready: Notify::new(),
        closed: AtomicBool::new(false),
    });
    (QueueSender(shared.clone()), QueueReceiver(shared))
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        // Each critical section is one VecDeque operation: a panic cannot
        // leave it half-done, so poisoning carries no information.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> QueueSender<T> {
    /// Queues an item without waiting.
    pub fn try_send(&self, item: T) -> Result<(), QueueError> {
        self.try_send_back(item).map_err(|(e, _)| e)
    }

    /// Queues an item even when the queue is full (not when it is closed):
    /// for the few control items a connection must not lose, whose
    /// producer bounds their number itself.
    pub fn send_beyond_capacity(&self, item: T) -> Result<(), QueueError> {
        {
            let mut q = self.0.lock();
            if self.0.closed.load(Ordering::Acquire) {
                return Err(QueueError::Closed);
            }
            q.push_back(item);
        }
        self.0.ready.notify_one();
        Ok(())
    }

    /// Queues an item without waiting; a refused item is handed back.
    pub fn try_send_back(&self, item: T) -> Result<(), (QueueError, T)> {
        {
            let mut q = self.0.lock();
            // Checked under the lock, so an item is either drained by
            // `close_and_drain` or refused — never left behind.
            if self.0.closed.load(Ordering::Acquire) {
                return Err((QueueError::Closed, item));
            }
            if q.len() >= self.0.capacity {
                return Err((QueueError::Full, item));
            }
            q.push_back(item);
        }
        // A stored permit covers a receiver that is not waiting yet.
        self.0.ready.notify_one();
        Ok(())
    }
}

impl<T> QueueReceiver<T> {
    /// The next item, without waiting.
    pub fn try_recv(&self) -> Option<T> {
        let mut q = self.0.lock();
        let item = q.pop_front();
        if q.is_empty() && q.capacity() > 0 {
            // Drained: give the buffer back (see the module comment).
            *q = VecDeque::new();
        }
        item
    }

    /// Waits for the next item.
    pub async fn recv(&self) -> T {
        loop {
            if let Some(item) = self.try_recv() {
                return item;
            }
            self.0.ready.notified().await;
        }
    }
}

impl<T> QueueReceiver<T> {
    /// Closes the queue and returns what was still in it, so the owner can
    /// hand undelivered items back instead of losing them.
    pub fn close_and_drain(&self) -> Vec<T> {
        let mut q = self.0.lock();
        self.0.closed.store(true, Ordering::Release);
        std::mem::take(&mut *q).into()
    }
}

impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        self.0.closed.store(true, Ordering::Release);
        q.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_ordered_and_wakes_the_receiver() {
        let (tx, rx) = queue(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(QueueError::Full));
        assert_eq!(rx.recv().await, 1);
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), None);
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send(7).unwrap();
        assert_eq!(waiter.await.unwrap(), 7);
        assert_eq!(tx.try_send(8), Err(QueueError::Closed));
    }

    #[test]
    fn control_items_go_past_a_full_queue_but_not_a_closed_one() {
        let (tx, rx) = queue(1);
        tx.try_send(1).unwrap();
        assert_eq!(tx.try_send(2), Err(QueueError::Full));
        tx.send_beyond_capacity(3).unwrap();
        assert_eq!(rx.close_and_drain(), vec![1, 3]);
        assert_eq!(tx.send_beyond_capacity(4), Err(QueueError::Closed));
    }

    #[test]
    fn close_and_drain_returns_leftovers_and_refuses_more() {
        let (tx, rx) = queue(10);
        tx.try_send("a").unwrap();
        tx.try_send("b").unwrap();
        assert_eq!(rx.close_and_drain(), vec!["a", "b"]);
        assert_eq!(tx.try_send("c"), Err(QueueError::Closed));
    }

    #[test]
    fn memory_is_released_when_drained() {
        let (tx, rx) = queue(100);
        for i in 0..50 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.lock().capacity(), 0);
    }
}
