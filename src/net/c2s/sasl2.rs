//! The SASL2 login (XEP-0388) on a client connection: the exchange (the
//! password mechanisms run through the same code as legacy SASL, FAST's
//! token mechanisms here), then what `<authenticate/>` inlines — stream
//! resumption (XEP-0198), Bind 2 (XEP-0386) with stream management,
//! carbons and client state, and a FAST token (XEP-0484) — answered in one
//! `<success/>`. The rules are in `stream::sasl2`.

use crate::modules::time::unix_now as now;
use crate::stanza::bare::Bare;
use jid::{BareJid, FullJid};

use super::session::Attached;
use super::{ClientStream, Connection, MAX_AUTH_ATTEMPTS_PER_STREAM};
use crate::feature::Event;
use crate::metrics::Profile;
use crate::modules::carbons::CarbonsEnabled;
use crate::modules::clients::BoundClient;
use crate::modules::stream_management::StreamManagementFeature;
use crate::net::xmlstream::{random_id, Flow};
use crate::sasl::fast::{self, FastMechanism};
use crate::sasl::{ChannelBindingData, SaslError, ScramHash};
use crate::sessions::AcknowledgesDelivery;
use crate::stanza::StreamErrorCondition;
use crate::storage::FastToken;
use crate::stream::c2s::{Mechanism, Phase, NS_SASL};
use crate::stream::sasl2::{self as rules, Authenticate, BindRequest};
use crate::stream::sm::StreamManagement;
use crate::throttle;
use crate::xml::{Element, NS_STREAMS};

pub(super) use crate::stream::sasl2::NS_SASL2;

/// Where a SASL2 `<authenticate/>` left the negotiation.
pub(super) enum Outcome {
    /// A session is bound (Bind 2) or resumed: negotiation is over.
    Bound(Box<Attached>),
    /// Failed (the client may retry), or authenticated without Bind 2
    /// (the client binds the RFC 6120 way, on the same stream).
    Continue,
}

/// Who authenticated, and how.
struct Authenticated {
    username: String,
    additional_data: Option<Vec<u8>>,
    /// A FAST login: the expiry of the token used.
    token_expiry: Option<i64>,
    /// A FAST login: the client row's generation (its login is recorded
    /// already, with the token's use).
    generation: Option<i64>,
}

/// XEP-0474's hash for a SCRAM exchange: over the `<mechanism/>` list (the
/// same in both profiles here) and the XEP-0440 channel-binding types,
/// which are advertised exactly when the stream has some.
pub(super) fn downgrade_hash_for(
    hash: ScramHash,
    offered: &[Mechanism],
    cb: &ChannelBindingData,
) -> String {
    let mechs: Vec<&str> = offered.iter().map(|m| m.name()).collect();
    let cbs: Vec<&str> = cb.available.iter().map(|(t, _)| t.wire_name()).collect();
    rules::downgrade_hash(hash, &mechs, (!cbs.is_empty()).then_some(&cbs[..]))
}

impl<S: ClientStream> Connection<S> {
    /// The `<authentication/>` feature, when SASL2 is on.
    pub(super) fn sasl2_feature(
        &self,
        mechs: &[Mechanism],
        cb: &ChannelBindingData,
    ) -> Option<Element> {
        let config = &self.server.config();
        if !config.sasl2.enabled {
            return None;
        }
        let names: Vec<&str> = mechs.iter().map(|m| m.name()).collect();
        let fast: Vec<&str> = if config.sasl2.fast {
            FastMechanism::offered(cb)
                .into_iter()
                .map(FastMechanism::name)
                .collect()
        } else {
            Vec::new()
        };
        Some(rules::authentication_feature(
            &names,
            &fast,
            self.sm_available(),
            &self.upgrades_offered(mechs),
        ))
    }

    fn sm_available(&self) -> bool {
        self.server.config().stream_management.enabled
            && self
                .server
                .features
                .get::<StreamManagementFeature>()
                .is_some()
    }

    /// A top-level element in SASL2's namespace during negotiation.
    pub(super) async fn sasl2(
        &mut self,
        el: &Element,
        phase: &mut Phase,
        failures: &mut u32,
    ) -> Flow<Outcome> {
        let unauthenticated = matches!(phase, Phase::Unauthenticated { .. });
        if el.name() != "authenticate" || !unauthenticated || !self.server.config().sasl2.enabled {
            return Err(self
                .stream
                .close_with(StreamErrorCondition::NotAuthorized, None)
                .await);
        }
        let tls = self.stream.is_secure();
        let result = if !tls && self.server.config().c2s.require_encryption {
            Err(SaslError::EncryptionRequired)
        } else {
            match rules::parse_authenticate(el) {
                Err(e) => Err(e),
                Ok(req) => match FastMechanism::from_name(&req.mechanism) {
                    Some(m) => self.fast_exchange(m, &req).await?.map(|a| (a, req)),
                    None => self.password_exchange(&req).await?.map(|a| (a, req)),
                },
            }
        };
        // The name as the client sent it (also when it could not be parsed).
        let mechanism = el.attr("mechanism").unwrap_or("");
        (self.server.metrics.auth).record(Profile::Sasl2, mechanism, result.is_ok());
        // XEP-0480: the tasks asked for, after a password exchange only
        // (a FAST token must not become a password). A failed task fails
        // the authentication and counts as a failed attempt.
        let result = match result {
            Ok((mut authed, req)) if authed.token_expiry.is_none() => {
                match self
                    .upgrade_tasks(&authed.username, &req.upgrades, &mut authed.additional_data)
                    .await?
                {
                    Ok(()) => Ok((authed, req)),
                    Err(e) => {
                        *failures += 1;
                        Err(e)
                    }
                }
            }
            r => r,
        };
        let (authed, req) = match result {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, SaslError::NotAuthorized) {
                    *failures += 1;
                }
                tracing::info!(conn = self.id, peer = %self.peer, condition = e.condition(),
                    "c2s SASL2 authentication failed");
                self.stream
                    .write(&rules::failure(&e, Some(rules::failure_text(&e))));
                self.stream.flush().await?;
                if *failures >= MAX_AUTH_ATTEMPTS_PER_STREAM {
                    return Err(self
                        .stream
                        .close_with(
                            StreamErrorCondition::PolicyViolation,
                            Some("too many failed authentication attempts"),
                        )
                        .await);
                }
                return Ok(Outcome::Continue);
            }
        };
        tracing::info!(conn = self.id, peer = %self.peer, user = %authed.username, domain = %self.domain,
            mechanism = req.mechanism, client = req.user_agent.id.as_deref().unwrap_or(""),
            "c2s authenticated (SASL2)");
        self.after_authentication(authed, req, phase).await
    }

    /// Password mechanisms: the legacy exchange with SASL2's elements.
    async fn password_exchange(
        &mut self,
        req: &Authenticate,
    ) -> Flow<Result<Authenticated, SaslError>> {
        let mut auth = Element::new("auth", NS_SASL).with_attr("mechanism", &req.mechanism);
        if let Some(data) = &req.initial_response {
            if !data.is_empty() {
                auth.append_text(rules::encode(data));
            }
        }
        self.sasl_ns = NS_SASL2;
        let result = self.sasl_exchange(&auth).await;
        self.sasl_ns = NS_SASL;
        Ok(result?.map(|(username, additional_data)| Authenticated {
            username,
            additional_data,
            token_expiry: None,
            generation: None,
        }))
    }

    /// A FAST token login: one message, checked against the client's
    /// current token and the one waiting to replace it. Counted against
    /// the same failure budgets as a password.
    async fn fast_exchange(
        &mut self,
        mechanism: FastMechanism,
        req: &Authenticate,
    ) -> Flow<Result<Authenticated, SaslError>> {
        let cb = self.channel_binding();
        if !self.server.config().sasl2.fast || !FastMechanism::offered(&cb).contains(&mechanism) {
            return Ok(Err(SaslError::InvalidMechanism));
        }
        let server = self.server.clone();
        let source = throttle::source_key(self.peer.ip(), server.config().limits.auth_ipv6_prefix);
        let Some(ip_attempt) = server.auth_failures_by_ip.try_reserve(&source) else {
            return Ok(Err(SaslError::TemporaryAuthFailure));
        };
        let result = self.check_token(mechanism, req, &cb, source).await;
        if !matches!(result, Err(SaslError::NotAuthorized)) {
            server.auth_failures_by_ip.refund(&source, ip_attempt);
        }
        Ok(result)
    }

    async fn check_token(
        &mut self,
        mechanism: FastMechanism,
        req: &Authenticate,
        cb: &ChannelBindingData,
        source: std::net::IpAddr,
    ) -> Result<Authenticated, SaslError> {
        let data = req
            .initial_response
            .as_deref()
            .ok_or(SaslError::MalformedRequest)?;
        let ht = fast::parse_initial_response(data)?;
        // The authcid is the local part; a bare JID of this domain is
        // accepted too.
        let local = match ht.authcid.split_once('@') {
            Some((l, d)) if d == self.domain => l,
            Some(_) => return Err(SaslError::NotAuthorized),
            None => &ht.authcid,
        };
        let username = self
            .account_username(local)
            .ok_or(SaslError::NotAuthorized)?;
        let Some(reserved) = self.reserve_account_attempt(&username, source) else {
            return Err(SaslError::TemporaryAuthFailure);
        };
        let result = self
            .verify_token(mechanism, req, cb, &username, &ht.proof)
            .await;
        self.settle_account_attempt(&reserved, &result);
        if result.is_ok() && self.disabled(&username).await {
            return Err(SaslError::AccountDisabled);
        }
        result.map(|(additional, expiry, generation)| Authenticated {
            username,
            additional_data: Some(additional),
            token_expiry: Some(expiry),
            generation: Some(generation),
        })
    }

    async fn verify_token(
        &self,
        mechanism: FastMechanism,
        req: &Authenticate,
        cb: &ChannelBindingData,
        username: &str,
        proof: &[u8],
    ) -> Result<(Vec<u8>, i64, i64), SaslError> {
        // Tokens are bound to the client they were issued to.
        let client_id = req
            .user_agent
            .id
            .as_deref()
            .ok_or(SaslError::NotAuthorized)?;
        let cb_data = mechanism.cb_data(cb).ok_or(SaslError::NotAuthorized)?;
        let store = &self.server.store;
        let record = store
            .client(&self.domain, username, client_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "reading client");
                SaslError::TemporaryAuthFailure
            })?
            .ok_or(SaslError::NotAuthorized)?;
        let now = now();
        let ours = |t: &&FastToken| t.mechanism == mechanism.name();
        let matched = [(record.token.as_ref(), false), (record.next.as_ref(), true)]
            .into_iter()
            .filter_map(|(t, next)| t.filter(ours).map(|t| (t, next)))
            .find(|(t, _)| fast::verify(&t.hash, &cb_data, proof));
        let Some((token, next)) = matched else {
            return Err(SaslError::NotAuthorized);
        };
        // XEP-0484 §5: a token the server no longer trusts fails with
        // credentials-expired, so the client falls back to its password
        // instead of treating the account as locked or the proof as wrong.
        if token.expiry <= now {
            return Err(SaslError::CredentialsExpired);
        }
        let count = req.fast.and_then(|f| f.count);
        let ua = &req.user_agent;
        let accepted = store
            .use_fast_token(
                &self.domain,
                username,
                client_id,
                &token.hash,
                next,
                count,
                (&ua.software, &ua.device, now),
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "using FAST token");
                SaslError::TemporaryAuthFailure
            })?;
        let Some(generation) = accepted else {
            tracing::info!(conn = self.id, peer = %self.peer, user = username, client = client_id,
                "FAST token count replayed");
            return Err(SaslError::NotAuthorized);
        };
        Ok((
            fast::responder(&token.hash, &cb_data),
            token.expiry,
            generation,
        ))
    }

    /// After a successful exchange: the client's record, its token,
    /// resumption or binding, and the one `<success/>` carrying them.
    async fn after_authentication(
        &mut self,
        authed: Authenticated,
        req: Authenticate,
        phase: &mut Phase,
    ) -> Flow<Outcome> {
        let server = self.server.clone();
        let config = &server.config().sasl2;
        let username = authed.username;
        let account = format!("{username}@{}", self.domain);
        let bare = BareJid::new(&account)
            .map_err(|_| crate::net::xmlstream::End::Io("account JID".into()))?;
        let now = now();
        let client_id = req.user_agent.id.clone();
        let mut token_el = None;
        let mut generation = None;
        if let Some(id) = &client_id {
            let how = if authed.token_expiry.is_some() {
                "fast"
            } else {
                "password"
            };
            // A FAST login was recorded with the token's use (one commit).
            generation = authed.generation;
            if generation.is_none() {
                match server
                    .store
                    .client_seen(
                        &self.domain,
                        &username,
                        id,
                        &req.user_agent.software,
                        &req.user_agent.device,
                        how,
                        now,
                        config.max_clients_per_account,
                    )
                    .await
                {
                    Ok(g) => generation = Some(g),
                    Err(e) => tracing::error!(error = %e, "recording client"),
                }
            }
            let invalidate = req.fast.is_some_and(|f| f.invalidate);
            if invalidate {
                if let Err(e) = server
                    .store
                    .revoke_fast_tokens(&self.domain, &username, id)
                    .await
                {
                    tracing::error!(error = %e, "invalidating FAST token");
                }
            }
            // A token on request (for a mechanism this stream offers), or
            // in place of one used near its expiry (XEP-0484 §3.3).
            let cb = self.channel_binding();
            let requested = req
                .request_token
                .as_deref()
                .and_then(FastMechanism::from_name)
                .filter(|m| FastMechanism::offered(&cb).contains(m));
            let rotation_due = !invalidate
                && authed
                    .token_expiry
                    .is_some_and(|e| e - now <= config.token_rotate_before_expiry as i64);
            let mechanism = requested.or(if rotation_due {
                FastMechanism::from_name(&req.mechanism)
            } else {
                None
            });
            if let (true, Some(m)) = (config.fast, mechanism) {
                let token = fast::new_token();
                let expiry = now + config.token_lifetime as i64;
                let stored = FastToken {
                    hash: fast::token_hash(&token),
                    mechanism: m.name().to_owned(),
                    expiry,
                };
                match server
                    .store
                    .issue_fast_token(&self.domain, &username, id, &stored)
                    .await
                {
                    Ok(true) => {
                        token_el = Some(
                            Element::new("token", rules::NS_FAST)
                                .with_attr("token", token)
                                .with_attr(
                                    "expiry",
                                    crate::modules::time::xep0082(expiry).unwrap_or_default(),
                                ),
                        );
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "issuing FAST token"),
                }
            }
        }
        let success = |authz: &str| {
            let mut s = rules::success(authed.additional_data.as_deref(), authz);
            if let Some(t) = &token_el {
                s.append_child(t.clone());
            }
            s
        };
        // XEP-0198 "SASL2": resumption first; when it works, bind is ignored.
        let mut resume_failed = None;
        if let Some(resume) = &req.resume {
            match self.resume(resume, &bare, Some(success(&account))).await? {
                Ok(a) => return Ok(Outcome::Bound(Box::new(a))),
                Err(failed) => resume_failed = Some(failed),
            }
        }
        let Some(bind) = req.bind else {
            *phase = Phase::Authenticated {
                tls: self.stream.is_secure(),
                username,
                domain: self.domain.clone(),
            };
            let mut s = success(&account);
            if let Some(f) = resume_failed {
                s.append_child(f);
            }
            self.stream.write(&s);
            // XEP-0388 §2.6: features follow success; no stream restart.
            let features = self.features(phase);
            self.stream.write(&features);
            self.stream.flush().await?;
            return Ok(Outcome::Continue);
        };
        let a = self
            .bind2(
                &bind,
                &account,
                client_id.as_deref(),
                success,
                resume_failed,
            )
            .await?;
        if let (Some(id), Some(a)) = (&client_id, &a) {
            if let Some(generation) = generation {
                a.w.extensions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(BoundClient {
                        client_id: id.clone(),
                        generation,
                    });
            }
            if let Err(e) = server
                .store
                .client_bound(&self.domain, &username, id, a.jid.resource().as_str())
                .await
            {
                tracing::error!(error = %e, "recording client resource");
            }
        }
        match a {
            Some(a) => Ok(Outcome::Bound(Box::new(a))),
            None => Err(self
                .stream
                .close_with(StreamErrorCondition::InternalServerError, None)
                .await),
        }
    }

    /// Bind 2 (XEP-0386 §4): binds the device's resource and enables what
    /// the request asks, then writes the success with `<bound/>`.
    async fn bind2(
        &mut self,
        bind: &BindRequest,
        account: &str,
        client_id: Option<&str>,
        success: impl Fn(&str) -> Element,
        resume_failed: Option<Element>,
    ) -> Flow<Option<Attached>> {
        let resource = rules::bound_resource(bind.tag.as_deref(), account, client_id);
        let Ok(full) = FullJid::new(&format!("{account}/{resource}")) else {
            return Ok(None);
        };
        let (tx, rx) = crate::queue::queue_with_peak(
            self.server.config().limits.session_queue,
            self.server.config().limits.session_queue_bytes,
            Some(self.server.metrics.queue_peak.clone()),
        );
        self.server.sessions.bind(&full, self.id, tx);
        let ext = self.server.sessions.extensions(&full).unwrap_or_default();
        let mut a = Attached::new(full.clone(), self.id, rx, ext);
        let mut bound = Element::new("bound", rules::NS_BIND2);
        if let Some(enable) = &bind.sm_enable {
            bound.append_child(self.enable_inline(&mut a, enable));
        }
        if bind.carbons {
            a.w.extensions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(CarbonsEnabled(true));
        }
        let mut s = success(full.as_str());
        if let Some(f) = resume_failed {
            s.append_child(f);
        }
        s.append_child(bound);
        self.stream.write(&s);
        // Bound already: no feature is left to negotiate.
        self.stream.write(&Element::new("features", NS_STREAMS));
        self.stream.flush().await?;
        tracing::info!(conn = self.id, peer = %self.peer, jid = %full, "c2s resource bound (Bind 2)");
        let mut event = Event::SessionBound { jid: &full };
        self.server.features.fire(&self.server, &mut event).await;
        if bind.inactive {
            // Client state is the CSI feature's: it gets the element as if
            // it had come on the stream.
            let inactive = Element::new("inactive", rules::NS_CSI);
            let (mut replies, mut release) = (Vec::new(), Vec::new());
            let mut event = Event::SessionElement {
                jid: &full,
                element: &inactive,
                replies: &mut replies,
                release: &mut release,
            };
            self.server.features.fire(&self.server, &mut event).await;
        }
        Ok(Some(a))
    }

    /// XEP-0198's `<enable/>` inside Bind 2: the `<enabled/>` (or
    /// `<failed/>`) that goes into `<bound/>`.
    fn enable_inline(&self, a: &mut Attached, el: &Element) -> Element {
        let config = &self.server.config().stream_management;
        let Some(feature) = self
            .server
            .features
            .get::<StreamManagementFeature>()
            .filter(|_| config.enabled)
        else {
            return Element::new("failed", rules::NS_SM).with_child(Element::new(
                "feature-not-implemented",
                crate::stanza::NS_STANZA_ERRORS,
            ));
        };
        let resumable = matches!(el.attr("resume"), Some("true" | "1"));
        let max = el
            .attr("max")
            .and_then(|m| m.parse::<u64>().ok())
            .filter(|m| *m > 0)
            .map_or(config.max_resume, |m| m.min(config.max_resume));
        let id = random_id();
        let mut enabled = Element::new("enabled", rules::NS_SM);
        if resumable {
            enabled.set_attr("id", &id);
            enabled.set_attr("resume", "true");
            enabled.set_attr("max", max.to_string());
            if !config.location.is_empty() {
                enabled.set_attr("location", &config.location);
            }
            feature.attach(&id, a.jid.bare(), a.takeover.clone());
        }
        a.w.sm = Some(StreamManagement::new(id, resumable, max));
        a.w.extensions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(AcknowledgesDelivery);
        enabled
    }
}
