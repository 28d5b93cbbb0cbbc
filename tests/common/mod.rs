//! Test harness: the real server on 127.0.0.1:0 with a SQLite file in a
//! temp dir, and a small scripted XMPP client over real TCP/TLS sockets.

#![allow(dead_code)]

pub mod db;
pub mod muc;
pub mod process;
pub mod push_app;
pub mod sasl2;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use waxwing::config::Config;
use waxwing::sasl::{ChannelBindingType, ScramClient, ScramHash};
use waxwing::server::{RunningServer, Server};
use waxwing::storage::Store;
use waxwing::xml::{Element, ParserLimits, StreamEvent, StreamParser, NS_CLIENT};

pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_STREAM_ERRORS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const DOMAIN: &str = "localhost";
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A server running in this process.
pub struct TestServer {
    pub running: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub plain_addr: SocketAddr,
    pub tls_addr: SocketAddr,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts with the defaults, ports chosen by the OS, and `tweak` applied.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_with_features(tweak, Vec::new()).await
    }

    /// As [`TestServer::start_with`], with `extra` features registered
    /// after the default ones (`Server::with_features`).
    pub async fn start_with_features(
        tweak: impl FnOnce(&mut Config),
        extra: Vec<Arc<dyn waxwing::feature::Feature>>,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.database.url = format!("sqlite://{}/waxwing.db", dir.path().display());
        config.tls.dev_cert_dir = dir.path().join("certs");
        config.c2s.listen = vec!["127.0.0.1:0".parse().unwrap()];
        config.c2s.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
        // No HTTP unless a test asks (the default ports are fixed ones,
        // which servers of tests running side by side would share).
        config.http.listen = Vec::new();
        config.http.listen_tls = Vec::new();
        config.log_level = "warn".into();
        tweak(&mut config);
        if config.admin.socket.is_none() && !config.database.url.starts_with("sqlite:") {
            // The default for a non-SQLite database is ./data/waxwing.sock,
            // which servers of tests running side by side would share.
            config.admin.socket = Some(dir.path().join("waxwing.sock").display().to_string());
        }
        let server = Server::with_features(config, extra).await.unwrap();
        let running = RunningServer::start(server).await.unwrap();
        TestServer {
            plain_addr: running.c2s_addrs[0],
            tls_addr: running.c2s_tls_addrs[0],
            running: Some(running),
            dir,
        }
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.running.as_ref().unwrap().server
    }

    /// The admin channel's socket (`waxwing ctl`); panics when disabled.
    pub fn admin_socket(&self) -> std::path::PathBuf {
        let running = self.running.as_ref().unwrap();
        running.admin_socket().expect("admin socket").to_path_buf()
    }

    pub fn store(&self) -> &Store {
        &self.server().store
    }

    pub async fn add_user(&self, user: &str, password: &str) {
        self.add_user_at(DOMAIN, user, password).await
    }

    /// Creates an account on another served domain.
    pub async fn add_user_at(&self, domain: &str, user: &str, password: &str) {
        let jid = jid::BareJid::new(&format!("{user}@{domain}")).unwrap();
        let password = password.to_string();
        let rec = tokio::task::spawn_blocking(move || {
            waxwing::accounts::derive_record(&jid, &password, 4096).unwrap()
        })
        .await
        .unwrap();
        assert!(self.store().create_account(&rec).await.unwrap());
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(5)).await;
        }
    }
}

enum Pipe {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the TLS handshake owns the socket.
    Handshaking,
}

/// A scripted client: send raw XML, read parsed events.
///
/// From the first [`Client::mark`] on, every top-level element read is also
/// kept in `received`, including those the convenience readers (`iq`,
/// `next_named`, `expect_stream_error`) skip, so a claim that something was
/// *not* delivered can be checked against everything that arrived: see
/// [`Client::expect_only`]. (Not before: a flood test reading millions of
/// answers must not hold them all in the process whose RSS it measures.)
pub struct Client {
    pipe: Pipe,
    pub parser: StreamParser,
    pub jid: Option<String>,
    /// The domain `open_stream` addresses.
    pub domain: String,
    /// Every top-level element read from the server since the first mark, in order.
    pub received: Vec<Element>,
    recording: bool,
    barriers: u32,
}

/// What one of the elements allowed by [`Client::expect_only`] looks like:
/// a description for the failure message and a test.
pub struct Expect<'a>(pub &'a str, pub &'a dyn Fn(&Element) -> bool);

/// An element as the XML the server sent (for failure messages).
pub fn show(e: &Element) -> String {
    String::from_utf8_lossy(&e.to_bytes(NS_CLIENT)).into_owned()
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::over(TcpStream::connect(addr).await.unwrap())
    }

    /// Connects from a chosen local address (another loopback address
    /// such as 127.0.0.2 looks like another remote host to the server).
    pub async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        Self::over(socket.connect(addr).await.unwrap())
    }

    fn over(tcp: TcpStream) -> Client {
        Client {
            pipe: Pipe::Plain(tcp),
            parser: StreamParser::new(ParserLimits::default()),
            jid: None,
            domain: DOMAIN.to_string(),
            received: Vec::new(),
            recording: false,
            barriers: 0,
        }
    }

    /// Connects with direct TLS (XEP-0368).
    pub async fn connect_tls(addr: SocketAddr) -> Client {
        Self::connect_tls_sni(addr, DOMAIN).await
    }

    /// Direct TLS, naming `sni` in the handshake.
    pub async fn connect_tls_sni(addr: SocketAddr, sni: &str) -> Client {
        let mut c = Self::connect(addr).await;
        c.tls_handshake_with(sni).await.unwrap();
        c
    }

    /// Direct TLS with a given client configuration (one kept across
    /// connections carries its TLS session store: the second resumes).
    pub async fn connect_tls_config(
        addr: SocketAddr,
        sni: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Client {
        let mut c = Self::connect(addr).await;
        c.tls_handshake_config(sni, config).await.unwrap();
        c
    }

    /// STARTTLS with a given client configuration, up to the features of
    /// the TLS stream.
    pub async fn starttls_config(&mut self, config: Arc<rustls::ClientConfig>) -> Element {
        self.open_stream().await;
        let features = self.next_element().await;
        assert!(features.get_child("starttls", NS_TLS).is_some());
        self.send_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let proceed = self.next_element().await;
        assert!(proceed.is("proceed", NS_TLS), "{proceed:?}");
        self.tls_handshake_config(DOMAIN, config).await.unwrap();
        self.open_stream().await;
        self.next_element().await
    }

    /// Full or resumed: how the TLS handshake went (None before TLS).
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        match &self.pipe {
            Pipe::Tls(s) => s.get_ref().1.handshake_kind(),
            _ => None,
        }
    }

    /// The server's leaf certificate (DER).
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match &self.pipe {
            Pipe::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.to_vec()),
            _ => None,
        }
    }

    /// RFC 5929 tls-server-end-point data for a SHA-256-signed certificate.
    pub fn server_end_point_hash(&self) -> Option<Vec<u8>> {
        use sha2::Digest;
        Some(sha2::Sha256::digest(self.peer_certificate()?).to_vec())
    }

    pub async fn send(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.pipe {
            Pipe::Plain(s) => s.write_all(data).await,
            Pipe::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Pipe::Handshaking => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    pub async fn send_str(&mut self, data: &str) {
        self.send(data.as_bytes()).await.unwrap()
    }

    pub async fn open_stream(&mut self) {
        let domain = self.domain.clone();
        self.send_str(&format!(
            "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        ))
        .await;
    }

    /// Reads raw bytes into the parser; false on EOF.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let n = match &mut self.pipe {
            Pipe::Plain(s) => s.read(&mut buf).await,
            Pipe::Tls(s) => s.read(&mut buf).await,
            Pipe::Handshaking => return false,
        };
        match n {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.parser.feed(&buf[..n]);
                true
            }
        }
    }

    /// The next event, or None when the connection closed.
    pub async fn next_event(&mut self) -> Option<StreamEvent> {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                match self.parser.next_event() {
                    Ok(Some(ev)) => {
                        if let (true, StreamEvent::Stanza(e)) = (self.recording, &ev) {
                            self.received.push(e.clone());
                        }
                        return Some(ev);
                    }
                    Ok(None) => {}
                    Err(e) => panic!("server sent bad XML: {e:?}"),
                }
                if !self.fill().await {
                    return None;
                }
            }
        })
        .await
        .expect("timed out waiting for the server")
    }

    /// The next top-level element; panics on anything else.
    pub async fn next_element(&mut self) -> Element {
        loop {
            match self.next_event().await {
                Some(StreamEvent::Stanza(e)) => return e,
                Some(StreamEvent::Header(_)) => continue,
                other => panic!("expected an element, got {other:?}"),
            }
        }
    }

    /// Reads until a stream error, returning its condition, then checks the
    /// stream is closed.
    pub async fn expect_stream_error(&mut self) -> String {
        loop {
            match self.next_event().await {
                Some(StreamEvent::Stanza(e)) if e.is("error", waxwing::xml::NS_STREAMS) => {
                    let cond = e
                        .children()
                        .find(|c| c.ns() == NS_STREAM_ERRORS && c.name() != "text")
                        .map(|c| c.name().to_string())
                        .unwrap_or_default();
                    match self.next_event().await {
                        Some(StreamEvent::End) | None => {}
                        other => panic!("after stream error expected the end, got {other:?}"),
                    }
                    return cond;
                }
                Some(StreamEvent::Header(_)) | Some(StreamEvent::Stanza(_)) => continue,
                other => panic!("expected a stream error, got {other:?}"),
            }
        }
    }

    /// Asserts the server closes the TCP connection (with or without XML).
    pub async fn expect_closed(&mut self) {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                let _ = self.parser.next_event();
                if !self.fill().await {
                    return;
                }
            }
        })
        .await
        .expect("server did not close the connection")
    }

    pub async fn tls_handshake(&mut self) -> std::io::Result<()> {
        self.tls_handshake_with(DOMAIN).await
    }

    pub async fn tls_handshake_with(&mut self, sni: &str) -> std::io::Result<()> {
        self.tls_handshake_config(sni, insecure_client_config())
            .await
    }

    /// A TLS handshake that sends no SNI (as Prosody 0.12 does on s2s).
    pub async fn tls_handshake_without_sni(&mut self) -> std::io::Result<()> {
        let mut config = (*insecure_client_config()).clone();
        config.enable_sni = false;
        // The name is only used for SNI (disabled) and verification (none).
        self.tls_handshake_config("unused.invalid", Arc::new(config))
            .await
    }

    async fn tls_handshake_config(
        &mut self,
        sni: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<()> {
        let Pipe::Plain(tcp) = std::mem::replace(&mut self.pipe, Pipe::Handshaking) else {
            panic!("already TLS")
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let tls = connector.connect(name, tcp).await?;
        self.pipe = Pipe::Tls(Box::new(tls));
        self.parser.reset();
        Ok(())
    }

    /// STARTTLS on a fresh connection, up to the features of the TLS stream.
    pub async fn starttls(&mut self) -> Element {
        self.open_stream().await;
        let features = self.next_element().await;
        assert!(
            features.get_child("starttls", NS_TLS).is_some(),
            "{features:?}"
        );
        self.send_str("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .await;
        let proceed = self.next_element().await;
        assert!(proceed.is("proceed", NS_TLS), "{proceed:?}");
        self.tls_handshake().await.unwrap();
        self.open_stream().await;
        self.next_element().await
    }

    pub fn tls_exporter(&self) -> Option<Vec<u8>> {
        match &self.pipe {
            Pipe::Tls(s) => {
                let mut out = vec![0u8; 32];
                s.get_ref()
                    .1
                    .export_keying_material(&mut out, b"EXPORTER-Channel-Binding", None)
                    .ok()?;
                Some(out)
            }
            _ => None,
        }
    }

    /// Runs SCRAM; returns the server's answer element (success or failure).
    pub async fn scram(&mut self, hash: ScramHash, user: &str, pass: &str, plus: bool) -> Element {
        let cb = if plus {
            Some((
                ChannelBindingType::TlsExporter,
                self.tls_exporter().unwrap(),
            ))
        } else {
            None
        };
        self.scram_exchange(hash, user, pass, cb).await
    }

    /// SCRAM-…-PLUS with the given channel binding.
    pub async fn scram_with_binding(
        &mut self,
        hash: ScramHash,
        user: &str,
        pass: &str,
        cb_type: ChannelBindingType,
        cb_data: Vec<u8>,
    ) -> Element {
        self.scram_exchange(hash, user, pass, Some((cb_type, cb_data)))
            .await
    }

    async fn scram_exchange(
        &mut self,
        hash: ScramHash,
        user: &str,
        pass: &str,
        cb: Option<(ChannelBindingType, Vec<u8>)>,
    ) -> Element {
        let mech = if cb.is_some() {
            hash.plus_name()
        } else {
            hash.name()
        };
        let mut client = ScramClient::new(hash, user, pass, cb);
        let first = b64(&client.client_first());
        self.send_str(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='{mech}'>{first}</auth>"
        ))
        .await;
        let challenge = self.next_element().await;
        if !challenge.is("challenge", NS_SASL) {
            return challenge;
        }
        let server_first = unb64(&challenge.text());
        let Ok(final_msg) = client.handle_server_first(&server_first) else {
            panic!("bad server-first")
        };
        self.send_str(&format!(
            "<response xmlns='{NS_SASL}'>{}</response>",
            b64(&final_msg)
        ))
        .await;
        let outcome = self.next_element().await;
        if outcome.is("success", NS_SASL) {
            client
                .verify_server_final(&unb64(&outcome.text()))
                .expect("server signature verifies");
            // RFC 6120 §6.4.6: both sides restart the stream after success.
            self.parser.reset();
        }
        outcome
    }

    /// Binds `resource` (or lets the server pick); returns the bound JID.
    pub async fn bind(&mut self, resource: Option<&str>) -> String {
        let res = resource
            .map(|r| format!("<resource>{r}</resource>"))
            .unwrap_or_default();
        self.send_str(&format!(
            "<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>{res}</bind></iq>"
        ))
        .await;
        let reply = self.next_element().await;
        assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
        let jid = reply
            .get_child("bind", NS_BIND)
            .and_then(|b| b.get_child("jid", NS_BIND))
            .map(|j| j.text())
            .expect("bound jid");
        self.jid = Some(jid.clone());
        jid
    }

    /// STARTTLS, SCRAM-SHA-256, restart, bind, initial presence.
    pub async fn login(addr: SocketAddr, user: &str, pass: &str, resource: Option<&str>) -> Client {
        let mut c = Self::login_without_presence(addr, user, pass, resource).await;
        c.send_str("<presence/>").await;
        c
    }

    /// STARTTLS, SCRAM-SHA-256, restart, bind — no presence yet.
    pub async fn login_without_presence(
        addr: SocketAddr,
        user: &str,
        pass: &str,
        resource: Option<&str>,
    ) -> Client {
        Self::login_at(addr, DOMAIN, user, pass, resource).await
    }

    /// STARTTLS, SCRAM-SHA-256, restart, bind on `domain` — no presence yet.
    pub async fn login_at(
        addr: SocketAddr,
        domain: &str,
        user: &str,
        pass: &str,
        resource: Option<&str>,
    ) -> Client {
        let mut c = Client::connect(addr).await;
        c.domain = domain.to_string();
        c.starttls().await;
        let outcome = c.scram(ScramHash::Sha256, user, pass, false).await;
        assert!(outcome.is("success", NS_SASL), "{outcome:?}");
        c.open_stream().await;
        let features = c.next_element().await;
        assert!(features.get_child("bind", NS_BIND).is_some());
        c.bind(resource).await;
        c
    }

    /// Sends an IQ get/set and returns the reply with the same id.
    /// An external component (XEP-0114) connected as `domain` with
    /// `secret`, its handshake done.
    pub async fn component(addr: SocketAddr, domain: &str, secret: &str) -> Client {
        let mut c = Self::component_handshake_sent(addr, domain, secret).await;
        let ok = c.next_element().await;
        let ns = waxwing::stream::component::NS_COMPONENT;
        assert!(ok.is("handshake", ns), "{ok:?}");
        c
    }

    /// A component stream to `domain` with its `<handshake/>` for
    /// `secret` sent, the server's answer not yet read.
    pub async fn component_handshake_sent(addr: SocketAddr, domain: &str, secret: &str) -> Client {
        use waxwing::stream::component::{handshake_digest, NS_COMPONENT};
        let mut c = Client::connect(addr).await;
        c.send_str(&format!(
            "<stream:stream xmlns='{NS_COMPONENT}' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
        ))
        .await;
        let id = match c.next_event().await {
            Some(StreamEvent::Header(h)) => h.id.expect("stream id"),
            other => panic!("expected a header, got {other:?}"),
        };
        c.send_str(&format!(
            "<handshake>{}</handshake>",
            handshake_digest(&id, secret)
        ))
        .await;
        c
    }

    pub async fn iq(&mut self, xml: &str, id: &str) -> Element {
        self.send_str(xml).await;
        loop {
            let e = self.next_element().await;
            if e.is("iq", NS_CLIENT) && e.attr("id") == Some(id) {
                return e;
            }
        }
    }

    /// A position in `received`: what arrives after it is what
    /// [`Client::expect_only`] checks. Recording starts with the first mark.
    pub fn mark(&mut self) -> usize {
        self.recording = true;
        self.received.len()
    }

    /// A round trip to the own server (XEP-0199 ping): once its answer is
    /// read, everything the server routed to this session before it handled
    /// the ping has been read too (one session's queue is delivered in order).
    pub async fn barrier(&mut self) {
        self.barriers += 1;
        let id = format!("barrier-{}", self.barriers);
        let to = self.domain.clone();
        self.send_str(&format!(
            "<iq type='get' id='{id}' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        loop {
            let e = self.next_element().await;
            if e.is("iq", NS_CLIENT) && e.attr("id") == Some(id.as_str()) {
                assert_eq!(e.attr("type"), Some("result"), "barrier: {}", show(&e));
                // The barrier's own answer is not part of what the test saw.
                if self.recording {
                    self.received.pop();
                }
                return;
            }
        }
    }

    /// The strict check for "nothing but X arrived": after a barrier, every
    /// element received since `since` must be matched by one entry of
    /// `allowed`, each entry matching exactly one element, in any order, and
    /// every entry must have been used. Panics listing everything received
    /// otherwise. Returns the elements since `since`.
    pub async fn expect_only(&mut self, since: usize, allowed: &[Expect<'_>]) -> Vec<Element> {
        self.barrier().await;
        let got = self.received[since..].to_vec();
        let mut used = vec![false; allowed.len()];
        let listing = || {
            got.iter()
                .map(|e| format!("\n  {}", show(e)))
                .collect::<String>()
        };
        for e in &got {
            let slot = allowed
                .iter()
                .enumerate()
                .position(|(i, Expect(_, f))| !used[i] && f(e));
            match slot {
                Some(i) => used[i] = true,
                None => panic!(
                    "{}: unexpected {}; received since the mark:{}",
                    self.jid.as_deref().unwrap_or("client"),
                    show(e),
                    listing()
                ),
            }
        }
        for (i, Expect(what, _)) in allowed.iter().enumerate() {
            assert!(
                used[i],
                "{}: expected {what}; received since the mark:{}",
                self.jid.as_deref().unwrap_or("client"),
                listing()
            );
        }
        got
    }

    /// Nothing at all arrived since `since` (after a barrier).
    pub async fn expect_nothing(&mut self, since: usize) {
        self.expect_only(since, &[]).await;
    }

    /// Next stanza of the given name.
    pub async fn next_named(&mut self, name: &str) -> Element {
        loop {
            let e = self.next_element().await;
            if e.name() == name {
                return e;
            }
        }
    }
}

/// Polls `check` every 20 ms until it holds; panics naming `what` when it
/// still does not after [`TIMEOUT`] (a poll must never fall through).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened within {TIMEOUT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The error condition of an error stanza.
pub fn stanza_error(e: &Element) -> Option<String> {
    e.get_child("error", NS_CLIENT)?
        .children()
        .find(|c| c.ns() == NS_STANZAS)
        .map(|c| c.name().to_string())
}

pub fn b64(d: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(d)
}

pub fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .unwrap()
}

/// Tests trust the self-signed dev certificate by not verifying at all;
/// what is under test is the server, not the certificate chain.
pub fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAll;
    impl rustls::client::danger::ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAll))
            .with_no_client_auth(),
    )
}

/// A port nothing listens on, for servers that must know each other's
/// ports before they start. Taken below the kernel's ephemeral range
/// (32768–60999 on Linux), so no connection or `bind(0)` elsewhere can take
/// it between this check and the server's bind, and from a block of ten
/// that depends on the process id, so test processes running side by side
/// (nextest runs one test per process) do not pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // 20000–24999: clear of the well-known services here (RabbitMQ's
    // 25672 included).
    let block = (std::process::id() % 500) as u16;
    for _ in 0..5000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (block * 10 + n) % 5000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-24999");
}

/// A directory under `root` with a development certificate for `domain`.
pub fn cert_dir(root: &tempfile::TempDir, domain: &str) -> std::path::PathBuf {
    let dir = root.path().join(domain);
    waxwing::net::tls::ensure_dev_cert(&dir, &[domain.to_string()]).unwrap();
    dir
}

/// `user` (password "pw") logs in and gets a ping answered within 3 s:
/// whatever a test just did to the server, it still serves everyone else.
pub async fn still_serves_user(server: &TestServer, user: &str) {
    let started = std::time::Instant::now();
    let mut c = Client::login(server.plain_addr, user, "pw", None).await;
    let p = c
        .iq(
            "<iq type='get' id='alive' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
            "alive",
        )
        .await;
    assert_eq!(p.attr("type"), Some("result"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "login took {:?}",
        started.elapsed()
    );
}

/// [`still_serves_user`] as the test servers' usual "canary".
pub async fn still_serves(server: &TestServer) {
    still_serves_user(server, "canary").await
}

/// Parses a text with nothing around it (a WebSocket message, a BOSH
/// body): a namespace it does not declare itself is an error here, as it
/// is for a browser's parser.
pub fn standalone(text: &str) -> Vec<Element> {
    let mut parser = waxwing::xml::StreamParser::new(waxwing::xml::ParserLimits {
        max_stanza_bytes: 1 << 22,
        max_depth: 32,
        max_elements: 10_000,
        max_attributes: 64,
        max_ns_declarations: 16,
        max_ns_in_scope: 64,
        max_name_bytes: 256,
        max_ns_uri_bytes: 512,
        max_stanza_memory: 1 << 24,
    });
    // A stream header with no default namespace and no prefixes.
    parser.feed(b"<root>");
    parser.feed(text.as_bytes());
    let mut out = Vec::new();
    while let Ok(Some(ev)) = parser.next_event() {
        if let waxwing::xml::StreamEvent::Stanza(e) = ev {
            out.push(e);
        }
    }
    out
}
