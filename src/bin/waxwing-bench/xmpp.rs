//! The client side of c2s negotiation, as a benchmark needs it: TCP, STARTTLS,
//! SCRAM or PLAIN, bind, initial presence; and XEP-0077 in-band registration.
//! XML goes through the server's own streaming parser (`waxwing::xml`).

use std::sync::Arc;

pub use crate::ws::{Conn, WsIo, WsTarget};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use waxwing::sasl::{SaltedPasswordCache, ScramClient, ScramHash};
use waxwing::xml::{escape_attr, escape_text, Element, ParserLimits, StreamEvent, StreamParser};

pub const NS_STREAM: &str = "http://etherx.jabber.org/streams";
const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
const NS_REGISTER: &str = "jabber:iq:register";
pub const NS_SM: &str = "urn:xmpp:sm:3";
pub const NS_CARBONS: &str = "urn:xmpp:carbons:2";
const NS_CLIENT: &str = "jabber:client";

/// A stanza in the sense of XEP-0198's counters: message, presence or iq.
pub fn is_stanza(el: &Element) -> bool {
    matches!(el.name(), "message" | "presence" | "iq") && el.ns() == NS_CLIENT
}

/// Where a login or registration failed; failures are counted per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    Connect,
    Stream,
    StartTls,
    Tls,
    Sasl,
    Bind,
    Register,
    Resume,
    Timeout,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Connect => "connect",
            Step::Stream => "stream",
            Step::StartTls => "starttls",
            Step::Tls => "tls",
            Step::Sasl => "sasl",
            Step::Bind => "bind",
            Step::Register => "register",
            Step::Resume => "resume",
            Step::Timeout => "timeout",
        }
    }
}

#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub detail: String,
}

fn fail<T>(step: Step, detail: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        step,
        detail: detail.into(),
    })
}

/// Accepts any server certificate. This is a load generator pointed at servers
/// on loopback with throw-away self-signed certificates; it must never be used
/// to talk to anything that matters.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS client settings (ring provider, any certificate). Session resumption is
/// off unless asked for, so every login pays a full handshake, as a first
/// connection of a client does.
pub fn tls_connector(resume: bool) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    TlsConnector::from(Arc::new(config))
}

/// Everything a session needs to log in.
#[derive(Clone)]
pub struct Target {
    pub addr: std::net::SocketAddr,
    pub domain: String,
    pub tls_name: ServerName<'static>,
    pub connector: TlsConnector,
    pub password: String,
    pub scram_cache: Arc<SaltedPasswordCache>,
    /// How sessions authenticate.
    pub sasl: SaslChoice,
    /// XMPP over WebSocket (wss) instead of TCP with STARTTLS.
    pub ws: Option<WsTarget>,
}

/// `host:port` resolved, refused unless it is a loopback address: the
/// tool generates load, and must only ever hit this machine.
pub fn loopback_addr(host: &str, port: u16) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; refusing to send load there"
        ));
    }
    Ok(addr)
}

/// The runtime the tool runs on: two workers (the machine's two cores),
/// named so that a profile or `top -H` tells them from the server's.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-worker")
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl Target {
    /// `domain`'s server at `addr`: STARTTLS without TLS resumption, SCRAM
    /// logins, over TCP. The subcommands' target; the main command's
    /// options change some of it.
    pub fn scram(
        addr: std::net::SocketAddr,
        domain: &str,
        password: &str,
        scram_cache: Arc<SaltedPasswordCache>,
    ) -> Result<Target, String> {
        Ok(Target {
            addr,
            domain: domain.to_owned(),
            tls_name: ServerName::try_from(domain.to_owned())
                .map_err(|e| format!("domain {domain}: {e}"))?,
            connector: tls_connector(false),
            password: password.to_owned(),
            scram_cache,
            sasl: SaslChoice::Scram,
            ws: None,
        })
    }

    /// The same target with a TLS session store of its own, as one real
    /// client has: its reconnection presents the ticket of its own last
    /// session. (One store shared by every benchmark session keeps only a
    /// few tickets per server name, so most reconnections of a storm would
    /// fall back to a full handshake.)
    pub fn with_own_tls_sessions(&self) -> Target {
        let mut config = ClientConfig::clone(self.connector.config());
        config.resumption = rustls::client::Resumption::store(Arc::new(
            rustls::client::ClientSessionMemoryCache::new(2),
        ));
        Target {
            connector: TlsConnector::from(Arc::new(config)),
            ..self.clone()
        }
    }
}

/// The SASL mechanism a benchmark logs in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslChoice {
    /// SCRAM-SHA-256, else SCRAM-SHA-1 (the client-side PBKDF2 is cached).
    Scram,
    /// PLAIN (RFC 4616), over the TLS stream: the server derives the key
    /// from the password on every login, as for go-sendxmpp, bots and
    /// gateways that only speak PLAIN.
    Plain,
}

/// A stream and the parser reading it.
pub struct XmlStream<S> {
    pub io: S,
    pub parser: StreamParser,
    pub scratch: Box<[u8]>,
}

/// Read buffer size per session; stanzas larger than this arrive in several reads.
pub const READ_BUF: usize = 4096;

impl<S: AsyncRead + AsyncWrite + Unpin> XmlStream<S> {
    fn new(io: S) -> Self {
        XmlStream {
            io,
            parser: StreamParser::new(ParserLimits::default()),
            scratch: vec![0u8; READ_BUF].into_boxed_slice(),
        }
    }

    async fn send(&mut self, step: Step, data: &[u8]) -> Result<(), Failure> {
        let r = async {
            self.io.write_all(data).await?;
            self.io.flush().await
        }
        .await;
        r.or_else(|e| fail(step, format!("write: {e}")))
    }

    async fn next_event(&mut self, step: Step) -> Result<StreamEvent, Failure> {
        loop {
            match self.parser.next_event() {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return fail(step, format!("xml: {e}")),
            }
            let n = match self.io.read(&mut self.scratch).await {
                Ok(0) => return fail(step, "connection closed by server"),
                Ok(n) => n,
                Err(e) => return fail(step, format!("read: {e}")),
            };
            self.parser.feed(&self.scratch[..n]);
        }
    }

    async fn next_stanza(&mut self, step: Step) -> Result<Element, Failure> {
        match self.next_event(step).await? {
            StreamEvent::Stanza(el) => {
                if el.name() == "error" && el.ns() == NS_STREAM {
                    let cond = el
                        .children()
                        .next()
                        .map(|c| c.name().to_owned())
                        .unwrap_or_default();
                    return fail(step, format!("stream error {cond}"));
                }
                Ok(el)
            }
            StreamEvent::End => fail(step, "stream closed by server"),
            StreamEvent::Header(_) => fail(step, "unexpected stream header"),
        }
    }

    /// Sends a stream header and reads the server's header and features.
    async fn open(&mut self, step: Step, domain: &str) -> Result<Element, Failure> {
        self.parser.reset();
        let header = format!(
            "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xml:lang='en' \
             xmlns='jabber:client' xmlns:stream='{NS_STREAM}'>"
        );
        self.send(step, header.as_bytes()).await?;
        match self.next_event(step).await? {
            StreamEvent::Header(_) => {}
            _ => return fail(step, "expected a stream header"),
        }
        let features = self.next_stanza(step).await?;
        if features.name() != "features" || features.ns() != NS_STREAM {
            return fail(
                step,
                format!("expected features, got <{}>", features.name()),
            );
        }
        Ok(features)
    }
}

/// A connection with TLS and the stream opened over it: STARTTLS on TCP,
/// or a WebSocket over TLS when the target says so. Returns the features.
async fn connect_tls(t: &Target) -> Result<(XmlStream<Conn>, Element), Failure> {
    if let Some(ws) = &t.ws {
        return connect_ws(t, ws).await;
    }
    let tcp = match TcpStream::connect(t.addr).await {
        Ok(s) => s,
        Err(e) => return fail(Step::Connect, e.to_string()),
    };
    let _ = tcp.set_nodelay(true);
    let mut plain = XmlStream::new(tcp);
    let features = plain.open(Step::Stream, &t.domain).await?;
    if features.get_child("starttls", NS_TLS).is_none() {
        return fail(Step::StartTls, "server offers no STARTTLS");
    }
    plain
        .send(
            Step::StartTls,
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        )
        .await?;
    let proceed = plain.next_stanza(Step::StartTls).await?;
    if proceed.name() != "proceed" {
        return fail(Step::StartTls, format!("got <{}>", proceed.name()));
    }
    let tls = match t.connector.connect(t.tls_name.clone(), plain.io).await {
        Ok(s) => s,
        Err(e) => return fail(Step::Tls, e.to_string()),
    };
    let mut xs = XmlStream {
        io: Conn::Tls(tls),
        parser: plain.parser,
        scratch: plain.scratch,
    };
    let features = xs.open(Step::Stream, &t.domain).await?;
    Ok((xs, features))
}

/// TCP, TLS, the WebSocket handshake, `<open/>`: returns the features.
async fn connect_ws(t: &Target, ws: &WsTarget) -> Result<(XmlStream<Conn>, Element), Failure> {
    let tcp = match TcpStream::connect(ws.addr).await {
        Ok(s) => s,
        Err(e) => return fail(Step::Connect, e.to_string()),
    };
    let _ = tcp.set_nodelay(true);
    let tls = match t.connector.connect(t.tls_name.clone(), tcp).await {
        Ok(s) => s,
        Err(e) => return fail(Step::Tls, e.to_string()),
    };
    let io = match WsIo::handshake(tls, &t.domain, ws.addr.port(), &ws.path).await {
        Ok(io) => io,
        Err(e) => return fail(Step::Connect, e),
    };
    let mut xs = XmlStream::new(Conn::Ws(Box::new(io)));
    let features = xs.open(Step::Stream, &t.domain).await?;
    Ok((xs, features))
}

/// A logged-in, bound, available session.
pub struct Session {
    pub stream: XmlStream<Conn>,
    pub jid: String,
    /// Stream management: None when not asked for, else what came of `<enable/>`.
    pub sm: Option<Result<SmSession, String>>,
    /// Carbons: None when not asked for, else whether the server accepted them.
    pub carbons: Option<Result<(), String>>,
}

/// What to do after bind.
#[derive(Debug, Clone, Copy)]
pub struct LoginOpts {
    /// Send initial presence.
    pub presence: bool,
    /// Enable stream management (resumable) right after bind.
    pub sm: bool,
    /// Enable message carbons (XEP-0280) after bind.
    pub carbons: bool,
}

/// The client side of an enabled stream management (XEP-0198).
#[derive(Debug, Clone, Default)]
pub struct SmSession {
    /// Resumption id from `<enabled/>`.
    pub id: String,
    /// Stanzas received since `<enabled/>` (our `h`), modulo 2^32.
    pub h: u32,
    /// Stanzas sent since `<enabled/>` (the server's `h` should reach it).
    pub sent: u32,
    /// `<a/>` written, and `<r/>` received, during the login.
    pub acks_sent: u64,
    pub requests: u64,
}

impl SmSession {
    /// `<a xmlns='urn:xmpp:sm:3' h='N'/>` for `h`.
    pub fn ack(h: u32) -> String {
        format!("<a xmlns='{NS_SM}' h='{h}'/>")
    }
}

fn mechanisms(features: &Element) -> Vec<String> {
    match features.get_child("mechanisms", NS_SASL) {
        Some(m) => m
            .children()
            .filter(|c| c.name() == "mechanism")
            .map(|c| c.text().trim().to_owned())
            .collect(),
        None => Vec::new(),
    }
}

/// The whole login of one session: STARTTLS, SASL (`t.sasl`),
/// stream restart, bind `resource`, legacy session if required, `<presence/>`.
pub async fn login(t: &Target, user: &str, resource: &str) -> Result<Session, Failure> {
    let opts = LoginOpts {
        presence: true,
        sm: false,
        carbons: false,
    };
    login_with(t, user, resource, opts).await
}

/// Like `login`, sending initial presence only when `presence` is true.
pub async fn login_bound(
    t: &Target,
    user: &str,
    resource: &str,
    presence: bool,
) -> Result<Session, Failure> {
    let opts = LoginOpts {
        presence,
        sm: false,
        carbons: false,
    };
    login_with(t, user, resource, opts).await
}

/// The whole login, with stream management and carbons as `opts` asks.
pub async fn login_with(
    t: &Target,
    user: &str,
    resource: &str,
    opts: LoginOpts,
) -> Result<Session, Failure> {
    let xs = authenticate(t, user).await?;
    bind_session(t, xs, resource, opts).await
}

/// TCP, STARTTLS, SASL: a stream ready to be restarted.
async fn authenticate(t: &Target, user: &str) -> Result<XmlStream<Conn>, Failure> {
    let (mut xs, features) = connect_tls(t).await?;
    let mechs = mechanisms(&features);
    match t.sasl {
        SaslChoice::Scram => sasl_scram(t, &mut xs, &mechs, user).await?,
        SaslChoice::Plain => sasl_plain(t, &mut xs, &mechs, user).await?,
    }
    Ok(xs)
}

/// A session taken back by XEP-0198 resumption on a new connection.
pub struct Resumed {
    pub stream: XmlStream<Conn>,
    /// The `h` of `<resumed/>`: stanzas of ours the server handled.
    pub server_h: Option<u32>,
    /// From `<resume/>` written to `<resumed/>` parsed.
    pub resume_us: u64,
    /// From the TCP connect to `<resumed/>` parsed.
    pub reconnect_us: u64,
    /// The TLS handshake resumed an earlier TLS session (no certificate,
    /// no signature) rather than a full one.
    pub tls_resumed: bool,
}

/// New connection, authentication as `user`, restart, `<resume previd h/>`,
/// `<resumed/>`. What the server re-sends after it is left to the caller.
pub async fn resume(t: &Target, user: &str, previd: &str, h: u32) -> Result<Resumed, Failure> {
    let start = std::time::Instant::now();
    let mut xs = authenticate(t, user).await?;
    let features = xs.open(Step::Resume, &t.domain).await?;
    if features.get_child("sm", NS_SM).is_none() {
        return fail(
            Step::Resume,
            "server offers no stream management after SASL",
        );
    }
    let mut req = format!("<resume xmlns='{NS_SM}' previd='").into_bytes();
    escape_attr(previd, &mut req);
    req.extend_from_slice(format!("' h='{h}'/>").as_bytes());
    let sent_at = std::time::Instant::now();
    xs.send(Step::Resume, &req).await?;
    let el = xs.next_stanza(Step::Resume).await?;
    let (resume_us, reconnect_us) = (
        sent_at.elapsed().as_micros() as u64,
        start.elapsed().as_micros() as u64,
    );
    if !el.is("resumed", NS_SM) {
        let cond = el
            .children()
            .next()
            .map(|c| c.name().to_owned())
            .unwrap_or_default();
        return fail(Step::Resume, format!("<{}> {cond}", el.name()));
    }
    let tls_resumed =
        xs.io.tls().get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok(Resumed {
        server_h: el.attr("h").and_then(|h| h.parse().ok()),
        tls_resumed,
        stream: xs,
        resume_us,
        reconnect_us,
    })
}

/// PLAIN with the initial response in `<auth/>`.
async fn sasl_plain(
    t: &Target,
    xs: &mut XmlStream<Conn>,
    mechs: &[String],
    user: &str,
) -> Result<(), Failure> {
    if !mechs.iter().any(|m| m == "PLAIN") {
        return fail(Step::Sasl, format!("no PLAIN in {mechs:?}"));
    }
    let msg = B64.encode(waxwing::sasl::build_plain(None, user, &t.password));
    xs.send(
        Step::Sasl,
        format!("<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{msg}</auth>").as_bytes(),
    )
    .await?;
    let outcome = xs.next_stanza(Step::Sasl).await?;
    if outcome.name() != "success" {
        let cond = outcome
            .children()
            .next()
            .map(|c| c.name().to_owned())
            .unwrap_or_default();
        return fail(Step::Sasl, format!("<{}> {cond}", outcome.name()));
    }
    Ok(())
}

/// SCRAM-SHA-256 (else -SHA-1), checking the server's signature.
async fn sasl_scram(
    t: &Target,
    xs: &mut XmlStream<Conn>,
    mechs: &[String],
    user: &str,
) -> Result<(), Failure> {
    let (hash, mech) = if mechs.iter().any(|m| m == "SCRAM-SHA-256") {
        (ScramHash::Sha256, "SCRAM-SHA-256")
    } else if mechs.iter().any(|m| m == "SCRAM-SHA-1") {
        (ScramHash::Sha1, "SCRAM-SHA-1")
    } else {
        return fail(Step::Sasl, format!("no SCRAM mechanism in {mechs:?}"));
    };
    let mut scram =
        ScramClient::new(hash, user, &t.password, None).with_cache(t.scram_cache.clone());
    let first = B64.encode(scram.client_first());
    xs.send(
        Step::Sasl,
        format!("<auth xmlns='{NS_SASL}' mechanism='{mech}'>{first}</auth>").as_bytes(),
    )
    .await?;
    let challenge = xs.next_stanza(Step::Sasl).await?;
    if challenge.name() != "challenge" {
        return fail(Step::Sasl, format!("got <{}>", challenge.name()));
    }
    let server_first = B64
        .decode(challenge.text().trim())
        .or_else(|e| fail(Step::Sasl, format!("challenge base64: {e}")))?;
    let client_final = scram
        .handle_server_first(&server_first)
        .or_else(|e| fail(Step::Sasl, format!("server-first: {e:?}")))?;
    xs.send(
        Step::Sasl,
        format!(
            "<response xmlns='{NS_SASL}'>{}</response>",
            B64.encode(client_final)
        )
        .as_bytes(),
    )
    .await?;
    let outcome = xs.next_stanza(Step::Sasl).await?;
    if outcome.name() != "success" {
        let cond = outcome
            .children()
            .next()
            .map(|c| c.name().to_owned())
            .unwrap_or_default();
        return fail(Step::Sasl, format!("<{}> {cond}", outcome.name()));
    }
    let server_final = B64
        .decode(outcome.text().trim())
        .or_else(|e| fail(Step::Sasl, format!("success base64: {e}")))?;
    scram
        .verify_server_final(&server_final)
        .or_else(|e| fail(Step::Sasl, format!("server signature: {e:?}")))?;
    Ok(())
}

/// After SASL success: restart the stream, bind, legacy session if asked
/// for, then as `opts` says stream management, carbons and initial presence.
async fn bind_session(
    t: &Target,
    mut xs: XmlStream<Conn>,
    resource: &str,
    opts: LoginOpts,
) -> Result<Session, Failure> {
    let features = xs.open(Step::Bind, &t.domain).await?;
    if features.get_child("bind", NS_BIND).is_none() {
        return fail(Step::Bind, "server offers no bind");
    }
    xs.send(
        Step::Bind,
        format!(
            "<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'><resource>{resource}</resource></bind></iq>"
        )
        .as_bytes(),
    )
    .await?;
    let jid = loop {
        let el = xs.next_stanza(Step::Bind).await?;
        if el.name() != "iq" || el.attr("id") != Some("bind1") {
            continue;
        }
        if el.attr("type") != Some("result") {
            return fail(Step::Bind, "bind refused");
        }
        match el
            .get_child("bind", NS_BIND)
            .and_then(|b| b.get_child("jid", NS_BIND))
        {
            Some(j) => break j.text().trim().to_owned(),
            None => return fail(Step::Bind, "bind result without jid"),
        }
    };
    // RFC 3921 session establishment, only where the server still requires it.
    if let Some(s) = features.get_child("session", NS_SESSION) {
        if s.get_child("optional", NS_SESSION).is_none() {
            xs.send(
                Step::Bind,
                format!("<iq type='set' id='sess1'><session xmlns='{NS_SESSION}'/></iq>")
                    .as_bytes(),
            )
            .await?;
            loop {
                let el = xs.next_stanza(Step::Bind).await?;
                if el.name() == "iq" && el.attr("id") == Some("sess1") {
                    if el.attr("type") != Some("result") {
                        return fail(Step::Bind, "session refused");
                    }
                    break;
                }
            }
        }
    }
    let mut sm = None;
    if opts.sm {
        sm = Some(enable_sm(&mut xs, &features).await?);
    }
    let mut counting = sm.as_ref().and_then(|r| r.as_ref().ok()).cloned();
    let mut carbons = None;
    if opts.carbons {
        xs.send(
            Step::Bind,
            format!("<iq type='set' id='carb1'><enable xmlns='{NS_CARBONS}'/></iq>").as_bytes(),
        )
        .await?;
        if let Some(c) = &mut counting {
            c.sent = c.sent.wrapping_add(1);
        }
        carbons = Some(loop {
            let el = xs.next_counted(Step::Bind, &mut counting).await?;
            if el.name() != "iq" || el.attr("id") != Some("carb1") {
                continue;
            }
            if el.attr("type") == Some("result") {
                break Ok(());
            }
            let cond = el
                .get_child("error", NS_CLIENT)
                .and_then(|e| e.children().next().map(|c| c.name().to_owned()))
                .unwrap_or_default();
            break Err(format!("iq {} {cond}", el.attr("type").unwrap_or("")));
        });
    }
    if opts.presence {
        xs.send(Step::Bind, b"<presence/>").await?;
        if let Some(c) = &mut counting {
            c.sent = c.sent.wrapping_add(1);
        }
    }
    if let Some(Ok(s)) = &mut sm {
        if let Some(c) = counting {
            *s = c;
        }
    }
    Ok(Session {
        stream: xs,
        jid,
        sm,
        carbons,
    })
}

/// `<enable resume='true'/>` and its answer. Err(reason) when the server
/// offers no stream management or does not send `<enabled/>`.
async fn enable_sm(
    xs: &mut XmlStream<Conn>,
    features: &Element,
) -> Result<Result<SmSession, String>, Failure> {
    if features.get_child("sm", NS_SM).is_none() {
        return Ok(Err(
            "server offers no stream management (urn:xmpp:sm:3)".into()
        ));
    }
    xs.send(
        Step::Bind,
        format!("<enable xmlns='{NS_SM}' resume='true'/>").as_bytes(),
    )
    .await?;
    // Reading is cancel-safe (a read is fed to the parser before the next await).
    let wait = std::time::Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Ok(el) = tokio::time::timeout_at(deadline, xs.next_stanza(Step::Bind)).await else {
            return Ok(Err(format!("no <enabled/> within {} s", wait.as_secs())));
        };
        let el = el?;
        if el.is("enabled", NS_SM) {
            let Some(id) = el.attr("id") else {
                return Ok(Err("<enabled/> without a resumption id".into()));
            };
            return Ok(Ok(SmSession {
                id: id.to_owned(),
                ..SmSession::default()
            }));
        }
        if el.is("failed", NS_SM) {
            let cond = el
                .children()
                .next()
                .map(|c| c.name().to_owned())
                .unwrap_or_default();
            return Ok(Err(format!("<failed/> {cond}")));
        }
        // Anything before <enabled/> is not counted, by either side.
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> XmlStream<S> {
    /// The next element, with stream management's bookkeeping when `sm` is
    /// on: stanzas are counted, each `<r/>` is answered at once.
    async fn next_counted(
        &mut self,
        step: Step,
        sm: &mut Option<SmSession>,
    ) -> Result<Element, Failure> {
        loop {
            let el = self.next_stanza(step).await?;
            let Some(c) = sm.as_mut() else {
                return Ok(el);
            };
            if el.is("r", NS_SM) {
                c.requests += 1;
                self.send(step, SmSession::ack(c.h).as_bytes()).await?;
                c.acks_sent += 1;
                continue;
            }
            if is_stanza(&el) {
                c.h = c.h.wrapping_add(1);
            }
            return Ok(el);
        }
    }

    /// Sends raw XML (for `waxwing-bench im`).
    pub async fn send_raw(&mut self, data: &[u8]) -> Result<(), String> {
        self.send(Step::Stream, data)
            .await
            .map_err(|f| format!("{f:?}"))
    }

    /// The next top-level element (for `waxwing-bench im`).
    pub async fn next_element(&mut self) -> Result<Element, String> {
        self.next_stanza(Step::Stream)
            .await
            .map_err(|f| format!("{f:?}"))
    }
}

/// Outcome of one XEP-0077 registration.
pub enum Registered {
    Created,
    Existed,
}

/// Registers `user` in band (XEP-0077) over a fresh STARTTLS stream, then closes it.
pub async fn register(t: &Target, user: &str) -> Result<Registered, Failure> {
    let (mut xs, _features) = connect_tls(t).await?;
    let mut iq =
        format!("<iq type='set' id='reg1'><query xmlns='{NS_REGISTER}'><username>").into_bytes();
    escape_text(user, &mut iq);
    iq.extend_from_slice(b"</username><password>");
    escape_text(&t.password, &mut iq);
    iq.extend_from_slice(b"</password></query></iq>");
    xs.send(Step::Register, &iq).await?;
    let res = loop {
        let el = xs.next_stanza(Step::Register).await?;
        if el.name() != "iq" || el.attr("id") != Some("reg1") {
            continue;
        }
        if el.attr("type") == Some("result") {
            break Ok(Registered::Created);
        }
        let cond = el
            .get_child("error", "jabber:client")
            .and_then(|e| e.children().next().map(|c| c.name().to_owned()))
            .unwrap_or_default();
        if cond == "conflict" {
            break Ok(Registered::Existed);
        }
        break fail(Step::Register, format!("error {cond}"));
    };
    let _ = xs.io.write_all(b"</stream:stream>").await;
    let _ = xs.io.shutdown().await;
    res
}
