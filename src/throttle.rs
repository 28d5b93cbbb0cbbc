//! Failed-authentication throttling per remote IP and per account: after
//! too many failures within a window, further attempts are refused with
//! `temporary-auth-failure` until the window has passed.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failure counts per key inside a fixed window.
#[derive(Debug)]
pub struct FailureWindow<K> {
    limit: u32,
    window: Duration,
    /// Bounds memory under a flood of distinct keys: past this many
    /// entries, expired ones are swept before inserting.
    max_entries: usize,
    entries: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq + Clone> FailureWindow<K> {
    pub fn new(limit: u32, window: Duration) -> Self {
        FailureWindow {
            limit,
            window,
            max_entries: 100_000,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Is `key` currently refused?
    pub fn is_blocked(&self, key: &K) -> bool {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .is_some_and(|(start, n)| start.elapsed() < self.window && *n >= self.limit)
    }

    /// Counts one failure for `key`.
    pub fn record_failure(&self, key: &K) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max_entries && !map.contains_key(key) {
            let window = self.window;
            map.retain(|_, (start, _)| start.elapsed() < window);
            if map.len() >= self.max_entries {
                // Still full of live entries: forget the older half rather
                // than grow without bound.
                let mut starts: Vec<Instant> = map.values().map(|(s, _)| *s).collect();
                starts.sort_unstable();
                let cutoff = starts[starts.len() / 2];
                map.retain(|_, (start, _)| *start > cutoff);
            }
        }
        let e = map.entry(key.clone()).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= self.window {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    /// Forgets `key`'s failures (after a success).
    pub fn clear(&self, key: &K) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_until_window_passes() {
        let w = FailureWindow::new(2, Duration::from_millis(50));
        w.record_failure(&"ip");
        assert!(!w.is_blocked(&"ip"));
        w.record_failure(&"ip");
        assert!(w.is_blocked(&"ip"));
        assert!(!w.is_blocked(&"other"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!w.is_blocked(&"ip"));
    }

    #[test]
    fn memory_is_bounded() {
        let mut w = FailureWindow::new(1, Duration::from_secs(60));
        w.max_entries = 10;
        for i in 0..1000 {
            w.record_failure(&i);
        }
        assert!(w.entries.lock().unwrap().len() <= 10);
    }
}
