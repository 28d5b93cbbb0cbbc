//! The TOML configuration: its typed form, its defaults, and a validator that
//! reports every problem in a file at once, each with its line.
//!
//! Validation walks the parsed document against a schema (`SCHEMA`) before
//! serde sees it, so an operator fixing a file gets the whole list in one run
//! instead of one error per attempt. Every option and its default is shown in
//! `waxwing.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml_edit::{ImDocument, Item, Table, Value};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub log_level: String,
    pub host: Vec<HostConfig>,
    pub database: DatabaseConfig,
    pub tls: TlsConfig,
    pub c2s: C2sConfig,
    pub limits: Limits,
    pub contact: ContactAddresses,
    /// External components (XEP-0114), one `[[component]]` each.
    pub component: Vec<ComponentConfig>,
    pub component_listener: ComponentListener,
    /// Server-to-server federation; off unless `listen` or `listen_tls`
    /// names an address.
    pub s2s: S2sConfig,
    /// The local administration channel of `waxwing ctl`.
    pub admin: AdminConfig,
    /// Stream management (XEP-0198) on client streams.
    pub stream_management: StreamManagementConfig,
    /// Client state indication (XEP-0352).
    pub csi: CsiConfig,
    /// Push notifications (XEP-0357).
    pub push: PushConfig,
    /// SASL2 logins (XEP-0388), FAST tokens (XEP-0484) and the clients an
    /// account logged in with (XEP-0494).
    pub sasl2: Sasl2Config,
    /// Publish-subscribe (XEP-0060) and personal eventing (XEP-0163).
    pub pep: PepConfig,
    /// Message archive management (XEP-0313).
    pub mam: MamConfig,
    /// Multi-user chat (XEP-0045): the `conference.<host>` services.
    pub muc: MucConfig,
    /// The HTTP listener: XMPP over WebSocket (RFC 7395) and connection
    /// discovery (XEP-0156).
    pub http: HttpConfig,
    /// STUN and TURN servers offered to clients (XEP-0215), for calls.
    pub external_service: Vec<ExternalServiceConfig>,
    /// HTTP File Upload (XEP-0363) on the `[http]` listener.
    pub upload: UploadConfig,
    /// Prometheus metrics at `/metrics` on the `[http]` listener.
    pub metrics: MetricsConfig,
    /// Invitations created by users with XEP-0401's ad-hoc commands.
    pub invite: InviteConfig,
    /// Several nodes serving the same domains (`crate::cluster`); off
    /// when the section is absent.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: this node's place among the nodes that share the
/// PostgreSQL store and a Redis server (liveness, session directory, bus).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster: 1 to 32 of `a-z 0-9 -`.
    pub node_id: String,
    /// The Redis server (`redis://host:port/db`).
    pub redis: String,
    /// Prefix of every Redis key and channel, so several clusters (or
    /// tests) can share one Redis. Default "waxwing".
    pub key_prefix: String,
    /// How long a node counts as alive after its last liveness refresh,
    /// in milliseconds (refreshed every third of it). Default 10,000:
    /// a dead node's users look offline to their contacts within it, and
    /// a node that could not refresh for that long closes its sessions
    /// (self-fencing).
    pub liveness_ttl_ms: u64,
    /// Most stanzas waiting in this node's inbox stream, and in its queue
    /// towards other nodes' inboxes; beyond that a sender gets
    /// `resource-constraint` rather than Redis growing. Default 100,000.
    pub inbox_max: usize,
    /// Most bytes of stanzas waiting to be appended to other nodes'
    /// inboxes (Redis slow or away); beyond that a sender gets
    /// `resource-constraint`. Default 64 MiB.
    pub outbox_max_bytes: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            redis: "redis://127.0.0.1:6379".into(),
            key_prefix: "waxwing".into(),
            liveness_ttl_ms: 10_000,
            inbox_max: 100_000,
            outbox_max_bytes: 64 << 20,
        }
    }
}

/// Invitations users create from their client (XEP-0401 ad-hoc commands
/// `urn:xmpp:invite#invite` and `#create-account`); `waxwing ctl invite`
/// is the operator's and not bound by these.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InviteConfig {
    /// Who may create account invitations (`#create-account`): "admins"
    /// (`[admin] admins`, the default) or "users" (every local user).
    pub account_invites: String,
    /// Whether a user's contact invitation (`#invite`) also lets the
    /// invitee create an account here (`ibr=y`), even where open
    /// registration is off. Default false: contact only.
    pub user_invites_create_accounts: bool,
    /// Most invitations one user may have live (unused and unexpired) at
    /// once; administrators are not counted. Default 10.
    pub max_live_per_user: u32,
    /// How long an invitation created by a command stays valid, in
    /// seconds. Default 7 days.
    pub expiry: u64,
}

impl Default for InviteConfig {
    fn default() -> Self {
        InviteConfig {
            account_invites: "admins".into(),
            user_invites_create_accounts: false,
            max_live_per_user: 10,
            expiry: 7 * 86_400,
        }
    }
}

/// Prometheus metrics (`src/metrics/`, `web::metrics`): served at
/// `/metrics` on the `[http]` listener when it runs, to whom `allow` says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Who may scrape: "loopback" (peers on 127.0.0.0/8 or ::1), "token"
    /// (`Authorization: Bearer <token>` from anywhere) or
    /// "loopback_or_token".
    pub allow: String,
    /// The bearer token for "token" and "loopback_or_token" (at least 16
    /// characters).
    pub token: String,
    /// Seconds the stored-message counts (offline, archive) are reused
    /// before a scrape counts them again.
    pub storage_refresh: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            allow: "loopback".into(),
            token: String::new(),
            storage_refresh: 60,
        }
    }
}

/// HTTP File Upload (XEP-0363): the `upload.<host>` services and what
/// they may store. On where the `[http]` listener is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    pub enabled: bool,
    /// The service's domain is `<subdomain>.<host>`.
    pub subdomain: String,
    /// Where files are kept (created at start), named by their slot's token.
    pub dir: String,
    /// Largest file, in bytes.
    pub max_file_size: u64,
    /// Bytes one user may have stored (open slots count).
    pub quota_per_user: u64,
    /// Days a file is kept.
    pub expire_days: u64,
    /// Seconds a PUT URL stays valid.
    pub slot_lifetime: u64,
    /// Seconds between clean-ups.
    pub cleanup_interval: u64,
    /// Slot requests waiting for the service.
    pub queue: usize,
    /// At start, fetch a URL under the upload prefix the way clients will
    /// and log (and show in `ctl stats`) whether it reaches this server.
    pub self_check: bool,
    /// Seconds the self-check keeps trying before it reports a failure
    /// (0: one attempt).
    pub self_check_for: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            enabled: true,
            subdomain: "upload".into(),
            dir: "uploads".into(),
            max_file_size: 100 * 1024 * 1024,
            quota_per_user: 1024 * 1024 * 1024,
            expire_days: 30,
            slot_lifetime: 300,
            cleanup_interval: 3600,
            queue: 1024,
            self_check: true,
            self_check_for: 60,
        }
    }
}

/// One STUN/TURN server clients learn of through external service
/// discovery (XEP-0215), with short-lived TURN credentials derived from a
/// secret shared with it (the TURN REST scheme: coturn's
/// `use-auth-secret` / `static-auth-secret`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalServiceConfig {
    /// "stun", "stuns", "turn" or "turns".
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    pub port: u16,
    /// "udp" or "tcp".
    pub transport: String,
    /// A label for people.
    pub name: String,
    /// The TURN server's shared secret; empty: no credentials are handed out.
    pub secret: String,
    /// Seconds the credentials handed out stay valid.
    pub credential_lifetime: u64,
}

impl Default for ExternalServiceConfig {
    fn default() -> Self {
        ExternalServiceConfig {
            kind: "turn".into(),
            host: String::new(),
            port: 3478,
            transport: "udp".into(),
            name: String::new(),
            secret: String::new(),
            credential_lifetime: 86_400,
        }
    }
}

/// The HTTP(S) listener (`src/web/`). Off unless given addresses: the
/// usual ports are 5280 (plain HTTP, for loopback or behind a reverse
/// proxy) and 5443 (HTTPS with the hosts' certificates, by SNI).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Plain HTTP listeners.
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners.
    pub listen_tls: Vec<SocketAddr>,
    /// Whether XMPP over plain HTTP (WebSocket, BOSH) counts as encrypted:
    /// "loopback" (from 127.0.0.0/8 or ::1 only: a reverse proxy on the
    /// same machine that terminated TLS), "always" (a proxy elsewhere),
    /// "never". What is not encrypted is refused authentication.
    pub plain_is_secure: String,
    /// The URL clients reach this listener at, for connection discovery
    /// (e.g. "https://chat.example.org"); empty: from each request's Host
    /// header and the listener's scheme.
    pub public_url: String,
    /// Most HTTP connections open at once (each WebSocket session also
    /// counts against the `[c2s]` caps, as a TCP session does).
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's headers.
    pub header_timeout: u64,
    /// Most bytes of request headers (at least 8,192).
    pub max_header_bytes: usize,
    /// BOSH (`/http-bind`): most bytes of one request body; 0: the
    /// `[limits] max_stanza_size` plus 8 KiB for the wrapper.
    pub bosh_max_body_bytes: usize,
    /// BOSH: longest a request is held waiting for something to carry
    /// (seconds; a client asking more gets this).
    pub bosh_max_wait: u64,
    /// BOSH: most requests held open at once per session.
    pub bosh_max_hold: usize,
    /// BOSH: most requests in flight per session (the `rid` window and the
    /// responses kept for retransmission); hold + 1 within this.
    pub bosh_max_requests: usize,
    /// BOSH: seconds with no request held before the session counts as
    /// gone (as a dropped TCP connection).
    pub bosh_inactivity: u64,
    /// BOSH: longest pause (seconds) a client may ask for.
    pub bosh_max_pause: u64,
    /// BOSH: shortest interval (seconds) between empty polls of a
    /// session that holds no request (hold = 0).
    pub bosh_polling: u64,
    /// BOSH: most bytes of output buffered for a session while no request
    /// is held; more waits in the session queue.
    pub bosh_buffer_bytes: usize,
    /// A directory served at `/chat/` (a web client such as Converse.js);
    /// its HTML pages get `{{websocket_url}}`, `{{bosh_url}}` and
    /// `{{domain}}` filled in. Empty: no `/chat/`.
    pub chat_dir: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            // On loopback, as the client listeners are by default: a web
            // client on this machine works out of the box, and serving
            // others is a choice made in the file.
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5280))],
            listen_tls: vec![SocketAddr::from(([127, 0, 0, 1], 5443))],
            plain_is_secure: "loopback".into(),
            public_url: String::new(),
            max_connections: 10_000,
            header_timeout: 10,
            max_header_bytes: 16 * 1024,
            bosh_max_body_bytes: 0,
            bosh_max_wait: 60,
            bosh_max_hold: 1,
            bosh_max_requests: 2,
            bosh_inactivity: 60,
            bosh_max_pause: 120,
            bosh_polling: 2,
            bosh_buffer_bytes: 512 * 1024,
            chat_dir: String::new(),
        }
    }
}

/// Multi-user chat (XEP-0045): where the service lives, who may create
/// rooms, and every bound on what rooms and occupants may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucConfig {
    /// Run a chat service for each host.
    pub enabled: bool,
    /// The service's domain is `<subdomain>.<host>`.
    pub subdomain: String,
    /// Who may create rooms: "anyone" (remote users too), "local"
    /// (accounts of this server's hosts), "admins" (the JIDs of `admins`)
    /// or "list" (those of `creators`, and the admins).
    pub create: String,
    /// The service's administrators (bare JIDs): they may always create rooms.
    pub admins: Vec<String>,
    /// Who may create rooms under `create = "list"` (bare JIDs).
    pub creators: Vec<String>,
    /// IQs relayed to occupants (XEP-0045 §7.? IQ to an occupant) awaiting
    /// their answer, per room; beyond → resource-constraint.
    pub max_relayed_iqs: usize,
    /// Seconds a relayed IQ waits for its answer before it is forgotten.
    pub relayed_iq_timeout: u64,
    /// Most XEP-0317 hats (user and hat pairs) one room holds.
    pub max_hats: usize,
    /// Stanzas waiting for the service's task; beyond → resource-constraint.
    pub queue: usize,
    /// Most rooms one service holds (persistent and temporary).
    pub max_rooms: usize,
    /// Most occupants (nicknames) of one room, whatever its `maxusers`. A
    /// joiner's occupant list is streamed as it reads, so this is bounded
    /// by memory (see ARCHITECTURE.md's resource budget), not by the
    /// session queue.
    pub max_occupants: usize,
    /// A new room's `maxusers`.
    pub default_max_users: usize,
    /// Most rooms one user (bare JID) is in at once on one service.
    pub max_rooms_per_user: usize,
    /// Most affiliations (owners, admins, members, outcasts) of one room.
    pub max_affiliations: usize,
    /// Longest nickname, in characters.
    pub max_nick_length: usize,
    /// Largest subject, in bytes.
    pub max_subject_bytes: usize,
    /// Largest room name, description or password, in bytes.
    pub max_field_bytes: usize,
    /// A new room's history length (messages kept for joiners).
    pub default_history: usize,
    /// The most history one room may keep, whatever its configuration.
    pub max_history: usize,
    /// The most bytes of history one room keeps (oldest dropped first).
    pub max_history_bytes: usize,
    /// Keep every room's group chat in the archive (XEP-0313 on the room
    /// JID; retention as `[mam] retention_days`).
    pub archive: bool,
    /// Largest room vCard (XEP-0486 room avatar), serialized, in bytes.
    pub max_avatar_bytes: usize,
    /// Most rooms in one page of the service's room list (disco#items
    /// with RSM, XEP-0059); also the page a client gets without asking.
    pub max_room_list_page: usize,
}

impl Default for MucConfig {
    fn default() -> Self {
        MucConfig {
            enabled: true,
            subdomain: "conference".into(),
            create: "local".into(),
            admins: Vec::new(),
            creators: Vec::new(),
            max_relayed_iqs: 64,
            relayed_iq_timeout: 60,
            max_hats: 100,
            queue: 8192,
            max_rooms: 10_000,
            max_occupants: 10_000,
            default_max_users: 200,
            max_rooms_per_user: 100,
            max_affiliations: 10_000,
            max_nick_length: 64,
            max_subject_bytes: 4096,
            max_field_bytes: 1024,
            default_history: 20,
            max_history: 100,
            max_history_bytes: 262_144,
            archive: true,
            max_avatar_bytes: 65_536,
            max_room_list_page: 100,
        }
    }
}

/// Push notifications (XEP-0357): what one account may register, and what
/// and how often we publish to its app servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Offer push notifications (the account's disco feature and the
    /// enable/disable IQs; publishing to registrations already stored).
    pub enabled: bool,
    /// Most app servers (JID and node) one account may register.
    pub max_registrations: u32,
    /// Put the message body in notifications (`last-message-body`). Off by
    /// default: the body would travel through the app server and the
    /// platform's push service.
    pub include_body: bool,
    /// Longest body sent when `include_body` is on, in bytes (cut at a
    /// character boundary).
    pub max_body_bytes: usize,
    /// Seconds between two notifications to one registration; messages in
    /// between are counted into the next one.
    pub min_interval: u64,
    /// Seconds to wait for an app server's answer.
    pub timeout: u64,
    /// Error answers in a row from an app server before its registration
    /// is removed (transient errors and timeouts do not count).
    pub max_errors: u32,
    /// Most accounts with notifications counted or under way at once;
    /// beyond it new notifications are dropped (and logged).
    pub max_pending_accounts: usize,
    /// Longest app server node name, in bytes.
    pub max_node_length: usize,
    /// Largest publish-options form, serialized, in bytes.
    pub max_options_bytes: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: true,
            max_registrations: 5,
            include_body: false,
            max_body_bytes: 256,
            min_interval: 5,
            timeout: 30,
            max_errors: 1,
            max_pending_accounts: 10_000,
            max_node_length: 256,
            max_options_bytes: 2048,
        }
    }
}

/// SASL2 (XEP-0388) with Bind 2 (XEP-0386), FAST tokens (XEP-0484), and the
/// client list users and operators see (XEP-0494).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sasl2Config {
    /// Offer SASL2 beside legacy SASL.
    pub enabled: bool,
    /// Offer FAST tokens.
    pub fast: bool,
    /// How long a FAST token is valid, in seconds. Default 14 days.
    pub token_lifetime: u64,
    /// A token used with this long or less left before it expires is
    /// replaced by a new one in the success, in seconds. Default 7 days;
    /// 0: tokens are only replaced when the client asks.
    pub token_rotate_before_expiry: u64,
    /// Most clients remembered per account; one more forgets the least
    /// recently seen (and its token). Default 32.
    pub max_clients_per_account: usize,
    /// Offer XEP-0480 upgrade tasks (over TLS only): a client that logged
    /// in with a password gives the SCRAM keys its account lacks.
    pub upgrade_tasks: bool,
}

impl Default for Sasl2Config {
    fn default() -> Self {
        Sasl2Config {
            enabled: true,
            fast: true,
            token_lifetime: 14 * 86_400,
            token_rotate_before_expiry: 7 * 86_400,
            max_clients_per_account: 32,
            upgrade_tasks: true,
        }
    }
}

/// Publish-subscribe nodes on every account (PEP, XEP-0163): what one
/// account can make the server keep and compute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PepConfig {
    /// Offer PEP on accounts.
    pub enabled: bool,
    /// Most nodes one account may own.
    pub max_nodes: u32,
    /// Most items one node keeps (`pubsub#max_items` = `max` means this).
    pub max_items: u32,
    /// Largest item payload accepted, in bytes of XML.
    pub max_item_bytes: usize,
    /// Most items one `<items/>` answer carries.
    pub max_items_page: u32,
    /// Entity capabilities (XEP-0115) remembered, by verification string.
    pub caps_cache: usize,
    /// Seconds to wait for a client's disco#info answer about its caps.
    pub caps_query_timeout: u64,
    /// Most explicit subscriptions (and affiliations) on one node.
    pub max_subscribers: u32,
    /// Most resources (local and remote) whose capabilities are remembered.
    pub max_caps_resources: usize,
    /// Most disco#info queries about unknown capabilities waiting at once.
    pub max_caps_queries: usize,
}

impl Default for PepConfig {
    fn default() -> Self {
        PepConfig {
            enabled: true,
            max_nodes: 100,
            max_items: 256,
            max_item_bytes: 100_000,
            max_items_page: 100,
            caps_cache: 5_000,
            caps_query_timeout: 10,
            max_subscribers: 1_000,
            max_caps_resources: 100_000,
            max_caps_queries: 100,
        }
    }
}

/// Message archive management (XEP-0313): what is kept, for how long, and
/// what one query or one user may cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MamConfig {
    /// Archive messages and answer queries.
    pub enabled: bool,
    /// What a user who set no preferences gets archived: "always",
    /// "roster" (only conversations with roster contacts) or "never".
    pub default: String,
    /// Days a message is kept; 0 keeps it until the user or `ctl` removes it.
    pub retention_days: u64,
    /// Most messages kept per user; the oldest beyond it are removed by
    /// the periodic clean-up. 0: no cap.
    pub max_messages_per_user: u64,
    /// Seconds between clean-ups (retention and the per-user cap).
    pub cleanup_interval: u64,
    /// Results of one query page when the client asks for no number.
    pub default_page: u32,
    /// Most results of one query page, whatever the client asks.
    pub max_page: u32,
    /// Most ids in one query's `ids` field.
    pub max_ids: usize,
    /// Largest RSM `<index/>` a query may jump to (XEP-0059 §2.5): the
    /// archive is read up to it, so beyond it the answer is
    /// feature-not-implemented (paging by id costs nothing extra).
    pub max_index: u32,
    /// Most JIDs in each of a user's `always` and `never` lists.
    pub max_pref_jids: usize,
    /// Messages waiting for the archive writer; when full, the senders
    /// whose messages are archived wait (their stream is not read meanwhile).
    pub queue: usize,
    /// Bytes of rows waiting for the archive writer (besides `queue`); a
    /// message larger than this still goes in alone.
    pub queue_bytes: usize,
    /// Most archive rows written in one transaction (a message is one or
    /// two rows).
    pub batch: usize,
    /// Page cache of the archive writer's own SQLite connection, in KiB.
    pub writer_cache_kib: u64,
    /// On SQLite: WAL pages after which a thread of its own checkpoints
    /// the WAL into the database (the writer checkpoints itself past four
    /// times this, so the WAL stays bounded). 0: SQLite's own automatic
    /// checkpoint, on the writer's thread.
    pub checkpoint_pages: u32,
}

impl Default for MamConfig {
    fn default() -> Self {
        MamConfig {
            enabled: true,
            default: "always".into(),
            retention_days: 365,
            max_messages_per_user: 100_000,
            cleanup_interval: 3_600,
            default_page: 50,
            max_page: 250,
            max_ids: 50,
            max_index: 1_000,
            max_pref_jids: 1_000,
            queue: 32_768,
            queue_bytes: 64 << 20,
            batch: 65_536,
            writer_cache_kib: 32_768,
            checkpoint_pages: 8_192,
        }
    }
}

/// Client state indication (XEP-0352): what an inactive client is spared.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsiConfig {
    /// Most stanzas (presence updates, chat states) held back for one
    /// inactive client; reaching it sends them all. 0: nothing is held.
    pub max_held: usize,
}

impl Default for CsiConfig {
    fn default() -> Self {
        CsiConfig { max_held: 100 }
    }
}

/// Stream management (XEP-0198): acknowledgements, and sessions that
/// outlive their connection until the client resumes them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamManagementConfig {
    /// Offer stream management to clients.
    pub enabled: bool,
    /// Longest a session whose connection dropped waits for its client to
    /// resume, in seconds (a client may ask for less). Default 600; mobile
    /// clients (Monal) do best with an hour or more; at most a day.
    pub max_resume: u64,
    /// `host:port` clients should resume at, when it differs from where
    /// they connected (several nodes behind one name); empty: none given.
    pub location: String,
    /// Most stanzas written to a client and not acknowledged; a client
    /// that lets more pile up has its stream closed (its session waits
    /// for resumption as after a drop). Default 1,000.
    pub max_unacked: usize,
    /// Most sessions of one account waiting for resumption at once; one
    /// more ends the oldest. Default 10.
    pub max_parked_per_account: usize,
}

impl Default for StreamManagementConfig {
    fn default() -> Self {
        StreamManagementConfig {
            enabled: true,
            max_resume: 600,
            location: String::new(),
            max_unacked: 1000,
            max_parked_per_account: 10,
        }
    }
}

/// The Unix socket `waxwing ctl` asks a running server through (listing
/// sessions, components, s2s connections, counters).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Path of the socket. None (unset): `waxwing.sock` beside the SQLite
    /// database, or in `./data`; empty: no admin channel. Resolved by
    /// `Config::admin_socket`.
    pub socket: Option<String>,
    /// Bare JIDs that may run the XEP-0133 administration commands
    /// (ad-hoc commands on the server's domain).
    pub admins: Vec<String>,
    /// Multi-stage ad-hoc command sessions one client resource may hold
    /// open at once (XEP-0050 `sessionid`s); more are refused.
    pub max_command_sessions: usize,
    /// Seconds an unfinished ad-hoc command session is kept.
    pub command_session_timeout_secs: u64,
    /// Longest announcement or message of the day an admin may send (bytes).
    pub max_announcement_bytes: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: None,
            admins: Vec::new(),
            max_command_sessions: 5,
            command_session_timeout_secs: 600,
            max_announcement_bytes: 4096,
        }
    }
}

/// Server-to-server streams (RFC 6120, XEP-0220 dialback, XEP-0368 direct
/// TLS). Empty `listen` and `listen_tls` disable federation: other domains stay unreachable
/// (`remote-server-not-found`) and nothing connects out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2sConfig {
    pub listen: Vec<SocketAddr>,
    /// Direct-TLS listeners (XEP-0368): TLS from the first byte, the
    /// certificate chosen by SNI.
    pub listen_tls: Vec<SocketAddr>,
    /// DNS servers ("ip:port", UDP and TCP) for SRV and address lookups
    /// instead of resolv.conf's (the hosts file is read either way).
    pub nameservers: Vec<SocketAddr>,
    /// Refuse to authenticate or exchange stanzas without TLS, both ways.
    pub require_encryption: bool,
    /// Offer and use SASL EXTERNAL (XEP-0178) when certificates allow;
    /// false: dialback only.
    pub sasl_external: bool,
    /// Offer and use bidirectional s2s streams (XEP-0288).
    pub bidi: bool,
    /// Secret the dialback keys are derived from (XEP-0185); empty means a
    /// random one per start.
    pub dialback_secret: String,
    /// Extra trusted CA certificates (PEM) for peers' certificates.
    pub ca_file: String,
    /// Seconds to resolve, connect and authenticate an outgoing stream.
    pub connect_timeout: u64,
    /// Seconds of silence after which an s2s stream is closed.
    pub idle_timeout: u64,
    /// Stanzas waiting per remote domain while its stream is being made.
    pub max_queue: usize,
    /// Incoming s2s connections at once, in all and per remote IP (a cap
    /// of their own: peer servers never take the clients' places).
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Remote domain → "host:port" (STARTTLS) or "tls://host:port" (direct
    /// TLS, XEP-0368), used instead of DNS.
    pub hosts: std::collections::BTreeMap<String, String>,
    // network: caps on what a peer can make us hold or open
    /// Bytes of stanzas waiting per domain pair (besides `max_queue`);
    /// beyond it stanzas bounce with `resource-constraint`.
    pub max_queue_bytes: usize,
    /// Seconds an incoming stream may take to authenticate a first domain
    /// (SASL EXTERNAL or dialback); whitespace keepalives do not extend it.
    /// Then it closes with `connection-timeout`.
    pub auth_timeout: u64,
    /// Outgoing streams at once (one per domain pair); beyond it stanzas
    /// for a new pair bounce with `resource-constraint`.
    pub max_outgoing: usize,
    /// Dialback verifications (each an outgoing connection to the
    /// originating domain's server) running at once, in all, per peer IP
    /// that asked for them, and per originating domain; beyond them the
    /// `db:result` gets a `resource-constraint` dialback error.
    pub max_verifications: usize,
    pub max_verifications_per_ip: usize,
    pub max_verifications_per_domain: usize,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            listen: Vec::new(),
            listen_tls: Vec::new(),
            nameservers: Vec::new(),
            require_encryption: true,
            sasl_external: true,
            bidi: true,
            dialback_secret: String::new(),
            ca_file: String::new(),
            connect_timeout: 30,
            idle_timeout: 600,
            max_queue: 1000,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            hosts: Default::default(),
            // network
            max_queue_bytes: 4 << 20,
            auth_timeout: 60,
            max_outgoing: 10_000,
            max_verifications: 256,
            max_verifications_per_ip: 32,
            max_verifications_per_domain: 8,
        }
    }
}

impl S2sConfig {
    /// Is federation switched on?
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.listen_tls.is_empty()
    }
}

/// An external component (XEP-0114): a bot or gateway that connects to
/// the server and serves every address of its own domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    pub domain: String,
    /// Shared secret of the handshake.
    pub secret: String,
}

/// Where components connect. No address (the default) means disabled: the
/// port speaks an unencrypted, password-only protocol and should stay on
/// loopback or a private network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentListener {
    pub listen: Vec<SocketAddr>,
    pub login_timeout: u64,
    pub idle_timeout: u64,
}

impl Default for ComponentListener {
    fn default() -> Self {
        ComponentListener {
            listen: Vec::new(),
            login_timeout: 60,
            // Components may be quiet for long; whitespace keepalives count.
            idle_timeout: 900,
        }
    }
}

/// One served domain (virtual host).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub domain: String,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Lets clients create accounts in-band (XEP-0077) before logging in.
    #[serde(default)]
    pub allow_registration: bool,
}

/// The server's contact addresses (XEP-0157), each a list of URIs such as
/// `mailto:` or `xmpp:`, published in the server's disco#info.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContactAddresses {
    pub abuse: Vec<String>,
    pub admin: Vec<String>,
    pub feedback: Vec<String>,
    pub sales: Vec<String>,
    pub security: Vec<String>,
    pub status: Vec<String>,
    pub support: Vec<String>,
}

impl ContactAddresses {
    /// Each XEP-0157 form field name with its configured addresses, in the
    /// XEP's order.
    pub fn fields(&self) -> [(&'static str, &[String]); 7] {
        [
            ("abuse-addresses", &self.abuse),
            ("admin-addresses", &self.admin),
            ("feedback-addresses", &self.feedback),
            ("sales-addresses", &self.sales),
            ("security-addresses", &self.security),
            ("status-addresses", &self.status),
            ("support-addresses", &self.support),
        ]
    }
}

/// Where accounts and data live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// SQLite's `synchronous` in WAL mode: "normal" (a commit is written
    /// to the WAL file but not synced: safe against a crash of the
    /// process, not against power loss or an OS crash, which can lose the
    /// last commits) or "full" (every commit synced). PostgreSQL ignores it.
    pub sqlite_synchronous: String,
}

/// The fallback certificate, or where a development one is generated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: String,
    pub key: String,
    pub dev_cert_dir: PathBuf,
    /// TLS 1.3 session resumption on client streams with stateless tickets
    /// (rustls's ring `Ticketer`: the session is sealed into the ticket under
    /// a key rotated every 6 hours, so the server keeps nothing per client).
    /// Default true. A resumed handshake skips the certificate signature,
    /// the largest CPU cost of a reconnect.
    pub session_tickets: bool,
    /// Sessions the server remembers per client TLS configuration (one for
    /// direct TLS, one per host for STARTTLS) for resumption without a
    /// ticket: TLS 1.2 session ids, and TLS 1.3 when `session_tickets` is
    /// off. About 300 bytes each; the oldest is dropped when full. Default
    /// 1,024; 0 turns it off.
    pub session_cache: usize,
    /// Threads that run TLS handshakes (`net::handshakes`), apart from the
    /// ones that run open streams, so a storm of new connections cannot
    /// delay the traffic of the open ones. Default 2; 0 runs handshakes on
    /// the main workers. Read at start.
    pub handshake_threads: usize,
    /// The nice value (0–19) of those threads: how far the kernel favours
    /// open streams over handshakes when the CPU is short. Default 10
    /// (about a tenth of the CPU for handshakes under contention, all of it
    /// otherwise). Read at start.
    pub handshake_nice: i32,
}

/// Client-to-server listeners and stream policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct C2sConfig {
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    pub require_encryption: bool,
    pub allow_plain: bool,
    pub idle_timeout: u64,
    pub login_timeout: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
}

/// Resource limits; each has a safe default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_stanza_size: usize,
    pub max_depth: usize,
    // parser: what one stanza may cost while it is parsed (see `Limits::parser`).
    /// Most elements in one stanza, itself included. Default 2,048: a stanza of
    /// tiny elements costs ~150 bytes of memory per element (~25× its bytes), so this
    /// bounds it near 300 KiB per connection, while bookmarks, data forms and
    /// disco#items lists of a few hundred to a thousand entries still fit.
    pub max_stanza_elements: usize,
    /// Most attributes on one element or stream header, namespace declarations
    /// included. Default 64: the stream header needs about 8, Jingle candidates
    /// about 10; it also bounds the duplicate check per tag.
    pub max_attributes: usize,
    /// Most namespace declarations (`xmlns`, `xmlns:p`) on one element. Default 16:
    /// a stream header declares 2–4.
    pub max_namespace_declarations: usize,
    /// Most namespace declarations in force at once on a stream, the header's
    /// included. Default 128: one per nesting level (`max_depth` 48) plus the
    /// header's, with room to spare.
    pub max_namespaces_in_scope: usize,
    /// Longest element or attribute name, prefix included, in bytes. Default 256:
    /// names in XMPP are words, the longest registered about 30 bytes.
    pub max_name_length: usize,
    /// Longest namespace URI, in bytes. Default 512: registered XMPP namespaces are
    /// under 80 bytes.
    pub max_namespace_length: usize,
    /// The memory a parsed stanza may take, as a multiple of `max_stanza_size`.
    /// Default 2: text costs about its bytes, a normal stanza well under 2×; input
    /// crafted for small elements and long attributes is refused once it costs more.
    pub stanza_memory_factor: usize,
    pub session_queue: usize,
    pub auth_failures_per_ip: u32,
    pub auth_failures_per_account: u32,
    pub auth_failure_window: u64,
    pub scram_iterations: u32,
    pub max_offline_messages: u32,
    pub max_vcard_size: usize,
    /// Accounts whose avatar hash (XEP-0153/0398, put into their presence)
    /// is kept in memory; beyond it one is forgotten and read again from
    /// the vCard when needed.
    pub max_avatar_hashes: usize,
    pub registrations_per_ip: u32,
    pub registration_window: u64,
    /// Invalid invitation tokens (XEP-0401) one client stream may present
    /// before further ones are refused without a lookup.
    pub invite_tries_per_stream: u32,
    // per-user state
    /// Items one user's roster may hold; a roster set or subscription that
    /// would add one more is refused (`resource-constraint`).
    pub max_roster_items: u32,
    /// Inbound subscription requests waiting for one user's answer; a new
    /// requester beyond it gets `resource-constraint` (wait) back.
    pub max_pending_subscriptions: u32,
    /// Bytes kept of a pending request's nick (XEP-0172) and of its status
    /// text, each (longer ones are cut at a character boundary).
    pub max_subscription_text: usize,
    /// `ctl import` (XEP-0227): the largest `<user>` element read into
    /// memory at once, in bytes of XML; a bigger one is refused (reported,
    /// the rest of the file still imported).
    pub import_max_user_bytes: usize,
    /// Distinct JIDs one session may have sent directed available presence
    /// to; beyond it the directed presence is refused (`resource-constraint`).
    pub max_directed_presences: usize,
    /// Bytes of private XML (XEP-0049) one user may store, namespace keys
    /// included (`resource-constraint` beyond).
    pub max_private_bytes: usize,
    /// Bytes of one private XML document, one namespace's elements as
    /// serialized (`not-acceptable` beyond).
    pub max_private_document: usize,
    /// Bytes of offline messages waiting for one user, as stored
    /// (`service-unavailable` beyond, as for `max_offline_messages`).
    pub max_offline_bytes: usize,
    // network: what one connection can make us hold
    /// Bytes of stanzas queued for one session or component (besides the
    /// `session_queue` count); beyond it stanzas bounce with
    /// `resource-constraint`.
    pub session_queue_bytes: usize,
    /// Seconds one write to a peer may take: a peer that stops reading is
    /// disconnected then, instead of holding its connection and queue.
    pub write_timeout: u64,
    // auth
    /// Password-hashing jobs (PBKDF2 for PLAIN logins, registrations and
    /// password changes; argon2 when enabled) running at once; 0 = one per
    /// CPU core.
    pub hashing_workers: usize,
    /// Hashing jobs that may wait for a worker; one more is refused at once
    /// (temporary-auth-failure for a login, resource-constraint for a
    /// registration or password change) instead of queueing without bound.
    pub hashing_queue: usize,
    /// Also store an argon2id hash of new and changed passwords, and check
    /// PLAIN against an account's argon2 hash when it has one. Off: PLAIN
    /// checks the SCRAM-SHA-256 keys every account has (see ARCHITECTURE.md).
    pub argon2: bool,
    /// argon2 memory per hash, in KiB (m).
    pub argon2_memory_kib: u32,
    /// argon2 passes over that memory (t).
    pub argon2_iterations: u32,
    /// argon2 lanes (p).
    pub argon2_parallelism: u32,
    /// Failed authentications are counted per IPv6 prefix of this length
    /// (one host usually holds a whole /64); IPv4 per address.
    pub auth_ipv6_prefix: u8,
    /// Failed external-component handshakes allowed per remote address
    /// within `auth_failure_window`; further ones are refused at once.
    pub component_failures_per_ip: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_level: "info".into(),
            host: vec![HostConfig {
                domain: "localhost".into(),
                cert: None,
                key: None,
                allow_registration: false,
            }],
            database: DatabaseConfig::default(),
            tls: TlsConfig::default(),
            c2s: C2sConfig::default(),
            limits: Limits::default(),
            contact: ContactAddresses::default(),
            component: Vec::new(),
            component_listener: ComponentListener::default(),
            s2s: S2sConfig::default(),
            admin: AdminConfig::default(),
            stream_management: StreamManagementConfig::default(),
            csi: CsiConfig::default(),
            push: PushConfig::default(),
            sasl2: Sasl2Config::default(),
            pep: PepConfig::default(),
            mam: MamConfig::default(),
            muc: MucConfig::default(),
            http: HttpConfig::default(),
            external_service: Vec::new(),
            upload: UploadConfig::default(),
            metrics: MetricsConfig::default(),
            invite: InviteConfig::default(),
            cluster: None,
        }
    }
}

impl DatabaseConfig {
    /// How the store sets up SQLite connections.
    pub fn sqlite_tuning(&self) -> crate::storage::SqliteTuning {
        crate::storage::SqliteTuning {
            synchronous_full: self.sqlite_synchronous == "full",
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://data/waxwing.db".into(),
            max_connections: 8,
            sqlite_synchronous: "normal".into(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: String::new(),
            key: String::new(),
            dev_cert_dir: PathBuf::from("certs"),
            session_tickets: true,
            session_cache: 1024,
            handshake_threads: 2,
            handshake_nice: 10,
        }
    }
}

impl Default for C2sConfig {
    fn default() -> Self {
        C2sConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5222))],
            listen_tls: vec![SocketAddr::from(([127, 0, 0, 1], 5223))],
            require_encryption: true,
            allow_plain: true,
            idle_timeout: 300,
            login_timeout: 60,
            max_connections: 100_000,
            max_connections_per_ip: 20_000,
        }
    }
}

impl Limits {
    /// How passwords are hashed (SCRAM keys, and argon2 when enabled). An
    /// argon2 parameter set the library refuses (validation keeps them in
    /// range, so only m < 8 × p) falls back to the library's defaults.
    pub fn password_hashing(&self) -> crate::accounts::PasswordHashing {
        let argon2 = self.argon2.then(|| {
            argon2::Params::new(
                self.argon2_memory_kib,
                self.argon2_iterations,
                self.argon2_parallelism,
                None,
            )
            .unwrap_or_default()
        });
        crate::accounts::PasswordHashing {
            scram_iterations: self.scram_iterations,
            argon2,
        }
    }

    /// The XML parser limits every network stream uses.
    pub fn parser(&self) -> crate::xml::ParserLimits {
        crate::xml::ParserLimits {
            max_stanza_bytes: self.max_stanza_size,
            max_depth: self.max_depth,
            max_elements: self.max_stanza_elements,
            max_attributes: self.max_attributes,
            max_ns_declarations: self.max_namespace_declarations,
            max_ns_in_scope: self.max_namespaces_in_scope,
            max_name_bytes: self.max_name_length,
            max_ns_uri_bytes: self.max_namespace_length,
            max_stanza_memory: self
                .max_stanza_size
                .saturating_mul(self.stanza_memory_factor),
        }
    }

    /// What every network stream's I/O is bounded by.
    pub fn stream(&self) -> crate::net::StreamLimits {
        crate::net::StreamLimits {
            parser: self.parser(),
            write_timeout: std::time::Duration::from_secs(self.write_timeout),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_size: 256 * 1024,
            max_depth: 48,
            // parser
            max_stanza_elements: 2_048,
            max_attributes: 64,
            max_namespace_declarations: 16,
            max_namespaces_in_scope: 128,
            max_name_length: 256,
            max_namespace_length: 512,
            stanza_memory_factor: 2,
            session_queue: 2048,
            auth_failures_per_ip: 20,
            auth_failures_per_account: 10,
            auth_failure_window: 60,
            scram_iterations: 4096,
            max_offline_messages: 1000,
            max_vcard_size: 64 * 1024,
            max_avatar_hashes: 100_000,
            registrations_per_ip: 5,
            registration_window: 3600,
            invite_tries_per_stream: 3,
            // per-user state
            max_roster_items: 5000,
            max_pending_subscriptions: 100,
            max_subscription_text: 1024,
            import_max_user_bytes: 256 << 20,
            max_directed_presences: 500,
            max_private_bytes: 1 << 20,
            max_private_document: 128 * 1024,
            max_offline_bytes: 16 << 20,
            // network
            session_queue_bytes: 2 << 20,
            write_timeout: 30,
            // auth
            hashing_workers: 0,
            hashing_queue: 256,
            argon2: false,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            auth_ipv6_prefix: 64,
            component_failures_per_ip: 10,
        }
    }
}

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem can be placed.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

/// Why a configuration could not be loaded: one or more problems.
#[derive(Debug)]
pub struct ConfigError {
    pub path: Option<PathBuf>,
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "configuration".into());
        writeln!(f, "{name}: {} problem(s)", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: Some(path.to_path_buf()),
            problems: vec![Problem {
                line: None,
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::parse(&src).map_err(|problems| ConfigError {
            path: Some(path.to_path_buf()),
            problems,
        })
    }

    /// Validates and parses TOML text, collecting every problem.
    pub fn parse(src: &str) -> Result<Config, Vec<Problem>> {
        let doc = match ImDocument::parse(src) {
            Ok(d) => d,
            Err(e) => {
                return Err(vec![Problem {
                    line: e.span().map(|s| line_of(src, s.start)),
                    message: e.message().trim().to_string(),
                }])
            }
        };
        let mut v = Validator {
            src,
            problems: Vec::new(),
        };
        v.table(doc.as_table(), "", SCHEMA);
        if !v.problems.is_empty() {
            return Err(v.problems);
        }
        let config: Config = toml::from_str(src).map_err(|e| {
            vec![Problem {
                line: e.span().map(|s| line_of(src, s.start)),
                message: e.message().to_string(),
            }]
        })?;
        let mut problems = Vec::new();
        config.check_semantics(&doc, src, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Cross-field rules that a per-key schema cannot express.
    fn check_semantics(&self, doc: &ImDocument<&str>, src: &str, problems: &mut Vec<Problem>) {
        let host_line = |i: usize| {
            doc.get("host")
                .and_then(|h| h.as_array_of_tables())
                .and_then(|a| a.get(i))
                .and_then(|t| t.span())
                .map(|s| line_of(src, s.start))
        };
        if self.host.is_empty() {
            problems.push(Problem {
                line: None,
                message: "at least one [[host]] is required".into(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for (i, h) in self.host.iter().enumerate() {
            match jid::BareJid::new(&h.domain) {
                Ok(j) if j.node().is_none() => {
                    if !seen.insert(j.to_string()) {
                        problems.push(Problem {
                            line: host_line(i),
                            message: format!("host '{}' is listed twice", h.domain),
                        });
                    }
                }
                _ => problems.push(Problem {
                    line: host_line(i),
                    message: format!("host domain '{}' is not a valid domain", h.domain),
                }),
            }
            if h.cert.is_some() != h.key.is_some() {
                problems.push(Problem {
                    line: host_line(i),
                    message: format!("host '{}': set both cert and key, or neither", h.domain),
                });
            }
        }
        self.check_components(doc, src, &seen, problems);
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            problems.push(Problem {
                line: doc
                    .get("tls")
                    .and_then(|t| t.span())
                    .map(|s| line_of(src, s.start)),
                message: "[tls]: set both cert and key, or neither".into(),
            });
        }
        if self.metrics.enabled && self.metrics.allow != "loopback" && self.metrics.token.len() < 16
        {
            problems.push(Problem {
                line: doc
                    .get("metrics")
                    .and_then(|t| t.span())
                    .map(|s| line_of(src, s.start)),
                message: format!(
                    "[metrics]: allow = \"{}\" needs a token of at least 16 characters",
                    self.metrics.allow
                ),
            });
        }
        if let Some(cluster) = &self.cluster {
            let line = doc
                .get("cluster")
                .and_then(|t| t.span())
                .map(|s| line_of(src, s.start));
            if cluster.node_id.is_empty() {
                problems.push(Problem {
                    line,
                    message: "[cluster]: node_id is required".into(),
                });
            }
            // Every node must see the same accounts, rosters and offline
            // messages: a file of its own would split the domain.
            if !self.database.url.starts_with("postgres") {
                problems.push(Problem {
                    line,
                    message: "[cluster] needs a PostgreSQL [database] url shared by every node \
                              (SQLite is one node's file)"
                        .into(),
                });
            }
            // A remote server checks a dialback key by connecting to the
            // domain, which may reach another node: every node must derive
            // keys from one secret, not a random one of its own.
            let federates = !(self.s2s.listen.is_empty() && self.s2s.listen_tls.is_empty());
            if federates && self.s2s.dialback_secret.is_empty() {
                problems.push(Problem {
                    line,
                    message: "[cluster] with federation ([s2s] listen) needs [s2s] \
                              dialback_secret, the same on every node (a remote server may \
                              check one node's dialback key at another)"
                        .into(),
                });
            }
        }
        if self.c2s.listen.is_empty() && self.c2s.listen_tls.is_empty() {
            problems.push(Problem {
                line: None,
                message: "[c2s]: no listener configured (listen and listen_tls are both empty)"
                    .into(),
            });
        }
    }

    /// Each component domain must be a valid domain, distinct from every
    /// host and every other component (the router could not tell them
    /// apart), with a secret.
    fn check_components(
        &self,
        doc: &ImDocument<&str>,
        src: &str,
        hosts: &std::collections::HashSet<String>,
        problems: &mut Vec<Problem>,
    ) {
        let line = |i: usize| {
            doc.get("component")
                .and_then(|h| h.as_array_of_tables())
                .and_then(|a| a.get(i))
                .and_then(|t| t.span())
                .map(|s| line_of(src, s.start))
        };
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.component.iter().enumerate() {
            match jid::BareJid::new(&c.domain) {
                Ok(j) if j.node().is_none() => {
                    let d = j.to_string();
                    if hosts.contains(&d) {
                        problems.push(Problem {
                            line: line(i),
                            message: format!(
                                "component '{}' is also a [[host]]: a domain is served by one or the other",
                                c.domain
                            ),
                        });
                    } else if !seen.insert(d) {
                        problems.push(Problem {
                            line: line(i),
                            message: format!("component '{}' is listed twice", c.domain),
                        });
                    }
                }
                _ => problems.push(Problem {
                    line: line(i),
                    message: format!("component domain '{}' is not a valid domain", c.domain),
                }),
            }
            if c.secret.is_empty() {
                problems.push(Problem {
                    line: line(i),
                    message: format!("component '{}': secret is empty", c.domain),
                });
            }
        }
    }

    /// The configured components as (normalised domain, secret).
    pub fn components(&self) -> Vec<(String, String)> {
        self.component
            .iter()
            .filter_map(|c| {
                let d = jid::BareJid::new(&c.domain).ok()?.to_string();
                Some((d, c.secret.clone()))
            })
            .collect()
    }

    /// Does `domain` (normalised) allow in-band registration?
    pub fn allows_registration(&self, domain: &str) -> bool {
        self.host.iter().any(|h| {
            h.allow_registration && jid::BareJid::new(&h.domain).is_ok_and(|j| j.as_str() == domain)
        })
    }

    /// The admin channel's socket path, or None when disabled: `[admin]
    /// socket` when set, else `waxwing.sock` in the SQLite database's
    /// directory (`./data` for PostgreSQL or an in-memory database).
    pub fn admin_socket(&self) -> Option<PathBuf> {
        match &self.admin.socket {
            Some(s) if s.is_empty() => None,
            Some(s) => Some(PathBuf::from(s)),
            None => Some(self.data_dir().join("waxwing.sock")),
        }
    }

    /// Is the admin socket the derived default (no `[admin] socket` set)?
    pub fn admin_socket_is_default(&self) -> bool {
        self.admin.socket.is_none()
    }

    /// The directory of the SQLite database file (the URL read as
    /// `Store::open` reads it), else `./data`.
    fn data_dir(&self) -> PathBuf {
        use std::str::FromStr;
        let url = &self.database.url;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if url.starts_with("sqlite:") && !in_memory {
            if let Ok(opts) = sqlx::sqlite::SqliteConnectOptions::from_str(url) {
                if let Some(dir) = opts.get_filename().parent() {
                    return if dir.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        dir.to_path_buf()
                    };
                }
            }
        }
        PathBuf::from("data")
    }

    /// The configured domains, normalised.
    pub fn domains(&self) -> Vec<String> {
        self.host
            .iter()
            .filter_map(|h| jid::BareJid::new(&h.domain).ok().map(|j| j.to_string()))
            .collect()
    }
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// What a key may hold.
enum Kind {
    Str(fn(&str) -> Result<(), String>),
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    Addrs,
    /// A table of string values, each checked.
    StrMap(fn(&str) -> Result<(), String>),
    /// A list of URIs (`scheme:…`).
    Uris,
    /// A list of bare JIDs.
    Jids,
    Table(&'static [Field]),
    Tables(&'static [Field]),
}

struct Field {
    key: &'static str,
    kind: Kind,
}

const fn f(key: &'static str, kind: Kind) -> Field {
    Field { key, kind }
}

/// An absolute URI as RFC 3986 §3.1 begins one: a scheme, then ':', then
/// something, with no whitespace anywhere.
fn is_uri(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, rest)) => {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !rest.is_empty()
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

fn any_str(_: &str) -> Result<(), String> {
    Ok(())
}

fn log_filter(s: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| ())
        .map_err(|e| format!("not a log level or filter: {e}"))
}

fn database_url(s: &str) -> Result<(), String> {
    if s.starts_with("sqlite:") || s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(())
    } else {
        Err("database url must start with sqlite:// or postgres://".into())
    }
}

/// The longest Unix socket path `bind` takes (`sun_path` is 108 bytes on
/// Linux, with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

fn socket_path(s: &str) -> Result<(), String> {
    if s.len() > MAX_SOCKET_PATH {
        Err(format!(
            "a Unix socket path is at most {MAX_SOCKET_PATH} bytes; this one has {}",
            s.len()
        ))
    } else if s.contains('\0') {
        Err("a socket path cannot contain NUL".into())
    } else {
        Ok(())
    }
}

const HOST: &[Field] = &[
    f("domain", Kind::Str(any_str)),
    f("cert", Kind::Str(any_str)),
    f("key", Kind::Str(any_str)),
    f("allow_registration", Kind::Bool),
];
const CONTACT: &[Field] = &[
    f("abuse", Kind::Uris),
    f("admin", Kind::Uris),
    f("feedback", Kind::Uris),
    f("sales", Kind::Uris),
    f("security", Kind::Uris),
    f("status", Kind::Uris),
    f("support", Kind::Uris),
];
const DATABASE: &[Field] = &[
    f("url", Kind::Str(database_url)),
    f("max_connections", Kind::Int { min: 1, max: 1000 }),
    f("sqlite_synchronous", Kind::Str(sqlite_synchronous)),
];
const TLS: &[Field] = &[
    f("cert", Kind::Str(any_str)),
    f("key", Kind::Str(any_str)),
    f("dev_cert_dir", Kind::Str(any_str)),
    f("session_tickets", Kind::Bool),
    f(
        "session_cache",
        Kind::Int {
            min: 0,
            max: 1_000_000,
        },
    ),
    f("handshake_threads", Kind::Int { min: 0, max: 64 }),
    f("handshake_nice", Kind::Int { min: 0, max: 19 }),
];
const C2S: &[Field] = &[
    f("listen", Kind::Addrs),
    f("listen_tls", Kind::Addrs),
    f("require_encryption", Kind::Bool),
    f("allow_plain", Kind::Bool),
    f(
        "idle_timeout",
        Kind::Int {
            min: 1,
            max: 86_400,
        },
    ),
    f("login_timeout", Kind::Int { min: 1, max: 3_600 }),
    f(
        "max_connections",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
    ),
    f(
        "max_connections_per_ip",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
    ),
];
const LIMITS: &[Field] = &[
    f(
        "max_stanza_size",
        Kind::Int {
            min: 1024,
            max: 64 << 20,
        },
    ),
    f("max_depth", Kind::Int { min: 4, max: 1000 }),
    // parser
    f(
        "max_stanza_elements",
        Kind::Int {
            min: 16,
            max: 1_000_000,
        },
    ),
    f(
        "max_attributes",
        Kind::Int {
            min: 16,
            max: 10_000,
        },
    ),
    f(
        "max_namespace_declarations",
        Kind::Int {
            min: 4,
            max: 10_000,
        },
    ),
    f(
        "max_namespaces_in_scope",
        Kind::Int {
            min: 16,
            max: 100_000,
        },
    ),
    f(
        "max_name_length",
        Kind::Int {
            min: 32,
            max: 65_536,
        },
    ),
    f(
        "max_namespace_length",
        Kind::Int {
            min: 64,
            max: 65_536,
        },
    ),
    f("stanza_memory_factor", Kind::Int { min: 2, max: 64 }),
    f(
        "session_queue",
        Kind::Int {
            min: 16,
            max: 1_000_000,
        },
    ),
    f(
        "auth_failures_per_ip",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "auth_failures_per_account",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "auth_failure_window",
        Kind::Int {
            min: 1,
            max: 86_400,
        },
    ),
    f(
        "scram_iterations",
        Kind::Int {
            min: 4096,
            max: 1_000_000,
        },
    ),
    f(
        "max_offline_messages",
        Kind::Int {
            min: 0,
            max: 1_000_000,
        },
    ),
    f(
        "max_vcard_size",
        Kind::Int {
            min: 1024,
            max: 64 << 20,
        },
    ),
    f(
        "max_avatar_hashes",
        Kind::Int {
            min: 1,
            max: 100_000_000,
        },
    ),
    f(
        "registrations_per_ip",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "registration_window",
        Kind::Int {
            min: 1,
            max: 30 * 86_400,
        },
    ),
    f("invite_tries_per_stream", Kind::Int { min: 1, max: 1000 }),
    // per-user state
    f(
        "max_roster_items",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "max_pending_subscriptions",
        Kind::Int {
            min: 0,
            max: 1_000_000,
        },
    ),
    f(
        "max_subscription_text",
        Kind::Int {
            min: 0,
            max: 64 << 10,
        },
    ),
    f(
        "import_max_user_bytes",
        Kind::Int {
            min: 1 << 16,
            max: 1 << 34,
        },
    ),
    f(
        "max_directed_presences",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "max_private_bytes",
        Kind::Int {
            min: 1024,
            max: 1 << 30,
        },
    ),
    f(
        "max_private_document",
        Kind::Int {
            min: 1024,
            max: 64 << 20,
        },
    ),
    f(
        "max_offline_bytes",
        Kind::Int {
            min: 1024,
            max: 1 << 40,
        },
    ),
    // network
    f(
        "session_queue_bytes",
        Kind::Int {
            min: 1024,
            max: 1 << 30,
        },
    ),
    f("write_timeout", Kind::Int { min: 1, max: 3_600 }),
    // auth
    f("hashing_workers", Kind::Int { min: 0, max: 1024 }),
    f(
        "hashing_queue",
        Kind::Int {
            min: 0,
            max: 1_000_000,
        },
    ),
    f("argon2", Kind::Bool),
    f(
        "argon2_memory_kib",
        Kind::Int {
            min: 8,
            max: 4 << 20,
        },
    ),
    f("argon2_iterations", Kind::Int { min: 1, max: 100 }),
    f("argon2_parallelism", Kind::Int { min: 1, max: 64 }),
    f("auth_ipv6_prefix", Kind::Int { min: 32, max: 128 }),
    f(
        "component_failures_per_ip",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
];
const COMPONENT: &[Field] = &[
    f("domain", Kind::Str(any_str)),
    f("secret", Kind::Str(any_str)),
];
const COMPONENT_LISTENER: &[Field] = &[
    f("listen", Kind::Addrs),
    f("login_timeout", Kind::Int { min: 1, max: 3_600 }),
    f(
        "idle_timeout",
        Kind::Int {
            min: 1,
            max: 86_400,
        },
    ),
];
fn host_port(s: &str) -> Result<(), String> {
    let hp = s.strip_prefix("tls://").unwrap_or(s);
    match hp.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "\"{s}\" is not a \"host:port\" or \"tls://host:port\""
        )),
    }
}
const S2S: &[Field] = &[
    f("listen", Kind::Addrs),
    f("listen_tls", Kind::Addrs),
    f("nameservers", Kind::Addrs),
    f("require_encryption", Kind::Bool),
    f("sasl_external", Kind::Bool),
    f("bidi", Kind::Bool),
    f("dialback_secret", Kind::Str(any_str)),
    f("ca_file", Kind::Str(any_str)),
    f("connect_timeout", Kind::Int { min: 1, max: 3_600 }),
    f(
        "idle_timeout",
        Kind::Int {
            min: 1,
            max: 86_400,
        },
    ),
    f(
        "max_queue",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "max_connections",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
    ),
    f(
        "max_connections_per_ip",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
    ),
    f("hosts", Kind::StrMap(host_port)),
    // network
    f(
        "max_queue_bytes",
        Kind::Int {
            min: 1024,
            max: 1 << 30,
        },
    ),
    f("auth_timeout", Kind::Int { min: 1, max: 3_600 }),
    f(
        "max_outgoing",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
    ),
    f(
        "max_verifications",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "max_verifications_per_ip",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "max_verifications_per_domain",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
];
const ADMIN: &[Field] = &[
    f("socket", Kind::Str(socket_path)),
    f("admins", Kind::Jids),
    f("max_command_sessions", Kind::Int { min: 1, max: 1000 }),
    f(
        "command_session_timeout_secs",
        Kind::Int {
            min: 1,
            max: 86_400,
        },
    ),
    f(
        "max_announcement_bytes",
        Kind::Int {
            min: 1,
            max: 65_536,
        },
    ),
];
const STREAM_MANAGEMENT: &[Field] = &[
    f("enabled", Kind::Bool),
    f(
        "max_resume",
        Kind::Int {
            min: 1,
            max: 86_400,
        },
    ),
    f("location", Kind::Str(empty_or_host_port)),
    f(
        "max_unacked",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "max_parked_per_account",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
    ),
];
const CSI: &[Field] = &[f(
    "max_held",
    Kind::Int {
        min: 0,
        max: 100_000,
    },
)];
const PUSH: &[Field] = &[
    f("enabled", Kind::Bool),
    f("max_registrations", Kind::Int { min: 0, max: 1_000 }),
    f("include_body", Kind::Bool),
    f(
        "max_body_bytes",
        Kind::Int {
            min: 0,
            max: 65_536,
        },
    ),
    f(
        "min_interval",
        Kind::Int {
            min: 0,
            max: 86_400,
        },
    ),
    f("timeout", Kind::Int { min: 1, max: 3_600 }),
    f("max_errors", Kind::Int { min: 1, max: 1_000 }),
    f(
        "max_pending_accounts",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
    ),
    f("max_node_length", Kind::Int { min: 1, max: 3_071 }),
    f(
        "max_options_bytes",
        Kind::Int {
            min: 0,
            max: 65_536,
        },
    ),
];
const SASL2: &[Field] = &[
    f("enabled", Kind::Bool),
    f("fast", Kind::Bool),
    f(
        "token_lifetime",
        Kind::Int {
            min: 60,
            max: 366 * 86_400,
        },
    ),
    f(
        "token_rotate_before_expiry",
        Kind::Int {
            min: 0,
            max: 366 * 86_400,
        },
    ),
    f(
        "max_clients_per_account",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
    ),
    f("upgrade_tasks", Kind::Bool),
];
const PEP: &[Field] = &[
    f("enabled", Kind::Bool),
    f(
        "max_nodes",
        Kind::Int {
            min: 1,
            max: 100_000,
        },
    ),
    f(
        "max_items",
        Kind::Int {
            min: 1,
            max: 100_000,
        },
    ),
    f(
        "max_item_bytes",
        Kind::Int {
            min: 256,
            max: 10_000_000,
        },
    ),
    f(
        "max_items_page",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
    ),
    f(
        "caps_cache",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f("caps_query_timeout", Kind::Int { min: 1, max: 300 }),
    f(
        "max_subscribers",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "max_caps_resources",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
    ),
    f(
        "max_caps_queries",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
    ),
];
const MAM: &[Field] = &[
    f("enabled", Kind::Bool),
    f("default", Kind::Str(mam_default)),
    f(
        "retention_days",
        Kind::Int {
            min: 0,
            max: 36_500,
        },
    ),
    f(
        "max_messages_per_user",
        Kind::Int {
            min: 0,
            max: 1_000_000_000,
        },
    ),
    f(
        "cleanup_interval",
        Kind::Int {
            min: 1,
            max: 604_800,
        },
    ),
    f(
        "default_page",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
    ),
    f(
        "max_page",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
    ),
    f(
        "max_ids",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
    ),
    f(
        "max_index",
        Kind::Int {
            min: 0,
            max: 1_000_000,
        },
    ),
    f(
        "max_pref_jids",
        Kind::Int {
            min: 0,
            max: 1_000_000,
        },
    ),
    f(
        "queue",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "queue_bytes",
        Kind::Int {
            min: 1024,
            max: 1 << 32,
        },
    ),
    f(
        "batch",
        Kind::Int {
            min: 1,
            max: 100_000,
        },
    ),
    f(
        "writer_cache_kib",
        Kind::Int {
            min: 1,
            max: 16_777_216,
        },
    ),
    f(
        "checkpoint_pages",
        Kind::Int {
            min: 0,
            max: 4_000_000,
        },
    ),
];
const MUC: &[Field] = &[
    f("enabled", Kind::Bool),
    f("subdomain", Kind::Str(dns_label)),
    f("create", Kind::Str(muc_create)),
    f("admins", Kind::Jids),
    f("creators", Kind::Jids),
    f(
        "max_relayed_iqs",
        Kind::Int {
            min: 0,
            max: 1_000_000,
        },
    ),
    f(
        "max_hats",
        Kind::Int {
            min: 0,
            max: 100_000,
        },
    ),
    f(
        "relayed_iq_timeout",
        Kind::Int {
            min: 1,
            max: 86_400,
        },
    ),
    f(
        "queue",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "max_rooms",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
    ),
    f(
        "max_occupants",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "default_max_users",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "max_rooms_per_user",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
    f(
        "max_affiliations",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
    ),
    f("max_nick_length", Kind::Int { min: 1, max: 1023 }),
    f(
        "max_subject_bytes",
        Kind::Int {
            min: 0,
            max: 1_048_576,
        },
    ),
    f(
        "max_field_bytes",
        Kind::Int {
            min: 1,
            max: 65_536,
        },
    ),
    f(
        "default_history",
        Kind::Int {
            min: 0,
            max: 10_000,
        },
    ),
    f(
        "max_history",
        Kind::Int {
            min: 0,
            max: 10_000,
        },
    ),
    f(
        "max_history_bytes",
        Kind::Int {
            min: 0,
            max: 1 << 30,
        },
    ),
    f("archive", Kind::Bool),
    f(
        "max_avatar_bytes",
        Kind::Int {
            min: 0,
            max: 1 << 24,
        },
    ),
    f(
        "max_room_list_page",
        Kind::Int {
            min: 1,
            max: 100_000,
        },
    ),
];
const SCHEMA: &[Field] = &[
    f("log_level", Kind::Str(log_filter)),
    f("host", Kind::Tables(HOST)),
    f("database", Kind::Table(DATABASE)),
    f("tls", Kind::Table(TLS)),
    f("c2s", Kind::Table(C2S)),
    f("limits", Kind::Table(LIMITS)),
    f("contact", Kind::Table(CONTACT)),
    f("component", Kind::Tables(COMPONENT)),
    f("component_listener", Kind::Table(COMPONENT_LISTENER)),
    f("s2s", Kind::Table(S2S)),
    f("admin", Kind::Table(ADMIN)),
    f("stream_management", Kind::Table(STREAM_MANAGEMENT)),
    f("csi", Kind::Table(CSI)),
    f("push", Kind::Table(PUSH)),
    f("sasl2", Kind::Table(SASL2)),
    f("pep", Kind::Table(PEP)),
    f("mam", Kind::Table(MAM)),
    f("muc", Kind::Table(MUC)),
    f("http", Kind::Table(HTTP)),
    f("external_service", Kind::Tables(EXTERNAL_SERVICE)),
    f("upload", Kind::Table(UPLOAD)),
    f("metrics", Kind::Table(METRICS)),
    f("invite", Kind::Table(INVITE)),
    f("cluster", Kind::Table(CLUSTER)),
];
const CLUSTER: &[Field] = &[
    f("node_id", Kind::Str(node_id)),
    f("redis", Kind::Str(redis_url)),
    f("key_prefix", Kind::Str(key_prefix)),
    f(
        "liveness_ttl_ms",
        Kind::Int {
            min: 300,
            max: 600_000,
        },
    ),
    f(
        "inbox_max",
        Kind::Int {
            min: 100,
            max: 100_000_000,
        },
    ),
    f(
        "outbox_max_bytes",
        Kind::Int {
            min: 1 << 20,
            max: 1 << 40,
        },
    ),
];

fn node_id(s: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("node_id is 1 to 32 of a-z, 0-9 and -".into())
    }
}

fn redis_url(s: &str) -> Result<(), String> {
    if s.starts_with("redis://") || s.starts_with("unix://") {
        Ok(())
    } else {
        Err("redis must be a redis:// or unix:// URL".into())
    }
}

fn key_prefix(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.len() <= 64 && !s.chars().any(|c| c.is_whitespace()) {
        Ok(())
    } else {
        Err("key_prefix is 1 to 64 characters without spaces".into())
    }
}
const INVITE: &[Field] = &[
    f("account_invites", Kind::Str(account_invites)),
    f("user_invites_create_accounts", Kind::Bool),
    f(
        "max_live_per_user",
        Kind::Int {
            min: 0,
            max: 10_000,
        },
    ),
    f(
        "expiry",
        Kind::Int {
            min: 60,
            max: 366 * 86_400,
        },
    ),
];
const METRICS: &[Field] = &[
    f("enabled", Kind::Bool),
    f("allow", Kind::Str(metrics_allow)),
    f("token", Kind::Str(any_str)),
    f(
        "storage_refresh",
        Kind::Int {
            min: 1,
            max: 86_400,
        },
    ),
];

/// Who may scrape `/metrics`.
fn metrics_allow(s: &str) -> Result<(), String> {
    match s {
        "loopback" | "token" | "loopback_or_token" => Ok(()),
        _ => Err("must be \"loopback\", \"token\" or \"loopback_or_token\"".into()),
    }
}
const UPLOAD: &[Field] = &[
    f("enabled", Kind::Bool),
    f("self_check", Kind::Bool),
    f(
        "self_check_for",
        Kind::Int {
            min: 0,
            max: 86_400,
        },
    ),
    f("subdomain", Kind::Str(dns_label)),
    f("dir", Kind::Str(any_str)),
    f(
        "max_file_size",
        Kind::Int {
            min: 1,
            max: 1 << 40,
        },
    ),
    f(
        "quota_per_user",
        Kind::Int {
            min: 1,
            max: 1 << 50,
        },
    ),
    f(
        "expire_days",
        Kind::Int {
            min: 1,
            max: 36_500,
        },
    ),
    f(
        "slot_lifetime",
        Kind::Int {
            min: 10,
            max: 86_400,
        },
    ),
    f(
        "cleanup_interval",
        Kind::Int {
            min: 1,
            max: 86_400,
        },
    ),
    f(
        "queue",
        Kind::Int {
            min: 1,
            max: 1_000_000,
        },
    ),
];
const EXTERNAL_SERVICE: &[Field] = &[
    f("type", Kind::Str(external_service_type)),
    f("host", Kind::Str(non_empty_host)),
    f(
        "port",
        Kind::Int {
            min: 1,
            max: 65_535,
        },
    ),
    f("transport", Kind::Str(udp_or_tcp)),
    f("name", Kind::Str(any_str)),
    f("secret", Kind::Str(any_str)),
    f(
        "credential_lifetime",
        Kind::Int {
            min: 60,
            max: 30 * 86_400,
        },
    ),
];

fn external_service_type(s: &str) -> Result<(), String> {
    match s {
        "stun" | "stuns" | "turn" | "turns" => Ok(()),
        _ => Err("must be \"stun\", \"stuns\", \"turn\" or \"turns\"".into()),
    }
}

fn udp_or_tcp(s: &str) -> Result<(), String> {
    match s {
        "udp" | "tcp" => Ok(()),
        _ => Err("must be \"udp\" or \"tcp\"".into()),
    }
}

/// A host name or IP address (it goes into attributes clients read).
fn non_empty_host(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("must be a host name or an IP address".into())
    }
}
const HTTP: &[Field] = &[
    f("listen", Kind::Addrs),
    f("listen_tls", Kind::Addrs),
    f("plain_is_secure", Kind::Str(plain_is_secure)),
    f("public_url", Kind::Str(http_url)),
    f(
        "max_connections",
        Kind::Int {
            min: 1,
            max: 10_000_000,
        },
    ),
    f("header_timeout", Kind::Int { min: 1, max: 3_600 }),
    f(
        "max_header_bytes",
        Kind::Int {
            min: 8_192,
            max: 1 << 20,
        },
    ),
    f(
        "bosh_max_body_bytes",
        Kind::Int {
            min: 0,
            max: 64 << 20,
        },
    ),
    f("bosh_max_wait", Kind::Int { min: 1, max: 3_600 }),
    f("bosh_max_hold", Kind::Int { min: 0, max: 16 }),
    f("bosh_max_requests", Kind::Int { min: 1, max: 17 }),
    f("bosh_inactivity", Kind::Int { min: 1, max: 3_600 }),
    f(
        "bosh_max_pause",
        Kind::Int {
            min: 0,
            max: 86_400,
        },
    ),
    f("bosh_polling", Kind::Int { min: 0, max: 3_600 }),
    f(
        "bosh_buffer_bytes",
        Kind::Int {
            min: 4_096,
            max: 64 << 20,
        },
    ),
    f("chat_dir", Kind::Str(any_str)),
];

/// When a plain-HTTP WebSocket counts as encrypted.
fn plain_is_secure(s: &str) -> Result<(), String> {
    match s {
        "loopback" | "always" | "never" => Ok(()),
        _ => Err("must be \"loopback\", \"always\" or \"never\"".into()),
    }
}

/// Empty, or an http(s) URL without a trailing slash.
fn http_url(s: &str) -> Result<(), String> {
    let ok = s.is_empty()
        || ((s.starts_with("https://") || s.starts_with("http://")) && !s.ends_with('/'));
    if ok {
        Ok(())
    } else {
        Err("must be empty or an http(s):// URL without a trailing slash".into())
    }
}

/// A MUC service's creation policy.
fn muc_create(s: &str) -> Result<(), String> {
    match s {
        "anyone" | "local" | "admins" | "list" => Ok(()),
        _ => Err("must be \"anyone\", \"local\", \"admins\" or \"list\"".into()),
    }
}

/// A domain label (the MUC service's subdomain).
fn dns_label(s: &str) -> Result<(), String> {
    let ok =
        !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("must be one DNS label (letters, digits, '-')".into())
    }
}

/// A XEP-0313 default archiving mode.
fn sqlite_synchronous(s: &str) -> Result<(), String> {
    match s {
        "normal" | "full" => Ok(()),
        _ => Err("must be \"normal\" or \"full\"".into()),
    }
}

fn account_invites(s: &str) -> Result<(), String> {
    match s {
        "admins" | "users" => Ok(()),
        _ => Err("must be \"admins\" or \"users\"".into()),
    }
}

fn mam_default(s: &str) -> Result<(), String> {
    match s {
        "always" | "roster" | "never" => Ok(()),
        _ => Err("must be \"always\", \"roster\" or \"never\"".into()),
    }
}

/// Empty, or `host:port`.
fn empty_or_host_port(s: &str) -> Result<(), String> {
    if s.is_empty() {
        Ok(())
    } else {
        host_port(s)
    }
}

struct Validator<'a> {
    src: &'a str,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, span: Option<std::ops::Range<usize>>, message: String) {
        let line = span.map(|s| line_of(self.src, s.start));
        self.problems.push(Problem { line, message });
    }

    fn table(&mut self, table: &Table, path: &str, fields: &[Field]) {
        for (key, item) in table.iter() {
            let full = if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            };
            let span = table
                .key(key)
                .and_then(|k| k.span())
                .or_else(|| item.span());
            match fields.iter().find(|f| f.key == key) {
                None => self.problem(span, format!("unknown key '{full}'")),
                Some(field) => self.item(item, &full, &field.kind, span),
            }
        }
    }

    fn item(&mut self, item: &Item, path: &str, kind: &Kind, span: Option<std::ops::Range<usize>>) {
        match (kind, item) {
            (Kind::Table(fields), Item::Table(t)) => self.table(t, path, fields),
            (Kind::Table(fields), Item::Value(Value::InlineTable(t))) => {
                let t = t.clone().into_table();
                self.table(&t, path, fields)
            }
            (Kind::Tables(fields), Item::ArrayOfTables(a)) => {
                for t in a.iter() {
                    self.table(t, path, fields)
                }
            }
            (Kind::Str(check), Item::Value(Value::String(s))) => {
                if let Err(e) = check(s.value()) {
                    self.problem(span, format!("{path}: {e}"))
                }
            }
            (Kind::Bool, Item::Value(Value::Boolean(_))) => {}
            (Kind::Int { min, max }, Item::Value(Value::Integer(i))) => {
                let v = *i.value();
                if v < *min || v > *max {
                    self.problem(span, format!("{path}: {v} is outside {min}..={max}"))
                }
            }
            (Kind::Addrs, Item::Value(Value::Array(a))) => {
                for v in a.iter() {
                    match v.as_str().map(str::parse::<SocketAddr>) {
                        Some(Ok(_)) => {}
                        _ => self.problem(
                            v.span().or(span.clone()),
                            format!("{path}: {v} is not an address like \"127.0.0.1:5222\""),
                        ),
                    }
                }
            }
            (Kind::StrMap(check), Item::Table(t)) => {
                for (k, v) in t.iter() {
                    let span = t.key(k).and_then(|k| k.span()).or_else(|| v.span());
                    match v.as_str() {
                        Some(s) => {
                            if let Err(e) = check(s) {
                                self.problem(span, format!("{path}.{k}: {e}"))
                            }
                        }
                        None => self.problem(span, format!("{path}.{k}: expected a string")),
                    }
                }
            }
            (Kind::Uris, Item::Value(Value::Array(a))) => {
                for v in a.iter() {
                    if !v.as_str().is_some_and(is_uri) {
                        self.problem(
                            v.span().or(span.clone()),
                            format!("{path}: {v} is not a URI like \"mailto:abuse@example.org\""),
                        )
                    }
                }
            }
            (Kind::Jids, Item::Value(Value::Array(a))) => {
                for v in a.iter() {
                    if v.as_str().is_none_or(|s| jid::BareJid::new(s).is_err()) {
                        self.problem(
                            v.span().or(span.clone()),
                            format!("{path}: {v} is not a bare JID like \"admin@example.org\""),
                        )
                    }
                }
            }
            (kind, _) => {
                let want = match kind {
                    Kind::Str(_) => "a string",
                    Kind::Bool => "true or false",
                    Kind::Int { .. } => "an integer",
                    Kind::Addrs => "a list of addresses",
                    Kind::Uris => "a list of URIs",
                    Kind::Jids => "a list of bare JIDs",
                    Kind::StrMap(_) => "a table of strings",
                    Kind::Table(_) => "a table",
                    Kind::Tables(_) => "an array of tables ([[…]])",
                };
                self.problem(span, format!("{path}: expected {want}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_valid_and_matches_defaults() {
        let src = include_str!("../waxwing.example.toml");
        let c = Config::parse(src).expect("example config parses");
        let d = Config::default();
        assert_eq!(c.log_level, d.log_level);
        assert_eq!(c.c2s.listen, d.c2s.listen);
        assert_eq!(c.c2s.listen_tls, d.c2s.listen_tls);
        assert_eq!(c.limits.max_stanza_size, d.limits.max_stanza_size);
        assert_eq!(c.database.url, d.database.url);
        assert_eq!(c.domains(), vec!["localhost".to_string()]);
        assert!(c.component.is_empty());
        assert_eq!(c.component_listener.listen, d.component_listener.listen);
        assert_eq!(
            c.component_listener.idle_timeout,
            d.component_listener.idle_timeout
        );
        assert!(!c.s2s.enabled());
        assert_eq!(c.s2s.require_encryption, d.s2s.require_encryption);
        assert_eq!(c.s2s.sasl_external, d.s2s.sasl_external);
        assert_eq!(c.s2s.connect_timeout, d.s2s.connect_timeout);
        assert_eq!(c.s2s.idle_timeout, d.s2s.idle_timeout);
        assert_eq!(c.s2s.max_queue, d.s2s.max_queue);
        assert!(c.s2s.hosts.is_empty());
        assert!(c.s2s.nameservers.is_empty());
        assert!(c.s2s.listen_tls.is_empty());
        assert_eq!(c.s2s.bidi, d.s2s.bidi);
        assert_eq!(c.admin_socket(), d.admin_socket());
        assert_eq!(c.csi.max_held, d.csi.max_held);
        assert_eq!(c.push.max_registrations, d.push.max_registrations);
        assert_eq!(c.push.include_body, d.push.include_body);
        assert_eq!(c.push.min_interval, d.push.min_interval);
        assert_eq!(c.pep.enabled, d.pep.enabled);
        assert_eq!(c.pep.max_nodes, d.pep.max_nodes);
        assert_eq!(c.pep.max_items, d.pep.max_items);
        assert_eq!(c.pep.max_item_bytes, d.pep.max_item_bytes);
        assert_eq!(c.pep.max_items_page, d.pep.max_items_page);
        assert_eq!(c.pep.caps_cache, d.pep.caps_cache);
        assert_eq!(c.pep.caps_query_timeout, d.pep.caps_query_timeout);
        assert_eq!(c.pep.max_subscribers, d.pep.max_subscribers);
        assert_eq!(c.pep.max_caps_resources, d.pep.max_caps_resources);
        assert_eq!(c.pep.max_caps_queries, d.pep.max_caps_queries);
    }

    /// Every key of the schema appears in `waxwing.example.toml` under its
    /// section, set or commented out, so no option goes undocumented.
    #[test]
    fn example_file_documents_every_option() {
        let src = include_str!("../waxwing.example.toml");
        // (section, key) for every line that sets a key, commented or not.
        let mut section = String::new();
        let mut seen = std::collections::HashSet::new();
        for line in src.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(name) = line
                .strip_prefix("[[")
                .and_then(|l| l.strip_suffix("]]"))
                .or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))
            {
                section = name.to_string();
                seen.insert((String::new(), section.clone()));
            } else if let Some((key, _)) = line.split_once('=') {
                seen.insert((section.clone(), key.trim().trim_matches('"').to_string()));
            }
        }
        fn walk(
            fields: &[Field],
            path: &str,
            seen: &std::collections::HashSet<(String, String)>,
            missing: &mut Vec<String>,
        ) {
            for f in fields {
                let full = if path.is_empty() {
                    f.key.to_string()
                } else {
                    format!("{path}.{}", f.key)
                };
                match &f.kind {
                    Kind::Table(sub) | Kind::Tables(sub) => {
                        if !seen.contains(&(String::new(), full.clone())) {
                            missing.push(format!("[{full}]"));
                        }
                        walk(sub, &full, seen, missing)
                    }
                    Kind::StrMap(_) => {
                        if !seen.contains(&(String::new(), full.clone())) {
                            missing.push(format!("[{full}]"));
                        }
                    }
                    _ => {
                        if !seen.contains(&(path.to_string(), f.key.to_string())) {
                            missing.push(full)
                        }
                    }
                }
            }
        }
        let mut missing = Vec::new();
        walk(SCHEMA, "", &seen, &mut missing);
        assert!(
            missing.is_empty(),
            "not in waxwing.example.toml: {missing:?}"
        );
    }

    #[test]
    fn cluster_needs_a_node_id_and_postgres() {
        let base = "[[host]]\ndomain = \"x.test\"\n";
        let pg = "[database]\nurl = \"postgres://u@h/db\"\n";
        assert!(Config::parse(base).unwrap().cluster.is_none());
        let c = Config::parse(&format!("{base}{pg}[cluster]\nnode_id = \"n-1\"\n")).unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(
            (cluster.key_prefix.as_str(), cluster.liveness_ttl_ms),
            ("waxwing", 10_000)
        );
        let problems = |src: String| Config::parse(&src).unwrap_err();
        // SQLite (the default database) is one node's file.
        let p = problems(format!("{base}[cluster]\nnode_id = \"n1\"\n"));
        assert!(p.iter().any(|p| p.message.contains("PostgreSQL")), "{p:?}");
        let p = problems(format!("{base}{pg}[cluster]\n"));
        assert!(
            p.iter().any(|p| p.message.contains("node_id is required")),
            "{p:?}"
        );
        for bad in ["N1", "", "a_b", &"x".repeat(33)] {
            let p = problems(format!("{base}{pg}[cluster]\nnode_id = \"{bad}\"\n"));
            assert!(
                p.iter().any(|p| p.message.contains("node_id")),
                "{bad}: {p:?}"
            );
        }
        let p = problems(format!(
            "{base}{pg}[cluster]\nnode_id = \"n1\"\nredis = \"http://x\"\n"
        ));
        assert!(p.iter().any(|p| p.message.contains("redis")), "{p:?}");
        // Federating nodes share one dialback secret.
        let s2s = "[s2s]\nlisten = [\"127.0.0.1:5269\"]\n";
        let p = problems(format!("{base}{pg}{s2s}[cluster]\nnode_id = \"n1\"\n"));
        assert!(
            p.iter().any(|p| p.message.contains("dialback_secret")),
            "{p:?}"
        );
        let shared = "[s2s]\nlisten = [\"127.0.0.1:5269\"]\ndialback_secret = \"s\"\n";
        assert!(Config::parse(&format!("{base}{pg}{shared}[cluster]\nnode_id = \"n1\"\n")).is_ok());
    }

    #[test]
    fn admin_socket_defaults_beside_the_database() {
        let mut c = Config::default();
        assert_eq!(c.admin_socket(), Some(PathBuf::from("data/waxwing.sock")));
        assert!(c.admin_socket_is_default());
        c.database.url = "sqlite:///var/lib/waxwing/db.sqlite?mode=rwc".into();
        assert_eq!(
            c.admin_socket(),
            Some(PathBuf::from("/var/lib/waxwing/waxwing.sock"))
        );
        c.database.url = "sqlite://w.db".into();
        assert_eq!(c.admin_socket(), Some(PathBuf::from("./waxwing.sock")));
        for url in ["postgres://u@h/db", "sqlite::memory:"] {
            c.database.url = url.into();
            assert_eq!(c.admin_socket(), Some(PathBuf::from("data/waxwing.sock")));
        }

        let c = Config::parse("[admin]\nsocket = \"/run/waxwing/ctl.sock\"\n[s2s]\nbidi = false\n")
            .unwrap();
        assert_eq!(
            c.admin_socket(),
            Some(PathBuf::from("/run/waxwing/ctl.sock"))
        );
        assert!(!c.admin_socket_is_default());
        assert!(!c.s2s.bidi);
        let c = Config::parse("[admin]\nsocket = \"\"\n").unwrap();
        assert_eq!(c.admin_socket(), None);
        assert!(Config::default().s2s.bidi);

        let long = "x".repeat(MAX_SOCKET_PATH + 1);
        let bad = format!("[admin]\nport = 1\nsocket = \"{long}\"\n[s2s]\nbidi = \"yes\"\n");
        let problems = Config::parse(&bad).unwrap_err();
        let lines: Vec<_> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![Some(2), Some(3), Some(5)], "{problems:?}");
        assert!(problems[0].message.contains("unknown key 'admin.port'"));
        assert!(problems[1].message.contains("at most 107 bytes"));
        assert!(problems[2]
            .message
            .contains("s2s.bidi: expected true or false"));
    }

    #[test]
    fn metrics_section_checks_who_may_scrape() {
        let d = Config::default().metrics;
        assert!(d.enabled);
        assert_eq!((d.allow.as_str(), d.storage_refresh), ("loopback", 60));
        let c = Config::parse(
            "[metrics]\nallow = \"loopback_or_token\"\ntoken = \"0123456789abcdef\"\nstorage_refresh = 5\n",
        )
        .unwrap();
        assert_eq!(c.metrics.allow, "loopback_or_token");
        assert_eq!(c.metrics.storage_refresh, 5);
        // A token mode needs a token; an unknown mode and a zero refresh
        // are refused.
        let p = Config::parse("[metrics]\nallow = \"token\"\n").unwrap_err();
        assert!(p[0].message.contains("needs a token"), "{p:?}");
        assert_eq!(p[0].line, Some(1));
        let p = Config::parse("[metrics]\nallow = \"anyone\"\nstorage_refresh = 0\n").unwrap_err();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].message.contains("metrics.allow"), "{p:?}");
        assert!(p[1].message.contains("metrics.storage_refresh"), "{p:?}");
        // Off, no token is needed.
        Config::parse("[metrics]\nenabled = false\nallow = \"token\"\n").unwrap();
    }

    #[test]
    fn s2s_section_parses_and_checks_hosts() {
        let src =
            "[s2s]\nlisten = [\"127.0.0.1:5269\"]\n[s2s.hosts]\n\"b.test\" = \"127.0.0.1:5270\"\n";
        let c = Config::parse(src).unwrap();
        assert!(c.s2s.enabled());
        assert_eq!(c.s2s.hosts["b.test"], "127.0.0.1:5270");
        let bad = "[s2s.hosts]\n\"b.test\" = \"no-port\"\n\"c.test\" = 5\n[s2s]\nmax_queue = 0\n";
        let problems = Config::parse(bad).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().all(|p| p.line.is_some()), "{problems:?}");

        let src = "[s2s]\nlisten_tls = [\"127.0.0.1:5270\"]\nnameservers = [\"127.0.0.1:5353\", \"[::1]:53\"]\n[s2s.hosts]\n\"b.test\" = \"tls://127.0.0.1:5271\"\n";
        let c = Config::parse(src).unwrap();
        assert!(c.s2s.enabled());
        assert_eq!(c.s2s.nameservers.len(), 2);
        assert_eq!(c.s2s.hosts["b.test"], "tls://127.0.0.1:5271");
        let bad = "[s2s]\nnameservers = [\"8.8.8.8\"]\nlisten_tls = \"x\"\n[s2s.hosts]\n\"b.test\" = \"tls://nope\"\n";
        let lines: Vec<_> = Config::parse(bad)
            .unwrap_err()
            .iter()
            .map(|p| p.line)
            .collect();
        assert_eq!(lines, vec![Some(2), Some(3), Some(5)]);
    }

    #[test]
    fn component_options() {
        let src = "[[component]]\ndomain = \"Bot.localhost\"\nsecret = \"s\"\n[component_listener]\nlisten = [\"127.0.0.1:5347\"]\n";
        let c = Config::parse(src).unwrap();
        assert_eq!(
            c.components(),
            vec![("bot.localhost".to_string(), "s".to_string())]
        );
        assert_eq!(c.component_listener.listen.len(), 1);

        let bad = "[[component]]\ndomain = \"localhost\"\nsecret = \"s\"\n[[component]]\ndomain = \"b.org\"\nsecret = \"\"\n[[component]]\ndomain = \"B.org\"\nsecret = \"t\"\n[[component]]\ndomain = \"x@y\"\nsecret = \"t\"\nport = 1\n";
        let problems = Config::parse(bad).unwrap_err();
        assert_eq!(problems.len(), 1, "schema first: {problems:?}");
        assert_eq!(problems[0].line, Some(13));
        let bad = bad.replace("port = 1\n", "");
        let problems = Config::parse(&bad).unwrap_err();
        let lines: Vec<_> = problems.iter().map(|p| p.line).collect();
        assert_eq!(
            lines,
            vec![Some(1), Some(4), Some(7), Some(10)],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("also a [[host]]"));
        assert!(problems[2].message.contains("listed twice"));
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let src = "log_level = \"info\"\nbogus = 1\n[c2s]\nlisten = [\"nope\"]\nidle_timeout = \"x\"\n[limits]\nmax_depth = 1\n[database]\nurl = \"mysql://x\"\n";
        let problems = Config::parse(src).unwrap_err();
        let lines: Vec<_> = problems.iter().map(|p| p.line).collect();
        assert_eq!(
            lines,
            vec![Some(2), Some(4), Some(5), Some(7), Some(9)],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("unknown key 'bogus'"));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let problems = Config::parse("a = 1\n[c2s\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(2));
    }

    #[test]
    fn registration_and_contact_options() {
        let src = "[[host]]\ndomain = \"a.org\"\nallow_registration = true\n[[host]]\ndomain = \"B.org\"\n[limits]\nregistrations_per_ip = 2\nregistration_window = 60\n[contact]\nabuse = [\"mailto:abuse@a.org\", \"xmpp:admin@a.org\"]\n";
        let c = Config::parse(src).unwrap();
        assert!(c.allows_registration("a.org"));
        assert!(!c.allows_registration("b.org"));
        assert!(!c.allows_registration("c.org"));
        assert_eq!(c.limits.registrations_per_ip, 2);
        assert_eq!(c.contact.abuse.len(), 2);

        let bad = "[[host]]\ndomain = \"a.org\"\nallow_registration = \"yes\"\n[limits]\nregistrations_per_ip = 0\nregistration_window = -1\n[contact]\nabuse = [\"abuse@a.org\"]\nadmin = \"mailto:x@a.org\"\nsupport = [\"https://a.org/help\", \"not a uri\"]\nfax = []\n";
        let problems = Config::parse(bad).unwrap_err();
        let lines: Vec<_> = problems.iter().map(|p| p.line).collect();
        assert_eq!(
            lines,
            vec![
                Some(3),
                Some(5),
                Some(6),
                Some(8),
                Some(9),
                Some(10),
                Some(11)
            ],
            "{problems:?}"
        );
        assert!(problems[6].message.contains("unknown key 'contact.fax'"));
    }

    #[test]
    fn semantic_problems() {
        let src = "[[host]]\ndomain = \"exa mple\"\n[[host]]\ndomain = \"a.org\"\ncert = \"x\"\n";
        let problems = Config::parse(src).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].line, Some(1));
        assert_eq!(problems[1].line, Some(3));
    }
}
