//! `waxwing serve`: start the listeners, run until SIGTERM/SIGINT, then
//! close every stream with `system-shutdown`.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::server::{RunningServer, Server};

/// How long connections get to close after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub fn serve(config: Config, path: Option<std::path::PathBuf>) -> ExitCode {
    init_logging(&config.log_level);
    // Named so that `top -H`, perf and the scheduler's tracepoints tell the
    // server's workers from a load tool's on the same machine.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("waxwing-worker")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) =
        crate::net::handshakes::start(config.tls.handshake_threads, config.tls.handshake_nice)
    {
        eprintln!("cannot start the TLS handshake threads: {e}");
        return ExitCode::FAILURE;
    }
    rt.block_on(async {
        let server = match Server::new(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        server.set_config_path(path);
        let running = match RunningServer::start(server.clone()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "waxwing started");
        let reloads = tokio::spawn(reload_on_hangup(server.clone()));
        wait_for_signal().await;
        reloads.abort();
        running.shutdown(SHUTDOWN_GRACE).await;
        tracing::info!("waxwing stopped");
        ExitCode::SUCCESS
    })
}

/// SIGHUP: the configuration file is read again (`crate::reload`); a
/// file that does not load changes nothing and is logged.
async fn reload_on_hangup(server: std::sync::Arc<Server>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload with `waxwing ctl reload`");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the configuration");
        if let Err(e) = crate::reload::reload(&server).await {
            tracing::error!("reload refused, the running configuration stays: {e}");
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Logs to stderr; RUST_LOG, when set, overrides the configured level.
pub fn init_logging(level: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
