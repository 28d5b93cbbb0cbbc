//! One client connection, from accept to close: stream negotiation
//! (STARTTLS, SASL, bind — rules in `stream::c2s`) and then the bound
//! session, which reads stanzas into the router and writes what the router
//! queues for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jid::{BareJid, FullJid, NodePart, ResourcePart};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::transport::{ReadOutcome, Transport};
use super::ConnectionSlot;
use crate::accounts;
use crate::modules::register;
use crate::queue::QueueReceiver;
use crate::router;
use crate::sasl::{self, parse_plain, SaslError, ScramServer};
use crate::server::Server;
use crate::sessions::Outbound;
use crate::stanza::{
    error_reply, iq_result, stream_error, StanzaErrorCondition, StreamErrorCondition,
};
use crate::stream::c2s::{
    self as rules, check_header, classify, offered_mechanisms, Mechanism, Negotiation, Phase,
    NS_BIND, NS_SASL,
};
use crate::xml::{self, Element, ParseError, ParserLimits, StreamEvent, StreamParser, NS_CLIENT};

/// Why a connection ended; logged once at the end.
#[derive(Debug)]
enum End {
    /// The peer closed its stream or the socket.
    PeerClosed,
    /// We sent a stream error.
    StreamError(StreamErrorCondition),
    /// The socket failed (reset, TLS failure, write error).
    Io(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerClosed => write!(f, "closed by peer"),
            End::StreamError(c) => write!(f, "stream error {}", c.wire_name()),
            End::Io(e) => write!(f, "i/o: {e}"),
        }
    }
}

type Flow<T> = Result<T, End>;

/// Most failed SASL attempts on one stream before it is closed
/// (RFC 6120 §6.4.5 asks for a small configurable number; five is generous).
const MAX_AUTH_ATTEMPTS_PER_STREAM: u32 = 5;

/// Runs a client connection to its end.
pub async fn run(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    _slot: ConnectionSlot,
) {
    let started = Instant::now();
    let id = server.next_id();
    let limits = ParserLimits {
        max_stanza_bytes: server.config.limits.max_stanza_size,
        max_depth: server.config.limits.max_depth,
    };
    let mut conn = Connection {
        server: server.clone(),
        transport: Transport::Plain(tcp),
        parser: StreamParser::new(limits),
        out: Vec::new(),
        header_sent: false,
        domain: server.config.domains().first().cloned().unwrap_or_default(),
        stream_id: String::new(),
        peer,
        id,
        jid: None,
        unread: false,
        queue: None,
    };
    tracing::info!(conn = id, %peer, direct_tls, "c2s connection opened");
    let end = conn.run(direct_tls).await;
    let jid = conn.jid.as_ref().map(|j| j.to_string()).unwrap_or_default();
    if let Some(j) = &conn.jid {
        crate::modules::presence::session_ended(&server, j, id).await;
        // Stanzas routed here but never written go back to routing
        // (another resource or offline storage) instead of being lost.
        if let Some(rx) = conn.queue.take() {
            for item in rx.close_and_drain() {
                if let Outbound::Stanza(bytes) = item {
                    router::reroute_undelivered(&server, j, &bytes).await;
                }
            }
        }
    }
    tracing::info!(
        conn = id,
        %peer,
        jid,
        duration_ms = started.elapsed().as_millis() as u64,
        end = %end,
        "c2s connection closed"
    );
}

struct Connection {
    server: Arc<Server>,
    transport: Transport,
    parser: StreamParser,
    /// Bytes waiting to be written, batched so a burst costs one write.
    out: Vec<u8>,
    header_sent: bool,
    /// The served domain the client's stream header named.
    domain: String,
    stream_id: String,
    peer: SocketAddr,
    id: u64,
    jid: Option<FullJid>,
    /// The session's queue, kept after the session ends so its leftovers
    /// can be re-routed.
    queue: Option<QueueReceiver<Outbound>>,
    /// The last read returned data, so more may be readable without
    /// waiting (the socket's readiness was not consumed).
    unread: bool,
}

impl Connection {
    async fn run(&mut self, direct_tls: bool) -> End {
        let login_timeout = Duration::from_secs(self.server.config.c2s.login_timeout);
        let negotiated = match timeout(login_timeout, self.negotiate(direct_tls)).await {
            Ok(r) => r,
            Err(_) => Err(self
                .close_with(
                    StreamErrorCondition::ConnectionTimeout,
                    Some("login took too long"),
                )
                .await),
        };
        let end = match negotiated {
            Ok((jid, rx)) => {
                let end = self.session(jid, &rx).await;
                self.queue = Some(rx);
                end
            }
            Err(end) => end,
        };
        let _ = self.flush().await;
        self.transport.shutdown().await;
        end
    }

    // ---- negotiation -------------------------------------------------

    /// From the first byte to a bound resource.
    async fn negotiate(&mut self, direct_tls: bool) -> Flow<(FullJid, QueueReceiver<Outbound>)> {
        if direct_tls {
            self.start_tls().await?;
        }
        let mut phase = Phase::Unauthenticated { tls: direct_tls };
        let mut auth_failures = 0u32;
        let mut registered_here = false;
        loop {
            match self.next_event().await? {
                StreamEvent::Header(h) => {
                    match check_header(&h, self.server_domains(), &self.domain) {
                        Ok(domain) => self.domain = domain,
                        Err(cond) => return Err(self.close_with(cond, None).await),
                    }
                    self.send_header(h.from.as_deref());
                    let features = self.features(&phase);
                    features.write_to(&mut self.out, NS_CLIENT);
                    self.flush().await?;
                }
                StreamEvent::End => return Err(self.close_stream().await),
                StreamEvent::Stanza(el) => match classify(&el, &phase, self.registration_allowed())
                {
                    Err(cond) => return Err(self.close_with(cond, None).await),
                    Ok(Negotiation::Register) => {
                        let outcome = register::before_auth(
                            &self.server,
                            &self.domain,
                            self.peer.ip(),
                            &el,
                            &mut registered_here,
                        )
                        .await;
                        self.answer_unauthenticated_iq(&el, outcome).await?;
                    }
                    Ok(Negotiation::RefuseIq(cond)) => {
                        self.answer_unauthenticated_iq(&el, Err(cond.into()))
                            .await?;
                    }
                    Ok(Negotiation::StartTls) => {
                        self.out.extend_from_slice(
                            b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
                        );
                        self.flush().await?;
                        self.start_tls().await?;
                        phase = Phase::Unauthenticated { tls: true };
                    }
                    Ok(Negotiation::Auth) => {
                        let tls = self.transport.is_tls();
                        if let Some(username) = self.authenticate(&el, &mut auth_failures).await? {
                            phase = Phase::Authenticated { tls, username };
                            // RFC 6120 §6.4.6: the client opens a new stream.
                            self.restart_stream();
                        } else if auth_failures >= MAX_AUTH_ATTEMPTS_PER_STREAM {
                            return Err(self
                                .close_with(
                                    StreamErrorCondition::PolicyViolation,
                                    Some("too many failed authentication attempts"),
                                )
                                .await);
                        }
                    }
                    Ok(Negotiation::Bind) => {
                        let Phase::Authenticated { username, .. } = &phase else {
                            unreachable!("classify only yields Bind when authenticated")
                        };
                        let username = username.clone();
                        if let Some(bound) = self.bind(&el, &username).await? {
                            return Ok(bound);
                        }
                    }
                },
            }
        }
    }

    fn server_domains(&self) -> &std::collections::HashSet<String> {
        self.server.domains()
    }

    /// May clients create accounts in-band on the domain this stream names?
    fn registration_allowed(&self) -> bool {
        self.server.config.allows_registration(&self.domain)
    }

    /// Replies to an IQ received before authentication (XEP-0077
    /// registration). The client has no address yet, so the reply has none.
    async fn answer_unauthenticated_iq(
        &mut self,
        iq: &Element,
        outcome: Result<Option<Element>, register::Refusal>,
    ) -> Flow<()> {
        let mut iq = iq.clone();
        iq.remove_attr("from");
        iq.remove_attr("to");
        let reply = match outcome {
            Ok(payload) => Some(iq_result(&iq, payload)),
            Err(r) => error_reply(&iq, r.condition, r.text),
        };
        if let Some(reply) = reply {
            reply.write_to(&mut self.out, NS_CLIENT);
        }
        self.flush().await
    }

    fn features(&self, phase: &Phase) -> Element {
        match phase {
            Phase::Unauthenticated { tls } => {
                let cb = self.channel_binding();
                let cb_names: Vec<&str> = cb.available.iter().map(|(t, _)| t.wire_name()).collect();
                let mechs = offered_mechanisms(
                    *tls,
                    !cb.available.is_empty(),
                    self.server.config.c2s.allow_plain,
                );
                rules::features_unauthenticated(
                    *tls,
                    self.server.config.c2s.require_encryption,
                    &mechs,
                    &cb_names,
                    self.registration_allowed(),
                )
            }
            Phase::Authenticated { .. } => rules::features_authenticated(),
        }
    }

    fn channel_binding(&self) -> sasl::ChannelBindingData {
        match self.transport.tls_session() {
            Some(tls) => self.server.certs.channel_binding(tls),
            None => sasl::ChannelBindingData {
                available: Vec::new(),
            },
        }
    }

    async fn start_tls(&mut self) -> Flow<()> {
        if let Err(e) = self.transport.upgrade(self.server.tls.clone()).await {
            return Err(End::Io(format!("TLS handshake: {e}")));
        }
        self.restart_stream();
        Ok(())
    }

    /// Forgets the current stream: the next thing the client sends is a new header.
    fn restart_stream(&mut self) {
        self.parser.reset();
        self.header_sent = false;
        // A TLS handshake may have pulled the client's first bytes into
        // rustls already, where socket readiness cannot see them.
        self.unread = true;
    }

    /// One SASL exchange. Returns the authenticated username, or None after
    /// a failure the client may retry.
    async fn authenticate(&mut self, auth: &Element, failures: &mut u32) -> Flow<Option<String>> {
        let tls = self.transport.is_tls();
        let cb = self.channel_binding();
        let offered = offered_mechanisms(
            tls,
            !cb.available.is_empty(),
            self.server.config.c2s.allow_plain,
        );
        let result = if !tls && self.server.config.c2s.require_encryption {
            Err(SaslError::EncryptionRequired)
        } else if self.server.auth_failures_by_ip.is_blocked(&self.peer.ip()) {
            Err(SaslError::TemporaryAuthFailure)
        } else {
            match auth
                .attr("mechanism")
                .and_then(|m| Mechanism::find(&offered, m))
            {
                None => Err(SaslError::InvalidMechanism),
                Some(Mechanism::Plain) => self.auth_plain(auth).await?,
                Some(Mechanism::Scram { hash, plus }) => {
                    let offers_plus = offered
                        .iter()
                        .any(|m| matches!(m, Mechanism::Scram { plus: true, .. }));
                    let scram = ScramServer::new(hash, plus, offers_plus, cb)
                        .with_unknown_user_iterations(self.server.config.limits.scram_iterations);
                    self.auth_scram(auth, scram).await?
                }
            }
        };
        match result {
            Ok((username, success_data)) => {
                self.server.auth_failures_by_ip.clear(&self.peer.ip());
                let mut success = Element::new("success", NS_SASL);
                if let Some(d) = success_data {
                    success.append_text(base64::engine::general_purpose::STANDARD.encode(d));
                }
                success.write_to(&mut self.out, NS_CLIENT);
                self.flush().await?;
                tracing::info!(conn = self.id, peer = %self.peer, user = %username, domain = %self.domain,
                    mechanism = auth.attr("mechanism").unwrap_or(""), "c2s authenticated");
                Ok(Some(username))
            }
            Err(e) => {
                if matches!(e, SaslError::NotAuthorized) {
                    *failures += 1;
                    self.server
                        .auth_failures_by_ip
                        .record_failure(&self.peer.ip());
                }
                tracing::info!(conn = self.id, peer = %self.peer, condition = e.condition(), "c2s authentication failed");
                Element::new("failure", NS_SASL)
                    .with_child(Element::new(e.condition(), NS_SASL))
                    .write_to(&mut self.out, NS_CLIENT);
                self.flush().await?;
                Ok(None)
            }
        }
    }

    /// SASL PLAIN (RFC 4616), checked against the argon2 hash.
    async fn auth_plain(
        &mut self,
        auth: &Element,
    ) -> Flow<Result<(String, Option<Vec<u8>>), SaslError>> {
        let data = match self.initial_response(auth).await? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let creds = match parse_plain(&data) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let Some(username) = self.account_username(&creds.authcid) else {
            return Ok(Err(SaslError::NotAuthorized));
        };
        if let Err(e) = self.check_authzid(creds.authzid.as_deref(), &username) {
            return Ok(Err(e));
        }
        let account_key = format!("{username}@{}", self.domain);
        if self
            .server
            .auth_failures_by_account
            .is_blocked(&account_key)
        {
            return Ok(Err(SaslError::TemporaryAuthFailure));
        }
        let phc = match self.server.store.argon2_hash(&self.domain, &username).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "reading account");
                return Ok(Err(SaslError::TemporaryAuthFailure));
            }
        };
        let password = creds.password;
        // argon2 is deliberately slow: keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || {
            phc.is_some_and(|h| accounts::verify_argon2(&h, &password))
        })
        .await
        .unwrap_or(false);
        if ok {
            self.server.auth_failures_by_account.clear(&account_key);
            Ok(Ok((username, None)))
        } else {
            self.server
                .auth_failures_by_account
                .record_failure(&account_key);
            Ok(Err(SaslError::NotAuthorized))
        }
    }

    /// SCRAM (RFC 5802/7677), with channel binding for -PLUS.
    async fn auth_scram(
        &mut self,
        auth: &Element,
        mut scram: ScramServer,
    ) -> Flow<Result<(String, Option<Vec<u8>>), SaslError>> {
        let first = match self.initial_response(auth).await? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let client_first = match scram.handle_client_first(&first) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let username = self.account_username(&client_first.username);
        if let Some(u) = &username {
            if let Err(e) = self.check_authzid(client_first.authzid.as_deref(), u) {
                return Ok(Err(e));
            }
        }
        let account_key = username.as_ref().map(|u| format!("{u}@{}", self.domain));
        if account_key
            .as_ref()
            .is_some_and(|k| self.server.auth_failures_by_account.is_blocked(k))
        {
            return Ok(Err(SaslError::TemporaryAuthFailure));
        }
        let creds = match &username {
            None => None,
            Some(u) => {
                match accounts::scram_credentials(&self.server.store, &self.domain, u, scram.hash())
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "reading account");
                        return Ok(Err(SaslError::TemporaryAuthFailure));
                    }
                }
            }
        };
        let server_first = scram.server_first(creds.as_ref());
        self.send_sasl("challenge", &server_first);
        self.flush().await?;
        let final_msg = match self.next_sasl_response().await? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        match (scram.handle_client_final(&final_msg), username) {
            (Ok(server_final), Some(u)) => {
                if let Some(k) = &account_key {
                    self.server.auth_failures_by_account.clear(k);
                }
                Ok(Ok((u, Some(server_final))))
            }
            (Err(e), _) => {
                if let (SaslError::NotAuthorized, Some(k)) = (&e, &account_key) {
                    self.server.auth_failures_by_account.record_failure(k);
                }
                Ok(Err(e))
            }
            (Ok(_), None) => Ok(Err(SaslError::NotAuthorized)),
        }
    }

    /// The normalised local part for a SASL username, or None if it cannot
    /// name an account here.
    fn account_username(&self, authcid: &str) -> Option<String> {
        NodePart::new(authcid).ok().map(|n| n.to_string())
    }

    /// RFC 6120 §6.3.8: an authzid, if given, must be the account itself.
    fn check_authzid(&self, authzid: Option<&str>, username: &str) -> Result<(), SaslError> {
        match authzid {
            None => Ok(()),
            Some(a) => {
                let own = BareJid::new(&format!("{username}@{}", self.domain)).ok();
                match BareJid::new(a) {
                    Ok(j) if Some(&j) == own.as_ref() => Ok(()),
                    _ => Err(SaslError::InvalidAuthzid),
                }
            }
        }
    }

    /// The initial response of `<auth/>`, asking for it with an empty
    /// challenge when the client sent none (RFC 6120 §6.4.2).
    async fn initial_response(&mut self, auth: &Element) -> Flow<Result<Vec<u8>, SaslError>> {
        let text = auth.text();
        if text.is_empty() {
            self.send_sasl("challenge", b"");
            self.flush().await?;
            return self.next_sasl_response().await;
        }
        Ok(decode_sasl(&text))
    }

    /// Waits for `<response/>` (or `<abort/>`) from the client.
    async fn next_sasl_response(&mut self) -> Flow<Result<Vec<u8>, SaslError>> {
        match self.next_event().await? {
            StreamEvent::Stanza(el) if el.is("response", NS_SASL) => Ok(decode_sasl(&el.text())),
            StreamEvent::Stanza(el) if el.is("abort", NS_SASL) => Ok(Err(SaslError::Aborted)),
            StreamEvent::End => Err(self.close_stream().await),
            _ => Err(self
                .close_with(StreamErrorCondition::NotAuthorized, None)
                .await),
        }
    }

    fn send_sasl(&mut self, name: &str, data: &[u8]) {
        let mut el = Element::new(name, NS_SASL);
        if !data.is_empty() {
            el.append_text(base64::engine::general_purpose::STANDARD.encode(data));
        }
        el.write_to(&mut self.out, NS_CLIENT);
    }

    /// Resource binding (RFC 6120 §7). Returns the bound JID and its queue,
    /// or None when the request was refused (the client may retry).
    async fn bind(
        &mut self,
        iq: &Element,
        username: &str,
    ) -> Flow<Option<(FullJid, QueueReceiver<Outbound>)>> {
        let requested = iq
            .get_child("bind", NS_BIND)
            .and_then(|b| b.get_child("resource", NS_BIND))
            .map(|r| r.text())
            .filter(|r| !r.is_empty());
        let resource = match requested {
            None => generate_resource(),
            Some(r) => match ResourcePart::new(&r) {
                Ok(r) => r.to_string(),
                Err(_) => {
                    if let Some(reply) = error_reply(
                        iq,
                        StanzaErrorCondition::BadRequest,
                        Some("invalid resource"),
                    ) {
                        reply.write_to(&mut self.out, NS_CLIENT);
                    }
                    self.flush().await?;
                    return Ok(None);
                }
            },
        };
        let full = match FullJid::new(&format!("{username}@{}/{resource}", self.domain)) {
            Ok(j) => j,
            Err(_) => {
                return Err(self
                    .close_with(StreamErrorCondition::InternalServerError, None)
                    .await)
            }
        };
        let (tx, rx) = crate::queue::queue(self.server.config.limits.session_queue);
        self.server.sessions.bind(&full, self.id, tx);
        self.jid = Some(full.clone());
        let mut iq_no_from = iq.clone();
        iq_no_from.remove_attr("from");
        iq_no_from.remove_attr("to");
        let result = iq_result(
            &iq_no_from,
            Some(
                Element::new("bind", NS_BIND)
                    .with_child(Element::new("jid", NS_BIND).with_text(full.as_str())),
            ),
        );
        result.write_to(&mut self.out, NS_CLIENT);
        self.flush().await?;
        tracing::info!(conn = self.id, peer = %self.peer, jid = %full, "c2s resource bound");
        Ok(Some((full, rx)))
    }

    // ---- bound session -----------------------------------------------

    async fn session(&mut self, jid: FullJid, rx: &QueueReceiver<Outbound>) -> End {
        let idle = Duration::from_secs(self.server.config.c2s.idle_timeout);
        let mut last_read = Instant::now();
        loop {
            // Handle every complete stanza already buffered.
            loop {
                match self.parser.next_event() {
                    Ok(None) => break,
                    Ok(Some(StreamEvent::Stanza(el))) => {
                        let cancel = register::is_cancel(&el);
                        if let Err(cond) = self.handle_stanza(&jid, el).await {
                            return self.close_with(cond, None).await;
                        }
                        if cancel && self.account_cancelled(&jid).await {
                            // XEP-0077 §3.2: the result, then not-authorized.
                            let _ = self.drain_queue(rx);
                            return self
                                .close_with(StreamErrorCondition::NotAuthorized, None)
                                .await;
                        }
                    }
                    Ok(Some(StreamEvent::End)) => return self.close_stream().await,
                    Ok(Some(StreamEvent::Header(_))) => {
                        return self
                            .close_with(StreamErrorCondition::NotWellFormed, None)
                            .await
                    }
                    Err(e) => return self.close_parse_error(e).await,
                }
            }
            self.parser.shrink();
            if let Err(e) = self.flush().await {
                return e;
            }
            if self.unread {
                // The socket may hold more: read on without waiting, but let
                // queued outbound stanzas and shutdown through between chunks.
                if self.server.shutdown.is_cancelled() {
                    return self
                        .close_with(StreamErrorCondition::SystemShutdown, None)
                        .await;
                }
                if let Some(cond) = self.drain_queue(rx) {
                    return self.close_with(cond, None).await;
                }
                match self.read_into_parser() {
                    Ok(ReadOutcome::Data) => last_read = Instant::now(),
                    Ok(ReadOutcome::Drained) => {}
                    Ok(ReadOutcome::Closed) => return End::PeerClosed,
                    Err(e) => return End::Io(e.to_string()),
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = self.server.shutdown.cancelled() => {
                    return self.close_with(StreamErrorCondition::SystemShutdown, None).await;
                }
                msg = rx.recv() => {
                    if let Some(cond) = self.queue_outbound(msg) {
                        return self.close_with(cond, None).await;
                    }
                    // Batch whatever else is already queued into the same write.
                    if let Some(cond) = self.drain_queue(rx) {
                        return self.close_with(cond, None).await;
                    }
                }
                r = self.transport.readable() => {
                    if let Err(e) = r {
                        return End::Io(e.to_string());
                    }
                    match self.read_into_parser() {
                        Ok(ReadOutcome::Data) => last_read = Instant::now(),
                        Ok(ReadOutcome::Drained) => {}
                        Ok(ReadOutcome::Closed) => return End::PeerClosed,
                        Err(e) => return End::Io(e.to_string()),
                    }
                }
                _ = tokio::time::sleep_until((last_read + idle).into()) => {
                    return self.close_with(StreamErrorCondition::ConnectionTimeout, None).await;
                }
            }
        }
    }

    /// Is the session's account gone (after an in-band cancel)? A failed
    /// look-up keeps the session: it is only a hint to close early.
    async fn account_cancelled(&self, jid: &FullJid) -> bool {
        let username = jid.node().map(|n| n.as_str()).unwrap_or_default();
        matches!(
            self.server
                .store
                .account_exists(jid.domain().as_str(), username)
                .await,
            Ok(false)
        )
    }

    /// Moves already-queued stanzas into the write buffer (up to 64 KiB, so
    /// one write stays bounded); returns a condition to close with if asked.
    fn drain_queue(&mut self, rx: &QueueReceiver<Outbound>) -> Option<StreamErrorCondition> {
        while self.out.len() < 64 * 1024 {
            match rx.try_recv() {
                Some(msg) => {
                    if let Some(cond) = self.queue_outbound(msg) {
                        return Some(cond);
                    }
                }
                None => break,
            }
        }
        None
    }

    /// Appends a queued item to the write buffer; returns a condition to
    /// close with when the router asked for it.
    fn queue_outbound(&mut self, msg: Outbound) -> Option<StreamErrorCondition> {
        match msg {
            Outbound::Stanza(bytes) => {
                self.out.extend_from_slice(&bytes);
                None
            }
            Outbound::Close(cond) => Some(cond),
        }
    }

    async fn handle_stanza(
        &mut self,
        jid: &FullJid,
        el: Element,
    ) -> Result<(), StreamErrorCondition> {
        router::route_from_client(&self.server, jid, el).await
    }

    // ---- I/O helpers ---------------------------------------------------

    /// Next parser event, reading from the socket as needed.
    async fn next_event(&mut self) -> Flow<StreamEvent> {
        loop {
            match self.parser.next_event() {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(self.close_parse_error(e).await),
            }
            if !self.unread {
                self.transport
                    .readable()
                    .await
                    .map_err(|e| End::Io(e.to_string()))?;
            }
            match self.read_into_parser() {
                Ok(ReadOutcome::Data | ReadOutcome::Drained) => {}
                Ok(ReadOutcome::Closed) => return Err(End::PeerClosed),
                Err(e) => return Err(End::Io(e.to_string())),
            }
        }
    }

    /// Reads one chunk into the parser, remembering whether more may wait.
    fn read_into_parser(&mut self) -> std::io::Result<ReadOutcome> {
        let parser = &mut self.parser;
        let outcome = self.transport.read_some(|chunk| parser.feed(chunk));
        self.unread = matches!(outcome, Ok(ReadOutcome::Data));
        outcome
    }

    async fn flush(&mut self) -> Flow<()> {
        if !self.out.is_empty() {
            let r = self.transport.write_all(&self.out).await;
            // Give the buffer back: most sessions sit idle between writes,
            // and an idle session should own no write buffer.
            self.out = Vec::new();
            r.map_err(|e| End::Io(e.to_string()))?;
        } else {
            self.transport
                .flush()
                .await
                .map_err(|e| End::Io(e.to_string()))?;
        }
        Ok(())
    }

    fn send_header(&mut self, client_from: Option<&str>) {
        self.stream_id = generate_resource();
        let mut attrs: Vec<(&str, &str)> = vec![
            ("from", &self.domain),
            ("id", &self.stream_id),
            ("version", "1.0"),
            ("xml:lang", "en"),
        ];
        if let Some(f) = client_from {
            attrs.push(("to", f));
        }
        xml::write_stream_header(&mut self.out, NS_CLIENT, &[], &attrs);
        self.header_sent = true;
    }

    async fn close_parse_error(&mut self, e: ParseError) -> End {
        let cond = match e {
            ParseError::NotWellFormed(_) => StreamErrorCondition::NotWellFormed,
            ParseError::RestrictedXml(_) => StreamErrorCondition::RestrictedXml,
            ParseError::PolicyViolation(_) => StreamErrorCondition::PolicyViolation,
        };
        tracing::debug!(conn = self.id, error = ?e, "c2s parse error");
        self.close_with(cond, None).await
    }

    /// Sends a stream error and closes the stream (RFC 6120 §4.9.1.1),
    /// opening our stream first if we had not yet.
    async fn close_with(&mut self, cond: StreamErrorCondition, text: Option<&str>) -> End {
        if !self.header_sent {
            self.send_header(None);
        }
        stream_error(cond, text).write_to(&mut self.out, NS_CLIENT);
        self.out.extend_from_slice(b"</stream:stream>");
        let _ = self.flush().await;
        End::StreamError(cond)
    }

    /// Answers the peer's `</stream:stream>` with ours.
    async fn close_stream(&mut self) -> End {
        if self.header_sent {
            self.out.extend_from_slice(b"</stream:stream>");
        }
        let _ = self.flush().await;
        End::PeerClosed
    }
}

fn decode_sasl(text: &str) -> Result<Vec<u8>, SaslError> {
    let t = text.trim();
    // RFC 6120 §6.4.2: "=" is an empty response.
    if t == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .map_err(|_| SaslError::IncorrectEncoding)
}

/// A random resource or stream id: 16 lowercase alphanumerics.
fn generate_resource() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}
