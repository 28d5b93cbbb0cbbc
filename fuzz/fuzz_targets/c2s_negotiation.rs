//! Client-to-server stream negotiation (`waxwing::stream::c2s`), driven
//! the way `src/net/c2s.rs` drives it, without sockets or a database:
//! header → features → classify each element by phase → STARTTLS (stream
//! restart), SASL PLAIN or SCRAM against one account (stream restart on
//! success), in-band registration refused or accepted, resource binding.
//!
//! Input: 1 control byte, then the client's writes separated by NUL bytes
//! (each write is one read for the parser).
//! - bit 0: direct TLS; bit 1: PLAIN allowed; bit 2: TLS required;
//!   bit 3: registration allowed; bit 4: the TLS layer has channel binding.
//!
//! The account is alice on a.test and b.test, password "secret" (PLAIN can
//! succeed; SCRAM reaches its final step but cannot succeed, its nonce
//! being random: the sasl target covers SCRAM success).
//!
//! Oracles: no panic; a header accepted names a served domain; `Bind` is
//! only ever classified after authentication (the driver has an
//! `unreachable!` there); features and replies serialize and parse back;
//! a username and resource that passed their profiles make a full JID; a
//! stream is closed after five failed authentications.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use base64::Engine;
use jid::{FullJid, NodePart, ResourcePart};
use libfuzzer_sys::fuzz_target;
use waxwing::sasl::{
    parse_plain, ChannelBindingData, ChannelBindingType, SaslError, ScramCredentials, ScramServer,
};
use waxwing::stanza::{error_reply, iq_result, StanzaErrorCondition};
use waxwing::stream::c2s::{
    check_header, classify, features_authenticated, features_unauthenticated, offered_mechanisms,
    Mechanism, Negotiation, Phase, NS_BIND, NS_SASL,
};
use waxwing::xml::{Element, ParserLimits, StreamEvent, StreamParser, NS_CLIENT};
use waxwing_fuzz::{assert_roundtrip, writes};

const MAX_AUTH_ATTEMPTS_PER_STREAM: u32 = 5;
const PASSWORD: &str = "secret";

fn domains() -> &'static HashSet<String> {
    static D: OnceLock<HashSet<String>> = OnceLock::new();
    D.get_or_init(|| ["a.test", "b.test"].map(String::from).into())
}

fn credentials(hash: waxwing::sasl::ScramHash) -> ScramCredentials {
    ScramCredentials::derive(hash, PASSWORD, b"fuzz-salt-16byte", 2)
}

struct Config {
    allow_plain: bool,
    require_tls: bool,
    registration: bool,
    channel_binding: bool,
}

/// Why the simulated connection stopped.
enum Closed {
    /// The server would send a stream error (or close) here.
    Stream,
    /// Resource bound: negotiation is over.
    Bound,
}

struct Conn {
    cfg: Config,
    parser: StreamParser,
    phase: Phase,
    domain: String,
    /// Stream headers read so far: the first fixes the domain.
    headers_seen: u32,
    failures: u32,
    /// A SCRAM exchange waiting for the client's next message.
    pending: Option<Pending>,
}

enum Pending {
    /// An `<auth/>` without initial response: the next `<response/>` is it.
    Initial(Mechanism),
    /// SCRAM after server-first: the next `<response/>` is client-final.
    ScramFinal(Box<ScramServer>, Option<String>),
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let cfg = Config {
        allow_plain: flags & 2 != 0,
        require_tls: flags & 4 != 0,
        registration: flags & 8 != 0,
        channel_binding: flags & 16 != 0,
    };
    let mut conn = Conn {
        cfg,
        parser: StreamParser::new(ParserLimits::default()),
        phase: Phase::Unauthenticated {
            tls: flags & 1 != 0,
        },
        domain: "a.test".to_string(),
        headers_seen: 0,
        failures: 0,
        pending: None,
    };
    for write in writes(rest) {
        conn.parser.feed(write);
        if conn.drain().is_err() {
            return;
        }
    }
});

impl Conn {
    fn tls(&self) -> bool {
        match &self.phase {
            Phase::Unauthenticated { tls } | Phase::Authenticated { tls, .. } => *tls,
        }
    }

    fn cb(&self) -> ChannelBindingData {
        if self.tls() && self.cfg.channel_binding {
            ChannelBindingData {
                available: vec![(ChannelBindingType::TlsExporter, vec![7; 32])],
            }
        } else {
            ChannelBindingData::none()
        }
    }

    fn offered(&self) -> Vec<Mechanism> {
        offered_mechanisms(self.tls(), !self.cb().is_empty(), self.cfg.allow_plain)
    }

    /// RFC 6120 §4.3.3: after STARTTLS or SASL success, the client's next
    /// bytes are a new stream; what was buffered before is dropped.
    fn restart(&mut self) {
        self.parser.reset();
    }

    fn drain(&mut self) -> Result<(), Closed> {
        loop {
            match self.parser.next_event() {
                Ok(None) => return Ok(()),
                Ok(Some(ev)) => self.event(ev)?,
                Err(_) => return Err(Closed::Stream),
            }
        }
    }

    fn event(&mut self, ev: StreamEvent) -> Result<(), Closed> {
        if let Some(p) = self.pending.take() {
            // The driver waits for <response/> or <abort/>; anything else
            // (a header, the stream end) closes the stream.
            return match ev {
                StreamEvent::Stanza(el) => self.sasl_response(&el, p),
                _ => Err(Closed::Stream),
            };
        }
        match ev {
            StreamEvent::Header(h) => {
                let domain = check_header(&h, domains(), "a.test").map_err(|_| Closed::Stream)?;
                assert!(domains().contains(&domain), "accepted {domain}");
                // A restart keeps the first header's domain (the audit's
                // cross-host takeover), as the driver checks.
                if self.headers_seen > 0 {
                    waxwing::stream::check_restart_domain(&self.domain, &domain)
                        .map_err(|_| Closed::Stream)?;
                }
                self.headers_seen += 1;
                self.domain = domain;
                let features = match &self.phase {
                    Phase::Unauthenticated { tls } => {
                        let cb = self.cb();
                        let names: Vec<&str> =
                            cb.available.iter().map(|(t, _)| t.wire_name()).collect();
                        features_unauthenticated(
                            *tls,
                            self.cfg.require_tls,
                            &self.offered(),
                            &names,
                            self.cfg.registration,
                        )
                    }
                    Phase::Authenticated { .. } => features_authenticated(),
                };
                assert_roundtrip(&features, NS_CLIENT, 8);
                Ok(())
            }
            StreamEvent::End => Err(Closed::Stream),
            StreamEvent::Stanza(el) => self.element(&el),
        }
    }

    fn element(&mut self, el: &Element) -> Result<(), Closed> {
        let class = classify(el, &self.phase, self.cfg.registration).map_err(|_| Closed::Stream)?;
        match class {
            Negotiation::Register => {
                // The registration module needs a database; what the
                // driver does around it is answer without addresses.
                self.answer_unauthenticated_iq(el, Ok(None));
                Ok(())
            }
            Negotiation::RefuseIq(cond) => {
                assert!(self.tls(), "registration answered before TLS");
                self.answer_unauthenticated_iq(el, Err(cond));
                Ok(())
            }
            Negotiation::StartTls => {
                assert!(!self.tls());
                self.phase = Phase::Unauthenticated { tls: true };
                self.restart();
                Ok(())
            }
            Negotiation::Auth => self.auth(el),
            Negotiation::Bind => {
                let Phase::Authenticated {
                    username, domain, ..
                } = &self.phase
                else {
                    panic!("classify yielded Bind before authentication");
                };
                // The account binds on the domain it authenticated on,
                // whatever headers came after.
                assert_eq!(*domain, self.domain, "bind on another domain than SASL's");
                self.bind(el, &username.clone())
            }
        }
    }

    fn answer_unauthenticated_iq(
        &mut self,
        iq: &Element,
        outcome: Result<Option<Element>, StanzaErrorCondition>,
    ) {
        let mut iq = iq.clone();
        iq.remove_attr("from");
        iq.remove_attr("to");
        let reply = match outcome {
            Ok(payload) => Some(iq_result(&iq, payload)),
            Err(cond) => error_reply(&iq, cond, None),
        };
        if let Some(r) = reply {
            assert_eq!(
                r.attr("to"),
                None,
                "reply to an unauthenticated client has an address"
            );
            assert_roundtrip(&r, NS_CLIENT, 64);
        }
    }

    fn auth(&mut self, auth: &Element) -> Result<(), Closed> {
        let tls = self.tls();
        if !tls && self.cfg.require_tls {
            return self.sasl_result(Err(SaslError::EncryptionRequired));
        }
        let offered = self.offered();
        let Some(mech) = auth
            .attr("mechanism")
            .and_then(|m| Mechanism::find(&offered, m))
        else {
            return self.sasl_result(Err(SaslError::InvalidMechanism));
        };
        if matches!(mech, Mechanism::Plain) {
            assert!(tls, "PLAIN offered without TLS");
        }
        let text = auth.text();
        if text.is_empty() {
            // RFC 6120 §6.4.2: an empty challenge asks for the initial response.
            self.pending = Some(Pending::Initial(mech));
            return Ok(());
        }
        match decode_sasl(&text) {
            Ok(d) => self.mechanism(mech, &d),
            Err(e) => self.sasl_result(Err(e)),
        }
    }

    fn mechanism(&mut self, mech: Mechanism, data: &[u8]) -> Result<(), Closed> {
        match mech {
            Mechanism::Plain => {
                let result = parse_plain(data).and_then(|c| {
                    let username = account_username(&c.authcid).ok_or(SaslError::NotAuthorized)?;
                    self.check_authzid(c.authzid.as_deref(), &username)?;
                    if username == "alice" && c.password == PASSWORD {
                        Ok(username)
                    } else {
                        Err(SaslError::NotAuthorized)
                    }
                });
                self.sasl_result(result)
            }
            Mechanism::Scram { hash, plus } => {
                let offers_plus = self
                    .offered()
                    .iter()
                    .any(|m| matches!(m, Mechanism::Scram { plus: true, .. }));
                let mut scram = ScramServer::new(hash, plus, offers_plus, self.cb())
                    .with_unknown_user_iterations(2);
                let first = match scram.handle_client_first(data) {
                    Ok(f) => f,
                    Err(e) => return self.sasl_result(Err(e)),
                };
                let username = account_username(&first.username);
                if let Some(u) = &username {
                    if let Err(e) = self.check_authzid(first.authzid.as_deref(), u) {
                        return self.sasl_result(Err(e));
                    }
                }
                let creds = (username.as_deref() == Some("alice")).then(|| credentials(hash));
                let lookup_name = username.as_deref().unwrap_or(&first.username);
                let server_first = scram.server_first(lookup_name, creds.as_ref());
                assert!(!server_first.is_empty());
                self.pending = Some(Pending::ScramFinal(Box::new(scram), username));
                Ok(())
            }
        }
    }

    /// The element after a challenge: `<response/>`, `<abort/>`, or
    /// anything else, which ends the stream.
    fn sasl_response(&mut self, el: &Element, pending: Pending) -> Result<(), Closed> {
        if el.is("abort", NS_SASL) {
            return self.sasl_result(Err(SaslError::Aborted));
        }
        if !el.is("response", NS_SASL) {
            return Err(Closed::Stream);
        }
        let data = match decode_sasl(&el.text()) {
            Ok(d) => d,
            Err(e) => return self.sasl_result(Err(e)),
        };
        match pending {
            Pending::Initial(mech) => self.mechanism(mech, &data),
            Pending::ScramFinal(mut scram, username) => {
                let result = match (scram.handle_client_final(&data), username) {
                    (Ok(_), Some(u)) => Ok(u),
                    (Ok(_), None) => Err(SaslError::NotAuthorized),
                    (Err(e), _) => Err(e),
                };
                self.sasl_result(result)
            }
        }
    }

    fn sasl_result(&mut self, result: Result<String, SaslError>) -> Result<(), Closed> {
        match result {
            Ok(username) => {
                self.phase = Phase::Authenticated {
                    tls: self.tls(),
                    username,
                    domain: self.domain.clone(),
                };
                self.restart();
                Ok(())
            }
            Err(e) => {
                let failure = Element::new("failure", NS_SASL)
                    .with_child(Element::new(e.condition(), NS_SASL));
                assert_roundtrip(&failure, NS_CLIENT, 8);
                if matches!(e, SaslError::NotAuthorized) {
                    self.failures += 1;
                    if self.failures >= MAX_AUTH_ATTEMPTS_PER_STREAM {
                        return Err(Closed::Stream);
                    }
                }
                Ok(())
            }
        }
    }

    /// RFC 6120 §6.3.8: an authzid, if given, must be the account itself.
    fn check_authzid(&self, authzid: Option<&str>, username: &str) -> Result<(), SaslError> {
        match authzid {
            None => Ok(()),
            Some(a) => {
                let own = jid::BareJid::new(&format!("{username}@{}", self.domain)).ok();
                match jid::BareJid::new(a) {
                    Ok(j) if Some(&j) == own.as_ref() => Ok(()),
                    _ => Err(SaslError::InvalidAuthzid),
                }
            }
        }
    }

    fn bind(&mut self, iq: &Element, username: &str) -> Result<(), Closed> {
        let requested = iq
            .get_child("bind", NS_BIND)
            .and_then(|b| b.get_child("resource", NS_BIND))
            .map(|r| r.text())
            .filter(|r| !r.is_empty());
        let resource = match requested {
            None => "generated".to_string(),
            Some(r) => match ResourcePart::new(&r) {
                Ok(r) => r.to_string(),
                Err(_) => {
                    if let Some(reply) = error_reply(
                        iq,
                        StanzaErrorCondition::BadRequest,
                        Some("invalid resource"),
                    ) {
                        assert_roundtrip(&reply, NS_CLIENT, 64);
                    }
                    return Ok(());
                }
            },
        };
        // The driver answers internal-server-error if this fails; it
        // should not for parts that passed their own profiles.
        let full = FullJid::new(&format!("{username}@{}/{resource}", self.domain))
            .unwrap_or_else(|e| panic!("{username:?} @ {:?} / {resource:?}: {e}", self.domain));
        let mut iq = iq.clone();
        iq.remove_attr("from");
        iq.remove_attr("to");
        let result = iq_result(
            &iq,
            Some(
                Element::new("bind", NS_BIND)
                    .with_child(Element::new("jid", NS_BIND).with_text(full.as_str())),
            ),
        );
        assert_roundtrip(&result, NS_CLIENT, 64);
        Err(Closed::Bound)
    }
}

/// The local part for a SASL username, as the driver normalises it.
fn account_username(authcid: &str) -> Option<String> {
    NodePart::new(authcid).ok().map(|n| n.to_string())
}

/// As the driver decodes `<auth/>` and `<response/>` text.
fn decode_sasl(text: &str) -> Result<Vec<u8>, SaslError> {
    let t = text.trim();
    if t == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .map_err(|_| SaslError::IncorrectEncoding)
}
