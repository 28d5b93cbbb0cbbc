//! The `waxwing` binary: everything lives in the library; see `cli`.

/// With `--features jemalloc` the server allocates with jemalloc: about a
/// fifth less CPU per message than glibc's malloc in the chat benchmarks,
/// and much lower group chat latency near saturation, for about 1 KiB more
/// per idle session (jemalloc's size classes round allocations up).
/// Measured in BENCHMARKS.md ("Stream management, the allocator and the
/// handshake pool"). Off by default: the idle-memory budget comes first.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    waxwing::cli::main()
}
