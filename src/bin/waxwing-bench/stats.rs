//! Measurements: a lock-free latency histogram and readers for a process's
//! RSS and CPU time from /proc.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Values below this are counted exactly (µs).
const EXACT: u64 = 128;
/// Buckets per power of two above `EXACT`: 64, so a bucket is at most 1/64 (1.6 %) wide.
const SUB: u64 = 64;
/// Covers up to 2^40 µs (~12 days), far past any run.
const BUCKETS: usize = (EXACT + 34 * SUB) as usize;

/// A log-linear histogram of microsecond latencies, shared by every receiving
/// session; recording is one relaxed atomic add, no allocation.
pub struct LatencyHistogram {
    counts: Vec<AtomicU64>,
    max: AtomicU64,
}

impl LatencyHistogram {
    pub fn new() -> Self {
        LatencyHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        if v < EXACT {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as u64; // >= 7
        let shift = e - 6;
        let idx = EXACT + (e - 7) * SUB + ((v >> shift) - SUB);
        (idx as usize).min(BUCKETS - 1)
    }

    /// The highest value that falls in bucket `idx`.
    fn upper(idx: usize) -> u64 {
        let idx = idx as u64;
        if idx < EXACT {
            return idx;
        }
        let k = idx - EXACT;
        let e = k / SUB + 7;
        let m = k % SUB + SUB;
        ((m + 1) << (e - 6)) - 1
    }

    pub fn record(&self, micros: u64) {
        self.counts[Self::index(micros)].fetch_add(1, Relaxed);
        self.max.fetch_max(micros, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn max(&self) -> u64 {
        self.max.load(Relaxed)
    }

    /// The value at quantile `q` (0..=1), as the upper edge of its bucket, capped by the max.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Relaxed);
            if seen >= rank {
                return Self::upper(i).min(self.max());
            }
        }
        self.max()
    }

    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Relaxed);
        }
        self.max.store(0, Relaxed);
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Time the threads of a process (None: this one) spent runnable but
/// waiting for a CPU, in nanoseconds, summed over its threads
/// (`/proc/<pid>/task/*/schedstat`, second field). A thread that ended
/// takes its share with it, so a difference of two readings is a floor.
/// Next to CPU used, it tells a tail that comes from the cores being
/// full (both processes queued behind each other) from one that does not.
pub fn run_delay_ns(pid: Option<u32>) -> Option<u64> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}/task"),
        None => "/proc/self/task".to_owned(),
    };
    let mut total = 0u64;
    for task in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += s
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// Busy CPU time of the whole machine (all cores, everything but idle and
/// iowait), in clock ticks: with the server's and this tool's own share taken
/// out, what is left is other load that disturbed the measurement.
pub fn machine_busy_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some(total - v[3] - v[4])
}

/// Clock ticks per second (sysconf CLK_TCK), asked of getconf so the tool needs
/// no libc binding; 100 on every Linux this runs on in practice.
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// The soft limit on open files of this process.
pub fn nofile_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_tight() {
        for v in [0u64, 1, 127, 128, 129, 1000, 65_535, 1 << 20, 123_456_789] {
            let i = LatencyHistogram::index(v);
            let hi = LatencyHistogram::upper(i);
            assert!(hi >= v, "{v} -> {hi}");
            assert!((hi - v) as f64 <= v as f64 / 60.0 + 1.0, "{v} -> {hi}");
        }
    }

    #[test]
    fn quantiles() {
        let h = LatencyHistogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(
            h.quantile(0.5),
            500u64
                .max(LatencyHistogram::upper(LatencyHistogram::index(500)))
                .min(1000)
        );
        assert_eq!(h.quantile(1.0), 1000);
    }
}
