//! The plug-in core. A feature is one value implementing [`Feature`]: it
//! declares what it adds to the server (XEPs, disco features, stream
//! features, IQ namespaces), owns its state, and subscribes to typed
//! [`Event`]s with an order. The router, the session core and other
//! features never call a feature's internals: they fire events, and the
//! registry ([`Features`]) hands each one to its subscribers in order.
//!
//! Adding a feature is one new file with a type implementing `Feature`
//! plus one line in `modules::default_features` (or
//! `ServerBuilder::feature` for an embedder or a test).

pub mod event;
pub mod extensions;
pub mod inbox;
pub mod iq;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use event::{Event, EventKind, Verdict};
pub use extensions::Extensions;

use crate::server::Server;
use crate::sessions::OutStanza;
use crate::stanza::StanzaErrorCondition;
use crate::xml::Element;
use iq::{IqFuture, IqRequest};

/// A subscriber's pending verdict (handlers may wait on storage).
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// A verdict that needs no waiting.
pub fn verdict(v: Verdict) -> HookFuture<'static> {
    Box::pin(std::future::ready(v))
}

/// What a feature says of a stanza about to be written to a client.
#[derive(Debug)]
pub enum Outgoing {
    /// Write it (as far as this feature is concerned).
    Write,
    /// The feature keeps it, to release it later in order.
    Hold,
    /// Write these stanzas the feature held first, then this one.
    FlushThenWrite(Vec<Arc<OutStanza>>),
}

/// What a feature adds to service discovery (XEP-0030).
#[derive(Debug, Default, Clone, Copy)]
pub struct Disco {
    /// Features of the server's domain.
    pub server: &'static [&'static str],
    /// Features of every account's bare JID (e.g. PEP, MAM).
    pub account: &'static [&'static str],
}

/// Where a client stream's negotiation stands, for stream features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPhase {
    /// Before SASL (TLS may or may not be on).
    Unauthenticated { tls: bool },
    /// After SASL: bind and what may come with it (stream management).
    Authenticated,
}

/// A server feature. Every method has a neutral default, so a feature
/// writes only what it adds.
pub trait Feature: Send + Sync + 'static {
    /// A short name, for logs and `ctl`.
    fn name(&self) -> &'static str;

    /// Whether it runs under `config` (a feature its section turns off is
    /// left out of the server altogether: no events, disco or IQs).
    fn enabled(&self, _config: &crate::config::Config) -> bool {
        true
    }

    /// The XEPs it implements (0 for an RFC feature), listed in
    /// xep/waxwing.doap (a test keeps the two equal).
    fn xeps(&self) -> &[u16] {
        &[]
    }

    /// What it adds to disco#info.
    fn disco(&self) -> Disco {
        Disco::default()
    }

    /// An identity (category, type) every account's bare JID adds to its
    /// disco#info (e.g. PEP's pubsub/pep).
    fn account_identity(&self) -> Option<(&'static str, &'static str)> {
        None
    }

    /// A stream feature to offer on client streams in `phase`.
    fn stream_feature(&self, _server: &Server, _phase: StreamPhase) -> Option<Element> {
        None
    }

    /// Namespaces of IQ payloads it answers (each owned by one feature).
    fn iq_namespaces(&self) -> &'static [&'static str] {
        &[]
    }

    /// Answers an IQ get/set whose payload is in one of `iq_namespaces`.
    fn handle_iq<'a>(&'a self, _req: &'a IqRequest<'a>) -> IqFuture<'a> {
        iq::ready(Err(StanzaErrorCondition::ServiceUnavailable.into()))
    }

    /// Domains it serves as an in-process service (e.g. `conference.<host>`),
    /// entered in the route table at start.
    fn service_domains(&self, _config: &crate::config::Config) -> Vec<String> {
        Vec::new()
    }

    /// A stanza for one of its service domains (`from` checked, `to`
    /// normalised). Must not wait: a service queues it to its own task.
    fn deliver_to_service(
        &self,
        _server: &Server,
        _stanza: &Element,
    ) -> Result<(), crate::sessions::DeliveryError> {
        Err(crate::sessions::DeliveryError::Offline)
    }

    /// The events it handles, each with its order (lower runs first;
    /// features with equal orders run in registration order).
    fn subscriptions(&self) -> &'static [(EventKind, i32)] {
        &[]
    }

    /// A stanza about to be written to a client's stream (subscribed as
    /// `EventKind::Outbound`). `session` is the session's extension data.
    fn outbound(&self, _session: &mut Extensions, _stanza: &Arc<OutStanza>) -> Outgoing {
        Outgoing::Write
    }

    /// Handles an event it subscribed to without waiting, when it can
    /// (None: run `on_event` instead). Hot events (every routed message)
    /// pass through here, so a handler that seldom waits answers here and
    /// costs no allocation.
    fn on_event_now(&self, _server: &Server, _event: &mut Event<'_>) -> Option<Verdict> {
        None
    }

    /// Handles one event it subscribed to.
    fn on_event<'a>(&'a self, _server: &'a Server, _event: &'a mut Event<'_>) -> HookFuture<'a> {
        verdict(Verdict::Continue)
    }

    /// Resolves once everything the feature accepted so far is stored
    /// durably (None: it keeps nothing that lags behind). Stream
    /// management waits for every feature's before it acknowledges the
    /// client's stanzas, so what the server acknowledged survives a crash
    /// even where a feature commits in the background (the archive).
    fn flushed(&self) -> Option<HookFuture<'_>> {
        None
    }

    /// The server is starting: a feature with tasks of its own (a
    /// writer, a periodic clean-up) spawns them here, on
    /// `server.background`, so a shutdown waits for them.
    fn start(&self, _server: &Arc<Server>) {}

    /// For [`Features::get`]: the feature as `Any`, so its owner can reach
    /// its state by type (`ctl` figures, tests).
    fn as_any(&self) -> &dyn Any;
}

/// The registered features and who listens to what.
pub struct Features {
    list: Vec<Arc<dyn Feature>>,
    /// Per event kind, the subscribers' indices in order.
    subscribers: Vec<Vec<usize>>,
    /// IQ payload namespace → the feature that answers it.
    iq: HashMap<&'static str, usize>,
}

impl Features {
    /// Builds the registry; two features claiming one IQ namespace is a
    /// programming error reported at start.
    pub fn new(list: Vec<Arc<dyn Feature>>) -> Result<Features, String> {
        let mut iq = HashMap::new();
        let mut subscribers: Vec<Vec<(i32, usize)>> = vec![Vec::new(); EventKind::ALL.len()];
        for (i, f) in list.iter().enumerate() {
            for ns in f.iq_namespaces() {
                if let Some(other) = iq.insert(*ns, i) {
                    return Err(format!(
                        "features {} and {} both answer {ns}",
                        list[other].name(),
                        f.name()
                    ));
                }
            }
            for (kind, order) in f.subscriptions() {
                subscribers[*kind as usize].push((*order, i));
            }
        }
        let subscribers = subscribers
            .into_iter()
            .map(|mut s| {
                // Stable: equal orders keep registration order.
                s.sort_by_key(|(order, _)| *order);
                s.into_iter().map(|(_, i)| i).collect()
            })
            .collect();
        Ok(Features {
            list,
            subscribers,
            iq,
        })
    }

    /// Lets every feature start its tasks ([`Feature::start`]).
    pub fn start(&self, server: &Arc<Server>) {
        for f in &self.list {
            f.start(server);
        }
    }

    /// Waits until every feature has stored durably what it accepted so
    /// far ([`Feature::flushed`]).
    pub async fn flushed(&self) {
        for f in &self.list {
            if let Some(done) = f.flushed() {
                done.await;
            }
        }
    }

    /// Hands `event` to its subscribers in order until one stops it.
    pub async fn fire(&self, server: &Server, event: &mut Event<'_>) -> Verdict {
        for &i in &self.subscribers[event.kind() as usize] {
            let f = &self.list[i];
            let v = match f.on_event_now(server, event) {
                Some(v) => v,
                None => f.on_event(server, event).await,
            };
            if v == Verdict::Stop {
                return Verdict::Stop;
            }
        }
        Verdict::Continue
    }

    /// Runs the `Outbound` subscribers on a stanza for a client: the
    /// stanzas to write now, in order (none when one held it).
    pub fn outbound(
        &self,
        session: &mut Extensions,
        stanza: Arc<OutStanza>,
        write: &mut Vec<Arc<OutStanza>>,
    ) {
        for &i in &self.subscribers[EventKind::Outbound as usize] {
            match self.list[i].outbound(session, &stanza) {
                Outgoing::Write => {}
                Outgoing::Hold => return,
                Outgoing::FlushThenWrite(held) => write.extend(held),
            }
        }
        write.push(stanza);
    }

    /// Hands a stanza to the service run by the feature at `index`.
    pub fn deliver_to_service(
        &self,
        index: usize,
        server: &Server,
        stanza: &Element,
    ) -> Result<(), crate::sessions::DeliveryError> {
        self.list[index].deliver_to_service(server, stanza)
    }

    /// Every service domain, with the index of the feature serving it.
    pub fn service_domains(&self, config: &crate::config::Config) -> Vec<(String, usize)> {
        self.list
            .iter()
            .enumerate()
            .flat_map(|(i, f)| f.service_domains(config).into_iter().map(move |d| (d, i)))
            .collect()
    }

    /// Does anyone listen to `kind`? Lets hot paths skip building an event.
    pub fn wants(&self, kind: EventKind) -> bool {
        !self.subscribers[kind as usize].is_empty()
    }

    /// The feature answering IQs in `ns`.
    pub fn iq_handler(&self, ns: &str) -> Option<&dyn Feature> {
        self.iq.get(ns).map(|&i| &*self.list[i])
    }

    /// The registered feature of type `T`, if any.
    pub fn get<T: Feature>(&self) -> Option<&T> {
        self.list
            .iter()
            .find_map(|f| f.as_any().downcast_ref::<T>())
    }

    /// Every feature, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Feature> {
        self.list.iter().map(|f| &**f)
    }

    /// The server domain's disco features, in registration order.
    pub fn server_disco(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.list
            .iter()
            .flat_map(|f| f.disco().server.iter().copied())
    }

    /// An account's disco features, in registration order.
    pub fn account_disco(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.list
            .iter()
            .flat_map(|f| f.disco().account.iter().copied())
    }

    /// The identities features add to an account's disco#info.
    pub fn account_identities(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.list.iter().filter_map(|f| f.account_identity())
    }

    /// The stream features every feature offers in `phase`.
    pub fn stream_features(&self, server: &Server, phase: StreamPhase) -> Vec<Element> {
        self.list
            .iter()
            .filter_map(|f| f.stream_feature(server, phase))
            .collect()
    }

    /// Every XEP implemented, sorted, without repeats.
    pub fn xeps(&self) -> Vec<u16> {
        let mut x: Vec<u16> = self
            .list
            .iter()
            .flat_map(|f| f.xeps().iter().copied())
            .collect();
        x.sort_unstable();
        x.dedup();
        x
    }
}
