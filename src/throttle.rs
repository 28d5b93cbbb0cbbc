//! Attempt budgets per key (remote address prefix, account and prefix,
//! component listener address) inside a fixed window.
//!
//! An attempt is *reserved* before the work that checks it (a password
//! derivation, a handshake), so attempts running in parallel cannot all
//! pass a check made before any of them is counted. The caller gives the
//! reservation back ([`FailureWindow::refund`]) when the attempt turns out
//! not to be a failed guess (a success, a malformed request, a server
//! error); otherwise it stays counted — including when the connection drops
//! half-way, so disconnecting cannot hide a guess. A success only refunds
//! its own attempt: it never wipes the failures counted before it, or an
//! attacker logging into their own account between guesses would reset
//! their budget.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Attempt counts per key inside a fixed window.
#[derive(Debug)]
pub struct FailureWindow<K> {
    /// Attempts allowed per window; changed by a configuration reload.
    limit: AtomicU32,
    /// The window's length in milliseconds; changed by a reload.
    window_ms: AtomicU64,
    /// Bounds memory under a flood of distinct keys: past this many
    /// entries, expired ones are swept before inserting.
    max_entries: usize,
    entries: Mutex<HashMap<K, (Instant, u32)>>,
}

/// One counted attempt, to give back with [`FailureWindow::refund`] if it
/// was not a failure. Tied to the window it was counted in: a refund after
/// that window has passed changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an attempt that was not a failed guess must be refunded"]
pub struct Attempt {
    window_start: Instant,
}

impl<K: Hash + Eq + Clone> FailureWindow<K> {
    pub fn new(limit: u32, window: Duration) -> Self {
        FailureWindow {
            limit: AtomicU32::new(limit),
            window_ms: AtomicU64::new(window.as_millis() as u64),
            max_entries: 100_000,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Takes new caps (a configuration reload); counts already made are
    /// kept and judged by the new caps.
    pub fn set_caps(&self, limit: u32, window: Duration) {
        self.limit.store(limit, Ordering::Relaxed);
        self.window_ms
            .store(window.as_millis() as u64, Ordering::Relaxed);
    }

    fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms.load(Ordering::Relaxed))
    }

    /// Counts an attempt for `key` if its budget allows one more; None when
    /// the budget of this window is spent.
    pub fn try_reserve(&self, key: &K) -> Option<Attempt> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max_entries && !map.contains_key(key) {
            self.make_room(&mut map);
        }
        let now = Instant::now();
        let e = map.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window() {
            *e = (now, 0);
        }
        if e.1 >= self.limit() {
            return None;
        }
        e.1 += 1;
        Some(Attempt { window_start: e.0 })
    }

    /// Gives back an attempt that was not a failure.
    pub fn refund(&self, key: &K, attempt: Attempt) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(key) {
            if e.0 == attempt.window_start && e.1 > 0 {
                e.1 -= 1;
            }
        }
    }

    /// Is `key`'s budget spent for now?
    pub fn is_blocked(&self, key: &K) -> bool {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .is_some_and(|(start, n)| start.elapsed() < self.window() && *n >= self.limit())
    }

    /// Forgets `key`'s attempts. Only for keys a success proves the owner
    /// of (an account's own counter), never for an address.
    pub fn clear(&self, key: &K) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }

    fn make_room(&self, map: &mut HashMap<K, (Instant, u32)>) {
        let window = self.window();
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
}

/// The part of a remote address one party is assumed to control: the
/// address itself for IPv4, the first `ipv6_prefix` bits for IPv6 (a single
/// host is usually given a whole /64 and can rotate through it freely). An
/// IPv4 address mapped into IPv6 counts as that IPv4 address.
pub fn source_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_spent_by_reservations_until_the_window_passes() {
        let w = FailureWindow::new(2, Duration::from_millis(50));
        let _a = w.try_reserve(&"ip").unwrap();
        assert!(!w.is_blocked(&"ip"));
        let _b = w.try_reserve(&"ip").unwrap();
        assert!(w.is_blocked(&"ip"));
        assert_eq!(w.try_reserve(&"ip"), None);
        assert!(w.try_reserve(&"other").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(w.try_reserve(&"ip").is_some());
    }

    #[test]
    fn parallel_attempts_cannot_exceed_the_budget() {
        // The old check-then-record let every attempt that started before
        // the first failure was recorded through.
        let w = std::sync::Arc::new(FailureWindow::new(5, Duration::from_secs(60)));
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..32)
                .map(|_| {
                    let w = w.clone();
                    s.spawn(move || w.try_reserve(&"ip").is_some() as usize)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(granted, 5);
    }

    #[test]
    fn a_success_refunds_only_its_own_attempt() {
        let w = FailureWindow::new(3, Duration::from_secs(60));
        let _f1 = w.try_reserve(&"ip").unwrap();
        let _f2 = w.try_reserve(&"ip").unwrap();
        let ok = w.try_reserve(&"ip").unwrap();
        w.refund(&"ip", ok);
        // Two failures still counted: one attempt left, not three.
        assert!(w.try_reserve(&"ip").is_some());
        assert_eq!(w.try_reserve(&"ip"), None);
    }

    #[test]
    fn a_refund_from_an_older_window_changes_nothing() {
        let w = FailureWindow::new(1, Duration::from_millis(20));
        let old = w.try_reserve(&"k").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let _new = w.try_reserve(&"k").unwrap();
        w.refund(&"k", old);
        assert_eq!(w.try_reserve(&"k"), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut w = FailureWindow::new(1, Duration::from_secs(60));
        w.max_entries = 10;
        for i in 0..1000 {
            let _ = w.try_reserve(&i);
        }
        assert!(w.entries.lock().unwrap().len() <= 10);
    }

    #[test]
    fn ipv6_is_keyed_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a, 64), source_key(b, 64));
        assert_ne!(source_key(a, 64), source_key(c, 64));
        assert_eq!(
            source_key(a, 64),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(source_key(a, 128), a);
        assert_eq!(source_key(a, 0), "::".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source_key(v4, 64), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped, 64), v4);
    }
}
