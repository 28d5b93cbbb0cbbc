//! The `waxwing` binary: everything lives in the library; see `cli`.

/// The server allocates with jemalloc (the default feature `jemalloc`).
/// glibc's malloc makes a stanza freed on another worker thread than the one
/// that allocated it wait for the allocating thread's arena lock, and group
/// chat does that for every recipient: with jemalloc a group chat delivery
/// costs about a third less CPU and chat about a fifth less. It used to
/// cost ~1 KiB more per idle session; since an idle session's task was
/// halved the two allocators measure the same per idle session (BENCHMARKS.md,
/// "jemalloc by default"). `--no-default-features` builds with the system's
/// allocator.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    waxwing::cli::main()
}
