//! The bounded queue between the router and one session's connection task.
//!
//! A `VecDeque` behind a mutex plus a `Notify`, rather than tokio's mpsc:
//! an mpsc channel keeps a block of slots allocated for its whole life,
//! while this queue gives its memory back whenever it drains — most
//! sessions are idle most of the time, and idle memory is what limits how
//! many sessions one server holds.
//!
//! The bound is both a count and a byte total: a count alone lets a
//! session hold count × largest-stanza bytes (2,048 × 256 KiB = 512 MiB).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue holds `capacity` items or `max_bytes` bytes already.
    Full,
    /// The receiving side is gone.
    Closed,
}

/// What an item costs against the queue's byte bound.
pub trait Weigh {
    /// Bytes the item holds (an estimate is fine, as long as it grows with
    /// what the peer can make us hold).
    fn weight(&self) -> usize;
}

#[derive(Debug)]
struct Items<T> {
    queue: VecDeque<T>,
    /// Sum of the queued items' weights.
    bytes: usize,
}

#[derive(Debug)]
struct Shared<T> {
    items: Mutex<Items<T>>,
    capacity: usize,
    max_bytes: usize,
    ready: Notify,
    closed: AtomicBool,
    /// A sender waits in `wait_for_room` (checked on every receive, so
    /// the common case costs one relaxed load).
    room_wanted: AtomicBool,
    room: Notify,
    /// Where the fullest this queue has been is reported (the metrics'
    /// session-queue high-water mark), if anywhere.
    peak: Option<Arc<Peak>>,
}

/// The most items and bytes any of the queues sharing it has held at once
/// since it was made: a high-water mark, for the metrics.
///
/// Noted under the queue's lock after each send with one relaxed load per
/// figure; the shared atomics are written only when a queue goes past the
/// mark, which soon becomes rare, so the cache line stays shared between
/// cores instead of bouncing on every send.
#[derive(Debug, Default)]
pub struct Peak {
    items: AtomicUsize,
    bytes: AtomicUsize,
}

impl Peak {
    fn note(&self, items: usize, bytes: usize) {
        if items > self.items.load(Ordering::Relaxed) {
            self.items.fetch_max(items, Ordering::Relaxed);
        }
        if bytes > self.bytes.load(Ordering::Relaxed) {
            self.bytes.fetch_max(bytes, Ordering::Relaxed);
        }
    }

    /// The most items any queue held.
    pub fn items(&self) -> usize {
        self.items.load(Ordering::Relaxed)
    }

    /// The most bytes (by [`Weigh`]) any queue held.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
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

/// A queue holding at most `capacity` items and `max_bytes` bytes of
/// them — except that an empty queue takes one item of any weight, so a
/// stanza larger than the byte bound still gets through on its own.
pub fn queue<T: Weigh>(capacity: usize, max_bytes: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    queue_with_peak(capacity, max_bytes, None)
}

/// [`queue`], reporting how full it gets to `peak`.
pub fn queue_with_peak<T: Weigh>(
    capacity: usize,
    max_bytes: usize,
    peak: Option<Arc<Peak>>,
) -> (QueueSender<T>, QueueReceiver<T>) {
    let shared = Arc::new(Shared {
        items: Mutex::new(Items {
            queue: VecDeque::new(),
            bytes: 0,
        }),
        capacity,
        max_bytes,
        ready: Notify::new(),
        closed: AtomicBool::new(false),
        room_wanted: AtomicBool::new(false),
        room: Notify::new(),
        peak,
    });
    (QueueSender(shared.clone()), QueueReceiver(shared))
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Items<T>> {
        // Each critical section is one VecDeque operation and a sum: a
        // panic cannot leave it half-done, so poisoning carries no
        // information.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// At most a quarter full by count and bytes: a sender waiting in
    /// `wait_for_room` resumes here, and `try_send_from` fills to half, so
    /// each resumption hands over a quarter of the queue at once.
    fn half_empty(&self, q: &Items<T>) -> bool {
        q.queue.len() <= self.capacity / 4 && q.bytes <= self.max_bytes / 4
    }

    /// Reports the queue's size after a send to the high-water mark.
    fn note_peak(&self, q: &Items<T>) {
        if let Some(p) = &self.peak {
            p.note(q.queue.len(), q.bytes);
        }
    }

    fn wake_room_waiter(&self) {
        if self.room_wanted.swap(false, Ordering::AcqRel) {
            self.room.notify_waiters();
        }
    }
}

impl<T: Weigh> QueueSender<T> {
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
            q.bytes = q.bytes.saturating_add(item.weight());
            q.queue.push_back(item);
            self.0.note_peak(&q);
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
            let weight = item.weight();
            let over_bytes =
                !q.queue.is_empty() && q.bytes.saturating_add(weight) > self.0.max_bytes;
            if q.queue.len() >= self.0.capacity || over_bytes {
                return Err((QueueError::Full, item));
            }
            q.bytes = q.bytes.saturating_add(weight);
            q.queue.push_back(item);
            self.0.note_peak(&q);
        }
        // A stored permit covers a receiver that is not waiting yet.
        self.0.ready.notify_one();
        Ok(())
    }

    /// Queues items from the front of `items` while the queue is less than
    /// half full, under one lock and with one wake-up of the receiver: how
    /// a producer with a backlog for one receiver (a joiner's occupant
    /// list) hands over a chunk. The other half stays free for the
    /// receiver's live traffic, which must never find the queue full
    /// because of a backlog. Returns how many were queued; the rest stay
    /// in `items`.
    pub fn try_send_from(&self, items: &mut VecDeque<T>) -> Result<usize, QueueError> {
        let (capacity, max_bytes) = ((self.0.capacity / 2).max(1), self.0.max_bytes / 2);
        let mut queued = 0;
        {
            let mut q = self.0.lock();
            if self.0.closed.load(Ordering::Acquire) {
                return Err(QueueError::Closed);
            }
            while let Some(item) = items.pop_front() {
                let weight = item.weight();
                let over_bytes = !q.queue.is_empty() && q.bytes.saturating_add(weight) > max_bytes;
                if q.queue.len() >= capacity || over_bytes {
                    items.push_front(item);
                    break;
                }
                q.bytes = q.bytes.saturating_add(weight);
                q.queue.push_back(item);
                queued += 1;
            }
            self.0.note_peak(&q);
        }
        if queued > 0 {
            self.0.ready.notify_one();
        }
        Ok(queued)
    }

    /// Waits until the queue is at most a quarter full (or closed): for a
    /// producer with a long backlog for one receiver (a big room's
    /// occupant list for a joiner), which sends as the receiver reads
    /// instead of holding it all in the queue at once.
    pub async fn wait_for_room(&self) {
        loop {
            let notified = self.0.room.notified();
            tokio::pin!(notified);
            // Registered before the check, so a receive between the check
            // and the await still wakes us.
            notified.as_mut().enable();
            self.0.room_wanted.store(true, Ordering::Release);
            {
                let q = self.0.lock();
                if self.0.closed.load(Ordering::Acquire) || self.0.half_empty(&q) {
                    return;
                }
            }
            notified.await;
        }
    }
}

impl<T: Weigh> QueueReceiver<T> {
    /// The next item, without waiting.
    pub fn try_recv(&self) -> Option<T> {
        let mut q = self.0.lock();
        let item = q.queue.pop_front();
        if let Some(i) = &item {
            q.bytes = q.bytes.saturating_sub(i.weight());
        }
        if q.queue.is_empty() {
            // Sends past the bound count too; an empty queue holds nothing.
            q.bytes = 0;
            if q.queue.capacity() > 0 {
                // Drained: give the buffer back (see the module comment).
                q.queue = VecDeque::new();
            }
        }
        if self.0.room_wanted.load(Ordering::Relaxed) && self.0.half_empty(&q) {
            self.0.wake_room_waiter();
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
        q.bytes = 0;
        self.0.wake_room_waiter();
        std::mem::take(&mut q.queue).into()
    }
}

impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        self.0.closed.store(true, Ordering::Release);
        q.bytes = 0;
        q.queue.clear();
        self.0.wake_room_waiter();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weigh for i32 {
        fn weight(&self) -> usize {
            // A number's value is its weight, so tests can pick weights.
            (*self).max(0) as usize
        }
    }

    impl Weigh for &str {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    #[tokio::test]
    async fn bounded_ordered_and_wakes_the_receiver() {
        let (tx, rx) = queue(2, usize::MAX);
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
        let (tx, rx) = queue(1, usize::MAX);
        tx.try_send(1).unwrap();
        assert_eq!(tx.try_send(2), Err(QueueError::Full));
        tx.send_beyond_capacity(3).unwrap();
        assert_eq!(rx.close_and_drain(), vec![1, 3]);
        assert_eq!(tx.send_beyond_capacity(4), Err(QueueError::Closed));
    }

    #[test]
    fn close_and_drain_returns_leftovers_and_refuses_more() {
        let (tx, rx) = queue(10, usize::MAX);
        tx.try_send("a").unwrap();
        tx.try_send("b").unwrap();
        assert_eq!(rx.close_and_drain(), vec!["a", "b"]);
        assert_eq!(tx.try_send("c"), Err(QueueError::Closed));
    }

    #[test]
    fn memory_is_released_when_drained() {
        let (tx, rx) = queue(100, usize::MAX);
        for i in 0..50 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.lock().queue.capacity(), 0);
    }

    #[test]
    fn bounded_by_bytes_as_well_as_count() {
        let (tx, rx) = queue(100, 10);
        tx.try_send(4).unwrap();
        tx.try_send(6).unwrap();
        // 10 bytes queued: one more byte is refused, as a count bound would.
        assert_eq!(tx.try_send(1), Err(QueueError::Full));
        assert_eq!(tx.try_send(0), Ok(()));
        // Draining gives the bytes back.
        assert_eq!(rx.try_recv(), Some(4));
        tx.try_send(3).unwrap();
        assert_eq!(tx.try_send(2), Err(QueueError::Full));
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.lock().bytes, 0);
    }

    #[test]
    fn an_empty_queue_takes_one_item_heavier_than_the_bound() {
        let (tx, rx) = queue(100, 10);
        tx.try_send(50).unwrap();
        assert_eq!(tx.try_send(1), Err(QueueError::Full));
        assert_eq!(rx.try_recv(), Some(50));
        tx.try_send(1).unwrap();
    }

    #[tokio::test]
    async fn a_sender_waits_for_room_until_a_quarter_full_or_closed() {
        let (tx, rx) = queue(8, usize::MAX);
        for i in 0..4 {
            tx.try_send(i).unwrap();
        }
        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(rx.try_recv(), Some(0));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "3 of 8 is more than a quarter");
        assert_eq!(rx.try_recv(), Some(1));
        waiter.await.unwrap();
        // An empty-enough queue does not wait at all.
        tx.wait_for_room().await;
        // A closed queue ends the wait (the receiver is gone).
        tx.try_send(2).unwrap();
        tx.try_send(3).unwrap();
        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        drop(rx);
        waiter.await.unwrap();
    }

    #[test]
    fn a_batch_fills_half_the_queue_and_leaves_the_rest_for_live_traffic() {
        let (tx, rx) = queue(6, 20);
        let mut items: VecDeque<i32> = [2, 3, 4, 5].into_iter().collect();
        // Half the count is 3, half the bytes 10: 2 + 3 + 4 = 9 fit, the 5 waits.
        assert_eq!(tx.try_send_from(&mut items), Ok(3));
        assert_eq!(items, VecDeque::from([5]));
        assert_eq!(tx.try_send_from(&mut items), Ok(0));
        // The other half still takes single items.
        tx.try_send(1).unwrap();
        while rx.try_recv().is_some() {}
        assert_eq!(tx.try_send_from(&mut items), Ok(1));
        drop(rx);
        assert_eq!(
            tx.try_send_from(&mut VecDeque::from([1])),
            Err(QueueError::Closed)
        );
    }

    #[test]
    fn control_items_count_their_bytes() {
        let (tx, rx) = queue(100, 10);
        tx.send_beyond_capacity(20).unwrap();
        assert_eq!(tx.try_send(1), Err(QueueError::Full));
        assert_eq!(rx.try_recv(), Some(20));
        assert_eq!(rx.0.lock().bytes, 0);
        tx.try_send(1).unwrap();
    }

    #[test]
    fn the_peak_is_the_fullest_any_queue_sharing_it_was() {
        let peak = Arc::new(Peak::default());
        let (a, ra) = queue_with_peak(10, usize::MAX, Some(peak.clone()));
        let (b, _rb) = queue_with_peak(10, usize::MAX, Some(peak.clone()));
        a.try_send(5).unwrap();
        a.try_send(7).unwrap();
        assert_eq!((peak.items(), peak.bytes()), (2, 12));
        // Draining does not lower it; a smaller queue elsewhere does not
        // either; a fuller one raises it, by every way of sending.
        assert_eq!(ra.try_recv(), Some(5));
        assert_eq!(ra.try_recv(), Some(7));
        b.try_send(1).unwrap();
        assert_eq!((peak.items(), peak.bytes()), (2, 12));
        b.send_beyond_capacity(20).unwrap();
        assert_eq!((peak.items(), peak.bytes()), (2, 21));
        let mut more: VecDeque<i32> = [1, 1, 1].into();
        assert_eq!(b.try_send_from(&mut more), Ok(3));
        assert_eq!((peak.items(), peak.bytes()), (5, 24));
        // A queue without a peak reports nowhere.
        let (c, _rc) = queue(10, usize::MAX);
        for _ in 0..8 {
            c.try_send(100).unwrap();
        }
        assert_eq!(peak.items(), 5);
    }
}
