//! Attacks from the December 2026 audit, replayed over real sockets against
//! the in-process server: each case asserts the protocol answer, that the
//! server's memory stays bounded, and that other users keep being served.
//!
//! One file per class of attack; shared measuring helpers live here.
//! nextest runs every test in a process of its own, so the RSS read from
//! /proc/self is this test's server (and its test clients) alone.

#[path = "../common/mod.rs"]
mod common;

/// Resident set size of this process, in KiB (Linux /proc).
#[allow(dead_code)]
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// One line per attack file (tests/attacks/<name>.rs):
mod auth;
mod cross_host;
mod net;
mod state;
mod xml;
