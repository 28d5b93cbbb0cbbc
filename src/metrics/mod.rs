//! The server's metrics, in Prometheus/OpenMetrics form (issue #14),
//! served at `/metrics` by `web::metrics`.
//!
//! One [`Metrics`] per server (tests run several servers in one process,
//! so nothing here is global). Two kinds of figure:
//! - counted where things happen — stanzas in and out, logins, storage
//!   query times, c2s sessions by transport, the session-queue high-water
//!   mark — through handles resolved when the server starts, so the hot
//!   paths pay an index and a relaxed atomic add;
//! - read when scraped — s2s connections, sessions waiting for
//!   resumption, memory, uptime (from the same sources as `ctl stats`),
//!   and the stored-message counts (cached, see [`storage`]).

pub mod auth;
pub mod process;
pub mod stanzas;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use auth::{AuthCounters, Profile};
pub use stanzas::{StanzaCounters, StreamKind};
pub use storage::{StorageOp, StorageTimers};

use crate::config::MetricsConfig;
use crate::queue::Peak;
use crate::server::Server;

/// What `/metrics` answers with (prometheus-client's OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The transports a c2s session can run on, so their series exist (at 0)
/// before the first session of each.
const TRANSPORTS: [&str; 3] = ["tcp", "websocket", "bosh"];

type OneLabel = [(&'static str, &'static str); 1];

/// The registry and the handles the server counts through.
pub struct Metrics {
    registry: Registry,
    pub stanzas: StanzaCounters,
    pub auth: AuthCounters,
    pub storage: StorageTimers,
    /// The most any client session's queue has held; shared with every
    /// session queue (`queue::queue_with_peak`).
    pub queue_peak: Arc<Peak>,
    sessions: Family<OneLabel, Gauge>,
    stored: storage::StoredCounts,
    waiting_resumption: Gauge,
    s2s: [Gauge; 2],
    queue_peak_items: Gauge,
    queue_peak_bytes: Gauge,
    resident: Gauge,
    uptime: Gauge,
}

/// A c2s session counted as attached to a connection of one transport;
/// uncounted when dropped, however the session's connection ends.
pub struct AttachedSession(Gauge);

impl Drop for AttachedSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn new(config: &MetricsConfig) -> Metrics {
        let mut registry = Registry::default();
        let stanzas = StanzaCounters::register(&mut registry);
        let auth = AuthCounters::register(&mut registry);
        let storage = StorageTimers::register(&mut registry);
        let stored = storage::StoredCounts::register(
            &mut registry,
            Duration::from_secs(config.storage_refresh),
        );

        let sessions = Family::<OneLabel, Gauge>::default();
        for t in TRANSPORTS {
            drop(sessions.get_or_create(&[("transport", t)]));
        }
        registry.register(
            "waxwing_c2s_sessions",
            "Client sessions attached to a connection, by transport",
            sessions.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let waiting_resumption = gauge(
            &mut registry,
            "waxwing_c2s_sessions_waiting_resumption",
            "Client sessions whose connection dropped, kept for stream management resumption",
        );
        let s2s_family = Family::<OneLabel, Gauge>::default();
        let s2s = [
            s2s_family.get_or_create_owned(&[("direction", "in")]),
            s2s_family.get_or_create_owned(&[("direction", "out")]),
        ];
        registry.register(
            "waxwing_s2s_connections",
            "Live server-to-server connections by direction",
            s2s_family,
        );
        let queue_peak_items = gauge(
            &mut registry,
            "waxwing_c2s_queue_peak_items",
            "Most stanzas any client session's queue has held at once since start",
        );
        let queue_peak_bytes = gauge(
            &mut registry,
            "waxwing_c2s_queue_peak_bytes",
            "Most bytes (as the queue bound counts them: limits.session_queue_bytes) any client session's queue has held at once since start",
        );
        let resident = gauge(
            &mut registry,
            "waxwing_process_resident_memory_bytes",
            "Resident memory of the server process",
        );
        let uptime = gauge(
            &mut registry,
            "waxwing_uptime_seconds",
            "Seconds since the server started",
        );
        registry.register(
            "waxwing_build",
            "The server's version",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry,
            stanzas,
            auth,
            storage,
            queue_peak: Arc::new(Peak::default()),
            sessions,
            stored,
            waiting_resumption,
            s2s,
            queue_peak_items,
            queue_peak_bytes,
            resident,
            uptime,
        }
    }

    /// Counts a session as attached to a connection over `transport` until
    /// the returned guard is dropped (once per connection's session, so
    /// the label lookup is no per-stanza cost).
    pub fn session_attached(&self, transport: &'static str) -> AttachedSession {
        let g = self
            .sessions
            .get_or_create_owned(&[("transport", transport)]);
        g.inc();
        AttachedSession(g)
    }

    /// Sessions attached over `transport` now (tests, `ctl`).
    pub fn sessions_on(&self, transport: &'static str) -> i64 {
        self.sessions
            .get(&[("transport", transport)])
            .map_or(0, |g| g.get())
    }

    /// The figures read at scrape time, then everything as OpenMetrics
    /// text.
    pub async fn render(&self, server: &Server) -> String {
        self.stored.refresh(&server.store).await;
        let parked = server
            .features
            .get::<crate::modules::stream_management::StreamManagementFeature>()
            .map_or(0, |f| f.parked());
        self.waiting_resumption.set(saturating(parked as u64));
        let (inbound, outbound) = server.s2s_links.count_by_direction();
        self.s2s[0].set(saturating(inbound as u64));
        self.s2s[1].set(saturating(outbound as u64));
        self.queue_peak_items
            .set(saturating(self.queue_peak.items() as u64));
        self.queue_peak_bytes
            .set(saturating(self.queue_peak.bytes() as u64));
        if let Some(rss) = process::resident_bytes() {
            self.resident.set(saturating(rss));
        }
        self.uptime.set(saturating(server.uptime().as_secs()));
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
