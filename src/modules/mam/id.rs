//! Archive ids (XEP-0359 stanza-id): 11 characters of the time in
//! microseconds then 8 random ones, in an alphabet whose byte order is its
//! numeric order, so sorting ids sorts by time and a time bound is an id
//! bound. 40 random bits make an id of someone else's message a poor guess.

use std::sync::atomic::{AtomicI64, Ordering};

use rand::Rng;

/// Crockford's base32, lowercase: digits before letters, in ASCII order.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters of the time prefix: 55 bits of microseconds (year 3111).
pub const TIME_CHARS: usize = 11;
const RANDOM_CHARS: usize = 8;

/// Hands out ids whose times never go backwards within this process, even
/// if the clock does, so ids issued later sort later.
#[derive(Debug, Default)]
pub struct IdSource {
    last: AtomicI64,
}

/// An id, held in place (no allocation until it is needed as a String).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id([u8; TIME_CHARS + RANDOM_CHARS]);

impl Id {
    pub fn as_str(&self) -> &str {
        // Only ALPHABET's ASCII bytes are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl IdSource {
    /// A new id and its time (microseconds since the Unix epoch).
    pub fn next(&self) -> (String, i64) {
        let (id, ts) = self.next_id();
        (id.as_str().to_string(), ts)
    }

    /// [`IdSource::next`] without the String.
    pub fn next_id(&self) -> (Id, i64) {
        let now = now_micros();
        let mut prev = self.last.load(Ordering::Relaxed);
        let ts = loop {
            let ts = now.max(prev + 1);
            match self
                .last
                .compare_exchange_weak(prev, ts, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break ts,
                Err(p) => prev = p,
            }
        };
        // One draw gives the 40 random bits, 5 to a character.
        let mut bits: u64 = rand::thread_rng().gen();
        let mut out = [0u8; TIME_CHARS + RANDOM_CHARS];
        write_time(ts, &mut out[..TIME_CHARS]);
        for slot in &mut out[TIME_CHARS..] {
            *slot = ALPHABET[(bits & 31) as usize];
            bits >>= 5;
        }
        (Id(out), ts)
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The prefix every id of time `ts` starts with; also the smallest id of
/// that time, so `id >= time_prefix(t)` is "at or after t".
pub fn time_prefix(ts: i64) -> String {
    let mut out = [b'0'; TIME_CHARS];
    write_time(ts, &mut out);
    ascii(&out)
}

/// Writes the `TIME_CHARS` characters of time `ts` into `out`.
fn write_time(ts: i64, out: &mut [u8]) {
    let mut v = ts.clamp(0, (1 << (5 * TIME_CHARS)) - 1) as u64;
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v & 31) as usize];
        v >>= 5;
    }
}

/// The time (microseconds since the Unix epoch) an id of ours carries in
/// its prefix; None for anything not shaped like one of ours.
pub fn time_of(id: &str) -> Option<i64> {
    if !well_formed(id) {
        return None;
    }
    let mut v: i64 = 0;
    for b in id.bytes().take(TIME_CHARS) {
        v = (v << 5) | i64::from(DIGITS[b as usize]);
    }
    Some(v)
}

/// Characters of `ALPHABET` as a string.
fn ascii(chars: &[u8]) -> String {
    String::from_utf8(chars.to_vec()).unwrap_or_default()
}

/// The value of each byte in `ALPHABET`, 32 for every other byte.
const DIGITS: [u8; 256] = {
    let mut t = [32u8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Is `id` shaped like one of ours? (Anything else cannot be in the
/// archive, and is not worth a database look-up.)
pub fn well_formed(id: &str) -> bool {
    id.len() == TIME_CHARS + RANDOM_CHARS && id.bytes().all(|b| DIGITS[b as usize] < 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let src = IdSource::default();
        let ids: Vec<(String, i64)> = (0..1000).map(|_| src.next()).collect();
        for w in ids.windows(2) {
            assert!(w[0].0 < w[1].0, "{:?}", w);
            assert!(w[0].1 < w[1].1);
        }
        assert!(ids.iter().all(|(i, _)| well_formed(i)));
        assert!(time_prefix(1) < time_prefix(2));
        assert!(time_prefix(31) < time_prefix(32));
        assert!(ids[0].0.starts_with(&time_prefix(ids[0].1)));
        assert!(!well_formed("../etc"));
        for (i, ts) in &ids {
            assert_eq!(time_of(i), Some(*ts));
        }
        assert_eq!(time_of("../etc"), None);
    }
}
