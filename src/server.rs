//! The running server: shared state (configuration, store, sessions,
//! certificates, throttles) and the start/stop of its listeners.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    pub config: Config,
    domains: HashSet<String>,
    pub store: Store,
    pub sessions: SessionRegistry,
    /// External components (XEP-0114): configured and connected.
    pub components: ComponentRegistry,
    pub certs: Arc<net::tls::CertStore>,
    /// TLS configuration of direct-TLS client listeners (certificate by SNI).
    pub tls: Arc<rustls::ServerConfig>,
    /// TLS configuration of STARTTLS on client streams, per addressed
    /// domain (its certificate when the client sends no SNI).
    starttls: std::collections::HashMap<String, Arc<rustls::ServerConfig>>,
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
    /// What serves each domain.
    routes: crate::routes::RouteTable,
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
    /// TLS client configuration of outgoing s2s streams, per sending
    /// domain (each presents that domain's certificate).
    s2s_tls: std::collections::HashMap<String, Arc<rustls::ClientConfig>>,
    /// TLS configuration of incoming s2s streams, per addressed domain
    /// (asks for a client certificate).
    s2s_tls_server: std::collections::HashMap<String, Arc<rustls::ServerConfig>>,
    /// TLS configuration of incoming direct-TLS s2s streams (XEP-0368).
    s2s_tls_direct: Arc<rustls::ServerConfig>,
    /// The roots peers' certificates are checked against.
    pub s2s_roots: Arc<rustls::RootCertStore>,
    /// The secret dialback keys are derived from (XEP-0185).
    pub dialback_secret: String,
    /// This server itself, for tasks it starts (outgoing s2s streams).
    me: std::sync::Weak<Server>,
    /// What `/metrics` reports, and the handles the server counts through.
    pub metrics: crate::metrics::Metrics,
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
        let routes = crate::routes::RouteTable::new(
            config.domains(),
            features.service_domains(&config),
            config.components().into_iter().map(|(d, _)| d),
            config.s2s.enabled(),
        )?;
        let mut certs = net::tls::CertStore::from_config(&config)?;
        certs.adopt(
            features
                .service_domains(&config)
                .into_iter()
                .map(|(d, _)| d),
        );
        let certs = Arc::new(certs);
        let tls = net::tls::server_config(certs.clone(), None, &config.tls)?;
        let window = Duration::from_secs(config.limits.auth_failure_window);
        let s2s_roots = net::tls::s2s_roots(&config.s2s.ca_file)?;
        let mut s2s_tls = std::collections::HashMap::new();
        let mut starttls = std::collections::HashMap::new();
        let mut s2s_tls_server = std::collections::HashMap::new();
        for domain in config.domains() {
            let c = net::tls::server_config(certs.clone(), Some(&domain), &config.tls)?;
            starttls.insert(domain, c);
        }
        // Component domains and in-process services (a chat service)
        // federate too (their stanzas to and from other servers go over
        // our s2s streams): each gets the certificate that names it, else
        // the fallback one.
        let components = config.components().into_iter().map(|(d, _)| d);
        let services = features
            .service_domains(&config)
            .into_iter()
            .map(|(d, _)| d);
        for domain in config
            .domains()
            .into_iter()
            .chain(components)
            .chain(services)
        {
            let c = net::tls::s2s_client_config(s2s_roots.clone(), &certs, &domain)?;
            s2s_tls.insert(domain.clone(), c);
            let c = net::tls::s2s_server_config(certs.clone(), &domain)?;
            s2s_tls_server.insert(domain, c);
        }
        let s2s_tls_direct = net::tls::s2s_direct_server_config(certs.clone())?;
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
            s2s_tls,
            s2s_tls_server,
            s2s_tls_direct,
            starttls,
            s2s_roots,
            dialback_secret,
            domains: config.domains().into_iter().collect(),
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
            config,
            store,
            sessions: SessionRegistry::default(),
            certs,
            tls,
            features,
            routes,
            iq_tracker: Default::default(),
            background: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            next_id: AtomicU64::new(1),
            started: std::time::Instant::now(),
        }))
    }

    /// The served domains, normalised.
    pub fn domains(&self) -> &HashSet<String> {
        &self.domains
    }

    /// What serves `domain` (normalised).
    pub fn route(&self, domain: &str) -> crate::routes::Route {
        self.routes.route(domain)
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
        self.s2s_tls.get(domain).cloned()
    }

    /// The TLS configuration for STARTTLS on a client stream whose header
    /// addressed `domain` (one of ours; otherwise the direct-TLS one).
    pub fn starttls_config(&self, domain: &str) -> Arc<rustls::ServerConfig> {
        self.starttls.get(domain).unwrap_or(&self.tls).clone()
    }

    /// The TLS configuration for STARTTLS on an incoming s2s stream whose
    /// header addressed `domain` (one of ours).
    pub fn s2s_starttls_config(&self, domain: &str) -> Option<Arc<rustls::ServerConfig>> {
        self.s2s_tls_server.get(domain).cloned()
    }

    /// The TLS configuration of incoming direct-TLS s2s streams.
    pub fn s2s_direct_tls_config(&self) -> Arc<rustls::ServerConfig> {
        self.s2s_tls_direct.clone()
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
        // First, so a second server on the same configuration stops here,
        // before it takes any port.
        let admin = match server.config.admin_socket() {
            None => None,
            Some(path) => match crate::admin::AdminSocket::bind(&server, &path, &tracker).await {
                Ok(a) => Some(a),
                // The default place may be unusable where no [admin]
                // socket was chosen (a read-only working directory with
                // PostgreSQL): serve without the channel rather than not
                // at all. A configured socket, or another server
                // answering, stops the start.
                Err(crate::admin::BindError::Failed(e))
                    if server.config.admin_socket_is_default() =>
                {
                    tracing::warn!("{e}; running without the admin channel (set [admin] socket)");
                    None
                }
                Err(e) => return Err(e.to_string()),
            },
        };
        // Before any listener: what features run in the background (the
        // archive writer) is there for the first stanza.
        server.features.start(&server);
        let mut c2s_addrs = Vec::new();
        let mut c2s_tls_addrs = Vec::new();
        for (addrs, direct_tls, out) in [
            (&server.config.c2s.listen, false, &mut c2s_addrs),
            (&server.config.c2s.listen_tls, true, &mut c2s_tls_addrs),
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
        for addr in &server.config.component_listener.listen {
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
            (&server.config.s2s.listen, false, &mut s2s_addrs),
            (&server.config.s2s.listen_tls, true, &mut s2s_tls_addrs),
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
        self.server.store.close().await;
    }
}
