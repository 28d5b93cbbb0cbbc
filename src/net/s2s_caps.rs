//! Caps on what peers can make us open outwards. Every dialback
//! `db:result` a peer sends makes us connect to the originating domain's
//! server (XEP-0220 §2.1.2); a peer that is not yet authenticated can send
//! many, for many domains, over many connections. So the verifications
//! running at once are counted — in all, per IP of the peer that asked,
//! and per originating domain — and one beyond any cap is refused (the
//! caller answers with a `resource-constraint` dialback error). A slot is
//! given back when its verification ends, however it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::S2sConfig;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    by_domain: HashMap<String, usize>,
}

/// The dialback verifications in flight.
#[derive(Debug, Default)]
pub struct Verifications(Arc<Mutex<Counts>>);

/// One verification's place; frees it when dropped.
#[derive(Debug)]
pub struct VerificationSlot {
    counts: Arc<Mutex<Counts>>,
    ip: Option<IpAddr>,
    domain: String,
}

fn lock(m: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    // Every update is a few counter changes that cannot panic halfway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Adds `delta` to a keyed count, dropping the key at zero so the map
/// holds only what is in flight.
fn adjust<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, up: bool) {
    if up {
        *map.entry(key).or_insert(0) += 1;
    } else if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl Verifications {
    /// A place for a verification of `domain` asked for by a peer at `ip`
    /// (None: the address is unknown, only the other caps apply), or None
    /// when a cap is reached.
    pub fn try_start(
        &self,
        cfg: &S2sConfig,
        ip: Option<IpAddr>,
        domain: &str,
    ) -> Option<VerificationSlot> {
        let mut c = lock(&self.0);
        let by_ip = ip.map_or(0, |ip| c.by_ip.get(&ip).copied().unwrap_or(0));
        let by_domain = c.by_domain.get(domain).copied().unwrap_or(0);
        if c.total >= cfg.max_verifications
            || by_ip >= cfg.max_verifications_per_ip
            || by_domain >= cfg.max_verifications_per_domain
        {
            return None;
        }
        c.total += 1;
        if let Some(ip) = ip {
            adjust(&mut c.by_ip, ip, true);
        }
        adjust(&mut c.by_domain, domain.to_string(), true);
        Some(VerificationSlot {
            counts: self.0.clone(),
            ip,
            domain: domain.to_string(),
        })
    }

    /// Verifications running now.
    pub fn in_flight(&self) -> usize {
        lock(&self.0).total
    }
}

impl Drop for VerificationSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            adjust(&mut c.by_ip, ip, false);
        }
        adjust(&mut c.by_domain, std::mem::take(&mut self.domain), false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(total: usize, per_ip: usize, per_domain: usize) -> S2sConfig {
        S2sConfig {
            max_verifications: total,
            max_verifications_per_ip: per_ip,
            max_verifications_per_domain: per_domain,
            ..S2sConfig::default()
        }
    }

    #[test]
    fn each_cap_refuses_and_a_dropped_slot_frees_its_place() {
        let v = Verifications::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let c = cfg(3, 2, 1);
        let s1 = v.try_start(&c, Some(a), "x.test").unwrap();
        // Per domain.
        assert!(v.try_start(&c, Some(b), "x.test").is_none());
        let _s2 = v.try_start(&c, Some(a), "y.test").unwrap();
        // Per IP.
        assert!(v.try_start(&c, Some(a), "z.test").is_none());
        let _s3 = v.try_start(&c, Some(b), "z.test").unwrap();
        // In all.
        assert!(v.try_start(&c, Some(b), "w.test").is_none());
        assert_eq!(v.in_flight(), 3);
        drop(s1);
        assert_eq!(v.in_flight(), 2);
        let _s4 = v.try_start(&c, Some(b), "x.test").unwrap();
        assert_eq!(lock(&v.0).by_ip.get(&a), Some(&1));
    }

    #[test]
    fn counts_are_forgotten_at_zero() {
        let v = Verifications::default();
        let c = cfg(10, 10, 10);
        let s = v.try_start(&c, "192.0.2.1".parse().ok(), "x.test").unwrap();
        drop(s);
        let counts = lock(&v.0);
        assert!(counts.by_ip.is_empty() && counts.by_domain.is_empty());
        assert_eq!(counts.total, 0);
    }
}
