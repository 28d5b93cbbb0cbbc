//! One client connection, from accept to close: stream negotiation
//! (STARTTLS, SASL, bind — rules in `stream::c2s`) and then the bound
//! session, which reads stanzas into the router and writes what the router
//! queues for it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jid::{BareJid, FullJid, NodePart, ResourcePart};
use tokio::net::TcpStream;
use tokio::time::timeout;

mod sasl2;
mod session;
pub mod transport;
mod upgrade;

use session::Attached;

use super::transport::Transport;
use super::xmlstream::{random_id, End, Flow, XmlStream};
use super::ConnectionSlot;
use crate::accounts;
use crate::feature::{Event, Extensions, StreamPhase};
use crate::hashing::HashingError;
use crate::metrics::{Profile, StorageOp};
use crate::queue::QueueReceiver;
use crate::sasl::{self, parse_plain, SaslError, ScramServer};
use crate::server::Server;
use crate::sessions::Outbound;
use crate::stanza::{
    error_reply, iq_result, StanzaError, StanzaErrorCondition, StreamErrorCondition,
};
use crate::stream::c2s::{
    self as rules, check_header, classify, offered_mechanisms, Mechanism, Negotiation, Phase,
    NS_BIND, NS_SASL,
};
use crate::stream::sm::NS_SM;
use crate::throttle::{self, Attempt};
use crate::xml::{Element, StreamEvent, NS_CLIENT};
pub use transport::ClientStream;

/// Most failed SASL attempts on one stream before it is closed
/// (RFC 6120 §6.4.5 asks for a small configurable number; five is generous).
const MAX_AUTH_ATTEMPTS_PER_STREAM: u32 = 5;

/// Runs a client connection over TCP (plain until STARTTLS, or direct
/// TLS) to its end.
///
/// Not an `async fn`, for the reason given at `serve`.
pub fn run(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    direct_tls: bool,
    slot: ConnectionSlot,
) -> impl std::future::Future<Output = ()> {
    let limits = server.config().limits.stream();
    let domain = server.first_domain();
    let stream = XmlStream::new(
        Transport::Plain(tcp),
        limits,
        NS_CLIENT,
        Some("1.0"),
        domain,
    );
    serve(server, stream, peer, direct_tls, slot)
}

/// Runs a client connection over any transport to its end: negotiation,
/// then the bound session. `direct_tls`: run a TLS handshake before the
/// first stream header.
///
/// Not an `async fn`: its arguments would be kept in the future beside the
/// `Connection` they are moved into, so every connection would hold its
/// stream twice for its whole life. Building the `Connection` first and
/// capturing only it keeps one copy (about a kilobyte per WebSocket
/// session, less for TCP).
pub fn serve<S: ClientStream>(
    server: Arc<Server>,
    stream: S,
    peer: SocketAddr,
    direct_tls: bool,
    slot: ConnectionSlot,
) -> impl std::future::Future<Output = ()> {
    let started = Instant::now();
    let id = server.next_id();
    let domain = server.first_domain();
    let mut conn = Connection {
        server,
        stream,
        domain,
        tls_addressed: false,
        handshake_certs: None,
        peer,
        id,
        extensions: Extensions::default(),
        sasl_ns: NS_SASL,
    };
    async move {
        let _slot = slot;
        tracing::info!(conn = id, %peer, direct_tls, "c2s connection opened");
        let (end, attached) = conn.run(direct_tls).await;
        let jid = attached
            .as_ref()
            .map(|a| a.jid.to_string())
            .unwrap_or_default();
        if let Some(a) = attached {
            // Before the socket's shutdown, which may wait on a dead peer: a
            // resumption elsewhere is waiting for the session.
            // Boxed for the same reason as negotiation: it runs once, at the end.
            Box::pin(conn.finish(*a)).await;
        }
        conn.stream.shutdown().await;
        tracing::info!(
            conn = id,
            %peer,
            jid,
            duration_ms = started.elapsed().as_millis() as u64,
            end = %end,
            "c2s connection closed"
        );
    }
}

struct Connection<S> {
    server: Arc<Server>,
    /// The stream, over whichever transport the client came by.
    stream: S,
    /// The served domain the client's stream header named.
    domain: String,
    /// TLS was started (STARTTLS) on a stream addressed to `domain`.
    tls_addressed: bool,
    /// The certificates the TLS handshake chose from: channel binding
    /// hashes the one served, even if a reload replaced them since.
    handshake_certs: Option<Arc<crate::net::tls::CertStore>>,
    peer: SocketAddr,
    id: u64,
    /// Features' state about this connection before it has a session.
    extensions: Extensions,
    /// The namespace of the SASL profile being negotiated (RFC 6120's, or
    /// SASL2's), for challenges and responses.
    sasl_ns: &'static str,
}

impl<S: ClientStream> Connection<S> {
    async fn run(&mut self, direct_tls: bool) -> (End, Option<Box<Attached>>) {
        let login_timeout = Duration::from_secs(self.server.config().c2s.login_timeout);
        // Boxed: negotiation's state (SASL, SASL2, bind, resume) is larger
        // than a bound session's and lives only until login; inline, every
        // idle session's task would stay that size for its whole life.
        let negotiated = match timeout(login_timeout, Box::pin(self.negotiate(direct_tls))).await {
            // The session's state on the heap: an async fn keeps a slot for
            // every value it ever held across an await (the negotiation's
            // result, the session moved out of it), so inline it would be
            // stored two or three times over in every idle session's task.
            Ok(r) => r.map(Box::new),
            Err(_) => Err(self
                .stream
                .close_with(
                    StreamErrorCondition::ConnectionTimeout,
                    Some("login took too long"),
                )
                .await),
        };
        match negotiated {
            Ok(mut a) => {
                let _attached = self.server.metrics.session_attached(S::TRANSPORT);
                let end = self.session(&mut a).await;
                (end, Some(a))
            }
            Err(end) => (end, None),
        }
    }

    // ---- negotiation -------------------------------------------------

    /// From the first byte to a bound resource.
    async fn negotiate(&mut self, direct_tls: bool) -> Flow<Attached> {
        if direct_tls {
            self.start_tls(false).await?;
        }
        // A transport may be secure below XMPP (WebSocket over HTTPS).
        let mut phase = Phase::Unauthenticated {
            tls: self.stream.is_secure(),
        };
        let mut auth_failures = 0u32;
        // The first header fixes the domain; restarts must keep it.
        let mut headers_seen = 0u32;
        loop {
            match self.stream.next_event().await? {
                StreamEvent::Header(h) => {
                    let domain = match check_header(&h, &self.server_domains(), &self.domain) {
                        Ok(domain) => domain,
                        Err(cond) => return Err(self.stream.close_with(cond, None).await),
                    };
                    if headers_seen > 0 {
                        if let Err(cond) =
                            crate::stream::check_restart_domain(&self.domain, &domain)
                        {
                            tracing::info!(conn = self.id, peer = %self.peer, pinned = %self.domain,
                                addressed = %domain, "c2s restarted stream names another domain");
                            return Err(self
                                .stream
                                .close_with(
                                    cond,
                                    Some("the stream must keep addressing the same domain"),
                                )
                                .await);
                        }
                    }
                    headers_seen += 1;
                    self.domain = domain;
                    self.send_header(h.from.as_deref());
                    let features = self.features(&phase);
                    self.stream.write(&features);
                    self.stream.flush().await?;
                }
                StreamEvent::End => return Err(self.stream.close_stream().await),
                StreamEvent::Stanza(el) if el.ns() == NS_SM => {
                    let Phase::Authenticated {
                        username, domain, ..
                    } = &phase
                    else {
                        return Err(self
                            .stream
                            .close_with(StreamErrorCondition::NotAuthorized, None)
                            .await);
                    };
                    match el.name() {
                        "resume" => {
                            let owner = BareJid::new(&format!("{username}@{domain}"))
                                .map_err(|_| End::Io("account JID".into()))?;
                            match self.resume(&el, &owner, None).await? {
                                Ok(a) => return Ok(a),
                                Err(failed) => {
                                    self.stream.write(&failed);
                                    self.stream.flush().await?;
                                }
                            }
                        }
                        // §3: enable comes after binding.
                        "enable" => {
                            self.stream.write(&Element::new("failed", NS_SM).with_child(
                                Element::new("unexpected-request", crate::stanza::NS_STANZA_ERRORS),
                            ));
                            self.stream.flush().await?;
                        }
                        _ => {
                            return Err(self
                                .stream
                                .close_with(StreamErrorCondition::UnsupportedStanzaType, None)
                                .await)
                        }
                    }
                }
                StreamEvent::Stanza(el) if el.ns() == sasl2::NS_SASL2 => {
                    match self.sasl2(&el, &mut phase, &mut auth_failures).await? {
                        sasl2::Outcome::Bound(a) => return Ok(*a),
                        sasl2::Outcome::Continue => {}
                    }
                }
                StreamEvent::Stanza(el) => match classify(&el, &phase, self.registration_allowed())
                {
                    Err(cond) => return Err(self.stream.close_with(cond, None).await),
                    Ok(Negotiation::Register) => {
                        let mut answer = None;
                        let mut event = Event::PreAuthIq {
                            domain: &self.domain,
                            peer: self.peer.ip(),
                            iq: &el,
                            connection: &mut self.extensions,
                            answer: &mut answer,
                        };
                        self.server.features.fire(&self.server, &mut event).await;
                        let outcome = answer.unwrap_or_else(|| {
                            Err(StanzaErrorCondition::ServiceUnavailable.into())
                        });
                        self.answer_unauthenticated_iq(&el, outcome).await?;
                    }
                    Ok(Negotiation::RefuseIq(cond)) => {
                        self.answer_unauthenticated_iq(&el, Err(cond.into()))
                            .await?;
                    }
                    Ok(Negotiation::StartTls) => {
                        self.stream
                            .write_raw(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
                        self.stream.flush().await?;
                        self.start_tls(true).await?;
                        phase = Phase::Unauthenticated { tls: true };
                    }
                    Ok(Negotiation::Auth) => {
                        let tls = self.stream.is_secure();
                        if let Some(username) = self.authenticate(&el, &mut auth_failures).await? {
                            phase = Phase::Authenticated {
                                tls,
                                username,
                                domain: self.domain.clone(),
                            };
                            // RFC 6120 §6.4.6: the client opens a new stream.
                            self.restart_stream();
                        } else if auth_failures >= MAX_AUTH_ATTEMPTS_PER_STREAM {
                            return Err(self
                                .stream
                                .close_with(
                                    StreamErrorCondition::PolicyViolation,
                                    Some("too many failed authentication attempts"),
                                )
                                .await);
                        }
                    }
                    Ok(Negotiation::Bind) => {
                        let Phase::Authenticated {
                            username, domain, ..
                        } = &phase
                        else {
                            unreachable!("classify only yields Bind when authenticated")
                        };
                        let account = format!("{username}@{domain}");
                        if let Some((jid, rx)) = self.bind(&el, &account).await? {
                            let ext = self.server.sessions.extensions(&jid).unwrap_or_default();
                            return Ok(Attached::new(jid, self.id, rx, ext));
                        }
                    }
                },
            }
        }
    }

    fn server_domains(&self) -> Arc<std::collections::HashSet<String>> {
        self.server.domains()
    }

    /// May clients create accounts in-band on the domain this stream names?
    /// Also when a feature admitted this stream (an invitation token).
    fn registration_allowed(&self) -> bool {
        self.server.config().allows_registration(&self.domain)
            || self
                .extensions
                .get::<crate::modules::register::Admitted>()
                .is_some()
    }

    /// Replies to an IQ received before authentication (XEP-0077
    /// registration). The client has no address yet, so the reply has none.
    async fn answer_unauthenticated_iq(
        &mut self,
        iq: &Element,
        outcome: Result<Option<Element>, StanzaError>,
    ) -> Flow<()> {
        let mut iq = iq.clone();
        iq.remove_attr("from");
        iq.remove_attr("to");
        let reply = match outcome {
            Ok(payload) => Some(iq_result(&iq, payload)),
            Err(e) => e.reply_to(&iq),
        };
        if let Some(reply) = reply {
            self.stream.write(&reply);
        }
        self.stream.flush().await
    }

    fn features(&self, phase: &Phase) -> Element {
        match phase {
            Phase::Unauthenticated { tls } => {
                let cb = self.channel_binding();
                let cb_names: Vec<&str> = cb.available.iter().map(|(t, _)| t.wire_name()).collect();
                let mechs = offered_mechanisms(
                    *tls,
                    !cb.available.is_empty(),
                    self.server.config().c2s.allow_plain,
                );
                // Where open registration is off, invitation tokens still
                // create accounts in-band: the iq-register feature stays
                // advertised (as Prosody's invite-only mode does), since
                // clients such as Conversations look for it before they
                // present a token; a registration without one is refused.
                let invitations = (self.server.features)
                    .get::<crate::modules::invite::Invitations>()
                    .is_some();
                let mut f = rules::features_unauthenticated(
                    *tls,
                    self.server.config().c2s.require_encryption,
                    &mechs,
                    &cb_names,
                    self.registration_allowed() || invitations,
                );
                // RFC 6120 §5.3.1: where TLS is mandatory, STARTTLS is the
                // only feature of the first stage.
                if *tls || !self.server.config().c2s.require_encryption {
                    for extra in self
                        .server
                        .features
                        .stream_features(&self.server, StreamPhase::Unauthenticated { tls: *tls })
                    {
                        f.append_child(extra);
                    }
                    if let Some(a) = self.sasl2_feature(&mechs, &cb) {
                        f.append_child(a);
                    }
                }
                f
            }
            Phase::Authenticated { .. } => {
                let mut f = rules::features_authenticated();
                for extra in self
                    .server
                    .features
                    .stream_features(&self.server, StreamPhase::Authenticated)
                {
                    f.append_child(extra);
                }
                f
            }
        }
    }

    fn channel_binding(&self) -> sasl::ChannelBindingData {
        match self.stream.tls_session() {
            Some(tls) => match &self.handshake_certs {
                Some(certs) => {
                    certs.channel_binding(tls, self.tls_addressed.then_some(self.domain.as_str()))
                }
                None => self
                    .server
                    .tls()
                    .certs
                    .channel_binding(tls, self.tls_addressed.then_some(self.domain.as_str())),
            },
            None => sasl::ChannelBindingData {
                available: Vec::new(),
            },
        }
    }

    /// Runs the TLS handshake. `addressed`: STARTTLS, after a header that
    /// named one of our domains, whose certificate is then the one to
    /// serve when the client sends no SNI; direct TLS comes before any
    /// header.
    async fn start_tls(&mut self, addressed: bool) -> Flow<()> {
        self.tls_addressed = addressed;
        let set = self.server.tls();
        let config = if self.tls_addressed {
            set.starttls(&self.domain)
        } else {
            set.direct.clone()
        };
        self.handshake_certs = Some(set.certs.clone());
        if let Err(e) = self.stream.start_tls(config).await {
            return Err(End::Io(format!("TLS handshake: {e}")));
        }
        self.restart_stream();
        Ok(())
    }

    /// Forgets the current stream: the next thing the client sends is a new header.
    fn restart_stream(&mut self) {
        self.stream.restart();
    }

    /// One SASL exchange. Returns the authenticated username, or None after
    /// a failure the client may retry.
    ///
    /// The attempt is counted against the source's budget before any work
    /// (see `throttle`), and given back unless it was a failed guess; a
    /// success never clears the source's earlier failures.
    async fn authenticate(&mut self, auth: &Element, failures: &mut u32) -> Flow<Option<String>> {
        let result = self.sasl_exchange(auth).await?;
        let mechanism = auth.attr("mechanism").unwrap_or("");
        (self.server.metrics.auth).record(Profile::Sasl, mechanism, result.is_ok());
        match result {
            Ok((username, success_data)) => {
                let mut success = Element::new("success", NS_SASL);
                if let Some(d) = success_data {
                    success.append_text(base64::engine::general_purpose::STANDARD.encode(d));
                }
                self.stream.write(&success);
                self.stream.flush().await?;
                tracing::info!(conn = self.id, peer = %self.peer, user = %username, domain = %self.domain,
                    mechanism, "c2s authenticated");
                Ok(Some(username))
            }
            Err(e) => {
                if matches!(e, SaslError::NotAuthorized) {
                    *failures += 1;
                }
                tracing::info!(conn = self.id, peer = %self.peer, condition = e.condition(), "c2s authentication failed");
                let failure = Element::new("failure", NS_SASL)
                    .with_child(Element::new(e.condition(), NS_SASL));
                self.stream.write(&failure);
                self.stream.flush().await?;
                Ok(None)
            }
        }
    }

    /// The SASL exchange of `auth` (`<auth mechanism=…>initial response`),
    /// in either profile: the authenticated username and the success's
    /// additional data, or why not.
    async fn sasl_exchange(
        &mut self,
        auth: &Element,
    ) -> Flow<Result<(String, Option<Vec<u8>>), SaslError>> {
        let tls = self.stream.is_secure();
        let cb = self.channel_binding();
        let offered = offered_mechanisms(
            tls,
            !cb.available.is_empty(),
            self.server.config().c2s.allow_plain,
        );
        let server = self.server.clone();
        let source = throttle::source_key(self.peer.ip(), server.config().limits.auth_ipv6_prefix);
        let mut attempt = None;
        let result = if !tls && server.config().c2s.require_encryption {
            Err(SaslError::EncryptionRequired)
        } else if let Some(a) = server.auth_failures_by_ip.try_reserve(&source) {
            attempt = Some(a);
            match auth
                .attr("mechanism")
                .and_then(|m| Mechanism::find(&offered, m))
            {
                None => Err(SaslError::InvalidMechanism),
                Some(Mechanism::Plain) => self.auth_plain(auth, source).await?,
                Some(Mechanism::Scram { hash, plus }) => {
                    let offers_plus = offered
                        .iter()
                        .any(|m| matches!(m, Mechanism::Scram { plus: true, .. }));
                    let downgrade = sasl2::downgrade_hash_for(hash, &offered, &cb);
                    let scram = ScramServer::new(hash, plus, offers_plus, cb)
                        .with_unknown_user_iterations(server.config().limits.scram_iterations)
                        .with_downgrade_hash(downgrade);
                    self.auth_scram(auth, scram, source).await?
                }
            }
        } else {
            Err(SaslError::TemporaryAuthFailure)
        };
        if let Some(a) = attempt {
            if !matches!(result, Err(SaslError::NotAuthorized)) {
                server.auth_failures_by_ip.refund(&source, a);
            }
        }
        // Right credentials for an account an administrator disabled.
        let result = match result {
            Ok((username, _)) if self.disabled(&username).await => Err(SaslError::AccountDisabled),
            r => r,
        };
        Ok(result)
    }

    /// Whether `username` may not log in (XEP-0133 disable-user); a store
    /// that cannot tell refuses too (fail closed).
    pub(crate) async fn disabled(&self, username: &str) -> bool {
        crate::modules::adhoc::actions::is_disabled(&self.server, &self.domain, username).await
    }

    /// Counts an attempt at `username` from `source` (None: that budget is
    /// spent). Applied to every preparable name, existing or not, so that
    /// the answer does not tell which accounts exist.
    fn reserve_account_attempt(
        &self,
        username: &str,
        source: IpAddr,
    ) -> Option<((String, IpAddr), Attempt)> {
        let key = (format!("{username}@{}", self.domain), source);
        let attempt = self.server.auth_failures_by_account.try_reserve(&key)?;
        Some((key, attempt))
    }

    /// Settles an account attempt: a success proves the owner, whose
    /// earlier failures from this source are forgotten; a failed guess
    /// stays counted; anything else is given back.
    fn settle_account_attempt<T>(
        &self,
        reserved: &((String, IpAddr), Attempt),
        result: &Result<T, SaslError>,
    ) {
        let (key, attempt) = reserved;
        let window = &self.server.auth_failures_by_account;
        match result {
            Ok(_) => window.clear(key),
            Err(SaslError::NotAuthorized) => {}
            Err(_) => window.refund(key, *attempt),
        }
    }

    /// SASL PLAIN (RFC 4616): the password is checked against the stored
    /// SCRAM keys (or argon2 hash, when configured) on the bounded hashing
    /// pool; an unknown account gets the same derivation against stand-in
    /// keys, so that its answer takes as long.
    async fn auth_plain(
        &mut self,
        auth: &Element,
        source: IpAddr,
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
        let Some(reserved) = self.reserve_account_attempt(&username, source) else {
            return Ok(Err(SaslError::TemporaryAuthFailure));
        };
        let hashing = self.server.config().limits.password_hashing();
        let lookup = accounts::plain_check(&self.server.store, &self.domain, &username, &hashing);
        let result = match (self.server.metrics.storage)
            .time(StorageOp::AccountLookup, lookup)
            .await
        {
            Err(e) => {
                tracing::error!(error = %e, "reading account");
                Err(SaslError::TemporaryAuthFailure)
            }
            Ok(check) => {
                let password = creds.password;
                let on_scram = matches!(check, accounts::PlainCheck::Scram(_));
                let kept = on_scram.then(|| password.clone());
                match self
                    .server
                    .hashing
                    .run(move |memory| check.verify(&password, memory))
                    .await
                {
                    Ok(true) => {
                        if let Some(password) = kept {
                            self.complete_scram_keys(&username, password).await;
                        }
                        Ok((username, None))
                    }
                    Ok(false) => Err(SaslError::NotAuthorized),
                    Err(HashingError::Busy) => {
                        tracing::warn!(conn = self.id, "password hashing saturated: login shed");
                        Err(SaslError::TemporaryAuthFailure)
                    }
                    Err(HashingError::Failed) => Err(SaslError::TemporaryAuthFailure),
                }
            }
        };
        self.settle_account_attempt(&reserved, &result);
        Ok(result)
    }

    /// After a PLAIN login checked against SCRAM keys: an account imported
    /// with keys for some hashes only (XEP-0227 exports of Prosody 0.12
    /// carry SCRAM-SHA-1 alone) gets keys for the others from the password
    /// just verified, so that SCRAM-SHA-256/512 work from now on. Failing
    /// here costs the upgrade, never the login.
    async fn complete_scram_keys(&self, username: &str, password: String) {
        let missing =
            match accounts::missing_hashes(&self.server.store, &self.domain, username).await {
                Ok(m) if !m.is_empty() => m,
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "reading SCRAM keys for the upgrade");
                    return;
                }
            };
        let iterations = self.server.config().limits.scram_iterations;
        let derived = self
            .server
            .hashing
            .run(move |_| accounts::derive_scram(&missing, &password, iterations))
            .await;
        let Ok(keys) = derived else {
            return;
        };
        match self
            .server
            .store
            .add_scram_credentials(&self.domain, username, &keys)
            .await
        {
            Ok(_) => tracing::info!(
                user = username,
                added = keys.len(),
                "SCRAM keys added at PLAIN login"
            ),
            Err(e) => tracing::warn!(error = %e, "storing upgraded SCRAM keys"),
        }
    }

    /// SCRAM (RFC 5802/7677), with channel binding for -PLUS.
    async fn auth_scram(
        &mut self,
        auth: &Element,
        mut scram: ScramServer,
        source: IpAddr,
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
        let reserved = match &username {
            None => None,
            Some(u) => match self.reserve_account_attempt(u, source) {
                Some(r) => Some(r),
                None => return Ok(Err(SaslError::TemporaryAuthFailure)),
            },
        };
        let creds = match &username {
            None => None,
            Some(u) => {
                let lookup =
                    accounts::scram_credentials(&self.server.store, &self.domain, u, scram.hash());
                match (self.server.metrics.storage)
                    .time(StorageOp::AccountLookup, lookup)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "reading account");
                        let result = Err(SaslError::TemporaryAuthFailure);
                        if let Some(r) = &reserved {
                            self.settle_account_attempt(r, &result);
                        }
                        return Ok(result);
                    }
                }
            }
        };
        // An account without keys for this hash (imported with SHA-1 keys
        // only, not yet upgraded by a PLAIN login) is told the mechanism is
        // not available rather than that its password is wrong: clients
        // that try mechanisms in turn (slixmpp, Gajim) go on to the next
        // one, SCRAM-SHA-1, and log in. This tells a prober that such an
        // account exists; ARCHITECTURE.md "Migration" weighs it.
        if let (None, Some(u)) = (&creds, &username) {
            match self.server.store.account_exists(&self.domain, u).await {
                Ok(true) => {
                    let result = Err(SaslError::InvalidMechanism);
                    if let Some(r) = &reserved {
                        self.settle_account_attempt(r, &result);
                    }
                    return Ok(result);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "reading account"),
            }
        }
        // An unknown account's stand-in salt comes from the same prepared
        // name a real account is looked up by, so spelling variants of a
        // name behave alike whether it exists or not.
        let lookup_name = username.as_deref().unwrap_or(&client_first.username);
        let server_first = scram.server_first(lookup_name, creds.as_ref());
        self.send_sasl("challenge", &server_first);
        self.stream.flush().await?;
        let result = match self.next_sasl_response().await? {
            Err(e) => Err(e),
            Ok(final_msg) => match (scram.handle_client_final(&final_msg), username) {
                (Ok(server_final), Some(u)) => Ok((u, Some(server_final))),
                (Err(e), _) => Err(e),
                (Ok(_), None) => Err(SaslError::NotAuthorized),
            },
        };
        if let Some(r) = &reserved {
            self.settle_account_attempt(r, &result);
        }
        Ok(result)
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
            self.stream.flush().await?;
            return self.next_sasl_response().await;
        }
        Ok(decode_sasl(&text))
    }

    /// Waits for `<response/>` (or `<abort/>`) from the client.
    async fn next_sasl_response(&mut self) -> Flow<Result<Vec<u8>, SaslError>> {
        match self.stream.next_event().await? {
            StreamEvent::Stanza(el) if el.is("response", self.sasl_ns) => {
                Ok(decode_sasl(&el.text()))
            }
            StreamEvent::Stanza(el) if el.is("abort", self.sasl_ns) => Ok(Err(SaslError::Aborted)),
            StreamEvent::End => Err(self.stream.close_stream().await),
            _ => Err(self
                .stream
                .close_with(StreamErrorCondition::NotAuthorized, None)
                .await),
        }
    }

    fn send_sasl(&mut self, name: &str, data: &[u8]) {
        let mut el = Element::new(name, self.sasl_ns);
        if !data.is_empty() {
            el.append_text(base64::engine::general_purpose::STANDARD.encode(data));
        }
        self.stream.write(&el);
    }

    /// Resource binding (RFC 6120 §7). Returns the bound JID and its queue,
    /// or None when the request was refused (the client may retry).
    async fn bind(
        &mut self,
        iq: &Element,
        account: &str,
    ) -> Flow<Option<(FullJid, QueueReceiver<Outbound>)>> {
        let requested = iq
            .get_child("bind", NS_BIND)
            .and_then(|b| b.get_child("resource", NS_BIND))
            .map(|r| r.text())
            .filter(|r| !r.is_empty());
        let resource = match requested {
            None => random_id(),
            Some(r) => match ResourcePart::new(&r) {
                Ok(r) => r.to_string(),
                Err(_) => {
                    if let Some(reply) = error_reply(
                        iq,
                        StanzaErrorCondition::BadRequest,
                        Some("invalid resource"),
                    ) {
                        self.stream.write(&reply);
                    }
                    self.stream.flush().await?;
                    return Ok(None);
                }
            },
        };
        let full = match FullJid::new(&format!("{account}/{resource}")) {
            Ok(j) => j,
            Err(_) => {
                return Err(self
                    .stream
                    .close_with(StreamErrorCondition::InternalServerError, None)
                    .await)
            }
        };
        let (tx, rx) = crate::queue::queue_with_peak(
            self.server.config().limits.session_queue,
            self.server.config().limits.session_queue_bytes,
            Some(self.server.metrics.queue_peak.clone()),
        );
        self.server.sessions.bind(&full, self.id, tx);
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
        self.stream.write(&result);
        self.stream.flush().await?;
        tracing::info!(conn = self.id, peer = %self.peer, jid = %full, "c2s resource bound");
        let mut event = Event::SessionBound { jid: &full };
        self.server.features.fire(&self.server, &mut event).await;
        Ok(Some((full, rx)))
    }

    // ---- I/O helpers ---------------------------------------------------

    /// Our stream header, answering the client's (RFC 6120 §4.7).
    fn send_header(&mut self, client_from: Option<&str>) {
        let id = random_id();
        let mut attrs: Vec<(&str, &str)> =
            vec![("from", &self.domain), ("id", &id), ("xml:lang", "en")];
        if let Some(f) = client_from {
            attrs.push(("to", f));
        }
        self.stream.send_header(&attrs);
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
