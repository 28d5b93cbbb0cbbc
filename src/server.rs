//! The running server: shared state (configuration, store, sessions,
//! certificates, throttles) and the start/stop of its listeners.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::components::ComponentRegistry;
use crate::config::Config;
use crate::net::{self, ConnectionLimits};
use crate::sessions::SessionRegistry;
use crate::storage::Store;
use crate::throttle::FailureWindow;

/// State shared by every connection.
pub struct Server {
    /// The configuration in force: replaced whole by a reload
    /// (`crate::reload`), read through `config()`.
    config: ArcSwap<Config>,
    /// Where the configuration was read from (reloads read it again).
    config_path: std::sync::Mutex<Option<std::path::PathBuf>>,
    /// The served hosts, normalised (a reload may add or remove some).
    domains: ArcSwap<HashSet<String>>,
    pub store: Store,
    pub sessions: SessionRegistry,
    /// External components (XEP-0114): configured and connected.
    pub components: ComponentRegistry,
    /// Every TLS configuration, with the certificates (replaced whole by
    /// a reload).
    tls: ArcSwap<net::tls_set::TlsSet>,
    /// SASL attempts per source (IPv4 address, IPv6 prefix).
    pub auth_failures_by_ip: FailureWindow<IpAddr>,
    /// SASL attempts per account and source: a budget for one source's
    /// guesses at one account that nobody else can spend (a global
    /// per-account count would let anyone lock the owner out).
    pub auth_failures_by_account: FailureWindow<(String, IpAddr)>,
    /// Failed component handshakes per source.
    pub component_failures_by_ip: FailureWindow<IpAddr>,
    /// Bounded password hashing (PLAIN, registration, password change).
    pub hashing: crate::hashing::HashingPool,
    /// Caps on client and component connections.
    pub connections: ConnectionLimits,
    /// Caps on incoming s2s connections.
    pub s2s_connections: ConnectionLimits,
    /// The features (plug-ins) and their event subscriptions.
    pub features: crate::feature::Features,
    /// What serves each domain (rebuilt by a reload).
    routes: ArcSwap<crate::routes::RouteTable>,
    /// IQs the server sent and waits on.
    pub iq_tracker: crate::iq_tracker::IqTracker,
    /// Tasks of features that must finish before the store closes at
    /// shutdown (parked sessions handing their messages to offline storage).
    pub background: TaskTracker,
    /// Cancelled to ask every connection to close with `system-shutdown`.
    pub shutdown: CancellationToken,
    next_id: AtomicU64,
    started: std::time::Instant,
    /// Outgoing server-to-server streams.
    pub s2s: net::s2s_out::S2sOut,
    /// Every live s2s connection, either way, as `ctl s2s list` shows it.
    pub s2s_links: Arc<net::s2s_links::S2sLinks>,
    /// The secret dialback keys are derived from (XEP-0185).
    pub dialback_secret: String,
    /// This server itself, for tasks it starts (outgoing s2s streams).
    me: std::sync::Weak<Server>,
    /// What `/metrics` reports, and the handles the server counts through.
    pub metrics: crate::metrics::Metrics,
    /// One reload at a time.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    /// This node's part in a cluster (`[cluster]`), set at start.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl Server {
    /// Opens the store and loads certificates.
    pub async fn new(config: Config) -> Result<Arc<Server>, String> {
        let store = Store::open_tuned(
            &config.database.url,
            config.database.max_connections,
            config.database.sqlite_tuning(),
        )
        .await
        .map_err(|e| e.to_string())?;
        Server::with_store(config, store)
    }

    /// Opens the store, with `extra` features after the default ones (an
    /// embedder's or a test's).
    pub async fn with_features(
        config: Config,
        extra: Vec<Arc<dyn crate::feature::Feature>>,
    ) -> Result<Arc<Server>, String> {
        let store = Store::open_tuned(
            &config.database.url,
            config.database.max_connections,
            config.database.sqlite_tuning(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut list = crate::modules::default_features();
        list.extend(extra);
        Server::build(config, store, list)
    }

    /// Builds the server around an already-open store.
    pub fn with_store(config: Config, store: Store) -> Result<Arc<Server>, String> {
        Server::build(config, store, crate::modules::default_features())
    }

    fn build(
        config: Config,
        store: Store,
        features: Vec<Arc<dyn crate::feature::Feature>>,
    ) -> Result<Arc<Server>, String> {
        let features = features
            .into_iter()
            .filter(|f| f.enabled(&config))
            .collect();
        let features = crate::feature::Features::new(features)?;
        let routes = Server::route_table(&config, &features)?;
        let tls = Server::tls_set(&config, &features)?;
        let window = Duration::from_secs(config.limits.auth_failure_window);
        let dialback_secret = if config.s2s.dialback_secret.is_empty() {
            use rand::Rng;
            let bytes: [u8; 32] = rand::thread_rng().gen();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        } else {
            config.s2s.dialback_secret.clone()
        };
        Ok(Arc::new_cyclic(|me| Server {
            me: me.clone(),
            s2s: Default::default(),
            s2s_links: Default::default(),
            tls: ArcSwap::from_pointee(tls),
            dialback_secret,
            domains: ArcSwap::from_pointee(config.domains().into_iter().collect()),
            auth_failures_by_ip: FailureWindow::new(config.limits.auth_failures_per_ip, window),
            auth_failures_by_account: FailureWindow::new(
                config.limits.auth_failures_per_account,
                window,
            ),
            component_failures_by_ip: FailureWindow::new(
                config.limits.component_failures_per_ip,
                window,
            ),
            hashing: crate::hashing::HashingPool::new(
                config.limits.hashing_workers,
                config.limits.hashing_queue,
            ),
            connections: ConnectionLimits::new(
                config.c2s.max_connections,
                config.c2s.max_connections_per_ip,
            ),
            s2s_connections: ConnectionLimits::new(
                config.s2s.max_connections,
                config.s2s.max_connections_per_ip,
            ),
            components: ComponentRegistry::new(config.components()),
            metrics: crate::metrics::Metrics::new(&config.metrics),
            config: ArcSwap::from_pointee(config),
            config_path: Default::default(),
            reloading: Default::default(),
            cluster: Default::default(),
            store,
            sessions: SessionRegistry::default(),
            features,
            routes: ArcSwap::from_pointee(routes),
            iq_tracker: Default::default(),
            background: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            next_id: AtomicU64::new(1),
            started: std::time::Instant::now(),
        }))
    }

    /// What serves each domain under `config`.
    pub(crate) fn route_table(
        config: &Config,
        features: &crate::feature::Features,
    ) -> Result<crate::routes::RouteTable, String> {
        crate::routes::RouteTable::new(
            config.domains(),
            features.service_domains(config),
            config.components().into_iter().map(|(d, _)| d),
            config.s2s.enabled(),
        )
    }

    /// Every TLS configuration under `config`.
    pub(crate) fn tls_set(
        config: &Config,
        features: &crate::feature::Features,
    ) -> Result<net::tls_set::TlsSet, String> {
        let services = features
            .service_domains(config)
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        net::tls_set::TlsSet::build(config, services)
    }

    /// The configuration in force. A snapshot: a reload replaces it for
    /// later calls, so take it again rather than keep it for long.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The configuration, for a look on a hot path: unlike [`config`]
    /// (a clone of the `Arc`, whose count every thread shares, so each
    /// call moves its cache line between cores), the guard touches no
    /// shared count. Not to be held for long: a reload waits for no one,
    /// but each thread has few guards to give before they cost a clone.
    ///
    /// [`config`]: Server::config
    pub fn config_now(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Where the configuration was read from (reloads read it again).
    pub fn config_path(&self) -> Option<std::path::PathBuf> {
        self.config_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records where the configuration was read from.
    pub fn set_config_path(&self, path: Option<std::path::PathBuf>) {
        *self.config_path.lock().unwrap_or_else(|e| e.into_inner()) = path;
    }

    /// Puts a reloaded configuration and what derives from it in force
    /// (`crate::reload` decides what may change and checks it first).
    pub(crate) fn install(
        &self,
        config: Config,
        routes: crate::routes::RouteTable,
        tls: net::tls_set::TlsSet,
    ) {
        self.domains
            .store(Arc::new(config.domains().into_iter().collect()));
        self.routes.store(Arc::new(routes));
        self.tls.store(Arc::new(tls));
        self.config.store(Arc::new(config));
    }

    /// The TLS configurations and certificates in force.
    pub fn tls(&self) -> Arc<net::tls_set::TlsSet> {
        self.tls.load_full()
    }

    /// The first configured host: what a stream's errors come from before
    /// its header names a domain.
    pub fn first_domain(&self) -> String {
        self.config().domains().first().cloned().unwrap_or_default()
    }

    /// The served domains, normalised.
    pub fn domains(&self) -> Arc<HashSet<String>> {
        self.domains.load_full()
    }

    /// What serves `domain` (normalised).
    pub fn route(&self, domain: &str) -> crate::routes::Route {
        self.routes.load().route(domain)
    }

    /// Is `domain` (normalised) one of our hosts?
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.route(domain) == crate::routes::Route::Host
    }

    /// Is `domain` one this server speaks for to other servers: a host, an
    /// in-process service's or an external component's domain?
    pub fn is_served_here(&self, domain: &str) -> bool {
        self.route(domain).served_here()
    }

    /// How long the server has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The TLS client configuration for s2s streams sent from `domain`.
    pub fn s2s_client_tls(&self, domain: &str) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.load().s2s_client(domain)
    }

    /// The TLS configuration for STARTTLS on an incoming s2s stream whose
    /// header addressed `domain` (one of ours).
    pub fn s2s_starttls_config(&self, domain: &str) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.load().s2s_starttls(domain)
    }

    /// The TLS configuration of incoming direct-TLS s2s streams.
    pub fn s2s_direct_tls_config(&self) -> Arc<rustls::ServerConfig> {
        self.tls.load().s2s_direct.clone()
    }

    /// A shared handle to this server (None only while it is being dropped).
    pub fn arc(&self) -> Option<Arc<Server>> {
        self.me.upgrade()
    }

    /// A process-unique number for a connection.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A started server: its bound addresses and the handle to stop it.
pub struct RunningServer {
    pub server: Arc<Server>,
    /// Bound STARTTLS listener addresses, in config order.
    pub c2s_addrs: Vec<SocketAddr>,
    /// Bound direct-TLS listener addresses, in config order.
    pub c2s_tls_addrs: Vec<SocketAddr>,
    /// Bound component (XEP-0114) listener addresses, in config order.
    pub component_addrs: Vec<SocketAddr>,
    /// Bound server-to-server listener addresses, in config order.
    pub s2s_addrs: Vec<SocketAddr>,
    /// Bound direct-TLS server-to-server listener addresses, in config order.
    pub s2s_tls_addrs: Vec<SocketAddr>,
    /// Bound HTTP and HTTPS listener addresses (`[http]`), in config order.
    pub web: crate::web::Bound,
    /// The admin channel's socket (`waxwing ctl`), when enabled.
    admin: Option<crate::admin::AdminSocket>,
    tracker: TaskTracker,
}

/// Binds one listener and logs where it listens.
async fn bind(addr: &SocketAddr, kind: &str) -> Result<(TcpListener, SocketAddr), String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(addr = %local, kind, "listening");
    Ok((listener, local))
}

impl RunningServer {
    /// Binds every listener and starts accepting.
    pub async fn start(server: Arc<Server>) -> Result<RunningServer, String> {
        let tracker = TaskTracker::new();
        let config = server.config();
        // First, so a second server on the same configuration stops here,
        // before it takes any port.
        let admin = match config.admin_socket() {
            None => None,
            Some(path) => match crate::admin::AdminSocket::bind(&server, &path, &tracker).await {
                Ok(a) => Some(a),
                // The default place may be unusable where no [admin]
                // socket was chosen (a read-only working directory with
                // PostgreSQL): serve without the channel rather than not
                // at all. A configured socket, or another server
                // answering, stops the start.
                Err(crate::admin::BindError::Failed(e)) if config.admin_socket_is_default() => {
                    tracing::warn!("{e}; running without the admin channel (set [admin] socket)");
                    None
                }
                Err(e) => return Err(e.to_string()),
            },
        };
        // Before any listener: what features run in the background (the
        // archive writer) is there for the first stanza.
        server.features.start(&server);
        // Before any listener too: the first session bound is announced,
        // and bare-JID routing sees the other nodes' sessions from the start.
        if let Some(cluster) = &config.cluster {
            let joined = crate::cluster::Cluster::join(&server, cluster).await?;
            let _ = server.cluster.set(joined);
        }
        let mut c2s_addrs = Vec::new();
        let mut c2s_tls_addrs = Vec::new();
        for (addrs, direct_tls, out) in [
            (&config.c2s.listen, false, &mut c2s_addrs),
            (&config.c2s.listen_tls, true, &mut c2s_tls_addrs),
        ] {
            for addr in addrs {
                let kind = if direct_tls {
                    "c2s direct TLS"
                } else {
                    "c2s STARTTLS"
                };
                let (listener, local) = bind(addr, kind).await?;
                out.push(local);
                tracker.spawn(net::accept_loop(
                    server.clone(),
                    listener,
                    direct_tls,
                    tracker.clone(),
                ));
            }
        }
        let mut component_addrs = Vec::new();
        for addr in &config.component_listener.listen {
            let (listener, local) = bind(addr, "component").await?;
            component_addrs.push(local);
            tracker.spawn(net::component_accept_loop(
                server.clone(),
                listener,
                tracker.clone(),
            ));
        }
        let mut s2s_addrs = Vec::new();
        let mut s2s_tls_addrs = Vec::new();
        for (addrs, direct_tls, out) in [
            (&config.s2s.listen, false, &mut s2s_addrs),
            (&config.s2s.listen_tls, true, &mut s2s_tls_addrs),
        ] {
            for addr in addrs {
                let kind = if direct_tls { "s2s direct TLS" } else { "s2s" };
                let (listener, local) = bind(addr, kind).await?;
                out.push(local);
                tracker.spawn(net::s2s_accept_loop(
                    server.clone(),
                    listener,
                    direct_tls,
                    tracker.clone(),
                ));
            }
        }
        let web = crate::web::start(&server, &tracker).await?;
        Ok(RunningServer {
            web,
            s2s_addrs,
            s2s_tls_addrs,
            server,
            c2s_addrs,
            c2s_tls_addrs,
            component_addrs,
            admin,
            tracker,
        })
    }

    /// The admin channel's socket path, when it is listening.
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin.as_ref().map(|a| a.path())
    }

    /// Closes every stream with `system-shutdown`, waits for connections to
    /// finish (at most `grace`), then closes the store.
    pub async fn shutdown(self, grace: Duration) {
        tracing::info!(sessions = self.server.sessions.count(), "shutting down");
        self.server.shutdown.cancel();
        // Bound client sessions hear it through their queues; one bound
        // after this line sees the cancelled token when its loop starts.
        (self.server.sessions).close_all(crate::stanza::StreamErrorCondition::SystemShutdown);
        if let Some(admin) = &self.admin {
            admin.remove();
        }
        self.tracker.close();
        self.server.background.close();
        let both = async {
            self.tracker.wait().await;
            self.server.background.wait().await;
        };
        if tokio::time::timeout(grace, both).await.is_err() {
            tracing::warn!("some connections did not close within {grace:?}");
        }
        // After the sessions ended (their unavailable presence sent), and
        // before the store closes (the inbox's leftovers may go offline).
        if let Some(cluster) = self.server.cluster.get() {
            cluster.leave(&self.server).await;
        }
        self.server.store.close().await;
    }
}
