//! TLS handshakes on threads of their own, at a lower scheduling priority
//! than the streams already open (`[tls] handshake_threads`,
//! `handshake_nice`).
//!
//! Why: a full handshake costs the server a certificate signature (an
//! RSA-2048 one is about 1.5 ms of CPU), a chat message a few microseconds.
//! When hundreds of clients reconnect at once (a network coming back, a
//! server restart, a flood of unauthenticated connections), their
//! handshakes ran on the same workers as every open stream, so a message
//! or a stream-management resumption waited behind a queue of signatures.
//! On their own runtime, niced, handshakes take only the CPU the open
//! streams leave: the established traffic stays fast during a storm and a
//! handshake flood cannot starve it, at the price of slower new
//! connections while the CPU is short.
//!
//! The socket stays registered with the main runtime's I/O driver (tokio
//! resources may be polled from any thread); only the handshake's polling,
//! and so its CPU, moves. The pool is process-wide and started once by
//! `waxwing serve`; a server embedded without it (the in-process test
//! harness) does its handshakes inline, as before.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

static POOL: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
/// Handshakes run on the pool (for tests and `ctl stats`-style checks).
static ON_POOL: AtomicU64 = AtomicU64::new(0);

/// Starts the handshake pool with `threads` worker threads at nice value
/// `nice` (0–19; 0 keeps them at the main runtime's priority). `threads`
/// 0 leaves handshakes inline. Only the first call has an effect.
pub fn start(threads: usize, nice: i32) -> io::Result<()> {
    if threads == 0 || POOL.get().is_some() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("waxwing-handshake")
        .on_thread_start(move || lower_priority(nice))
        .enable_all()
        .build()?;
    // A runtime must not be dropped inside another one's context; kept in
    // a static, it never is.
    let _ = POOL.set(rt);
    Ok(())
}

/// Lowers the calling thread's scheduling priority. On Linux `nice` is a
/// per-thread value, so `setpriority` on the thread's own id touches only
/// this thread.
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    // SAFETY: plain syscalls on the calling thread's own id.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice.min(19))
    };
    if rc != 0 {
        tracing::warn!(
            error = %io::Error::last_os_error(),
            "cannot lower the handshake threads' priority; they run at the normal one"
        );
    }
}

/// How many server-side handshakes ran on the pool since start.
pub fn completed_on_pool() -> u64 {
    ON_POOL.load(Ordering::Relaxed)
}

/// The server side of a TLS handshake over `tcp`: on the pool when it runs,
/// inline otherwise. Dropping the returned future (a login timeout, the
/// connection's task aborted at shutdown) aborts a handshake on the pool.
pub async fn accept(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let Some(pool) = POOL.get() else {
        return acceptor.accept(tcp).await;
    };
    let task = tokio_util::task::AbortOnDropHandle::new(pool.spawn(async move {
        let r = acceptor.accept(tcp).await;
        ON_POOL.fetch_add(1, Ordering::Relaxed);
        r
    }));
    match task.await {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(format!("TLS handshake task: {e}"))),
    }
}
