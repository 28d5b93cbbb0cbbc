//! Spare write buffers, kept per thread between one flush and the next.
//!
//! A stream's write buffer is given back after each flush, so an idle
//! stream owns none (idle memory is a budget, issue #10). Allocating it
//! afresh for the next write cost a `malloc`, a `free` and often a
//! `realloc` per flush; when deliveries come one at a time (group chat at
//! a steady rate, issue #13) that was a flush per delivery and about a
//! tenth of the server's CPU, mostly waiting for glibc's arena locks (a
//! buffer is often freed on another thread than the one that allocated
//! it). Here a flushed buffer goes back to a small per-thread stack and
//! the next stream to write on that thread takes it: no allocator call
//! in the steady state, and at most [`KEPT`] buffers of at most
//! [`KEPT_CAPACITY`] bytes each held per thread.

use std::cell::RefCell;

/// Buffers kept per thread.
const KEPT: usize = 32;
/// A larger buffer (a burst's batch) is freed rather than kept.
const KEPT_CAPACITY: usize = 16 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer: a kept one if the thread has one.
pub fn take() -> Vec<u8> {
    SPARE
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Gives `buf` back (emptied) for the next [`take`] on this thread, or
/// frees it if the thread keeps enough or it is too large.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > KEPT_CAPACITY {
        return;
    }
    buf.clear();
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEPT {
            s.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_emptied() {
        let mut b = take();
        b.extend_from_slice(b"<message/>");
        let (ptr, cap) = (b.as_ptr(), b.capacity());
        give(b);
        let again = take();
        assert_eq!((again.as_ptr(), again.capacity()), (ptr, cap));
        assert!(again.is_empty());
    }

    #[test]
    fn what_is_kept_is_bounded() {
        // Too large: freed, not kept.
        give(Vec::with_capacity(KEPT_CAPACITY + 1));
        assert_eq!(take().capacity(), 0);
        // At most KEPT.
        for _ in 0..KEPT + 10 {
            give(Vec::with_capacity(64));
        }
        let kept = std::iter::from_fn(|| Some(take()))
            .take_while(|b| b.capacity() > 0)
            .count();
        assert_eq!(kept, KEPT);
    }
}
