//! The `waxwing` binary: everything lives in the library; see `cli`.

/// jemalloc rather than glibc's malloc. Stream management keeps each
/// written stanza until the client acknowledges it and then frees a batch
/// of them; under glibc that pattern (frees in batches, often on another
/// worker thread than the allocation) made allocator work the largest cost
/// of a message: chat with stream management on ran at 70% of the rate
/// without it, 89% with jemalloc, and both got faster (BENCHMARKS.md,
/// "Stream management, the allocator and the handshake pool").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    waxwing::cli::main()
}
