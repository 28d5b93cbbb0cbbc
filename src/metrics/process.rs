//! The process itself: resident memory, read from Linux's /proc at scrape
//! time (nothing to keep up to date in between).

/// Resident set size in bytes (None off Linux or if /proc is unreadable).
/// From `VmRSS` in /proc/self/status, which is in KiB, so no page size is
/// needed as it would be for /proc/self/statm.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t   10240 kB\nVmData: 1 kB\n"),
            Some(10240 * 1024)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        #[cfg(target_os = "linux")]
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
